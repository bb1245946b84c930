package vmm

import "github.com/ferryvmm/ferry/kvm"

// cpuidMask lists CPUID feature bits ferry hides from the guest when KVM
// emulates guests (kvm.EmulatingModule): the instruction emulator of such a
// KVM cannot execute them. On VT-x/AMD-V hardware the guest gets them all.
var cpuidMask = []struct {
	leaf, index uint32
	reg         int // 0 eax, 1 ebx, 2 ecx, 3 edx
	bits        uint32
	why         string
}{
	{1, 0, 2, 1 << 13, "CMPXCHG16B: not emulated (SLUB uses it when offered)"},
	{1, 0, 2, 1 << 17, "PCID: not emulated on nested KVM; nopcid"},
	{1, 0, 2, 1 << 23, "POPCNT: not emulated"},
	{1, 0, 2, 1 << 26, "XSAVE: XRSTOR not emulated; the guest uses FXSAVE"},
	{1, 0, 2, 1 << 27, "OSXSAVE follows XSAVE"},
	{1, 0, 2, 1 << 28, "AVX needs XSAVE"},
	{1, 0, 2, 1 << 29, "F16C needs AVX"},
	{1, 0, 2, 1 << 12, "FMA needs AVX"},
	{1, 0, 2, 1 << 30, "RDRAND: not emulated"},
	{7, 0, 1, 1 << 0, "FSGSBASE: not emulated"},
	{7, 0, 1, 1 << 5, "AVX2 needs XSAVE"},
	{7, 0, 1, 1 << 9, "ERMS: rep movsb fast path not emulated"},
	{7, 0, 1, 1 << 10, "INVPCID: not emulated"},
	{7, 0, 1, 1 << 18, "RDSEED: not emulated"},
	{7, 0, 1, 1 << 20, "SMAP: CLAC/STAC not emulated"},
	{7, 0, 1, 0xfc010000, "AVX-512 needs XSAVE"},
	{7, 0, 2, 1 << 22, "RDPID: not emulated"},
	{7, 0, 3, 1 << 4, "FSRM: fast short rep mov not emulated"},
	{0x80000001, 0, 2, 1 << 5, "ABM/LZCNT: includes POPCNT on AMD"},
}

// guestCPUID derives vCPU id's CPUID from what KVM supports: on an
// emulating KVM the masked features removed, always the hypervisor bit set
// and the APIC id of this vCPU in leaves 1 and 0xb.
func guestCPUID(supported []kvm.CPUIDEntry, id, ncpu int, emulated bool) []kvm.CPUIDEntry {
	out := make([]kvm.CPUIDEntry, 0, len(supported))
	for _, e := range supported {
		if emulated {
			if e.Function == 0xd {
				continue // XSAVE state enumeration: no XSAVE
			}
			regs := [4]*uint32{&e.Eax, &e.Ebx, &e.Ecx, &e.Edx}
			for _, m := range cpuidMask {
				if m.leaf == e.Function && m.index == e.Index {
					*regs[m.reg] &^= m.bits
				}
			}
		}
		switch e.Function {
		case 1:
			e.Ecx |= 1 << 31 // running under a hypervisor
			// EBX[31:24] initial APIC id, [23:16] logical processors.
			e.Ebx = e.Ebx&0x0000ffff | uint32(id)<<24 | uint32(ncpu)<<16
			if ncpu > 1 {
				e.Edx |= 1 << 28 // HTT: EBX[23:16] is valid
			}
		case 0xb, 0x1f:
			e.Edx = uint32(id) // x2APIC id
		}
		out = append(out, e)
	}
	return out
}
