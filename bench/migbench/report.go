package main

import (
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
)

// report prints the Markdown tables (one row per run; ratios ferry/QEMU;
// targets) and writes the per-iteration plot of the mix workload.
func report(w io.Writer, runs []*Run, outDir string) {
	fmt.Fprintln(w, "| workload | system | cap MiB/s | converged | total s | downtime ms | MiB on the wire | iterations | counter gap ms | check |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|")
	for _, r := range runs {
		fmt.Fprintf(w, "| %s | %s | %s | %s | %.2f | %s | %.1f | %d | %s | %s |\n", r.Workload, r.System, capName(r.MaxBandwidthMiBs),
			yesNo(r.Converged), r.TotalSeconds, fmtp(r.DowntimeMS, "%.1f"), float64(r.BytesTotal)/(1<<20), r.Iterations,
			fmtp(r.CounterGapMS, "%.0f"), shortCheck(r))
	}

	fmt.Fprintln(w)
	fmt.Fprintln(w, "Ratios ferry (default) / QEMU (default migration), and ferry / QEMU with XBZRLE; bytes = bytes on the wire:")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| workload | cap MiB/s | bytes ferry/qemu | time ferry/qemu | bytes ferry/xbzrle | time ferry/xbzrle | converged ferry / qemu / xbzrle | false-dirty share seen by ferry (iterations 1..) |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|")
	type key struct {
		wl  string
		cap int
	}
	var keys []key
	seen := map[key]bool{}
	idx := map[string]*Run{}
	for _, r := range runs {
		k := key{r.Workload, r.MaxBandwidthMiBs}
		if !seen[k] {
			seen[k] = true
			keys = append(keys, k)
		}
		idx[fmt.Sprintf("%s/%d/%s", r.Workload, r.MaxBandwidthMiBs, r.System)] = r
	}
	get := func(k key, sys string) *Run {
		r := idx[fmt.Sprintf("%s/%d/%s", k.wl, k.cap, sys)]
		if r == nil || strings.HasPrefix(r.Check, "FAILED") || strings.HasPrefix(r.Check, "not measured") {
			return nil
		}
		return r
	}
	for _, k := range keys {
		f, q, x := get(k, "ferry"), get(k, "qemu"), get(k, "qemu-xbzrle")
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s / %s / %s | %s |\n", k.wl, capName(k.cap),
			ratio(f, q, bytesOf), ratio(f, q, timeOf), ratio(f, x, bytesOf), ratio(f, x, timeOf),
			conv(f), conv(q), conv(x), falseShare(f))
	}

	fmt.Fprintln(w)
	fmt.Fprintln(w, "Targets (ferry default against QEMU default migration):")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| workload | cap MiB/s | target | result |")
	fmt.Fprintln(w, "|---|---|---|---|")
	for _, k := range keys {
		f, q := get(k, "ferry"), get(k, "qemu")
		wl, _ := findWorkload(k.wl)
		var checks []string
		switch wl.Class {
		case "filter":
			checks = []string{"bytes <= 0.5x", "time <= 0.5x", "converges where QEMU does"}
		case "no-filter":
			checks = []string{"bytes <= 1.0x", "time <= 1.0x"}
		case "idle":
			checks = []string{"time <= 1.0x"}
		}
		checks = append(checks, "downtime <= 300 ms")
		for _, c := range checks {
			fmt.Fprintf(w, "| %s | %s | %s | %s |\n", k.wl, capName(k.cap), c, target(c, f, q))
		}
	}
	if err := plotMix(runs, filepath.Join(outDir, "mix-iterations.svg")); err != nil {
		fmt.Fprintf(w, "\n(plot: %v)\n", err)
	} else {
		fmt.Fprintf(w, "\nplot: %s\n", filepath.Join(outDir, "mix-iterations.svg"))
	}
}

// falseShare is the share of dirty pages that ferry found unchanged, over
// the iterations after the first.
func falseShare(r *Run) string {
	if r == nil {
		return "n/a"
	}
	var dirty, fd uint64
	for _, it := range r.PerIteration {
		if it.Iteration > 0 && it.PagesDirty != nil && it.PagesFalseDirty != nil {
			dirty += *it.PagesDirty
			fd += *it.PagesFalseDirty
		}
	}
	if dirty == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.0f%% (%d of %d)", 100*float64(fd)/float64(dirty), fd, dirty)
}

func bytesOf(r *Run) float64 { return float64(r.BytesTotal) }
func timeOf(r *Run) float64  { return r.TotalSeconds }

func ratio(a, b *Run, f func(*Run) float64) string {
	if a == nil || b == nil || f(b) == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2f", f(a)/f(b))
}

func conv(r *Run) string {
	if r == nil {
		return "n/a"
	}
	return yesNo(r.Converged)
}

func target(c string, f, q *Run) string {
	if f == nil || (q == nil && !strings.HasPrefix(c, "downtime")) {
		return "not measured"
	}
	verdict := func(ok bool, detail string) string {
		if ok {
			return "met (" + detail + ")"
		}
		return "**MISSED** (" + detail + ")"
	}
	if !f.Converged && !q.Converged && (strings.HasPrefix(c, "bytes") || strings.HasPrefix(c, "time")) {
		return fmt.Sprintf("n/a: neither converged, both stopped at the bound (%.2f vs %.2f s, %.1f vs %.1f MiB)",
			timeOf(f), timeOf(q), bytesOf(f)/(1<<20), bytesOf(q)/(1<<20))
	}
	switch c {
	case "bytes <= 0.5x", "bytes <= 1.0x":
		lim := 0.5
		if c == "bytes <= 1.0x" {
			lim = 1.0
		}
		x := bytesOf(f) / bytesOf(q)
		return verdict(x <= lim, fmt.Sprintf("%.2fx: %.1f vs %.1f MiB", x, bytesOf(f)/(1<<20), bytesOf(q)/(1<<20)))
	case "time <= 0.5x", "time <= 1.0x":
		lim := 0.5
		if c == "time <= 1.0x" {
			lim = 1.0
		}
		x := timeOf(f) / timeOf(q)
		return verdict(x <= lim, fmt.Sprintf("%.2fx: %.2f vs %.2f s", x, timeOf(f), timeOf(q)))
	case "converges where QEMU does":
		return verdict(f.Converged || !q.Converged, fmt.Sprintf("ferry %s, QEMU %s", yesNo(f.Converged), yesNo(q.Converged)))
	case "downtime <= 300 ms":
		if f.DowntimeMS == nil {
			return "n/a (did not migrate)"
		}
		return verdict(*f.DowntimeMS <= 300, fmt.Sprintf("%.1f ms", *f.DowntimeMS))
	}
	return "?"
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func fmtp(p *float64, f string) string {
	if p == nil {
		return "-"
	}
	return fmt.Sprintf(f, *p)
}

func shortCheck(r *Run) string {
	switch {
	case strings.HasPrefix(r.Check, "ok"):
		return "ok"
	case strings.HasPrefix(r.Check, "not converged"):
		return "gave up at the bound; guest runs on at the source"
	}
	s := r.Check
	if r.Error != "" {
		s += ": " + r.Error
	}
	return strings.ReplaceAll(s, "|", "/")
}

// plotMix draws pages dirty / false-dirty / sent per iteration for ferry
// and ferry --no-digest on the mix workload, one panel per run, log scale.
func plotMix(runs []*Run, path string) error {
	var panels []*Run
	for _, sys := range []string{"ferry", "ferry-no-digest"} {
		for _, r := range runs {
			if r.Workload == "mix" && r.System == sys && len(r.PerIteration) > 0 {
				panels = append(panels, r)
			}
		}
	}
	if len(panels) == 0 {
		return fmt.Errorf("no mix runs of ferry or ferry-no-digest")
	}
	const (
		pw, ph       = 560.0, 260.0 // panel plot area
		ml, mt, mb   = 70.0, 40.0, 50.0
		cols         = 2
		yMax         = 5.0 // 10^5 pages
		legendHeight = 30.0
	)
	rows := (len(panels) + cols - 1) / cols
	W := cols * (pw + ml + 20)
	H := float64(rows)*(ph+mt+mb) + legendHeight + 30
	var s strings.Builder
	fmt.Fprintf(&s, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" font-family="sans-serif" font-size="12">`+"\n", W, H)
	fmt.Fprintf(&s, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&s, `<text x="%.0f" y="20" font-size="15" text-anchor="middle">mix workload (70%% unchanged rewrites): pages per iteration, ferry vs --no-digest (log scale)</text>`+"\n", W/2)
	colors := []string{"#9e9e9e", "#ef8f00", "#1f5fbf"}
	labels := []string{"dirty (reported by KVM)", "false dirty (skipped)", "sent in full"}
	for i, l := range labels {
		x := 80 + float64(i)*230
		fmt.Fprintf(&s, `<rect x="%.0f" y="32" width="14" height="14" fill="%s"/><text x="%.0f" y="44">%s</text>`+"\n", x, colors[i], x+20, l)
	}
	for pi, r := range panels {
		ox := float64(pi%cols)*(pw+ml+20) + ml
		oy := float64(pi/cols)*(ph+mt+mb) + mt + legendHeight + 20
		link := "unlimited"
		if r.MaxBandwidthMiBs > 0 {
			link = fmt.Sprintf("%d MiB/s", r.MaxBandwidthMiBs)
		}
		title := fmt.Sprintf("%s, %s: %s, %.2f s, %.1f MiB", r.System, link,
			map[bool]string{true: "converged", false: "not converged"}[r.Converged], r.TotalSeconds, float64(r.BytesTotal)/(1<<20))
		fmt.Fprintf(&s, `<text x="%.0f" y="%.0f" font-size="13">%s</text>`+"\n", ox, oy-8, title)
		fmt.Fprintf(&s, `<rect x="%.0f" y="%.0f" width="%.0f" height="%.0f" fill="none" stroke="#444"/>`+"\n", ox, oy, pw, ph)
		yOf := func(v float64) float64 {
			if v < 1 {
				return oy + ph
			}
			return oy + ph - math.Log10(v)/yMax*ph
		}
		for e := 0; e <= int(yMax); e++ {
			y := yOf(math.Pow(10, float64(e)))
			fmt.Fprintf(&s, `<line x1="%.0f" y1="%.1f" x2="%.0f" y2="%.1f" stroke="#ddd"/><text x="%.0f" y="%.1f" text-anchor="end">%s</text>`+"\n",
				ox, y, ox+pw, y, ox-6, y+4, []string{"1", "10", "100", "1k", "10k", "100k"}[e])
		}
		n := len(r.PerIteration)
		slot := pw / float64(n)
		bar := math.Min(slot/4, 30)
		for i, it := range r.PerIteration {
			vals := []*uint64{it.PagesDirty, it.PagesFalseDirty, it.PagesSent}
			for j, v := range vals {
				if v == nil || *v == 0 {
					continue
				}
				x := ox + float64(i)*slot + slot/2 - 1.5*bar + float64(j)*bar
				y := yOf(float64(*v))
				fmt.Fprintf(&s, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%d</title></rect>`+"\n", x, y, bar-1, oy+ph-y, colors[j], *v)
			}
			lab := fmt.Sprint(it.Iteration)
			if it.StopAndCopy {
				lab = "S&amp;C"
			}
			if n <= 16 || i%5 == 0 || it.StopAndCopy {
				fmt.Fprintf(&s, `<text x="%.1f" y="%.0f" text-anchor="middle">%s</text>`+"\n", ox+float64(i)*slot+slot/2, oy+ph+15, lab)
			}
		}
		fmt.Fprintf(&s, `<text x="%.0f" y="%.0f" text-anchor="middle">iteration</text>`+"\n", ox+pw/2, oy+ph+32)
		fmt.Fprintf(&s, `<text transform="translate(%.0f,%.0f) rotate(-90)" text-anchor="middle">pages</text>`+"\n", ox-48, oy+ph/2)
	}
	s.WriteString("</svg>\n")
	return os.WriteFile(path, []byte(s.String()), 0o644)
}
