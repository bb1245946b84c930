package vmm

import (
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/zeebo/xxh3"
	"golang.org/x/sys/unix"

	"github.com/ferryvmm/ferry/kvm"
	"github.com/ferryvmm/ferry/migrate"
)

// The pages of the migration protocol are KVM's dirty-log pages: this
// does not compile if the two packages ever disagree.
const _ = uint(migrate.PageSize-kvm.PageSize) + uint(kvm.PageSize-migrate.PageSize)

// Guest-physical memory map (x86 PC). RAM starts at 0; memory above
// pciHoleStart moves above 4 GiB so the hole holds the IOAPIC and LAPIC.
const (
	pageSize     = kvm.PageSize
	pciHoleStart = 0xc000_0000   // 3 GiB
	highRAMStart = 0x1_0000_0000 // 4 GiB
	ioapicAddr   = 0xfec0_0000
	lapicAddr    = 0xfee0_0000

	ebdaStart   = 0x9fc00 // last KiB of conventional memory: MP table
	biosStart   = 0xa0000 // VGA hole and BIOS area, reserved
	highMemory  = 0x100000
	MinMemory   = 16 << 20
	MaxMemory   = 1 << 40
	tssAddr     = 0xfffb_d000 // three pages KVM needs on Intel, below the BIOS ROM
	identityMap = 0xfffb_c000
)

// Region is one guest RAM range backed by one anonymous mapping and one
// KVM memory slot.
type Region struct {
	Slot uint32
	GPA  uint64
	Mem  []byte
}

// Size is the region's length in bytes.
func (r Region) Size() uint64 { return uint64(len(r.Mem)) }

// Contains reports whether [gpa, gpa+n) lies inside the region.
func (r Region) Contains(gpa, n uint64) bool {
	return gpa >= r.GPA && gpa+n >= gpa && gpa+n <= r.GPA+r.Size()
}

// Memory is the guest's RAM.
type Memory struct {
	Regions []Region
	dirty   []*migrate.DirtyBitmap // per region: pages ferry's devices wrote (dirty.go)
	// gate, during post-copy on a destination, makes Slice wait for the
	// pages that have not arrived (postcopy.go).
	gate atomic.Pointer[postcopy]
}

// layout returns the RAM ranges for a guest of size bytes.
func layout(size uint64) [][2]uint64 {
	if size <= pciHoleStart {
		return [][2]uint64{{0, size}}
	}
	return [][2]uint64{{0, pciHoleStart}, {highRAMStart, size - pciHoleStart}}
}

// CheckMemory says whether a machine can have size bytes of RAM: whole
// pages, from MinMemory to MaxMemory. NewMemory and the CLI's --memory
// both check with it.
func CheckMemory(size uint64) error {
	if size < MinMemory || size > MaxMemory || size%pageSize != 0 {
		return fmt.Errorf("must be a multiple of 4 KiB between %d MiB and %d GiB", MinMemory>>20, MaxMemory>>30)
	}
	return nil
}

// NewMemory maps size bytes of anonymous memory laid out as on a PC.
func NewMemory(size uint64) (*Memory, error) {
	if err := CheckMemory(size); err != nil {
		return nil, fmt.Errorf("guest memory %d bytes: %w", size, err)
	}
	m := &Memory{}
	for i, r := range layout(size) {
		mem, err := unix.Mmap(-1, 0, int(r[1]), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("map %d MiB of guest memory: %w", r[1]>>20, err)
		}
		m.Regions = append(m.Regions, Region{Slot: uint32(i), GPA: r[0], Mem: mem})
		m.dirty = append(m.dirty, migrate.NewDirtyBitmap(r[1]/pageSize))
	}
	return m, nil
}

// Close unmaps all guest memory.
func (m *Memory) Close() {
	for _, r := range m.Regions {
		unix.Munmap(r.Mem)
	}
	m.Regions = nil
}

// Size is the total RAM in bytes.
func (m *Memory) Size() uint64 {
	var n uint64
	for _, r := range m.Regions {
		n += r.Size()
	}
	return n
}

// Slice returns the host view of [gpa, gpa+n), which must lie in one region.
func (m *Memory) Slice(gpa, n uint64) ([]byte, error) {
	if pc := m.gate.Load(); pc != nil {
		pc.waitRange(gpa, n) // post-copy: the range's pages must be here first
	}
	for _, r := range m.Regions {
		if r.Contains(gpa, n) {
			off := gpa - r.GPA
			return r.Mem[off : off+n], nil
		}
	}
	return nil, fmt.Errorf("guest range %#x+%#x is not RAM", gpa, n)
}

// Write copies b into guest memory at gpa.
func (m *Memory) Write(gpa uint64, b []byte) error {
	dst, err := m.Slice(gpa, uint64(len(b)))
	if err != nil {
		return err
	}
	copy(dst, b)
	return nil
}

// lowEnd is the end of RAM below the PCI hole (the first region).
func (m *Memory) lowEnd() uint64 { return m.Regions[0].GPA + m.Regions[0].Size() }

// E820 entry types.
const (
	e820RAM      = 1
	e820Reserved = 2
)

// E820Entry is one entry of the BIOS memory map given to the guest.
type E820Entry struct {
	Addr, Size uint64
	Type       uint32
}

// E820 is the memory map the guest sees: conventional memory up to the
// EBDA, the EBDA/VGA/BIOS area reserved, RAM from 1 MiB, and RAM above 4 GiB.
func (m *Memory) E820() []E820Entry {
	e := []E820Entry{
		{0, ebdaStart, e820RAM},
		{ebdaStart, highMemory - ebdaStart, e820Reserved},
		{highMemory, m.lowEnd() - highMemory, e820RAM},
	}
	for _, r := range m.Regions[1:] {
		e = append(e, E820Entry{r.GPA, r.Size(), e820RAM})
	}
	return e
}

// Hash is an XXH3-128 digest of all guest RAM with its layout, to compare
// the memory of a paused source with the destination's after a migration:
// the digest of the list of every page's digest (migrate.HashPage), the
// pages hashed on every core at once (it reads all RAM, and the
// destination's guest waits for it).
func (m *Memory) Hash() string {
	h := xxh3.New()
	for _, r := range m.Regions {
		fmt.Fprintf(h, "%x+%x:", r.GPA, r.Size())
		for _, d := range pageDigests(r.Mem) {
			h.Write(d[:])
		}
	}
	return fmt.Sprintf("%x", h.Sum128().Bytes())
}

// pageDigests hashes every page of mem, in runtime.NumCPU() goroutines.
func pageDigests(mem []byte) []migrate.Digest {
	n := len(mem) / pageSize
	out := make([]migrate.Digest, n)
	workers := min(runtime.NumCPU(), max(1, n/1024))
	var wg sync.WaitGroup
	for w := range workers {
		lo, hi := n*w/workers, n*(w+1)/workers
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := lo; p < hi; p++ {
				out[p] = migrate.HashPage(mem[p*pageSize : (p+1)*pageSize])
			}
		}()
	}
	wg.Wait()
	return out
}
