package vmm

import "sync/atomic"

// Pages that ferry's own devices write into guest memory (virtio used
// rings, data read from a disk) never reach KVM's dirty log: KVM tracks
// only guest writes. Devices record them here, and the migration source's
// DirtyLog ORs them into KVM's bitmap.

// MarkDirty records that the VMM wrote [gpa, gpa+n). Ranges outside RAM
// are ignored. Safe for concurrent use.
func (m *Memory) MarkDirty(gpa, n uint64) {
	if n == 0 {
		return
	}
	for i, r := range m.Regions {
		if gpa >= r.GPA+r.Size() || gpa+n <= r.GPA {
			continue
		}
		first := (max(gpa, r.GPA) - r.GPA) / pageSize
		last := (min(gpa+n, r.GPA+r.Size()) - 1 - r.GPA) / pageSize
		for p := first; p <= last; p++ {
			atomic.OrUint64(&m.dirty[i][p/64], 1<<(p%64))
		}
	}
}

// takeDirty ORs the pages of region i the VMM wrote since the last call
// into bitmap and forgets them.
func (m *Memory) takeDirty(i int, bitmap []uint64) {
	d := m.dirty[i]
	for w := range d {
		if w >= len(bitmap) {
			return
		}
		if atomic.LoadUint64(&d[w]) != 0 {
			bitmap[w] |= atomic.SwapUint64(&d[w], 0)
		}
	}
}
