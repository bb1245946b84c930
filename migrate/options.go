package migrate

import (
	"context"
	"fmt"
	"io"
	"runtime"
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

// ParseTimeoutAction reads "abort" or "force" ("" is the default, abort),
// as the CLI's --on-timeout and the control API's on_timeout give it.
func ParseTimeoutAction(s string) (TimeoutAction, error) {
	switch s {
	case "", "abort":
		return AbortOnTimeout, nil
	case "force":
		return ForceOnTimeout, nil
	}
	return AbortOnTimeout, &OptionError{Option: "OnTimeout", Err: fmt.Errorf("%q: want abort or force", s)}
}

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
	// PostcopyAfter and PostcopyAfterIterations allow a switch to
	// post-copy (postcopy.go) when pre-copy has not converged after that
	// long, or after that many iterations (1: right after the first
	// pass); also, with either set, instead of giving up or forcing at
	// MaxIterations or Timeout. Zero: never. The destination must agree
	// (it refuses the HELLO otherwise), and PostcopyDial must open the
	// request channel: a second connection to the same destination,
	// authenticated as the first. After the switch the guest runs on the
	// destination while its missing pages are only here: a link that
	// breaks then leaves it waiting for them (ErrPostcopyInterrupted), and
	// a destination that dies loses the guest.
	PostcopyAfter           time.Duration
	PostcopyAfterIterations int
	PostcopyDial            func(ctx context.Context) (io.ReadWriteCloser, error)
	// PostcopyResume finishes a post-copy whose link broke after the
	// switch (ErrPostcopyInterrupted): the source guest, paused since, is
	// not touched; the destination says which pages it still lacks, and
	// they are pushed as before (PostcopyDial is needed again).
	PostcopyResume bool
	// Connections is how many connections carry the pages (1 to
	// MaxConnections; 0 means 1): the main one and Connections−1 parallel
	// streams that StreamDial opens to the same destination. Each stream
	// has its goroutine, which checks, hashes, filters, encodes and
	// writes the chunks of pages it takes; the destination stores the
	// pages of every stream in parallel (PROTOCOL.md, "Parallel streams").
	Connections int
	// StreamDial opens one more connection to the destination, for a
	// parallel stream, authenticated as the first.
	StreamDial func(ctx context.Context) (io.ReadWriteCloser, error)
	// NoAutoConverge turns auto-converge off: without it, a migration that
	// does not converge (the guest dirties memory about as fast as the
	// link carries it away, two iterations in a row) slows the guest's
	// vCPUs down in steps, when the Source is a Throttler (converge.go).
	NoAutoConverge bool
	// NoDelta sends every changed page whole (for comparison): without it,
	// a page the destination holds of which only some 512-byte blocks
	// changed goes out as a DELTA entry with those blocks (blocks.go).
	NoDelta bool
	// Compress chooses when PAGES records are compressed (compress.go):
	// CompressAuto (the default) while it pays at the measured link rate,
	// CompressOff, or CompressZstd always.
	Compress CompressMode
	// NoClearBeforeSend, in manual dirty-log mode, clears the whole bitmap
	// right after fetching it (classic pre-copy) instead of clearing each
	// chunk just before reading it.
	NoClearBeforeSend bool
	// Progress, if set, is called once per iteration with its statistics.
	Progress func(IterationStats)
	// Live, if set, is called during a pass, at most every 250 ms, with
	// where it stands (for a live progress line). It runs on the sender's
	// goroutine: it must return at once.
	Live func(PassProgress)
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

	// BatchPages is the number of pages per PAGES record, of every kind
	// (default 64, at most MaxPagesPerBatch).
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

// DefaultConnections is the number of connections the front ends use when
// the user chooses none: half the cores of this host (the guest's vCPUs
// need the rest), 1 to 4. Each stream costs a core while it hashes and
// writes; on a host with 2 cores, one stream already keeps both busy
// (the sender's goroutine and its writer).
func DefaultConnections() int {
	return min(4, max(1, runtime.NumCPU()/2))
}

// OptionError is a bad setting in Options: Option names the field, so
// that each front end can name it its own way (a flag, a JSON field).
type OptionError struct {
	Option string // the Options field
	Err    error
}

func (e *OptionError) Error() string { return fmt.Sprintf("migrate: %s: %v", e.Option, e.Err) }
func (e *OptionError) Unwrap() error { return e.Err }

func optErr(option, format string, args ...any) error {
	return &OptionError{Option: option, Err: fmt.Errorf(format, args...)}
}

// Validate checks the settings a user chooses (through a flag of ferry
// migrate or a field of the control API): negative durations, counts and
// rates, an unknown OnTimeout, and settings that exclude each other. Zero
// values mean the defaults. Send calls it too; the front ends call it to
// refuse a bad request before anything starts. It returns an
// *OptionError.
func (o Options) Validate() error {
	switch {
	case o.Downtime < 0:
		return optErr("Downtime", "%v: must not be negative", o.Downtime)
	case o.MaxIterations < 0:
		return optErr("MaxIterations", "%d: must not be negative", o.MaxIterations)
	case o.Timeout < 0:
		return optErr("Timeout", "%v: must not be negative", o.Timeout)
	case o.OnTimeout != AbortOnTimeout && o.OnTimeout != ForceOnTimeout:
		return optErr("OnTimeout", "%v: want abort or force", o.OnTimeout)
	case o.MaxBandwidth < 0:
		return optErr("MaxBandwidth", "%d: must not be negative", o.MaxBandwidth)
	case o.Compress < CompressAuto || o.Compress > CompressZstd:
		return optErr("Compress", "%v: want auto, off or zstd", o.Compress)
	case o.PostcopyAfter < 0:
		return optErr("PostcopyAfter", "%v: must not be negative", o.PostcopyAfter)
	case o.PostcopyAfterIterations < 0:
		return optErr("PostcopyAfterIterations", "%d: must not be negative", o.PostcopyAfterIterations)
	case o.PostcopyResume && o.PostcopyDial == nil:
		return optErr("PostcopyResume", "needs PostcopyDial for the request channel")
	case o.Connections < 0 || o.Connections > MaxConnections:
		return optErr("Connections", "%d: want 1 to %d", o.Connections, MaxConnections)
	case o.Resume && o.NoDigest:
		return optErr("Resume", "needs the digest table: a resumed migration cannot turn the digest filter off")
	}
	return nil
}

// normalize fills in the defaults and checks everything.
func (o Options) normalize() (Options, error) {
	if err := o.Validate(); err != nil {
		return o, err
	}
	if o.Downtime == 0 {
		o.Downtime = 300 * time.Millisecond
	}
	if o.Connections == 0 {
		o.Connections = 1
	}
	if o.Connections > 1 && o.StreamDial == nil {
		return o, optErr("Connections", "%d connections need StreamDial to open the extra ones", o.Connections)
	}
	if o.MaxIterations == 0 {
		o.MaxIterations = 30
	}
	if o.BatchPages <= 0 {
		o.BatchPages = 64
	}
	if o.BatchPages > MaxPagesPerBatch {
		return o, optErr("BatchPages", "%d exceeds %d", o.BatchPages, MaxPagesPerBatch)
	}
	if o.ChunkPages <= 0 {
		o.ChunkPages = 512
	}
	if o.ChunkPages%64 != 0 {
		return o, optErr("ChunkPages", "%d is not a multiple of 64", o.ChunkPages)
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
