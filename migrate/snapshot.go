package migrate

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"
)

// Snapshot files (PROTOCOL.md, "Snapshot files"): a 16-byte file header,
// then the record stream a one-iteration stop-and-copy migration would
// send — HELLO, ITERATION-START {0, FINAL}, PAGES with every page, STATE,
// END — and nothing after END. Every record carries its CRC32C and every
// FULL page its XXH3-128 digest, and ReadSnapshot runs the stream through
// the receiver's state machine with all its limits, so a flipped bit, a
// truncation or a missing record is refused before anything runs.
//
//	0  magic            8 bytes "FRRYSNAP"
//	8  format version   uint32 (SnapshotFormat)
//	12 protocol version uint32 (ProtocolVersion: the records' layout)
const (
	snapshotMagic      = "FRRYSNAP"
	SnapshotFormat     = 1
	snapshotHeaderSize = 16
)

// SnapshotSource is what WriteSnapshot reads: the VM's layout, memory and
// state. The guest must be paused (Source.State is called last).
type SnapshotSource interface {
	Info() VMInfo
	Memory(i int) []byte
	State() ([]byte, error)
}

// SnapshotStats describes a snapshot written or read.
type SnapshotStats struct {
	Bytes      int64   `json:"bytes"`
	PagesFull  uint64  `json:"pages_full"`
	PagesZero  uint64  `json:"pages_zero"`
	StateBytes int     `json:"state_bytes"`
	Records    int     `json:"records"`
	Seconds    float64 `json:"seconds"`
}

// WriteSnapshot writes the paused VM src to w in the snapshot format.
func WriteSnapshot(ctx context.Context, w io.Writer, src SnapshotSource) (*SnapshotStats, error) {
	start := time.Now()
	st := &SnapshotStats{}
	info := src.Info()
	hello, err := encodeHello(info, helloFlags{})
	if err != nil {
		return st, fmt.Errorf("migrate: snapshot: %v", err)
	}
	var hdr [snapshotHeaderSize]byte
	copy(hdr[:], snapshotMagic)
	binary.BigEndian.PutUint32(hdr[8:], SnapshotFormat)
	binary.BigEndian.PutUint32(hdr[12:], ProtocolVersion)
	if _, err := w.Write(hdr[:]); err != nil {
		return st, err
	}
	rw := newRecordWriter(ctx, w, 4<<20, nil)
	defer func() { st.Bytes = snapshotHeaderSize + rw.written.Load() }()
	record := func(t RecordType, p []byte) error {
		st.Records++
		return rw.record(t, p)
	}
	if err := record(RecHello, hello); err != nil {
		return st, err
	}
	if err := record(RecIterationStart, encodeIterationStart(0, true)); err != nil {
		return st, err
	}
	var g uint64
	for i, r := range info.Regions {
		mem := src.Memory(i)
		if err := r.checkMapped(i, mem); err != nil {
			return st, fmt.Errorf("migrate: snapshot: %w", err)
		}
		for off := uint64(0); off < r.Size; off += PageSize {
			if !rw.pagesOpen() {
				if err := rw.beginPages(); err != nil {
					return st, err
				}
				st.Records++
			}
			page := mem[off : off+PageSize]
			if isZeroPage(page) {
				rw.addZero(g)
				st.PagesZero++
			} else {
				rw.stageFull(g, page)
				rw.keepStaged()
				st.PagesFull++
			}
			g++
			if rw.pagesFull(MaxPagesPerBatch) {
				rw.endPages()
				if err := ctx.Err(); err != nil {
					return st, err
				}
			}
		}
	}
	rw.endPages()
	state, err := src.State()
	if err != nil {
		return st, fmt.Errorf("migrate: snapshot: save state: %w", err)
	}
	if len(state) > MaxStateSize {
		return st, fmt.Errorf("migrate: snapshot: VM state is %d bytes, the format allows %d", len(state), MaxStateSize)
	}
	st.StateBytes = len(state)
	if err := record(RecState, state); err != nil {
		return st, err
	}
	if err := record(RecEnd, encodeEnd(g)); err != nil {
		return st, err
	}
	if err := rw.sync(); err != nil {
		return st, err
	}
	st.Seconds = time.Since(start).Seconds()
	return st, nil
}

// SnapshotError says where and why a snapshot file was refused.
type SnapshotError struct {
	Offset int64 // byte offset of the header or record at fault
	Record int   // record number (1 = HELLO), 0 for the file header
	Err    error
}

func (e *SnapshotError) Error() string {
	if e.Record == 0 {
		return fmt.Sprintf("file header: %v", e.Err)
	}
	return fmt.Sprintf("record %d at byte %d: %v", e.Record, e.Offset, e.Err)
}

func (e *SnapshotError) Unwrap() error { return e.Err }

// ErrNotSnapshot: the file does not start with the snapshot header.
var ErrNotSnapshot = errors.New("not a ferry snapshot")

// ReadSnapshot loads a snapshot into dst (Prepare, memory, Restore) with
// the limits of opts (MaxMemory, MaxVCPUs). It does not start the guest:
// on success the caller calls dst.Start. On any error it has discarded
// what it prepared, and the error is a *SnapshotError.
func ReadSnapshot(ctx context.Context, rd io.Reader, dst Destination, opts ReceiveOptions) (*SnapshotStats, error) {
	start := time.Now()
	opts.Keep, opts.IdleTimeout = nil, 0
	r := &receiver{ctx: ctx, opts: opts.normalize(), dst: dst, pageStore: &pageStore{}}
	cr := &countingReader{r: rd}
	st := &SnapshotStats{}
	fail := func(off int64, n int, err error) (*SnapshotStats, error) {
		if r.prepared {
			r.dst.Discard()
			r.prepared = false
		}
		st.Bytes = cr.n.Load()
		return st, &SnapshotError{Offset: off, Record: n, Err: err}
	}
	var hdr [snapshotHeaderSize]byte
	if n, err := io.ReadFull(cr, hdr[:]); err != nil {
		return fail(0, 0, fmt.Errorf("%w: %d bytes, shorter than the %d-byte header (%v)", ErrNotSnapshot, n, snapshotHeaderSize, err))
	}
	if string(hdr[:8]) != snapshotMagic {
		return fail(0, 0, fmt.Errorf("%w: it starts with %q, a snapshot starts with %q", ErrNotSnapshot, hdr[:8], snapshotMagic))
	}
	if v := binary.BigEndian.Uint32(hdr[8:]); v != SnapshotFormat {
		return fail(0, 0, fmt.Errorf("%w: snapshot format version %d, this ferry reads version %d", ErrVersion, v, SnapshotFormat))
	}
	if v := binary.BigEndian.Uint32(hdr[12:]); v != ProtocolVersion {
		return fail(0, 0, fmt.Errorf("%w: records of protocol version %d, this ferry reads version %d", ErrVersion, v, ProtocolVersion))
	}
	var rh [HeaderSize]byte
	var buf []byte
	for n := 1; ; n++ {
		off := cr.n.Load()
		if err := ctx.Err(); err != nil {
			return fail(off, n, err)
		}
		var rec record
		var err error
		rec, buf, err = readRecord(cr, &rh, buf)
		if errors.Is(err, ErrClosed) {
			err = fmt.Errorf("%w: the file ends after record %d, before END (the snapshot is incomplete)", ErrTruncated, n-1)
		}
		if err != nil {
			return fail(off, n, err)
		}
		switch rec.Type {
		case RecHello, RecIterationStart, RecPages, RecState, RecEnd:
		default:
			return fail(off, n, fmt.Errorf("%w: %v record in a snapshot", ErrUnexpected, rec.Type))
		}
		if err := r.handle(rec); err != nil {
			return fail(off, n, err)
		}
		r.reply, r.sendKept = RecInvalid, false
		st.Records = n
		if r.state == stateAwaitCommit { // END checked: every page and the state are in
			break
		}
	}
	var one [1]byte
	if n, _ := io.ReadFull(cr, one[:]); n != 0 {
		return fail(cr.n.Load()-1, st.Records+1, fmt.Errorf("%w: bytes after END", ErrMalformed))
	}
	st.Bytes = cr.n.Load()
	st.PagesFull, st.PagesZero, st.StateBytes = r.stats.PagesFull, r.stats.PagesZero, r.stats.StateBytes
	st.Seconds = time.Since(start).Seconds()
	return st, nil
}
