package kvm

import gokvm "github.com/bobuhiro11/gokvm/kvm"

// Structures whose gokvm definitions match the kernel ABI are reused as is.
type (
	Regs       = gokvm.Regs
	Sregs      = gokvm.Sregs
	Segment    = gokvm.Segment
	Descriptor = gokvm.Descriptor
	DebugRegs  = gokvm.DebugRegs
	XCRs       = gokvm.XCRS
	VCPUEvents = gokvm.VCPUEvents
	MPState    = gokvm.MPState
	ClockData  = gokvm.ClockData
	PITState2  = gokvm.PITState2
	IRQChip    = gokvm.IRQChip
	LAPIC      = gokvm.LAPICState
	CPUIDEntry = gokvm.CPUIDEntry2
	Capability = gokvm.Capability
)

// MP states (struct kvm_mp_state).
const (
	MPStateRunnable      = gokvm.MPStateRunnable
	MPStateUninitialized = gokvm.MPStateUninitialized
	MPStateHalted        = gokvm.MPStateHalted
)

// IRQ chip ids for KVM_GET/SET_IRQCHIP.
const (
	IRQChipPICMaster = 0
	IRQChipPICSlave  = 1
	IRQChipIOAPIC    = 2
)

// FPU is struct kvm_fpu (416 bytes); gokvm has no FPU wrapper.
type FPU struct {
	FPR        [8][16]uint8
	FCW        uint16
	FSW        uint16
	FTWX       uint8
	_          uint8
	LastOpcode uint16
	LastIP     uint64
	LastDP     uint64
	XMM        [16][16]uint8
	MXCSR      uint32
	_          uint32
}

// XSave is struct kvm_xsave in its legacy 4 KiB form (KVM_GET_XSAVE).
type XSave struct {
	Region [1024]uint32
}

// MSREntry is struct kvm_msr_entry.
type MSREntry struct {
	Index uint32
	_     uint32
	Data  uint64
}

// maxMSRs bounds one KVM_GET/SET_MSRS call and the MSR index list.
const maxMSRs = 1024

type msrs struct {
	N       uint32
	_       uint32
	Entries [maxMSRs]MSREntry
}

type msrList struct {
	N       uint32
	Indices [maxMSRs]uint32
}

// maxCPUIDEntries bounds KVM_GET_SUPPORTED_CPUID / KVM_SET_CPUID2.
const maxCPUIDEntries = 256

type cpuid2 struct {
	N       uint32
	_       uint32
	Entries [maxCPUIDEntries]CPUIDEntry
}

// CPUID entry flags (struct kvm_cpuid_entry2.flags).
const CPUIDFlagSignificantIndex = 1

type enableCap struct {
	Cap   uint32
	Flags uint32
	Args  [4]uint64
	_     [64]uint8
}

// pitConfig is struct kvm_pit_config (flags, then padding).
type pitConfig struct {
	Flags uint32
	_     [15]uint32
}

type irqLevel struct {
	IRQ   uint32
	Level uint32
}

type irqfd struct {
	FD         uint32
	GSI        uint32
	Flags      uint32
	ResampleFD uint32
	_          [16]uint8
}

type ioeventfd struct {
	Datamatch uint64
	Addr      uint64
	Len       uint32
	FD        int32
	Flags     uint32
	_         [36]uint8
}

// runData is the fixed head of struct kvm_run; the exit union starts at
// offset 32 (Exit), 256 bytes long.
type runData struct {
	RequestInterruptWindow     uint8
	ImmediateExit              uint8
	_                          [6]uint8
	ExitReason                 uint32
	ReadyForInterruptInjection uint8
	IfFlag                     uint8
	Flags                      uint16
	CR8                        uint64
	ApicBase                   uint64
	Exit                       [256]byte
}
