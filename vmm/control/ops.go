package control

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/ferryvmm/ferry/migrate"
)

// The two long operations. Each takes its busy state with begin, which
// records whether the guest was paused, and acts on that record only: a
// guest the user paused is never paused or resumed by them.

// Outcome values of a failed migration (MigrationError, MigrateEvent).
const (
	// OutcomeFailed: the migration failed before its commit; the guest
	// is here as it was (running, or paused if it was paused).
	OutcomeFailed = "failed"
	// OutcomeUnknown: COMMIT was sent but not acknowledged; the guest is
	// paused here and may be running on the destination.
	OutcomeUnknown = "unknown"
	// OutcomePostcopyInterrupted: the link broke after a post-copy
	// switch; the guest runs on the destination, and this VM keeps the
	// pages it lacks (state Handed) for a resumed migration.
	OutcomePostcopyInterrupted = "postcopy-interrupted"
)

// MigrationError is a migration that failed after it took the VM.
type MigrationError struct {
	Outcome string // OutcomeFailed or OutcomeUnknown
	Err     error
}

func (e *MigrationError) Error() string { return e.Err.Error() }
func (e *MigrationError) Unwrap() error { return e.Err }

// migrate runs a migration. On success the machine stops (the guest now
// runs, or waits paused, on the destination).
func (c *Controller) migrate(ctx context.Context, a Migrate) (*migrate.Stats, error) {
	if _, err := a.Request.Options(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	was, err := c.begin(kindMigrate)
	if err != nil {
		return nil, err
	}
	paused := was == Paused
	left := Running
	defer func() { c.finish(left) }()
	req := a.Request
	if was == Handed {
		// A post-copy was interrupted: only its resume may follow.
		left = Handed
		if !req.Resume {
			return nil, conflict("the guest runs on the destination since a post-copy switch, and this host keeps pages it still lacks: finish the migration with `ferry migrate --resume` to the same destination")
		}
		req.postcopyResume = true
	}
	if a.Started != nil {
		a.Started()
	}
	hooks := MigrateHooks{
		Progress: func(it migrate.IterationStats) {
			c.setProgress(it)
			if a.Progress != nil {
				a.Progress(it)
			}
		},
		Live: func(p migrate.PassProgress) {
			c.setPass(p)
			if a.Live != nil {
				a.Live(p)
			}
		},
	}
	stats, err := c.m.Migrate(ctx, req, paused, hooks)
	switch {
	case err == nil:
		c.m.Stop("guest migrated to " + a.Request.To)
		left = Stopped
		return stats, nil
	case errors.Is(err, migrate.ErrOutcomeUnknown):
		// The guest stays paused here: an operator decides.
		return stats, &MigrationError{Outcome: OutcomeUnknown, Err: err}
	case errors.Is(err, migrate.ErrPostcopyInterrupted):
		left = Handed
		return stats, &MigrationError{Outcome: OutcomePostcopyInterrupted, Err: err}
	}
	here := "the guest keeps running here"
	if paused {
		here = "the guest stays paused here"
	}
	return stats, &MigrationError{Outcome: OutcomeFailed, Err: fmt.Errorf("%w (%s)", err, here)}
}

// snapshot writes the VM to req.Path (Machine.Snapshot): a running guest
// is paused for it and resumed after, or with Stop the VM ends; a guest the
// user paused stays paused and is saved as paused. On failure nothing is
// left at req.Path and the guest is as it was.
func (c *Controller) snapshot(ctx context.Context, req SnapshotRequest) (*SnapshotResult, error) {
	if !filepath.IsAbs(req.Path) {
		return nil, fmt.Errorf("%w: snapshot path %q is not absolute", ErrInvalid, req.Path)
	}
	was, err := c.begin(kindSnapshot)
	if err != nil {
		return nil, err
	}
	paused := was == Paused
	left := Running
	defer func() { c.finish(left) }()
	res, err := c.m.Snapshot(ctx, req.Path, paused, req.Stop)
	if err != nil {
		return nil, err
	}
	res.Paused = paused
	if req.Stop {
		c.m.Stop("guest saved to " + req.Path)
		left = Stopped
		res.Stopped = true
	}
	return res, nil
}
