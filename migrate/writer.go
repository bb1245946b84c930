package migrate

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zeebo/xxh3"
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
	pg      pagesState
	staged  stagedPage
	digests *xxh3.Hasher // the open record's pages digest (pages.go)
	scratch []byte       // a DELTA entry's blocks, while they move
	// comp compresses PAGES payloads when it pays, at the link rate
	// linkBps gives (nil: never; both set by the owner before use).
	comp     *compressor
	linkBps  func() float64
	rawPages int64 // bytes of the PAGES records before compression

	queued  atomic.Int64 // bytes handed to flush (written by the filling goroutine)
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

// pagesState is where the open PAGES record stands (pages.go has its
// layout).
type pagesState struct {
	end      uint64 // the page after the last entry's last page
	run      int    // offset of the open ZERO or FULL entry's count; -1: none
	runKind  uint8
	pages    int // pages in its entries, all kinds
	data     int // pages with data: FULL and DELTA
	zeroRuns int // ZERO entries
}

// stagedPage is a page copied into the open record, not yet kept.
type stagedPage struct {
	active  bool
	off     int // the record's length before it
	data    int // offset of its data
	page    uint64
	digest  Digest
	run     int // the open run before it
	runKind uint8
}

type writeJob struct {
	b      []byte
	pooled bool // return b to free once written
}

func newRecordWriter(ctx context.Context, w io.Writer, size int, lim *tokenBucket) *recordWriter {
	if size < HeaderSize+maxPagesPayload {
		size = HeaderSize + maxPagesPayload
	}
	return &recordWriter{ctx: ctx, w: w, lim: lim, buf: make([]byte, 0, size), open: -1, digests: xxh3.New()}
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
	rw.queued.Add(int64(len(rw.buf)))
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

// waitBelow returns once at most n bytes handed to the writer are not yet
// taken by the connection (the open PAGES record counts, and is closed
// and handed over if it alone is more). It polls: the push of post-copy
// uses it between pages, where a millisecond does not matter.
func (rw *recordWriter) waitBelow(n int64) error {
	for {
		ahead := rw.queued.Load() + int64(len(rw.buf)) - rw.written.Load()
		if ahead <= n {
			return rw.firstErr()
		}
		if len(rw.buf) > 0 && rw.queued.Load()-rw.written.Load() <= n {
			rw.endPages()
			if err := rw.flush(); err != nil {
				return err
			}
			continue
		}
		if err := rw.firstErr(); err != nil {
			return err
		}
		if err := rw.ctx.Err(); err != nil {
			return err
		}
		time.Sleep(500 * time.Microsecond)
	}
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
	rw.buf, rw.open, rw.staged = rw.buf[:0], -1, stagedPage{}
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
	rw.queued.Add(int64(len(big)))
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
	rw.pg = pagesState{run: -1}
	rw.digests.Reset()
	return nil
}

// pagesOpen reports whether a PAGES record is open.
func (rw *recordWriter) pagesOpen() bool { return rw.open >= 0 }

// pagesFull reports whether the open record should end: it holds batch
// pages (of every kind; at most MaxPagesPerBatch, the most pages with data
// a record may hold), or as many ZERO entries as a record may have.
func (rw *recordWriter) pagesFull(batch int) bool {
	return rw.pg.pages >= batch || rw.pg.data >= MaxPagesPerBatch || rw.pg.zeroRuns >= MaxPagesPerBatch
}

// startRun appends the header of a new ZERO or FULL entry for page with a
// count of 0 and makes it the open run.
func (rw *recordWriter) startRun(kind uint8, page uint64) {
	rw.buf = appendEntryHeader(rw.buf, kind, page-rw.pg.end)
	rw.pg.run, rw.pg.runKind = len(rw.buf), kind
	rw.buf = append(rw.buf, 0, 0)
}

// extendRun reports whether page continues the open run of kind, which
// has room for it.
func (rw *recordWriter) extendRun(kind uint8, page uint64) bool {
	if rw.pg.run < 0 || rw.pg.runKind != kind || page != rw.pg.end {
		return false
	}
	n := binary.BigEndian.Uint16(rw.buf[rw.pg.run:])
	return n < maxZeroRun
}

// countPage adds one page to the open run.
func (rw *recordWriter) countPage(page uint64) {
	c := rw.buf[rw.pg.run:]
	binary.BigEndian.PutUint16(c, binary.BigEndian.Uint16(c)+1)
	rw.pg.end = page + 1
	rw.pg.pages++
}

// addZero adds a zero page to the open record.
func (rw *recordWriter) addZero(page uint64) {
	if !rw.extendRun(pageZero, page) {
		rw.startRun(pageZero, page)
		rw.pg.zeroRuns++
	}
	rw.countPage(page)
}

// stageFull places src as page's data in the open record (continuing the
// open FULL run, or in a new one): it is copied first and the copy is
// hashed, so the digest always describes exactly the bytes that will be
// sent, even if the guest writes src meanwhile. The page must then be
// kept, turned into a DELTA, or dropped.
func (rw *recordWriter) stageFull(page uint64, src []byte) Digest {
	rw.staged = stagedPage{off: len(rw.buf), page: page, run: rw.pg.run, runKind: rw.pg.runKind}
	if !rw.extendRun(pageFull, page) {
		rw.startRun(pageFull, page)
	}
	rw.staged.data = len(rw.buf)
	rw.buf = append(rw.buf, src[:PageSize]...)
	rw.staged.digest = HashPage(rw.buf[rw.staged.data:])
	rw.staged.active = true
	return rw.staged.digest
}

// stagedData is the copy of the staged page.
func (rw *recordWriter) stagedData() []byte {
	return rw.buf[rw.staged.data : rw.staged.data+PageSize]
}

// keepStaged sends the staged page whole.
func (rw *recordWriter) keepStaged() {
	rw.countPage(rw.staged.page)
	rw.pg.data++
	rw.digests.Write(rw.staged.digest[:])
	rw.staged.active = false
}

// dropStaged removes the staged page (its content was already sent).
func (rw *recordWriter) dropStaged() {
	rw.buf = rw.buf[:rw.staged.off]
	rw.pg.run, rw.pg.runKind = rw.staged.run, rw.staged.runKind
	rw.staged.active = false
}

// deltaStaged sends, instead of the staged page, the blocks of it that
// mask selects, as a DELTA entry.
func (rw *recordWriter) deltaStaged(mask uint8) {
	rw.scratch = appendDeltaBlocks(rw.scratch[:0], mask, rw.stagedData())
	page, d := rw.staged.page, rw.staged.digest
	rw.dropStaged()
	rw.buf = appendEntryHeader(rw.buf, pageDelta, page-rw.pg.end)
	rw.buf = append(rw.buf, mask)
	rw.buf = append(rw.buf, rw.scratch...)
	rw.pg.run = -1 // a DELTA entry is never extended
	rw.pg.end = page + 1
	rw.pg.pages++
	rw.pg.data++
	rw.digests.Write(d[:])
}

// endPages closes the open PAGES record (an empty one is removed): the
// pages digest, then compression if the compressor takes it, the CRC and
// the header.
func (rw *recordWriter) endPages() {
	if rw.open < 0 {
		return
	}
	if rw.staged.active {
		panic("migrate: endPages with a staged page")
	}
	if rw.pg.pages == 0 {
		rw.buf = rw.buf[:rw.open]
		rw.open = -1
		return
	}
	sum := rw.digests.Sum128().Bytes()
	rw.buf = append(rw.buf, sum[:]...)
	payload := rw.buf[rw.open+HeaderSize:]
	if len(payload) > maxPagesPayload {
		panic(fmt.Sprintf("migrate: PAGES payload of %d bytes", len(payload)))
	}
	rw.rawPages += int64(HeaderSize + len(payload))
	var flags uint16
	if rw.comp != nil {
		if c := rw.comp.compress(payload, rw.linkRate()); c != nil {
			rw.buf = append(rw.buf[:rw.open+HeaderSize], c...)
			payload = rw.buf[rw.open+HeaderSize:]
			flags = FlagCompressed
		}
	}
	putHeader(rw.buf[rw.open:], header{Type: RecPages, Flags: flags, Length: uint32(HeaderSize + len(payload)),
		CRC: Checksum(payload)})
	rw.open = -1
}

// linkRate is the link's rate for the compressor's choice: the callback's
// answer, or 0 (not known) without one.
func (rw *recordWriter) linkRate() float64 {
	if rw.linkBps == nil {
		return 0
	}
	return rw.linkBps()
}
