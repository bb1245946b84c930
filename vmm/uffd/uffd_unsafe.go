package uffd

import (
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The unsafe code of this package: the ioctls whose argument is a
// pointer, the one structure that carries a pointer into Go memory
// (uffdio_copy's source), and the host address of a mapping. Every use
// of unsafe.Pointer carries a SAFETY note.

// request is an ioctl number whose argument is a *T: it is built for its
// argument type, so a call cannot hand the kernel a pointer to something
// of another size.
type request[T any] uintptr

func sizeOf[T any]() uintptr {
	var t T
	return unsafe.Sizeof(t)
}

func ior[T any](nr uintptr) request[T]  { return request[T](ioc(iocRead, nr, sizeOf[T]())) }
func iowr[T any](nr uintptr) request[T] { return request[T](ioc(iocRead|iocWrite, nr, sizeOf[T]())) }

// copyArg is struct uffdio_copy. Src stays a pointer, not an integer: the
// source may be a buffer on a goroutine stack, and the runtime adjusts
// pointers, never integers, when it moves a stack (it cannot move during
// the system call itself). Dst is in a registered anonymous mapping,
// outside the Go heap, and is only an address the kernel resolves.
type copyArg struct {
	Dst  uint64
	Src  unsafe.Pointer
	Len  uint64
	Mode uint64
	Copy int64 // bytes copied, or a negated errno
}

// ioctlPtr issues req on fd with the address of arg, retrying on EINTR
// (the Go runtime preempts threads with signals at any time).
func ioctlPtr[T any](fd int, req request[T], arg *T) error {
	for {
		// SAFETY: req was built for a T, so the kernel reads and writes only *arg; converted to uintptr in the call expression, so arg stays alive and in place until the system call returns (unsafe.Pointer rule 4).
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(unsafe.Pointer(arg)))
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return errno
		}
		return nil
	}
}

// copyIoctl issues one UFFDIO_COPY of len(src) bytes from src to the
// address dst and returns the kernel's copy field with the error.
func copyIoctl(fd int, dst uintptr, src []byte, mode uint64) (int64, error) {
	// SAFETY: the kernel reads len(src) bytes at Src, all inside src; Src stays a pointer and KeepAlive keeps src's array until the call returns.
	c := copyArg{Dst: uint64(dst), Src: unsafe.Pointer(unsafe.SliceData(src)), Len: uint64(len(src)), Mode: mode}
	err := ioctlPtr(fd, reqCopy, &c)
	runtime.KeepAlive(src)
	return c.Copy, err
}

// addrOf is the address of b's first byte, as an integer: what the kernel
// takes to name a range of this process's mappings. Go code never turns
// it back into a pointer.
func addrOf(b []byte) uintptr {
	// SAFETY: a pointer-to-integer conversion (unsafe.Pointer rule 2); the integer is only passed to the kernel or compared, never dereferenced.
	return uintptr(unsafe.Pointer(unsafe.SliceData(b)))
}
