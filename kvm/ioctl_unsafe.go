package kvm

import (
	"unsafe"

	gokvm "github.com/bobuhiro11/gokvm/kvm"
	"golang.org/x/sys/unix"
)

// The unsafe code of this package lives in this file (ioctls whose argument
// is a pointer, and the kvm_run mapping) and in dirtylog_unsafe.go (the
// dirty bitmap, whose address KVM reads from inside a structure). Every use
// of unsafe.Pointer carries a SAFETY note that says why it is sound.

// request is an ioctl request number whose argument is a *T. A request is
// built for its argument type (ior, iow, iowr, iowHead, iowrHead), so a
// wrapper cannot hand the kernel a pointer to something of another size:
// ioctlPtr takes the request and the argument together.
type request[T any] uintptr

// sizeOf is the size of a T as the kernel sees it (kvm's structures are
// laid out as in include/uapi/linux/kvm.h; kvm/abi_test.go pins the sizes).
func sizeOf[T any]() uintptr {
	var t T
	return unsafe.Sizeof(t)
}

// ior, iow and iowr build the request number nr whose argument is a T, as
// the kernel's _IOR, _IOW and _IOWR do: the size of T is part of the
// number, and the kernel copies exactly that many bytes from or to the
// argument.
func ior[T any](nr uintptr) request[T]  { return request[T](gokvm.IIOR(nr, sizeOf[T]())) }
func iow[T any](nr uintptr) request[T]  { return request[T](gokvm.IIOW(nr, sizeOf[T]())) }
func iowr[T any](nr uintptr) request[T] { return request[T](gokvm.IIOWR(nr, sizeOf[T]())) }

// iowHead and iowrHead build the request of a variable-length argument: a
// header of head bytes (the kernel's structure, which the number encodes)
// whose count says how many entries follow it. T is the header followed
// by an array of the most entries ferry ever passes; the wrappers set the
// count to at most that many (msrs, msrList, cpuid2).
func iowHead[T any](nr, head uintptr) request[T]  { return request[T](gokvm.IIOW(nr, head)) }
func iowrHead[T any](nr, head uintptr) request[T] { return request[T](gokvm.IIOWR(nr, head)) }

// ioctlPtr issues req with the address of arg, retrying on EINTR.
func ioctlPtr[T any](fd int, req request[T], arg *T) (uintptr, error) {
	// SAFETY: req was built for a T, so the kernel touches only *arg; ioctl passes it as a pointer into the system call.
	return ioctl(fd, uintptr(req), unsafe.Pointer(arg))
}

// ioctl issues one ioctl whose argument is a pointer. The pointer stays an
// unsafe.Pointer until this call, so the object it points to stays alive
// and unmoved for the duration of the system call.
//
// A signal can interrupt a slow ioctl (KVM_CREATE_VM allocating, say) with
// EINTR, and the Go runtime sends its threads SIGURG for preemption at any
// time, so every ioctl but KVM_RUN is simply retried (see runIoctl).
func ioctl(fd int, req uintptr, arg unsafe.Pointer) (uintptr, error) {
	return retryEINTR(func() (uintptr, unix.Errno) {
		// SAFETY: converted to uintptr in the Syscall call expression, so arg's object stays alive and in place until it returns (unsafe.Pointer rule 4).
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

// retryEINTR repeats call while it fails with EINTR.
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
	_ = run[sizeOf[runData]()-1] // the header lies inside the mapping
	// SAFETY: run is the kvm_run mmap (page aligned, unmapped only by Close), checked above to hold a runData, whose layout is kvm_run's head.
	return (*runData)(unsafe.Pointer(&run[0]))
}

// setImmediateExit writes kvm_run.immediate_exit. The store may come from
// any thread; KVM reads the byte when KVM_RUN starts. x86 byte stores are
// atomic, and the store goes to shared memory the compiler cannot elide.
func setImmediateExit(run []byte, v uint8) {
	runHeader(run).ImmediateExit = v
}
