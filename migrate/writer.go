package migrate

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// recordWriter is the sender's buffered output. It plays the part of a
// bufio.Writer with a big buffer, but PAGES records (layout: PROTOCOL.md)
// are built in place inside the buffer: a page is copied from guest memory straight to its slot in the
// record, hashed there, and the running CRC32C is updated while the entry is
// still hot in cache. Nothing is copied again before the write system call.
//
// In async mode a goroutine performs the writes, so that filling one buffer
// overlaps with writing the other (double buffering). Every byte goes through
// the optional token bucket.
type recordWriter struct {
	ctx context.Context
	w   io.Writer
	lim *tokenBucket

	buf     []byte // complete records, then the open PAGES record if any
	open    int    // offset of the open PAGES record's header; -1 if none
	crc     uint32 // running CRC32C of the open record's kept entries
	entries int    // kept entries in the open record
	staged  int    // offset of the staged FULL entry; -1 if none

	queued  int64        // bytes handed to flush (owned by the filling goroutine)
	written atomic.Int64 // bytes the connection accepted
	// busySince is the time (UnixNano) the write in progress started, 0
	// when none is: the sender's watchdog reads it to detect a stall.
	busySince atomic.Int64

	// async mode
	jobs   chan writeJob
	free   chan []byte // the spare buffer comes back here
	exited chan struct{}
	// errMu guards err, set by whichever goroutine's write fails first
	// (the writer goroutine in async mode) and read by the filling one.
	// The buffer fields above belong to the filling goroutine; written
	// and busySince are atomics; buffers change hands through jobs and
	// free.
	errMu sync.Mutex
	err   error // first write error
}

type writeJob struct {
	b      []byte
	pooled bool // return b to free once written
}

func newRecordWriter(ctx context.Context, w io.Writer, size int, lim *tokenBucket) *recordWriter {
	if size < HeaderSize+maxPagesPayload {
		size = HeaderSize + maxPagesPayload
	}
	return &recordWriter{ctx: ctx, w: w, lim: lim, buf: make([]byte, 0, size), open: -1, staged: -1}
}

// startAsync moves the writes to a goroutine; stop must be called later.
func (rw *recordWriter) startAsync() {
	rw.jobs = make(chan writeJob, 1)
	rw.free = make(chan []byte, 1)
	rw.exited = make(chan struct{})
	rw.free <- make([]byte, 0, cap(rw.buf))
	jobs := rw.jobs // stop may set rw.jobs to nil before this goroutine runs
	go func() {
		defer close(rw.exited)
		for j := range jobs {
			if rw.firstErr() == nil {
				if err := rw.output(j.b); err != nil {
					rw.setErr(err)
				}
			}
			if j.pooled {
				rw.free <- j.b[:0]
			}
		}
	}()
}

func (rw *recordWriter) firstErr() error {
	rw.errMu.Lock()
	defer rw.errMu.Unlock()
	return rw.err
}

func (rw *recordWriter) setErr(err error) {
	rw.errMu.Lock()
	if rw.err == nil {
		rw.err = err
	}
	rw.errMu.Unlock()
}

// maxWrite caps one Write call, so that progress (for the stall watchdog)
// is seen at least every maxWrite bytes.
const maxWrite = 1 << 20

// liftLimit ends the bandwidth cap: the rest goes out as fast as the
// connection takes it.
func (rw *recordWriter) liftLimit() {
	if rw.lim != nil {
		rw.lim.lift()
	}
}

// output writes p to the connection, in bucket-sized chunks when limited.
func (rw *recordWriter) output(p []byte) error {
	for len(p) > 0 {
		n := min(len(p), maxWrite)
		if rw.lim != nil {
			n = min(n, rw.lim.chunk())
			if err := rw.lim.take(rw.ctx, n); err != nil {
				return err
			}
		}
		rw.busySince.Store(time.Now().UnixNano())
		m, err := rw.w.Write(p[:n])
		rw.busySince.Store(0)
		rw.written.Add(int64(m))
		if err != nil {
			return err
		}
		p = p[n:]
	}
	return nil
}

// flush hands every complete record to the connection (in async mode, to
// the writer goroutine, waiting for the spare buffer). No PAGES record may
// be open. In async mode the error may be that of an earlier write.
func (rw *recordWriter) flush() error {
	if rw.open >= 0 {
		panic("migrate: flush with an open PAGES record")
	}
	if len(rw.buf) == 0 {
		return rw.firstErr()
	}
	rw.queued += int64(len(rw.buf))
	if rw.jobs == nil {
		err := rw.output(rw.buf)
		rw.buf = rw.buf[:0]
		if err != nil {
			rw.setErr(err)
		}
		return rw.firstErr()
	}
	rw.jobs <- writeJob{b: rw.buf, pooled: true}
	rw.buf = <-rw.free
	return rw.firstErr()
}

// sync flushes and waits until the connection accepted every byte.
func (rw *recordWriter) sync() error {
	if err := rw.flush(); err != nil || rw.jobs == nil {
		return err
	}
	spare := <-rw.free // the in-flight buffer is back: nothing is pending
	rw.free <- spare
	return rw.firstErr()
}

// stop ends the writer goroutine, waiting at most limit for a write in
// progress; it reports whether the goroutine exited (so the connection can
// be written by someone else).
func (rw *recordWriter) stop(limit time.Duration) bool {
	if rw.exited == nil {
		return true
	}
	if rw.jobs != nil {
		close(rw.jobs) // later flushes write synchronously
		rw.jobs = nil
	}
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case <-rw.exited:
		return true
	case <-t.C:
		return false
	}
}

// discard drops whatever is buffered and not yet handed over.
func (rw *recordWriter) discard() {
	rw.buf, rw.open, rw.staged, rw.entries = rw.buf[:0], -1, -1, 0
}

// record appends a whole record; large payloads bypass the buffer.
func (rw *recordWriter) record(t RecordType, payload []byte) error {
	if rw.open >= 0 {
		panic("migrate: record with an open PAGES record")
	}
	need := HeaderSize + len(payload)
	if cap(rw.buf)-len(rw.buf) < need {
		if err := rw.flush(); err != nil {
			return err
		}
	}
	if need <= cap(rw.buf) {
		rw.buf = appendRecord(rw.buf, t, payload)
		return nil
	}
	big := appendRecord(nil, t, payload)
	rw.queued += int64(len(big))
	if rw.jobs == nil {
		if err := rw.output(big); err != nil {
			rw.setErr(err)
		}
	} else {
		rw.jobs <- writeJob{b: big}
	}
	return rw.firstErr()
}

// beginPages opens a PAGES record, flushing first if a full one might not fit.
func (rw *recordWriter) beginPages() error {
	if rw.open >= 0 {
		panic("migrate: nested PAGES record")
	}
	if cap(rw.buf)-len(rw.buf) < HeaderSize+maxPagesPayload {
		if err := rw.flush(); err != nil {
			return err
		}
	}
	rw.open = len(rw.buf)
	rw.buf = rw.buf[:rw.open+HeaderSize]
	rw.crc, rw.entries = 0, 0
	return nil
}

// pagesOpen reports whether a PAGES record is open, and how many entries it holds.
func (rw *recordWriter) pagesOpen() (bool, int) { return rw.open >= 0, rw.entries }

func (rw *recordWriter) putEntryHeader(off int, page uint64, kind uint8) {
	binary.BigEndian.PutUint64(rw.buf[off:], page)
	rw.buf[off+8] = kind
}

// addZero appends a ZERO entry to the open record.
func (rw *recordWriter) addZero(page uint64) {
	off := len(rw.buf)
	rw.buf = rw.buf[:off+zeroEntrySize]
	rw.putEntryHeader(off, page, pageZero)
	rw.crc = crc32.Update(rw.crc, castagnoli, rw.buf[off:])
	rw.entries++
}

// stageFull appends a FULL entry for page to the open record: src is copied
// into the record first and the copy is hashed, so the digest always
// describes exactly the bytes that will be sent, even if the guest writes src
// meanwhile. The entry must then be kept or dropped.
func (rw *recordWriter) stageFull(page uint64, src []byte) Digest {
	off := len(rw.buf)
	rw.buf = rw.buf[:off+fullEntrySize]
	rw.putEntryHeader(off, page, pageFull)
	data := rw.buf[off+entryHeaderSize+digestSize : off+fullEntrySize]
	copy(data, src)
	d := HashPage(data)
	copy(rw.buf[off+entryHeaderSize:], d[:])
	rw.staged = off
	return d
}

// keepStaged commits the staged entry.
func (rw *recordWriter) keepStaged() {
	rw.crc = crc32.Update(rw.crc, castagnoli, rw.buf[rw.staged:])
	rw.staged = -1
	rw.entries++
}

// dropStaged removes the staged entry (its content was already sent).
func (rw *recordWriter) dropStaged() {
	rw.buf = rw.buf[:rw.staged]
	rw.staged = -1
}

// endPages closes the open PAGES record (an empty one is removed).
func (rw *recordWriter) endPages() {
	if rw.open < 0 {
		return
	}
	if rw.staged >= 0 {
		panic("migrate: endPages with a staged entry")
	}
	if rw.entries == 0 {
		rw.buf = rw.buf[:rw.open]
	} else {
		n := len(rw.buf) - rw.open
		if n > HeaderSize+maxPagesPayload {
			panic(fmt.Sprintf("migrate: PAGES record of %d bytes", n))
		}
		putHeader(rw.buf[rw.open:], header{Type: RecPages, Length: uint32(n), CRC: rw.crc})
	}
	rw.open, rw.entries = -1, 0
}
