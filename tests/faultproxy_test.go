package tests

import (
	"encoding/binary"
	"io"
	"net"
	"sync"
	"testing"

	"github.com/ferryvmm/ferry/migrate"
)

// faultProxy sits between a migration source and destination (plain TCP,
// so that it can follow the record stream) and injects one fault in one
// direction: cut the connection, stall it, or flip a bit, at a byte
// position given either absolutely or relative to the start of the n-th
// record of a type (e.g. "16 bytes into the first COMMIT").
type faultProxy struct {
	t      *testing.T
	ln     net.Listener
	target string
	f      fault

	mu    sync.Mutex
	fired bool // the fault happened
	conns []net.Conn
	done  chan struct{} // closed by close
}

// fault describes what to break and where.
type fault struct {
	toSource bool               // direction: false source→destination, true destination→source
	rec      migrate.RecordType // anchor record type; 0: off is an absolute stream offset
	nth      int                // which record of that type (1 = the first)
	off      int64              // bytes after the anchor's first byte (or from the stream start)
	action   faultAction
	bit      byte // flip: the bit mask to flip
}

type faultAction int

const (
	cut   faultAction = iota // forward up to the position, then close both connections
	stall                    // forward up to the position, then nothing more in that direction
	flip                     // flip bits of the byte at the position, go on
)

// newFaultProxy listens on a loopback port and relays one connection at a
// time to target, applying f to the first connection only.
func newFaultProxy(t *testing.T, target string, f fault) *faultProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &faultProxy{t: t, ln: ln, target: target, f: f, done: make(chan struct{})}
	go p.serve()
	t.Cleanup(p.close)
	return p
}

func (p *faultProxy) addr() string { return p.ln.Addr().String() }

func (p *faultProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	select {
	case <-p.done:
	default:
		close(p.done)
	}
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
}

// didFire reports whether the fault was injected.
func (p *faultProxy) didFire() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.fired
}

func (p *faultProxy) serve() {
	first := true
	for {
		src, err := p.ln.Accept()
		if err != nil {
			return
		}
		dst, err := net.Dial("tcp", p.target)
		if err != nil {
			src.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, src, dst)
		p.mu.Unlock()
		var f *fault
		if first {
			f = &p.f
			first = false
		}
		var once sync.Once
		cutBoth := func() { once.Do(func() { src.Close(); dst.Close() }) }
		go p.relay(src, dst, f != nil && !f.toSource, f, cutBoth)
		go p.relay(dst, src, f != nil && f.toSource, f, cutBoth)
	}
}

// relay copies from → to; with armed, it applies f on the way.
func (p *faultProxy) relay(from, to net.Conn, armed bool, f *fault, cutBoth func()) {
	defer cutBoth()
	tr := recordTracker{target: -1}
	if armed {
		tr.want, tr.nth, tr.off = f.rec, f.nth, f.off
		if f.rec == 0 {
			tr.target = f.off
		}
	}
	buf := make([]byte, 64<<10)
	for {
		n, err := from.Read(buf)
		chunk := buf[:n]
		start := tr.pos
		tr.feed(chunk) // may find the anchor, and so the target, in this chunk
		if armed && tr.target >= 0 && tr.target < start+int64(len(chunk)) {
			at := max(tr.target-start, 0)
			if _, werr := to.Write(chunk[:at]); werr != nil {
				return
			}
			armed = false
			p.mu.Lock()
			p.fired = true
			p.mu.Unlock()
			switch f.action {
			case cut:
				return
			case stall:
				// Keep both connections open and forward nothing more
				// this way: the peers must notice on their own.
				<-p.done
				return
			case flip:
				chunk[at] ^= f.bit
				chunk = chunk[at:]
			}
		}
		if _, werr := to.Write(chunk); werr != nil {
			return
		}
		if err != nil {
			return
		}
	}
}

// recordTracker follows record boundaries in a ferry stream to find the
// stream offset of the fault.
type recordTracker struct {
	pos    int64 // offset of the next byte fed
	inRec  int64 // payload bytes left in the current record
	hdr    []byte
	seen   map[migrate.RecordType]int
	want   migrate.RecordType
	nth    int
	off    int64
	target int64 // fault offset, -1 until known
}

// feed advances over b (whose first byte is at offset pos).
func (tr *recordTracker) feed(b []byte) {
	for len(b) > 0 {
		if tr.inRec > 0 {
			n := min(int64(len(b)), tr.inRec)
			tr.inRec -= n
			tr.pos += n
			b = b[n:]
			continue
		}
		need := migrate.HeaderSize - len(tr.hdr)
		n := min(need, len(b))
		tr.hdr = append(tr.hdr, b[:n]...)
		tr.pos += int64(n)
		b = b[n:]
		if len(tr.hdr) < migrate.HeaderSize {
			return
		}
		typ := migrate.RecordType(binary.BigEndian.Uint16(tr.hdr[4:]))
		length := int64(binary.BigEndian.Uint32(tr.hdr[8:]))
		start := tr.pos - migrate.HeaderSize
		tr.hdr = tr.hdr[:0]
		tr.inRec = max(length-migrate.HeaderSize, 0)
		if tr.seen == nil {
			tr.seen = map[migrate.RecordType]int{}
		}
		tr.seen[typ]++
		if tr.want != 0 && typ == tr.want && tr.seen[typ] == tr.nth && tr.target < 0 {
			tr.target = start + tr.off
		}
	}
}

// TestFaultProxy checks the proxy itself, without a guest: a cut lands
// exactly at the requested record offset, and a flip changes one bit.
func TestFaultProxy(t *testing.T) {
	rec := func(typ migrate.RecordType, n int) []byte {
		b := make([]byte, migrate.HeaderSize+n)
		binary.BigEndian.PutUint32(b, migrate.Magic)
		binary.BigEndian.PutUint16(b[4:], uint16(typ))
		binary.BigEndian.PutUint32(b[8:], uint32(len(b)))
		return b
	}
	var stream []byte
	for _, r := range [][]byte{rec(migrate.RecHello, 40), rec(migrate.RecPages, 70000), rec(migrate.RecPages, 5000), rec(migrate.RecEnd, 8)} {
		stream = append(stream, r...)
	}
	second := int64(migrate.HeaderSize + 40 + migrate.HeaderSize + 70000) // start of the 2nd PAGES
	for _, c := range []struct {
		f    fault
		want int64
	}{
		{fault{rec: migrate.RecPages, nth: 2, off: 100}, second + 100},
		{fault{off: 12345}, 12345},
		{fault{rec: migrate.RecEnd, nth: 1, off: 0}, int64(len(stream)) - migrate.HeaderSize - 8},
		{fault{rec: migrate.RecPages, nth: 2, off: 7, action: flip, bit: 1}, int64(len(stream))},
	} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		got := make(chan []byte, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				got <- nil
				return
			}
			b, _ := io.ReadAll(c)
			c.Close()
			got <- b
		}()
		px := newFaultProxy(t, ln.Addr().String(), c.f)
		conn, err := net.Dial("tcp", px.addr())
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			conn.Write(stream)
			conn.(*net.TCPConn).CloseWrite()
		}()
		b := <-got
		conn.Close()
		ln.Close()
		if int64(len(b)) != c.want || !px.didFire() {
			t.Fatalf("%+v: destination got %d bytes, want %d (fired %v)", c.f, len(b), c.want, px.didFire())
		}
		if c.f.action == flip {
			at := second + 7
			if b[at] != stream[at]^1 || string(b[:at]) != string(stream[:at]) || string(b[at+1:]) != string(stream[at+1:]) {
				t.Fatal("flip changed more or less than one bit")
			}
		}
	}
}
