package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// probeCmdline reads ferry's default kernel command line from the
// "ferry: cmdline:" line of `ferry run -v` (killed as soon as it appears),
// as bench/boot.sh does; ferry.run=poweroff, the probe's own parameter, is
// cut off again.
func (b *bench) probeCmdline() (string, error) {
	p, err := startProc("ferry run -v (probe)", b.logPath("00-cmdline-probe"),
		[]string{b.ferry, "run", "-v", "--memory", b.mem, "--kernel", b.kernel, "--initrd", b.initrd, "--cmdline", "ferry.run=poweroff"})
	if err != nil {
		return "", err
	}
	defer p.stop()
	_, _, m, err := p.waitFor(regexp.MustCompile(`^ferry: cmdline: (.*)$`), 0, 60*time.Second)
	if err != nil {
		return "", fmt.Errorf("ferry's default command line: %v", err)
	}
	c := strings.TrimSpace(m[1])
	if !strings.HasSuffix(c, " ferry.run=poweroff") {
		return "", fmt.Errorf("ferry run -v printed an unexpected command line: %q", c)
	}
	return strings.TrimSuffix(c, " ferry.run=poweroff"), nil
}

func (b *bench) header(plan []planned, caps []int) {
	fv, _ := exec.Command(b.ferry, "version").Output()
	qv, _ := exec.Command(b.qemu, "--version").Output()
	sum := func(f string) string {
		out, err := exec.Command("sha256sum", f).Output()
		if err != nil || len(out) < 12 {
			return "?"
		}
		return string(out[:12])
	}
	fmt.Printf("== ferry vs QEMU migration benchmark: %s, %d CPUs, load %s\n", time.Now().UTC().Format("2006-01-02 15:04:05 UTC"), numCPU(), loadavg())
	fmt.Printf("ferry:   %s (sha256 %s)\n", strings.TrimSpace(string(fv)), sum(b.ferry))
	fmt.Printf("qemu:    %s\n", firstLine(string(qv)))
	fmt.Printf("guest:   vmlinux sha256 %s, initramfs.cpio sha256 %s, %s, 1 vCPU\n", sum(b.kernel), sum(b.initrd), b.mem)
	if b.hosts[0].ns != "" {
		fmt.Printf("hosts:   namespaces %s (%s) and %s (%s), one veth pair; bytes_total = tx bytes of the source's veth\n",
			b.hosts[0].ns, b.hosts[0].addr, b.hosts[1].ns, b.hosts[1].addr)
	} else {
		fmt.Printf("hosts:   loopback; bytes_total = bytes the peer reports\n")
	}
	fmt.Printf("cmdline: %s <workload>\n", b.defaultCmdline)
	fmt.Printf("limits:  downtime %v, caps %v MiB/s (0 = unlimited), bound %v (ferry --timeout %v --on-timeout abort --max-iterations %d; QEMU migrate_cancel at %v)\n",
		b.downtime, caps, b.bound, b.bound, b.maxIter, b.bound)
	if b.memoryHash {
		fmt.Printf("check:   ferry --memory-hash on both sides: the destination's hash of guest RAM must equal the paused source's\n")
	}
	for _, p := range plan {
		if p.w.Verify {
			fmt.Printf("check:   %s: the guest checks every page of its working set (ferry.verify=1); its first report on the destination must find them intact (ferry and QEMU)\n", p.w.Name)
		}
	}
	fmt.Printf("workloads, each with its systems:\n")
	n := 0
	for _, p := range plan {
		var names []string
		for _, s := range p.systems {
			names = append(names, s.name)
			if reps := b.repeatsOf(p.w, s); reps > 1 {
				names[len(names)-1] += fmt.Sprintf(" (x%d)", reps)
				n += (reps - 1) * len(p.w.caps(caps))
			}
		}
		n += len(p.systems) * len(p.w.caps(caps))
		extra := ""
		if p.w.Mem != "" || p.w.Caps != nil {
			var cs []string
			for _, c := range p.w.caps(caps) {
				cs = append(cs, capName(c))
			}
			extra = fmt.Sprintf(" (guest %s, caps %s)", p.w.mem(b), strings.Join(cs, ","))
		}
		fmt.Printf("  %s=[%s]%s: %s\n", p.w.Name, p.w.cmdline(b), extra, strings.Join(names, " "))
	}
	for _, note := range b.notes {
		fmt.Printf("note:    %s\n", note)
	}
	fmt.Printf("%d migrations\n\n", n)
}

// repeatsOf is how many times sys runs in a row on w (-repeats for
// system ferry on a workload with Repeat, else once).
func (b *bench) repeatsOf(w workload, sys system) int {
	if w.Repeat && sys.name == "ferry" && b.repeats > 1 {
		return b.repeats
	}
	return 1
}

// cannotRun says why sys cannot run with this ferry binary, or "".
func (b *bench) cannotRun(sys system) string {
	if sys.connections && !b.hasConnections {
		return "skipped: this ferry's migrate has no --connections (ferry migrate --help does not mention it)"
	}
	return ""
}

func numCPU() int {
	out, _ := exec.Command("nproc").Output()
	n, _ := strconv.Atoi(strings.TrimSpace(string(out)))
	return n
}

func firstLine(s string) string { return strings.SplitN(s, "\n", 2)[0] }

// chain boots one guest under the family's VMM and runs every selected
// system × cap of that family on it, migrating it back and forth between
// the two hosts. A guest lost or in doubt is replaced by a fresh one.
func (b *bench) chain(w workload, fam string, syss []system, caps []int) {
	var cur *vm
	pos := 0
	defer func() { cur.stop() }()
	// A QEMU chain that runs qemu-tls has the TLS objects in every QEMU.
	tls := false
	for _, sys := range syss {
		tls = tls || (sys.family == "qemu" && sys.tls && b.cannotRun(sys) == "")
	}
	for _, sys := range syss {
		if sys.family != fam {
			continue
		}
		reps := b.repeatsOf(w, sys)
		for _, bw := range w.caps(caps) {
			for rep := 1; rep <= reps; rep++ {
				r := &Run{N: len(b.runs) + 1, Workload: w.Name, GuestParams: w.cmdline(b), System: sys.name,
					MaxBandwidthMiBs: bw, WireBytes: -1, wl: w}
				if reps > 1 {
					r.Repeat = rep
				}
				b.runs = append(b.runs, r)
				if why := b.cannotRun(sys); why != "" {
					r.Check = "not measured: " + why
					fmt.Printf("run %2d %-9s %-15s %3s MiB/s  %s\n", r.N, r.Workload, r.System, capName(bw), r.Check)
					b.save()
					continue
				}
				if cur == nil {
					pos = 0
					var err error
					if cur, err = b.boot(fam, w, tls); err != nil {
						r.fail("boot: %v", err)
						r.Check = "not measured: boot failed"
						b.printRun(r)
						b.save()
						cur = nil
						continue
					}
				}
				pos++
				r.ChainPos = pos
				_, _, m := cur.p.last(reDirty, -1)
				if m != nil {
					r.GuestWritesPerS, _ = strconv.Atoi(m[1])
					r.GuestSamePct, _ = strconv.Atoi(m[2])
				}
				dstHost := b.hosts[1]
				if cur.h == b.hosts[1] {
					dstHost = b.hosts[0]
				}
				r.From, r.To = cur.h.name, dstHost.name
				r.Started = time.Now().UTC().Format("15:04:05")
				r.Load = loadavg()
				src, srcMark := cur, cur.p.count()
				if fam == "ferry" {
					cur = b.ferryMigrate(cur, dstHost, sys, bw, r)
				} else {
					cur = b.qemuMigrate(cur, dstHost, sys, bw, r)
				}
				r.writesLow(src, srcMark, cur)
				switch {
				case r.Error != "" && r.Check != "":
					r.Check = "FAILED (" + r.Check + ")"
				case r.Error != "":
					r.Check = "FAILED"
				case r.Check == "":
					r.Check = "ok"
				}
				b.printRun(r)
				b.save()
			}
		}
	}
}

// boot starts a guest on host A and waits for its memory writer's first
// report.
func (b *bench) boot(fam string, w workload, tls bool) (*vm, error) {
	var v *vm
	var err error
	if fam == "ferry" {
		v, err = b.ferryBoot(b.hosts[0], w)
	} else {
		v, err = b.qemuBoot(b.hosts[0], w, tls)
	}
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	wait := b.bootWait
	if w.BootWait > wait {
		wait = w.BootWait
	}
	if _, _, _, err := v.p.waitFor(reDirty, 0, wait); err != nil {
		v.stop()
		return nil, err
	}
	if _, _, m := v.p.find(reCmdline, 0); m != nil {
		b.cmdlines[w.Name+"/"+fam] = m[1]
		if other, ok := b.cmdlines[w.Name+"/ferry"]; ok && fam == "qemu" && other != m[1] {
			fmt.Printf("WARNING: %s: the guest kernel's command line differs: ferry [%s] qemu [%s]\n", w.Name, other, m[1])
		}
	}
	fill := ""
	if _, _, m := v.p.find(reFilled, 0); m != nil {
		fill = fmt.Sprintf(", working set mapped in %s ms and filled in %s ms", m[1], m[2])
	}
	fmt.Printf("-- %s: %s guest up on host %s, writer reporting after %.0f s%s (load %s)\n",
		w.Name, fam, v.h.name, time.Since(t0).Seconds(), fill, loadavg())
	return v, nil
}

// counterCheck checks that the guest goes on at the destination: its first
// counter there follows the last one printed at the source, a second one
// follows, and the memory writer reports again. counter_gap_ms is the time
// between those two lines as this program read them (a guest-visible pause
// as both VMMs' consoles show it; includes up to one 100 ms counter period).
func (b *bench) counterCheck(src, dst *vm, r *Run) {
	_, lastL, lm := src.p.last(reCounter, -1)
	if lm == nil {
		r.fail("no FERRY-COUNTER line on the source")
		return
	}
	last, _ := strconv.ParseUint(lm[1], 10, 64)
	i, firstL, fm, err := dst.p.waitFor(reCounter, 0, 30*time.Second)
	if err != nil {
		r.fail("destination: %v", err)
		return
	}
	first, _ := strconv.ParseUint(fm[1], 10, 64)
	gap := float64(firstL.t.Sub(lastL.t).Microseconds()) / 1000
	r.CounterGapMS = &gap
	if first <= last || first > last+3 {
		r.fail("counter: last on the source %d, first on the destination %d", last, first)
		return
	}
	if _, _, _, err := dst.p.waitFor(reCounter, i+1, 30*time.Second); err != nil {
		r.fail("destination: a second counter line: %v", err)
		return
	}
	_, rl, _, err := dst.p.waitFor(reDirty, i+1, 30*time.Second)
	if err != nil {
		r.fail("destination: the memory writer: %v", err)
		return
	}
	if r.wl.Verify {
		b.guestVerify(rl.s, r)
	}
	if r.Check == "" {
		r.Check = fmt.Sprintf("ok: counter %d -> %d, writer on", last, first)
	}
}

// guestVerify requires the writer's report (ferry.verify=1) to say that
// every page of its working set is intact.
func (b *bench) guestVerify(report string, r *Run) {
	m := reVerify.FindStringSubmatch(report)
	switch {
	case m == nil:
		r.GuestVerify = "missing"
		r.fail("the guest's report has no verify=: %q", report)
	case m[1] != "ok":
		r.GuestVerify = m[0]
		r.fail("the guest found its working set changed: %s", m[0])
	default:
		r.GuestVerify = m[0][len("verify="):]
	}
}

// verifyRuns checks that the guest still runs on v after a migration that
// gave up: two more counter lines and a writer report after line from.
func (b *bench) verifyRuns(v *vm, from int) error {
	i, _, _, err := v.p.waitFor(reCounter, from, 30*time.Second)
	if err != nil {
		return err
	}
	if _, _, _, err := v.p.waitFor(reCounter, i+1, 30*time.Second); err != nil {
		return err
	}
	_, _, _, err = v.p.waitFor(reDirty, i+1, 30*time.Second)
	return err
}

func (b *bench) printRun(r *Run) {
	conv := "converged"
	switch {
	case r.Postcopy != nil && r.Postcopy.Switched && r.Migrated:
		conv = "post-copy"
	case !r.Converged:
		conv = "NOT converged"
	}
	dt, gap := "-", "-"
	if r.DowntimeMS != nil {
		dt = fmt.Sprintf("%.1f ms", *r.DowntimeMS)
	}
	if r.CounterGapMS != nil {
		gap = fmt.Sprintf("%.0f ms", *r.CounterGapMS)
	}
	fmt.Printf("run %2d %-9s %-15s %3s MiB/s  %-13s total %6.2f s  downtime %-9s  %7.1f MiB  iters %3d  gap %-7s  writes %d/s same %d%%  %s->%s  load %s\n",
		r.N, r.Workload, r.System, capName(r.MaxBandwidthMiBs), conv, r.TotalSeconds, dt, float64(r.BytesTotal)/(1<<20),
		r.Iterations, gap, r.GuestWritesPerS, r.GuestSamePct, r.From, r.To, r.Load)
	fmt.Printf("       check: %s", r.Check)
	if r.MemoryHash != "" {
		fmt.Printf("; RAM hash %s", r.MemoryHash)
	}
	if r.GuestVerify != "" {
		fmt.Printf("; guest's check of its working set: %s", r.GuestVerify)
	}
	if r.Transport != "" {
		fmt.Printf("; %s", r.Transport)
	}
	if r.Error != "" {
		fmt.Printf(" (%s)", r.Error)
	}
	fmt.Println()
	if f := r.FirstPass; f != nil {
		fmt.Printf("       first pass %.1f MiB in %.2f s, after it %.1f MiB in %.2f s (%s)\n",
			float64(f.Bytes)/(1<<20), f.Seconds, float64(f.AfterBytes)/(1<<20), f.AfterSeconds, f.How)
	}
	if v := r.Savings; v != nil {
		fmt.Printf("       saved: false dirty %.1f MiB (%d pages), delta %.1f MiB (%d pages in %.1f MiB), compression %.1f MiB in iteration 0 + %.1f MiB later (%d records)\n",
			float64(v.FalseDirtyBytes)/(1<<20), v.FalseDirtyPages, float64(v.DeltaSaved)/(1<<20), v.DeltaPages,
			float64(v.DeltaBytes)/(1<<20), float64(v.CompressSavedIter0)/(1<<20), float64(v.CompressSavedLater)/(1<<20), v.RecordsCompressed)
	}
	if l := r.outrunLine(); l != "" {
		fmt.Printf("       %s\n", l)
	}
	for _, it := range r.PerIteration {
		fmt.Printf("       %s\n", it.String())
	}
}

func capName(bw int) string {
	if bw == 0 {
		return "unl"
	}
	return strconv.Itoa(bw)
}

func (it IterStat) String() string {
	v := func(p *uint64) string {
		if p == nil {
			return "-"
		}
		return strconv.FormatUint(*p, 10)
	}
	name := fmt.Sprintf("iter %d", it.Iteration)
	if it.StopAndCopy {
		name = fmt.Sprintf("S&C %d", it.Iteration)
	}
	approx := ""
	if it.PagesXBZRLE != nil {
		approx = "  xbzrle " + v(it.PagesXBZRLE)
	}
	if it.PagesDelta != nil && *it.PagesDelta > 0 {
		approx += fmt.Sprintf("  delta %d (%.1f KiB)", *it.PagesDelta, float64(it.DeltaBytes)/1024)
	}
	if it.RecordsCompressed > 0 {
		approx += fmt.Sprintf("  compressed %d records (saved %.2f MiB)", it.RecordsCompressed, float64(it.CompressSaved)/(1<<20))
	}
	if it.ThrottlePct > 0 {
		approx += fmt.Sprintf("  throttled %d%%", it.ThrottlePct)
	}
	if it.Approx {
		approx += " (sent/zero/MiB/s from polls)"
	}
	return fmt.Sprintf("%-7s dirty %6s  false-dirty %6s  zero %6s  sent %6s  %7.2f MiB  %6.3f s%s",
		name, v(it.PagesDirty), v(it.PagesFalseDirty), v(it.PagesZero), v(it.PagesSent), float64(it.Bytes)/(1<<20), it.Seconds, approx)
}

// save writes results.json (after every run, so that an interrupted
// benchmark keeps what it measured).
func (b *bench) save() error {
	data, err := json.MarshalIndent(b.runs, "", "  ")
	if err != nil {
		return err
	}
	path := filepath.Join(b.out, "results.json")
	if err := os.WriteFile(path+".tmp", append(data, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(path+".tmp", path)
}

func loadRuns(path string) ([]*Run, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var runs []*Run
	if err := json.Unmarshal(data, &runs); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	for _, r := range runs {
		r.wl, _ = findWorkload(r.Workload)
	}
	return runs, nil
}
