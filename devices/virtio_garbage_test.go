package devices

import (
	"encoding/binary"
	"math/rand"
	"testing"
)

// TestVirtioBlkGarbageRings fills the descriptor table, avail ring,
// indirect tables and request headers of a running virtio-blk device with
// random bytes (and random mutations of a well-formed request) and
// notifies it: whatever the guest wrote, the device must not panic, and
// every chain it takes from a ring it does not reject is returned. Half
// the inputs run with VIRTIO_F_EVENT_IDX negotiated.
func TestVirtioBlkGarbageRings(t *testing.T) {
	saved := logf
	logf = func(string, ...any) {} // one line per broken ring: too many here
	defer func() { logf = saved }()
	const descAt, availAt, qsize = 0x1000, 0x1400, 64
	valid := make([]byte, 0x800)
	put := func(off int, v uint64, n int) {
		for i := 0; i < n; i++ {
			valid[off+i] = byte(v >> (8 * i))
		}
	}
	put(0x000, 0x10000, 8) // desc 0: header
	put(0x008, 16, 4)
	put(0x00c, vringDescFNext, 2)
	put(0x00e, 1, 2)
	put(0x010, 0x11000, 8) // desc 1: data
	put(0x018, 512, 4)
	put(0x01c, vringDescFWrite|vringDescFNext, 2)
	put(0x01e, 2, 2)
	put(0x020, 0x12000, 8) // desc 2: status
	put(0x028, 1, 4)
	put(0x02c, vringDescFWrite, 2)
	put(0x402, 1, 2) // avail idx
	rng := rand.New(rand.NewSource(6))
	broken := 0
	for i := 0; i < 2000; i++ {
		var data []byte
		if i%2 == 0 {
			data = make([]byte, rng.Intn(0x2000)) // up to the used ring at 0x3000
			rng.Read(data)
		} else {
			data = append([]byte{}, valid...)
			for k := rng.Intn(8) + 1; k > 0; k-- {
				data[rng.Intn(0x40)|rng.Intn(2)<<10] = byte(rng.Intn(256)) // descriptors or avail ring
			}
		}
		r := newBlkRig(t, true) // read-only: no fsync per garbage flush request
		reg(r.t, vmStatus, 0)
		reg(r.t, vmStatus, VirtioStatusAck|VirtioStatusDriver)
		reg(r.t, vmDrvFeatSel, 0)
		feat := uint32(VirtioFIndirectDesc)
		if i%4 >= 2 { // random and mutated rings alike
			feat |= VirtioFEventIdx
		}
		reg(r.t, vmDrvFeatures, feat)
		reg(r.t, vmDrvFeatSel, 1)
		reg(r.t, vmDrvFeatures, 1)
		reg(r.t, vmStatus, VirtioStatusAck|VirtioStatusDriver|VirtioStatusFeaturesOK)
		reg(r.t, vmQueueNum, qsize)
		reg(r.t, vmQueueDescLo, descAt)
		reg(r.t, vmQueueAvailLo, availAt)
		reg(r.t, vmQueueUsedLo, tUsed)
		reg(r.t, vmQueueReady, 1)
		reg(r.t, vmStatus, VirtioStatusAck|VirtioStatusDriver|VirtioStatusFeaturesOK|VirtioStatusDriverOK)
		copy(r.m.b[descAt:], data)
		if len(data) > 0x800 {
			copy(r.m.b[0x10000:], data[0x800:]) // request headers, indirect tables
		}
		for j := 0; j < 3; j++ {
			reg(r.t, vmQueueNotify, 0)
			if r.t.Broken() {
				break
			}
			// Every chain taken was returned, and the used idx in guest
			// memory is the device's.
			q := r.t.s.Queues[0]
			if q.UsedIdx != q.LastAvail || binary.LittleEndian.Uint16(r.m.b[tUsed+2:]) != q.UsedIdx {
				t.Fatalf("input %d: took %d chains, returned %d (used idx in memory %d)",
					i, q.LastAvail, q.UsedIdx, binary.LittleEndian.Uint16(r.m.b[tUsed+2:]))
			}
			// With EVENT_IDX the device asked to be notified of the
			// next entry when the ring ran empty.
			if ae := binary.LittleEndian.Uint16(r.m.b[tUsed+4+8*qsize:]); feat&VirtioFEventIdx != 0 && ae != q.LastAvail {
				t.Fatalf("input %d: avail_event %d, last avail %d", i, ae, q.LastAvail)
			}
		}
		if r.t.Broken() {
			broken++
		}
	}
	t.Logf("2000 inputs, %d left the device broken (DEVICE_NEEDS_RESET)", broken)
	if broken == 0 {
		t.Error("no input broke the device: the test does not reach the checks")
	}
}
