package devices

import (
	"fmt"
	"slices"
	"sync"
	"time"
)

// I8042 is the PC keyboard controller, reduced to what a guest without a
// keyboard needs: a status port that says "nothing here", and the CPU reset
// line (command 0xfe on port 0x64), which is how Linux reboots with
// reboot=k. ferry has no ACPI, so a guest restart ends the VM.
type I8042 struct {
	mu    sync.Mutex // guards s
	s     I8042State
	reset func()
}

// I8042 ports.
const (
	I8042Data    = 0x60
	I8042Command = 0x64

	i8042CmdReset = 0xfe
)

// I8042State is the controller's state: the last command byte written.
type I8042State struct {
	LastCommand uint8
	ResetSeen   uint8
}

// NewI8042 creates the controller; reset is called when the guest pulses
// the CPU reset line.
func NewI8042(reset func()) *I8042 { return &I8042{reset: reset} }

// Name implements Device.
func (k *I8042) Name() string { return "i8042" }

// PortRead implements PortDevice: no data, input buffer empty.
func (k *I8042) PortRead(port uint16, data []byte) {
	for i := range data {
		data[i] = 0
	}
}

// PortWrite implements PortDevice.
func (k *I8042) PortWrite(port uint16, data []byte) {
	if port != I8042Command {
		return
	}
	k.mu.Lock()
	k.s.LastCommand = data[0]
	fire := data[0] == i8042CmdReset && k.s.ResetSeen == 0
	if fire {
		k.s.ResetSeen = 1
	}
	k.mu.Unlock()
	if fire && k.reset != nil {
		k.reset()
	}
}

// Save implements Stateful.
func (k *I8042) Save() ([]byte, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return encodeFixed(k.Name(), &k.s)
}

// Restore implements Stateful.
func (k *I8042) Restore(data []byte) error {
	var s I8042State
	if err := decodeFixed(k.Name(), data, &s); err != nil {
		return err
	}
	if s.ResetSeen > 1 {
		return errBadField(k.Name(), "ResetSeen", int(s.ResetSeen))
	}
	k.mu.Lock()
	k.s = s
	k.mu.Unlock()
	return nil
}

// CMOS is the MC146818 real-time clock and CMOS RAM at ports 0x70/0x71.
// The clock registers read the host's wall clock (UTC) in BCD, 24-hour mode,
// never "update in progress"; the guest reads its boot time from them.
type CMOS struct {
	mu  sync.Mutex // guards s
	s   CMOSState
	now func() time.Time
}

// CMOS ports.
const (
	CMOSIndex = 0x70
	CMOSData  = 0x71
)

// cmosFixed are the registers the guest cannot write: the clock and the
// read-only status registers C and D.
var cmosFixed = []uint8{0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32, 0x0c, 0x0d}

// CMOSState is the index register and the 128 bytes of CMOS RAM.
type CMOSState struct {
	Index uint8
	RAM   [128]byte
}

// NewCMOS creates the RTC. now may be nil (time.Now).
func NewCMOS(now func() time.Time) *CMOS {
	if now == nil {
		now = time.Now
	}
	c := &CMOS{now: now}
	c.s.RAM[0x0a] = 0x26 // 32.768 kHz time base, 1024 Hz rate, UIP clear
	c.s.RAM[0x0b] = 0x02 // 24-hour, BCD
	c.s.RAM[0x0d] = 0x80 // RAM and time valid
	return c
}

// Name implements Device.
func (c *CMOS) Name() string { return "cmos" }

func bcd(v int) uint8 { return uint8(v/10<<4 | v%10) }

// PortRead implements PortDevice.
func (c *CMOS) PortRead(port uint16, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range data {
		data[i] = 0
	}
	if port != CMOSData {
		data[0] = c.s.Index
		return
	}
	idx := c.s.Index & 0x7f
	t := c.now().UTC()
	switch idx {
	case 0x00:
		data[0] = bcd(t.Second())
	case 0x02:
		data[0] = bcd(t.Minute())
	case 0x04:
		data[0] = bcd(t.Hour())
	case 0x06:
		data[0] = bcd(int(t.Weekday()) + 1)
	case 0x07:
		data[0] = bcd(t.Day())
	case 0x08:
		data[0] = bcd(int(t.Month()))
	case 0x09:
		data[0] = bcd(t.Year() % 100)
	case 0x32:
		data[0] = bcd(t.Year() / 100)
	case 0x0a:
		data[0] = c.s.RAM[idx] &^ 0x80 // never "update in progress"
	default:
		data[0] = c.s.RAM[idx]
	}
}

// PortWrite implements PortDevice.
func (c *CMOS) PortWrite(port uint16, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if port == CMOSIndex {
		c.s.Index = data[0]
		return
	}
	idx := c.s.Index & 0x7f
	if slices.Contains(cmosFixed, idx) {
		return // the host clock stays the source of time
	}
	c.s.RAM[idx] = data[0]
}

// Save implements Stateful.
func (c *CMOS) Save() ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return encodeFixed(c.Name(), &c.s)
}

// Restore implements Stateful.
func (c *CMOS) Restore(data []byte) error {
	var s CMOSState
	if err := decodeFixed(c.Name(), data, &s); err != nil {
		return err
	}
	// The registers the guest cannot write keep the values NewCMOS gave
	// them (the clock is read from the host, never from RAM).
	for _, i := range cmosFixed {
		want := uint8(0)
		if i == 0x0d {
			want = 0x80
		}
		if s.RAM[i] != want {
			return fmt.Errorf("%s: saved state has %#02x in read-only register %#02x, want %#02x", c.Name(), s.RAM[i], i, want)
		}
	}
	c.mu.Lock()
	c.s = s
	c.mu.Unlock()
	return nil
}

// Sink swallows writes and reads as zero: for ports that Linux pokes at boot
// only for timing or legacy reasons (0x80 POST code, 0xed I/O delay, 0x61
// and 0x92 system control B and A). It has no state.
type Sink struct{ name string }

// NewSink creates a stateless port sink.
func NewSink(name string) *Sink { return &Sink{name: name} }

// Name implements Device.
func (s *Sink) Name() string { return s.name }

// PortRead implements PortDevice.
func (s *Sink) PortRead(port uint16, data []byte) {
	for i := range data {
		data[i] = 0
	}
}

// PortWrite implements PortDevice.
func (s *Sink) PortWrite(port uint16, data []byte) {}
