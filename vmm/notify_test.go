package vmm

import (
	"bytes"
	"encoding/binary"
	"os"
	"testing"
	"time"

	"github.com/ferryvmm/ferry/devices"
	"github.com/ferryvmm/ferry/kvm"
)

// virtio-mmio registers a test driver writes (virtio 1.x, 4.2.2).
const (
	regDrvFeatures = 0x020
	regDrvFeatSel  = 0x024
	regQueueSel    = 0x030
	regQueueNum    = 0x038
	regQueueReady  = 0x044
	regIntACK      = 0x064
	regStatus      = 0x070
	regDescLo      = 0x080
	regAvailLo     = 0x090
	regUsedLo      = 0x0a0
)

// A split virtqueue of 16 entries, and one block request, in guest RAM
// above the test programs.
const (
	tqDesc   = 0x200000
	tqAvail  = 0x201000
	tqUsed   = 0x202000
	tqHeader = 0x203000
	tqData   = 0x204000
	tqStatus = 0x205000
	tqSize   = 16
)

func writeReg(dev *devices.VirtioMMIO, off uint64, v uint32) {
	dev.MMIOWrite(off, binary.LittleEndian.AppendUint32(nil, v))
}

// driverUp sets dev up as a modern driver would, with queues 0..nq-1 on
// the rings above (queue q's rings offset by q*0x10000).
func driverUp(dev *devices.VirtioMMIO, nq int) {
	writeReg(dev, regStatus, devices.VirtioStatusAck|devices.VirtioStatusDriver)
	writeReg(dev, regDrvFeatSel, 1)
	writeReg(dev, regDrvFeatures, 1) // VIRTIO_F_VERSION_1
	writeReg(dev, regStatus, devices.VirtioStatusAck|devices.VirtioStatusDriver|devices.VirtioStatusFeaturesOK)
	for q := 0; q < nq; q++ {
		off := uint32(q * 0x10000)
		writeReg(dev, regQueueSel, uint32(q))
		writeReg(dev, regQueueNum, tqSize)
		writeReg(dev, regDescLo, tqDesc+off)
		writeReg(dev, regAvailLo, tqAvail+off)
		writeReg(dev, regUsedLo, tqUsed+off)
		writeReg(dev, regQueueReady, 1)
	}
	writeReg(dev, regStatus, devices.VirtioStatusAck|devices.VirtioStatusDriver|devices.VirtioStatusFeaturesOK|devices.VirtioStatusDriverOK)
}

// offerRead puts a virtio-blk read of sector into queue 0: header,
// 512-byte buffer, status byte, and bumps avail idx.
func offerRead(t *testing.T, mem *Memory, sector uint64) {
	t.Helper()
	le := binary.LittleEndian
	put := func(gpa uint64, b []byte) {
		if err := mem.Write(gpa, b); err != nil {
			t.Fatal(err)
		}
	}
	desc := func(i int, addr uint64, n uint32, flags, next uint16) {
		d := le.AppendUint64(nil, addr)
		d = le.AppendUint32(d, n)
		d = le.AppendUint16(d, flags)
		put(tqDesc+16*uint64(i), le.AppendUint16(d, next))
	}
	hdr := le.AppendUint32(nil, 0) // VIRTIO_BLK_T_IN
	hdr = le.AppendUint32(hdr, 0)
	put(tqHeader, le.AppendUint64(hdr, sector))
	put(tqStatus, []byte{0xee})
	desc(0, tqHeader, 16, 1, 1) // NEXT
	desc(1, tqData, 512, 3, 2)  // NEXT|WRITE
	desc(2, tqStatus, 1, 2, 0)  // WRITE
	idx := ringIdx(t, mem, tqAvail)
	put(tqAvail+4+2*uint64(idx%tqSize), le.AppendUint16(nil, 0))
	put(tqAvail+2, le.AppendUint16(nil, idx+1))
}

func ringIdx(t *testing.T, mem *Memory, ring uint64) uint16 {
	t.Helper()
	b, err := mem.Slice(ring+2, 2)
	if err != nil {
		t.Fatal(err)
	}
	return binary.LittleEndian.Uint16(b)
}

// savedQueue0 decodes the saved transport state of device name.
func savedQueue0(t *testing.T, s *State, name string) devices.QueueState {
	t.Helper()
	for _, d := range s.Devices {
		if d.Name == name {
			var st devices.VirtioMMIOState
			if err := binary.Read(bytes.NewReader(d.Data), binary.LittleEndian, &st); err != nil {
				t.Fatalf("%s state: %v", name, err)
			}
			return st.Queues[0]
		}
	}
	t.Fatalf("no saved state for %s", name)
	return devices.QueueState{}
}

// gateBackend is a device whose Process reports each call and then waits
// for the test to let it finish.
type gateBackend struct {
	queues  int
	entered chan int
	release chan struct{}
}

func newGate(queues int) *gateBackend {
	return &gateBackend{queues: queues, entered: make(chan int, 16), release: make(chan struct{})}
}

func (g *gateBackend) DeviceID() uint32                   { return 2 }
func (g *gateBackend) Features() uint64                   { return 0 }
func (g *gateBackend) NumQueues() int                     { return g.queues }
func (g *gateBackend) ReadConfig(off uint64, data []byte) {}
func (g *gateBackend) Reset()                             {}
func (g *gateBackend) Process(_ *devices.VirtioMMIO, q int) error {
	g.entered <- q
	<-g.release
	return nil
}

// expect waits for a Process call of queue q and lets it finish.
func (g *gateBackend) expect(t *testing.T, q int, what string) {
	t.Helper()
	select {
	case got := <-g.entered:
		if got != q {
			t.Fatalf("%s: Process(queue %d), want queue %d", what, got, q)
		}
		g.release <- struct{}{}
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: no Process(queue %d) within 5 s", what, q)
	}
}

// none checks that Process is not called within d.
func (g *gateBackend) none(t *testing.T, d time.Duration, what string) {
	t.Helper()
	select {
	case q := <-g.entered:
		g.release <- struct{}{}
		t.Fatalf("%s: unexpected Process(queue %d)", what, q)
	case <-time.After(d):
	}
}

// TestNotifierDrain: the ordering rules of virtioNotifier.pause, with
// eventfds the test signals itself (as KVM would on a guest's write to
// QueueNotify): a Process in progress finishes before pause returns, a
// notify signalled meanwhile is processed before pause returns, nothing
// is processed while paused, and resume processes every ready queue
// once.
func TestNotifierDrain(t *testing.T) {
	mem, err := NewMemory(16 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	g := newGate(2)
	dev := devices.NewVirtioMMIO("gate0", g, guestMem{mem}, nil)
	driverUp(dev, 2)
	n, err := newVirtioNotifier(nil, dev, virtioMMIOBase)
	if err != nil {
		t.Fatal(err)
	}
	defer n.close()
	sig := func(q int) {
		t.Helper()
		if err := signalEventfd(n.queues[q].ev.FD); err != nil {
			t.Fatal(err)
		}
	}

	// Created paused: a notify waits for resume.
	sig(1)
	g.none(t, 50*time.Millisecond, "notifier not started")
	go n.resume()
	g.expect(t, 0, "resume: queue 0")
	g.expect(t, 1, "resume: queue 1 (also the notify it consumed)")
	g.none(t, 50*time.Millisecond, "after resume")

	// A notify is taken off the vCPU thread.
	sig(0)
	g.expect(t, 0, "notify of queue 0")

	// Pause while a Process is in progress, with another notify of the
	// same queue and one of the other queue signalled meanwhile.
	sig(0)
	var first int
	select {
	case first = <-g.entered:
	case <-time.After(5 * time.Second):
		t.Fatal("notify of queue 0 not taken")
	}
	paused := make(chan struct{})
	go func() { n.pause(); close(paused) }()
	sig(0)
	sig(1)
	select {
	case <-paused:
		t.Fatal("pause returned while a Process was in progress")
	case <-time.After(50 * time.Millisecond):
	}
	g.release <- struct{}{} // the Process in progress finishes
	// Both signalled notifies are processed, once each, by the goroutines
	// or by the drain, before pause returns.
	seen := map[int]int{first: 1}
	for seen[0]+seen[1] < 3 {
		select {
		case q := <-g.entered:
			seen[q]++
			g.release <- struct{}{}
		case <-paused:
			t.Fatalf("pause returned before the signalled notifies were processed (processed %v)", seen)
		case <-time.After(5 * time.Second):
			t.Fatalf("signalled notifies not processed (processed %v)", seen)
		}
	}
	select {
	case <-paused:
	case <-time.After(5 * time.Second):
		t.Fatal("pause did not return")
	}
	if seen[0] != 2 || seen[1] != 1 {
		t.Fatalf("processed %v, want queue 0 twice and queue 1 once", seen)
	}
	for q := range n.queues {
		if c, _ := readEventfd(n.queues[q].ev.FD); c != 0 {
			t.Errorf("queue %d eventfd still holds %d after the drain", q, c)
		}
	}

	// Paused: nothing is taken.
	sig(0)
	g.none(t, 100*time.Millisecond, "paused")
	// Resume processes every ready queue once (the notify signalled while
	// paused included), and the goroutines take notifies again.
	go n.resume()
	g.expect(t, 0, "resume: queue 0")
	g.expect(t, 1, "resume: queue 1")
	g.none(t, 50*time.Millisecond, "after resume")
	sig(1)
	g.expect(t, 1, "notify after resume")
	if got := n.notifies(); got[0] != 3 || got[1] != 2 {
		t.Errorf("notifies taken %v, want [3 2]", got)
	}

	if err := n.close(); err != nil {
		t.Fatal(err)
	}
	n.pause()
	n.resume()
	g.none(t, 50*time.Millisecond, "closed")
}

// notifyGuest writes 0 (queue 0) to the first virtio-mmio device's
// QueueNotify register, then runs the counter loop.
var notifyGuest = append([]byte{
	0xc7, 0x05, 0x50, 0x00, 0x00, 0xd0, 0x00, 0x00, 0x00, 0x00, // mov dword [0xd0000050], 0
}, counterLoop...)

// diskWithPattern is a 1 MiB disk image whose sector i is filled with
// byte i+1.
func diskWithPattern(t *testing.T) []DiskConfig {
	d := testDisks(t)
	img := make([]byte, 1<<20)
	for i := range img {
		img[i] = byte(i/512 + 1)
	}
	if err := os.WriteFile(d[0].Path, img, 0o644); err != nil {
		t.Fatal(err)
	}
	return d
}

// TestVirtioNotifyPause boots a guest that notifies a virtio-blk queue
// (set up by the test as a driver) and pauses it at once: once Pause
// returns, the request is done, exactly once, and the saved queue state
// has taken it. With ioeventfds the notify was taken without an MMIO exit
// and the interrupt came through the irqfd (a pulse: the IOAPIC input is
// low again), and on the fallbacks as an MMIO exit and with KVM_IRQ_LINE
// (the line stays high until the driver acknowledges).
func TestVirtioNotifyPause(t *testing.T) {
	for _, mode := range []struct {
		name     string
		fallback bool
	}{{"eventfds", false}, {"fallbacks", true}} {
		t.Run(mode.name, func(t *testing.T) {
			for round := 0; round < 5; round++ {
				cfg := Config{Memory: 16 << 20, CPUs: 1, Disks: diskWithPattern(t), noIRQFD: mode.fallback, noIOEventFD: mode.fallback}
				m := bootMachine(t, cfg, notifyGuest)
				v := m.virtio[0]
				if (v.notifier == nil) != mode.fallback || (v.irqfd == nil) != mode.fallback {
					t.Fatalf("notifier %v irqfd %v with fallback %v", v.notifier != nil, v.irqfd != nil, mode.fallback)
				}
				driverUp(v.dev, 1)
				offerRead(t, m.Memory(), 3)
				if err := m.Start(); err != nil {
					t.Fatal(err)
				}
				waitCounter(t, m, 0, "guest past its notify")
				if err := m.Pause(); err != nil {
					t.Fatal(err)
				}
				if idx := ringIdx(t, m.Memory(), tqUsed); idx != 1 {
					t.Fatalf("round %d: used idx %d after Pause, want 1", round, idx)
				}
				st, _ := m.Memory().Slice(tqStatus, 1)
				data, _ := m.Memory().Slice(tqData, 512)
				if st[0] != 0 || data[0] != 4 || data[511] != 4 {
					t.Fatalf("round %d: status %#x, data %d..%d; want 0 and sector 3 (4s)", round, st[0], data[0], data[511])
				}
				s, err := m.SaveState()
				if err != nil {
					t.Fatal(err)
				}
				if q := savedQueue0(t, s, "virtio-blk0"); q.LastAvail != 1 || q.UsedIdx != 1 {
					t.Fatalf("round %d: saved queue last avail %d used idx %d, want 1 and 1", round, q.LastAvail, q.UsedIdx)
				}
				if !mode.fallback {
					if got := v.notifier.notifies(); got[0] != 1 {
						t.Fatalf("round %d: notifier took %v notifies, want [1]", round, got)
					}
				}
				checkVirtioIRQ(t, m, v.irq, !mode.fallback)
				// Resume: the queue is processed once more and takes nothing.
				if err := m.Resume(); err != nil {
					t.Fatal(err)
				}
				waitCounter(t, m, counter(m), "after Resume")
				if idx := ringIdx(t, m.Memory(), tqUsed); idx != 1 {
					t.Fatalf("round %d: used idx %d after Resume, want 1", round, idx)
				}
				m.Stop("done")
				waitExit(t, m)
			}
		})
	}
}

// checkVirtioIRQ: the device raised GSI irq (the PIC, never initialised
// by these guests, latches it in IRR); through an irqfd the IOAPIC input
// is low again, through KVM_IRQ_LINE it is still high. The IOAPIC input
// sees the level because the guest left the pin masked.
func checkVirtioIRQ(t *testing.T, m *Machine, irq uint32, irqfd bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		pic, err := m.vm.IRQChip(kvm.IRQChipPICMaster)
		if err != nil {
			t.Fatal(err)
		}
		ioapic, err := m.vm.IRQChip(kvm.IRQChipIOAPIC)
		if err != nil {
			t.Fatal(err)
		}
		raised := pic.Chip[1]&(1<<irq) != 0
		high := binary.LittleEndian.Uint32(ioapic.Chip[16:])&(1<<irq) != 0
		if raised && high != irqfd {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("GSI %d: PIC IRR bit %v, IOAPIC input high %v (irqfd %v)", irq, raised, high, irqfd)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestVirtioKickAfterRestore: a request the driver made available (and
// notified) before a save, which the device had not taken, is done on
// the restored machine when it starts: not lost, and done once.
func TestVirtioKickAfterRestore(t *testing.T) {
	cfg := Config{Memory: 16 << 20, CPUs: 1, Disks: diskWithPattern(t)}
	src := bootMachine(t, cfg, counterLoop)
	driverUp(src.virtio[0].dev, 1)
	offerRead(t, src.Memory(), 5)
	s, err := src.SaveState() // never started: nothing was processed
	if err != nil {
		t.Fatal(err)
	}
	if q := savedQueue0(t, s, "virtio-blk0"); q.LastAvail != 0 {
		t.Fatalf("saved last avail %d, want 0", q.LastAvail)
	}
	dst := newMachine(t, cfg)
	for i, r := range dst.Memory().Regions {
		copy(r.Mem, src.Memory().Regions[i].Mem)
	}
	if err := dst.RestoreState(s); err != nil {
		t.Fatal(err)
	}
	if idx := ringIdx(t, dst.Memory(), tqUsed); idx != 0 {
		t.Fatalf("used idx %d before Start, want 0", idx)
	}
	if err := dst.Start(); err != nil {
		t.Fatal(err)
	}
	if idx := ringIdx(t, dst.Memory(), tqUsed); idx != 1 {
		t.Fatalf("used idx %d after Start, want 1", idx)
	}
	data, _ := dst.Memory().Slice(tqData, 1)
	if data[0] != 6 {
		t.Errorf("read sector 5: got %d, want 6", data[0])
	}
	waitCounter(t, dst, 1000, "restored machine")
	if err := dst.Pause(); err != nil {
		t.Fatal(err)
	}
	s2, err := dst.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	if q := savedQueue0(t, s2, "virtio-blk0"); q.LastAvail != 1 || q.UsedIdx != 1 {
		t.Errorf("restored machine's queue: last avail %d used idx %d, want 1 and 1", q.LastAvail, q.UsedIdx)
	}
	if idx := ringIdx(t, dst.Memory(), tqUsed); idx != 1 {
		t.Errorf("used idx %d, want 1: the request was done twice", idx)
	}
}
