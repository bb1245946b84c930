// Command migbench compares ferry's live migration with QEMU's on the guest
// image's false-dirty workloads, and on a guest that writes new data
// faster than the link carries it (auto-converge and post-copy). See
// BENCHMARKS.md, "Live migration: ferry vs QEMU on the false-dirty
// workloads".
//
// For each workload it boots the guest under ferry on host A and migrates
// it back and forth between the two hosts, once per ferry variant and
// bandwidth cap; then the same under QEMU (-enable-kvm) for QEMU's default
// migration, XBZRLE, multifd with zstd, auto-converge or post-copy (each
// workload names its systems: workloads.go). Both peers get the same kernel, initramfs, kernel
// command line (ferry's defaults plus the workload's parameters), memory,
// vCPU count, bandwidth cap, downtime budget and time bound, and run in the
// same two network namespaces joined by a veth pair (loopback without
// root). Every migration is checked: the guest's counter and memory writer
// must go on at the destination (or, after a migration that gave up, at
// the source), and ferry's hash of guest RAM on the destination must equal
// the paused source's.
//
// Usage: go run ./bench/migbench [flags]   (make bench runs it)
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// IterStat is one pre-copy iteration (or the stop-and-copy pass). Fields a
// peer does not report are null. Approx marks QEMU rows whose sent/zero/
// bytes come from 50 ms query-migrate polls. PagesSent counts full pages.
type IterStat struct {
	Iteration       int     `json:"iteration"`
	StopAndCopy     bool    `json:"stop_and_copy"`
	PagesDirty      *uint64 `json:"pages_dirty"`
	PagesFalseDirty *uint64 `json:"pages_false_dirty"`
	PagesZero       *uint64 `json:"pages_zero"`
	PagesSent       *uint64 `json:"pages_sent"`
	// PagesLeft (ferry): pages the pass did not reach because the sender
	// went to stop-and-copy mid-pass; the next (final) pass counts them
	// among its dirty pages.
	PagesLeft   *uint64 `json:"pages_left,omitempty"`
	PagesXBZRLE *uint64 `json:"pages_xbzrle,omitempty"` // QEMU: pages sent XBZRLE-encoded
	// ferry: pages sent as DELTA entries and their bytes of blocks; PAGES
	// records sent compressed and the bytes compression saved on them.
	PagesDelta        *uint64 `json:"pages_delta,omitempty"`
	DeltaBytes        int64   `json:"delta_bytes,omitempty"`
	RecordsCompressed int     `json:"records_compressed,omitempty"`
	CompressSaved     int64   `json:"bytes_saved_compression,omitempty"`
	ThrottlePct       int     `json:"throttle_pct,omitempty"` // ferry: the auto-converge throttle
	DirtyRate         float64 `json:"dirty_rate,omitempty"`   // ferry: bytes/s the guest dirtied during the iteration
	Bytes             int64   `json:"bytes"`
	Seconds           float64 `json:"seconds"`
	Approx            bool    `json:"approx,omitempty"`
}

type QemuInfo struct {
	Status         string  `json:"status"`
	SetupMS        int64   `json:"setup_ms"`
	DirtySyncCount int64   `json:"dirty_sync_count"`
	Normal         int64   `json:"ram_normal"`
	Duplicate      int64   `json:"ram_duplicate"`
	Mbps           float64 `json:"mbps"`
	MultifdBytes   int64   `json:"multifd_bytes,omitempty"`
	XBZRLE         any     `json:"xbzrle_cache,omitempty"`
}

// Run is one migration.
type Run struct {
	N                int      `json:"run"`
	Workload         string   `json:"workload"`
	GuestParams      string   `json:"guest_params"`
	System           string   `json:"system"`
	MaxBandwidthMiBs int      `json:"max_bandwidth_mibs"`
	TotalSeconds     float64  `json:"total_seconds"`
	DowntimeMS       *float64 `json:"downtime_ms"`
	// DowntimeParts: ferry's account of where the downtime went
	// (--stats-json downtime_parts: pause_ms, sync_ms, pages_ms, state_ms,
	// flush_ms, ready_ms, commit_ms).
	DowntimeParts map[string]float64 `json:"downtime_parts,omitempty"`
	// Connections: ferry --connections N, QEMU's multifd channels (0:
	// one connection); TLS: the migration ran over (mutual) TLS.
	Connections int  `json:"connections,omitempty"`
	TLS         bool `json:"tls,omitempty"`
	// Transport: what the VMM's own output showed of TLS and of its
	// connections (QEMU: its trace of the TLS handshakes, the peers'
	// certificate checks and the multifd send threads).
	Transport string `json:"transport,omitempty"`
	// Repeat: the run's place among the repeated migrations of one system
	// (-repeats), counted from 1; 0 for a system run once.
	Repeat          int        `json:"repeat,omitempty"`
	BytesTotal      int64      `json:"bytes_total"`
	WireBytes       int64      `json:"wire_bytes"`
	BytesReported   int64      `json:"bytes_reported"`
	Iterations      int        `json:"iterations"`
	Converged       bool       `json:"converged"`
	Migrated        bool       `json:"migrated"`
	Check           string     `json:"check"`
	CounterGapMS    *float64   `json:"counter_gap_ms"`
	WallSeconds     float64    `json:"wall_seconds"`
	GuestWritesPerS int        `json:"guest_writes_per_s"`
	GuestSamePct    int        `json:"guest_same_pct"`
	From            string     `json:"from"`
	To              string     `json:"to"`
	ChainPos        int        `json:"chain_position"`
	Started         string     `json:"started_utc"`
	Load            string     `json:"loadavg"`
	Command         string     `json:"command"`
	PerIteration    []IterStat `json:"per_iteration"`
	// The first pass (every page sent once) and what follows it; see
	// passes.go.
	FirstPass *PassSplit `json:"first_pass,omitempty"`
	// Savings: what each of ferry's mechanisms kept off the wire.
	Savings *Savings `json:"ferry_savings,omitempty"`
	// MemoryHash: ferry's hashes of guest RAM, on the paused source and on
	// the destination before it starts: "equal", or what went wrong.
	MemoryHash string `json:"memory_hash,omitempty"`
	// HashWaitMS: how long the destination's guest waited for that hash
	// (ferry says so; it is inside ferry's downtime and total time, a
	// cost of the check only).
	HashWaitMS *float64 `json:"hash_wait_ms,omitempty"`
	// GuestVerify: the guest's check of its working set (ferry.verify=1)
	// in its first report after the migration: "ok pages=N ms=T", or what
	// went wrong.
	GuestVerify string `json:"guest_verify,omitempty"`
	// Guests that write faster than the link (outrun.go): the highest
	// auto-converge throttle, the lowest write rate the guest's writer
	// reported while the migration ran, and what post-copy did.
	ThrottleMaxPct int          `json:"throttle_max_pct,omitempty"`
	GuestWritesLow *int         `json:"guest_writes_low_per_s,omitempty"`
	DirtyRates     *DirtyRates  `json:"dirty_rates,omitempty"`
	Postcopy       *PostcopyRun `json:"postcopy,omitempty"`
	QEMU           *QemuInfo    `json:"qemu,omitempty"`
	Error          string       `json:"error,omitempty"`

	wl workload
	t0 time.Time // the start of the migration command
}

func (r *Run) fail(format string, a ...any) {
	msg := fmt.Sprintf(format, a...)
	if r.Error != "" {
		r.Error += "; "
	}
	r.Error += msg
}

// vm is a running guest: its VMM process and where to control it.
type vm struct {
	p      *proc
	h      *host
	sock   string // ferry control socket or QMP socket
	family string
	qmp    *qmpConn
	tls    bool // QEMU: has the TLS credential objects (certs.go)
}

func (v *vm) stop() {
	if v == nil {
		return
	}
	if v.qmp != nil {
		v.qmp.close()
	}
	v.p.stop()
}

type bench struct {
	ferry, qemu, kernel, initrd string
	mem, ws, hot                string
	rate                        int
	downtime, bound             time.Duration
	bootWait                    time.Duration
	maxIter                     int
	tmp, logs                   string
	defaultCmdline              string
	hosts                       [2]*host
	seq, port                   int
	runs                        []*Run
	out                         string
	cmdlines                    map[string]string // workload/family -> kernel "Command line:"
	memoryHash                  bool              // ferry --memory-hash on both sides, compared
	repeats                     int               // runs of system ferry on a workload with Repeat
	connections                 int               // ferry migrate --connections N of ferry-conns*
	hasConnections              bool              // this ferry's migrate takes --connections
	certs                       *tlsCerts         // the run's CA and certificates (TLS systems)
	notes                       []string          // printed in the header
}

func (b *bench) nextPort() int { b.port++; return b.port }

func (b *bench) logPath(name string) string { return filepath.Join(b.logs, name+".log") }

func parseSize(s string) (uint64, error) {
	mult := uint64(1)
	switch {
	case strings.HasSuffix(s, "G"):
		mult, s = 1<<30, strings.TrimSuffix(s, "G")
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, strings.TrimSuffix(s, "M")
	case strings.HasSuffix(s, "K"):
		mult, s = 1<<10, strings.TrimSuffix(s, "K")
	}
	n, err := strconv.ParseUint(s, 10, 64)
	return n * mult, err
}

func main() {
	root, _ := os.Getwd()
	var (
		ferryBin  = flag.String("ferry", filepath.Join(root, "bin/ferry"), "ferry binary")
		qemuBin   = flag.String("qemu", "qemu-system-x86_64", "QEMU binary")
		guestDir  = flag.String("guest", filepath.Join(root, "guest-images/out"), "guest image directory (vmlinux, initramfs.cpio)")
		wls       = flag.String("workloads", "same,mix,mixpages,mcf,memcached,random,hot,idle,memcached-chg256,random-chg1024,fill-mixed,rewrite,big", "workloads, comma-separated (also zeusmp = mix, bzip2 = memcached, and memcached-chg256-mixed, random-chg1024-mixed: the delta workloads on the mixed fill)")
		syss      = flag.String("systems", "ferry,ferry-no-digest,ferry-no-clear,ferry-no-delta,ferry-no-compress,ferry-zstd,ferry-no-auto-converge,ferry-postcopy,ferry-tls,ferry-conns,ferry-conns-tls,qemu,qemu-xbzrle,qemu-multifd-zstd,qemu-multifd,qemu-auto-converge,qemu-postcopy,qemu-tls", "systems, comma-separated; each workload runs those of them it names (the first five unless it names others), see -all-pairs")
		allPairs  = flag.Bool("all-pairs", false, "run every selected system on every selected workload, not only the systems each workload names")
		repeats   = flag.Int("repeats", 10, "run system ferry this many times in a row on the big workload (ping-pong), for its downtimes; 1: once")
		conns     = flag.Int("connections", 2, "ferry migrate --connections N of ferry-conns and ferry-conns-tls (run only if the ferry binary has the flag)")
		memHash   = flag.Bool("memory-hash", true, "ferry --memory-hash on both sides, and require equal hashes of guest RAM (the destination's hash is in ferry's downtime: ferry says how long, and the big workload's tables leave it out)")
		bws       = flag.String("bws", "32,0", "bandwidth caps in MiB/s, comma-separated (0: unlimited)")
		mem       = flag.String("mem", "128M", "guest memory")
		ws        = flag.String("ws", "32M", "the writer's working set (ferry.ws)")
		hot       = flag.String("hot", "1M", "hot set for the hot workload (ferry.hot)")
		rate      = flag.Int("rate", 20000, "the writer's page writes per second (ferry.rate); 20000 in a 32 MiB working set dirties about as many distinct pages per second as a 32 MiB/s link carries")
		downtime  = flag.Duration("downtime", 300*time.Millisecond, "downtime budget (both peers)")
		bound     = flag.Duration("bound", 30*time.Second, "give a migration up after this long (ferry --timeout --on-timeout abort; QEMU migrate_cancel)")
		maxIter   = flag.Int("max-iterations", 1000, "ferry --max-iterations (QEMU has no such limit: the time bound is the common one)")
		bootWait  = flag.Duration("boot-wait", 400*time.Second, "wait this long for the guest's first FERRY-DIRTY line")
		netns     = flag.String("netns", "auto", "two network namespaces (1), loopback (0), or auto (namespaces as root)")
		out       = flag.String("out", filepath.Join(root, "bench"), "directory for results.json and the SVG plot")
		logs      = flag.String("logs", "", "keep the VMMs' logs in this directory (default: in the temporary directory, removed at the end)")
		reportDir = flag.String("report", "", "only print the report for an existing results.json in this directory")
		markdown  = flag.String("markdown", "", "also write the report's tables into this Markdown file, between the lines "+mdBegin+" and "+mdEnd)
	)
	flag.Parse()
	if *reportDir != "" {
		runs, err := loadRuns(filepath.Join(*reportDir, "results.json"))
		if err != nil {
			fatal("%v", err)
		}
		reportTo(*markdown, runs, *reportDir)
		return
	}
	b := &bench{qemu: *qemuBin, mem: *mem, ws: *ws, hot: *hot, rate: *rate, downtime: *downtime,
		bound: *bound, bootWait: *bootWait, maxIter: *maxIter, out: *out, cmdlines: map[string]string{},
		memoryHash: *memHash, repeats: *repeats, connections: *conns}
	b.port = 7600 + os.Getpid()%1000

	var workloads []workload
	for _, n := range strings.Split(*wls, ",") {
		w, ok := findWorkload(strings.TrimSpace(n))
		if !ok {
			fatal("unknown workload %q", n)
		}
		workloads = append(workloads, w)
	}
	var systems []system
	for _, n := range strings.Split(*syss, ",") {
		s, ok := findSystem(strings.TrimSpace(n))
		if !ok {
			fatal("unknown system %q", n)
		}
		systems = append(systems, s)
	}
	var caps []int
	for _, s := range strings.Split(*bws, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 0 {
			fatal("bad -bws %q", *bws)
		}
		caps = append(caps, n)
	}

	// Whatever the end (done, failed, Ctrl-C, SIGTERM), stopRun stops every
	// process the benchmark started, removes the namespaces and the
	// temporary directory, and says if anything survived.
	markRun()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sig
		code := stopRun() // before any output: Ctrl-C may have ended tee (make bench)
		fmt.Fprintf(os.Stderr, "migbench: %v: stopped\n", s)
		os.Exit(max(code, 130))
	}()
	// A write to a closed stdout (tee gone) must not kill migbench before
	// stopRun: the write fails with EPIPE instead (and children do not
	// inherit an ignored SIGPIPE, as with signal.Ignore).
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)

	var err error
	if b.tmp, err = os.MkdirTemp("", "ferry-migbench."); err != nil {
		fatal("%v", err)
	}
	runMu.Lock()
	runTmp = b.tmp
	runMu.Unlock()
	b.logs = *logs
	if b.logs == "" {
		b.logs = filepath.Join(b.tmp, "logs")
	}
	os.MkdirAll(b.logs, 0o755)
	// Private copies: other engineers may rebuild bin/ferry or the guest
	// image while this runs.
	b.ferry, b.kernel, b.initrd = filepath.Join(b.tmp, "ferry"), filepath.Join(b.tmp, "vmlinux"), filepath.Join(b.tmp, "initramfs.cpio")
	for dst, src := range map[string]string{b.ferry: *ferryBin, b.kernel: filepath.Join(*guestDir, "vmlinux"), b.initrd: filepath.Join(*guestDir, "initramfs.cpio")} {
		if err := copyFile(dst, src); err != nil {
			fatal("%v (make build guest)", err)
		}
	}

	useNetns := *netns == "1" || (*netns == "auto" && os.Geteuid() == 0)
	hosts, cleanup, err := setupHosts(useNetns)
	setHosts(hosts, cleanup)
	if err != nil {
		fatal("%v", err)
	}
	b.hosts = hosts

	if b.defaultCmdline, err = b.probeCmdline(); err != nil {
		fatal("%v", err)
	}
	var plan []planned
	needTLS, needConns := false, false
	for _, w := range workloads {
		p := planned{w: w}
		for _, s := range systems {
			if *allPairs || w.runs(s.name) {
				p.systems = append(p.systems, s)
				needTLS = needTLS || s.tls
				needConns = needConns || s.connections
			}
		}
		plan = append(plan, p)
	}
	if needTLS {
		if b.certs, err = b.makeCerts(filepath.Join(b.tmp, "tls")); err != nil {
			fatal("%v", err)
		}
		b.notes = append(b.notes, "TLS systems: one CA and a certificate per host (name and address) from `ferry certs`; ferry --tls-cert/--tls-key/--tls-ca on both sides, QEMU tls-creds-x509 (verify-peer=on) on both sides from the same files")
	}
	if needConns {
		b.hasConnections = hasConnections(b.ferry)
		if b.hasConnections {
			b.notes = append(b.notes, fmt.Sprintf("ferry-conns, ferry-conns-tls: ferry migrate --connections %d", b.connections))
		} else {
			b.notes = append(b.notes, "ferry-conns, ferry-conns-tls: SKIPPED: this ferry's migrate has no --connections (ferry migrate --help does not mention it)")
		}
	}
	b.header(plan, caps)

	start := time.Now()
	for _, p := range plan {
		for _, fam := range []string{"ferry", "qemu"} {
			b.chain(p.w, fam, p.systems, caps)
		}
	}
	fmt.Printf("\n== all runs done in %s\n", time.Since(start).Round(time.Second))
	for k, v := range b.cmdlines {
		fmt.Printf("kernel command line (%s): %s\n", k, v)
	}
	if err := b.save(); err != nil {
		fatal("%v", err)
	}
	fmt.Println()
	reportTo(*markdown, b.runs, b.out)
	if *logs != "" {
		fmt.Printf("\nlogs: %s\n", b.logs)
	} else {
		fmt.Printf("\nlogs: removed with the temporary directory (-logs DIR keeps them)\n")
	}
	os.Exit(stopRun())
}

var (
	runMu    sync.Mutex // guards runHosts, removeNS and runTmp
	runHosts [2]*host
	removeNS = func() {}
	runTmp   string // the temporary directory: copies, sockets, logs
	stopOnce sync.Once
	stopCode int
)

func setHosts(h [2]*host, cleanup func()) {
	if cleanup == nil {
		cleanup = func() {}
	}
	runMu.Lock()
	defer runMu.Unlock()
	runHosts, removeNS = h, cleanup
}

// stopRun (once; a second caller waits for the first) stops every process
// of the run, removes its namespaces and temporary directory, then checks
// that none of it survived: 0, or 1 after saying what did.
func stopRun() int {
	stopOnce.Do(func() {
		stopAll()
		runMu.Lock()
		defer runMu.Unlock()
		removeNS()
		if runTmp != "" {
			os.RemoveAll(runTmp)
		}
		var left []string
		for _, p := range runProcesses() {
			left = append(left, p.String())
		}
		for _, h := range runHosts {
			if h == nil || h.ns == "" {
				continue
			}
			if exec.Command("ip", "netns", "pids", h.ns).Run() == nil {
				left = append(left, "network namespace "+h.ns)
			}
			if exec.Command("ip", "link", "show", "dev", h.dev).Run() == nil {
				left = append(left, "veth "+h.dev)
			}
		}
		if _, err := os.Stat(runTmp); runTmp != "" && err == nil {
			left = append(left, "temporary directory "+runTmp)
		}
		if len(left) > 0 {
			fmt.Fprintf(os.Stderr, "migbench: left behind:\n  %s\n", strings.Join(left, "\n  "))
			stopCode = 1
		}
	})
	return stopCode
}

func fatal(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "migbench: "+format+"\n", a...)
	stopRun()
	os.Exit(1)
}
