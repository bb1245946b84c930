package vmm

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Throttling, for a migration that does not converge (auto-converge): a
// throttled vCPU spends pct percent of every throttlePeriod out of the
// guest. A goroutine kicks each throttled vCPU at the start of every
// period and leaves it the time it owes; the vCPU thread sleeps that long
// when KVM_RUN returns, before it parks or re-enters the guest. Pause and
// Stop work as usual (a sleeping vCPU parks when its sleep ends, within
// one period).

// throttlePeriod is the time slice of a throttled vCPU: short, so that a
// guest keeps answering interrupts and timers, long next to a kick.
const throttlePeriod = 10 * time.Millisecond

// throttle is the machine's throttling state.
type throttle struct {
	// mu guards pct and stop: SetThrottle and the kicker goroutine.
	mu   sync.Mutex
	pct  []int          // per vCPU index, 0..99
	stop chan struct{}  // closes the kicker goroutine; nil when none runs
	loop sync.WaitGroup // the kicker goroutine, until it returned
	// owe is, per vCPU, the nanoseconds its thread must sleep at its next
	// exit; set by the kicker, taken (swapped to 0) by the vCPU thread.
	owe []atomic.Int64
}

// SetThrottle keeps vCPU vcpu (all vCPUs if vcpu < 0) out of the guest for
// pct percent of the time, 0 (no throttle) to 99.
func (m *Machine) SetThrottle(vcpu, pct int) error {
	if pct < 0 || pct > 99 {
		return fmt.Errorf("throttle %d%%: want 0 to 99", pct)
	}
	if vcpu >= len(m.vcpus) {
		return fmt.Errorf("throttle: no vCPU %d (the machine has %d)", vcpu, len(m.vcpus))
	}
	t := &m.throttle
	t.mu.Lock()
	defer t.mu.Unlock()
	for i := range t.pct {
		if vcpu < 0 || i == vcpu {
			t.pct[i] = pct
		}
	}
	any := false
	for _, p := range t.pct {
		any = any || p > 0
	}
	switch {
	case any && t.stop == nil:
		t.stop = make(chan struct{})
		t.loop.Add(1)
		go m.throttleLoop(t.stop)
	case !any && t.stop != nil:
		close(t.stop)
		t.stop = nil
		for i := range t.owe {
			t.owe[i].Store(0)
		}
	}
	return nil
}

// Throttle returns each vCPU's throttle percentage.
func (m *Machine) Throttle() []int {
	t := &m.throttle
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]int, len(m.vcpus))
	copy(out, t.pct)
	return out
}

// throttleLoop kicks the throttled vCPUs every period until stop closes or
// the machine stops.
func (m *Machine) throttleLoop(stop chan struct{}) {
	defer m.throttle.loop.Done()
	tick := time.NewTicker(throttlePeriod)
	defer tick.Stop()
	t := &m.throttle
	for {
		select {
		case <-stop:
			return
		case <-m.stopReq:
			return
		case <-tick.C:
		}
		t.mu.Lock()
		for i, p := range t.pct {
			if p > 0 {
				t.owe[i].Store(int64(throttlePeriod) * int64(p) / 100)
				_ = m.kick(m.vcpus[i]) // a lost kick costs one period's throttle
			}
		}
		t.mu.Unlock()
	}
}

// endThrottle stops the kicker goroutine and waits until it returned
// (Close: nothing may kick a vCPU that is being closed).
func (m *Machine) endThrottle() {
	t := &m.throttle
	t.mu.Lock()
	if t.stop != nil {
		close(t.stop)
		t.stop = nil
	}
	t.mu.Unlock()
	t.loop.Wait()
}

// newThrottle sizes the throttle state for n vCPUs (before they run).
func newThrottle(n int) throttle {
	return throttle{pct: make([]int, n), owe: make([]atomic.Int64, n)}
}

// throttleSleep is called by vCPU thread i when KVM_RUN was interrupted:
// it sleeps what the throttle says it owes.
func (m *Machine) throttleSleep(i int) {
	if d := m.throttle.owe[i].Swap(0); d > 0 {
		time.Sleep(time.Duration(d))
	}
}
