// Package incoming is the receiving end of a live migration (what `ferry
// receive` runs): it accepts connections on a listener, authenticates them
// (mutual TLS, or plain TCP), lets one migration at a time past HELLO into
// a target it builds (the single slot), keeps what a failed migration
// received for a resume (migrate.Keeper), and returns the target whose
// guest runs here.
//
//	server.go  the accept loop and one connection
//	slot.go    the single-slot rule around each target
//	conn.go    peer identity, the lingering close, the loopback-only rule for plain TCP
package incoming

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferryvmm/ferry/migrate"
)

// Target is the destination one connection fills: a migrate.Resumable
// (vmm.MigrationDestination in ferry, a fake in tests). The server starts it
// through Start; it is returned by Serve once its guest runs.
type Target interface {
	migrate.Resumable
}

// Config tunes a Server. NewTarget is required.
type Config[T Target] struct {
	// TLS, if set, is the server side of mutual TLS (migrate.ServerTLSConfig);
	// nil accepts plain TCP (see LoopbackOnly).
	TLS *tls.Config
	// Receive holds the limits and the Keeper; Peer is set per connection.
	Receive migrate.ReceiveOptions
	// NewTarget builds the target of one connection (nothing is allocated
	// before Prepare).
	NewTarget func() T
	// Logf receives one line per event (refused connections, failures,
	// what arrived); nil discards them.
	Logf func(format string, args ...any)
	// HandshakeTimeout bounds the TLS handshake, or the first bytes
	// without TLS (default 10 s).
	HandshakeTimeout time.Duration
	// MaxPending is the number of connections handled at once; more are
	// closed at once (default 8 plus a migration's most connections,
	// migrate.MaxConnections).
	MaxPending int
}

// Server accepts connections until one of them brings a running guest.
type Server[T Target] struct {
	cfg Config[T]
	ln  net.Listener

	// mu guards busy: one migration holds the slot from its HELLO
	// (Prepare, or Reclaim for a resume) until it fails (Discard or
	// Suspend) or its guest runs (never released then).
	mu   sync.Mutex
	busy bool

	started chan T // the target whose guest started here (at most one; see slot.Start)
	// postcopy is set when the guest started with pages missing: the
	// server then goes on listening (for the recovery of a broken link)
	// until postcopyDone closes (every page arrived) or Close.
	postcopy     atomic.Bool
	postcopyDone chan struct{}
	closeOnce    sync.Once
	closeFn      func()
}

// NewServer serves ln with cfg; nothing runs before Serve.
func NewServer[T Target](ln net.Listener, cfg Config[T]) *Server[T] {
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = 8 + migrate.MaxConnections
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	return &Server[T]{cfg: cfg, ln: ln, started: make(chan T, 1), postcopyDone: make(chan struct{})}
}

// Serve handles connections, each in its own goroutine (so that a silent
// or broken peer cannot block a valid migration), until a guest runs here
// (its target is returned) or ctx ends. It closes the listener before it
// returns. The connection that brought the guest goes on after Serve
// returned while it has work (a post-copy migration: its missing pages,
// and its request channel); other connections end.
func (s *Server[T]) Serve(ctx context.Context) (T, error) {
	connCtx, cancelConns := context.WithCancel(ctx)
	defer func() { cancelConns() }()
	pending := make(chan struct{}, s.cfg.MaxPending)
	var wg sync.WaitGroup
	acceptErr := make(chan error, 1)
	go func() {
		for {
			conn, err := s.ln.Accept()
			if err != nil {
				acceptErr <- err
				return
			}
			select {
			case pending <- struct{}{}:
			default:
				s.cfg.Logf("refused a connection from %s: %d connections are already being handled", conn.RemoteAddr(), s.cfg.MaxPending)
				conn.Close()
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-pending }()
				s.handle(connCtx, conn)
			}()
		}
	}()
	var err error
	select {
	case t := <-s.started:
		if s.postcopy.Load() {
			// Go on listening while pages are missing here: a broken link
			// is resumed on a new connection (migrate --resume).
			cancel := cancelConns
			cancelConns = func() {} // not at return: at Close, or the end of post-copy
			s.closeFn = func() {
				s.ln.Close()
				<-acceptErr
				cancel()
			}
			go func() {
				<-s.postcopyDone
				s.Close()
			}()
			return t, nil
		}
		// The migration past COMMIT no longer heeds cancellation: it goes
		// on; handshakes end.
		s.ln.Close()
		<-acceptErr
		return t, nil
	case <-ctx.Done():
		err = ctx.Err()
	case err = <-acceptErr:
		err = fmt.Errorf("accept on %s: %w", s.ln.Addr(), err)
	}
	s.ln.Close()
	cancelConns()
	wg.Wait()
	// A migration past COMMIT ignores the cancellation and may have
	// started its guest meanwhile: it runs, so return it.
	select {
	case t := <-s.started:
		return t, nil
	default:
		var none T
		return none, err
	}
}

// Close stops listening (after a post-copy, Serve left the listener open
// for a recovery); connections past their HELLO go on.
func (s *Server[T]) Close() {
	s.closeOnce.Do(func() {
		if s.closeFn != nil {
			s.closeFn()
		}
	})
}

// handle runs one connection: a migration (or a post-copy request
// channel) until it ends, and says how it went.
func (s *Server[T]) handle(ctx context.Context, raw net.Conn) {
	defer raw.Close()
	peer := raw.RemoteAddr()
	// A guest arrived elsewhere, or ctx ended: stop handshaking.
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	conn, err := migrate.ServerHandshake(raw, s.cfg.TLS, s.cfg.HandshakeTimeout)
	if !stop() && err == nil {
		err = ctx.Err()
	}
	if err != nil {
		s.cfg.Logf("refused a connection from %s: %v; still waiting", peer, err)
		LingerClose(raw)
		return
	}
	target := &slot[T]{s: s, t: s.cfg.NewTarget(), peer: peer}
	opts := s.cfg.Receive
	opts.Peer = PeerIdentity(conn)
	stats, err := migrate.Receive(ctx, conn, target, opts)
	switch {
	case stats != nil && stats.Stream:
		if err != nil {
			s.cfg.Logf("a parallel stream from %s ended: %v", peer, err)
		}
		return
	case stats != nil && stats.Channel:
		if err != nil {
			s.cfg.Logf("the post-copy request channel from %s ended: %v", peer, err)
		}
		return
	case err != nil && stats != nil && stats.Postcopy:
		s.cfg.Logf("WARNING: post-copy from %s interrupted: %v; the guest runs here, but %d pages it lacks are only on the source", peer, err, stats.PagesMissing)
		return
	case errors.Is(err, migrate.ErrDoneAckLost):
		// Started, but DONE-ACK was lost: the source stays paused.
		s.cfg.Logf("WARNING: %v", err)
	case err != nil:
		s.cfg.Logf("incoming migration from %s failed: %v; no guest runs here; still waiting", peer, err)
		LingerClose(raw)
		return
	}
	kept := ""
	if stats.PagesKept > 0 {
		kept = fmt.Sprintf(" (resumed: %d pages were kept from the failed attempt)", stats.PagesKept)
	}
	post := ""
	if stats.Postcopy {
		st := stats.PostcopyStats
		post = fmt.Sprintf("; post-copy: %d pages after the guest started, %d of them asked for by the guest (fault service median %.0f us, p99 %.0f us)",
			stats.PagesMissing, st.PagesRequested, st.FaultMedianUS, st.FaultP99US)
	}
	conns := ""
	if stats.Connections > 1 {
		conns = fmt.Sprintf(" on %d connections", stats.Connections)
	}
	s.cfg.Logf("received %d pages (%d zero, %d delta), %d KiB of state, %.1f MiB%s in %.3f s%s%s",
		stats.PagesFull+stats.PagesZero+stats.PagesDelta, stats.PagesZero, stats.PagesDelta, stats.StateBytes>>10,
		float64(stats.BytesTotal)/(1<<20), conns, stats.Seconds, kept, post)
}

// running says, once the guest started, where it came from.
func (s *Server[T]) running(t T, peer net.Addr, postcopy bool) {
	switch p, ok := any(t).(interface{ StartsPaused() bool }); {
	case ok && p.StartsPaused():
		s.cfg.Logf("guest received from %s, paused as it was on the source: 'ferry resume' on this ferry's --api-socket runs it", peer)
	case postcopy:
		s.cfg.Logf("guest received from %s and running (post-copy: the pages it lacks are on their way)", peer)
	default:
		s.cfg.Logf("guest received from %s and running", peer)
	}
}
