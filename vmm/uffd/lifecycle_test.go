package uffd

import (
	"errors"
	"testing"
	"time"
)

// TestStop: Stop wakes a reader blocked in Next, and every later Next
// returns ErrStopped at once, while the resolving ioctls keep working;
// after Close everything returns ErrClosed.
func TestStop(t *testing.T) {
	mem := mapPages(t, 1)
	u, err := Open(0)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if err := u.Register(mem, ModeMissing); err != nil {
		t.Fatal(err)
	}
	res := make(chan error, 1)
	go func() {
		_, err := u.Next()
		res <- err
	}()
	select {
	case err := <-res:
		t.Fatalf("Next returned with nothing to read: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	start := time.Now()
	u.Stop()
	select {
	case err := <-res:
		if !errors.Is(err, ErrStopped) {
			t.Fatalf("Next after Stop: %v, want ErrStopped", err)
		}
		t.Logf("Next returned %v after Stop", time.Since(start))
	case <-time.After(2 * time.Second):
		t.Fatal("Next still blocked 2 s after Stop")
	}
	if _, err := u.Next(); !errors.Is(err, ErrStopped) {
		t.Errorf("second Next after Stop: %v, want ErrStopped", err)
	}
	if _, err := u.Copy(mem, pattern(0, 1)); err != nil {
		t.Errorf("Copy after Stop: %v", err)
	}
	if i := mismatch(mem, pattern(0, 1)); i >= 0 {
		t.Errorf("byte %d differs after a Copy after Stop", i)
	}
	u.Stop() // a second Stop is harmless

	if err := u.Close(); err != nil {
		t.Fatal(err)
	}
	if err := u.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := u.Next(); !errors.Is(err, ErrClosed) {
		t.Errorf("Next after Close: %v, want ErrClosed", err)
	}
	if err := u.Wake(mem); !errors.Is(err, ErrClosed) {
		t.Errorf("Wake after Close: %v, want ErrClosed", err)
	}
}

// TestCloseWhileReading: Close stops a reader blocked in Next and waits
// for it before closing the descriptor.
func TestCloseWhileReading(t *testing.T) {
	u, err := Open(0)
	if err != nil {
		t.Fatal(err)
	}
	res := make(chan error, 1)
	go func() {
		_, err := u.Next()
		res <- err
	}()
	time.Sleep(20 * time.Millisecond)
	closed := make(chan error, 1)
	go func() { closed <- u.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("Close: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Close blocked for 2 s with a reader in Next")
	}
	if err := <-res; !errors.Is(err, ErrStopped) && !errors.Is(err, ErrClosed) {
		t.Errorf("Next during Close: %v", err)
	}
}

// TestUnresolvedFault pins what the kernel does with a fault nobody
// resolves when its range is unregistered or the userfaultfd closed: the
// blocked thread goes on, and the page it never got reads as zeros. A
// post-copy destination must therefore never do either while a page is
// still to come: the guest would run on with a zeroed page.
func TestUnresolvedFault(t *testing.T) {
	for _, how := range []string{"Unregister", "Close"} {
		t.Run(how, func(t *testing.T) {
			mem := mapPages(t, 1)
			u := openUFFD(t, 0)
			if err := u.Register(mem, ModeMissing); err != nil {
				t.Fatal(err)
			}
			tc := newToucher(t)
			var bad int
			done := tc.do(func() { bad = mismatch(mem, make([]byte, PageSize)) })
			if _, ok := nextFault(t, u, 5*time.Second); !ok {
				t.Fatal("no fault")
			}
			blocked(t, done, 50*time.Millisecond, "toucher")
			var err error
			if how == "Close" {
				err = u.Close()
			} else {
				err = u.Unregister(mem)
			}
			if err != nil {
				t.Fatal(err)
			}
			waitDone(t, done, 5*time.Second, "toucher after "+how)
			if bad >= 0 {
				t.Errorf("byte %d of the never served page is not zero", bad)
			}
		})
	}
}
