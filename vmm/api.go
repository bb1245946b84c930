package vmm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"time"
)

// The control socket: a small JSON API over HTTP on a unix socket.
//
//	GET  /v1/status   → Status
//	POST /v1/pause    → Status
//	POST /v1/resume   → Status
//	POST /v1/migrate  MigrateRequest → MigrateEvent lines (api_migrate.go)
//	POST /v1/snapshot SnapshotRequest → SnapshotResult (api_snapshot.go)
//
// Errors are {"error": "..."} with a 4xx/5xx status.

// Status is what GET /v1/status returns.
type Status struct {
	State       string `json:"state"` // running, paused, migrating, snapshot, stopped
	ID          string `json:"id"`    // the VM id (kept across migrations)
	VCPUs       int    `json:"vcpus"`
	MemoryBytes uint64 `json:"memory_bytes"`
	Migration   any    `json:"migration,omitempty"`
}

// APIServer serves the control socket of one machine.
type APIServer struct {
	m    *Machine
	path string
	ln   net.Listener
	srv  *http.Server
	mux  *http.ServeMux

	// LogMemoryHash is passed to each migration's source (see
	// MigrationSource.LogMemoryHash).
	LogMemoryHash func(hash string)

	mu       sync.Mutex
	op       string // "migrating" or "snapshot" while one runs, else ""
	progress any
}

// ServeAPI listens on the unix socket path and serves the machine's API.
// An existing socket file is replaced only if nothing answers on it.
func ServeAPI(m *Machine, path string) (*APIServer, error) {
	if _, err := os.Stat(path); err == nil {
		if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
			c.Close()
			return nil, fmt.Errorf("--api-socket %s: another process is serving it", path)
		}
		os.Remove(path)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("--api-socket %s: %w", path, err)
	}
	// The socket controls the guest (and can send it anywhere): owner only.
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("--api-socket %s: %w", path, err)
	}
	a := &APIServer{m: m, path: path, ln: ln, mux: http.NewServeMux()}
	a.mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, a.Status())
	})
	a.mux.HandleFunc("POST /v1/pause", func(w http.ResponseWriter, r *http.Request) {
		a.control(w, m.Pause)
	})
	a.mux.HandleFunc("POST /v1/resume", func(w http.ResponseWriter, r *http.Request) {
		a.control(w, m.Resume)
	})
	a.mux.HandleFunc("POST /v1/migrate", a.handleMigrate)
	a.mux.HandleFunc("POST /v1/snapshot", a.handleSnapshot)
	a.srv = &http.Server{Handler: a.mux, ReadHeaderTimeout: 5 * time.Second}
	go a.srv.Serve(ln)
	return a, nil
}

func (a *APIServer) control(w http.ResponseWriter, op func() error) {
	a.mu.Lock()
	busy := a.op
	a.mu.Unlock()
	if busy == "migrating" {
		WriteError(w, http.StatusConflict, errors.New("a migration is in progress"))
		return
	}
	if busy != "" {
		WriteError(w, http.StatusConflict, fmt.Errorf("a %s is in progress", busy))
		return
	}
	if err := op(); err != nil {
		WriteError(w, http.StatusConflict, err)
		return
	}
	writeJSON(w, http.StatusOK, a.Status())
}

// SetMigrating marks a migration in progress (pause and resume are refused
// meanwhile, since the migration owns the vCPUs' run state). It fails if
// one is already running.
func (a *APIServer) SetMigrating(on bool) error {
	if !on {
		a.endOp()
		return nil
	}
	return a.beginOp("migrating")
}

// beginOp marks a migration or snapshot in progress; only one at a time.
func (a *APIServer) beginOp(op string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch a.op {
	case "":
		a.op = op
		return nil
	case "migrating":
		return errors.New("a migration is already in progress")
	}
	return fmt.Errorf("a %s is already in progress", a.op)
}

func (a *APIServer) endOp() {
	a.mu.Lock()
	a.op, a.progress = "", nil
	a.mu.Unlock()
}

// Migrating reports whether a migration is in progress.
func (a *APIServer) Migrating() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.op == "migrating"
}

// SetProgress records migration progress for status.
func (a *APIServer) SetProgress(p any) {
	a.mu.Lock()
	a.progress = p
	a.mu.Unlock()
}

// Status describes the machine now.
func (a *APIServer) Status() Status {
	s := Status{State: "running", ID: a.m.ID().String(), VCPUs: a.m.CPUs(), MemoryBytes: a.m.Memory().Size()}
	select {
	case <-a.m.Done():
		s.State = "stopped"
	default:
		if a.m.Paused() {
			s.State = "paused"
		}
	}
	a.mu.Lock()
	if a.op != "" {
		s.State = a.op
		s.Migration = a.progress
	}
	a.mu.Unlock()
	return s
}

// Close stops serving and removes the socket file.
func (a *APIServer) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	a.srv.Shutdown(ctx)
	os.Remove(a.path)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// WriteError sends {"error": msg}.
func WriteError(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, map[string]string{"error": err.Error()})
}
