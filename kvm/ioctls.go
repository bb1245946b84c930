package kvm

import gokvm "github.com/bobuhiro11/gokvm/kvm"

// Request numbers (include/uapi/linux/kvm.h), built with gokvm's _IO
// helper, or, for those whose argument is a pointer, typed by the argument
// they carry (ioctl_unsafe.go) so that the size in the number is that of
// the structure passed. kvm/abi_test.go pins every number to the kernel's.
var (
	reqGetAPIVersion     = gokvm.IIO(0x00)
	reqCreateVM          = gokvm.IIO(0x01)
	reqGetMSRIndexList   = iowrHead[msrList](0x02, 4) // struct kvm_msr_list: nmsrs, then the indices
	reqCheckExtension    = gokvm.IIO(0x03)
	reqGetVCPUMmapSize   = gokvm.IIO(0x04)
	reqGetSupportedCPUID = iowrHead[cpuid2](0x05, 8) // struct kvm_cpuid2: nent, padding, then the entries

	reqCreateVCPU          = gokvm.IIO(0x41)
	reqGetDirtyLog         = iow[dirtyLog](0x42)
	reqSetUserMemoryRegion = iow[gokvm.UserspaceMemoryRegion](0x46)
	reqSetTSSAddr          = gokvm.IIO(0x47)
	reqSetIdentityMapAddr  = iow[uint64](0x48)
	reqCreateIRQChip       = gokvm.IIO(0x60)
	reqIRQLine             = iow[irqLevel](0x61)
	reqGetIRQChip          = iowr[IRQChip](0x62)
	reqSetIRQChip          = ior[IRQChip](0x63) // _IOR in kvm.h, although it writes
	reqIRQFD               = iow[irqfd](0x76)
	reqCreatePIT2          = iow[pitConfig](0x77)
	reqIOEventFD           = iow[ioeventfd](0x79)
	reqSetClock            = iow[ClockData](0x7b)
	reqGetClock            = ior[ClockData](0x7c)
	reqGetPIT2             = ior[PITState2](0x9f)
	reqSetPIT2             = iow[PITState2](0xa0)
	reqEnableCap           = iow[enableCap](0xa3)
	reqClearDirtyLog       = iowr[clearDirtyLog](0xc0)

	reqRun          = gokvm.IIO(0x80)
	reqGetRegs      = ior[Regs](0x81)
	reqSetRegs      = iow[Regs](0x82)
	reqGetSregs     = ior[Sregs](0x83)
	reqSetSregs     = iow[Sregs](0x84)
	reqGetMSRs      = iowrHead[msrs](0x88, 8) // struct kvm_msrs: nmsrs, pad, then the entries
	reqSetMSRs      = iowHead[msrs](0x89, 8)
	reqGetFPU       = ior[FPU](0x8c)
	reqSetFPU       = iow[FPU](0x8d)
	reqGetLAPIC     = ior[LAPIC](0x8e)
	reqSetLAPIC     = iow[LAPIC](0x8f)
	reqSetCPUID2    = iowHead[cpuid2](0x90, 8)
	reqGetCPUID2    = iowrHead[cpuid2](0x91, 8)
	reqGetMPState   = ior[MPState](0x98)
	reqSetMPState   = iow[MPState](0x99)
	reqGetEvents    = ior[VCPUEvents](0x9f)
	reqSetEvents    = iow[VCPUEvents](0xa0)
	reqGetDebugRegs = ior[DebugRegs](0xa1)
	reqSetDebugRegs = iow[DebugRegs](0xa2)
	reqSetTSCKHz    = gokvm.IIO(0xa2)
	reqGetTSCKHz    = gokvm.IIO(0xa3)
	reqGetXSave     = ior[XSave](0xa4)
	reqSetXSave     = iow[XSave](0xa5)
	reqGetXCRs      = ior[XCRs](0xa6)
	reqSetXCRs      = iow[XCRs](0xa7)
)
