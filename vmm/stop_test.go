package vmm

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ferryvmm/ferry/kvm"
	"golang.org/x/sys/unix"
)

// lossyKick loses the first n kicks of every vCPU: with err nil the kick
// silently does nothing (a signal that never arrived), else it fails with
// err before signalling.
func lossyKick(n int, err error) (func(*kvm.VCPU) error, func() int) {
	var mu sync.Mutex
	lost := map[int]int{}
	total := 0
	kick := func(v *kvm.VCPU) error {
		mu.Lock()
		if lost[v.ID] < n {
			lost[v.ID]++
			total++
			mu.Unlock()
			return err
		}
		mu.Unlock()
		return v.Kick()
	}
	count := func() int { mu.Lock(); defer mu.Unlock(); return total }
	return kick, count
}

// TestMachineStopLostKick: Stop must end a machine whose vCPUs spin in the
// guest (they never exit on their own) even when the first kicks are lost
// or fail with EAGAIN: it kicks again until every vCPU thread has ended.
func TestMachineStopLostKick(t *testing.T) {
	for _, c := range []struct {
		name string
		err  error
	}{
		{"lost", nil},
		{"EAGAIN", fmt.Errorf("kick: %w", unix.EAGAIN)},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := bootMachine(t, Config{Memory: 16 << 20, CPUs: 2}, counterLoop)
			if err := m.Start(); err != nil {
				t.Fatal(err)
			}
			waitCounter(t, m, 0, "after Start")
			kick, lost := lossyKick(2, c.err)
			m.kick = kick
			m.Stop("test stop")
			select {
			case <-m.Done():
			case <-time.After(10 * time.Second):
				t.Fatalf("machine still running 10 s after Stop (%d kicks lost)", lost())
			}
			if e := m.Wait(); e.Reason != "test stop" || e.Err != nil {
				t.Errorf("exit %+v, want reason \"test stop\" and no error", e)
			}
			if lost() != 4 {
				t.Errorf("%d kicks lost, want 4 (2 per vCPU)", lost())
			}
		})
	}
}
