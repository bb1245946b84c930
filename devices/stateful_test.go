package devices

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// allDevices builds one of every device type, each with some state changed
// from its reset values so that a round trip is not trivially empty.
func allDevices() []struct {
	name string
	make func() Device
	poke func(Device)
} {
	clock := func() time.Time { return time.Date(2024, 3, 9, 17, 45, 56, 0, time.UTC) }
	return []struct {
		name string
		make func() Device
		poke func(Device)
	}{
		{"serial", func() Device { return NewSerial("serial0", &bytes.Buffer{}, &fakeIRQ{}) }, func(d Device) {
			u := d.(*Serial)
			u.PortWrite(COM1Base+uartLCR, []byte{0x1b})
			u.PortWrite(COM1Base+uartIER, []byte{ierRDA | ierTHRE})
			u.PortWrite(COM1Base+uartSCR, []byte{0x99})
			u.Input([]byte("input"))
		}},
		{"i8042", func() Device { return NewI8042(func() {}) }, func(d Device) {
			d.(*I8042).PortWrite(I8042Command, []byte{0xfe})
		}},
		{"cmos", func() Device { return NewCMOS(clock) }, func(d Device) {
			c := d.(*CMOS)
			c.PortWrite(CMOSIndex, []byte{0x20})
			c.PortWrite(CMOSData, []byte{0x77})
		}},
		{"sink", func() Device { return NewSink("post") }, func(d Device) {
			d.(*Sink).PortWrite(0x80, []byte{0x12})
		}},
	}
}

// TestEveryStatefulDeviceRoundTrips checks, for every device constructor,
// that Save's output (from a fresh and from a used instance) is accepted by
// Restore on a fresh instance and reproduces the same saved bytes.
func TestEveryStatefulDeviceRoundTrips(t *testing.T) {
	stateful := 0
	for _, c := range allDevices() {
		t.Run(c.name, func(t *testing.T) {
			if _, ok := c.make().(PortDevice); !ok {
				t.Errorf("%s is not a PortDevice", c.name)
			}
			if _, ok := c.make().(Stateful); !ok {
				t.Logf("%s is stateless", c.name)
				return
			}
			stateful++
			for _, used := range []bool{false, true} {
				src := c.make()
				if used {
					c.poke(src)
				}
				data, err := src.(Stateful).Save()
				if err != nil {
					t.Fatalf("Save (used %v): %v", used, err)
				}
				dst := c.make().(Stateful)
				if err := dst.Restore(data); err != nil {
					t.Fatalf("Restore of Save output (used %v) into a fresh %s: %v", used, c.name, err)
				}
				again, err := dst.Save()
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(again, data) {
					t.Fatalf("used %v: Save after Restore differs from the restored state", used)
				}
				if used {
					fresh, _ := c.make().(Stateful).Save()
					if bytes.Equal(fresh, data) {
						t.Errorf("poking %s did not change its saved state: the round trip proves little", c.name)
					}
				}
				if err := dst.Restore(append(data, 0)); err == nil {
					t.Errorf("Restore accepted a state with a trailing byte")
				}
			}
		})
	}
	if stateful != 3 {
		t.Errorf("%d stateful devices, want 3 (serial, i8042, cmos): update this table when adding devices", stateful)
	}
}

// TestLegacyRestoreRefuses: each legacy device refuses a saved state it
// could never have been in (with an error naming it) and then keeps its
// own state.
func TestLegacyRestoreRefuses(t *testing.T) {
	edit := func(d Stateful, s any, change func()) []byte {
		data, err := d.Save()
		if err != nil {
			t.Fatal(err)
		}
		if err := decodeFixed("x", data, s); err != nil {
			t.Fatal(err)
		}
		change()
		b, err := encodeFixed("x", s)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	newSerial := func() Stateful { return NewSerial("serial0", &bytes.Buffer{}, &fakeIRQ{}) }
	newCMOS := func() Stateful { return NewCMOS(nil) }
	newI8042 := func() Stateful { return NewI8042(nil) }
	var ss SerialState
	var cs CMOSState
	var ks I8042State
	cases := []struct {
		name string
		make func() Stateful
		s    any
		bad  func()
	}{
		{"serial RXLen", newSerial, &ss, func() { ss.RXLen = SerialRXSize + 1 }},
		{"serial IER", newSerial, &ss, func() { ss.IER = 0x10 }},
		{"serial MCR", newSerial, &ss, func() { ss.MCR = 0x20 }},
		{"serial MSR", newSerial, &ss, func() { ss.MSR = msrDCD }},
		{"serial THREPending", newSerial, &ss, func() { ss.THREPending = 2 }},
		{"serial LSRErrors", newSerial, &ss, func() { ss.LSRErrors = 0x80 }},
		{"cmos status C", newCMOS, &cs, func() { cs.RAM[0x0c] = 0x80 }},
		{"cmos status D", newCMOS, &cs, func() { cs.RAM[0x0d] = 0 }},
		{"cmos clock", newCMOS, &cs, func() { cs.RAM[0x09] = 0x24 }},
		{"i8042 ResetSeen", newI8042, &ks, func() { ks.ResetSeen = 2 }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := c.make()
			before, _ := d.Save()
			err := d.Restore(edit(d, c.s, c.bad))
			if err == nil || !strings.Contains(err.Error(), d.Name()) {
				t.Fatalf("Restore: %v, want an error naming %s", err, d.Name())
			}
			if after, _ := d.Save(); !bytes.Equal(after, before) {
				t.Fatal("the refused state changed the device")
			}
		})
	}
}
