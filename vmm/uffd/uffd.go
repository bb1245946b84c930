// Package uffd is ferry's typed layer over Linux userfaultfd, the ground
// post-copy migration stands on: guest pages that have not arrived yet are
// registered in missing mode, an access to one (by a vCPU inside KVM_RUN,
// or by ferry's own code) blocks the faulting thread and queues a Fault,
// and the handler resolves it with Copy or ZeroPage, which wakes the thread.
//
// It works on anonymous private mappings (ferry's guest RAM, see
// vmm.Memory), in whole 4 KiB pages. Errors wrap the errno with %w.
//
//	uffd.go         Open (system call, else /dev/userfaultfd; the API handshake),
//	                Register, Unregister, Close
//	resolve.go      Copy, ZeroPage, Wake, WriteProtect
//	events.go       Fault, Next (blocking, stoppable), Stop, Offset
//	drop.go         DropPages: MADV_DONTNEED, so that the next access faults
//	abi.go          the kernel's numbers and structures
//	uffd_unsafe.go  the ioctls with pointer arguments, uffdio_copy, addresses
//
// Who faults, and what a user must know:
//
//   - vCPU threads, inside KVM_RUN. On the development machines' emulating
//     KVM a kick (signal) does not end the wait: KVM_RUN returns EINTR only
//     once the page is served, so pausing a vCPU waits for its page.
//
//   - ferry's own goroutines that touch guest memory. Go code must not
//     touch a page that may be missing: one blocked in copy() cannot be
//     preempted, and a garbage collection starting meanwhile hangs the
//     whole process, handler included (gc_test.go). Fetch the page first,
//     or reach guest memory through a system call (read(2), write(2)).
//
//   - A fault nobody resolves blocks its thread for good; Unregister or
//     Close instead lets it go on with a zero page (lifecycle_test.go).
//
//   - One page can raise several faults (signals, several threads): Copy
//     and ZeroPage report existed for the later ones and wake anyway.
package uffd

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// PageSize is the unit of every range: the base page size of x86-64.
const PageSize = 4096

// DevicePath is the device that hands out userfaultfds when the system
// call is refused (Linux 6.1 and later; access to it is the permission).
const DevicePath = "/dev/userfaultfd"

// Feature is a set of UFFD_FEATURE_* bits asked for at Open.
type Feature uint64

const (
	// FeatureWP lets Register use ModeWP (UFFD_FEATURE_PAGEFAULT_FLAG_WP).
	FeatureWP Feature = 1 << 0
	// FeatureThreadID fills Fault.TID (UFFD_FEATURE_THREAD_ID).
	FeatureThreadID Feature = 1 << 8
	// FeatureExactAddress keeps the offset in the page in Fault.Addr
	// (UFFD_FEATURE_EXACT_ADDRESS); without it the kernel rounds down.
	FeatureExactAddress Feature = 1 << 11
)

var featureNames = []struct {
	f    Feature
	name string
}{{FeatureWP, "PAGEFAULT_FLAG_WP"}, {FeatureThreadID, "THREAD_ID"}, {FeatureExactAddress, "EXACT_ADDRESS"}}

func (f Feature) String() string {
	var names []string
	for _, n := range featureNames {
		if f&n.f != 0 {
			names = append(names, n.name)
			f &^= n.f
		}
	}
	if f != 0 {
		names = append(names, fmt.Sprintf("%#x", uint64(f)))
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, "|")
}

// Mode is how a range is registered (UFFDIO_REGISTER_MODE_*).
type Mode uint64

const (
	// ModeMissing: an access to a page that is not there faults.
	ModeMissing Mode = 1 << 0
	// ModeWP: a write to a page write-protected with WriteProtect faults
	// (needs FeatureWP).
	ModeWP Mode = 1 << 1
)

// Errors of Next.
var (
	ErrStopped = errors.New("userfaultfd reader stopped")
	ErrClosed  = errors.New("userfaultfd closed")
)

// UFFD is one userfaultfd. Its methods are safe for concurrent use.
type UFFD struct {
	features Feature // enabled at Open
	how      string  // where the fd came from, for errors

	// mu guards fd and stopfd against Close: every method holds it for
	// reading while it uses them, Close for writing.
	mu     sync.RWMutex
	fd     int
	stopfd int  // eventfd: readable once Stop was called
	closed bool // fd and stopfd are closed

	stopped atomic.Bool

	// readMu serialises readers (Next) and guards buf and pending.
	readMu  sync.Mutex
	buf     [16 * msgSize]byte
	pending []byte // messages read but not yet returned
}

// opener makes a new userfaultfd with flags; how names it for errors.
type opener struct {
	how  string
	open func(flags int) (int, error)
}

var openers = []opener{
	{"the userfaultfd system call", openSyscall},
	{DevicePath, openDevice},
}

// Open makes a userfaultfd (close-on-exec, non-blocking) and enables the
// features want, failing if the kernel does not offer them all. It tries
// the userfaultfd system call first (needs CAP_SYS_PTRACE unless
// vm.unprivileged_userfaultfd is 1), then DevicePath.
//
// It never passes UFFD_USER_MODE_ONLY: with it, a fault taken inside the
// kernel (KVM reaching guest memory for a vCPU, a system call reading it)
// raises no event, and KVM reports a bogus MMIO exit instead.
func Open(want Feature) (*UFFD, error) { return open(want, openers) }

func open(want Feature, from []opener) (*UFFD, error) {
	if os.Getpagesize() != PageSize {
		return nil, fmt.Errorf("userfaultfd: page size is %d, not %d", os.Getpagesize(), PageSize)
	}
	fd, how, err := newFD(from)
	if err != nil {
		return nil, err
	}
	if err := handshake(fd, want, from); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("userfaultfd from %s: %w", how, err)
	}
	stopfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("userfaultfd: eventfd to stop readers: %w", err)
	}
	return &UFFD{fd: fd, stopfd: stopfd, features: want, how: how}, nil
}

// newFD returns a userfaultfd from the first opener that works, or an
// error that names every attempt.
func newFD(from []opener) (int, string, error) {
	var format []string
	var errs []any
	for _, o := range from {
		fd, err := o.open(unix.O_CLOEXEC | unix.O_NONBLOCK)
		if err == nil {
			return fd, o.how, nil
		}
		format = append(format, o.how+": %w")
		errs = append(errs, err)
	}
	return -1, "", fmt.Errorf("no userfaultfd (it needs root, CAP_SYS_PTRACE, vm.unprivileged_userfaultfd=1 or read-write access to "+DevicePath+"): "+strings.Join(format, "; "), errs...)
}

func openSyscall(flags int) (int, error) {
	fd, _, errno := unix.Syscall(unix.SYS_USERFAULTFD, uintptr(flags), 0, 0)
	if errno != 0 {
		return -1, errno
	}
	return int(fd), nil
}

func openDevice(flags int) (int, error) {
	dev, err := unix.Open(DevicePath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	defer unix.Close(dev)
	fd, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(dev), reqNewFD, uintptr(flags))
	if errno != 0 {
		return -1, fmt.Errorf("USERFAULTFD_IOC_NEW: %w", errno)
	}
	return int(fd), nil
}

// handshake is UFFDIO_API: the API version and the features want. A
// kernel refuses features it does not have (EINVAL); a fresh descriptor
// then asks for none, to name the missing ones.
func handshake(fd int, want Feature, from []opener) error {
	a := apiArg{API: apiVersion, Features: uint64(want)}
	if err := ioctlPtr(fd, reqAPI, &a); err != nil {
		if errors.Is(err, unix.EINVAL) && want != 0 {
			if offered, perr := probe(from); perr == nil && want&^offered != 0 {
				return fmt.Errorf("UFFDIO_API: the kernel does not offer feature %v (it offers %v): %w", want&^offered, offered, err)
			}
		}
		return fmt.Errorf("UFFDIO_API (features %v): %w", want, err)
	}
	if missing := want &^ Feature(a.Features); missing != 0 {
		return fmt.Errorf("UFFDIO_API: feature %v not granted", missing)
	}
	const need = ioctlRegister | ioctlUnregister | ioctlAPI
	if a.Ioctls&need != need {
		return fmt.Errorf("UFFDIO_API: ioctls %#x lack REGISTER or UNREGISTER", a.Ioctls)
	}
	return nil
}

// probe returns the features the kernel offers.
func probe(from []opener) (Feature, error) {
	fd, _, err := newFD(from)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	a := apiArg{API: apiVersion}
	if err := ioctlPtr(fd, reqAPI, &a); err != nil {
		return 0, err
	}
	return Feature(a.Features), nil
}

// Features are the features enabled at Open.
func (u *UFFD) Features() Feature { return u.features }

// checkRange checks that mem is a non-empty run of whole, aligned pages.
func checkRange(what string, mem []byte) (uintptr, error) {
	a := addrOf(mem)
	if len(mem) == 0 || len(mem)%PageSize != 0 || a%PageSize != 0 {
		return 0, fmt.Errorf("%s: range %#x+%#x is not whole aligned pages", what, a, len(mem))
	}
	return a, nil
}

// use runs f with the descriptor, unless the UFFD is closed.
func (u *UFFD) use(f func(fd int) error) error {
	u.mu.RLock()
	defer u.mu.RUnlock()
	if u.closed {
		return ErrClosed
	}
	return f(u.fd)
}

// Register puts mem (whole pages of an anonymous private mapping made
// with mmap, never Go heap memory) under this userfaultfd in mode, and
// checks that the kernel allows the ioctls that resolve such faults on it.
func (u *UFFD) Register(mem []byte, mode Mode) error {
	a, err := checkRange("UFFDIO_REGISTER", mem)
	if err != nil {
		return err
	}
	if mode == 0 || mode&^(ModeMissing|ModeWP) != 0 {
		return fmt.Errorf("UFFDIO_REGISTER: bad mode %#x", uint64(mode))
	}
	r := registerArg{Range: rangeArg{Start: uint64(a), Len: uint64(len(mem))}, Mode: uint64(mode)}
	if err := u.use(func(fd int) error { return ioctlPtr(fd, reqRegister, &r) }); err != nil {
		return fmt.Errorf("UFFDIO_REGISTER %#x+%#x mode %#x: %w", a, len(mem), uint64(mode), err)
	}
	need := uint64(ioctlWake)
	if mode&ModeMissing != 0 {
		need |= ioctlCopy | ioctlZeroPage
	}
	if mode&ModeWP != 0 {
		need |= ioctlWriteProtect
	}
	if r.Ioctls&need != need {
		u.Unregister(mem)
		return fmt.Errorf("UFFDIO_REGISTER %#x+%#x: the range allows ioctls %#x, not all of %#x", a, len(mem), r.Ioctls, need)
	}
	return nil
}

// Unregister takes mem out of this userfaultfd. Threads blocked on a
// fault in it are woken, and an access from then on is an ordinary one:
// a page that never arrived reads as zeros.
func (u *UFFD) Unregister(mem []byte) error {
	a, err := checkRange("UFFDIO_UNREGISTER", mem)
	if err != nil {
		return err
	}
	r := rangeArg{Start: uint64(a), Len: uint64(len(mem))}
	if err := u.use(func(fd int) error { return ioctlPtr(fd, reqUnregister, &r) }); err != nil {
		return fmt.Errorf("UFFDIO_UNREGISTER %#x+%#x: %w", a, len(mem), err)
	}
	return nil
}

// Close stops the readers (see Stop), waits for every method in progress
// to return, and closes the descriptor. The kernel then unregisters every
// range and wakes every thread blocked on a fault: each sees an ordinary
// page from then on, zeros for one that was never copied. For post-copy
// that is silent corruption, so close only after every page arrived or
// once the guest is abandoned.
func (u *UFFD) Close() error {
	u.Stop()
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return nil
	}
	u.closed = true
	err := unix.Close(u.fd)
	unix.Close(u.stopfd)
	if err != nil {
		return fmt.Errorf("close userfaultfd: %w", err)
	}
	return nil
}
