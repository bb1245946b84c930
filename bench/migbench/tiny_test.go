package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestTinyRun runs the benchmark's newer pieces end to end on a small
// working set (4 MiB, so that the guests boot quickly), unlimited
// bandwidth, one migration each: the guest's mixed fill, the first-pass
// split and ferry's savings, ferry --no-delta on a delta workload, QEMU
// with multifd + zstd, the RAM hash check, and the Markdown tables. About
// two minutes here.
func TestTinyRun(t *testing.T) {
	ferry, guest := needGuests(t, "boots three guests")
	systems := "ferry,ferry-no-delta,qemu-multifd-zstd"
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		systems = "ferry,ferry-no-delta"
	}
	tmp, out := t.TempDir(), t.TempDir()
	logs, md := filepath.Join(out, "logs"), filepath.Join(out, "B.md")
	if err := os.WriteFile(md, []byte("before\n"+mdBegin+"\nold tables\n"+mdEnd+"\nafter\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	runs := runMigbench(t, tmp, out, "-ferry", ferry, "-guest", guest, "-workloads", "fill-mixed,memcached-chg256",
		"-systems", systems, "-bws", "0", "-ws", "4M", "-out", out, "-logs", logs, "-markdown", md)
	want := map[string]bool{"fill-mixed/ferry": true, "memcached-chg256/ferry": true, "memcached-chg256/ferry-no-delta": true}
	if strings.Contains(systems, "qemu") {
		want["fill-mixed/qemu-multifd-zstd"] = true
	}
	for _, r := range runs {
		name := r.Workload + "/" + r.System
		t.Logf("%s: %s, %.2f s, %.1f MiB, first pass %+v, savings %+v, RAM hash %q", name, r.Check,
			r.TotalSeconds, float64(r.BytesTotal)/(1<<20), r.FirstPass, r.Savings, r.MemoryHash)
		if !want[name] {
			t.Errorf("unexpected run %s", name)
			continue
		}
		delete(want, name)
		if !r.Migrated || !strings.HasPrefix(r.Check, "ok") || r.Error != "" {
			t.Errorf("%s: migrated %v, check %q, error %q", name, r.Migrated, r.Check, r.Error)
		}
		if r.FirstPass == nil || r.FirstPass.Bytes <= 0 || r.FirstPass.Bytes > r.BytesTotal {
			t.Errorf("%s: first pass %+v of %d bytes", name, r.FirstPass, r.BytesTotal)
		}
		if strings.HasPrefix(r.System, "ferry") {
			if r.MemoryHash != "equal" {
				t.Errorf("%s: memory hash %q", name, r.MemoryHash)
			}
			if r.Savings == nil {
				t.Errorf("%s: no savings", name)
			}
		}
		switch name {
		case "memcached-chg256/ferry":
			if r.Savings != nil && r.Savings.DeltaPages == 0 {
				t.Errorf("%s: no page sent as a delta", name)
			}
		case "memcached-chg256/ferry-no-delta":
			if r.Savings != nil && r.Savings.DeltaPages != 0 {
				t.Errorf("%s: %d pages sent as deltas with --no-delta", name, r.Savings.DeltaPages)
			}
		case "fill-mixed/qemu-multifd-zstd":
			// zstd at work: fewer bytes on the wire than the pages QEMU sent.
			if q := r.QEMU; q == nil || r.WireBytes < 0 || float64(r.WireBytes) > 0.8*float64(q.Normal*4096) {
				t.Errorf("%s: %d bytes on the wire for %+v", name, r.WireBytes, q)
			}
		}
	}
	for name := range want {
		t.Errorf("no run %s", name)
	}
	fills, _ := filepath.Glob(filepath.Join(logs, "*-ferry-run.log"))
	found := false
	for _, f := range fills {
		found = found || strings.Contains(readFile(f), "filled (mixed: ")
	}
	if !found {
		t.Errorf("no ferry guest reported the mixed fill (logs %v)", fills)
	}
	text := readFile(md)
	for _, s := range []string{"before\n" + mdBegin, mdEnd + "\nafter\n", "| 1st pass MiB |", "What ferry's mechanisms saved", "| memcached-chg256 | ferry-no-delta | unl |"} {
		if !strings.Contains(text, s) {
			t.Errorf("the Markdown file lacks %q:\n%s", s, text)
		}
	}
	if strings.Contains(text, "old tables") {
		t.Errorf("the old tables were not replaced:\n%s", text)
	}
	leftNothing(t, tmp)
}

// TestTinyTLS runs the transports of the big workload's systems end to
// end on a small idle guest (4 MiB working set, unlimited): ferry over
// mutual TLS, ferry on --connections N (or its skip, with a ferry that
// lacks the flag), QEMU over TLS with certificates from the same CA, and
// QEMU multifd with 2 channels; each must show in the VMM's output that it
// used what it was meant to. About two minutes here.
func TestTinyTLS(t *testing.T) {
	ferry, guest := needGuests(t, "boots two guests")
	systems := "ferry-tls,ferry-conns,qemu-tls,qemu-multifd"
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		systems = "ferry-tls,ferry-conns"
	}
	tmp, out := t.TempDir(), t.TempDir()
	runs := runMigbench(t, tmp, out, "-ferry", ferry, "-guest", guest, "-workloads", "idle", "-all-pairs",
		"-systems", systems, "-bws", "0", "-ws", "4M", "-out", out, "-logs", filepath.Join(out, "logs"))
	conns := hasConnections(ferry)
	want := map[string]string{"ferry-tls": "ferry receive: mutual TLS", "qemu-tls": "TLS: 1 handshake(s), the peer's certificate allowed on both sides",
		"qemu-multifd": "multifd: 2 send channels", "ferry-conns": "ferry receive: no TLS"}
	for _, r := range runs {
		t.Logf("%s: %s, %.2f s, %.1f MiB, %s, RAM hash %q", r.System, r.Check, r.TotalSeconds, float64(r.BytesTotal)/(1<<20), r.Transport, r.MemoryHash)
		w, ok := want[r.System]
		if !ok || !strings.Contains(systems, r.System) {
			t.Errorf("unexpected run %s", r.System)
			continue
		}
		delete(want, r.System)
		if r.System == "ferry-conns" && !conns {
			if !strings.HasPrefix(r.Check, "not measured: skipped") {
				t.Errorf("ferry-conns with a ferry without --connections: %q", r.Check)
			}
			continue
		}
		if !r.Migrated || !strings.HasPrefix(r.Check, "ok") || r.Error != "" || !strings.HasPrefix(r.Transport, w) {
			t.Errorf("%s: migrated %v, check %q, error %q, transport %q (want %q)", r.System, r.Migrated, r.Check, r.Error, r.Transport, w)
		}
		if strings.HasPrefix(r.System, "ferry") && r.MemoryHash != "equal" {
			t.Errorf("%s: memory hash %q", r.System, r.MemoryHash)
		}
	}
	for name := range want {
		if strings.Contains(systems, name) {
			t.Errorf("no run %s", name)
		}
	}
	leftNothing(t, tmp)
}

// needGuests skips a test that boots guests (why says how many) unless
// /dev/kvm, FERRY_BIN and FERRY_GUEST_DIR are there and -short is off; it
// returns the ferry binary and the guest image directory.
func needGuests(t *testing.T, why string) (ferry, guest string) {
	t.Helper()
	ferry, guest = os.Getenv("FERRY_BIN"), os.Getenv("FERRY_GUEST_DIR")
	if _, err := os.Stat("/dev/kvm"); err != nil {
		t.Skip("skipped: /dev/kvm is absent on this machine")
	}
	if ferry == "" || guest == "" {
		t.Skip("skipped: FERRY_BIN and FERRY_GUEST_DIR are not set (make test sets them)")
	}
	if testing.Short() {
		t.Skip("skipped in -short mode: " + why)
	}
	return ferry, guest
}

// runMigbench runs the benchmark (this test binary as migbench) with args,
// its temporary files in tmp, stops whatever it left at the test's end,
// and returns the runs of out/results.json.
func runMigbench(t *testing.T, tmp, out string, args ...string) []*Run {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), asMainEnv+"=1", "TMPDIR="+tmp)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	mark := "TMPDIR=" + tmp
	t.Cleanup(func() {
		if cmd.Process != nil {
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		}
		for _, p := range processesWithEnv(mark) {
			syscall.Kill(p.pid, syscall.SIGKILL)
		}
	})
	timer := time.AfterFunc(6*time.Minute, func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGINT) })
	output, err := cmd.CombinedOutput()
	timer.Stop()
	if err != nil {
		t.Fatalf("migbench: %v\n%s", err, output)
	}
	runs, err := loadRuns(filepath.Join(out, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	return runs
}

// leftNothing checks that the benchmark left no process and no file in
// its temporary directory tmp.
func leftNothing(t *testing.T, tmp string) {
	t.Helper()
	var left []string
	for _, p := range processesWithEnv("TMPDIR=" + tmp) {
		left = append(left, p.String())
	}
	if ents, _ := os.ReadDir(tmp); len(ents) > 0 {
		left = append(left, "files in the temporary directory")
	}
	if len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
}
