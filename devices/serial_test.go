package devices

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeIRQ records every level the device drives on its interrupt line.
type fakeIRQ struct {
	mu     sync.Mutex
	levels []bool // since the last take
	cur    bool
}

func (f *fakeIRQ) SetLevel(high bool) error {
	f.mu.Lock()
	f.levels = append(f.levels, high)
	f.cur = high
	f.mu.Unlock()
	return nil
}

// take returns the levels recorded since the last call and forgets them.
func (f *fakeIRQ) take() []bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	l := f.levels
	f.levels = nil
	return l
}

// level is the current level of the line (low if never driven).
func (f *fakeIRQ) level() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cur
}

// syncBuffer is a goroutine-safe output writer.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// uart wraps a Serial at COM1 with register-level helpers, as the guest's
// 8250 driver sees it.
type uart struct {
	t   *testing.T
	s   *Serial
	out *syncBuffer
	irq *fakeIRQ
}

func newUART(t *testing.T) *uart {
	t.Helper()
	out := &syncBuffer{}
	irq := &fakeIRQ{}
	return &uart{t: t, s: NewSerial("serial0", out, irq), out: out, irq: irq}
}

func (u *uart) in(reg uint16) uint8 {
	d := []byte{0xaa}
	u.s.PortRead(COM1Base+reg, d)
	return d[0]
}

func (u *uart) outb(reg uint16, v uint8) { u.s.PortWrite(COM1Base+reg, []byte{v}) }

func (u *uart) expectIRQ(step string, want ...bool) {
	u.t.Helper()
	got := u.irq.take()
	if len(got) != len(want) {
		u.t.Fatalf("%s: IRQ line transitions %v, want %v", step, got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			u.t.Fatalf("%s: IRQ line transitions %v, want %v", step, got, want)
		}
	}
}

func TestSerialResetValues(t *testing.T) {
	u := newUART(t)
	if got := u.in(uartLCR); got != 0x03 {
		t.Errorf("LCR after reset = %#x, want 0x03 (8N1)", got)
	}
	if got := u.in(uartIER); got != 0 {
		t.Errorf("IER after reset = %#x, want 0", got)
	}
	if got := u.in(uartIIR); got != iirNone {
		t.Errorf("IIR after reset = %#x, want %#x (no interrupt)", got, iirNone)
	}
	if got := u.in(uartLSR); got != lsrTHRE|lsrTEMT {
		t.Errorf("LSR after reset = %#x, want %#x", got, lsrTHRE|lsrTEMT)
	}
	u.expectIRQ("reset")
}

func TestSerialDivisorLatch(t *testing.T) {
	u := newUART(t)
	u.outb(uartIER, 0x05) // RDA | RLS, with DLAB clear
	u.outb(uartLCR, lcrDLAB|0x03)
	if got := u.in(uartRBR); got != 0x0c {
		t.Errorf("DLL after reset = %#x, want 0x0c (9600 baud)", got)
	}
	u.outb(uartRBR, 0x01) // DLL: 115200 baud
	u.outb(uartIER, 0x02) // DLM
	if got := u.in(uartRBR); got != 0x01 {
		t.Errorf("DLL = %#x, want 0x01", got)
	}
	if got := u.in(uartIER); got != 0x02 {
		t.Errorf("DLM = %#x, want 0x02", got)
	}
	if got := u.out.String(); got != "" {
		t.Errorf("a DLL write reached the output: %q", got)
	}
	if got := u.in(uartLCR); got != lcrDLAB|0x03 {
		t.Errorf("LCR = %#x, want %#x", got, lcrDLAB|0x03)
	}

	u.outb(uartLCR, 0x03) // DLAB off: offsets 0 and 1 are RBR/THR and IER again
	if got := u.in(uartIER); got != 0x05 {
		t.Errorf("IER = %#x after DLAB access, want 0x05 (DLM write must not touch IER)", got)
	}
	if got := u.in(uartRBR); got != 0 {
		t.Errorf("RBR with nothing received = %#x, want 0", got)
	}
	u.outb(uartRBR, 'x')
	if got := u.out.String(); got != "x" {
		t.Errorf("output after THR write = %q, want %q", got, "x")
	}
	u.outb(uartLCR, lcrDLAB|0x03)
	if dll, dlm := u.in(uartRBR), u.in(uartIER); dll != 0x01 || dlm != 0x02 {
		t.Errorf("divisor after THR write = %#x/%#x, want 0x01/0x02", dll, dlm)
	}
	// IER keeps only its four defined bits.
	u.outb(uartLCR, 0x03)
	u.outb(uartIER, 0xf0)
	if got := u.in(uartIER); got != 0 {
		t.Errorf("IER after writing 0xf0 = %#x, want 0", got)
	}
}

func TestSerialLSR(t *testing.T) {
	u := newUART(t)
	for i := 0; i < 3; i++ {
		if got := u.in(uartLSR); got != lsrTHRE|lsrTEMT {
			t.Fatalf("idle LSR = %#x, want %#x", got, lsrTHRE|lsrTEMT)
		}
		u.outb(uartRBR, 'a') // the transmitter is always empty again at once
	}
	u.s.Input([]byte("hi"))
	if got := u.in(uartLSR); got != lsrTHRE|lsrTEMT|lsrDR {
		t.Fatalf("LSR with input pending = %#x, want %#x", got, lsrTHRE|lsrTEMT|lsrDR)
	}
	if got := u.in(uartRBR); got != 'h' {
		t.Fatalf("RBR = %q, want 'h'", got)
	}
	if got := u.in(uartLSR); got&lsrDR == 0 {
		t.Fatalf("LSR = %#x with one byte still pending, want DR", got)
	}
	if got := u.in(uartRBR); got != 'i' {
		t.Fatalf("RBR = %q, want 'i'", got)
	}
	if got := u.in(uartLSR); got != lsrTHRE|lsrTEMT {
		t.Fatalf("LSR after draining = %#x, want %#x", got, lsrTHRE|lsrTEMT)
	}
}

func TestSerialTHRToOutput(t *testing.T) {
	u := newUART(t)
	msg := "Linux version 6.1\r\n"
	for i := 0; i < len(msg); i++ {
		u.outb(uartRBR, msg[i])
	}
	if got := u.out.String(); got != msg {
		t.Fatalf("output = %q, want %q", got, msg)
	}
	// Only the first byte of a wider access is the register value.
	u.s.PortWrite(COM1Base, []byte{'!', 'z'})
	if got := u.out.String(); got != msg+"!" {
		t.Fatalf("output after 2-byte write = %q, want %q", got, msg+"!")
	}
	// A nil writer discards output without failing.
	n := NewSerial("quiet", nil, nil)
	n.PortWrite(COM1Base, []byte{'x'})
	// The scratch register holds what was written.
	u.outb(uartSCR, 0x5a)
	if got := u.in(uartSCR); got != 0x5a {
		t.Fatalf("SCR = %#x, want 0x5a", got)
	}
}

func TestSerialTHREInterrupt(t *testing.T) {
	u := newUART(t)
	// THR writes with the interrupt disabled raise nothing.
	u.outb(uartRBR, 'a')
	u.expectIRQ("THR write, IER=0")
	if got := u.in(uartIIR); got != iirNone {
		t.Fatalf("IIR with IER=0 = %#x, want %#x", got, iirNone)
	}

	// Enabling THRE while THR is empty raises it at once.
	u.outb(uartIER, ierTHRE)
	u.expectIRQ("enable IER.THRE", true)
	if got := u.in(uartIIR); got != iirTHRE {
		t.Fatalf("IIR after enabling THRE = %#x, want %#x", got, iirTHRE)
	}
	u.expectIRQ("IIR read acknowledges THRE", false)
	if got := u.in(uartIIR); got != iirNone {
		t.Fatalf("second IIR read = %#x, want %#x (acknowledged)", got, iirNone)
	}
	u.expectIRQ("second IIR read")

	// Each THR write raises it again.
	for i := 0; i < 3; i++ {
		u.outb(uartRBR, 'b')
		u.expectIRQ("THR write", true)
		if got := u.in(uartIIR); got != iirTHRE {
			t.Fatalf("IIR after THR write = %#x, want %#x", got, iirTHRE)
		}
		u.expectIRQ("IIR read", false)
	}

	// Re-writing IER with THRE already set does not raise it again
	// (Linux rewrites IER often), but turning it off and on does.
	u.outb(uartIER, ierTHRE)
	u.expectIRQ("IER rewritten with THRE already set")
	u.outb(uartIER, 0)
	u.outb(uartIER, ierTHRE)
	u.expectIRQ("IER.THRE off then on", true)

	// Disabling the interrupt drops the line; the pending state stays
	// and comes back when re-enabled.
	u.outb(uartIER, 0)
	u.expectIRQ("IER cleared", false)
	if got := u.in(uartIIR); got != iirNone {
		t.Fatalf("IIR with IER=0 = %#x, want %#x", got, iirNone)
	}
}

func TestSerialIIRPriority(t *testing.T) {
	u := newUART(t)
	u.outb(uartIER, ierRDA|ierTHRE)
	u.expectIRQ("enable RDA|THRE", true)
	u.s.Input([]byte("k"))
	u.expectIRQ("input while THRE pending") // already high
	// RDA outranks THRE, and reading IIR while RDA shows does not
	// acknowledge the THRE interrupt underneath.
	for i := 0; i < 2; i++ {
		if got := u.in(uartIIR); got != iirRDA {
			t.Fatalf("IIR with RDA and THRE pending = %#x, want %#x", got, iirRDA)
		}
	}
	u.expectIRQ("IIR reads showing RDA")
	if got := u.in(uartRBR); got != 'k' {
		t.Fatalf("RBR = %q, want 'k'", got)
	}
	u.expectIRQ("RBR read, THRE still pending")
	if got := u.in(uartIIR); got != iirTHRE {
		t.Fatalf("IIR after draining RX = %#x, want %#x", got, iirTHRE)
	}
	u.expectIRQ("THRE acknowledged", false)
	if got := u.in(uartIIR); got != iirNone {
		t.Fatalf("IIR = %#x, want %#x", got, iirNone)
	}

	// RDA alone: raised by Input, lowered when the guest drains RX.
	u.s.Input([]byte("ab"))
	u.expectIRQ("input", true)
	u.in(uartRBR)
	u.expectIRQ("one byte left")
	u.in(uartRBR)
	u.expectIRQ("drained", false)

	// With FIFOs enabled, IIR bits 7:6 are set.
	u.outb(uartIIR, 0x01)
	if got := u.in(uartIIR); got != iirFIFO|iirNone {
		t.Fatalf("IIR with FIFO enabled = %#x, want %#x", got, iirFIFO|iirNone)
	}
	u.s.Input([]byte("c"))
	if got := u.in(uartIIR); got != iirFIFO|iirRDA {
		t.Fatalf("IIR with FIFO enabled and RDA = %#x, want %#x", got, iirFIFO|iirRDA)
	}
}

func TestSerialNoIRQLineWithoutEnable(t *testing.T) {
	u := newUART(t)
	u.s.Input([]byte("xyz"))
	u.outb(uartRBR, 'a')
	u.in(uartIIR)
	u.in(uartRBR)
	u.expectIRQ("IER=0")
	if u.irq.level() {
		t.Fatal("IRQ line high with every interrupt disabled")
	}
}

func TestSerialLoopback(t *testing.T) {
	u := newUART(t)
	// Linux's autoconfig (drivers/tty/serial/8250/8250_port.c): with
	// MCR = LOOP | OUT2 | RTS, MSR & 0xf0 must read 0x90 (DCD | CTS).
	u.outb(uartMCR, mcrLoop|0x0a)
	if got := u.in(uartMSR) & 0xf0; got != 0x90 {
		t.Fatalf("loopback MSR&0xf0 with MCR=0x1a = %#x, want 0x90", got)
	}
	for _, c := range []struct{ mcr, msr uint8 }{
		{mcrLoop, 0x00},
		{mcrLoop | mcrDTR, msrDSR},
		{mcrLoop | mcrRTS, msrCTS},
		{mcrLoop | mcrOUT1, msrRI},
		{mcrLoop | mcrOUT2, msrDCD},
		{mcrLoop | 0x0f, 0xf0},
	} {
		u.outb(uartMCR, c.mcr)
		if got := u.in(uartMSR) & 0xf0; got != c.msr {
			t.Errorf("loopback MCR=%#x: MSR&0xf0 = %#x, want %#x", c.mcr, got, c.msr)
		}
	}
	if got := u.in(uartMCR); got != mcrLoop|0x0f {
		t.Errorf("MCR = %#x, want %#x", got, mcrLoop|0x0f)
	}
	u.outb(uartMCR, 0xff)
	if got := u.in(uartMCR); got != 0x1f {
		t.Errorf("MCR after writing 0xff = %#x, want 0x1f", got)
	}

	// Bytes written to THR come back in RBR, not on the output.
	u.outb(uartMCR, mcrLoop|mcrOUT2)
	u.outb(uartIER, ierRDA)
	u.expectIRQ("IER=RDA, RX empty")
	u.outb(uartRBR, 0x55)
	u.outb(uartRBR, 0xaa)
	u.expectIRQ("looped-back bytes", true)
	if got := u.in(uartLSR); got&lsrDR == 0 {
		t.Fatalf("LSR = %#x after loopback THR writes, want DR", got)
	}
	if a, b := u.in(uartRBR), u.in(uartRBR); a != 0x55 || b != 0xaa {
		t.Fatalf("loopback RBR = %#x %#x, want 0x55 0xaa", a, b)
	}
	u.expectIRQ("looped-back bytes read", false)
	if got := u.out.String(); got != "" {
		t.Fatalf("loopback bytes reached the output: %q", got)
	}

	// Out of loopback, MSR is the (idle) modem status again and THR
	// bytes leave on the output.
	u.outb(uartMCR, mcrOUT2|mcrRTS|mcrDTR)
	if got := u.in(uartMSR); got != 0 {
		t.Errorf("MSR out of loopback = %#x, want 0", got)
	}
	u.outb(uartRBR, 'z')
	if got := u.out.String(); got != "z" {
		t.Errorf("output = %q, want %q", got, "z")
	}
}

func TestSerialFCRClearsRX(t *testing.T) {
	u := newUART(t)
	u.outb(uartIER, ierRDA)
	u.s.Input([]byte("abc"))
	u.expectIRQ("input", true)
	u.outb(uartIIR, 0x01) // enable FIFOs only: RX stays
	if got := u.in(uartLSR); got&lsrDR == 0 {
		t.Fatalf("FCR=0x01 dropped received data (LSR %#x)", got)
	}
	u.outb(uartIIR, 0x07) // enable, clear RX and TX
	u.expectIRQ("RX cleared", false)
	if got := u.in(uartLSR); got&lsrDR != 0 {
		t.Fatalf("LSR = %#x after FCR clear-RX, want DR clear", got)
	}
	if got := u.in(uartRBR); got != 0 {
		t.Fatalf("RBR after FCR clear-RX = %#x, want 0", got)
	}
	u.s.Input([]byte("d"))
	if got := u.in(uartRBR); got != 'd' {
		t.Fatalf("RBR after clear and new input = %q, want 'd'", got)
	}
}

// TestSerialInputBlocksWhenFull fills the receive buffer, checks that a
// further Input waits for the guest to read, and that it resumes in order.
func TestSerialInputBlocksWhenFull(t *testing.T) {
	u := newUART(t)
	full := bytes.Repeat([]byte{'f'}, SerialRXSize)
	returned := make(chan struct{})
	go func() { u.s.Input(full); close(returned) }()
	select {
	case <-returned:
	case <-time.After(5 * time.Second):
		t.Fatal("Input of exactly SerialRXSize bytes blocked")
	}

	done := make(chan struct{})
	go func() { u.s.Input([]byte("XY")); close(done) }()
	select {
	case <-done:
		t.Fatal("Input returned while the receive buffer was full")
	case <-time.After(100 * time.Millisecond):
	}
	if got := u.in(uartRBR); got != 'f' {
		t.Fatalf("RBR = %q, want 'f'", got)
	}
	// One byte of room: X goes in, Y still waits.
	select {
	case <-done:
		t.Fatal("Input returned with room for only one of its two bytes")
	case <-time.After(100 * time.Millisecond):
	}
	if got := u.in(uartRBR); got != 'f' {
		t.Fatalf("RBR = %q, want 'f'", got)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Input still blocked after the guest made room")
	}
	var rest []byte
	for u.in(uartLSR)&lsrDR != 0 {
		rest = append(rest, u.in(uartRBR))
	}
	want := append(bytes.Repeat([]byte{'f'}, SerialRXSize-2), 'X', 'Y')
	if !bytes.Equal(rest, want) {
		t.Fatalf("received %d bytes ending %q, want %d ending %q", len(rest), rest[max(0, len(rest)-4):], len(want), want[len(want)-4:])
	}
}

func TestSerialInputFCRClearUnblocks(t *testing.T) {
	u := newUART(t)
	u.s.Input(bytes.Repeat([]byte{'f'}, SerialRXSize))
	done := make(chan struct{})
	go func() { u.s.Input([]byte("after")); close(done) }()
	time.Sleep(50 * time.Millisecond)
	u.outb(uartIIR, 0x03) // clear RX: room for everything
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Input still blocked after FCR cleared the receive buffer")
	}
	var got []byte
	for u.in(uartLSR)&lsrDR != 0 {
		got = append(got, u.in(uartRBR))
	}
	if string(got) != "after" {
		t.Fatalf("received %q after clear, want %q", got, "after")
	}
}

func TestSerialCloseUnblocksInput(t *testing.T) {
	u := newUART(t)
	u.s.Input(bytes.Repeat([]byte{'f'}, SerialRXSize))
	done := make(chan struct{})
	go func() { u.s.Input([]byte("never read")); close(done) }()
	select {
	case <-done:
		t.Fatal("Input returned while the receive buffer was full")
	case <-time.After(100 * time.Millisecond):
	}
	u.s.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Input still blocked after Close")
	}
	// After Close, Input returns at once.
	again := make(chan struct{})
	go func() { u.s.Input(bytes.Repeat([]byte{'g'}, 2*SerialRXSize)); close(again) }()
	select {
	case <-again:
	case <-time.After(5 * time.Second):
		t.Fatal("Input blocked after Close")
	}
}

func TestSerialSaveRestore(t *testing.T) {
	src := newUART(t)
	src.outb(uartLCR, lcrDLAB|0x03)
	src.outb(uartRBR, 0x01)
	src.outb(uartIER, 0x00)
	src.outb(uartLCR, 0x1b) // 8E1
	src.outb(uartIIR, 0xc1) // FIFO on, trigger 14
	src.outb(uartMCR, mcrOUT2|mcrRTS|mcrDTR)
	src.outb(uartSCR, 0x77)
	src.outb(uartIER, ierRDA|ierTHRE) // THRE pending
	src.s.Input([]byte("pending input"))
	src.irq.take()

	data, err := src.s.Save()
	if err != nil {
		t.Fatal(err)
	}
	if want := binary.Size(SerialState{}); len(data) != want {
		t.Fatalf("saved %d bytes, want %d", len(data), want)
	}
	dst := newUART(t)
	if err := dst.s.Restore(data); err != nil {
		t.Fatal(err)
	}
	// The restored UART has an interrupt pending: its line goes up.
	dst.expectIRQ("restore with RDA pending", true)
	data2, err := dst.s.Save()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(data, data2) {
		t.Fatal("Save after Restore differs from the restored data")
	}

	// Both UARTs answer the same register reads, in the same sequence.
	seq := []uint16{uartIER, uartLCR, uartMCR, uartSCR, uartMSR, uartLSR, uartIIR}
	for _, r := range seq {
		if a, b := src.in(r), dst.in(r); a != b {
			t.Errorf("register %d: source %#x, restored %#x", r, a, b)
		}
	}
	var a, b []byte
	for src.in(uartLSR)&lsrDR != 0 {
		a = append(a, src.in(uartRBR))
	}
	for dst.in(uartLSR)&lsrDR != 0 {
		b = append(b, dst.in(uartRBR))
	}
	if string(a) != "pending input" || !bytes.Equal(a, b) {
		t.Errorf("received after restore: source %q, restored %q", a, b)
	}
	// Once RX is drained, THRE (lower priority) shows in both.
	if x, y := src.in(uartIIR), dst.in(uartIIR); x != iirFIFO|iirTHRE || x != y {
		t.Errorf("IIR after draining: source %#x, restored %#x, want %#x", x, y, iirFIFO|iirTHRE)
	}
	src.outb(uartLCR, lcrDLAB|0x1b)
	dst.outb(uartLCR, lcrDLAB|0x1b)
	if x, y := src.in(uartRBR), dst.in(uartRBR); x != 0x01 || y != 0x01 {
		t.Errorf("DLL: source %#x, restored %#x, want 0x01", x, y)
	}
	if got := dst.out.String(); got != "" {
		t.Errorf("restore wrote %q to the output", got)
	}
}

func TestSerialRestoreRejectsBadData(t *testing.T) {
	u := newUART(t)
	good, err := u.s.Save()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{0, 1, len(good) - 1, len(good) + 1} {
		b := make([]byte, n)
		copy(b, good)
		err := u.s.Restore(b)
		if err == nil {
			t.Errorf("Restore accepted %d bytes (want %d)", n, len(good))
			continue
		}
		if !strings.Contains(err.Error(), "serial0") {
			t.Errorf("error %q does not name the device", err)
		}
	}
	for _, rx := range []uint16{SerialRXSize + 1, 0xffff} {
		s := SerialState{RXLen: rx}
		b, err := encodeFixed("t", &s)
		if err != nil {
			t.Fatal(err)
		}
		if err := u.s.Restore(b); err == nil || !strings.Contains(err.Error(), "RXLen") {
			t.Errorf("Restore with RXLen %d: err = %v, want one naming RXLen", rx, err)
		}
	}
	// A rejected state leaves the device as it was.
	u.outb(uartSCR, 0x42)
	u.s.Restore(good[:10])
	if got := u.in(uartSCR); got != 0x42 {
		t.Errorf("SCR = %#x after a rejected Restore, want 0x42", got)
	}
	// RXLen == SerialRXSize is valid.
	s := SerialState{RXLen: SerialRXSize, LCR: 3}
	b, _ := encodeFixed("t", &s)
	if err := u.s.Restore(b); err != nil {
		t.Errorf("Restore with a full RX buffer: %v", err)
	}
}

// TestSerialRestoreLowersLine restores a state with no interrupt pending
// into a UART whose interrupt line is high: the line must go low, or the
// (edge-triggered) pin never sees the next rising edge.
func TestSerialRestoreLowersLine(t *testing.T) {
	idle, err := newUART(t).s.Save()
	if err != nil {
		t.Fatal(err)
	}
	u := newUART(t)
	u.outb(uartIER, ierTHRE)
	u.expectIRQ("THRE enabled", true)
	if err := u.s.Restore(idle); err != nil {
		t.Fatal(err)
	}
	if u.irq.level() {
		t.Errorf("known bug: IRQ line still high after restoring a state with no interrupt pending (transitions %v)", u.irq.take())
	}
}

// failingWriter fails every write while fail is set.
type failingWriter struct{ fail bool }

func (w *failingWriter) Write(p []byte) (int, error) {
	if w.fail {
		return 0, errors.New("console gone")
	}
	return len(p), nil
}

// TestSerialOutputErrors: guest output that cannot be written is logged
// once when the console starts failing and once when it works again.
func TestSerialOutputErrors(t *testing.T) {
	logs := captureLogs(t)
	out := &failingWriter{fail: true}
	u := NewSerial("serial0", out, &fakeIRQ{})
	for _, c := range []byte("lost") {
		u.PortWrite(COM1Base+uartRBR, []byte{c})
	}
	checkLogs(t, logs(), "serial0", "console gone")
	out.fail = false
	u.PortWrite(COM1Base+uartRBR, []byte{'!'})
	checkLogs(t, logs(), "serial0", "works again")
}
