package vmm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log"
	"os"
	"sync"
	"sync/atomic"

	"github.com/ferryvmm/ferry/devices"
	"github.com/ferryvmm/ferry/kvm"
	"golang.org/x/sys/unix"
)

// The virtio-mmio devices' interrupts and queue notifies through the
// in-kernel irqchip: an irqfd per device raises its interrupt, and an
// ioeventfd per queue takes the driver's QueueNotify write without a vCPU
// exit to user space; a goroutine per queue then processes the queue.
// Without KVM_CAP_IRQFD the interrupt goes through KVM_IRQ_LINE
// (irqLine), and without KVM_CAP_IOEVENTFD the notify is an MMIO exit
// handled on the vCPU thread (VirtioMMIO.MMIOWrite), as before.

// newEventfd makes a non-blocking eventfd.
func newEventfd(what string) (int, error) {
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return -1, fmt.Errorf("%s: eventfd: %w", what, err)
	}
	return efd, nil
}

// signalEventfd adds 1 to an eventfd's counter. EAGAIN (the counter is at
// its maximum) still leaves it signalled.
func signalEventfd(efd int) error {
	var one [8]byte
	binary.LittleEndian.PutUint64(one[:], 1)
	for {
		_, err := unix.Write(efd, one[:])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil && !errors.Is(err, unix.EAGAIN) {
			return fmt.Errorf("signal eventfd: %w", err)
		}
		return nil
	}
}

// readEventfd takes an eventfd's counter (resetting it): 0 when it was
// not signalled.
func readEventfd(efd int) (uint64, error) {
	var buf [8]byte
	for {
		_, err := unix.Read(efd, buf[:])
		switch {
		case err == nil:
			return binary.LittleEndian.Uint64(buf[:]), nil
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			return 0, nil
		}
		return 0, fmt.Errorf("read eventfd: %w", err)
	}
}

// irqfdLine is a virtio device's interrupt through an irqfd.
//
// Trigger mode: the MP table (mptable.go) announces ISA IRQs 0-15, ours
// 5..12 included, with "conforming" polarity and trigger, which for the
// ISA bus means active high and edge triggered, and Linux programs those
// IOAPIC pins so (seen on the guest image with a disk: pin 5 unmasked,
// vector 0x21, edge, active high); the PIC, which KVM's default routing
// also feeds from GSIs 0-15, is edge triggered too. An edge-triggered
// input reacts to rising edges only. A plain irqfd, where each write
// makes KVM assert and at once deassert the GSI, is one edge per write,
// which is all the guest can see: holding the line high from the raise
// to the driver's InterruptACK, as KVM_IRQ_LINE did, made that same
// single edge (KVM's IOAPIC coalesces a raise of a line that is already
// high). A resampling irqfd (KVM_IRQFD_FLAG_RESAMPLE) is for level
// triggered inputs and would cost here: it holds the GSI until the
// guest's EOI, then wants user space to re-assert it while
// InterruptStatus is still set; but Linux acknowledges an edge
// interrupt at the local APIC (the EOI) before it runs the handler that
// reads and acknowledges InterruptStatus, so each interrupt would be
// followed by a second, spurious one, and every EOI would exit to KVM.
// Real level semantics would mean announcing the pins level triggered,
// a guest-visible change this does not make.
//
// The transport keeps its level semantics (InterruptStatus stays set
// until the driver acknowledges it, and its handler reads it): SetLevel
// tracks that level and writes the irqfd on each low-to-high transition,
// the edges the KVM_IRQ_LINE line had. A raise while the level is high
// makes no edge, as it made none on the line; the driver acknowledges
// before it looks at its rings, so it still sees the buffers it brought.
type irqfdLine struct {
	vm  *kvm.VM
	gsi uint32

	// mu guards efd and high: the device sets its level from whichever
	// goroutine processes it, and the machine closes the line.
	mu   sync.Mutex
	efd  int // -1 once closed
	high bool
}

func newIRQFDLine(vm *kvm.VM, gsi uint32) (*irqfdLine, error) {
	efd, err := newEventfd(fmt.Sprintf("irqfd gsi %d", gsi))
	if err != nil {
		return nil, err
	}
	if err := vm.IRQFD(efd, gsi); err != nil {
		unix.Close(efd)
		return nil, err
	}
	return &irqfdLine{vm: vm, gsi: gsi, efd: efd}, nil
}

// SetLevel implements devices.IRQLine.
func (l *irqfdLine) SetLevel(high bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	rise := high && !l.high
	l.high = high
	if !rise || l.efd < 0 {
		return nil
	}
	return signalEventfd(l.efd)
}

func (l *irqfdLine) close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.efd < 0 {
		return nil
	}
	err := l.vm.DeassignIRQFD(l.efd, l.gsi)
	unix.Close(l.efd)
	l.efd = -1
	return err
}

// virtioNotifier serves the ioeventfds of one virtio-mmio device's
// queues: one goroutine per queue waits for its eventfd on Go's poller
// and, holding mu, takes the eventfd's counter and processes the queue.
type virtioNotifier struct {
	dev *devices.VirtioMMIO
	vm  *kvm.VM // nil: eventfds not registered with KVM (tests)

	// mu is held while a queue's eventfd is read and the queue processed
	// (VirtioMMIO.Notify, which takes the transport lock inside it).
	mu     sync.Mutex
	paused bool // take nothing: the VM is paused (or not started yet)
	closed bool
	queues []*notifyQueue
	wg     sync.WaitGroup
}

type notifyQueue struct {
	index    int
	ev       kvm.IOEvent
	file     *os.File // owns ev.FD; on Go's poller
	assigned bool     // registered with KVM
	taken    atomic.Uint64
}

// newVirtioNotifier gives each queue of dev an eventfd, registered (with
// vm) as an ioeventfd on the device's QueueNotify register at base
// matching the queue's index, and starts serving them. The notifier
// starts paused: resume, when the VM starts, processes every ready queue
// once and lets the goroutines take notifies.
func newVirtioNotifier(vm *kvm.VM, dev *devices.VirtioMMIO, base uint64) (*virtioNotifier, error) {
	n := &virtioNotifier{dev: dev, vm: vm, paused: true}
	for q := 0; q < dev.NumQueues(); q++ {
		what := fmt.Sprintf("%s queue %d notify", dev.Name(), q)
		efd, err := newEventfd(what)
		if err != nil {
			n.close()
			return nil, err
		}
		nq := &notifyQueue{
			index: q,
			ev:    kvm.IOEvent{FD: efd, Addr: base + devices.VirtioMMIOQueueNotify, Len: 4, Match: true, Data: uint64(q)},
			file:  os.NewFile(uintptr(efd), what), // non-blocking: on the poller
		}
		n.queues = append(n.queues, nq)
		if vm != nil {
			if err := vm.IOEventFD(nq.ev); err != nil {
				n.close()
				return nil, fmt.Errorf("%s: %w", what, err)
			}
			nq.assigned = true
		}
	}
	for _, q := range n.queues {
		n.wg.Add(1)
		go n.serve(q)
	}
	return n, nil
}

// serve is one queue's goroutine. The poller calls the function whenever
// the eventfd becomes readable, and it always asks to wait again, until
// close closes the file.
func (n *virtioNotifier) serve(q *notifyQueue) {
	defer n.wg.Done()
	rc, err := q.file.SyscallConn()
	if err != nil {
		log.Printf("%s: %v", q.file.Name(), err)
		return
	}
	rc.Read(func(uintptr) bool {
		n.mu.Lock()
		defer n.mu.Unlock()
		if !n.paused {
			n.take(q)
		}
		return false
	})
}

// take processes q if its eventfd was signalled. n.mu held, not closed.
func (n *virtioNotifier) take(q *notifyQueue) {
	c, err := readEventfd(q.ev.FD)
	if err != nil {
		log.Printf("%s: %v", q.file.Name(), err)
		return
	}
	if c == 0 {
		return
	}
	q.taken.Add(1)
	n.dev.Notify(q.index) // once, however many notifies the counter holds
}

// pause drains the notifier. Machine.Pause calls it once every vCPU is
// parked, before anything reads device state or guest memory for a save.
//
// Ordering rules (they make the saved queue positions final, with no
// request lost or done twice):
//  1. The vCPUs are out of KVM_RUN first, so no guest write can signal an
//     eventfd any more: from here the counters only go down.
//  2. Taking mu waits for a goroutine that is reading an eventfd or
//     processing a queue: a Process in progress finishes.
//  3. paused is set under that same mu: the goroutines take nothing more
//     (they check it under mu before reading their eventfd).
//  4. Still under mu, every eventfd is read and a signalled queue
//     processed: a notify the guest wrote before it was parked, that no
//     goroutine had taken yet, is done now, once (reading resets the
//     counter, and Process only takes chains past the saved position).
//  5. Only then do the other devices pause and the state get saved.
//
// resume (before any vCPU runs again, and at Start, also after a
// restore) processes every ready queue once: a notify that was in flight
// on the source of a migration or snapshot is in the guest's avail ring,
// which the device state does not cover, so it is taken there.
func (n *virtioNotifier) pause() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return
	}
	n.paused = true
	for _, q := range n.queues {
		n.take(q)
	}
}

// resume processes every ready queue once and lets the goroutines take
// notifies again. The vCPUs are still parked (or not started).
func (n *virtioNotifier) resume() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return
	}
	for _, q := range n.queues {
		if _, err := readEventfd(q.ev.FD); err != nil { // Kick covers it
			log.Printf("%s: %v", q.file.Name(), err)
		}
	}
	n.dev.Kick()
	n.paused = false
}

// close stops taking notifies, deassigns the ioeventfds, closes the
// eventfds and waits for the goroutines. No Process runs after it.
func (n *virtioNotifier) close() error {
	n.mu.Lock()
	n.paused, n.closed = true, true
	n.mu.Unlock()
	var errs []error
	for _, q := range n.queues {
		if q.assigned {
			errs = append(errs, n.vm.DeassignIOEventFD(q.ev))
			q.assigned = false
		}
		q.file.Close() // ends the goroutine's wait (after it released mu)
	}
	n.wg.Wait()
	return errors.Join(errs...)
}

// notifies is how many notifies each queue took through its eventfd.
func (n *virtioNotifier) notifies() []uint64 {
	var c []uint64
	for _, q := range n.queues {
		c = append(c, q.taken.Load())
	}
	return c
}
