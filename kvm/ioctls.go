package kvm

import (
	"unsafe"

	gokvm "github.com/bobuhiro11/gokvm/kvm"
)

// Request numbers, built with gokvm's _IO/_IOR/_IOW/_IOWR helpers and the
// sizes of the structures they carry (include/uapi/linux/kvm.h).
var (
	reqGetAPIVersion     = gokvm.IIO(0x00)
	reqCreateVM          = gokvm.IIO(0x01)
	reqGetMSRIndexList   = gokvm.IIOWR(0x02, 4)
	reqCheckExtension    = gokvm.IIO(0x03)
	reqGetVCPUMmapSize   = gokvm.IIO(0x04)
	reqGetSupportedCPUID = gokvm.IIOWR(0x05, 8)

	reqCreateVCPU          = gokvm.IIO(0x41)
	reqGetDirtyLog         = gokvm.IIOW(0x42, unsafe.Sizeof(dirtyLog{}))
	reqSetUserMemoryRegion = gokvm.IIOW(0x46, unsafe.Sizeof(gokvm.UserspaceMemoryRegion{}))
	reqSetTSSAddr          = gokvm.IIO(0x47)
	reqSetIdentityMapAddr  = gokvm.IIOW(0x48, 8)
	reqCreateIRQChip       = gokvm.IIO(0x60)
	reqIRQLine             = gokvm.IIOW(0x61, 8)
	reqGetIRQChip          = gokvm.IIOWR(0x62, unsafe.Sizeof(IRQChip{}))
	reqSetIRQChip          = gokvm.IIOR(0x63, unsafe.Sizeof(IRQChip{}))
	reqIRQFD               = gokvm.IIOW(0x76, unsafe.Sizeof(irqfd{}))
	reqCreatePIT2          = gokvm.IIOW(0x77, 64)
	reqIOEventFD           = gokvm.IIOW(0x79, unsafe.Sizeof(ioeventfd{}))
	reqSetClock            = gokvm.IIOW(0x7b, unsafe.Sizeof(ClockData{}))
	reqGetClock            = gokvm.IIOR(0x7c, unsafe.Sizeof(ClockData{}))
	reqGetPIT2             = gokvm.IIOR(0x9f, unsafe.Sizeof(PITState2{}))
	reqSetPIT2             = gokvm.IIOW(0xa0, unsafe.Sizeof(PITState2{}))
	reqEnableCap           = gokvm.IIOW(0xa3, unsafe.Sizeof(enableCap{}))
	reqClearDirtyLog       = gokvm.IIOWR(0xc0, unsafe.Sizeof(clearDirtyLog{}))

	reqRun          = gokvm.IIO(0x80)
	reqGetRegs      = gokvm.IIOR(0x81, unsafe.Sizeof(Regs{}))
	reqSetRegs      = gokvm.IIOW(0x82, unsafe.Sizeof(Regs{}))
	reqGetSregs     = gokvm.IIOR(0x83, unsafe.Sizeof(Sregs{}))
	reqSetSregs     = gokvm.IIOW(0x84, unsafe.Sizeof(Sregs{}))
	reqGetMSRs      = gokvm.IIOWR(0x88, 8)
	reqSetMSRs      = gokvm.IIOW(0x89, 8)
	reqGetFPU       = gokvm.IIOR(0x8c, unsafe.Sizeof(FPU{}))
	reqSetFPU       = gokvm.IIOW(0x8d, unsafe.Sizeof(FPU{}))
	reqGetLAPIC     = gokvm.IIOR(0x8e, unsafe.Sizeof(LAPIC{}))
	reqSetLAPIC     = gokvm.IIOW(0x8f, unsafe.Sizeof(LAPIC{}))
	reqSetCPUID2    = gokvm.IIOW(0x90, 8)
	reqGetCPUID2    = gokvm.IIOWR(0x91, 8)
	reqGetMPState   = gokvm.IIOR(0x98, unsafe.Sizeof(MPState{}))
	reqSetMPState   = gokvm.IIOW(0x99, unsafe.Sizeof(MPState{}))
	reqGetEvents    = gokvm.IIOR(0x9f, unsafe.Sizeof(VCPUEvents{}))
	reqSetEvents    = gokvm.IIOW(0xa0, unsafe.Sizeof(VCPUEvents{}))
	reqGetDebugRegs = gokvm.IIOR(0xa1, unsafe.Sizeof(DebugRegs{}))
	reqSetDebugRegs = gokvm.IIOW(0xa2, unsafe.Sizeof(DebugRegs{}))
	reqSetTSCKHz    = gokvm.IIO(0xa2)
	reqGetTSCKHz    = gokvm.IIO(0xa3)
	reqGetXSave     = gokvm.IIOR(0xa4, unsafe.Sizeof(XSave{}))
	reqSetXSave     = gokvm.IIOW(0xa5, unsafe.Sizeof(XSave{}))
	reqGetXCRs      = gokvm.IIOR(0xa6, unsafe.Sizeof(XCRs{}))
	reqSetXCRs      = gokvm.IIOW(0xa7, unsafe.Sizeof(XCRs{}))
)
