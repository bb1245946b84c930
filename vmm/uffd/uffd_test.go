package uffd

import (
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestOpen(t *testing.T) {
	u := openUFFD(t, FeatureThreadID|FeatureWP)
	if got := u.Features(); got != FeatureThreadID|FeatureWP {
		t.Errorf("Features() = %v", got)
	}
	t.Logf("opened through %s", u.how)

	t.Run("device", func(t *testing.T) {
		if _, err := os.Stat(DevicePath); errors.Is(err, os.ErrNotExist) {
			t.Skipf("%s does not exist", DevicePath)
		}
		u, err := open(FeatureThreadID, []opener{{DevicePath, openDevice}})
		if err != nil {
			t.Fatalf("open through %s: %v", DevicePath, err)
		}
		u.Close()
	})

	t.Run("neither", func(t *testing.T) {
		refuse := func(errno unix.Errno) func(int) (int, error) {
			return func(int) (int, error) { return -1, errno }
		}
		_, err := open(0, []opener{{"the userfaultfd system call", refuse(unix.EPERM)}, {DevicePath, refuse(unix.ENOENT)}})
		if err == nil {
			t.Fatal("open with both ways refused: no error")
		}
		msg := err.Error()
		if !strings.Contains(msg, "system call") || !strings.Contains(msg, DevicePath) || !errors.Is(err, unix.EPERM) || !errors.Is(err, unix.ENOENT) {
			t.Errorf("error does not name both ways and their errors: %v", err)
		}
		t.Logf("error: %v", err)
	})

	t.Run("unoffered feature", func(t *testing.T) {
		_, err := Open(FeatureThreadID | 1<<62)
		if err == nil || !strings.Contains(err.Error(), "0x4000000000000000") {
			t.Fatalf("Open with an unknown feature: %v, want an error naming it", err)
		}
		t.Logf("error: %v", err)
	})
}

func TestRangeChecks(t *testing.T) {
	u := openUFFD(t, 0)
	mem := mapPages(t, 4)
	for name, err := range map[string]error{
		"register unaligned": u.Register(mem[1:PageSize+1], ModeMissing),
		"register partial":   u.Register(mem[:PageSize+1], ModeMissing),
		"register empty":     u.Register(mem[:0], ModeMissing),
		"register bad mode":  u.Register(mem, Mode(4)),
		"unregister partial": u.Unregister(mem[:100]),
		"wake partial":       u.Wake(mem[PageSize:][:10]),
		"drop partial":       DropPages(mem[:PageSize-1]),
	} {
		if err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if _, err := u.Copy(mem[:PageSize], make([]byte, 2*PageSize)); err == nil {
		t.Error("Copy with a longer source: no error")
	}
	if _, err := u.ZeroPage(mem[:PageSize/2]); err == nil {
		t.Error("ZeroPage of half a page: no error")
	}
	if _, err := u.Copy(mem[:PageSize], pattern(0, 0)); !errors.Is(err, unix.ENOENT) {
		t.Errorf("Copy into an unregistered range: %v, want ENOENT", err)
	}
	for _, c := range []struct {
		addr uintptr
		off  int
		ok   bool
	}{
		{addrOf(mem), 0, true},
		{addrOf(mem) + 5*PageSize/2, 2 * PageSize, true},
		{addrOf(mem) + 4*PageSize - 1, 3 * PageSize, true},
		{addrOf(mem) + 4*PageSize, 0, false},
		{addrOf(mem) - 1, 0, false},
	} {
		if off, ok := Offset(mem, c.addr); off != c.off || ok != c.ok {
			t.Errorf("Offset(mem, base%+d) = %d, %v; want %d, %v", int(c.addr-addrOf(mem)), off, ok, c.off, c.ok)
		}
	}
}

// TestServeFaults: a thread reads four registered pages and writes four
// more; a handler serves odd pages with Copy and even ones with ZeroPage.
// The thread sees exactly what was served, its writes land on top of it,
// and each fault names its page, its kind and the thread.
func TestServeFaults(t *testing.T) {
	const n = 8
	mem := mapPages(t, n)
	u := openUFFD(t, FeatureThreadID)
	if err := u.Register(mem, ModeMissing); err != nil {
		t.Fatal(err)
	}
	served := func(p int) []byte {
		if p%2 == 0 {
			return make([]byte, PageSize)
		}
		return pattern(p, 1)
	}
	h := startHandler(t, u, func(f Fault) error {
		off, ok := Offset(mem, f.Addr)
		if !ok {
			return errors.New("fault outside the registered pages")
		}
		p := off / PageSize
		var err error
		if p%2 == 0 {
			_, err = u.ZeroPage(page(mem, p))
		} else {
			_, err = u.Copy(page(mem, p), served(p))
		}
		return err
	})

	tc := newToucher(t)
	bad := make([]int, n)
	waitDone(t, tc.do(func() {
		for p := 0; p < n; p++ {
			if p >= n/2 {
				page(mem, p)[100] = byte(0xe0 + p) // a write fault
			}
			bad[p] = mismatch(page(mem, p), withByte(served(p), p >= n/2, byte(0xe0+p)))
		}
	}), 10*time.Second, "toucher")
	h.stop()

	for p, i := range bad {
		if i >= 0 {
			t.Errorf("page %d: byte %d differs from what was served", p, i)
		}
	}
	faults, errs := h.faults()
	for _, err := range errs {
		t.Errorf("handler: %v", err)
	}
	first := map[int]Fault{}
	for _, f := range faults {
		off, _ := Offset(mem, f.Addr)
		if _, dup := first[off/PageSize]; !dup {
			first[off/PageSize] = f
		}
		if f.TID != tc.tid {
			t.Errorf("%v: thread %d, want the toucher's %d", f, f.TID, tc.tid)
		}
		if f.Addr != f.Page() {
			t.Errorf("%v: address not rounded to its page", f)
		}
	}
	for p := 0; p < n; p++ {
		f, ok := first[p]
		if !ok {
			t.Errorf("page %d: no fault", p)
		} else if f.Write != (p >= n/2) || f.WP {
			t.Errorf("page %d: first fault %+v, want write=%v", p, f, p >= n/2)
		}
	}
	t.Logf("%d faults for %d pages", len(faults), n)
}

// withByte is b with b[100] = v when set.
func withByte(b []byte, set bool, v byte) []byte {
	if set {
		b[100] = v
	}
	return b
}

// TestDuplicateFault: a signal to a thread blocked on a fault makes it
// leave the wait, run the handler and fault again: the page raises a
// second fault. The first Copy places the page; the second reports that it
// was there and leaves it as it was.
func TestDuplicateFault(t *testing.T) {
	mem := mapPages(t, 1)
	u := openUFFD(t, FeatureThreadID)
	if err := u.Register(mem, ModeMissing); err != nil {
		t.Fatal(err)
	}
	tc := newToucher(t)
	var bad int
	done := tc.do(func() { bad = mismatch(mem, pattern(0, 1)) })
	f1, ok := nextFault(t, u, 5*time.Second)
	if !ok {
		t.Fatal("no fault")
	}
	if err := unix.Tgkill(unix.Getpid(), tc.tid, unix.SIGURG); err != nil {
		t.Fatal(err)
	}
	f2, ok := nextFault(t, u, 5*time.Second)
	if !ok {
		t.Fatal("no second fault after a signal to the blocked thread")
	}
	if f2.Page() != f1.Page() {
		t.Fatalf("second fault %v, first %v", f2, f1)
	}
	blocked(t, done, 50*time.Millisecond, "toucher")
	if existed, err := u.Copy(mem, pattern(0, 1)); err != nil || existed {
		t.Fatalf("first Copy: existed %v, %v", existed, err)
	}
	if existed, err := u.Copy(mem, pattern(0, 2)); err != nil || !existed {
		t.Fatalf("second Copy: existed %v, %v; want existed", existed, err)
	}
	if existed, err := u.ZeroPage(mem); err != nil || !existed {
		t.Fatalf("ZeroPage of a present page: existed %v, %v; want existed", existed, err)
	}
	waitDone(t, done, 5*time.Second, "toucher")
	if bad >= 0 {
		t.Errorf("byte %d differs from the first copy", bad)
	}
}

// TestCopyRunWithPresentPages: one Copy over a run of pages of which some
// are already present places the others, leaves those as they were, says
// existed, and wakes a thread blocked on any of them.
func TestCopyRunWithPresentPages(t *testing.T) {
	const n = 6
	mem := mapPages(t, n)
	u := openUFFD(t, 0)
	if err := u.Register(mem, ModeMissing); err != nil {
		t.Fatal(err)
	}
	for _, p := range []int{0, 2, 3} {
		if _, err := u.Copy(page(mem, p), pattern(p, 1)); err != nil {
			t.Fatal(err)
		}
	}
	src := make([]byte, 0, n*PageSize)
	for p := 0; p < n; p++ {
		src = append(src, pattern(p, 2)...)
	}
	existed, err := u.Copy(mem, src)
	if err != nil || !existed {
		t.Fatalf("Copy over a partly present run: existed %v, %v", existed, err)
	}
	for p := 0; p < n; p++ {
		want := pattern(p, 2)
		if p == 0 || p == 2 || p == 3 {
			want = pattern(p, 1)
		}
		if i := mismatch(page(mem, p), want); i >= 0 {
			t.Errorf("page %d: byte %d is not the expected version", p, i)
		}
	}
}

// TestWake: Wake lets a blocked thread retry; its page still missing, it
// faults again, and is served then.
func TestWake(t *testing.T) {
	mem := mapPages(t, 2)
	u := openUFFD(t, 0)
	if err := u.Register(mem, ModeMissing); err != nil {
		t.Fatal(err)
	}
	if err := u.Wake(mem); err != nil {
		t.Fatalf("Wake with nobody waiting: %v", err)
	}
	tc := newToucher(t)
	var bad int
	done := tc.do(func() { bad = mismatch(page(mem, 1), pattern(1, 1)) })
	if _, ok := nextFault(t, u, 5*time.Second); !ok {
		t.Fatal("no fault")
	}
	if err := u.Wake(page(mem, 1)); err != nil {
		t.Fatal(err)
	}
	f, ok := nextFault(t, u, 5*time.Second)
	if !ok {
		t.Fatal("no second fault after Wake of a missing page")
	}
	if off, _ := Offset(mem, f.Addr); off != PageSize {
		t.Fatalf("second fault %v not on page 1", f)
	}
	if _, err := u.Copy(page(mem, 1), pattern(1, 1)); err != nil {
		t.Fatal(err)
	}
	waitDone(t, done, 5*time.Second, "toucher")
	if bad >= 0 {
		t.Errorf("byte %d differs", bad)
	}
}

// TestWriteProtect: a write to a page protected in ModeWP faults with WP
// and Write; it lands only once the protection is cleared.
func TestWriteProtect(t *testing.T) {
	mem := mapPages(t, 1)
	u := openUFFD(t, FeatureWP|FeatureThreadID)
	if err := u.Register(mem, ModeMissing|ModeWP); err != nil {
		t.Fatal(err)
	}
	if _, err := u.Copy(mem, pattern(0, 1)); err != nil {
		t.Fatal(err)
	}
	if err := u.WriteProtect(mem, true); err != nil {
		t.Fatal(err)
	}
	tc := newToucher(t)
	done := tc.do(func() { mem[7] = 0xaa })
	f, ok := nextFault(t, u, 5*time.Second)
	if !ok {
		t.Fatal("no fault on a write to a protected page")
	}
	if !f.WP || !f.Write || f.TID != tc.tid {
		t.Errorf("fault %+v, want a write-protect write by thread %d", f, tc.tid)
	}
	blocked(t, done, 50*time.Millisecond, "writer")
	if mem[7] != pattern(0, 1)[7] {
		t.Fatal("the write landed while the page was protected")
	}
	if err := u.WriteProtect(mem, false); err != nil {
		t.Fatal(err)
	}
	waitDone(t, done, 5*time.Second, "writer")
	want := withByte(pattern(0, 1), false, 0)
	want[7] = 0xaa
	if i := mismatch(mem, want); i >= 0 {
		t.Errorf("byte %d differs after the write", i)
	}
}

// TestDropPages: after DropPages a registered page faults again (and is
// served anew); an unregistered one reads as zeros.
func TestDropPages(t *testing.T) {
	mem := mapPages(t, 2)
	u := openUFFD(t, 0)
	if err := u.Register(page(mem, 0), ModeMissing); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	version := 1 // guarded by mu
	h := startHandler(t, u, func(f Fault) error {
		mu.Lock()
		v := version
		mu.Unlock()
		_, err := u.Copy(page(mem, 0), pattern(0, v))
		return err
	})
	tc := newToucher(t)
	read := func(p, v int) int {
		var bad int
		waitDone(t, tc.do(func() { bad = mismatch(page(mem, p), pattern(p, v)) }), 5*time.Second, "toucher")
		return bad
	}
	if i := read(0, 1); i >= 0 {
		t.Fatalf("first read: byte %d differs", i)
	}
	mu.Lock()
	version = 2
	mu.Unlock()
	if err := DropPages(page(mem, 0)); err != nil {
		t.Fatal(err)
	}
	if i := read(0, 2); i >= 0 {
		t.Errorf("read after DropPages: byte %d is not the second version", i)
	}
	h.stop()
	if faults, errs := h.faults(); len(faults) < 2 || len(errs) > 0 {
		t.Errorf("faults %v, errors %v; want two faults or more", faults, errs)
	}

	copy(page(mem, 1), pattern(1, 1))
	if err := DropPages(page(mem, 1)); err != nil {
		t.Fatal(err)
	}
	if i := mismatch(page(mem, 1), make([]byte, PageSize)); i >= 0 {
		t.Errorf("unregistered page after DropPages: byte %d is not zero", i)
	}
}

// TestTwoThreadsOnePage: two threads blocked on one page each raise a
// fault; one Copy wakes both, and the second Copy says existed.
func TestTwoThreadsOnePage(t *testing.T) {
	mem := mapPages(t, 1)
	u := openUFFD(t, FeatureThreadID)
	if err := u.Register(mem, ModeMissing); err != nil {
		t.Fatal(err)
	}
	a, b := newToucher(t), newToucher(t)
	var badA, badB int
	doneA := a.do(func() { badA = mismatch(mem, pattern(0, 1)) })
	doneB := b.do(func() { badB = mismatch(mem, pattern(0, 1)) })
	tids := map[int]bool{}
	for len(tids) < 2 {
		f, ok := nextFault(t, u, 5*time.Second)
		if !ok {
			t.Fatalf("faults from threads %v only, want %d and %d", tids, a.tid, b.tid)
		}
		tids[f.TID] = true
	}
	if !tids[a.tid] || !tids[b.tid] {
		t.Fatalf("faults from threads %v, want %d and %d", tids, a.tid, b.tid)
	}
	if existed, err := u.Copy(mem, pattern(0, 1)); err != nil || existed {
		t.Fatalf("Copy: existed %v, %v", existed, err)
	}
	waitDone(t, doneA, 5*time.Second, "first thread")
	waitDone(t, doneB, 5*time.Second, "second thread")
	if badA >= 0 || badB >= 0 {
		t.Errorf("bytes %d, %d differ", badA, badB)
	}
	if existed, err := u.Copy(mem, pattern(0, 1)); err != nil || !existed {
		t.Errorf("Copy for the second fault: existed %v, %v; want existed", existed, err)
	}
}
