package devices

import "testing"

// TestVirtioNotifyAndKick: Notify (a notify seen on an ioeventfd) does
// what a write to QueueNotify does, and a second one takes nothing twice;
// Kick after a restore takes a request the driver made available (and
// notified) before the save but the saved device had not taken, once.
func TestVirtioNotifyAndKick(t *testing.T) {
	r := newBlkRig(t, false)
	request := func(sector uint64) {
		r.header(0x10000, virtioBlkTIn, sector)
		r.m.putDesc(tDesc, 0, tDescr{0x10000, 16, vringDescFNext, 1})
		r.m.putDesc(tDesc, 1, tDescr{0x11000, 512, vringDescFWrite | vringDescFNext, 2})
		r.m.putDesc(tDesc, 2, tDescr{0x12000, 1, vringDescFWrite, 0})
		r.m.b[0x12000] = 0xee
		r.m.offer(0)
	}
	request(1)
	r.t.Notify(0)
	if r.m.usedIdx() != 1 || r.m.b[0x12000] != virtioBlkSOK || r.m.b[0x11000] != 1 {
		t.Fatalf("Notify(0): used idx %d, status %#x, data %d", r.m.usedIdx(), r.m.b[0x12000], r.m.b[0x11000])
	}
	if !r.irq.high {
		t.Fatal("Notify(0): no interrupt")
	}
	r.t.Notify(0)
	r.t.Notify(1)  // no such queue
	r.t.Notify(-1) // nor this
	if r.m.usedIdx() != 1 || r.t.Broken() {
		t.Fatalf("repeated and bad notifies: used idx %d, broken %v", r.m.usedIdx(), r.t.Broken())
	}
	reg(r.t, vmIntACK, virtioIntUsed)

	// The driver offers a request and notifies, but the notify is not
	// taken before the VM is saved.
	request(2)
	t2, irq, _ := r.restoredCopy(t)
	if r.m.usedIdx() != 1 {
		t.Fatal("restore processed a queue")
	}
	t2.Kick()
	if r.m.usedIdx() != 2 || r.m.b[0x11000] != 2 || !irq.high {
		t.Fatalf("Kick after restore: used idx %d, data %d, interrupt %v", r.m.usedIdx(), r.m.b[0x11000], irq.high)
	}
	t2.Kick()
	if r.m.usedIdx() != 2 {
		t.Fatalf("second Kick: used idx %d, want 2", r.m.usedIdx())
	}

	// A device the driver has not set up takes nothing.
	idle := NewVirtioMMIO("virtio-blk1", r.blk, r.m, &vioIRQ{})
	idle.Kick()
	idle.Notify(0)
	if r.m.usedIdx() != 2 {
		t.Fatalf("idle device processed a queue: used idx %d", r.m.usedIdx())
	}
}
