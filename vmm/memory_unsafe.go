package vmm

import "unsafe"

// hostAddr is the host address of a guest RAM mapping (Region.Mem), for
// KVM_SET_USER_MEMORY_REGION.
func hostAddr(mem []byte) uintptr {
	// SAFETY: mem is an mmap the GC never moves or frees; it stays mapped until Memory.Close, which Machine.Close calls after closing the VM and its slots.
	return uintptr(unsafe.Pointer(&mem[0]))
}
