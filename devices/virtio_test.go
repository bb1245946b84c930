package devices

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// testMem is guest RAM at GPA 0 with a record of device writes.
type testMem struct {
	b     []byte
	dirty map[uint64]bool // pages
}

func newTestMem(size int) *testMem { return &testMem{b: make([]byte, size), dirty: map[uint64]bool{}} }

func (m *testMem) Slice(gpa, n uint64) ([]byte, error) {
	if gpa+n < gpa || gpa+n > uint64(len(m.b)) {
		return nil, fmt.Errorf("%#x+%#x is not RAM", gpa, n)
	}
	return m.b[gpa : gpa+n], nil
}

func (m *testMem) MarkDirty(gpa, n uint64) {
	for p := gpa / 4096; p <= (gpa+n-1)/4096; p++ {
		m.dirty[p] = true
	}
}

// Ring layout used by the tests: desc 0x1000, avail 0x2000, used 0x3000,
// buffers from 0x10000.
const (
	tDesc  = 0x1000
	tAvail = 0x2000
	tUsed  = 0x3000
	tQSize = 16
)

type tDescr struct {
	addr  uint64
	len   uint32
	flags uint16
	next  uint16
}

func (m *testMem) putDesc(table uint64, i int, d tDescr) {
	p := m.b[table+uint64(i)*16:]
	binary.LittleEndian.PutUint64(p, d.addr)
	binary.LittleEndian.PutUint32(p[8:], d.len)
	binary.LittleEndian.PutUint16(p[12:], d.flags)
	binary.LittleEndian.PutUint16(p[14:], d.next)
}

// offer puts head in the avail ring and bumps avail idx.
func (m *testMem) offer(head uint16) {
	idx := binary.LittleEndian.Uint16(m.b[tAvail+2:])
	binary.LittleEndian.PutUint16(m.b[tAvail+4+2*uint64(idx%tQSize):], head)
	binary.LittleEndian.PutUint16(m.b[tAvail+2:], idx+1)
}

func (m *testMem) used(i int) (id, n uint32) {
	p := m.b[tUsed+4+8*i:]
	return binary.LittleEndian.Uint32(p), binary.LittleEndian.Uint32(p[4:])
}

func (m *testMem) usedIdx() uint16 { return binary.LittleEndian.Uint16(m.b[tUsed+2:]) }

func testQueue(m *testMem, indirect bool) *Queue {
	return &Queue{Mem: m, Indirect: indirect, S: QueueState{Num: tQSize, Ready: 1, Desc: tDesc, Avail: tAvail, Used: tUsed}}
}

func TestVirtqueueChains(t *testing.T) {
	m := newTestMem(1 << 20)
	q := testQueue(m, true)
	if err := q.validate(); err != nil {
		t.Fatal(err)
	}
	// Chain 0 -> 3 -> 5: readable, readable, writable.
	m.putDesc(tDesc, 0, tDescr{0x10000, 16, vringDescFNext, 3})
	m.putDesc(tDesc, 3, tDescr{0x11000, 512, vringDescFNext, 5})
	m.putDesc(tDesc, 5, tDescr{0x12000, 1, vringDescFWrite, 0})
	// Descriptor 7: an indirect table of two entries at 0x20000.
	m.putDesc(tDesc, 7, tDescr{0x20000, 32, vringDescFIndir, 0})
	m.putDesc(0x20000, 0, tDescr{0x13000, 100, vringDescFNext, 1})
	m.putDesc(0x20000, 1, tDescr{0x14000, 200, vringDescFWrite, 0})
	m.offer(0)
	m.offer(7)
	if n, err := q.Pending(); n != 2 || err != nil {
		t.Fatalf("Pending = %d, %v; want 2", n, err)
	}
	c, err := q.Pop()
	if err != nil || c == nil {
		t.Fatalf("Pop: %v %v", c, err)
	}
	want := []Buf{{0x10000, 16, false}, {0x11000, 512, false}, {0x12000, 1, true}}
	if fmt.Sprint(c.Bufs) != fmt.Sprint(want) || c.Head != 0 {
		t.Fatalf("chain %d %v, want 0 %v", c.Head, c.Bufs, want)
	}
	if c.Len(false) != 528 || c.Len(true) != 1 {
		t.Fatalf("lengths %d %d", c.Len(false), c.Len(true))
	}
	if err := q.Push(c.Head, 1); err != nil {
		t.Fatal(err)
	}
	c, err = q.Pop()
	if err != nil || c == nil {
		t.Fatalf("Pop indirect: %v %v", c, err)
	}
	want = []Buf{{0x13000, 100, false}, {0x14000, 200, true}}
	if fmt.Sprint(c.Bufs) != fmt.Sprint(want) || c.Head != 7 {
		t.Fatalf("indirect chain %d %v, want 7 %v", c.Head, c.Bufs, want)
	}
	if err := q.Push(c.Head, 200); err != nil {
		t.Fatal(err)
	}
	if c, err := q.Pop(); c != nil || err != nil {
		t.Fatalf("empty queue: Pop = %v, %v", c, err)
	}
	if m.usedIdx() != 2 {
		t.Fatalf("used idx %d, want 2", m.usedIdx())
	}
	if id, n := m.used(0); id != 0 || n != 1 {
		t.Fatalf("used[0] = %d %d", id, n)
	}
	if id, n := m.used(1); id != 7 || n != 200 {
		t.Fatalf("used[1] = %d %d", id, n)
	}
	if !m.dirty[tUsed/4096] {
		t.Fatal("used ring page not marked dirty")
	}
	// Ring wrap-around: the indexes are free-running u16s.
	q.S.LastAvail, q.S.UsedIdx = 0xffff, 0xffff
	binary.LittleEndian.PutUint16(m.b[tAvail+2:], 0xffff)
	m.offer(0)
	if c, err := q.Pop(); err != nil || c == nil || c.Head != 0 {
		t.Fatalf("Pop across the wrap: %v %v", c, err)
	}
	if q.Push(0, 1); m.usedIdx() != 0 {
		t.Fatalf("used idx after wrap %d", m.usedIdx())
	}
}

func TestVirtqueueNoInterrupt(t *testing.T) {
	m := newTestMem(1 << 20)
	q := testQueue(m, false)
	if !q.WantInterrupt() {
		t.Fatal("WantInterrupt false with avail flags 0")
	}
	binary.LittleEndian.PutUint16(m.b[tAvail:], vringAvailFNoInt)
	if q.WantInterrupt() {
		t.Fatal("WantInterrupt true with VIRTQ_AVAIL_F_NO_INTERRUPT")
	}
}

func TestVirtqueueMalformed(t *testing.T) {
	cases := []struct {
		name  string
		setup func(m *testMem, q *Queue)
	}{
		{"head out of range", func(m *testMem, q *Queue) { m.offer(tQSize) }},
		{"avail idx too far ahead", func(m *testMem, q *Queue) {
			binary.LittleEndian.PutUint16(m.b[tAvail+2:], tQSize+1)
		}},
		{"loop", func(m *testMem, q *Queue) {
			m.putDesc(tDesc, 0, tDescr{0x10000, 8, vringDescFNext, 1})
			m.putDesc(tDesc, 1, tDescr{0x10000, 8, vringDescFNext, 0})
			m.offer(0)
		}},
		{"self loop", func(m *testMem, q *Queue) {
			m.putDesc(tDesc, 2, tDescr{0x10000, 8, vringDescFNext, 2})
			m.offer(2)
		}},
		{"next out of range", func(m *testMem, q *Queue) {
			m.putDesc(tDesc, 0, tDescr{0x10000, 8, vringDescFNext, 999})
			m.offer(0)
		}},
		{"buffer outside RAM", func(m *testMem, q *Queue) {
			m.putDesc(tDesc, 0, tDescr{1 << 40, 8, 0, 0})
			m.offer(0)
		}},
		{"buffer wraps", func(m *testMem, q *Queue) {
			m.putDesc(tDesc, 0, tDescr{^uint64(0) - 2, 8, 0, 0})
			m.offer(0)
		}},
		{"readable after writable", func(m *testMem, q *Queue) {
			m.putDesc(tDesc, 0, tDescr{0x10000, 8, vringDescFWrite | vringDescFNext, 1})
			m.putDesc(tDesc, 1, tDescr{0x10000, 8, 0, 0})
			m.offer(0)
		}},
		{"indirect not negotiated", func(m *testMem, q *Queue) {
			q.Indirect = false
			m.putDesc(tDesc, 0, tDescr{0x20000, 16, vringDescFIndir, 0})
			m.putDesc(0x20000, 0, tDescr{0x10000, 8, 0, 0})
			m.offer(0)
		}},
		{"nested indirect", func(m *testMem, q *Queue) {
			m.putDesc(tDesc, 0, tDescr{0x20000, 16, vringDescFIndir, 0})
			m.putDesc(0x20000, 0, tDescr{0x20000, 16, vringDescFIndir, 0})
			m.offer(0)
		}},
		{"indirect table bad length", func(m *testMem, q *Queue) {
			m.putDesc(tDesc, 0, tDescr{0x20000, 17, vringDescFIndir, 0})
			m.offer(0)
		}},
		{"indirect table outside RAM", func(m *testMem, q *Queue) {
			m.putDesc(tDesc, 0, tDescr{1 << 40, 32, vringDescFIndir, 0})
			m.offer(0)
		}},
		{"indirect loop", func(m *testMem, q *Queue) {
			m.putDesc(tDesc, 0, tDescr{0x20000, 32, vringDescFIndir, 0})
			m.putDesc(0x20000, 0, tDescr{0x10000, 8, vringDescFNext, 1})
			m.putDesc(0x20000, 1, tDescr{0x10000, 8, vringDescFNext, 0})
			m.offer(0)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := newTestMem(1 << 20)
			q := testQueue(m, true)
			tc.setup(m, q)
			c, err := q.Pop()
			if !errors.Is(err, ErrRing) {
				t.Fatalf("Pop = %v, %v; want ErrRing", c, err)
			}
		})
	}
	for _, s := range []QueueState{
		{Num: 0, Desc: tDesc, Avail: tAvail, Used: tUsed},
		{Num: 3, Desc: tDesc, Avail: tAvail, Used: tUsed},
		{Num: 512, Desc: tDesc, Avail: tAvail, Used: tUsed},
		{Num: 16, Desc: tDesc + 8, Avail: tAvail, Used: tUsed},
		{Num: 16, Desc: tDesc, Avail: tAvail, Used: tUsed + 2},
		{Num: 16, Desc: tDesc, Avail: 1 << 40, Used: tUsed},
	} {
		q := &Queue{Mem: newTestMem(1 << 20), S: s}
		if err := q.validate(); !errors.Is(err, ErrRing) {
			t.Errorf("validate(%+v) = %v, want ErrRing", s, err)
		}
	}
}

// blkRig is a virtio-blk device on a transport, set up as a driver would.
type blkRig struct {
	m    *testMem
	t    *VirtioMMIO
	blk  *Blk
	irq  *vioIRQ
	path string
}

type vioIRQ struct{ high bool }

func (f *vioIRQ) SetLevel(h bool) error { f.high = h; return nil }

func reg(t *VirtioMMIO, off uint64, v uint32) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	t.MMIOWrite(off, b[:])
}

func rd(t *VirtioMMIO, off uint64) uint32 {
	var b [4]byte
	t.MMIORead(off, b[:])
	return binary.LittleEndian.Uint32(b[:])
}

// restoredCopy saves r's transport and restores the state into a second
// transport on the same disk and memory (as on a migration destination),
// checking that the copy saves the same bytes. It returns the copy, its
// interrupt line and the saved state.
func (r *blkRig) restoredCopy(t *testing.T) (*VirtioMMIO, *vioIRQ, []byte) {
	t.Helper()
	data, err := r.t.Save()
	if err != nil {
		t.Fatal(err)
	}
	irq := &vioIRQ{}
	t2 := NewVirtioMMIO("virtio-blk0", r.blk, r.m, irq)
	if err := t2.Restore(data); err != nil {
		t.Fatal(err)
	}
	if again, _ := t2.Save(); !bytes.Equal(again, data) {
		t.Fatal("restored state differs")
	}
	return t2, irq, data
}

func newBlkRig(t *testing.T, readOnly bool) *blkRig {
	path := filepath.Join(t.TempDir(), "disk.img")
	img := make([]byte, 64*sectorSize)
	for i := range img {
		img[i] = byte(i / sectorSize)
	}
	if err := os.WriteFile(path, img, 0o644); err != nil {
		t.Fatal(err)
	}
	blk, err := OpenBlk(path, readOnly)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { blk.Close() })
	r := &blkRig{m: newTestMem(1 << 20), blk: blk, irq: &vioIRQ{}, path: path}
	r.t = NewVirtioMMIO("virtio-blk0", blk, r.m, r.irq)
	tr := r.t
	if rd(tr, vmMagic) != virtioMagic || rd(tr, vmVersion) != 2 || rd(tr, vmDeviceID) != virtioBlkID {
		t.Fatal("bad identification registers")
	}
	reg(tr, vmStatus, VirtioStatusAck|VirtioStatusDriver)
	reg(tr, vmDevFeatSel, 1)
	if rd(tr, vmDevFeatures)&1 == 0 {
		t.Fatal("VERSION_1 not offered")
	}
	reg(tr, vmDrvFeatSel, 0)
	reg(tr, vmDrvFeatures, VirtioFIndirectDesc|virtioBlkFFlush)
	reg(tr, vmDrvFeatSel, 1)
	reg(tr, vmDrvFeatures, 1)
	reg(tr, vmStatus, VirtioStatusAck|VirtioStatusDriver|VirtioStatusFeaturesOK)
	if rd(tr, vmStatus)&VirtioStatusFeaturesOK == 0 {
		t.Fatal("FEATURES_OK refused")
	}
	reg(tr, vmQueueSel, 0)
	if rd(tr, vmQueueNumMax) != VirtqMaxSize {
		t.Fatal("QueueNumMax")
	}
	reg(tr, vmQueueNum, tQSize)
	reg(tr, vmQueueDescLo, tDesc)
	reg(tr, vmQueueAvailLo, tAvail)
	reg(tr, vmQueueUsedLo, tUsed)
	reg(tr, vmQueueReady, 1)
	reg(tr, vmStatus, VirtioStatusAck|VirtioStatusDriver|VirtioStatusFeaturesOK|VirtioStatusDriverOK)
	return r
}

func (r *blkRig) header(addr uint64, typ uint32, sector uint64) {
	binary.LittleEndian.PutUint32(r.m.b[addr:], typ)
	binary.LittleEndian.PutUint64(r.m.b[addr+8:], sector)
}

// kick notifies queue 0 and returns the status byte at statusAddr and the
// used length of the newest used element.
func (r *blkRig) kick(t *testing.T, statusAddr uint64) (byte, uint32) {
	t.Helper()
	before := r.m.usedIdx()
	r.m.b[statusAddr] = 0xee
	reg(r.t, vmQueueNotify, 0)
	if r.m.usedIdx() != before+1 {
		t.Fatalf("used idx %d, want %d (broken %v)", r.m.usedIdx(), before+1, r.t.Broken())
	}
	_, n := r.m.used(int(before % tQSize))
	if !r.irq.high || rd(r.t, vmIntStatus)&virtioIntUsed == 0 {
		t.Fatal("no used-buffer interrupt")
	}
	reg(r.t, vmIntACK, virtioIntUsed)
	if r.irq.high {
		t.Fatal("interrupt still raised after ACK")
	}
	return r.m.b[statusAddr], n
}

func TestVirtioBlkRequests(t *testing.T) {
	r := newBlkRig(t, false)
	if rd(r.t, vmConfig) != 64 {
		t.Fatalf("capacity %d, want 64", rd(r.t, vmConfig))
	}
	// Read sectors 2-3, header/data/status in three descriptors.
	r.header(0x10000, virtioBlkTIn, 2)
	r.m.putDesc(tDesc, 0, tDescr{0x10000, 16, vringDescFNext, 1})
	r.m.putDesc(tDesc, 1, tDescr{0x11000, 1024, vringDescFWrite | vringDescFNext, 2})
	r.m.putDesc(tDesc, 2, tDescr{0x12000, 1, vringDescFWrite, 0})
	r.m.offer(0)
	if st, n := r.kick(t, 0x12000); st != virtioBlkSOK || n != 1025 {
		t.Fatalf("read: status %d len %d", st, n)
	}
	if r.m.b[0x11000] != 2 || r.m.b[0x11000+1023] != 3 {
		t.Fatal("read returned the wrong sectors")
	}
	if !r.m.dirty[0x11000/4096] || !r.m.dirty[0x12000/4096] {
		t.Fatal("read buffer or status not marked dirty")
	}
	// Write sector 5: header and data merged in one descriptor, data
	// split over two, status merged with nothing.
	r.header(0x13000, virtioBlkTOut, 5)
	copy(r.m.b[0x13010:], bytes.Repeat([]byte{0xab}, 200))
	copy(r.m.b[0x14000:], bytes.Repeat([]byte{0xcd}, 312))
	r.m.putDesc(tDesc, 3, tDescr{0x13000, 16 + 200, vringDescFNext, 4})
	r.m.putDesc(tDesc, 4, tDescr{0x14000, 312, vringDescFNext, 6})
	r.m.putDesc(tDesc, 6, tDescr{0x15000, 1, vringDescFWrite, 0})
	r.m.offer(3)
	if st, n := r.kick(t, 0x15000); st != virtioBlkSOK || n != 1 {
		t.Fatalf("write: status %d len %d", st, n)
	}
	img, _ := os.ReadFile(r.path)
	if img[5*512] != 0xab || img[5*512+199] != 0xab || img[5*512+200] != 0xcd || img[6*512-1] != 0xcd || img[6*512] != 6 {
		t.Fatal("write did not land in sector 5")
	}
	// Read with data and status in one writable descriptor, through an
	// indirect table.
	r.header(0x16000, virtioBlkTIn, 5)
	r.m.putDesc(0x30000, 0, tDescr{0x16000, 16, vringDescFNext, 1})
	r.m.putDesc(0x30000, 1, tDescr{0x17000, 513, vringDescFWrite, 0})
	r.m.putDesc(tDesc, 7, tDescr{0x30000, 32, vringDescFIndir, 0})
	r.m.offer(7)
	if st, n := r.kick(t, 0x17000+512); st != virtioBlkSOK || n != 513 || r.m.b[0x17000] != 0xab {
		t.Fatalf("merged read: status %d len %d", st, n)
	}
	simple := func(typ uint32, sector uint64, dataLen uint32, write bool) (byte, uint32) {
		r.header(0x18000, typ, sector)
		fl := uint16(vringDescFNext)
		if write {
			fl |= vringDescFWrite
		}
		r.m.putDesc(tDesc, 8, tDescr{0x18000, 16, vringDescFNext, 9})
		r.m.putDesc(tDesc, 9, tDescr{0x19000, dataLen, fl, 10})
		r.m.putDesc(tDesc, 10, tDescr{0x1a000, 1, vringDescFWrite, 0})
		r.m.offer(8)
		return r.kick(t, 0x1a000)
	}
	if st, _ := simple(virtioBlkTIn, 63, 1024, true); st != virtioBlkSIOErr {
		t.Fatalf("read past the end: status %d", st)
	}
	if st, _ := simple(virtioBlkTIn, 1<<62, 512, true); st != virtioBlkSIOErr {
		t.Fatalf("read at a huge sector: status %d", st)
	}
	if st, _ := simple(virtioBlkTOut, 0, 100, false); st != virtioBlkSIOErr {
		t.Fatalf("partial-sector write: status %d", st)
	}
	if st, _ := simple(99, 0, 512, false); st != virtioBlkSUnsupp {
		t.Fatalf("unknown type: status %d", st)
	}
	if st, _ := simple(virtioBlkTFlush, 0, 0, false); st != virtioBlkSOK {
		t.Fatalf("flush: status %d", st)
	}
	if st, n := simple(virtioBlkTGetID, 0, 20, true); st != virtioBlkSOK || n != 21 || string(r.m.b[0x19000:0x19008]) != "disk.img" {
		t.Fatalf("get id: status %d len %d id %q", st, n, r.m.b[0x19000:0x19014])
	}
	if r.t.Broken() {
		t.Fatal("device broken by well-formed requests")
	}
}

func TestVirtioBlkReadOnly(t *testing.T) {
	r := newBlkRig(t, true)
	r.header(0x10000, virtioBlkTOut, 0)
	r.m.putDesc(tDesc, 0, tDescr{0x10000, 16 + 512, vringDescFNext, 1})
	r.m.putDesc(tDesc, 1, tDescr{0x12000, 1, vringDescFWrite, 0})
	r.m.offer(0)
	if st, _ := r.kick(t, 0x12000); st != virtioBlkSIOErr {
		t.Fatalf("write to a read-only disk: status %d", st)
	}
}

func TestVirtioBrokenRing(t *testing.T) {
	r := newBlkRig(t, false)
	r.m.putDesc(tDesc, 0, tDescr{0x10000, 16, vringDescFNext, 0}) // self loop
	r.m.offer(0)
	reg(r.t, vmQueueNotify, 0)
	if !r.t.Broken() || rd(r.t, vmStatus)&VirtioStatusNeedsReset == 0 {
		t.Fatal("looping chain did not set DEVICE_NEEDS_RESET")
	}
	if rd(r.t, vmIntStatus)&virtioIntConfig == 0 || !r.irq.high {
		t.Fatal("no configuration change interrupt")
	}
	// A request without a status byte breaks the device too.
	r = newBlkRig(t, false)
	r.header(0x10000, virtioBlkTIn, 0)
	r.m.putDesc(tDesc, 0, tDescr{0x10000, 16, 0, 0})
	r.m.offer(0)
	reg(r.t, vmQueueNotify, 0)
	if !r.t.Broken() {
		t.Fatal("request without status byte accepted")
	}
	// A reset repairs it.
	reg(r.t, vmStatus, 0)
	if r.t.Broken() || rd(r.t, vmStatus) != 0 || r.irq.high {
		t.Fatal("reset did not clear the device")
	}
	// A queue outside RAM is refused when set ready.
	reg(r.t, vmStatus, VirtioStatusAck|VirtioStatusDriver|VirtioStatusDriverOK)
	reg(r.t, vmQueueNum, tQSize)
	reg(r.t, vmQueueDescHi, 0x100)
	reg(r.t, vmQueueReady, 1)
	if rd(r.t, vmQueueReady) != 0 || !r.t.Broken() {
		t.Fatal("queue outside RAM accepted")
	}
}

func TestVirtioFeatureNegotiation(t *testing.T) {
	r := newBlkRig(t, false)
	reg(r.t, vmStatus, 0)
	reg(r.t, vmStatus, VirtioStatusAck|VirtioStatusDriver)
	reg(r.t, vmDrvFeatSel, 0)
	reg(r.t, vmDrvFeatures, 1<<20) // not offered
	reg(r.t, vmDrvFeatSel, 1)
	reg(r.t, vmDrvFeatures, 1)
	reg(r.t, vmStatus, VirtioStatusAck|VirtioStatusDriver|VirtioStatusFeaturesOK)
	if rd(r.t, vmStatus)&VirtioStatusFeaturesOK != 0 {
		t.Fatal("FEATURES_OK accepted with a feature not offered")
	}
	reg(r.t, vmStatus, 0)
	reg(r.t, vmStatus, VirtioStatusAck|VirtioStatusDriver|VirtioStatusFeaturesOK) // legacy: no VERSION_1
	if rd(r.t, vmStatus)&VirtioStatusFeaturesOK != 0 {
		t.Fatal("FEATURES_OK accepted without VERSION_1")
	}
}

func TestVirtioSaveRestore(t *testing.T) {
	r := newBlkRig(t, false)
	r.header(0x10000, virtioBlkTIn, 1)
	r.m.putDesc(tDesc, 0, tDescr{0x10000, 16, vringDescFNext, 1})
	r.m.putDesc(tDesc, 1, tDescr{0x11000, 512, vringDescFWrite | vringDescFNext, 2})
	r.m.putDesc(tDesc, 2, tDescr{0x12000, 1, vringDescFWrite, 0})
	r.m.offer(0)
	r.kick(t, 0x12000)
	// A second device on the same memory continues where the first stopped.
	t2, irq, data := r.restoredCopy(t)
	r.header(0x10000, virtioBlkTIn, 3)
	r.m.offer(0)
	r.t = t2
	r.irq = irq
	if st, n := r.kick(t, 0x12000); st != 0 || n != 513 || r.m.b[0x11000] != 3 || r.m.usedIdx() != 2 {
		t.Fatalf("after restore: status %d len %d", st, n)
	}
	if err := t2.Restore(data[:len(data)-1]); err == nil {
		t.Fatal("short state accepted")
	}
	var s VirtioMMIOState
	decodeFixed("x", data, &s)
	s.Queues[0].Num = 3
	bad, _ := encodeFixed("x", &s)
	if err := t2.Restore(bad); err == nil {
		t.Fatal("state with a bad queue size accepted")
	}
}
