package migrate

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

// Region 0 has 256 pages (4 chunks of 64 with ChunkPages 64), region 1 has 64.
const (
	r0Pages = 256
	r1Pages = 64
)

// newTestSource returns a two-region source whose pages all hold distinct
// non-zero content, except pages 9 and 10 of region 0, which are zero.
func newTestSource(manual bool) *fakeSource {
	f := newFakeSource(manual, r0Pages*PageSize, r1Pages*PageSize)
	for i := range f.mem {
		for p := uint64(0); p < uint64(len(f.mem[i]))/PageSize; p++ {
			pg := f.page(i, p)
			for o := 0; o < PageSize; o += 8 {
				pg[o] = byte(i + 1)
				pg[o+1] = byte(p)
				pg[o+2] = byte(p >> 8)
				pg[o+3] = byte(o)
			}
		}
	}
	clear(f.page(0, 9))
	clear(f.page(0, 10))
	return f
}

// content returns a non-zero page image derived from tag.
func content(tag byte) []byte {
	b := bytes.Repeat([]byte{tag, 0x5a, tag ^ 0xff, 1}, PageSize/4)
	return b
}

// pinned keeps iterating until nothing is dirty (a tiny downtime budget),
// with small chunks so that chunk order matters.
func pinned() Options {
	return Options{Downtime: time.Nanosecond, ChunkPages: 64, MaxIterations: 10}
}

func mustSucceed(t *testing.T, res result) {
	t.Helper()
	if res.sendErr != nil || res.recvErr != nil {
		t.Fatalf("migration failed: send: %v; receive: %v", res.sendErr, res.recvErr)
	}
}

// (a) A page rewritten with the bytes it already had is reported dirty but
// not sent again; without the digest filter it is.
func TestFalseDirtySameBytesSkipped(t *testing.T) {
	for _, noDigest := range []bool{false, true} {
		src := newTestSource(true)
		src.beforeFetch = func(n int) {
			if n == 1 {
				src.write(0, 5, append([]byte(nil), src.page(0, 5)...)) // same bytes
			}
		}
		dst := &fakeDest{}
		opts := pinned()
		opts.NoDigest = noDigest
		res := runMigration(t, src, dst, opts, ReceiveOptions{})
		mustSucceed(t, res)
		sameMemory(t, src, dst)
		it1 := res.stats.Iterations[1]
		if it1.PagesDirty != 1 {
			t.Fatalf("noDigest=%v: iteration 1 dirty = %d, want 1", noDigest, it1.PagesDirty)
		}
		if noDigest {
			if it1.PagesSent != 1 || res.wire.full[5] != 2 {
				t.Fatalf("plain pre-copy: iteration 1 sent %d, page 5 sent %d times; want 1 and 2", it1.PagesSent, res.wire.full[5])
			}
		} else if it1.PagesFalseDirty != 1 || it1.PagesSent != 0 || res.wire.full[5] != 1 {
			t.Fatalf("digest: iteration 1 false-dirty %d sent %d, page 5 sent %d times; want 1, 0, 1",
				it1.PagesFalseDirty, it1.PagesSent, res.wire.full[5])
		}
	}
}

// (b) A changed page is sent again, and arrives.
func TestChangedPageSent(t *testing.T) {
	src := newTestSource(true)
	src.beforeFetch = func(n int) {
		if n == 1 {
			src.write(0, 6, content(0x66))
			src.write(1, 3, content(0x13)) // region 1: global page 256+3
		}
	}
	dst := &fakeDest{}
	res := runMigration(t, src, dst, pinned(), ReceiveOptions{})
	mustSucceed(t, res)
	sameMemory(t, src, dst)
	if it1 := res.stats.Iterations[1]; it1.PagesSent != 2 || it1.PagesFalseDirty != 0 {
		t.Fatalf("iteration 1: sent %d false-dirty %d, want 2 and 0", it1.PagesSent, it1.PagesFalseDirty)
	}
	if res.wire.full[6] != 2 || res.wire.full[r0Pages+3] != 2 {
		t.Fatalf("pages sent %d and %d times, want 2", res.wire.full[6], res.wire.full[r0Pages+3])
	}
	if !bytes.Equal(dst.mem[0][6*PageSize:7*PageSize], content(0x66)) {
		t.Fatal("destination does not hold the new content of page 6")
	}
}

// (c) A page written after the dirty-log fetch but before its chunk is sent.
// Page 200 (chunk 3) is dirty in sync 1; the write happens at the first
// ClearDirtyLog of that iteration, i.e. while chunk 0 is being sent. With
// clear-before-send, chunk 3's clear absorbs the write: page 200 goes out
// once, with its newest content. With the whole bitmap cleared right after
// the fetch (classic), the write is logged again and page 200 is reported
// dirty in the next iteration: plain pre-copy sends it a second time, the
// digest filter skips it as false dirty.
func TestWrittenBeforeSentClearBeforeSend(t *testing.T) {
	cases := []struct {
		name        string
		noClear     bool
		noDigest    bool
		wantSends   int // FULL sends of page 200 in total (iteration 0 included)
		wantFalse   uint64
		wantDirty2  bool // page 200 reported dirty again after iteration 1
		description string
	}{
		{"clear-before-send", false, false, 2, 0, false, "sent once after iteration 0"},
		{"clear-before-send/no-digest", false, true, 2, 0, false, "sent once after iteration 0"},
		{"classic/no-digest", true, true, 3, 0, true, "sent twice after iteration 0"},
		{"classic/digest", true, false, 2, 1, true, "second report skipped as false dirty"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			src := newTestSource(true)
			src.beforeFetch = func(n int) {
				if n == 1 {
					src.write(0, 5, content(0x05))   // chunk 0
					src.write(0, 200, content(0x20)) // chunk 3
				}
			}
			cleared := false
			src.onClear = func(region int, first uint64) {
				if src.fetches == 1 && !cleared {
					cleared = true
					src.write(0, 200, content(0x21)) // after the fetch, before chunk 3 is sent
				}
			}
			dst := &fakeDest{}
			opts := pinned()
			opts.NoClearBeforeSend, opts.NoDigest = c.noClear, c.noDigest
			res := runMigration(t, src, dst, opts, ReceiveOptions{})
			mustSucceed(t, res)
			sameMemory(t, src, dst)
			if !cleared {
				t.Fatal("the write hook never ran")
			}
			if got := res.wire.full[200]; got != c.wantSends {
				t.Errorf("page 200 sent %d times, want %d (%s)", got, c.wantSends, c.description)
			}
			var falseDirty uint64
			for _, it := range res.stats.Iterations[2:] {
				falseDirty += it.PagesFalseDirty
			}
			if falseDirty != c.wantFalse {
				t.Errorf("false dirty after iteration 1: %d, want %d", falseDirty, c.wantFalse)
			}
			if dirty2 := res.stats.Iterations[2].PagesDirty == 1; dirty2 != c.wantDirty2 {
				t.Errorf("iteration 2 dirty = %d, want page 200 reported again: %v", res.stats.Iterations[2].PagesDirty, c.wantDirty2)
			}
			for _, it := range res.stats.Iterations {
				t.Log(FormatIteration(it))
			}
		})
	}
}

// (d) Zero pages travel as ZERO entries, in iteration 0 and later; zeroing
// an already zero page is a false dirty.
func TestZeroPages(t *testing.T) {
	src := newTestSource(true)
	src.beforeFetch = func(n int) {
		if n == 1 {
			src.fillPage(0, 11, 0) // non-zero → zero
			src.fillPage(0, 9, 0)  // zero → zero
		}
	}
	dst := &fakeDest{}
	// Make the destination memory dirty where zero pages land, to prove the
	// receiver zeroes them rather than relying on fresh memory.
	res := runMigration(t, src, &scribbleDest{fakeDest: dst}, pinned(), ReceiveOptions{})
	mustSucceed(t, res)
	sameMemory(t, src, dst)
	if res.wire.zero[9] != 1 || res.wire.full[9] != 0 || res.wire.zero[10] != 1 {
		t.Fatalf("zero pages 9/10: zero %d/%d full %d, want 1/1 and 0", res.wire.zero[9], res.wire.zero[10], res.wire.full[9])
	}
	if res.wire.full[11] != 1 || res.wire.zero[11] != 1 {
		t.Fatalf("page 11: full %d zero %d, want 1 and 1", res.wire.full[11], res.wire.zero[11])
	}
	it0, it1 := res.stats.Iterations[0], res.stats.Iterations[1]
	if it0.PagesZero != 2 || it0.PagesSent != r0Pages+r1Pages-2 || it0.PagesDirty != r0Pages+r1Pages {
		t.Fatalf("iteration 0: %+v", it0)
	}
	if it1.PagesZero != 1 || it1.PagesFalseDirty != 1 || it1.PagesSent != 0 {
		t.Fatalf("iteration 1: %+v", it1)
	}
}

// scribbleDest fills freshly prepared memory with 0xee.
type scribbleDest struct{ *fakeDest }

func (d *scribbleDest) Prepare(info VMInfo) error {
	if err := d.fakeDest.Prepare(info); err != nil {
		return err
	}
	for _, m := range d.mem {
		for i := range m {
			m[i] = 0xee
		}
	}
	return nil
}

// (e) The destination ends up equal to the source, in both dirty-log modes,
// with several iterations of changes, and the handshake carried the layout.
func TestDestinationEqualsSource(t *testing.T) {
	for _, manual := range []bool{true, false} {
		src := newTestSource(manual)
		src.beforeFetch = func(n int) {
			for p := uint64(0); p < 20 && n <= 3; p++ {
				src.write(n%2, p*3, content(byte(n*31+int(p))))
			}
		}
		dst := &fakeDest{}
		res := runMigration(t, src, dst, pinned(), ReceiveOptions{})
		mustSucceed(t, res)
		sameMemory(t, src, dst)
		if !dst.started || dst.discarded || string(dst.state) != string(src.state) {
			t.Fatalf("manual=%v: started %v discarded %v state %q", manual, dst.started, dst.discarded, dst.state)
		}
		if dst.info.VCPUs != 2 || len(dst.info.Regions) != 2 || dst.info.Regions[1] != src.info.Regions[1] ||
			strings.Join(dst.info.Devices, ",") != "serial0,virtio-blk0" {
			t.Fatalf("handshake carried %+v", dst.info)
		}
		if src.resumes != 0 || src.pauses != 1 || src.stops != 1 {
			t.Fatalf("source: paused %d resumed %d stopped logging %d", src.pauses, src.resumes, src.stops)
		}
		if !res.stats.Converged || res.stats.DowntimeMS <= 0 || res.stats.BytesTotal != res.rstats.BytesTotal {
			t.Fatalf("stats: %+v; receiver read %d bytes", res.stats, res.rstats.BytesTotal)
		}
		last := res.stats.Iterations[len(res.stats.Iterations)-1]
		if !last.StopAndCopy {
			t.Fatal("last iteration is not the stop-and-copy pass")
		}
		want := []RecordType{RecHello, RecIterationStart}
		for i, ty := range want {
			if res.wire.types[i] != ty {
				t.Fatalf("record %d is %v, want %v", i, res.wire.types[i], ty)
			}
		}
		n := len(res.wire.types)
		if res.wire.types[n-3] != RecState || res.wire.types[n-2] != RecEnd || res.wire.types[n-1] != RecCommit {
			t.Fatalf("stream ends with %v", res.wire.types[n-3:])
		}
	}
}

// A page dirtied before the fetch that decided to stop is sent during
// stop-and-copy (the pending bits survive the decision), in both modes.
func TestStopAndCopySendsPendingPages(t *testing.T) {
	for _, manual := range []bool{true, false} {
		src := newTestSource(manual)
		src.beforeFetch = func(n int) {
			if n == 1 {
				src.write(0, 77, content(0x77))
			}
		}
		dst := &fakeDest{}
		res := runMigration(t, src, dst, Options{Downtime: time.Hour}, ReceiveOptions{})
		mustSucceed(t, res)
		sameMemory(t, src, dst)
		if len(res.stats.Iterations) != 2 || res.stats.Iterations[1].PagesSent != 1 {
			t.Fatalf("manual=%v: iterations %+v", manual, res.stats.Iterations)
		}
	}
}

// corruptProxy relays records from the sender to the receiver, letting
// mutate change them (the CRC is recomputed, so only the digest check can
// notice), and relays the receiver's bytes back untouched.
func corruptProxy(t *testing.T, fromSender, toReceiver net2, mutate func(final bool, rec *record)) {
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := toReceiver.Read(buf)
			if n > 0 {
				if _, werr := fromSender.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				fromSender.Close()
				return
			}
		}
	}()
	go func() {
		defer toReceiver.Close()
		rr := newRecordReader(fromSender)
		final := false
		for {
			rec, err := rr.next()
			if err != nil {
				return
			}
			if rec.Type == RecIterationStart {
				_, flags, _ := decodeIterationStart(rec.Payload)
				final = flags&iterFinal != 0
			}
			mutate(final, &rec)
			if _, err := toReceiver.Write(appendRecordFlags(nil, rec.Type, rec.Flags, rec.Payload)); err != nil {
				return
			}
		}
	}()
}

// (f) A page whose data does not match its digest aborts the migration; the
// source guest, paused for stop-and-copy, runs again.
func TestDigestMismatchAbortsAndResumes(t *testing.T) {
	src := newTestSource(true)
	src.beforeFetch = func(n int) {
		if n == 1 {
			src.write(0, 3, content(0x33))
		}
	}
	dst := &fakeDest{}
	corrupted := false
	res := runProxied(t, src, dst, Options{Downtime: time.Hour, Compress: CompressOff}, func(final bool, rec *record) {
		if final && rec.Type == RecPages && !corrupted {
			it := newRunIter(rec.Payload, 1<<40)
			var r pageRun
			for it.next(&r) {
				if r.Kind == pageFull {
					r.Data[100] ^= 0x01
					corrupted = true
					return
				}
			}
		}
	})
	if !corrupted {
		t.Fatal("nothing was corrupted")
	}
	if !errors.Is(res.recvErr, ErrDigestMismatch) {
		t.Fatalf("receiver error = %v, want ErrDigestMismatch", res.recvErr)
	}
	var re *RemoteError
	if !errors.As(res.sendErr, &re) || !strings.Contains(re.Msg, "digest mismatch") {
		t.Fatalf("sender error = %v, want the receiver's digest mismatch message", res.sendErr)
	}
	if src.pauses != 1 || src.resumes != 1 || src.paused || src.logging {
		t.Fatalf("source: pauses %d resumes %d paused %v logging %v", src.pauses, src.resumes, src.paused, src.logging)
	}
	if dst.started || !dst.discarded {
		t.Fatalf("destination: started %v discarded %v", dst.started, dst.discarded)
	}
}

// (g) Errors on the destination reach the sender as its message, and the
// source guest resumes.
func TestReceiverErrorResumesSource(t *testing.T) {
	cases := []struct {
		name    string
		dst     *fakeDest
		msg     string
		resumes int
	}{
		{"prepare", &fakeDest{prepareErr: errors.New("no device virtio-blk0 on this host")}, "no device virtio-blk0", 0},
		{"restore", &fakeDest{restoreErr: errors.New("CPUID mismatch")}, "CPUID mismatch", 1},
		{"start", &fakeDest{startErr: errors.New("KVM_RUN failed")}, "KVM_RUN failed", 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			src := newTestSource(true)
			res := runMigration(t, src, c.dst, Options{}, ReceiveOptions{})
			var re *RemoteError
			if !errors.As(res.sendErr, &re) || !strings.Contains(re.Msg, c.msg) {
				t.Fatalf("sender error = %v, want a RemoteError with %q", res.sendErr, c.msg)
			}
			if res.recvErr == nil || !strings.Contains(res.recvErr.Error(), c.msg) {
				t.Fatalf("receiver error = %v", res.recvErr)
			}
			if src.resumes != c.resumes || src.paused || src.logging {
				t.Fatalf("source: resumes %d (want %d) paused %v logging %v", src.resumes, c.resumes, src.paused, src.logging)
			}
			if c.dst.started || c.dst.discarded != (c.name != "prepare") {
				t.Fatalf("destination: started %v discarded %v", c.dst.started, c.dst.discarded)
			}
		})
	}
}

// Source-side failures: the destination is told and discards its VM.
func TestSourceErrorTellsDestination(t *testing.T) {
	src := newTestSource(true)
	src.stateErr = errors.New("KVM_GET_XSAVE failed")
	dst := &fakeDest{}
	res := runMigration(t, src, dst, Options{}, ReceiveOptions{})
	if res.sendErr == nil || !strings.Contains(res.sendErr.Error(), "KVM_GET_XSAVE") {
		t.Fatalf("sender error = %v", res.sendErr)
	}
	var re *RemoteError
	if !errors.As(res.recvErr, &re) || !strings.Contains(re.Msg, "KVM_GET_XSAVE") {
		t.Fatalf("receiver error = %v, want the source's message", res.recvErr)
	}
	if src.resumes != 1 || src.paused || !dst.discarded || dst.started {
		t.Fatalf("source resumed %d paused %v; destination discarded %v started %v", src.resumes, src.paused, dst.discarded, dst.started)
	}
}

// busySource dirties 100 pages with new content before every sync.
func busySource() *fakeSource {
	src := newTestSource(true)
	src.beforeFetch = func(n int) {
		for p := uint64(0); p < 100; p++ {
			src.write(0, 100+p, content(byte(n)))
		}
	}
	return src
}

// (h) Convergence: a guest that keeps dirtying pages, a downtime budget too
// small to fit them, and a limit on iterations or time.
func TestConvergenceLimits(t *testing.T) {
	t.Run("abort", func(t *testing.T) {
		src := busySource()
		dst := &fakeDest{}
		res := runMigration(t, src, dst, Options{Downtime: time.Nanosecond, MaxIterations: 3, OnTimeout: AbortOnTimeout}, ReceiveOptions{})
		if !errors.Is(res.sendErr, ErrNotConverged) {
			t.Fatalf("sender error = %v, want ErrNotConverged", res.sendErr)
		}
		if len(res.stats.Iterations) != 3 || src.pauses != 0 || src.paused || src.logging {
			t.Fatalf("iterations %d, pauses %d paused %v logging %v", len(res.stats.Iterations), src.pauses, src.paused, src.logging)
		}
		var re *RemoteError
		if !errors.As(res.recvErr, &re) || !strings.Contains(re.Msg, "did not converge") || !dst.discarded || dst.started {
			t.Fatalf("receiver: %v, discarded %v started %v", res.recvErr, dst.discarded, dst.started)
		}
	})
	t.Run("force", func(t *testing.T) {
		src := busySource()
		dst := &fakeDest{}
		res := runMigration(t, src, dst, Options{Downtime: time.Nanosecond, MaxIterations: 3, OnTimeout: ForceOnTimeout}, ReceiveOptions{})
		mustSucceed(t, res)
		sameMemory(t, src, dst)
		if res.stats.Converged || len(res.stats.Iterations) != 4 || res.stats.Iterations[3].PagesSent != 100 {
			t.Fatalf("converged %v, iterations %+v", res.stats.Converged, res.stats.Iterations)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		src := busySource()
		res := runMigration(t, src, &fakeDest{}, Options{Downtime: time.Nanosecond, Timeout: time.Nanosecond}, ReceiveOptions{})
		if !errors.Is(res.sendErr, ErrNotConverged) || !strings.Contains(res.sendErr.Error(), "timeout") || len(res.stats.Iterations) != 1 {
			t.Fatalf("sender error = %v after %d iterations", res.sendErr, len(res.stats.Iterations))
		}
	})
	t.Run("fits-budget", func(t *testing.T) {
		src := busySource()
		dst := &fakeDest{}
		res := runMigration(t, src, dst, Options{Downtime: time.Hour, MaxIterations: 3}, ReceiveOptions{})
		mustSucceed(t, res)
		sameMemory(t, src, dst)
		if !res.stats.Converged || len(res.stats.Iterations) != 2 {
			t.Fatalf("converged %v after %d iterations", res.stats.Converged, len(res.stats.Iterations))
		}
	})
}

// Progress sees every iteration once, in order, and the stats marshal with
// the documented JSON names.
func TestProgressAndStatsJSON(t *testing.T) {
	src := busySource()
	var seen []IterationStats
	opts := Options{Downtime: time.Nanosecond, MaxIterations: 3, OnTimeout: ForceOnTimeout,
		Progress: func(it IterationStats) { seen = append(seen, it) }}
	res := runMigration(t, src, &fakeDest{}, opts, ReceiveOptions{})
	mustSucceed(t, res)
	if len(seen) != len(res.stats.Iterations) {
		t.Fatalf("progress called %d times for %d iterations", len(seen), len(res.stats.Iterations))
	}
	for i, it := range seen {
		if it.Iteration != i || it != res.stats.Iterations[i] {
			t.Fatalf("progress %d: %+v, stats %+v", i, it, res.stats.Iterations[i])
		}
		if it.PagesDirty != it.PagesFalseDirty+it.PagesZero+it.PagesSent+it.PagesLeft {
			t.Fatalf("iteration %d does not add up: %+v", i, it)
		}
	}
	if seen[1].DirtyRate <= 0 {
		t.Fatalf("iteration 1 dirty rate %v", seen[1].DirtyRate)
	}
	line := FormatIteration(seen[1])
	for _, want := range []string{"iter 1", "dirty 100", "false-dirty skipped 0", "zero 0", "sent 100", "MiB", "dirty rate"} {
		if !strings.Contains(line, want) {
			t.Fatalf("line %q lacks %q", line, want)
		}
	}
	b, err := json.Marshal(res.stats)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{`"iterations"`, `"pages_dirty"`, `"pages_false_dirty"`, `"pages_zero"`, `"pages_sent"`,
		`"bytes"`, `"seconds"`, `"total_seconds"`, `"downtime_ms"`, `"bytes_total"`, `"converged"`} {
		if !bytes.Contains(b, []byte(key)) {
			t.Fatalf("JSON %s lacks %s", b, key)
		}
	}
	t.Log(res.stats.Summary())
}

// The bandwidth cap holds the long-run rate.
func TestBandwidthCap(t *testing.T) {
	src := newTestSource(true)
	const rate = 4 << 20
	start := time.Now()
	res := runMigration(t, src, &fakeDest{}, Options{MaxBandwidth: rate}, ReceiveOptions{})
	mustSucceed(t, res)
	el := time.Since(start)
	// The bucket starts full: its burst is free.
	burst := int64(newTokenBucket(rate).burst)
	want := time.Duration(float64(res.stats.BytesTotal-burst) / rate * float64(time.Second))
	if el < want*9/10 {
		t.Fatalf("%d bytes took %v at a %d B/s cap, want at least %v", res.stats.BytesTotal, el, rate, want)
	}
}

// Cancelling the context aborts, resumes a paused source, and tells the
// destination.
func TestCancelResumes(t *testing.T) {
	src := newTestSource(true)
	dst := &fakeDest{}
	ctxCancel := make(chan struct{})
	src.stateErr = nil
	res := runMigrationCtx(t, src, dst, Options{Downtime: time.Hour}, func(cancel func()) {
		src.beforeFetch = func(n int) {
			if n == 2 { // the final fetch, guest paused
				cancel()
				close(ctxCancel)
			}
		}
	})
	<-ctxCancel
	if !errors.Is(res.sendErr, errCanceled) {
		t.Fatalf("sender error = %v", res.sendErr)
	}
	if src.resumes != 1 || src.paused || dst.started || !dst.discarded {
		t.Fatalf("source resumed %d paused %v; destination started %v discarded %v", src.resumes, src.paused, dst.started, dst.discarded)
	}
}

// The digest filter lets a guest converge whose dirty pages are mostly
// rewritten with the same bytes: plain pre-copy counts (and sends) all of
// them and cannot fit the budget; with the filter the estimate counts only
// what the last iteration really had to send.
func TestDigestFilterHelpsConvergence(t *testing.T) {
	run := func(noDigest bool) result {
		src := newFakeSource(true, 512*PageSize)
		randomFill(src.mem[0], 7)
		src.beforeFetch = func(n int) {
			for p := uint64(0); p < 200; p++ { // false dirty: same bytes
				src.write(0, p, append([]byte(nil), src.page(0, p)...))
			}
			for p := uint64(300); p < 310; p++ { // really changed
				src.write(0, p, content(byte(n)))
			}
		}
		opts := Options{MaxBandwidth: 16 << 20, Downtime: 20 * time.Millisecond, MaxIterations: 4, NoDigest: noDigest}
		return runMigration(t, src, &fakeDest{}, opts, ReceiveOptions{})
	}
	plain := run(true)
	if !errors.Is(plain.sendErr, ErrNotConverged) {
		t.Fatalf("plain pre-copy: %v, want ErrNotConverged", plain.sendErr)
	}
	filtered := run(false)
	mustSucceed(t, filtered)
	its := filtered.stats.Iterations
	if !filtered.stats.Converged || len(its) != 3 || its[1].PagesFalseDirty != 200 || its[1].PagesSent != 10 {
		t.Fatalf("with digests: converged %v, iterations %+v", filtered.stats.Converged, its)
	}
	t.Logf("plain: %v", plain.sendErr)
	for _, it := range its {
		t.Log(FormatIteration(it))
	}
}

// Iteration 0 clears chunk by chunk too: a page written after dirty logging
// started but before its chunk of iteration 0 was read is sent once, with
// its new content, and not reported dirty afterwards. With one clear of the
// whole log before iteration 0 (classic), the write is reported again.
func TestIterationZeroClearBeforeSend(t *testing.T) {
	for _, classic := range []bool{false, true} {
		src := newTestSource(true)
		wrote := false
		src.onClear = func(region int, first uint64) {
			if src.fetches == 0 && region == 0 && first == 0 && !wrote {
				wrote = true
				src.write(0, 200, content(0x42)) // chunk 3, not read yet
			}
		}
		dst := &fakeDest{}
		opts := pinned()
		opts.NoClearBeforeSend, opts.NoDigest = classic, classic
		res := runMigration(t, src, dst, opts, ReceiveOptions{})
		mustSucceed(t, res)
		sameMemory(t, src, dst)
		if !wrote {
			t.Fatal("hook never ran")
		}
		dirty1 := res.stats.Iterations[1].PagesDirty
		if classic && (dirty1 != 1 || res.wire.full[200] != 2) {
			t.Errorf("classic: iteration 1 dirty %d, page 200 sent %d times; want 1 and 2", dirty1, res.wire.full[200])
		}
		if !classic && (dirty1 != 0 || res.wire.full[200] != 1 || len(res.stats.Iterations) != 2) {
			t.Errorf("clear-before-send: iteration 1 dirty %d, page 200 sent %d times, %d iterations; want 0, 1, 2",
				dirty1, res.wire.full[200], len(res.stats.Iterations))
		}
	}
}

// Regions whose page counts are not multiples of 64 (or of the chunk size)
// migrate completely, including their last pages.
func TestOddRegionSizes(t *testing.T) {
	for _, manual := range []bool{true, false} {
		src := newFakeSource(manual, 100*PageSize, 3*PageSize, 130*PageSize)
		for i := range src.mem {
			randomFill(src.mem[i], uint64(i+10))
		}
		clear(src.page(2, 129))
		src.beforeFetch = func(n int) {
			if n == 1 {
				src.write(0, 99, content(1))
				src.write(1, 2, content(2))
				src.write(2, 128, content(3))
				src.fillPage(2, 64, 0)
			}
		}
		dst := &fakeDest{}
		res := runMigration(t, src, dst, pinned(), ReceiveOptions{})
		mustSucceed(t, res)
		sameMemory(t, src, dst)
		if it := res.stats.Iterations[1]; it.PagesDirty != 4 || it.PagesSent != 3 || it.PagesZero != 1 {
			t.Fatalf("manual=%v: iteration 1 %+v", manual, it)
		}
		if res.wire.zero[100+3+129] != 1 || res.wire.full[100+3+128] != 2 {
			t.Fatal("last pages of region 2")
		}
	}
}

// A vCPU goroutine keeps writing (some changes, some same-byte rewrites,
// some zeroing) while the sender reads the same memory: whatever the
// interleaving, the destination must end up equal to the source. The reads
// race with the writes by design (as with a real guest), so this test does
// not run under the race detector.
func TestConcurrentGuestWrites(t *testing.T) {
	if raceEnabled {
		t.Skip("guest memory is read while a goroutine writes it, on purpose")
	}
	for _, opts := range []Options{
		{Downtime: 5 * time.Millisecond, MaxIterations: 8, OnTimeout: ForceOnTimeout, ChunkPages: 64},
		{Downtime: 5 * time.Millisecond, MaxIterations: 8, OnTimeout: ForceOnTimeout, ChunkPages: 64, NoClearBeforeSend: true},
		{Downtime: 5 * time.Millisecond, MaxIterations: 8, OnTimeout: ForceOnTimeout, NoDigest: true},
	} {
		src := newFakeSource(true, 2048*PageSize)
		randomFill(src.mem[0], 5)
		stop := make(chan struct{})
		done := make(chan int)
		go func() {
			x, n := uint64(88172645463325252), 0
			for {
				select {
				case <-stop:
					done <- n
					return
				default:
				}
				x ^= x << 13
				x ^= x >> 7
				x ^= x << 17
				p := x % 2048
				var data []byte
				switch x % 3 {
				case 0:
					data = content(byte(x >> 20))
				case 1:
					data = make([]byte, PageSize)
				default:
					src.mu.Lock()
					data = append([]byte(nil), src.page(0, p)...)
					src.mu.Unlock()
				}
				if src.guestWrite(0, p, data) {
					n++
				}
				if n%64 == 0 {
					time.Sleep(50 * time.Microsecond)
				}
			}
		}()
		dst := &fakeDest{}
		res := runMigration(t, src, dst, opts, ReceiveOptions{})
		close(stop)
		writes := <-done
		mustSucceed(t, res)
		sameMemory(t, src, dst)
		var falseDirty uint64
		for _, it := range res.stats.Iterations {
			falseDirty += it.PagesFalseDirty
		}
		t.Logf("noClear=%v noDigest=%v: %d guest writes, %d iterations, %d false dirty skipped, converged %v",
			opts.NoClearBeforeSend, opts.NoDigest, writes, len(res.stats.Iterations), falseDirty, res.stats.Converged)
	}
}
