package migrate

import "sync/atomic"

// DirtyBitmap records the pages a VMM writes into guest memory itself
// (device emulation: data read from a disk, received frames, used rings).
// KVM's dirty log sees only the guest's own writes, so a Source ORs this
// bitmap into every DirtyLog answer and re-arms it in ClearDirtyLog, under
// exactly the rules the Source contract gives KVM's log (see
// Source.DirtyLog):
//
//   - manual mode: Report(dst, false) on every DirtyLog; a page stays
//     reported until ClearDirtyLog re-arms it (Rearm). A read of the log
//     that does not clear it (the sender's mid-pass peek) loses nothing.
//   - classic mode: Report(dst, true): the pages reported are re-armed by
//     the same read, as KVM_GET_DIRTY_LOG re-protects the pages it reports.
//
// Ordering: a device calls Mark after it wrote the page, and the sender
// re-arms a page (ClearDirtyLog) before it reads it. So a device write is
// either complete before the sender's read of the page (and is sent with
// it), or its Mark comes after the re-arm (and the page is reported again).
// The atomic operations order Mark after the write and Rearm before the
// read.
//
// All methods are safe for concurrent use.
type DirtyBitmap struct {
	words []uint64 // bit p of words[p/64]: page p was written
	pages uint64
}

// NewDirtyBitmap tracks pages pages, all clean.
func NewDirtyBitmap(pages uint64) *DirtyBitmap {
	return &DirtyBitmap{words: make([]uint64, (pages+63)/64), pages: pages}
}

// Mark records that pages [first, first+n) were written. Pages past the
// end are ignored.
func (b *DirtyBitmap) Mark(first, n uint64) {
	if first >= b.pages {
		return
	}
	end := min(first+n, b.pages)
	for p := first; p < end; {
		w := p / 64
		lo := p % 64
		hi := min(64, lo+(end-p)) // bits [lo, hi) of word w
		mask := ^uint64(0) << lo
		if hi < 64 {
			mask &= 1<<hi - 1
		}
		atomic.OrUint64(&b.words[w], mask)
		p += hi - lo
	}
}

// Report ORs the pages written and not re-armed into dst (one bit per page
// from page 0; words past len(dst) are not reported). With rearm (classic
// mode) the reported pages are re-armed by the same read.
func (b *DirtyBitmap) Report(dst []uint64, rearm bool) {
	for w := range b.words[:min(len(b.words), len(dst))] {
		if atomic.LoadUint64(&b.words[w]) == 0 {
			continue
		}
		if rearm {
			dst[w] |= atomic.SwapUint64(&b.words[w], 0)
		} else {
			dst[w] |= atomic.LoadUint64(&b.words[w])
		}
	}
}

// Rearm forgets the pages whose bits are set in bits, bit k of bits[w]
// being page first+64*w+k (first a multiple of 64), as ClearDirtyLog does
// for KVM's log: a Mark after the call reports the page again.
func (b *DirtyBitmap) Rearm(first uint64, bits []uint64) {
	w0 := first / 64
	for w, x := range bits {
		if x == 0 || w0+uint64(w) >= uint64(len(b.words)) {
			continue
		}
		atomic.AndUint64(&b.words[w0+uint64(w)], ^x)
	}
}
