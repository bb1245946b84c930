package main

import "unsafe"

// addressOf is the address of mem's first byte, to find its mapping in
// /proc/self/smaps. SAFETY: only the number is used, never turned back
// into a pointer; mem is a live mmap that is never moved.
func addressOf(mem []byte) uint64 {
	return uint64(uintptr(unsafe.Pointer(&mem[0])))
}
