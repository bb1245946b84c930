// Package control is ferry's control API: the state machine every request
// to a VM's control socket goes through (status, pause, resume, migrate,
// snapshot; Controller says how it orders them), and the thin
// JSON-over-HTTP server on a unix socket that feeds it. vmm does not import
// it; cmd/ferry does.
//
//	control.go   States, Actions, and the Controller with its transition table
//	ops.go       the two long operations: migrate and snapshot
//	migrate.go   MigrateRequest and MigrateEvent: POST /v1/migrate's body and answer lines
//	snapshot.go  SnapshotRequest and SnapshotResult: POST /v1/snapshot
//	machine.go   Machine: the VM as the controller drives it (VM adapts a *vmm.Machine)
//	server.go    the control socket: JSON over HTTP on a unix socket
//	events.go    the migrate answer's lines, live lines never holding up the sender
package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/ferryvmm/ferry/migrate"
)

// State is the VM's state as the control API sees it.
type State int

const (
	Running      State = iota // the vCPUs run
	Paused                    // paused by the user (or after an unknown migration outcome)
	Migrating                 // a migration owns the VM
	Snapshotting              // a snapshot is being written
	Stopped                   // the VM has ended (powered off, migrated, saved with --stop)
	// Handed: a post-copy migration was interrupted after its switch; the
	// guest runs on the destination, and this VM (paused for good) keeps
	// the pages it still lacks until a resumed migration sends them.
	Handed
)

var stateNames = [...]string{"running", "paused", "migrating", "snapshot", "stopped", "handed-over"}

// String is the state's name in the API ("state" of Status).
func (s State) String() string {
	if s >= 0 && int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// busy reports whether a long operation owns the VM.
func (s State) busy() bool { return s == Migrating || s == Snapshotting }

// Errors of the control API, to be tested with errors.Is.
var (
	// ErrConflict: the action is not possible in the VM's current state
	// (HTTP 409).
	ErrConflict = errors.New("conflict")
	// ErrInvalid: the request itself is wrong (HTTP 400).
	ErrInvalid = errors.New("invalid request")
)

// stateError is a refused transition: ErrConflict with its reason.
type stateError struct{ msg string }

func (e *stateError) Error() string        { return e.msg }
func (e *stateError) Is(target error) bool { return target == ErrConflict }

func conflict(format string, args ...any) error {
	return &stateError{fmt.Sprintf(format, args...)}
}

// Action is one request to a Controller: GetStatus, Pause, Resume, Migrate
// or Snapshot.
type Action interface{ kind() kind }

type kind int

const (
	kindStatus kind = iota
	kindPause
	kindResume
	kindMigrate
	kindSnapshot
)

var kindNames = [...]string{"status", "pause", "resume", "migrate", "snapshot"}

func (k kind) String() string { return kindNames[k] }

// GetStatus asks for the Status; it changes nothing.
type GetStatus struct{}

// Pause stops the guest's vCPUs (a paused guest stays paused).
type Pause struct{}

// Resume restarts a paused guest (a running guest runs on).
type Resume struct{}

// Migrate moves the guest to a `ferry receive`. A running guest is
// live-migrated; a paused one is sent in one pass and arrives paused.
type Migrate struct {
	Request MigrateRequest
	// Started, if set, is called once the migration has taken the VM
	// (after the state transition), before anything is sent.
	Started func()
	// Progress, if set, is called after each iteration.
	Progress func(migrate.IterationStats)
	// Live, if set, is called during a pass, at most every 250 ms, with
	// where it stands. It runs on the migration's sender goroutine: it
	// must return at once.
	Live func(migrate.PassProgress)
}

// Snapshot writes the whole VM to a file.
type Snapshot struct{ Request SnapshotRequest }

func (GetStatus) kind() kind { return kindStatus }
func (Pause) kind() kind     { return kindPause }
func (Resume) kind() kind    { return kindResume }
func (Migrate) kind() kind   { return kindMigrate }
func (Snapshot) kind() kind  { return kindSnapshot }

// next is the state machine: the state action k leads to from s, or why k
// is refused in s. Status changes nothing; a busy state ends only through
// finish, with the state its operation left.
//
//	            pause       resume      migrate     snapshot
//	running     paused      running     migrating   snapshot
//	paused      paused      running     migrating   snapshot
//	migrating   refused     refused     refused     refused
//	snapshot    refused     refused     refused     refused
//	stopped     refused     refused     refused     refused
//	handed-over refused     refused     migrating   refused
func next(s State, k kind) (State, error) {
	if k == kindStatus {
		return s, nil
	}
	switch s {
	case Stopped:
		return s, conflict("cannot %s: the VM has stopped", k)
	case Handed:
		if k != kindMigrate {
			return s, conflict("cannot %s: the guest runs on the destination since a post-copy switch, and this host keeps pages it still lacks: finish the migration with `ferry migrate --resume`", k)
		}
	case Migrating:
		if k == kindMigrate {
			return s, conflict("a migration is already in progress")
		}
		return s, conflict("cannot %s: a migration is in progress and decides when the guest pauses and runs; try again when it has ended", k)
	case Snapshotting:
		if k == kindSnapshot {
			return s, conflict("a snapshot is already being written")
		}
		return s, conflict("cannot %s: a snapshot is being written; try again when it is done", k)
	}
	switch k {
	case kindPause:
		return Paused, nil
	case kindResume:
		return Running, nil
	case kindMigrate:
		return Migrating, nil
	case kindSnapshot:
		return Snapshotting, nil
	}
	return s, fmt.Errorf("%w: unknown action %d", ErrInvalid, int(k))
}

// Status is what GET /v1/status (and pause, resume) answer.
type Status struct {
	State       string `json:"state"` // running, paused, migrating, snapshot, stopped
	ID          string `json:"id"`    // the VM id (kept across migrations)
	VCPUs       int    `json:"vcpus"`
	MemoryBytes uint64 `json:"memory_bytes"`
	// Migration is a migration in progress: its last iteration, and
	// where the pass under way stands.
	Migration *MigrationStatus `json:"migration,omitempty"`
}

// MigrationStatus is a migration in progress as Status shows it ("migration").
type MigrationStatus struct {
	// The last iteration that ended; its fields are those of "migration"
	// itself. Nil (absent) until the first iteration has ended.
	*migrate.IterationStats
	// Pass is where the pass under way stands; absent before its first
	// report (a pass reports at most every 250 ms) and once it has ended.
	Pass *PassStatus `json:"pass,omitempty"`
}

// PassStatus is the pass under way: what `ferry migrate` shows on its live
// line, with the rate and the estimated time to the end of the pass.
type PassStatus struct {
	migrate.PassProgress
	RateBytesPerSec float64 `json:"rate_bytes_per_sec"` // PassProgress.Rate
	ETASeconds      float64 `json:"eta_seconds"`        // PassProgress.ETA; 0 when not known yet
}

func newPassStatus(p migrate.PassProgress) *PassStatus {
	return &PassStatus{PassProgress: p, RateBytesPerSec: p.Rate(), ETASeconds: p.ETA().Seconds()}
}

// UnmarshalJSON reads both parts of "migration". (Without it, the
// UnmarshalJSON of the embedded *IterationStats would be promoted: it
// would drop the pass, and fail on the nil pointer.)
func (m *MigrationStatus) UnmarshalJSON(b []byte) error {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(b, &fields); err != nil {
		return err
	}
	*m = MigrationStatus{}
	if raw, ok := fields["pass"]; ok {
		delete(fields, "pass")
		if err := json.Unmarshal(raw, &m.Pass); err != nil {
			return fmt.Errorf("migration pass: %w", err)
		}
	}
	if len(fields) > 0 { // an iteration has ended
		m.IterationStats = new(migrate.IterationStats)
		if err := m.IterationStats.UnmarshalJSON(b); err != nil {
			return err
		}
	}
	return nil
}

// Controller is the control API of one machine.
//
// Each request is a typed Action handled by one Controller. Every action
// is one transition of one state machine (next), taken under one lock: the
// check ("may this action run in this state?") and the change (the new
// state, and for pause and resume the machine call itself) happen in the
// same critical section, so no request can act on a state another one is
// changing. Actions are handled one at a time, as Firecracker handles its
// VmmAction. A long operation (a migration, a snapshot) takes its busy
// state in one transition that also records whether the guest was running
// or paused at that moment, and works from that record, never from a
// second look at the machine. While it runs, pause and resume are refused
// (ErrConflict: HTTP 409); when it ends the state becomes what the
// operation left: the recorded run state, paused (a migration whose outcome
// is unknown), or stopped.
type Controller struct {
	m Machine
	// mu guards state, was, progress and pass: every request is one step
	// of the state machine, taken under mu, so racing requests are ordered.
	mu sync.Mutex
	// state is the current state; was, while state is busy, the run state
	// (Running or Paused) recorded when the operation began.
	state, was State
	progress   *migrate.IterationStats // the migration's last iteration
	pass       *migrate.PassProgress   // where the migration's pass under way stands
}

// New makes the controller of m, in the state m is in now (running, or
// paused for a guest that arrived paused). Every later pause and resume
// of m must go through the controller.
func New(m Machine) *Controller {
	c := &Controller{m: m}
	c.mu.Lock()
	c.state = c.observedLocked()
	c.mu.Unlock()
	return c
}

// Handle runs one action. The result is a Status for GetStatus, Pause and
// Resume, a *migrate.Stats for Migrate and a *SnapshotResult for Snapshot.
// Errors wrap ErrConflict (refused in this state) or ErrInvalid (a bad
// request); a failed migration returns a *MigrationError.
func (c *Controller) Handle(ctx context.Context, a Action) (any, error) {
	switch a := a.(type) {
	case GetStatus:
		return c.Status(), nil
	case Pause, Resume:
		return c.setRunState(a.kind())
	case Migrate:
		return c.migrate(ctx, a)
	case Snapshot:
		return c.snapshot(ctx, a.Request)
	}
	return nil, fmt.Errorf("%w: unknown action %T", ErrInvalid, a)
}

// Status describes the VM now.
func (c *Controller) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.statusLocked()
}

func (c *Controller) statusLocked() Status {
	c.settleLocked()
	s := Status{State: c.state.String(), ID: c.m.ID(), VCPUs: c.m.CPUs(), MemoryBytes: c.m.MemoryBytes()}
	if c.state == Migrating && (c.progress != nil || c.pass != nil) {
		s.Migration = &MigrationStatus{IterationStats: c.progress}
		if c.pass != nil {
			s.Migration.Pass = newPassStatus(*c.pass)
		}
	}
	return s
}

// settleLocked notes that the machine stopped on its own (the guest
// powered off, the console quit). A busy state stays until its operation
// ends.
func (c *Controller) settleLocked() {
	if c.state.busy() || c.state == Stopped {
		return
	}
	select {
	case <-c.m.Done():
		c.state = Stopped
	default:
	}
}

// observedLocked is the state of a machine no operation owns.
func (c *Controller) observedLocked() State {
	select {
	case <-c.m.Done():
		return Stopped
	default:
	}
	if c.m.Paused() {
		return Paused
	}
	return Running
}

// setRunState is Pause or Resume: the transition and the machine call in
// one critical section.
func (c *Controller) setRunState(k kind) (Status, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.settleLocked()
	to, err := next(c.state, k)
	if err != nil {
		return c.statusLocked(), err
	}
	if to != c.state {
		op := c.m.Pause
		if k == kindResume {
			op = c.m.Resume
		}
		if err := op(); err != nil {
			c.state = c.observedLocked()
			return c.statusLocked(), fmt.Errorf("%w: %s: %w", ErrConflict, k, err)
		}
		c.state = to
	}
	return c.statusLocked(), nil
}

// begin takes the busy state of action k (migrate or snapshot) in one
// transition and returns the run state it recorded: whether the guest was
// paused at that moment.
func (c *Controller) begin(k kind) (was State, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.settleLocked()
	to, err := next(c.state, k)
	if err != nil {
		return c.state, err
	}
	c.was, c.state, c.progress, c.pass = c.state, to, nil, nil
	return c.was, nil
}

// finish ends a busy state. left is Stopped when the operation ended the
// VM; otherwise the state follows the machine, which the operation left
// in the recorded run state (or paused after an unknown migration
// outcome, or after a resume that failed).
func (c *Controller) finish(left State) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.progress, c.pass = nil, nil
	if left == Stopped || left == Handed {
		c.state = left
		return
	}
	c.state = c.observedLocked()
}

// setProgress records an iteration that ended; its pass is over.
func (c *Controller) setProgress(it migrate.IterationStats) {
	c.mu.Lock()
	c.progress, c.pass = &it, nil
	c.mu.Unlock()
}

// setPass records where the pass under way stands.
func (c *Controller) setPass(p migrate.PassProgress) {
	c.mu.Lock()
	c.pass = &p
	c.mu.Unlock()
}
