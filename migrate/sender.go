package migrate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"
)

// TimeoutAction says what the sender does when a limit (MaxIterations or
// Timeout) is reached before the migration converged.
type TimeoutAction int

const (
	// AbortOnTimeout gives up: the source guest keeps running, Send returns
	// an error wrapping ErrNotConverged. This is the default.
	AbortOnTimeout TimeoutAction = iota
	// ForceOnTimeout goes to stop-and-copy anyway, accepting a longer
	// downtime; Stats.Converged is false.
	ForceOnTimeout
)

func (a TimeoutAction) String() string {
	switch a {
	case AbortOnTimeout:
		return "abort"
	case ForceOnTimeout:
		return "force"
	}
	return fmt.Sprintf("TimeoutAction(%d)", int(a))
}

// Options tune Send. The zero value is usable.
type Options struct {
	// Downtime is the stop-and-copy budget: pre-copy ends when the bytes
	// left, divided by the bandwidth measured in the last iteration, fit in
	// it. Bytes left = dirty pages × PageSize × the share of dirty pages the
	// last iteration really sent (1 in iteration 0 and with NoDigest).
	// The check also runs between chunks of a pass (in manual dirty-log
	// mode), counting the pages the pass has not reached yet: once its rest
	// fits the budget, a pass held back by MaxBandwidth ends at once (the
	// stop-and-copy is not capped), and an uncapped one ends early only if
	// finishing it would let the guest dirty more than the budget takes
	// (see passPoint.stop). Default 300 ms.
	Downtime time.Duration
	// MaxIterations limits pre-copy iterations, iteration 0 included.
	// Default 30.
	MaxIterations int
	// Timeout limits the pre-copy phase (wall clock, checked between
	// iterations). Zero means no limit.
	Timeout time.Duration
	// OnTimeout chooses between giving up and forcing stop-and-copy when
	// MaxIterations or Timeout is reached.
	OnTimeout TimeoutAction
	// MaxBandwidth caps the bytes written per second during pre-copy; 0
	// means unlimited. Stop-and-copy, with the guest paused, is not capped.
	MaxBandwidth int64
	// NoDigest disables the digest filter (plain pre-copy: every dirty page
	// is sent). Pages still carry their digest on the wire.
	NoDigest bool
	// NoClearBeforeSend, in manual dirty-log mode, clears the whole bitmap
	// right after fetching it (classic pre-copy) instead of clearing each
	// chunk just before reading it.
	NoClearBeforeSend bool
	// Progress, if set, is called once per iteration with its statistics.
	Progress func(IterationStats)
	// Resume asks the destination to resume a cut migration of this VM
	// (same VMInfo.ID) into the pages it kept: it answers with the digests
	// of the pages it holds, and iteration 0 sends only the pages whose
	// content differs. A destination that keeps nothing for this VM
	// refuses (ERROR). Needs the digest filter.
	Resume bool

	// SourcePaused says the source guest is paused, on purpose, and must
	// stay paused: it cannot write its memory, so there is no pre-copy.
	// Send goes straight to one stop-and-copy pass that sends every page
	// (iteration 0, FINAL; without dirty logging, and without the
	// MaxBandwidth cap, which exists for a running guest's own traffic),
	// never calls Source.Pause or Resume, and leaves the guest paused
	// whatever happens (the destination keeps it paused too: the caller
	// records that in the VM state).
	SourcePaused bool

	// BatchPages is the number of page entries per PAGES record (default
	// 64, at most MaxPagesPerBatch).
	BatchPages int
	// ChunkPages is the dirty-log clear granularity (default 512, a
	// multiple of 64).
	ChunkPages int
	// HandshakeTimeout bounds the wait for HELLO-ACK (default 30 s).
	HandshakeTimeout time.Duration
	// AckTimeout bounds the wait for READY after END, and for DONE-ACK
	// after COMMIT (default 60 s).
	AckTimeout time.Duration
	// IOTimeout aborts the migration when a write to the connection makes
	// no progress for that long (a stalled peer or link; default 30 s).
	IOTimeout time.Duration
	// BufferSize is the output buffer size (default 4 MiB).
	BufferSize int
}

func (o Options) normalize() (Options, error) {
	if o.Downtime <= 0 {
		o.Downtime = 300 * time.Millisecond
	}
	if o.MaxIterations <= 0 {
		o.MaxIterations = 30
	}
	if o.Timeout < 0 {
		return o, fmt.Errorf("migrate: negative Timeout")
	}
	if o.OnTimeout != AbortOnTimeout && o.OnTimeout != ForceOnTimeout {
		return o, fmt.Errorf("migrate: invalid OnTimeout %v", o.OnTimeout)
	}
	if o.MaxBandwidth < 0 {
		return o, fmt.Errorf("migrate: negative MaxBandwidth")
	}
	if o.Resume && o.NoDigest {
		return o, fmt.Errorf("migrate: a resumed migration needs the digest filter (Resume with NoDigest)")
	}
	if o.BatchPages <= 0 {
		o.BatchPages = 64
	}
	if o.BatchPages > MaxPagesPerBatch {
		return o, fmt.Errorf("migrate: BatchPages %d exceeds %d", o.BatchPages, MaxPagesPerBatch)
	}
	if o.ChunkPages <= 0 {
		o.ChunkPages = 512
	}
	if o.ChunkPages%64 != 0 {
		return o, fmt.Errorf("migrate: ChunkPages %d is not a multiple of 64", o.ChunkPages)
	}
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = 30 * time.Second
	}
	if o.AckTimeout <= 0 {
		o.AckTimeout = 60 * time.Second
	}
	if o.IOTimeout <= 0 {
		o.IOTimeout = 30 * time.Second
	}
	if o.BufferSize <= 0 {
		o.BufferSize = 4 << 20
	}
	return o, nil
}

// peerMsg is one record (or read error) from the destination.
type peerMsg struct {
	t       RecordType
	payload []byte
	err     error
}

// sender holds the state of one outgoing migration.
type sender struct {
	ctx  context.Context
	src  Source
	conn io.ReadWriter
	opts Options

	info  VMInfo
	mems  [][]byte
	base  []uint64 // global index of each region's first page
	pages []uint64 // pages per region
	total uint64

	table   *DigestTable // nil with NoDigest
	w       *recordWriter
	pending [][]uint64 // dirty pages not sent yet, per region
	scratch [][]uint64 // DirtyLog output, per region

	manual   bool
	logging  bool
	paused   bool
	helloOut bool // HELLO written: the destination expects ERROR on failure
	remote   bool // the destination reported an error or hung up
	// committed is set just before COMMIT is written: from then on the
	// destination may run the guest, and the source never resumes it on
	// its own (only an ERROR from the destination proves it did not start).
	committed bool
	stalled   atomic.Bool // the watchdog cut a connection that made no progress
	peer      chan peerMsg
	peerStop  chan struct{}   // closed when Send returns: readPeer gives up
	peerIn    *countingReader // what the destination sent
	peerEnd   bool            // the reader goroutine delivered its last message
	unwatch   func() bool     // stops cancellation from breaking the connection

	iter    uint32
	visited int       // pages visited since the last keepalive check
	outMark int64     // w.queued at outAt
	outAt   time.Time // when output last moved
	cur     IterationStats
	curAt   time.Time
	curOut  int64
	// curWritten is w.written when the iteration began (its measured rate).
	curWritten int64
	peekAt     time.Time // the last dirty-log peek of midPass
	entries    uint64    // page entries sent, for END
	stats      Stats
	start      time.Time
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
	if o.MaxBandwidth > 0 {
		s.w = newRecordWriter(ctx, conn, o.BufferSize, newTokenBucket(o.MaxBandwidth))
	} else {
		s.w = newRecordWriter(ctx, conn, o.BufferSize, nil)
	}
	s.w.startAsync()
	s.unwatch = context.AfterFunc(ctx, func() { setDeadline(conn, time.Unix(1, 0)) })
	stopWatchdog := s.watchdog()
	err = s.run()
	stopWatchdog()
	s.unwatch()
	if err != nil {
		err = s.fail(err)
	} else {
		s.w.stop(time.Second) // idle: everything was synced
	}
	if s.peerStop != nil {
		close(s.peerStop) // nobody reads s.peer any more
	}
	s.stats.TotalSeconds = time.Since(s.start).Seconds()
	s.stats.BytesTotal = s.w.written.Load()
	if s.peerIn != nil {
		s.stats.BytesReceived = s.peerIn.n.Load()
	}
	return &s.stats, err
}

func (s *sender) run() error {
	if err := s.setup(); err != nil {
		return err
	}
	if err := s.handshake(); err != nil {
		return err
	}
	if s.opts.SourcePaused {
		return s.pausedCopy()
	}
	manual, err := s.src.StartDirtyLog()
	if err != nil {
		return fmt.Errorf("migrate: start dirty log: %w", err)
	}
	s.manual, s.logging = manual, true
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
	s.cur.PagesDirty = s.total
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
		stop, converged, err := s.decide(dirty)
		if err != nil {
			return err
		}
		if stop {
			return s.stopAndCopy(converged)
		}
		if err := s.beginIteration(false); err != nil {
			return err
		}
		s.cur.PagesDirty = dirty
		if s.manual && s.opts.NoClearBeforeSend {
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

// setup reads the VM layout and allocates the table and bitmaps.
func (s *sender) setup() error {
	s.info = s.src.Info()
	if err := checkInfo(s.info); err != nil {
		return fmt.Errorf("migrate: source VM: %v", err)
	}
	n := len(s.info.Regions)
	s.mems = make([][]byte, n)
	s.base = make([]uint64, n)
	s.pages = make([]uint64, n)
	s.pending = make([][]uint64, n)
	s.scratch = make([][]uint64, n)
	for i, r := range s.info.Regions {
		m := s.src.Memory(i)
		if uint64(len(m)) != r.Size {
			return fmt.Errorf("migrate: source region %d maps %d bytes, Info says %d", i, len(m), r.Size)
		}
		s.mems[i] = m
		s.base[i] = s.total
		s.pages[i] = r.Size / PageSize
		s.total += s.pages[i]
		words := (s.pages[i] + 63) / 64
		s.pending[i] = make([]uint64, words)
		s.scratch[i] = make([]uint64, words)
	}
	if !s.opts.NoDigest {
		s.table = NewDigestTable(s.total)
	}
	return nil
}

// handshake sends HELLO and waits for HELLO-ACK; it starts the goroutine
// that reads everything the destination sends.
func (s *sender) handshake() error {
	p, err := encodeHello(s.info, s.opts.Resume)
	if err != nil {
		return fmt.Errorf("migrate: %v", err)
	}
	if err := s.w.record(RecHello, p); err != nil {
		return s.ioError("send HELLO", err)
	}
	if err := s.w.sync(); err != nil {
		return s.ioError("send HELLO", err)
	}
	s.helloOut = true
	s.peer = make(chan peerMsg, 2)
	s.peerStop = make(chan struct{})
	s.peerIn = &countingReader{r: s.conn}
	go s.readPeer(newRecordReader(s.peerIn))

	t := time.NewTimer(s.opts.HandshakeTimeout)
	defer t.Stop()
	select {
	case m := <-s.peer:
		if m.t == RecHelloAck {
			resumed, err := decodeHelloAck(m.payload)
			if err != nil {
				return err
			}
			if resumed != s.opts.Resume {
				return fmt.Errorf("%w: HELLO-ACK with RESUME %v to a HELLO with RESUME %v", ErrUnexpected, resumed, s.opts.Resume)
			}
			if resumed {
				s.stats.Resumed = true
				return s.receiveHeld()
			}
			return nil
		}
		s.peerEnd = true
		return s.peerFailure(m, "handshake")
	case <-t.C:
		return fmt.Errorf("migrate: no HELLO-ACK within %v", s.opts.HandshakeTimeout)
	case <-s.ctx.Done():
		return s.ctx.Err()
	}
}

// readPeer delivers the destination's records: HELLO-ACK, HELD and READY,
// then exactly one terminal message (DONE-ACK, ERROR, another record, or a
// read error). It returns once Send has returned (peerStop) even if
// nobody takes what it holds; a read in progress ends when fail sets the
// read deadline or the caller closes the connection.
func (s *sender) readPeer(rr *recordReader) {
	deliver := func(m peerMsg) bool {
		select {
		case s.peer <- m:
			return true
		case <-s.peerStop:
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
			setWriteDeadline(s.conn, time.Unix(1, 0))
		}
		if !deliver(m) {
			return
		}
		if rec.Type != RecHelloAck && rec.Type != RecHeld && rec.Type != RecReady {
			return
		}
	}
}

// peerFailure turns an unwanted message from the destination into an error.
func (s *sender) peerFailure(m peerMsg, phase string) error {
	s.remote = true
	switch {
	case m.err != nil:
		return fmt.Errorf("migrate: reading from destination during %s: %w", phase, m.err)
	case m.t == RecError:
		return decodeError(m.payload)
	}
	s.remote = false // the destination is confused, not failed: tell it
	return fmt.Errorf("%w: %v from the destination during %s", ErrUnexpected, m.t, phase)
}

// check is called between chunks: cancellation, or anything from the peer.
func (s *sender) check() error {
	if err := s.ctx.Err(); err != nil {
		return err
	}
	select {
	case m := <-s.peer:
		s.peerEnd = true
		return s.peerFailure(m, "pre-copy")
	default:
		return nil
	}
}

// ioError wraps a write failure, preferring the destination's own account
// (an ERROR record usually explains why the connection broke).
func (s *sender) ioError(what string, err error) error {
	if s.peer != nil && !s.peerEnd {
		t := time.NewTimer(250 * time.Millisecond)
		defer t.Stop()
		select {
		case m := <-s.peer:
			s.peerEnd = true
			if m.t == RecError {
				s.remote = true
				return decodeError(m.payload)
			}
		case <-t.C:
		}
	}
	if s.stalled.Load() {
		return fmt.Errorf("%w for %v (%s): %w", ErrStalled, s.opts.IOTimeout, what, err)
	}
	if ctxErr := s.ctx.Err(); ctxErr != nil && !s.committed {
		return ctxErr
	}
	return fmt.Errorf("migrate: %s: %w", what, err)
}

// stopAndCopy pauses the guest, sends what is left and the state, and waits
// for DONE-ACK.
func (s *sender) stopAndCopy(converged bool) error {
	s.stats.Converged = converged
	pausedAt := time.Now()
	if err := s.src.Pause(); err != nil {
		return fmt.Errorf("migrate: pause source: %w", err)
	}
	s.paused = true
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
	if last := s.stats.Iterations[len(s.stats.Iterations)-1]; last.PagesLeft > 0 {
		// The pass before stopped early (midPass) and was not reported: its
		// dirty rate counts what this fetch found beyond the pages it left.
		s.reportLast(dirty - min(dirty, last.PagesLeft))
	}
	s.cur.PagesDirty = dirty
	if _, err := s.sendPending(false, false); err != nil {
		return err
	}
	return s.complete(pausedAt)
}

// pausedCopy migrates a guest its user paused (Options.SourcePaused): it
// cannot write its memory, so there is nothing to pre-copy and no dirty log
// to keep. One pass, iteration 0 marked FINAL (the shape of a snapshot),
// sends every page, then the migration completes as any other. The guest
// is neither paused nor resumed: s.paused stays false, so no failure path
// resumes it, and after COMMIT it stays paused as any source does.
func (s *sender) pausedCopy() error {
	s.stats.Converged = true
	s.stats.SourcePaused = true
	start := time.Now()
	s.w.liftLimit() // the cap protects a running guest's own traffic
	if err := s.beginIteration(true); err != nil {
		return err
	}
	s.cur.PagesDirty = s.total
	if _, err := s.sendAll(false, false); err != nil {
		return err
	}
	return s.complete(start)
}

// complete ends the final pass: the VM state, END, then the commit
// handshake. pausedAt is when the final pass began (the downtime's start).
func (s *sender) complete(pausedAt time.Time) error {
	s.w.endPages()
	state, err := s.src.State()
	if err != nil {
		return fmt.Errorf("migrate: save source state: %w", err)
	}
	if len(state) > MaxStateSize {
		return fmt.Errorf("migrate: VM state is %d bytes, protocol maximum is %d", len(state), MaxStateSize)
	}
	if err := s.w.record(RecState, state); err != nil {
		return s.ioError("send STATE", err)
	}
	if err := s.w.record(RecEnd, encodeEnd(s.entries)); err != nil {
		return s.ioError("send END", err)
	}
	if err := s.endIteration(); err != nil {
		return err
	}
	s.reportLast(0)
	if err := s.waitPeer(RecReady, "the wait for READY"); err != nil {
		return err
	}
	// Last chance to cancel. Once COMMIT is out the destination may start
	// the guest, so from here on only its answer ends the migration, and no
	// failure resumes the source guest unless the destination says (ERROR)
	// that it did not start it.
	if err := s.ctx.Err(); err != nil {
		return err
	}
	if !s.unwatch() {
		return s.ctx.Err() // cancelled just now: the connection is being cut
	}
	s.committed = true
	if err := s.w.record(RecCommit, nil); err != nil {
		return s.ioError("send COMMIT", err)
	}
	if err := s.w.sync(); err != nil {
		return s.ioError("send COMMIT", err)
	}
	if err := s.waitPeer(RecDoneAck, "the wait for DONE-ACK"); err != nil {
		return err
	}
	s.stats.DowntimeMS = float64(time.Since(pausedAt).Microseconds()) / 1000
	s.paused = false // handed over: the source guest must stay paused for good
	if s.logging {
		s.logging = false
		if err := s.src.StopDirtyLog(); err != nil {
			// The guest now runs on the destination: not a failure of the
			// migration, but the caller must see it.
			s.stats.Warnings = append(s.stats.Warnings, fmt.Sprintf("stopping dirty logging on the source failed: %v", err))
		}
	}
	return nil
}

// waitPeer waits at most AckTimeout for the record want (READY or DONE-ACK).
// Before COMMIT, cancellation ends the wait too.
func (s *sender) waitPeer(want RecordType, phase string) error {
	t := time.NewTimer(s.opts.AckTimeout)
	defer t.Stop()
	var done <-chan struct{}
	if !s.committed {
		done = s.ctx.Done()
	}
	select {
	case m := <-s.peer:
		if m.t == want && m.err == nil {
			if want != RecReady {
				s.peerEnd = true
			}
			return nil
		}
		s.peerEnd = true
		return s.peerFailure(m, phase)
	case <-t.C:
		return fmt.Errorf("%w: no %v within %v", ErrAckTimeout, want, s.opts.AckTimeout)
	case <-done:
		return s.ctx.Err()
	}
}

// watchdog cuts the connection when a write makes no progress for
// IOTimeout; the failing write then reports ErrStalled. It returns a
// function that stops it.
func (s *sender) watchdog() func() {
	stop := make(chan struct{})
	tick := min(s.opts.IOTimeout/4, time.Second)
	go func() {
		t := time.NewTicker(tick)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				if since := s.w.busySince.Load(); since != 0 && time.Since(time.Unix(0, since)) > s.opts.IOTimeout {
					s.stalled.Store(true)
					setDeadline(s.conn, time.Unix(1, 0))
					return
				}
			}
		}
	}()
	return func() { close(stop) }
}

// fail undoes what a failed migration did to the source: the guest runs
// again and the destination is told why.
func (s *sender) fail(cause error) error {
	var re *RemoteError
	if errors.As(cause, &re) {
		s.remote = true
	}
	errs := []error{cause}
	unknown := false
	if s.committed {
		if re != nil {
			// The destination answered COMMIT with ERROR: it did not start
			// the guest (it discards its copy before it says so).
			errs[0] = fmt.Errorf("the destination did not start the guest after COMMIT: %w", cause)
		} else {
			// No answer: the guest may run there. Never resume it here.
			unknown = true
			errs[0] = fmt.Errorf("%w (after COMMIT: %v)", ErrOutcomeUnknown, cause)
		}
	}
	if s.paused && !unknown {
		if err := s.src.Resume(); err != nil {
			errs = append(errs, fmt.Errorf("migrate: RESUMING THE SOURCE GUEST FAILED: %w", err))
		} else {
			s.paused = false
		}
	}
	if s.logging {
		if err := s.src.StopDirtyLog(); err != nil {
			errs = append(errs, fmt.Errorf("migrate: stop dirty log: %w", err))
		}
		s.logging = false
	}
	// The writer goroutine must be out of the way before ERROR is written.
	writerDone := s.w.stop(2 * time.Second)
	if !writerDone {
		setWriteDeadline(s.conn, time.Unix(1, 0))
		writerDone = s.w.stop(time.Second)
	}
	if s.helloOut && !s.remote && !s.committed && !s.stalled.Load() && writerDone {
		s.w.discard()
		sendErrorRecord(s.conn, "source aborted the migration: "+cause.Error())
	}
	// Release the reader goroutine if it is still waiting.
	setReadDeadline(s.conn, time.Unix(1, 0))
	return errors.Join(errs...)
}

// sendErrorRecord writes an ERROR record, best effort, within 2 seconds.
func sendErrorRecord(conn io.Writer, msg string) {
	const limit = 2 * time.Second
	rec := appendRecord(nil, RecError, encodeError(msg))
	if setWriteDeadline(conn, time.Now().Add(limit)) {
		_, _ = conn.Write(rec)
		return
	}
	done := make(chan struct{})
	go func() {
		_, _ = conn.Write(rec)
		close(done)
	}()
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
}

// Deadline helpers: no-ops (returning false) for streams without deadlines.

func setDeadline(c any, t time.Time) bool {
	d, ok := c.(interface{ SetDeadline(time.Time) error })
	return ok && d.SetDeadline(t) == nil
}

func setWriteDeadline(c any, t time.Time) bool {
	d, ok := c.(interface{ SetWriteDeadline(time.Time) error })
	return ok && d.SetWriteDeadline(t) == nil
}

func setReadDeadline(c any, t time.Time) bool {
	d, ok := c.(interface{ SetReadDeadline(time.Time) error })
	return ok && d.SetReadDeadline(t) == nil
}
