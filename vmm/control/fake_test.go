package control

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/ferryvmm/ferry/migrate"
)

// fakeMachine is a Machine whose migrations and snapshots keep the
// contract of the real ones (migrate.Send, VM.Snapshot): given paused,
// they never pause or resume the guest; otherwise they pause it, and
// resume it on failure (except an unknown outcome). It records every
// breach of what the controller must guarantee it:
//   - the run state an operation is given is the machine's at that moment;
//   - no Pause or Resume reaches it while an operation runs, and no two
//     operations run at once.
type fakeMachine struct {
	mu      sync.Mutex
	paused  bool
	stopped bool
	done    chan struct{}
	inOp    string // the operation running, "" when none

	// outcome decides a migration's result: nil (success),
	// migrate.ErrOutcomeUnknown, or another error (failure).
	outcome func() error
	// snapErr decides a snapshot's result.
	snapErr func() error
	// opTime bounds how long an operation holds the machine, and how
	// long a pause takes.
	opTime time.Duration
	// live is what a migration's first pass reports (MigrateHooks.Live)
	// before the pass ends.
	live []migrate.PassProgress
	// step, if set, is called by a migration when its first pass has
	// reported live ("pass") and when it has ended ("iteration").
	step func(at string)

	pauses, resumes, migrations, snapshots int
	violations                             []string
}

func newFake() *fakeMachine {
	return &fakeMachine{done: make(chan struct{}), outcome: func() error { return errors.New("link cut") },
		snapErr: func() error { return nil }}
}

func (f *fakeMachine) violate(format string, args ...any) {
	f.violations = append(f.violations, fmt.Sprintf(format, args...))
}

func (f *fakeMachine) Violations() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.violations...)
}

func (f *fakeMachine) ID() string          { return "00112233445566778899aabbccddeeff" }
func (f *fakeMachine) CPUs() int           { return 2 }
func (f *fakeMachine) MemoryBytes() uint64 { return 128 << 20 }
func (f *fakeMachine) Done() <-chan struct{} {
	return f.done
}

func (f *fakeMachine) Paused() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.paused
}

func (f *fakeMachine) Pause() error { return f.setPaused(true) }
func (f *fakeMachine) Resume() error {
	return f.setPaused(false)
}

func (f *fakeMachine) setPaused(p bool) error {
	if p {
		f.hold() // the vCPUs take a while to park
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.inOp != "" {
		f.violate("%s reached the machine during a %s", map[bool]string{true: "Pause", false: "Resume"}[p], f.inOp)
	}
	if f.stopped {
		return errors.New("machine is stopped")
	}
	f.paused = p
	if p {
		f.pauses++
	} else {
		f.resumes++
	}
	return nil
}

func (f *fakeMachine) Stop(reason string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.stopped {
		f.stopped = true
		close(f.done)
	}
}

// enter starts an operation that was told the guest is paused (or not).
func (f *fakeMachine) enter(op string, paused bool) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.inOp != "" {
		f.violate("a %s began during a %s", op, f.inOp)
	}
	if f.stopped {
		f.violate("a %s began on a stopped machine", op)
		return false
	}
	if paused != f.paused {
		f.violate("a %s was told paused=%v, but the machine is paused=%v", op, paused, f.paused)
	}
	f.inOp = op
	return true
}

func (f *fakeMachine) leave() {
	f.mu.Lock()
	f.inOp = ""
	f.mu.Unlock()
}

func (f *fakeMachine) hold() {
	if f.opTime > 0 {
		time.Sleep(rand.N(f.opTime))
	}
}

func (f *fakeMachine) Migrate(ctx context.Context, req MigrateRequest, paused bool, hooks MigrateHooks) (*migrate.Stats, error) {
	if !f.enter("migration", paused) {
		return nil, errors.New("stopped")
	}
	defer f.leave()
	f.mu.Lock()
	f.migrations++
	f.mu.Unlock()
	for _, p := range f.live {
		hooks.Live(p)
	}
	f.stepAt("pass")
	hooks.Progress(migrate.IterationStats{Iteration: 0, StopAndCopy: paused})
	f.stepAt("iteration")
	f.hold()
	f.mu.Lock()
	f.paused = true // the stop-and-copy (a paused guest already is)
	f.mu.Unlock()
	f.hold()
	err := f.outcome()
	if err != nil && !errors.Is(err, migrate.ErrOutcomeUnknown) && !paused {
		f.mu.Lock()
		f.paused = false // the rollback resumes the guest it paused
		f.mu.Unlock()
	}
	return &migrate.Stats{Converged: true}, err
}

func (f *fakeMachine) stepAt(at string) {
	if f.step != nil {
		f.step(at)
	}
}

func (f *fakeMachine) Snapshot(ctx context.Context, path string, paused, thenStop bool) (*SnapshotResult, error) {
	if !f.enter("snapshot", paused) {
		return nil, errors.New("stopped")
	}
	defer f.leave()
	f.mu.Lock()
	f.snapshots++
	f.paused = true
	f.mu.Unlock()
	f.hold()
	err := f.snapErr()
	if !paused && (err != nil || !thenStop) {
		f.mu.Lock()
		f.paused = false
		f.mu.Unlock()
	}
	if err != nil {
		return nil, err
	}
	return &SnapshotResult{Path: path}, nil
}
