package devices

import (
	"bytes"
	"encoding/binary"
	"math/rand"
	"testing"
)

// EVENT_IDX fields of the test rings (tQSize entries): used_event after
// the avail ring, avail_event after the used ring.
const (
	tUsedEvent  = tAvail + 4 + 2*tQSize
	tAvailEvent = tUsed + 4 + 8*tQSize
)

// Small ring helpers; inWindow is need_event by its definition (event is
// one of old, old+1, ..., now-1), to check the spec's formula against.
func (m *testMem) u16(gpa uint64) uint16      { return binary.LittleEndian.Uint16(m.b[gpa:]) }
func (m *testMem) put16(gpa uint64, v uint16) { binary.LittleEndian.PutUint16(m.b[gpa:], v) }
func (m *testMem) setAvailIdx(v uint16)       { m.put16(tAvail+2, v) }
func (m *testMem) setUsedEvent(v uint16)      { m.put16(tUsedEvent, v) }
func (m *testMem) availEvent() uint16         { return m.u16(tAvailEvent) }
func eventQueue(m *testMem) *Queue            { q := testQueue(m, false); q.EventIdx = true; return q }
func (m *testMem) oneBuf(i int, addr uint64)  { m.putDesc(tDesc, i, tDescr{addr, 8, 0, 0}) }
func (m *testMem) clearDirty()                { clear(m.dirty) }
func (m *testMem) isDirty(gpa uint64) bool    { return m.dirty[gpa/4096] }
func inWindow(event, now, old uint16) bool    { return uint16(event-old) < uint16(now-old) }

// popPush takes n chains and returns each at once.
func popPush(t *testing.T, q *Queue, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		c, err := q.Pop()
		if err != nil || c == nil {
			t.Fatalf("Pop %d: %v %v", i, c, err)
		}
		if err := q.Push(c.Head, 0); err != nil {
			t.Fatal(err)
		}
	}
}

func TestNeedEvent(t *testing.T) {
	for _, c := range []struct {
		event, now, old uint16
		want            bool
	}{
		{0, 1, 0, true},  // entry 0 used: the driver asked for it
		{1, 1, 0, false}, // it asked for entry 1, not used yet
		{2, 5, 3, false}, // asked for entry 2, before this batch
		{3, 5, 3, true},  // first entry of the batch
		{4, 5, 3, true},  // last entry of the batch
		{5, 5, 3, false}, // the next one
		{7, 7, 7, false}, // nothing used
		{65535, 0, 65535, true},
		{0, 0, 65535, false}, // entry 65535 used, the driver asked for entry 0
		{0, 1, 65535, true},  // across the wrap
		{65534, 1, 65535, false},
		{65535, 2, 65530, true},
		{1, 2, 65530, true},
		{2, 2, 65530, false},
		{65529, 2, 65530, false},
	} {
		if got := needEvent(c.event, c.now, c.old); got != c.want {
			t.Errorf("needEvent(event %d, new %d, old %d) = %v, want %v", c.event, c.now, c.old, got, c.want)
		}
	}
	// Against the definition: event is one of old, old+1, ..., new-1.
	rng := rand.New(rand.NewSource(29))
	for i := 0; i < 100000; i++ {
		old := uint16(rng.Intn(1 << 16))
		now := old + uint16(rng.Intn(300))
		event := old + uint16(rng.Intn(600)) - 300
		if needEvent(event, now, old) != inWindow(event, now, old) {
			t.Fatalf("needEvent(%d, %d, %d) = %v", event, now, old, needEvent(event, now, old))
		}
	}
}

func TestVirtqueueEventIdxInterrupt(t *testing.T) {
	m := newTestMem(1 << 20)
	q := eventQueue(m)
	for i := 0; i < tQSize; i++ {
		m.oneBuf(i, 0x10000)
	}
	for i := uint16(0); i < 3; i++ {
		m.offer(i)
	}
	popPush(t, q, 3)
	if !q.WantInterrupt() || q.S.SignalledUsed != 3 {
		t.Fatalf("used_event 0, used 0 -> 3: no interrupt (signalled %d)", q.S.SignalledUsed)
	}
	m.offer(3)
	popPush(t, q, 1)
	if q.WantInterrupt() {
		t.Fatal("used_event 0 already passed: interrupt")
	}
	m.setUsedEvent(5)
	m.offer(4)
	popPush(t, q, 1)
	if q.WantInterrupt() {
		t.Fatal("used 4 -> 5, used_event 5: interrupt")
	}
	// VIRTQ_AVAIL_F_NO_INTERRUPT means nothing with EVENT_IDX.
	binary.LittleEndian.PutUint16(m.b[tAvail:], vringAvailFNoInt)
	m.offer(5)
	m.offer(6)
	popPush(t, q, 2)
	if !q.WantInterrupt() || q.S.SignalledUsed != 7 {
		t.Fatal("used 5 -> 7, used_event 5: no interrupt")
	}
	if q.WantInterrupt() {
		t.Fatal("a second decision without new used buffers interrupts")
	}
	// Across the 65535 -> 0 wrap of the free-running indexes.
	q.S.LastAvail, q.S.UsedIdx, q.S.SignalledUsed = 65534, 65534, 65534
	m.setAvailIdx(65534)
	for i := uint16(0); i < 3; i++ {
		m.offer(i)
	}
	m.setUsedEvent(65535)
	popPush(t, q, 3)
	if m.usedIdx() != 1 || !q.WantInterrupt() || q.S.SignalledUsed != 1 {
		t.Fatalf("used 65534 -> 1, used_event 65535: no interrupt (used idx %d)", m.usedIdx())
	}
	m.offer(3)
	popPush(t, q, 1)
	if q.WantInterrupt() {
		t.Fatal("used 1 -> 2, used_event 65535: interrupt")
	}

	// used_event in the high half of its 32-bit word (avail ring at 4k+2),
	// next to bytes that are not used_event.
	m = newTestMem(1 << 20)
	q = eventQueue(m)
	q.S.Avail = 0x2402
	ue := q.S.Avail + 4 + 2*tQSize
	if ue%4 != 2 {
		t.Fatal("test layout")
	}
	m.put16(ue-2, 0xffff)
	m.put16(ue+2, 0xffff)
	q.S.SignalledUsed, q.S.UsedIdx = 10, 12
	for event, want := range map[uint16]bool{9: false, 10: true, 11: true, 12: false} {
		m.put16(ue, event)
		q.S.SignalledUsed = 10
		if q.WantInterrupt() != want {
			t.Errorf("used_event %d at %#x, used 10 -> 12: interrupt %v", event, ue, !want)
		}
	}
	// Without EVENT_IDX the flags decide, and used_event is ignored.
	q.EventIdx = false
	q.S.SignalledUsed = 10
	m.put16(ue, 9)
	if !q.WantInterrupt() || q.S.SignalledUsed != 10 {
		t.Fatal("without EVENT_IDX: no interrupt, or the event state changed")
	}
}

func TestVirtqueueAvailEvent(t *testing.T) {
	m := newTestMem(1 << 20)
	q := eventQueue(m)
	for i := 0; i < tQSize; i++ {
		m.oneBuf(i, 0x10000)
	}
	m.put16(tAvailEvent+2, 0xbeef) // past the used ring: not the device's
	for i := uint16(0); i < 5; i++ {
		m.offer(i)
	}
	popPush(t, q, 5)
	m.clearDirty()
	if c, err := q.Pop(); c != nil || err != nil {
		t.Fatalf("empty ring: Pop = %v, %v", c, err)
	}
	if m.availEvent() != 5 || m.u16(tAvailEvent+2) != 0xbeef {
		t.Fatalf("avail_event %d (and %#x after it), want 5", m.availEvent(), m.u16(tAvailEvent+2))
	}
	if !m.isDirty(tAvailEvent) {
		t.Fatal("avail_event not marked dirty")
	}
	// Unchanged: not written again.
	m.clearDirty()
	q.Pop()
	if len(m.dirty) != 0 {
		t.Fatal("avail_event rewritten with the same value")
	}
	// Across the wrap.
	q.S.LastAvail, q.S.UsedIdx = 65535, 65535
	m.setAvailIdx(65535)
	m.offer(0)
	popPush(t, q, 1)
	if c, _ := q.Pop(); c != nil || m.availEvent() != 0 || m.usedIdx() != 0 {
		t.Fatalf("after the wrap: avail_event %d used idx %d", m.availEvent(), m.usedIdx())
	}
	// Without EVENT_IDX avail_event is never written.
	q.EventIdx = false
	q.S.LastAvail = 7
	m.setAvailIdx(7)
	q.Pop()
	if m.availEvent() != 0 {
		t.Fatal("avail_event written without EVENT_IDX")
	}
}

// raceMem lets the "driver" add a buffer just as the device writes
// avail_event: after the device read avail idx, before it could see the
// new entry (the race of 2.7.10).
type raceMem struct {
	*testMem
	at    uint64
	onSet func()
}

func (r *raceMem) MarkDirty(gpa, n uint64) {
	r.testMem.MarkDirty(gpa, n)
	if gpa == r.at && r.onSet != nil {
		f := r.onSet
		r.onSet = nil
		f()
	}
}

func TestVirtqueueAvailEventRace(t *testing.T) {
	m := newTestMem(1 << 20)
	rm := &raceMem{testMem: m, at: tAvailEvent}
	q := eventQueue(m)
	q.Mem = rm
	q.S.LastAvail, q.S.UsedIdx = 5, 5 // avail_event (0) must change
	m.setAvailIdx(5)
	m.oneBuf(3, 0x10000)
	rm.onSet = func() { m.offer(3) }
	c, err := q.Pop()
	if err != nil || c == nil || c.Head != 3 {
		t.Fatalf("buffer made available while avail_event was written: Pop = %v, %v", c, err)
	}
	if rm.onSet != nil {
		t.Fatal("avail_event was not written")
	}
}

// TestVirtioEventIdxTransport negotiates EVENT_IDX on a virtio-blk device
// and checks interrupts, avail_event and that the decision state survives
// Save and Restore.
func TestVirtioEventIdxTransport(t *testing.T) {
	r := newBlkRig(t, false)
	reg(r.t, vmDevFeatSel, 0)
	if rd(r.t, vmDevFeatures)&VirtioFEventIdx == 0 {
		t.Fatal("EVENT_IDX not offered")
	}
	renegotiate(r.t, VirtioFIndirectDesc|VirtioFEventIdx)
	request := func(sector uint64) {
		r.header(0x10000, virtioBlkTIn, sector)
		r.m.putDesc(tDesc, 0, tDescr{0x10000, 16, vringDescFNext, 1})
		r.m.putDesc(tDesc, 1, tDescr{0x11000, 512, vringDescFWrite | vringDescFNext, 2})
		r.m.putDesc(tDesc, 2, tDescr{0x12000, 1, vringDescFWrite, 0})
		r.m.offer(0)
	}
	// quiet notifies one request and checks it was done without an interrupt.
	quiet := func(tr *VirtioMMIO, irq *vioIRQ, sector uint64) {
		t.Helper()
		before := r.m.usedIdx()
		request(sector)
		reg(tr, vmQueueNotify, 0)
		if r.m.usedIdx() != before+1 || r.m.b[0x11000] != byte(sector) {
			t.Fatalf("request for sector %d not done (used idx %d)", sector, r.m.usedIdx())
		}
		if irq.high || rd(tr, vmIntStatus) != 0 {
			t.Fatalf("sector %d: interrupt the driver did not ask for", sector)
		}
	}
	request(1)
	if st, _ := r.kick(t, 0x12000); st != virtioBlkSOK || r.m.availEvent() != 1 {
		t.Fatalf("status %d, avail_event %d", st, r.m.availEvent())
	}
	r.m.setUsedEvent(5) // interrupt me when entry 5 is used
	quiet(r.t, r.irq, 2)
	if r.m.availEvent() != 2 {
		t.Fatalf("avail_event %d, want 2", r.m.availEvent())
	}
	t2, irq, data := r.restoredCopy(t)
	var s VirtioMMIOState
	if err := decodeFixed("x", data, &s); err != nil || s.Queues[0].SignalledUsed != 2 {
		t.Fatalf("saved SignalledUsed %d (%v), want 2", s.Queues[0].SignalledUsed, err)
	}
	// used_event 1 was passed before the save: no interrupt for entry 2 (a
	// device that lost its last decision would raise one).
	r.m.setUsedEvent(1)
	quiet(t2, irq, 3)
	r.t, r.irq = t2, irq
	r.m.setUsedEvent(3)
	request(4)
	if st, _ := r.kick(t, 0x12000); st != virtioBlkSOK || r.m.b[0x11000] != 4 {
		t.Fatal("used_event 3: request 4 not done")
	}
	if r.m.availEvent() != 4 {
		t.Fatalf("avail_event %d after restore, want 4", r.m.availEvent())
	}
	// A reset forgets the decision state with the rest.
	reg(t2, vmStatus, 0)
	if t2.s.Queues[0] != (QueueState{}) {
		t.Fatalf("queue state after reset: %+v", t2.s.Queues[0])
	}
}

// renegotiate resets a device and sets it up again, as newBlkRig did,
// with the driver features feat (VERSION_1 added).
func renegotiate(tr *VirtioMMIO, feat uint32) {
	reg(tr, vmStatus, 0)
	reg(tr, vmStatus, VirtioStatusAck|VirtioStatusDriver)
	reg(tr, vmDrvFeatSel, 0)
	reg(tr, vmDrvFeatures, feat)
	reg(tr, vmDrvFeatSel, 1)
	reg(tr, vmDrvFeatures, 1)
	reg(tr, vmStatus, VirtioStatusAck|VirtioStatusDriver|VirtioStatusFeaturesOK)
	reg(tr, vmQueueSel, 0)
	reg(tr, vmQueueNum, tQSize)
	reg(tr, vmQueueDescLo, tDesc)
	reg(tr, vmQueueAvailLo, tAvail)
	reg(tr, vmQueueUsedLo, tUsed)
	reg(tr, vmQueueReady, 1)
	reg(tr, vmStatus, VirtioStatusAck|VirtioStatusDriver|VirtioStatusFeaturesOK|VirtioStatusDriverOK)
}

// TestUpgradeVirtioStateV1: a format 1 state (no SignalledUsed) converts
// to the state the device saves now, the decision point at the used idx.
func TestUpgradeVirtioStateV1(t *testing.T) {
	s := VirtioMMIOState{Status: 0xf, QueueSel: 1, InterruptStatus: 1, DriverFeatures: VirtioFVersion1 | VirtioFIndirectDesc}
	s.Queues[0] = QueueState{Num: 16, Ready: 1, LastAvail: 9, UsedIdx: 8, Desc: tDesc, Avail: tAvail, Used: tUsed, SignalledUsed: 8}
	s.Queues[1] = QueueState{Num: 256, Ready: 1, LastAvail: 65535, UsedIdx: 65535, Desc: 0x5000, Avail: 0x6000, Used: 0x7000, SignalledUsed: 65535}
	o := virtioMMIOStateV1{Status: s.Status, QueueSel: s.QueueSel, InterruptStatus: s.InterruptStatus, DriverFeatures: s.DriverFeatures}
	for i, q := range s.Queues {
		o.Queues[i] = queueStateV1{Num: q.Num, Ready: q.Ready, LastAvail: q.LastAvail, UsedIdx: q.UsedIdx, Desc: q.Desc, Avail: q.Avail, Used: q.Used}
	}
	old, _ := encodeFixed("x", &o)
	want, _ := encodeFixed("x", &s)
	if len(old) != 96 {
		t.Fatalf("format 1 state is %d bytes, want 96", len(old))
	}
	got, err := UpgradeVirtioStateV1("x", old)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("upgraded to %x (%v), want %x", got, err, want)
	}
	if _, err := UpgradeVirtioStateV1("x", want); err == nil {
		t.Fatal("a current state upgraded as format 1")
	}
}
