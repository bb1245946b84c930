package kvm

import "fmt"

// vCPU state accessors. The order in which they are called matters; the
// whole-vCPU Save and Restore in vcpustate.go encode the rules.

// Regs reads the general-purpose registers.
func (v *VCPU) Regs() (Regs, error) {
	var r Regs
	_, err := ioctlPtr(v.fd, reqGetRegs, &r)
	return r, v.wrap("KVM_GET_REGS", err)
}

// SetRegs writes the general-purpose registers.
func (v *VCPU) SetRegs(r Regs) error {
	_, err := ioctlPtr(v.fd, reqSetRegs, &r)
	return v.wrap("KVM_SET_REGS", err)
}

// Sregs reads segment, control and descriptor-table registers.
func (v *VCPU) Sregs() (Sregs, error) {
	var s Sregs
	_, err := ioctlPtr(v.fd, reqGetSregs, &s)
	return s, v.wrap("KVM_GET_SREGS", err)
}

// SetSregs writes segment, control and descriptor-table registers.
func (v *VCPU) SetSregs(s Sregs) error {
	_, err := ioctlPtr(v.fd, reqSetSregs, &s)
	return v.wrap("KVM_SET_SREGS", err)
}

// FPU reads the legacy FPU/SSE state.
func (v *VCPU) FPU() (FPU, error) {
	var f FPU
	_, err := ioctlPtr(v.fd, reqGetFPU, &f)
	return f, v.wrap("KVM_GET_FPU", err)
}

// SetFPU writes the legacy FPU/SSE state.
func (v *VCPU) SetFPU(f FPU) error {
	_, err := ioctlPtr(v.fd, reqSetFPU, &f)
	return v.wrap("KVM_SET_FPU", err)
}

// XSave reads the XSAVE area (includes the FPU state).
func (v *VCPU) XSave() (XSave, error) {
	var x XSave
	_, err := ioctlPtr(v.fd, reqGetXSave, &x)
	return x, v.wrap("KVM_GET_XSAVE", err)
}

// SetXSave writes the XSAVE area.
func (v *VCPU) SetXSave(x XSave) error {
	_, err := ioctlPtr(v.fd, reqSetXSave, &x)
	return v.wrap("KVM_SET_XSAVE", err)
}

// XCRs reads the extended control registers.
func (v *VCPU) XCRs() (XCRs, error) {
	var x XCRs
	_, err := ioctlPtr(v.fd, reqGetXCRs, &x)
	return x, v.wrap("KVM_GET_XCRS", err)
}

// SetXCRs writes the extended control registers.
func (v *VCPU) SetXCRs(x XCRs) error {
	_, err := ioctlPtr(v.fd, reqSetXCRs, &x)
	return v.wrap("KVM_SET_XCRS", err)
}

// LAPIC reads the local APIC register page.
func (v *VCPU) LAPIC() (LAPIC, error) {
	var l LAPIC
	_, err := ioctlPtr(v.fd, reqGetLAPIC, &l)
	return l, v.wrap("KVM_GET_LAPIC", err)
}

// SetLAPIC writes the local APIC register page.
func (v *VCPU) SetLAPIC(l LAPIC) error {
	_, err := ioctlPtr(v.fd, reqSetLAPIC, &l)
	return v.wrap("KVM_SET_LAPIC", err)
}

// Events reads pending exceptions, interrupts, NMIs and SMIs.
func (v *VCPU) Events() (VCPUEvents, error) {
	var e VCPUEvents
	_, err := ioctlPtr(v.fd, reqGetEvents, &e)
	return e, v.wrap("KVM_GET_VCPU_EVENTS", err)
}

// SetEvents writes pending exceptions, interrupts, NMIs and SMIs.
func (v *VCPU) SetEvents(e VCPUEvents) error {
	_, err := ioctlPtr(v.fd, reqSetEvents, &e)
	return v.wrap("KVM_SET_VCPU_EVENTS", err)
}

// MPState reads the multiprocessing state (runnable, halted, waiting for SIPI...).
func (v *VCPU) MPState() (MPState, error) {
	var m MPState
	_, err := ioctlPtr(v.fd, reqGetMPState, &m)
	return m, v.wrap("KVM_GET_MP_STATE", err)
}

// SetMPState writes the multiprocessing state.
func (v *VCPU) SetMPState(m MPState) error {
	_, err := ioctlPtr(v.fd, reqSetMPState, &m)
	return v.wrap("KVM_SET_MP_STATE", err)
}

// DebugRegs reads DR0-3, DR6, DR7.
func (v *VCPU) DebugRegs() (DebugRegs, error) {
	var d DebugRegs
	_, err := ioctlPtr(v.fd, reqGetDebugRegs, &d)
	return d, v.wrap("KVM_GET_DEBUGREGS", err)
}

// SetDebugRegs writes DR0-3, DR6, DR7.
func (v *VCPU) SetDebugRegs(d DebugRegs) error {
	_, err := ioctlPtr(v.fd, reqSetDebugRegs, &d)
	return v.wrap("KVM_SET_DEBUGREGS", err)
}

// MSRs reads the MSRs named by the Index of each entry, in place. It returns
// how many KVM processed: KVM stops at the first MSR it cannot read, so a
// short count is an error here. (gokvm's GetMSRs discards this count.)
func (v *VCPU) MSRs(entries []MSREntry) (int, error) {
	if len(entries) > maxMSRs {
		return 0, fmt.Errorf("KVM_GET_MSRS vCPU %d: %d MSRs, at most %d", v.ID, len(entries), maxMSRs)
	}
	var m msrs
	m.N = uint32(len(entries))
	copy(m.Entries[:], entries)
	n, err := ioctlPtr(v.fd, reqGetMSRs, &m)
	if err != nil {
		return 0, v.wrap("KVM_GET_MSRS", err)
	}
	copy(entries, m.Entries[:n])
	if int(n) != len(entries) {
		return int(n), fmt.Errorf("KVM_GET_MSRS vCPU %d: read %d of %d MSRs, stopped at %#x", v.ID, n, len(entries), entries[n].Index)
	}
	return int(n), nil
}

// SetMSRs writes MSRs and returns how many KVM accepted; fewer than
// len(entries) is an error naming the first MSR refused.
func (v *VCPU) SetMSRs(entries []MSREntry) (int, error) {
	if len(entries) > maxMSRs {
		return 0, fmt.Errorf("KVM_SET_MSRS vCPU %d: %d MSRs, at most %d", v.ID, len(entries), maxMSRs)
	}
	var m msrs
	m.N = uint32(len(entries))
	copy(m.Entries[:], entries)
	n, err := ioctlPtr(v.fd, reqSetMSRs, &m)
	if err != nil {
		return 0, v.wrap("KVM_SET_MSRS", err)
	}
	if int(n) != len(entries) {
		return int(n), fmt.Errorf("KVM_SET_MSRS vCPU %d: wrote %d of %d MSRs, refused %#x", v.ID, n, len(entries), entries[n].Index)
	}
	return int(n), nil
}

// SetCPUID sets the CPUID the guest sees (KVM_SET_CPUID2).
func (v *VCPU) SetCPUID(entries []CPUIDEntry) error {
	if len(entries) > maxCPUIDEntries {
		return fmt.Errorf("KVM_SET_CPUID2 vCPU %d: %d entries, at most %d", v.ID, len(entries), maxCPUIDEntries)
	}
	var c cpuid2
	c.N = uint32(len(entries))
	copy(c.Entries[:], entries)
	_, err := ioctlPtr(v.fd, reqSetCPUID2, &c)
	return v.wrap("KVM_SET_CPUID2", err)
}

// CPUID reads back the CPUID set with SetCPUID (KVM_GET_CPUID2).
func (v *VCPU) CPUID() ([]CPUIDEntry, error) {
	var c cpuid2
	c.N = maxCPUIDEntries
	if _, err := ioctlPtr(v.fd, reqGetCPUID2, &c); err != nil {
		return nil, v.wrap("KVM_GET_CPUID2", err)
	}
	return append([]CPUIDEntry(nil), c.Entries[:c.N]...), nil
}

func (v *VCPU) wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s vCPU %d: %w", op, v.ID, err)
}
