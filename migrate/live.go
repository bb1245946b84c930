package migrate

import (
	"fmt"
	"time"
)

// PassProgress is where the pass under way stands: what a live progress
// line shows (Options.Live).
type PassProgress struct {
	Iteration  uint32  `json:"iteration"`
	PagesDone  uint64  `json:"pages_done"`  // pages of the pass visited so far
	PagesTotal uint64  `json:"pages_total"` // pages the pass set out to visit
	Bytes      int64   `json:"bytes"`       // bytes the connections took in the pass
	Seconds    float64 `json:"seconds"`     // since the pass began
}

// Rate is the pass's rate in bytes per second (0 before it measured any).
func (p PassProgress) Rate() float64 {
	if p.Seconds <= 0 {
		return 0
	}
	return float64(p.Bytes) / p.Seconds
}

// ETA estimates the time to the end of the pass at the pace of its pages
// so far (0 when not known yet).
func (p PassProgress) ETA() time.Duration {
	if p.PagesDone == 0 || p.Seconds <= 0 || p.PagesDone >= p.PagesTotal {
		return 0
	}
	left := float64(p.PagesTotal-p.PagesDone) * p.Seconds / float64(p.PagesDone)
	return time.Duration(left * float64(time.Second))
}

// String renders the progress as one short line.
func (p PassProgress) String() string {
	pct := 100.0
	if p.PagesTotal > 0 {
		pct = 100 * float64(p.PagesDone) / float64(p.PagesTotal)
	}
	eta := "-"
	if d := p.ETA(); d > 0 {
		eta = d.Round(100 * time.Millisecond).String()
	}
	return fmt.Sprintf("iter %d: %d/%d pages (%.0f%%), %.1f MiB/s, pass ends in %s",
		p.Iteration, p.PagesDone, p.PagesTotal, pct, p.Rate()/mib, eta)
}

// liveEvery is the least time between two calls of Options.Live.
var liveEvery = 250 * time.Millisecond

// live calls Options.Live when liveEvery passed since the last call, with
// left pages of the pass not visited yet.
func (s *sender) live(left uint64) {
	if s.opts.Live == nil || time.Since(s.pass.liveAt) < liveEvery {
		return
	}
	s.pass.liveAt = time.Now()
	s.opts.Live(PassProgress{
		Iteration:  s.pass.iter,
		PagesDone:  s.pass.total - left,
		PagesTotal: s.pass.total,
		Bytes:      s.passWritten(),
		Seconds:    time.Since(s.pass.at).Seconds(),
	})
}
