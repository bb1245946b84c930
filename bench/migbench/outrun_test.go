package main

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestOutrunReport builds the tables of the rewrite workload and the
// tally of ferry's defaults from made-up runs, and checks what they say.
func TestOutrunReport(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	n := func(v int) *int { return &v }
	runs := []*Run{
		{Workload: "mix", System: "ferry", MaxBandwidthMiBs: 32, Migrated: true, Converged: true, DowntimeMS: f(8.5), Check: "ok", TotalSeconds: 1.9},
		{Workload: "memcached", System: "ferry", MaxBandwidthMiBs: 32, Migrated: true, Converged: true, DowntimeMS: f(350), Check: "ok",
			ThrottleMaxPct: 40, TotalSeconds: 6},
		{Workload: "random", System: "ferry", MaxBandwidthMiBs: 32, Check: "not converged: aborted at the bound", TotalSeconds: 30.1},
		{Workload: "rewrite", System: "ferry", MaxBandwidthMiBs: 32, Migrated: true, Converged: true, DowntimeMS: f(120), Check: "ok",
			ThrottleMaxPct: 90, TotalSeconds: 12, BytesTotal: 300 << 20, GuestWritesPerS: 20000, GuestWritesLow: n(3100),
			DirtyRates: ferryDirtyRates([]IterStat{{DirtyRate: 4 << 20}, {Iteration: 1, DirtyRate: 32 << 20}, {Iteration: 2, DirtyRate: 8 << 20},
				{Iteration: 3, DirtyRate: 16 << 20}, {Iteration: 4, DirtyRate: 1 << 20, PagesLeft: u64p("100")},
				{Iteration: 5, StopAndCopy: true}})},
		{Workload: "rewrite", System: "qemu-auto-converge", MaxBandwidthMiBs: 32, Migrated: true, Converged: true, DowntimeMS: f(200),
			Check: "ok", ThrottleMaxPct: 99, TotalSeconds: 24, BytesTotal: 600 << 20},
		{Workload: "rewrite", System: "ferry-postcopy", MaxBandwidthMiBs: 32, Migrated: true, DowntimeMS: f(60), Check: "ok", TotalSeconds: 2.5, CounterGapMS: f(140),
			BytesTotal: 80 << 20, Postcopy: &PostcopyRun{Switched: true, SwitchSeconds: 1.3, Seconds: 1.1, PagesMissing: 8000,
				PagesPushed: 7000, PagesServed: 1000, FaultMedianUS: f(700), FaultP99US: f(5000)}},
		{Workload: "rewrite", System: "qemu-postcopy", MaxBandwidthMiBs: 32, Migrated: true, DowntimeMS: f(30), Check: "ok", TotalSeconds: 5, CounterGapMS: f(330),
			BytesTotal: 90 << 20, Postcopy: &PostcopyRun{Switched: true, SwitchSeconds: 1.4, Seconds: 3.5, Requests: 900}},
		{Workload: "rewrite", System: "qemu-postcopy", MaxBandwidthMiBs: 0, Migrated: true, Converged: true, DowntimeMS: f(5), Check: "ok",
			TotalSeconds: 0.1, Postcopy: &PostcopyRun{}},
	}
	out := reportOf(t, runs)
	for _, want := range []string{
		"| rewrite | ferry-postcopy | 32 | post-copy | 2.50 | 60.0 | 140 | 80.0 | - | 0 / - | - | 1.30 / 1.10 | 8000: 7000 / 1000 | 700 / 5000 |",
		"| rewrite | qemu-postcopy | 32 | post-copy | 5.00 | 30.0 | 330 | 90.0 | - | 0 / - | - | 1.40 / 3.50 | 900 requests | - |",
		"| rewrite | qemu-postcopy | unl | yes |",
		"no switch",
		"| rewrite | ferry | 32 | yes | 12.00 | 120.0 | - | 300.0 | 90 | 20000 / 3100 | 32.0 / 8.0 |",
		"| memcached | ferry | 32 | yes | 6.00 | 350.0 | - | 0.0 | 40 |",
		"| rewrite | 32 | post-copy (ferry-postcopy vs qemu-postcopy) | post-copy / post-copy | **0.50** (2.50 vs 5.00 s) | **0.89** (80.00 vs 90.00 MiB) | 60.0 / 30.0 | 140 / 330 | 0 / 0 |",
		"| rewrite | 32 | auto-converge (ferry vs qemu-auto-converge) | yes / yes | **0.50** (12.00 vs 24.00 s) | **0.50** (300.00 vs 600.00 MiB) | 120.0 / 200.0 | - / - | 90 / 99 |",
		"- cap 32 MiB/s: **3 of 4 finished**, **2 of 4 within 300 ms** of downtime; not finished: random; over the budget: memcached (350.0 ms)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the report lacks %q:\n%s", want, out)
		}
	}
	// The mix row is not one of a guest that outran the link.
	_, section, _ := strings.Cut(out, "Guests that write faster than the link: auto-converge and post-copy (")
	section, _, _ = strings.Cut(section, "Ratios ferry (default)")
	if strings.Contains(section, "| mix |") || !strings.Contains(section, "| memcached | ferry | 32 |") {
		t.Errorf("the mix run is in the table of guests that outrun the link:\n%s", out)
	}
}

// TestFerryPostcopyStats reads the post-copy part of ferry migrate
// --stats-json.
func TestFerryPostcopyStats(t *testing.T) {
	js := `{"total_seconds": 3.0, "downtime_ms": 100, "postcopy": true, "pages_missing": 9000, "pages_pushed": 8500,
		"pages_served": 500, "postcopy_seconds": 1.5, "postcopy_stats": {"pages_requested": 500, "fault_median_us": 650.5,
		"fault_p99_us": 4200}, "downtime_parts": {"pause_ms": 1, "sync_ms": 2, "pages_ms": 3, "state_ms": 4, "flush_ms": 5,
		"ready_ms": 6, "commit_ms": 7}}`
	var st ferryPostcopy
	if err := json.Unmarshal([]byte(js), &st); err != nil {
		t.Fatal(err)
	}
	d := 100.0
	r := &Run{TotalSeconds: 3, DowntimeMS: &d}
	pc := st.run(r)
	if !pc.Switched || pc.PagesMissing != 9000 || pc.PagesPushed != 8500 || pc.PagesServed != 500 || pc.Seconds != 1.5 ||
		*pc.FaultMedianUS != 650.5 || *pc.FaultP99US != 4200 {
		t.Errorf("post-copy %+v", pc)
	}
	if pc.SwitchSeconds < 1.39 || pc.SwitchSeconds > 1.41 {
		t.Errorf("switch at %.3f s, want 3 - 1.5 - 0.1 = 1.4", pc.SwitchSeconds)
	}
	if want := "pause 1.0, dirty-log sync 2.0, last pages 3.0, state 4.0, flush 5.0, destination restore 6.0, commit 7.0 ms"; pc.DowntimeParts != want {
		t.Errorf("downtime parts %q, want %q", pc.DowntimeParts, want)
	}
	line := "iter 5: dirty 8000, ..., dirty rate 40.5 MiB/s, guest throttled 50%"
	if m := reFerryThrottle.FindStringSubmatch(line); m == nil || m[1] != "50" {
		t.Errorf("throttle not read: %v", m)
	}
	if m := reFerryDirtyRate.FindStringSubmatch(line); m == nil || m[1] != "40.5" {
		t.Errorf("dirty rate not read: %v", m)
	}
}

// TestQemuOutrun follows made-up query-migrate answers: the highest
// throttle, the dirty rates after the first pass, and when a post-copy
// switch counts as one.
func TestQemuOutrun(t *testing.T) {
	info := func(status string, throttle int, rate, postcopyBytes int64) *migInfo {
		m := &migInfo{Status: status, CPUThrottle: throttle}
		m.RAM = &migRAM{DirtyPagesRate: rate, PostcopyBytes: postcopyBytes}
		return m
	}
	sys, _ := findSystem("qemu-auto-converge")
	o := &qemuOutrun{sys: sys, total: 1 << 20}
	for _, m := range []*migInfo{info("active", 0, 0, 0), info("active", 0, 100, 0), info("active", 20, 100, 0),
		info("active", 30, 50, 0), info("active", 40, 80, 0), info("completed", 0, 80, 0)} {
		if err := o.poll(nil, m, 0); err != nil {
			t.Fatal(err)
		}
	}
	r := &Run{}
	o.finish(r, info("completed", 0, 80, 0))
	if r.ThrottleMaxPct != 40 || r.DirtyRates == nil || r.DirtyRates.First != 50*4096 || r.DirtyRates.Lowest != 50*4096 || r.Postcopy != nil {
		t.Errorf("throttle %d, dirty rates %+v, post-copy %+v", r.ThrottleMaxPct, r.DirtyRates, r.Postcopy)
	}

	sys, _ = findSystem("qemu-postcopy")
	for _, c := range []struct {
		asked, seen bool
		bytes       int64
		want        bool
	}{{false, false, 0, false}, {true, false, 0, false}, {true, true, 0, true}, {true, false, 4096, true}} {
		o := &qemuOutrun{sys: sys, asked: c.asked, seen: c.seen, askedAt: 1.5}
		r := &Run{TotalSeconds: 3}
		o.finish(r, info("completed", 0, 0, c.bytes))
		if r.Postcopy == nil || r.Postcopy.Switched != c.want {
			t.Errorf("asked %v, seen %v, %d bytes after: post-copy %+v, want switched %v", c.asked, c.seen, c.bytes, r.Postcopy, c.want)
		} else if c.want && r.Postcopy.Seconds != 1.5 {
			t.Errorf("post-copy phase %.2f s, want 3 - 1.5", r.Postcopy.Seconds)
		}
	}
}

// reportOf is the report of runs, their workloads looked up as a run's
// are.
func reportOf(t *testing.T, runs []*Run) string {
	t.Helper()
	for _, r := range runs {
		r.wl, _ = findWorkload(r.Workload)
	}
	var b strings.Builder
	report(&b, runs, t.TempDir())
	return b.String()
}
