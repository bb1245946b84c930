package migrate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// The source's side of post-copy (postcopy.go): the request channel, the
// switch, and the push of the missing pages while the guest runs on the
// destination.

// ErrPostcopyInterrupted: the connection broke after the switch to
// post-copy. The guest runs on the destination, but pages it lacks are
// only here: the source stays paused and keeps them.
var ErrPostcopyInterrupted = errors.New("migrate: post-copy interrupted: the guest runs on the destination, and the pages it still lacks are only on the source, which keeps them paused")

// pushAhead is how many bytes of pushed pages may be queued, not yet
// taken by the connection, before the push claims the next page.
const pushAhead = 128 << 10

// postcopyWanted reports whether the migration may switch to post-copy
// (or finishes one).
func (o Options) postcopyWanted() bool {
	return (o.PostcopyAfter > 0 || o.PostcopyAfterIterations > 0) && !o.SourcePaused || o.PostcopyResume
}

// recoverPostcopy finishes an interrupted post-copy on a new connection:
// after the handshake (HELLO{RESUME, POSTCOPY}), the destination's MISSING
// records say which pages it still lacks; the channel is opened again,
// and the push goes on. The source guest was paused at the switch and
// stays so: nothing here pauses or resumes it, and every failure is
// ErrPostcopyInterrupted again.
func (s *sender) recoverPostcopy() error {
	s.stats.Postcopy = true
	s.commit.committed = true // the guest runs there: never resumed here
	s.pc.missing = make([]uint64, (s.vm.total+63)/64)
	t := time.NewTimer(s.opts.HandshakeTimeout)
	defer t.Stop()
	for next := uint64(0); next < s.vm.total; {
		select {
		case m := <-s.peer.ch:
			if m.err != nil || m.t != RecMissing {
				s.peer.end = true
				return fmt.Errorf("%w: %w", ErrPostcopyInterrupted, s.peerFailure(m, "the wait for MISSING"))
			}
			n, err := decodeMissing(m.payload, next, s.vm.total, s.pc.missing)
			if err != nil {
				return fmt.Errorf("%w: %w", ErrPostcopyInterrupted, err)
			}
			next += n
			t.Reset(s.opts.HandshakeTimeout)
		case <-t.C:
			return fmt.Errorf("%w: MISSING records stopped coming for %v", ErrPostcopyInterrupted, s.opts.HandshakeTimeout)
		}
	}
	s.pc.nmiss = popcountWords(s.pc.missing)
	s.stats.PagesMissing = s.pc.nmiss
	if err := s.openChannel(); err != nil {
		return fmt.Errorf("%w: %w", ErrPostcopyInterrupted, err)
	}
	return s.push()
}

// postcopyState is the source's post-copy.
type postcopyState struct {
	ch     io.ReadWriteCloser // the request channel
	chPeer *recordReader      // its records from the destination
	// mu guards sent: a missing page goes once, pushed or requested.
	mu      sync.Mutex
	missing []uint64 // bitmap: pages the destination lacks at the switch
	sent    []uint64 // bitmap: missing pages sent since
	nmiss   uint64
	served  atomic.Uint64 // pages answered on the channel
	chErr   chan error    // the channel's server ended (nil error: closed by us)
}

// openChannel dials the request channel and introduces it (HELLO with
// CHANNEL): the destination ties it to this migration.
func (s *sender) openChannel() error {
	if s.opts.PostcopyDial == nil {
		return errors.New("migrate: post-copy needs Options.PostcopyDial for its request channel")
	}
	ch, err := s.opts.PostcopyDial(s.ctx)
	if err != nil {
		return fmt.Errorf("migrate: open the post-copy request channel: %w", err)
	}
	s.pc.ch = ch
	p, err := encodeHello(s.vm.info, helloFlags{Channel: true})
	if err == nil {
		err = writeRecord(ch, RecHello, p)
	}
	if err != nil {
		return fmt.Errorf("migrate: post-copy request channel: %w", err)
	}
	setReadDeadline(ch, time.Now().Add(s.opts.HandshakeTimeout))
	s.pc.chPeer = newRecordReader(ch)
	rec, err := s.pc.chPeer.next()
	setReadDeadline(ch, time.Time{})
	switch {
	case err != nil:
		return fmt.Errorf("migrate: post-copy request channel: %w", err)
	case rec.Type == RecError:
		return fmt.Errorf("migrate: post-copy request channel refused: %w", decodeError(rec.Payload))
	case rec.Type != RecHelloAck:
		return fmt.Errorf("%w: %v on the post-copy request channel", ErrUnexpected, rec.Type)
	}
	if f, err := decodeHelloAck(rec.Payload); err != nil || f != (helloFlags{Channel: true}) {
		return fmt.Errorf("%w: post-copy request channel acknowledged with %+v (%v)", ErrUnexpected, f, err)
	}
	return nil
}

// closeChannel closes the request channel, if open.
func (s *sender) closeChannel() {
	if s.pc.ch != nil {
		s.pc.ch.Close()
	}
}

// postcopyDue reports whether pre-copy has run long enough to switch.
func (s *sender) postcopyDue() bool {
	if s.pc.ch == nil {
		return false
	}
	o := s.opts
	return (o.PostcopyAfterIterations > 0 && len(s.stats.Iterations) >= o.PostcopyAfterIterations) ||
		(o.PostcopyAfter > 0 && time.Since(s.start) >= o.PostcopyAfter)
}

// switchPostcopy pauses the guest, sends what is cheap, the MISSING pages
// and the state, and commits; after DONE-ACK the guest runs on the
// destination and the missing pages are pushed (push).
func (s *sender) switchPostcopy() error {
	s.stats.Postcopy = true
	s.stats.Converged = false
	clock := newDowntimeClock(&s.stats.DowntimeParts)
	if err := s.src.Pause(); err != nil {
		return fmt.Errorf("migrate: pause source: %w", err)
	}
	clock.mark(&s.stats.DowntimeParts.PauseMS)
	s.commit.paused = true
	if err := s.beginIterationFlags(iterFinal | iterPostcopy); err != nil {
		return err
	}
	dirty, err := s.fetch()
	if err != nil {
		return err
	}
	clock.mark(&s.stats.DowntimeParts.SyncMS)
	s.pass.cur.PagesDirty = dirty
	s.pc.missing = make([]uint64, (s.vm.total+63)/64)
	if err := s.sortPending(); err != nil {
		return err
	}
	s.w.endPages()
	for first := uint64(0); first < s.vm.total; first += MaxMissingPages {
		n := int(min(MaxMissingPages, s.vm.total-first))
		if err := s.w.record(RecMissing, encodeMissing(s.pc.missing, first, n)); err != nil {
			return s.ioError("send MISSING", err)
		}
	}
	clock.mark(&s.stats.DowntimeParts.PagesMS)
	s.stats.PagesMissing = s.pc.nmiss
	if err := s.complete(clock); err != nil {
		return err
	}
	return s.push()
}

// sortPending goes through the pending pages at the switch: a zero page
// goes now (a ZERO entry costs nothing), a page the destination holds with
// the same content (its digest matches) is not sent, and every other one
// is missing: the destination drops what it holds of it.
func (s *sender) sortPending() error {
	for i, bm := range s.log.pending {
		mem, base := s.vm.mems[i], s.vm.base[i]
		for w, x := range bm {
			bm[w] = 0
			for ; x != 0; x &= x - 1 {
				p := uint64(w)*64 + uint64(bits.TrailingZeros64(x))
				g, page := base+p, mem[p*PageSize:(p+1)*PageSize]
				if isZeroPage(page) {
					if err := s.streams[0].sendPage(g, page); err != nil {
						return s.ioError("send pages", err)
					}
					continue
				}
				if s.table != nil && s.table.Match(g, HashPage(page)) {
					s.pass.cur.PagesFalseDirty++
					continue
				}
				s.pc.missing[g/64] |= 1 << (g % 64)
				s.pc.nmiss++
			}
		}
	}
	return nil
}

// claim reports whether missing page g is still to send, and marks it sent.
func (pc *postcopyState) claim(g uint64) bool {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if pc.missing[g/64]&(1<<(g%64)) == 0 || pc.sent[g/64]&(1<<(g%64)) != 0 {
		return false
	}
	pc.sent[g/64] |= 1 << (g % 64)
	return true
}

// page is the host mapping of global page g.
func (s *sender) page(g uint64) []byte {
	i := len(s.vm.base) - 1
	for s.vm.base[i] > g {
		i--
	}
	off := (g - s.vm.base[i]) * PageSize
	return s.vm.mems[i][off : off+PageSize]
}

// push sends every missing page the channel has not served, in order, on
// the main connection, then POSTCOPY-END, and waits for COMPLETE. Any
// failure now is ErrPostcopyInterrupted: the guest runs on the destination.
func (s *sender) push() error {
	start := time.Now()
	s.pc.sent = make([]uint64, len(s.pc.missing))
	s.pc.chErr = make(chan error, 1)
	go func() { s.pc.chErr <- s.serveRequests() }()
	pushed := uint64(0)
	err := func() error {
		for w, x := range s.pc.missing {
			for ; x != 0; x &= x - 1 {
				g := uint64(w)*64 + uint64(bits.TrailingZeros64(x))
				// Claim a page only when little is queued ahead of it:
				// a page the guest asks for meanwhile must go on the
				// channel, not wait behind a buffer of pushed pages.
				if err := s.w.waitBelow(pushAhead); err != nil {
					return err
				}
				if !s.pc.claim(g) {
					continue
				}
				if err := s.pushPage(g); err != nil {
					return err
				}
				pushed++
			}
			if w%64 == 63 {
				if err := s.postcopyCheck(); err != nil {
					return err
				}
			}
		}
		s.w.endPages()
		if err := s.w.record(RecPostcopyEnd, encodeEnd(s.pc.nmiss)); err != nil {
			return err
		}
		if err := s.w.sync(); err != nil {
			return err
		}
		return s.waitComplete()
	}()
	s.closeChannel()
	s.stats.PostcopySeconds = time.Since(start).Seconds()
	s.stats.PagesPushed = pushed
	s.stats.PagesServed = s.pc.served.Load()
	if err != nil {
		return fmt.Errorf("%w: %d of %d pages still to send: %w", ErrPostcopyInterrupted,
			s.pc.nmiss-pushed-s.pc.served.Load(), s.pc.nmiss, err)
	}
	return nil
}

// pushPage adds missing page g to the open PAGES record (ZERO or FULL).
func (s *sender) pushPage(g uint64) error {
	if !s.w.pagesOpen() {
		if err := s.w.beginPages(); err != nil {
			return err
		}
	}
	page := s.page(g)
	if isZeroPage(page) {
		s.w.addZero(g)
	} else {
		s.w.stageFull(g, page)
		s.w.keepStaged()
	}
	if s.w.pagesFull(s.opts.BatchPages) {
		s.w.endPages()
	}
	return nil
}

// postcopyCheck looks, between chunks of the push, for cancellation (not
// heeded: the guest runs there; only a broken link ends the push), an
// ERROR from the destination, or the end of the channel.
func (s *sender) postcopyCheck() error {
	select {
	case m := <-s.peer.ch:
		s.peer.end = true
		return s.peerFailure(m, "post-copy")
	case err := <-s.pc.chErr:
		s.pc.chErr <- err // for closeChannel's reader, and a later check
		if err != nil {
			return fmt.Errorf("post-copy request channel: %w", err)
		}
	default:
	}
	return nil
}

// waitComplete waits for COMPLETE, which carries the destination's
// account of the faults it served.
func (s *sender) waitComplete() error {
	t := time.NewTimer(s.opts.AckTimeout)
	defer t.Stop()
	select {
	case m := <-s.peer.ch:
		s.peer.end = true
		if m.err == nil && m.t == RecComplete {
			s.stats.PostcopyStats = decodeComplete(m.payload)
			return nil
		}
		return s.peerFailure(m, "the wait for COMPLETE")
	case <-t.C:
		return fmt.Errorf("%w: no COMPLETE within %v", ErrAckTimeout, s.opts.AckTimeout)
	}
}

// serveRequests answers the destination's REQUESTs on the channel with the
// pages asked for that are still to send, at once and whatever the push
// is doing. It returns nil when the channel is closed at the end.
func (s *sender) serveRequests() error {
	w := newRecordWriter(context.Background(), s.pc.ch, HeaderSize+maxPagesPayload, nil)
	total := s.vm.total
	for {
		rec, err := s.pc.chPeer.next()
		if err != nil {
			if errors.Is(err, ErrClosed) || errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrClosedPipe) {
				return nil // closed at the end (closeChannel), or by the destination
			}
			return err
		}
		switch rec.Type {
		case RecRequest:
		case RecError:
			return decodeError(rec.Payload)
		default:
			return fmt.Errorf("%w: %v on the post-copy request channel", ErrUnexpected, rec.Type)
		}
		pages, err := decodeRequest(rec.Payload, total)
		if err != nil {
			return err
		}
		sort.Slice(pages, func(i, j int) bool { return pages[i] < pages[j] })
		if err := w.beginPages(); err != nil {
			return err
		}
		last := ^uint64(0)
		for _, g := range pages {
			if g == last || !s.pc.claim(g) {
				continue // twice in the request, pushed already, or never missing
			}
			last = g
			if page := s.page(g); isZeroPage(page) {
				w.addZero(g)
			} else {
				w.stageFull(g, page)
				w.keepStaged()
			}
			s.pc.served.Add(1)
		}
		w.endPages()
		if err := w.flush(); err != nil {
			return err
		}
	}
}
