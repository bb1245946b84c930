package main

import (
	"strings"
	"testing"
)

// TestBigReport builds the big workload's tables from made-up runs: the
// systems, the targets (a ferry system that was skipped, a missed and a
// met ratio), and the downtimes of the repeated runs with their parts.
func TestBigReport(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	parts := map[string]float64{"pause_ms": 0.5, "sync_ms": 1.5, "pages_ms": 2, "state_ms": 0.3, "flush_ms": 4, "ready_ms": 10, "commit_ms": 3}
	ok := func(sys string, secs, dt float64) *Run {
		return &Run{Workload: "big", System: sys, Migrated: true, Converged: true, TotalSeconds: secs, DowntimeMS: f(dt),
			BytesTotal: 600 << 20, Check: "ok: counter 1 -> 2, writer on", GuestVerify: "ok pages=131072 ms=90",
			GuestParams: "ferry.run=dirty ferry.mode=idle ferry.ws=512M ferry.rate=20000 ferry.verify=1"}
	}
	var runs []*Run
	// without its hash wait, the third run's downtime is within the target, the second's is not
	for i, dt := range []float64{21.8, 60.2, 70} {
		r := ok("ferry", 1.0+float64(i)/10, dt)
		r.Repeat, r.DowntimeParts, r.From, r.To = i+1, parts, "A", "B"
		r.HashWaitMS = f(float64(i) * 10)
		runs = append(runs, r)
	}
	tls := ok("ferry-tls", 1.5, 25)
	tls.TLS = true
	runs = append(runs, tls,
		&Run{Workload: "big", System: "ferry-conns", Check: "not measured: skipped: this ferry's migrate has no --connections"},
		ok("qemu", 2.5, 10), ok("qemu-multifd", 0.8, 12), ok("qemu-tls", 3.0, 15))
	runs[len(runs)-1].TLS = true
	out := reportOf(t, runs)
	for _, want := range []string{
		"| ferry | 1 | off | yes | 1.00 | 21.8 | 0.0 | 1.00 | 21.8 | - | 600.0 | - | ok, working set intact |",
		"| ferry-tls | 1 | on | yes | 1.50 | 25.0 | - | 1.50 | 25.0 |",
		"| ferry-conns | | | | | | | | | | | | not measured: skipped: this ferry's migrate has no --connections |",
		"| ferry | qemu | 1.00 / 2.50 | **0.40** | <= 0.5x | met | 1.00 |",
		"| ferry-conns | qemu | | | <= 0.5x | not measured: ferry-conns: skipped: this ferry's migrate has no --connections | |",
		"| ferry | qemu-multifd | 1.00 / 0.80 | **1.25** | <= 1.0x | **MISSED** |",
		"| ferry-tls | qemu-tls | 1.50 / 3.00 | **0.50** | <= 0.7x | met |",
		"| 2 | A -> B | 1.10 | 60.2 | 10.0 | 50.2 | 0.5 | 1.5 | 2.0 | 0.3 | 4.0 | 10.0 | 3.0 | - | 600.0 | ok, working set intact | no |",
		"| 3 | A -> B | 1.20 | 70.0 | 20.0 | 50.0 | 0.5 | 1.5 | 2.0 | 0.3 | 4.0 | 10.0 | 3.0 | - | 600.0 | ok, working set intact | yes |",
		"- downtime (without the RAM hash wait) <= 50 ms in each run: **MISSED**: 2 of 3 runs (3 measured); min 21.8, median 50.0, max 50.2 ms",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the report lacks %q:\n%s", want, out)
		}
	}
	// The repeats after the first are only in their own table, and the
	// tally counts the first.
	if strings.Count(out, "| big | ferry | unl |") != 1 {
		t.Errorf("the main table should have one big/ferry row:\n%s", out)
	}
	if !strings.Contains(out, "- cap unl MiB/s: **1 of 1 finished**") {
		t.Errorf("the tally should count the first repeated run only:\n%s", out)
	}
}

// TestGuestVerify reads the writer's check of its working set.
func TestGuestVerify(t *testing.T) {
	b := &bench{}
	for _, c := range []struct {
		line, verify string
		failed       bool
	}{
		{"FERRY-DIRTY mode=idle ws=512 target=20000/s actual=0/s same=0% verify=ok pages=131072 ms=93", "ok pages=131072 ms=93", false},
		{"FERRY-DIRTY mode=idle ws=512 target=20000/s actual=0/s same=0% verify=BAD pages=131072 bad=3 first=77 ms=95", "verify=BAD pages=131072 bad=3 first=77 ms=95", true},
		{"FERRY-DIRTY mode=idle ws=512 target=20000/s actual=0/s same=0%", "missing", true},
	} {
		r := &Run{}
		b.guestVerify(c.line, r)
		if r.GuestVerify != c.verify || (r.Error != "") != c.failed {
			t.Errorf("%q: verify %q, error %q", c.line, r.GuestVerify, r.Error)
		}
		if !reDirty.MatchString(c.line) {
			t.Errorf("%q is not a FERRY-DIRTY report for the harness", c.line)
		}
	}
}

// TestTransport reads what the VMMs' output shows of TLS and of multifd
// channels.
func TestTransport(t *testing.T) {
	lines := func(ss ...string) *proc {
		p := &proc{}
		for _, s := range ss {
			p.lines = append(p.lines, line{s: s})
		}
		return p
	}
	tlsSys, _ := findSystem("qemu-tls")
	plain, _ := findSystem("qemu")
	multifd, _ := findSystem("qemu-multifd")
	srcTLS := lines("an earlier migration's migration_tls_outgoing_handshake_complete",
		"12@1.0:migration_tls_outgoing_handshake_start hostname=10.234.0.2",
		"12@1.1:qio_channel_tls_credentials_allow TLS credentials allow ioc=0x1",
		"12@1.2:migration_tls_outgoing_handshake_complete")
	dstTLS := lines("13@1.0:migration_tls_incoming_handshake_start",
		"13@1.1:qio_channel_tls_credentials_allow TLS credentials allow ioc=0x2",
		"13@1.2:migration_tls_incoming_handshake_complete")
	for _, c := range []struct {
		name     string
		sys      system
		src, dst *proc
		mark     int
		want     string
		failed   bool
	}{
		{"tls", tlsSys, srcTLS, dstTLS, 1, "TLS: 1 handshake(s), the peer's certificate allowed on both sides", false},
		{"tls, destination without a handshake", tlsSys, srcTLS, lines(), 1, "", true},
		{"tls, only an earlier migration's handshake", tlsSys, lines("migration_tls_outgoing_handshake_complete", "qio_channel_tls_credentials_allow"), dstTLS, 2, "", true},
		{"plain", plain, lines("migration_bitmap_sync_end dirty_pages 5"), lines(), 0, "", false},
		{"plain over TLS", plain, srcTLS, dstTLS, 0, "", true},
		{"multifd", multifd, lines("multifd_send_thread_start 0", "multifd_send_thread_start 1"), lines(), 0, "multifd: 2 send channels", false},
		{"multifd, one channel", multifd, lines("multifd_send_thread_start 0"), lines(), 0, "multifd: 1 send channels", true},
	} {
		r := &Run{}
		qemuTransport(&vm{p: c.src}, &vm{p: c.dst}, c.mark, c.sys, r)
		if r.Transport != c.want || (r.Error != "") != c.failed {
			t.Errorf("%s: transport %q, error %q", c.name, r.Transport, r.Error)
		}
	}
	m := reFerryMode.FindStringSubmatch("ferry: waiting for a migration on 10.234.0.2:7701 (mutual TLS; guests up to 12000 MiB, 32 vCPUs)")
	if m == nil || m[1] != "mutual TLS" {
		t.Errorf("ferry receive's mode: %q", m)
	}
}

// TestHashWait reads how long the destination's guest waited for ferry's
// RAM hash, and compares the hashes.
func TestHashWait(t *testing.T) {
	src := &proc{lines: []line{{s: "ferry: memory hash (paused source): 0a1b"}}}
	dst := &proc{lines: []line{{s: "ferry: memory hash (destination before start): 0a1b (the guest waited 12.5 ms for this hash)"}}}
	r := &Run{}
	(&bench{}).compareHashes(&vm{p: src}, &vm{p: dst}, 0, r)
	if r.MemoryHash != "equal" || r.HashWaitMS == nil || *r.HashWaitMS != 12.5 || r.Error != "" {
		t.Errorf("hash %q, wait %v, error %q", r.MemoryHash, r.HashWaitMS, r.Error)
	}
	if d := checkedDowntime(&Run{DowntimeMS: &[]float64{40}[0], HashWaitMS: r.HashWaitMS}); *d != 27.5 {
		t.Errorf("downtime without the hash wait: %v", *d)
	}
}
