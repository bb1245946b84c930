package devices

import (
	"bytes"
	"encoding/binary"
	"os"
	"syscall"
	"testing"
	"time"
)

// netRig is a virtio-net device whose "tap" is one end of a SOCK_SEQPACKET
// socket pair (frame boundaries kept, as on a tap); peer is the other end.
type netRig struct {
	m    *testMem
	t    *VirtioMMIO
	n    *Net
	irq  *vioIRQ
	peer *os.File
}

// rx queue 0 at 0x1000.., tx queue 1 at 0x5000..
const (
	nRxDesc, nRxAvail, nRxUsed = 0x1000, 0x2000, 0x3000
	nTxDesc, nTxAvail, nTxUsed = 0x5000, 0x6000, 0x7000
)

func newNetRig(t *testing.T) *netRig {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_SEQPACKET, 0)
	if err != nil {
		t.Fatal(err)
	}
	syscall.SetNonblock(fds[0], true)
	tap := os.NewFile(uintptr(fds[0]), "tap")
	peer := os.NewFile(uintptr(fds[1]), "peer")
	r := &netRig{m: newTestMem(1 << 20), irq: &vioIRQ{}, peer: peer}
	r.n = NewNet("tap-test", tap, [6]byte{2, 0, 0, 0, 0, 9})
	r.t = NewVirtioMMIO("virtio-net0", r.n, r.m, r.irq)
	r.n.Attach(r.t)
	t.Cleanup(func() { r.n.Close(); peer.Close() })
	tr := r.t
	if rd(tr, vmDeviceID) != virtioNetID {
		t.Fatal("device id")
	}
	var mac [6]byte
	tr.MMIORead(vmConfig, mac[:])
	if mac != [6]byte{2, 0, 0, 0, 0, 9} {
		t.Fatalf("mac %x", mac)
	}
	reg(tr, vmStatus, VirtioStatusAck|VirtioStatusDriver)
	reg(tr, vmDrvFeatSel, 0)
	reg(tr, vmDrvFeatures, virtioNetFMAC)
	reg(tr, vmDrvFeatSel, 1)
	reg(tr, vmDrvFeatures, 1)
	reg(tr, vmStatus, VirtioStatusAck|VirtioStatusDriver|VirtioStatusFeaturesOK)
	for i, a := range [][3]uint32{{nRxDesc, nRxAvail, nRxUsed}, {nTxDesc, nTxAvail, nTxUsed}} {
		reg(tr, vmQueueSel, uint32(i))
		reg(tr, vmQueueNum, tQSize)
		reg(tr, vmQueueDescLo, a[0])
		reg(tr, vmQueueAvailLo, a[1])
		reg(tr, vmQueueUsedLo, a[2])
		reg(tr, vmQueueReady, 1)
	}
	reg(tr, vmStatus, VirtioStatusAck|VirtioStatusDriver|VirtioStatusFeaturesOK|VirtioStatusDriverOK)
	return r
}

// The receive goroutine writes guest memory under the transport's lock;
// the test's own accesses to the rings and buffers take it too (a guest
// orders them with barriers; here the lock gives the race detector the
// same happens-before).

func (r *netRig) offer(avail uint64, head uint16) {
	r.t.mu.Lock()
	defer r.t.mu.Unlock()
	idx := binary.LittleEndian.Uint16(r.m.b[avail+2:])
	binary.LittleEndian.PutUint16(r.m.b[avail+4+2*uint64(idx%tQSize):], head)
	binary.LittleEndian.PutUint16(r.m.b[avail+2:], idx+1)
}

func (r *netRig) usedIdx(used uint64) uint16 {
	r.t.mu.Lock()
	defer r.t.mu.Unlock()
	return binary.LittleEndian.Uint16(r.m.b[used+2:])
}

// read copies n bytes of guest memory at off.
func (r *netRig) read(off, n uint64) []byte {
	r.t.mu.Lock()
	defer r.t.mu.Unlock()
	return append([]byte(nil), r.m.b[off:off+n]...)
}

func TestVirtioNetTransmit(t *testing.T) {
	r := newNetRig(t)
	frame := bytes.Repeat([]byte{0x5a}, 100)
	// Header and the first 20 bytes in one descriptor, the rest in another.
	copy(r.m.b[0x10000+virtioNetHdr:], frame[:20])
	copy(r.m.b[0x11000:], frame[20:])
	r.m.putDesc(nTxDesc, 0, tDescr{0x10000, virtioNetHdr + 20, vringDescFNext, 1})
	r.m.putDesc(nTxDesc, 1, tDescr{0x11000, 80, 0, 0})
	r.offer(nTxAvail, 0)
	reg(r.t, vmQueueNotify, 1)
	if r.usedIdx(nTxUsed) != 1 || !r.irq.high {
		t.Fatalf("tx chain not returned (used idx %d)", r.usedIdx(nTxUsed))
	}
	buf := make([]byte, 2000)
	r.peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := r.peer.Read(buf)
	if err != nil || !bytes.Equal(buf[:n], frame) {
		t.Fatalf("peer got %d bytes (%v), want the 100-byte frame", n, err)
	}
}

func TestVirtioNetReceive(t *testing.T) {
	r := newNetRig(t)
	// Two receive buffers of 1526 bytes (header + 1514), split in two.
	for i := uint16(0); i < 2; i++ {
		a := uint64(0x20000 + 0x1000*uint64(i))
		r.m.putDesc(nRxDesc, int(2*i), tDescr{a, 100, vringDescFWrite | vringDescFNext, 2*i + 1})
		r.m.putDesc(nRxDesc, int(2*i+1), tDescr{a + 0x800, 1426, vringDescFWrite, 0})
		r.offer(nRxAvail, 2*i)
	}
	// The VM is "paused" until Resume (a new machine starts paused).
	frame := bytes.Repeat([]byte{0xa5}, 300)
	if _, err := r.peer.Write(frame); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if r.usedIdx(nRxUsed) != 0 {
		t.Fatal("frame delivered while paused")
	}
	r.n.Resume()
	wait := func(idx uint16) {
		t.Helper()
		for start := time.Now(); r.usedIdx(nRxUsed) != idx; time.Sleep(5 * time.Millisecond) {
			if time.Since(start) > 5*time.Second {
				t.Fatalf("used idx %d, want %d", r.usedIdx(nRxUsed), idx)
			}
		}
	}
	wait(1)
	elem := r.read(nRxUsed+4, 8)
	id, n := binary.LittleEndian.Uint32(elem), binary.LittleEndian.Uint32(elem[4:])
	if id != 0 || n != virtioNetHdr+300 {
		t.Fatalf("used elem %d len %d", id, n)
	}
	hdr := r.read(0x20000, virtioNetHdr)
	if !bytes.Equal(hdr, []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0}) {
		t.Fatalf("header %x", hdr)
	}
	got := append(r.read(0x20000+virtioNetHdr, 100-virtioNetHdr), r.read(0x20800, 300-(100-virtioNetHdr))...)
	if !bytes.Equal(got, frame) {
		t.Fatal("frame bytes differ")
	}
	r.t.mu.Lock()
	marked := r.m.dirty[0x20000/4096] && r.m.dirty[nRxUsed/4096]
	r.t.mu.Unlock()
	if !marked {
		t.Fatal("receive buffer or used ring not marked dirty")
	}
	// Paused again: the next frame waits, then arrives after Resume.
	r.n.Pause()
	r.peer.Write(frame[:60])
	time.Sleep(100 * time.Millisecond)
	if r.usedIdx(nRxUsed) != 1 {
		t.Fatal("frame delivered while paused")
	}
	r.n.Resume()
	wait(2)
	// No buffers left: a frame waits until the driver adds one.
	r.peer.Write(frame[:70])
	time.Sleep(100 * time.Millisecond)
	if r.usedIdx(nRxUsed) != 2 {
		t.Fatal("frame delivered without a buffer")
	}
	r.offer(nRxAvail, 0)
	reg(r.t, vmQueueNotify, 0)
	wait(3)
}
