package kvm

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

// scatteredPages are 37 data pages of a 4 MiB slot (1024 pages, 16 bitmap
// words), chosen to sit on both sides of most 64-page word boundaries, on
// both sides of the 2 MiB large-page boundary (511/512), and at the very
// first data page and the very last page of the slot.
var scatteredPages = []int{
	16, 17, 63, 64, 100, 127, 128, 191, 192, 255, 256, 300, 319, 320, 333,
	447, 448, 511, 512, 575, 576, 639, 640, 700, 703, 704, 767, 768, 831,
	832, 895, 896, 959, 960, 1000, 1022, 1023,
}

// TestDirtyLogExact: with dirty logging on slot 0, the guest stores to a
// known set of pages and exits by OUT. KVM_GET_DIRTY_LOG must report every
// one of them and nothing else, except, when the paging structures start
// with Accessed/Dirty clear, the paging-structure pages KVM's page walker
// writes to set those bits (the test logs which appeared; measured here: all
// three, PML4, PDPT and PD, in the first pass only). Then: a second GET_DIRTY_LOG with
// no guest activity is empty (non-manual mode clears and re-protects), and
// a second guest pass over a different set B reports B and not the pages of
// the first set (they were write-protected again).
func TestDirtyLogExact(t *testing.T) {
	sys := requireKVM(t)
	for _, tc := range []struct {
		name    string
		clearAD bool
	}{
		{"ADpreset", false},
		{"ADclear", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tv := newTestVM(t, sys, vmOptions{logDirty: true, clearAD: tc.clearAD})
			if len(scatteredPages) != 37 {
				t.Fatalf("test bug: %d scattered pages", len(scatteredPages))
			}
			tv.load(writerProgram(t))
			bm := make([]uint64, BitmapWords(uint64(len(tv.mem))))
			if len(bm) != 16 {
				t.Fatalf("BitmapWords(4 MiB) = %d, want 16", len(bm))
			}

			// Pass 1: the scattered set.
			tv.setList(scatteredPages)
			io := tv.runIO(tv.cpu, tv.r)
			if io.Port != portDone || len(io.Data) != 1 || io.Data[0] != 1 {
				t.Fatalf("first OUT: port %#x data %v, want port %#x data [1]", io.Port, io.Data, portDone)
			}
			for _, p := range scatteredPages {
				if got := tv.mem[p*pageSize+writeOffset(p)]; got != 1 {
					t.Fatalf("page %d: guest store not visible in host memory (byte %d)", p, got)
				}
			}
			if err := tv.vm.GetDirtyLog(0, bm); err != nil {
				t.Fatalf("GetDirtyLog: %v", err)
			}
			// With A/D preset in every paging entry (and the GDT's
			// Accessed bits preset, and a program that never touches
			// the stack) nothing but the guest's stores may be reported.
			var allowed []int
			if tc.clearAD {
				allowed = pagingPages
			}
			extra := checkDirty(t, "pass 1", bitmapPages(bm), scatteredPages, allowed)
			t.Logf("pass 1: %d pages reported; paging-structure pages among them: %v", len(bitmapPages(bm)), extra)

			// No guest activity: the log must now be empty.
			if err := tv.vm.GetDirtyLog(0, bm); err != nil {
				t.Fatalf("GetDirtyLog (2nd): %v", err)
			}
			if got := bitmapPages(bm); len(got) != 0 {
				t.Errorf("second GetDirtyLog without guest writes reports %v, want nothing", got)
			}

			// Pass 2: a disjoint set, partly in the same bitmap words.
			setB := []int{18, 65, 129, 513, 1021}
			tv.setList(setB)
			io = tv.runIO(tv.cpu, tv.r)
			if io.Data[0] != 2 {
				t.Fatalf("second OUT data %v, want [2]", io.Data)
			}
			if err := tv.vm.GetDirtyLog(0, bm); err != nil {
				t.Fatalf("GetDirtyLog (pass 2): %v", err)
			}
			// The A/D bits are set by now: pass 2 must be exact in both
			// variants.
			checkDirty(t, "pass 2", bitmapPages(bm), setB, nil)
			t.Logf("pass 2: reported %v", bitmapPages(bm))
			t.Logf("spurious EINTRs while running: %d", tv.r.spurious.Load())
		})
	}
}

// TestDirtyLogNotLogging: GET_DIRTY_LOG on a slot registered without
// KVM_MEM_LOG_DIRTY_PAGES is an error wrapping ErrNotLogging (and ENOENT),
// not an all-zero bitmap. Turning logging on later (a flags-only change of
// the same slot) makes it work.
func TestDirtyLogNotLogging(t *testing.T) {
	sys := requireKVM(t)
	tv := newTestVM(t, sys, vmOptions{noVCPU: true})
	bm := make([]uint64, BitmapWords(uint64(len(tv.mem))))
	for i := range bm {
		bm[i] = 0x5555 // must not be mistaken for a result
	}
	err := tv.vm.GetDirtyLog(0, bm)
	if err == nil {
		t.Fatalf("GetDirtyLog on a slot without logging succeeded (bitmap %x)", bm)
	}
	if !errors.Is(err, ErrNotLogging) {
		t.Errorf("GetDirtyLog error %q does not wrap ErrNotLogging", err)
	}
	if !errors.Is(err, unix.ENOENT) {
		t.Errorf("GetDirtyLog error %q does not wrap ENOENT", err)
	}
	t.Logf("error: %v", err)

	tv.opts.logDirty = true
	if err := tv.vm.SetMemoryRegion(tv.region()); err != nil {
		t.Fatalf("enable logging on the existing slot: %v", err)
	}
	if err := tv.vm.GetDirtyLog(0, bm); err != nil {
		t.Fatalf("GetDirtyLog after enabling logging: %v", err)
	}
	if got := bitmapPages(bm); len(got) != 0 {
		t.Errorf("fresh log reports %v, want nothing", got)
	}

	// A deleted slot (size 0) has no log either.
	r := tv.region()
	r.Size = 0
	if err := tv.vm.SetMemoryRegion(r); err != nil {
		t.Fatalf("delete slot 0: %v", err)
	}
	if err := tv.vm.GetDirtyLog(0, bm); !errors.Is(err, ErrNotLogging) {
		t.Errorf("GetDirtyLog of a deleted slot: %v, want ErrNotLogging", err)
	}
}

// TestDirtyLogManualProtect: with MANUAL_DIRTY_LOG_PROTECT2 (without
// INITIALLY_SET), GET_DIRTY_LOG neither clears nor re-protects; only
// CLEAR_DIRTY_LOG does, for exactly the pages it is given.
func TestDirtyLogManualProtect(t *testing.T) {
	sys := requireKVM(t)
	tv := newTestVM(t, sys, vmOptions{logDirty: true, manual: true})
	tv.load(writerProgram(t))
	bm := make([]uint64, BitmapWords(uint64(len(tv.mem))))

	// Set A: three pages in chunk [128,192) (word 2), plus pages in other words.
	const chunk = 128
	setA := []int{20, 64, 130, 150, 191, 200, 513, 1023}
	inChunk := func(p int) bool { return p >= chunk && p < chunk+64 }
	var aMinusChunk []int
	for _, p := range setA {
		if !inChunk(p) {
			aMinusChunk = append(aMinusChunk, p)
		}
	}

	tv.setList(setA)
	if io := tv.runIO(tv.cpu, tv.r); io.Data[0] != 1 {
		t.Fatalf("OUT data %v, want [1]", io.Data)
	}
	if err := tv.vm.GetDirtyLog(0, bm); err != nil {
		t.Fatalf("GetDirtyLog: %v", err)
	}
	checkDirty(t, "after A", bitmapPages(bm), setA, nil)

	// No implicit clear.
	if err := tv.vm.GetDirtyLog(0, bm); err != nil {
		t.Fatalf("GetDirtyLog (again): %v", err)
	}
	checkDirty(t, "after A, second read", bitmapPages(bm), setA, nil)

	// Clear the chunk with the bits the log reported for it (what a
	// migration does), then read again.
	word := bm[chunk/64]
	if err := tv.vm.ClearDirtyLog(0, chunk, 64, []uint64{word}); err != nil {
		t.Fatalf("ClearDirtyLog(%d, 64): %v", chunk, err)
	}
	if err := tv.vm.GetDirtyLog(0, bm); err != nil {
		t.Fatalf("GetDirtyLog after clear: %v", err)
	}
	checkDirty(t, "after clearing the chunk", bitmapPages(bm), aMinusChunk, nil)

	// The guest writes one page of the cleared chunk (150) and one page
	// that is still dirty (20): 150 must come back; 130 and 191 must not.
	setP := []int{150, 20}
	tv.setList(setP)
	if io := tv.runIO(tv.cpu, tv.r); io.Data[0] != 2 {
		t.Fatalf("OUT data %v, want [2]", io.Data)
	}
	if err := tv.vm.GetDirtyLog(0, bm); err != nil {
		t.Fatalf("GetDirtyLog after rewrite: %v", err)
	}
	checkDirty(t, "after rewriting page 150", bitmapPages(bm), append([]int{150}, aMinusChunk...), nil)

	// Clearing with an all-ones mask that covers the whole slot empties it.
	all := make([]uint64, len(bm))
	for i := range all {
		all[i] = ^uint64(0)
	}
	if err := tv.vm.ClearDirtyLog(0, 0, uint32(tv.pages()), all); err != nil {
		t.Fatalf("ClearDirtyLog(whole slot): %v", err)
	}
	if err := tv.vm.GetDirtyLog(0, bm); err != nil {
		t.Fatalf("GetDirtyLog: %v", err)
	}
	if got := bitmapPages(bm); len(got) != 0 {
		t.Errorf("after clearing everything the log reports %v", got)
	}
}

// TestClearDirtyLogErrors: the argument rules of KVM_CLEAR_DIRTY_LOG.
func TestClearDirtyLogErrors(t *testing.T) {
	sys := requireKVM(t)
	tv := newTestVM(t, sys, vmOptions{logDirty: true, manual: true, noVCPU: true})
	one := []uint64{^uint64(0)}

	// Checked by the wrapper: first page not a multiple of 64.
	err := tv.vm.ClearDirtyLog(0, 100, 64, []uint64{1, 1})
	if err == nil {
		t.Fatal("ClearDirtyLog(first=100) succeeded")
	}
	t.Logf("first=100: %v", err)
	if !containsAll(err.Error(), "100", "multiple of 64") {
		t.Errorf("error %q does not name the page and the rule", err)
	}
	// Checked by the wrapper: more pages than the bitmap holds.
	if err := tv.vm.ClearDirtyLog(0, 0, 65, one); err == nil {
		t.Error("ClearDirtyLog(65 pages, 1 word) succeeded")
	}
	// Checked by KVM: range beyond the slot, and a partial word that is not
	// the slot's last.
	if err := tv.vm.ClearDirtyLog(0, uint64(tv.pages()), 64, one); !errors.Is(err, unix.EINVAL) {
		t.Errorf("ClearDirtyLog past the slot: %v, want EINVAL", err)
	}
	if err := tv.vm.ClearDirtyLog(0, 0, 32, one); !errors.Is(err, unix.EINVAL) {
		t.Errorf("ClearDirtyLog of 32 pages in the middle of the slot: %v, want EINVAL", err)
	}
	// A valid call still works.
	if err := tv.vm.ClearDirtyLog(0, 64, 64, one); err != nil {
		t.Errorf("valid ClearDirtyLog: %v", err)
	}
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !contains(s, sub) {
			return false
		}
	}
	return true
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}
