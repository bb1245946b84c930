package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
)

// The big workload: a 1 GiB guest whose writer fills 512 MiB and then
// idles, on an unlimited link. ferry on one connection and on
// --connections N, TLS off and on, against QEMU's default migration,
// multifd (2 channels) and TLS; and system ferry -repeats times in a row,
// for its downtimes and where they went.

const (
	bigWorkload = "big"
	// bigDowntimeMS is the downtime target of the big guest's migrations.
	bigDowntimeMS = 50
)

// bigTarget is one ratio the big workload is judged on: ferry's total
// time over QEMU's, at most limit.
type bigTarget struct {
	ferry, qemu string
	limit       float64
}

var bigTargets = []bigTarget{
	{"ferry", "qemu", 0.5}, {"ferry-conns", "qemu", 0.5},
	{"ferry", "qemu-multifd", 1.0}, {"ferry-conns", "qemu-multifd", 1.0},
	{"ferry-tls", "qemu-tls", 0.7}, {"ferry-conns-tls", "qemu-tls", 0.7},
}

// downtimeParts lists ferry's downtime_parts in the order they pass, with
// the names ferry migrate prints.
var downtimeParts = []struct{ key, name string }{{"pause_ms", "pause"}, {"sync_ms", "dirty-log sync"},
	{"pages_ms", "last pages"}, {"state_ms", "state"}, {"flush_ms", "flush"},
	{"ready_ms", "destination restore"}, {"commit_ms", "commit"}}

// hashWait is how long the destination's guest waited for ferry's RAM
// hash (--memory-hash, the check's cost, in ferry's downtime and total
// time), 0 if it did not say.
func hashWait(r *Run) float64 {
	if r.HashWaitMS == nil {
		return 0
	}
	return *r.HashWaitMS
}

// checkedTime and checkedDowntime are a run's total time and downtime
// without the RAM hash's wait: what they would be without the check.
func checkedTime(r *Run) float64 { return r.TotalSeconds - hashWait(r)/1000 }

func checkedDowntime(r *Run) *float64 {
	if r.DowntimeMS == nil {
		return nil
	}
	d := *r.DowntimeMS - hashWait(r)
	return &d
}

// bigRuns are the big workload's runs but the repeats after the first.
func bigRuns(runs []*Run) []*Run {
	var rows []*Run
	for _, r := range runs {
		if r.Workload == bigWorkload && r.Repeat <= 1 {
			rows = append(rows, r)
		}
	}
	return rows
}

// bigTables prints the big workload's table, its ratios against the
// targets, and the downtimes of the repeated runs.
func bigTables(w io.Writer, runs []*Run) {
	rows := bigRuns(runs)
	if len(rows) == 0 {
		return
	}
	bySys := map[string]*Run{}
	for _, r := range rows {
		if bySys[r.System] == nil {
			bySys[r.System] = r
		}
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "The 1 GiB guest (`%s`: %s, 1 GiB), unlimited link: ferry on one connection and on several, TLS off and on, against QEMU's default migration, multifd and TLS (one run each; ferry's first of its repeated runs):\n", bigWorkload, rows[0].GuestParams)
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| system | connections | TLS | finished | total s | downtime ms | RAM hash wait ms | total s without it | downtime ms without it | counter gap ms | MiB on the wire | 1st pass s | check |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, r := range rows {
		if strings.HasPrefix(r.Check, "not measured") {
			fmt.Fprintf(w, "| %s | | | | | | | | | | | | %s |\n", r.System, strings.ReplaceAll(r.Check, "|", "/"))
			continue
		}
		first := "-"
		if r.FirstPass != nil {
			first = fmt.Sprintf("%.2f", r.FirstPass.Seconds)
		}
		conns := "1"
		if r.Connections > 0 {
			conns = fmt.Sprint(r.Connections)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %.2f | %s | %s | %.2f | %s | %s | %.1f | %s | %s |\n", r.System, conns, onOff(r.TLS),
			finishedCell(r), r.TotalSeconds, fmtp(r.DowntimeMS, "%.1f"), fmtp(r.HashWaitMS, "%.1f"), checkedTime(r),
			fmtp(checkedDowntime(r), "%.1f"), fmtp(r.CounterGapMS, "%.0f"), float64(r.BytesTotal)/(1<<20), first, shortCheck(r))
	}

	fmt.Fprintln(w)
	fmt.Fprintln(w, "Targets of the 1 GiB guest: ferry's total time / QEMU's (ferry: to DONE-ACK, the guest running on the destination, without the wait for the RAM hash of the check; QEMU: `total-time`, to the end of sending):")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| ferry | QEMU | total s ferry / QEMU | time ferry/QEMU | target | result | MiB on the wire ferry/QEMU |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
	usable := func(r *Run) bool {
		return r != nil && r.Migrated && !strings.HasPrefix(r.Check, "FAILED") && !strings.HasPrefix(r.Check, "not measured")
	}
	for _, t := range bigTargets {
		f, q := bySys[t.ferry], bySys[t.qemu]
		if f == nil && q == nil {
			continue
		}
		target := fmt.Sprintf("<= %.1fx", t.limit)
		var result string
		switch {
		case f == nil || q == nil:
			result = "not run"
		case !usable(f):
			result = "not measured: " + t.ferry + ": " + strings.TrimPrefix(shortCheck(f), "not measured: ")
		case !usable(q):
			result = "not measured: " + t.qemu + ": " + strings.TrimPrefix(shortCheck(q), "not measured: ")
		}
		if result != "" {
			fmt.Fprintf(w, "| %s | %s | | | %s | %s | |\n", t.ferry, t.qemu, target, strings.ReplaceAll(result, "|", "/"))
			continue
		}
		x := checkedTime(f) / timeOf(q)
		verdict := "met"
		if x > t.limit {
			verdict = "**MISSED**"
		}
		fmt.Fprintf(w, "| %s | %s | %.2f / %.2f | **%.2f** | %s | %s | %s |\n", t.ferry, t.qemu, checkedTime(f), timeOf(q), x,
			target, verdict, ratio(f, q, bytesOf))
	}
	repeatTable(w, runs)
}

// repeatTable lists the downtimes of system ferry's repeated runs on the
// big workload, with ferry's account of each.
func repeatTable(w io.Writer, runs []*Run) {
	var reps []*Run
	for _, r := range runs {
		if r.Workload == bigWorkload && r.System == "ferry" {
			reps = append(reps, r)
		}
	}
	if len(reps) == 0 {
		return
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "Downtime of the 1 GiB guest, ferry (one connection, TLS off), %d migrations in a row between the two hosts (target: each <= %d ms without the wait for the check's RAM hash, which falls in commit; the parts are ferry's `downtime_parts`, ms):\n", len(reps), bigDowntimeMS)
	fmt.Fprintln(w)
	head := "| run | from -> to | total s | downtime ms | RAM hash wait ms | downtime ms without it |"
	sep := "|---|---|---|---|---|---|"
	for _, p := range downtimeParts {
		head += " " + p.name + " |"
		sep += "---|"
	}
	fmt.Fprintln(w, head+" counter gap ms | MiB on the wire | check | <= 50 ms |")
	fmt.Fprintln(w, sep+"---|---|---|---|")
	var within, measured int
	var dts []float64
	for i, r := range reps {
		n := i + 1
		if r.Repeat > 0 {
			n = r.Repeat
		}
		ok := "-"
		if d := checkedDowntime(r); d != nil && r.Migrated && !strings.HasPrefix(r.Check, "FAILED") {
			measured++
			dts = append(dts, *d)
			ok = "no"
			if *d <= bigDowntimeMS {
				ok = "yes"
				within++
			}
		}
		line := fmt.Sprintf("| %d | %s -> %s | %.2f | %s | %s | %s |", n, r.From, r.To, r.TotalSeconds, fmtp(r.DowntimeMS, "%.1f"),
			fmtp(r.HashWaitMS, "%.1f"), fmtp(checkedDowntime(r), "%.1f"))
		for _, p := range downtimeParts {
			v, has := r.DowntimeParts[p.key]
			if has {
				line += fmt.Sprintf(" %.1f |", v)
			} else {
				line += " - |"
			}
		}
		fmt.Fprintf(w, "%s %s | %.1f | %s | %s |\n", line, fmtp(r.CounterGapMS, "%.0f"), float64(r.BytesTotal)/(1<<20), shortCheck(r), ok)
	}
	fmt.Fprintln(w)
	if len(dts) == 0 {
		fmt.Fprintf(w, "- downtime <= %d ms: not measured (no run migrated)\n", bigDowntimeMS)
		return
	}
	sort.Float64s(dts)
	verdict := "met"
	if within < len(reps) {
		verdict = "**MISSED**"
	}
	med := dts[len(dts)/2]
	if len(dts)%2 == 0 {
		med = (dts[len(dts)/2-1] + med) / 2
	}
	fmt.Fprintf(w, "- downtime (without the RAM hash wait) <= %d ms in each run: %s: %d of %d runs (%d measured); min %.1f, median %.1f, max %.1f ms\n",
		bigDowntimeMS, verdict, within, len(reps), measured, dts[0], med, dts[len(dts)-1])
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}
