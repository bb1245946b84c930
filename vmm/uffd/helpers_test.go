package uffd

import (
	"errors"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Test harness for plain memory: anonymous mappings, a toucher thread
// that takes the faults, and a handler goroutine that serves them.
//
// The toucher reads and writes guest-like memory with plain Go loads and
// stores, never copy(): a goroutine that faults inside the runtime's
// memmove cannot be preempted, and a garbage collection that starts while
// it waits would wait for it forever (TestGoCopyFaultBlocksGC).

// mapPages maps n pages of anonymous private memory for the test.
func mapPages(t testing.TB, n int) []byte {
	t.Helper()
	mem, err := unix.Mmap(-1, 0, n*PageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		t.Fatalf("mmap %d pages: %v", n, err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	return mem
}

// openUFFD opens a userfaultfd with features f, closed at the end of the
// test (after mapPages' unmapping is registered, so before it runs).
func openUFFD(t testing.TB, f Feature) *UFFD {
	t.Helper()
	u, err := Open(f)
	if err != nil {
		t.Fatalf("Open(%v): %v", f, err)
	}
	t.Cleanup(func() {
		if err := u.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return u
}

// pattern is the content of page p in version v: no two pages or
// versions alike, and no zero page.
func pattern(p, v int) []byte {
	b := make([]byte, PageSize)
	for i := range b {
		b[i] = byte(i*7 + p*31 + v*101 + 1)
	}
	return b
}

// page is page p of mem.
func page(mem []byte, p int) []byte { return mem[p*PageSize : (p+1)*PageSize] }

// mismatch compares got with want byte by byte in Go code (see above) and
// returns the first differing index, or -1.
func mismatch(got, want []byte) int {
	for i := range want {
		if got[i] != want[i] {
			return i
		}
	}
	return -1
}

// toucher is a goroutine locked to its own OS thread: the thread that
// faults. Jobs run on it one at a time.
type toucher struct {
	tid  int
	jobs chan func()
}

func newToucher(t testing.TB) *toucher {
	tc := &toucher{jobs: make(chan func())}
	ready := make(chan struct{})
	go func() {
		// Locked until the goroutine ends; the thread then ends with it.
		runtime.LockOSThread()
		tc.tid = unix.Gettid()
		close(ready)
		for f := range tc.jobs {
			f()
		}
	}()
	<-ready
	t.Cleanup(func() { close(tc.jobs) })
	return tc
}

// do runs f on the toucher's thread; the channel closes when it returns.
func (tc *toucher) do(f func()) <-chan struct{} {
	done := make(chan struct{})
	tc.jobs <- func() { f(); close(done) }
	return done
}

// waitDone waits for a toucher job, failing the test after d.
func waitDone(t testing.TB, done <-chan struct{}, d time.Duration, what string) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s: still blocked after %v", what, d)
	}
}

// blocked asserts that a toucher job has not finished after d.
func blocked(t testing.TB, done <-chan struct{}, d time.Duration, what string) {
	t.Helper()
	select {
	case <-done:
		t.Fatalf("%s: finished, but its page was never served", what)
	case <-time.After(d):
	}
}

// nextFault waits up to d for a fault. Next itself has no timeout, so a
// goroutine waits for it; on timeout the UFFD is stopped, and that
// goroutine returns ErrStopped.
func nextFault(t testing.TB, u *UFFD, d time.Duration) (Fault, bool) {
	t.Helper()
	type res struct {
		f   Fault
		err error
	}
	ch := make(chan res, 1)
	go func() {
		f, err := u.Next()
		ch <- res{f, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("Next: %v", r.err)
		}
		return r.f, true
	case <-time.After(d):
		u.Stop()
		<-ch
		return Fault{}, false
	}
}

// handler serves faults on a goroutine until the UFFD is stopped: serve
// is called for each, and every fault is recorded.
type handler struct {
	u    *UFFD
	mu   sync.Mutex
	seen []Fault // guarded by mu
	errs []error // guarded by mu
	done chan struct{}
}

func startHandler(t testing.TB, u *UFFD, serve func(Fault) error) *handler {
	h := &handler{u: u, done: make(chan struct{})}
	go func() {
		defer close(h.done)
		for {
			f, err := u.Next()
			if errors.Is(err, ErrStopped) || errors.Is(err, ErrClosed) {
				return
			}
			if err == nil {
				h.mu.Lock()
				h.seen = append(h.seen, f)
				h.mu.Unlock()
				err = serve(f)
			}
			if err != nil {
				h.mu.Lock()
				h.errs = append(h.errs, err)
				h.mu.Unlock()
			}
		}
	}()
	t.Cleanup(h.stop)
	return h
}

// stop ends the handler and returns what it saw.
func (h *handler) stop() {
	h.u.Stop()
	<-h.done
}

func (h *handler) faults() ([]Fault, []error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Fault(nil), h.seen...), append([]error(nil), h.errs...)
}
