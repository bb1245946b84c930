package uffd

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// maxNoProgress bounds the retries of a UFFDIO_COPY or UFFDIO_ZEROPAGE
// that fails with EAGAIN having placed nothing (the kernel says the
// mapping is changing under it).
const maxNoProgress = 100

// Copy places src in the missing pages dst (whole aligned pages of a range
// registered in ModeMissing, len(src) == len(dst)) atomically, page by
// page, and wakes the threads blocked on them.
//
// A page that is already there (EEXIST: an earlier Copy or ZeroPage placed
// it, typically because one page faulted twice and both faults were
// served) is left as it is; existed then says so, and Copy wakes the
// whole of dst, since the kernel does not wake on EEXIST and a thread may
// still wait on that page.
func (u *UFFD) Copy(dst, src []byte) (existed bool, err error) {
	a, err := checkRange("UFFDIO_COPY", dst)
	if err != nil {
		return false, err
	}
	if len(src) != len(dst) {
		return false, fmt.Errorf("UFFDIO_COPY %#x+%#x: source of %d bytes", a, len(dst), len(src))
	}
	err = u.use(func(fd int) error {
		existed, err = fill(len(dst), func(off int) (int64, error) {
			return copyIoctl(fd, a+uintptr(off), src[off:], 0)
		})
		return err
	})
	if err != nil {
		return existed, fmt.Errorf("UFFDIO_COPY %#x+%#x: %w", a, len(dst), err)
	}
	if existed {
		return true, u.Wake(dst)
	}
	return false, nil
}

// ZeroPage maps zero pages at dst (whole aligned pages of a range
// registered in ModeMissing) and wakes the threads blocked on them. Pages
// already there are left as they are, as by Copy.
func (u *UFFD) ZeroPage(dst []byte) (existed bool, err error) {
	a, err := checkRange("UFFDIO_ZEROPAGE", dst)
	if err != nil {
		return false, err
	}
	err = u.use(func(fd int) error {
		existed, err = fill(len(dst), func(off int) (int64, error) {
			z := zeroPageArg{Range: rangeArg{Start: uint64(a) + uint64(off), Len: uint64(len(dst) - off)}}
			err := ioctlPtr(fd, reqZeroPage, &z)
			return z.ZeroPage, err
		})
		return err
	})
	if err != nil {
		return existed, fmt.Errorf("UFFDIO_ZEROPAGE %#x+%#x: %w", a, len(dst), err)
	}
	if existed {
		return true, u.Wake(dst)
	}
	return false, nil
}

// fill drives a UFFDIO_COPY or UFFDIO_ZEROPAGE of n bytes to its end.
// call places the bytes from off on and returns the kernel's count (bytes
// placed, or a negated errno) and error. The kernel stops at the first
// page it cannot place: after some progress it says EAGAIN with the count
// placed; at once it gives the page's own error. An existing page
// (EEXIST) is skipped and reported.
func fill(n int, call func(off int) (int64, error)) (existed bool, err error) {
	off, stuck := 0, 0
	for off < n {
		done, err := call(off)
		if done > 0 {
			off += int(done)
			stuck = 0
		}
		switch {
		case err == nil:
			if off != n {
				return existed, fmt.Errorf("placed %d of %d bytes", off, n)
			}
		case errors.Is(err, unix.EEXIST):
			existed = true
			off += PageSize
		case errors.Is(err, unix.EAGAIN):
			if done <= 0 {
				if stuck++; stuck > maxNoProgress {
					return existed, fmt.Errorf("no progress at byte %d after %d tries: %w", off, stuck, err)
				}
			}
		default:
			return existed, fmt.Errorf("at byte %d: %w", off, err)
		}
	}
	return existed, nil
}

// Wake wakes the threads blocked on faults in dst (whole aligned pages)
// without placing anything: they retry the access, and fault again if the
// page is still missing.
func (u *UFFD) Wake(dst []byte) error {
	a, err := checkRange("UFFDIO_WAKE", dst)
	if err != nil {
		return err
	}
	r := rangeArg{Start: uint64(a), Len: uint64(len(dst))}
	if err := u.use(func(fd int) error { return ioctlPtr(fd, reqWake, &r) }); err != nil {
		return fmt.Errorf("UFFDIO_WAKE %#x+%#x: %w", a, len(dst), err)
	}
	return nil
}

// WriteProtect sets (on) or clears the write protection of the present
// pages mem of a range registered in ModeWP. A write to a protected page
// faults with Fault.WP; clearing the protection wakes its writers.
func (u *UFFD) WriteProtect(mem []byte, on bool) error {
	a, err := checkRange("UFFDIO_WRITEPROTECT", mem)
	if err != nil {
		return err
	}
	w := writeProtectArg{Range: rangeArg{Start: uint64(a), Len: uint64(len(mem))}}
	if on {
		w.Mode = wpModeWP
	}
	if err := u.use(func(fd int) error { return ioctlPtr(fd, reqWriteProtect, &w) }); err != nil {
		return fmt.Errorf("UFFDIO_WRITEPROTECT %#x+%#x on=%v: %w", a, len(mem), on, err)
	}
	return nil
}
