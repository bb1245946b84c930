package devices

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
)

// GuestMemory is guest RAM as the virtio devices see it: host views of
// guest-physical ranges, and a record of the pages a device wrote (for
// migration's dirty log: KVM does not see writes made by the VMM).
type GuestMemory interface {
	// Slice returns [gpa, gpa+n), which must lie in RAM.
	Slice(gpa, n uint64) ([]byte, error)
	// MarkDirty records that the device wrote [gpa, gpa+n).
	MarkDirty(gpa, n uint64)
}

// Split virtqueue layout (virtio 1.x, 2.6).
const (
	vringDescSize    = 16
	vringDescFNext   = 1
	vringDescFWrite  = 2
	vringDescFIndir  = 4
	vringAvailFNoInt = 1 // VIRTQ_AVAIL_F_NO_INTERRUPT
	vringUsedElem    = 8
	// VirtqMaxSize is the largest queue a ferry device offers.
	VirtqMaxSize = 256
)

// ErrRing means the driver put something in a ring that no correct driver
// would: the device stops using the queue and asks for a reset.
var ErrRing = errors.New("malformed virtqueue")

func ringErr(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrRing, fmt.Sprintf(format, a...))
}

// QueueState is one split virtqueue as the driver configured it plus the
// device's position in it: all a migrated device needs to continue.
type QueueState struct {
	Num       uint16 // queue size, a power of 2 up to VirtqMaxSize
	Ready     uint8
	_         uint8
	LastAvail uint16 // next avail ring entry the device takes
	UsedIdx   uint16 // the device's used idx (next used entry)
	Desc      uint64 // descriptor table
	Avail     uint64 // driver area (available ring)
	Used      uint64 // device area (used ring)
	// SignalledUsed is UsedIdx as it was when the device last decided
	// whether to interrupt (the "old" of vring_need_event; EVENT_IDX only).
	SignalledUsed uint16
}

// Queue is a split virtqueue over guest memory.
type Queue struct {
	S        QueueState
	Mem      GuestMemory
	Indirect bool // VIRTIO_F_INDIRECT_DESC was negotiated
	EventIdx bool // VIRTIO_F_EVENT_IDX was negotiated
}

// Buf is one guest buffer of a descriptor chain.
type Buf struct {
	Addr  uint64
	Len   uint32
	Write bool // device-writable
}

// Chain is one request: the descriptor chain starting at Head.
type Chain struct {
	Head uint16
	Bufs []Buf // readable buffers first, then writable ones
}

// validate checks the queue's configuration when the driver sets it ready.
func (q *Queue) validate() error {
	n := uint64(q.S.Num)
	if n == 0 || n > VirtqMaxSize || n&(n-1) != 0 {
		return ringErr("queue size %d", n)
	}
	if q.S.Desc%16 != 0 || q.S.Avail%2 != 0 || q.S.Used%4 != 0 {
		return ringErr("misaligned rings desc %#x avail %#x used %#x", q.S.Desc, q.S.Avail, q.S.Used)
	}
	desc, avail, used := [2]uint64{q.S.Desc, n * vringDescSize}, [2]uint64{q.S.Avail, 6 + 2*n}, [2]uint64{q.S.Used, 6 + vringUsedElem*n}
	for _, r := range [][2]uint64{desc, avail, used} {
		if _, err := q.Mem.Slice(r[0], r[1]); err != nil {
			return ringErr("ring outside RAM: %v", err)
		}
	}
	// The device writes the used ring: over the driver's rings, its own
	// writes would change what the driver offered (a used idx written
	// over the avail idx makes every chain returned offer one more, and
	// the device would never stop).
	for _, r := range []struct {
		name string
		r    [2]uint64
	}{{"descriptor table", desc}, {"avail ring", avail}} {
		if used[0] < r.r[0]+r.r[1] && r.r[0] < used[0]+used[1] {
			return ringErr("used ring %#x+%d overlaps the %s %#x+%d", used[0], used[1], r.name, r.r[0], r.r[1])
		}
	}
	return nil
}

// avail returns the driver's avail idx; flags says whether it asked for no
// interrupts. Read before any ring entry (acquire).
func (q *Queue) avail() (idx, flags uint16, err error) {
	w, err := q.Mem.Slice(q.S.Avail&^3, 8)
	if err != nil {
		return 0, 0, ringErr("avail ring: %v", err)
	}
	if q.S.Avail%4 == 0 {
		v := atomic.LoadUint32(word32(w))
		return uint16(v >> 16), uint16(v), nil
	}
	// Avail at 4k+2: flags in the high half of the first word, idx in the
	// low half of the second.
	v := atomic.LoadUint32(word32(w[4:]))
	flags = uint16(atomic.LoadUint32(word32(w)) >> 16)
	return uint16(v), flags, nil
}

// Pending reports how many chains the driver has made available and the
// device has not taken.
func (q *Queue) Pending() (uint16, error) {
	idx, _, err := q.avail()
	if err != nil {
		return 0, err
	}
	n := idx - q.S.LastAvail
	if n > q.S.Num {
		return 0, ringErr("avail idx %d is %d ahead of the device's %d (queue size %d)", idx, n, q.S.LastAvail, q.S.Num)
	}
	return n, nil
}

// Pop takes the next available chain, or returns nil when there is none.
func (q *Queue) Pop() (*Chain, error) {
	if q.S.Ready == 0 {
		return nil, nil
	}
	n, err := q.Pending()
	if err == nil && n == 0 && q.EventIdx {
		// The ring looks empty: ask for a notification when the driver
		// makes entry LastAvail available, then look once more, since the
		// driver may have added it before it could see avail_event
		// (2.7.10). The store is a full barrier before the second load.
		var wrote bool
		if wrote, err = q.setAvailEvent(q.S.LastAvail); wrote {
			n, err = q.Pending()
		}
	}
	if err != nil || n == 0 {
		return nil, err
	}
	slot := uint64(q.S.LastAvail % q.S.Num)
	e, err := q.Mem.Slice(q.S.Avail+4+2*slot, 2)
	if err != nil {
		return nil, ringErr("avail ring: %v", err)
	}
	head := binary.LittleEndian.Uint16(e)
	c, err := q.chain(head)
	if err != nil {
		return nil, err
	}
	q.S.LastAvail++
	return c, nil
}

type desc struct {
	addr  uint64
	len   uint32
	flags uint16
	next  uint16
}

func readDesc(table []byte, i uint16) desc {
	d := table[uint64(i)*vringDescSize:]
	return desc{
		addr:  binary.LittleEndian.Uint64(d),
		len:   binary.LittleEndian.Uint32(d[8:]),
		flags: binary.LittleEndian.Uint16(d[12:]),
		next:  binary.LittleEndian.Uint16(d[14:]),
	}
}

// chain walks the descriptors from head, through one indirect table at
// most, checking every index, address and length; a chain longer than its
// table is a loop.
func (q *Queue) chain(head uint16) (*Chain, error) {
	table, err := q.Mem.Slice(q.S.Desc, uint64(q.S.Num)*vringDescSize)
	if err != nil {
		return nil, ringErr("descriptor table: %v", err)
	}
	size := q.S.Num
	c := &Chain{Head: head}
	if head >= size {
		return nil, ringErr("head %d >= queue size %d", head, size)
	}
	i, indirect := head, false
	var total uint64
	for steps := 0; ; steps++ {
		if steps >= int(size) {
			return nil, ringErr("descriptor chain from %d loops", head)
		}
		d := readDesc(table, i)
		if d.flags&vringDescFIndir != 0 {
			if !q.Indirect || indirect || d.flags&vringDescFNext != 0 {
				return nil, ringErr("descriptor %d: indirect table not allowed here", i)
			}
			if d.len == 0 || d.len%vringDescSize != 0 || d.len/vringDescSize > 0xffff {
				return nil, ringErr("indirect table of %d bytes", d.len)
			}
			if table, err = q.Mem.Slice(d.addr, uint64(d.len)); err != nil {
				return nil, ringErr("indirect table: %v", err)
			}
			size, i, indirect, steps = uint16(d.len/vringDescSize), 0, true, -1
			continue
		}
		w := d.flags&vringDescFWrite != 0
		if !w && len(c.Bufs) > 0 && c.Bufs[len(c.Bufs)-1].Write {
			return nil, ringErr("readable descriptor after a writable one")
		}
		if _, err := q.Mem.Slice(d.addr, uint64(d.len)); err != nil {
			return nil, ringErr("buffer: %v", err)
		}
		if total += uint64(d.len); total > 1<<32 {
			return nil, ringErr("chain longer than 4 GiB")
		}
		c.Bufs = append(c.Bufs, Buf{Addr: d.addr, Len: d.len, Write: w})
		if d.flags&vringDescFNext == 0 {
			return c, nil
		}
		if d.next >= size {
			return nil, ringErr("next %d >= table size %d", d.next, size)
		}
		i = d.next
	}
}

// Push returns a chain to the driver with the number of bytes the device
// wrote into it: the used element first, then the used idx (release).
func (q *Queue) Push(head uint16, written uint32) error {
	slot := uint64(q.S.UsedIdx % q.S.Num)
	elem := q.S.Used + 4 + vringUsedElem*slot
	e, err := q.Mem.Slice(elem, vringUsedElem)
	if err != nil {
		return ringErr("used ring: %v", err)
	}
	binary.LittleEndian.PutUint32(e, uint32(head))
	binary.LittleEndian.PutUint32(e[4:], written)
	q.Mem.MarkDirty(elem, vringUsedElem)
	q.S.UsedIdx++
	w, err := q.Mem.Slice(q.S.Used, 4)
	if err != nil {
		return ringErr("used ring: %v", err)
	}
	// used flags (0: we never ask to skip notifications) and idx in one
	// atomic store, after the element.
	atomic.StoreUint32(word32(w), uint32(q.S.UsedIdx)<<16)
	q.Mem.MarkDirty(q.S.Used, 4)
	return nil
}

// WantInterrupt reports whether the driver wants an interrupt for the
// buffers used since the last call. Without EVENT_IDX: unless it set
// VIRTQ_AVAIL_F_NO_INTERRUPT. With EVENT_IDX: if the used idx moved past
// the driver's used_event since the last decision; the decision point is
// recorded in S, so the caller must save S after this call.
func (q *Queue) WantInterrupt() bool {
	if !q.EventIdx {
		_, flags, err := q.avail()
		return err != nil || flags&vringAvailFNoInt == 0
	}
	old, now := q.S.SignalledUsed, q.S.UsedIdx
	q.S.SignalledUsed = now
	// Push stored the used idx with a full barrier, so used_event is read
	// after the driver can see the new entries (2.7.10).
	event, err := q.load16(q.usedEventAddr())
	return err != nil || needEvent(event, now, old)
}

// needEvent is the spec's vring_need_event: moving an index from old to
// now crossed event, that is event is in [old, now) modulo 2^16.
func needEvent(event, now, old uint16) bool {
	return now-event-1 < now-old
}

// used_event is the u16 after the avail ring's entries, avail_event the
// u16 after the used ring's (2.7.10, "virtq_avail"/"virtq_used").
func (q *Queue) usedEventAddr() uint64  { return q.S.Avail + 4 + 2*uint64(q.S.Num) }
func (q *Queue) availEventAddr() uint64 { return q.S.Used + 4 + vringUsedElem*uint64(q.S.Num) }

// setAvailEvent stores v in avail_event unless it is there already, and
// reports whether it wrote. The u16 is replaced inside its aligned 32-bit
// word by compare-and-swap: the other half, which may be outside the ring,
// is written back unchanged even if the driver changes it meanwhile. A
// 4-byte aligned word never crosses a page, so it is in RAM if the ring is.
func (q *Queue) setAvailEvent(v uint16) (bool, error) {
	addr := q.availEventAddr()
	w, err := q.Mem.Slice(addr&^3, 4)
	if err != nil {
		return false, ringErr("used ring: %v", err)
	}
	p := word32(w)
	sh := 8 * (addr & 2)
	for {
		old := atomic.LoadUint32(p)
		if uint16(old>>sh) == v {
			return false, nil
		}
		if atomic.CompareAndSwapUint32(p, old, old&^(0xffff<<sh)|uint32(v)<<sh) {
			break
		}
	}
	q.Mem.MarkDirty(addr, 2)
	return true, nil
}

// load16 reads the u16 at the even address addr with one atomic load of
// its aligned 32-bit word.
func (q *Queue) load16(addr uint64) (uint16, error) {
	w, err := q.Mem.Slice(addr&^3, 4)
	if err != nil {
		return 0, ringErr("ring: %v", err)
	}
	return uint16(atomic.LoadUint32(word32(w)) >> (8 * (addr & 2))), nil
}

// ReadFrom copies the chain's readable bytes from offset off into p and
// returns how many it copied.
func (c *Chain) ReadFrom(mem GuestMemory, off uint64, p []byte) (int, error) {
	n := 0
	for _, b := range c.Bufs {
		if b.Write || len(p) == n {
			break
		}
		if off >= uint64(b.Len) {
			off -= uint64(b.Len)
			continue
		}
		s, err := mem.Slice(b.Addr+off, uint64(b.Len)-off)
		if err != nil {
			return n, err
		}
		n += copy(p[n:], s)
		off = 0
	}
	return n, nil
}

// Segments returns host views of the chain's bytes [off, off+n) of the
// readable (write false) or writable buffers, for I/O straight into guest
// memory.
func (c *Chain) Segments(mem GuestMemory, write bool, off, n uint64) ([][]byte, []Buf, error) {
	var segs [][]byte
	var bufs []Buf
	for _, b := range c.Bufs {
		if b.Write != write || n == 0 {
			continue
		}
		if off >= uint64(b.Len) {
			off -= uint64(b.Len)
			continue
		}
		l := min(uint64(b.Len)-off, n)
		s, err := mem.Slice(b.Addr+off, l)
		if err != nil {
			return nil, nil, err
		}
		segs = append(segs, s)
		bufs = append(bufs, Buf{Addr: b.Addr + off, Len: uint32(l), Write: write})
		n -= l
		off = 0
	}
	return segs, bufs, nil
}

// Len is the total length of the readable (write false) or writable buffers.
func (c *Chain) Len(write bool) uint64 {
	var n uint64
	for _, b := range c.Bufs {
		if b.Write == write {
			n += uint64(b.Len)
		}
	}
	return n
}

// queueStateV1 and virtioMMIOStateV1 are the virtio-mmio transport's state
// as VM state format 1 saved it: QueueState without SignalledUsed.
type queueStateV1 struct {
	Num       uint16
	Ready     uint8
	_         uint8
	LastAvail uint16
	UsedIdx   uint16
	Desc      uint64
	Avail     uint64
	Used      uint64
}

type virtioMMIOStateV1 struct {
	Status          uint32
	DevFeatSel      uint32
	DrvFeatSel      uint32
	QueueSel        uint32
	InterruptStatus uint32
	Broken          uint32
	DriverFeatures  uint64
	Queues          [VirtioMaxQueues]queueStateV1
}

// UpgradeVirtioStateV1 converts a virtio-mmio transport's state saved in
// VM state format 1 to the current layout. Format 1 devices offered no
// EVENT_IDX and decided on an interrupt after every batch of used
// buffers, so at a pause the last decision was at the current used idx.
func UpgradeVirtioStateV1(name string, data []byte) ([]byte, error) {
	var o virtioMMIOStateV1
	if err := decodeFixed(name, data, &o); err != nil {
		return nil, err
	}
	s := VirtioMMIOState{
		Status: o.Status, DevFeatSel: o.DevFeatSel, DrvFeatSel: o.DrvFeatSel, QueueSel: o.QueueSel,
		InterruptStatus: o.InterruptStatus, Broken: o.Broken, DriverFeatures: o.DriverFeatures,
	}
	for i, q := range o.Queues {
		s.Queues[i] = QueueState{Num: q.Num, Ready: q.Ready, LastAvail: q.LastAvail, UsedIdx: q.UsedIdx,
			Desc: q.Desc, Avail: q.Avail, Used: q.Used, SignalledUsed: q.UsedIdx}
	}
	return encodeFixed(name, &s)
}
