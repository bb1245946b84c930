package migrate

import (
	"encoding/binary"
	"math/bits"

	"github.com/zeebo/xxh3"
)

// Sub-page digests: what lets the sender send only the changed part of a
// page that the destination already holds (a DELTA entry, PROTOCOL.md).
//
// For every page the sender keeps, beside its digest (DigestTable), a
// 48-bit hash of each of its 8 blocks of 512 bytes, as last sent. When a
// dirty page's digest differs from the table's, the blocks whose hash
// changed are the ones to send; the destination copies them over its copy
// of the page and checks the result against the page's full digest.
//
// Why blocks and not a cache of page copies (QEMU's XBZRLE): a cache holds
// the last-sent content of some pages and encodes byte runs against it, but
// at a memory budget of a few percent of the guest it cannot hold a busy
// guest's working set (QEMU's default cache is 64 MiB, whatever the guest
// size), and a page outside it goes out whole. The block hashes cost a
// fixed 48 bytes per page (1.17% of guest memory; with the digest table,
// 1.66%) and cover every page the destination holds.
//
// A block hash is XXH3-64 of the block, cut to 48 bits, with its lowest
// bit set: 0 is never a hash, so a page whose hashes are all 0 is one whose
// blocks are not known (never sent, or kept by the destination from a cut
// attempt, which tells only page digests). Two different contents of a
// block hash alike with probability 2^-47; then the changed block is not
// sent and the destination's check of the full digest fails the migration
// (the source guest keeps running). A page whose digest changed while no
// block hash did goes out whole.
const (
	BlockSize     = 512
	blocksPerPage = PageSize / BlockSize
	blockHashSize = 6
	blockEntry    = blocksPerPage * blockHashSize // bytes per page in a BlockTable
	blockHashMask = 1<<48 - 1
)

// blockHashes are the 8 block hashes of one page.
type blockHashes [blocksPerPage]uint64

// hashBlocks returns the block hashes of page (PageSize bytes).
func hashBlocks(page []byte) blockHashes {
	var h blockHashes
	for i := range h {
		h[i] = xxh3.Hash(page[i*BlockSize:(i+1)*BlockSize])&blockHashMask | 1
	}
	return h
}

// zeroBlocks are the block hashes of a zero page.
var zeroBlocks = hashBlocks(zeroPage[:])

// BlockTable keeps the block hashes of every guest page as last sent; it
// is one flat allocation of 48 bytes per page. Not safe for concurrent use.
type BlockTable struct {
	b []byte
}

// NewBlockTable returns a table for pages pages, none known.
func NewBlockTable(pages uint64) *BlockTable {
	return &BlockTable{b: make([]byte, pages*blockEntry)}
}

// SizeBytes returns the memory the table occupies (0 for no table).
func (t *BlockTable) SizeBytes() int {
	if t == nil {
		return 0
	}
	return len(t.b)
}

func (t *BlockTable) entry(page uint64) []byte {
	return t.b[page*blockEntry : (page+1)*blockEntry]
}

// Set records the block hashes of what was sent for page.
func (t *BlockTable) Set(page uint64, h *blockHashes) {
	e := t.entry(page)
	for i, x := range h {
		binary.LittleEndian.PutUint32(e[i*blockHashSize:], uint32(x))
		binary.LittleEndian.PutUint16(e[i*blockHashSize+4:], uint16(x>>32))
	}
}

// Forget marks page's blocks as not known (the page must go out whole).
func (t *BlockTable) Forget(page uint64) { clear(t.entry(page)) }

// Changed compares h with what was last sent for page: ok is false when
// that is not known; otherwise bit i of mask is set when block i changed.
func (t *BlockTable) Changed(page uint64, h *blockHashes) (mask uint8, ok bool) {
	e := t.entry(page)
	for i, x := range h {
		old := uint64(binary.LittleEndian.Uint32(e[i*blockHashSize:])) |
			uint64(binary.LittleEndian.Uint16(e[i*blockHashSize+4:]))<<32
		if old == 0 {
			return 0, false
		}
		if old != x {
			mask |= 1 << i
		}
	}
	return mask, true
}

// deltaWorthIt reports whether a DELTA entry with the blocks of mask is
// smaller than the page sent whole: at most maxDeltaBlocks blocks, and at
// least one (a changed page whose block hashes all match goes out whole).
func deltaWorthIt(mask uint8) bool {
	n := bits.OnesCount8(mask)
	return n > 0 && n <= maxDeltaBlocks
}

// maxDeltaBlocks is the most blocks a DELTA entry carries: with 7 of 8 the
// entry would save less than its header and the decoder's work are worth.
const maxDeltaBlocks = blocksPerPage - 2
