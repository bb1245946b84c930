package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/ferryvmm/ferry/migrate"
)

// The control socket: JSON over HTTP on a unix socket. Each handler only
// decodes the request into an Action, has the Controller handle it, and
// encodes the answer.
//
//	GET  /v1/status   → Status
//	POST /v1/pause    → Status
//	POST /v1/resume   → Status
//	POST /v1/migrate  MigrateRequest → MigrateEvent lines (newline-delimited JSON)
//	POST /v1/snapshot SnapshotRequest → SnapshotResult
//
// Errors are {"error": "..."}: 400 for a bad request, 409 for an action
// the VM's state refuses (pause during a migration, ...), 500 otherwise.
// Once a migration has begun, its answer is 200 and its failure comes as
// the last MigrateEvent.

// Server serves a Controller on a unix socket.
type Server struct {
	c    *Controller
	path string
	srv  *http.Server
}

// Serve listens on the unix socket path and serves c. An existing socket
// file is replaced only if nothing answers on it.
func Serve(path string, c *Controller) (*Server, error) {
	if _, err := os.Stat(path); err == nil {
		if conn, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
			conn.Close()
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
	s := &Server{c: c, path: path}
	s.srv = &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go s.srv.Serve(ln)
	return s, nil
}

// Handler is the API's HTTP handler.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	simple := func(a Action) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) { s.answer(w, r, a) }
	}
	mux.HandleFunc("GET /v1/status", simple(GetStatus{}))
	mux.HandleFunc("POST /v1/pause", simple(Pause{}))
	mux.HandleFunc("POST /v1/resume", simple(Resume{}))
	mux.HandleFunc("POST /v1/migrate", s.handleMigrate)
	mux.HandleFunc("POST /v1/snapshot", func(w http.ResponseWriter, r *http.Request) {
		var req SnapshotRequest
		if decodeBody(w, r, "snapshot", &req) {
			s.answer(w, r, Snapshot{Request: req})
		}
	})
	return mux
}

// answer handles a and writes its result as JSON, or the error.
func (s *Server) answer(w http.ResponseWriter, r *http.Request, a Action) {
	res, err := s.c.Handle(r.Context(), a)
	if err != nil {
		writeError(w, httpCode(err), err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// handleMigrate streams the migration's progress as MigrateEvent lines:
// live lines during a pass (dropped rather than waited for when the client
// reads slowly), an iteration line after each iteration, then the outcome.
// On success the source stops (the guest is on the destination now).
func (s *Server) handleMigrate(w http.ResponseWriter, r *http.Request) {
	var req MigrateRequest
	if !decodeBody(w, r, "migrate", &req) {
		return
	}
	ev := newEventWriter(w)
	started := false
	res, err := s.c.Handle(r.Context(), Migrate{
		Request: req,
		Started: func() {
			started = true
			w.Header().Set("Content-Type", "application/x-ndjson")
			w.WriteHeader(http.StatusOK)
			ev.start()
		},
		Progress: func(it migrate.IterationStats) { ev.Emit(MigrateEvent{Progress: &it}) },
		Live:     ev.Live,
	})
	ev.stop() // no live line after this
	var me *MigrationError
	switch {
	case !started && err != nil:
		writeError(w, httpCode(err), err)
	case errors.As(err, &me):
		ev.Emit(MigrateEvent{Error: me.Error(), Outcome: me.Outcome})
	case err != nil:
		ev.Emit(MigrateEvent{Error: err.Error(), Outcome: OutcomeFailed})
	default:
		ev.Emit(MigrateEvent{Stats: res.(*migrate.Stats)})
	}
}

// decodeBody reads a JSON request body (at most 64 KiB) into v, or
// answers 400 and returns false.
func decodeBody(w http.ResponseWriter, r *http.Request, what string, v any) bool {
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(v); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("%s request: %w", what, err))
		return false
	}
	return true
}

func httpCode(err error) int {
	switch {
	case errors.Is(err, ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, ErrConflict):
		return http.StatusConflict
	}
	return http.StatusInternalServerError
}

// Close stops serving and removes the socket file.
func (s *Server) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	s.srv.Shutdown(ctx)
	os.Remove(s.path)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// writeError sends {"error": msg}.
func writeError(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, map[string]string{"error": err.Error()})
}
