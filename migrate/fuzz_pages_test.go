package migrate

import (
	"bytes"
	"context"
	"math/bits"
	"math/rand"
	"testing"
)

// Fuzz targets for the PAGES payload of version 4 (pages.go) and its
// compressed form (compress.go):
//
//	go test -run '^$' -fuzz '^FuzzPages$' -fuzztime 20s ./migrate
//	go test -run '^$' -fuzz '^FuzzDecompress$' -fuzztime 20s ./migrate

// checkPages walks a PAGES payload for a guest of total pages and checks
// that whatever runIter accepts respects the layout and the limits:
// pages go up, stay inside the guest, data has the size its entry says,
// and a record holds at most MaxPagesPerBatch pages with data and
// MaxPagesPerBatch ZERO entries.
func checkPages(t *testing.T, p []byte, total uint64) {
	it := newRunIter(p, total)
	var r pageRun
	end, data, zeros := uint64(0), 0, 0
	for it.next(&r) {
		if r.First < end || r.Count == 0 || r.First+r.Count > total {
			t.Fatalf("entry %+v after page %d of %d", r, end, total)
		}
		switch r.Kind {
		case pageZero:
			zeros++
			if r.Data != nil {
				t.Fatal("ZERO entry with data")
			}
		case pageFull:
			data += int(r.Count)
			if len(r.Data) != int(r.Count)*PageSize {
				t.Fatalf("FULL run of %d pages with %d bytes", r.Count, len(r.Data))
			}
		case pageDelta:
			data++
			if n := bits.OnesCount8(r.Mask); n == 0 || n > maxDeltaBlocks || len(r.Data) != n*BlockSize || r.Count != 1 {
				t.Fatalf("DELTA mask %#x with %d bytes", r.Mask, len(r.Data))
			}
		default:
			t.Fatalf("kind %d accepted", r.Kind)
		}
		end = r.First + r.Count
	}
	if data > MaxPagesPerBatch || zeros > MaxPagesPerBatch {
		t.Fatalf("%d pages with data, %d ZERO entries in one record", data, zeros)
	}
	if it.err == nil && len(p) > maxPagesPayload {
		t.Fatalf("payload of %d bytes accepted", len(p))
	}
}

// pagesSeeds are well-formed payloads made by the writer.
func pagesSeeds() [][]byte {
	var seeds [][]byte
	rng := rand.New(rand.NewSource(4))
	for round := 0; round < 4; round++ {
		var out bytes.Buffer
		w := newRecordWriter(context.Background(), &out, 0, nil)
		w.beginPages()
		page := make([]byte, PageSize)
		for g := uint64(round); g < 40; g += uint64(1 + rng.Intn(3)) {
			switch rng.Intn(3) {
			case 0:
				w.addZero(g)
			case 1:
				rng.Read(page)
				w.stageFull(g, page)
				w.keepStaged()
			case 2:
				rng.Read(page)
				w.stageFull(g, page)
				w.deltaStaged(uint8(1 + rng.Intn(0x3f)))
			}
		}
		w.endPages()
		w.flush()
		seeds = append(seeds, out.Bytes()[HeaderSize:])
	}
	return seeds
}

// FuzzPages decodes a payload for a guest of 64 pages and applies it as
// the receiver does (DELTA entries over the pages present): no panic,
// every limit holds, and nothing is written outside the guest.
func FuzzPages(f *testing.F) {
	for _, s := range pagesSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		const total = 64
		checkPages(t, p, total)
		mem := make([]byte, total*PageSize)
		it := newRunIter(p, total)
		var r pageRun
		for it.next(&r) {
			switch r.Kind {
			case pageFull:
				copy(mem[r.First*PageSize:], r.Data)
			case pageDelta:
				applyDelta(mem[r.First*PageSize:(r.First+1)*PageSize], r.Mask, r.Data)
			}
		}
	})
}

// FuzzDecompress decodes a compressed PAGES payload: a clear error or at
// most the limit, whatever the input claims.
func FuzzDecompress(f *testing.F) {
	c := newCompressor(CompressZstd)
	for _, s := range pagesSeeds() {
		f.Add(append([]byte(nil), c.compress(s, 0)...))
	}
	d := newDecompressor()
	f.Fuzz(func(t *testing.T, p []byte) {
		const limit = 64 << 10
		out, err := d.decode(p, limit)
		if err == nil && (len(out) == 0 || len(out) > limit) {
			t.Fatalf("%d bytes decoded (limit %d)", len(out), limit)
		}
	})
}
