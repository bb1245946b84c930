package devices

import (
	"fmt"
	"io"
	"sync"
)

// COM1 is the first PC serial port: ports 0x3f8-0x3ff, ISA IRQ 4.
const (
	COM1Base = 0x3f8
	COM1IRQ  = 4
)

// UART register offsets and bits (8250/16550).
const (
	uartRBR = 0 // receive buffer (read), THR transmit (write), DLL with DLAB
	uartIER = 1 // interrupt enable, DLM with DLAB
	uartIIR = 2 // interrupt identification (read), FCR FIFO control (write)
	uartLCR = 3
	uartMCR = 4
	uartLSR = 5
	uartMSR = 6
	uartSCR = 7

	ierRDA  = 0x01 // received data available
	ierTHRE = 0x02 // transmit holding register empty
	ierRLS  = 0x04 // receiver line status

	iirNone = 0x01
	iirTHRE = 0x02
	iirRDA  = 0x04
	iirFIFO = 0xc0 // FIFOs enabled

	lcrDLAB = 0x80

	mcrDTR  = 0x01
	mcrRTS  = 0x02
	mcrOUT1 = 0x04
	mcrOUT2 = 0x08
	mcrLoop = 0x10

	lsrDR   = 0x01
	lsrTHRE = 0x20
	lsrTEMT = 0x40

	msrCTS = 0x10
	msrDSR = 0x20
	msrRI  = 0x40
	msrDCD = 0x80
)

// SerialRXSize is how many received bytes the UART buffers for the guest.
const SerialRXSize = 1024

// SerialState is the whole state of the UART.
type SerialState struct {
	DLL, DLM, IER, FCR, LCR, MCR, MSR, SCR uint8
	THREPending                            uint8 // THR-empty interrupt raised and not yet acknowledged
	LSRErrors                              uint8 // overrun etc. (cleared on LSR read)
	RXLen                                  uint16
	RX                                     [SerialRXSize]byte // RX[0:RXLen], oldest first
}

// Serial is an 8250/16550A UART: guest output goes to out, bytes given to
// Input reach the guest, and the interrupt output drives irq.
type Serial struct {
	name string
	// mu guards every field below but name and out's own state: the
	// vCPU threads (register accesses) and the console's input
	// goroutine (Input) share the UART.
	mu   sync.Mutex
	room *sync.Cond // on mu; signalled when the guest drains RX
	s    SerialState
	out  io.Writer
	irq  irqOut
	high bool // current level of the interrupt output
	shut bool
	// outFailing: writing guest output failed last time (logged once).
	outFailing bool
}

// NewSerial creates a UART writing guest output to out.
func NewSerial(name string, out io.Writer, irq IRQLine) *Serial {
	u := &Serial{name: name, out: out, irq: irqOut{line: irq}}
	u.room = sync.NewCond(&u.mu)
	u.reset()
	return u
}

func (u *Serial) reset() {
	u.s = SerialState{LCR: 0x03, MCR: mcrOUT2, DLL: 0x0c}
}

// Name implements Device.
func (u *Serial) Name() string { return u.name }

// PortRead implements PortDevice.
func (u *Serial) PortRead(port uint16, data []byte) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for i := range data {
		data[i] = 0
	}
	data[0] = u.read(port & 7)
	u.updateIRQ()
}

// PortWrite implements PortDevice.
func (u *Serial) PortWrite(port uint16, data []byte) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.write(port&7, data[0])
	u.updateIRQ()
}

func (u *Serial) read(reg uint16) uint8 {
	s := &u.s
	switch reg {
	case uartRBR:
		if s.LCR&lcrDLAB != 0 {
			return s.DLL
		}
		if s.RXLen == 0 {
			return 0
		}
		b := s.RX[0]
		copy(s.RX[:], s.RX[1:s.RXLen])
		s.RXLen--
		u.room.Broadcast()
		return b
	case uartIER:
		if s.LCR&lcrDLAB != 0 {
			return s.DLM
		}
		return s.IER
	case uartIIR:
		iir := u.iir()
		if iir == iirTHRE {
			s.THREPending = 0 // reading IIR acknowledges THR empty
		}
		if s.FCR&1 != 0 {
			iir |= iirFIFO
		}
		return iir
	case uartLCR:
		return s.LCR
	case uartMCR:
		return s.MCR
	case uartLSR:
		lsr := uint8(lsrTHRE|lsrTEMT) | s.LSRErrors
		if s.RXLen > 0 {
			lsr |= lsrDR
		}
		s.LSRErrors = 0
		return lsr
	case uartMSR:
		if s.MCR&mcrLoop != 0 {
			// Loopback: the modem outputs come back as inputs.
			var m uint8
			if s.MCR&mcrRTS != 0 {
				m |= msrCTS
			}
			if s.MCR&mcrDTR != 0 {
				m |= msrDSR
			}
			if s.MCR&mcrOUT1 != 0 {
				m |= msrRI
			}
			if s.MCR&mcrOUT2 != 0 {
				m |= msrDCD
			}
			return m
		}
		return s.MSR
	case uartSCR:
		return s.SCR
	}
	return 0
}

func (u *Serial) write(reg uint16, v uint8) {
	s := &u.s
	switch reg {
	case uartRBR:
		if s.LCR&lcrDLAB != 0 {
			s.DLL = v
			return
		}
		if s.MCR&mcrLoop != 0 {
			u.push([]byte{v})
		} else if u.out != nil {
			_, err := u.out.Write([]byte{v})
			u.outputResult(err)
		}
		// The byte leaves at once: THR is empty again.
		s.THREPending = 1
	case uartIER:
		if s.LCR&lcrDLAB != 0 {
			s.DLM = v
			return
		}
		// Enabling the THR-empty interrupt while THR is empty raises it.
		if v&ierTHRE != 0 && s.IER&ierTHRE == 0 {
			s.THREPending = 1
		}
		s.IER = v & 0x0f
	case uartIIR:
		s.FCR = v
		if v&0x02 != 0 { // clear receive FIFO
			s.RXLen = 0
			u.room.Broadcast()
		}
	case uartLCR:
		s.LCR = v
	case uartMCR:
		s.MCR = v & 0x1f
	case uartSCR:
		s.SCR = v
	}
}

// iir returns the highest-priority pending interrupt.
func (u *Serial) iir() uint8 {
	s := &u.s
	switch {
	case s.IER&ierRDA != 0 && s.RXLen > 0:
		return iirRDA
	case s.IER&ierTHRE != 0 && s.THREPending != 0:
		return iirTHRE
	}
	return iirNone
}

// updateIRQ drives the interrupt output as a level; the IOAPIC pin is edge
// triggered for ISA devices and sees each rising edge.
func (u *Serial) updateIRQ() {
	high := u.iir() != iirNone
	if high == u.high {
		return
	}
	u.high = high
	u.irq.set(u.name, high)
}

// push appends to the receive buffer as much as fits and returns the count.
func (u *Serial) push(b []byte) int {
	s := &u.s
	n := copy(s.RX[s.RXLen:], b)
	s.RXLen += uint16(n)
	if n < len(b) {
		s.LSRErrors |= 0x02 // overrun
	}
	return n
}

// Input hands bytes to the guest, blocking while the receive buffer is full
// (the guest has not read it yet). It returns early only after Close.
func (u *Serial) Input(b []byte) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for len(b) > 0 && !u.shut {
		free := SerialRXSize - int(u.s.RXLen)
		if free == 0 {
			u.room.Wait()
			continue
		}
		if free > len(b) {
			free = len(b)
		}
		u.push(b[:free])
		b = b[free:]
		u.updateIRQ()
	}
}

// Close wakes an Input blocked on a full buffer.
func (u *Serial) Close() {
	u.mu.Lock()
	u.shut = true
	u.room.Broadcast()
	u.mu.Unlock()
}

// check refuses a state the UART cannot be in: IER and MCR keep only the
// bits write stores, MSR is never set, THREPending is a flag, LSRErrors
// holds only the overrun bit push sets, RXLen fits the buffer.
func (s *SerialState) check(name string) error {
	switch {
	case s.RXLen > SerialRXSize:
		return errBadField(name, "RXLen", int(s.RXLen))
	case s.IER&^0x0f != 0:
		return errBadField(name, "IER", int(s.IER))
	case s.MCR&^0x1f != 0:
		return errBadField(name, "MCR", int(s.MCR))
	case s.MSR != 0:
		return errBadField(name, "MSR", int(s.MSR))
	case s.THREPending > 1:
		return errBadField(name, "THREPending", int(s.THREPending))
	case s.LSRErrors&^0x02 != 0:
		return errBadField(name, "LSRErrors", int(s.LSRErrors))
	}
	return nil
}

// outputResult logs a failing console once, when it starts to fail, and
// once when it works again: the guest cannot be told, and its output is
// lost meanwhile.
func (u *Serial) outputResult(err error) {
	switch {
	case err != nil && !u.outFailing:
		logf("%s: writing guest output failed, output is lost: %v", u.name, err)
	case err == nil && u.outFailing:
		logf("%s: writing guest output works again", u.name)
	}
	u.outFailing = err != nil
}

// Save implements Stateful.
func (u *Serial) Save() ([]byte, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return encodeFixed(u.name, &u.s)
}

// Restore implements Stateful.
func (u *Serial) Restore(data []byte) error {
	var s SerialState
	if err := decodeFixed(u.name, data, &s); err != nil {
		return err
	}
	if err := s.check(u.name); err != nil {
		return err
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	u.s = s
	// Drive the line to the restored level, whatever it was before.
	u.high = u.iir() != iirNone
	if err := u.irq.drive(u.high); err != nil {
		return fmt.Errorf("%s: restored, but setting its interrupt line failed: %w", u.name, err)
	}
	return nil
}
