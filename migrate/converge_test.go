package migrate

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

// midPassSource is 8 MiB of non-zero pages (one zero page in ten).
func midPassSource(manual bool) *fakeSource {
	src := newFakeSource(manual, 8<<20)
	randomFill(src.mem[0], 7)
	for p := uint64(0); p < 8<<20/PageSize; p += 10 {
		clear(src.page(0, p))
	}
	return src
}

// midPassOptions: at 8 MiB/s a pass over 8 MiB takes ~1 s, while a 500 ms
// budget can take half of it: the pass should stop about half way.
func midPassOptions() Options {
	return Options{Downtime: 500 * time.Millisecond, MaxBandwidth: 8 << 20, BufferSize: 256 << 10}
}

// When the rest of a pass fits in the downtime budget, the sender stops the
// pass and goes to stop-and-copy, which sends the pages the pass did not
// reach and the pages written behind it; nothing is lost and nothing goes
// twice for nothing.
func TestMidPassStop(t *testing.T) {
	src := midPassSource(true)
	wrote := false
	src.onClear = func(region int, first uint64) {
		// The guest writes page 3 again once the pass is beyond it.
		if first >= 1024 && !wrote {
			wrote = true
			src.fillPage(0, 3, 0xab)
		}
	}
	dst := &fakeDest{}
	var seen []IterationStats
	opts := midPassOptions()
	opts.Progress = func(it IterationStats) { seen = append(seen, it) }
	res := runMigration(t, src, dst, opts, ReceiveOptions{})
	mustSucceed(t, res)
	sameMemory(t, src, dst)
	its := res.stats.Iterations
	if !res.stats.Converged || len(its) != 2 || !its[1].StopAndCopy {
		t.Fatalf("converged %v, iterations %+v", res.stats.Converged, its)
	}
	it0, sc := its[0], its[1]
	total := uint64(8 << 20 / PageSize)
	if it0.PagesLeft == 0 || it0.PagesLeft >= total*3/4 {
		t.Fatalf("iteration 0 left %d of %d pages to stop-and-copy, want some but not most", it0.PagesLeft, total)
	}
	if it0.PagesDirty != it0.PagesFalseDirty+it0.PagesZero+it0.PagesSent+it0.PagesLeft {
		t.Fatalf("iteration 0 does not add up: %+v", it0)
	}
	if !wrote || sc.PagesDirty != it0.PagesLeft+1 {
		t.Fatalf("stop-and-copy dirty %d, want the %d pages left + page 3 (written: %v)", sc.PagesDirty, it0.PagesLeft, wrote)
	}
	if sent := it0.PagesSent + it0.PagesZero + sc.PagesSent + sc.PagesZero; sent != total+1 {
		t.Fatalf("%d page entries sent, want each of %d pages once and page 3 twice", sent, total)
	}
	if len(seen) != 2 || seen[0].PagesLeft != it0.PagesLeft {
		t.Fatalf("progress saw %+v", seen)
	}
	t.Logf("%s\n%s\n%s", FormatIteration(it0), FormatIteration(sc), res.stats.Summary())
}

// A page a device writes behind the pass (a disk read into the page cache)
// is reported by KVM's log only through the VMM's DirtyBitmap. The mid-pass
// peek reads the log without merging it into the pending pages: it must
// not consume the device's mark, or the stop-and-copy's fetch never sees
// the page and the destination keeps its old content.
func TestMidPassPeekKeepsDeviceWrites(t *testing.T) {
	src := midPassSource(true)
	wrote, writeAt := false, 0
	src.onClear = func(region int, first uint64) {
		if first >= 1024 && !wrote {
			wrote, writeAt = true, src.fetches
			src.deviceWrite(0, 3, bytes.Repeat([]byte{0xcd}, PageSize))
		}
	}
	dst := &fakeDest{}
	res := runMigration(t, src, dst, midPassOptions(), ReceiveOptions{})
	mustSucceed(t, res)
	its := res.stats.Iterations
	if !wrote || len(its) != 2 || its[0].PagesLeft == 0 {
		t.Fatalf("want the device write, then a pass cut short by a mid-pass peek: wrote %v, iterations %+v", wrote, its)
	}
	// Reads of region 0's log: the peeks that cut the pass, then the
	// stop-and-copy's fetch.
	if src.fetches < writeAt+2 {
		t.Fatalf("%d reads of the log after the device write, want a peek and the final fetch", src.fetches-writeAt)
	}
	sameMemory(t, src, dst)
	if res.wire.full[3] != 2 {
		t.Fatalf("page 3 sent %d times in full, want twice (iteration 0, then after the device wrote it)", res.wire.full[3])
	}
}

// Without manual dirty-log protection, reading the log clears it, so the
// sender does not look mid-pass: every pass runs to its end.
func TestMidPassNeedsManualMode(t *testing.T) {
	src := midPassSource(false)
	dst := &fakeDest{}
	res := runMigration(t, src, dst, midPassOptions(), ReceiveOptions{})
	mustSucceed(t, res)
	sameMemory(t, src, dst)
	for _, it := range res.stats.Iterations {
		if it.PagesLeft != 0 {
			t.Fatalf("iteration %d left %d pages", it.Iteration, it.PagesLeft)
		}
	}
}

// A budget too small for the rest of the pass never stops it early.
func TestMidPassBudgetTooSmall(t *testing.T) {
	src := midPassSource(true)
	dst := &fakeDest{}
	opts := midPassOptions()
	opts.Downtime = 20 * time.Millisecond
	res := runMigration(t, src, dst, opts, ReceiveOptions{})
	mustSucceed(t, res)
	sameMemory(t, src, dst)
	// 20 ms at 8 MiB/s is 40 pages, less than one 512-page chunk.
	if left := res.stats.Iterations[0].PagesLeft; left != 0 {
		t.Fatalf("iteration 0 left %d pages with a 20 ms budget", left)
	}
}

// The decision between two chunks, on numbers: 1 MiB/s, 300 ms budget
// (300 KiB = 75 pages), a full page per dirty page.
func TestPassPointStop(t *testing.T) {
	base := passPoint{pageCost: PageSize, bw: 1 << 20, budget: 300 << 10, elapsed: 1}
	cases := []struct {
		name string
		edit func(p *passPoint)
		want bool
	}{
		{"rest does not fit", func(p *passPoint) { p.left, p.logged, p.capped = 70, 80, true }, false},
		{"buffered bytes count", func(p *passPoint) { p.left, p.logged, p.capped, p.buffered = 50, 50, true, 200<<10 }, false},
		{"capped: stop as soon as it fits", func(p *passPoint) { p.left, p.logged, p.capped = 70, 75, true }, true},
		{"uncapped, guest quiet: finish the pass", func(p *passPoint) { p.left, p.logged = 70, 70 }, false},
		// 20 pages written behind the pass in 1 s; the rest (50 pages,
		// 0.2 s) adds 4: 24 pages at the end, fits: finish.
		{"uncapped, slow writer: finish the pass", func(p *passPoint) { p.left, p.logged = 50, 70 }, false},
		// 20 pages behind in 0.1 s: 200 pages/s; the rest (55 pages, 0.21 s)
		// adds 43: 63 pages at the end fits; but at 0.05 s, 86 would not.
		{"uncapped, fast writer, still fits at the end", func(p *passPoint) { p.left, p.logged, p.elapsed = 55, 75, 0.1 }, false},
		{"uncapped, fast writer: stop while it fits", func(p *passPoint) { p.left, p.logged, p.elapsed = 55, 75, 0.05 }, true},
		{"filtered pages cost less", func(p *passPoint) { p.left, p.logged, p.capped, p.pageCost = 140, 150, true, PageSize/2 }, true},
	}
	for _, c := range cases {
		p := base
		c.edit(&p)
		if got := p.stop(); got != c.want {
			t.Errorf("%s: %+v: stop = %v, want %v", c.name, p, got, c.want)
		}
	}
}

// Without a bandwidth cap the rest of a pass goes out at the same rate
// before or after the pause, so a quiet guest's pass is finished while it
// runs, even though the budget could take the rest: nothing is left to the
// stop-and-copy.
func TestMidPassUncappedQuietFinishes(t *testing.T) {
	src := midPassSource(true)
	// Slow the pass down (~100 ms) so that its bandwidth gets measured.
	src.onClear = func(int, uint64) { time.Sleep(3 * time.Millisecond) }
	dst := &fakeDest{}
	opts := Options{Downtime: 10 * time.Second, ChunkPages: 64}
	res := runMigration(t, src, dst, opts, ReceiveOptions{})
	mustSucceed(t, res)
	sameMemory(t, src, dst)
	it0 := res.stats.Iterations[0]
	if it0.PagesLeft != 0 || it0.Seconds < 0.06 {
		t.Fatalf("iteration 0 left %d pages after %.3f s, want the pass finished (and > 60 ms, so that midPass looked)", it0.PagesLeft, it0.Seconds)
	}
}

// its builds iteration statistics: bytes and seconds per iteration.
func its(pairs ...float64) []IterationStats {
	var out []IterationStats
	for i := 0; i+1 < len(pairs); i += 2 {
		out = append(out, IterationStats{Iteration: i / 2, Bytes: int64(pairs[i]), Seconds: pairs[i+1]})
	}
	return out
}

func TestBandwidth(t *testing.T) {
	const M = 1 << 20
	cases := []struct {
		name string
		its  []IterationStats
		cap  int64
		want float64
	}{
		{"none yet", nil, 0, 0},
		{"the last iteration when it wrote enough", its(8*M, 1, 4*M, 2), 0, 2 * M},
		{"all iterations when the last wrote little", its(8*M, 1, 0.5*M, 1), 0, 4.25 * M},
		{"never above the cap", its(8*M, 1), 4 * M, 4 * M},
		{"nothing measured", its(0, 0), 0, 0},
	}
	for _, c := range cases {
		if got := bandwidth(c.its, c.cap); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

func TestSendFraction(t *testing.T) {
	it := func(iter int, dirty, left uint64, bytes int64) []IterationStats {
		return []IterationStats{{Iteration: iter, PagesDirty: dirty, PagesLeft: left, Bytes: bytes}}
	}
	cases := []struct {
		name   string
		its    []IterationStats
		digest bool
		want   float64
	}{
		{"no iteration yet", nil, true, 1},
		{"after iteration 0 every page counts", it(0, 1000, 0, 100*PageSize), true, 1},
		{"without the digest filter every page counts", it(1, 1000, 0, 100*PageSize), false, 1},
		{"too few dirty pages to tell", it(1, 63, 0, PageSize), true, 1},
		{"what was written per dirty page", it(1, 1000, 0, 250*PageSize), true, 0.25},
		{"pages left by a cut pass do not count", it(1, 1000, 500, 250*PageSize), true, 0.5},
		{"never more than a page", it(1, 1000, 0, 2000*PageSize), true, 1},
	}
	for _, c := range cases {
		if got := sendFraction(c.its, c.digest); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

func TestDecide(t *testing.T) {
	const M = 1 << 20
	o := Options{Downtime: 300 * time.Millisecond, MaxIterations: 5, Timeout: time.Minute}
	onesec := its(10*M, 1) // 10 MiB/s: the budget takes 3 MiB = 768 pages
	cases := []struct {
		name            string
		h               history
		o               Options
		dirty           uint64
		stop, converged bool
		err             error
	}{
		{"nothing dirty", history{its: onesec}, o, 0, true, true, nil},
		{"fits the budget", history{its: onesec}, o, 700, true, true, nil},
		{"does not fit: go on", history{its: onesec}, o, 2000, false, false, nil},
		{"iteration limit, abort", history{its: its(10*M, 1, 10*M, 1, 10*M, 1, 10*M, 1, 10*M, 1)}, o, 2000, false, false, ErrNotConverged},
		{"timeout, abort", history{its: onesec, elapsed: 2 * time.Minute}, o, 2000, false, false, ErrNotConverged},
		{"timeout, force", history{its: onesec, elapsed: 2 * time.Minute}, Options{Downtime: o.Downtime, MaxIterations: 5, Timeout: time.Minute, OnTimeout: ForceOnTimeout}, 2000, true, false, nil},
		{"no bandwidth measured yet", history{}, o, 1, false, false, nil},
	}
	for _, c := range cases {
		stop, conv, err := decide(c.h, c.o, c.dirty)
		if stop != c.stop || conv != c.converged || !errors.Is(err, c.err) || (c.err == nil) != (err == nil) {
			t.Errorf("%s: stop %v converged %v err %v; want %v %v %v", c.name, stop, conv, err, c.stop, c.converged, c.err)
		}
	}
}

func TestPassBandwidth(t *testing.T) {
	const M = 1 << 20
	earlier := its(4*M, 1)
	cases := []struct {
		name  string
		wrote int64
		el    time.Duration
		cap   int64
		want  float64
	}{
		{"measured in the pass", 2 * M, time.Second, 0, 2 * M},
		{"too little written: earlier iterations", M / 2, time.Second, 0, 4 * M},
		{"too short: earlier iterations", 2 * M, 10 * time.Millisecond, 0, 4 * M},
		{"capped", 16 * M, time.Second, 8 * M, 8 * M},
	}
	for _, c := range cases {
		if got := passBandwidth(c.wrote, c.el, earlier, c.cap); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
	if got := passBandwidth(M/2, time.Second, nil, 0); got != 0 {
		t.Errorf("first moments of a migration: %v, want 0", got)
	}
}

func TestPassPointRestFits(t *testing.T) {
	p := passPoint{pageCost: PageSize, budget: 100 * PageSize}
	for _, c := range []struct {
		left     uint64
		buffered float64
		want     bool
	}{{100, 0, true}, {101, 0, false}, {99, PageSize, true}, {99, PageSize + 1, false}} {
		p.left, p.buffered = c.left, c.buffered
		if got := p.restFits(); got != c.want {
			t.Errorf("left %d buffered %v: %v, want %v", c.left, c.buffered, got, c.want)
		}
	}
}

func TestPassProgress(t *testing.T) {
	p := PassProgress{Iteration: 0, PagesDone: 250, PagesTotal: 1000, Bytes: 4 << 20, Seconds: 2}
	if p.Rate() != 2<<20 {
		t.Errorf("rate %v, want 2 MiB/s", p.Rate())
	}
	if p.ETA() != 6*time.Second {
		t.Errorf("ETA %v, want 6s (750 pages at 125 pages/s)", p.ETA())
	}
	if got, want := p.String(), "iter 0: 250/1000 pages (25%), 2.0 MiB/s, pass ends in 6s"; got != want {
		t.Errorf("line %q, want %q", got, want)
	}
	if (PassProgress{PagesTotal: 10}).ETA() != 0 {
		t.Error("ETA before any page was visited is not 0")
	}
}

// Options.Live is called during a pass with where it stands.
func TestLiveProgressDuringPass(t *testing.T) {
	old := liveEvery
	liveEvery = 0
	defer func() { liveEvery = old }()
	src := newTestSource(true)
	var got []PassProgress
	opts := pinned()
	opts.Live = func(p PassProgress) { got = append(got, p) }
	res := runMigration(t, src, &fakeDest{}, opts, ReceiveOptions{})
	mustSucceed(t, res)
	if len(got) < 2 {
		t.Fatalf("Live called %d times, want one per chunk of iteration 0 at least", len(got))
	}
	first := got[0]
	if first.Iteration != 0 || first.PagesTotal != r0Pages+r1Pages || first.PagesDone == 0 || first.PagesDone > first.PagesTotal {
		t.Fatalf("first call %+v, want iteration 0 of %d pages with some done", first, r0Pages+r1Pages)
	}
	for i := 1; i < len(got); i++ {
		if got[i].Iteration == got[i-1].Iteration && got[i].PagesDone < got[i-1].PagesDone {
			t.Fatalf("pages done went back: %+v then %+v", got[i-1], got[i])
		}
	}
}
