package migrate

import (
	"fmt"
	"slices"
)

// What a migration knows of a VM's shape (HELLO carries it), and the one
// place where it is summed, counted and compared.

// PageSize is the guest page size tracked by KVM's dirty log.
const PageSize = 4096

// Region is one contiguous range of guest-physical memory (one KVM slot).
type Region struct {
	GPA  uint64 // guest-physical start, page aligned
	Size uint64 // bytes, a multiple of PageSize
}

// Pages is the number of pages of r.
func (r Region) Pages() uint64 { return r.Size / PageSize }

// checkMapped checks that mem, the host mapping of region i, is exactly
// as long as the region says.
func (r Region) checkMapped(i int, mem []byte) error {
	if uint64(len(mem)) != r.Size {
		return fmt.Errorf("region %d maps %d bytes, Info says %d", i, len(mem), r.Size)
	}
	return nil
}

// VMID identifies one VM across migration attempts: a resumed migration
// is accepted only into pages kept for the same id. The zero VMID means
// "no id" (such a VM cannot resume a migration).
type VMID [16]byte

// IsZero reports whether id is the zero (absent) id.
func (id VMID) IsZero() bool { return id == VMID{} }

func (id VMID) String() string { return fmt.Sprintf("%x", id[:]) }

// VMInfo is what the handshake compares between source and destination.
type VMInfo struct {
	ID      VMID
	Regions []Region
	VCPUs   int
	Devices []string // device names in registration order
}

// MemorySize is the guest's RAM in bytes: the sum of its regions' sizes.
func (info VMInfo) MemorySize() uint64 {
	var n uint64
	for _, r := range info.Regions {
		n += r.Size
	}
	return n
}

// Pages is the number of guest pages; the global page indexes of PAGES
// and HELD records run from 0 to Pages()-1, region after region.
func (info VMInfo) Pages() uint64 { return info.MemorySize() / PageSize }

// LayoutError says how two VMs' layouts differ (SameLayout).
type LayoutError struct {
	// Devices: the vCPUs and memory regions match, the devices do not.
	Devices bool
	msg     string
}

func (e *LayoutError) Error() string { return e.msg }

// SameLayout compares the layout of a VM that a source announced (want)
// with have, the VM meant to take its state and memory: the same vCPU
// count, the same memory regions and the same devices, in the same order
// (a device's name is its position among its kind: virtio-blk0,
// virtio-blk1, ...). The ids are not compared. It returns nil, or a
// *LayoutError naming the first difference.
func SameLayout(have, want VMInfo) error {
	differ := func(format string, args ...any) error {
		return &LayoutError{msg: fmt.Sprintf(format, args...)}
	}
	if have.VCPUs != want.VCPUs {
		return differ("source has %d vCPUs, here %d", want.VCPUs, have.VCPUs)
	}
	if len(have.Regions) != len(want.Regions) {
		return differ("source has %d memory regions, here %d", len(want.Regions), len(have.Regions))
	}
	for i := range have.Regions {
		if h, w := have.Regions[i], want.Regions[i]; h != w {
			return differ("memory region %d: source %#x+%#x, here %#x+%#x", i, w.GPA, w.Size, h.GPA, h.Size)
		}
	}
	if !slices.Equal(have.Devices, want.Devices) {
		return &LayoutError{Devices: true, msg: fmt.Sprintf("source has devices %v, here %v", want.Devices, have.Devices)}
	}
	return nil
}
