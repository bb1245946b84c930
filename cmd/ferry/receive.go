package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/ferryvmm/ferry/migrate"
	"github.com/ferryvmm/ferry/vmm"
)

var receiveCommand = &cli.Command{
	Name:  "receive",
	Usage: "wait for a live migration and run the guest it brings",
	Description: `Listens on --listen for a 'ferry migrate'. A failed, refused or broken
incoming migration is reported and ferry keeps waiting (no guest starts,
nothing stays allocated); one migration is accepted at a time. Once a guest
arrives it runs here exactly as with 'ferry run': console on this terminal,
control socket on --api-socket, exit status 0 when the guest powers off.

A guest that was paused on the source arrives paused: its vCPUs do not
run until 'ferry resume --api-socket PATH' here ('ferry status' says
"paused"). Without --api-socket nothing could resume it, so such a
migration is refused (the guest stays paused on the source).

With --tls-cert, --tls-key and --tls-ca (files from 'ferry certs') only
sources with a certificate from the CA are accepted (mutual TLS 1.3).
Without them ferry receive listens only on loopback addresses, unless
--insecure is given: anyone who can reach the port could send it a guest.

When a migration fails before its last step, ferry receive keeps the
pages it received from that VM for --resume-window (default 10m, 0: keep
nothing), so that 'ferry migrate --resume' from the same source sends
only the pages that differ. A new migration (without --resume) drops
them; so does the end of the window.

--timeout bounds the whole wait: when it expires without a guest running
here, ferry receive exits with status 1.

--disk gives the guest's disks, in the order the source has them: the
same raw image files (storage both hosts see at the same path). Requests
in flight are completed on the source before it pauses. --net gives the
guest's network devices, in the source's order, on this host's taps.`,
	Flags: append([]cli.Flag{
		&cli.StringFlag{Name: "listen", Usage: "`HOST:PORT` to accept the migration on", Required: true},
		&cli.StringFlag{Name: "api-socket", Usage: "serve the control API (status, pause, resume, migrate, snapshot) on this unix socket `PATH` once the guest is here"},
		&cli.StringFlag{Name: "max-memory", Usage: "largest guest accepted (default: half of this host's memory, at most 64G)"},
		&cli.IntFlag{Name: "max-cpus", Value: 32, Usage: "most vCPUs accepted"},
		&cli.DurationFlag{Name: "timeout", Usage: "give up (exit 1) if no guest runs here after this long (0: wait forever)"},
		&cli.DurationFlag{Name: "idle-timeout", Value: 30 * time.Second, Usage: "drop a connected source that sends nothing for this long"},
		&cli.DurationFlag{Name: "resume-window", Value: 10 * time.Minute, Usage: "keep the pages of a failed migration this long for 'ferry migrate --resume' (0: keep nothing)"},
		&cli.BoolFlag{Name: "insecure", Usage: "allow a non-loopback --listen without TLS (trusted networks only)"},
		&cli.StringFlag{Name: "kvm", Value: "/dev/kvm", Usage: "KVM device node"},
		&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, Usage: "print unclaimed I/O ports at exit"},
		memoryHashFlag,
		diskFlag,
		netFlag,
	}, tlsFlags("this host's")...),
	Action: receiveAction,
}

// Limits on connections that have not become a migration yet.
const (
	handshakeTimeout = 10 * time.Second // TLS handshake, or the first bytes without TLS
	maxPendingConns  = 8                // connections handled at once; more are closed
)

func receiveAction(c *cli.Context) error {
	if c.NArg() > 0 {
		return usageError{fmt.Errorf("receive takes no arguments (got %q)", c.Args().First())}
	}
	maxMem, err := guestLimits(c)
	if err != nil {
		return err
	}
	if c.Duration("timeout") < 0 || c.Duration("idle-timeout") <= 0 || c.Duration("resume-window") < 0 {
		return usageError{errors.New("--timeout and --resume-window must not be negative, --idle-timeout must be positive")}
	}
	files, err := tlsFiles(c)
	if err != nil {
		return err
	}
	// The guest's disks (the same image files as on the source: shared
	// storage) and network devices (this host's taps), in the same order.
	disks, nets, err := deviceFlags(c)
	if err != nil {
		return err
	}
	var tlsCfg *tls.Config
	mode := "mutual TLS"
	if files.Enabled() {
		if tlsCfg, err = migrate.ServerTLSConfig(files); err != nil {
			return usageError{err}
		}
	} else if c.Bool("insecure") {
		mode = "no TLS: --insecure"
	} else {
		if err := loopbackOnly(c.String("listen")); err != nil {
			return flagError("listen", "%v", err)
		}
		mode = "no TLS, loopback only"
	}
	ln, err := net.Listen("tcp", c.String("listen"))
	if err != nil {
		return flagError("listen", "%v", err)
	}
	defer ln.Close()
	fmt.Fprintf(os.Stderr, "ferry: waiting for a migration on %s (%s; guests up to %d MiB, %d vCPUs)\n",
		ln.Addr(), mode, maxMem>>20, c.Int("max-cpus"))

	ctx := context.Background()
	if d := c.Duration("timeout"); d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	keep := migrate.NewKeeper(c.Duration("resume-window"), logf)
	l := &listener{
		ln:  ln,
		tls: tlsCfg,
		opts: migrate.ReceiveOptions{MaxMemory: maxMem, MaxVCPUs: c.Int("max-cpus"), IdleTimeout: c.Duration("idle-timeout"),
			Keep: keep},
		cfg:  vmm.Config{Console: os.Stdout, KVMPath: c.String("kvm"), Disks: disks, Nets: nets},
		hash: memoryHashLogger(c, "destination before start"),
		refusePaused: refusePausedWithout(c.String("api-socket"),
			"this ferry receive has no --api-socket (start it with --api-socket PATH)"),
		started: make(chan *vmm.Machine, 1),
	}
	m, err := l.run(ctx)
	keep.Close() // a guest runs here, or ferry receive gives up
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("no guest arrived within --timeout %v", c.Duration("timeout"))
		}
		return err
	}
	defer m.Close()
	return serve(c, m)
}

// loopbackOnly refuses a listen address that is not a loopback address.
func loopbackOnly(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	ok := host != ""
	if ip := net.ParseIP(host); ip != nil {
		ok = ip.IsLoopback()
	} else if ok {
		ips, err := net.LookupIP(host)
		ok = err == nil && len(ips) > 0
		for _, ip := range ips {
			ok = ok && ip.IsLoopback()
		}
	}
	if ok {
		return nil
	}
	return fmt.Errorf("%s: without TLS, ferry receive listens only on loopback addresses (127.0.0.1, ::1, localhost): "+
		"anyone who can reach the port could send it a guest, or read guest memory on the wire. "+
		"Give --tls-cert, --tls-key and --tls-ca (make them with 'ferry certs'), or --insecure on a network you trust", addr)
}

// guestLimits reads --max-memory and --max-cpus, the bounds on a guest
// that arrives from outside (receive, restore).
func guestLimits(c *cli.Context) (uint64, error) {
	maxMem := defaultMaxMemory()
	if s := c.String("max-memory"); s != "" {
		var err error
		if maxMem, err = parseSize(s); err != nil {
			return 0, flagError("max-memory", "%v", err)
		}
	}
	if c.Int("max-cpus") < 1 {
		return 0, flagError("max-cpus", "%d: must be at least 1", c.Int("max-cpus"))
	}
	return maxMem, nil
}

// defaultMaxMemory is half of this host's memory, at most 64 GiB.
func defaultMaxMemory() uint64 {
	const cap64 = 64 << 30
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return cap64
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			if kb, err := strconv.ParseUint(fields[1], 10, 64); err == nil && kb > 0 {
				return min(cap64, kb<<10/2)
			}
		}
	}
	return cap64
}

// listener accepts connections until one of them brings a running guest.
type listener struct {
	ln   net.Listener
	tls  *tls.Config
	opts migrate.ReceiveOptions
	cfg  vmm.Config
	hash func(string)
	// refusePaused, if set, is why a guest paused on its source cannot
	// come here (vmm.MigrationTarget.RefusePaused).
	refusePaused string

	mu   sync.Mutex
	busy bool // a migration holds the single slot (from HELLO on)
	// started receives the machine whose guest a migration started here
	// (a resumed migration starts the machine an earlier one prepared).
	started chan *vmm.Machine
}

// run serves connections, each in its own goroutine (so that a silent or
// broken peer cannot block a valid migration), until a guest runs here or
// ctx ends. Only one connection at a time gets past HELLO.
func (l *listener) run(ctx context.Context) (*vmm.Machine, error) {
	connCtx, cancelConns := context.WithCancel(ctx)
	defer cancelConns()
	got := make(chan *vmm.Machine, 1)
	pending := make(chan struct{}, maxPendingConns)
	var wg sync.WaitGroup
	acceptErr := make(chan error, 1)
	go func() {
		for {
			conn, err := l.ln.Accept()
			if err != nil {
				acceptErr <- err
				return
			}
			select {
			case pending <- struct{}{}:
			default:
				logf("refused a connection from %s: %d connections are already being handled", conn.RemoteAddr(), maxPendingConns)
				conn.Close()
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-pending }()
				if m := l.handle(connCtx, conn); m != nil {
					got <- m // at most one: the slot is never released after Start
				}
			}()
		}
	}()
	var err error
	select {
	case m := <-got:
		l.ln.Close()
		<-acceptErr
		cancelConns()
		wg.Wait()
		return m, nil
	case <-ctx.Done():
		err = ctx.Err()
	case err = <-acceptErr:
		err = fmt.Errorf("accept on %s: %w", l.ln.Addr(), err)
	}
	l.ln.Close()
	cancelConns()
	wg.Wait()
	// A migration past COMMIT ignores the cancellation and may have
	// started its guest meanwhile: run it.
	select {
	case m := <-got:
		return m, nil
	default:
		return nil, err
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "ferry: "+format+"\n", args...)
}

// handle runs one connection; it returns the machine if a guest now runs.
func (l *listener) handle(ctx context.Context, raw net.Conn) *vmm.Machine {
	defer raw.Close()
	peer := raw.RemoteAddr()
	// A guest arrived elsewhere, or --timeout expired: stop handshaking.
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	conn, err := migrate.ServerHandshake(raw, l.tls, handshakeTimeout)
	if !stop() && err == nil {
		err = ctx.Err()
	}
	if err != nil {
		logf("refused a connection from %s: %v; still waiting", peer, err)
		lingerClose(raw)
		return nil
	}
	target := &slotTarget{l: l, t: vmm.NewMigrationTarget(l.cfg), peer: peer}
	target.t.LogMemoryHash = l.hash
	target.t.RefusePaused = l.refusePaused
	opts := l.opts
	opts.Peer = peerIdentity(conn)
	stats, err := migrate.Receive(ctx, conn, target, opts)
	// Receive fails after starting the guest only when DONE-ACK is lost.
	var m *vmm.Machine
	if err == nil || errors.Is(err, migrate.ErrDoneAckLost) {
		m = <-l.started
	}
	if m == nil {
		logf("incoming migration from %s failed: %v; no guest runs here; still waiting", peer, err)
		lingerClose(raw)
		return nil
	}
	if err != nil {
		// Started, but DONE-ACK was lost: the source stays paused.
		logf("WARNING: %v", err)
	}
	held := ""
	if stats.PagesHeld > 0 {
		held = fmt.Sprintf(" (resumed: %d pages were kept from the failed attempt)", stats.PagesHeld)
	}
	logf("received %d pages (%d zero), %d KiB of state, %.1f MiB in %.3f s%s",
		stats.PagesFull+stats.PagesZero, stats.PagesZero, stats.StateBytes>>10, float64(stats.BytesTotal)/(1<<20), stats.Seconds, held)
	if m.Paused() {
		logf("guest received from %s, paused as it was on the source: 'ferry resume' on this ferry's --api-socket runs it", peer)
	} else {
		logf("guest received from %s and running", peer)
	}
	return m
}

// peerIdentity names the authenticated source for the Keeper: the SHA-256
// of its TLS certificate; "" without TLS (no check).
func peerIdentity(conn net.Conn) string {
	tc, ok := conn.(*tls.Conn)
	if !ok {
		return ""
	}
	certs := tc.ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return ""
	}
	sum := sha256.Sum256(certs[0].Raw)
	return hex.EncodeToString(sum[:])
}

// slotTarget is the migrate.Destination (and migrate.Resumable) of one
// connection: Prepare takes the listener's single migration slot (or
// refuses), Discard gives it back. Suspend (kept for a resume) gives the
// slot back and keeps the memory; Reclaim (a resume) takes the slot again.
type slotTarget struct {
	l    *listener
	t    *vmm.MigrationTarget
	peer net.Addr
	held bool
}

func (s *slotTarget) Prepare(info migrate.VMInfo) error {
	s.l.mu.Lock()
	if s.l.busy {
		s.l.mu.Unlock()
		return errors.New("another migration into this receiver is in progress")
	}
	s.l.busy, s.held = true, true
	s.l.mu.Unlock()
	var mem uint64
	for _, r := range info.Regions {
		mem += r.Size
	}
	logf("receiving a guest from %s: %d MiB, %d vCPUs", s.peer, mem>>20, info.VCPUs)
	if err := s.t.Prepare(info); err != nil {
		s.release()
		return err
	}
	return nil
}

func (s *slotTarget) release() {
	if s.held {
		s.l.mu.Lock()
		s.l.busy, s.held = false, false
		s.l.mu.Unlock()
	}
}

func (s *slotTarget) Memory(i int) []byte        { return s.t.Memory(i) }
func (s *slotTarget) Restore(state []byte) error { return s.t.Restore(state) }

func (s *slotTarget) Start() error {
	if err := s.t.Start(); err != nil {
		return err
	}
	s.l.started <- <-s.t.Started()
	return nil
}

func (s *slotTarget) Suspend() { s.release() }

func (s *slotTarget) Reclaim() error {
	s.l.mu.Lock()
	defer s.l.mu.Unlock()
	if s.l.busy {
		return errors.New("another migration into this receiver is in progress")
	}
	if err := s.t.Reclaim(); err != nil {
		return err
	}
	s.l.busy, s.held = true, true
	logf("resuming the migration of the guest first received from %s", s.peer)
	return nil
}

func (s *slotTarget) Discard() {
	s.t.Discard()
	s.release()
}

// lingerClose lets the peer read what this side sent last (an ERROR record,
// a TLS alert) before the connection is closed: closing a socket that still
// has unread input makes the kernel reset the connection, and the reset can
// destroy data the peer has not read yet. It half-closes, then discards
// input until the peer closes too, for at most two seconds.
func lingerClose(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	io.Copy(io.Discard, io.LimitReader(c, 256<<20))
}
