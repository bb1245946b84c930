package kvm

import (
	"errors"
	"fmt"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// ErrInterrupted is returned by Run when KVM_RUN returned EINTR: a signal
// reached the vCPU thread, or immediate_exit was set. KVM has completed any
// pending I/O or MMIO by then, so vCPU state may be read.
var ErrInterrupted = errors.New("KVM_RUN interrupted")

// ErrAgain is returned by Run when KVM_RUN returned EAGAIN: an application
// processor waiting for INIT/SIPI was woken and must simply run again.
var ErrAgain = errors.New("KVM_RUN: run again")

// KickSignal is the signal sent to a vCPU thread to make KVM_RUN return. The
// Go runtime already handles SIGURG (async preemption) and tolerates
// spurious ones, so no handler is needed and nothing else notices.
const KickSignal = unix.SIGURG

// VCPU is one virtual CPU. Run must be called from a goroutine locked to its
// OS thread (runtime.LockOSThread); Kick may be called from anywhere.
//
// Threads: only the vCPU's own thread calls Run and reads or writes the
// exit data in run (ExitReason, IO, MMIO, InternalError, SystemEvent,
// FailEntry), between two Runs. Kick, from any thread, touches only
// run's immediate_exit byte and reads tid. The state ioctls (state.go,
// vcpustate.go) may come from any thread while the vCPU is outside
// KVM_RUN (KVM would make them wait for KVM_RUN to return otherwise).
type VCPU struct {
	ID  int
	fd  int
	vm  *VM
	run []byte       // the kvm_run mapping; unmapped by Close, after the last Kick
	tid atomic.Int32 // thread in Run, or 0: set by that thread, read by Kick
}

// CreateVCPU creates vCPU id and maps its kvm_run area.
func (vm *VM) CreateVCPU(id int) (*VCPU, error) {
	fd, err := ioctlVal(vm.fd, reqCreateVCPU, uintptr(id))
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VCPU %d: %w", id, err)
	}
	run, err := mmapRun(int(fd), vm.sys.mmapSize)
	if err != nil {
		unix.Close(int(fd))
		return nil, fmt.Errorf("mmap kvm_run of vCPU %d: %w", id, err)
	}
	return &VCPU{ID: id, fd: int(fd), vm: vm, run: run}, nil
}

// Close unmaps kvm_run and closes the vCPU.
func (v *VCPU) Close() error {
	if v.run != nil {
		unix.Munmap(v.run)
		v.run = nil
	}
	return unix.Close(v.fd)
}

// BindThread records the calling OS thread as this vCPU's thread, so Kick
// can signal it. Call it once, after runtime.LockOSThread.
func (v *VCPU) BindThread() { v.tid.Store(int32(unix.Gettid())) }

// UnbindThread forgets the vCPU's thread; call it on that thread before
// the thread ends, so that Kick no longer signals it.
func (v *VCPU) UnbindThread() { v.tid.Store(0) }

// Run enters the guest until the next exit. It returns ErrInterrupted when
// KVM_RUN returns EINTR (gokvm's Run returns nil there and leaves a stale
// exit reason); the caller must then not dispatch ExitReason.
func (v *VCPU) Run() error {
	if err := runIoctl(v.fd); err != nil {
		if errors.Is(err, unix.EINTR) {
			return ErrInterrupted
		}
		if errors.Is(err, unix.EAGAIN) {
			return ErrAgain
		}
		return fmt.Errorf("KVM_RUN vCPU %d: %w", v.ID, err)
	}
	return nil
}

// Kick makes the vCPU leave KVM_RUN soon: it sets immediate_exit (so a
// KVM_RUN about to start returns EINTR at once) and signals the vCPU's
// thread (so one in progress returns EINTR). It returns the error of the
// signal (wrapping unix.EAGAIN when the caller should try again); a vCPU
// in KVM_RUN whose signal failed does not leave it.
func (v *VCPU) Kick() error {
	setImmediateExit(v.run, 1)
	tid := v.tid.Load()
	if tid == 0 {
		return nil
	}
	err := unix.Tgkill(unix.Getpid(), int(tid), KickSignal)
	if errors.Is(err, unix.ESRCH) && v.tid.Load() != tid {
		return nil // the thread unbound and ended meanwhile: it is out
	}
	if err != nil {
		return fmt.Errorf("kick vCPU %d (thread %d): %w", v.ID, tid, err)
	}
	return nil
}

// ClearImmediateExit re-arms KVM_RUN after a kick.
func (v *VCPU) ClearImmediateExit() {
	setImmediateExit(v.run, 0)
}

// ExitReason is kvm_run.exit_reason after a successful Run.
func (v *VCPU) ExitReason() uint32 { return runHeader(v.run).ExitReason }

// Exit reasons ferry handles.
const (
	ExitUnknown       = 0
	ExitException     = 1
	ExitIO            = 2
	ExitHypercall     = 3
	ExitDebug         = 4
	ExitHLT           = 5
	ExitMMIO          = 6
	ExitIRQWindowOpen = 7
	ExitShutdown      = 8
	ExitFailEntry     = 9
	ExitIntr          = 10
	ExitInternalError = 17
	ExitSystemEvent   = 24
)

// ExitName names an exit reason for messages.
func ExitName(r uint32) string {
	names := map[uint32]string{
		ExitUnknown: "UNKNOWN", ExitException: "EXCEPTION", ExitIO: "IO", ExitHypercall: "HYPERCALL",
		ExitDebug: "DEBUG", ExitHLT: "HLT", ExitMMIO: "MMIO", ExitIRQWindowOpen: "IRQ_WINDOW_OPEN",
		ExitShutdown: "SHUTDOWN", ExitFailEntry: "FAIL_ENTRY", ExitIntr: "INTR",
		ExitInternalError: "INTERNAL_ERROR", ExitSystemEvent: "SYSTEM_EVENT",
	}
	if n, ok := names[r]; ok {
		return n
	}
	return fmt.Sprintf("exit %d", r)
}

// IOExit describes a KVM_EXIT_IO: Count items of Size bytes each at port
// Port; Data is the buffer inside kvm_run to read (Out) or fill (in).
type IOExit struct {
	Out   bool
	Size  int
	Port  uint16
	Count int
	Data  []byte
}

// IO decodes the current KVM_EXIT_IO.
func (v *VCPU) IO() IOExit {
	e := runHeader(v.run).Exit[:]
	dir, size := e[0], int(e[1])
	port := uint16(e[2]) | uint16(e[3])<<8
	count := int(le32(e[4:]))
	off := int(le64(e[8:]))
	n := size * count
	if off < 0 || off+n > len(v.run) || n < 0 {
		n, off = 0, 0
	}
	return IOExit{Out: dir == 1, Size: size, Port: port, Count: count, Data: v.run[off : off+n]}
}

// MMIOExit describes a KVM_EXIT_MMIO; Data (len Len) is read (write) or
// filled (read) in place.
type MMIOExit struct {
	Addr  uint64
	Data  []byte
	Write bool
}

// MMIO decodes the current KVM_EXIT_MMIO.
func (v *VCPU) MMIO() MMIOExit {
	e := runHeader(v.run).Exit[:]
	n := int(le32(e[16:]))
	if n > 8 {
		n = 8
	}
	return MMIOExit{Addr: le64(e[0:]), Data: e[8 : 8+n], Write: e[20] != 0}
}

// InternalError is the data of a KVM_EXIT_INTERNAL_ERROR.
type InternalError struct {
	Suberror uint32
	Data     []uint64
}

func (e InternalError) String() string {
	return fmt.Sprintf("suberror %d, data %#x", e.Suberror, e.Data)
}

// InternalError decodes the current KVM_EXIT_INTERNAL_ERROR.
func (v *VCPU) InternalError() InternalError {
	e := runHeader(v.run).Exit[:]
	n := int(le32(e[4:]))
	if n > 16 {
		n = 16
	}
	ie := InternalError{Suberror: le32(e[0:])}
	for i := 0; i < n; i++ {
		ie.Data = append(ie.Data, le64(e[8+8*i:]))
	}
	return ie
}

// SystemEvent returns the type of the current KVM_EXIT_SYSTEM_EVENT
// (1 shutdown, 2 reset, 3 crash).
func (v *VCPU) SystemEvent() uint32 { return le32(runHeader(v.run).Exit[0:]) }

// FailEntry returns the hardware reason of a KVM_EXIT_FAIL_ENTRY.
func (v *VCPU) FailEntry() uint64 { return le64(runHeader(v.run).Exit[0:]) }

func le32(b []byte) uint32 {
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}

func le64(b []byte) uint64 { return uint64(le32(b)) | uint64(le32(b[4:]))<<32 }

// TSCKHz returns the vCPU's TSC frequency (KVM_GET_TSC_KHZ).
func (v *VCPU) TSCKHz() (uint64, error) {
	r, err := ioctlVal(v.fd, reqGetTSCKHz, 0)
	if err != nil {
		return 0, fmt.Errorf("KVM_GET_TSC_KHZ vCPU %d: %w", v.ID, err)
	}
	return uint64(r), nil
}

// SetTSCKHz sets the vCPU's TSC frequency (KVM_SET_TSC_KHZ), used when a
// migrated guest lands on a host with another TSC rate.
func (v *VCPU) SetTSCKHz(khz uint64) error {
	if _, err := ioctlVal(v.fd, reqSetTSCKHz, uintptr(khz)); err != nil {
		return fmt.Errorf("KVM_SET_TSC_KHZ %d vCPU %d: %w", khz, v.ID, err)
	}
	return nil
}
