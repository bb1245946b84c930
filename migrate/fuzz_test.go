package migrate

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// Fuzz targets for everything a destination decodes from the network:
//
//	go test -run '^$' -fuzz '^FuzzRecordDecoder$' -fuzztime 20s ./migrate
//	go test -run '^$' -fuzz '^FuzzReceiver$' -fuzztime 20s ./migrate
//
// The seed corpus is in testdata/fuzz/; FERRY_WRITE_FUZZ_SEEDS=1 go test
// -run TestWriteFuzzSeeds ./migrate rewrites it from fuzzSeeds.

// reseal fixes the CRC of every whole record in a stream, so that the
// fuzzer's mutations reach the payload decoders and the state machine
// instead of stopping at the checksum.
func reseal(b []byte) {
	for o := 0; o+HeaderSize <= len(b); {
		n := int(binary.BigEndian.Uint32(b[o+8:]))
		if n < HeaderSize || o+n > len(b) {
			return
		}
		binary.BigEndian.PutUint32(b[o+12:], crc32.Checksum(b[o+HeaderSize:o+n], castagnoli))
		o += n
	}
}

// fuzzStream splits a fuzz input: the first byte chooses whether the CRCs
// are resealed (bit 0), the rest is the stream.
func fuzzStream(data []byte) []byte {
	if len(data) == 0 {
		return nil
	}
	s := append([]byte(nil), data[1:]...)
	if data[0]&1 == 1 {
		reseal(s)
	}
	return s
}

// FuzzRecordDecoder reads records and decodes each payload. Whatever is
// accepted must respect the limits and re-encode to the same bytes.
func FuzzRecordDecoder(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		rr := newRecordReader(bytes.NewReader(fuzzStream(data)))
		for {
			rec, err := rr.next()
			if err != nil {
				if rec.Payload != nil {
					t.Fatal("a failed read returned a payload")
				}
				return
			}
			lo, hi, ok := payloadLimits(rec.Type)
			if !ok || len(rec.Payload) < lo || len(rec.Payload) > hi {
				t.Fatalf("%v with %d payload bytes accepted (limits %d..%d, known %v)", rec.Type, len(rec.Payload), lo, hi, ok)
			}
			decodePayload(t, rec)
		}
	})
}

func decodePayload(t *testing.T, rec record) {
	p := rec.Payload
	switch rec.Type {
	case RecHello:
		h, err := decodeHello(p)
		if err != nil {
			return
		}
		if err := checkInfo(h.Info); err != nil {
			t.Fatalf("decoded HELLO fails checkInfo: %v", err)
		}
		again, err := encodeHello(h.Info, h.Flags)
		if err != nil || !bytes.Equal(again, p) {
			t.Fatalf("HELLO does not re-encode to its input (%v)", err)
		}
	case RecHelloAck:
		if f, err := decodeHelloAck(p); err == nil && !bytes.Equal(encodeHelloAck(f), p) {
			t.Fatal("HELLO-ACK does not re-encode to its input")
		}
	case RecKept:
		first, n := binary.BigEndian.Uint64(p), uint64(binary.BigEndian.Uint32(p[8:]))
		if n == 0 || n > MaxKeptPages || first+n < first {
			return
		}
		tb := NewDigestTable(n)
		if _, err := decodeKept(p, first, first+n, func(page uint64, d Digest) { tb.Update(page-first, d, 0) }); err != nil {
			return
		}
		again := encodeKept(tb, 0, int(n))
		if !bytes.Equal(again[8:], p[8:]) {
			t.Fatal("KEPT does not re-encode to its input")
		}
	case RecIterationStart:
		k, flags, err := decodeIterationStart(p)
		if err == nil && !bytes.Equal(encodeIterationStartFlags(k, flags), p) {
			t.Fatal("ITERATION-START does not re-encode to its input")
		}
	case RecPages:
		checkPages(t, p, 1<<20)
	case RecMissing:
		// The harness sizes the bitmap from the record itself, so it
		// keeps the guest small (a receiver sizes it from its own guest).
		first := binary.BigEndian.Uint64(p)
		if first > 1<<24 {
			return
		}
		total := first + uint64(binary.BigEndian.Uint32(p[8:]))
		missing := make([]uint64, (total+63)/64)
		if n, err := decodeMissing(p, first, total, missing); err == nil {
			if again := encodeMissing(missing, first, int(n)); !bytes.Equal(again, p) {
				t.Fatal("MISSING does not re-encode to its input")
			}
		}
	case RecRequest:
		if pages, err := decodeRequest(p, 1<<30); err == nil && !bytes.Equal(encodeRequest(pages), p) {
			t.Fatal("REQUEST does not re-encode to its input")
		}
	case RecComplete:
		decodeComplete(p)
	case RecStreams:
		if n, err := decodeStreams(p); err == nil && !bytes.Equal(encodeStreams(n), p) {
			t.Fatal("STREAMS does not re-encode to its input")
		}
	case RecSync:
		if k, n, err := decodeSync(p); err == nil && !bytes.Equal(encodeSync(k, n), p) {
			t.Fatal("SYNC does not re-encode to its input")
		}
	case RecEnd, RecPostcopyEnd:
		if !bytes.Equal(encodeEnd(decodeEnd(p)), p) {
			t.Fatal("END does not re-encode")
		}
	case RecError:
		if e := decodeError(p); len(e.Msg) > 3*MaxErrorMessage {
			t.Fatalf("ERROR message of %d bytes", len(e.Msg))
		}
	}
}

// fuzzDest is a Destination that checks the order of calls.
type fuzzDest struct {
	t                                   *testing.T
	mem                                 [][]byte
	prepared, restored, started, closed bool
}

func (d *fuzzDest) Prepare(info VMInfo) error {
	if d.prepared || d.closed {
		d.t.Fatal("Prepare called twice")
	}
	var total uint64
	for _, r := range info.Regions {
		total += r.Size
	}
	if total > 1<<20 || info.VCPUs > 4 {
		d.t.Fatalf("Prepare called beyond the limits: %d bytes, %d vCPUs", total, info.VCPUs)
	}
	for _, r := range info.Regions {
		d.mem = append(d.mem, make([]byte, r.Size))
	}
	d.prepared = true
	return nil
}

func (d *fuzzDest) Memory(i int) []byte { return d.mem[i] }

func (d *fuzzDest) Restore(state []byte) error {
	if !d.prepared || d.closed || d.restored {
		d.t.Fatal("Restore out of order")
	}
	if len(state) > MaxStateSize {
		d.t.Fatalf("state of %d bytes", len(state))
	}
	if bytes.HasPrefix(state, []byte("bad")) {
		return errors.New("fuzz: state refused")
	}
	d.restored = true
	return nil
}

func (d *fuzzDest) Start() error {
	if !d.restored || d.closed || d.started {
		d.t.Fatal("Start out of order")
	}
	d.started = true
	return nil
}

func (d *fuzzDest) Discard() {
	if !d.prepared || d.closed || d.started {
		d.t.Fatalf("Discard out of order (prepared %v, discarded %v, started %v)", d.prepared, d.closed, d.started)
	}
	d.closed = true
}

// oneWay is the receiver's connection: the fuzz input to read, replies
// thrown away.
type oneWay struct {
	io.Reader
	io.Writer
}

// FuzzReceiver plays the input at the receiver's state machine as the
// source's stream: it must never panic, never go past the limits, start the
// guest only on success, and leave nothing prepared after a failure.
func FuzzReceiver(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		dst := &fuzzDest{t: t}
		conn := oneWay{bytes.NewReader(fuzzStream(data)), io.Discard}
		_, err := Receive(context.Background(), conn, dst, ReceiveOptions{MaxMemory: 1 << 20, MaxVCPUs: 4})
		switch {
		case err == nil && !dst.started:
			t.Fatal("Receive succeeded without starting the guest")
		case err != nil && dst.started:
			t.Fatalf("guest started, yet Receive failed: %v", err)
		case err != nil && dst.prepared && !dst.closed:
			t.Fatalf("failed (%v) without discarding the prepared VM", err)
		}
	})
}

type fuzzSeed struct {
	name string
	data []byte
}

// fuzzSeeds are valid and nearly valid source streams (first byte 1:
// reseal CRCs after mutation).
func fuzzSeeds() []fuzzSeed {
	hello, it0, final := helloRec(smallInfo()), iterRec(0, false), iterRec(1, true)
	state := rec(RecState, []byte("state"))
	join := func(parts ...[]byte) []byte {
		b := []byte{1}
		for _, p := range parts {
			b = append(b, p...)
		}
		return b
	}
	zeros := pagesRec(zeroEntry(0), zeroEntry(1), zeroEntry(2), zeroEntry(3))
	resumeInfo := smallInfo()
	resumeInfo.ID = VMID{7}
	resumeHello, err := encodeHello(resumeInfo, helloFlags{Resume: true})
	if err != nil {
		panic(err)
	}
	keptTable := NewDigestTable(4)
	keptTable.Update(1, ZeroDigest, 0)
	keptTable.Update(2, HashPage(content(2)), 0)
	return []fuzzSeed{
		{"valid", join(hello, it0, allPages(), final, pagesRec(fullEntry(2, content(9))), state, endRec(5), commitRec())},
		{"valid-zero-pages", join(hello, it0, zeros, iterRec(1, false), pagesRec(zeroEntry(3)), iterRec(2, true), state, endRec(5), commitRec())},
		{"no-commit", join(hello, it0, zeros, final, state, endRec(4))},
		{"source-error", join(hello, it0, zeros, rec(RecError, []byte("source aborted")))},
		{"bad-state", join(hello, it0, zeros, final, rec(RecState, []byte("bad")), endRec(4), commitRec())},
		{"missing-page", join(hello, it0, pagesRec(zeroEntry(0)), final, state, endRec(1), commitRec())},
		{"hello-only", join(hello)},
		{"ack-records", join(rec(RecHelloAck, encodeHelloAck(helloFlags{})), rec(RecReady, nil), rec(RecDoneAck, nil))},
		{"crc-unsealed", append([]byte{0}, hello...)},
		{"resume-refused", join(rec(RecHello, resumeHello), it0, zeros)},
		{"kept-records", join(rec(RecHelloAck, encodeHelloAck(helloFlags{Resume: true})), rec(RecKept, encodeKept(keptTable, 0, 4)))},
		{"postcopy-records", join(rec(RecMissing, encodeMissing([]uint64{0b1010}, 0, 4)), rec(RecRequest, encodeRequest([]uint64{1, 3})),
			rec(RecPostcopyEnd, encodeEnd(2)), rec(RecComplete, encodeComplete(PostcopyStats{PagesRequested: 2, FaultMedianUS: 20, FaultP99US: 90})))},
		{"stream-records", join(rec(RecStreams, encodeStreams(3)), rec(RecSync, encodeSync(0, 5)), rec(RecSync, encodeSync(1, 9)))},
	}
}

// The valid seeds must stay valid as the protocol changes (then rewrite
// the corpus with TestWriteFuzzSeeds).
func TestFuzzSeedsValid(t *testing.T) {
	for _, s := range fuzzSeeds()[:2] {
		dst := &fuzzDest{t: t}
		conn := oneWay{bytes.NewReader(fuzzStream(s.data)), io.Discard}
		if _, err := Receive(context.Background(), conn, dst, ReceiveOptions{MaxMemory: 1 << 20, MaxVCPUs: 4}); err != nil || !dst.started {
			t.Fatalf("seed %s: %v", s.name, err)
		}
		file, err := os.ReadFile(filepath.Join("testdata", "fuzz", "FuzzReceiver", s.name))
		if err != nil || !bytes.Equal(file, []byte(fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s.data))) {
			t.Fatalf("testdata/fuzz/FuzzReceiver/%s is missing or stale (%v): rewrite it with TestWriteFuzzSeeds", s.name, err)
		}
	}
}

// TestWriteFuzzSeeds writes the seed corpus files (only when asked).
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("FERRY_WRITE_FUZZ_SEEDS") == "" {
		t.Skip("set FERRY_WRITE_FUZZ_SEEDS=1 to rewrite testdata/fuzz")
	}
	for _, target := range []string{"FuzzRecordDecoder", "FuzzReceiver"} {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, s := range fuzzSeeds() {
			body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s.data)
			if err := os.WriteFile(filepath.Join(dir, s.name), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}
