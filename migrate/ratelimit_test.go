package migrate

import (
	"context"
	"testing"
	"time"
)

// fakeClock drives a tokenBucket without real time.
type fakeClock struct {
	t     time.Time
	slept time.Duration
}

func (c *fakeClock) bucket(rate int64) *tokenBucket {
	b := newTokenBucket(rate)
	b.now = func() time.Time { return c.t }
	b.sleep = func(_ context.Context, d time.Duration) error {
		c.slept += d
		c.t = c.t.Add(d)
		return nil
	}
	b.last = c.t
	return b
}

func TestTokenBucketRate(t *testing.T) {
	c := &fakeClock{t: time.Unix(0, 0)}
	b := c.bucket(1 << 20) // 1 MiB/s
	for i := 0; i < 64; i++ {
		if err := b.take(context.Background(), b.chunk()); err != nil {
			t.Fatal(err)
		}
	}
	// 64 chunks of 64 KiB = 4 MiB: about 4 s, less the initial burst.
	if c.slept < 3800*time.Millisecond || c.slept > 4100*time.Millisecond {
		t.Fatalf("4 MiB at 1 MiB/s slept %v, want about 4 s", c.slept)
	}
}

// TestTokenBucketLift: once lifted (stop-and-copy), nothing waits and the
// chunks are no longer bucket-sized.
func TestTokenBucketLift(t *testing.T) {
	c := &fakeClock{t: time.Unix(0, 0)}
	b := c.bucket(1 << 20)
	b.lift()
	for i := 0; i < 64; i++ {
		if err := b.take(context.Background(), 1<<20); err != nil {
			t.Fatal(err)
		}
	}
	if c.slept != 0 {
		t.Fatalf("lifted bucket slept %v", c.slept)
	}
	if b.chunk() != maxWrite {
		t.Fatalf("lifted chunk %d, want %d", b.chunk(), maxWrite)
	}
}
