package main

import (
	"encoding/json"
	"fmt"
	"math"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// The QEMU side: qemu-system-x86_64 -enable-kvm (microvm, set up as
// bench/boot-qemu.sh does), driven through QMP on a unix socket.

// qemuArgs is the QEMU command line for the workload's guest on host h,
// controlled through the QMP socket sock; with tls, it has the two
// credential objects of qemu-tls (certs.go).
func (b *bench) qemuArgs(w workload, h *host, sock string, tls bool) []string {
	a := []string{b.qemu,
		"-M", "microvm,x-option-roms=off,acpi=off,rtc=on,auto-kernel-cmdline=off",
		"-enable-kvm", "-cpu", "host,-arch-capabilities", "-m", w.mem(b), "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
		"-device", "i8042", "-no-reboot",
		"-kernel", b.kernel, "-initrd", b.initrd, "-append", b.defaultCmdline + " " + w.cmdline(b),
		"-qmp", "unix:" + sock + ",server=on,wait=off",
		// Observation only (one line per dirty-bitmap sync, one per page
		// XBZRLE finds unchanged); QEMU's migration itself is untouched.
		"-trace", "migration_bitmap_sync_end", "-trace", "save_xbzrle_page_skipping",
		// Also observation only: the TLS handshakes and the peers'
		// certificate checks, and the multifd channels' threads (what the
		// harness checks a TLS or multifd migration really used).
		"-trace", "migration_tls_*", "-trace", "qio_channel_tls_credentials_*",
		"-trace", "multifd_send_thread_start", "-trace", "multifd_recv_thread_start",
	}
	if tls {
		a = append(a, b.certs.qemuObjects(h)...)
	}
	return a
}

func (b *bench) qemuBoot(h *host, w workload, tls bool) (*vm, error) {
	b.seq++
	sock := filepath.Join(b.tmp, fmt.Sprintf("qmp-%d.sock", b.seq))
	argv := h.wrap(b.qemuArgs(w, h, sock, tls)...)
	p, err := startProc(fmt.Sprintf("qemu #%d", b.seq), b.logPath(fmt.Sprintf("%02d-qemu", b.seq)), argv)
	if err != nil {
		return nil, err
	}
	v := &vm{p: p, h: h, sock: sock, family: "qemu", tls: tls}
	if v.qmp, err = dialQMP(sock, 30*time.Second); err != nil {
		p.stop()
		return nil, err
	}
	return v, nil
}

// multifdChannels is the number of multifd channels of qemu-multifd-zstd
// and qemu-multifd.
const multifdChannels = 2

// setMigration sets the capabilities and parameters sys needs on one QEMU
// (source or destination); every capability the benchmark uses is set
// either way, so nothing carries over from an earlier migration. On a QEMU
// with the TLS objects, tls-creds is set either way too: creds (the
// object of its side) for a TLS system, "" (plain TCP) for the others.
func setMigration(q *qmpConn, sys system, params map[string]any, tlsObjects bool, creds string) error {
	caps := []map[string]any{{"capability": "xbzrle", "state": sys.xbzrle}, {"capability": "multifd", "state": sys.multifd},
		{"capability": "auto-converge", "state": sys.autoConverge}, {"capability": "postcopy-ram", "state": sys.qemuPostcopy}}
	if _, err := q.cmd("migrate-set-capabilities", map[string]any{"capabilities": caps}); err != nil {
		return err
	}
	if sys.multifd {
		params["multifd-channels"] = multifdChannels
		params["multifd-compression"] = "none"
		if sys.multifdZ != "" {
			params["multifd-compression"] = sys.multifdZ
		}
	}
	if tlsObjects {
		params["tls-creds"] = ""
		if sys.tls {
			params["tls-creds"] = creds
		}
	}
	if len(params) == 0 {
		return nil
	}
	_, err := q.cmd("migrate-set-parameters", params)
	return err
}

var (
	reSyncEnd    = regexp.MustCompile(`migration_bitmap_sync_end dirty_pages ([0-9]+)`)
	reXBZRLESkip = regexp.MustCompile(`save_xbzrle_page_skipping`)
)

func (b *bench) qemuMigrate(src *vm, dstHost *host, sys system, bw int, r *Run) *vm {
	b.seq++
	port := b.nextPort()
	sock := filepath.Join(b.tmp, fmt.Sprintf("qmp-%d.sock", b.seq))
	argv := b.qemuArgs(r.wl, dstHost, sock, src.tls)
	uri := fmt.Sprintf("tcp:%s:%d", dstHost.addr, port)
	// multifd, postcopy-ram and tls-creds must be set on the destination
	// before the source connects: -incoming defer, the capabilities and
	// parameters, migrate-incoming.
	defer_ := sys.multifd || sys.qemuPostcopy || sys.tls
	if defer_ {
		argv = append(argv, "-incoming", "defer")
	} else {
		argv = append(argv, "-incoming", uri)
	}
	dp, err := startProc(fmt.Sprintf("qemu incoming #%d", b.seq), b.logPath(fmt.Sprintf("%02d-qemu-incoming", b.seq)), dstHost.wrap(argv...))
	if err != nil {
		r.fail("start QEMU -incoming: %v", err)
		return src
	}
	dst := &vm{p: dp, h: dstHost, sock: sock, family: "qemu", tls: src.tls}
	if dst.qmp, err = dialQMP(sock, 30*time.Second); err != nil {
		r.fail("QEMU -incoming: %v", err)
		dp.stop()
		return src
	}
	abandon := func(format string, a ...any) *vm {
		r.fail(format, a...)
		dst.qmp.close()
		dp.stop()
		return src
	}
	if defer_ {
		if err := setMigration(dst.qmp, sys, map[string]any{}, dst.tls, qemuTLSServer); err != nil {
			return abandon("destination: %v", err)
		}
		if _, err := dst.qmp.cmd("migrate-incoming", map[string]any{"uri": uri}); err != nil {
			return abandon("destination: %v", err)
		}
	}
	q := src.qmp
	// max-bandwidth 0: no rate limit (QEMU's own default is 128 MiB/s).
	params := map[string]any{"max-bandwidth": int64(bw) << 20, "downtime-limit": b.downtime.Milliseconds()}
	if sys.qemuPostcopy {
		// QEMU's post-copy phase has a cap of its own (default: none).
		params["max-postcopy-bandwidth"] = int64(bw) << 20
	}
	if err := setMigration(q, sys, params, src.tls, qemuTLSClient); err != nil {
		return abandon("%v", err)
	}
	r.TLS = sys.tls
	r.Command = fmt.Sprintf(`QMP: migrate-set-capabilities xbzrle=%v multifd=%v auto-converge=%v postcopy-ram=%v; migrate-set-parameters max-bandwidth=%d downtime-limit=%d`,
		sys.xbzrle, sys.multifd, sys.autoConverge, sys.qemuPostcopy, int64(bw)<<20, b.downtime.Milliseconds())
	if sys.qemuPostcopy {
		r.Command += fmt.Sprintf(" max-postcopy-bandwidth=%d (postcopy-ram on both sides; destination -incoming defer, migrate-incoming uri=%s)", int64(bw)<<20, uri)
	}
	if sys.multifd {
		comp := "none"
		if sys.multifdZ != "" {
			comp = sys.multifdZ
		}
		r.Command += fmt.Sprintf(" multifd-channels=%d multifd-compression=%s (both sides; destination -incoming defer, migrate-incoming uri=%s)",
			multifdChannels, comp, uri)
		r.Connections = multifdChannels
	}
	if sys.tls {
		r.Command += fmt.Sprintf(" tls-creds=%s (destination: tls-creds=%s; tls-creds-x509 objects with verify-peer=on, certificates from the run's ferry certs CA; destination -incoming defer, migrate-incoming uri=%s)",
			qemuTLSClient, qemuTLSServer, uri)
	}
	r.Command += "; migrate uri=" + uri

	srcMark := src.p.count()
	tx0, _ := src.h.txBytes()
	srcPid := src.p.cmd.Process.Pid
	tx0p := src.h.txBytesOf(srcPid)
	t0 := time.Now()
	r.t0 = t0
	if _, err := q.cmd("migrate", map[string]any{"uri": uri}); err != nil {
		return abandon("%v", err)
	}
	var info migInfo
	var samples []migSample
	cancelled := false
	out := &qemuOutrun{sys: sys, total: r.wl.pages(b)}
	for {
		raw, err := q.cmd("query-migrate", nil)
		if err == nil {
			err = json.Unmarshal(raw, &info)
		}
		if err != nil {
			return abandon("query-migrate: %v", err)
		}
		if info.RAM != nil {
			now := time.Now()
			s := migSample{t: now, secs: now.Sub(t0).Seconds(), sync: info.RAM.DirtySyncCount, normal: info.RAM.Normal,
				duplicate: info.RAM.Duplicate, transfered: info.RAM.Transferred, tx: src.h.txBytesOf(srcPid)}
			if info.XBZRLE != nil {
				s.xbzrle = info.XBZRLE.Pages
			}
			samples = append(samples, s)
		}
		if info.Status == "completed" || info.Status == "failed" || info.Status == "cancelled" || info.Status == "postcopy-paused" {
			break
		}
		if err := out.poll(q, &info, time.Since(t0).Seconds()); err != nil {
			// The migration goes on (in pre-copy); the run is marked failed.
			r.fail("%v", err)
		}
		if out.asked {
			// Past the switch the guest runs on the destination: no
			// cancelling, but a post-copy that never ends is a failure.
			if time.Since(t0) >= b.bound+3*time.Minute {
				r.fail("post-copy not completed %v after the start (status %s)", time.Since(t0).Round(time.Second), info.Status)
				dst.stop()
				src.stop()
				return nil
			}
		} else if !cancelled && time.Since(t0) >= b.bound {
			// The same bound as ferry's --timeout with --on-timeout abort.
			if _, err := q.cmd("migrate_cancel", nil); err != nil {
				return abandon("%v", err)
			}
			cancelled = true
		}
		time.Sleep(50 * time.Millisecond)
	}
	r.WallSeconds = time.Since(t0).Seconds()
	time.Sleep(200 * time.Millisecond) // the last trace lines
	tx1, _ := src.h.txBytes()
	if tx0 >= 0 && tx1 >= 0 {
		r.WireBytes = tx1 - tx0
	}
	qi := &QemuInfo{Status: info.Status, SetupMS: info.SetupTime}
	if info.RAM != nil {
		r.BytesReported = info.RAM.Transferred
		r.Iterations = int(info.RAM.DirtySyncCount)
		qi.DirtySyncCount = info.RAM.DirtySyncCount
		qi.Normal, qi.Duplicate, qi.Mbps = info.RAM.Normal, info.RAM.Duplicate, info.RAM.Mbps
		qi.MultifdBytes = info.RAM.MultifdBytes
	}
	if info.XBZRLE != nil {
		x := *info.XBZRLE
		qi.XBZRLE = &x
	}
	r.QEMU = qi
	r.PerIteration = qemuIterations(src.p, srcMark, t0, samples, r.wl.pages(b))
	r.BytesTotal = r.WireBytes
	if r.WireBytes < 0 || src.h.dev == "" {
		r.BytesTotal = r.BytesReported
	}

	switch info.Status {
	case "completed":
		r.Migrated, r.Converged = true, !cancelled && !out.switched(&info)
		r.TotalSeconds = float64(info.TotalTime) / 1000
		if info.Downtime != nil {
			d := float64(*info.Downtime)
			r.DowntimeMS = &d
		}
		if cancelled {
			r.Check = "completed while being cancelled at the bound"
		}
	case "cancelled":
		r.TotalSeconds = r.WallSeconds
		r.Check = "not converged: cancelled at the bound, guest kept on the source"
	case "failed", "postcopy-paused":
		if out.asked {
			// Neither side can be trusted with the guest now.
			r.fail("post-copy %s: %s", info.Status, info.ErrorDesc)
			dst.stop()
			src.stop()
			return nil
		}
		return abandon("migration %s: %s", info.Status, info.ErrorDesc)
	default:
		return abandon("migration %s: %s", info.Status, info.ErrorDesc)
	}
	r.qemuSplit(samples, r.wl.pages(b), tx0p)
	out.finish(r, &info)
	if r.Migrated {
		qemuTransport(src, dst, srcMark, sys, r)
	}

	if !r.Migrated {
		if n := len(r.PerIteration); n > 0 {
			r.PerIteration[n-1].StopAndCopy = false
		}
		dst.qmp.close()
		dp.stop()
		if err := b.verifyRuns(src, srcMark); err != nil {
			r.fail("source guest after migrate_cancel: %v", err)
			return nil
		}
		return src
	}
	// The destination runs the guest; the source is stopped for good.
	var st struct {
		Status string `json:"status"`
	}
	if raw, err := dst.qmp.cmd("query-status", nil); err != nil || json.Unmarshal(raw, &st) != nil || st.Status != "running" {
		r.fail("destination QEMU status %q (%v)", st.Status, err)
	}
	q.cmd("quit", nil)
	q.close()
	src.qmp = nil
	if src.p.exitCode(10*time.Second) < 0 {
		src.p.stop()
	}
	b.counterCheck(src, dst, r)
	return dst
}

var (
	reTLSOut     = regexp.MustCompile(`migration_tls_outgoing_handshake_(start|complete|error)`)
	reTLSIn      = regexp.MustCompile(`migration_tls_incoming_handshake_(start|complete|error)`)
	reTLSAllow   = regexp.MustCompile(`qio_channel_tls_credentials_(allow|deny)`)
	reMultifdOut = regexp.MustCompile(`multifd_send_thread_start`)
)

// qemuTransport checks in QEMU's trace lines (of this migration: after
// line srcMark on the source, all of the fresh destination) that a TLS
// system's migration ran over TLS, its handshake complete and the peer's
// certificate allowed on both sides, and that no other did; and counts a
// multifd system's send channels. r.Transport says what was seen.
func qemuTransport(src, dst *vm, srcMark int, sys system, r *Run) {
	count := func(p *proc, from int, re *regexp.Regexp, want string) int {
		n := 0
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, l := range p.lines[min(from, len(p.lines)):] {
			if m := re.FindStringSubmatch(l.s); m != nil && (want == "" || m[1] == want) {
				n++
			}
		}
		return n
	}
	var seen []string
	outDone, inDone := count(src.p, srcMark, reTLSOut, "complete"), count(dst.p, 0, reTLSIn, "complete")
	outAllow, inAllow := count(src.p, srcMark, reTLSAllow, "allow"), count(dst.p, 0, reTLSAllow, "allow")
	switch {
	case sys.tls && (outDone == 0 || inDone == 0 || outAllow == 0 || inAllow == 0):
		r.fail("QEMU's trace shows no complete TLS migration: handshakes complete on the source %d, on the destination %d; peer certificate allowed on the source %d, on the destination %d",
			outDone, inDone, outAllow, inAllow)
	case sys.tls:
		seen = append(seen, fmt.Sprintf("TLS: %d handshake(s), the peer's certificate allowed on both sides", outDone))
	case count(src.p, srcMark, reTLSOut, "") > 0:
		r.fail("QEMU's trace shows a TLS handshake in a migration without TLS")
	}
	if sys.multifd {
		n := count(src.p, srcMark, reMultifdOut, "")
		if n != multifdChannels {
			r.fail("QEMU's trace shows %d multifd send threads, not %d", n, multifdChannels)
		}
		seen = append(seen, fmt.Sprintf("multifd: %d send channels", n))
	}
	r.Transport = strings.Join(seen, "; ")
}

// qemuIterations builds per-iteration rows: the pages each dirty-bitmap
// sync found newly dirty and the pages XBZRLE skipped as unchanged come from
// QEMU's trace lines (exact); pages and bytes sent come from the
// query-migrate polls (50 ms apart), interpolated linearly to the time each
// sync's trace line was read (approximate).
func qemuIterations(p *proc, from int, t0 time.Time, samples []migSample, totalPages uint64) []IterStat {
	var its []IterStat
	var starts []time.Time
	p.mu.Lock()
	for _, l := range p.lines[from:] {
		if m := reSyncEnd.FindStringSubmatch(l.s); m != nil {
			n, _ := strconv.ParseUint(m[1], 10, 64)
			if len(its) == 0 {
				n = totalPages // the first sync: every page is pending already
			}
			zero := uint64(0)
			its = append(its, IterStat{Iteration: len(its), PagesDirty: &n, PagesFalseDirty: &zero, Approx: true})
			starts = append(starts, l.t)
		} else if reXBZRLESkip.MatchString(l.s) && len(its) > 0 {
			*its[len(its)-1].PagesFalseDirty++
		}
	}
	p.mu.Unlock()
	if len(its) == 0 || len(samples) == 0 {
		return its
	}
	starts[0] = t0
	// at interpolates the counters at time t.
	at := func(t time.Time) [4]float64 {
		prev := migSample{t: t0}
		for _, s := range samples {
			if !s.t.Before(t) {
				span := s.t.Sub(prev.t).Seconds()
				f := 1.0
				if span > 0 {
					f = t.Sub(prev.t).Seconds() / span
				}
				lerp := func(a, b int64) float64 { return float64(a) + f*float64(b-a) }
				return [4]float64{lerp(prev.normal, s.normal), lerp(prev.duplicate, s.duplicate),
					lerp(prev.xbzrle, s.xbzrle), lerp(prev.transfered, s.transfered)}
			}
			prev = s
		}
		return [4]float64{float64(prev.normal), float64(prev.duplicate), float64(prev.xbzrle), float64(prev.transfered)}
	}
	last := samples[len(samples)-1]
	for k := range its {
		begin := at(starts[k])
		end := [4]float64{float64(last.normal), float64(last.duplicate), float64(last.xbzrle), float64(last.transfered)}
		endT := last.t
		if k+1 < len(its) {
			end, endT = at(starts[k+1]), starts[k+1]
		}
		sent, zero, xb := uint64(math.Round(end[0]-begin[0])), uint64(math.Round(end[1]-begin[1])), uint64(math.Round(end[2]-begin[2]))
		its[k].PagesSent, its[k].PagesZero = &sent, &zero
		if xb > 0 {
			its[k].PagesXBZRLE = &xb
		}
		its[k].Bytes = int64(end[3] - begin[3])
		its[k].Seconds = endT.Sub(starts[k]).Seconds()
	}
	if n := len(its); n > 1 {
		its[n-1].StopAndCopy = true
	}
	return its
}
