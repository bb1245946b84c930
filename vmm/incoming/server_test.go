package incoming

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferryvmm/ferry/migrate"
)

// memSource is a paused-looking VM of one small region with no dirty
// pages after the first pass: enough for migrate.Send.
type memSource struct {
	id  migrate.VMID
	mem []byte
}

func newMemSource(idByte byte) *memSource {
	s := &memSource{mem: make([]byte, 64*migrate.PageSize)}
	s.id[0] = idByte
	for p := 0; p < 64; p += 2 {
		s.mem[p*migrate.PageSize] = idByte + byte(p)
	}
	return s
}

func (s *memSource) Info() migrate.VMInfo {
	return migrate.VMInfo{ID: s.id, VCPUs: 1, Regions: []migrate.Region{{GPA: 0, Size: uint64(len(s.mem))}}}
}
func (s *memSource) Memory(int) []byte                         { return s.mem }
func (s *memSource) StartDirtyLog() (bool, error)              { return false, nil }
func (s *memSource) StopDirtyLog() error                       { return nil }
func (s *memSource) DirtyLog(int, []uint64) error              { return nil }
func (s *memSource) ClearDirtyLog(int, uint64, []uint64) error { return nil }
func (s *memSource) Pause() error                              { return nil }
func (s *memSource) Resume() error                             { return nil }
func (s *memSource) State() ([]byte, error)                    { return []byte("state"), nil }

// fakeTarget is a destination in byte slices; hooks make it block or fail.
type fakeTarget struct {
	name       string
	mu         sync.Mutex
	mem        [][]byte
	prepared   chan struct{} // closed when Prepare is entered
	hold       chan struct{} // Prepare waits for it, if set
	restoreErr error
	started    bool
	discarded  bool
	suspended  bool
	reclaimed  bool
}

func newFakeTarget(name string) *fakeTarget {
	return &fakeTarget{name: name, prepared: make(chan struct{})}
}

func (f *fakeTarget) Prepare(info migrate.VMInfo) error {
	close(f.prepared)
	if f.hold != nil {
		<-f.hold
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range info.Regions {
		f.mem = append(f.mem, make([]byte, r.Size))
	}
	return nil
}
func (f *fakeTarget) Memory(i int) []byte { return f.mem[i] }
func (f *fakeTarget) Restore([]byte) error {
	return f.restoreErr
}
func (f *fakeTarget) Start() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.started = true
	return nil
}
func (f *fakeTarget) Discard() { f.mu.Lock(); f.discarded = true; f.mu.Unlock() }
func (f *fakeTarget) Suspend() { f.mu.Lock(); f.suspended = true; f.mu.Unlock() }
func (f *fakeTarget) Reclaim() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reclaimed = true
	return nil
}

// rig is a server on loopback TCP whose targets come from a queue.
type rig struct {
	t       *testing.T
	addr    string
	targets chan *fakeTarget
	result  chan *fakeTarget
	errc    chan error
	done    chan struct{} // Serve returned
}

func newRig(t *testing.T, keep *migrate.Keeper) *rig {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{t: t, addr: ln.Addr().String(), targets: make(chan *fakeTarget, 8),
		result: make(chan *fakeTarget, 1), errc: make(chan error, 1), done: make(chan struct{})}
	srv := NewServer(ln, Config[*fakeTarget]{
		Receive: migrate.ReceiveOptions{MaxMemory: 1 << 30, MaxVCPUs: 4, IdleTimeout: 5 * time.Second, Keep: keep},
		NewTarget: func() *fakeTarget {
			select {
			case f := <-r.targets:
				return f
			default:
				return newFakeTarget("unplanned")
			}
		},
		Logf: t.Logf,
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	go func() {
		f, err := srv.Serve(ctx)
		r.result <- f
		r.errc <- err
		close(r.done)
	}()
	t.Cleanup(func() {
		cancel()
		<-r.done
	})
	return r
}

// send migrates src to the rig, with resume as asked.
func (r *rig) send(ctx context.Context, src migrate.Source, resume bool) error {
	conn, err := net.Dial("tcp", r.addr)
	if err != nil {
		r.t.Fatal(err)
	}
	defer conn.Close()
	_, err = migrate.Send(ctx, src, conn, migrate.Options{Resume: resume, AckTimeout: 10 * time.Second})
	return err
}

// served waits for Serve to return the target whose guest runs.
func (r *rig) served() *fakeTarget {
	r.t.Helper()
	select {
	case f := <-r.result:
		if err := <-r.errc; err != nil {
			r.t.Fatalf("Serve: %v", err)
		}
		return f
	case <-time.After(20 * time.Second):
		r.t.Fatal("Serve did not return a running guest")
	}
	return nil
}

// One migration holds the slot from HELLO on: a second source is refused
// while the first one is being prepared, and the first one completes.
func TestSlotOneAtATime(t *testing.T) {
	r := newRig(t, nil)
	first := newFakeTarget("first")
	first.hold = make(chan struct{})
	r.targets <- first
	firstErr := make(chan error, 1)
	go func() { firstErr <- r.send(context.Background(), newMemSource(1), false) }()
	<-first.prepared

	err := r.send(context.Background(), newMemSource(2), false)
	var re *migrate.RemoteError
	if !errors.As(err, &re) || !strings.Contains(err.Error(), "another migration into this receiver is in progress") {
		t.Fatalf("second source while the first holds the slot: %v", err)
	}
	close(first.hold)
	if err := <-firstErr; err != nil {
		t.Fatalf("first migration: %v", err)
	}
	if got := r.served(); got != first || !first.started {
		t.Fatalf("Serve returned %v, want the first target, started", got)
	}
}

// A failed migration gives the slot back: the next one is accepted and
// its guest runs.
func TestSlotFreedByFailure(t *testing.T) {
	r := newRig(t, nil)
	bad := newFakeTarget("bad")
	bad.restoreErr = errors.New("state refused")
	good := newFakeTarget("good")
	r.targets <- bad
	r.targets <- good
	if err := r.send(context.Background(), newMemSource(1), false); err == nil || !strings.Contains(err.Error(), "state refused") {
		t.Fatalf("migration into a target that refuses the state: %v", err)
	}
	if !bad.discarded || bad.started {
		t.Fatalf("failed target: discarded %v started %v", bad.discarded, bad.started)
	}
	if err := r.send(context.Background(), newMemSource(1), false); err != nil {
		t.Fatalf("migration after a failed one: %v", err)
	}
	if got := r.served(); got != good {
		t.Fatalf("Serve returned %s, want good", got.name)
	}
}

// A failed migration's target is kept for a resume of the same VM only:
// another VM's resume is refused (the kept target stays), the same VM's
// resume takes the kept target over, and Serve returns that target, not
// the one its own connection made.
func TestSlotResumeMatchedToVM(t *testing.T) {
	keep := migrate.NewKeeper(time.Minute, t.Logf)
	defer keep.Close()
	r := newRig(t, keep)
	kept := newFakeTarget("kept")
	kept.restoreErr = errors.New("cut before COMMIT")
	r.targets <- kept
	if err := r.send(context.Background(), newMemSource(7), false); err == nil {
		t.Fatal("first migration succeeded, want it to fail")
	}
	if !kept.suspended || kept.discarded {
		t.Fatalf("failed target: suspended %v discarded %v; want it kept", kept.suspended, kept.discarded)
	}
	kept.restoreErr = nil

	err := r.send(context.Background(), newMemSource(8), true)
	if err == nil || !strings.Contains(err.Error(), "keeps") {
		t.Fatalf("resume of another VM: %v", err)
	}
	if kept.reclaimed || kept.discarded {
		t.Fatalf("another VM's resume touched the kept target: reclaimed %v discarded %v", kept.reclaimed, kept.discarded)
	}
	if err := r.send(context.Background(), newMemSource(7), true); err != nil {
		t.Fatalf("resume of the same VM: %v", err)
	}
	if got := r.served(); got != kept || !kept.reclaimed || !kept.started {
		t.Fatalf("Serve returned %s (reclaimed %v, started %v), want the kept target", got.name, kept.reclaimed, kept.started)
	}
}
