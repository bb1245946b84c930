package vmm

import (
	"strings"
	"testing"
)

func TestMemoryMarkDirty(t *testing.T) {
	m, err := NewMemory(pciHoleStart + 64<<20) // two regions
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	m.MarkDirty(0x1000, 1)                   // page 1
	m.MarkDirty(0x3fff, 2)                   // pages 3 and 4
	m.MarkDirty(pciHoleStart-10, 0x2000)     // last page of region 0; the hole is ignored
	m.MarkDirty(highRAMStart+65*pageSize, 8) // page 65 of region 1
	m.MarkDirty(1<<50, 4096)                 // not RAM
	b0 := make([]uint64, (m.Regions[0].Size()/pageSize+63)/64)
	b1 := make([]uint64, (m.Regions[1].Size()/pageSize+63)/64)
	b0[0] = 1 // KVM's own bits stay
	m.dirty[0].Report(b0, true)
	m.dirty[1].Report(b1, true)
	last := pciHoleStart/pageSize - 1
	if b0[0] != 1|1<<1|1<<3|1<<4 || b0[last/64] != 1<<(last%64) {
		t.Fatalf("region 0 bitmap %#x ... %#x", b0[0], b0[last/64])
	}
	if b1[1] != 1<<1 || b1[0] != 0 {
		t.Fatalf("region 1 bitmap %#x %#x", b1[0], b1[1])
	}
	// Pages reported with re-arm (classic mode) are forgotten.
	clear(b0)
	m.dirty[0].Report(b0, true)
	for _, w := range b0 {
		if w != 0 {
			t.Fatal("dirty pages reported twice")
		}
	}
}

// TestDirtyLogIncludesDeviceWrites: a page a device wrote (not the guest,
// so KVM never saw it) is in the migration source's dirty log with KVM's
// rules: in manual mode every read reports it until ClearDirtyLog re-arms
// it (a mid-pass peek must not lose it); in classic mode the read that
// reports it re-arms it.
func TestDirtyLogIncludesDeviceWrites(t *testing.T) {
	m := newMachine(t, Config{Memory: 16 << 20, CPUs: 1})
	src := NewMigrationSource(m)
	manual, err := src.StartDirtyLog()
	if err != nil {
		t.Fatal(err)
	}
	defer src.StopDirtyLog()
	words := (m.mem.Regions[0].Size()/pageSize + 63) / 64
	bitmap := make([]uint64, words)
	read := func() bool {
		t.Helper()
		clear(bitmap)
		if err := src.DirtyLog(0, bitmap); err != nil {
			t.Fatal(err)
		}
		return bitmap[0x123/64]&(1<<(0x123%64)) != 0
	}
	read() // whatever was dirty before
	if manual {
		all := make([]uint64, words)
		for w := range all {
			all[w] = ^uint64(0)
		}
		if err := src.ClearDirtyLog(0, 0, all); err != nil {
			t.Fatal(err)
		}
	}
	m.mem.MarkDirty(0x123456, 1) // page 0x123
	if !read() {
		t.Fatal("page written by a device missing from the dirty log")
	}
	if manual {
		if !read() {
			t.Fatal("manual mode: a second read of the log lost the page a device wrote (only ClearDirtyLog re-arms it)")
		}
		one := []uint64{1 << (0x123 % 64)}
		if err := src.ClearDirtyLog(0, 0x123/64*64, one); err != nil {
			t.Fatal(err)
		}
		if read() {
			t.Fatal("manual mode: page still reported after ClearDirtyLog")
		}
		m.mem.MarkDirty(0x123000, 8)
		if !read() {
			t.Fatal("manual mode: a device write after ClearDirtyLog is not reported")
		}
	} else {
		t.Log("KVM without manual dirty-log protection: classic mode only")
	}
	// Classic mode: the read that reports the page re-arms it.
	src.manual = false
	m.mem.MarkDirty(0x123456, 1)
	if !read() {
		t.Fatal("classic mode: page written by a device missing from the dirty log")
	}
	if read() {
		t.Fatal("classic mode: page written by a device reported twice")
	}
}

// TestDirtyLoggingErrors: turning dirty logging off goes on to the other
// slots when one fails (none is left logging unnoticed), and a
// StartDirtyLog that fails reports a failed roll-back too. KVM refuses to
// change the size of a slot, which makes region 0 fail here.
func TestDirtyLoggingErrors(t *testing.T) {
	m := newMachine(t, Config{Memory: pciHoleStart + 64<<20, CPUs: 1}) // two regions
	src := NewMigrationSource(m)
	r0 := &m.mem.Regions[0]
	full := r0.Mem
	t.Cleanup(func() { r0.Mem = full })
	slot1 := m.mem.Regions[1].Slot
	bitmap := make([]uint64, (m.mem.Regions[1].Size()/pageSize+63)/64)

	if _, err := src.StartDirtyLog(); err != nil {
		t.Fatal(err)
	}
	r0.Mem = full[:len(full)-pageSize]
	err := src.StopDirtyLog()
	if err == nil {
		t.Fatal("StopDirtyLog with a slot KVM refuses: no error")
	}
	if m.vm.GetDirtyLog(slot1, bitmap) == nil {
		t.Errorf("StopDirtyLog failed on region 0 (%v) and left region 1 logging", err)
	}

	_, err = src.StartDirtyLog()
	if err == nil || !strings.Contains(err.Error(), "dirty logging true") || !strings.Contains(err.Error(), "dirty logging false") {
		t.Errorf("StartDirtyLog whose roll-back fails too: %v, want both errors", err)
	}
}
