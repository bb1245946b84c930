package kvm

import (
	"errors"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const kickBound = 5 * time.Second

// TestKickRunning: a guest in an infinite loop never exits on its own. Kick
// from another goroutine makes Run return ErrInterrupted within kickBound;
// after ClearImmediateExit the vCPU runs (and keeps running) again, and a
// second Kick stops it again. Two guests: `jmp $` (RIP must stay on the
// jmp) and `inc rbx; jmp back` (RBX must grow in each round, which shows
// the guest really ran again after ClearImmediateExit).
func TestKickRunning(t *testing.T) {
	sys := requireKVM(t)
	t.Run("jmp$", func(t *testing.T) { kickRounds(t, sys, false) })
	t.Run("counting", func(t *testing.T) { kickRounds(t, sys, true) })
}

func kickRounds(t *testing.T, sys *System, counting bool) {
	tv := newTestVM(t, sys, vmOptions{})
	if counting {
		tv.load([]byte{
			0x48, 0xFF, 0xC3, // top: inc rbx
			0xEB, 0xFB, //      jmp top
		})
	} else {
		tv.load(spinProgram())
	}

	var lastRBX uint64
	for round := 1; round <= 2; round++ {
		ran := time.Now()
		res := tv.r.start()
		// The guest must really be spinning, not exited.
		select {
		case err := <-res:
			t.Fatalf("round %d: Run returned before any kick: %v, %s", round, err, describeExit(tv.cpu, tv.cpu.ExitReason()))
		case <-time.After(300 * time.Millisecond):
		}
		tv.r.stopping.Store(true)
		start := time.Now()
		tv.cpu.Kick()
		select {
		case err := <-res:
			took := time.Since(start)
			if !errors.Is(err, ErrInterrupted) {
				t.Fatalf("round %d: Run after Kick: %v, want ErrInterrupted", round, err)
			}
			t.Logf("round %d: Run returned ErrInterrupted %v after Kick", round, took)
		case <-time.After(kickBound):
			t.Fatalf("round %d: Run did not return within %v of Kick", round, kickBound)
		}
		tv.r.stopping.Store(false)
		tv.cpu.ClearImmediateExit()
		regs, err := tv.cpu.Regs()
		if err != nil {
			t.Fatal(err)
		}
		if counting {
			if regs.RIP != codeAddr && regs.RIP != codeAddr+3 {
				t.Errorf("round %d: RIP %#x after kick, want %#x or %#x", round, regs.RIP, codeAddr, codeAddr+3)
			}
			if regs.RBX <= lastRBX {
				t.Errorf("round %d: RBX %d, was %d: the guest did not run", round, regs.RBX, lastRBX)
			}
			t.Logf("round %d: %d loop iterations in %v", round, regs.RBX-lastRBX, time.Since(ran))
			lastRBX = regs.RBX
		} else if regs.RIP != codeAddr {
			t.Errorf("round %d: RIP %#x after kick, want %#x (the jmp $)", round, regs.RIP, codeAddr)
		}
	}
	t.Logf("spurious EINTRs (not from Kick) while spinning: %d", tv.r.spurious.Load())
}

// TestKickBeforeRun: a Kick while the vCPU is outside KVM_RUN leaves
// immediate_exit set, so the next Run returns ErrInterrupted at once without
// entering the guest; ClearImmediateExit re-arms it.
func TestKickBeforeRun(t *testing.T) {
	sys := requireKVM(t)
	tv := newTestVM(t, sys, vmOptions{})
	tv.load(writerProgram(t)) // would exit by OUT after one iteration
	tv.setList(nil)

	tv.cpu.Kick()
	var err error
	start := time.Now()
	tv.r.do(func() { err = tv.cpu.Run() })
	took := time.Since(start)
	if !errors.Is(err, ErrInterrupted) {
		t.Fatalf("Run after an early Kick: %v (exit %s), want ErrInterrupted", err, ExitName(tv.cpu.ExitReason()))
	}
	if took > time.Second {
		t.Errorf("Run after an early Kick took %v, want immediate", took)
	}
	regs, err := tv.cpu.Regs()
	if err != nil {
		t.Fatal(err)
	}
	if regs.RIP != codeAddr || regs.RBX != 0 {
		t.Errorf("guest ran despite immediate_exit: RIP %#x RBX %d", regs.RIP, regs.RBX)
	}
	// A Kick from another goroutine while the vCPU thread is idle behaves
	// the same (the signal lands outside KVM_RUN and is harmless).
	done := make(chan struct{})
	go func() { tv.cpu.Kick(); close(done) }()
	<-done
	tv.r.do(func() { err = tv.cpu.Run() })
	if !errors.Is(err, ErrInterrupted) {
		t.Fatalf("second early Kick: Run %v, want ErrInterrupted", err)
	}

	tv.cpu.ClearImmediateExit()
	io := tv.runIO(tv.cpu, tv.r)
	if io.Port != portDone || io.Data[0] != 1 {
		t.Errorf("after ClearImmediateExit: OUT port %#x data %v, want %#x [1]", io.Port, io.Data, portDone)
	}
}

// TestKickReportsError: a Kick whose signal cannot be sent says so (here
// the vCPU's bound thread has ended without unbinding: ESRCH), and a vCPU
// whose thread unbound is kicked without error.
func TestKickReportsError(t *testing.T) {
	sys := requireKVM(t)
	tv := newTestVM(t, sys, vmOptions{})
	if err := tv.cpu.Kick(); err != nil {
		t.Fatalf("Kick of a live vCPU thread: %v", err)
	}
	tv.r.stop() // the locked thread ends with its goroutine
	tv.r = nil
	var err error
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if err = tv.cpu.Kick(); err != nil {
			break
		}
	}
	if !errors.Is(err, unix.ESRCH) {
		t.Fatalf("Kick of a vCPU whose thread ended: %v, want ESRCH", err)
	}
	tv.cpu.UnbindThread()
	if err := tv.cpu.Kick(); err != nil {
		t.Fatalf("Kick after UnbindThread: %v", err)
	}
}
