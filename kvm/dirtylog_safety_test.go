package kvm

import (
	"sync"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Memory-safety tests of the dirty-log wrappers: KVM writes the bitmap
// through an address inside struct kvm_dirty_log, so the wrapper, not the
// kernel, must make sure the address is valid and the buffer big enough.

// TestGetDirtyLogShortBitmap: a bitmap shorter than the slot needs must be
// refused. KVM copies ALIGN(npages, 64)/8 bytes whatever the caller passed;
// without a check it writes past the end of the slice. The short slice here
// is the head of a longer canary-filled array, so an overflow lands in the
// test's own memory, where it is seen.
func TestGetDirtyLogShortBitmap(t *testing.T) {
	sys := requireKVM(t)
	tv := newTestVM(t, sys, vmOptions{logDirty: true, noVCPU: true})
	const canary = 0x5a5a5a5a5a5a5a5a
	buf := make([]uint64, 2*BitmapWords(uint64(len(tv.mem))))
	for i := range buf {
		buf[i] = canary
	}
	short := buf[:BitmapWords(uint64(len(tv.mem)))-1]
	err := tv.vm.GetDirtyLog(0, short)
	for i := len(short); i < len(buf); i++ {
		if buf[i] != canary {
			t.Errorf("GetDirtyLog with a %d-word bitmap wrote word %d past its end (%#x)", len(short), i, buf[i])
			break
		}
	}
	if err == nil {
		t.Errorf("GetDirtyLog with a %d-word bitmap for a %d-page slot succeeded", len(short), tv.pages())
	} else {
		t.Logf("error: %v", err)
	}
	// The right size works, and so does a longer slice.
	if err := tv.vm.GetDirtyLog(0, buf[:BitmapWords(uint64(len(tv.mem)))]); err != nil {
		t.Errorf("GetDirtyLog with an exact bitmap: %v", err)
	}
	if err := tv.vm.GetDirtyLog(0, buf); err != nil {
		t.Errorf("GetDirtyLog with a longer bitmap: %v", err)
	}
	// A slot this VM never registered.
	if err := tv.vm.GetDirtyLog(7, buf); err == nil {
		t.Error("GetDirtyLog of an unregistered slot succeeded")
	}
}

// TestDirtyLogStackBitmap: the bitmap may live on the goroutine stack (a
// caller's local array; GetDirtyLog does not make it escape). Goroutine
// stacks move when they grow, so the bitmap address must reach KVM as a
// pointer the runtime adjusts, not as an integer taken before a call that
// can grow the stack. The test calls GetDirtyLog with a stack array at many
// stack depths, in fresh goroutines (small stacks), so that at some depths
// the stack grows inside the wrapper, and checks the array received the log.
//
// The log comes from manual-protect mode, in which GET_DIRTY_LOG does not
// clear, so every read returns the same bitmap: all pages with
// INITIALLY_SET, else the pages a guest wrote.
func TestDirtyLogStackBitmap(t *testing.T) {
	sys := requireKVM(t)
	vm, err := sys.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	offered, err := vm.CheckExtension(CapManualDirtyLogProtect2)
	if err != nil {
		t.Fatal(err)
	}
	if offered&ManualProtectInitSet == 0 {
		t.Fatalf("KVM offers MANUAL_DIRTY_LOG_PROTECT2 = %d, without INITIALLY_SET; this test relies on it", offered)
	}
	if on, err := vm.EnableManualDirtyLogProtect(true); err != nil || !on {
		t.Fatalf("EnableManualDirtyLogProtect(true): %v, %v", on, err)
	}
	const size = 4 << 20 // 1024 pages, 16 words
	tv := &testVM{t: t, sys: sys, vm: vm, opts: vmOptions{memSize: size, logDirty: true}}
	tv.mem = mustMmap(t, size)
	if err := vm.SetMemoryRegion(tv.region()); err != nil {
		t.Fatal(err)
	}
	var want [16]uint64
	for i := range want {
		want[i] = ^uint64(0)
	}
	if got, err := stackDirtyLog(vm); err != nil || got != want {
		t.Fatalf("INITIALLY_SET log: %x, %v; want all ones", got, err)
	}

	type result struct {
		depth, pad int
		got        [16]uint64
		err        error
	}
	var (
		mu  sync.Mutex
		bad []result
		n   int
	)
	for depth := 0; depth < 48; depth++ {
		for pad := 0; pad < len(padders); pad++ {
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				padders[pad](depth, func() {
					got, err := stackDirtyLog(vm)
					mu.Lock()
					n++
					if err != nil || got != want {
						bad = append(bad, result{depth, pad, got, err})
					}
					mu.Unlock()
				})
			}()
			wg.Wait()
		}
	}
	for i, b := range bad {
		if i == 5 {
			t.Errorf("... %d bad reads in all", len(bad))
			break
		}
		t.Errorf("depth %d pad %d: stack bitmap %x, err %v; want all ones", b.depth, b.pad, b.got, b.err)
	}
	t.Logf("%d reads with the bitmap at different stack depths, %d wrong", n, len(bad))
}

func mustMmap(t testing.TB, size int) []byte {
	t.Helper()
	b, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANONYMOUS|unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(b) })
	return b
}

// stackDirtyLog reads slot 0's log into an array local to this frame.
//
//go:noinline
func stackDirtyLog(vm *VM) ([16]uint64, error) {
	var bm [16]uint64
	err := vm.GetDirtyLog(0, bm[:])
	return bm, err
}

// padders run f below depth frames of 160 bytes plus one frame of 8*k
// bytes, k = 1..20, covering stack offsets in 8-byte steps.
var padders = []func(int, func()){
	padDepth[[1]uint64], padDepth[[2]uint64], padDepth[[3]uint64], padDepth[[4]uint64],
	padDepth[[5]uint64], padDepth[[6]uint64], padDepth[[7]uint64], padDepth[[8]uint64],
	padDepth[[9]uint64], padDepth[[10]uint64], padDepth[[11]uint64], padDepth[[12]uint64],
	padDepth[[13]uint64], padDepth[[14]uint64], padDepth[[15]uint64], padDepth[[16]uint64],
	padDepth[[17]uint64], padDepth[[18]uint64], padDepth[[19]uint64], padDepth[[20]uint64],
}

func padDepth[P any](depth int, f func()) {
	burn(depth, func() { padFrame[P](f) })
}

//go:noinline
func padFrame[P any](f func()) {
	var p P
	touch(unsafe.Pointer(&p), unsafe.Sizeof(p))
	f()
}

//go:noinline
func burn(n int, f func()) {
	var frame [20]uint64
	touch(unsafe.Pointer(&frame), unsafe.Sizeof(frame))
	if n == 0 {
		f()
		return
	}
	burn(n-1, f)
}

// touch writes through p so the compiler keeps the array in the frame.
//
//go:noinline
func touch(p unsafe.Pointer, n uintptr) {
	b := unsafe.Slice((*byte)(p), n)
	for i := range b {
		b[i] = byte(i)
	}
}
