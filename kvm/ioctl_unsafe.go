package kvm

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioctl issues one ioctl whose argument is a pointer. The pointer stays an
// unsafe.Pointer until this call, so the object it points to stays alive
// and unmoved for the duration of the system call.
//
// A signal can interrupt a slow ioctl (KVM_CREATE_VM allocating, say) with
// EINTR, and the Go runtime sends its threads SIGURG for preemption at any
// time, so every ioctl but KVM_RUN is simply retried (see runIoctl).
func ioctl(fd int, req uintptr, arg unsafe.Pointer) (uintptr, error) {
	return retryEINTR(func() (uintptr, unix.Errno) {
		r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
		return r, errno
	})
}

// ioctlVal issues one ioctl whose argument is a plain integer, retrying
// on EINTR like ioctl.
func ioctlVal(fd int, req uintptr, arg uintptr) (uintptr, error) {
	return retryEINTR(func() (uintptr, unix.Errno) {
		r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
		return r, errno
	})
}

// retryEINTR repeats call while it fails with EINTR. (The pointer to
// uintptr conversion stays inside each Syscall call expression, as the
// unsafe.Pointer rules require; the closure keeps the pointer alive.)
func retryEINTR(call func() (uintptr, unix.Errno)) (uintptr, error) {
	for {
		r, errno := call()
		switch errno {
		case 0:
			return r, nil
		case unix.EINTR:
			continue
		}
		return r, errno
	}
}

// runIoctl issues KVM_RUN once: its EINTR is how a kicked vCPU leaves the
// guest, so it is returned, never retried.
func runIoctl(fd int) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), reqRun, 0)
	if errno != 0 {
		return errno
	}
	return nil
}

// mmapRun maps a vCPU's kvm_run area.
func mmapRun(fd, size int) ([]byte, error) {
	return unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
}

// runHeader views the start of a kvm_run area as its fixed header.
func runHeader(run []byte) *runData {
	return (*runData)(unsafe.Pointer(&run[0]))
}

// bitmapPtr returns the address of a dirty bitmap for struct kvm_dirty_log
// and kvm_clear_dirty_log. It must stay an unsafe.Pointer (see dirtyLog).
func bitmapPtr(b []uint64) unsafe.Pointer {
	return unsafe.Pointer(&b[0])
}

// setImmediateExit writes kvm_run.immediate_exit. The store may come from
// any thread; KVM reads the byte when KVM_RUN starts. x86 byte stores are
// atomic, and the store goes to shared memory the compiler cannot elide.
func setImmediateExit(run []byte, v uint8) {
	(*runData)(unsafe.Pointer(&run[0])).ImmediateExit = v
}
