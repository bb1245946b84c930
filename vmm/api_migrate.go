package vmm

import (
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
}

// MigrateEvent is one line of the newline-delimited JSON answer to
// POST /v1/migrate: progress lines, then either Stats or Error.
type MigrateEvent struct {
	Progress *migrate.IterationStats `json:"progress,omitempty"`
	Stats    *migrate.Stats          `json:"stats,omitempty"`
	Error    string                  `json:"error,omitempty"`
}

func (r MigrateRequest) options() (migrate.Options, error) {
	o := migrate.Options{
		Downtime:          time.Duration(r.DowntimeMS) * time.Millisecond,
		MaxIterations:     r.MaxIterations,
		Timeout:           time.Duration(r.TimeoutSeconds * float64(time.Second)),
		MaxBandwidth:      r.MaxBandwidth,
		NoDigest:          r.NoDigest,
		NoClearBeforeSend: r.NoClearBeforeSend,
	}
	switch r.OnTimeout {
	case "", "abort":
		o.OnTimeout = migrate.AbortOnTimeout
	case "force":
		o.OnTimeout = migrate.ForceOnTimeout
	default:
		return o, fmt.Errorf("on_timeout %q: want abort or force", r.OnTimeout)
	}
	if r.To == "" {
		return o, errors.New("no destination: give HOST:PORT of a `ferry receive`")
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

	conn, err := net.DialTimeout("tcp", req.To, 10*time.Second)
	if err != nil {
		emit(MigrateEvent{Error: fmt.Sprintf("connect to %s: %v", req.To, err)})
		return
	}
	defer conn.Close()
	src := NewMigrationSource(a.m)
	src.LogMemoryHash = a.LogMemoryHash
	stats, err := migrate.Send(r.Context(), src, conn, opts)
	if err != nil {
		emit(MigrateEvent{Error: err.Error() + " (the guest keeps running here)"})
		return
	}
	emit(MigrateEvent{Stats: stats})
	a.m.Stop("guest migrated to " + req.To)
}
