// Package devices holds ferry's emulated devices and the buses that route
// guest port I/O and MMIO to them. Every stateful device keeps its whole
// state in a plain State struct with explicit Save and Restore, and checks
// a saved state fully before it changes anything, so the VMM can snapshot
// and migrate it.
//
//	devices.go        Device, Stateful, PortDevice, IRQLine; the state codec helpers
//	bus.go            PortBus: port I/O to the device of each range
//	mmiobus.go        MMIOBus: MMIO to the device of each window
//	serial.go         the 8250/16550A UART (the console)
//	legacy.go         the i8042 (its reset line ends the VM), the CMOS RTC, sinks for unused ports
//	virtio_mmio.go    the virtio-mmio transport (version 2 registers) of one device
//	virtio_queue.go   split virtqueues: descriptor chains, used ring, event index
//	ring_unsafe.go    atomic access to ring words in guest memory
//	virtio_blk.go     virtio-blk on a raw image file
//	virtio_net.go     virtio-net on a tap interface, and the RARP announce
package devices

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"log"
)

// logf reports what a device cannot report to a caller: a ring the guest
// broke, an interrupt line that fails (a variable for tests).
var logf = log.Printf

// Device is anything attached to the machine.
type Device interface {
	// Name is unique within a machine and keys the device's saved state.
	Name() string
}

// Stateful is a device whose state moves with the VM.
type Stateful interface {
	Device
	// Save encodes the device's State. The VM is paused.
	Save() ([]byte, error)
	// Restore replaces the device's State with a saved one.
	Restore(data []byte) error
}

// PortDevice handles guest port I/O (IN/OUT). data has the access size; a
// read fills it.
type PortDevice interface {
	Device
	PortRead(port uint16, data []byte)
	PortWrite(port uint16, data []byte)
}

// IRQLine drives one interrupt input of the in-kernel irqchip.
type IRQLine interface {
	SetLevel(high bool) error
}

// irqOut is a device's interrupt output on an IRQLine (which may be nil:
// no line). It remembers whether the line fails, so that set logs a
// failing line once, when it starts to fail, and once when it works again,
// not at every interrupt.
type irqOut struct {
	line    IRQLine
	failing bool
}

// drive sets the level and returns the line's error, for a caller that
// reports it (Restore).
func (o *irqOut) drive(high bool) error {
	if o.line == nil {
		return nil
	}
	return o.line.SetLevel(high)
}

// set sets the level where nobody can be told but the log.
func (o *irqOut) set(dev string, high bool) {
	err := o.drive(high)
	switch {
	case err != nil && !o.failing:
		logf("%s: setting its interrupt line failed: %v", dev, err)
	case err == nil && o.failing:
		logf("%s: its interrupt line works again", dev)
	}
	o.failing = err != nil
}

// encodeFixed and decodeFixed serialise a State made only of fixed-size
// fields (no slices, maps or strings), so decoding hostile bytes can neither
// allocate nor read past the struct: the size must match exactly.
func encodeFixed(name string, s any) ([]byte, error) {
	var b bytes.Buffer
	if err := binary.Write(&b, binary.LittleEndian, s); err != nil {
		return nil, fmt.Errorf("%s: encode state: %w", name, err)
	}
	return b.Bytes(), nil
}

func decodeFixed(name string, data []byte, s any) error {
	if want := binary.Size(s); len(data) != want {
		return fmt.Errorf("%s: state is %d bytes, want %d", name, len(data), want)
	}
	if err := binary.Read(bytes.NewReader(data), binary.LittleEndian, s); err != nil {
		return fmt.Errorf("%s: decode state: %w", name, err)
	}
	return nil
}

func errBadField(dev, field string, v int) error {
	return fmt.Errorf("%s: saved state has invalid %s %d", dev, field, v)
}
