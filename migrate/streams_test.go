package migrate

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// streamRun is a migration over parallel streams on net.Pipe: every
// connection the sender dials is served by a Receive of its own, with one
// Sessions, as `ferry receive` serves them.
type streamRun struct {
	result
	taps  []*tapConn // what each extra stream's receiver read, in dial order
	rerrs []error    // each extra stream's Receive error
}

// runStreams migrates src to dst with opts (Connections set by the
// caller). wrap, if set, may replace the receiving end of connection i
// (0: the main connection; the extra streams from 1, in dial order) with
// a slower or broken one.
func runStreams(t *testing.T, src Source, dst Destination, opts Options, ropts ReceiveOptions,
	wrap func(i int, c net.Conn) net.Conn) *streamRun {
	t.Helper()
	if ropts.Sessions == nil {
		ropts.Sessions = NewSessions()
	}
	run := &streamRun{}
	var mu sync.Mutex
	var extras sync.WaitGroup
	opts.StreamDial = func(ctx context.Context) (io.ReadWriteCloser, error) {
		a, b := net.Pipe()
		mu.Lock()
		i := len(run.taps)
		var end net.Conn = b
		if wrap != nil {
			end = wrap(i+1, b)
		}
		tap := &tapConn{Conn: end}
		run.taps = append(run.taps, tap)
		run.rerrs = append(run.rerrs, nil)
		mu.Unlock()
		extras.Add(1)
		go func() {
			defer extras.Done()
			_, err := Receive(context.Background(), tap, &fakeDest{}, ropts)
			mu.Lock()
			run.rerrs[i] = err
			mu.Unlock()
			b.Close()
		}()
		return a, nil
	}
	if opts.PostcopyAfterIterations > 0 {
		opts.PostcopyDial = func(ctx context.Context) (io.ReadWriteCloser, error) {
			a, b := net.Pipe()
			extras.Add(1)
			go func() {
				defer extras.Done()
				Receive(context.Background(), b, &fakeDest{}, ropts)
				b.Close()
			}()
			return a, nil
		}
	}
	var main func(net.Conn) net.Conn
	if wrap != nil {
		main = func(c net.Conn) net.Conn { return wrap(0, c) }
	}
	run.result = runFull(t, src, dst, opts, ropts, main, nil)
	extras.Wait()
	return run
}

// newStreamSource is a guest of pages random pages that, before each of
// the first rewrites fetches of its dirty log, rewrites every third page
// with new content: those pages go again in each of the next iterations,
// on whichever stream takes their chunk. The writes happen between
// passes (the sender's goroutine fetches the log while no chunk is out),
// as the race detector requires of a fake guest.
func newStreamSource(pages, rewrites int) *fakeSource {
	src := newFakeSource(true, uint64(pages)*PageSize)
	src.info.ID = VMID{0x5e}
	randomFill(src.mem[0], 23)
	rng := rand.New(rand.NewSource(8))
	page := make([]byte, PageSize)
	src.beforeFetch = func(n int) {
		if n > rewrites {
			return
		}
		for p := 0; p < pages; p += 3 {
			rng.Read(page)
			src.write(0, uint64(p), page)
		}
	}
	return src
}

func streamOptions(conns int) Options {
	return Options{Connections: conns, Downtime: time.Nanosecond, ChunkPages: 64, MaxIterations: 10, Compress: CompressOff}
}

// Four connections move a guest that keeps rewriting pages: the
// destination ends with the source's memory, every connection carried
// pages, and both sides count four connections.
func TestParallelStreams(t *testing.T) {
	src := newStreamSource(2048, 3)
	dst := &fakeDest{}
	run := runStreams(t, src, dst, streamOptions(4), ReceiveOptions{}, nil)
	mustSucceed(t, run.result)
	for i, err := range run.rerrs {
		if err != nil {
			t.Fatalf("stream %d: %v", i+2, err)
		}
	}
	sameMemory(t, src, dst)
	st, rst := run.stats, run.rstats
	if st.Connections != 4 || rst.Connections != 4 || len(run.taps) != 3 {
		t.Fatalf("connections: sender %d, receiver %d, dialled %d extra", st.Connections, rst.Connections, len(run.taps))
	}
	if len(st.Iterations) < 5 {
		t.Fatalf("%d iterations, want the rewrites to take several", len(st.Iterations))
	}
	var sent uint64
	for _, it := range st.Iterations {
		sent += it.PagesSent + it.PagesZero
	}
	if got := rst.PagesFull + rst.PagesZero; got != sent {
		t.Fatalf("the receiver counts %d pages, the sender sent %d", got, sent)
	}
	for i, tap := range run.taps {
		w := decodeWire(t, tap.bytes())
		if len(w.full) == 0 {
			t.Fatalf("stream %d carried no page", i+2)
		}
		if w.types[0] != RecHello || w.types[len(w.types)-1] != RecSync {
			t.Fatalf("stream %d: records %v, want HELLO ... SYNC", i+2, w.types)
		}
	}
	t.Log(st.Summary())
}

// laggyLink stands between a stream's two ends like a link with a deep
// buffer and a long delay: it takes whatever the sender writes at once
// (so the sender's writes, and its syncs, complete), and hands it to the
// receiver late, delay per 64 KiB. What the receiver writes goes back as
// it is.
func laggyLink(c net.Conn, delay time.Duration) net.Conn {
	in, out := net.Pipe()
	chunks := make(chan []byte, 1<<14)
	go func() {
		defer close(chunks)
		for {
			b := make([]byte, 64<<10)
			n, err := c.Read(b)
			if n > 0 {
				chunks <- b[:n]
			}
			if err != nil {
				return
			}
		}
	}()
	go func() {
		defer in.Close()
		for b := range chunks {
			time.Sleep(delay)
			if _, err := in.Write(b); err != nil {
				return
			}
		}
	}()
	go func() {
		io.Copy(c, in)
		c.Close()
	}()
	return out
}

// streamPages maps, for one connection's bytes, each iteration to the
// pages it carried (iterations counted by ITERATION-START on the main
// connection, by SYNC on an extra stream).
func streamPages(t *testing.T, b []byte, main bool) []map[uint64]bool {
	t.Helper()
	var its []map[uint64]bool
	if !main {
		its = append(its, map[uint64]bool{})
	}
	rr := newRecordReader(bytes.NewReader(b))
	for {
		rec, err := rr.next()
		if err != nil {
			return its
		}
		switch {
		case main && rec.Type == RecIterationStart:
			its = append(its, map[uint64]bool{})
		case !main && rec.Type == RecSync:
			its = append(its, map[uint64]bool{})
		case rec.Type == RecPages:
			it := newRunIter(rec.Payload, 1<<62)
			var r pageRun
			for it.next(&r) {
				for g := r.First; g < r.First+r.Count; g++ {
					its[len(its)-1][g] = true
				}
			}
		}
	}
}

// The ordering rule: one stream delivers late, so a page it carries in
// an iteration arrives after the same page's newer content, sent in the
// next iteration on another stream, would have. The destination still
// ends with the newest content of every page, because no stream applies
// an iteration before every stream finished the one before.
func TestStreamsOrderingWithADelayedStream(t *testing.T) {
	// Which stream takes which chunk is up to the scheduler: migrate
	// again (each migration must be right) until the hazard happened.
	for attempt := 1; attempt <= 8; attempt++ {
		if hazards := delayedStreamRun(t); hazards > 0 {
			t.Logf("attempt %d: %d pages went on the slow stream, then on another connection in the next iteration", attempt, hazards)
			return
		}
	}
	t.Fatal("in 8 migrations no page went on the slow stream and then on another one in the next iteration: the test did not test the rule")
}

// delayedStreamRun migrates over three connections, the second of which
// delivers late, checks the destination's memory, and counts the pages
// that went on the slow stream in an iteration and on another connection
// in the next.
func delayedStreamRun(t *testing.T) int {
	src := newStreamSource(1024, 4)
	dst := &fakeDest{}
	slow := func(i int, c net.Conn) net.Conn {
		if i == 1 {
			return laggyLink(c, 5*time.Millisecond)
		}
		return c
	}
	run := runStreams(t, src, dst, streamOptions(3), ReceiveOptions{}, slow)
	mustSucceed(t, run.result)
	sameMemory(t, src, dst)
	conns := [][]map[uint64]bool{streamPages(t, run.wire.raw, true)}
	for _, tap := range run.taps {
		conns = append(conns, streamPages(t, tap.bytes(), false))
	}
	hazards := 0
	for k, pages := range conns[1] {
		for g := range pages {
			for c, its := range conns {
				if c != 1 && k+1 < len(its) && its[k+1][g] {
					hazards++
				}
			}
		}
	}
	return hazards
}

// A stream that breaks fails the whole migration: the source guest runs
// on, the destination discards the VM, and the main connection says why.
func TestBrokenStreamFailsTheMigration(t *testing.T) {
	src := newStreamSource(1024, 2)
	dst := &fakeDest{}
	run := runStreams(t, src, dst, streamOptions(3), ReceiveOptions{}, cutStream(2, 192<<10))
	if run.sendErr == nil || run.recvErr == nil {
		t.Fatalf("send error %v, receive error %v: want both to fail", run.sendErr, run.recvErr)
	}
	if !strings.Contains(run.recvErr.Error(), "stream 3") {
		t.Fatalf("the destination's error does not name the broken stream: %v", run.recvErr)
	}
	if src.paused || src.logging {
		t.Fatalf("source paused %v, dirty logging %v: want the guest running as before", src.paused, src.logging)
	}
	if !dst.discarded || dst.started {
		t.Fatalf("destination discarded %v, started %v", dst.discarded, dst.started)
	}
	t.Logf("source: %v\ndestination: %v", run.sendErr, run.recvErr)
}

// cutStream wraps the connections of a migration so that connection
// which fails every read once all of them together have read after bytes.
// The total decides, not that connection's own count: how the chunks fall
// among the streams varies from run to run, and a stream may carry few
// pages or none. An extra stream reads on only while iterations follow
// (its SYNC of each); the main connection reads on to COMMIT.
func cutStream(which int, after int64) func(int, net.Conn) net.Conn {
	total := new(atomic.Int64)
	return func(i int, c net.Conn) net.Conn {
		return &cutConn{Conn: c, cut: i == which, after: after, total: total}
	}
}

type cutConn struct {
	net.Conn
	cut   bool
	after int64
	total *atomic.Int64 // bytes read by every connection of the migration
}

func (c *cutConn) Read(p []byte) (int, error) {
	if c.cut && c.total.Load() >= c.after {
		return 0, errors.New("link cut")
	}
	n, err := c.Conn.Read(p)
	c.total.Add(int64(n))
	return n, err
}

// A destination without Sessions refuses parallel streams, and a stream
// for a migration that is not in progress is refused.
func TestStreamsRefused(t *testing.T) {
	src := newStreamSource(256, 0)
	res := runFull(t, src, &fakeDest{}, Options{Connections: 2, StreamDial: func(context.Context) (io.ReadWriteCloser, error) {
		return nil, errors.New("not dialled")
	}}, ReceiveOptions{}, nil, nil)
	var re *RemoteError
	if !errors.As(res.sendErr, &re) || !strings.Contains(res.sendErr.Error(), "one connection per migration") {
		t.Fatalf("send error %v: want the destination's refusal", res.sendErr)
	}
	if src.paused {
		t.Fatal("the source guest was left paused")
	}

	p, err := encodeHello(src.Info(), helloFlags{Stream: true})
	if err != nil {
		t.Fatal(err)
	}
	err, _ = scripted(t, ReceiveOptions{Sessions: NewSessions()}, &fakeDest{}, rec(RecHello, p))
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "no migration of VM") {
		t.Fatalf("a stream for no migration: %v", err)
	}
}

// A migration over streams that breaks (its main connection, once a
// quarter of the pages went) is resumed over streams: the destination kept
// what every stream brought, and only the rest goes.
func TestStreamsResume(t *testing.T) {
	src := newStreamSource(1024, 0)
	keep := NewKeeper(time.Minute, t.Logf)
	defer keep.Close()
	kd := newKeptDest()
	run := runStreams(t, src, kd, streamOptions(3), ReceiveOptions{Keep: keep}, cutStream(0, 1<<20)) // the main connection: it reads on to COMMIT
	if run.sendErr == nil || kd.suspends != 1 || kd.started {
		t.Fatalf("the cut migration: send error %v, destination suspended %d, started %v", run.sendErr, kd.suspends, kd.started)
	}
	t.Logf("cut: %v; the destination keeps %s", run.sendErr, keep.Holding())

	opts := streamOptions(3)
	opts.Resume = true
	run = runStreams(t, src, newKeptDest(), opts, ReceiveOptions{Keep: keep}, nil)
	mustSucceed(t, run.result)
	if !kd.started {
		t.Fatal("the resumed migration did not start the kept VM")
	}
	sameMemory(t, src, kd.fakeDest)
	it0 := run.stats.Iterations[0]
	if run.stats.DestinationKept == 0 || it0.PagesReused != run.stats.DestinationKept || it0.PagesReused+it0.PagesSent+it0.PagesZero != 1024 {
		t.Fatalf("kept %d; iteration 0 %+v", run.stats.DestinationKept, it0)
	}
	t.Logf("resumed: the destination kept %d pages; %s", run.stats.DestinationKept, run.stats.Summary())
}

// Pre-copy over streams, then a switch to post-copy: the pages of every
// stream are in place before the switch, the missing ones come after it.
func TestStreamsThenPostcopy(t *testing.T) {
	src := newStreamSource(2048, 20)
	dst := newPostcopyDest()
	opts := streamOptions(3)
	opts.PostcopyAfterIterations = 2
	opts.NoAutoConverge = true
	run := runStreams(t, src, dst, opts, ReceiveOptions{}, nil)
	mustSucceed(t, run.result)
	st := run.stats
	if !st.Postcopy || !dst.started || !dst.ended || st.PagesMissing == 0 {
		t.Fatalf("post-copy %v, started %v, ended %v, missing %d", st.Postcopy, dst.started, dst.ended, st.PagesMissing)
	}
	sameMemory(t, src, &dst.fakeDest)
	t.Logf("%s; missing %d, pushed %d, served %d", st.Summary(), st.PagesMissing, st.PagesPushed, st.PagesServed)
}

// With compression on, each stream's compressor asks the link rate of
// the sender while the sender's goroutine goes on (the race detector
// checks the sharing); a stream whose HELLO is refused fails the
// migration before any page goes, and the source guest runs on.
func TestStreamsCompressAndRefusedStream(t *testing.T) {
	src := newStreamSource(1024, 2)
	dst := &fakeDest{}
	opts := streamOptions(3)
	opts.Compress = CompressZstd
	run := runStreams(t, src, dst, opts, ReceiveOptions{}, nil)
	mustSucceed(t, run.result)
	sameMemory(t, src, dst)

	src = newStreamSource(1024, 2) // the first one stays paused: it was handed over
	opts.Compress = CompressAuto
	dials := 0
	opts.StreamDial = func(ctx context.Context) (io.ReadWriteCloser, error) {
		dials++
		a, b := net.Pipe()
		go func() { // a destination that knows no such migration
			Receive(context.Background(), b, &fakeDest{}, ReceiveOptions{Sessions: NewSessions()})
			b.Close()
		}()
		return a, nil
	}
	res := runFull(t, src, &fakeDest{}, opts, ReceiveOptions{Sessions: NewSessions()}, nil, nil)
	if res.sendErr == nil || !strings.Contains(res.sendErr.Error(), "stream 2 of 3") || dials != 1 {
		t.Fatalf("send error %v after %d dials: want the refusal of stream 2", res.sendErr, dials)
	}
	if src.paused || src.logging {
		t.Fatal("the source guest did not get back to normal")
	}
}
