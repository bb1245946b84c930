package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// The ferry side: `ferry run` boots the guest, `ferry receive` waits on the
// other host, `ferry migrate` (from the root namespace, through the source's
// control socket) moves it.

var (
	reFerryIter     = regexp.MustCompile(`^(?:iter ([0-9]+)|stop-and-copy \(iter ([0-9]+)\)): dirty ([0-9]+), false-dirty skipped ([0-9]+)(?:, (?:held by|reused from) the destination [0-9]+)?(?:, left to stop-and-copy ([0-9]+))?, zero ([0-9]+), sent ([0-9]+), ([0-9.]+) MiB in ([0-9.]+) s`)
	reFerryDelta    = regexp.MustCompile(`, delta ([0-9]+) \(([0-9.]+) KiB of blocks\)`)
	reFerryComp     = regexp.MustCompile(`, ([0-9]+) records compressed \(saved ([0-9.]+) MiB\)`)
	reHashSrc       = regexp.MustCompile(`memory hash \(paused source\): ([0-9a-f]+)`)
	reHashDst       = regexp.MustCompile(`memory hash \(destination before start\): ([0-9a-f]+)`)
	reHashWait      = regexp.MustCompile(`\(the guest waited ([0-9.]+) ms for this hash\)`)
	reFerryWaiting  = regexp.MustCompile(`waiting for a migration on`)
	reFerryMode     = regexp.MustCompile(`waiting for a migration on \S+ \(([^;)]+)`)
	reFerryReceived = regexp.MustCompile(`guest received from .* and running`)
)

// ferryBoot starts `ferry run` on h with the workload's parameters.
func (b *bench) ferryBoot(h *host, w workload) (*vm, error) {
	b.seq++
	sock := filepath.Join(b.tmp, fmt.Sprintf("ferry-%d.sock", b.seq))
	args := []string{b.ferry, "run", "--memory", w.mem(b), "--kernel", b.kernel, "--initrd", b.initrd,
		"--api-socket", sock, "--cmdline", w.cmdline(b)}
	if b.memoryHash {
		args = append(args, "--memory-hash")
	}
	argv := h.wrap(args...)
	p, err := startProc(fmt.Sprintf("ferry run #%d", b.seq), b.logPath(fmt.Sprintf("%02d-ferry-run", b.seq)), argv)
	if err != nil {
		return nil, err
	}
	return &vm{p: p, h: h, sock: sock, family: "ferry"}, nil
}

// ferryMigrate runs one migration from src to the other host. It returns the
// VM that runs the guest afterwards (the destination's, or src when the
// migration failed), or nil when the guest is lost or in doubt.
func (b *bench) ferryMigrate(src *vm, dstHost *host, sys system, bw int, r *Run) *vm {
	b.seq++
	port := b.nextPort()
	sock := filepath.Join(b.tmp, fmt.Sprintf("ferry-%d.sock", b.seq))
	rargs := []string{b.ferry, "receive", "--listen", fmt.Sprintf("%s:%d", dstHost.addr, port), "--api-socket", sock}
	switch {
	case sys.tls:
		// mutual TLS: each side's certificate from the run's CA (certs.go)
		rargs = append(rargs, b.certs.ferryFlags(dstHost)...)
	case dstHost.addr != "127.0.0.1":
		// plain TCP between our own two namespaces
		rargs = append(rargs, "--insecure")
	}
	if b.memoryHash {
		rargs = append(rargs, "--memory-hash")
	}
	dp, err := startProc(fmt.Sprintf("ferry receive #%d", b.seq), b.logPath(fmt.Sprintf("%02d-ferry-receive", b.seq)), dstHost.wrap(rargs...))
	if err != nil {
		r.fail("start ferry receive: %v", err)
		return src
	}
	dst := &vm{p: dp, h: dstHost, sock: sock, family: "ferry"}
	_, wl, wm, err := dp.waitFor(reFerryWaiting, 0, 30*time.Second)
	if err != nil {
		r.fail("ferry receive did not start: %v", err)
		dp.stop()
		return src
	}
	// What ferry receive says it listens with: "mutual TLS", "no TLS: --insecure", ...
	if m := reFerryMode.FindStringSubmatch(wl.s); wm != nil && m != nil {
		r.Transport = "ferry receive: " + m[1]
		if sys.tls != (m[1] == "mutual TLS") {
			r.fail("ferry receive listens with %q", m[1])
		}
	}

	statsFile := filepath.Join(b.tmp, fmt.Sprintf("stats-%d.json", b.seq))
	margs := []string{"migrate", "--api-socket", src.sock, "--to", fmt.Sprintf("%s:%d", dstHost.addr, port),
		"--downtime", b.downtime.String(), "--max-iterations", strconv.Itoa(b.maxIter),
		"--timeout", b.bound.String(), "--on-timeout", "abort", "--stats-json", statsFile}
	if bw > 0 {
		margs = append(margs, "--max-bandwidth", fmt.Sprintf("%dMiB/s", bw))
	}
	margs = append(margs, sys.ferryFlags...)
	switch {
	case sys.connections:
		margs = append(margs, "--connections", strconv.Itoa(b.connections))
	case r.wl.OneConnection && b.hasConnections:
		// ferry's default is half the host's cores (1 to 4)
		margs = append(margs, "--connections", "1")
	}
	if sys.tls {
		margs = append(margs, b.certs.ferryFlags(src.h)...)
		r.TLS = true
	}
	// The run's temporary directory (sockets, stats, certificates) is
	// shown as $TMP: the results name no directory of this machine.
	r.Command = "ferry " + strings.ReplaceAll(shellQuote(margs), b.tmp, "$TMP")

	srcMark := src.p.count()
	tx0, _ := src.h.txBytes()
	t0 := time.Now()
	r.t0 = t0
	ctx, cancel := context.WithTimeout(context.Background(), b.bound+3*time.Minute)
	out, code := runGroup(ctx, exec.Command(b.ferry, margs...))
	cancel()
	r.WallSeconds = time.Since(t0).Seconds()
	os.WriteFile(b.logPath(fmt.Sprintf("%02d-ferry-migrate", b.seq)), out, 0o644)
	tx1, _ := src.h.txBytes()
	if tx0 >= 0 && tx1 >= 0 {
		r.WireBytes = tx1 - tx0
	}

	// Per-iteration lines (printed whether or not the migration ends well).
	var mib float64
	for _, l := range strings.Split(string(out), "\n") {
		m := reFerryIter.FindStringSubmatch(strings.TrimSpace(l))
		if m == nil {
			continue
		}
		it := IterStat{StopAndCopy: m[2] != ""}
		it.Iteration = atoi(m[1] + m[2])
		it.PagesDirty = u64p(m[3])
		it.PagesFalseDirty = u64p(m[4])
		if m[5] != "" {
			it.PagesLeft = u64p(m[5])
		}
		it.PagesZero = u64p(m[6])
		it.PagesSent = u64p(m[7])
		f, _ := strconv.ParseFloat(m[8], 64)
		mib += f
		it.Bytes = int64(f * (1 << 20))
		it.Seconds, _ = strconv.ParseFloat(m[9], 64)
		if d := reFerryDelta.FindStringSubmatch(l); d != nil {
			it.PagesDelta = u64p(d[1])
			kib, _ := strconv.ParseFloat(d[2], 64)
			it.DeltaBytes = int64(kib * 1024)
		}
		if c := reFerryComp.FindStringSubmatch(l); c != nil {
			it.RecordsCompressed = atoi(c[1])
			saved, _ := strconv.ParseFloat(c[2], 64)
			it.CompressSaved = int64(saved * (1 << 20))
		}
		if t := reFerryThrottle.FindStringSubmatch(l); t != nil {
			it.ThrottlePct = atoi(t[1])
		}
		if d := reFerryDirtyRate.FindStringSubmatch(l); d != nil {
			rate, _ := strconv.ParseFloat(d[1], 64)
			it.DirtyRate = rate * (1 << 20)
		}
		r.PerIteration = append(r.PerIteration, it)
	}
	r.Iterations = len(r.PerIteration)

	switch code {
	case 0:
		var st struct {
			Iterations []struct {
				Iteration       int     `json:"iteration"`
				StopAndCopy     bool    `json:"stop_and_copy"`
				PagesDirty      uint64  `json:"pages_dirty"`
				PagesFalseDirty uint64  `json:"pages_false_dirty"`
				PagesZero       uint64  `json:"pages_zero"`
				PagesSent       uint64  `json:"pages_sent"`
				PagesLeft       uint64  `json:"pages_left"`
				PagesDelta      uint64  `json:"pages_delta"`
				DeltaBytes      int64   `json:"delta_bytes"`
				Compressed      int     `json:"records_compressed"`
				CompressSaved   int64   `json:"bytes_saved_compression"`
				ThrottlePct     int     `json:"throttle_pct"`
				DirtyRate       float64 `json:"dirty_rate"`
				Bytes           int64   `json:"bytes"`
				Seconds         float64 `json:"seconds"`
			} `json:"iterations"`
			TotalSeconds float64 `json:"total_seconds"`
			DowntimeMS   float64 `json:"downtime_ms"`
			BytesTotal   int64   `json:"bytes_total"`
			Converged    bool    `json:"converged"`
			Connections  int     `json:"connections"`
			ferryPostcopy
		}
		data, err := os.ReadFile(statsFile)
		if err == nil {
			err = json.Unmarshal(data, &st)
		}
		if err != nil {
			r.fail("--stats-json: %v", err)
		} else {
			r.Migrated = true
			r.Converged = st.Converged
			r.TotalSeconds = st.TotalSeconds
			r.DowntimeMS = &st.DowntimeMS
			r.DowntimeParts = st.ferryPostcopy.DowntimeParts
			r.Connections = st.Connections
			if sys.connections && st.Connections != b.connections {
				r.fail("--connections %d: the migration ran on %d connections", b.connections, st.Connections)
			}
			r.BytesReported = st.BytesTotal
			r.PerIteration = r.PerIteration[:0]
			for _, it := range st.Iterations {
				r.PerIteration = append(r.PerIteration, IterStat{Iteration: it.Iteration, StopAndCopy: it.StopAndCopy,
					PagesDirty: &it.PagesDirty, PagesFalseDirty: &it.PagesFalseDirty, PagesZero: &it.PagesZero,
					PagesSent: &it.PagesSent, PagesDelta: &it.PagesDelta, DeltaBytes: it.DeltaBytes,
					RecordsCompressed: it.Compressed, CompressSaved: it.CompressSaved, ThrottlePct: it.ThrottlePct,
					DirtyRate: it.DirtyRate, Bytes: it.Bytes, Seconds: it.Seconds})
				if it.PagesLeft > 0 {
					r.PerIteration[len(r.PerIteration)-1].PagesLeft = &it.PagesLeft
				}
			}
			r.Iterations = len(st.Iterations)
			if sys.postcopy() {
				r.Postcopy = st.ferryPostcopy.run(r)
			}
		}
	case 1:
		// Failed before COMMIT: the guest keeps running on the source.
		r.TotalSeconds = r.WallSeconds
		r.BytesReported = int64(mib * (1 << 20))
		if strings.Contains(string(out), "did not converge") {
			r.Check = "not converged: aborted at the bound, guest kept on the source"
		} else {
			r.fail("ferry migrate exit 1: %s", lastLine(string(out)))
		}
	default:
		r.fail("ferry migrate exit %d: %s", code, lastLine(string(out)))
	}
	if r.BytesTotal = r.WireBytes; r.WireBytes < 0 || src.h.dev == "" {
		r.BytesTotal = r.BytesReported
	}
	r.ferrySplit(r.wl.pages(b))
	r.Savings = ferrySavings(r.PerIteration)
	r.ThrottleMaxPct = maxThrottle(r.PerIteration)
	r.DirtyRates = ferryDirtyRates(r.PerIteration)

	if !r.Migrated {
		dp.stop()
		if code == 3 || code == 4 || code < 0 {
			// In doubt (3), or a post-copy cut (4: the guest ran on the
			// destination, stopped now): start over with a fresh guest.
			src.stop()
			return nil
		}
		if err := b.verifyRuns(src, srcMark); err != nil {
			r.fail("source guest after the failed migration: %v", err)
			return nil
		}
		return src
	}
	// The source ferry exits 0 once the guest is handed over.
	if c := src.p.exitCode(60 * time.Second); c != 0 {
		r.fail("source ferry exit status %d after the migration", c)
	}
	src.p.stop()
	if _, _, _, err := dp.waitFor(reFerryReceived, 0, 30*time.Second); err != nil {
		r.fail("destination: %v", err)
		dp.stop()
		return nil
	}
	if b.memoryHash {
		b.compareHashes(src, dst, srcMark, r)
	}
	b.counterCheck(src, dst, r)
	return dst
}

// compareHashes requires the hash of guest RAM the source logged when it
// paused the guest (after line from) to equal the one the destination
// logged before starting it.
func (b *bench) compareHashes(src, dst *vm, from int, r *Run) {
	_, _, sm := src.p.find(reHashSrc, from)
	// After post-copy the destination hashes RAM once every page arrived,
	// about when the source's ferry migrate ends.
	_, dl, dm, _ := dst.p.waitFor(reHashDst, 0, 10*time.Second)
	if m := reHashWait.FindStringSubmatch(dl.s); dm != nil && m != nil {
		w, _ := strconv.ParseFloat(m[1], 64)
		r.HashWaitMS = &w
	}
	switch {
	case sm == nil || dm == nil:
		r.MemoryHash = "missing"
		r.fail("memory hash: source %v, destination %v (both must log one)", sm != nil, dm != nil)
	case sm[1] != dm[1]:
		r.MemoryHash = "DIFFERENT"
		r.fail("memory hash: source %s, destination %s", sm[1], dm[1])
	default:
		r.MemoryHash = "equal"
	}
}

func lastLine(s string) string {
	ls := strings.Split(strings.TrimSpace(s), "\n")
	return ls[len(ls)-1]
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

func u64p(s string) *uint64 {
	n, _ := strconv.ParseUint(s, 10, 64)
	return &n
}
