package vmm

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/zeebo/xxh3"

	"github.com/ferryvmm/ferry/migrate"
)

func newTestMemory(t *testing.T, size uint64) *Memory {
	t.Helper()
	m, err := NewMemory(size)
	if err != nil {
		t.Fatalf("NewMemory(%d MiB): %v", size>>20, err)
	}
	t.Cleanup(m.Close)
	return m
}

func TestMemorySmallGuest(t *testing.T) {
	const size = 128 << 20
	m := newTestMemory(t, size)
	if len(m.Regions) != 1 {
		t.Fatalf("%d regions, want 1", len(m.Regions))
	}
	r := m.Regions[0]
	if r.GPA != 0 || r.Size() != size || r.Slot != 0 {
		t.Fatalf("region = slot %d at %#x size %#x, want slot 0 at 0 size %#x", r.Slot, r.GPA, r.Size(), uint64(size))
	}
	if m.Size() != size {
		t.Fatalf("Size = %#x, want %#x", m.Size(), uint64(size))
	}
	want := []E820Entry{
		{0, 0x9fc00, e820RAM},
		{0x9fc00, 0x100000 - 0x9fc00, e820Reserved},
		{0x100000, size - 0x100000, e820RAM},
	}
	if got := m.E820(); !equalE820(got, want) {
		t.Fatalf("E820 = %+v, want %+v", got, want)
	}
}

func TestMemoryLargeGuestSplitsAroundPCIHole(t *testing.T) {
	const size = 4 << 30
	m := newTestMemory(t, size)
	if len(m.Regions) != 2 {
		t.Fatalf("%d regions, want 2", len(m.Regions))
	}
	lo, hi := m.Regions[0], m.Regions[1]
	if lo.GPA != 0 || lo.Size() != 3<<30 || lo.Slot != 0 {
		t.Errorf("low region = slot %d at %#x size %#x, want slot 0 at 0 size 3 GiB", lo.Slot, lo.GPA, lo.Size())
	}
	if hi.GPA != 4<<30 || hi.Size() != 1<<30 || hi.Slot != 1 {
		t.Errorf("high region = slot %d at %#x size %#x, want slot 1 at 4 GiB size 1 GiB", hi.Slot, hi.GPA, hi.Size())
	}
	if m.Size() != size {
		t.Errorf("Size = %#x, want %#x", m.Size(), uint64(size))
	}
	want := []E820Entry{
		{0, 0x9fc00, e820RAM},
		{0x9fc00, 0x100000 - 0x9fc00, e820Reserved},
		{0x100000, 3<<30 - 0x100000, e820RAM},
		{4 << 30, 1 << 30, e820RAM},
	}
	if got := m.E820(); !equalE820(got, want) {
		t.Fatalf("E820 = %+v, want %+v", got, want)
	}
	// Nothing in the E820 map overlaps the IOAPIC or LAPIC.
	for _, e := range m.E820() {
		for _, a := range []uint64{ioapicAddr, lapicAddr} {
			if a >= e.Addr && a < e.Addr+e.Size {
				t.Errorf("E820 entry %+v covers %#x", e, a)
			}
		}
	}

	// Exactly 3 GiB still fits below the hole.
	m3 := newTestMemory(t, 3<<30)
	if len(m3.Regions) != 1 {
		t.Errorf("3 GiB guest: %d regions, want 1", len(m3.Regions))
	}
	if n := len(m3.E820()); n != 3 {
		t.Errorf("3 GiB guest: %d E820 entries, want 3", n)
	}
}

func equalE820(a, b []E820Entry) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestMemoryRejectsBadSizes(t *testing.T) {
	for _, size := range []uint64{0, 4096, MinMemory - pageSize, MinMemory + 1, MinMemory + 512, 128<<20 + 2048, MaxMemory + pageSize} {
		if m, err := NewMemory(size); err == nil {
			m.Close()
			t.Errorf("NewMemory(%d) accepted", size)
		}
	}
	m := newTestMemory(t, MinMemory)
	if m.Size() != MinMemory {
		t.Errorf("MinMemory guest has %d bytes", m.Size())
	}
}

func TestMemorySliceAndWrite(t *testing.T) {
	m := newTestMemory(t, 4<<30)
	lo, hi := m.Regions[0], m.Regions[1]
	for _, c := range []struct{ gpa, n uint64 }{
		{3<<30 - pageSize, 2 * pageSize}, // runs off the low region into the hole
		{3<<30 - 1, 2},
		{3 << 30, 1},        // the PCI hole
		{ioapicAddr, 4},     // IOAPIC
		{4<<30 - 1, 2},      // from the hole into high RAM
		{5<<30 - 1, 2},      // past the end
		{5 << 30, 1},        // past the end
		{^uint64(0), 2},     // wraps around
		{0, ^uint64(0)},     // wraps around
		{pageSize, 1 << 63}, // absurd length
	} {
		if _, err := m.Slice(c.gpa, c.n); err == nil {
			t.Errorf("Slice(%#x, %#x) accepted", c.gpa, c.n)
		}
	}
	if err := m.Write(3<<30-2, []byte{1, 2, 3, 4}); err == nil {
		t.Error("Write across the end of low RAM accepted")
	}

	// Slices are views of the region mappings.
	if err := m.Write(3<<30-4, []byte{1, 2, 3, 4}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(lo.Mem[len(lo.Mem)-4:], []byte{1, 2, 3, 4}) {
		t.Error("Write to the end of low RAM did not land in region 0")
	}
	s, err := m.Slice(4<<30, pageSize)
	if err != nil {
		t.Fatal(err)
	}
	s[0], s[pageSize-1] = 0xaa, 0xbb
	if hi.Mem[0] != 0xaa || hi.Mem[pageSize-1] != 0xbb {
		t.Error("Slice at 4 GiB is not region 1's memory")
	}
	if s, err := m.Slice(5<<30-8, 8); err != nil || len(s) != 8 {
		t.Errorf("Slice of the last 8 bytes: len %d, err %v", len(s), err)
	}
	if s, err := m.Slice(0x1000, 0); err != nil || len(s) != 0 {
		t.Errorf("empty Slice: len %d, err %v", len(s), err)
	}
}

// Hash hashes pages on every core; the result is the digest of the page
// digests in order, whatever the split, and it sees every byte.
func TestMemoryHashIsPagesInOrder(t *testing.T) {
	m := newTestMemory(t, 64<<20)
	for _, r := range m.Regions {
		for off := uint64(0); off < r.Size(); off += 4096 * 7 {
			r.Mem[off+13] = byte(off >> 12)
		}
	}
	want := func() string {
		h := xxh3.New()
		for _, r := range m.Regions {
			fmt.Fprintf(h, "%x+%x:", r.GPA, r.Size())
			for off := uint64(0); off < r.Size(); off += 4096 {
				d := migrate.HashPage(r.Mem[off : off+4096])
				h.Write(d[:])
			}
		}
		return fmt.Sprintf("%x", h.Sum128().Bytes())
	}
	before := m.Hash()
	if before != want() {
		t.Fatal("Hash differs from the digest of the page digests in order")
	}
	last := m.Regions[len(m.Regions)-1]
	last.Mem[last.Size()-1] ^= 1
	if m.Hash() == before {
		t.Fatal("Hash did not change when the last byte of RAM did")
	}
}
