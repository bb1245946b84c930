package vmm

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/ferryvmm/ferry/migrate"
)

// MigrateRequest is the body of POST /v1/migrate.
type MigrateRequest struct {
	To                string  `json:"to"` // HOST:PORT of `ferry receive`
	DowntimeMS        int     `json:"downtime_ms,omitempty"`
	MaxIterations     int     `json:"max_iterations,omitempty"`
	TimeoutSeconds    float64 `json:"timeout_seconds,omitempty"`
	OnTimeout         string  `json:"on_timeout,omitempty"`    // "abort" (default) or "force"
	MaxBandwidth      int64   `json:"max_bandwidth,omitempty"` // bytes per second, 0 = unlimited
	NoDigest          bool    `json:"no_digest,omitempty"`
	NoClearBeforeSend bool    `json:"no_clear_before_send,omitempty"`
	// Resume resumes a cut migration into the pages the destination kept.
	Resume bool `json:"resume,omitempty"`
	// TLS names the PEM files (absolute paths, read by this process) for a
	// mutually authenticated TLS 1.3 connection; empty: plain TCP.
	TLS migrate.TLSFiles `json:"tls,omitempty"`
}

// Outcome values of a failed MigrateEvent.
const (
	// OutcomeFailed: the migration failed and the guest runs here again.
	OutcomeFailed = "failed"
	// OutcomeUnknown: COMMIT was sent but not acknowledged; the guest is
	// paused here and may be running on the destination.
	OutcomeUnknown = "unknown"
)

// MigrateEvent is one line of the newline-delimited JSON answer to
// POST /v1/migrate: progress lines, then either Stats or Error.
type MigrateEvent struct {
	Progress *migrate.IterationStats `json:"progress,omitempty"`
	Stats    *migrate.Stats          `json:"stats,omitempty"`
	Error    string                  `json:"error,omitempty"`
	Outcome  string                  `json:"outcome,omitempty"` // with Error: OutcomeFailed or OutcomeUnknown
}

func (r MigrateRequest) options() (migrate.Options, error) {
	o := migrate.Options{
		Downtime:          time.Duration(r.DowntimeMS) * time.Millisecond,
		MaxIterations:     r.MaxIterations,
		Timeout:           time.Duration(r.TimeoutSeconds * float64(time.Second)),
		MaxBandwidth:      r.MaxBandwidth,
		NoDigest:          r.NoDigest,
		NoClearBeforeSend: r.NoClearBeforeSend,
		Resume:            r.Resume,
	}
	switch r.OnTimeout {
	case "", "abort":
		o.OnTimeout = migrate.AbortOnTimeout
	case "force":
		o.OnTimeout = migrate.ForceOnTimeout
	default:
		return o, fmt.Errorf("on_timeout %q: want abort or force", r.OnTimeout)
	}
	if r.Resume && r.NoDigest {
		return o, errors.New("resume needs the digest filter: drop no_digest")
	}
	if r.To == "" {
		return o, errors.New("no destination: give HOST:PORT of a `ferry receive`")
	}
	if err := r.TLS.Check(); err != nil {
		return o, err
	}
	return o, nil
}

// handleMigrate runs a live migration of this machine to req.To, streaming
// progress. On success the machine stops (the guest now runs there); on
// failure the sender has resumed the guest here.
func (a *APIServer) handleMigrate(w http.ResponseWriter, r *http.Request) {
	var req MigrateRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&req); err != nil {
		WriteError(w, http.StatusBadRequest, fmt.Errorf("migrate request: %w", err))
		return
	}
	opts, err := req.options()
	if err != nil {
		WriteError(w, http.StatusBadRequest, err)
		return
	}
	if a.m.Paused() {
		WriteError(w, http.StatusConflict, errors.New("the guest is paused: resume it before migrating"))
		return
	}
	if err := a.SetMigrating(true); err != nil {
		WriteError(w, http.StatusConflict, err)
		return
	}
	defer a.SetMigrating(false)

	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	flusher, _ := w.(http.Flusher)
	emit := func(ev MigrateEvent) {
		enc.Encode(ev)
		if flusher != nil {
			flusher.Flush()
		}
	}
	opts.Progress = func(it migrate.IterationStats) {
		a.SetProgress(it)
		emit(MigrateEvent{Progress: &it})
	}

	failed := func(err error) {
		emit(MigrateEvent{Error: err.Error() + " (the guest keeps running here)", Outcome: OutcomeFailed})
	}
	conn, err := dialDestination(r.Context(), req)
	if err != nil {
		failed(err)
		return
	}
	defer conn.Close()
	src := NewMigrationSource(a.m)
	src.LogMemoryHash = a.LogMemoryHash
	stats, err := migrate.Send(r.Context(), src, conn, opts)
	if errors.Is(err, migrate.ErrOutcomeUnknown) {
		// The guest stays paused here: an operator decides.
		emit(MigrateEvent{Error: err.Error(), Outcome: OutcomeUnknown})
		return
	}
	if err != nil {
		if req.TLS.Enabled() {
			err = migrate.ExplainTLSError(err)
		}
		failed(err)
		return
	}
	emit(MigrateEvent{Stats: stats})
	a.m.Stop("guest migrated to " + req.To)
}

// dialDestination connects to req.To, with the TLS handshake when req.TLS
// names certificate files.
func dialDestination(ctx context.Context, req MigrateRequest) (net.Conn, error) {
	var cfg *tls.Config
	if req.TLS.Enabled() {
		var err error
		if cfg, err = migrate.ClientTLSConfig(req.TLS, req.To); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", req.To)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", req.To, err)
	}
	if cfg == nil {
		return conn, nil
	}
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("TLS handshake with %s: %w", req.To, migrate.ExplainTLSError(err))
	}
	return tc, nil
}
