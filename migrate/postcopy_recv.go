package migrate

import (
	"fmt"
	"io"
	"time"
)

// The destination's side of post-copy (postcopy.go): agreeing to it,
// MISSING, starting the guest with pages missing, pushed pages, the end;
// and the request channel, which a connection of its own becomes.

// offerPostcopy registers a session for a migration whose HELLO asked for
// post-copy, if this side can take it: the receiver has a registry and
// the destination can run a guest with missing pages.
func (r *receiver) offerPostcopy(info VMInfo) error {
	pd, ok := r.dst.(PostcopyDestination)
	switch {
	case !ok || r.opts.Sessions == nil:
		return fmt.Errorf("this receiver does not take post-copy")
	case info.ID.IsZero():
		return fmt.Errorf("a VM without an id cannot be migrated with post-copy")
	}
	if err := pd.CanPostcopy(); err != nil {
		return err
	}
	s := newPostcopySession(info.ID, r.opts.Peer, r.total, pd)
	if err := r.opts.Sessions.addPostcopy(s); err != nil {
		return err
	}
	r.session = s
	return nil
}

// dropSession unregisters the session of a migration that failed before
// its guest started.
func (r *receiver) dropSession() {
	if r.session != nil {
		r.session.end()
		r.opts.Sessions.removePostcopy(r.session)
	}
}

// onRecover takes over, on a new connection, the post-copy of a VM whose
// connection broke after the switch (a source's `ferry migrate --resume`):
// HELLO-ACK{RESUME, POSTCOPY}, then MISSING records with the pages that are
// still missing here; the source pushes them as before. A post-copy that
// completed here answers with nothing missing, so that a source that
// missed COMPLETE learns it is done.
func (r *receiver) onRecover(s *postcopySession) error {
	if err := s.reattach(); err != nil {
		return fmt.Errorf("%w: cannot resume post-copy: %v", ErrRefused, err)
	}
	r.session, r.total, r.postcopy = s, s.total, true
	r.stats.Postcopy, r.stats.Recovered = true, true
	s.mu.Lock()
	r.stats.PagesMissing = s.left
	s.mu.Unlock()
	if r.unwatch != nil {
		r.unwatch() // the guest runs here: cancellation must not cut this
	}
	r.unwatched = true
	r.state = statePostcopy
	r.reply, r.replyPayload, r.sendMissing = RecHelloAck, encodeHelloAck(helloFlags{Resume: true, Postcopy: true}), true
	return nil
}

// writeMissing sends the MISSING records of the session, in page order
// (after a recovery's HELLO-ACK).
func (r *receiver) writeMissing(conn io.Writer) error {
	s := r.session
	s.mu.Lock()
	missing := append([]uint64(nil), s.missing...)
	s.mu.Unlock()
	for first := uint64(0); first < s.total; first += MaxMissingPages {
		n := int(min(MaxMissingPages, s.total-first))
		if err := writeRecord(conn, RecMissing, encodeMissing(missing, first, n)); err != nil {
			return fmt.Errorf("migrate: send MISSING: %w", err)
		}
	}
	return nil
}

// onMissing takes one MISSING record (after the switch, before STATE).
func (r *receiver) onMissing(p []byte) error {
	if !r.postcopy || !r.final {
		return fmt.Errorf("%w: MISSING before a switch to post-copy", ErrUnexpected)
	}
	n, err := decodeMissing(p, r.nextMissing, r.total, r.session.missing)
	if err != nil {
		return err
	}
	r.nextMissing += n
	return nil
}

// notPresentMissing counts the pages missing for post-copy that never
// arrived before it: END accepts them as covered.
func (r *receiver) notPresentMissing() uint64 {
	if !r.postcopy {
		return 0
	}
	var n uint64
	for w, m := range r.session.missing {
		n += popcountWords([]uint64{m &^ r.present[w]})
	}
	return n
}

// startPostcopy runs the guest at COMMIT with the missing pages absent.
func (r *receiver) startPostcopy() error {
	s := r.session
	s.left = popcountWords(s.missing)
	if err := s.dst.StartPostcopy(s.missing, s.need); err != nil {
		return fmt.Errorf("migrate: start guest for post-copy: %w", err)
	}
	r.prepared = false // the guest runs: never discarded from here on
	r.stats.Postcopy = true
	r.stats.PagesMissing = s.left
	r.state = statePostcopy
	r.reply, r.replyPayload = RecDoneAck, nil
	return nil
}

// onPushed fills the missing pages of a PAGES record that came after the
// switch, on the main connection or on the channel: ZERO and FULL only
// (the destination dropped what it held of them), each page missing.
func (r *receiver) onPushed(flags uint16, p []byte) error {
	p, err := r.pagesPayload(flags, p)
	if err != nil {
		return err
	}
	total := r.total
	if r.state == stateChannel {
		total = r.session.total
	}
	it := newRunIter(p, total)
	var run pageRun
	for it.next(&run) {
		if run.Kind == pageDelta {
			return fmt.Errorf("%w: DELTA entry for page %d after the switch to post-copy", ErrMalformed, run.First)
		}
	}
	if it.err != nil {
		return it.err
	}
	it = newRunIter(p, total)
	for it.next(&run) {
		for k := range run.Count {
			var data []byte
			if run.Kind == pageFull {
				data = run.Data[k*PageSize : (k+1)*PageSize]
			}
			if err := r.session.fill(run.First+k, data); err != nil {
				return err
			}
			r.pushed++
		}
	}
	return nil
}

// onPostcopyEnd checks that every missing page arrived, ends post-copy on
// the destination and answers COMPLETE.
func (r *receiver) onPostcopyEnd(p []byte) error {
	s := r.session
	s.mu.Lock()
	left, done := s.left, s.complete
	s.complete = true
	s.mu.Unlock()
	if left != 0 {
		s.mu.Lock()
		s.complete = done
		s.mu.Unlock()
		return fmt.Errorf("%w: POSTCOPY-END with %d pages still missing", ErrMalformed, left)
	}
	if !done {
		if err := s.dst.EndPostcopy(); err != nil {
			return fmt.Errorf("migrate: end post-copy: %w", err)
		}
	}
	st := s.stats()
	r.stats.PostcopyStats = st
	s.end() // the session stays registered, complete, for a source that missed COMPLETE
	s.detach()
	r.state = stateDone
	r.reply, r.replyPayload = RecComplete, encodeComplete(st)
	return nil
}

// onChannel makes this connection the request channel of the post-copy
// migration of the VM the HELLO names, from the same peer.
func (r *receiver) onChannel(h hello) error {
	if r.opts.Sessions == nil {
		return fmt.Errorf("%w: this receiver does not take post-copy", ErrRefused)
	}
	s, err := r.opts.Sessions.findPostcopy(h.Info.ID, r.opts.Peer)
	if err != nil {
		return fmt.Errorf("%w: post-copy channel: %v", ErrRefused, err)
	}
	// After a broken link, the old channel may take a moment to notice.
	busy := true
	for wait := 0; busy && wait < 30; wait++ {
		s.mu.Lock()
		busy = s.channel
		s.channel = true
		s.mu.Unlock()
		if busy {
			time.Sleep(100 * time.Millisecond)
		}
	}
	if busy {
		return fmt.Errorf("%w: post-copy channel: VM %v has one already", ErrRefused, h.Info.ID)
	}
	s.reask() // pages asked for on a channel that broke are asked again
	r.session, r.total = s, s.total
	r.stats.Channel = true
	// The channel serves a guest that may already run here: cancelling
	// the receiver (a guest arrived) must not cut it.
	if r.unwatch != nil {
		r.unwatch()
	}
	r.unwatched = true
	r.state = stateChannel
	r.reply, r.replyPayload = RecHelloAck, encodeHelloAck(helloFlags{Channel: true})
	return nil
}

// startRequests runs, on a channel, the goroutine that asks the source for
// the pages the guest waits for, as they come. It returns a function that
// stops it and waits for it.
func (r *receiver) startRequests(conn io.Writer) func() {
	s := r.session
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-s.wake:
			}
			for {
				pages, ok := s.takeNeeds()
				if !ok {
					return
				}
				if len(pages) == 0 {
					break
				}
				if err := writeRecord(conn, RecRequest, encodeRequest(pages)); err != nil {
					return
				}
			}
		}
	}()
	return func() {
		close(stop)
		<-done
	}
}
