package kvm

import "fmt"

// VCPUState is everything KVM holds for one vCPU, as plain data.
type VCPUState struct {
	ID        int
	CPUID     []CPUIDEntry
	MPState   MPState
	Regs      Regs
	Sregs     Sregs
	HasXSave  bool
	XSave     XSave // when HasXSave
	FPU       FPU   // when !HasXSave
	XCRs      XCRs  // when HasXSave
	DebugRegs DebugRegs
	LAPIC     LAPIC
	MSRs      []MSREntry
	Events    VCPUEvents
	TSCKHz    uint64
}

// MSR indices with ordering rules of their own.
const (
	msrTSCDeadline = 0x6e0
)

// SaveState reads the whole vCPU. The vCPU must be outside KVM_RUN, and it
// must have returned from KVM_RUN with ErrInterrupted (or never run) so that
// KVM has completed any I/O or MMIO exit: a state read between an I/O exit and
// the next KVM_RUN would miss the result of the access.
//
// Ordering rules for the reads:
//   - MP state first: KVM_GET_MP_STATE runs kvm_apic_accept_events(), which can
//     deliver a pending INIT or SIPI and change registers and the LAPIC. Read
//     before everything else so the rest reflects the accepted events.
//   - Regs, sregs, FPU/XSAVE, XCRs, debug registers: plain copies, any order.
//   - LAPIC before MSRs: the TSC-deadline MSR is read through the LAPIC timer
//     and is only meaningful together with its LVT mode.
//   - vCPU events last: several of the reads above (sregs keep a pending
//     interrupt bitmap; LAPIC reads sync the PIR) can move a pending event, and
//     the events must describe the final picture.
//
// msrIndices is the list of MSRs to save (SavableMSRs).
func (v *VCPU) SaveState(msrIndices []uint32, hasXSave bool) (*VCPUState, error) {
	s := &VCPUState{ID: v.ID, HasXSave: hasXSave}
	var err error
	if s.CPUID, err = v.CPUID(); err != nil {
		return nil, err
	}
	if s.MPState, err = v.MPState(); err != nil {
		return nil, err
	}
	if s.Regs, err = v.Regs(); err != nil {
		return nil, err
	}
	if s.Sregs, err = v.Sregs(); err != nil {
		return nil, err
	}
	if hasXSave {
		if s.XSave, err = v.XSave(); err != nil {
			return nil, err
		}
		if s.XCRs, err = v.XCRs(); err != nil {
			return nil, err
		}
	} else if s.FPU, err = v.FPU(); err != nil {
		return nil, err
	}
	if s.DebugRegs, err = v.DebugRegs(); err != nil {
		return nil, err
	}
	if s.LAPIC, err = v.LAPIC(); err != nil {
		return nil, err
	}
	s.MSRs = make([]MSREntry, len(msrIndices))
	for i, idx := range msrIndices {
		s.MSRs[i].Index = idx
	}
	if _, err = v.MSRs(s.MSRs); err != nil {
		return nil, err
	}
	if s.TSCKHz, err = v.TSCKHz(); err != nil {
		return nil, err
	}
	if s.Events, err = v.Events(); err != nil {
		return nil, err
	}
	return s, nil
}

// RestoreState writes a saved vCPU into a freshly created one, before its
// first KVM_RUN.
//
// Ordering rules for the writes:
//   - CPUID first: KVM checks MSR writes, XSAVE components and CR4 bits
//     against the guest CPUID, and refuses what the CPUID does not offer.
//   - TSC frequency before MSRs, so the TSC MSR is scaled at the right rate.
//   - Sregs before LAPIC: KVM_SET_SREGS writes the APIC base MSR (enable and
//     x2APIC bits), which resets the LAPIC's mode; registers written before it
//     would land in the wrong mode or be discarded.
//   - Regs and FPU/XSAVE/XCRs: after CPUID, otherwise any order.
//   - MSRs after sregs (EFER is in sregs, MSR writes such as those of the
//     SYSCALL MSRs depend on EFER bits), except TSC-deadline, written after
//     the LAPIC: KVM ignores it unless the LAPIC timer is in TSC-deadline mode.
//   - MP state after the LAPIC: KVM_SET_MP_STATE for INIT/SIPI states needs the
//     in-kernel LAPIC, and KVM_SET_LAPIC would clear pending LAPIC events.
//   - vCPU events after sregs and LAPIC: they re-inject pending exceptions and
//     interrupts into the state the other calls established.
//   - Debug registers last: KVM_SET_VCPU_EVENTS may update DR6 with an
//     exception payload.
func (v *VCPU) RestoreState(s *VCPUState) error {
	if s.ID != v.ID {
		return fmt.Errorf("restore vCPU %d from the state of vCPU %d", v.ID, s.ID)
	}
	if err := v.SetCPUID(s.CPUID); err != nil {
		return err
	}
	if s.TSCKHz != 0 {
		if cur, err := v.TSCKHz(); err == nil && cur != s.TSCKHz {
			if err := v.SetTSCKHz(s.TSCKHz); err != nil {
				return err
			}
		}
	}
	if err := v.SetSregs(s.Sregs); err != nil {
		return err
	}
	if err := v.SetRegs(s.Regs); err != nil {
		return err
	}
	if s.HasXSave {
		if err := v.SetXSave(s.XSave); err != nil {
			return err
		}
		if err := v.SetXCRs(s.XCRs); err != nil {
			return err
		}
	} else if err := v.SetFPU(s.FPU); err != nil {
		return err
	}
	var early, late []MSREntry
	for _, m := range s.MSRs {
		if m.Index == msrTSCDeadline {
			late = append(late, m)
		} else {
			early = append(early, m)
		}
	}
	if _, err := v.SetMSRs(early); err != nil {
		return err
	}
	if err := v.SetLAPIC(s.LAPIC); err != nil {
		return err
	}
	if len(late) > 0 {
		if _, err := v.SetMSRs(late); err != nil {
			return err
		}
	}
	if err := v.SetMPState(s.MPState); err != nil {
		return err
	}
	if err := v.SetEvents(s.Events); err != nil {
		return err
	}
	return v.SetDebugRegs(s.DebugRegs)
}

// SavableMSRs filters candidates (normally System.MSRIndexList) down to the
// MSRs this vCPU can both read and write back, one at a time, so SaveState
// never stops halfway. Call it after SetCPUID.
func (v *VCPU) SavableMSRs(candidates []uint32) []uint32 {
	var out []uint32
	for _, idx := range candidates {
		e := []MSREntry{{Index: idx}}
		if _, err := v.MSRs(e); err != nil {
			continue
		}
		if _, err := v.SetMSRs(e); err != nil {
			continue
		}
		out = append(out, idx)
	}
	return out
}
