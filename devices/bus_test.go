package devices

import (
	"bytes"
	"strings"
	"testing"
)

// recorder is a port device that logs accesses and answers reads with a
// fixed byte.
type recorder struct {
	name   string
	answer byte
	log    []string
}

func (r *recorder) Name() string { return r.name }

func (r *recorder) PortRead(port uint16, data []byte) {
	r.log = append(r.log, "r"+hex16(port))
	for i := range data {
		data[i] = r.answer
	}
}

func (r *recorder) PortWrite(port uint16, data []byte) {
	r.log = append(r.log, "w"+hex16(port)+":"+string(data))
}

func hex16(p uint16) string {
	const h = "0123456789abcdef"
	return string([]byte{h[p>>12], h[p>>8&15], h[p>>4&15], h[p&15]})
}

func TestPortBusOverlap(t *testing.T) {
	var b PortBus
	com := &recorder{name: "serial0"}
	if err := b.Register(0x3f8, 8, com); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		base  uint16
		count int
	}{
		{0x3f8, 8}, {0x3f0, 9}, {0x3ff, 1}, {0x3fa, 1}, {0x3f0, 0x20},
	} {
		other := &recorder{name: "intruder"}
		err := b.Register(c.base, c.count, other)
		if err == nil {
			t.Errorf("Register(%#x, %d) overlapping serial0 at 0x3f8-0x3ff succeeded", c.base, c.count)
			continue
		}
		if !strings.Contains(err.Error(), "serial0") || !strings.Contains(err.Error(), "intruder") {
			t.Errorf("overlap error %q does not name both devices", err)
		}
	}
	// Adjacent ranges are fine.
	if err := b.Register(0x3f0, 8, &recorder{name: "below"}); err != nil {
		t.Errorf("adjacent range below: %v", err)
	}
	if err := b.Register(0x400, 1, &recorder{name: "above"}); err != nil {
		t.Errorf("adjacent range above: %v", err)
	}
	// Invalid ranges.
	for _, c := range []struct {
		base  uint16
		count int
	}{{0x10, 0}, {0x10, -1}, {0xffff, 2}, {0, 0x10001}} {
		if err := b.Register(c.base, c.count, &recorder{name: "bad"}); err == nil {
			t.Errorf("Register(%#x, %d) accepted", c.base, c.count)
		}
	}
	if err := b.Register(0xffff, 1, &recorder{name: "top"}); err != nil {
		t.Errorf("Register(0xffff, 1): %v", err)
	}
}

func TestPortBusUnclaimed(t *testing.T) {
	var b PortBus
	if err := b.Register(0x60, 1, &recorder{name: "kbd", answer: 0}); err != nil {
		t.Fatal(err)
	}
	for _, size := range []int{1, 2, 4} {
		d := make([]byte, size)
		b.Read(0x2f8, d)
		if !bytes.Equal(d, bytes.Repeat([]byte{0xff}, size)) {
			t.Errorf("unclaimed %d-byte read = %x, want all ones", size, d)
		}
	}
	b.Write(0x2f8, []byte{1})
	b.Write(0xcf8, []byte{0, 0, 0, 0x80})
	if got := b.Unclaimed()[0x2f8]; got != 4 {
		t.Errorf("Unclaimed[0x2f8] = %d, want 4 (3 reads, 1 write)", got)
	}
	if got := b.Unclaimed()[0xcf8]; got != 1 {
		t.Errorf("Unclaimed[0xcf8] = %d, want 1", got)
	}
	d := []byte{0xff}
	b.Read(0x60, d)
	if d[0] != 0 {
		t.Errorf("claimed read = %#x, want the device's 0", d[0])
	}
	if _, ok := b.Unclaimed()[0x60]; ok {
		t.Error("a claimed port was counted as unclaimed")
	}
	if len(b.Unclaimed()) != 2 {
		t.Errorf("Unclaimed = %v, want two ports", b.Unclaimed())
	}
}

func TestPortBusDispatch(t *testing.T) {
	var b PortBus
	devs := []*recorder{
		{name: "c", answer: 0xc0},
		{name: "a", answer: 0xa0},
		{name: "b", answer: 0xb0},
	}
	// Registered out of order on purpose.
	for _, r := range []struct {
		base  uint16
		count int
		dev   *recorder
	}{{0x3f8, 8, devs[0]}, {0x40, 4, devs[1]}, {0x70, 2, devs[2]}} {
		if err := b.Register(r.base, r.count, r.dev); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		port uint16
		want byte
	}{
		{0x3f, 0xff}, {0x40, 0xa0}, {0x43, 0xa0}, {0x44, 0xff},
		{0x6f, 0xff}, {0x70, 0xb0}, {0x71, 0xb0}, {0x72, 0xff},
		{0x3f7, 0xff}, {0x3f8, 0xc0}, {0x3ff, 0xc0}, {0x400, 0xff}, {0, 0xff}, {0xffff, 0xff},
	} {
		d := []byte{0x5a}
		b.Read(c.port, d)
		if d[0] != c.want {
			t.Errorf("read %#x = %#x, want %#x", c.port, d[0], c.want)
		}
	}
	b.Write(0x3fb, []byte("x"))
	b.Write(0x41, []byte("yz"))
	b.Write(0x71, []byte("w"))
	// Devices see the full port number and the access width.
	want := map[string][]string{
		"a": {"r0040", "r0043", "w0041:yz"},
		"b": {"r0070", "r0071", "w0071:w"},
		"c": {"r03f8", "r03ff", "w03fb:x"},
	}
	for _, d := range devs {
		if strings.Join(d.log, " ") != strings.Join(want[d.name], " ") {
			t.Errorf("device %s saw %v, want %v", d.name, d.log, want[d.name])
		}
	}
}
