package vmm

import (
	"fmt"
	"log"
	"net"
	"strings"

	"github.com/ferryvmm/ferry/devices"
)

// virtio-mmio devices sit in the PCI hole below the IOAPIC, one 4 KiB
// window each, with their interrupts on IOAPIC pins from 5 up (free ISA
// IRQs; the MP table wires ISA IRQ i to pin i).
const (
	virtioMMIOBase = 0xd000_0000
	virtioFirstIRQ = 5
	virtioMaxDevs  = 8 // pins 5..12 (8 and 12 are unused: no RTC, no PS/2 mouse)
)

// DiskConfig is one virtio-blk disk: a raw image file. A migrated guest's
// disks must be the same files on both hosts (shared storage).
type DiskConfig struct {
	Path     string
	ReadOnly bool
}

// ParseDisk parses the --disk value PATH[,readonly].
func ParseDisk(v string) (DiskConfig, error) {
	parts := strings.Split(v, ",")
	d := DiskConfig{Path: parts[0]}
	if d.Path == "" {
		return d, fmt.Errorf("--disk %q: no path", v)
	}
	for _, o := range parts[1:] {
		switch o {
		case "readonly", "ro":
			d.ReadOnly = true
		default:
			return d, fmt.Errorf("--disk %q: unknown option %q (PATH[,readonly])", v, o)
		}
	}
	return d, nil
}

// NetConfig is one virtio-net device on a tap interface. A migrated
// guest's destination names its own tap (ferry receive --net).
type NetConfig struct {
	Tap string
	MAC [6]byte
}

// ParseNet parses the --net value tap=NAME[,mac=XX:XX:XX:XX:XX:XX]. The
// default MAC of the i-th device is 52:54:00:fe:00:<i+1>.
func ParseNet(v string, i int) (NetConfig, error) {
	n := NetConfig{MAC: [6]byte{0x52, 0x54, 0x00, 0xfe, 0x00, byte(i + 1)}}
	for _, o := range strings.Split(v, ",") {
		k, val, _ := strings.Cut(o, "=")
		switch k {
		case "tap":
			n.Tap = val
		case "mac":
			hw, err := net.ParseMAC(val)
			if err != nil || len(hw) != 6 {
				return n, fmt.Errorf("--net %q: bad mac %q", v, val)
			}
			copy(n.MAC[:], hw)
		default:
			return n, fmt.Errorf("--net %q: unknown option %q (tap=NAME[,mac=MAC])", v, o)
		}
	}
	if n.Tap == "" || len(n.Tap) >= 16 {
		return n, fmt.Errorf("--net %q: need tap=NAME (at most 15 characters)", v)
	}
	return n, nil
}

// guestMem adapts Memory to devices.GuestMemory.
type guestMem struct{ *Memory }

func (g guestMem) Slice(gpa, n uint64) ([]byte, error) { return g.Memory.Slice(gpa, n) }

// addVirtio creates the virtio-mmio devices: the disks, in order, named
// virtio-blk0, virtio-blk1, ..., then the network devices.
func (m *Machine) addVirtio() error {
	if len(m.cfg.Disks)+len(m.cfg.Nets) > virtioMaxDevs {
		return fmt.Errorf("at most %d virtio devices", virtioMaxDevs)
	}
	for i, d := range m.cfg.Disks {
		blk, err := devices.OpenBlk(d.Path, d.ReadOnly)
		if err != nil {
			return err
		}
		m.disks = append(m.disks, blk)
		if _, err := m.addVirtioDevice(fmt.Sprintf("virtio-blk%d", i), blk); err != nil {
			return err
		}
	}
	for i, c := range m.cfg.Nets {
		tap, err := devices.OpenTap(c.Tap)
		if err != nil {
			return err
		}
		nd := devices.NewNet(c.Tap, tap, c.MAC)
		dev, err := m.addVirtioDevice(fmt.Sprintf("virtio-net%d", i), nd)
		if err != nil {
			tap.Close()
			return err
		}
		nd.Attach(dev)
		m.nets = append(m.nets, nd)
	}
	return nil
}

// addVirtioDevice puts backend on the next virtio-mmio window and
// interrupt, with an irqfd for the interrupt and ioeventfds for its
// queues' notifies where KVM offers them (notify.go).
func (m *Machine) addVirtioDevice(name string, backend devices.VirtioBackend) (*devices.VirtioMMIO, error) {
	slot := virtioSlot{
		base: uint64(virtioMMIOBase + len(m.virtio)*devices.VirtioMMIOSize),
		irq:  uint32(virtioFirstIRQ + len(m.virtio)),
	}
	var line devices.IRQLine = irqLine{m.vm, slot.irq}
	if m.hasIRQFD {
		l, err := newIRQFDLine(m.vm, slot.irq)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		slot.irqfd, line = l, l
	}
	slot.dev = devices.NewVirtioMMIO(name, backend, guestMem{m.mem}, line)
	if m.hasIOEventFD {
		n, err := newVirtioNotifier(m.vm, slot.dev, slot.base)
		if err != nil {
			slot.close()
			return nil, err
		}
		slot.notifier = n
	}
	if err := m.mmio.Register(slot.base, devices.VirtioMMIOSize, slot.dev); err != nil {
		slot.close()
		return nil, err
	}
	m.virtio = append(m.virtio, slot)
	m.devices = append(m.devices, slot.dev)
	return slot.dev, nil
}

// pauseDevices quiesces the devices once every vCPU is parked: each
// ioeventfd notifier drains (virtioNotifier.pause: a request in progress
// finishes, a notify already signalled is processed, nothing more is
// taken), and the virtio-net receiver stops writing guest memory. After
// it the device state and guest memory stay as they are until
// resumeDevices.
func (m *Machine) pauseDevices() {
	for _, v := range m.virtio {
		if v.notifier != nil {
			v.notifier.pause()
		}
	}
	for _, n := range m.nets {
		n.Pause()
	}
}

// resumeDevices restarts them, before any vCPU runs (Start, also after a
// restore, and Resume): every ready queue is processed once, so a notify
// in flight when the VM (or its migration source) paused is not lost.
func (m *Machine) resumeDevices() {
	for _, v := range m.virtio {
		if v.notifier != nil {
			v.notifier.resume()
		} else {
			v.dev.Kick()
		}
	}
	for _, n := range m.nets {
		n.Resume()
	}
}

type virtioSlot struct {
	dev      *devices.VirtioMMIO
	base     uint64
	irq      uint32
	irqfd    *irqfdLine      // nil: KVM_IRQ_LINE
	notifier *virtioNotifier // nil: notifies are MMIO exits
}

// close releases the slot's notifier and irqfd. The device's backend
// must not raise its interrupt any more.
func (v *virtioSlot) close() {
	if v.notifier != nil {
		if err := v.notifier.close(); err != nil {
			log.Printf("%s: %v", v.dev.Name(), err)
		}
		v.notifier = nil
	}
	if v.irqfd != nil {
		if err := v.irqfd.close(); err != nil {
			log.Printf("%s: %v", v.dev.Name(), err)
		}
		v.irqfd = nil
	}
}

// KernelParams announces the virtio-mmio devices to the guest kernel
// (CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES): "virtio_mmio.device=4K@ADDR:IRQ"
// for each. Empty without devices.
func (m *Machine) KernelParams() string {
	var p []string
	for _, v := range m.virtio {
		p = append(p, fmt.Sprintf("virtio_mmio.device=4K@%#x:%d", v.base, v.irq))
	}
	return strings.Join(p, " ")
}

// closeVirtio stops the notifiers first (no request is processed after
// that), then the backends (the net receiver), and only then closes the
// irqfds the devices raise their interrupts through.
func (m *Machine) closeVirtio() {
	for i := range m.virtio {
		if n := m.virtio[i].notifier; n != nil {
			if err := n.close(); err != nil {
				log.Printf("%s: %v", m.virtio[i].dev.Name(), err)
			}
			m.virtio[i].notifier = nil
		}
	}
	for _, n := range m.nets {
		n.Close()
	}
	m.nets = nil
	for _, d := range m.disks {
		d.Close()
	}
	m.disks = nil
	for i := range m.virtio {
		m.virtio[i].close()
	}
}
