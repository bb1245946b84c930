package migrate

import (
	"encoding/binary"
	"testing"

	"github.com/zeebo/xxh3"
)

func TestDigestTableStartsNeverSent(t *testing.T) {
	tab := NewDigestTable(1000)
	for _, p := range []uint64{0, 1, 500, 999} {
		if _, iter := tab.Lookup(p); iter != NeverSent {
			t.Fatalf("page %d: iteration %d, want NeverSent", p, iter)
		}
		// A fresh entry's digest bytes are zero: that must not match a
		// page whose digest happens to be zero, nor the zero page.
		if tab.Match(p, Digest{}) || tab.Match(p, ZeroDigest) {
			t.Fatalf("page %d matches before it was ever sent", p)
		}
	}
}

func TestDigestTableUpdateLookupMatch(t *testing.T) {
	tab := NewDigestTable(64)
	a := make([]byte, PageSize)
	a[17] = 1
	b := make([]byte, PageSize)
	b[4095] = 1
	da := HashPage(a)
	tab.Update(7, da, 3)
	if d, iter := tab.Lookup(7); d != da || iter != 3 {
		t.Fatalf("Lookup(7) = %v, %d", d, iter)
	}
	if !tab.Match(7, da) || tab.Match(7, HashPage(b)) || tab.Match(6, da) || tab.Match(8, da) {
		t.Fatal("Match does not tell pages and contents apart")
	}
	if d, ok := tab.MatchContent(7, a); !ok || d != da {
		t.Fatal("MatchContent(same bytes) = false")
	}
	if _, ok := tab.MatchContent(7, b); ok {
		t.Fatal("MatchContent(changed bytes) = true")
	}
	tab.Update(7, HashPage(b), 4)
	if !tab.Match(7, HashPage(b)) || tab.Match(7, da) {
		t.Fatal("Update did not replace the digest")
	}
	tab.Reset(7)
	if _, iter := tab.Lookup(7); iter != NeverSent || tab.Match(7, HashPage(b)) {
		t.Fatal("Reset did not forget the page")
	}
	// The last entry is addressable and independent of its neighbour.
	tab.Update(63, da, 0)
	if !tab.Match(63, da) || tab.Match(62, da) {
		t.Fatal("last entry")
	}
}

func TestDigestTableSize(t *testing.T) {
	const pages = 1 << 18 // 1 GiB of guest memory
	tab := NewDigestTable(pages)
	if tab.SizeBytes() != 20*pages || tab.Pages() != pages {
		t.Fatalf("table of %d bytes for %d pages", tab.SizeBytes(), tab.Pages())
	}
	if ratio := float64(tab.SizeBytes()) / float64(pages*PageSize); ratio > 0.005 {
		t.Fatalf("table is %.3f%% of guest memory", ratio*100)
	}
}

func TestDigestCanonicalForm(t *testing.T) {
	p := make([]byte, PageSize)
	for i := range p {
		p[i] = byte(i * 13)
	}
	d := HashPage(p)
	u := xxh3.Hash128(p)
	if binary.BigEndian.Uint64(d[:8]) != u.Hi || binary.BigEndian.Uint64(d[8:]) != u.Lo {
		t.Fatalf("digest %v is not big-endian hi||lo of %x/%x", d, u.Hi, u.Lo)
	}
	if ZeroDigest != HashPage(make([]byte, PageSize)) || ZeroDigest == d {
		t.Fatal("ZeroDigest is not the digest of a zero page")
	}
}

func TestIsZeroPage(t *testing.T) {
	p := make([]byte, PageSize)
	if !isZeroPage(p) {
		t.Fatal("zero page not detected")
	}
	for _, off := range []int{0, 1, 31, 32, 63, 64, 2048, 4094, 4095} {
		p[off] = 0x80
		if isZeroPage(p) {
			t.Fatalf("byte %d set, page still reported zero", off)
		}
		p[off] = 0
	}
}
