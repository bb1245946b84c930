package vmm

import (
	"encoding/binary"
	"fmt"
)

// MP table (Intel MultiProcessor Specification 1.4), placed in the last KiB
// of conventional memory where Linux scans for it. It announces the CPUs,
// one ISA bus and the IOAPIC with ISA IRQ i wired to IOAPIC pin i, which is
// how KVM's default GSI routing wires the in-kernel irqchip. Without the
// IOAPIC entries Linux reports "BIOS bug, no explicit IRQ entries" and the
// serial interrupt never arrives.
const (
	mpFloatAddr  = ebdaStart
	mpConfigAddr = ebdaStart + 16
	ioapicPins   = 24
	isaIRQs      = 16
)

func mpChecksum(b []byte) uint8 {
	var s uint8
	for _, x := range b {
		s += x
	}
	return -s
}

// writeMPTable builds the MP floating pointer and configuration table for
// ncpu processors with APIC ids 0..ncpu-1.
func writeMPTable(mem *Memory, ncpu int) error {
	if err := CheckCPUs(ncpu); err != nil {
		return fmt.Errorf("%d vCPUs: %w", ncpu, err)
	}
	le := binary.LittleEndian
	ioapicID := uint8(ncpu)
	var entries []byte
	count := 0
	add := func(e []byte) { entries = append(entries, e...); count++ }
	for i := 0; i < ncpu; i++ {
		e := make([]byte, 20)
		e[0] = 0        // processor
		e[1] = uint8(i) // local APIC id
		e[2] = 0x14     // local APIC version
		e[3] = 0x01     // enabled
		if i == 0 {
			e[3] |= 0x02 // bootstrap processor
		}
		le.PutUint32(e[4:], 0x600) // CPU signature: family 6
		le.PutUint32(e[8:], 0x201) // feature flags: FPU, APIC
		add(e)
	}
	add([]byte{1, 0, 'I', 'S', 'A', ' ', ' ', ' '}) // bus 0: ISA
	ioapic := []byte{2, ioapicID, 0x11, 0x01, 0, 0, 0, 0}
	le.PutUint32(ioapic[4:], ioapicAddr)
	add(ioapic)
	for irq := 0; irq < isaIRQs; irq++ {
		// I/O interrupt: type INT, conforming polarity/trigger, bus 0 IRQ irq → IOAPIC pin irq.
		add([]byte{3, 0, 0, 0, 0, uint8(irq), ioapicID, uint8(irq)})
	}
	add([]byte{4, 3, 0, 0, 0, 0, 0xff, 0}) // local interrupt: ExtINT → LINT0 of every CPU
	add([]byte{4, 1, 0, 0, 0, 0, 0xff, 1}) // local interrupt: NMI → LINT1 of every CPU

	hdr := make([]byte, 44)
	copy(hdr[0:], "PCMP")
	le.PutUint16(hdr[4:], uint16(len(hdr)+len(entries)))
	hdr[6] = 4 // spec revision 1.4
	copy(hdr[8:], "FERRY   ")
	copy(hdr[16:], "FERRY VMM   ")
	le.PutUint16(hdr[34:], uint16(count))
	le.PutUint32(hdr[36:], lapicAddr)
	table := append(hdr, entries...)
	table[7] = mpChecksum(table)

	fp := make([]byte, 16)
	copy(fp[0:], "_MP_")
	le.PutUint32(fp[4:], mpConfigAddr)
	fp[8] = 1 // length in 16-byte units
	fp[9] = 4 // spec revision 1.4
	fp[10] = mpChecksum(fp)
	if mpConfigAddr+uint64(len(table)) > highMemory {
		return fmt.Errorf("MP table of %d bytes does not fit below 1 MiB", len(table))
	}
	if err := mem.Write(mpFloatAddr, fp); err != nil {
		return err
	}
	return mem.Write(mpConfigAddr, table)
}
