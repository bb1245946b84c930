package migrate

import (
	"fmt"
	"io"
	"time"
)

// What the destination sends the source: HELLO-ACK, KEPT, READY and
// DONE-ACK in order (and COMPLETE after a post-copy), or a terminal
// message (ERROR, an unexpected record, or a read error). A goroutine reads them as they come, so that an ERROR
// is noticed while the sender writes.

// peerMsg is one record (or read error) from the destination.
type peerMsg struct {
	t       RecordType
	payload []byte
	err     error
}

// peerLink is the sender's end of that goroutine. Only the sender's
// goroutine uses its fields; the reader goroutine owns the record reader.
type peerLink struct {
	ch   chan peerMsg    // the records, one at a time
	stop chan struct{}   // closed when Send returns: the reader gives up
	in   *countingReader // what the destination sent, counted
	end  bool            // the reader delivered its last message
}

// start runs the reader goroutine on conn.
func (p *peerLink) start(conn io.ReadWriter) {
	p.ch = make(chan peerMsg, 2)
	p.stop = make(chan struct{})
	p.in = &countingReader{r: conn}
	go p.read(newRecordReader(p.in), conn)
}

// close tells the reader goroutine that nobody takes its messages any
// more; a read in progress ends when the connection's read deadline is set
// (fail) or it is closed (the caller of Send).
func (p *peerLink) close() {
	if p.stop != nil {
		close(p.stop)
	}
}

// received is the number of bytes the destination sent.
func (p *peerLink) received() int64 {
	if p.in == nil {
		return 0
	}
	return p.in.n.Load()
}

// read delivers the destination's records until a terminal one, or until
// close.
func (p *peerLink) read(rr *recordReader, conn io.ReadWriter) {
	deliver := func(m peerMsg) bool {
		select {
		case p.ch <- m:
			return true
		case <-p.stop:
			return false
		}
	}
	for {
		rec, err := rr.next()
		if err != nil {
			deliver(peerMsg{err: err})
			return
		}
		m := peerMsg{t: rec.Type, payload: append([]byte(nil), rec.Payload...)}
		if rec.Type == RecError {
			// The destination stopped reading: unblock a pending write.
			setWriteDeadline(conn, time.Unix(1, 0))
		}
		if !deliver(m) {
			return
		}
		switch rec.Type {
		case RecHelloAck, RecKept, RecMissing, RecReady, RecDoneAck:
			// More may follow (after DONE-ACK: a post-copy's COMPLETE).
		default:
			return
		}
	}
}

// peerFailure turns an unwanted message from the destination into an error.
func (s *sender) peerFailure(m peerMsg, phase string) error {
	s.commit.remote = true
	switch {
	case m.err != nil:
		return fmt.Errorf("migrate: reading from destination during %s: %w", phase, m.err)
	case m.t == RecError:
		return decodeError(m.payload)
	}
	s.commit.remote = false // the destination is confused, not failed: tell it
	return fmt.Errorf("%w: %v from the destination during %s", ErrUnexpected, m.t, phase)
}

// check is called between chunks: cancellation, or anything from the peer.
func (s *sender) check() error {
	if err := s.ctx.Err(); err != nil {
		return err
	}
	select {
	case m := <-s.peer.ch:
		s.peer.end = true
		return s.peerFailure(m, "pre-copy")
	default:
		return nil
	}
}

// waitPeer waits at most AckTimeout for the record want (READY or DONE-ACK).
// Before COMMIT, cancellation ends the wait too.
func (s *sender) waitPeer(want RecordType, phase string) error {
	t := time.NewTimer(s.opts.AckTimeout)
	defer t.Stop()
	var done <-chan struct{}
	if !s.commit.committed {
		done = s.ctx.Done()
	}
	select {
	case m := <-s.peer.ch:
		if m.t == want && m.err == nil {
			if want != RecReady {
				s.peer.end = true
			}
			return nil
		}
		s.peer.end = true
		return s.peerFailure(m, phase)
	case <-t.C:
		return fmt.Errorf("%w: no %v within %v", ErrAckTimeout, want, s.opts.AckTimeout)
	case <-done:
		return s.ctx.Err()
	}
}

// ioError wraps a write failure, preferring the destination's own account
// (an ERROR record usually explains why the connection broke).
func (s *sender) ioError(what string, err error) error {
	if s.peer.ch != nil && !s.peer.end {
		t := time.NewTimer(250 * time.Millisecond)
		defer t.Stop()
		select {
		case m := <-s.peer.ch:
			s.peer.end = true
			if m.t == RecError {
				s.commit.remote = true
				return decodeError(m.payload)
			}
		case <-t.C:
		}
	}
	if s.commit.stalled.Load() {
		return fmt.Errorf("%w for %v (%s): %w", ErrStalled, s.opts.IOTimeout, what, err)
	}
	if ctxErr := s.ctx.Err(); ctxErr != nil && !s.commit.committed {
		return ctxErr
	}
	return fmt.Errorf("migrate: %s: %w", what, err)
}
