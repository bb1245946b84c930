package migrate

import (
	"io"
	"math/bits"
	"time"
)

// A stream is one connection's share of the pages: stream 0 is the main
// connection (s.w), Options.Connections−1 more carry pages only. Each has
// its writer, and the counts of what it sent in the iteration under way;
// the per-page filter (sendPage) runs on the stream that sends the page.
type stream struct {
	s       *sender
	w       *recordWriter
	conn    io.ReadWriteCloser // an extra stream's connection; nil for stream 0
	keep    keepalive
	cur     pageCounts
	entries uint64 // pages sent, all iterations (END counts them all)
	mark    streamMark
	synced  uint32 // 1 + the last iteration it sent SYNC for; 0: none
}

// pageCounts are a stream's counts of one iteration.
type pageCounts struct {
	zero, sent, delta, falseDirty, reused uint64
	deltaBytes                            int64
}

// streamMark is a stream's writer when the iteration began.
type streamMark struct {
	out, written int64 // queued and buffered; taken by the connection
	compRecords  int
	compSaved    int64
}

func newStream(s *sender, w *recordWriter) *stream { return &stream{s: s, w: w} }

// begin marks the start of an iteration.
func (st *stream) begin() {
	st.cur = pageCounts{}
	st.mark = streamMark{out: st.w.queued.Load() + int64(len(st.w.buf)), written: st.w.written.Load()}
	if c := st.w.comp; c != nil {
		st.mark.compRecords, st.mark.compSaved = c.records, c.rawIn-c.compOut
	}
}

// addTo adds the stream's counts of the iteration to it.
func (st *stream) addTo(it *IterationStats) {
	it.PagesZero += st.cur.zero
	it.PagesSent += st.cur.sent
	it.PagesDelta += st.cur.delta
	it.DeltaBytes += st.cur.deltaBytes
	it.PagesFalseDirty += st.cur.falseDirty
	it.PagesReused += st.cur.reused
	it.Bytes += st.w.queued.Load() - st.mark.out
	if c := st.w.comp; c != nil {
		it.CompressedRecords += c.records - st.mark.compRecords
		it.CompressSaved += c.rawIn - c.compOut - st.mark.compSaved
	}
}

// passWritten is what every stream's connection took since the iteration
// began.
func (s *sender) passWritten() int64 {
	var n int64
	for _, st := range s.streams {
		n += st.w.written.Load() - st.mark.written
	}
	return n
}

// buffered is what every stream queued and its connection did not take
// yet. With one stream the sender's goroutine fills the buffer and counts
// it; the buffers of parallel streams belong to their goroutines, and
// their pages still in chunks waiting for them count instead (midPass).
func (s *sender) buffered() int64 {
	var n int64
	for _, st := range s.streams {
		n += st.w.queued.Load() - st.w.written.Load()
	}
	if len(s.streams) == 1 {
		n += int64(len(s.w.buf))
	}
	return n
}

// written is every byte the connections took.
func (s *sender) written() int64 {
	var n int64
	for _, st := range s.streams {
		n += st.w.written.Load()
	}
	return n
}

// entries is every page sent, on every stream.
func (s *sender) entries() uint64 {
	var n uint64
	for _, st := range s.streams {
		n += st.entries
	}
	return n
}

// sendPage is the filter every page goes through: zero pages join ZERO
// runs; pages whose digest matches what was last sent are skipped; a page
// that changed goes out as a DELTA entry with only its changed blocks when
// the destination holds it and that is smaller (blocks.go), else whole.
// The digest and block tables then describe what the destination holds.
// It returns the writer's error as it is: the sender's goroutine turns it
// into the migration's (ioError), a stream's goroutine hands it over.
func (st *stream) sendPage(g uint64, page []byte) error {
	s := st.s
	w := st.w
	if !w.pagesOpen() {
		if err := w.beginPages(); err != nil {
			return err
		}
	}
	force := s.table != nil && st.keep.quiet(w.queued.Load())
	if isZeroPage(page) {
		if s.table != nil {
			if !force && s.table.Match(g, ZeroDigest) {
				st.skipped()
				return nil
			}
			s.table.Update(g, ZeroDigest, s.pass.iter)
		}
		if s.blocks != nil {
			s.blocks.Set(g, &zeroBlocks)
		}
		w.addZero(g)
		st.cur.zero++
	} else {
		d := w.stageFull(g, page)
		if s.table != nil {
			if !force && s.table.Match(g, d) {
				w.dropStaged()
				st.skipped()
				return nil
			}
			s.table.Update(g, d, s.pass.iter)
		}
		if st.sendChanged(g) {
			st.cur.delta++
		} else {
			w.keepStaged()
			st.cur.sent++
		}
	}
	st.entries++
	if w.pagesFull(s.opts.BatchPages) || force {
		w.endPages()
	}
	if force {
		if err := w.flush(); err != nil {
			return err
		}
	}
	return nil
}

// sendChanged turns the staged page g into a DELTA entry when the
// destination holds it and only some of its blocks changed, and records
// its block hashes; it reports whether it did.
func (st *stream) sendChanged(g uint64) bool {
	blocks := st.s.blocks
	if blocks == nil {
		return false
	}
	h := hashBlocks(st.w.stagedData())
	mask, known := blocks.Changed(g, &h)
	blocks.Set(g, &h)
	if !known || !deltaWorthIt(mask) {
		return false
	}
	st.w.deltaStaged(mask)
	st.cur.deltaBytes += int64(bits.OnesCount8(mask) * BlockSize)
	return true
}

// The destination drops a source that sends nothing for its idle timeout
// (30 s by default). An iteration that skips almost every page (a resumed
// iteration 0, or false-dirty pages) can go that long without filling the
// output buffer, so every keepaliveCheck pages the sender checks that
// something went out within keepaliveEvery; if nothing did, it sends the
// page at hand even though it could skip it (the destination stores the
// same content again), and flushes.
var (
	keepaliveCheck = 1024
	keepaliveEvery = time.Second
)

// keepalive watches the output for quiet (see keepaliveCheck).
type keepalive struct {
	visited int       // pages visited since the last check
	outMark int64     // the writer's queued bytes at outAt
	outAt   time.Time // when output last moved
}

// quiet reports whether the connection has been idle too long, queued
// being the bytes the writer has queued so far.
func (k *keepalive) quiet(queued int64) bool {
	if k.visited++; k.visited < keepaliveCheck {
		return false
	}
	k.visited = 0
	if queued != k.outMark || k.outAt.IsZero() {
		k.outMark, k.outAt = queued, time.Now()
		return false
	}
	if time.Since(k.outAt) < keepaliveEvery {
		return false
	}
	k.outAt = time.Now()
	return true
}

// skipped counts a page whose digest matched: in iteration 0 only the
// destination's KEPT records (a resumed migration) can have filled the
// table, later it is a false-dirty page.
func (st *stream) skipped() {
	if st.s.pass.iter == 0 {
		st.cur.reused++
	} else {
		st.cur.falseDirty++
	}
}
