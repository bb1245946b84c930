package kvm

import (
	"fmt"
	"sync"

	gokvm "github.com/bobuhiro11/gokvm/kvm"
	"golang.org/x/sys/unix"
)

// VM is one KVM virtual machine.
type VM struct {
	fd  int
	sys *System

	// mu guards slots: SetMemoryRegion (turning dirty logging on or off)
	// may run while another goroutine reads or clears the dirty log.
	mu    sync.Mutex
	slots map[uint32]uint64 // slot -> size in pages, for dirty bitmap sizes
}

// MemoryRegion describes one KVM memory slot.
type MemoryRegion struct {
	Slot     uint32
	GPA      uint64
	Size     uint64
	HostAddr uintptr // start of the host mapping (an mmap, never Go heap)
	LogDirty bool
}

// Memory slot flags (struct kvm_userspace_memory_region.flags).
const (
	memLogDirtyPages = 1 << 0
)

// Close destroys the VM's file descriptor.
func (vm *VM) Close() error { return unix.Close(vm.fd) }

// System is the /dev/kvm this VM came from.
func (vm *VM) System() *System { return vm.sys }

// SetMemoryRegion creates, changes (flags only) or deletes (Size 0) a slot.
func (vm *VM) SetMemoryRegion(r MemoryRegion) error {
	region := gokvm.UserspaceMemoryRegion{
		Slot:          r.Slot,
		GuestPhysAddr: r.GPA,
		MemorySize:    r.Size,
		UserspaceAddr: uint64(r.HostAddr),
	}
	if r.LogDirty {
		region.Flags |= memLogDirtyPages
	}
	if _, err := ioctlPtr(vm.fd, reqSetUserMemoryRegion, &region); err != nil {
		return fmt.Errorf("KVM_SET_USER_MEMORY_REGION slot %d (gpa %#x size %#x): %w", r.Slot, r.GPA, r.Size, err)
	}
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if r.Size == 0 {
		delete(vm.slots, r.Slot)
	} else {
		if vm.slots == nil {
			vm.slots = map[uint32]uint64{}
		}
		vm.slots[r.Slot] = sizePages(r.Size)
	}
	return nil
}

// slotPages is the size in pages of a slot set through SetMemoryRegion.
func (vm *VM) slotPages(slot uint32) (uint64, bool) {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	n, ok := vm.slots[slot]
	return n, ok
}

// CheckExtension asks the VM (KVM_CHECK_EXTENSION on the VM fd, which can
// differ from the system answer).
func (vm *VM) CheckExtension(c Capability) (int, error) {
	r, err := ioctlVal(vm.fd, reqCheckExtension, uintptr(c))
	if err != nil {
		return 0, fmt.Errorf("KVM_CHECK_EXTENSION(%v) on VM: %w", c, err)
	}
	return int(r), nil
}

// EnableCap calls KVM_ENABLE_CAP on the VM.
func (vm *VM) EnableCap(c Capability, args ...uint64) error {
	e := enableCap{Cap: uint32(c)}
	copy(e.Args[:], args)
	if _, err := ioctlPtr(vm.fd, reqEnableCap, &e); err != nil {
		return fmt.Errorf("KVM_ENABLE_CAP(%v): %w", c, err)
	}
	return nil
}

// SetTSSAddr places the three-page TSS region KVM needs on Intel.
func (vm *VM) SetTSSAddr(addr uint32) error {
	if _, err := ioctlVal(vm.fd, reqSetTSSAddr, uintptr(addr)); err != nil {
		return fmt.Errorf("KVM_SET_TSS_ADDR %#x: %w", addr, err)
	}
	return nil
}

// SetIdentityMapAddr places the one-page identity map KVM needs on Intel.
func (vm *VM) SetIdentityMapAddr(addr uint64) error {
	if _, err := ioctlPtr(vm.fd, reqSetIdentityMapAddr, &addr); err != nil {
		return fmt.Errorf("KVM_SET_IDENTITY_MAP_ADDR %#x: %w", addr, err)
	}
	return nil
}

// CreateIRQChip creates the in-kernel PIC, IOAPIC and local APICs.
func (vm *VM) CreateIRQChip() error {
	if _, err := ioctlVal(vm.fd, reqCreateIRQChip, 0); err != nil {
		return fmt.Errorf("KVM_CREATE_IRQCHIP: %w", err)
	}
	return nil
}

// CreatePIT2 creates the in-kernel i8254 timer.
func (vm *VM) CreatePIT2() error {
	var cfg pitConfig // flags 0
	if _, err := ioctlPtr(vm.fd, reqCreatePIT2, &cfg); err != nil {
		return fmt.Errorf("KVM_CREATE_PIT2: %w", err)
	}
	return nil
}

// IRQLine sets the level of a GSI of the in-kernel irqchip.
func (vm *VM) IRQLine(gsi uint32, high bool) error {
	l := irqLevel{IRQ: gsi}
	if high {
		l.Level = 1
	}
	if _, err := ioctlPtr(vm.fd, reqIRQLine, &l); err != nil {
		return fmt.Errorf("KVM_IRQ_LINE gsi %d: %w", gsi, err)
	}
	return nil
}

// IRQChip reads one in-kernel interrupt controller (IRQChipPIC*, IRQChipIOAPIC).
func (vm *VM) IRQChip(id uint32) (IRQChip, error) {
	c := IRQChip{ChipID: id}
	if _, err := ioctlPtr(vm.fd, reqGetIRQChip, &c); err != nil {
		return c, fmt.Errorf("KVM_GET_IRQCHIP %d: %w", id, err)
	}
	return c, nil
}

// SetIRQChip writes one in-kernel interrupt controller.
func (vm *VM) SetIRQChip(c IRQChip) error {
	if _, err := ioctlPtr(vm.fd, reqSetIRQChip, &c); err != nil {
		return fmt.Errorf("KVM_SET_IRQCHIP %d: %w", c.ChipID, err)
	}
	return nil
}

// PIT2 reads the in-kernel PIT.
func (vm *VM) PIT2() (PITState2, error) {
	var p PITState2
	if _, err := ioctlPtr(vm.fd, reqGetPIT2, &p); err != nil {
		return p, fmt.Errorf("KVM_GET_PIT2: %w", err)
	}
	return p, nil
}

// SetPIT2 writes the in-kernel PIT.
func (vm *VM) SetPIT2(p PITState2) error {
	if _, err := ioctlPtr(vm.fd, reqSetPIT2, &p); err != nil {
		return fmt.Errorf("KVM_SET_PIT2: %w", err)
	}
	return nil
}

// Clock reads the VM's kvmclock.
func (vm *VM) Clock() (ClockData, error) {
	var c ClockData
	if _, err := ioctlPtr(vm.fd, reqGetClock, &c); err != nil {
		return c, fmt.Errorf("KVM_GET_CLOCK: %w", err)
	}
	return c, nil
}

// SetClock sets the VM's kvmclock. Only Clock (and, with the realtime flag,
// Realtime) are inputs; the other fields must be zero.
func (vm *VM) SetClock(c ClockData) error {
	in := ClockData{Clock: c.Clock}
	if _, err := ioctlPtr(vm.fd, reqSetClock, &in); err != nil {
		return fmt.Errorf("KVM_SET_CLOCK: %w", err)
	}
	return nil
}
