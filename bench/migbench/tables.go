package main

import (
	"fmt"
	"io"
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
	"on the destination before the start equals the paused source's."

// savingsTable lists, per ferry run, what each mechanism kept off the wire.
func savingsTable(w io.Writer, runs []*Run) {
	var rows []*Run
	for _, r := range runs {
		if r.Savings != nil {
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
