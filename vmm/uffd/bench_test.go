package uffd

import (
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"
)

// Fault service time, end to end: from the instruction that touches a
// missing page to the one after it, with a handler that serves every fault
// at once with Copy. Measured for a thread in plain memory (Go code) and
// for a KVM guest (RDTSC around the access), and compared with the same
// access to a present page.

// TestFaultServiceTime logs the plain-memory measurement.
func TestFaultServiceTime(t *testing.T) {
	const n = 2000
	fault, present, handler := plainFaults(t, n)
	t.Logf("thread in plain memory, %d faults: %s; handler %s; present page: median %v",
		n, stats(fault), stats(handler), median(present))
}

// TestKVMFaultServiceTime logs the guest-side measurement.
func TestKVMFaultServiceTime(t *testing.T) {
	const n = 500
	g := newGuest(t)
	khz, err := g.cpu.TSCKHz()
	if err != nil || khz == 0 {
		t.Skipf("no TSC frequency to convert the guest's cycles: %v", err)
	}
	u := openUFFD(t, 0)
	if err := u.Register(g.data()[:n*PageSize], ModeMissing); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var handler []time.Duration // guarded by mu
	src := pattern(0, 1)
	h := startHandler(t, u, func(f Fault) error {
		start := time.Now()
		off, _ := Offset(g.data(), f.Addr)
		_, err := u.Copy(page(g.data(), off/PageSize), src)
		mu.Lock()
		handler = append(handler, time.Since(start))
		mu.Unlock()
		return err
	})
	list := make([]access, n)
	for i := range list {
		list[i] = access{page: i}
	}
	g.setList(list)
	g.run(60 * time.Second)
	fault := guestTimes(g.results(n), khz)
	g.run(60 * time.Second) // again: every page is present now
	present := guestTimes(g.results(n), khz)
	h.stop()
	if _, errs := h.faults(); len(errs) > 0 {
		t.Fatalf("handler: %v", errs)
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("KVM guest, %d faults: %s; handler (Copy) %s; present page: median %v",
		n, stats(fault), stats(handler), median(present))
}

// BenchmarkFault is one fault in plain memory, served at once by Copy.
func BenchmarkFault(b *testing.B) {
	fault, _, _ := plainFaults(b, b.N)
	b.ReportMetric(float64(median(fault).Nanoseconds()), "median-ns/fault")
}

// plainFaults has a toucher thread read one byte of each of n missing
// pages while a handler serves them, then read them again (present). It
// returns the times of both reads and the handler's time per fault.
func plainFaults(t testing.TB, n int) (fault, present, handler []time.Duration) {
	mem := mapPages(t, n)
	u := openUFFD(t, 0)
	if err := u.Register(mem, ModeMissing); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	src := pattern(0, 1)
	h := startHandler(t, u, func(f Fault) error {
		start := time.Now()
		off, _ := Offset(mem, f.Addr)
		_, err := u.Copy(page(mem, off/PageSize), src)
		mu.Lock()
		handler = append(handler, time.Since(start))
		mu.Unlock()
		return err
	})
	tc := newToucher(t)
	touch := func() []time.Duration {
		ds := make([]time.Duration, n)
		var sink byte
		waitDone(t, tc.do(func() {
			for i := range ds {
				start := time.Now()
				sink += mem[i*PageSize]
				ds[i] = time.Since(start)
			}
		}), time.Minute, "toucher")
		if sink == 1 { // keep the loads
			t.Log()
		}
		return ds
	}
	if tb, ok := t.(*testing.B); ok {
		tb.ResetTimer()
	}
	fault = touch()
	if tb, ok := t.(*testing.B); ok {
		tb.StopTimer()
	}
	present = touch()
	h.stop()
	if _, errs := h.faults(); len(errs) > 0 {
		t.Fatalf("handler: %v", errs)
	}
	mu.Lock()
	defer mu.Unlock()
	return fault, present, append([]time.Duration(nil), handler...)
}

func guestTimes(rs []result, khz uint64) []time.Duration {
	out := make([]time.Duration, len(rs))
	for i, r := range rs {
		out[i] = time.Duration(uint64(r.cycles) * 1e6 / khz)
	}
	return out
}

func percentile(ds []time.Duration, q float64) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[int(q*float64(len(s)-1))]
}

func median(ds []time.Duration) time.Duration { return percentile(ds, 0.5) }

func stats(ds []time.Duration) string {
	return fmt.Sprintf("median %v, p90 %v, p99 %v, max %v", median(ds), percentile(ds, 0.9), percentile(ds, 0.99), percentile(ds, 1))
}
