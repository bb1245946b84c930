package migrate

import (
	"context"
	"errors"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// Tests of resuming a cut migration: the destination keeps what it
// received (Keeper), the resumed source sends only what differs.

// keptDest is a fakeDest that can be kept for a resume.
type keptDest struct {
	*fakeDest
	mu         sync.Mutex
	suspends   int
	reclaims   int
	discards   int
	reclaimErr error
}

func newKeptDest() *keptDest { return &keptDest{fakeDest: &fakeDest{}} }

func (d *keptDest) Suspend() { d.mu.Lock(); d.suspends++; d.mu.Unlock() }

func (d *keptDest) Reclaim() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.reclaimErr != nil {
		return d.reclaimErr
	}
	d.reclaims++
	return nil
}

func (d *keptDest) Discard() {
	d.mu.Lock()
	d.discards++
	d.mu.Unlock()
	d.fakeDest.Discard()
}

func (d *keptDest) wasDiscarded() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.discards > 0
}

// resumeSource is newTestSource with a VM id.
func resumeSource(id byte) *fakeSource {
	src := newTestSource(true)
	src.info.ID = VMID{0xfe, id}
	return src
}

// cutAtPages cuts the connection when the n-th PAGES record goes to the
// destination (the records before it arrive whole).
func cutAtPages(n int) func(bool, RecordType) proxyAction {
	var mu sync.Mutex
	seen := 0
	return func(toDst bool, t RecordType) proxyAction {
		mu.Lock()
		defer mu.Unlock()
		if toDst && t == RecPages {
			if seen++; seen == n {
				return cutHere
			}
		}
		return forward
	}
}

// migrateVia runs a migration through relayProxy (decide: nil relays
// everything) and decodes what reached the destination.
func migrateVia(t *testing.T, src Source, dst Destination, opts Options, ropts ReceiveOptions,
	decide func(bool, RecordType) proxyAction) result {
	t.Helper()
	if decide == nil {
		decide = func(bool, RecordType) proxyAction { return forward }
	}
	link := func(p1 net.Conn) net.Conn {
		p2, r1 := net.Pipe()
		relayProxy(p1, p2, decide)
		return r1
	}
	return runFull(t, src, dst, opts, ropts, link, nil)
}

// Batches of 16 pages: a cut at the n-th PAGES record leaves 16(n−1)
// pages at the destination.
var resumeOpts = Options{BatchPages: 16, ChunkPages: 64, Downtime: time.Second}

// keepFirst makes keep hold the first 16(n−1) pages of src in a keptDest.
func keepFirst(t *testing.T, src *fakeSource, keep *Keeper, n int, peer string) *keptDest {
	t.Helper()
	dst := newKeptDest()
	res := migrateVia(t, src, dst, resumeOpts, ReceiveOptions{Keep: keep, Peer: peer}, cutAtPages(n))
	if res.sendErr == nil || res.recvErr == nil {
		t.Fatalf("the cut migration succeeded: send %v, receive %v", res.sendErr, res.recvErr)
	}
	if src.paused || src.logging {
		t.Fatal("the source guest did not get back to normal after the cut")
	}
	if dst.suspends != 1 || dst.wasDiscarded() || dst.started {
		t.Fatalf("destination suspended %d, discarded %v, started %v: want it kept", dst.suspends, dst.wasDiscarded(), dst.started)
	}
	want := "16 of 320 pages"
	if n != 2 {
		want = ""
	}
	if h := keep.Holding(); want != "" && !strings.HasPrefix(h, want) {
		t.Fatalf("keeper holds %q, want %q", h, want)
	}
	return dst
}

func TestResumeSendsOnlyDifferingPages(t *testing.T) {
	src := resumeSource(1)
	keep := NewKeeper(time.Minute, t.Logf)
	defer keep.Close()
	kd := keepFirst(t, src, keep, 2, "peer-a")

	// The guest ran on: page 3 changed, page 9 (zero) got content, page 4
	// was zeroed. The other 13 kept pages are unchanged.
	src.fillPage(0, 3, 0x33)
	src.fillPage(0, 9, 0x99)
	src.fillPage(0, 4, 0)

	// A second cut, after the resumed attempt sent one batch more.
	opts := resumeOpts
	opts.Resume = true
	fresh := newKeptDest()
	res := migrateVia(t, src, fresh, opts, ReceiveOptions{Keep: keep, Peer: "peer-a"}, cutAtPages(2))
	if res.sendErr == nil || fresh.prepared || kd.reclaims != 1 || kd.suspends != 2 {
		t.Fatalf("second cut: send %v; fresh prepared %v; kept reclaimed %d suspended %d", res.sendErr, fresh.prepared, kd.reclaims, kd.suspends)
	}
	// Pages 3, 4 and 9 went again in the first batch, 16..28 in the rest.
	if h := keep.Holding(); !strings.HasPrefix(h, "29 of 320 pages") {
		t.Fatalf("after the second cut the keeper holds %q, want the pages of both attempts", h)
	}

	src.fillPage(1, 7, 0x77) // a page never sent so far changes too
	res = migrateVia(t, src, newKeptDest(), opts, ReceiveOptions{Keep: keep, Peer: "peer-a"}, nil)
	mustSucceed(t, res)
	if !kd.started || kd.wasDiscarded() || keep.Holding() != "" {
		t.Fatalf("kept destination started %v discarded %v; keeper still holds %q", kd.started, kd.wasDiscarded(), keep.Holding())
	}
	sameMemory(t, src, kd.fakeDest)
	if !res.stats.Resumed || res.stats.DestinationKept != 29 || res.rstats.PagesKept != 29 {
		t.Fatalf("stats: resumed %v, destination kept %d (receiver says %d), want 29", res.stats.Resumed, res.stats.DestinationKept, res.rstats.PagesKept)
	}
	it0 := res.stats.Iterations[0]
	// Pages 0..28 were kept with the content they have now.
	if it0.PagesReused != 29 || it0.PagesReused+it0.PagesSent+it0.PagesZero != r0Pages+r1Pages {
		t.Fatalf("iteration 0: %+v", it0)
	}
	for p := range uint64(29) {
		if n := res.wire.full[p] + res.wire.zero[p]; n != 0 {
			t.Fatalf("page %d was kept with the right content, yet sent %d times", p, n)
		}
	}
	if res.wire.full[r0Pages+7] != 1 || res.wire.full[40] != 1 {
		t.Fatal("pages the destination did not hold were not sent")
	}
	t.Logf("resumed: %d bytes sent, %d bytes of KEPT received; iteration 0 %+v", res.stats.BytesTotal, res.stats.BytesReceived, it0)
}

// The pages changed before a resume are resent, the rest is not.
func TestResumeResendsChangedKeptPages(t *testing.T) {
	src := resumeSource(2)
	keep := NewKeeper(time.Minute, nil)
	defer keep.Close()
	kd := keepFirst(t, src, keep, 3, "") // 32 pages kept
	src.fillPage(0, 3, 0x33)             // changed
	src.fillPage(0, 5, 0)                // now zero
	opts := resumeOpts
	opts.Resume = true
	res := migrateVia(t, src, newKeptDest(), opts, ReceiveOptions{Keep: keep}, nil)
	mustSucceed(t, res)
	if res.wire.full[3] != 1 || res.wire.zero[5] != 1 || res.stats.Iterations[0].PagesReused != 30 {
		t.Fatalf("page 3 sent %d, page 5 zero %d, reused %d", res.wire.full[3], res.wire.zero[5], res.stats.Iterations[0].PagesReused)
	}
	sameMemory(t, src, kd.fakeDest)
}

func TestResumeRefused(t *testing.T) {
	cases := []struct {
		name  string
		setup func(keep *Keeper, src *fakeSource, kd *keptDest) (ReceiveOptions, *fakeSource)
		want  string
		kept  bool // the keeper still holds the first VM afterwards
	}{
		{"receiver keeps nothing", func(*Keeper, *fakeSource, *keptDest) (ReceiveOptions, *fakeSource) {
			return ReceiveOptions{}, nil
		}, "keeps no pages of failed migrations", true},
		{"another VM", func(keep *Keeper, _ *fakeSource, _ *keptDest) (ReceiveOptions, *fakeSource) {
			return ReceiveOptions{Keep: keep, Peer: "p"}, resumeSource(9)
		}, "keeps pages of another VM", true},
		{"another peer", func(keep *Keeper, _ *fakeSource, _ *keptDest) (ReceiveOptions, *fakeSource) {
			return ReceiveOptions{Keep: keep, Peer: "q"}, nil
		}, "received from another peer", true},
		{"another layout", func(keep *Keeper, src *fakeSource, _ *keptDest) (ReceiveOptions, *fakeSource) {
			other := resumeSource(3)
			other.info.ID = src.info.ID
			other.info.VCPUs = 4
			return ReceiveOptions{Keep: keep, Peer: "p"}, other
		}, "another layout", true},
		{"reclaim refused", func(keep *Keeper, _ *fakeSource, kd *keptDest) (ReceiveOptions, *fakeSource) {
			kd.reclaimErr = errors.New("another migration into this receiver is in progress")
			return ReceiveOptions{Keep: keep, Peer: "p"}, nil
		}, "another migration into this receiver is in progress", true},
		{"nothing kept", func(keep *Keeper, _ *fakeSource, _ *keptDest) (ReceiveOptions, *fakeSource) {
			keep.drop("test")
			return ReceiveOptions{Keep: keep, Peer: "p"}, nil
		}, "keeps no pages of VM", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			src := resumeSource(3)
			keep := NewKeeper(time.Minute, nil)
			defer keep.Close()
			kd := keepFirst(t, src, keep, 2, "p")
			ropts, other := c.setup(keep, src, kd)
			if other == nil {
				other = src
			}
			opts := resumeOpts
			opts.Resume = true
			fresh := newKeptDest()
			res := migrateVia(t, other, fresh, opts, ropts, nil)
			var re *RemoteError
			if !errors.As(res.sendErr, &re) || !strings.Contains(re.Msg, c.want) || !errors.Is(res.recvErr, ErrRefused) {
				t.Fatalf("send %v; receive %v; want a refusal mentioning %q", res.sendErr, res.recvErr, c.want)
			}
			if fresh.prepared || kd.started || other.paused || other.logging {
				t.Fatal("a refused resume prepared, started or paused something")
			}
			if held := keep.Holding() != ""; held != c.kept || kd.wasDiscarded() == c.kept {
				t.Fatalf("keeper holds %q, kept destination discarded %v; want kept %v", keep.Holding(), kd.wasDiscarded(), c.kept)
			}
		})
	}
}

func TestKeeperDrops(t *testing.T) {
	t.Run("window ends", func(t *testing.T) {
		keep := NewKeeper(50*time.Millisecond, t.Logf)
		defer keep.Close()
		kd := keepFirst(t, resumeSource(4), keep, 2, "")
		deadline := time.Now().Add(5 * time.Second)
		for !kd.wasDiscarded() && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if !kd.wasDiscarded() || keep.Holding() != "" {
			t.Fatal("the kept pages outlived the window")
		}
	})
	t.Run("a new migration arrives", func(t *testing.T) {
		keep := NewKeeper(time.Minute, nil)
		defer keep.Close()
		src := resumeSource(5)
		kd := keepFirst(t, src, keep, 2, "")
		dst := newKeptDest()
		mustSucceed(t, migrateVia(t, resumeSource(6), dst, Options{}, ReceiveOptions{Keep: keep}, nil))
		if !kd.wasDiscarded() || !dst.started || keep.Holding() != "" {
			t.Fatalf("kept discarded %v, new guest started %v, keeper %q", kd.wasDiscarded(), dst.started, keep.Holding())
		}
	})
	t.Run("Close", func(t *testing.T) {
		keep := NewKeeper(time.Minute, nil)
		kd := keepFirst(t, resumeSource(7), keep, 2, "")
		keep.Close()
		if !kd.wasDiscarded() {
			t.Fatal("Close kept the pages")
		}
		// After Close a failed migration is discarded, not kept.
		dst := newKeptDest()
		migrateVia(t, resumeSource(7), dst, resumeOpts, ReceiveOptions{Keep: keep}, cutAtPages(2))
		if !dst.wasDiscarded() || dst.suspends != 0 {
			t.Fatal("a closed keeper kept pages")
		}
	})
	t.Run("window zero", func(t *testing.T) {
		keep := NewKeeper(0, nil)
		dst := newKeptDest()
		migrateVia(t, resumeSource(8), dst, resumeOpts, ReceiveOptions{Keep: keep}, cutAtPages(2))
		if !dst.wasDiscarded() || dst.suspends != 0 {
			t.Fatal("--resume-window 0 kept pages")
		}
	})
	t.Run("failure after COMMIT", func(t *testing.T) {
		keep := NewKeeper(time.Minute, nil)
		defer keep.Close()
		dst := newKeptDest()
		dst.startErr = errors.New("KVM_RUN failed")
		res := migrateVia(t, resumeSource(9), dst, Options{}, ReceiveOptions{Keep: keep}, nil)
		if res.sendErr == nil || !dst.wasDiscarded() || dst.suspends != 0 || keep.Holding() != "" {
			t.Fatalf("send %v; a VM that failed to start was kept (discarded %v)", res.sendErr, dst.wasDiscarded())
		}
	})
	t.Run("VM without id", func(t *testing.T) {
		keep := NewKeeper(time.Minute, nil)
		defer keep.Close()
		dst := newKeptDest()
		migrateVia(t, newTestSource(true), dst, resumeOpts, ReceiveOptions{Keep: keep}, cutAtPages(2))
		if !dst.wasDiscarded() || keep.Holding() != "" {
			t.Fatal("pages of a VM without id were kept")
		}
		if _, err := Send(context.Background(), newTestSource(true), &net.TCPConn{}, Options{Resume: true}); err == nil ||
			!strings.Contains(err.Error(), "without an id") {
			t.Fatalf("resume of a VM without id: %v", err)
		}
	})
}

// A destination whose KEPT records are malformed is refused by the
// source, which tells it (ERROR) and keeps its guest.
func TestSourceChecksKept(t *testing.T) {
	info := newTestSource(true).info
	total := uint64(r0Pages + r1Pages)
	good := func(first uint64) []byte {
		tb := NewDigestTable(total)
		return encodeKept(tb, first, int(min(MaxKeptPages, total-first)))
	}
	cases := map[string][]byte{
		"wrong start":     append(good(0)[:0:0], good(0)...),
		"short count":     good(0),
		"digests missing": good(0),
		"reserved":        good(0),
	}
	cases["wrong start"][7] = 1
	cases["short count"][11]--
	cases["reserved"][15] = 1
	cases["digests missing"][keptFixedSize] = 1 // page 0 kept, no digest follows
	for name, held := range cases {
		t.Run(name, func(t *testing.T) {
			src := resumeSource(1)
			a, b := net.Pipe()
			go func() {
				rr := newRecordReader(b)
				if rec, err := rr.next(); err != nil || rec.Type != RecHello {
					b.Close()
					return
				}
				writeRecord(b, RecHelloAck, encodeHelloAck(helloFlags{Resume: true}))
				writeRecord(b, RecKept, held)
				rr.next() // the source's ERROR
				b.Close()
			}()
			_, err := Send(context.Background(), src, a, Options{Resume: true})
			a.Close()
			if !errors.Is(err, ErrMalformed) || src.paused || src.logging {
				t.Fatalf("send %v (paused %v, logging %v), want ErrMalformed and the guest untouched", err, src.paused, src.logging)
			}
		})
	}
	_ = info
}

func TestKeptRoundTrip(t *testing.T) {
	const total = MaxKeptPages + 100
	tb := NewDigestTable(total)
	want := map[uint64]Digest{}
	for _, p := range []uint64{0, 7, 8, 4095, 4096, 4099, total - 1} {
		d := HashPage(content(byte(p)))
		tb.Update(p, d, 3)
		want[p] = d
	}
	tb.Update(5, ZeroDigest, 0)
	want[5] = ZeroDigest
	got := map[uint64]Digest{}
	var next uint64
	for next < total {
		p := encodeKept(tb, next, int(min(MaxKeptPages, total-next)))
		if len(p) > maxKeptPayload {
			t.Fatalf("KEPT of %d bytes", len(p))
		}
		n, err := decodeKept(p, next, total, func(page uint64, d Digest) { got[page] = d })
		if err != nil {
			t.Fatal(err)
		}
		next += n
	}
	if len(got) != len(want) {
		t.Fatalf("decoded %d kept pages, want %d", len(got), len(want))
	}
	for p, d := range want {
		if got[p] != d {
			t.Fatalf("page %d: digest %v, want %v", p, got[p], d)
		}
	}
	// A non-zero page with the zero page's digest, and padding bits set.
	bad := encodeKept(tb, MaxKeptPages, 100)
	bad[keptFixedSize+12] |= 0x80 // bit 100 of the held bitmap: past the count
	if _, err := decodeKept(bad, MaxKeptPages, total, func(uint64, Digest) {}); !errors.Is(err, ErrMalformed) {
		t.Fatalf("padding bit accepted: %v", err)
	}
	zt := NewDigestTable(8)
	zt.Update(1, ZeroDigest, 0)
	zp := encodeKept(zt, 0, 8)
	zp[keptFixedSize+1] = 0           // clear the zero bit: now a "full" page without a digest
	zp = append(zp, ZeroDigest[:]...) // with the zero digest
	if _, err := decodeKept(zp, 0, 8, func(uint64, Digest) {}); !errors.Is(err, ErrMalformed) {
		t.Fatalf("zero digest without zero bit accepted: %v", err)
	}
}

// The receiver stays strict: KEPT never comes from a source, a RESUME HELLO
// needs a VM id.
func TestReceiverResumeStrict(t *testing.T) {
	dst := &fakeDest{}
	held := rec(RecKept, encodeKept(NewDigestTable(4), 0, 4))
	err, _ := scripted(t, ReceiveOptions{}, dst, helloRec(smallInfo()), held)
	if !errors.Is(err, ErrUnexpected) || !dst.discarded {
		t.Fatalf("KEPT from the source: %v", err)
	}
	p, _ := encodeHello(smallInfo(), helloFlags{})
	p[3] = 1 // RESUME without an id
	err, _ = scripted(t, ReceiveOptions{Keep: NewKeeper(time.Minute, nil)}, &fakeDest{}, rec(RecHello, p))
	if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "without a VM id") {
		t.Fatalf("RESUME HELLO without id: %v", err)
	}
	p[3] = 32 // unknown flag (1, 2, 4, 8 and 16 are RESUME, POSTCOPY, CHANNEL, STREAMS, STREAM)
	err, _ = scripted(t, ReceiveOptions{}, &fakeDest{}, rec(RecHello, p))
	if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "flags") {
		t.Fatalf("HELLO with unknown flags: %v", err)
	}
}

// A resumed iteration 0 that skips nearly every page still sends
// something regularly (keepalive), so that the destination's idle timeout
// does not drop it; the pages it sends again are harmless.
func TestResumeKeepalive(t *testing.T) {
	oldCheck, oldEvery := keepaliveCheck, keepaliveEvery
	keepaliveCheck, keepaliveEvery = 16, 0
	defer func() { keepaliveCheck, keepaliveEvery = oldCheck, oldEvery }()
	src := resumeSource(5)
	keep := NewKeeper(time.Minute, nil)
	defer keep.Close()
	kd := keepFirst(t, src, keep, 20, "") // 304 of 320 pages kept
	opts := resumeOpts
	opts.Resume = true
	res := migrateVia(t, src, newKeptDest(), opts, ReceiveOptions{Keep: keep}, nil)
	mustSucceed(t, res)
	sameMemory(t, src, kd.fakeDest)
	it0 := res.stats.Iterations[0]
	forced := it0.PagesSent + it0.PagesZero - 16 // 16 pages were never kept
	if it0.PagesReused+it0.PagesSent+it0.PagesZero != r0Pages+r1Pages || forced < 5 {
		t.Fatalf("iteration 0: %+v: want held pages sent regularly as keepalives", it0)
	}
	t.Logf("%d held pages sent as keepalives", forced)
}

// A source that refuses a KEPT record while more are queued still ends
// the goroutine that reads the destination's records (it used to block
// for ever on its full channel).
func TestSourceHeldRefusedReaderEnds(t *testing.T) {
	total := uint64(r0Pages + r1Pages)
	bad := encodeKept(NewDigestTable(total), 0, int(min(MaxKeptPages, total)))
	bad[7] = 1 // wrong start
	src := resumeSource(1)
	a, b := net.Pipe()
	defer b.Close()
	go func() {
		rr := newRecordReader(b)
		if rec, err := rr.next(); err != nil || rec.Type != RecHello {
			b.Close()
			return
		}
		writeRecord(b, RecHelloAck, encodeHelloAck(helloFlags{Resume: true}))
		// One more than the source takes (one) and buffers (two).
		for range 4 {
			if writeRecord(b, RecKept, bad) != nil {
				return
			}
		}
		rr.next() // the source's ERROR
	}()
	_, err := Send(context.Background(), src, a, Options{Resume: true})
	if !errors.Is(err, ErrMalformed) {
		t.Fatalf("send: %v, want ErrMalformed", err)
	}
	waitGoroutineGone(t, "(*sender).readPeer", 3*time.Second)
	a.Close()
}

// waitGoroutineGone fails the test if a goroutine whose stack names fn is
// still there after d.
func waitGoroutineGone(t *testing.T, fn string, d time.Duration) {
	t.Helper()
	buf := make([]byte, 1<<20)
	for end := time.Now().Add(d); ; {
		stacks := string(buf[:runtime.Stack(buf, true)])
		if !strings.Contains(stacks, fn) {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("goroutine %s still runs %v later:\n%s", fn, d, stacks)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
