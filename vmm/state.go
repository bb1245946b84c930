package vmm

import (
	"fmt"

	"github.com/ferryvmm/ferry/devices"
	"github.com/ferryvmm/ferry/kvm"
)

// State is the whole VM apart from guest RAM: every vCPU, the in-kernel
// irqchip and timer, the clock and every stateful device, as plain data.
type State struct {
	Memory  uint64 // bytes of RAM, to check against the target machine
	VCPUs   []*kvm.VCPUState
	PIC     [2]kvm.IRQChip // master, slave
	IOAPIC  kvm.IRQChip
	PIT     kvm.PITState2
	Clock   kvm.ClockData
	Devices []DeviceState // in registration order
	// Paused: the guest's user had paused it when it was saved, and it
	// restarts paused (MigrationDestination.Start), until a resume. A running
	// guest paused only to be saved (a migration's stop-and-copy, a
	// snapshot) is not Paused.
	Paused bool
}

// DeviceState is one device's saved State, keyed by its name.
type DeviceState struct {
	Name string
	Data []byte
}

// SaveState reads the whole VM. The machine must be paused (or never
// started), so no vCPU is inside KVM_RUN and devices see no I/O.
func (m *Machine) SaveState() (*State, error) {
	m.ctl.Lock()
	quiet := !m.started || (m.pauseReq && m.parked == len(m.vcpus)) || m.stopping
	m.ctl.Unlock()
	if !quiet {
		return nil, ErrNotPaused
	}
	s := &State{Memory: m.mem.Size()}
	var err error
	// VM-wide state first: reading it changes nothing in the vCPUs.
	if s.PIC[0], err = m.vm.IRQChip(kvm.IRQChipPICMaster); err != nil {
		return nil, err
	}
	if s.PIC[1], err = m.vm.IRQChip(kvm.IRQChipPICSlave); err != nil {
		return nil, err
	}
	if s.IOAPIC, err = m.vm.IRQChip(kvm.IRQChipIOAPIC); err != nil {
		return nil, err
	}
	if s.PIT, err = m.vm.PIT2(); err != nil {
		return nil, err
	}
	if s.Clock, err = m.vm.Clock(); err != nil {
		return nil, err
	}
	for _, v := range m.vcpus {
		vs, err := v.SaveState(m.msrs, m.hasXSave)
		if err != nil {
			return nil, err
		}
		s.VCPUs = append(s.VCPUs, vs)
	}
	for _, d := range m.devices {
		sd, ok := d.(devices.Stateful)
		if !ok {
			continue
		}
		data, err := sd.Save()
		if err != nil {
			return nil, err
		}
		s.Devices = append(s.Devices, DeviceState{Name: d.Name(), Data: data})
	}
	return s, nil
}

// RestoreState loads a saved VM into this machine, which must have been
// created with the same memory size and vCPU count and never started.
// Guest RAM is restored separately (by the migration receiver, or a
// snapshot reader) before Start.
//
// Ordering: the irqchip (PIC, IOAPIC) and PIT go first, so vCPU LAPIC
// state and pending interrupts land on a consistent interrupt controller;
// the clock is set before any vCPU runs. Each vCPU then restores in the
// order kvm.VCPU.RestoreState documents. Devices last: restoring the UART
// may raise its interrupt line, which needs the irqchip in place.
func (m *Machine) RestoreState(s *State) error {
	m.ctl.Lock()
	started := m.started
	m.ctl.Unlock()
	if started {
		return fmt.Errorf("restore into a machine that has already run")
	}
	if s.Memory != m.mem.Size() {
		return fmt.Errorf("state is for %d MiB of RAM, this machine has %d MiB", s.Memory>>20, m.mem.Size()>>20)
	}
	if len(s.VCPUs) != len(m.vcpus) {
		return fmt.Errorf("state has %d vCPUs, this machine has %d", len(s.VCPUs), len(m.vcpus))
	}
	saved, err := m.matchDevices(s.Devices)
	if err != nil {
		return err
	}
	for _, c := range []kvm.IRQChip{s.PIC[0], s.PIC[1], s.IOAPIC} {
		if err := m.vm.SetIRQChip(c); err != nil {
			return err
		}
	}
	if err := m.vm.SetPIT2(s.PIT); err != nil {
		return err
	}
	if err := m.vm.SetClock(s.Clock); err != nil {
		return err
	}
	for i, vs := range s.VCPUs {
		if err := m.vcpus[i].RestoreState(vs); err != nil {
			return err
		}
	}
	for _, d := range m.devices {
		if sd, ok := d.(devices.Stateful); ok {
			if err := sd.Restore(saved[d.Name()]); err != nil {
				return err
			}
		}
	}
	return nil
}

// matchDevices pairs saved device states with this machine's stateful
// devices, before anything is restored: a state with a missing, extra or
// duplicate device, or with state for a device that has none, changes
// nothing.
func (m *Machine) matchDevices(list []DeviceState) (map[string][]byte, error) {
	stateful := map[string]bool{} // name: has state
	for _, d := range m.devices {
		_, ok := d.(devices.Stateful)
		stateful[d.Name()] = ok
	}
	saved := map[string][]byte{}
	for _, d := range list {
		if _, dup := saved[d.Name]; dup {
			return nil, fmt.Errorf("state has device %q twice", d.Name)
		}
		has, found := stateful[d.Name]
		if !found {
			return nil, fmt.Errorf("state has device %q, which this machine does not have", d.Name)
		}
		if !has {
			return nil, fmt.Errorf("state has saved state for device %q, which has no state", d.Name)
		}
		saved[d.Name] = d.Data
	}
	for _, d := range m.devices {
		if _, found := saved[d.Name()]; stateful[d.Name()] && !found {
			return nil, fmt.Errorf("state has no device %q", d.Name())
		}
	}
	return saved, nil
}
