// Package kvm is ferry's typed layer over /dev/kvm: the system, VMs, vCPUs,
// memory slots, the dirty log, irqfds and ioeventfds, and the full get and
// set of vCPU and VM state. Wrappers are thin (one method per ioctl; errors
// wrap the errno with %w). Structures come from gokvm's kvm package where
// its definitions match the kernel ABI, the calls are ours (several gokvm
// wrappers pass pointers as uintptr through Go calls or drop results), and
// every unsafe.Pointer is in the *_unsafe.go files.
//
//	system.go           /dev/kvm: open, capabilities, supported CPUID, MSR list, CreateVM
//	vm.go               a VM: memory slots, TSS and identity map, irqchip, PIT, clock, EnableCap
//	vcpu.go             a vCPU: Run, Kick, the exit data in kvm_run, TSC frequency
//	state.go            one vCPU state ioctl per method (registers, FPU, XSAVE, LAPIC, MSRs, CPUID, ...)
//	vcpustate.go        VCPUState: the whole vCPU saved and restored in the order KVM needs
//	dirtylog.go         the dirty log: get, clear, manual protection, PageSize
//	dirtylog_unsafe.go  struct kvm_dirty_log and kvm_clear_dirty_log, whose bitmap is a pointer
//	eventfd.go          irqfds and ioeventfds
//	types.go            kernel structures: gokvm's, and ours where gokvm has none
//	ioctls.go           the request numbers, each typed by its argument
//	ioctl_unsafe.go     the ioctl calls with pointer arguments, and the kvm_run mapping
package kvm

import (
	"errors"
	"fmt"
	"os"

	gokvm "github.com/bobuhiro11/gokvm/kvm"
	"golang.org/x/sys/unix"
)

// DevicePath is where the KVM device node normally lives.
const DevicePath = "/dev/kvm"

// Capabilities ferry uses. Values are KVM_CAP_* from include/uapi/linux/kvm.h.
const (
	CapIRQChip                = gokvm.CapIRQChip
	CapUserMemory             = gokvm.CapUserMemory
	CapSetTSSAddr             = gokvm.CapSetTSSAddr
	CapPIT2                   = gokvm.CapPIT2
	CapPITState2              = gokvm.CapPITState2
	CapIRQFD                  = gokvm.CapIRQFD
	CapIOEventFD              = gokvm.CapIOEventFD
	CapIRQFDResample          = gokvm.CapIRQFDResample
	CapIOEventFDAnyLength     = gokvm.CapIOEventFDAnyLength
	CapAdjustClock            = gokvm.CapAdjustClock
	CapVCPUEvents             = gokvm.CapVCPUEvents
	CapDebugRegs              = gokvm.CapDebugRegs
	CapXSave                  = gokvm.CapXSave
	CapXCRs                   = gokvm.CapXCRS
	CapGetTSCKHz              = gokvm.CapGetTSCkHz
	CapImmediateExit          = gokvm.CapImmediateExit
	CapMPState                = gokvm.CapMPState
	CapEnableCap              = gokvm.CapEnableCap
	CapManualDirtyLogProtect2 = gokvm.CapManualDirtyLogProtect2
	CapDirtyLogRing           = gokvm.CapDirtyLogRing
	CapExtCPUID               = gokvm.CapEXTCPUID
	CapSetIdentityMapAddr     = gokvm.CapSetIdentityMapAddr
	CapNrMemSlots             = gokvm.CapNRMemSlots
	CapMaxVCPUs               = gokvm.CapMAXVCPUS
)

// Flags for KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2's argument.
const (
	ManualProtectEnable  = 1 << 0
	ManualProtectInitSet = 1 << 1
)

// System is an open /dev/kvm.
type System struct {
	fd       int
	path     string
	mmapSize int
}

// ErrNoKVM means the KVM device is missing or not usable.
var ErrNoKVM = errors.New("KVM is not available")

// Open opens the KVM device at path (DevicePath if empty) and checks the API
// version. Errors say what to do: load the module, or get access to the node.
func Open(path string) (*System, error) {
	if path == "" {
		path = DevicePath
	}
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		switch {
		case errors.Is(err, unix.ENOENT):
			return nil, fmt.Errorf("%w: %s does not exist (load kvm_intel or kvm_amd, or enable virtualization): %w", ErrNoKVM, path, err)
		case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
			return nil, fmt.Errorf("%w: cannot open %s (run as root or join the group that owns it): %w", ErrNoKVM, path, err)
		default:
			return nil, fmt.Errorf("%w: open %s: %w", ErrNoKVM, path, err)
		}
	}
	s := &System{fd: fd, path: path}
	v, err := ioctlVal(fd, reqGetAPIVersion, 0)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("KVM_GET_API_VERSION on %s: %w", path, err)
	}
	if v != 12 {
		s.Close()
		return nil, fmt.Errorf("%w: %s speaks KVM API %d, ferry needs 12", ErrNoKVM, path, v)
	}
	n, err := ioctlVal(fd, reqGetVCPUMmapSize, 0)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("KVM_GET_VCPU_MMAP_SIZE: %w", err)
	}
	s.mmapSize = int(n)
	return s, nil
}

// Available reports whether a KVM device node exists at path.
func Available(path string) bool {
	if path == "" {
		path = DevicePath
	}
	_, err := os.Stat(path)
	return err == nil
}

// Close closes /dev/kvm. VMs created from it stay valid.
func (s *System) Close() error { return unix.Close(s.fd) }

// Path is the device node this System was opened from.
func (s *System) Path() string { return s.path }

// CheckExtension returns KVM_CHECK_EXTENSION for c: 0 when absent, else a
// capability-specific positive value.
func (s *System) CheckExtension(c Capability) (int, error) {
	r, err := ioctlVal(s.fd, reqCheckExtension, uintptr(c))
	if err != nil {
		return 0, fmt.Errorf("KVM_CHECK_EXTENSION(%v): %w", c, err)
	}
	return int(r), nil
}

// SupportedCPUID returns KVM_GET_SUPPORTED_CPUID.
func (s *System) SupportedCPUID() ([]CPUIDEntry, error) {
	var c cpuid2
	c.N = maxCPUIDEntries
	if _, err := ioctlPtr(s.fd, reqGetSupportedCPUID, &c); err != nil {
		return nil, fmt.Errorf("KVM_GET_SUPPORTED_CPUID: %w", err)
	}
	return append([]CPUIDEntry(nil), c.Entries[:c.N]...), nil
}

// MSRIndexList returns KVM_GET_MSR_INDEX_LIST: the MSRs KVM can save and
// restore for a vCPU.
func (s *System) MSRIndexList() ([]uint32, error) {
	var l msrList
	l.N = maxMSRs
	if _, err := ioctlPtr(s.fd, reqGetMSRIndexList, &l); err != nil {
		return nil, fmt.Errorf("KVM_GET_MSR_INDEX_LIST: %w", err)
	}
	return append([]uint32(nil), l.Indices[:l.N]...), nil
}

// CreateVM creates an empty VM.
func (s *System) CreateVM() (*VM, error) {
	fd, err := ioctlVal(s.fd, reqCreateVM, 0)
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VM: %w", err)
	}
	return &VM{fd: int(fd), sys: s}, nil
}

// emulatingModules are KVM implementations that run ordinary guests in an
// instruction emulator instead of with VT-x/AMD-V.
var emulatingModules = []string{"kvm_pvm"}

// EmulatingModule names the loaded KVM module if it is one that emulates
// guests (so every guest instruction is slow and some cannot run), or "".
func EmulatingModule() string {
	for _, name := range emulatingModules {
		if _, err := os.Stat("/sys/module/" + name); err == nil {
			return name
		}
	}
	return ""
}
