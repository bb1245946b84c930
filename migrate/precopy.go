package migrate

import (
	"fmt"
	"math/bits"
	"time"
)

// The pre-copy passes: iterations, the dirty log, chunks, and the
// per-page filter. The decisions (when to stop) are in converge.go.

// beginIteration announces iteration pass.iter (the first call announces 0).
func (s *sender) beginIteration(final bool) error {
	var flags uint32
	if final {
		flags = iterFinal
	}
	return s.beginIterationFlags(flags)
}

// beginIterationFlags announces the next iteration with ITERATION-START's
// flags (iterFinal, iterPostcopy).
func (s *sender) beginIterationFlags(flags uint32) error {
	final := flags&iterFinal != 0
	if len(s.stats.Iterations) > 0 {
		s.pass.iter++
	}
	s.pass.cur = IterationStats{Iteration: int(s.pass.iter), StopAndCopy: final}
	if !final {
		s.pass.cur.ThrottlePct = s.throttle.pct
	}
	s.pass.at = time.Now()
	if s.w.lim != nil {
		s.pass.slept = s.w.lim.slept.Load()
	}
	for _, st := range s.streams {
		st.begin()
	}
	if err := s.w.record(RecIterationStart, encodeIterationStartFlags(s.pass.iter, flags)); err != nil {
		return s.ioError("send ITERATION-START", err)
	}
	if s.par.jobs != nil {
		// The extra streams' pages wait at the destination until it has
		// this record: it must not wait in the buffer for the main
		// connection's own pages, which may never fill it.
		if err := s.w.flush(); err != nil {
			return s.ioError("send ITERATION-START", err)
		}
	}
	return nil
}

// endIteration closes the open PAGES record, flushes, and records the
// iteration's statistics.
func (s *sender) endIteration() error {
	if err := s.drain(); err != nil {
		return err
	}
	if err := s.syncStreams(true); err != nil {
		return err
	}
	s.pass.cur.Seconds = time.Since(s.pass.at).Seconds()
	for _, st := range s.streams {
		st.addTo(&s.pass.cur)
	}
	s.stats.Iterations = append(s.stats.Iterations, s.pass.cur)
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

// midPass is the convergence check between two chunks of a pre-copy pass,
// left being the pages of the pass not visited yet (the rules: passPoint
// in converge.go). When the rest may fit the budget, the dirty log is read
// without clearing it (peek, at most every peekEvery) and passPoint.stop
// decides with the pages written behind the pass added. If it says stop,
// the caller goes to stop-and-copy, whose fetch merges the log into the
// pending bitmap that still holds the unvisited pages, so nothing is lost
// (the Source contract keeps every logged page reported until it is
// cleared, device writes included).
func (s *sender) midPass(left uint64) (bool, error) {
	if !s.log.manual {
		// Reading the log would clear it: only whole passes then.
		return false, nil
	}
	bw := passBandwidth(s.passWritten(), time.Since(s.pass.at), s.stats.Iterations, s.opts.MaxBandwidth)
	if bw <= 0 {
		return false, nil
	}
	p := passPoint{
		left:     left,
		pageCost: PageSize * sendFraction(s.stats.Iterations, s.table != nil),
		buffered: float64(s.buffered()),
		bw:       bw,
		budget:   bw * s.opts.Downtime.Seconds(),
		capped:   s.capped(bw),
		elapsed:  time.Since(s.pass.at).Seconds(),
	}
	if !p.restFits() || time.Since(s.log.peekAt) < peekEvery {
		return false, nil
	}
	s.log.peekAt = time.Now()
	s.pass.cur.Peeks++
	n, err := s.peek()
	if err != nil {
		return false, err
	}
	p.logged = n
	return p.stop(), nil
}

// capped reports whether the bandwidth cap holds the pass back: the pass
// runs at about the cap, or the cap made a write wait since the pass
// began (a sender slowed by its own machine may measure less than the
// cap and still be held back by it).
func (s *sender) capped(bw float64) bool {
	lim := s.w.lim
	if s.opts.MaxBandwidth <= 0 || lim == nil || lim.lifted.Load() {
		return false
	}
	return bw >= 0.9*float64(s.opts.MaxBandwidth) || lim.slept.Load() > s.pass.slept
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
	for i := range s.vm.mems {
		tmp := s.log.scratch[i]
		clear(tmp)
		if err := s.src.DirtyLog(i, tmp); err != nil {
			return 0, fmt.Errorf("migrate: dirty log of region %d: %w", i, err)
		}
		if r := s.vm.pages[i] % 64; r != 0 {
			tmp[len(tmp)-1] &= 1<<r - 1 // ignore bits past the region's end
		}
		pend := s.log.pending[i]
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
	for i, bm := range s.log.pending {
		if err := s.src.ClearDirtyLog(i, 0, bm); err != nil {
			return fmt.Errorf("migrate: clear dirty log of region %d: %w", i, err)
		}
	}
	return nil
}

// fillAll sets a bit for every page of every region in bms.
func (s *sender) fillAll(bms [][]uint64) {
	for i, bm := range bms {
		for w := range bm {
			bm[w] = ^uint64(0)
		}
		if r := s.vm.pages[i] % 64; r != 0 {
			bm[len(bm)-1] = 1<<r - 1
		}
	}
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
	s.fillAll(s.log.pending)
	return s.sendPending(clearFirst, midCheck)
}

// clearEverything re-arms every page of every region.
func (s *sender) clearEverything() error {
	s.fillAll(s.log.scratch)
	for i, bm := range s.log.scratch {
		err := s.src.ClearDirtyLog(i, 0, bm)
		clear(bm)
		if err != nil {
			return fmt.Errorf("migrate: clear dirty log of region %d: %w", i, err)
		}
	}
	return nil
}

// sendPending sends the pending pages chunk by chunk. With clearFirst, each
// chunk's dirty bits are cleared in the kernel right before its pages are
// read: a write after that point is logged again and sent next iteration,
// while a write between the fetch and the clear is simply included now.
//
// With midCheck, the convergence check (midPass) runs after every chunk;
// when it says stop, sendPending returns stopped = true at once, and the
// pages of later chunks are left in the pending bitmap for stop-and-copy.
// pass.cur.PagesLeft counts them.
func (s *sender) sendPending(clearFirst, midCheck bool) (stopped bool, err error) {
	cw := s.opts.ChunkPages / 64
	left := popcount(s.log.pending)
	s.pass.total = left
	defer func() { s.pass.cur.PagesLeft = left }()
	for i, bm := range s.log.pending {
		mem, base := s.vm.mems[i], s.vm.base[i]
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
			if s.par.jobs != nil {
				n, err := s.dispatch(mem, base, uint64(c)*64, words)
				if err != nil {
					return false, err
				}
				left -= uint64(n)
			}
			for w := range words {
				x := words[w]
				words[w] = 0
				for x != 0 {
					p := uint64(c+w)*64 + uint64(bits.TrailingZeros64(x))
					x &= x - 1
					left--
					if err := s.streams[0].sendPage(base+p, mem[p*PageSize:(p+1)*PageSize]); err != nil {
						return false, s.ioError("send pages", err)
					}
				}
			}
			if err := s.check(); err != nil {
				return false, err
			}
			s.live(left + uint64(s.par.inflight.Load()))
			if midCheck && left > 0 {
				stop, err := s.midPass(left + uint64(s.par.inflight.Load()))
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
