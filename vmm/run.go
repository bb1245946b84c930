package vmm

import (
	"errors"
	"fmt"
	"log"
	"runtime"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferryvmm/ferry/kvm"
)

// Start runs every vCPU on its own OS thread.
func (m *Machine) Start() error { return m.start(false) }

// StartPaused starts the machine paused, as a guest its user paused
// arrives from a migration or a snapshot: every vCPU thread parks before it
// first enters the guest, and the devices stay quiet (they start paused),
// until Resume. It returns once every vCPU is parked, so Paused is true.
func (m *Machine) StartPaused() error { return m.start(true) }

func (m *Machine) start(paused bool) error {
	m.ctl.Lock()
	defer m.ctl.Unlock()
	if m.started {
		return errors.New("machine already started")
	}
	m.started = true
	if paused {
		m.pauseReq = true
	} else {
		m.resumeDevices()
	}
	for _, v := range m.vcpus {
		m.wg.Add(1)
		go m.runVCPU(v)
	}
	go m.reap()
	for paused && m.parked < len(m.vcpus) && !m.stopping {
		m.cond.Wait()
	}
	return nil
}

// stopKickInterval is how often a stopping machine re-kicks the vCPUs whose
// threads have not ended yet.
const stopKickInterval = 50 * time.Millisecond

// reap closes m.done once every vCPU thread has ended. From the first stop
// on, it kicks every vCPU again each stopKickInterval until then: one lost
// or failed kick must not leave a vCPU in KVM_RUN and Wait hanging.
func (m *Machine) reap() {
	threads := make(chan struct{})
	go func() {
		m.wg.Wait()
		close(threads)
	}()
	select {
	case <-threads:
	case <-m.stopReq:
		t := time.NewTicker(stopKickInterval)
		reported := make([]bool, len(m.vcpus))
	kicking:
		for {
			m.kickAll(reported)
			select {
			case <-threads:
				break kicking
			case <-t.C:
			}
		}
		t.Stop()
	}
	close(m.done)
}

// kickAll kicks every vCPU. A kick that failed with EAGAIN is simply
// tried again by the caller's next round; any other failure is logged,
// once per vCPU (reported), since that vCPU may not leave KVM_RUN.
func (m *Machine) kickAll(reported []bool) {
	for i, v := range m.vcpus {
		err := m.kick(v)
		if err == nil || errors.Is(err, unix.EAGAIN) || reported[i] {
			continue
		}
		reported[i] = true
		log.Printf("vCPU %d may not leave the guest: %v (kicking it again)", v.ID, err)
	}
}

// Wait blocks until every vCPU has stopped and says why the machine stopped.
func (m *Machine) Wait() Exit {
	<-m.done
	m.ctl.Lock()
	defer m.ctl.Unlock()
	return *m.exit
}

// Done is closed when every vCPU has stopped.
func (m *Machine) Done() <-chan struct{} { return m.done }

// Stop ends the machine from outside (the user quit, or the guest moved to
// another host): every vCPU leaves KVM_RUN and its thread ends.
func (m *Machine) Stop(reason string) { m.stop(Exit{Reason: reason}) }

// stop records the first exit and has every vCPU kicked out of the guest
// (reap kicks until every vCPU thread has ended).
func (m *Machine) stop(e Exit) {
	m.ctl.Lock()
	defer m.ctl.Unlock()
	if m.exit == nil {
		m.exit = &e
	}
	if !m.stopping {
		m.stopping = true
		close(m.stopReq)
		for _, f := range m.stopHooks {
			go f() // may unblock vCPUs (post-copy), which can take a while
		}
	}
	m.cond.Broadcast()
}

// onStop registers f to run when the machine starts to stop.
func (m *Machine) onStop(f func()) {
	m.ctl.Lock()
	defer m.ctl.Unlock()
	m.stopHooks = append(m.stopHooks, f)
}

// runVCPU is one vCPU's thread: enter the guest, handle the exit, repeat.
//
// Only this thread runs v (KVM_RUN) and reads or writes its exit data;
// handleExit reaches the devices through the port and MMIO buses, which
// lock for themselves. Other goroutines touch v only through m.kick (at
// any time), and read or write its state only while it is parked here
// (SaveState, RestoreState before Start). The machine's run state is
// shared: park reads and writes it under m.ctl.
func (m *Machine) runVCPU(v *kvm.VCPU) {
	defer m.wg.Done()
	// The thread stays locked until the goroutine ends, so the OS thread
	// is retired with it and Kick never signals a thread reused by others.
	runtime.LockOSThread()
	v.BindThread()
	defer v.UnbindThread()
	// A machine started paused parks here, before the guest ever runs.
	if !m.park() {
		return
	}
	for {
		err := v.Run()
		if errors.Is(err, kvm.ErrInterrupted) {
			// KVM has completed any pending I/O by now, so parking here
			// leaves a consistent vCPU state for SaveState.
			v.ClearImmediateExit()
			m.throttleSleep(v.ID)
			if !m.park() {
				return
			}
			continue
		}
		if errors.Is(err, kvm.ErrAgain) {
			continue
		}
		if err != nil {
			m.stop(Exit{Reason: "KVM_RUN failed", Err: err})
			return
		}
		if e := m.handleExit(v); e != nil {
			m.stop(*e)
			return
		}
	}
}

// park holds a vCPU while a pause is requested. It returns false when the
// machine is stopping.
func (m *Machine) park() bool {
	m.ctl.Lock()
	defer m.ctl.Unlock()
	if !m.pauseReq || m.stopping {
		return !m.stopping
	}
	m.parked++
	m.cond.Broadcast()
	for m.pauseReq && !m.stopping {
		m.cond.Wait()
	}
	m.parked--
	return !m.stopping
}

// handleExit dispatches one exit; a non-nil result stops the machine.
func (m *Machine) handleExit(v *kvm.VCPU) *Exit {
	reason := v.ExitReason()
	switch reason {
	case kvm.ExitIO:
		io := v.IO()
		if io.Size == 0 || len(io.Data) != io.Size*io.Count {
			return m.fatal(v, reason, fmt.Errorf("malformed I/O exit: port %#x size %d count %d", io.Port, io.Size, io.Count))
		}
		for i := 0; i < io.Count; i++ {
			d := io.Data[i*io.Size : (i+1)*io.Size]
			if io.Out {
				m.ports.Write(io.Port, d)
			} else {
				m.ports.Read(io.Port, d)
			}
		}
	case kvm.ExitMMIO:
		mm := v.MMIO()
		if mm.Write {
			m.mmio.Write(mm.Addr, mm.Data)
		} else {
			m.mmio.Read(mm.Addr, mm.Data) // all ones where nothing is mapped
		}
	case kvm.ExitHLT:
		// Only without an in-kernel LAPIC; ours has one, so a HLT exit
		// means the guest halted with interrupts off for good.
		return &Exit{Reason: "guest halted"}
	case kvm.ExitShutdown:
		// A triple fault: how Linux resets when other methods fail.
		return &Exit{Reason: "guest reset (triple fault)"}
	case kvm.ExitSystemEvent:
		switch t := v.SystemEvent(); t {
		case 1:
			return &Exit{Reason: "guest powered off"}
		case 2:
			return &Exit{Reason: "guest reset"}
		default:
			return m.fatal(v, reason, fmt.Errorf("system event %d (guest crash)", t))
		}
	case kvm.ExitInternalError:
		return m.fatal(v, reason, fmt.Errorf("KVM could not emulate an instruction: %v", v.InternalError()))
	case kvm.ExitFailEntry:
		return m.fatal(v, reason, fmt.Errorf("VM entry failed, hardware reason %#x", v.FailEntry()))
	default:
		return m.fatal(v, reason, errors.New("unexpected exit"))
	}
	return nil
}

// fatal builds the exit for an error the guest cannot continue after,
// naming the exit reason and the guest RIP.
func (m *Machine) fatal(v *kvm.VCPU, reason uint32, err error) *Exit {
	rip := "unknown"
	if regs, rerr := v.Regs(); rerr == nil {
		rip = fmt.Sprintf("%#x", regs.RIP)
	}
	return &Exit{
		Reason: "fatal exit",
		Err:    fmt.Errorf("vCPU %d: KVM_EXIT_%s at RIP %s: %w", v.ID, kvm.ExitName(reason), rip, err),
	}
}

// pauseKickInterval is how often Pause re-kicks vCPUs that have not parked
// yet (a kick only misses a vCPU that is between exits, and immediate_exit
// catches that one, so this is a safety net).
const pauseKickInterval = 50 * time.Millisecond

// Pause stops every vCPU outside KVM_RUN and returns once all are parked.
// Devices stay attached; guest memory does not change until Resume.
func (m *Machine) Pause() error {
	m.ctl.Lock()
	if !m.started || m.stopping {
		m.ctl.Unlock()
		return errors.New("machine is not running")
	}
	// A second caller during a pause in progress waits for it too.
	m.pauseReq = true
	m.ctl.Unlock()
	reported := make([]bool, len(m.vcpus))
	for {
		m.kickAll(reported)
		m.ctl.Lock()
		all := m.parked == len(m.vcpus) || m.stopping
		stopping := m.stopping
		if !all {
			// Wait for a vCPU to park, or re-kick after an interval.
			t := time.AfterFunc(pauseKickInterval, func() {
				m.ctl.Lock()
				m.cond.Broadcast()
				m.ctl.Unlock()
			})
			m.cond.Wait()
			t.Stop()
			all = m.parked == len(m.vcpus) || m.stopping
			stopping = m.stopping
		}
		m.ctl.Unlock()
		if stopping {
			return errors.New("machine stopped while pausing")
		}
		if all {
			m.pauseDevices()
			return nil
		}
	}
}

// Resume restarts vCPUs parked by Pause.
func (m *Machine) Resume() error {
	m.ctl.Lock()
	defer m.ctl.Unlock()
	if m.stopping {
		return errors.New("machine is stopped")
	}
	m.resumeDevices()
	m.pauseReq = false
	m.cond.Broadcast()
	return nil
}

// Paused reports whether every vCPU is parked.
func (m *Machine) Paused() bool {
	m.ctl.Lock()
	defer m.ctl.Unlock()
	return m.pauseReq && m.parked == len(m.vcpus)
}
