package devices

import (
	"bytes"
	"sync/atomic"
	"testing"
	"time"
)

func TestI8042ResetLine(t *testing.T) {
	var resets atomic.Int32
	k := NewI8042(func() { resets.Add(1) })
	// Other commands and the data port do not reset.
	k.PortWrite(I8042Command, []byte{0xaa})
	k.PortWrite(I8042Data, []byte{0xfe})
	if n := resets.Load(); n != 0 {
		t.Fatalf("reset called %d times before command 0xfe on port 0x64", n)
	}
	k.PortWrite(I8042Command, []byte{0xfe})
	if n := resets.Load(); n != 1 {
		t.Fatalf("reset called %d times after 0xfe, want 1", n)
	}
	// Linux's reboot loop writes 0xfe several times: one reset only.
	for i := 0; i < 5; i++ {
		k.PortWrite(I8042Command, []byte{0xfe})
	}
	if n := resets.Load(); n != 1 {
		t.Fatalf("reset called %d times after repeated 0xfe, want 1", n)
	}
	// A nil reset func is allowed.
	NewI8042(nil).PortWrite(I8042Command, []byte{0xfe})
}

func TestI8042StatusReadsZero(t *testing.T) {
	k := NewI8042(nil)
	for _, port := range []uint16{I8042Data, I8042Command} {
		for _, size := range []int{1, 2, 4} {
			d := bytes.Repeat([]byte{0xff}, size)
			k.PortRead(port, d)
			if !bytes.Equal(d, make([]byte, size)) {
				t.Errorf("read %d bytes from %#x = %x, want zeros (input/output buffers empty)", size, port, d)
			}
		}
	}
	k.PortWrite(I8042Command, []byte{0xfe})
	d := []byte{0xff}
	k.PortRead(I8042Command, d)
	if d[0] != 0 {
		t.Errorf("status after reset = %#x, want 0", d[0])
	}
	if k.Name() != "i8042" {
		t.Errorf("Name = %q, want i8042", k.Name())
	}
}

func TestI8042SaveRestore(t *testing.T) {
	var srcResets, dstResets atomic.Int32
	src := NewI8042(func() { srcResets.Add(1) })
	src.PortWrite(I8042Command, []byte{0x20})
	data, err := src.Save()
	if err != nil {
		t.Fatal(err)
	}
	dst := NewI8042(func() { dstResets.Add(1) })
	if err := dst.Restore(data); err != nil {
		t.Fatal(err)
	}
	if d2, _ := dst.Save(); !bytes.Equal(d2, data) {
		t.Fatalf("Save after Restore = %x, want %x", d2, data)
	}
	if dst.s != (I8042State{LastCommand: 0x20}) {
		t.Fatalf("restored state %+v, want LastCommand 0x20", dst.s)
	}
	// A restored controller that has not seen the reset still resets.
	dst.PortWrite(I8042Command, []byte{0xfe})
	if n := dstResets.Load(); n != 1 {
		t.Fatalf("restored controller: reset called %d times, want 1", n)
	}
	// The reset-seen flag moves with the state.
	after, _ := dst.Save()
	again := NewI8042(func() { dstResets.Add(1) })
	if err := again.Restore(after); err != nil {
		t.Fatal(err)
	}
	again.PortWrite(I8042Command, []byte{0xfe})
	if n := dstResets.Load(); n != 1 {
		t.Fatalf("controller restored after a reset fired the reset again (%d calls)", n)
	}
	if srcResets.Load() != 0 {
		t.Fatal("the source controller was reset")
	}
	for _, n := range []int{0, 1, 3} {
		if err := NewI8042(nil).Restore(make([]byte, n)); err == nil {
			t.Errorf("Restore accepted %d bytes", n)
		}
	}
}

// fixedClock returns a CMOS wired to a settable clock.
type fixedClock struct{ t atomic.Pointer[time.Time] }

func (c *fixedClock) set(t time.Time) { c.t.Store(&t) }
func (c *fixedClock) now() time.Time  { return *c.t.Load() }

func cmosRead(c *CMOS, idx uint8) uint8 {
	c.PortWrite(CMOSIndex, []byte{idx})
	d := []byte{0xaa}
	c.PortRead(CMOSData, d)
	return d[0]
}

func cmosWrite(c *CMOS, idx, v uint8) {
	c.PortWrite(CMOSIndex, []byte{idx})
	c.PortWrite(CMOSData, []byte{v})
}

func TestCMOSClockBCD(t *testing.T) {
	clk := &fixedClock{}
	// 2024-03-09 17:45:56 UTC, a Saturday, given in another zone: the
	// RTC must show UTC.
	zone := time.FixedZone("UTC+5:30", 5*3600+1800)
	clk.set(time.Date(2024, 3, 9, 23, 15, 56, 0, zone))
	c := NewCMOS(clk.now)
	want := map[uint8]uint8{
		0x00: 0x56, // seconds
		0x02: 0x45, // minutes
		0x04: 0x17, // hours, 24-hour mode
		0x06: 0x07, // day of week, Sunday = 1
		0x07: 0x09, // day of month
		0x08: 0x03, // month
		0x09: 0x24, // year
		0x32: 0x20, // century
	}
	for idx, w := range want {
		if got := cmosRead(c, idx); got != w {
			t.Errorf("register %#x = %#x, want %#x", idx, got, w)
		}
		// Bit 7 of the index (NMI disable) does not select another register.
		if got := cmosRead(c, idx|0x80); got != w {
			t.Errorf("register %#x via index %#x = %#x, want %#x", idx, idx|0x80, got, w)
		}
	}
	if got := cmosRead(c, 0x0b); got&0x04 != 0 || got&0x02 == 0 {
		t.Errorf("register B = %#x, want BCD (bit 2 clear) and 24-hour (bit 1 set)", got)
	}
	if got := cmosRead(c, 0x0d); got&0x80 == 0 {
		t.Errorf("register D = %#x, want VRT (bit 7) set", got)
	}

	// The registers follow the clock.
	clk.set(time.Date(1999, 12, 31, 23, 59, 9, 0, time.UTC)) // a Friday
	for idx, w := range map[uint8]uint8{0x00: 0x09, 0x02: 0x59, 0x04: 0x23, 0x06: 0x06, 0x07: 0x31, 0x08: 0x12, 0x09: 0x99, 0x32: 0x19} {
		if got := cmosRead(c, idx); got != w {
			t.Errorf("1999-12-31: register %#x = %#x, want %#x", idx, got, w)
		}
	}
	// A Sunday reads 1.
	clk.set(time.Date(2023, 1, 1, 0, 0, 0, 0, time.UTC))
	if got := cmosRead(c, 0x06); got != 0x01 {
		t.Errorf("day of week on a Sunday = %#x, want 0x01", got)
	}
	// nil means the host clock.
	r := NewCMOS(nil)
	year := time.Now().UTC().Year()
	if got, w := cmosRead(r, 0x09), bcd(year%100); got != w {
		t.Errorf("host-clock year = %#x, want %#x", got, w)
	}
}

func TestCMOSNeverUpdateInProgress(t *testing.T) {
	c := NewCMOS(func() time.Time { return time.Unix(0, 0) })
	if got := cmosRead(c, 0x0a); got != 0x26 {
		t.Fatalf("register A = %#x, want 0x26", got)
	}
	for _, v := range []uint8{0x80, 0xa6, 0xff} {
		cmosWrite(c, 0x0a, v)
		if got := cmosRead(c, 0x0a); got&0x80 != 0 || got != v&^0x80 {
			t.Errorf("register A after writing %#x = %#x, want %#x (UIP never set)", v, got, v&^0x80)
		}
	}
	for i := 0; i < 1000; i++ {
		if cmosRead(c, 0x0a)&0x80 != 0 {
			t.Fatal("UIP set")
		}
	}
}

func TestCMOSRAMAndReadOnlyRegisters(t *testing.T) {
	now := time.Date(2024, 3, 9, 17, 45, 56, 0, time.UTC)
	c := NewCMOS(func() time.Time { return now })
	// The index register reads back on port 0x70.
	c.PortWrite(CMOSIndex, []byte{0x3c})
	d := []byte{0}
	c.PortRead(CMOSIndex, d)
	if d[0] != 0x3c {
		t.Errorf("index readback = %#x, want 0x3c", d[0])
	}
	// RAM bytes persist, including through aliases of the index.
	for _, idx := range []uint8{0x0e, 0x10, 0x31, 0x33, 0x7f} {
		cmosWrite(c, idx, idx^0x5a)
	}
	cmosWrite(c, 0x80|0x40, 0x99)
	for _, idx := range []uint8{0x0e, 0x10, 0x31, 0x33, 0x7f} {
		if got := cmosRead(c, idx); got != idx^0x5a {
			t.Errorf("RAM %#x = %#x, want %#x", idx, got, idx^0x5a)
		}
	}
	if got := cmosRead(c, 0x40); got != 0x99 {
		t.Errorf("RAM 0x40 written via index 0xc0 = %#x, want 0x99", got)
	}
	// Clock registers and the status registers C and D ignore writes.
	before := map[uint8]uint8{}
	for _, idx := range []uint8{0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32, 0x0c, 0x0d} {
		before[idx] = cmosRead(c, idx)
		cmosWrite(c, idx, 0x11)
	}
	for idx, w := range before {
		if got := cmosRead(c, idx); got != w {
			t.Errorf("register %#x = %#x after a write, want %#x (read-only)", idx, got, w)
		}
	}
	// Register B is writable (Linux sets its interrupt enables).
	cmosWrite(c, 0x0b, 0x42)
	if got := cmosRead(c, 0x0b); got != 0x42 {
		t.Errorf("register B = %#x, want 0x42", got)
	}
	// Wide reads fill the rest with zeros.
	c.PortWrite(CMOSIndex, []byte{0x10})
	w := []byte{0xff, 0xff}
	c.PortRead(CMOSData, w)
	if w[0] != 0x10^0x5a || w[1] != 0 {
		t.Errorf("2-byte read = %x, want [%02x 00]", w, 0x10^0x5a)
	}
}

func TestCMOSSaveRestore(t *testing.T) {
	now := func() time.Time { return time.Date(2024, 3, 9, 17, 45, 56, 0, time.UTC) }
	src := NewCMOS(now)
	cmosWrite(src, 0x10, 0xab)
	cmosWrite(src, 0x7e, 0xcd)
	cmosWrite(src, 0x0b, 0x12)
	src.PortWrite(CMOSIndex, []byte{0x7e}) // leave the index on a RAM byte
	data, err := src.Save()
	if err != nil {
		t.Fatal(err)
	}
	dst := NewCMOS(now)
	if err := dst.Restore(data); err != nil {
		t.Fatal(err)
	}
	if d2, _ := dst.Save(); !bytes.Equal(d2, data) {
		t.Fatal("Save after Restore differs")
	}
	// The index moved too: a data read without a new index write.
	d := []byte{0}
	dst.PortRead(CMOSData, d)
	if d[0] != 0xcd {
		t.Errorf("data read with the restored index = %#x, want 0xcd", d[0])
	}
	for idx, w := range map[uint8]uint8{0x10: 0xab, 0x0b: 0x12, 0x00: 0x56} {
		if got := cmosRead(dst, idx); got != w {
			t.Errorf("restored register %#x = %#x, want %#x", idx, got, w)
		}
	}
	for _, n := range []int{0, 128, len(data) - 1, len(data) + 1} {
		if err := NewCMOS(now).Restore(make([]byte, n)); err == nil {
			t.Errorf("Restore accepted %d bytes", n)
		}
	}
}

func TestSink(t *testing.T) {
	s := NewSink("post")
	if s.Name() != "post" {
		t.Errorf("Name = %q", s.Name())
	}
	d := []byte{1, 2, 3, 4}
	s.PortWrite(0x80, d)
	s.PortRead(0x80, d)
	if !bytes.Equal(d, make([]byte, 4)) {
		t.Errorf("sink read = %x, want zeros", d)
	}
	if _, ok := any(s).(Stateful); ok {
		t.Error("Sink claims state, but has none")
	}
}
