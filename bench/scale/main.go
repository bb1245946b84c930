// Command scale measures ferry's live migration at scale without a guest:
// fake guest memory of 1, 4 and 8 GiB (a mix of zero, text-like and
// random pages: guest.go) goes through the real sender (migrate.Send)
// and the real receiving end of ferry receive (vmm/incoming and
// migrate.Receive) over loopback TCP and over mutual TLS, with 1, 2 and 4
// connections. The sender and the receiver are two child processes, so
// that each side's peak RSS and CPU time are its own.
//
// It prints, per migration: the seconds, the GB/s of guest RAM, the ratio
// to a plain loopback copy of the same bytes over the same number of TCP
// (or TLS) connections measured in the same run, for TLS the ratio to
// Go's AES-128-GCM seal rate on one core, each side's RSS overhead (peak
// RSS minus its resident guest memory) and CPU seconds per GiB; then the
// targets: the ratios, the overhead as a fixed amount plus a share of
// guest memory (fitted over the sizes), and the scaling of the time per
// GiB from the smallest to the largest size. See BENCHMARKS.md, "Scale
// without a guest".
//
// Usage: go run ./bench/scale [flags]   (make bench-scale runs it)
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ferryvmm/ferry/migrate"
)

// config is the benchmark's parsed flags.
type config struct {
	sizes        []uint64 // bytes
	conns        []int
	tls          []bool
	compress     []string
	noDigest     bool
	refTime      time.Duration
	resumeWindow time.Duration
	timeout      time.Duration // per measurement; 0: by size
	jsonPath     string
	profileDir   string
	prefault     bool
	verbose      bool
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == childCommand {
		os.Exit(childMain(os.Args[2:]))
	}
	cfg, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fatal("%v", err)
	}
	// Ctrl-C or SIGTERM: kill the children before going.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	tmp, err := os.MkdirTemp("", "ferry-scale.")
	if err != nil {
		fatal("%v", err)
	}
	go func() {
		s := <-sig
		interrupt()
		killChildren()
		os.RemoveAll(tmp)
		fmt.Fprintf(os.Stderr, "scale: %v: stopped\n", s)
		os.Exit(130)
	}()
	rep, err := run(cfg, tmp)
	if interrupted() {
		select {} // the signal handler cleans up and exits
	}
	killChildren()
	os.RemoveAll(tmp)
	if err != nil {
		fatal("%v", err)
	}
	printReport(os.Stdout, rep)
	if cfg.jsonPath != "" {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err == nil {
			err = os.WriteFile(cfg.jsonPath, append(b, '\n'), 0o644)
		}
		if err != nil {
			fatal("-json: %v", err)
		}
	}
}

func fatal(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "scale: "+format+"\n", args...)
	os.Exit(1)
}

func parseFlags(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("scale", flag.ContinueOnError)
	sizes := fs.String("sizes", "1,4,8", "guest memory sizes in `GiB` (fractions allowed: 0.0625 is 64 MiB)")
	conns := fs.String("conns", "1,2,4", "connections per migration (and per copy)")
	tlsModes := fs.String("tls", "off,on", "plain TCP (off) and/or mutual TLS 1.3 (on)")
	compress := fs.String("compress", "off", "compression modes, of off, auto, zstd (off: the copy it is compared with is not compressed)")
	fs.BoolVar(&c.noDigest, "no-digest", false, "turn the digest filter off (migrate.Options.NoDigest)")
	fs.DurationVar(&c.refTime, "reftime", 2*time.Second, "how long each one-core reference (memcpy, AES-GCM) runs")
	fs.DurationVar(&c.resumeWindow, "resume-window", 10*time.Minute,
		"the receiver keeps pages for resumes this long, as ferry receive's default (0: it keeps no digest table)")
	fs.DurationVar(&c.timeout, "timeout", 0, "give up a measurement after this long (default: 2 minutes + 1 per GiB)")
	fs.StringVar(&c.jsonPath, "json", "", "also write the results to `FILE` as JSON")
	fs.StringVar(&c.profileDir, "cpuprofile", "", "write each side's CPU profile of each measurement into `DIR` (pprof format)")
	fs.BoolVar(&c.prefault, "prefault", false,
		"the migration's receiver maps and faults in all guest memory before the measurement, as a VMM that preallocates it: "+
			"the migration then pays no page faults there (and the receiver holds all of it resident)")
	fs.BoolVar(&c.verbose, "v", false, "log the receivers' events")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if c.profileDir != "" {
		if err := os.MkdirAll(c.profileDir, 0o755); err != nil {
			return c, fmt.Errorf("-cpuprofile: %w", err)
		}
		abs, err := filepath.Abs(c.profileDir)
		if err != nil {
			return c, fmt.Errorf("-cpuprofile: %w", err)
		}
		c.profileDir = abs
	}
	for _, s := range splitList(*sizes) {
		g, err := strconv.ParseFloat(s, 64)
		b := uint64(g * (1 << 30))
		if err != nil || g <= 0 || b < 1<<20 || b%pageSize != 0 {
			return c, fmt.Errorf("-sizes: %q: want GiB, at least 1 MiB and a whole number of 4 KiB pages", s)
		}
		c.sizes = append(c.sizes, b)
	}
	for _, s := range splitList(*conns) {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > migrate.MaxConnections {
			return c, fmt.Errorf("-conns: %q: want 1 to %d", s, migrate.MaxConnections)
		}
		c.conns = append(c.conns, n)
	}
	for _, s := range splitList(*tlsModes) {
		switch s {
		case "off":
			c.tls = append(c.tls, false)
		case "on":
			c.tls = append(c.tls, true)
		default:
			return c, fmt.Errorf("-tls: %q: want off or on", s)
		}
	}
	for _, s := range splitList(*compress) {
		if _, err := migrate.ParseCompressMode(s); err != nil || s == "" {
			return c, fmt.Errorf("-compress: %q: want off, auto or zstd", s)
		}
		c.compress = append(c.compress, s)
	}
	if len(c.sizes) == 0 || len(c.conns) == 0 || len(c.tls) == 0 || len(c.compress) == 0 {
		return c, fmt.Errorf("-sizes, -conns, -tls and -compress need at least one value each")
	}
	return c, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// run measures the references, then for each size, TLS mode and number
// of connections the copy and, right after it, the migrations it is
// compared with.
func run(c config, tmp string) (*Report, error) {
	rep := newReport(c)
	fmt.Printf("scale: %s, %s, %d CPUs, load %s\n", rep.Commit, rep.GoVersion, rep.NumCPU, rep.LoadStart)
	refs, err := measureRefs(c.refTime)
	if err != nil {
		return nil, fmt.Errorf("the one-core references: %w", err)
	}
	rep.MemcpyGBps, rep.AESGCMGBps = refs.MemcpyGBps, refs.AESGCMGBps
	fmt.Printf("references on one core: memcpy %.2f GB/s, AES-128-GCM seal (16 KiB records) %.2f GB/s\n",
		rep.MemcpyGBps, rep.AESGCMGBps)

	tlsDir := filepath.Join(tmp, "tls")
	for _, on := range c.tls {
		if on {
			if err := os.Mkdir(tlsDir, 0o700); err != nil {
				return nil, err
			}
			if err := makeCerts(tlsDir); err != nil {
				return nil, fmt.Errorf("TLS certificates: %w", err)
			}
			break
		}
	}
	for _, size := range c.sizes {
		if err := checkMemory(size, c.prefault); err != nil {
			return nil, err
		}
		for _, on := range c.tls {
			for _, n := range c.conns {
				f := childFlags{mode: "copy", size: size, conns: n, compress: "off",
					resumeWindow: c.resumeWindow, timeout: c.timeout, verbose: c.verbose}
				if f.timeout == 0 {
					f.timeout = 2*time.Minute + time.Duration(size>>30)*time.Minute
				}
				if on {
					f.tlsDir = tlsDir
				}
				f.profile = profilePath(c.profileDir, f)
				p, err := runPair(f)
				if err != nil {
					return nil, fmt.Errorf("%s: %w", describe(f), err)
				}
				cp := rep.add(f, p, nil)
				fmt.Println(progressLine(cp))
				f.mode, f.noDigest, f.prefault = "migrate", c.noDigest, c.prefault
				for _, mode := range c.compress {
					f.compress = mode
					f.profile = profilePath(c.profileDir, f)
					p, err := runPair(f)
					if err != nil {
						return nil, fmt.Errorf("%s: %w", describe(f), err)
					}
					if p.send.Hash != p.recv.Hash {
						return nil, fmt.Errorf("%s: the receiver's memory differs from the sender's: hash %s, the sender's %s",
							describe(f), p.recv.Hash, p.send.Hash)
					}
					fmt.Println(progressLine(rep.add(f, p, cp)))
				}
			}
		}
	}
	rep.finish()
	return rep, nil
}

// describe names a measurement in messages.
func describe(f childFlags) string {
	tls := "TCP"
	if f.tlsDir != "" {
		tls = "TLS"
	}
	what := "the copy"
	if f.mode == "migrate" {
		what = "the migration (compress " + f.compress + ")"
	}
	return fmt.Sprintf("%s of %s over %d %s connection(s)", what, gib(f.size), f.conns, tls)
}

// profilePath is where the profiles of measurement f go (runPair adds
// each side's suffix); "" without dir.
func profilePath(dir string, f childFlags) string {
	if dir == "" {
		return ""
	}
	tls := "tcp"
	if f.tlsDir != "" {
		tls = "tls"
	}
	name := fmt.Sprintf("%s-%gGiB-%dconn-%s", f.mode, float64(f.size)/(1<<30), f.conns, tls)
	if f.mode == "migrate" {
		name += "-compress-" + f.compress
	}
	return filepath.Join(dir, name)
}

// gib formats a size in GiB.
func gib(b uint64) string { return strconv.FormatFloat(float64(b)/(1<<30), 'g', -1, 64) + " GiB" }

// checkMemory refuses a size whose two sides would not fit in the memory
// available now: each side holds about two thirds of the guest resident
// (the zero pages stay untouched; with prefault, the receiver all of it),
// plus a margin.
func checkMemory(size uint64, prefault bool) error {
	avail, err := memAvailable()
	if err != nil {
		return nil // not Linux's /proc: let the kernel decide
	}
	need := 2*(size/3*2) + 1<<30
	if prefault {
		need += size / 3
	}
	if avail < need {
		return fmt.Errorf("%s needs about %.1f GiB of memory for both sides, and %.1f GiB is available: choose smaller -sizes",
			gib(size), float64(need)/(1<<30), float64(avail)/(1<<30))
	}
	return nil
}

// memAvailable is MemAvailable of /proc/meminfo, in bytes.
func memAvailable() (uint64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) >= 2 && fields[0] == "MemAvailable:" {
			kb, err := strconv.ParseUint(fields[1], 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no MemAvailable in /proc/meminfo")
}
