package migrate

import (
	"encoding/binary"
	"fmt"
	"math/bits"
)

// The entries of a PAGES payload (PROTOCOL.md, "PAGES"): runs of zero
// pages, runs of whole pages, and DELTA entries, each placed relative to
// the end of the entry before it, then the record's pages digest.
//
//	entry   = kind u8, gap uvarint, body
//	ZERO    body = count u16 (1..maxZeroRun); at most MaxPagesPerBatch
//	        ZERO entries in a record
//	FULL    body = count u16 (1..MaxPagesPerBatch), count × 4096 bytes;
//	        at most MaxPagesPerBatch pages with data (FULL and DELTA)
//	DELTA   body = mask u8 (1..maxDeltaBlocks bits set), one 512-byte
//	        block for each bit, in block order
//	trailer = XXH3-128 of the digests of the record's FULL and DELTA
//	        pages, as they are after the record, in entry order
//
// An entry's first page is the page after the previous entry's last one
// (0 for the first entry) plus gap, so pages only go up within a record
// and none appears twice; a pass over contiguous pages costs one entry
// header per run, not per page.

// pageDelta is a DELTA entry's kind (pageZero and pageFull: protocol.go).
const pageDelta uint8 = 3

const (
	// maxZeroRun is the most pages one ZERO entry covers.
	maxZeroRun = 1<<16 - 1
	// pagesDigestSize is the trailer of a PAGES payload.
	pagesDigestSize = digestSize
	// runHeaderMax is the longest entry header: kind, a 10-byte uvarint,
	// a u16 count.
	runHeaderMax = 1 + binary.MaxVarintLen64 + 2
	// maxPagesPayload bounds a PAGES payload: MaxPagesPerBatch pages with
	// data, each in an entry of its own at worst, MaxPagesPerBatch ZERO
	// entries, and the trailer.
	maxPagesPayload = MaxPagesPerBatch*(runHeaderMax+PageSize) + MaxPagesPerBatch*runHeaderMax + pagesDigestSize
)

// pageRun is one decoded entry. Data aliases the payload.
type pageRun struct {
	Kind  uint8
	First uint64 // global page index
	Count uint64 // pages (1 for DELTA)
	Data  []byte // FULL: Count pages; DELTA: the blocks of Mask
	Mask  uint8  // DELTA: bit i set = block i follows
}

// runIter walks the entries of a PAGES payload of a guest of total pages,
// checking each against the layout and the limits before the caller sees
// it. After next returns false, err says why (nil: the payload ended well)
// and trailer holds the pages digest.
type runIter struct {
	p       []byte
	total   uint64
	end     uint64 // the page after the previous entry
	data    int    // FULL and DELTA pages so far
	zeros   int    // ZERO entries so far
	entries int    // entries so far
	trailer Digest
	err     error
}

func newRunIter(p []byte, total uint64) runIter { return runIter{p: p, total: total} }

func (it *runIter) fail(format string, args ...any) bool {
	it.err = fmt.Errorf("%w: PAGES entry %d: %s", ErrMalformed, it.entries, fmt.Sprintf(format, args...))
	return false
}

func (it *runIter) next(r *pageRun) bool {
	if it.err != nil {
		return false
	}
	if len(it.p) == pagesDigestSize {
		if it.entries == 0 {
			return it.fail("a PAGES record without entries")
		}
		it.trailer = Digest(it.p)
		it.p = nil
		return false
	}
	if len(it.p) < 1+1+pagesDigestSize {
		return it.fail("truncated (or no pages digest)")
	}
	r.Kind = it.p[0]
	entries := it.p[:len(it.p)-pagesDigestSize]
	gap, n := binary.Uvarint(entries[1:])
	if n <= 0 {
		return it.fail("bad gap")
	}
	if it.end >= it.total || gap >= it.total-it.end {
		if it.end+gap < it.end {
			return it.fail("page %d+%d is outside guest memory (%d pages)", it.end, gap, it.total)
		}
		return it.fail("page %d is outside guest memory (%d pages)", it.end+gap, it.total)
	}
	r.First = it.end + gap
	body := entries[1+n:]
	switch r.Kind {
	case pageZero, pageFull:
		if len(body) < 2 {
			return it.fail("truncated count")
		}
		r.Count = uint64(binary.BigEndian.Uint16(body))
		limit := uint64(maxZeroRun)
		if r.Kind == pageFull {
			limit = uint64(MaxPagesPerBatch - it.data)
		}
		if r.Count == 0 || r.Count > limit {
			return it.fail("%d pages (this entry may have 1..%d)", r.Count, limit)
		}
		if r.Count > it.total-r.First {
			return it.fail("pages %d..%d are outside guest memory (%d pages)", r.First, r.First+r.Count-1, it.total)
		}
		used := 2
		r.Data, r.Mask = nil, 0
		if r.Kind == pageZero {
			if it.zeros++; it.zeros > MaxPagesPerBatch {
				return it.fail("more than %d ZERO entries", MaxPagesPerBatch)
			}
		}
		if r.Kind == pageFull {
			size := int(r.Count) * PageSize
			if len(body)-2 < size {
				return it.fail("%d pages of data truncated", r.Count)
			}
			r.Data = body[2 : 2+size]
			used += size
			it.data += int(r.Count)
		}
		it.p = it.p[1+n+used:]
	case pageDelta:
		if len(body) < 1 {
			return it.fail("truncated mask")
		}
		r.Count, r.Mask = 1, body[0]
		blocks := bits.OnesCount8(r.Mask)
		if blocks == 0 || blocks > maxDeltaBlocks {
			return it.fail("DELTA mask %#02x (1..%d blocks)", r.Mask, maxDeltaBlocks)
		}
		if it.data >= MaxPagesPerBatch {
			return it.fail("more than %d pages with data", MaxPagesPerBatch)
		}
		size := blocks * BlockSize
		if len(body)-1 < size {
			return it.fail("DELTA blocks truncated")
		}
		r.Data = body[1 : 1+size]
		it.p = it.p[1+n+1+size:]
		it.data++
	default:
		return it.fail("kind %d", r.Kind)
	}
	it.end = r.First + r.Count
	it.entries++
	return true
}

// appendEntryHeader appends an entry header: kind and gap (count or mask
// follow, written by the caller).
func appendEntryHeader(b []byte, kind uint8, gap uint64) []byte {
	b = append(b, kind)
	return binary.AppendUvarint(b, gap)
}

// applyDelta writes the blocks of a DELTA entry over page.
func applyDelta(page []byte, mask uint8, blocks []byte) {
	for i := range blocksPerPage {
		if mask&(1<<i) != 0 {
			copy(page[i*BlockSize:(i+1)*BlockSize], blocks[:BlockSize])
			blocks = blocks[BlockSize:]
		}
	}
}

// appendDeltaBlocks appends the blocks of page that mask selects.
func appendDeltaBlocks(b []byte, mask uint8, page []byte) []byte {
	for i := range blocksPerPage {
		if mask&(1<<i) != 0 {
			b = append(b, page[i*BlockSize:(i+1)*BlockSize]...)
		}
	}
	return b
}
