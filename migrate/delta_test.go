package migrate

import (
	"bytes"
	"errors"
	"math/rand"
	"testing"
	"time"
)

// A page the destination holds of which a few bytes changed goes out as a
// DELTA entry with only its changed blocks, and arrives exact.
func TestDeltaSendsChangedBlocks(t *testing.T) {
	src := newTestSource(true)
	src.beforeFetch = func(n int) {
		if n == 1 {
			p := append([]byte(nil), src.page(0, 5)...)
			p[100] ^= 0xff              // block 0
			p[3*BlockSize+7] ^= 0x0f    // block 3
			src.write(0, 5, p)          // page 5: two blocks changed
			src.write(0, 6, content(6)) // page 6: every block changed
			q := make([]byte, PageSize)
			q[PageSize-1] = 1
			src.write(0, 9, q) // page 9 was zero: one block
		}
	}
	dst := &fakeDest{}
	res := runMigration(t, src, dst, pinned(), ReceiveOptions{})
	mustSucceed(t, res)
	sameMemory(t, src, dst)
	it1 := res.stats.Iterations[1]
	if it1.PagesDelta != 2 || it1.PagesSent != 1 || it1.DeltaBytes != 3*BlockSize {
		t.Fatalf("iteration 1: %d delta (%d bytes), %d whole; want 2 (3 blocks) and 1", it1.PagesDelta, it1.DeltaBytes, it1.PagesSent)
	}
	if res.wire.delta[5] != 1 || res.wire.delta[9] != 1 || res.wire.full[6] != 2 {
		t.Fatalf("wire: delta 5 %d, delta 9 %d, full 6 %d", res.wire.delta[5], res.wire.delta[9], res.wire.full[6])
	}
	if res.rstats.PagesDelta != 2 {
		t.Fatalf("receiver counted %d DELTA pages", res.rstats.PagesDelta)
	}
}

// Without deltas (NoDelta) the same pages go out whole.
func TestNoDeltaSendsWhole(t *testing.T) {
	src := newTestSource(true)
	src.beforeFetch = func(n int) {
		if n == 1 {
			p := append([]byte(nil), src.page(0, 5)...)
			p[100] ^= 0xff
			src.write(0, 5, p)
		}
	}
	dst := &fakeDest{}
	opts := pinned()
	opts.NoDelta = true
	res := runMigration(t, src, dst, opts, ReceiveOptions{})
	mustSucceed(t, res)
	sameMemory(t, src, dst)
	if it1 := res.stats.Iterations[1]; it1.PagesDelta != 0 || it1.PagesSent != 1 || res.stats.TableBytes != int64((r0Pages+r1Pages)*digestEntrySize) {
		t.Fatalf("iteration 1: %+v; tables %d bytes", it1, res.stats.TableBytes)
	}
}

// Random pages edited at random, over several iterations, arrive exact,
// and no DELTA entry is larger than the page (the encoder's bound).
func TestDeltaRandomEdits(t *testing.T) {
	rng := rand.New(rand.NewSource(12))
	src := newFakeSource(true, 256*PageSize)
	randomFill(src.mem[0], 99)
	src.beforeFetch = func(n int) {
		if n > 6 {
			return
		}
		for k := 0; k < 40; k++ {
			p := uint64(rng.Intn(256))
			page := append([]byte(nil), src.page(0, p)...)
			for e := rng.Intn(4); e >= 0; e-- {
				off, size := rng.Intn(PageSize), 1+rng.Intn(64)
				for i := off; i < min(PageSize, off+size); i++ {
					page[i] = byte(rng.Intn(256))
				}
			}
			if rng.Intn(8) == 0 {
				clear(page)
			}
			src.write(0, p, page)
		}
	}
	dst := &fakeDest{}
	opts := pinned()
	opts.MaxIterations = 20
	res := runMigration(t, src, dst, opts, ReceiveOptions{})
	mustSucceed(t, res)
	sameMemory(t, src, dst)
	var deltas uint64
	for _, it := range res.stats.Iterations {
		deltas += it.PagesDelta
		if it.PagesDelta > 0 && it.DeltaBytes > int64(it.PagesDelta)*maxDeltaBlocks*BlockSize {
			t.Fatalf("iteration %d: %d DELTA pages with %d bytes of blocks", it.Iteration, it.PagesDelta, it.DeltaBytes)
		}
	}
	if deltas == 0 {
		t.Fatal("no page went out as a DELTA entry")
	}
}

// The destination refuses a DELTA for a page it does not hold.
func TestDeltaForMissingPageRefused(t *testing.T) {
	hello, it0 := helloRec(smallInfo()), iterRec(0, false)
	var p []byte
	p = appendEntryHeader(p, pageDelta, 2)
	p = append(p, 1)
	p = append(p, make([]byte, BlockSize)...)
	p = append(p, make([]byte, pagesDigestSize)...)
	err, _ := scripted(t, ReceiveOptions{}, &fakeDest{}, hello, it0, rec(RecPages, p))
	if !errors.Is(err, ErrMalformed) || !bytes.Contains([]byte(err.Error()), []byte("does not hold")) {
		t.Fatalf("DELTA for a page never sent: %v", err)
	}
}

// BlockTable: unknown until set, then exactly the changed blocks.
func TestBlockTableChanged(t *testing.T) {
	tb := NewBlockTable(4)
	page := make([]byte, PageSize)
	randomFill(page, 3)
	h := hashBlocks(page)
	if _, ok := tb.Changed(2, &h); ok {
		t.Fatal("a page never set is known")
	}
	tb.Set(2, &h)
	if mask, ok := tb.Changed(2, &h); !ok || mask != 0 {
		t.Fatalf("unchanged page: mask %#x ok %v", mask, ok)
	}
	page[5*BlockSize+1] ^= 1
	page[7*BlockSize] ^= 1
	h2 := hashBlocks(page)
	if mask, ok := tb.Changed(2, &h2); !ok || mask != 1<<5|1<<7 {
		t.Fatalf("mask %#x, want blocks 5 and 7", mask)
	}
	tb.Forget(2)
	if _, ok := tb.Changed(2, &h2); ok {
		t.Fatal("a forgotten page is known")
	}
	for i, x := range zeroBlocks {
		if x == 0 || x&^blockHashMask != 0 {
			t.Fatalf("zero block hash %d is %#x", i, x)
		}
	}
	if !deltaWorthIt(0x3f) || deltaWorthIt(0x7f) || deltaWorthIt(0) {
		t.Fatal("deltaWorthIt")
	}
}

// Compression: zstd on every record, off on none; either way the pages
// arrive exact.
func TestCompressModes(t *testing.T) {
	for _, mode := range []CompressMode{CompressZstd, CompressOff} {
		src := newTestSource(true)
		dst := &fakeDest{}
		opts := pinned()
		opts.Compress = mode
		res := runMigration(t, src, dst, opts, ReceiveOptions{})
		mustSucceed(t, res)
		sameMemory(t, src, dst)
		it0 := res.stats.Iterations[0]
		if mode == CompressZstd && (res.wire.compressed == 0 || it0.CompressedRecords == 0 || it0.CompressSaved <= 0) {
			t.Fatalf("zstd: %d records compressed on the wire, stats %+v", res.wire.compressed, it0)
		}
		if mode == CompressOff && res.wire.compressed != 0 {
			t.Fatalf("off: %d records compressed", res.wire.compressed)
		}
	}
}

// Auto compresses on a slow link and not on a fast one, where it spends
// at most a small share of its time on trials.
func TestCompressAutoPays(t *testing.T) {
	c := newCompressor(CompressAuto)
	page := bytes.Repeat(content(7), 64) // compresses well
	if c.compress(page, 0) == nil {      // the first record measures
		t.Fatal("the first record was not compressed to measure")
	}
	if !c.pays(1<<20) || c.pays(1e12) {
		t.Fatalf("ratio %.3f speed %.0f: pays at 1 MiB/s %v, at 1 TB/s %v", c.ratio, c.speed, c.pays(1<<20), c.pays(1e12))
	}
	// A fast link, for 300 ms of records: only trials, a few percent of
	// the time.
	start, n, records := time.Now(), 0, 0
	for time.Since(start) < 300*time.Millisecond {
		records++
		if c.compress(page, 1e12) != nil {
			n++
		}
		time.Sleep(50 * time.Microsecond)
	}
	if share := c.spent.Seconds() / time.Since(c.born).Seconds(); n == 0 || share > 1.5*probeShare {
		t.Fatalf("%d of %d records compressed on a fast link, %.1f%% of the time spent compressing", n, records, 100*share)
	}
	for range 20 {
		if c.compress(page, 1<<20) == nil {
			t.Fatal("a record was not compressed on a slow link")
		}
	}
	random := make([]byte, 64<<10)
	randomFill(random, 5)
	if c.compress(random, 1<<20) != nil {
		t.Fatal("an incompressible record was sent compressed")
	}
}

// Auto neither compresses nor learns from small records (a few pages, or
// zero pages only): crossing free memory must not teach it that
// compressing does not pay.
func TestCompressAutoSkipsSmallRecords(t *testing.T) {
	c := newCompressor(CompressAuto)
	page := bytes.Repeat(content(7), 64)
	if c.compress(page, 1<<20) == nil {
		t.Fatal("the first record was not compressed to measure")
	}
	ratio, speed := c.ratio, c.speed
	small := make([]byte, 200) // a record of ZERO entries is this small
	for range 1000 {
		if c.compress(small, 1<<20) != nil {
			t.Fatal("a small record was compressed")
		}
	}
	if c.ratio != ratio || c.speed != speed || !c.pays(1<<20) {
		t.Fatalf("small records moved the averages: ratio %.3f -> %.3f, speed %.0f -> %.0f", ratio, c.ratio, speed, c.speed)
	}
	if c.compress(page, 1<<20) == nil {
		t.Fatal("a large record was not compressed on a slow link after small ones")
	}
}

// A capped migration compresses (auto) and still arrives exact.
func TestCompressAutoCapped(t *testing.T) {
	src := newTestSource(true)
	dst := &fakeDest{}
	opts := Options{MaxBandwidth: 4 << 20, Downtime: time.Second}
	res := runMigration(t, src, dst, opts, ReceiveOptions{})
	mustSucceed(t, res)
	sameMemory(t, src, dst)
	if res.wire.compressed == 0 {
		t.Fatal("no record compressed at 4 MiB/s")
	}
}

// The encoder and the decoder of DELTA entries, per byte of page data.
func BenchmarkDeltaEncode(b *testing.B) {
	page := make([]byte, PageSize)
	randomFill(page, 1)
	tb := NewBlockTable(1)
	h := hashBlocks(page)
	tb.Set(0, &h)
	page[2*BlockSize] ^= 1
	var out []byte
	b.SetBytes(PageSize)
	for range b.N {
		h := hashBlocks(page)
		mask, _ := tb.Changed(0, &h)
		out = appendDeltaBlocks(out[:0], mask, page)
	}
}

func BenchmarkDeltaApply(b *testing.B) {
	page := make([]byte, PageSize)
	randomFill(page, 1)
	blocks := page[:2*BlockSize]
	out := make([]byte, PageSize)
	b.SetBytes(PageSize)
	for range b.N {
		applyDelta(out, 0x11, blocks)
		sinkDigest = HashPage(out)
	}
}
