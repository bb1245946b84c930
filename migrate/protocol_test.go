package migrate

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/zeebo/xxh3"
)

func testInfo() VMInfo {
	return VMInfo{
		Regions: []Region{{GPA: 0, Size: 3 << 30}, {GPA: 4 << 30, Size: 1 << 30}},
		VCPUs:   4,
		Devices: []string{"serial0", "virtio-net0", "virtio-blk0"},
	}
}

// Every record type survives a trip through net.Pipe.
func TestRecordRoundTripOverPipe(t *testing.T) {
	hp, err := encodeHello(testInfo(), helloFlags{})
	if err != nil {
		t.Fatal(err)
	}
	recs := []record{
		{Type: RecHello, Payload: hp},
		{Type: RecHelloAck, Payload: encodeHelloAck(helloFlags{})},
		{Type: RecIterationStart, Payload: encodeIterationStart(7, true)},
		{Type: RecState, Payload: bytes.Repeat([]byte("state"), 100000)},
		{Type: RecEnd, Payload: encodeEnd(123456789)},
		{Type: RecDoneAck, Payload: nil},
		{Type: RecError, Payload: encodeError("restore failed: µ-code mismatch")},
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go func() {
		for _, r := range recs {
			if err := writeRecord(a, r.Type, r.Payload); err != nil {
				return
			}
		}
	}()
	rr := newRecordReader(b)
	for _, want := range recs {
		got, err := rr.next()
		if err != nil {
			t.Fatalf("%v: %v", want.Type, err)
		}
		if got.Type != want.Type || !bytes.Equal(got.Payload, want.Payload) {
			t.Fatalf("%v came back as %v (%d bytes)", want.Type, got.Type, len(got.Payload))
		}
	}
	h, err := decodeHello(hp)
	if err != nil || !reflect.DeepEqual(h.Info, testInfo()) || h.Version != ProtocolVersion {
		t.Fatalf("HELLO decoded to %+v, %v", h, err)
	}
	if k, flags, err := decodeIterationStart(recs[2].Payload); k != 7 || flags != iterFinal || err != nil {
		t.Fatalf("ITERATION-START decoded to %d %#x %v", k, flags, err)
	}
	if decodeEnd(recs[4].Payload) != 123456789 {
		t.Fatal("END count")
	}
	if decodeError(recs[6].Payload).Msg != "restore failed: µ-code mismatch" {
		t.Fatal("ERROR message")
	}
}

// PAGES records built in place by the sender's writer decode to the same
// entries; dropped entries leave no trace.
func TestPagesRecordRoundTrip(t *testing.T) {
	var out bytes.Buffer
	w := newRecordWriter(context.Background(), &out, 0, nil)
	if err := w.beginPages(); err != nil {
		t.Fatal(err)
	}
	pg := func(b byte) []byte { return bytes.Repeat([]byte{b}, PageSize) }
	w.addZero(5)
	w.addZero(6) // continues the ZERO run
	d7 := w.stageFull(7, pg(7))
	w.keepStaged()
	w.stageFull(8, pg(8))
	w.dropStaged()
	d9 := w.stageFull(9, pg(9))
	w.keepStaged()
	d10 := w.stageFull(10, pg(10)) // continues the FULL run of page 9
	w.keepStaged()
	changed := pg(0)
	copy(changed[2*BlockSize:], pg(0xcc)[:BlockSize])
	dd := w.stageFull(1<<40, changed)
	w.deltaStaged(1 << 2)
	w.endPages()
	w.beginPages() // empty records vanish
	w.endPages()
	if err := w.flush(); err != nil {
		t.Fatal(err)
	}
	rr := newRecordReader(&out)
	rec, err := rr.next()
	if err != nil || rec.Type != RecPages || rec.Flags != 0 {
		t.Fatalf("%v %#x %v", rec.Type, rec.Flags, err)
	}
	it := newRunIter(rec.Payload, 1<<41)
	var got []pageRun
	var r pageRun
	for it.next(&r) {
		r.Data = append([]byte(nil), r.Data...)
		got = append(got, r)
	}
	if it.err != nil || len(got) != 4 {
		t.Fatalf("%d entries, %v", len(got), it.err)
	}
	want := []pageRun{
		{Kind: pageZero, First: 5, Count: 2},
		{Kind: pageFull, First: 7, Count: 1, Data: pg(7)},
		{Kind: pageFull, First: 9, Count: 2, Data: append(pg(9), pg(10)...)},
		{Kind: pageDelta, First: 1 << 40, Count: 1, Mask: 1 << 2, Data: pg(0xcc)[:BlockSize]},
	}
	for i := range want {
		if g := got[i]; g.Kind != want[i].Kind || g.First != want[i].First || g.Count != want[i].Count ||
			g.Mask != want[i].Mask || !bytes.Equal(g.Data, want[i].Data) {
			t.Fatalf("entry %d: %+v, want %+v", i, g, want[i])
		}
	}
	sum := xxh3.New()
	for _, d := range []Digest{d7, d9, d10, dd} {
		sum.Write(d[:])
	}
	if Digest(sum.Sum128().Bytes()) != it.trailer {
		t.Fatal("the pages digest is not the hash of the pages' digests in entry order")
	}
	if _, err := rr.next(); !errors.Is(err, ErrClosed) {
		t.Fatalf("after the last record: %v, want ErrClosed", err)
	}
}

func rawHeader(magic uint32, t RecordType, flags uint16, length, crc uint32) []byte {
	b := make([]byte, HeaderSize)
	binary.BigEndian.PutUint32(b, magic)
	binary.BigEndian.PutUint16(b[4:], uint16(t))
	binary.BigEndian.PutUint16(b[6:], flags)
	binary.BigEndian.PutUint32(b[8:], length)
	binary.BigEndian.PutUint32(b[12:], crc)
	return b
}

// Corrupt, truncated, oversized and unknown records are rejected with a
// specific error, and no buffer is sized from an unchecked length.
func TestRecordReaderRejects(t *testing.T) {
	good := appendRecord(nil, RecEnd, encodeEnd(1))
	flipped := append([]byte(nil), good...)
	flipped[len(flipped)-1] ^= 0x40
	cases := []struct {
		name string
		in   []byte
		want error
		text string
	}{
		{"bad magic", append(rawHeader(0xdeadbeef, RecEnd, 0, 24, 0), make([]byte, 8)...), ErrBadMagic, "magic"},
		{"type 0", rawHeader(Magic, RecInvalid, 0, HeaderSize, 0), ErrUnknownType, "unknown record type: 0"},
		{"unknown type", rawHeader(Magic, 99, 0, HeaderSize, 0), ErrUnknownType, "99"},
		{"flags", rawHeader(Magic, RecEnd, 1, 24, 0), ErrBadFlags, "flags"},
		{"shorter than header", rawHeader(Magic, RecDoneAck, 0, 3, 0), ErrTooLarge, "shorter than the header"},
		{"oversized PAGES", rawHeader(Magic, RecPages, 0, 100<<20, 0), ErrTooLarge, "PAGES payload of"},
		{"oversized STATE", rawHeader(Magic, RecState, 0, 0xffffffff, 0), ErrTooLarge, "STATE payload of"},
		{"oversized ERROR", rawHeader(Magic, RecError, 0, HeaderSize+MaxErrorMessage+1, 0), ErrTooLarge, "ERROR"},
		{"wrong fixed size", rawHeader(Magic, RecHelloAck, 0, HeaderSize+5, 0), ErrTooLarge, "HELLO-ACK"},
		{"checksum", flipped, ErrChecksum, "crc"},
		{"truncated payload", good[:len(good)-3], ErrTruncated, "stream ended early"},
		{"truncated header", good[:9], ErrTruncated, "header"},
		{"clean end", nil, ErrClosed, "closed"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rr := newRecordReader(bytes.NewReader(c.in))
			_, err := rr.next()
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.text) {
				t.Fatalf("error %v, want %v mentioning %q", err, c.want, c.text)
			}
			if cap(rr.buf) > MaxStateSize {
				t.Fatalf("reader allocated %d bytes", cap(rr.buf))
			}
			if c.want == ErrTooLarge && cap(rr.buf) != 0 {
				t.Fatalf("reader allocated %d bytes for a rejected header", cap(rr.buf))
			}
		})
	}
}

func TestPagesIterRejects(t *testing.T) {
	const total = 1000
	trailer := make([]byte, pagesDigestSize)
	entry := func(kind uint8, gap uint64, body ...byte) []byte {
		return append(appendEntryHeader(nil, kind, gap), body...)
	}
	count := func(n uint16) []byte { return binary.BigEndian.AppendUint16(nil, n) }
	full := func(gap uint64, n uint16) []byte {
		return append(entry(pageFull, gap, count(n)...), make([]byte, int(n)*PageSize)...)
	}
	cat := func(parts ...[]byte) []byte {
		var b []byte
		for _, p := range parts {
			b = append(b, p...)
		}
		return append(b, trailer...)
	}
	var manyZero, manyFull [][]byte
	for range MaxPagesPerBatch + 1 {
		manyZero = append(manyZero, entry(pageZero, 1, count(1)...))
		manyFull = append(manyFull, full(0, 1))
	}
	cases := []struct {
		name string
		p    []byte
		text string
	}{
		{"unknown kind", cat(entry(7, 3, count(1)...)), "kind 7"},
		{"no entries", cat(), "without entries"},
		{"no pages digest", entry(pageZero, 3, count(1)...), "truncated"},
		{"truncated count", cat(entry(pageZero, 3, 0)), "truncated count"},
		{"zero count", cat(entry(pageZero, 3, count(0)...)), "0 pages"},
		{"truncated data", cat(full(0, 2))[:PageSize+20], "truncated"},
		{"page outside the guest", cat(entry(pageZero, total, count(1)...)), "outside guest memory"},
		{"run past the guest", cat(entry(pageZero, total-1, count(2)...)), "outside"},
		{"huge gap", cat(entry(pageZero, 1<<63, count(1)...)), "outside"},
		{"too many ZERO entries", cat(manyZero...), "ZERO entries"},
		{"too many pages with data", cat(manyFull...), "this entry may have"},
		{"FULL run over the batch", cat(full(0, MaxPagesPerBatch+1)), "this entry may have"},
		{"DELTA without blocks", cat(entry(pageDelta, 3, 0)), "mask"},
		{"DELTA with every block", cat(entry(pageDelta, 3, 0xff)), "mask"},
		{"DELTA blocks truncated", cat(entry(pageDelta, 3, 0x03), make([]byte, BlockSize)), "truncated"},
	}
	for _, c := range cases {
		it := newRunIter(c.p, total)
		var r pageRun
		for it.next(&r) {
		}
		if !errors.Is(it.err, ErrMalformed) || !strings.Contains(it.err.Error(), c.text) {
			t.Errorf("%s: %v", c.name, it.err)
		}
	}
}

func TestHelloRejects(t *testing.T) {
	good, _ := encodeHello(testInfo(), helloFlags{})
	mod := func(f func(p []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	cases := []struct {
		name string
		p    []byte
		want error
	}{
		{"version", mod(func(p []byte) []byte { p[1] = 1; return p }), ErrVersion},
		{"page size", mod(func(p []byte) []byte { binary.BigEndian.PutUint32(p[4:], 2<<20); return p }), ErrRefused},
		{"trailing bytes", mod(func(p []byte) []byte { return append(p, 0) }), ErrMalformed},
		{"truncated regions", good[:helloFixedSize+20], ErrMalformed},
		{"truncated devices", good[:len(good)-2], ErrMalformed},
		{"no vcpus", mod(func(p []byte) []byte { binary.BigEndian.PutUint32(p[8:], 0); return p }), ErrMalformed},
		{"unaligned region", mod(func(p []byte) []byte { p[helloFixedSize+7] = 1; return p }), ErrMalformed},
		{"too many regions", mod(func(p []byte) []byte { binary.BigEndian.PutUint16(p[12:], 65); return p }), ErrMalformed},
	}
	for _, c := range cases {
		if _, err := decodeHello(c.p); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	overlap := testInfo()
	overlap.Regions[1].GPA = 1 << 30
	if _, err := encodeHello(overlap, helloFlags{}); err == nil || !strings.Contains(err.Error(), "overlap") {
		t.Errorf("overlapping regions: %v", err)
	}
}

func TestErrorMessageCapped(t *testing.T) {
	long := strings.Repeat("é", MaxErrorMessage) // 2 bytes per rune
	p := encodeError(long)
	if len(p) > MaxErrorMessage || !utf8.Valid(p) {
		t.Fatalf("ERROR payload of %d bytes, valid UTF-8 %v", len(p), utf8.Valid(p))
	}
	if got := decodeError([]byte{0xff, 'o', 'k'}).Msg; got != "?ok" {
		t.Fatalf("invalid UTF-8 decoded to %q", got)
	}
	if string(encodeError("")) != "unspecified error" {
		t.Fatal("empty message")
	}
}

// A writer bigger than the buffer still produces one valid record.
func TestLargeRecordBypassesBuffer(t *testing.T) {
	var out bytes.Buffer
	w := newRecordWriter(context.Background(), &out, 0, nil)
	state := bytes.Repeat([]byte{0xab}, MaxStateSize)
	if err := w.record(RecIterationStart, encodeIterationStart(0, true)); err != nil {
		t.Fatal(err)
	}
	if err := w.record(RecState, state); err != nil {
		t.Fatal(err)
	}
	if err := w.flush(); err != nil {
		t.Fatal(err)
	}
	rr := newRecordReader(&out)
	if rec, err := rr.next(); err != nil || rec.Type != RecIterationStart {
		t.Fatal(rec.Type, err)
	}
	if rec, err := rr.next(); err != nil || rec.Type != RecState || !bytes.Equal(rec.Payload, state) {
		t.Fatal(rec.Type, err)
	}
	if _, err := rr.next(); !errors.Is(err, ErrClosed) && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
}
