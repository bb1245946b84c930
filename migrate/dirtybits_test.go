package migrate

import (
	"math/bits"
	"math/rand"
	"sync"
	"testing"
)

// Mark sets exactly the pages of its range, across word boundaries and
// clipped at the end, compared with a plain per-page model.
func TestDirtyBitmapMark(t *testing.T) {
	const pages = 1000
	rng := rand.New(rand.NewSource(1))
	for round := 0; round < 200; round++ {
		b := NewDirtyBitmap(pages)
		want := make([]bool, pages)
		for k := 0; k < 5; k++ {
			first, n := uint64(rng.Intn(pages+10)), uint64(rng.Intn(200))
			b.Mark(first, n)
			for p := first; p < first+n && p < pages; p++ {
				want[p] = true
			}
		}
		got := make([]uint64, (pages+63)/64)
		b.Report(got, false)
		for p := range want {
			if have := got[p/64]&(1<<(p%64)) != 0; have != want[p] {
				t.Fatalf("round %d: page %d marked %v, want %v", round, p, have, want[p])
			}
		}
		if last := got[len(got)-1] >> (pages % 64); last != 0 {
			t.Fatalf("bits past the last page: %#x", last)
		}
	}
}

// Manual mode reports until Rearm; classic mode re-arms what it reports.
func TestDirtyBitmapRules(t *testing.T) {
	b := NewDirtyBitmap(256)
	b.Mark(70, 3) // 70, 71, 72
	read := func(rearm bool) []uint64 {
		dst := make([]uint64, 4)
		dst[0] = 1 // the caller's own bits stay
		b.Report(dst, rearm)
		if dst[0]&1 == 0 {
			t.Fatal("Report cleared a bit of the caller's")
		}
		return dst
	}
	for i := 0; i < 3; i++ {
		if got := read(false)[1]; got != 0b111<<6 {
			t.Fatalf("read %d without re-arm: word 1 = %#x", i, got)
		}
	}
	b.Rearm(64, []uint64{1 << 7}) // page 71
	if got := read(false)[1]; got != 0b101<<6 {
		t.Fatalf("after re-arming page 71: %#x", got)
	}
	if got := read(true)[1]; got != 0b101<<6 {
		t.Fatalf("classic read: %#x", got)
	}
	if got := read(true)[1]; got != 0 {
		t.Fatalf("classic read reported %#x again", got)
	}
	b.Rearm(1<<20, []uint64{^uint64(0)}) // past the end: ignored
}

// Marks racing with re-arms: every page marked after its last re-arm is
// reported (run with -race).
func TestDirtyBitmapConcurrent(t *testing.T) {
	const pages = 4096
	b := NewDirtyBitmap(pages)
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for p := uint64(w); p < pages; p += 4 {
				b.Mark(p, 1)
			}
		}(w)
	}
	all := make([]uint64, pages/64)
	for i := range all {
		all[i] = ^uint64(0)
	}
	for i := 0; i < 100; i++ {
		b.Rearm(0, all[:1]) // only pages 0-63
	}
	wg.Wait()
	got := make([]uint64, pages/64)
	b.Report(got, false)
	n := 0
	for _, x := range got[1:] {
		n += bits.OnesCount64(x)
	}
	if n != pages-64 {
		t.Fatalf("%d of the %d pages beyond the re-armed word reported", n, pages-64)
	}
}
