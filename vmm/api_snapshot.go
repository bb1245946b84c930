package vmm

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/ferryvmm/ferry/migrate"
)

// SnapshotRequest is the body of POST /v1/snapshot.
type SnapshotRequest struct {
	// Path is the file to write (absolute: this process writes it). It
	// is replaced atomically: written to a temporary file in the same
	// directory, synced, then renamed.
	Path string `json:"path"`
	// Stop ends the VM once the snapshot is safely written, instead of
	// resuming the guest.
	Stop bool `json:"stop,omitempty"`
}

// SnapshotResult is the answer to POST /v1/snapshot.
type SnapshotResult struct {
	Path     string                `json:"path"`
	Stats    migrate.SnapshotStats `json:"stats"`
	PausedMS float64               `json:"paused_ms"` // how long the guest was paused
	Stopped  bool                  `json:"stopped"`   // the VM ended (Stop)
}

// handleSnapshot pauses the guest, writes it to req.Path in the snapshot
// format (migrate.WriteSnapshot), then resumes it — or, with Stop, ends
// the VM. A guest the user had paused stays paused. On failure nothing is
// left at req.Path and the guest runs on.
func (a *APIServer) handleSnapshot(w http.ResponseWriter, r *http.Request) {
	var req SnapshotRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&req); err != nil {
		WriteError(w, http.StatusBadRequest, fmt.Errorf("snapshot request: %w", err))
		return
	}
	if !filepath.IsAbs(req.Path) {
		WriteError(w, http.StatusBadRequest, fmt.Errorf("snapshot path %q is not absolute", req.Path))
		return
	}
	if err := a.beginOp("snapshot"); err != nil {
		WriteError(w, http.StatusConflict, err)
		return
	}
	defer a.endOp()
	res, err := a.snapshot(r, req)
	if err != nil {
		WriteError(w, http.StatusInternalServerError, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (a *APIServer) snapshot(r *http.Request, req SnapshotRequest) (*SnapshotResult, error) {
	wasPaused := a.m.Paused()
	pausedAt := time.Now()
	if err := a.m.Pause(); err != nil {
		return nil, fmt.Errorf("pause the guest: %w", err)
	}
	resume := func() error {
		if wasPaused {
			return nil
		}
		return a.m.Resume()
	}
	src := NewMigrationSource(a.m)
	src.LogMemoryHash = a.LogMemoryHash
	st, err := writeSnapshotFile(r, req.Path, src)
	res := &SnapshotResult{Path: req.Path, PausedMS: float64(time.Since(pausedAt).Microseconds()) / 1000}
	if st != nil {
		res.Stats = *st
	}
	if err != nil {
		if rerr := resume(); rerr != nil {
			err = errors.Join(err, fmt.Errorf("RESUMING THE GUEST FAILED: %w", rerr))
		}
		return nil, err
	}
	if req.Stop {
		a.m.Stop("guest saved to " + req.Path)
		res.Stopped = true
		return res, nil
	}
	if err := resume(); err != nil {
		return nil, fmt.Errorf("snapshot %s written, but resuming the guest failed: %w", req.Path, err)
	}
	return res, nil
}

// writeSnapshotFile writes the snapshot to a temporary file next to path,
// syncs it and renames it to path; on failure it removes the temporary file.
func writeSnapshotFile(r *http.Request, path string, src migrate.SnapshotSource) (*migrate.SnapshotStats, error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", path, err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	// Guest memory: readable by its owner only (CreateTemp makes 0600).
	st, err := migrate.WriteSnapshot(r.Context(), f, src)
	if err != nil {
		return st, fmt.Errorf("snapshot %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return st, fmt.Errorf("snapshot %s: sync: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return st, fmt.Errorf("snapshot %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return st, fmt.Errorf("snapshot %s: %w", path, err)
	}
	ok = true
	return st, nil
}
