package migrate

import (
	"fmt"
	"sync/atomic"

	"github.com/zeebo/xxh3"
)

// The receiver's handling of PAGES records (layout: pages.go, PROTOCOL.md).

// onPages verifies and stores one PAGES record (pages.go): first every
// entry is checked against the layout and every page it writes, as it will
// be, against the record's pages digest, storing nothing; only then are the
// pages stored. A DELTA entry may only change a page this side holds.
func (r *receiver) onPages(flags uint16, p []byte) error {
	if !r.iterStarted {
		return fmt.Errorf("%w: PAGES before the first ITERATION-START", ErrUnexpected)
	}
	p, err := r.pagesPayload(flags, p)
	if err != nil {
		return err
	}
	r.runs, r.digests = r.runs[:0], r.digests[:0]
	if r.rebuilt == nil {
		r.rebuilt = make([]byte, MaxPagesPerBatch*PageSize)
	}
	sum := xxh3.New()
	deltas := 0
	it := newRunIter(p, r.total)
	var run pageRun
	for it.next(&run) {
		switch run.Kind {
		case pageFull:
			for k := range run.Count {
				d := HashPage(run.Data[k*PageSize : (k+1)*PageSize])
				sum.Write(d[:])
				r.digests = append(r.digests, d)
			}
		case pageDelta:
			if !r.has(run.First) {
				return fmt.Errorf("%w: DELTA for page %d (iteration %d), which this side does not hold", ErrMalformed, run.First, r.iter)
			}
			page, err := r.page(run.First)
			if err != nil {
				return err
			}
			out := r.rebuilt[deltas*PageSize : (deltas+1)*PageSize]
			copy(out, page)
			applyDelta(out, run.Mask, run.Data)
			d := HashPage(out)
			sum.Write(d[:])
			r.digests = append(r.digests, d)
			deltas++
		}
		r.runs = append(r.runs, run)
	}
	if it.err != nil {
		return it.err
	}
	if got := Digest(sum.Sum128().Bytes()); got != it.trailer {
		pages := fmt.Sprintf("pages %d..%d", r.runs[0].First, run.First+run.Count-1)
		if len(r.runs) == 1 && run.Count == 1 {
			pages = fmt.Sprintf("page %d", run.First)
		}
		return fmt.Errorf("%w: PAGES record of iteration %d (%s): its pages hash to %v, the record says %v",
			ErrDigestMismatch, r.iter, pages, got, it.trailer)
	}
	r.store()
	return nil
}

// store writes the checked entries of onPages into guest memory.
func (r *receiver) store() {
	digests, deltas := r.digests, 0
	for _, run := range r.runs {
		for k := range run.Count {
			g := run.First + k
			page, _ := r.page(g) // checked by runIter
			d := ZeroDigest
			switch run.Kind {
			case pageZero:
				if !isZeroPage(page) {
					clear(page)
				}
				r.stats.PagesZero++
			case pageFull:
				copy(page, run.Data[k*PageSize:(k+1)*PageSize])
				d, digests = digests[0], digests[1:]
				r.stats.PagesFull++
			case pageDelta:
				copy(page, r.rebuilt[deltas*PageSize:(deltas+1)*PageSize])
				d, digests = digests[0], digests[1:]
				deltas++
				r.stats.PagesDelta++
			}
			if r.table != nil {
				r.table.Update(g, d, r.iter)
			}
			r.setPresent(g)
			r.entries++
		}
	}
}

// pageStore is the destination's guest memory as PAGES records fill it.
// The connections of a migration with parallel streams share one: each
// writes its own pages (never the same page in one iteration, and
// iterations are separated by the streams' barrier: PROTOCOL.md), so only
// the bitmap words, which pages of several streams share, are atomic.
type pageStore struct {
	mems    [][]byte
	base    []uint64 // global index of each region's first page
	total   uint64
	present []uint64 // bitmap, atomic: pages present here (received at least once, or kept)
	// npresent counts the bits set in present.
	npresent atomic.Uint64
	// table is the digest of every page present (nil when this receiver
	// keeps nothing for a resume).
	table *DigestTable
}

// page maps a global page index to destination memory.
func (m *pageStore) page(g uint64) ([]byte, error) {
	if g >= m.total {
		return nil, fmt.Errorf("%w: page %d is outside guest memory (%d pages)", ErrMalformed, g, m.total)
	}
	i := len(m.base) - 1
	for m.base[i] > g {
		i--
	}
	off := (g - m.base[i]) * PageSize
	return m.mems[i][off : off+PageSize], nil
}

// has reports whether page g is present.
func (m *pageStore) has(g uint64) bool {
	return atomic.LoadUint64(&m.present[g/64])&(1<<(g%64)) != 0
}

// setPresent marks page g present.
func (m *pageStore) setPresent(g uint64) {
	bit := uint64(1) << (g % 64)
	if atomic.OrUint64(&m.present[g/64], bit)&bit == 0 {
		m.npresent.Add(1)
	}
}

// pagesPayload is a PAGES record's payload as the entries go: inflated if
// the record is compressed (FlagCompressed), as it came otherwise.
func (r *receiver) pagesPayload(flags uint16, p []byte) ([]byte, error) {
	if flags&FlagCompressed == 0 {
		return p, nil
	}
	if r.unzip == nil {
		r.unzip = newDecompressor()
	}
	p, err := r.unzip.decode(p, maxPagesPayload)
	if err != nil {
		return nil, err
	}
	r.stats.RecordsCompressed++
	return p, nil
}
