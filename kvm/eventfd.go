package kvm

import "fmt"

// irqfds and ioeventfds: eventfds that KVM signals or reads itself, so a
// device model can raise an interrupt, or learn of a guest write to a
// doorbell register, without a vCPU exit to user space.

// Flags of struct kvm_irqfd and struct kvm_ioeventfd.
const (
	irqfdFlagDeassign = 1 << 0 // KVM_IRQFD_FLAG_DEASSIGN
	irqfdFlagResample = 1 << 1 // KVM_IRQFD_FLAG_RESAMPLE

	ioeventfdFlagDatamatch = 1 << 0 // KVM_IOEVENTFD_FLAG_DATAMATCH
	ioeventfdFlagPIO       = 1 << 1 // KVM_IOEVENTFD_FLAG_PIO
	ioeventfdFlagDeassign  = 1 << 2 // KVM_IOEVENTFD_FLAG_DEASSIGN
)

// IRQFD makes every write to the eventfd efd pulse gsi: KVM asserts the
// GSI and deasserts it at once, which is one edge for an edge-triggered
// irqchip input. Needs KVM_CAP_IRQFD and an in-kernel irqchip.
func (vm *VM) IRQFD(efd int, gsi uint32) error {
	r := irqfd{FD: uint32(efd), GSI: gsi}
	if _, err := ioctlPtr(vm.fd, reqIRQFD, &r); err != nil {
		return fmt.Errorf("KVM_IRQFD gsi %d: %w", gsi, err)
	}
	return nil
}

// IRQFDResample makes a write to efd assert gsi and keep it asserted,
// for level-triggered inputs: when the guest acknowledges the interrupt
// (an EOI reaches the irqchip for that input), KVM deasserts the GSI and
// signals resamplefd, so the device can assert it again if it still has
// an interrupt pending. Needs KVM_CAP_IRQFD_RESAMPLE. Only that EOI,
// or removing the last resampling irqfd of the GSI, deasserts it.
func (vm *VM) IRQFDResample(efd, resamplefd int, gsi uint32) error {
	r := irqfd{FD: uint32(efd), GSI: gsi, Flags: irqfdFlagResample, ResampleFD: uint32(resamplefd)}
	if _, err := ioctlPtr(vm.fd, reqIRQFD, &r); err != nil {
		return fmt.Errorf("KVM_IRQFD gsi %d (resample fd %d): %w", gsi, resamplefd, err)
	}
	return nil
}

// DeassignIRQFD removes the irqfd efd of gsi (plain or resampling).
// Closing efd also removes it, but only eventually (KVM notices the
// eventfd's release in a work item).
func (vm *VM) DeassignIRQFD(efd int, gsi uint32) error {
	r := irqfd{FD: uint32(efd), GSI: gsi, Flags: irqfdFlagDeassign}
	if _, err := ioctlPtr(vm.fd, reqIRQFD, &r); err != nil {
		return fmt.Errorf("KVM_IRQFD deassign gsi %d: %w", gsi, err)
	}
	return nil
}

// IOEvent is one ioeventfd: a guest write of Len bytes at Addr (an MMIO
// guest-physical address, or a port when PIO) signals FD instead of
// exiting to user space. With Match, only a write of the value Data does;
// other writes there exit as usual. Len is 1, 2, 4 or 8 (0, any length,
// needs KVM_CAP_IOEVENTFD_ANY_LENGTH and excludes Match).
type IOEvent struct {
	FD    int
	Addr  uint64
	Len   uint32
	PIO   bool
	Match bool
	Data  uint64
}

func (e IOEvent) raw() ioeventfd {
	r := ioeventfd{Addr: e.Addr, Len: e.Len, FD: int32(e.FD)}
	if e.PIO {
		r.Flags |= ioeventfdFlagPIO
	}
	if e.Match {
		r.Flags |= ioeventfdFlagDatamatch
		r.Datamatch = e.Data
	}
	return r
}

func (e IOEvent) String() string {
	space := "mmio"
	if e.PIO {
		space = "pio"
	}
	if e.Match {
		return fmt.Sprintf("%s %#x len %d data %#x", space, e.Addr, e.Len, e.Data)
	}
	return fmt.Sprintf("%s %#x len %d", space, e.Addr, e.Len)
}

// IOEventFD assigns an ioeventfd (KVM_CAP_IOEVENTFD). KVM refuses
// (EEXIST) a second one on the same address, length and match value.
func (vm *VM) IOEventFD(e IOEvent) error {
	r := e.raw()
	if _, err := ioctlPtr(vm.fd, reqIOEventFD, &r); err != nil {
		return fmt.Errorf("KVM_IOEVENTFD %v: %w", e, err)
	}
	return nil
}

// DeassignIOEventFD removes an ioeventfd; e must be the one assigned
// (same FD, address, length, space and match). KVM keeps a reference to
// the eventfd until then, even if it is closed.
func (vm *VM) DeassignIOEventFD(e IOEvent) error {
	r := e.raw()
	r.Flags |= ioeventfdFlagDeassign
	if _, err := ioctlPtr(vm.fd, reqIOEventFD, &r); err != nil {
		return fmt.Errorf("KVM_IOEVENTFD deassign %v: %w", e, err)
	}
	return nil
}
