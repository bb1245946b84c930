package migrate

import (
	"encoding/binary"
	"fmt"

	"github.com/zeebo/xxh3"
)

// Digest is the XXH3-128 hash of a page in canonical (big-endian: high 64
// bits, then low 64 bits) byte order, as it travels on the wire.
type Digest [16]byte

// HashPage returns the digest of content (normally one PageSize page).
func HashPage(content []byte) Digest {
	return Digest(xxh3.Hash128(content).Bytes())
}

// ZeroDigest is the digest of a PageSize page of zero bytes.
var ZeroDigest = HashPage(zeroPage[:])

var zeroPage [PageSize]byte

// isZeroPage reports whether p (at most PageSize bytes) holds only zero bytes.
// The runtime's vectorised compare stops at the first differing block, so a
// non-zero page is usually rejected after its first few bytes.
func isZeroPage(p []byte) bool {
	return string(p) == string(zeroPage[:len(p)])
}

func (d Digest) String() string { return fmt.Sprintf("%x", d[:]) }

// NeverSent is the iteration field of a page that has not been sent yet.
const NeverSent uint32 = 0xFFFFFFFF

// digestEntrySize is one table entry: 16-byte digest + uint32 iteration.
const digestEntrySize = digestSize + 4

// DigestTable remembers, for every guest page, the digest of the content last
// sent and the iteration it was sent in. It is one flat allocation of
// 20 bytes per page (about 0.49% of guest memory). Pages are numbered
// globally: the pages of region 0, then those of region 1, and so on.
//
// A DigestTable is not safe for concurrent use.
type DigestTable struct {
	b     []byte
	pages uint64
}

// NewDigestTable returns a table for pages pages, every entry NeverSent.
func NewDigestTable(pages uint64) *DigestTable {
	t := &DigestTable{b: make([]byte, pages*digestEntrySize), pages: pages}
	for p := range pages {
		t.Reset(p)
	}
	return t
}

// Pages returns the number of pages the table covers.
func (t *DigestTable) Pages() uint64 { return t.pages }

// SizeBytes returns the memory the table occupies (0 for no table).
func (t *DigestTable) SizeBytes() int {
	if t == nil {
		return 0
	}
	return len(t.b)
}

func (t *DigestTable) entry(page uint64) []byte {
	return t.b[page*digestEntrySize : page*digestEntrySize+digestEntrySize]
}

// Lookup returns the digest last recorded for page and the iteration it was
// sent in; iter is NeverSent (and d meaningless) if it was never sent.
func (t *DigestTable) Lookup(page uint64) (d Digest, iter uint32) {
	e := t.entry(page)
	return Digest(e[:digestSize]), binary.LittleEndian.Uint32(e[digestSize:])
}

// Update records that page was sent with digest d in iteration iter.
func (t *DigestTable) Update(page uint64, d Digest, iter uint32) {
	e := t.entry(page)
	copy(e, d[:])
	binary.LittleEndian.PutUint32(e[digestSize:], iter)
}

// Reset marks page as never sent.
func (t *DigestTable) Reset(page uint64) {
	e := t.entry(page)
	clear(e[:digestSize])
	binary.LittleEndian.PutUint32(e[digestSize:], NeverSent)
}

// Match reports whether page was sent before and its recorded digest is d.
func (t *DigestTable) Match(page uint64, d Digest) bool {
	e := t.entry(page)
	return Digest(e[:digestSize]) == d && binary.LittleEndian.Uint32(e[digestSize:]) != NeverSent
}

// MatchContent hashes content and reports whether it equals what was last
// sent for page. The digest is returned so a caller that must send the page
// does not hash it twice.
func (t *DigestTable) MatchContent(page uint64, content []byte) (Digest, bool) {
	d := HashPage(content)
	return d, t.Match(page, d)
}
