package devices

import (
	"bytes"
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
