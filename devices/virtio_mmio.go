package devices

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
)

// MMIODevice handles guest MMIO in its window; off is relative to the
// window's base. data has the access size; a read fills it.
type MMIODevice interface {
	Device
	MMIORead(off uint64, data []byte)
	MMIOWrite(off uint64, data []byte)
}

// virtio-mmio version 2 registers (virtio 1.x, 4.2.2).
const (
	VirtioMMIOSize = 0x1000 // one window per device
	// VirtioMMIOQueueNotify is where in the window the driver notifies a
	// queue: a 4-byte write of the queue's index.
	VirtioMMIOQueueNotify = vmQueueNotify

	vmMagic        = 0x000
	vmVersion      = 0x004
	vmDeviceID     = 0x008
	vmVendorID     = 0x00c
	vmDevFeatures  = 0x010
	vmDevFeatSel   = 0x014
	vmDrvFeatures  = 0x020
	vmDrvFeatSel   = 0x024
	vmQueueSel     = 0x030
	vmQueueNumMax  = 0x034
	vmQueueNum     = 0x038
	vmQueueReady   = 0x044
	vmQueueNotify  = 0x050
	vmIntStatus    = 0x060
	vmIntACK       = 0x064
	vmStatus       = 0x070
	vmQueueDescLo  = 0x080
	vmQueueDescHi  = 0x084
	vmQueueAvailLo = 0x090
	vmQueueAvailHi = 0x094
	vmQueueUsedLo  = 0x0a0
	vmQueueUsedHi  = 0x0a4
	vmSHMLenLo     = 0x0b0
	vmSHMLenHi     = 0x0b4
	vmConfigGen    = 0x0fc
	vmConfig       = 0x100

	virtioMagic   = 0x74726976 // "virt"
	virtioVendor  = 0x46455259 // "FERY"
	virtioVersion = 2

	// Device status bits.
	VirtioStatusAck        = 1
	VirtioStatusDriver     = 2
	VirtioStatusDriverOK   = 4
	VirtioStatusFeaturesOK = 8
	VirtioStatusNeedsReset = 0x40
	VirtioStatusFailed     = 0x80

	// Feature bits every ferry device offers.
	VirtioFVersion1      = 1 << 32
	VirtioFIndirectDesc  = 1 << 28
	VirtioFEventIdx      = 1 << 29
	virtioIntUsed        = 1
	virtioIntConfig      = 2
	VirtioMaxQueues      = 2
	virtioCommonFeatures = VirtioFVersion1 | VirtioFIndirectDesc | VirtioFEventIdx
)

// VirtioBackend is the device type behind a virtio-mmio transport.
type VirtioBackend interface {
	DeviceID() uint32
	Features() uint64 // device-type feature bits
	NumQueues() int   // at most VirtioMaxQueues
	ReadConfig(off uint64, data []byte)
	// Process handles what the driver made available on queue q. An
	// ErrRing error marks the device broken until the driver resets it.
	Process(t *VirtioMMIO, q int) error
	Reset()
}

// VirtioMMIOState is the transport's whole state.
type VirtioMMIOState struct {
	Status          uint32
	DevFeatSel      uint32
	DrvFeatSel      uint32
	QueueSel        uint32
	InterruptStatus uint32
	Broken          uint32 // a ring was malformed: NEEDS_RESET until reset
	DriverFeatures  uint64
	Queues          [VirtioMaxQueues]QueueState
}

// VirtioMMIO is a virtio-mmio (version 2) transport for one device.
type VirtioMMIO struct {
	name string
	// mu guards s, queues and irq: register accesses (vCPU threads),
	// notifies (ioeventfd goroutines) and the backend's Process, which
	// always runs under it, as does a backend's own state that it says
	// is on t.mu (Net's).
	mu      sync.Mutex
	s       VirtioMMIOState
	mem     GuestMemory
	irq     irqOut
	backend VirtioBackend
	queues  [VirtioMaxQueues]Queue
}

// NewVirtioMMIO creates the transport of backend.
func NewVirtioMMIO(name string, backend VirtioBackend, mem GuestMemory, irq IRQLine) *VirtioMMIO {
	t := &VirtioMMIO{name: name, mem: mem, irq: irqOut{line: irq}, backend: backend}
	t.syncQueues()
	return t
}

// Name implements Device.
func (t *VirtioMMIO) Name() string { return t.name }

// Backend is the device behind the transport.
func (t *VirtioMMIO) Backend() VirtioBackend { return t.backend }

func (t *VirtioMMIO) syncQueues() {
	for i := range t.queues {
		t.queues[i].Mem = t.mem
		t.queues[i].Indirect = t.s.DriverFeatures&VirtioFIndirectDesc != 0
		t.queues[i].EventIdx = t.s.DriverFeatures&VirtioFEventIdx != 0
	}
}

func (t *VirtioMMIO) offered() uint64 { return virtioCommonFeatures | t.backend.Features() }

// Queue is queue i, for the backend's Process.
func (t *VirtioMMIO) Queue(i int) *Queue {
	t.queues[i].S = t.s.Queues[i]
	return &t.queues[i]
}

func (t *VirtioMMIO) sel() *QueueState {
	if int(t.s.QueueSel) < t.backend.NumQueues() {
		return &t.s.Queues[t.s.QueueSel]
	}
	return nil
}

// MMIORead implements MMIODevice.
func (t *VirtioMMIO) MMIORead(off uint64, data []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	clear(data)
	if off >= vmConfig {
		t.backend.ReadConfig(off-vmConfig, data)
		return
	}
	if len(data) != 4 || off%4 != 0 {
		return
	}
	var v uint32
	q := t.sel()
	switch off {
	case vmMagic:
		v = virtioMagic
	case vmVersion:
		v = virtioVersion
	case vmDeviceID:
		v = t.backend.DeviceID()
	case vmVendorID:
		v = virtioVendor
	case vmDevFeatures:
		if t.s.DevFeatSel < 2 {
			v = uint32(t.offered() >> (32 * t.s.DevFeatSel))
		}
	case vmQueueNumMax:
		if q != nil {
			v = VirtqMaxSize
		}
	case vmQueueReady:
		if q != nil {
			v = uint32(q.Ready)
		}
	case vmIntStatus:
		v = t.s.InterruptStatus
	case vmStatus:
		v = t.s.Status
	case vmSHMLenLo, vmSHMLenHi:
		v = 0xffffffff // no shared memory regions
	case vmConfigGen:
		v = 0 // the configuration never changes
	}
	binary.LittleEndian.PutUint32(data, v)
}

// MMIOWrite implements MMIODevice.
func (t *VirtioMMIO) MMIOWrite(off uint64, data []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if off >= vmConfig || len(data) != 4 || off%4 != 0 {
		return // the configuration space is read-only
	}
	v := binary.LittleEndian.Uint32(data)
	q := t.sel()
	setHalf := func(p *uint64, hi bool) {
		if q == nil || q.Ready != 0 {
			return
		}
		if hi {
			*p = *p&0xffffffff | uint64(v)<<32
		} else {
			*p = *p&^0xffffffff | uint64(v)
		}
	}
	switch off {
	case vmDevFeatSel:
		t.s.DevFeatSel = v
	case vmDrvFeatSel:
		t.s.DrvFeatSel = v
	case vmDrvFeatures:
		if t.s.DrvFeatSel < 2 && t.s.Status&VirtioStatusFeaturesOK == 0 {
			sh := 32 * t.s.DrvFeatSel
			t.s.DriverFeatures = t.s.DriverFeatures&^(0xffffffff<<sh) | uint64(v)<<sh
		}
	case vmQueueSel:
		t.s.QueueSel = v
	case vmQueueNum:
		if q != nil && q.Ready == 0 && v <= 0xffff {
			q.Num = uint16(v)
		}
	case vmQueueReady:
		t.setReady(q, v == 1)
	case vmQueueDescLo, vmQueueDescHi:
		if q != nil {
			setHalf(&q.Desc, off == vmQueueDescHi)
		}
	case vmQueueAvailLo, vmQueueAvailHi:
		if q != nil {
			setHalf(&q.Avail, off == vmQueueAvailHi)
		}
	case vmQueueUsedLo, vmQueueUsedHi:
		if q != nil {
			setHalf(&q.Used, off == vmQueueUsedHi)
		}
	case vmQueueNotify:
		t.notify(v)
	case vmIntACK:
		t.s.InterruptStatus &^= v
		if t.s.InterruptStatus == 0 {
			t.setIRQ(false)
		}
	case vmStatus:
		t.setStatus(v)
	}
}

func (t *VirtioMMIO) setReady(q *QueueState, ready bool) {
	if q == nil {
		return
	}
	if !ready {
		q.Ready = 0
		return
	}
	if q.Ready != 0 {
		return
	}
	i := int(t.s.QueueSel)
	q.Ready = 1
	q.LastAvail, q.UsedIdx, q.SignalledUsed = 0, 0, 0
	t.syncQueues()
	qq := t.Queue(i)
	if err := qq.validate(); err != nil {
		q.Ready = 0
		t.fail(err)
	}
}

func (t *VirtioMMIO) setStatus(v uint32) {
	if v == 0 {
		t.reset()
		return
	}
	if v&VirtioStatusFeaturesOK != 0 && t.s.Status&VirtioStatusFeaturesOK == 0 {
		// Accept only features we offered, and only as a modern driver.
		if t.s.DriverFeatures&^t.offered() != 0 || t.s.DriverFeatures&VirtioFVersion1 == 0 {
			v &^= VirtioStatusFeaturesOK
		}
		t.syncQueues()
	}
	t.s.Status = v | t.s.Status&VirtioStatusNeedsReset
}

func (t *VirtioMMIO) reset() {
	t.s = VirtioMMIOState{}
	t.syncQueues()
	t.backend.Reset()
	t.setIRQ(false)
}

// NumQueues is how many queues the device has.
func (t *VirtioMMIO) NumQueues() int { return t.backend.NumQueues() }

// Notify handles the driver's notification of queue q when it did not
// come through MMIOWrite: the VMM saw the driver's write of q to
// QueueNotify on an ioeventfd. Process runs under t.mu either way.
func (t *VirtioMMIO) Notify(q int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if q >= 0 {
		t.notify(uint32(q))
	}
}

// Kick processes every ready queue once, as if the driver had notified
// each. After a restore, or a resume, it takes what the driver made
// available before the pause and the device had not yet taken (a notify
// that was in flight when the VM was paused). Only new chains are taken:
// the queue positions say what was done.
func (t *VirtioMMIO) Kick() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for q := 0; q < t.backend.NumQueues(); q++ {
		t.notify(uint32(q))
	}
}

func (t *VirtioMMIO) notify(qi uint32) {
	if t.s.Broken != 0 || t.s.Status&VirtioStatusDriverOK == 0 || int(qi) >= t.backend.NumQueues() || t.s.Queues[qi].Ready == 0 {
		return
	}
	err := t.backend.Process(t, int(qi))
	if err != nil {
		t.fail(err)
	}
}

// Save copies queue i back into the state: Process works on t.queues.
func (t *VirtioMMIO) commit(i int) { t.s.Queues[i] = t.queues[i].S }

// Used is called by Process after it pushed chains to queue i: the
// positions are kept, and the driver interrupted unless it asked not to be.
func (t *VirtioMMIO) Used(i int) {
	want := t.queues[i].WantInterrupt() // before commit: it updates the queue's state
	t.commit(i)
	if want {
		t.raise(virtioIntUsed)
	}
}

// fail marks the device broken: it ignores its queues and asks the driver
// for a reset (DEVICE_NEEDS_RESET and a configuration change interrupt).
func (t *VirtioMMIO) fail(err error) {
	if !errors.Is(err, ErrRing) {
		err = fmt.Errorf("%w: %v", ErrRing, err)
	}
	logf("%s: %v: device needs reset", t.name, err)
	t.s.Broken = 1
	if t.s.Status&VirtioStatusDriverOK != 0 {
		t.s.Status |= VirtioStatusNeedsReset
		t.raise(virtioIntConfig)
	}
}

// Broken reports whether the device stopped on a malformed ring.
func (t *VirtioMMIO) Broken() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.s.Broken != 0
}

func (t *VirtioMMIO) raise(bit uint32) {
	t.s.InterruptStatus |= bit
	t.setIRQ(true)
}

func (t *VirtioMMIO) setIRQ(high bool) { t.irq.set(t.name, high) }

// Save implements Stateful. Requests are processed under t.mu, on the
// vCPU thread's MMIO exit or on the VMM's ioeventfd notifier, which the
// VMM drains before a save (vmm/notify.go): at a pause none is in flight,
// and the state is complete.
func (t *VirtioMMIO) Save() ([]byte, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return encodeFixed(t.name, &t.s)
}

// Restore implements Stateful. It checks the whole state first and, if
// any of it is a state this transport could not be in, returns an error
// naming the device and changes nothing.
func (t *VirtioMMIO) Restore(data []byte) error {
	var s VirtioMMIOState
	if err := decodeFixed(t.name, data, &s); err != nil {
		return err
	}
	if err := t.check(&s); err != nil {
		return fmt.Errorf("%s: saved state: %w", t.name, err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.s = s
	t.syncQueues()
	if err := t.irq.drive(t.s.InterruptStatus != 0); err != nil {
		return fmt.Errorf("%s: restored, but setting its interrupt line failed: %w", t.name, err)
	}
	return nil
}

// check tells whether s is a state the transport can reach: the driver
// negotiated (FEATURES_OK) only features the device offers, with
// VERSION_1 (setStatus refuses others, as Firecracker's restore refuses
// acked features outside the available ones); only known interrupt bits;
// queues the device does not have untouched; every ready queue valid in
// guest memory (setReady checks it, and a ready queue cannot be changed).
func (t *VirtioMMIO) check(s *VirtioMMIOState) error {
	if s.Status&VirtioStatusFeaturesOK != 0 {
		if extra := s.DriverFeatures &^ t.offered(); extra != 0 {
			return fmt.Errorf("negotiated features %#x that the device does not offer (it offers %#x)", extra, t.offered())
		}
		if s.DriverFeatures&VirtioFVersion1 == 0 {
			return errors.New("features negotiated without VERSION_1")
		}
	}
	if s.InterruptStatus&^(virtioIntUsed|virtioIntConfig) != 0 {
		return fmt.Errorf("interrupt status %#x", s.InterruptStatus)
	}
	if s.Broken > 1 {
		return fmt.Errorf("broken flag %d", s.Broken)
	}
	for i := range s.Queues {
		qs := s.Queues[i]
		if i >= t.backend.NumQueues() {
			if qs != (QueueState{}) {
				return fmt.Errorf("queue %d, which the device does not have, is set", i)
			}
			continue
		}
		switch qs.Ready {
		case 0:
		case 1:
			q := Queue{S: qs, Mem: t.mem}
			if err := q.validate(); err != nil {
				return fmt.Errorf("queue %d: %v", i, err)
			}
		default:
			return fmt.Errorf("queue %d: ready flag %d", i, qs.Ready)
		}
	}
	return nil
}

// Pausable is a device with activity of its own (a goroutine writing guest
// memory) that must stop while the VM is paused, so that the paused
// guest's memory and device state stay as saved.
type Pausable interface {
	Pause()
	Resume()
}

// Pause implements Pausable for backends that are.
func (t *VirtioMMIO) Pause() {
	if p, ok := t.backend.(Pausable); ok {
		p.Pause()
	}
}

// Resume implements Pausable for backends that are.
func (t *VirtioMMIO) Resume() {
	if p, ok := t.backend.(Pausable); ok {
		p.Resume()
	}
}
