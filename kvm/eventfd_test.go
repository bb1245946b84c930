package kvm

import (
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func newEventfd(t *testing.T) int {
	t.Helper()
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatalf("eventfd: %v", err)
	}
	t.Cleanup(func() { unix.Close(efd) })
	return efd
}

// eventCount reads and resets an eventfd's counter (0 when it was not
// signalled).
func eventCount(t *testing.T, efd int) uint64 {
	t.Helper()
	var buf [8]byte
	_, err := unix.Read(efd, buf[:])
	if errors.Is(err, unix.EAGAIN) {
		return 0
	}
	if err != nil {
		t.Fatalf("read eventfd: %v", err)
	}
	return binary.LittleEndian.Uint64(buf[:])
}

func signal(t *testing.T, efd int) {
	t.Helper()
	if _, err := unix.Write(efd, binary.LittleEndian.AppendUint64(nil, 1)); err != nil {
		t.Fatalf("write eventfd: %v", err)
	}
}

// TestIOEventFDMMIODatamatch: a virtio-mmio style doorbell. Two
// ioeventfds on one 4-byte MMIO register match the values 0 and 1 (queue
// indexes): guest stores of those values signal their eventfd without an
// exit, a store of another value or of another width exits as MMIO, and
// after DeassignIOEventFD the matched value exits too.
func TestIOEventFDMMIODatamatch(t *testing.T) {
	sys := requireKVM(t)
	if n, _ := sys.CheckExtension(CapIOEventFD); n == 0 {
		t.Skip("no KVM_CAP_IOEVENTFD")
	}
	tv := newTestVM(t, sys, vmOptions{})
	const mmioBase = 4 << 20 // first GPA past slot 0, mapped by PD entry 2
	const notify = mmioBase + 0x50
	binary.LittleEndian.PutUint64(tv.mem[pdAddr+8*2:], mmioBase|ptePresent|pteWritable|ptePS|pteAccessed|pteDirty)
	q0, q1 := newEventfd(t), newEventfd(t)
	ev0 := IOEvent{FD: q0, Addr: notify, Len: 4, Match: true, Data: 0}
	ev1 := IOEvent{FD: q1, Addr: notify, Len: 4, Match: true, Data: 1}
	for _, e := range []IOEvent{ev0, ev1} {
		if err := tv.vm.IOEventFD(e); err != nil {
			t.Fatalf("IOEventFD(%v): %v", e, err)
		}
	}
	dup := ev1
	dup.FD = newEventfd(t)
	if err := tv.vm.IOEventFD(dup); !errors.Is(err, unix.EEXIST) {
		t.Errorf("second ioeventfd on the same register and value: %v, want EEXIST", err)
	}

	a := newAsm()
	a.i("mov dword [0x400050], 1 ", 0xC7, 0x04, 0x25, 0x50, 0x00, 0x40, 0x00, 0x01, 0x00, 0x00, 0x00)
	a.i("mov dword [0x400050], 0 ", 0xC7, 0x04, 0x25, 0x50, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00)
	a.i("mov dword [0x400050], 1 ", 0xC7, 0x04, 0x25, 0x50, 0x00, 0x40, 0x00, 0x01, 0x00, 0x00, 0x00)
	a.i("mov dword [0x400050], 7 ", 0xC7, 0x04, 0x25, 0x50, 0x00, 0x40, 0x00, 0x07, 0x00, 0x00, 0x00)
	a.i("mov word [0x400050], 1  ", 0x66, 0xC7, 0x04, 0x25, 0x50, 0x00, 0x40, 0x00, 0x01, 0x00)
	a.i("mov edx, portDone       ", 0xBA, portDone, 0x00, 0x00, 0x00)
	a.i("out dx, al              ", 0xEE)
	a.i("mov dword [0x400050], 1 ", 0xC7, 0x04, 0x25, 0x50, 0x00, 0x40, 0x00, 0x01, 0x00, 0x00, 0x00)
	a.i("mov dword [0x400050], 0 ", 0xC7, 0x04, 0x25, 0x50, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00)
	a.i("out dx, al              ", 0xEE)
	a.label("end")
	a.jmp8("jmp $                ", 0xEB, "end")
	tv.load(a.bytes(t))

	expectMMIO := func(what string, data []byte) {
		t.Helper()
		reason := tv.runExit(tv.cpu, tv.r, 10*time.Second)
		if reason != ExitMMIO {
			t.Fatalf("%s: %s, want an MMIO exit", what, describeExit(tv.cpu, reason))
		}
		m := tv.cpu.MMIO()
		if m.Addr != notify || !m.Write || string(m.Data) != string(data) {
			t.Fatalf("%s: MMIO addr %#x write %v data %x; want write of %x at %#x", what, m.Addr, m.Write, m.Data, data, uint64(notify))
		}
	}
	// The first three stores match: the first exit is the unmatched value.
	expectMMIO("store of 7", []byte{7, 0, 0, 0})
	expectMMIO("16-bit store of 1", []byte{1, 0})
	if io := tv.runIO(tv.cpu, tv.r); io.Port != portDone {
		t.Fatalf("exit at port %#x, want %#x", io.Port, portDone)
	}
	if n0, n1 := eventCount(t, q0), eventCount(t, q1); n0 != 1 || n1 != 2 {
		t.Errorf("eventfd counters: queue 0 %d, queue 1 %d; want 1 and 2", n0, n1)
	}

	if err := tv.vm.DeassignIOEventFD(ev1); err != nil {
		t.Fatalf("DeassignIOEventFD(%v): %v", ev1, err)
	}
	if err := tv.vm.DeassignIOEventFD(ev1); !errors.Is(err, unix.ENOENT) {
		t.Errorf("second deassign: %v, want ENOENT", err)
	}
	expectMMIO("store of 1 after deassign", []byte{1, 0, 0, 0})
	if io := tv.runIO(tv.cpu, tv.r); io.Port != portDone {
		t.Fatalf("exit at port %#x, want %#x", io.Port, portDone)
	}
	if n0, n1 := eventCount(t, q0), eventCount(t, q1); n0 != 1 || n1 != 0 {
		t.Errorf("after deassign: queue 0 %d, queue 1 %d; want 1 and 0", n0, n1)
	}
	// The slot is free again: the same ioeventfd can be assigned anew.
	if err := tv.vm.IOEventFD(ev1); err != nil {
		t.Errorf("reassign after deassign: %v", err)
	}
	if err := tv.vm.DeassignIOEventFD(ev0); err != nil {
		t.Errorf("DeassignIOEventFD(%v): %v", ev0, err)
	}
}

// irqState reads the in-kernel PIC master's IRR and the IOAPIC's irr (the
// levels of its inputs: struct kvm_ioapic_state, irr at byte 16).
func irqState(t *testing.T, vm *VM) (pic byte, ioapic uint32) {
	t.Helper()
	c, err := vm.IRQChip(IRQChipPICMaster)
	if err != nil {
		t.Fatal(err)
	}
	a, err := vm.IRQChip(IRQChipIOAPIC)
	if err != nil {
		t.Fatal(err)
	}
	return c.Chip[1], binary.LittleEndian.Uint32(a.Chip[16:])
}

// waitIRQ polls (irqfd injection runs in a kernel work item) until cond
// holds of the PIC IRR and IOAPIC irr, or fails after 2 s.
func waitIRQ(t *testing.T, vm *VM, what string, cond func(pic byte, ioapic uint32) bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		pic, ioapic := irqState(t, vm)
		if cond(pic, ioapic) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: PIC IRR %#x, IOAPIC irr %#x", what, pic, ioapic)
		}
		time.Sleep(time.Millisecond)
	}
}

func newIRQChipVM(t *testing.T) (*System, *VM) {
	sys := requireKVM(t)
	if n, _ := sys.CheckExtension(CapIRQFD); n == 0 {
		t.Skip("no KVM_CAP_IRQFD")
	}
	vm, err := sys.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Close() })
	if err := vm.CreateIRQChip(); err != nil {
		t.Fatal(err)
	}
	return sys, vm
}

// TestIRQFDPulseAndDeassign: a write to a plain irqfd is a pulse (the
// PIC latches the edge, the IOAPIC input is low again afterwards); an
// eventfd serves one GSI at a time (EBUSY); after DeassignIRQFD a write
// raises nothing and the eventfd can be assigned again.
func TestIRQFDPulseAndDeassign(t *testing.T) {
	_, vm := newIRQChipVM(t)
	const gsi = 3
	efd := newEventfd(t)
	if err := vm.IRQFD(efd, gsi); err != nil {
		t.Fatalf("IRQFD: %v", err)
	}
	if err := vm.IRQFD(efd, gsi); !errors.Is(err, unix.EBUSY) {
		t.Errorf("assigning the same eventfd twice: %v, want EBUSY", err)
	}
	signal(t, efd)
	waitIRQ(t, vm, "irqfd write did not reach the PIC", func(pic byte, _ uint32) bool { return pic&(1<<gsi) != 0 })
	if _, ioapic := irqState(t, vm); ioapic&(1<<gsi) != 0 {
		t.Errorf("IOAPIC input %d still high after an irqfd pulse (irr %#x)", gsi, ioapic)
	}

	const other = 6
	efd2 := newEventfd(t)
	if err := vm.IRQFD(efd2, other); err != nil {
		t.Fatalf("IRQFD: %v", err)
	}
	if err := vm.DeassignIRQFD(efd2, other); err != nil {
		t.Fatalf("DeassignIRQFD: %v", err)
	}
	signal(t, efd2)
	time.Sleep(50 * time.Millisecond) // an injection would have run by now
	if pic, _ := irqState(t, vm); pic&(1<<other) != 0 {
		t.Errorf("write to a deassigned irqfd raised GSI %d (PIC IRR %#x)", other, pic)
	}
	if err := vm.IRQFD(efd2, other); err != nil {
		t.Errorf("reassign after deassign: %v", err)
	}
	if err := vm.DeassignIRQFD(efd2, other); err != nil {
		t.Errorf("DeassignIRQFD: %v", err)
	}
}

// TestIRQFDResample: a resampling irqfd asserts its GSI and holds it (the
// IOAPIC input stays high: it waits for an EOI, which a VM without vCPUs
// never sends); deassigning the last resampler of the GSI lowers it.
func TestIRQFDResample(t *testing.T) {
	sys, vm := newIRQChipVM(t)
	if n, _ := sys.CheckExtension(CapIRQFDResample); n == 0 {
		t.Skip("no KVM_CAP_IRQFD_RESAMPLE")
	}
	const gsi = 7
	efd, rfd := newEventfd(t), newEventfd(t)
	if err := vm.IRQFDResample(efd, rfd, gsi); err != nil {
		t.Fatalf("IRQFDResample: %v", err)
	}
	signal(t, efd)
	waitIRQ(t, vm, "resampling irqfd did not assert its GSI", func(_ byte, ioapic uint32) bool { return ioapic&(1<<gsi) != 0 })
	time.Sleep(20 * time.Millisecond)
	if pic, ioapic := irqState(t, vm); ioapic&(1<<gsi) == 0 || pic&(1<<gsi) == 0 {
		t.Errorf("resampled GSI %d not held: PIC IRR %#x, IOAPIC irr %#x", gsi, pic, ioapic)
	}
	if n := eventCount(t, rfd); n != 0 {
		t.Errorf("resamplefd signalled %d times without an EOI", n)
	}
	if err := vm.DeassignIRQFD(efd, gsi); err != nil {
		t.Fatalf("DeassignIRQFD: %v", err)
	}
	waitIRQ(t, vm, "deassigning the resampler did not lower the GSI", func(_ byte, ioapic uint32) bool { return ioapic&(1<<gsi) == 0 })
}
