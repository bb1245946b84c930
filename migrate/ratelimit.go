package migrate

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// tokenBucket caps a byte rate. Tokens accrue at rate bytes per second up to
// burst; a write may take more tokens than are available (the balance goes
// negative) and the writer then sleeps until the balance is back to zero, so
// the long-run rate never exceeds rate whatever the write sizes.
type tokenBucket struct {
	rate  float64 // bytes per second
	burst float64 // bucket capacity, bytes
	// mu guards tokens and last: the writers of several streams share
	// one bucket (one cap for the migration).
	mu     sync.Mutex
	tokens float64
	last   time.Time
	now    func() time.Time
	sleep  func(ctx context.Context, d time.Duration) error
	lifted atomic.Bool // no cap any more (stop-and-copy)
	// slept counts the writes the cap held back (the sender's sign that
	// the cap, not its own speed, sets the pace).
	slept atomic.Int64
}

// lift removes the cap for good. It may be called from any goroutine.
func (b *tokenBucket) lift() { b.lifted.Store(true) }

func newTokenBucket(rate int64) *tokenBucket {
	r := float64(rate)
	burst := r / 20 // 50 ms worth
	if burst < 64<<10 {
		burst = 64 << 10
	}
	b := &tokenBucket{rate: r, burst: burst, now: time.Now, sleep: sleepCtx}
	b.last = b.now()
	b.tokens = burst
	return b
}

// chunk is the largest write the limiter lets through at once, so that the
// traffic stays smooth at low rates.
func (b *tokenBucket) chunk() int {
	if b.lifted.Load() {
		return maxWrite
	}
	return int(b.burst)
}

// take accounts n bytes and sleeps as long as the balance is negative.
func (b *tokenBucket) take(ctx context.Context, n int) error {
	if b.lifted.Load() {
		return nil
	}
	b.mu.Lock()
	now := b.now()
	b.tokens += now.Sub(b.last).Seconds() * b.rate
	if b.tokens > b.burst {
		b.tokens = b.burst
	}
	b.last = now
	b.tokens -= float64(n)
	debt := b.tokens
	b.mu.Unlock()
	if debt >= 0 {
		return nil
	}
	b.slept.Add(1)
	return b.sleep(ctx, time.Duration(-debt/b.rate*float64(time.Second)))
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
