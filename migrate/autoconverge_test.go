package migrate

import (
	"errors"
	"math/rand"
	"sync"
	"testing"
	"time"
)

// The rule on numbers: iterations that send 1 MiB each; the next one is
// expected to send dirty pages × 4 KiB × what the last sent per page.
func TestThrottleRule(t *testing.T) {
	const M = 1 << 20
	h := func(bytes int64, dirty uint64) history {
		return history{digest: true, its: []IterationStats{
			{Iteration: 0, Bytes: 64 * M, PagesDirty: 16384},
			{Iteration: 1, Bytes: bytes, PagesDirty: dirty},
		}}
	}
	// 256 pages dirty, 1 MiB sent for them: a page costs a whole page.
	cases := []struct {
		name  string
		rule  throttleRule
		h     history
		dirty uint64
		want  throttleRule
	}{
		{"converging: nothing changes", throttleRule{}, h(M, 256), 64, throttleRule{}},
		{"first slow iteration: wait", throttleRule{}, h(M, 256), 256, throttleRule{slow: 1}},
		{"second slow iteration: 20%", throttleRule{slow: 1}, h(M, 256), 256, throttleRule{pct: 20}},
		{"still slow: 10% more", throttleRule{pct: 20, slow: 1}, h(M, 256), 200, throttleRule{pct: 30}},
		{"at most 99%", throttleRule{pct: 95, slow: 1}, h(M, 256), 256, throttleRule{pct: 99}},
		{"a converging iteration resets the count", throttleRule{pct: 30, slow: 1}, h(M, 256), 10, throttleRule{pct: 30}},
		{"iteration 0 says nothing", throttleRule{slow: 1}, history{digest: true, its: []IterationStats{{Iteration: 0, Bytes: M, PagesDirty: 256}}}, 256, throttleRule{slow: 1}},
	}
	for _, c := range cases {
		if got := c.rule.next(c.h, c.dirty); got != c.want {
			t.Errorf("%s: %+v, want %+v", c.name, got, c.want)
		}
	}
}

// throttledSource is a guest that rewrites whole pages with new data, as
// fast as its throttle lets it: every chunk the sender clears, it writes
// rate × (100 − throttle)% pages.
type throttledSource struct {
	*fakeSource
	mu    sync.Mutex
	pct   int
	calls []int
}

func (s *throttledSource) Throttle(pct int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pct = pct
	s.calls = append(s.calls, pct)
	return nil
}

func newThrottledSource(rate int) *throttledSource { return newThrottledSourceSize(rate, 1024) }

// newThrottledSourceSize is a throttledSource of pages pages.
func newThrottledSourceSize(rate, pages int) *throttledSource {
	src := &throttledSource{fakeSource: newFakeSource(true, uint64(pages)*PageSize)}
	src.info.ID = VMID{0xac}
	randomFill(src.mem[0], 17)
	rng := rand.New(rand.NewSource(5))
	page := make([]byte, PageSize)
	src.onClear = func(int, uint64) {
		src.mu.Lock()
		n := rate * (100 - src.pct) / 100
		src.mu.Unlock()
		for k := 0; k < n; k++ {
			rng.Read(page)
			src.guestWrite(0, uint64(rng.Intn(pages)), page)
		}
	}
	return src
}

// A guest that outruns the link converges once throttled, and its
// throttle is lifted when the migration ends.
func TestAutoConvergeThrottles(t *testing.T) {
	src := newThrottledSource(6)
	dst := &fakeDest{}
	opts := Options{MaxBandwidth: 2 << 20, Downtime: 50 * time.Millisecond, ChunkPages: 64, MaxIterations: 30, Compress: CompressOff}
	res := runMigration(t, src, dst, opts, ReceiveOptions{})
	mustSucceed(t, res)
	sameMemory(t, src.fakeSource, dst)
	if len(src.calls) < 2 || src.calls[0] != throttleFirst || src.calls[len(src.calls)-1] != 0 {
		t.Fatalf("throttle calls %v: want it raised from %d%% and lifted at the end", src.calls, throttleFirst)
	}
	top := 0
	for _, it := range res.stats.Iterations {
		top = max(top, it.ThrottlePct)
	}
	if top == 0 || !res.stats.Converged {
		t.Fatalf("converged %v, highest throttle in the stats %d%%", res.stats.Converged, top)
	}
	t.Logf("throttle calls %v; %d iterations; %s", src.calls, len(res.stats.Iterations), res.stats.Summary())
}

// Without auto-converge the same guest does not converge, and its
// throttle is never touched.
func TestNoAutoConverge(t *testing.T) {
	src := newThrottledSource(6)
	dst := &fakeDest{}
	opts := Options{MaxBandwidth: 2 << 20, Downtime: 50 * time.Millisecond, ChunkPages: 64, MaxIterations: 8,
		NoAutoConverge: true, Compress: CompressOff}
	res := runMigration(t, src, dst, opts, ReceiveOptions{})
	if !errors.Is(res.sendErr, ErrNotConverged) || len(src.calls) != 0 {
		t.Fatalf("send error %v, throttle calls %v", res.sendErr, src.calls)
	}
	if src.paused {
		t.Fatal("the source guest was left paused")
	}
}

// A migration that fails lifts the throttle too.
func TestAutoConvergeLiftedOnFailure(t *testing.T) {
	src := newThrottledSource(6)
	dst := &fakeDest{restoreErr: errors.New("refused")}
	opts := Options{MaxBandwidth: 2 << 20, Downtime: 50 * time.Millisecond, ChunkPages: 64, MaxIterations: 30, Compress: CompressOff}
	res := runMigration(t, src, dst, opts, ReceiveOptions{})
	if res.sendErr == nil {
		t.Fatal("the migration succeeded")
	}
	if len(src.calls) == 0 || src.calls[len(src.calls)-1] != 0 || src.pct != 0 {
		t.Fatalf("throttle calls %v after a failure: want it lifted", src.calls)
	}
}
