package control

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/ferryvmm/ferry/migrate"
	"github.com/ferryvmm/ferry/vmm"
)

// Machine is the VM as the controller drives it. VM adapts a *vmm.Machine;
// tests use a fake.
type Machine interface {
	ID() string
	CPUs() int
	MemoryBytes() uint64
	// Done is closed once the machine has stopped.
	Done() <-chan struct{}
	// Paused reports whether every vCPU is parked.
	Paused() bool
	Pause() error
	Resume() error
	// Stop ends the machine (its vCPU threads end; Done follows).
	Stop(reason string)
	// Migrate sends the machine to req.To (a request options accepted).
	// paused says the user paused the guest: it must stay paused, here
	// and on the destination, and is neither paused nor resumed. Otherwise
	// the migration pauses it for the stop-and-copy and resumes it if it
	// fails before its commit. An error wrapping migrate.ErrOutcomeUnknown
	// leaves the guest paused. The migration reports through hooks.
	Migrate(ctx context.Context, req MigrateRequest, paused bool, hooks MigrateHooks) (*migrate.Stats, error)
	// Snapshot writes the machine to path (complete, or nothing at path).
	// paused says the user paused the guest: it stays paused and is saved
	// as paused. Otherwise the guest is paused for the write and resumed
	// after it, unless thenStop (the caller ends the machine next). On
	// failure the guest is left as it was.
	Snapshot(ctx context.Context, path string, paused, thenStop bool) (*SnapshotResult, error)
}

// MigrateHooks are what a migration reports while it runs: its
// migrate.Options.Progress (after each iteration) and Live (during a pass,
// on the sender goroutine: must return at once). Both are set.
type MigrateHooks struct {
	Progress func(migrate.IterationStats)
	Live     func(migrate.PassProgress)
}

// VM is the Machine of a *vmm.Machine.
type VM struct {
	M *vmm.Machine
	// LogMemoryHash, if set, receives a hash of guest RAM when a
	// migration or snapshot saves the paused guest's state (tests).
	LogMemoryHash func(hash string)
}

func (v *VM) ID() string            { return v.M.ID().String() }
func (v *VM) CPUs() int             { return v.M.CPUs() }
func (v *VM) MemoryBytes() uint64   { return v.M.Memory().Size() }
func (v *VM) Done() <-chan struct{} { return v.M.Done() }
func (v *VM) Paused() bool          { return v.M.Paused() }
func (v *VM) Pause() error          { return v.M.Pause() }
func (v *VM) Resume() error         { return v.M.Resume() }
func (v *VM) Stop(reason string)    { v.M.Stop(reason) }

// source is the machine as a migration or snapshot reads it; paused
// (the user paused the guest) goes into its state, so that the guest
// arrives, or is restored, paused.
func (v *VM) source(paused bool) *vmm.MigrationSource {
	src := vmm.NewMigrationSource(v.M)
	src.LogMemoryHash = v.LogMemoryHash
	src.Paused = paused
	return src
}

// Migrate implements Machine with migrate.Send over TCP or mutual TLS.
func (v *VM) Migrate(ctx context.Context, req MigrateRequest, paused bool, hooks MigrateHooks) (*migrate.Stats, error) {
	opts, err := req.Options()
	if err != nil {
		return nil, err
	}
	opts.Progress, opts.Live = hooks.Progress, hooks.Live
	opts.SourcePaused = paused // one pass, never paused nor resumed here
	if req.postcopyResume {
		opts = migrate.Options{PostcopyResume: true, Progress: hooks.Progress, Live: hooks.Live,
			MaxBandwidth: opts.MaxBandwidth, Compress: opts.Compress, AckTimeout: opts.AckTimeout}
	}
	opts.PostcopyDial = func(ctx context.Context) (io.ReadWriteCloser, error) {
		return dialDestination(ctx, req) // the request channel, authenticated as the first
	}
	opts.StreamDial = func(ctx context.Context) (io.ReadWriteCloser, error) {
		return dialDestination(ctx, req) // a parallel stream, authenticated as the first
	}
	stats, err := v.send(ctx, req, paused, opts)
	if err != nil && req.postcopyResume && !errors.Is(err, migrate.ErrPostcopyInterrupted) {
		// Whatever went wrong, the guest still runs there and waits.
		err = fmt.Errorf("%w: %w", migrate.ErrPostcopyInterrupted, err)
	}
	return stats, err
}

func (v *VM) send(ctx context.Context, req MigrateRequest, paused bool, opts migrate.Options) (*migrate.Stats, error) {
	conn, err := dialDestination(ctx, req)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	src := v.source(paused)
	stats, err := migrate.Send(ctx, src, conn, opts)
	if err == nil {
		src.LogHash() // the guest stays paused here for good
	}
	if err != nil && !errors.Is(err, migrate.ErrOutcomeUnknown) && !errors.Is(err, migrate.ErrPostcopyInterrupted) && req.TLS.Enabled() {
		err = migrate.ExplainTLSError(err)
	}
	return stats, err
}

// Snapshot implements Machine.
func (v *VM) Snapshot(ctx context.Context, path string, paused, thenStop bool) (*SnapshotResult, error) {
	pausedAt := time.Now()
	if !paused {
		if err := v.M.Pause(); err != nil {
			return nil, fmt.Errorf("pause the guest: %w", err)
		}
	}
	resume := func() error {
		if paused {
			return nil
		}
		return v.M.Resume()
	}
	src := v.source(paused)
	st, err := writeSnapshotFile(ctx, path, src)
	if err == nil {
		src.LogHash() // still paused: the memory the file holds
	}
	res := &SnapshotResult{Path: path, PausedMS: float64(time.Since(pausedAt).Microseconds()) / 1000}
	if st != nil {
		res.Stats = *st
	}
	if err != nil {
		if rerr := resume(); rerr != nil {
			err = errors.Join(err, fmt.Errorf("RESUMING THE GUEST FAILED: %w", rerr))
		}
		return nil, err
	}
	if thenStop {
		return res, nil
	}
	if err := resume(); err != nil {
		return nil, fmt.Errorf("snapshot %s written, but resuming the guest failed: %w", path, err)
	}
	return res, nil
}
