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
	hp, err := encodeHello(testInfo(), false)
	if err != nil {
		t.Fatal(err)
	}
	recs := []record{
		{RecHello, hp},
		{RecHelloAck, encodeHelloAck(false)},
		{RecIterationStart, encodeIterationStart(7, true)},
		{RecState, bytes.Repeat([]byte("state"), 100000)},
		{RecEnd, encodeEnd(123456789)},
		{RecDoneAck, nil},
		{RecError, encodeError("restore failed: µ-code mismatch")},
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
	if k, final, err := decodeIterationStart(recs[2].Payload); k != 7 || !final || err != nil {
		t.Fatalf("ITERATION-START decoded to %d %v %v", k, final, err)
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
	d1 := w.stageFull(1<<40, pg(1))
	w.keepStaged()
	w.stageFull(6, pg(2))
	w.dropStaged()
	d3 := w.stageFull(7, pg(3))
	w.keepStaged()
	w.endPages()
	w.beginPages() // empty records vanish
	w.endPages()
	if err := w.flush(); err != nil {
		t.Fatal(err)
	}
	rr := newRecordReader(&out)
	rec, err := rr.next()
	if err != nil || rec.Type != RecPages {
		t.Fatalf("%v %v", rec.Type, err)
	}
	it := pagesIter{p: rec.Payload}
	var got []pageEntry
	var e pageEntry
	for it.next(&e) {
		got = append(got, pageEntry{e.Page, e.Kind, append([]byte(nil), e.Digest...), append([]byte(nil), e.Data...)})
	}
	if it.err != nil || len(got) != 3 {
		t.Fatalf("%d entries, %v", len(got), it.err)
	}
	if got[0].Page != 5 || got[0].Kind != pageZero || got[0].Data != nil {
		t.Fatalf("entry 0: %+v", got[0])
	}
	if got[1].Page != 1<<40 || Digest(got[1].Digest) != d1 || !bytes.Equal(got[1].Data, pg(1)) {
		t.Fatal("entry 1")
	}
	if got[2].Page != 7 || Digest(got[2].Digest) != d3 || HashPage(got[2].Data) != d3 {
		t.Fatal("entry 2")
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
	entry := func(page uint64, kind uint8) []byte {
		return append(binary.BigEndian.AppendUint64(nil, page), kind)
	}
	full := append(entry(1, pageFull), make([]byte, digestSize+PageSize)...)
	var many []byte
	for i := range MaxPagesPerBatch + 1 {
		many = append(many, entry(uint64(i), pageZero)...)
	}
	cases := []struct {
		name string
		p    []byte
		text string
	}{
		{"unknown kind", entry(3, 7), "unknown kind 7"},
		{"truncated entry header", entry(3, pageZero)[:5], "truncated"},
		{"truncated full page", full[:len(full)-1], "truncated"},
		{"too many entries", many, "more than 256 entries"},
	}
	for _, c := range cases {
		it := pagesIter{p: c.p}
		var e pageEntry
		for it.next(&e) {
		}
		if !errors.Is(it.err, ErrMalformed) || !strings.Contains(it.err.Error(), c.text) {
			t.Fatalf("%s: %v", c.name, it.err)
		}
	}
}

func TestHelloRejects(t *testing.T) {
	good, _ := encodeHello(testInfo(), false)
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
	if _, err := encodeHello(overlap, false); err == nil || !strings.Contains(err.Error(), "overlap") {
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
