package migrate

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/zeebo/xxh3"
)

// A small guest for scripted streams: 2 regions of 2 pages each.
func smallInfo() VMInfo {
	return VMInfo{
		Regions: []Region{{GPA: 0, Size: 2 * PageSize}, {GPA: 1 << 20, Size: 2 * PageSize}},
		VCPUs:   1,
		Devices: []string{"serial0"},
	}
}

func rec(t RecordType, payload []byte) []byte { return appendRecord(nil, t, payload) }

func helloRec(info VMInfo) []byte {
	p, err := encodeHello(info, helloFlags{})
	if err != nil {
		panic(err)
	}
	return rec(RecHello, p)
}

func iterRec(k uint32, final bool) []byte {
	return rec(RecIterationStart, encodeIterationStart(k, final))
}

// pageEnt is one page of a hand-built PAGES record: pagesRec lays out
// one entry per page (ZERO without data, else FULL) and the pages digest.
type pageEnt struct {
	page    uint64
	data    []byte
	corrupt bool // flip a data byte after the digest was taken
}

func zeroEntry(page uint64) pageEnt { return pageEnt{page: page} }

func fullEntry(page uint64, data []byte) pageEnt { return pageEnt{page: page, data: data} }

func pagesRec(entries ...pageEnt) []byte {
	var p []byte
	sum := xxh3.New()
	end := uint64(0)
	for _, e := range entries {
		if e.data == nil {
			p = appendEntryHeader(p, pageZero, e.page-end)
			p = binary.BigEndian.AppendUint16(p, 1)
		} else {
			p = appendEntryHeader(p, pageFull, e.page-end)
			p = binary.BigEndian.AppendUint16(p, 1)
			d := HashPage(e.data)
			sum.Write(d[:])
			p = append(p, e.data...)
			if e.corrupt {
				p[len(p)-1] ^= 1
			}
		}
		end = e.page + 1
	}
	d := sum.Sum128().Bytes()
	return rec(RecPages, append(p, d[:]...))
}

func endRec(n uint64) []byte { return rec(RecEnd, encodeEnd(n)) }

func commitRec() []byte { return rec(RecCommit, nil) }

// allPages sends the 4 pages of smallInfo: 0 and 3 full, 1 and 2 zero.
func allPages() []byte {
	return pagesRec(fullEntry(0, content(1)), zeroEntry(1), zeroEntry(2), fullEntry(3, content(4)))
}

// scripted plays a hand-written stream at Receive and collects its replies.
// A nil element closes the connection at that point.
func scripted(t *testing.T, ropts ReceiveOptions, dst *fakeDest, stream ...[]byte) (error, []record) {
	t.Helper()
	a, b := net.Pipe()
	acked := make(chan struct{}) // closed when HELLO-ACK arrived
	ready := make(chan struct{}) // closed when READY arrived
	go func() {
		sentEnd := false
		for _, r := range stream {
			if r == nil { // hang up, once the receiver has answered HELLO (and END)
				answer := acked
				if sentEnd {
					answer = ready
				}
				select {
				case <-answer:
				case <-time.After(2 * time.Second):
				}
				a.Close()
				return
			}
			if _, err := a.Write(r); err != nil {
				return
			}
			sentEnd = sentEnd || (len(r) >= HeaderSize && RecordType(binary.BigEndian.Uint16(r[4:])) == RecEnd)
		}
	}()
	replies := make(chan []record)
	go func() {
		var got []record
		rr := newRecordReader(a)
		for {
			r, err := rr.next()
			if err != nil {
				replies <- got
				return
			}
			got = append(got, record{r.Type, r.Flags, append([]byte(nil), r.Payload...)})
			switch r.Type {
			case RecHelloAck:
				close(acked)
			case RecReady:
				close(ready)
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := Receive(ctx, b, dst, ropts)
	b.Close()
	got := <-replies
	a.Close()
	return err, got
}

func TestReceiverHappyPath(t *testing.T) {
	dst := &fakeDest{}
	err, replies := scripted(t, ReceiveOptions{}, dst,
		helloRec(smallInfo()), iterRec(0, false), allPages(),
		iterRec(1, true), pagesRec(fullEntry(2, content(9))),
		rec(RecState, []byte("st")), endRec(5), commitRec())
	if err != nil {
		t.Fatal(err)
	}
	if len(replies) != 3 || replies[0].Type != RecHelloAck || replies[1].Type != RecReady || replies[2].Type != RecDoneAck {
		t.Fatalf("replies %v", replies)
	}
	if !dst.started || dst.discarded || string(dst.state) != "st" {
		t.Fatalf("started %v discarded %v state %q", dst.started, dst.discarded, dst.state)
	}
	if string(dst.mem[1][:PageSize]) != string(content(9)) || string(dst.mem[1][PageSize:]) != string(content(4)) {
		t.Fatal("region 1 content")
	}
}

// Every protocol violation fails the receiver in a Failed state, sends the
// source an ERROR that says why, discards the prepared VM and never starts it.
func TestReceiverRejects(t *testing.T) {
	hello, it0, final := helloRec(smallInfo()), iterRec(0, false), iterRec(1, true)
	bad := fullEntry(3, content(4))
	bad.corrupt = true // the data no longer matches the digest
	big := smallInfo()
	big.Regions[0].Size = 1 << 30
	big.Regions[1].GPA = 2 << 30
	many := smallInfo()
	many.VCPUs = 9
	v2 := helloRec(smallInfo())
	v2[HeaderSize+1] = 1
	binary.BigEndian.PutUint32(v2[12:], crcOf(v2[HeaderSize:]))
	cases := []struct {
		name     string
		ropts    ReceiveOptions
		stream   [][]byte
		want     error
		text     string
		prepared bool
	}{
		{"pages before hello", ReceiveOptions{}, [][]byte{allPages()}, ErrUnexpected, "PAGES in state AwaitHello", false},
		{"version", ReceiveOptions{}, [][]byte{v2}, ErrVersion, "version 1", false},
		{"too much memory", ReceiveOptions{MaxMemory: 64 << 20}, [][]byte{helloRec(big)}, ErrRefused, "at most 64 MiB", false},
		{"too many vcpus", ReceiveOptions{MaxVCPUs: 8}, [][]byte{helloRec(many)}, ErrRefused, "9 vCPUs", false},
		{"hello twice", ReceiveOptions{}, [][]byte{hello, hello}, ErrUnexpected, "HELLO in state AwaitPagesOrState", true},
		{"pages before iteration", ReceiveOptions{}, [][]byte{hello, allPages()}, ErrUnexpected, "before the first ITERATION-START", true},
		{"iteration skipped", ReceiveOptions{}, [][]byte{hello, it0, iterRec(2, false)}, ErrUnexpected, "ITERATION-START 2, expected 1", true},
		{"iteration not from 0", ReceiveOptions{}, [][]byte{hello, iterRec(1, false)}, ErrUnexpected, "expected 0", true},
		{"page outside memory", ReceiveOptions{}, [][]byte{hello, it0, pagesRec(zeroEntry(4))}, ErrMalformed, "page 4 is outside guest memory", true},
		{"digest mismatch", ReceiveOptions{}, [][]byte{hello, it0, pagesRec(bad)}, ErrDigestMismatch, "page 3", true},
		{"state before final", ReceiveOptions{}, [][]byte{hello, it0, allPages(), rec(RecState, nil)}, ErrUnexpected, "STATE before the stop-and-copy", true},
		{"duplicate state", ReceiveOptions{}, [][]byte{hello, it0, allPages(), final, rec(RecState, nil), rec(RecState, nil)}, ErrUnexpected, "duplicate STATE", true},
		{"pages after state", ReceiveOptions{}, [][]byte{hello, it0, final, rec(RecState, nil), allPages()}, ErrUnexpected, "PAGES in state AwaitEnd", true},
		{"end before state", ReceiveOptions{}, [][]byte{hello, it0, allPages(), final, endRec(4)}, ErrUnexpected, "END in state AwaitPagesOrState", true},
		{"iteration after final", ReceiveOptions{}, [][]byte{hello, it0, final, iterRec(2, false)}, ErrUnexpected, "after the stop-and-copy", true},
		{"entry count", ReceiveOptions{}, [][]byte{hello, it0, allPages(), final, rec(RecState, nil), endRec(5)}, ErrMalformed, "END says 5", true},
		{"missing pages", ReceiveOptions{}, [][]byte{hello, it0, pagesRec(zeroEntry(0)), final, rec(RecState, nil), endRec(1)}, ErrMalformed, "3 guest pages were never received", true},
		{"done-ack from source", ReceiveOptions{}, [][]byte{hello, rec(RecDoneAck, nil)}, ErrUnexpected, "DONE-ACK", true},
		{"unknown type", ReceiveOptions{}, [][]byte{hello, rawHeader(Magic, 42, 0, HeaderSize, 0)}, ErrUnknownType, "42", true},
		{"oversized", ReceiveOptions{}, [][]byte{hello, rawHeader(Magic, RecState, 0, 1<<30, 0)}, ErrTooLarge, "STATE payload", true},
		{"corrupt", ReceiveOptions{}, [][]byte{hello, corruptCRC(allPages())}, ErrChecksum, "PAGES crc", true},
		{"truncated", ReceiveOptions{}, [][]byte{hello, it0, allPages()[:100], nil}, ErrTruncated, "stream ended early", true},
		{"hang-up", ReceiveOptions{}, [][]byte{hello, it0, nil}, ErrClosed, "AwaitPagesOrState", true},
		{"commit before end", ReceiveOptions{}, [][]byte{hello, it0, allPages(), final, rec(RecState, nil), commitRec()}, ErrUnexpected, "COMMIT in state AwaitEnd", true},
		{"ready from source", ReceiveOptions{}, [][]byte{hello, rec(RecReady, nil)}, ErrUnexpected, "READY in state AwaitPagesOrState", true},
		{"end twice", ReceiveOptions{}, [][]byte{hello, it0, allPages(), final, rec(RecState, nil), endRec(4), endRec(4)}, ErrUnexpected, "END in state AwaitCommit", true},
		{"hang-up before commit", ReceiveOptions{}, [][]byte{hello, it0, allPages(), final, rec(RecState, nil), endRec(4), nil}, ErrClosed, "AwaitCommit", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dst := &fakeDest{}
			err, replies := scripted(t, c.ropts, dst, c.stream...)
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.text) {
				t.Fatalf("error %v, want %v mentioning %q", err, c.want, c.text)
			}
			if dst.started || dst.discarded != c.prepared || dst.prepared != c.prepared {
				t.Fatalf("prepared %v started %v discarded %v", dst.prepared, dst.started, dst.discarded)
			}
			last := replies[len(replies)-1]
			if !strings.HasPrefix(c.name, "hang-up") && c.name != "truncated" && (last.Type != RecError || !strings.Contains(string(last.Payload), c.text)) {
				t.Fatalf("last reply %v %q, want ERROR mentioning %q", last.Type, last.Payload, c.text)
			}
		})
	}
}

func crcOf(p []byte) uint32 {
	h := appendRecord(nil, RecError, p)
	return binary.BigEndian.Uint32(h[12:])
}

func corruptCRC(r []byte) []byte {
	r = append([]byte(nil), r...)
	r[len(r)-1] ^= 0x10
	return r
}

// An ERROR from the source aborts without answering it.
func TestReceiverSourceError(t *testing.T) {
	dst := &fakeDest{}
	err, replies := scripted(t, ReceiveOptions{}, dst,
		helloRec(smallInfo()), iterRec(0, false), rec(RecError, encodeError("source paused too long")))
	var re *RemoteError
	if !errors.As(err, &re) || re.Msg != "source paused too long" {
		t.Fatalf("error %v", err)
	}
	if len(replies) != 1 || replies[0].Type != RecHelloAck || !dst.discarded || dst.started {
		t.Fatalf("replies %v, discarded %v", replies, dst.discarded)
	}
}

// A ZERO entry zeroes a page that holds data (pages are resent over
// iterations), and a FULL entry overwrites.
func TestReceiverZeroOverwrites(t *testing.T) {
	dst := &fakeDest{}
	err, _ := scripted(t, ReceiveOptions{}, dst,
		helloRec(smallInfo()), iterRec(0, false), allPages(),
		iterRec(1, false), pagesRec(zeroEntry(0), fullEntry(1, content(7))),
		iterRec(2, true), rec(RecState, nil), endRec(6), commitRec())
	if err != nil {
		t.Fatal(err)
	}
	if !isZeroPage(dst.mem[0][:PageSize]) || string(dst.mem[0][PageSize:]) != string(content(7)) {
		t.Fatal("pages 0/1 not updated")
	}
}

// A source that goes silent is given up after IdleTimeout.
func TestReceiverIdleTimeout(t *testing.T) {
	dst := &fakeDest{}
	start := time.Now()
	err, replies := scripted(t, ReceiveOptions{IdleTimeout: 50 * time.Millisecond}, dst,
		helloRec(smallInfo()), iterRec(0, false)) // then silence, connection open
	if err == nil || !strings.Contains(err.Error(), "timeout") || time.Since(start) > 5*time.Second {
		t.Fatalf("error %v after %v", err, time.Since(start))
	}
	if !dst.discarded || dst.started || replies[len(replies)-1].Type != RecError {
		t.Fatalf("discarded %v started %v replies %v", dst.discarded, dst.started, replies)
	}
}

// Cancelling the receiver's context aborts it and tells the source.
func TestReceiverCancel(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	ctx, cancel := context.WithCancel(context.Background())
	dst := &fakeDest{}
	done := make(chan error, 1)
	go func() {
		_, err := Receive(ctx, b, dst, ReceiveOptions{})
		b.Close()
		done <- err
	}()
	if _, err := a.Write(helloRec(smallInfo())); err != nil {
		t.Fatal(err)
	}
	rr := newRecordReader(a)
	if r, err := rr.next(); err != nil || r.Type != RecHelloAck {
		t.Fatalf("%v %v", r.Type, err)
	}
	cancel()
	r, err := rr.next()
	if err != nil || r.Type != RecError || !strings.Contains(string(r.Payload), "context canceled") {
		t.Fatalf("after cancel: %v %q %v", r.Type, r.Payload, err)
	}
	if err := <-done; !errors.Is(err, context.Canceled) || !dst.discarded || dst.started {
		t.Fatalf("error %v discarded %v", err, dst.discarded)
	}
}
