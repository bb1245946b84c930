package kvm

import (
	"runtime"
	"unsafe"
)

// The bitmap address in these two structures is a real pointer, not an
// integer: a bitmap may be on a goroutine stack, and a stack that grows (as
// it can at the call to ioctl) is moved. The runtime adjusts pointers into
// the stack when it moves it, never integers; the stack cannot move during
// the system call itself. (u64 in the kernel ABI; amd64 pointers are 8 bytes.)

// dirtyLog is struct kvm_dirty_log.
type dirtyLog struct {
	Slot   uint32
	_      uint32
	Bitmap unsafe.Pointer // the bitmap
}

// clearDirtyLog is struct kvm_clear_dirty_log.
type clearDirtyLog struct {
	Slot      uint32
	NumPages  uint32
	FirstPage uint64
	Bitmap    unsafe.Pointer // the bitmap
}

// getDirtyLog issues KVM_GET_DIRTY_LOG for slot into bitmap, which the
// caller checked is at least as long as the slot's whole bitmap: KVM
// writes all of it, however short the slice.
func getDirtyLog(fd int, slot uint32, bitmap []uint64) error {
	// SAFETY: KVM writes the slot's BitmapWords, which GetDirtyLog checked bitmap holds; Bitmap stays a pointer and KeepAlive keeps the array until the call returns.
	d := dirtyLog{Slot: slot, Bitmap: unsafe.Pointer(&bitmap[0])}
	_, err := ioctlPtr(fd, reqGetDirtyLog, &d)
	runtime.KeepAlive(bitmap)
	return err
}

// clearDirtyLogIoctl issues KVM_CLEAR_DIRTY_LOG for numPages pages of slot
// from first, whose bits are in bits; the caller checked that numPages
// bits fit in bits.
func clearDirtyLogIoctl(fd int, slot uint32, first uint64, numPages uint32, bits []uint64) error {
	// SAFETY: KVM reads ceil(numPages/64) words, which ClearDirtyLog checked bits holds; Bitmap stays a pointer and KeepAlive keeps the array until the call returns.
	c := clearDirtyLog{Slot: slot, NumPages: numPages, FirstPage: first, Bitmap: unsafe.Pointer(&bits[0])}
	_, err := ioctlPtr(fd, reqClearDirtyLog, &c)
	runtime.KeepAlive(bits)
	return err
}
