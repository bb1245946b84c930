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
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferryvmm/ferry/migrate"
	"github.com/ferryvmm/ferry/vmm/incoming"
)

// The two sides of a measurement, each a child process of the benchmark
// (`scale child send|recv FLAGS`, not meant to be run by hand), so that
// each side's peak RSS and CPU time are its own. A child speaks to the
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

// sendMigration fills the guest and migrates it with migrate.Send.
func sendMigration(ctx context.Context, f childFlags) (childResult, error) {
	var res childResult
	mem, mix, fillSecs, err := filledGuest(f)
	if err != nil {
		return res, err
	}
	res.Mix, res.FillSeconds = &mix, fillSecs
	cfg, err := clientTLS(f.tlsDir, f.addr)
	if err != nil {
		return res, err
	}
	mode, err := migrate.ParseCompressMode(f.compress)
	if err != nil {
		return res, err
	}
	opts := migrate.Options{Compress: mode, NoDigest: f.noDigest, Connections: f.conns}
	if f.conns > 1 {
		opts.StreamDial = func(ctx context.Context) (io.ReadWriteCloser, error) { return dial(ctx, f.addr, cfg) }
	}
	src := &source{info: guestInfo(f.size), mem: mem, state: guestState()}

	m, err := startMeter(f.profile)
	if err != nil {
		return res, err
	}
	conn, err := dial(ctx, f.addr, cfg)
	if err != nil {
		return res, err
	}
	res.TLSSuite = suite(conn)
	st, err := migrate.Send(ctx, src, conn, opts)
	conn.Close()
	if merr := m.stop(&res); err == nil && merr != nil {
		return res, merr
	}
	if err != nil {
		return res, fmt.Errorf("migrate: %w", err)
	}
	res.Bytes, res.Iterations, res.TableBytes = st.BytesTotal, len(st.Iterations), st.TableBytes
	for _, it := range st.Iterations {
		res.PagesZero += it.PagesZero
		res.PagesSent += it.PagesSent
		res.Compressed += it.CompressedRecords
	}
	// An idle guest: every page once, in iteration 0, and an empty
	// stop-and-copy.
	if !st.Converged || res.PagesZero+res.PagesSent != f.size/pageSize || res.PagesZero != mix.Zero {
		return res, fmt.Errorf("migrate: converged %v, %d zero and %d full pages sent, want %d in all of which %d zero",
			st.Converged, res.PagesZero, res.PagesSent, f.size/pageSize, mix.Zero)
	}
	return res, finish(&res, mem)
}

// receiveMigration is ferry receive's receiving end (vmm/incoming, with a
// Keeper and a Sessions registry) into a fake destination.
func receiveMigration(ctx context.Context, f childFlags, ln net.Listener) (childResult, error) {
	var res childResult
	cfg, err := serverTLS(f.tlsDir)
	if err != nil {
		return res, err
	}
	logf := func(string, ...any) {}
	if f.verbose {
		logf = func(format string, args ...any) { fmt.Fprintf(os.Stderr, "scale recv: "+format+"\n", args...) }
	}
	info, state := guestInfo(f.size), guestState()
	keep := migrate.NewKeeper(f.resumeWindow, logf)
	defer keep.Close()
	srv := incoming.NewServer(ln, incoming.Config[*destination]{
		TLS: cfg,
		Receive: migrate.ReceiveOptions{MaxMemory: f.size, MaxVCPUs: info.VCPUs, IdleTimeout: 30 * time.Second,
			Keep: keep, Sessions: migrate.NewSessions()},
		NewTarget: func() *destination { return &destination{want: info, state: state} },
		Logf:      logf,
	})
	defer srv.Close()
	m, err := startMeter(f.profile)
	if err != nil {
		return res, err
	}
	dst, err := srv.Serve(ctx)
	if merr := m.stop(&res); err == nil && merr != nil {
		return res, merr
	}
	if err != nil {
		return res, fmt.Errorf("receive: %w", err)
	}
	if !dst.started.Load() {
		return res, errors.New("receive: the guest did not start")
	}
	if os.Getenv(corruptEnv) != "" {
		dst.mem[len(dst.mem)/2] ^= 1
	}
	return res, finish(&res, dst.mem)
}

// copyChunk is the size of the copy's writes and reads: the size of the
// migration sender's output buffer.
const copyChunk = 4 << 20

// sendCopy fills the same guest memory and writes all of it to the
// receiver over f.conns connections (connection k sends the k-th of
// f.conns equal parts), then waits for the receiver's one-byte
// acknowledgement on each.
func sendCopy(ctx context.Context, f childFlags) (childResult, error) {
	var res childResult
	mem, mix, fillSecs, err := filledGuest(f)
	if err != nil {
		return res, err
	}
	res.Mix, res.FillSeconds = &mix, fillSecs
	cfg, err := clientTLS(f.tlsDir, f.addr)
	if err != nil {
		return res, err
	}
	conns := make([]net.Conn, f.conns)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	for k := range conns {
		if conns[k], err = dial(ctx, f.addr, cfg); err != nil {
			return res, err
		}
	}
	res.TLSSuite = suite(conns[0])
	stop := context.AfterFunc(ctx, func() {
		for _, c := range conns {
			c.SetDeadline(time.Unix(1, 0))
		}
	})
	defer stop()

	m, err := startMeter(f.profile)
	if err != nil {
		return res, err
	}
	pages := f.size / pageSize
	errs := make([]error, len(conns))
	var wg sync.WaitGroup
	for k, c := range conns {
		part := mem[pages*uint64(k)/uint64(len(conns))*pageSize : pages*uint64(k+1)/uint64(len(conns))*pageSize]
		wg.Go(func() {
			for off := 0; off < len(part) && errs[k] == nil; off += copyChunk {
				_, errs[k] = c.Write(part[off:min(off+copyChunk, len(part))])
			}
			if errs[k] == nil {
				errs[k] = closeWrite(c)
			}
			var ack [1]byte
			if errs[k] == nil {
				_, errs[k] = io.ReadFull(c, ack[:])
			}
		})
	}
	wg.Wait()
	if err := m.stop(&res); err != nil {
		return res, err
	}
	if err := errors.Join(errs...); err != nil {
		return res, fmt.Errorf("copy: %w", err)
	}
	res.Bytes = int64(f.size)
	return res, finish(&res, mem)
}

// receiveCopy accepts f.conns connections (the TLS handshake as ferry's
// receiver makes it) and reads each to its end into a buffer of its own,
// reused: the bytes go nowhere, so the copy is what the loopback link and
// TLS can carry, without the receiver's page faults.
func receiveCopy(ctx context.Context, f childFlags, ln net.Listener) (childResult, error) {
	var res childResult
	cfg, err := serverTLS(f.tlsDir)
	if err != nil {
		return res, err
	}
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	m, err := startMeter(f.profile)
	if err != nil {
		return res, err
	}
	counts := make([]int64, f.conns)
	errs := make([]error, f.conns)
	var wg sync.WaitGroup
	for k := range f.conns {
		raw, err := ln.Accept()
		if err != nil {
			wg.Wait()
			return res, fmt.Errorf("accept: %w", err)
		}
		wg.Go(func() {
			defer raw.Close()
			// Plain TCP starts with guest bytes: no handshake (ferry's would
			// read them as a record or a TLS hello).
			var c net.Conn = raw
			if cfg != nil {
				if c, errs[k] = migrate.ServerHandshake(raw, cfg, 10*time.Second); errs[k] != nil {
					return
				}
			}
			stop := context.AfterFunc(ctx, func() { raw.SetDeadline(time.Unix(1, 0)) })
			defer stop()
			counts[k], errs[k] = io.CopyBuffer(io.Discard, struct{ io.Reader }{c}, make([]byte, copyChunk))
			if errs[k] == nil {
				_, errs[k] = c.Write([]byte{1})
			}
		})
	}
	wg.Wait()
	if err := m.stop(&res); err != nil {
		return res, err
	}
	if err := errors.Join(errs...); err != nil {
		return res, fmt.Errorf("copy: %w", err)
	}
	for _, n := range counts {
		res.Bytes += n
	}
	if res.Bytes != int64(f.size) {
		return res, fmt.Errorf("copy: received %d bytes, want %d", res.Bytes, f.size)
	}
	return res, nil
}

// dial connects to addr as vmm/control's dialDestination does: TCP, then
// the TLS handshake with cfg if not nil.
func dial(ctx context.Context, addr string, cfg *tls.Config) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", addr, err)
	}
	if cfg == nil {
		return conn, nil
	}
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("TLS handshake with %s: %w", addr, migrate.ExplainTLSError(err))
	}
	return tc, nil
}

// closeWrite ends what c sends (TLS: close_notify; TCP: FIN), so the
// peer reads EOF, and leaves c open for reading.
func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return fmt.Errorf("%T cannot half-close", c)
}
