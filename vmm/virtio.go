package vmm

import (
	"fmt"
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
// virtio-blk0, virtio-blk1, ...
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
		irq := uint32(virtioFirstIRQ + len(m.virtio))
		dev := devices.NewVirtioMMIO(fmt.Sprintf("virtio-blk%d", i), blk, guestMem{m.mem}, irqLine{m.vm, irq})
		base := uint64(virtioMMIOBase + len(m.virtio)*devices.VirtioMMIOSize)
		if err := m.mmio.Register(base, devices.VirtioMMIOSize, dev); err != nil {
			return err
		}
		m.virtio = append(m.virtio, virtioSlot{dev, base, irq})
		m.devices = append(m.devices, dev)
	}
	for i, c := range m.cfg.Nets {
		tap, err := devices.OpenTap(c.Tap)
		if err != nil {
			return err
		}
		nd := devices.NewNet(c.Tap, tap, c.MAC)
		irq := uint32(virtioFirstIRQ + len(m.virtio))
		dev := devices.NewVirtioMMIO(fmt.Sprintf("virtio-net%d", i), nd, guestMem{m.mem}, irqLine{m.vm, irq})
		nd.Attach(dev)
		m.nets = append(m.nets, nd)
		base := uint64(virtioMMIOBase + len(m.virtio)*devices.VirtioMMIOSize)
		if err := m.mmio.Register(base, devices.VirtioMMIOSize, dev); err != nil {
			return err
		}
		m.virtio = append(m.virtio, virtioSlot{dev, base, irq})
		m.devices = append(m.devices, dev)
	}
	return nil
}

// pauseDevices stops devices that write guest memory on their own (the
// virtio-net receiver) while the vCPUs are parked; resumeDevices restarts
// them.
func (m *Machine) pauseDevices() {
	for _, n := range m.nets {
		n.Pause()
	}
}

func (m *Machine) resumeDevices() {
	for _, n := range m.nets {
		n.Resume()
	}
}

type virtioSlot struct {
	dev  *devices.VirtioMMIO
	base uint64
	irq  uint32
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

func (m *Machine) closeVirtio() {
	for _, n := range m.nets {
		n.Close()
	}
	m.nets = nil
	for _, d := range m.disks {
		d.Close()
	}
	m.disks = nil
}
