package kvm

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestMMIODecoding: guest accesses to guest-physical addresses with no
// memory slot (4 MiB up, mapped by an extra 2 MiB page-table entry) exit
// with KVM_EXIT_MMIO; VCPU.MMIO decodes address, length and direction, and
// the data the host puts in for a read reaches the guest.
func TestMMIODecoding(t *testing.T) {
	sys := requireKVM(t)
	tv := newTestVM(t, sys, vmOptions{})
	const mmioBase = 4 << 20 // first GPA past slot 0
	binary.LittleEndian.PutUint64(tv.mem[pdAddr+8*2:], mmioBase|ptePresent|pteWritable|ptePS|pteAccessed|pteDirty)
	a := newAsm()
	a.i("mov dword [0x400010], 0x11223344", 0xC7, 0x04, 0x25, 0x10, 0x00, 0x40, 0x00, 0x44, 0x33, 0x22, 0x11)
	a.i("mov eax, [0x400020]              ", 0x8B, 0x04, 0x25, 0x20, 0x00, 0x40, 0x00)
	a.i("mov [0x400030], ax               ", 0x66, 0x89, 0x04, 0x25, 0x30, 0x00, 0x40, 0x00)
	a.i("mov edx, portDone                ", 0xBA, portDone, 0x00, 0x00, 0x00)
	a.i("out dx, eax                      ", 0xEF)
	a.label("end")
	a.jmp8("jmp $                         ", 0xEB, "end")
	tv.load(a.bytes(t))

	expect := func(what string, addr uint64, write bool, data []byte) MMIOExit {
		t.Helper()
		reason := tv.runExit(tv.cpu, tv.r, 10*time.Second)
		if reason != ExitMMIO {
			t.Fatalf("%s: %s, want MMIO", what, describeExit(tv.cpu, reason))
		}
		m := tv.cpu.MMIO()
		if m.Addr != addr || m.Write != write || len(m.Data) != len(data) || (write && !bytes.Equal(m.Data, data)) {
			t.Errorf("%s: addr %#x write %v data %x; want addr %#x write %v len %d data %x", what, m.Addr, m.Write, m.Data, addr, write, len(data), data)
		}
		return m
	}
	expect("store", mmioBase+0x10, true, []byte{0x44, 0x33, 0x22, 0x11})
	m := expect("load", mmioBase+0x20, false, make([]byte, 4))
	copy(m.Data, []byte{0xde, 0xc0, 0xad, 0x0b}) // what the guest loads
	expect("16-bit store of the loaded value", mmioBase+0x30, true, []byte{0xde, 0xc0})
	io := tv.runIO(tv.cpu, tv.r)
	if got := binary.LittleEndian.Uint32(io.Data); got != 0x0badc0de {
		t.Errorf("guest loaded %#x from MMIO, want 0xbadc0de", got)
	}
}

// TestIOEventFD: an OUT to a port registered with IOEventFD signals the
// eventfd and does not exit to user space.
func TestIOEventFD(t *testing.T) {
	sys := requireKVM(t)
	tv := newTestVM(t, sys, vmOptions{})
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(efd)
	if err := tv.vm.IOEventFD(IOEvent{FD: efd, Addr: 0x20, Len: 1, PIO: true}); err != nil {
		t.Fatalf("IOEventFD: %v", err)
	}
	a := newAsm()
	a.i("mov edx, 0x20      ", 0xBA, 0x20, 0x00, 0x00, 0x00)
	a.i("out dx, al         ", 0xEE)
	a.i("out dx, al         ", 0xEE)
	a.i("mov edx, portDone  ", 0xBA, portDone, 0x00, 0x00, 0x00)
	a.i("out dx, al         ", 0xEE)
	a.label("end")
	a.jmp8("jmp $           ", 0xEB, "end")
	tv.load(a.bytes(t))
	if io := tv.runIO(tv.cpu, tv.r); io.Port != portDone {
		t.Fatalf("first exit at port %#x, want %#x (the eventfd port must not exit)", io.Port, portDone)
	}
	var buf [8]byte
	if _, err := unix.Read(efd, buf[:]); err != nil {
		t.Fatalf("read eventfd: %v", err)
	}
	if n := binary.LittleEndian.Uint64(buf[:]); n != 2 {
		t.Errorf("eventfd counter %d, want 2", n)
	}
}

// TestIRQLineAndIRQFD: raising GSI 5 with IRQLine and GSI 4 through an
// irqfd sets the corresponding IRR bits of the in-kernel master PIC (which
// latches an edge whether or not the line is masked).
func TestIRQLineAndIRQFD(t *testing.T) {
	sys := requireKVM(t)
	vm, err := sys.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	if err := vm.CreateIRQChip(); err != nil {
		t.Fatal(err)
	}
	irr := func() byte {
		c, err := vm.IRQChip(IRQChipPICMaster)
		if err != nil {
			t.Fatal(err)
		}
		return c.Chip[1]
	}
	if irr() != 0 {
		t.Fatalf("PIC IRR %#x at creation", irr())
	}
	if err := vm.IRQLine(5, true); err != nil {
		t.Fatal(err)
	}
	if err := vm.IRQLine(5, false); err != nil {
		t.Fatal(err)
	}
	if irr()&(1<<5) == 0 {
		t.Errorf("IRQLine(5) did not reach the PIC: IRR %#x", irr())
	}

	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(efd)
	if err := vm.IRQFD(efd, 4); err != nil {
		t.Fatalf("IRQFD: %v", err)
	}
	if _, err := unix.Write(efd, binary.LittleEndian.AppendUint64(nil, 1)); err != nil {
		t.Fatal(err)
	}
	// irqfd injection may happen from a kernel work item: poll briefly.
	deadline := time.Now().Add(2 * time.Second)
	for irr()&(1<<4) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("irqfd write did not raise GSI 4: PIC IRR %#x", irr())
		}
		time.Sleep(time.Millisecond)
	}
}

// TestVMSetupIoctls: the Intel set-up ioctls and the TSC frequency.
func TestVMSetupIoctls(t *testing.T) {
	sys := requireKVM(t)
	vm, err := sys.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	if n, _ := sys.CheckExtension(CapSetIdentityMapAddr); n > 0 {
		if err := vm.SetIdentityMapAddr(0xfeffc000); err != nil {
			t.Errorf("SetIdentityMapAddr: %v", err)
		}
	}
	if err := vm.SetTSSAddr(0xfeffd000); err != nil {
		t.Errorf("SetTSSAddr: %v", err)
	}
	cpu, err := vm.CreateVCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	defer cpu.Close()
	khz, err := cpu.TSCKHz()
	if err != nil {
		t.Fatal(err)
	}
	if khz == 0 {
		t.Error("TSC frequency 0")
	}
	if err := cpu.SetTSCKHz(khz); err != nil {
		t.Errorf("SetTSCKHz(%d) (unchanged): %v", khz, err)
	}
	t.Logf("TSC %d kHz", khz)
	if _, err := vm.CreateVCPU(0); err == nil {
		t.Error("creating vCPU 0 twice succeeded")
	}
}
