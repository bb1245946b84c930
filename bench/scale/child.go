package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"runtime/pprof"
	"time"

	"golang.org/x/sys/unix"
)

// The two sides of a measurement, each a child process of the benchmark
// (`scale child send|recv FLAGS`, not meant to be run by hand), so that
// each side's peak RSS and CPU time are its own: a migration
// (migration.go) or a plain copy (copy.go). The one-core references run
// in a child too (`scale child refs`). A child speaks to the
// parent on stdout, one JSON object per line: the receiver first says
// which port it listens on ({"port": N}); each side ends with its
// result ({"result": {...}}). The receiver then waits for its stdin to
// close before it exits (the parent closes it once the sender is done),
// so that nothing it still has to send is cut. Errors go to stderr, and
// the exit status is 1.

const childCommand = "child"

// corruptEnv, set in the environment, makes the migration's receiver
// flip one bit of guest memory before its hash: the test that a run
// which does not move the bytes correctly fails.
const corruptEnv = "FERRY_SCALE_CORRUPT"

// childFlags are the flags of both children.
type childFlags struct {
	role         string // send or recv
	mode         string // migrate (ferry's sender and receiver) or copy (plain TCP/TLS)
	size         uint64
	conns        int
	tlsDir       string // "": plain TCP
	addr         string // send: the receiver's HOST:PORT
	compress     string
	noDigest     bool
	resumeWindow time.Duration
	timeout      time.Duration
	profile      string // write the measured part's CPU profile there
	prefault     bool   // recv: guest memory faulted in before the measurement
	verbose      bool
}

// args renders f as the child's command line.
func (f childFlags) args() []string {
	a := []string{childCommand, f.role, "-mode", f.mode, "-size", fmt.Sprint(f.size), "-conns", fmt.Sprint(f.conns),
		"-compress", f.compress, "-resume-window", f.resumeWindow.String(), "-timeout", f.timeout.String()}
	if f.tlsDir != "" {
		a = append(a, "-tls-dir", f.tlsDir)
	}
	if f.addr != "" {
		a = append(a, "-addr", f.addr)
	}
	if f.noDigest {
		a = append(a, "-no-digest")
	}
	if f.profile != "" {
		a = append(a, "-cpuprofile", f.profile)
	}
	if f.prefault {
		a = append(a, "-prefault")
	}
	if f.verbose {
		a = append(a, "-v")
	}
	return a
}

// childResult is what a child reports. Seconds and CPUSeconds cover the
// measured part only: not the fill before it, nor the hash after it.
type childResult struct {
	Seconds     float64 `json:"seconds"`
	CPUSeconds  float64 `json:"cpu_seconds"`
	UserSeconds float64 `json:"user_seconds"`
	SysSeconds  float64 `json:"sys_seconds"`
	FillSeconds float64 `json:"fill_seconds,omitempty"`
	// GuestResident is the resident part of the guest mapping at the end
	// (zero without one: the copy's receiver).
	GuestResident uint64 `json:"guest_resident"`
	Hash          string `json:"hash,omitempty"`
	Mix           *Mix   `json:"mix,omitempty"`
	// Bytes: the copy's bytes moved; the migration's bytes on the wire.
	Bytes int64 `json:"bytes"`
	// The sender's statistics of a migration.
	Iterations int    `json:"iterations,omitempty"`
	PagesZero  uint64 `json:"pages_zero,omitempty"`
	PagesSent  uint64 `json:"pages_sent,omitempty"`
	TableBytes int64  `json:"table_bytes,omitempty"`
	Compressed int    `json:"records_compressed,omitempty"`
	// TLSSuite is the cipher suite the sender's first connection
	// negotiated.
	TLSSuite string `json:"tls_suite,omitempty"`
}

// suite names c's TLS cipher suite ("" without TLS).
func suite(c net.Conn) string {
	if tc, ok := c.(*tls.Conn); ok {
		return tls.CipherSuiteName(tc.ConnectionState().CipherSuite)
	}
	return ""
}

// childMain runs a child and returns its exit status.
func childMain(args []string) int {
	if len(args) > 0 && args[0] == "refs" {
		if err := runRefs(args[1:]); err != nil {
			fmt.Fprintf(os.Stderr, "scale refs: %v\n", err)
			return 1
		}
		return 0
	}
	f, err := parseChildFlags(args)
	if err == nil {
		err = runChild(f)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "scale %s: %v\n", f.role, err)
		return 1
	}
	return 0
}

// refResult is what the refs child reports.
type refResult struct {
	MemcpyGBps float64 `json:"memcpy_GBps"`
	AESGCMGBps float64 `json:"aes_128_gcm_seal_GBps"`
}

// runRefs measures the one-core references (refs.go). They run in a
// child of their own because their buffers would otherwise raise the
// benchmark's peak RSS, which every child it starts afterwards inherits
// in its own ru_maxrss (Go starts children with vfork semantics: the
// child execs from the parent's address space).
func runRefs(args []string) error {
	fs := flag.NewFlagSet("scale child refs", flag.ContinueOnError)
	d := fs.Duration("reftime", 2*time.Second, "how long each reference runs")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var r refResult
	r.MemcpyGBps = memcpyRate(*d) / 1e9
	aes, err := aesGCMRate(*d)
	if err != nil {
		return err
	}
	r.AESGCMGBps = aes / 1e9
	return report(map[string]refResult{"result": r})
}

func parseChildFlags(args []string) (childFlags, error) {
	var f childFlags
	if len(args) == 0 || (args[0] != "send" && args[0] != "recv") {
		return f, errors.New("child: want send or recv")
	}
	f.role = args[0]
	fs := flag.NewFlagSet("scale child "+f.role, flag.ContinueOnError)
	fs.StringVar(&f.mode, "mode", "migrate", "migrate or copy")
	fs.Uint64Var(&f.size, "size", 0, "guest memory in bytes")
	fs.IntVar(&f.conns, "conns", 1, "connections")
	fs.StringVar(&f.tlsDir, "tls-dir", "", "directory of the TLS files (certs.go); empty: plain TCP")
	fs.StringVar(&f.addr, "addr", "", "the receiver's HOST:PORT (send)")
	fs.StringVar(&f.compress, "compress", "off", "migrate.Options.Compress")
	fs.BoolVar(&f.noDigest, "no-digest", false, "migrate.Options.NoDigest")
	fs.DurationVar(&f.resumeWindow, "resume-window", 10*time.Minute, "the receiver's Keeper window (as ferry receive --resume-window)")
	fs.DurationVar(&f.timeout, "timeout", 10*time.Minute, "give up after this long")
	fs.StringVar(&f.profile, "cpuprofile", "", "write the CPU profile of the measured part to `FILE`")
	fs.BoolVar(&f.prefault, "prefault", false, "recv: map and fault in the guest memory before the measurement")
	fs.BoolVar(&f.verbose, "v", false, "log the receiver's events")
	if err := fs.Parse(args[1:]); err != nil {
		return f, err
	}
	switch {
	case f.mode != "migrate" && f.mode != "copy":
		return f, fmt.Errorf("-mode %q: want migrate or copy", f.mode)
	case f.size == 0 || f.size%pageSize != 0:
		return f, fmt.Errorf("-size %d: want a positive multiple of %d", f.size, pageSize)
	case f.conns < 1:
		return f, fmt.Errorf("-conns %d: want at least 1", f.conns)
	case f.role == "send" && f.addr == "":
		return f, errors.New("send needs -addr")
	}
	return f, nil
}

func runChild(f childFlags) error {
	ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
	defer cancel()
	var res childResult
	var err error
	switch {
	case f.role == "send" && f.mode == "migrate":
		res, err = sendMigration(ctx, f)
	case f.role == "send":
		res, err = sendCopy(ctx, f)
	default:
		ln, lerr := net.Listen("tcp", "127.0.0.1:0")
		if lerr != nil {
			return fmt.Errorf("listen: %w", lerr)
		}
		defer ln.Close()
		if err := report(map[string]int{"port": ln.Addr().(*net.TCPAddr).Port}); err != nil {
			return err
		}
		if f.mode == "migrate" {
			res, err = receiveMigration(ctx, f, ln)
		} else {
			res, err = receiveCopy(ctx, f, ln)
		}
	}
	if err != nil {
		return err
	}
	if err := report(map[string]childResult{"result": res}); err != nil {
		return err
	}
	if f.role == "recv" {
		io.Copy(io.Discard, os.Stdin) // until the parent is done with us
	}
	return nil
}

// report writes one line to the parent.
func report(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if _, err := os.Stdout.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("report to the parent: %w", err)
	}
	return nil
}

// meter measures a child's measured part: its wall time, its CPU time
// (every thread, user and system), and its CPU profile when asked for.
type meter struct {
	t0         time.Time
	user, sys  time.Duration
	profile    *os.File
	profileErr error
}

func startMeter(profile string) (*meter, error) {
	m := &meter{}
	if profile != "" {
		f, err := os.Create(profile)
		if err != nil {
			return nil, fmt.Errorf("CPU profile: %w", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return nil, fmt.Errorf("CPU profile: %w", err)
		}
		m.profile = f
	}
	m.user, m.sys = cpuTimes()
	m.t0 = time.Now()
	return m, nil
}

// stop ends the measured part and puts its times in res.
func (m *meter) stop(res *childResult) error {
	res.Seconds = time.Since(m.t0).Seconds()
	u, s := cpuTimes()
	res.UserSeconds, res.SysSeconds = (u - m.user).Seconds(), (s - m.sys).Seconds()
	res.CPUSeconds = res.UserSeconds + res.SysSeconds
	if m.profile != nil {
		pprof.StopCPUProfile()
		if err := m.profile.Close(); err != nil {
			return fmt.Errorf("CPU profile: %w", err)
		}
	}
	return nil
}

// cpuTimes is this process's user and system time so far, every thread.
func cpuTimes() (user, sys time.Duration) {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0, 0
	}
	return time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano())
}

// filledGuest maps and fills the sender's guest memory.
func filledGuest(f childFlags) ([]byte, Mix, float64, error) {
	t0 := time.Now()
	mem, err := mapGuest(f.size)
	if err != nil {
		return nil, Mix{}, 0, err
	}
	mix := fillGuest(mem)
	return mem, mix, time.Since(t0).Seconds(), nil
}

// finish completes a side's result with its guest memory's resident size
// and hash, taken after the measured part.
func finish(res *childResult, mem []byte) error {
	var err error
	if res.GuestResident, err = residentBytes(mem); err != nil {
		return err
	}
	res.Hash = hashGuest(mem)
	return nil
}
