package devices

import "unsafe"

// word32 is the 32-bit word at the start of b, for atomic access to ring
// fields that the guest reads and writes concurrently. b must hold at
// least 4 bytes at a 4-byte aligned guest address (guest RAM is mapped
// page aligned, so the host address is aligned too).
func word32(b []byte) *uint32 {
	_ = b[3]
	return (*uint32)(unsafe.Pointer(&b[0]))
}
