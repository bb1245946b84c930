package migrate

import (
	"fmt"
	"math/bits"
	"time"
)

// The pre-copy loop: iterations, the dirty log, and the per-page filter.

// beginIteration announces iteration s.iter (the first call announces 0).
func (s *sender) beginIteration(final bool) error {
	if len(s.stats.Iterations) > 0 {
		s.iter++
	}
	s.cur = IterationStats{Iteration: int(s.iter), StopAndCopy: final}
	s.curAt = time.Now()
	s.curOut = s.w.queued + int64(len(s.w.buf))
	s.curWritten = s.w.written.Load()
	if err := s.w.record(RecIterationStart, encodeIterationStart(s.iter, final)); err != nil {
		return s.ioError("send ITERATION-START", err)
	}
	return nil
}

// endIteration closes the open PAGES record, flushes, and records the
// iteration's statistics.
func (s *sender) endIteration() error {
	s.w.endPages()
	if err := s.w.sync(); err != nil {
		return s.ioError("send pages", err)
	}
	s.cur.Bytes = s.w.queued - s.curOut
	s.cur.Seconds = time.Since(s.curAt).Seconds()
	s.stats.Iterations = append(s.stats.Iterations, s.cur)
	return nil
}

// reportLast completes the last iteration's dirty rate with the number of
// pages the following fetch found, and calls Progress.
func (s *sender) reportLast(dirty uint64) {
	it := &s.stats.Iterations[len(s.stats.Iterations)-1]
	if it.Seconds > 0 && !it.StopAndCopy {
		it.DirtyRate = float64(dirty*PageSize) / it.Seconds
	}
	if s.opts.Progress != nil {
		s.opts.Progress(*it)
	}
}

// bandwidth estimates the link rate in bytes per second from the last
// iteration, or from all iterations when the last one wrote too little to
// measure anything (e.g. when most dirty pages were false dirty).
func (s *sender) bandwidth() float64 {
	const minSample = 1 << 20
	its := s.stats.Iterations
	last := its[len(its)-1]
	bw := 0.0
	if last.Bytes >= minSample && last.Seconds > 0 {
		bw = float64(last.Bytes) / last.Seconds
	} else {
		var b int64
		var t float64
		for _, it := range its {
			b += it.Bytes
			t += it.Seconds
		}
		if t > 0 {
			bw = float64(b) / t
		}
	}
	if s.opts.MaxBandwidth > 0 && bw > float64(s.opts.MaxBandwidth) {
		bw = float64(s.opts.MaxBandwidth)
	}
	return bw
}

// sendFraction predicts which share of the dirty pages will really be sent
// (as a fraction of their full size): the share the last iteration sent,
// when the digest filter is on and that iteration saw enough dirty pages to
// tell. Otherwise 1: every dirty page counts in full. Without this, pages
// the filter will skip would still count against the downtime budget.
func (s *sender) sendFraction() float64 {
	const minSample = 64
	if len(s.stats.Iterations) == 0 {
		return 1
	}
	last := s.stats.Iterations[len(s.stats.Iterations)-1]
	if s.table == nil || last.Iteration == 0 || last.PagesDirty < minSample {
		return 1
	}
	sent := float64(last.PagesSent) + float64(last.PagesZero)*zeroEntrySize/fullEntrySize
	return sent / float64(last.PagesDirty)
}

// decide chooses, after a fetch that found dirty pages, between another
// iteration, stop-and-copy (converged or forced), and giving up. The bytes
// left are estimated as dirty pages × PageSize × sendFraction.
func (s *sender) decide(dirty uint64) (stop, converged bool, err error) {
	if dirty == 0 {
		return true, true, nil
	}
	bw := s.bandwidth()
	left := float64(dirty*PageSize) * s.sendFraction()
	est := time.Duration(1<<62 - 1)
	if bw > 0 {
		est = time.Duration(left / bw * float64(time.Second))
	}
	if est <= s.opts.Downtime {
		return true, true, nil
	}
	done := len(s.stats.Iterations)
	limit := ""
	switch {
	case done >= s.opts.MaxIterations:
		limit = fmt.Sprintf("%d iterations", done)
	case s.opts.Timeout > 0 && time.Since(s.start) >= s.opts.Timeout:
		limit = fmt.Sprintf("the %v timeout (%d iterations)", s.opts.Timeout, done)
	}
	if limit == "" {
		return false, false, nil
	}
	if s.opts.OnTimeout == ForceOnTimeout {
		return true, false, nil
	}
	return false, false, fmt.Errorf("%w after %s: %d pages still dirty (%.1f MiB to send), estimated downtime %v exceeds the %v budget (bandwidth %.1f MiB/s); the source guest keeps running",
		ErrNotConverged, limit, dirty, left/mib, est.Round(time.Millisecond), s.opts.Downtime, bw/mib)
}

// midPass is the convergence check between two chunks of a pre-copy pass,
// left being the pages of the pass not visited yet. Checking only after
// complete passes would send a whole pass (all of memory in iteration 0)
// even when the budget could take the rest at once; QEMU checks after every
// chunk too (migration_iteration_run).
//
// The cheap test comes first: if the pages left in this pass, plus what is
// still buffered, fit in bandwidth × downtime, the dirty log is read
// without clearing it (peek, at most every peekEvery) and midPassStop
// decides with the pages written behind the pass added. If it says stop,
// the caller goes to stop-and-copy, whose fetch merges the log into the
// pending bitmap that still holds the unvisited pages, so nothing is lost.
// The byte estimate is the one decide uses (pages × PageSize × the last
// iteration's send fraction; 1 in iteration 0).
func (s *sender) midPass(left uint64) (bool, error) {
	if !s.manual {
		// Reading the log would clear it: only whole passes then.
		return false, nil
	}
	bw := s.passBandwidth()
	if bw <= 0 {
		return false, nil
	}
	p := passPoint{
		left:     left,
		pageCost: PageSize * s.sendFraction(),
		buffered: float64(s.w.queued + int64(len(s.w.buf)) - s.w.written.Load()),
		bw:       bw,
		budget:   bw * s.opts.Downtime.Seconds(),
		capped:   s.opts.MaxBandwidth > 0 && bw >= 0.9*float64(s.opts.MaxBandwidth),
		elapsed:  time.Since(s.curAt).Seconds(),
	}
	if float64(left)*p.pageCost+p.buffered > p.budget || time.Since(s.peekAt) < peekEvery {
		return false, nil
	}
	s.peekAt = time.Now()
	n, err := s.peek()
	if err != nil {
		return false, err
	}
	p.logged = n
	return p.stop(), nil
}

// peekEvery spaces the dirty-log reads of midPass: a peek copies the whole
// bitmap (2 MiB for 64 GiB of guest), which must stay small next to the
// chunks sent in between.
const peekEvery = 10 * time.Millisecond

// passPoint is where a pass stands when midPass looks at it.
type passPoint struct {
	left     uint64  // pending pages the pass has not reached
	logged   uint64  // pages pending or logged dirty (>= left)
	pageCost float64 // bytes a dirty page is expected to cost
	buffered float64 // bytes written but not yet on the wire
	bw       float64 // measured bytes per second of the pass
	budget   float64 // bytes the downtime budget takes at bw
	capped   bool    // the pass runs at the bandwidth cap
	elapsed  float64 // seconds since the pass began
}

// stop decides whether to end the pass now. Everything left must fit the
// budget. Stopping then moves the rest of the pass into the downtime, and
// is worth it in two cases only:
//   - the pass is held back by MaxBandwidth: the stop-and-copy is not
//     capped, so the rest goes out faster there, and the migration ends
//     sooner;
//   - finishing the pass would let the guest dirty more than the budget
//     takes (the pages written behind the pass so far, plus as many again
//     per second for the time the rest of the pass needs), so that the
//     migration might not converge at its end.
//
// Otherwise the rest of the pass goes out at the same rate either way, and
// finishing it while the guest runs keeps it out of the downtime.
func (p passPoint) stop() bool {
	if float64(p.logged)*p.pageCost+p.buffered > p.budget {
		return false
	}
	if p.capped {
		return true
	}
	behind := float64(p.logged - min(p.logged, p.left))
	rest := (float64(p.left)*p.pageCost + p.buffered) / p.bw
	atEnd := behind
	if p.elapsed > 0 {
		atEnd += behind / p.elapsed * rest
	}
	return atEnd*p.pageCost > p.budget
}

// passBandwidth is the link rate measured in the pass under way once it
// has written enough to tell, else the estimate from earlier iterations
// (0 when there is none yet: no early stop in the first moments).
func (s *sender) passBandwidth() float64 {
	const minBytes, minTime = 1 << 20, 50 * time.Millisecond
	wrote := s.w.written.Load() - s.curWritten
	el := time.Since(s.curAt)
	if wrote >= minBytes && el >= minTime {
		bw := float64(wrote) / el.Seconds()
		if s.opts.MaxBandwidth > 0 && bw > float64(s.opts.MaxBandwidth) {
			bw = float64(s.opts.MaxBandwidth)
		}
		return bw
	}
	if len(s.stats.Iterations) > 0 {
		return s.bandwidth()
	}
	return 0
}

// peek counts the pages pending or logged dirty, without clearing the log
// (manual-protect mode only) or changing the pending bitmaps.
func (s *sender) peek() (uint64, error) { return s.readLog(false) }

// fetch ORs the dirty log of every region into the pending bitmaps and
// returns the number of pending pages.
func (s *sender) fetch() (uint64, error) { return s.readLog(true) }

// readLog reads every region's dirty log and counts the pages that are
// pending or logged; with merge, the logged pages become pending.
func (s *sender) readLog(merge bool) (uint64, error) {
	var n uint64
	for i := range s.mems {
		tmp := s.scratch[i]
		clear(tmp)
		if err := s.src.DirtyLog(i, tmp); err != nil {
			return 0, fmt.Errorf("migrate: dirty log of region %d: %w", i, err)
		}
		if r := s.pages[i] % 64; r != 0 {
			tmp[len(tmp)-1] &= 1<<r - 1 // ignore bits past the region's end
		}
		pend := s.pending[i]
		for w, x := range tmp {
			x |= pend[w]
			if merge {
				pend[w] = x
			}
			n += uint64(bits.OnesCount64(x))
		}
	}
	return n, nil
}

// clearAll re-arms the whole pending bitmap at once (classic pre-copy).
func (s *sender) clearAll() error {
	for i, bm := range s.pending {
		if err := s.src.ClearDirtyLog(i, 0, bm); err != nil {
			return fmt.Errorf("migrate: clear dirty log of region %d: %w", i, err)
		}
	}
	return nil
}

// sendAll is iteration 0: every page of every region, sent as a pass over
// a pending bitmap with every bit set. With clearFirst, each chunk's dirty
// bits are cleared right before the chunk is read, exactly as in later
// iterations: a page written during iteration 0 before its chunk is sent
// goes out with its new content and is not reported dirty afterwards. (This
// also makes KVM_DIRTY_LOG_INITIALLY_SET, where logging starts with every
// bit set, work as intended.) With midCheck the pass may end early (see
// midPass); the pages it did not reach stay pending.
func (s *sender) sendAll(clearFirst, midCheck bool) (stopped bool, err error) {
	for i, bm := range s.pending {
		for w := range bm {
			bm[w] = ^uint64(0)
		}
		if r := s.pages[i] % 64; r != 0 {
			bm[len(bm)-1] = 1<<r - 1
		}
	}
	return s.sendPending(clearFirst, midCheck)
}

// clearEverything re-arms every page of every region.
func (s *sender) clearEverything() error {
	for i, bm := range s.scratch {
		for w := range bm {
			bm[w] = ^uint64(0)
		}
		if r := s.pages[i] % 64; r != 0 {
			bm[len(bm)-1] = 1<<r - 1
		}
		err := s.src.ClearDirtyLog(i, 0, bm)
		clear(bm)
		if err != nil {
			return fmt.Errorf("migrate: clear dirty log of region %d: %w", i, err)
		}
	}
	return nil
}

// sendPending sends the pending pages chunk by chunk. With clear, each
// chunk's dirty bits are cleared in the kernel right before its pages are
// read: a write after that point is logged again and sent next iteration,
// while a write between the fetch and the clear is simply included now.
//
// With midCheck, the convergence check (midPass) runs after every chunk;
// when it says stop, sendPending returns stopped = true at once, and the
// pages of later chunks are left in the pending bitmap for stop-and-copy.
// s.cur.PagesLeft counts them.
func (s *sender) sendPending(clearFirst, midCheck bool) (stopped bool, err error) {
	cw := s.opts.ChunkPages / 64
	left := popcount(s.pending)
	defer func() { s.cur.PagesLeft = left }()
	for i, bm := range s.pending {
		mem, base := s.mems[i], s.base[i]
		for c := 0; c < len(bm); c += cw {
			words := bm[c:min(c+cw, len(bm))]
			if allZero(words) {
				continue
			}
			if clearFirst {
				if err := s.src.ClearDirtyLog(i, uint64(c)*64, words); err != nil {
					return false, fmt.Errorf("migrate: clear dirty log of region %d: %w", i, err)
				}
			}
			for w := range words {
				x := words[w]
				words[w] = 0
				for x != 0 {
					p := uint64(c+w)*64 + uint64(bits.TrailingZeros64(x))
					x &= x - 1
					left--
					if err := s.sendPage(base+p, mem[p*PageSize:(p+1)*PageSize]); err != nil {
						return false, err
					}
				}
			}
			if err := s.check(); err != nil {
				return false, err
			}
			if midCheck && left > 0 {
				stop, err := s.midPass(left)
				if err != nil || stop {
					return stop, err
				}
			}
		}
	}
	return false, nil
}

func popcount(bms [][]uint64) uint64 {
	var n uint64
	for _, bm := range bms {
		for _, w := range bm {
			n += uint64(bits.OnesCount64(w))
		}
	}
	return n
}

func allZero(ws []uint64) bool {
	for _, w := range ws {
		if w != 0 {
			return false
		}
	}
	return true
}

// sendPage is the filter every page goes through: zero pages become ZERO
// entries, pages whose digest matches what was last sent are skipped, the
// rest are sent in full and their digest recorded.
func (s *sender) sendPage(g uint64, page []byte) error {
	if open, _ := s.w.pagesOpen(); !open {
		if err := s.w.beginPages(); err != nil {
			return s.ioError("send pages", err)
		}
	}
	force := s.table != nil && s.quiet()
	if isZeroPage(page) {
		if s.table != nil {
			if !force && s.table.Match(g, ZeroDigest) {
				s.skipped()
				return nil
			}
			s.table.Update(g, ZeroDigest, s.iter)
		}
		s.w.addZero(g)
		s.cur.PagesZero++
	} else {
		d := s.w.stageFull(g, page)
		if s.table != nil {
			if !force && s.table.Match(g, d) {
				s.w.dropStaged()
				s.skipped()
				return nil
			}
			s.table.Update(g, d, s.iter)
		}
		s.w.keepStaged()
		s.cur.PagesSent++
	}
	s.entries++
	if _, n := s.w.pagesOpen(); n >= s.opts.BatchPages || force {
		s.w.endPages()
	}
	if force {
		if err := s.w.flush(); err != nil {
			return s.ioError("send pages", err)
		}
	}
	return nil
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

// quiet reports whether the connection has been idle too long.
func (s *sender) quiet() bool {
	if s.visited++; s.visited < keepaliveCheck {
		return false
	}
	s.visited = 0
	if q := s.w.queued; q != s.outMark || s.outAt.IsZero() {
		s.outMark, s.outAt = q, time.Now()
		return false
	}
	if time.Since(s.outAt) < keepaliveEvery {
		return false
	}
	s.outAt = time.Now()
	return true
}

// skipped counts a page whose digest matched: in iteration 0 only the
// destination's HELD records (a resumed migration) can have filled the
// table, later it is a false-dirty page.
func (s *sender) skipped() {
	if s.iter == 0 {
		s.cur.PagesHeld++
	} else {
		s.cur.PagesFalseDirty++
	}
}
