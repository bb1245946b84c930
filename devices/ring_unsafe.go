package devices

import "unsafe"

// word32 is the 32-bit word at the start of b, for atomic access to ring
// fields that the guest reads and writes concurrently. b must hold at
// least 4 bytes at a 4-byte aligned guest address (guest RAM is mapped
// page aligned, so the host address is aligned too).
func word32(b []byte) *uint32 {
	_ = b[3]
	// SAFETY: b holds the 4 bytes (checked above), the typed pointer keeps b's array alive, and callers pass addr&^3 of page-aligned RAM, so the word is aligned.
	return (*uint32)(unsafe.Pointer(&b[0]))
}
