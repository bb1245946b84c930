package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"
)

// legend explains the columns the tables below it add to those of
// BENCHMARKS.md's table of measures.
const legend = "Legend: **1st pass** = until the sender had sent as many pages (whole, zero, delta, XBZRLE) as the guest has, " +
	"interpolated between ferry's iteration ends (bytes scaled to the wire) or QEMU's 50 ms polls (the source veth's tx count at each). " +
	"**after 1st pass** = the rest of the wire bytes and of the total time: where the digest filter, delta entries and XBZRLE act " +
	"(a run that gave up counts all it sent). **saved** (ferry's --stats-json): false dirty = pages skipped × 4 KiB; " +
	"delta = DELTA pages × 4 KiB − their bytes of blocks; compression = what zstd saved on the records it compressed. " +
	"ferry-no-delta: `--no-delta`; ferry-no-compress: `--compress off`; ferry-zstd: `--compress zstd`; " +
	"qemu-multifd-zstd: multifd, 2 channels, zstd, on both sides. **RAM hash equal**: ferry's hash of guest RAM " +
	"on the destination before the start (after post-copy: once every page arrived) equals the paused source's.\n\n" +
	"Guests that write faster than the link: ferry's default (system ferry) has auto-converge on; " +
	"ferry-no-auto-converge: `--no-auto-converge` (plain pre-copy); ferry-postcopy: `--postcopy` (switch after the first pass " +
	"unless pre-copy converged by then); qemu-auto-converge: capability auto-converge (QEMU's throttle defaults: 20%, +10%, at most 99%); " +
	"qemu-postcopy: capability postcopy-ram on both sides, `max-postcopy-bandwidth` = the cap, `migrate-start-postcopy` at the first poll " +
	"after the first pass (as many pages sent as the guest has) while the migration still runs. **converged** `post-copy`: it finished " +
	"in post-copy; total s then runs to the last page on the destination, downtime is the switch-over's (as defined above for each peer). " +
	"**max throttle %**: ferry's highest `throttle_pct`, QEMU's highest `cpu-throttle-percentage`. **guest writes/s**: the writer's " +
	"FERRY-DIRTY reports (each the average of ~5 s): the last before the migration, the lowest from its start to 5 s after its end. " +
	"**dirty MiB/s (VMM)**: the guest's dirty rate (distinct pages) as its VMM measured it after the first pass (ferry: each " +
	"iteration's `dirty_rate`, but not that of a pass cut short for the stop-and-copy; QEMU: `dirty-pages-rate` × 4 KiB): the first measurement (unthrottled) and the lowest. **pages missing**: at ferry's switch, then pushed / sent " +
	"on request; QEMU 7.2 reports only its page requests. **fault service**: on ferry's destination, from a vCPU's first wait " +
	"for a page to the page in place (QEMU has no such figure)."

// savingsTable lists, per ferry run, what each mechanism kept off the wire.
func savingsTable(w io.Writer, runs []*Run) {
	var rows []*Run
	for _, r := range runs {
		if r.Savings != nil && r.Repeat <= 1 { // of repeated runs, the first
			rows = append(rows, r)
		}
	}
	if len(rows) == 0 {
		return
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "What ferry's mechanisms saved (MiB, from --stats-json; a run that gave up: from its iteration lines):")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| workload | system | cap MiB/s | MiB on the wire | false dirty skipped | delta: saved (pages) | compression: saved in iteration 0 | compression: saved later |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|")
	for _, r := range rows {
		v := r.Savings
		fmt.Fprintf(w, "| %s | %s | %s | %.1f | %s | %s (%d) | %s | %s |\n", r.Workload, r.System, capName(r.MaxBandwidthMiBs),
			float64(r.BytesTotal)/(1<<20), mibs(v.FalseDirtyBytes), mibs(v.DeltaSaved), v.DeltaPages,
			mibs(v.CompressSavedIter0), mibs(v.CompressSavedLater))
	}
}

// firstPassTable compares the first pass, where compression acts, on the
// workloads run with QEMU's multifd + zstd.
func firstPassTable(w io.Writer, keys []key, get func(key, string) *Run) {
	var ks []key
	for _, k := range keys {
		if get(k, "qemu-multifd-zstd") != nil {
			ks = append(ks, k)
		}
	}
	if len(ks) == 0 {
		return
	}
	first := func(r *Run) string {
		if r == nil || r.FirstPass == nil {
			return "n/a"
		}
		return mibs(r.FirstPass.Bytes)
	}
	secs := func(r *Run) string {
		if r == nil {
			return "n/a"
		}
		return fmt.Sprintf("%.2f", r.TotalSeconds)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "The first pass against QEMU with multifd + zstd (MiB on the wire; total s):")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| workload | cap MiB/s | 1st pass: ferry / ferry-no-compress / qemu / qemu-multifd-zstd | 1st pass bytes ferry/multifd-zstd | total s: ferry / qemu-multifd-zstd | time ferry/multifd-zstd |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|")
	for _, k := range ks {
		f, n, q, m := get(k, "ferry"), get(k, "ferry-no-compress"), get(k, "qemu"), get(k, "qemu-multifd-zstd")
		fmt.Fprintf(w, "| %s | %s | %s / %s / %s / %s | %s | %s / %s | %s |\n", k.wl, capName(k.cap),
			first(f), first(n), first(q), first(m), ratio(f, m, firstBytesOf), secs(f), secs(m), ratio(f, m, timeOf))
	}
}

// downtimeBudgetMS is the downtime budget the tally and the targets
// count against (migbench's default -downtime).
const downtimeBudgetMS = 300

// finishedCell says how a migration ended: pre-copy converged, post-copy,
// or not at all.
func finishedCell(r *Run) string {
	switch {
	case r.Postcopy != nil && r.Postcopy.Switched && r.Migrated:
		return "post-copy"
	case r.Migrated && !r.Converged:
		return "forced"
	}
	return yesNo(r.Converged)
}

// outrunTable lists the runs on the rewrite workload, and every other run
// that throttled its guest or switched to post-copy.
func outrunTable(w io.Writer, runs []*Run) {
	var rows []*Run
	for _, r := range runs {
		if r.Workload == "rewrite" || r.ThrottleMaxPct > 0 || r.Postcopy != nil {
			rows = append(rows, r)
		}
	}
	if len(rows) == 0 {
		return
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Guests that write faster than the link: auto-converge and post-copy (the rewrite workload, and every other run that throttled its guest or switched to post-copy):")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| workload | system | cap MiB/s | finished | total s | downtime ms | counter gap ms | MiB on the wire | max throttle % | guest writes/s: before / lowest during | dirty MiB/s (VMM): first / lowest | post-copy: switch at s / pages until s | pages missing: pushed / on request | fault service median / p99 µs | check |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, r := range rows {
		throttle := "-"
		if r.ThrottleMaxPct > 0 {
			throttle = strconv.Itoa(r.ThrottleMaxPct)
		}
		low, dirty := "-", "-"
		if r.GuestWritesLow != nil {
			low = strconv.Itoa(*r.GuestWritesLow)
		}
		if d := r.DirtyRates; d != nil {
			dirty = fmt.Sprintf("%.1f / %.1f", d.First/(1<<20), d.Lowest/(1<<20))
		}
		sw, pages, fault := "-", "-", "-"
		if pc := r.Postcopy; pc != nil && !pc.Switched {
			sw = "no switch"
		} else if pc != nil {
			sw = fmt.Sprintf("%.2f / %.2f", pc.SwitchSeconds, pc.Seconds)
			if pc.FaultMedianUS != nil {
				pages = fmt.Sprintf("%d: %d / %d", pc.PagesMissing, pc.PagesPushed, pc.PagesServed)
				fault = fmt.Sprintf("%.0f / %.0f", *pc.FaultMedianUS, *pc.FaultP99US)
			} else {
				pages = fmt.Sprintf("%d requests", pc.Requests)
			}
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %.2f | %s | %s | %.1f | %s | %d / %s | %s | %s | %s | %s | %s |\n", r.Workload, r.System,
			capName(r.MaxBandwidthMiBs), finishedCell(r), r.TotalSeconds, fmtp(r.DowntimeMS, "%.1f"), fmtp(r.CounterGapMS, "%.0f"),
			float64(r.BytesTotal)/(1<<20), throttle, r.GuestWritesPerS, low, dirty, sw, pages, fault, shortCheck(r))
	}
}

// outrunRatios compares ferry with QEMU on post-copy and on auto-converge,
// per workload and cap where both were run.
func outrunRatios(w io.Writer, keys []key, get func(key, string) *Run) {
	type pair struct{ name, ferry, qemu string }
	pairs := []pair{{"post-copy", "ferry-postcopy", "qemu-postcopy"}, {"auto-converge", "ferry", "qemu-auto-converge"}}
	var ks []key
	for _, k := range keys {
		for _, p := range pairs {
			if get(k, p.ferry) != nil && get(k, p.qemu) != nil {
				ks = append(ks, k)
				break
			}
		}
	}
	if len(ks) == 0 {
		return
	}
	both := func(f, q *Run, v func(*Run) float64, unit string) string {
		if f == nil || q == nil {
			return "n/a"
		}
		s := fmt.Sprintf("%.2f vs %.2f %s", v(f), v(q), unit)
		if f.Migrated && q.Migrated && v(q) > 0 {
			s = fmt.Sprintf("**%.2f** (%s)", v(f)/v(q), s)
		}
		return s
	}
	pair2 := func(f, q *Run, v func(*Run) *float64, format string) string {
		if f == nil || q == nil {
			return "n/a"
		}
		return fmtp(v(f), format) + " / " + fmtp(v(q), format)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "ferry against QEMU on the same mechanism (ratio ferry/QEMU in bold where both migrated; time: to the guest running on the destination with all its pages):")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| workload | cap MiB/s | mechanism | finished ferry / QEMU | total s ferry/QEMU | MiB on the wire ferry/QEMU | downtime ms ferry / QEMU | counter gap ms ferry / QEMU | max throttle % ferry / QEMU |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|")
	for _, k := range ks {
		for _, p := range pairs {
			f, q := get(k, p.ferry), get(k, p.qemu)
			if f == nil && q == nil {
				continue
			}
			fin, thr := "n/a", "n/a"
			if f != nil && q != nil {
				fin = finishedCell(f) + " / " + finishedCell(q)
				thr = fmt.Sprintf("%d / %d", f.ThrottleMaxPct, q.ThrottleMaxPct)
			}
			fmt.Fprintf(w, "| %s | %s | %s (%s vs %s) | %s | %s | %s | %s | %s | %s |\n", k.wl, capName(k.cap), p.name, p.ferry, p.qemu, fin,
				both(f, q, timeOf, "s"), both(f, q, func(r *Run) float64 { return bytesOf(r) / (1 << 20) }, "MiB"),
				pair2(f, q, func(r *Run) *float64 { return r.DowntimeMS }, "%.1f"),
				pair2(f, q, func(r *Run) *float64 { return r.CounterGapMS }, "%.0f"), thr)
		}
	}
}

// tally counts, per cap, the migrations of ferry's defaults (system
// ferry) that finished, and those within the downtime budget: one per
// workload (of repeated runs, the first).
func tally(w io.Writer, runs []*Run) {
	var caps []int
	byCap := map[int][]*Run{}
	for _, r := range runs {
		if r.System != "ferry" || r.Repeat > 1 || strings.HasPrefix(r.Check, "not measured") {
			continue
		}
		if byCap[r.MaxBandwidthMiBs] == nil {
			caps = append(caps, r.MaxBandwidthMiBs)
		}
		byCap[r.MaxBandwidthMiBs] = append(byCap[r.MaxBandwidthMiBs], r)
	}
	if len(caps) == 0 {
		return
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "ferry's defaults (system ferry: auto-converge on), the target being every migration finished within the %d ms downtime budget:\n\n", downtimeBudgetMS)
	for _, c := range caps {
		var finished, within int
		var notFinished, over []string
		for _, r := range byCap[c] {
			switch {
			case !r.Migrated || strings.HasPrefix(r.Check, "FAILED"):
				notFinished = append(notFinished, r.Workload)
			case r.DowntimeMS != nil && *r.DowntimeMS <= downtimeBudgetMS:
				finished++
				within++
			default:
				finished++
				over = append(over, fmt.Sprintf("%s (%s ms)", r.Workload, fmtp(r.DowntimeMS, "%.1f")))
			}
		}
		n := len(byCap[c])
		fmt.Fprintf(w, "- cap %s MiB/s: **%d of %d finished**, **%d of %d within %d ms** of downtime", capName(c), finished, n, within, n, downtimeBudgetMS)
		if len(notFinished) > 0 {
			fmt.Fprintf(w, "; not finished: %s", strings.Join(notFinished, ", "))
		}
		if len(over) > 0 {
			fmt.Fprintf(w, "; over the budget: %s", strings.Join(over, ", "))
		}
		fmt.Fprintln(w)
	}
}
