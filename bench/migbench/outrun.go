package main

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Guests that write new data faster than the link carries it away (the
// rewrite workload): plain pre-copy cannot converge; auto-converge slows
// the guest down until it does, post-copy moves it at once and sends the
// pages it lacks afterwards. What the harness records of both, for ferry
// and for QEMU.

// PostcopyRun is what a post-copy migration did after its switch.
type PostcopyRun struct {
	// Switched: the migration went to post-copy (else pre-copy converged
	// before the switch was due).
	Switched bool `json:"switched"`
	// SwitchSeconds: when the switch began, since the start of the
	// migration (ferry: total − post-copy phase − downtime; QEMU: when
	// the harness sent migrate-start-postcopy, from its polls).
	SwitchSeconds float64 `json:"switch_seconds"`
	// Seconds: from the guest's start on the destination to the last page
	// there (ferry: postcopy_seconds; QEMU: total-time − SwitchSeconds −
	// downtime).
	Seconds float64 `json:"seconds"`
	// ferry: pages missing at the switch, pushed on the main connection,
	// served on the request channel; the destination's fault service
	// time (first wait for a page to the page in place).
	PagesMissing  uint64   `json:"pages_missing,omitempty"`
	PagesPushed   uint64   `json:"pages_pushed,omitempty"`
	PagesServed   uint64   `json:"pages_served,omitempty"`
	FaultMedianUS *float64 `json:"fault_median_us,omitempty"`
	FaultP99US    *float64 `json:"fault_p99_us,omitempty"`
	// DowntimeParts: ferry's account of the switch-over downtime.
	DowntimeParts string `json:"downtime_parts,omitempty"`
	// QEMU: page requests from the destination (ram.postcopy-requests)
	// and the bytes sent after the switch (ram.postcopy-bytes).
	Requests int64 `json:"requests,omitempty"`
	Bytes    int64 `json:"bytes,omitempty"`
}

// ferryPostcopy is the post-copy part of ferry migrate --stats-json.
type ferryPostcopy struct {
	Postcopy        bool    `json:"postcopy"`
	PagesMissing    uint64  `json:"pages_missing"`
	PagesPushed     uint64  `json:"pages_pushed"`
	PagesServed     uint64  `json:"pages_served"`
	PostcopySeconds float64 `json:"postcopy_seconds"`
	PostcopyStats   struct {
		PagesRequested uint64  `json:"pages_requested"`
		FaultMedianUS  float64 `json:"fault_median_us"`
		FaultP99US     float64 `json:"fault_p99_us"`
	} `json:"postcopy_stats"`
	DowntimeParts map[string]float64 `json:"downtime_parts"`
}

// run turns ferry's account into the run's (post-copy systems only).
func (p ferryPostcopy) run(r *Run) *PostcopyRun {
	pc := &PostcopyRun{Switched: p.Postcopy}
	if !p.Postcopy {
		return pc
	}
	pc.Seconds = p.PostcopySeconds
	if r.DowntimeMS != nil {
		pc.SwitchSeconds = max(r.TotalSeconds-p.PostcopySeconds-*r.DowntimeMS/1000, 0)
	}
	pc.PagesMissing, pc.PagesPushed, pc.PagesServed = p.PagesMissing, p.PagesPushed, p.PagesServed
	med, p99 := p.PostcopyStats.FaultMedianUS, p.PostcopyStats.FaultP99US
	pc.FaultMedianUS, pc.FaultP99US = &med, &p99
	if d := p.DowntimeParts; d != nil {
		pc.DowntimeParts = ferryDowntimeParts(d)
	}
	return pc
}

// ferryDowntimeParts renders downtime_parts as ferry migrate prints them.
func ferryDowntimeParts(d map[string]float64) string {
	s := ""
	for _, k := range []struct{ key, name string }{{"pause_ms", "pause"}, {"sync_ms", "dirty-log sync"},
		{"pages_ms", "last pages"}, {"state_ms", "state"}, {"flush_ms", "flush"},
		{"ready_ms", "destination restore"}, {"commit_ms", "commit"}} {
		if s != "" {
			s += ", "
		}
		s += k.name + " " + strconv.FormatFloat(d[k.key], 'f', 1, 64)
	}
	return s + " ms"
}

// reFerryThrottle and reFerryDirtyRate read the throttle and the dirty
// rate off a ferry iteration line.
var (
	reFerryThrottle  = regexp.MustCompile(`, guest throttled ([0-9]+)%`)
	reFerryDirtyRate = regexp.MustCompile(`, dirty rate ([0-9.]+) MiB/s`)
)

// DirtyRates is the rate at which the guest dirtied memory as its VMM
// measured it (bytes/s of distinct pages) after the first pass: the first
// such measurement (before any throttle) and the lowest. ferry: each
// pre-copy iteration's dirty_rate but iteration 0's and that of a pass
// cut short for the stop-and-copy (its rate counts only the moments
// between the cut and the pause); QEMU:
// ram.dirty-pages-rate × 4 KiB from the polls, but the value measured
// over the first pass (QEMU measures it over at least a second between
// two dirty-bitmap syncs). The first pass is left out because it is long:
// the pages of a small working set all get dirty during it, which
// understates the rate.
type DirtyRates struct {
	First  float64 `json:"first"`
	Lowest float64 `json:"lowest"`
}

// add counts one measured rate (0: none).
func (d *DirtyRates) add(rate float64) *DirtyRates {
	if rate <= 0 {
		return d
	}
	if d == nil {
		return &DirtyRates{First: rate, Lowest: rate}
	}
	d.Lowest = min(d.Lowest, rate)
	return d
}

// ferryDirtyRates: from the pre-copy iterations (the stop-and-copy pass
// has none).
func ferryDirtyRates(its []IterStat) *DirtyRates {
	var d *DirtyRates
	for _, it := range its {
		if !it.StopAndCopy && it.Iteration > 0 && (it.PagesLeft == nil || *it.PagesLeft == 0) {
			d = d.add(it.DirtyRate)
		}
	}
	return d
}

// maxThrottle is the highest throttle of ferry's iterations.
func maxThrottle(its []IterStat) int {
	m := 0
	for _, it := range its {
		m = max(m, it.ThrottlePct)
	}
	return m
}

// writesLow records the lowest rate the guest's writer reported (its
// FERRY-DIRTY lines, each the average of the ~5 s before it) from the
// start of the migration until 5 s after its end (so that the report
// whose interval ends just after the migration counts), on the source
// (after line srcFrom) and on the destination. A run with no such line
// keeps GuestWritesLow nil.
func (r *Run) writesLow(src *vm, srcFrom int, dst *vm) {
	t0 := r.t0
	if t0.IsZero() {
		return // no migration started
	}
	end := t0.Add(time.Duration(r.WallSeconds*float64(time.Second)) + 5*time.Second)
	low := -1
	scan := func(v *vm, from int) {
		if v == nil {
			return
		}
		v.p.mu.Lock()
		defer v.p.mu.Unlock()
		for _, l := range v.p.lines[min(max(from, 0), len(v.p.lines)):] {
			if l.t.Before(t0) || l.t.After(end) {
				continue
			}
			if m := reDirty.FindStringSubmatch(l.s); m != nil {
				n, _ := strconv.Atoi(m[1])
				if low < 0 || n < low {
					low = n
				}
			}
		}
	}
	scan(src, srcFrom)
	if dst != src {
		scan(dst, 0)
	}
	if low >= 0 {
		r.GuestWritesLow = &low
	}
}

// qemuOutrun follows a QEMU migration's throttle and post-copy switch
// through its query-migrate polls.
type qemuOutrun struct {
	sys      system
	total    uint64 // the guest's pages
	throttle int    // highest cpu-throttle-percentage seen
	dirty    *DirtyRates
	rate0    float64 // QEMU's first dirty-pages-rate (over the first pass)
	rateNew  bool    // a later one came
	tried    bool    // migrate-start-postcopy sent
	asked    bool    // and accepted
	askedAt  float64 // when, since the migrate command
	seen     bool    // a poll saw it in post-copy
}

// poll looks at one query-migrate answer, secs after the migrate command:
// it notes the throttle, and with postcopy-ram it switches to post-copy
// once the first pass is done (as many pages sent, normal or zero, as the
// guest has; as ferry --postcopy switches after its first iteration) if
// the migration is still running then.
func (o *qemuOutrun) poll(q *qmpConn, info *migInfo, secs float64) error {
	o.throttle = max(o.throttle, info.CPUThrottle)
	if info.RAM != nil && info.RAM.DirtyPagesRate > 0 {
		rate := float64(info.RAM.DirtyPagesRate) * 4096
		switch {
		case o.rate0 == 0:
			o.rate0 = rate
		case o.rateNew || rate != o.rate0:
			o.rateNew = true
			o.dirty = o.dirty.add(rate)
		}
	}
	o.seen = o.seen || strings.HasPrefix(info.Status, "postcopy")
	if !o.sys.qemuPostcopy || o.tried || info.Status != "active" || info.RAM == nil ||
		uint64(info.RAM.Normal+info.RAM.Duplicate) < o.total {
		return nil
	}
	o.tried = true
	if _, err := q.cmd("migrate-start-postcopy", nil); err != nil {
		return err
	}
	o.asked, o.askedAt = true, secs
	return nil
}

// switched reports whether QEMU went to post-copy: asked to, it may still
// complete in pre-copy (when what is left fits the downtime budget at its
// next look, as on a fast link), and then it sent nothing after a switch.
func (o *qemuOutrun) switched(info *migInfo) bool {
	return o.asked && (o.seen || info.RAM != nil && (info.RAM.PostcopyBytes > 0 || info.RAM.PostcopyRequests > 0))
}

// finish records the throttle and the post-copy phase of a QEMU run.
func (o *qemuOutrun) finish(r *Run, info *migInfo) {
	r.ThrottleMaxPct = o.throttle
	r.DirtyRates = o.dirty
	if !o.sys.qemuPostcopy {
		return
	}
	pc := &PostcopyRun{Switched: o.switched(info)}
	if pc.Switched {
		pc.SwitchSeconds = o.askedAt
		pc.Seconds = r.TotalSeconds - o.askedAt
		if r.DowntimeMS != nil {
			pc.Seconds -= *r.DowntimeMS / 1000
		}
		pc.Seconds = max(pc.Seconds, 0)
		if info.RAM != nil {
			pc.Requests, pc.Bytes = info.RAM.PostcopyRequests, info.RAM.PostcopyBytes
		}
	}
	r.Postcopy = pc
}

// outrunLine is the run's line of throttle, guest write rate and
// post-copy figures ("" if it has none of them).
func (r *Run) outrunLine() string {
	var parts []string
	if r.ThrottleMaxPct > 0 {
		parts = append(parts, fmt.Sprintf("throttle up to %d%%", r.ThrottleMaxPct))
	}
	if r.GuestWritesLow != nil {
		parts = append(parts, fmt.Sprintf("guest writes %d/s before, lowest report %d/s during", r.GuestWritesPerS, *r.GuestWritesLow))
	}
	if d := r.DirtyRates; d != nil {
		parts = append(parts, fmt.Sprintf("dirty rate (VMM) %.1f MiB/s first, %.1f lowest", d.First/(1<<20), d.Lowest/(1<<20)))
	}
	if pc := r.Postcopy; pc != nil && !pc.Switched {
		parts = append(parts, "post-copy: no switch (pre-copy converged first)")
	} else if pc != nil {
		s := fmt.Sprintf("post-copy: switch at %.2f s, last page %.2f s after the start there", pc.SwitchSeconds, pc.Seconds)
		if pc.FaultMedianUS != nil {
			s += fmt.Sprintf(", %d pages missing (%d pushed, %d on request), fault service median %.0f us, p99 %.0f us",
				pc.PagesMissing, pc.PagesPushed, pc.PagesServed, *pc.FaultMedianUS, *pc.FaultP99US)
		} else {
			s += fmt.Sprintf(", %d page requests, %.1f MiB after the switch", pc.Requests, float64(pc.Bytes)/(1<<20))
		}
		if pc.DowntimeParts != "" {
			s += "; downtime: " + pc.DowntimeParts
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, "; ")
}
