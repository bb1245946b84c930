package control

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

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
	PausedMS float64               `json:"paused_ms"` // how long the snapshot held the guest paused
	Stopped  bool                  `json:"stopped"`   // the VM ended (Stop)
	// Paused: the user had paused the guest; it stays paused and is saved
	// as paused (ferry restore brings it back paused).
	Paused bool `json:"paused,omitempty"`
}

// writeSnapshotFile writes the snapshot to a temporary file next to path,
// syncs it and renames it to path; on failure it removes the temporary file.
func writeSnapshotFile(ctx context.Context, path string, src migrate.SnapshotSource) (*migrate.SnapshotStats, error) {
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
	st, err := migrate.WriteSnapshot(ctx, f, src)
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
