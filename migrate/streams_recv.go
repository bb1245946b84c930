package migrate

import (
	"errors"
	"fmt"
	"sync"
	"time"
)

// The destination's side of parallel streams (PROTOCOL.md, "Parallel
// streams"). The main connection's receiver registers a streamGroup when
// its HELLO asks for streams; each extra connection's receiver joins it
// (its HELLO has STREAM) and writes its pages into the same pageStore.
//
// The ordering rule: a stream applies the records of iteration k only after
// the main connection began iteration k (its ITERATION-START{k}), and the
// main connection begins iteration k+1 (or handles STATE or MISSING in
// iteration k) only after every stream's SYNC{k}, that is after every page
// of iteration k from every stream is in place. A page sent again in a
// later iteration, on whatever stream, is therefore always written after
// its older content, however late another stream delivers.

// streamGroup is one migration's extra streams, as the destination sees
// them.
type streamGroup struct {
	id    VMID
	peer  string
	info  VMInfo
	store *pageStore

	// mu guards the fields below; changed is closed (and replaced) at
	// every change, waking whoever waits (wait).
	mu      sync.Mutex
	changed chan struct{}
	want    int     // extra streams announced by STREAMS; -1 before
	joined  int     // extra streams that joined
	begun   int64   // the iteration the main connection began; -1 before
	final   bool    // begun is the last iteration
	synced  []int64 // per stream: the last iteration it finished (SYNC); -1 before
	stats   []ReceiveStats
	entries []uint64 // per stream: page entries it received
	cuts    []func() // per stream: cuts its connection
	cutMain func()   // cuts the main connection
	err     error    // the migration failed: every stream stops
	// active counts the streams still reading: the main receiver waits
	// for them before it frees (or keeps) the guest memory they write.
	active sync.WaitGroup
}

func newStreamGroup(id VMID, peer string, info VMInfo, store *pageStore) *streamGroup {
	return &streamGroup{id: id, peer: peer, info: info, store: store, changed: make(chan struct{}), want: -1, begun: -1}
}

// update runs f under the lock and wakes the waiters.
func (g *streamGroup) update(f func()) {
	g.mu.Lock()
	f()
	close(g.changed)
	g.changed = make(chan struct{})
	g.mu.Unlock()
}

// wait returns once ready (called under the lock) holds, the group failed,
// or stop is closed; timeout bounds it when positive.
func (g *streamGroup) wait(stop <-chan struct{}, timeout time.Duration, what string, ready func() bool) error {
	var expire <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		expire = t.C
	}
	for {
		g.mu.Lock()
		ok, err, ch := ready(), g.err, g.changed
		g.mu.Unlock()
		switch {
		case err != nil:
			return err
		case ok:
			return nil
		}
		select {
		case <-ch:
		case <-stop:
			return fmt.Errorf("migrate: cancelled while waiting for %s", what)
		case <-expire:
			return fmt.Errorf("%w: waited %v for %s", ErrStalled, timeout, what)
		}
	}
}

// grow makes room for n streams (under the lock).
func (g *streamGroup) grow(n int) {
	for len(g.synced) < n {
		g.synced = append(g.synced, -1)
		g.stats = append(g.stats, ReceiveStats{})
		g.entries = append(g.entries, 0)
		g.cuts = append(g.cuts, nil)
	}
}

// fail stops every stream: their connections are cut, so that a stream
// blocked in a read returns.
func (g *streamGroup) fail(err error) {
	var cuts []func()
	g.update(func() {
		if g.err == nil {
			g.err = err
		}
		cuts = append(cuts, g.cuts...)
		cuts = append(cuts, g.cutMain)
	})
	for _, cut := range cuts {
		if cut != nil {
			cut()
		}
	}
}

// errMigrationEnded refuses a stream that comes after its migration.
var errMigrationEnded = errors.New("the migration ended")

// The main connection's side.

// acceptStreams registers the group of a migration whose HELLO asked for
// parallel streams.
func (r *receiver) acceptStreams(info VMInfo) error {
	if r.opts.Sessions == nil {
		return fmt.Errorf("%w: this receiver takes one connection per migration (no parallel streams)", ErrRefused)
	}
	g := newStreamGroup(info.ID, r.opts.Peer, info, r.pageStore)
	g.cutMain = r.cut
	if err := r.opts.Sessions.addStreams(g); err != nil {
		return fmt.Errorf("%w: %v", ErrRefused, err)
	}
	r.group = g
	return nil
}

// groupErr is why the group failed, if it did (a stream's error, which
// cut the main connection).
func (r *receiver) groupErr() error {
	g := r.group
	if g == nil {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.err
}

// onStreams takes the STREAMS record: how many extra streams to expect.
func (r *receiver) onStreams(p []byte) error {
	n, err := decodeStreams(p)
	if err != nil {
		return err
	}
	g := r.group
	g.update(func() {
		if g.joined > n {
			err = fmt.Errorf("%w: STREAMS announces %d extra streams, %d joined already", ErrMalformed, n, g.joined)
			return
		}
		g.want = n
		g.grow(n)
	})
	if err != nil {
		return err
	}
	r.stats.Connections = 1 + n
	r.state = stateAwaitPagesOrState
	return nil
}

// streamsTimeout bounds the main connection's wait for the streams at an
// iteration's end: the source sends every stream's SYNC before the main
// connection's next record, so a stream that stays silent this long is
// gone.
func (r *receiver) streamsTimeout() time.Duration {
	if r.opts.IdleTimeout > 0 {
		return r.opts.IdleTimeout
	}
	return 0
}

// awaitStreams waits until every extra stream finished iteration k.
func (r *receiver) awaitStreams(k uint32) error {
	g := r.group
	if g == nil {
		return nil
	}
	return g.wait(r.ctx.Done(), r.streamsTimeout(), fmt.Sprintf("every stream to finish iteration %d", k), func() bool {
		if g.want < 0 || g.joined < g.want {
			return false
		}
		for _, s := range g.synced {
			if s < int64(k) {
				return false
			}
		}
		return true
	})
}

// beginStreams lets the streams apply the records of iteration k.
func (r *receiver) beginStreams(k uint32, final bool) {
	if g := r.group; g != nil {
		g.update(func() { g.begun, g.final = int64(k), final })
	}
}

// streamEntries is the page entries every extra stream received.
func (r *receiver) streamEntries() uint64 {
	var n uint64
	if g := r.group; g != nil {
		g.mu.Lock()
		for _, e := range g.entries {
			n += e
		}
		g.mu.Unlock()
	}
	return n
}

// endStreams ends the group with the migration: on failure every stream
// is stopped; in every case it waits until no stream writes guest memory
// any more, adds their counts to the stats and unregisters the group.
func (r *receiver) endStreams(err error) {
	g := r.group
	if g == nil {
		return
	}
	r.opts.Sessions.removeStreams(g)
	if err != nil {
		g.fail(err)
	} else {
		// No stream joins a migration that ended.
		g.update(func() { g.err = errMigrationEnded })
	}
	g.active.Wait()
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, st := range g.stats {
		r.stats.PagesFull += st.PagesFull
		r.stats.PagesZero += st.PagesZero
		r.stats.PagesDelta += st.PagesDelta
		r.stats.RecordsCompressed += st.RecordsCompressed
		r.stats.BytesTotal += st.BytesTotal
	}
}

// An extra stream's side.

// onStreamHello makes this connection an extra stream of the migration of
// the VM the HELLO names, from the same peer.
func (r *receiver) onStreamHello(h hello) error {
	if r.opts.Sessions == nil {
		return fmt.Errorf("%w: this receiver takes one connection per migration (no parallel streams)", ErrRefused)
	}
	g, err := r.opts.Sessions.findStreams(h.Info.ID, r.opts.Peer)
	if err != nil {
		return fmt.Errorf("%w: stream: %v", ErrRefused, err)
	}
	if err := SameLayout(g.info, h.Info); err != nil {
		return fmt.Errorf("%w: stream: its HELLO describes another VM than the migration's: %v", ErrRefused, err)
	}
	idx := -1
	g.update(func() {
		switch {
		case g.err != nil:
			err = g.err
		case g.want >= 0 && g.joined >= g.want:
			err = fmt.Errorf("%w: stream: all %d announced streams joined already", ErrRefused, g.want)
		default:
			idx = g.joined
			g.joined++
			g.grow(g.joined)
			g.cuts[idx] = r.cut
			g.active.Add(1)
		}
	})
	if err != nil {
		return err
	}
	r.group, r.streamIdx, r.pageStore = g, idx, g.store
	r.stats.Stream = true
	r.state = stateStream
	r.reply, r.replyPayload = RecHelloAck, encodeHelloAck(helloFlags{Stream: true})
	return nil
}

// leaveStream ends this stream: on failure the whole migration fails (the
// main connection is cut and reports why); its counts go to the group.
func (r *receiver) leaveStream(err error) {
	g := r.group
	if err != nil {
		g.fail(fmt.Errorf("stream %d: %w", r.streamIdx+2, err))
	}
	g.update(func() { g.stats[r.streamIdx] = r.stats })
	g.active.Done()
}

// streamRecord handles a record on an extra stream: the PAGES of its
// current iteration, then SYNC, after which it moves to the next one, or
// ends after the last.
func (r *receiver) streamRecord(rec record) error {
	g := r.group
	if !r.iterStarted {
		k := int64(r.iter)
		if err := g.wait(r.ctx.Done(), 0, fmt.Sprintf("iteration %d to begin", k), func() bool { return g.begun >= k }); err != nil {
			return err
		}
		r.iterStarted = true
	}
	switch rec.Type {
	case RecPages:
		return r.onPages(rec.Flags, rec.Payload)
	case RecSync:
		k, entries, err := decodeSync(rec.Payload)
		if err != nil {
			return err
		}
		if k != r.iter {
			return fmt.Errorf("%w: SYNC %d in iteration %d", ErrUnexpected, k, r.iter)
		}
		if entries != r.entries {
			return fmt.Errorf("%w: SYNC %d says the stream sent %d page entries, %d arrived", ErrMalformed, k, entries, r.entries)
		}
		final := false
		g.update(func() {
			g.synced[r.streamIdx] = int64(k)
			g.entries[r.streamIdx] = r.entries
			final = g.final && g.begun == int64(k)
		})
		if final {
			r.state = stateDone
			return nil
		}
		r.iter++
		r.iterStarted = false
		return nil
	}
	return fmt.Errorf("%w: %v on a stream", ErrUnexpected, rec.Type)
}
