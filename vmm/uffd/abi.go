package uffd

// The kernel ABI of userfaultfd, from include/uapi/linux/userfaultfd.h:
// the API number, ioctl numbers, flags and structures (abi_test.go pins
// the sizes and numbers). Structures whose fields hold a pointer into Go
// memory (uffdio_copy's source) live in uffd_unsafe.go.

// apiVersion is UFFD_API, the only API version there is.
const apiVersion = 0xaa

// ioctl numbers, built as the kernel's _IOR/_IOWR macros build them: the
// argument's size is part of the number.
const (
	iocWrite = 1
	iocRead  = 2
	uffdType = 0xaa // UFFDIO and USERFAULTFD_IOC
)

func ioc(dir, nr, size uintptr) uintptr { return dir<<30 | size<<16 | uffdType<<8 | nr }

var (
	reqAPI          = iowr[apiArg](0x3f)
	reqRegister     = iowr[registerArg](0x00)
	reqUnregister   = ior[rangeArg](0x01) // _IOR in the header, although the kernel only reads it
	reqWake         = ior[rangeArg](0x02)
	reqCopy         = iowr[copyArg](0x03)
	reqZeroPage     = iowr[zeroPageArg](0x04)
	reqWriteProtect = iowr[writeProtectArg](0x06)
	// reqNewFD is USERFAULTFD_IOC_NEW on /dev/userfaultfd: _IO, no
	// argument structure; the flags are the argument itself.
	reqNewFD = ioc(0, 0x00, 0)
)

// Bits of uffdio_api.ioctls and uffdio_register.ioctls: 1 << the ioctl's nr.
const (
	ioctlRegister     = 1 << 0x00
	ioctlUnregister   = 1 << 0x01
	ioctlWake         = 1 << 0x02
	ioctlCopy         = 1 << 0x03
	ioctlZeroPage     = 1 << 0x04
	ioctlWriteProtect = 1 << 0x06
	ioctlAPI          = 1 << 0x3f
)

// wpModeWP is UFFDIO_WRITEPROTECT_MODE_WP: set, not clear, the protection.
const wpModeWP = 1 << 0

// uffd_msg: 32 bytes, packed. Only page faults are decoded; the other
// events need features ferry does not ask for.
const (
	msgSize        = 32
	eventPageFault = 0x12   // UFFD_EVENT_PAGEFAULT
	msgOffEvent    = 0      // __u8 event
	msgOffFlags    = 8      // arg.pagefault.flags
	msgOffAddress  = 16     // arg.pagefault.address
	msgOffPTID     = 24     // arg.pagefault.feat.ptid
	pageFaultWrite = 1 << 0 // UFFD_PAGEFAULT_FLAG_WRITE
	pageFaultWP    = 1 << 1 // UFFD_PAGEFAULT_FLAG_WP
)

// apiArg is struct uffdio_api.
type apiArg struct {
	API      uint64
	Features uint64
	Ioctls   uint64
}

// rangeArg is struct uffdio_range.
type rangeArg struct {
	Start uint64
	Len   uint64
}

// registerArg is struct uffdio_register.
type registerArg struct {
	Range  rangeArg
	Mode   uint64
	Ioctls uint64
}

// zeroPageArg is struct uffdio_zeropage.
type zeroPageArg struct {
	Range    rangeArg
	Mode     uint64
	ZeroPage int64 // bytes zero-filled, or a negated errno
}

// writeProtectArg is struct uffdio_writeprotect.
type writeProtectArg struct {
	Range rangeArg
	Mode  uint64
}
