package main

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"text/tabwriter"
	"time"
)

// Targets the results are held against (printed, not enforced).
const (
	targetVsCopy   = 0.80 // plain TCP, digest filter on: of the TCP copy's rate
	targetVsAES    = 0.70 // TLS: of AES-128-GCM's seal rate on one core
	targetOverhead = 1.0  // percent of guest memory, plus a fixed amount
	targetScaling  = 1.10 // time per GiB, largest size over smallest
)

const (
	gbps        = 1e9 // GB/s are decimal, as in BENCHMARKS.md
	bytesPerGiB = 1 << 30
	bytesPerMiB = 1 << 20
	percent     = 100.0
)

// commit is the ferry commit built (make bench-scale sets it, as make
// build does for ferry); without it, the build's VCS stamp if any.
var commit string

// Report is everything one run measured (the -json output).
type Report struct {
	Started   string `json:"started_utc"`
	Command   string `json:"command"`
	GoVersion string `json:"go_version"`
	Commit    string `json:"commit"`
	NumCPU    int    `json:"nproc"`
	LoadStart string `json:"loadavg_start"`
	LoadEnd   string `json:"loadavg_end"`
	MixNote   string `json:"mix"`
	Digest    bool   `json:"digest_filter"`
	Resume    string `json:"receiver_resume_window"`
	Prefault  bool   `json:"receiver_prefault"`
	// The references on one core.
	MemcpyGBps float64 `json:"memcpy_GBps"`
	AESGCMGBps float64 `json:"aes_128_gcm_seal_GBps"`
	Rows       []*Row  `json:"runs"`
	Scaling    []Trend `json:"scaling,omitempty"`
	Overhead   []Fit   `json:"overhead_fit,omitempty"`
}

// Row is one measurement: a migration (Kind "ferry") or the plain copy it
// is compared with ("copy").
type Row struct {
	Kind     string  `json:"kind"`
	SizeGiB  float64 `json:"size_gib"`
	Conns    int     `json:"conns"`
	TLS      bool    `json:"tls"`
	Compress string  `json:"compress,omitempty"`
	Seconds  float64 `json:"seconds"`
	// GBps is guest memory (the copy: the same bytes) per second.
	GBps      float64 `json:"guest_GBps"`
	WireBytes int64   `json:"wire_bytes"`
	WireGBps  float64 `json:"wire_GBps"`
	TLSSuite  string  `json:"tls_suite,omitempty"`
	Sender    Side    `json:"sender"`
	Receiver  Side    `json:"receiver"`
	// A migration against the copy of the same size, connections and TLS
	// mode, and (TLS) against AES-128-GCM on one core.
	CopyGBps float64 `json:"copy_GBps,omitempty"`
	VsCopy   float64 `json:"vs_copy,omitempty"`
	VsAES    float64 `json:"vs_aes_gcm,omitempty"`
	// The sender's account of a migration.
	Iterations        int    `json:"iterations,omitempty"`
	PagesZero         uint64 `json:"pages_zero,omitempty"`
	PagesSent         uint64 `json:"pages_sent,omitempty"`
	TableBytes        int64  `json:"sender_table_bytes,omitempty"`
	RecordsCompressed int    `json:"records_compressed,omitempty"`
	// Both sides' hashes of guest memory at the end (a run whose hashes
	// differ fails).
	SenderHash   string  `json:"sender_memory_hash,omitempty"`
	ReceiverHash string  `json:"receiver_memory_hash,omitempty"`
	Mix          Mix     `json:"mix"`
	FillSeconds  float64 `json:"fill_seconds"`
}

// Side is one process's usage.
type Side struct {
	MaxRSS        uint64  `json:"max_rss"`
	GuestResident uint64  `json:"guest_resident"`
	Overhead      int64   `json:"overhead"`     // MaxRSS - GuestResident
	OverheadPct   float64 `json:"overhead_pct"` // of guest memory
	CPUSeconds    float64 `json:"cpu_seconds"`
	UserSeconds   float64 `json:"user_seconds"`
	SysSeconds    float64 `json:"sys_seconds"`
	CPUPerGiB     float64 `json:"cpu_s_per_gib"`
}

// Trend is the time per GiB of one configuration at its smallest and its
// largest size.
type Trend struct {
	Config      string  `json:"config"`
	SmallGiB    float64 `json:"small_gib"`
	LargeGiB    float64 `json:"large_gib"`
	SmallPerGiB float64 `json:"small_s_per_gib"`
	LargePerGiB float64 `json:"large_s_per_gib"`
	Ratio       float64 `json:"ratio"`
}

// Fit is a side's overhead as fixed MiB + a share of guest memory,
// least squares over the sizes of one configuration.
type Fit struct {
	Config   string  `json:"config"`
	Side     string  `json:"side"`
	FixedMiB float64 `json:"fixed_mib"`
	Pct      float64 `json:"pct_of_guest"`
}

func newReport(c config) *Report {
	r := &Report{
		Started:   time.Now().UTC().Format("2006-01-02 15:04:05"),
		Command:   strings.Join(os.Args, " "),
		GoVersion: runtime.Version(),
		Commit:    "unknown commit",
		NumCPU:    runtime.NumCPU(),
		LoadStart: loadavg(),
		MixNote:   "runs of 1-16 pages, each zero (untouched), text-like or random with equal odds",
		Digest:    !c.noDigest,
		Resume:    c.resumeWindow.String(),
		Prefault:  c.prefault,
	}
	if commit != "" {
		r.Commit = "commit " + commit
	} else if bi, ok := debug.ReadBuildInfo(); ok {
		var rev, dirty string
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					dirty = "+dirty"
				}
			}
		}
		if len(rev) >= 7 {
			r.Commit = "commit " + rev[:7] + dirty
		}
	}
	return r
}

// loadavg is the first three fields of /proc/loadavg.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// add records one measurement; cp is the copy a migration is compared
// with (nil for a copy).
func (r *Report) add(f childFlags, p pair, cp *Row) *Row {
	size := float64(f.size)
	row := &Row{
		Kind:        "copy",
		SizeGiB:     size / bytesPerGiB,
		Conns:       f.conns,
		TLS:         f.tlsDir != "",
		Seconds:     p.send.Seconds,
		WireBytes:   p.send.Bytes,
		TLSSuite:    p.send.TLSSuite,
		Sender:      side(p.sendMaxRSS, p.send, size),
		Receiver:    side(p.recvMaxRSS, p.recv, size),
		FillSeconds: p.send.FillSeconds,
	}
	if p.send.Mix != nil {
		row.Mix = *p.send.Mix
	}
	if p.send.Seconds > 0 {
		row.GBps = size / p.send.Seconds / gbps
		row.WireGBps = float64(p.send.Bytes) / p.send.Seconds / gbps
	}
	if cp != nil {
		row.Kind, row.Compress = "ferry", f.compress
		row.CopyGBps = cp.GBps
		if cp.GBps > 0 {
			row.VsCopy = row.GBps / cp.GBps
		}
		if row.TLS && r.AESGCMGBps > 0 {
			row.VsAES = row.GBps / r.AESGCMGBps
		}
		row.Iterations, row.PagesZero, row.PagesSent = p.send.Iterations, p.send.PagesZero, p.send.PagesSent
		row.TableBytes, row.RecordsCompressed = p.send.TableBytes, p.send.Compressed
		row.SenderHash, row.ReceiverHash = p.send.Hash, p.recv.Hash
	}
	r.Rows = append(r.Rows, row)
	return row
}

func side(maxRSS uint64, res childResult, size float64) Side {
	s := Side{MaxRSS: maxRSS, GuestResident: res.GuestResident, CPUSeconds: res.CPUSeconds,
		UserSeconds: res.UserSeconds, SysSeconds: res.SysSeconds}
	s.Overhead = int64(maxRSS) - int64(res.GuestResident)
	s.OverheadPct = float64(s.Overhead) / size * percent
	s.CPUPerGiB = res.CPUSeconds / (size / bytesPerGiB)
	return s
}

// configName names a row's configuration, sizes aside.
func configName(row *Row) string {
	tls := "tcp"
	if row.TLS {
		tls = "tls"
	}
	s := fmt.Sprintf("%s %d conn %s", row.Kind, row.Conns, tls)
	if row.Kind == "ferry" {
		s += " compress " + row.Compress
	}
	return s
}

// finish computes the scaling and the overhead fits of every
// configuration measured at two sizes or more.
func (r *Report) finish() {
	r.LoadEnd = loadavg()
	groups := map[string][]*Row{}
	var order []string
	for _, row := range r.Rows {
		name := configName(row)
		if groups[name] == nil {
			order = append(order, name)
		}
		groups[name] = append(groups[name], row)
	}
	for _, name := range order {
		rows := groups[name]
		small, large := rows[0], rows[0]
		for _, row := range rows {
			if row.SizeGiB < small.SizeGiB {
				small = row
			}
			if row.SizeGiB > large.SizeGiB {
				large = row
			}
		}
		if small == large {
			continue
		}
		t := Trend{Config: name, SmallGiB: small.SizeGiB, LargeGiB: large.SizeGiB,
			SmallPerGiB: small.Seconds / small.SizeGiB, LargePerGiB: large.Seconds / large.SizeGiB}
		t.Ratio = t.LargePerGiB / t.SmallPerGiB
		r.Scaling = append(r.Scaling, t)
		for _, sd := range []struct {
			name string
			get  func(*Row) Side
		}{{"sender", func(r *Row) Side { return r.Sender }}, {"receiver", func(r *Row) Side { return r.Receiver }}} {
			xs, ys := make([]float64, len(rows)), make([]float64, len(rows))
			for i, row := range rows {
				xs[i], ys[i] = row.SizeGiB, float64(sd.get(row).Overhead)/bytesPerMiB
			}
			a, b := leastSquares(xs, ys)
			r.Overhead = append(r.Overhead, Fit{Config: name, Side: sd.name, FixedMiB: a, Pct: b / 1024 * percent})
		}
	}
}

// leastSquares fits y = a + b·x.
func leastSquares(xs, ys []float64) (a, b float64) {
	n := float64(len(xs))
	var sx, sy, sxx, sxy float64
	for i := range xs {
		sx += xs[i]
		sy += ys[i]
		sxx += xs[i] * xs[i]
		sxy += xs[i] * ys[i]
	}
	if d := n*sxx - sx*sx; d != 0 {
		b = (n*sxy - sx*sy) / d
	}
	return (sy - b*sx) / n, b
}

// progressLine is one measurement as it ends.
func progressLine(row *Row) string {
	s := fmt.Sprintf("%-40s %8.3g GiB %7.2f s %6.2f GB/s", configName(row), row.SizeGiB, row.Seconds, row.GBps)
	if row.Kind == "ferry" {
		s += fmt.Sprintf("  %.2fx copy", row.VsCopy)
	}
	s += fmt.Sprintf("  (fill %.1f s)", row.FillSeconds)
	if row.TLSSuite != "" {
		s += " " + row.TLSSuite
	}
	return s
}

// printReport prints the table and the targets.
func printReport(out io.Writer, r *Report) {
	pre := ""
	if r.Prefault {
		pre = "; the receiver's guest memory faulted in before the measurement (-prefault)"
	}
	fmt.Fprintf(out, "\nscale: %s, %s, %d CPUs, load %s at the start, %s at the end; digest filter %s; receiver resume window %s%s\n",
		r.Commit, r.GoVersion, r.NumCPU, r.LoadStart, r.LoadEnd, onOff(r.Digest), r.Resume, pre)
	fmt.Fprintf(out, "guest memory: %s\n", r.MixNote)
	fmt.Fprintf(out, "references on one core: memcpy %.2f GB/s, AES-128-GCM seal (16 KiB records) %.2f GB/s\n\n",
		r.MemcpyGBps, r.AESGCMGBps)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "what\tGiB\tconns\ttls\tcompress\ts\tGB/s\twire GB/s\tx copy\tx AES\tsnd ovh MiB\t%\trcv ovh MiB\t%\tsnd CPU s/GiB\trcv CPU s/GiB\t")
	for _, row := range r.Rows {
		vsCopy, vsAES, comp := "-", "-", "-"
		if row.Kind == "ferry" {
			vsCopy, comp = fmt.Sprintf("%.2f", row.VsCopy), row.Compress
			if row.TLS {
				vsAES = fmt.Sprintf("%.2f", row.VsAES)
			}
		}
		fmt.Fprintf(tw, "%s\t%.4g\t%d\t%s\t%s\t%.2f\t%.2f\t%.2f\t%s\t%s\t%.1f\t%.2f\t%.1f\t%.2f\t%.2f\t%.2f\t\n",
			row.Kind, row.SizeGiB, row.Conns, onOff(row.TLS), comp, row.Seconds, row.GBps, row.WireGBps, vsCopy, vsAES,
			float64(row.Sender.Overhead)/bytesPerMiB, row.Sender.OverheadPct,
			float64(row.Receiver.Overhead)/bytesPerMiB, row.Receiver.OverheadPct,
			row.Sender.CPUPerGiB, row.Receiver.CPUPerGiB)
	}
	tw.Flush()
	fmt.Fprintln(out, "\nGB/s: guest memory per second (10^9 bytes), of the whole migration (connect to DONE-ACK) or copy;")
	fmt.Fprintln(out, "wire GB/s: the bytes written to the connections per second (ferry sends no data for zero pages);")
	fmt.Fprintln(out, "x copy: of the copy above it (same size, connections, TCP or TLS); x AES: of AES-128-GCM on one core;")
	fmt.Fprintln(out, "ovh: peak RSS minus the guest memory resident in that process, MiB and % of guest memory;")
	fmt.Fprintln(out, "CPU: user + system seconds of that process during the migration or copy, per GiB of guest memory.")

	fmt.Fprintln(out, "\ntargets:")
	for _, row := range r.Rows {
		if row.Kind != "ferry" {
			continue
		}
		name := fmt.Sprintf("%s %.4g GiB", configName(row), row.SizeGiB)
		if !row.TLS && r.Digest {
			fmt.Fprintf(out, "  %-48s %.2f of the TCP copy (target >= %.2f): %s\n", name, row.VsCopy, targetVsCopy, verdict(row.VsCopy >= targetVsCopy))
		}
		if row.TLS {
			fmt.Fprintf(out, "  %-48s %.2f of AES-128-GCM per core (target >= %.2f): %s\n", name, row.VsAES, targetVsAES, verdict(row.VsAES >= targetVsAES))
		}
	}
	for _, f := range r.Overhead {
		if !strings.HasPrefix(f.Config, "ferry") {
			continue
		}
		fmt.Fprintf(out, "  %-48s %s overhead ~ %.1f MiB + %.2f%% of guest memory (target <= %.0f%% + a fixed amount): %s\n",
			f.Config, f.Side, f.FixedMiB, f.Pct, targetOverhead, verdict(f.Pct <= targetOverhead))
	}
	for _, t := range r.Scaling {
		if !strings.HasPrefix(t.Config, "ferry") {
			continue
		}
		fmt.Fprintf(out, "  %-48s s/GiB at %.4g GiB / at %.4g GiB = %.3f / %.3f = %.2f (target <= %.2f): %s\n",
			t.Config, t.LargeGiB, t.SmallGiB, t.LargePerGiB, t.SmallPerGiB, t.Ratio, targetScaling, verdict(t.Ratio <= targetScaling))
	}
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "missed"
}
