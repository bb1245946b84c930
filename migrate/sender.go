package migrate

import (
	"context"
	"fmt"
	"io"
	"sync/atomic"
	"time"
)

// The sender: one outgoing migration. Its parts, by concern, are in
// options.go, precopy.go, converge.go, peer.go, commit.go and conn.go (the
// package's file map is in vm.go).

// sender holds the state of one outgoing migration, grouped by concern.
type sender struct {
	ctx   context.Context
	src   Source
	conn  io.ReadWriter
	opts  Options
	w     *recordWriter
	start time.Time
	// streams send the pages; streams[0] writes on w (streams.go); par
	// runs them in parallel (streams_send.go).
	streams []*stream
	par     parallel

	vm     guestLayout  // what is migrated
	log    dirtyLog     // the dirty log and the pages still to send
	table  *DigestTable // what the destination holds; nil with NoDigest
	blocks *BlockTable  // the block hashes of it; nil with NoDigest or NoDelta
	peer   peerLink     // what the destination sends (peer.go)
	commit commitState  // where the migration stands in the commit protocol
	pass   passState    // the iteration under way
	stats  Stats
	// throttle is auto-converge's state (converge.go); the guest runs
	// under throttle.pct while it is not 0.
	throttle throttleRule
	pc       postcopyState // post-copy (postcopy_send.go)
}

// guestLayout is the source VM's memory as the sender walks it.
type guestLayout struct {
	info  VMInfo
	mems  [][]byte // host mapping of each region
	base  []uint64 // global index of each region's first page
	pages []uint64 // pages per region
	total uint64
}

// dirtyLog is the sender's side of the source's dirty log.
type dirtyLog struct {
	manual  bool       // manual-protect mode: reading does not re-arm
	logging bool       // StartDirtyLog succeeded, StopDirtyLog not called
	pending [][]uint64 // dirty pages not sent yet, per region
	scratch [][]uint64 // DirtyLog output, per region
	peekAt  time.Time  // the last mid-pass peek
}

// commitState is what the roll-back (fail) needs to know.
type commitState struct {
	paused   bool // the sender paused the source guest
	helloOut bool // HELLO written: the destination expects ERROR on failure
	remote   bool // the destination reported an error or hung up
	// committed is set just before COMMIT is written: from then on the
	// destination may run the guest, and the source never resumes it on
	// its own (only an ERROR from the destination proves it did not start).
	committed bool
	stalled   atomic.Bool // the watchdog cut a connection that made no progress
	unwatch   func() bool // stops cancellation from breaking the connection
}

// passState is the iteration under way.
type passState struct {
	iter   uint32
	cur    IterationStats
	at     time.Time // when it began
	total  uint64    // pages it set out to visit (PassProgress)
	liveAt time.Time // the last call of Options.Live
	slept  int64     // the rate limiter's slept count when it began
}

// Send migrates src over conn to a Receive running on the other side.
//
// conn must allow one goroutine to read while another writes (a net.Conn
// does). If conn has SetDeadline / SetWriteDeadline / SetReadDeadline
// methods, they are used to unblock I/O when ctx is cancelled or the
// destination reports an error; the caller closes conn after Send returns.
//
// The migration ends with a commit handshake: after END the destination
// answers READY (every page and the state are in), the source sends COMMIT,
// and the destination starts the guest and answers DONE-ACK. Send returns
// nil only after DONE-ACK: then the source guest is left paused and must not
// run again.
//
// Before COMMIT, any failure (including cancelling ctx) makes Send stop
// dirty logging, resume the source guest if it paused it, tell the
// destination (ERROR) when it can, and return the error: nothing is lost.
// After COMMIT, Send ignores ctx and waits at most AckTimeout for DONE-ACK.
// An ERROR from the destination then still means it did not start the guest
// (the source resumes); anything else (a broken connection, a timeout) leaves
// the source guest paused and returns an error wrapping ErrOutcomeUnknown:
// the guest may be running on the destination, someone must check before
// resuming it here. The Stats are returned in every case (partial on error).
func Send(ctx context.Context, src Source, conn io.ReadWriter, opts Options) (*Stats, error) {
	o, err := opts.normalize()
	if err != nil {
		return nil, err
	}
	s := &sender{ctx: ctx, src: src, conn: conn, opts: o, start: time.Now()}
	var limit *tokenBucket
	if o.MaxBandwidth > 0 {
		limit = newTokenBucket(o.MaxBandwidth)
	}
	s.w = newRecordWriter(ctx, conn, o.BufferSize, limit)
	if o.Compress != CompressOff {
		s.w.comp, s.w.linkBps = newCompressor(o.Compress), s.linkRate
	}
	s.w.startAsync()
	s.streams = []*stream{newStream(s, s.w)}
	s.commit.unwatch = context.AfterFunc(ctx, func() { setDeadline(conn, time.Unix(1, 0)) })
	stopWatchdog := watchdog(s.w, conn, o.IOTimeout, &s.commit.stalled)
	err = s.run()
	s.stopStreams()
	stopWatchdog()
	s.commit.unwatch()
	if err != nil {
		err = s.fail(err)
	} else {
		s.w.stop(time.Second) // idle: everything was synced
	}
	s.closeStreams()
	s.closeChannel()
	s.peer.close() // nobody reads what the destination sends any more
	s.stats.TotalSeconds = time.Since(s.start).Seconds()
	s.stats.BytesTotal = s.written()
	s.stats.BytesReceived = s.peer.received()
	return &s.stats, err
}

func (s *sender) run() error {
	if err := s.setup(); err != nil {
		return err
	}
	if err := s.handshake(); err != nil {
		if s.opts.PostcopyResume {
			return fmt.Errorf("%w: %w", ErrPostcopyInterrupted, err)
		}
		return err
	}
	if s.opts.PostcopyResume {
		return s.recoverPostcopy()
	}
	if s.opts.SourcePaused {
		return s.pausedCopy()
	}
	manual, err := s.src.StartDirtyLog()
	if err != nil {
		return fmt.Errorf("migrate: start dirty log: %w", err)
	}
	s.log.manual, s.log.logging = manual, true
	clearFirst := manual && !s.opts.NoClearBeforeSend
	if manual && s.opts.NoClearBeforeSend {
		// Classic pre-copy: one sync of the whole log before iteration 0.
		if err := s.clearEverything(); err != nil {
			return err
		}
	}

	// Iteration 0: every page.
	if err := s.beginIteration(false); err != nil {
		return err
	}
	s.pass.cur.PagesDirty = s.vm.total
	stopped, err := s.sendAll(clearFirst, true)
	if err != nil {
		return err
	}
	if err := s.endIteration(); err != nil {
		return err
	}

	for {
		if stopped {
			// The budget took the rest of the pass (midPass).
			return s.stopAndCopy(true)
		}
		dirty, err := s.fetch()
		if err != nil {
			return err
		}
		s.reportLast(dirty)
		stop, converged, err := decide(s.history(), s.opts, dirty)
		if stop && converged {
			return s.stopAndCopy(true)
		}
		if s.postcopyDue() || (s.pc.ch != nil && (err != nil || stop)) {
			// Not converging, and post-copy allowed: switch now, or at
			// the limit where pre-copy would give up or force.
			return s.switchPostcopy()
		}
		if err != nil {
			return err
		}
		if stop {
			return s.stopAndCopy(converged)
		}
		if err := s.autoConverge(dirty); err != nil {
			return err
		}
		if err := s.beginIteration(false); err != nil {
			return err
		}
		s.pass.cur.PagesDirty = dirty
		if s.log.manual && s.opts.NoClearBeforeSend {
			if err := s.clearAll(); err != nil {
				return err
			}
		}
		if stopped, err = s.sendPending(clearFirst, true); err != nil {
			return err
		}
		if err := s.endIteration(); err != nil {
			return err
		}
	}
}

// linkRate is the link's rate for the compressor's choice (compress.go):
// measured in the pass under way or before it; while the bandwidth cap
// holds, at most the cap, and the cap itself before anything was measured.
func (s *sender) linkRate() float64 {
	capBps := s.opts.MaxBandwidth
	if s.commit.paused || s.opts.SourcePaused {
		capBps = 0 // the cap is lifted for the stop-and-copy
	}
	bw := passBandwidth(s.passWritten(), time.Since(s.pass.at), s.stats.Iterations, capBps)
	if bw == 0 && capBps > 0 {
		return float64(capBps)
	}
	return bw
}

// autoConverge raises the guest's throttle when pre-copy does not
// converge (throttleRule), if the Source can throttle and the user did not
// turn it off.
func (s *sender) autoConverge(dirty uint64) error {
	t, ok := s.src.(Throttler)
	if !ok || s.opts.NoAutoConverge {
		return nil
	}
	next := s.throttle.next(s.history(), dirty)
	if next.pct != s.throttle.pct {
		if err := t.Throttle(next.pct); err != nil {
			return fmt.Errorf("migrate: throttle the source guest to %d%%: %w", next.pct, err)
		}
	}
	s.throttle = next
	return nil
}

// unthrottle lifts the throttle, if any: the migration has ended.
func (s *sender) unthrottle() error {
	if s.throttle.pct == 0 {
		return nil
	}
	s.throttle.pct = 0
	if err := s.src.(Throttler).Throttle(0); err != nil {
		return fmt.Errorf("migrate: lift the source guest's throttle: %w", err)
	}
	return nil
}

// history is the snapshot of the migration the convergence rules decide on.
func (s *sender) history() history {
	return history{its: s.stats.Iterations, elapsed: time.Since(s.start), digest: s.table != nil}
}

// setup reads the VM layout and allocates the table and bitmaps.
func (s *sender) setup() error {
	s.vm.info = s.src.Info()
	if err := checkInfo(s.vm.info); err != nil {
		return fmt.Errorf("migrate: source VM: %v", err)
	}
	n := len(s.vm.info.Regions)
	s.vm.mems = make([][]byte, n)
	s.vm.base = make([]uint64, n)
	s.vm.pages = make([]uint64, n)
	s.log.pending = make([][]uint64, n)
	s.log.scratch = make([][]uint64, n)
	for i, r := range s.vm.info.Regions {
		m := s.src.Memory(i)
		if err := r.checkMapped(i, m); err != nil {
			return fmt.Errorf("migrate: source %v", err)
		}
		s.vm.mems[i] = m
		s.vm.base[i] = s.vm.total
		s.vm.pages[i] = r.Pages()
		s.vm.total += s.vm.pages[i]
		words := (s.vm.pages[i] + 63) / 64
		s.log.pending[i] = make([]uint64, words)
		s.log.scratch[i] = make([]uint64, words)
	}
	if !s.opts.NoDigest {
		s.table = NewDigestTable(s.vm.total)
		if !s.opts.NoDelta {
			s.blocks = NewBlockTable(s.vm.total)
		}
	}
	s.stats.TableBytes = int64(s.table.SizeBytes() + s.blocks.SizeBytes())
	return nil
}

// handshake sends HELLO and waits for HELLO-ACK; it starts the goroutine
// that reads everything the destination sends. With post-copy possible it
// then opens the request channel (postcopy_send.go).
func (s *sender) handshake() error {
	want := helloFlags{Resume: s.opts.Resume || s.opts.PostcopyResume, Postcopy: s.opts.postcopyWanted(),
		Streams: s.opts.Connections > 1 && !s.opts.PostcopyResume}
	p, err := encodeHello(s.vm.info, want)
	if err != nil {
		return fmt.Errorf("migrate: %v", err)
	}
	if err := s.w.record(RecHello, p); err != nil {
		return s.ioError("send HELLO", err)
	}
	if err := s.w.sync(); err != nil {
		return s.ioError("send HELLO", err)
	}
	s.commit.helloOut = true
	s.peer.start(s.conn)

	t := time.NewTimer(s.opts.HandshakeTimeout)
	defer t.Stop()
	select {
	case m := <-s.peer.ch:
		if m.t == RecHelloAck {
			got, err := decodeHelloAck(m.payload)
			if err != nil {
				return err
			}
			if got != want {
				return fmt.Errorf("%w: HELLO-ACK with %+v to a HELLO with %+v", ErrUnexpected, got, want)
			}
			if s.opts.PostcopyResume {
				return nil // MISSING records follow (recoverPostcopy)
			}
			if got.Resume {
				s.stats.Resumed = true
				if err := s.receiveKept(); err != nil {
					return err
				}
			}
			if got.Postcopy {
				if err := s.openChannel(); err != nil {
					return err
				}
			}
			if got.Streams {
				return s.openStreams()
			}
			return nil
		}
		s.peer.end = true
		return s.peerFailure(m, "handshake")
	case <-t.C:
		return fmt.Errorf("migrate: no HELLO-ACK within %v", s.opts.HandshakeTimeout)
	case <-s.ctx.Done():
		return s.ctx.Err()
	}
}
