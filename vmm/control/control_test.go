package control

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferryvmm/ferry/migrate"
)

var ctx = context.Background()

// TestTransitionTable checks next, the state machine, for every state and
// action.
func TestTransitionTable(t *testing.T) {
	ok := func(s State) string { return s.String() }
	const refused = "refused"
	want := map[State][5]string{ // status, pause, resume, migrate, snapshot
		Running:      {ok(Running), ok(Paused), ok(Running), ok(Migrating), ok(Snapshotting)},
		Paused:       {ok(Paused), ok(Paused), ok(Running), ok(Migrating), ok(Snapshotting)},
		Migrating:    {ok(Migrating), refused, refused, refused, refused},
		Snapshotting: {ok(Snapshotting), refused, refused, refused, refused},
		Stopped:      {ok(Stopped), refused, refused, refused, refused},
	}
	for s, row := range want {
		for k, w := range row {
			to, err := next(s, kind(k))
			got := to.String()
			if err != nil {
				got = refused
				if !errors.Is(err, ErrConflict) {
					t.Errorf("%v + %v: error %v does not wrap ErrConflict", s, kind(k), err)
				}
			}
			if got != w {
				t.Errorf("%v + %v → %s (%v), want %s", s, kind(k), got, err, w)
			}
		}
	}
}

// setup makes a controller of a fake machine in state s (a busy state is
// entered as begin would, from running).
func setup(t *testing.T, s State) (*Controller, *fakeMachine) {
	t.Helper()
	f := newFake()
	f.paused = s == Paused
	c := New(f)
	switch s {
	case Stopped:
		f.Stop("test")
	case Migrating, Snapshotting:
		c.state, c.was = s, Running
	}
	return c, f
}

// TestControllerActions runs each action in each state through Handle and
// checks the answer, the state after it and what reached the machine.
func TestControllerActions(t *testing.T) {
	migrateReq := MigrateRequest{To: "127.0.0.1:1"}
	actions := []struct {
		name string
		a    Action
	}{
		{"status", GetStatus{}},
		{"pause", Pause{}},
		{"resume", Resume{}},
		{"migrate", Migrate{Request: migrateReq}},
		{"snapshot", Snapshot{Request: SnapshotRequest{Path: "/snap"}}},
	}
	cases := []struct {
		from State
		// after each action: the state, or "409: words of the error"
		want [5]string
	}{
		{Running, [5]string{"running", "paused", "running", "running", "running"}},
		{Paused, [5]string{"paused", "paused", "running", "paused", "paused"}},
		{Migrating, [5]string{"migrating", "409: cannot pause: a migration is in progress", "409: cannot resume: a migration is in progress",
			"409: a migration is already in progress", "409: cannot snapshot: a migration is in progress"}},
		{Snapshotting, [5]string{"snapshot", "409: cannot pause: a snapshot is being written", "409: cannot resume: a snapshot is being written",
			"409: cannot migrate: a snapshot is being written", "409: a snapshot is already being written"}},
		{Stopped, [5]string{"stopped", "409: cannot pause: the VM has stopped", "409: cannot resume: the VM has stopped",
			"409: cannot migrate: the VM has stopped", "409: cannot snapshot: the VM has stopped"}},
	}
	for _, tc := range cases {
		for i, act := range actions {
			t.Run(tc.from.String()+"/"+act.name, func(t *testing.T) {
				c, f := setup(t, tc.from)
				_, err := c.Handle(ctx, act.a)
				want := tc.want[i]
				if msg, refused := strings.CutPrefix(want, "409: "); refused {
					if !errors.Is(err, ErrConflict) || httpCode(err) != 409 || !strings.Contains(err.Error(), msg) {
						t.Fatalf("error %v (HTTP %d), want 409 with %q", err, httpCode(err), msg)
					}
					if f.pauses+f.resumes+f.migrations+f.snapshots != 0 {
						t.Errorf("a refused action reached the machine: %d pauses, %d resumes, %d migrations, %d snapshots",
							f.pauses, f.resumes, f.migrations, f.snapshots)
					}
					want = tc.from.String()
				} else if err != nil && act.name != "migrate" { // the fake migration fails
					t.Fatalf("error %v", err)
				}
				if got := c.Status().State; got != want {
					t.Errorf("state %s, want %s", got, want)
				}
				if v := f.Violations(); len(v) > 0 {
					t.Errorf("violations: %q", v)
				}
			})
		}
	}
}

// TestOperationEnds checks the state each way a migration or snapshot
// ends leaves, and that the run state given to the machine is the one the
// guest had.
func TestOperationEnds(t *testing.T) {
	unknown := fmt.Errorf("%w (after COMMIT: link cut)", migrate.ErrOutcomeUnknown)
	cases := []struct {
		name     string
		from     State
		a        Action
		outcome  error
		snapErr  error
		want     string
		outcomeS string // MigrationError.Outcome
		errText  string
	}{
		{"migrate ok", Running, Migrate{Request: MigrateRequest{To: "h:1"}}, nil, nil, "stopped", "", ""},
		{"migrate failed", Running, Migrate{Request: MigrateRequest{To: "h:1"}}, errors.New("cut"), nil, "running", OutcomeFailed, "the guest keeps running here"},
		{"migrate unknown", Running, Migrate{Request: MigrateRequest{To: "h:1"}}, unknown, nil, "paused", OutcomeUnknown, "outcome unknown"},
		{"migrate paused ok", Paused, Migrate{Request: MigrateRequest{To: "h:1"}}, nil, nil, "stopped", "", ""},
		{"migrate paused failed", Paused, Migrate{Request: MigrateRequest{To: "h:1"}}, errors.New("cut"), nil, "paused", OutcomeFailed, "the guest stays paused here"},
		{"migrate paused unknown", Paused, Migrate{Request: MigrateRequest{To: "h:1"}}, unknown, nil, "paused", OutcomeUnknown, "outcome unknown"},
		{"snapshot running", Running, Snapshot{Request: SnapshotRequest{Path: "/s"}}, nil, nil, "running", "", ""},
		{"snapshot paused", Paused, Snapshot{Request: SnapshotRequest{Path: "/s"}}, nil, nil, "paused", "", ""},
		{"snapshot stop", Running, Snapshot{Request: SnapshotRequest{Path: "/s", Stop: true}}, nil, nil, "stopped", "", ""},
		{"snapshot paused stop", Paused, Snapshot{Request: SnapshotRequest{Path: "/s", Stop: true}}, nil, nil, "stopped", "", ""},
		{"snapshot failed", Running, Snapshot{Request: SnapshotRequest{Path: "/s"}}, nil, errors.New("disk full"), "running", "", "disk full"},
		{"snapshot paused failed", Paused, Snapshot{Request: SnapshotRequest{Path: "/s"}}, nil, errors.New("disk full"), "paused", "", "disk full"},
		{"snapshot relative", Running, Snapshot{Request: SnapshotRequest{Path: "s"}}, nil, nil, "running", "", "not absolute"},
		{"migrate bad", Running, Migrate{Request: MigrateRequest{}}, nil, nil, "running", "", "no destination"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, f := setup(t, tc.from)
			f.outcome = func() error { return tc.outcome }
			f.snapErr = func() error { return tc.snapErr }
			_, err := c.Handle(ctx, tc.a)
			if tc.errText == "" && err != nil || tc.errText != "" && (err == nil || !strings.Contains(err.Error(), tc.errText)) {
				t.Fatalf("error %v, want %q", err, tc.errText)
			}
			var me *MigrationError
			if errors.As(err, &me) != (tc.outcomeS != "") || me != nil && me.Outcome != tc.outcomeS {
				t.Errorf("error %#v, want outcome %q", err, tc.outcomeS)
			}
			if got := c.Status().State; got != tc.want {
				t.Errorf("state %s, want %s", got, tc.want)
			}
			if got := f.Paused() || f.stopped; tc.want != "running" && !got || tc.want == "running" && got {
				t.Errorf("machine paused=%v stopped=%v, want %s", f.paused, f.stopped, tc.want)
			}
			if v := f.Violations(); len(v) > 0 {
				t.Errorf("violations: %q", v)
			}
		})
	}
}

// TestBusyRefusesPauseResume holds a migration in progress and checks
// that pause and resume are refused with 409 meanwhile, that status shows
// the migration's progress, and that the guest runs again once it failed.
func TestBusyRefusesPauseResume(t *testing.T) {
	c, f := setup(t, Running)
	release := make(chan struct{})
	f.outcome = func() error { <-release; return errors.New("cut") }
	started := make(chan struct{})
	done := make(chan error)
	go func() {
		_, err := c.Handle(ctx, Migrate{Request: MigrateRequest{To: "h:1"}, Started: func() { close(started) }})
		done <- err
	}()
	<-started
	for _, a := range []Action{Pause{}, Resume{}} {
		if _, err := c.Handle(ctx, a); httpCode(err) != 409 || !strings.Contains(err.Error(), "a migration is in progress") {
			t.Errorf("%T during a migration: %v, want 409", a, err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for c.Status().Migration == nil && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if st := c.Status(); st.State != "migrating" || st.Migration == nil {
		t.Errorf("status during the migration %+v, want migrating with progress", st)
	}
	close(release)
	if err := <-done; err == nil {
		t.Fatal("the migration succeeded")
	}
	if st := c.Status(); st.State != "running" || st.Migration != nil || f.Paused() {
		t.Errorf("after the failed migration: %+v, machine paused %v; want running", st, f.Paused())
	}
	if v := f.Violations(); len(v) > 0 {
		t.Errorf("violations: %q", v)
	}
}

// TestConcurrentActions sends pause, resume, migrate, snapshot and status
// requests from several goroutines at once (run it with -race) and checks
// the invariants after every step:
//   - whenever no operation owns the VM, the state the controller reports
//     is the machine's (running, paused, or stopped);
//   - an operation is given the run state the guest has when it begins,
//     and no pause or resume reaches the machine while it runs (so a guest
//     the user paused is never resumed by a migration's rollback or a
//     snapshot, and a running guest is never left paused by one);
//   - a guest the user paused stays paused until the user resumes it.
func TestConcurrentActions(t *testing.T) {
	rounds := 5
	if testing.Short() {
		rounds = 2
	}
	var refused, pausesOK, migrations, snapshots atomic.Int64
	for round := 0; round < rounds; round++ {
		f := newFake()
		f.opTime = 300 * time.Microsecond
		f.outcome = func() error {
			switch n := rand.N(40); {
			case n == 0:
				return nil // migrated: the VM stops, the round ends
			case n < 4:
				return fmt.Errorf("%w (test)", migrate.ErrOutcomeUnknown)
			}
			return errors.New("link cut")
		}
		f.snapErr = func() error {
			if rand.N(4) == 0 {
				return errors.New("disk full")
			}
			return nil
		}
		c := New(f)
		stop := make(chan struct{})
		var wg sync.WaitGroup
		check := func() {
			c.mu.Lock()
			s := c.state
			f.mu.Lock()
			paused, stopped := f.paused, f.stopped
			f.mu.Unlock()
			c.mu.Unlock()
			if !s.busy() && (s == Stopped) != stopped || s == Running && paused || s == Paused && !paused {
				f.mu.Lock()
				f.violate("controller says %v, machine paused=%v stopped=%v", s, paused, stopped)
				f.mu.Unlock()
			}
		}
		// The user: pauses, checks the guest stays paused, resumes.
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				st, err := c.Handle(ctx, Pause{})
				if err != nil {
					refused.Add(1)
					time.Sleep(time.Duration(rand.N(300)) * time.Microsecond)
					continue
				}
				pausesOK.Add(1)
				if st.(Status).State != "paused" {
					t.Errorf("pause answered %+v", st)
				}
				for j := 0; j < 3; j++ {
					time.Sleep(time.Duration(rand.N(200)) * time.Microsecond)
					if !f.Paused() {
						f.mu.Lock()
						f.violate("a guest the user paused runs again without a resume")
						f.mu.Unlock()
					}
				}
				for {
					if _, err := c.Handle(ctx, Resume{}); err == nil || strings.Contains(err.Error(), "stopped") {
						break
					}
					refused.Add(1)
					time.Sleep(50 * time.Microsecond)
				}
				time.Sleep(time.Duration(rand.N(500)) * time.Microsecond) // let it run a while
			}
		}()
		for g := 0; g < 4; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 50; i++ {
					var a Action = Migrate{Request: MigrateRequest{To: "h:1"}}
					if g%2 == 1 {
						a = Snapshot{Request: SnapshotRequest{Path: "/snap", Stop: rand.N(200) == 0}}
					}
					time.Sleep(time.Duration(rand.N(400)) * time.Microsecond)
					_, err := c.Handle(ctx, a)
					if httpCode(err) == 409 {
						refused.Add(1)
					} else if g%2 == 1 {
						snapshots.Add(1)
					} else {
						migrations.Add(1)
					}
					check()
				}
			}()
		}
		var checkers sync.WaitGroup
		checkers.Add(1)
		go func() {
			defer checkers.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				st := c.Status()
				if st.State == "" || st.ID == "" {
					t.Errorf("status %+v", st)
				}
				check()
				time.Sleep(20 * time.Microsecond)
			}
		}()
		wg.Wait()
		close(stop)
		checkers.Wait()
		check()
		if v := f.Violations(); len(v) > 0 {
			t.Fatalf("round %d: %d violations, first: %q", round, len(v), v[:min(len(v), 5)])
		}
	}
	t.Logf("%d pauses, %d migrations, %d snapshots handled; %d requests refused (409)",
		pausesOK.Load(), migrations.Load(), snapshots.Load(), refused.Load())
	if pausesOK.Load() == 0 || migrations.Load() == 0 || snapshots.Load() == 0 || refused.Load() == 0 {
		t.Error("the test did not exercise every action")
	}
}
