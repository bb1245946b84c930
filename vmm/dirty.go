package vmm

// Pages that ferry's own devices write into guest memory (virtio used
// rings, data read from a disk, received frames) never reach KVM's dirty
// log: KVM tracks only guest writes. Devices record them here, after the
// write, in one migrate.DirtyBitmap per region; the migration source ORs
// them into KVM's log and re-arms them under KVM's rules (the contract is
// migrate.Source.DirtyLog; MigrationSource in migration.go).

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
		m.dirty[i].Mark(first, last-first+1)
	}
}
