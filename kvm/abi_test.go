package kvm

import (
	"testing"
	"unsafe"

	gokvm "github.com/bobuhiro11/gokvm/kvm"
)

// The kernel ABI this package speaks, pinned: a change in a structure
// (ours, or one gokvm defines and we reuse) or in a request number fails
// here, not as a corrupted ioctl. The sizes are sizeof() of the kernel's
// structures on x86-64 (include/uapi/linux/kvm.h, arch/x86/include/uapi/
// asm/kvm.h); the request numbers are the kernel's _IO* values.

func TestABIStructSizes(t *testing.T) {
	for _, c := range []struct {
		kernel string
		got    uintptr
		want   uintptr
	}{
		{"struct kvm_regs", unsafe.Sizeof(Regs{}), 144},
		{"struct kvm_sregs", unsafe.Sizeof(Sregs{}), 312},
		{"struct kvm_segment", unsafe.Sizeof(Segment{}), 24},
		{"struct kvm_dtable", unsafe.Sizeof(Descriptor{}), 16},
		{"struct kvm_fpu", unsafe.Sizeof(FPU{}), 416},
		{"struct kvm_xsave (legacy 4 KiB form)", unsafe.Sizeof(XSave{}), 4096},
		{"struct kvm_xcrs", unsafe.Sizeof(XCRs{}), 392},
		{"struct kvm_debugregs", unsafe.Sizeof(DebugRegs{}), 128},
		{"struct kvm_lapic_state", unsafe.Sizeof(LAPIC{}), 1024},
		{"struct kvm_vcpu_events", unsafe.Sizeof(VCPUEvents{}), 64},
		{"struct kvm_mp_state", unsafe.Sizeof(MPState{}), 4},
		{"struct kvm_msr_entry", unsafe.Sizeof(MSREntry{}), 16},
		{"struct kvm_cpuid_entry2", unsafe.Sizeof(CPUIDEntry{}), 40},
		{"struct kvm_clock_data", unsafe.Sizeof(ClockData{}), 48},
		{"struct kvm_pit_state2", unsafe.Sizeof(PITState2{}), 112},
		{"struct kvm_irqchip", unsafe.Sizeof(IRQChip{}), 520},
		{"struct kvm_userspace_memory_region", unsafe.Sizeof(gokvm.UserspaceMemoryRegion{}), 32},
		{"struct kvm_dirty_log", unsafe.Sizeof(dirtyLog{}), 16},
		{"struct kvm_clear_dirty_log", unsafe.Sizeof(clearDirtyLog{}), 24},
		{"struct kvm_enable_cap", unsafe.Sizeof(enableCap{}), 104},
		{"struct kvm_irq_level", unsafe.Sizeof(irqLevel{}), 8},
		{"struct kvm_pit_config", unsafe.Sizeof(pitConfig{}), 64},
		{"struct kvm_irqfd", unsafe.Sizeof(irqfd{}), 32},
		{"struct kvm_ioeventfd", unsafe.Sizeof(ioeventfd{}), 64},
		{"struct kvm_msrs (header)", unsafe.Offsetof(msrs{}.Entries), 8},
		{"struct kvm_msr_list (header)", unsafe.Offsetof(msrList{}.Indices), 4},
		{"struct kvm_cpuid2 (header)", unsafe.Offsetof(cpuid2{}.Entries), 8},
		{"struct kvm_run up to the exit union", unsafe.Offsetof(runData{}.Exit), 32},
	} {
		if c.got != c.want {
			t.Errorf("%s: %d bytes here, %d in the kernel", c.kernel, c.got, c.want)
		}
	}
}

func TestABIRequestNumbers(t *testing.T) {
	for _, c := range []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"KVM_GET_API_VERSION", reqGetAPIVersion, 0xae00},
		{"KVM_CREATE_VM", reqCreateVM, 0xae01},
		{"KVM_GET_MSR_INDEX_LIST", uintptr(reqGetMSRIndexList), 0xc004ae02},
		{"KVM_CHECK_EXTENSION", reqCheckExtension, 0xae03},
		{"KVM_GET_VCPU_MMAP_SIZE", reqGetVCPUMmapSize, 0xae04},
		{"KVM_GET_SUPPORTED_CPUID", uintptr(reqGetSupportedCPUID), 0xc008ae05},
		{"KVM_CREATE_VCPU", reqCreateVCPU, 0xae41},
		{"KVM_GET_DIRTY_LOG", uintptr(reqGetDirtyLog), 0x4010ae42},
		{"KVM_SET_USER_MEMORY_REGION", uintptr(reqSetUserMemoryRegion), 0x4020ae46},
		{"KVM_SET_TSS_ADDR", reqSetTSSAddr, 0xae47},
		{"KVM_SET_IDENTITY_MAP_ADDR", uintptr(reqSetIdentityMapAddr), 0x4008ae48},
		{"KVM_CREATE_IRQCHIP", reqCreateIRQChip, 0xae60},
		{"KVM_IRQ_LINE", uintptr(reqIRQLine), 0x4008ae61},
		{"KVM_GET_IRQCHIP", uintptr(reqGetIRQChip), 0xc208ae62},
		{"KVM_SET_IRQCHIP", uintptr(reqSetIRQChip), 0x8208ae63},
		{"KVM_IRQFD", uintptr(reqIRQFD), 0x4020ae76},
		{"KVM_CREATE_PIT2", uintptr(reqCreatePIT2), 0x4040ae77},
		{"KVM_IOEVENTFD", uintptr(reqIOEventFD), 0x4040ae79},
		{"KVM_SET_CLOCK", uintptr(reqSetClock), 0x4030ae7b},
		{"KVM_GET_CLOCK", uintptr(reqGetClock), 0x8030ae7c},
		{"KVM_GET_PIT2", uintptr(reqGetPIT2), 0x8070ae9f},
		{"KVM_SET_PIT2", uintptr(reqSetPIT2), 0x4070aea0},
		{"KVM_ENABLE_CAP", uintptr(reqEnableCap), 0x4068aea3},
		{"KVM_CLEAR_DIRTY_LOG", uintptr(reqClearDirtyLog), 0xc018aec0},
		{"KVM_RUN", reqRun, 0xae80},
		{"KVM_GET_REGS", uintptr(reqGetRegs), 0x8090ae81},
		{"KVM_SET_REGS", uintptr(reqSetRegs), 0x4090ae82},
		{"KVM_GET_SREGS", uintptr(reqGetSregs), 0x8138ae83},
		{"KVM_SET_SREGS", uintptr(reqSetSregs), 0x4138ae84},
		{"KVM_GET_MSRS", uintptr(reqGetMSRs), 0xc008ae88},
		{"KVM_SET_MSRS", uintptr(reqSetMSRs), 0x4008ae89},
		{"KVM_GET_FPU", uintptr(reqGetFPU), 0x81a0ae8c},
		{"KVM_SET_FPU", uintptr(reqSetFPU), 0x41a0ae8d},
		{"KVM_GET_LAPIC", uintptr(reqGetLAPIC), 0x8400ae8e},
		{"KVM_SET_LAPIC", uintptr(reqSetLAPIC), 0x4400ae8f},
		{"KVM_SET_CPUID2", uintptr(reqSetCPUID2), 0x4008ae90},
		{"KVM_GET_CPUID2", uintptr(reqGetCPUID2), 0xc008ae91},
		{"KVM_GET_MP_STATE", uintptr(reqGetMPState), 0x8004ae98},
		{"KVM_SET_MP_STATE", uintptr(reqSetMPState), 0x4004ae99},
		{"KVM_GET_VCPU_EVENTS", uintptr(reqGetEvents), 0x8040ae9f},
		{"KVM_SET_VCPU_EVENTS", uintptr(reqSetEvents), 0x4040aea0},
		{"KVM_GET_DEBUGREGS", uintptr(reqGetDebugRegs), 0x8080aea1},
		{"KVM_SET_DEBUGREGS", uintptr(reqSetDebugRegs), 0x4080aea2},
		{"KVM_SET_TSC_KHZ", reqSetTSCKHz, 0xaea2},
		{"KVM_GET_TSC_KHZ", reqGetTSCKHz, 0xaea3},
		{"KVM_GET_XSAVE", uintptr(reqGetXSave), 0x9000aea4},
		{"KVM_SET_XSAVE", uintptr(reqSetXSave), 0x5000aea5},
		{"KVM_GET_XCRS", uintptr(reqGetXCRs), 0x8188aea6},
		{"KVM_SET_XCRS", uintptr(reqSetXCRs), 0x4188aea7},
	} {
		if c.got != c.want {
			t.Errorf("%s: request %#x, the kernel's is %#x", c.name, c.got, c.want)
		}
	}
}
