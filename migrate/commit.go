package migrate

import (
	"errors"
	"fmt"
	"time"
)

// The end of a migration: the stop-and-copy pass, the state, END, the
// commit handshake (READY, COMMIT, DONE-ACK; PROTOCOL.md, "Commit rule"),
// and the roll-back when anything fails before COMMIT.

// stopAndCopy pauses the guest, sends what is left and the state, and waits
// for DONE-ACK.
func (s *sender) stopAndCopy(converged bool) error {
	s.stats.Converged = converged
	clock := newDowntimeClock(&s.stats.DowntimeParts)
	if err := s.src.Pause(); err != nil {
		return fmt.Errorf("migrate: pause source: %w", err)
	}
	clock.mark(&s.stats.DowntimeParts.PauseMS)
	s.commit.paused = true
	// The guest is paused: every millisecond now is downtime, so the
	// bandwidth cap, which protects the guest's own traffic during
	// pre-copy, no longer applies (QEMU lifts it at completion too).
	s.w.liftLimit()
	if err := s.beginIteration(true); err != nil {
		return err
	}
	dirty, err := s.fetch()
	if err != nil {
		return err
	}
	clock.mark(&s.stats.DowntimeParts.SyncMS)
	if last := s.stats.Iterations[len(s.stats.Iterations)-1]; last.PagesLeft > 0 {
		// The pass before stopped early (midPass) and was not reported: its
		// dirty rate counts what this fetch found beyond the pages it left.
		s.reportLast(dirty - min(dirty, last.PagesLeft))
	}
	s.pass.cur.PagesDirty = dirty
	if _, err := s.sendPending(false, false); err != nil {
		return err
	}
	if err := s.drain(); err != nil {
		return err
	}
	clock.mark(&s.stats.DowntimeParts.PagesMS)
	return s.complete(clock)
}

// pausedCopy migrates a guest its user paused (Options.SourcePaused): it
// cannot write its memory, so there is nothing to pre-copy and no dirty log
// to keep. One pass, iteration 0 marked FINAL (the shape of a snapshot),
// sends every page, then the migration completes as any other. The guest
// is neither paused nor resumed: commit.paused stays false, so no failure
// path resumes it, and after COMMIT it stays paused as any source does.
func (s *sender) pausedCopy() error {
	s.stats.Converged = true
	s.stats.SourcePaused = true
	clock := newDowntimeClock(&s.stats.DowntimeParts)
	s.w.liftLimit() // the cap protects a running guest's own traffic
	if err := s.beginIteration(true); err != nil {
		return err
	}
	s.pass.cur.PagesDirty = s.vm.total
	if _, err := s.sendAll(false, false); err != nil {
		return err
	}
	if err := s.drain(); err != nil {
		return err
	}
	clock.mark(&s.stats.DowntimeParts.PagesMS)
	return s.complete(clock)
}

// complete ends the final pass: the VM state, END, then the commit
// handshake. clock started with the final pass (the downtime's start).
func (s *sender) complete(clock downtimeClock) error {
	parts := &s.stats.DowntimeParts
	// Every page of the pass is out on every stream before STATE: the
	// destination waits for the streams' SYNC before it takes STATE.
	if err := s.drain(); err != nil {
		return err
	}
	if err := s.syncStreams(false); err != nil {
		return err
	}
	state, err := s.src.State()
	if err != nil {
		return fmt.Errorf("migrate: save source state: %w", err)
	}
	clock.mark(&parts.StateMS)
	if len(state) > MaxStateSize {
		return fmt.Errorf("migrate: VM state is %d bytes, protocol maximum is %d", len(state), MaxStateSize)
	}
	if err := s.w.record(RecState, state); err != nil {
		return s.ioError("send STATE", err)
	}
	if err := s.w.record(RecEnd, encodeEnd(s.entries())); err != nil {
		return s.ioError("send END", err)
	}
	if err := s.endIteration(); err != nil {
		return err
	}
	clock.mark(&parts.FlushMS)
	s.reportLast(0)
	if err := s.waitPeer(RecReady, "the wait for READY"); err != nil {
		return err
	}
	clock.mark(&parts.ReadyMS)
	// Last chance to cancel. Once COMMIT is out the destination may start
	// the guest, so from here on only its answer ends the migration, and no
	// failure resumes the source guest unless the destination says (ERROR)
	// that it did not start it.
	if err := s.ctx.Err(); err != nil {
		return err
	}
	if !s.commit.unwatch() {
		return s.ctx.Err() // cancelled just now: the connection is being cut
	}
	s.commit.committed = true
	if err := s.w.record(RecCommit, nil); err != nil {
		return s.ioError("send COMMIT", err)
	}
	if err := s.w.sync(); err != nil {
		return s.ioError("send COMMIT", err)
	}
	if err := s.waitPeer(RecDoneAck, "the wait for DONE-ACK"); err != nil {
		return err
	}
	clock.mark(&parts.CommitMS)
	s.stats.DowntimeMS = clock.total()
	s.commit.paused = false // handed over: the source guest must stay paused for good
	if err := s.unthrottle(); err != nil {
		s.stats.Warnings = append(s.stats.Warnings, err.Error())
	}
	if s.log.logging {
		s.log.logging = false
		if err := s.src.StopDirtyLog(); err != nil {
			// The guest now runs on the destination: not a failure of the
			// migration, but the caller must see it.
			s.stats.Warnings = append(s.stats.Warnings, fmt.Sprintf("stopping dirty logging on the source failed: %v", err))
		}
	}
	return nil
}

// fail undoes what a failed migration did to the source: the guest runs
// again and the destination is told why.
func (s *sender) fail(cause error) error {
	var re *RemoteError
	if errors.As(cause, &re) {
		s.commit.remote = true
	}
	errs := []error{cause}
	unknown := false
	if s.commit.committed {
		if errors.Is(cause, ErrPostcopyInterrupted) {
			// The guest runs on the destination, its missing pages are
			// only here: keep the guest paused, never resume it.
			unknown = true
		} else if re != nil {
			// The destination answered COMMIT with ERROR: it did not start
			// the guest (it discards its copy before it says so).
			errs[0] = fmt.Errorf("the destination did not start the guest after COMMIT: %w", cause)
		} else {
			// No answer: the guest may run there. Never resume it here.
			unknown = true
			errs[0] = fmt.Errorf("%w (after COMMIT: %v)", ErrOutcomeUnknown, cause)
		}
	}
	if err := s.unthrottle(); err != nil {
		errs = append(errs, err)
	}
	if s.commit.paused && !unknown {
		if err := s.src.Resume(); err != nil {
			errs = append(errs, fmt.Errorf("migrate: RESUMING THE SOURCE GUEST FAILED: %w", err))
		} else {
			s.commit.paused = false
		}
	}
	if s.log.logging {
		if err := s.src.StopDirtyLog(); err != nil {
			errs = append(errs, fmt.Errorf("migrate: stop dirty log: %w", err))
		}
		s.log.logging = false
	}
	// The writer goroutine must be out of the way before ERROR is written.
	writerDone := s.w.stop(2 * time.Second)
	if !writerDone {
		setWriteDeadline(s.conn, time.Unix(1, 0))
		writerDone = s.w.stop(time.Second)
	}
	if s.commit.helloOut && !s.commit.remote && !s.commit.committed && !s.commit.stalled.Load() && writerDone {
		s.w.discard()
		sendErrorRecord(s.conn, "source aborted the migration: "+cause.Error())
	}
	// Release the reader goroutine if it is still waiting.
	setReadDeadline(s.conn, time.Unix(1, 0))
	return errors.Join(errs...)
}

// downtimeClock times the parts of the downtime (Stats.DowntimeParts):
// each mark records the time since the previous one.
type downtimeClock struct {
	start, last time.Time
}

func newDowntimeClock(p *DowntimeParts) downtimeClock {
	*p = DowntimeParts{}
	now := time.Now()
	return downtimeClock{start: now, last: now}
}

func (c *downtimeClock) mark(part *float64) {
	now := time.Now()
	*part = float64(now.Sub(c.last).Microseconds()) / 1000
	c.last = now
}

func (c *downtimeClock) total() float64 { return float64(time.Since(c.start).Microseconds()) / 1000 }
