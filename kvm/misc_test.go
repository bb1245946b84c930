package kvm

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestOpenMissing needs no KVM: opening a device node that does not exist
// fails with an error that names the path and wraps ErrNoKVM and ENOENT.
func TestOpenMissing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "no-such-kvm")
	sys, err := Open(path)
	if err == nil {
		sys.Close()
		t.Fatalf("Open(%q) succeeded", path)
	}
	if !strings.Contains(err.Error(), path) {
		t.Errorf("error %q does not mention %s", err, path)
	}
	if !errors.Is(err, ErrNoKVM) {
		t.Errorf("error %q does not wrap ErrNoKVM", err)
	}
	if !errors.Is(err, unix.ENOENT) {
		t.Errorf("error %q does not wrap ENOENT", err)
	}
	if Available(path) {
		t.Errorf("Available(%q) = true", path)
	}
	// A file that is not a KVM device: the API-version ioctl fails.
	notKVM := filepath.Join(t.TempDir(), "plain-file")
	if err := os.WriteFile(notKVM, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if sys, err := Open(notKVM); err == nil {
		sys.Close()
		t.Errorf("Open(%q) of a plain file succeeded", notKVM)
	} else if !strings.Contains(err.Error(), notKVM) {
		t.Errorf("error %q does not mention %s", err, notKVM)
	}
}

// TestCheckExtension: the capabilities ferry depends on, asked of the
// system and of a VM.
func TestCheckExtension(t *testing.T) {
	sys := requireKVM(t)
	if !Available("") || sys.Path() != DevicePath {
		t.Errorf("Available() = %v, Path() = %q", Available(""), sys.Path())
	}
	vm, err := sys.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	if vm.System() != sys {
		t.Error("VM.System() is not the System it came from")
	}
	for _, c := range []struct {
		name string
		cap  Capability
	}{
		{"USER_MEMORY", CapUserMemory},
		{"IMMEDIATE_EXIT", CapImmediateExit},
		{"IRQCHIP", CapIRQChip},
		{"MANUAL_DIRTY_LOG_PROTECT2", CapManualDirtyLogProtect2},
		{"NR_MEMSLOTS", CapNrMemSlots},
	} {
		n, err := sys.CheckExtension(c.cap)
		if err != nil {
			t.Fatalf("CheckExtension(%s): %v", c.name, err)
		}
		m, err := vm.CheckExtension(c.cap)
		if err != nil {
			t.Fatalf("VM.CheckExtension(%s): %v", c.name, err)
		}
		t.Logf("%s: system %d, VM %d", c.name, n, m)
		if n <= 0 || m <= 0 {
			t.Errorf("%s not offered (system %d, VM %d)", c.name, n, m)
		}
	}
	if n, _ := sys.CheckExtension(CapManualDirtyLogProtect2); n&(ManualProtectEnable|ManualProtectInitSet) != ManualProtectEnable|ManualProtectInitSet {
		t.Errorf("MANUAL_DIRTY_LOG_PROTECT2 = %d, want both ENABLE and INITIALLY_SET", n)
	}
}

// TestMSRShortCount: KVM_GET/SET_MSRS stop at the first MSR they cannot
// handle and return how many they did; the wrappers report that as an
// error naming the MSR, after having done the ones before it.
func TestMSRShortCount(t *testing.T) {
	sys := requireKVM(t)
	tv := newTestVM(t, sys, vmOptions{})
	const (
		star, lstar = 0xc0000081, 0xc0000082
		bogus       = 0xdeadbeef
	)
	if _, err := tv.cpu.SetMSRs([]MSREntry{{Index: star, Data: 0x0023001000000000}, {Index: lstar, Data: 0xffffffff81000000}}); err != nil {
		t.Fatalf("SetMSRs of two valid MSRs: %v", err)
	}

	get := []MSREntry{{Index: star}, {Index: bogus}, {Index: lstar}}
	n, err := tv.cpu.MSRs(get)
	if err == nil {
		t.Fatal("MSRs with an invalid index succeeded")
	}
	t.Logf("MSRs: %v", err)
	if n != 1 {
		t.Errorf("MSRs processed %d, want 1", n)
	}
	if !strings.Contains(err.Error(), "0xdeadbeef") {
		t.Errorf("error %q does not name the MSR", err)
	}
	if get[0].Data != 0x0023001000000000 {
		t.Errorf("STAR read as %#x before the failure", get[0].Data)
	}

	set := []MSREntry{{Index: star, Data: 0x0033002000000000}, {Index: bogus, Data: 1}, {Index: lstar, Data: 0x1234}}
	n, err = tv.cpu.SetMSRs(set)
	if err == nil {
		t.Fatal("SetMSRs with an invalid index succeeded")
	}
	t.Logf("SetMSRs: %v", err)
	if n != 1 || !strings.Contains(err.Error(), "0xdeadbeef") {
		t.Errorf("SetMSRs: %d written, error %q; want 1 and the MSR named", n, err)
	}
	check := []MSREntry{{Index: star}, {Index: lstar}}
	if _, err := tv.cpu.MSRs(check); err != nil {
		t.Fatal(err)
	}
	if check[0].Data != 0x0033002000000000 || check[1].Data != 0xffffffff81000000 {
		t.Errorf("after the short SetMSRs: STAR %#x (want the new value), LSTAR %#x (want the old one)", check[0].Data, check[1].Data)
	}

	if _, err := tv.cpu.MSRs(make([]MSREntry, maxMSRs+1)); err == nil {
		t.Error("MSRs with too many entries succeeded")
	}
}

// TestCPUIDRoundTrip: what KVM_GET_CPUID2 returns after KVM_SET_CPUID2 is
// a fixed point: setting it on another vCPU reads back identically (which
// is what SaveState/RestoreState rely on), and it has no leaf that was not
// set. It need not equal what was set: upstream KVM updates a few bits at
// run time (OSXSAVE, the APIC bit, leaf 0xD's sizes), and this host's
// kvm_pvm changes much more (measured: it drops all-zero leaves and ORs in
// host features such as SSE3..AVX and POPCNT, which the guest's CPUID
// instruction then reports too); the differences are logged.
func TestCPUIDRoundTrip(t *testing.T) {
	sys := requireKVM(t)
	tv := newTestVM(t, sys, vmOptions{}) // sets SupportedCPUID
	set, err := sys.SupportedCPUID()
	if err != nil {
		t.Fatal(err)
	}
	got, err := tv.cpu.CPUID()
	if err != nil {
		t.Fatal(err)
	}
	type leaf struct{ fn, idx uint32 }
	sets := map[leaf]CPUIDEntry{}
	for _, e := range set {
		sets[leaf{e.Function, e.Index}] = e
	}
	seen := map[leaf]bool{}
	for _, e := range got {
		k := leaf{e.Function, e.Index}
		seen[k] = true
		s, ok := sets[k]
		switch {
		case !ok:
			t.Errorf("KVM_GET_CPUID2 returns leaf %#x.%d, which was not set", e.Function, e.Index)
		case s != e:
			t.Logf("leaf %#x.%d: set eax %#x ebx %#x ecx %#x edx %#x, reads eax %#x ebx %#x ecx %#x edx %#x",
				e.Function, e.Index, s.Eax, s.Ebx, s.Ecx, s.Edx, e.Eax, e.Ebx, e.Ecx, e.Edx)
		}
	}
	for _, e := range set {
		if !seen[leaf{e.Function, e.Index}] {
			t.Logf("leaf %#x.%d (eax %#x ebx %#x ecx %#x edx %#x) set but not read back", e.Function, e.Index, e.Eax, e.Ebx, e.Ecx, e.Edx)
		}
	}
	t.Logf("%d CPUID entries set, %d read back", len(set), len(got))

	other := newTestVM(t, sys, vmOptions{noVCPU: true})
	cpu, _ := newVCPU(t, other.vm, 0)
	defer cpu.Close()
	if err := cpu.SetCPUID(got); err != nil {
		t.Fatal(err)
	}
	again, err := cpu.CPUID()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(again, got) {
		t.Errorf("CPUID read back from a vCPU and set on another reads back differently (%d vs %d entries)", len(again), len(got))
	}
	if err := cpu.SetCPUID(make([]CPUIDEntry, maxCPUIDEntries+1)); err == nil {
		t.Error("SetCPUID with too many entries succeeded")
	}
}

// TestIRQChipPITClock: get/set round trips of the in-kernel PIC, IOAPIC and
// PIT, and of the kvmclock, on a VM with CreateIRQChip and CreatePIT2.
func TestIRQChipPITClock(t *testing.T) {
	sys := requireKVM(t)
	vm, err := sys.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	if err := vm.CreateIRQChip(); err != nil {
		t.Fatal(err)
	}
	if err := vm.CreatePIT2(); err != nil {
		t.Fatal(err)
	}

	// PICs: struct kvm_pic_state bytes: last_irr, irr, imr, isr,
	// priority_add, irq_base, ...
	for _, id := range []uint32{IRQChipPICMaster, IRQChipPICSlave} {
		c, err := vm.IRQChip(id)
		if err != nil {
			t.Fatal(err)
		}
		c.Chip[2] = 0xa5              // IMR
		c.Chip[5] = 0x20 + 8*byte(id) // irq_base
		if err := vm.SetIRQChip(c); err != nil {
			t.Fatal(err)
		}
		back, err := vm.IRQChip(id)
		if err != nil {
			t.Fatal(err)
		}
		if back != c {
			t.Errorf("PIC %d: read back %x, set %x", id, back.Chip[:16], c.Chip[:16])
		}
	}
	// IOAPIC: base_address u64, ioregsel u32, id u32, irr u32, pad u32,
	// then 24 redirection entries of 8 bytes.
	io, err := vm.IRQChip(IRQChipIOAPIC)
	if err != nil {
		t.Fatal(err)
	}
	const redir4 = 24 + 4*8
	copy(io.Chip[redir4:], []byte{0x34, 0x00, 0x01, 0x00, 0, 0, 0, 0x01}) // vector 0x34, masked, dest 1
	io.Chip[12] = 3                                                       // IOAPIC id
	if err := vm.SetIRQChip(io); err != nil {
		t.Fatal(err)
	}
	back, err := vm.IRQChip(IRQChipIOAPIC)
	if err != nil {
		t.Fatal(err)
	}
	if back != io {
		t.Errorf("IOAPIC: read back differs from what was set:\n set  %x\n back %x", io.Chip[:24+24*8], back.Chip[:24+24*8])
	}

	// PIT: channel 0 in mode 2 with count 0x1234. KVM re-stamps each
	// channel's count_load_time on SET (it reloads the count), so that
	// field is compared only for having moved forward.
	p, err := vm.PIT2()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("PIT at creation: ch0 count %#x mode %#x gate %d", p.Channels[0].Count, p.Channels[0].Mode, p.Channels[0].Gate)
	p.Channels[0].Count = 0x1234
	p.Channels[0].Mode = 2
	p.Channels[0].RWMode = 3
	p.Channels[2].Gate = 1
	before := p
	if err := vm.SetPIT2(p); err != nil {
		t.Fatal(err)
	}
	pb, err := vm.PIT2()
	if err != nil {
		t.Fatal(err)
	}
	for i := range pb.Channels {
		if pb.Channels[i].CountLoadTime < before.Channels[i].CountLoadTime {
			t.Errorf("PIT channel %d: count_load_time went back", i)
		}
		pb.Channels[i].CountLoadTime = before.Channels[i].CountLoadTime
	}
	if pb != before {
		t.Errorf("PIT read back differs:\n set  %+v\n back %+v", before, pb)
	}

	// kvmclock: move it 10 s ahead.
	c0, err := vm.Clock()
	if err != nil {
		t.Fatal(err)
	}
	const ahead = uint64(10 * time.Second)
	start := time.Now()
	if err := vm.SetClock(ClockData{Clock: c0.Clock + ahead, Flags: c0.Flags, HostTSC: 12345}); err != nil {
		t.Fatal(err)
	}
	c1, err := vm.Clock()
	if err != nil {
		t.Fatal(err)
	}
	slack := uint64(time.Since(start)) + uint64(50*time.Millisecond)
	if c1.Clock < c0.Clock+ahead || c1.Clock > c0.Clock+ahead+slack {
		t.Errorf("kvmclock %d after setting %d (+%v slack)", c1.Clock, c0.Clock+ahead, time.Duration(slack))
	}
	t.Logf("kvmclock %d -> set %d -> read %d (flags %#x)", c0.Clock, c0.Clock+ahead, c1.Clock, c1.Flags)
}

// TestIODecoding: OUT of known values at known ports and sizes, an IN whose
// value the host supplies, and a string OUT, as decoded by VCPU.IO.
func TestIODecoding(t *testing.T) {
	sys := requireKVM(t)
	tv := newTestVM(t, sys, vmOptions{})
	a := newAsm()
	a.i("mov al, 0x5a         ", 0xB0, 0x5A)
	a.i("mov edx, 0x3f8       ", 0xBA, 0xF8, 0x03, 0x00, 0x00)
	a.i("out dx, al           ", 0xEE)
	a.i("mov eax, 0x12345678  ", 0xB8, 0x78, 0x56, 0x34, 0x12)
	a.i("mov edx, 0x1234      ", 0xBA, 0x34, 0x12, 0x00, 0x00)
	a.i("out dx, eax          ", 0xEF)
	a.i("mov ax, 0xbeef       ", 0x66, 0xB8, 0xEF, 0xBE)
	a.i("out dx, ax           ", 0x66, 0xEF)
	a.i("mov edx, 0x71        ", 0xBA, 0x71, 0x00, 0x00, 0x00)
	a.i("in al, dx            ", 0xEC)
	a.i("mov edx, 0x72        ", 0xBA, 0x72, 0x00, 0x00, 0x00)
	a.i("out dx, al           ", 0xEE)
	a.i("mov esi, listAddr    ", 0xBE, 0x00, 0xC0, 0x00, 0x00)
	a.i("mov ecx, 3           ", 0xB9, 0x03, 0x00, 0x00, 0x00)
	a.i("mov edx, 0x73        ", 0xBA, 0x73, 0x00, 0x00, 0x00)
	a.i("rep outsb            ", 0xF3, 0x6E)
	a.label("end")
	a.jmp8("jmp $             ", 0xEB, "end")
	tv.load(a.bytes(t))
	copy(tv.mem[listAddr:], "abc")

	expect := func(what string, out bool, port uint16, size int, data []byte) IOExit {
		t.Helper()
		io := tv.runIO(tv.cpu, tv.r)
		if io.Out != out || io.Port != port || io.Size != size || io.Count != 1 || !bytes.Equal(io.Data, data) {
			t.Errorf("%s: got out=%v port %#x size %d count %d data %x; want out=%v port %#x size %d count 1 data %x",
				what, io.Out, io.Port, io.Size, io.Count, io.Data, out, port, size, data)
		}
		return io
	}
	expect("out dx, al", true, 0x3f8, 1, []byte{0x5a})
	expect("out dx, eax", true, 0x1234, 4, []byte{0x78, 0x56, 0x34, 0x12})
	expect("out dx, ax", true, 0x1234, 2, []byte{0xef, 0xbe})
	expect("in al, dx", false, 0x71, 1, []byte{0}) // the buffer KVM hands out for an IN
	tv.cpu.IO().Data[0] = 0x77                     // the value the guest reads
	expect("out dx, al (echo of the IN)", true, 0x72, 1, []byte{0x77})

	var got []byte
	exits := 0
	for len(got) < 3 && exits < 3 {
		io := tv.runIO(tv.cpu, tv.r)
		exits++
		if !io.Out || io.Port != 0x73 || io.Size != 1 || len(io.Data) != io.Count {
			t.Fatalf("rep outsb exit %d: out=%v port %#x size %d count %d data %x", exits, io.Out, io.Port, io.Size, io.Count, io.Data)
		}
		got = append(got, io.Data...)
	}
	if string(got) != "abc" {
		t.Errorf("rep outsb delivered %q, want \"abc\"", got)
	}
	t.Logf("rep outsb of 3 bytes: %d exit(s)", exits)
	regs, err := tv.cpu.Regs()
	if err != nil {
		t.Fatal(err)
	}
	if regs.RCX != 0 || regs.RSI != listAddr+3 {
		t.Errorf("after rep outsb: RCX %d RSI %#x, want 0 and %#x", regs.RCX, regs.RSI, listAddr+3)
	}
}
