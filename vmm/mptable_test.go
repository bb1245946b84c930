package vmm

import (
	"encoding/binary"
	"testing"
)

func sum8(b []byte) uint8 {
	var s uint8
	for _, x := range b {
		s += x
	}
	return s
}

func TestMPTable(t *testing.T) {
	for _, n := range []int{1, 2, 4, MaxCPUs} {
		m := newTestMemory(t, 64<<20)
		if err := writeMPTable(m, n); err != nil {
			t.Fatalf("writeMPTable(%d): %v", n, err)
		}
		checkMPTable(t, m, n)
	}
}

func checkMPTable(t *testing.T, m *Memory, n int) {
	t.Helper()
	le := binary.LittleEndian
	fp, err := m.Slice(0x9fc00, 16)
	if err != nil {
		t.Fatal(err)
	}
	if string(fp[0:4]) != "_MP_" {
		t.Fatalf("n=%d: floating pointer signature %q at 0x9fc00", n, fp[0:4])
	}
	if sum8(fp) != 0 {
		t.Errorf("n=%d: floating pointer checksum is off by %d", n, sum8(fp))
	}
	if fp[8] != 1 || fp[9] != 4 {
		t.Errorf("n=%d: floating pointer length %d revision %d, want 1 and 4", n, fp[8], fp[9])
	}
	if fp[11] != 0 {
		t.Errorf("n=%d: feature byte 1 = %d, want 0 (a configuration table is present)", n, fp[11])
	}
	cfgAddr := uint64(le.Uint32(fp[4:]))
	hdr, err := m.Slice(cfgAddr, 44)
	if err != nil {
		t.Fatalf("n=%d: configuration table pointer %#x: %v", n, cfgAddr, err)
	}
	if string(hdr[0:4]) != "PCMP" {
		t.Fatalf("n=%d: configuration table signature %q", n, hdr[0:4])
	}
	length := uint64(le.Uint16(hdr[4:]))
	table, err := m.Slice(cfgAddr, length)
	if err != nil {
		t.Fatal(err)
	}
	if cfgAddr+length > 0x100000 {
		t.Errorf("n=%d: table ends at %#x, above 1 MiB", n, cfgAddr+length)
	}
	if sum8(table) != 0 {
		t.Errorf("n=%d: configuration table checksum is off by %d", n, sum8(table))
	}
	if hdr[6] != 4 {
		t.Errorf("n=%d: revision %d, want 4", n, hdr[6])
	}
	if got := le.Uint32(hdr[36:]); got != lapicAddr {
		t.Errorf("n=%d: LAPIC address %#x, want %#x", n, got, lapicAddr)
	}
	if le.Uint16(hdr[40:]) != 0 {
		t.Errorf("n=%d: extended table length %d, want 0", n, le.Uint16(hdr[40:]))
	}

	// Walk the entries: their sizes must add up to the table length
	// exactly and their count must match the header.
	count := int(le.Uint16(hdr[34:]))
	var cpus, bsps, buses, ioapics, extint, nmi int
	ioints := map[uint8]uint8{} // ISA IRQ → IOAPIC pin
	var ioapicID uint8
	off := 44
	for i := 0; i < count; i++ {
		if off >= len(table) {
			t.Fatalf("n=%d: entry %d of %d starts at %d, past the table (%d bytes)", n, i, count, off, len(table))
		}
		e := table[off:]
		switch e[0] {
		case 0: // processor
			if e[1] != uint8(cpus) {
				t.Errorf("n=%d: processor entry %d has APIC id %d", n, cpus, e[1])
			}
			if e[3]&1 == 0 {
				t.Errorf("n=%d: CPU %d not enabled", n, e[1])
			}
			if e[3]&2 != 0 {
				bsps++
				if e[1] != 0 {
					t.Errorf("n=%d: CPU %d has the BP flag", n, e[1])
				}
			}
			cpus++
			off += 20
		case 1: // bus
			if string(e[2:8]) != "ISA   " {
				t.Errorf("n=%d: bus type %q, want \"ISA   \"", n, e[2:8])
			}
			buses++
			off += 8
		case 2: // IOAPIC
			ioapics++
			ioapicID = e[1]
			if e[3]&1 == 0 {
				t.Errorf("n=%d: IOAPIC not enabled", n)
			}
			if a := le.Uint32(e[4:]); a != 0xfec00000 {
				t.Errorf("n=%d: IOAPIC at %#x, want 0xfec00000", n, a)
			}
			off += 8
		case 3: // I/O interrupt
			if e[1] != 0 {
				t.Errorf("n=%d: I/O interrupt type %d, want 0 (INT)", n, e[1])
			}
			if e[4] != 0 {
				t.Errorf("n=%d: I/O interrupt on bus %d, want 0", n, e[4])
			}
			if e[6] != uint8(n) {
				t.Errorf("n=%d: I/O interrupt to IOAPIC %d, want %d", n, e[6], n)
			}
			if _, dup := ioints[e[5]]; dup {
				t.Errorf("n=%d: IRQ %d routed twice", n, e[5])
			}
			ioints[e[5]] = e[7]
			off += 8
		case 4: // local interrupt
			if e[6] != 0xff {
				t.Errorf("n=%d: local interrupt to APIC %d, want 0xff (all)", n, e[6])
			}
			switch {
			case e[1] == 3 && e[7] == 0:
				extint++
			case e[1] == 1 && e[7] == 1:
				nmi++
			default:
				t.Errorf("n=%d: local interrupt type %d → LINT%d", n, e[1], e[7])
			}
			off += 8
		default:
			t.Fatalf("n=%d: entry %d has unknown type %d", n, i, e[0])
		}
	}
	if off != len(table) {
		t.Errorf("n=%d: %d entries end at %d, table length is %d", n, count, off, len(table))
	}
	if cpus != n || bsps != 1 {
		t.Errorf("n=%d: %d processor entries, %d with the BP flag; want %d and 1", n, cpus, bsps, n)
	}
	if buses != 1 || ioapics != 1 {
		t.Errorf("n=%d: %d bus and %d IOAPIC entries, want 1 and 1", n, buses, ioapics)
	}
	if ioapicID != uint8(n) {
		t.Errorf("n=%d: IOAPIC id %d, want %d (after the CPUs' APIC ids)", n, ioapicID, n)
	}
	if len(ioints) != 16 {
		t.Errorf("n=%d: %d I/O interrupt entries, want 16", n, len(ioints))
	}
	for irq := uint8(0); irq < 16; irq++ {
		if pin, ok := ioints[irq]; !ok || pin != irq {
			t.Errorf("n=%d: ISA IRQ %d → pin %d (present %v), want pin %d", n, irq, pin, ok, irq)
		}
	}
	if extint != 1 || nmi != 1 {
		t.Errorf("n=%d: %d ExtINT and %d NMI local interrupt entries, want 1 and 1", n, extint, nmi)
	}
}

func TestMPTableRejectsCPUCounts(t *testing.T) {
	m := newTestMemory(t, 16<<20)
	for _, n := range []int{0, -1, MaxCPUs + 1} {
		if err := writeMPTable(m, n); err == nil {
			t.Errorf("writeMPTable(%d) accepted", n)
		}
	}
	if b, _ := m.Slice(0x9fc00, 4); string(b) == "_MP_" {
		t.Error("a rejected call wrote the floating pointer")
	}
}
