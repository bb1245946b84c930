package vmm

import (
	"testing"
	"time"
)

// A throttled vCPU runs less: at 80% the guest's counter advances less
// than half as fast as without a throttle, and it goes back to full speed
// when the throttle is lifted.
func TestThrottleSlowsTheGuest(t *testing.T) {
	m := bootMachine(t, Config{Memory: 16 << 20, CPUs: 1}, counterLoop)
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { m.Stop("test done"); m.Wait() }()
	waitCounter(t, m, 1000, "the guest counting")
	rate := func() float64 {
		const window = 400 * time.Millisecond
		c0, t0 := counter(m), time.Now()
		time.Sleep(window)
		return float64(counter(m)-c0) / time.Since(t0).Seconds()
	}
	free := rate()
	if err := m.SetThrottle(-1, 80); err != nil {
		t.Fatal(err)
	}
	if got := m.Throttle(); got[0] != 80 {
		t.Fatalf("Throttle() = %v", got)
	}
	slow := rate()
	if err := m.SetThrottle(-1, 0); err != nil {
		t.Fatal(err)
	}
	again := rate()
	t.Logf("counter rate: %.0f/s free, %.0f/s at 80%%, %.0f/s lifted", free, slow, again)
	if slow > free/2 {
		t.Fatalf("at 80%% the guest ran at %.0f/s, unthrottled %.0f/s", slow, free)
	}
	if again < free/2 {
		t.Fatalf("after the throttle was lifted the guest ran at %.0f/s, before %.0f/s", again, free)
	}
	if err := m.SetThrottle(-1, 100); err == nil {
		t.Fatal("a 100% throttle was accepted")
	}
	if err := m.SetThrottle(5, 10); err == nil {
		t.Fatal("a throttle of a vCPU that does not exist was accepted")
	}
}

// Pause and Stop work on a throttled machine.
func TestThrottlePauseStop(t *testing.T) {
	m := bootMachine(t, Config{Memory: 16 << 20, CPUs: 2}, counterLoop)
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	waitCounter(t, m, 1000, "the guest counting")
	if err := m.SetThrottle(-1, 90); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		if err := m.Pause(); err != nil {
			t.Fatal(err)
		}
		c := counter(m)
		time.Sleep(30 * time.Millisecond)
		if counter(m) != c {
			t.Fatal("a paused, throttled guest ran")
		}
		if err := m.Resume(); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan struct{})
	go func() { m.Stop("test"); m.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("a throttled machine did not stop")
	}
}
