package devices

import (
	"bytes"
	"strings"
	"testing"
)

// TestVirtioMMIORestoreRefuses: Restore refuses a state the transport
// could never have been in (features the device did not offer, a ready
// queue that is not valid or that the device does not have, unknown
// interrupt or status bits) and then leaves the live transport exactly as
// it was: same saved state, same interrupt line.
func TestVirtioMMIORestoreRefuses(t *testing.T) {
	r := newBlkRig(t, false)
	// Raise the interrupt so that a change of the line would show.
	r.t.mu.Lock()
	r.t.raise(virtioIntUsed)
	r.t.mu.Unlock()
	live, err := r.t.Save()
	if err != nil {
		t.Fatal(err)
	}
	var good VirtioMMIOState
	if err := decodeFixed("x", live, &good); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		edit func(s *VirtioMMIOState)
		want string
	}{
		{"feature not offered", func(s *VirtioMMIOState) { s.DriverFeatures |= 1 << 40 }, "features"},
		{"net feature on blk", func(s *VirtioMMIOState) { s.DriverFeatures |= virtioNetFMAC }, "features"},
		{"no VERSION_1", func(s *VirtioMMIOState) { s.DriverFeatures &^= VirtioFVersion1 }, "VERSION_1"},
		{"bad queue size", func(s *VirtioMMIOState) { s.Queues[0].Num = 3 }, "queue 0"},
		{"ring outside RAM", func(s *VirtioMMIOState) { s.Queues[0].Used = 1 << 40 }, "queue 0"},
		{"ready value", func(s *VirtioMMIOState) { s.Queues[0].Ready = 2 }, "queue 0"},
		{"used ring on the avail ring", func(s *VirtioMMIOState) {
			s.Queues[0].Used = s.Queues[0].Avail
			s.Queues[0].UsedIdx = s.Queues[0].LastAvail + 1 // each push would make one more chain available
		}, "overlaps"},
		{"used ring on the descriptors", func(s *VirtioMMIOState) { s.Queues[0].Used = s.Queues[0].Desc + 16 }, "overlaps"},
		{"queue the device lacks", func(s *VirtioMMIOState) { s.Queues[1] = good.Queues[0] }, "queue 1"},
		{"not-ready queue the device lacks", func(s *VirtioMMIOState) { s.Queues[1].Num = 8 }, "queue 1"},
		{"interrupt bits", func(s *VirtioMMIOState) { s.InterruptStatus = 4 }, "interrupt"},
		{"broken value", func(s *VirtioMMIOState) { s.Broken = 2 }, "broken"},
		{"interrupt raised, line low", func(s *VirtioMMIOState) { s.InterruptStatus = 0; s.Queues[0].Num = 5 }, "queue 0"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := good
			c.edit(&s)
			bad, err := encodeFixed("x", &s)
			if err != nil {
				t.Fatal(err)
			}
			err = r.t.Restore(bad)
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "virtio-blk0") {
				t.Errorf("error %q, want it to name virtio-blk0 and %q", err, c.want)
			}
			if now, _ := r.t.Save(); !bytes.Equal(now, live) {
				t.Error("the refused state changed the live transport")
			}
			if !r.irq.high {
				t.Error("the refused state lowered the interrupt line")
			}
		})
	}
	// The live state itself is accepted, and round-trips.
	if err := r.t.Restore(live); err != nil {
		t.Fatalf("restore of the live state: %v", err)
	}
	if now, _ := r.t.Save(); !bytes.Equal(now, live) {
		t.Fatal("state changed by its own restore")
	}
}

// TestVirtqueueUsedRingOverlap: a driver that puts the used ring over its
// avail ring or descriptor table (whose contents the device's used-ring
// writes would then change: a used idx written over the avail idx makes
// each returned chain offer the next one, for ever) gets the queue
// refused when it sets it ready; rings that only touch are fine.
func TestVirtqueueUsedRingOverlap(t *testing.T) {
	m := newTestMem(1 << 20)
	n := uint64(tQSize)
	for _, c := range []struct {
		name              string
		desc, avail, used uint64
		ok                bool
	}{
		{"apart", tDesc, tAvail, tUsed, true},
		{"touching", tDesc, tAvail, tAvail + (6+2*n+3)&^3, true},
		{"used on avail", tDesc, tAvail, tAvail, false},
		{"used over avail idx", tDesc, tAvail, tAvail - 4, false},
		{"used on descriptors", tDesc, tAvail, tDesc + 16*n - 4, false},
	} {
		q := &Queue{Mem: m, S: QueueState{Num: tQSize, Ready: 1, Desc: c.desc, Avail: c.avail, Used: c.used}}
		if err := q.validate(); (err == nil) != c.ok {
			t.Errorf("%s: validate = %v, want ok %v", c.name, err, c.ok)
		}
	}
}
