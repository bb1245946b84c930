package migrate

import (
	"context"
	"errors"
	"io"
	"math/rand"
	"net"
	"sync"
	"testing"
	"time"
)

// postcopyDest is a fake PostcopyDestination: after StartPostcopy a
// "guest" goroutine touches missing pages at random, asks for each (need)
// and waits until it is filled, as a vCPU blocked on a fault would.
type postcopyDest struct {
	fakeDest
	mu       sync.Mutex
	cond     *sync.Cond
	missing  []uint64
	need     func(uint64)
	touched  int // pages the guest waited for
	ended    bool
	stop     chan struct{}
	guestRun sync.WaitGroup
	cannot   error
}

func newPostcopyDest() *postcopyDest {
	d := &postcopyDest{stop: make(chan struct{})}
	d.cond = sync.NewCond(&d.mu)
	return d
}

func (d *postcopyDest) CanPostcopy() error { return d.cannot }

func (d *postcopyDest) StartPostcopy(missing []uint64, need func(uint64)) error {
	d.mu.Lock()
	d.missing = append([]uint64(nil), missing...)
	d.need = need
	d.started = true
	total := uint64(len(missing)) * 64
	for g := uint64(0); g < total; g++ {
		if d.missing[g/64]&(1<<(g%64)) != 0 {
			clear(d.pageOf(g)) // the destination drops what it held
		}
	}
	d.mu.Unlock()
	d.guestRun.Add(1)
	go d.guest(total)
	return nil
}

// pageOf maps a global page (one region in these tests... or more).
func (d *postcopyDest) pageOf(g uint64) []byte {
	for i := range d.mem {
		n := uint64(len(d.mem[i])) / PageSize
		if g < n {
			return d.mem[i][g*PageSize : (g+1)*PageSize]
		}
		g -= n
	}
	panic("page outside memory")
}

// guest waits for random missing pages, as a running guest faults.
func (d *postcopyDest) guest(total uint64) {
	defer d.guestRun.Done()
	rng := rand.New(rand.NewSource(9))
	for {
		select {
		case <-d.stop:
			return
		default:
		}
		g := uint64(rng.Int63n(int64(total)))
		d.mu.Lock()
		if d.ended {
			d.mu.Unlock()
			return
		}
		if d.missing[g/64]&(1<<(g%64)) != 0 {
			d.touched++
			// Not under mu: need takes the session's lock, which the
			// session holds while it calls Fill (as vmm's destination does).
			d.mu.Unlock()
			d.need(g)
			d.mu.Lock()
			for d.missing[g/64]&(1<<(g%64)) != 0 && !d.ended {
				d.cond.Wait()
			}
		}
		d.mu.Unlock()
		time.Sleep(200 * time.Microsecond)
	}
}

func (d *postcopyDest) Fill(g uint64, data []byte) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.missing[g/64]&(1<<(g%64)) == 0 {
		return errors.New("fake: fill of a page that is not missing")
	}
	copy(d.pageOf(g), data)
	if data == nil {
		clear(d.pageOf(g))
	}
	d.missing[g/64] &^= 1 << (g % 64)
	d.cond.Broadcast()
	return nil
}

func (d *postcopyDest) EndPostcopy() error {
	d.mu.Lock()
	d.ended = true
	d.cond.Broadcast()
	d.mu.Unlock()
	close(d.stop)
	d.guestRun.Wait()
	return nil
}

// runPostcopy runs a migration over net.Pipe with a registry, and serves
// the request channel the sender dials on a Receive of its own.
func runPostcopy(t *testing.T, src Source, dst Destination, opts Options) result {
	t.Helper()
	return runPostcopyWith(t, NewSessions(), src, dst, opts, nil)
}

// A guest that rewrites whole pages faster than the link switches to
// post-copy after its first pass: it runs on the destination at once,
// the pages it waits for jump the queue on the channel, the rest are
// pushed, and the destination ends with exactly the paused source's
// memory.
func TestPostcopySwitchAndFinish(t *testing.T) {
	// 16 MiB at 8 MiB/s: a 2 s first pass, during which the guest
	// rewrites about half its pages; their push takes about a second.
	src := newThrottledSourceSize(40, 4096)
	dst := newPostcopyDest()
	opts := Options{MaxBandwidth: 8 << 20, Downtime: 50 * time.Millisecond, ChunkPages: 64,
		PostcopyAfterIterations: 1, NoAutoConverge: true, Compress: CompressOff}
	res := runPostcopy(t, src, dst, opts)
	mustSucceed(t, res)
	st := res.stats
	if !st.Postcopy || !dst.started || !dst.ended || !res.rstats.Postcopy {
		t.Fatalf("post-copy %v, started %v, ended %v: %s", st.Postcopy, dst.started, dst.ended, st.Summary())
	}
	sameMemory(t, src.fakeSource, &dst.fakeDest)
	if st.PagesMissing == 0 || st.PagesPushed+st.PagesServed != st.PagesMissing {
		t.Fatalf("missing %d, pushed %d, served %d", st.PagesMissing, st.PagesPushed, st.PagesServed)
	}
	if st.PagesServed == 0 || st.PostcopyStats.PagesRequested == 0 || dst.touched == 0 {
		t.Fatalf("the guest waited for %d pages, %d requested, %d served on the channel", dst.touched, st.PostcopyStats.PagesRequested, st.PagesServed)
	}
	if !src.paused || src.resumes != 0 {
		t.Fatalf("source paused %v, resumed %d times: it must stay paused", src.paused, src.resumes)
	}
	t.Logf("%s; missing %d, pushed %d, served %d; fault service median %.0f µs, p99 %.0f µs; post-copy %.3f s",
		st.Summary(), st.PagesMissing, st.PagesPushed, st.PagesServed, st.PostcopyStats.FaultMedianUS, st.PostcopyStats.FaultP99US, st.PostcopySeconds)
}

// A destination that cannot take post-copy refuses the HELLO: the source
// guest keeps running.
func TestPostcopyRefused(t *testing.T) {
	src := newThrottledSource(0)
	dst := newPostcopyDest()
	dst.cannot = errors.New("no userfaultfd here")
	res := runPostcopy(t, src, dst, Options{PostcopyAfterIterations: 1})
	var re *RemoteError
	if !errors.As(res.sendErr, &re) || dst.started {
		t.Fatalf("send error %v, destination started %v", res.sendErr, dst.started)
	}
	if src.paused {
		t.Fatal("the source guest was left paused")
	}
}

// runPostcopyWith is runPostcopy with a given registry and link (a proxy
// between the sides, or nil).
func runPostcopyWith(t *testing.T, reg *Sessions, src Source, dst Destination, opts Options,
	link func(net.Conn) net.Conn) result {
	t.Helper()
	ropts := ReceiveOptions{Sessions: reg}
	var chans sync.WaitGroup
	opts.PostcopyDial = func(ctx context.Context) (io.ReadWriteCloser, error) {
		a, b := net.Pipe()
		chans.Add(1)
		go func() {
			defer chans.Done()
			Receive(context.Background(), b, &fakeDest{}, ropts)
			b.Close()
		}()
		return a, nil
	}
	res := runFull(t, src, dst, opts, ropts, link, nil)
	chans.Wait()
	return res
}

// The main connection breaks after the switch, at each point where it can:
// at the first pushed PAGES, further into the push, at POSTCOPY-END, and
// with COMPLETE lost on its way back. Each time the source stays paused
// (ErrPostcopyInterrupted) and the guest runs on at the destination; a
// resumed migration (PostcopyResume) sends what is still missing (nothing,
// once every page arrived), and the destination ends with the paused
// source's memory. A second resume after that finds the post-copy
// complete and ends at once.
func TestPostcopyRecovery(t *testing.T) {
	for _, c := range []struct {
		name  string
		toDst bool
		rt    RecordType
		nth   int
	}{
		{"first pushed PAGES", true, RecPages, 1},
		{"fourth pushed PAGES", true, RecPages, 4},
		{"POSTCOPY-END", true, RecPostcopyEnd, 1},
		{"COMPLETE lost", false, RecComplete, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			postcopyCutThenResume(t, c.toDst, c.rt, c.nth)
		})
	}
}

// postcopyCutThenResume cuts the main connection at the nth record of type
// rt (in direction toDst) after the switch, then resumes twice.
func postcopyCutThenResume(t *testing.T, toDst bool, rt RecordType, nth int) {
	reg := NewSessions()
	src := newThrottledSourceSize(40, 4096)
	dst := newPostcopyDest()
	opts := Options{MaxBandwidth: 8 << 20, Downtime: 50 * time.Millisecond, ChunkPages: 64,
		PostcopyAfterIterations: 1, NoAutoConverge: true, Compress: CompressOff}
	var mu sync.Mutex
	switched, seen := false, 0
	cut := func(d bool, r RecordType) proxyAction {
		mu.Lock()
		defer mu.Unlock()
		if d && r == RecMissing {
			switched = true
		}
		if switched && d == toDst && r == rt {
			if seen++; seen == nth {
				return cutHere
			}
		}
		return forward
	}
	link := func(p1 net.Conn) net.Conn {
		p2, r1 := net.Pipe()
		relayProxy(p1, p2, cut)
		return r1
	}
	res := runPostcopyWith(t, reg, src, dst, opts, link)
	if !errors.Is(res.sendErr, ErrPostcopyInterrupted) || !dst.started {
		t.Fatalf("first attempt: send %v; destination started %v", res.sendErr, dst.started)
	}
	if !src.paused || src.resumes != 0 {
		t.Fatal("the source guest did not stay paused after the cut")
	}
	left := res.stats.PagesMissing - res.stats.PagesPushed - res.stats.PagesServed
	t.Logf("cut: %v (%d of %d missing pages not sent)", res.sendErr, left, res.stats.PagesMissing)

	again := Options{PostcopyResume: true, Compress: CompressOff}
	res = runPostcopyWith(t, reg, src, &fakeDest{}, again, nil)
	mustSucceed(t, res)
	// A chunk of pages may have been claimed for the push but not sent
	// when the link broke (64 pages).
	if !dst.ended || !res.rstats.Recovered || res.stats.PagesMissing > left+64 || (left > 64 && res.stats.PagesMissing == 0) {
		t.Fatalf("resume: destination ended %v, recovered %v, %d missing (%d were not sent)", dst.ended, res.rstats.Recovered, res.stats.PagesMissing, left)
	}
	sameMemory(t, src.fakeSource, &dst.fakeDest)
	if src.resumes != 0 {
		t.Fatal("the source guest was resumed")
	}

	res = runPostcopyWith(t, reg, src, &fakeDest{}, again, nil)
	mustSucceed(t, res)
	if res.stats.PagesMissing != 0 {
		t.Fatalf("a resume after the end found %d pages missing", res.stats.PagesMissing)
	}
}
