package migrate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"
)

// recvState is the receiver's protocol state.
type recvState int

const (
	stateAwaitHello        recvState = iota // nothing received yet
	stateAwaitStreams                       // HELLO-ACK{STREAMS} sent: STREAMS must follow
	stateAwaitPagesOrState                  // HELLO-ACK sent: iterations and pages
	stateAwaitEnd                           // STATE restored: only END may follow
	stateAwaitCommit                        // END checked, READY sent: only COMMIT may follow
	statePostcopy                           // guest started with pages missing: pushed PAGES, POSTCOPY-END
	stateChannel                            // this connection is a post-copy request channel
	stateStream                             // this connection is an extra stream: PAGES and SYNC
	stateDone                               // COMMIT handled, guest started, DONE-ACK sent
	stateFailed                             // aborted; the guest never runs
)

func (s recvState) String() string {
	return [...]string{"AwaitHello", "AwaitStreams", "AwaitPagesOrState", "AwaitEnd", "AwaitCommit", "Postcopy", "Channel", "Stream", "Done", "Failed"}[s]
}

// receiver is the destination's state machine. handle is called once per
// record; it either advances the state or returns an error, after which the
// receiver is Failed.
type receiver struct {
	ctx       context.Context
	unwatch   func() bool // stops cancellation from cutting the connection
	unwatched bool        // unwatch was called: ctx no longer counts
	opts      ReceiveOptions
	dst       Destination
	state     recvState

	prepared   bool
	*pageStore // guest memory and what it holds; shared with the extra streams

	// Resume: the VM, and whether this migration resumes one.
	info        VMInfo
	resumed     bool
	sendKept    bool // KEPT records follow the reply
	sendMissing bool // MISSING records follow the reply (a post-copy recovery)
	active      bool // counted in Keep's migrations in progress
	committing  bool // COMMIT arrived: the VM is never kept after this

	iterStarted bool
	iter        uint32
	final       bool
	entries     uint64 // pages received (END's count)

	// Post-copy (postcopy_recv.go): the HELLO asked for it and this side
	// can (session registered); the switch came (ITERATION-START with
	// POSTCOPY); the MISSING records so far; the pages pushed after it.
	session     *postcopySession
	postcopy    bool
	nextMissing uint64
	pushed      uint64
	channelStop func()      // ends a channel's request writer
	idleOff     atomic.Bool // no idle timeout (a channel)

	// Parallel streams (streams_recv.go): the migration's group, on its
	// main connection and on each extra stream; the stream's index.
	group     *streamGroup
	streamIdx int
	cut       func() // cuts this connection (a stream failed)

	// onPages' work space: the record's entries, the digests of its pages
	// with data, the pages its DELTA entries rebuild, the decompressor.
	runs    []pageRun
	digests []Digest
	rebuilt []byte
	unzip   *decompressor

	stats ReceiveStats
	// reply is the record to send back after handle returned nil
	// (HELLO-ACK, READY, DONE-ACK), or RecInvalid.
	reply        RecordType
	replyPayload []byte
	// remote is set when the failure came from the source's ERROR record.
	remote bool
}

// Receive accepts one incoming migration on conn and builds it in dst.
//
// It starts the guest (dst.Start) only after STATE, a consistent END, its
// READY answer and the source's COMMIT, and returns after sending DONE-ACK.
// On any failure before that (protocol violation, corrupt page, limit, an
// error from dst, an ERROR from the source, cancellation, a silent source)
// it calls dst.Discard if dst.Prepare had succeeded (or, with opts.Keep
// and a Resumable dst, keeps the VM and its pages for a resume: see
// Keeper), then sends an ERROR record with the reason when the connection
// still works, never calls dst.Start, and returns the error. A RESUME
// HELLO continues in the VM opts.Keep kept instead of dst (which is then
// not used). Once COMMIT arrived, cancellation is
// ignored; if Start fails the guest is discarded before ERROR is sent, so an
// ERROR always means "the guest does not run here". If only DONE-ACK cannot
// be sent, the guest runs here, the source stays paused (outcome unknown on
// its side), and Receive returns an error saying so; the caller should
// still run the started guest (see Started on the destination).
// The caller closes conn.
func Receive(ctx context.Context, conn io.ReadWriter, dst Destination, opts ReceiveOptions) (*ReceiveStats, error) {
	start := time.Now()
	r := &receiver{ctx: ctx, opts: opts.normalize(), dst: dst, pageStore: &pageStore{}}
	r.cut = func() { setDeadline(conn, time.Unix(1, 0)) }
	r.unwatch = context.AfterFunc(ctx, r.cut)
	defer r.unwatch()
	cr := &countingReader{r: conn}
	var beforeRead func()
	if idle := r.opts.IdleTimeout; idle > 0 {
		beforeRead = func() {
			if r.idleOff.Load() {
				setReadDeadline(conn, time.Time{})
				return
			}
			setReadDeadline(conn, time.Now().Add(idle))
		}
	}
	rr := startReadAhead(cr, 3, beforeRead)
	defer rr.close()
	defer func() {
		if r.unzip != nil {
			r.unzip.close()
		}
	}()

	defer func() {
		if r.active {
			r.opts.Keep.end(r.info.ID)
		}
	}()
	var err error
	for r.state != stateDone {
		var rec record
		rec, err = rr.next()
		if err != nil {
			if ctxErr := ctx.Err(); ctxErr != nil && !r.unwatched {
				err = ctxErr
			}
			if gErr := r.groupErr(); gErr != nil && !r.stats.Stream {
				err = gErr // a stream failed and cut this connection
			}
			err = fmt.Errorf("migrate: receive in state %v: %w", r.state, err)
			break
		}
		if err = r.handle(rec); err != nil {
			break
		}
		if r.reply != RecInvalid {
			if err = writeRecord(conn, r.reply, r.replyPayload); err != nil {
				err = fmt.Errorf("migrate: send %v: %w", r.reply, err)
				if r.reply == RecDoneAck {
					// The guest runs here already; the source stays paused
					// (its outcome is unknown). Report loudly.
					err = fmt.Errorf("%w: %w (the guest runs here, but the source was not told and stays paused)", ErrDoneAckLost, err)
				}
				r.reply = RecInvalid
				break
			}
			r.reply = RecInvalid
			if r.state == stateChannel && r.channelStop == nil {
				r.idleOff.Store(true) // a channel is quiet until the guest needs pages
				r.channelStop = r.startRequests(conn)
			}
			if r.sendKept { // after HELLO-ACK{RESUME}
				r.sendKept = false
				if err = r.writeKept(conn); err != nil {
					break
				}
			}
			if r.sendMissing { // after HELLO-ACK{RESUME, POSTCOPY}
				r.sendMissing = false
				if err = r.writeMissing(conn); err != nil {
					break
				}
			}
		}
	}
	if r.channelStop != nil {
		r.channelStop()
		r.session.detachChannel()
		if r.session.isEnded() && err != nil && errors.Is(err, ErrClosed) {
			err = nil // the source closed the channel once post-copy completed
			r.state = stateDone
		}
	}
	if r.state == statePostcopy && err != nil {
		// The guest runs here and waits for pages that only the source
		// has: the session stays for a recovery (onRecover).
		r.session.detach()
	}
	r.stats.BytesTotal = cr.n.Load()
	r.stats.Seconds = time.Since(start).Seconds()
	if r.group != nil {
		var gErr error
		if r.state != stateDone {
			gErr = err
		}
		if r.stats.Stream {
			r.leaveStream(gErr)
		} else {
			// Before the guest memory is freed or kept (abort): no stream
			// may write it any more.
			r.endStreams(gErr)
		}
	}
	if err != nil && r.state != stateDone {
		r.abort(conn, err)
	}
	return &r.stats, err
}

// abort moves to Failed, frees (or keeps, for a resume) the destination
// VM, then tells the source (after COMMIT the source resumes its guest on
// that ERROR, so the guest must be gone here first).
func (r *receiver) abort(conn io.Writer, err error) {
	if r.state != statePostcopy && r.state != stateChannel {
		r.dropSession() // the guest did not start: no post-copy here
	}
	r.state = stateFailed
	note := ""
	if r.prepared {
		r.prepared = false
		if r.table != nil && !r.committing && r.npresent.Load() > 0 {
			// put discards the VM itself if the Keeper keeps nothing.
			if r.opts.Keep.put(&kept{dst: r.dst.(Resumable), info: r.info, peer: r.opts.Peer, table: r.table, pages: r.npresent.Load(), total: r.total}) {
				note = fmt.Sprintf("; it keeps %d of %d pages for `ferry migrate --resume` for %v", r.npresent.Load(), r.total, r.opts.Keep.Window())
			}
		} else {
			r.dst.Discard()
		}
	}
	var re *RemoteError
	if !r.remote && !errors.As(err, &re) {
		sendErrorRecord(conn, "destination aborted the migration (no guest runs here"+note+"): "+err.Error())
	}
}

// handle applies one record to the state machine.
func (r *receiver) handle(rec record) error {
	if rec.Type == RecError {
		r.remote = true
		return fmt.Errorf("migrate: source aborted in state %v: %w", r.state, decodeError(rec.Payload))
	}
	switch r.state {
	case stateAwaitHello:
		if rec.Type == RecHello {
			return r.onHello(rec.Payload)
		}
	case stateAwaitStreams:
		if rec.Type == RecStreams {
			return r.onStreams(rec.Payload)
		}
	case stateStream:
		return r.streamRecord(rec)
	case stateAwaitPagesOrState:
		switch rec.Type {
		case RecIterationStart:
			return r.onIterationStart(rec.Payload)
		case RecPages:
			return r.onPages(rec.Flags, rec.Payload)
		case RecMissing:
			return r.onMissing(rec.Payload)
		case RecState:
			return r.onState(rec.Payload)
		}
	case stateAwaitEnd:
		switch rec.Type {
		case RecEnd:
			return r.onEnd(rec.Payload)
		case RecState:
			return fmt.Errorf("%w: duplicate STATE", ErrUnexpected)
		}
	case stateAwaitCommit:
		if rec.Type == RecCommit {
			return r.onCommit()
		}
	case statePostcopy:
		switch rec.Type {
		case RecPages:
			return r.onPushed(rec.Flags, rec.Payload)
		case RecPostcopyEnd:
			return r.onPostcopyEnd(rec.Payload)
		}
	case stateChannel:
		if rec.Type == RecPages {
			return r.onPushed(rec.Flags, rec.Payload)
		}
	case stateDone, stateFailed:
		return fmt.Errorf("%w: %v after the migration ended", ErrUnexpected, rec.Type)
	}
	return fmt.Errorf("%w: %v in state %v", ErrUnexpected, rec.Type, r.state)
}

func (r *receiver) onHello(p []byte) error {
	h, err := decodeHello(p)
	if err != nil {
		return err
	}
	info := h.Info
	if mem := info.MemorySize(); mem > r.opts.MaxMemory {
		return fmt.Errorf("%w: guest has %d MiB of memory, this host accepts at most %d MiB", ErrRefused, mem/mib, r.opts.MaxMemory/mib)
	}
	if info.VCPUs > r.opts.MaxVCPUs {
		return fmt.Errorf("%w: guest has %d vCPUs, this host accepts at most %d", ErrRefused, info.VCPUs, r.opts.MaxVCPUs)
	}
	if h.Flags.Channel {
		return r.onChannel(h)
	}
	if h.Flags.Stream {
		return r.onStreamHello(h)
	}
	if h.Flags.Resume && h.Flags.Postcopy && r.opts.Sessions != nil {
		if s, err := r.opts.Sessions.findPostcopy(info.ID, r.opts.Peer); err == nil {
			return r.onRecover(s)
		}
	}
	if h.Flags.Resume {
		return r.onResume(info, h.Flags.Streams)
	}
	// A new migration replaces whatever a failed one left here.
	r.opts.Keep.drop(fmt.Sprintf("a new migration (VM %v) arrived", info.ID))
	if err := r.dst.Prepare(info); err != nil {
		return fmt.Errorf("%w: %v", ErrRefused, err)
	}
	r.prepared = true
	if err := r.layout(info); err != nil {
		return err
	}
	if _, ok := r.dst.(Resumable); ok && r.opts.Keep.enabled() && !info.ID.IsZero() {
		r.table = NewDigestTable(r.total)
	}
	r.opts.Keep.begin(info.ID)
	r.active = r.opts.Keep != nil
	r.state = stateAwaitPagesOrState
	var ack helloFlags
	if h.Flags.Postcopy {
		if err := r.offerPostcopy(info); err != nil {
			return fmt.Errorf("%w: post-copy: %v", ErrRefused, err)
		}
		ack.Postcopy = true
	}
	if h.Flags.Streams {
		if err := r.acceptStreams(info); err != nil {
			return err
		}
		ack.Streams = true
		r.state = stateAwaitStreams
	}
	r.reply, r.replyPayload = RecHelloAck, encodeHelloAck(ack)
	return nil
}

// layout maps the prepared VM's memory.
func (r *receiver) layout(info VMInfo) error {
	r.info = info
	r.mems = make([][]byte, len(info.Regions))
	r.base = make([]uint64, len(info.Regions))
	for i, reg := range info.Regions {
		m := r.dst.Memory(i)
		if err := reg.checkMapped(i, m); err != nil {
			return fmt.Errorf("migrate: destination %v", err)
		}
		r.mems[i] = m
		r.base[i] = r.total
		r.total += reg.Pages()
	}
	r.present = make([]uint64, (r.total+63)/64)
	return nil
}

func (r *receiver) onIterationStart(p []byte) error {
	k, flags, err := decodeIterationStart(p)
	if err != nil {
		return err
	}
	final := flags&iterFinal != 0
	if flags&iterPostcopy != 0 {
		if r.session == nil {
			return fmt.Errorf("%w: a switch to post-copy this side did not agree to", ErrUnexpected)
		}
		r.postcopy = true
	}
	want := uint32(0)
	if r.iterStarted {
		want = r.iter + 1
	}
	if k != want {
		return fmt.Errorf("%w: ITERATION-START %d, expected %d", ErrUnexpected, k, want)
	}
	if r.final {
		return fmt.Errorf("%w: ITERATION-START %d after the stop-and-copy iteration", ErrUnexpected, k)
	}
	if r.iterStarted {
		// Every page of the iteration before, from every stream, is in
		// place before any of this one (the ordering rule).
		if err := r.awaitStreams(r.iter); err != nil {
			return err
		}
	}
	r.iterStarted, r.iter, r.final = true, k, final
	r.stats.Iterations++
	r.beginStreams(k, final)
	return nil
}

func (r *receiver) onState(p []byte) error {
	if !r.final {
		return fmt.Errorf("%w: STATE before the stop-and-copy iteration", ErrUnexpected)
	}
	if r.postcopy && r.nextMissing != r.total {
		return fmt.Errorf("%w: STATE before every MISSING record (pages from %d on not described)", ErrUnexpected, r.nextMissing)
	}
	if err := r.awaitStreams(r.iter); err != nil {
		return err
	}
	if err := r.dst.Restore(p); err != nil {
		return fmt.Errorf("migrate: restore state: %w", err)
	}
	r.stats.StateBytes = len(p)
	r.state = stateAwaitEnd
	return nil
}

func (r *receiver) onEnd(p []byte) error {
	if n, got := decodeEnd(p), r.entries+r.streamEntries(); n != got {
		return fmt.Errorf("%w: END says %d page entries were sent, %d arrived", ErrMalformed, n, got)
	}
	if missing := r.total - r.npresent.Load() - r.notPresentMissing(); missing != 0 {
		return fmt.Errorf("%w: %d guest pages were never received", ErrMalformed, missing)
	}
	r.state = stateAwaitCommit
	r.reply, r.replyPayload = RecReady, nil
	return nil
}

// onCommit starts the guest: the source will not resume its copy now
// unless this side answers ERROR.
func (r *receiver) onCommit() error {
	r.committing = true // whatever happens now, this VM is never kept
	// From here on the guest may run: cancellation must no longer cut the
	// connection before DONE-ACK is out.
	if r.unwatch != nil && !r.unwatch() {
		return fmt.Errorf("migrate: cancelled before starting the guest: %w", r.ctx.Err())
	}
	r.unwatched = true
	if r.postcopy {
		return r.startPostcopy()
	}
	if err := r.dst.Start(); err != nil {
		return fmt.Errorf("migrate: start guest: %w", err)
	}
	r.state = stateDone
	r.reply, r.replyPayload = RecDoneAck, nil
	return nil
}

// countingReader counts the bytes read from the connection.
type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}
