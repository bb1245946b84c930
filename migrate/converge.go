package migrate

import (
	"fmt"
	"time"
)

// The convergence rules: when pre-copy ends. They are pure functions of a
// snapshot of the numbers (the iterations so far, the user's limits, where
// a pass stands), so each is tested with a table (converge_test.go); the
// sender (precopy.go) gathers the numbers and acts on the answer.

// history is what the rules know of the migration so far.
type history struct {
	its     []IterationStats // the iterations done, in order
	elapsed time.Duration    // since Send began
	digest  bool             // the digest filter is on
}

// bandwidth estimates the link rate in bytes per second from the last
// iteration, or from all iterations when the last one wrote too little to
// measure anything (e.g. when most dirty pages were false dirty), never
// above capBps (0: no cap). 0 before any iteration.
func bandwidth(its []IterationStats, capBps int64) float64 {
	const minSample = 1 << 20
	if len(its) == 0 {
		return 0
	}
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
	if capBps > 0 && bw > float64(capBps) {
		bw = float64(capBps)
	}
	return bw
}

// sendFraction predicts what a dirty page will cost on the wire, as a
// fraction of a whole page: what the last iteration wrote per page it
// visited (so zero pages, false-dirty pages, DELTA entries and compression
// all count for what they cost), when the digest filter is on and that
// iteration saw enough dirty pages to tell. Otherwise 1: every dirty page
// counts in full. Without this, pages the filter will skip would still
// count against the downtime budget.
func sendFraction(its []IterationStats, digest bool) float64 {
	const minSample = 64
	if len(its) == 0 {
		return 1
	}
	last := its[len(its)-1]
	visited := last.PagesDirty - min(last.PagesDirty, last.PagesLeft)
	if !digest || last.Iteration == 0 || visited < minSample {
		return 1
	}
	return min(1, float64(last.Bytes)/float64(visited*PageSize))
}

// decide chooses, after a fetch that found dirty pages, between another
// iteration, stop-and-copy (converged, or forced by a limit with
// ForceOnTimeout), and giving up (an error wrapping ErrNotConverged). The
// bytes left are estimated as dirty pages × PageSize × sendFraction, and
// must fit the downtime budget at the bandwidth measured so far.
func decide(h history, o Options, dirty uint64) (stop, converged bool, err error) {
	if dirty == 0 {
		return true, true, nil
	}
	bw := bandwidth(h.its, o.MaxBandwidth)
	left := float64(dirty*PageSize) * sendFraction(h.its, h.digest)
	est := time.Duration(1<<62 - 1)
	if bw > 0 {
		est = time.Duration(left / bw * float64(time.Second))
	}
	if est <= o.Downtime {
		return true, true, nil
	}
	done := len(h.its)
	limit := ""
	switch {
	case done >= o.MaxIterations:
		limit = fmt.Sprintf("%d iterations", done)
	case o.Timeout > 0 && h.elapsed >= o.Timeout:
		limit = fmt.Sprintf("the %v timeout (%d iterations)", o.Timeout, done)
	}
	if limit == "" {
		return false, false, nil
	}
	if o.OnTimeout == ForceOnTimeout {
		return true, false, nil
	}
	return false, false, fmt.Errorf("%w after %s: %d pages still dirty (%.1f MiB to send), estimated downtime %v exceeds the %v budget (bandwidth %.1f MiB/s); the source guest keeps running",
		ErrNotConverged, limit, dirty, left/mib, est.Round(time.Millisecond), o.Downtime, bw/mib)
}

// passBandwidth is the link rate measured in the pass under way (wrote
// bytes in elapsed) once it has written enough to tell, else the estimate
// from earlier iterations; 0 when there is none yet, which means no early
// stop in the first moments of a migration.
func passBandwidth(wrote int64, elapsed time.Duration, its []IterationStats, capBps int64) float64 {
	const minBytes, minTime = 1 << 20, 50 * time.Millisecond
	if wrote >= minBytes && elapsed >= minTime {
		bw := float64(wrote) / elapsed.Seconds()
		if capBps > 0 && bw > float64(capBps) {
			bw = float64(capBps)
		}
		return bw
	}
	return bandwidth(its, capBps)
}

// peekEvery spaces the dirty-log reads of the mid-pass check: a peek
// copies the whole bitmap (2 MiB for 64 GiB of guest), which must stay
// small next to the chunks sent in between.
const peekEvery = 10 * time.Millisecond

// passPoint is where a pass stands when the sender checks, between two
// chunks, whether to end it early (see sender.midPass). Checking only after
// complete passes would send a whole pass (all of memory in iteration 0)
// even when the budget could take the rest at once; QEMU checks after every
// chunk too (migration_iteration_run).
type passPoint struct {
	left     uint64  // pending pages the pass has not reached
	logged   uint64  // pages pending or logged dirty (>= left); 0 until peeked
	pageCost float64 // bytes a dirty page is expected to cost
	buffered float64 // bytes written but not yet on the wire
	bw       float64 // measured bytes per second of the pass
	budget   float64 // bytes the downtime budget takes at bw
	capped   bool    // the pass runs at the bandwidth cap
	elapsed  float64 // seconds since the pass began
}

// restFits is the cheap test that comes before a peek at the dirty log:
// the pages the pass has not reached, plus what is still buffered, fit in
// the budget.
func (p passPoint) restFits() bool {
	return float64(p.left)*p.pageCost+p.buffered <= p.budget
}

// stop decides whether to end the pass now, with logged read from the
// dirty log. Everything left must fit the budget. Stopping then moves the
// rest of the pass into the downtime, and is worth it in two cases only:
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

// Auto-converge (Options.NoAutoConverge): when the guest dirties memory
// about as fast as the link carries it away, pre-copy cannot converge, so
// the sender slows the guest's vCPUs down (a Source that is a Throttler)
// in steps, as QEMU's cpu-throttle does: 20% first, then 10% more per
// iteration that still does not converge, at most 99%.
const (
	throttleFirst = 20
	throttleStep  = 10
	throttleMax   = 99
	// slowRatio: an iteration "does not converge" when the bytes the next
	// one is expected to send are at least this share of what it sent
	// itself; twoSlow such iterations in a row raise the throttle.
	slowRatio = 0.5
	twoSlow   = 2
)

// throttleRule is what auto-converge knows between iterations.
type throttleRule struct {
	pct  int // the throttle now
	slow int // iterations in a row that did not converge
}

// next returns the rule after the iteration just ended (the last of
// h.its), the fetch that followed it having found dirty pages: the
// expected bytes of the next iteration (dirty × PageSize × sendFraction)
// against what this one sent, measured on iterations after the first
// (iteration 0 sends all of memory, which says nothing about the rate).
func (r throttleRule) next(h history, dirty uint64) throttleRule {
	if len(h.its) == 0 {
		return r
	}
	last := h.its[len(h.its)-1]
	if last.Iteration == 0 || last.StopAndCopy || last.Bytes <= 0 {
		return r
	}
	expect := float64(dirty*PageSize) * sendFraction(h.its, h.digest)
	if expect < slowRatio*float64(last.Bytes) {
		r.slow = 0
		return r
	}
	if r.slow++; r.slow < twoSlow {
		return r
	}
	r.slow = 0
	switch {
	case r.pct == 0:
		r.pct = throttleFirst
	default:
		r.pct = min(throttleMax, r.pct+throttleStep)
	}
	return r
}
