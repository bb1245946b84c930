package uffd

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Fault is one page fault event: a thread is blocked on Addr until a Copy,
// ZeroPage, Wake (or WriteProtect off, for WP) covers its page.
//
// One access can raise several Faults for the same page: a thread whose
// wait is interrupted by a signal (the Go runtime's preemption signal, a
// vCPU kick) retries the access and faults again, and several threads can
// fault on one page. Serve the first; for the others Copy says existed.
type Fault struct {
	Addr  uintptr // faulting address, rounded down to its page unless FeatureExactAddress
	Write bool    // the access was a write
	WP    bool    // a write to a write-protected page (ModeWP), not a missing page
	TID   int     // the faulting thread with FeatureThreadID, else 0
}

// Page is the address of the faulting page.
func (f Fault) Page() uintptr { return f.Addr &^ (PageSize - 1) }

func (f Fault) String() string {
	kind := "read"
	if f.Write {
		kind = "write"
	}
	if f.WP {
		kind = "write-protect"
	}
	return fmt.Sprintf("%s fault at %#x (thread %d)", kind, f.Addr, f.TID)
}

// Offset says where addr lies in mem (whole aligned pages): the offset of
// its page, and whether it is in mem at all. It maps a Fault to the guest
// page of a region.
func Offset(mem []byte, addr uintptr) (int, bool) {
	base := addrOf(mem)
	if addr < base || addr-base >= uintptr(len(mem)) {
		return 0, false
	}
	return int(addr-base) &^ (PageSize - 1), true
}

// Next returns the next fault, waiting for one. It returns ErrStopped once
// Stop was called (faults still queued then stay blocked until resolved or
// until Close) and ErrClosed after Close. Readers take turns.
func (u *UFFD) Next() (Fault, error) {
	u.readMu.Lock()
	defer u.readMu.Unlock()
	u.mu.RLock()
	defer u.mu.RUnlock()
	if u.closed {
		return Fault{}, ErrClosed
	}
	for {
		if u.stopped.Load() {
			return Fault{}, ErrStopped
		}
		if len(u.pending) >= msgSize {
			msg := u.pending[:msgSize]
			u.pending = u.pending[msgSize:]
			return decode(msg)
		}
		n, err := unix.Read(u.fd, u.buf[:])
		switch {
		case err == nil && n > 0 && n%msgSize == 0:
			u.pending = u.buf[:n]
		case err == nil:
			return Fault{}, fmt.Errorf("read userfaultfd: %d bytes, not whole %d-byte messages", n, msgSize)
		case errors.Is(err, unix.EAGAIN):
			if err := u.wait(); err != nil {
				return Fault{}, err
			}
		case errors.Is(err, unix.EINTR):
		default:
			return Fault{}, fmt.Errorf("read userfaultfd: %w", err)
		}
	}
}

// wait blocks until the userfaultfd or the stop eventfd is readable.
func (u *UFFD) wait() error {
	fds := []unix.PollFd{{Fd: int32(u.fd), Events: unix.POLLIN}, {Fd: int32(u.stopfd), Events: unix.POLLIN}}
	for {
		_, err := unix.Poll(fds, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("poll userfaultfd: %w", err)
		}
		if fds[0].Revents&(unix.POLLERR|unix.POLLNVAL) != 0 {
			return fmt.Errorf("poll userfaultfd: revents %#x", fds[0].Revents)
		}
		return nil // readable, stopped, or a spurious wake-up: Next looks again
	}
}

// decode reads one uffd_msg.
func decode(msg []byte) (Fault, error) {
	le := binary.LittleEndian
	if ev := msg[msgOffEvent]; ev != eventPageFault {
		return Fault{}, fmt.Errorf("userfaultfd event %#x, not a page fault (no feature that raises it was asked for)", ev)
	}
	flags := le.Uint64(msg[msgOffFlags:])
	return Fault{
		Addr:  uintptr(le.Uint64(msg[msgOffAddress:])),
		Write: flags&pageFaultWrite != 0,
		WP:    flags&pageFaultWP != 0,
		TID:   int(le.Uint32(msg[msgOffPTID:])),
	}, nil
}

// Stop makes every Next in progress, and every later one, return
// ErrStopped, without closing the descriptor from under them; Copy,
// ZeroPage, Wake and the rest keep working. It cannot be undone.
func (u *UFFD) Stop() {
	u.stopped.Store(true)
	// Every call writes, so that a Stop that returned has woken every
	// reader, whoever else is stopping at the same time.
	u.use(func(int) error {
		var one [8]byte
		binary.NativeEndian.PutUint64(one[:], 1)
		_, err := unix.Write(u.stopfd, one[:])
		return err
	})
}
