package kvm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"testing"
	"time"
	"unsafe"
)

// MSRs the test gives distinctive values before saving, so that a restore
// that dropped them would show. All are plain storage in KVM.
var distinctiveMSRs = []MSREntry{
	{Index: 0x174, Data: 0x10},                    // IA32_SYSENTER_CS
	{Index: 0x175, Data: 0xffff888000123000},      // IA32_SYSENTER_ESP
	{Index: 0x176, Data: 0xffffffff81600000},      // IA32_SYSENTER_EIP
	{Index: 0xc0000081, Data: 0x0023001000000000}, // STAR
	{Index: 0xc0000082, Data: 0xffffffff81200040}, // LSTAR
	{Index: 0xc0000083, Data: 0xffffffff81200080}, // CSTAR
	{Index: 0xc0000084, Data: 0x47700},            // SFMASK
	{Index: 0xc0000102, Data: 0xffff88807fc00000}, // KERNEL_GS_BASE
}

const msrTSC = 0x10

// LAPIC registers (offset: value) the test sets before saving. The timer
// stays off (initial count 0), so the current-count register, which KVM
// computes on every read, is 0 in both saves.
var lapicSettings = map[int]uint32{
	0x080: 0x20,    // TPR
	0x0f0: 0x1ff,   // spurious vector 0xff, APIC software-enabled
	0x320: 0x100ec, // LVT timer: masked, vector 0xec
	0x350: 0x700,   // LVT LINT0: ExtINT
	0x360: 0x400,   // LVT LINT1: NMI
	0x3e0: 0xb,     // timer divide by 1
}

// Offsets in the XSAVE area (the legacy FXSAVE image, then the header).
const (
	xsaveMXCSR    = 24
	xsaveXMM      = 160
	xsaveXStateBV = 512
)

// fxsaveArea is where fxsaveProbe stores (page 14, 16-byte aligned).
const fxsaveArea = 0xe000

// fxsaveProbe, at codeAddr+0x1000, stores the guest's x87/SSE state with
// FXSAVE64 and exits by OUT to port 0x11, so the test sees the SSE state the
// guest itself sees. (This emulator executes FXSAVE and SSE stores such as
// MOVAPS/MOVDQU, but not MOVD/MOVQ from an XMM register nor STMXCSR: those
// end in KVM_EXIT_INTERNAL_ERROR.)
func fxsaveProbe() []byte {
	return []byte{
		0xBF, 0x00, 0xE0, 0x00, 0x00, // mov edi, fxsaveArea
		0x48, 0x0F, 0xAE, 0x07, //       fxsave64 [rdi]
		0xBA, 0x11, 0x00, 0x00, 0x00, // mov edx, 0x11
		0xEE,       //                   out dx, al
		0xEB, 0xFE, //                   jmp $
	}
}

// TestVCPUStateRoundTrip runs the writer guest a few iterations on VM 1, lets
// KVM complete the last OUT, saves the whole vCPU, restores it into vCPU 0 of
// a second VM with a copy of the memory, saves that again and compares every
// part. Then both vCPUs run on: each must continue the guest program from
// the same point (next OUT reports counter 6, RBX 6, R12 = 1+...+6).
func TestVCPUStateRoundTrip(t *testing.T) {
	sys := requireKVM(t)
	src := newTestVM(t, sys, vmOptions{irqchip: true})
	src.load(writerProgram(t))
	copy(src.mem[codeAddr+0x1000:], fxsaveProbe())
	// Each iteration also stores its counter to two data pages.
	src.setList([]int{40, 41})

	// Non-trivial state the guest itself does not produce.
	s, err := src.cpu.Sregs()
	if err != nil {
		t.Fatal(err)
	}
	s.FS.Base, s.GS.Base = 0x7f0000001000, 0xffff88807fc01000
	if err := src.cpu.SetSregs(s); err != nil {
		t.Fatal(err)
	}
	if err := src.cpu.SetDebugRegs(DebugRegs{DB: [4]uint64{0x1000, 0x2000, 0x3000, 0x4000}, DR6: 0xffff0ff0, DR7: 0x400}); err != nil {
		t.Fatal(err)
	}
	// XMMn byte j = 16n+j. Planted through the XSAVE area: KVM_SET_FPU
	// writes the legacy area without setting XSTATE_BV, so on an XSAVE
	// host KVM_GET_XSAVE (and the guest) see the SSE registers in their
	// init state (zero), and it ignores MXCSR altogether.
	x, err := src.cpu.XSave()
	if err != nil {
		t.Fatal(err)
	}
	xb := structBytes(&x)
	for i := 0; i < 16*16; i++ {
		xb[xsaveXMM+i] = byte(i)
	}
	binary.LittleEndian.PutUint32(xb[xsaveMXCSR:], 0x1f80)
	xb[xsaveXStateBV] |= 3 // x87 | SSE
	if err := src.cpu.SetXSave(x); err != nil {
		t.Fatal(err)
	}
	if _, err := src.cpu.SetMSRs(distinctiveMSRs); err != nil {
		t.Fatal(err)
	}
	lapic, err := src.cpu.LAPIC()
	if err != nil {
		t.Fatal(err)
	}
	for off, v := range lapicSettings {
		binary.LittleEndian.PutUint32(lapic.Regs[off:], v)
	}
	if err := src.cpu.SetLAPIC(lapic); err != nil {
		t.Fatal(err)
	}

	const iterations = 5
	for i := 1; i <= iterations; i++ {
		if io := src.runIO(src.cpu, src.r); io.Data[0] != byte(i) {
			t.Fatalf("iteration %d: OUT data %v", i, io.Data)
		}
	}
	atExit, err := src.cpu.Regs()
	if err != nil {
		t.Fatal(err)
	}
	completeIO(t, src.cpu, src.r)
	afterCompletion, err := src.cpu.Regs()
	if err != nil {
		t.Fatal(err)
	}
	// The OUT is at offset 0x27 of the program, the jmp after it at 0x28.
	t.Logf("RIP at the IO exit %#x, after the completing KVM_RUN %#x", atExit.RIP, afterCompletion.RIP)
	if afterCompletion.RIP != codeAddr+0x28 {
		t.Fatalf("after completing the OUT, RIP %#x, want %#x (the jmp after the OUT)", afterCompletion.RIP, codeAddr+0x28)
	}
	if afterCompletion.RBX != iterations || afterCompletion.R12 != iterations*(iterations+1)/2 {
		t.Fatalf("RBX %d R12 %d, want %d and %d", afterCompletion.RBX, afterCompletion.R12, iterations, iterations*(iterations+1)/2)
	}

	nXSave, err := sys.CheckExtension(CapXSave)
	if err != nil {
		t.Fatal(err)
	}
	hasXSave := nXSave > 0
	all, err := sys.MSRIndexList()
	if err != nil {
		t.Fatal(err)
	}
	msrs := src.cpu.SavableMSRs(all)
	t.Logf("XSAVE %v; %d of %d MSRs in the index list are savable: %#x", hasXSave, len(msrs), len(all), msrs)
	for _, m := range distinctiveMSRs {
		if !slices.Contains(msrs, m.Index) {
			t.Errorf("MSR %#x is not in the savable list", m.Index)
		}
	}
	if !slices.Contains(msrs, msrTSC) {
		t.Errorf("IA32_TSC is not in the savable list")
	}

	saved, err := src.cpu.SaveState(msrs, hasXSave)
	if err != nil {
		t.Fatalf("SaveState: %v", err)
	}
	savedAt := time.Now()

	// The destination: a fresh VM, same memory, vCPU 0 never set up.
	dst := newTestVM(t, sys, vmOptions{irqchip: true, noVCPU: true})
	copy(dst.mem, src.mem)
	dst.cpu, dst.r = newVCPU(t, dst.vm, 0)
	if err := dst.cpu.RestoreState(saved); err != nil {
		t.Fatalf("RestoreState: %v", err)
	}
	again, err := dst.cpu.SaveState(msrs, hasXSave)
	if err != nil {
		t.Fatalf("SaveState after restore: %v", err)
	}
	elapsed := time.Since(savedAt)
	compareStates(t, saved, again, elapsed)

	// Both vCPUs continue the program from the same point.
	for _, vm := range []*testVM{dst, src} {
		name := "restored"
		if vm == src {
			name = "original"
		}
		io := vm.runIO(vm.cpu, vm.r)
		regs, err := vm.cpu.Regs()
		if err != nil {
			t.Fatal(err)
		}
		if io.Port != portDone || io.Data[0] != iterations+1 || regs.RBX != iterations+1 || regs.R12 != (iterations+1)*(iterations+2)/2 {
			t.Errorf("%s vCPU: OUT port %#x data %v, RBX %d, R12 %d; want port %#x data [%d], RBX %d, R12 %d",
				name, io.Port, io.Data, regs.RBX, regs.R12, portDone, iterations+1, iterations+1, (iterations+1)*(iterations+2)/2)
		}
		if got := vm.mem[40*pageSize+writeOffset(40)]; got != iterations+1 {
			t.Errorf("%s vCPU: data page 40 holds %d, want %d", name, got, iterations+1)
		}

		// The SSE registers as the guest sees them.
		completeIO(t, vm.cpu, vm.r)
		regs.RIP = codeAddr + 0x1000
		if err := vm.cpu.SetRegs(regs); err != nil {
			t.Fatal(err)
		}
		if io := vm.runIO(vm.cpu, vm.r); io.Port != 0x11 {
			t.Fatalf("%s vCPU: FXSAVE probe exited to port %#x", name, io.Port)
		}
		area := vm.mem[fxsaveArea : fxsaveArea+512]
		for i := 0; i < 256; i++ {
			if area[xsaveXMM+i] != byte(i) {
				t.Errorf("%s vCPU: guest sees XMM%d = %x", name, i/16, area[xsaveXMM+i/16*16:][:16])
				break
			}
		}
		if m := binary.LittleEndian.Uint32(area[xsaveMXCSR:]); m != 0x1f80 {
			t.Errorf("%s vCPU: guest sees MXCSR %#x, want 0x1f80", name, m)
		}
	}
}

// compareStates compares two saved states field by field. Exceptions, each
// for a reason:
//   - IA32_TSC keeps counting: the second value must be later than the
//     first, by no more than the wall time between the two saves (plus a
//     little), at the saved TSC rate.
//
// Everything else must be identical.
func compareStates(t *testing.T, a, b *VCPUState, elapsed time.Duration) {
	t.Helper()
	diff := func(what string, x, y any) {
		if !reflect.DeepEqual(x, y) {
			t.Errorf("%s differs after restore:\n saved    %+v\n restored %+v", what, x, y)
		}
	}
	diff("ID", a.ID, b.ID)
	diff("CPUID", a.CPUID, b.CPUID)
	diff("MP state", a.MPState, b.MPState)
	diff("regs", a.Regs, b.Regs)
	compareSregs(t, a.Sregs, b.Sregs)
	diff("HasXSave", a.HasXSave, b.HasXSave)
	if a.HasXSave {
		compareBytes(t, "XSAVE area", structBytes(&a.XSave), structBytes(&b.XSave))
		diff("XCRs", a.XCRs, b.XCRs)
	} else {
		diff("FPU", a.FPU, b.FPU)
	}
	diff("debug regs", a.DebugRegs, b.DebugRegs)
	compareBytes(t, "LAPIC", a.LAPIC.Regs[:], b.LAPIC.Regs[:])
	diff("events", a.Events, b.Events)
	diff("TSC kHz", a.TSCKHz, b.TSCKHz)

	if len(a.MSRs) != len(b.MSRs) {
		t.Fatalf("%d MSRs saved, %d after restore", len(a.MSRs), len(b.MSRs))
	}
	for i := range a.MSRs {
		x, y := a.MSRs[i], b.MSRs[i]
		if x.Index != y.Index {
			t.Fatalf("MSR %d: index %#x vs %#x", i, x.Index, y.Index)
		}
		if x.Index == msrTSC {
			d := int64(y.Data - x.Data)
			max := int64(a.TSCKHz) * (elapsed.Milliseconds() + 100)
			t.Logf("IA32_TSC advanced by %d cycles between saves (%v wall, bound %d)", d, elapsed, max)
			if d < 0 || d > max {
				t.Errorf("IA32_TSC %d then %d: advanced by %d, want 0..%d", x.Data, y.Data, d, max)
			}
			continue
		}
		if x.Data != y.Data {
			t.Errorf("MSR %#x: saved %#x, after restore %#x", x.Index, x.Data, y.Data)
		}
	}
	for _, m := range distinctiveMSRs {
		for _, e := range b.MSRs {
			if e.Index == m.Index && e.Data != m.Data {
				t.Errorf("MSR %#x restored as %#x, want %#x", m.Index, e.Data, m.Data)
			}
		}
	}
	for off, v := range lapicSettings {
		if got := binary.LittleEndian.Uint32(b.LAPIC.Regs[off:]); got != v {
			t.Errorf("LAPIC register %#x restored as %#x, want %#x", off, got, v)
		}
	}
	if b.DebugRegs.DB != [4]uint64{0x1000, 0x2000, 0x3000, 0x4000} {
		t.Errorf("debug address registers restored as %#x", b.DebugRegs.DB)
	}
	if b.Sregs.FS.Base != 0x7f0000001000 || b.Sregs.GS.Base != 0xffff88807fc01000 {
		t.Errorf("FS/GS base restored as %#x/%#x", b.Sregs.FS.Base, b.Sregs.GS.Base)
	}
	if b.HasXSave {
		x := structBytes(&b.XSave)
		for i := 0; i < 256; i++ {
			if x[xsaveXMM+i] != byte(i) {
				t.Errorf("XMM registers not restored: XMM%d %x", i/16, x[xsaveXMM+i/16*16:][:16])
				break
			}
		}
		if m := binary.LittleEndian.Uint32(x[xsaveMXCSR:]); m != 0x1f80 {
			t.Errorf("MXCSR restored as %#x", m)
		}
	}
}

func compareSregs(t *testing.T, a, b Sregs) {
	t.Helper()
	segs := []struct {
		name string
		x, y Segment
	}{{"CS", a.CS, b.CS}, {"DS", a.DS, b.DS}, {"ES", a.ES, b.ES}, {"FS", a.FS, b.FS}, {"GS", a.GS, b.GS},
		{"SS", a.SS, b.SS}, {"TR", a.TR, b.TR}, {"LDT", a.LDT, b.LDT}}
	for _, s := range segs {
		if s.x != s.y {
			t.Errorf("sregs %s differs after restore:\n saved    %+v\n restored %+v", s.name, s.x, s.y)
		}
	}
	if a.GDT != b.GDT || a.IDT != b.IDT {
		t.Errorf("GDT/IDT %+v %+v, after restore %+v %+v", a.GDT, a.IDT, b.GDT, b.IDT)
	}
	type ctl struct{ CR0, CR2, CR3, CR4, CR8, EFER, ApicBase uint64 }
	x := ctl{a.CR0, a.CR2, a.CR3, a.CR4, a.CR8, a.EFER, a.ApicBase}
	y := ctl{b.CR0, b.CR2, b.CR3, b.CR4, b.CR8, b.EFER, b.ApicBase}
	if x != y {
		t.Errorf("control registers differ after restore:\n saved    %+v\n restored %+v", x, y)
	}
	if a.InterruptBitmap != b.InterruptBitmap {
		t.Errorf("interrupt bitmap %x, after restore %x", a.InterruptBitmap, b.InterruptBitmap)
	}
}

func compareBytes(t *testing.T, what string, a, b []byte) {
	t.Helper()
	var offs []string
	for i := range a {
		if a[i] != b[i] {
			offs = append(offs, fmt.Sprintf("%#x: %02x->%02x", i, a[i], b[i]))
		}
	}
	if len(offs) > 0 {
		if len(offs) > 16 {
			offs = append(offs[:16], "...")
		}
		t.Errorf("%s differs after restore at %v", what, offs)
	}
}

func structBytes[T any](p *T) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(p)), unsafe.Sizeof(*p))
}

// TestVCPUStateHalted: a vCPU halted in the kernel (in-kernel irqchip, HLT
// with interrupts off: it never exits on its own) is saved with MP state
// HALTED, and the restored vCPU is halted too: it does not run on into the
// OUT after the HLT until the test makes it runnable, and then it continues
// right after the HLT.
func TestVCPUStateHalted(t *testing.T) {
	sys := requireKVM(t)
	src := newTestVM(t, sys, vmOptions{irqchip: true})
	a := newAsm()
	a.i("hlt                ", 0xF4)
	a.i("mov eax, 0x42      ", 0xB8, 0x42, 0x00, 0x00, 0x00)
	a.i("mov edx, portDone  ", 0xBA, portDone, 0x00, 0x00, 0x00)
	a.i("out dx, al         ", 0xEE)
	a.label("end")
	a.jmp8("jmp $           ", 0xEB, "end")
	src.load(a.bytes(t))

	haltedFor := func(vm *testVM, d time.Duration) {
		t.Helper()
		res := vm.r.start()
		select {
		case err := <-res:
			t.Fatalf("halted vCPU returned from Run: %v, %s", err, describeExit(vm.cpu, vm.cpu.ExitReason()))
		case <-time.After(d):
		}
		vm.r.stopping.Store(true)
		vm.cpu.Kick()
		select {
		case err := <-res:
			if !errors.Is(err, ErrInterrupted) {
				t.Fatalf("Run after Kick: %v", err)
			}
		case <-time.After(kickBound):
			t.Fatalf("halted vCPU did not return within %v of Kick", kickBound)
		}
		vm.r.stopping.Store(false)
		vm.cpu.ClearImmediateExit()
	}
	haltedFor(src, 300*time.Millisecond)
	mp, err := src.cpu.MPState()
	if err != nil {
		t.Fatal(err)
	}
	regs, err := src.cpu.Regs()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("after HLT: MP state %d, RIP %#x", mp.State, regs.RIP)
	if mp.State != MPStateHalted {
		t.Fatalf("MP state %d after HLT, want HALTED (%d)", mp.State, MPStateHalted)
	}

	all, err := sys.MSRIndexList()
	if err != nil {
		t.Fatal(err)
	}
	n, err := sys.CheckExtension(CapXSave)
	if err != nil {
		t.Fatal(err)
	}
	msrs := src.cpu.SavableMSRs(all)
	saved, err := src.cpu.SaveState(msrs, n > 0)
	if err != nil {
		t.Fatal(err)
	}
	dst := newTestVM(t, sys, vmOptions{irqchip: true, noVCPU: true})
	copy(dst.mem, src.mem)
	dst.cpu, dst.r = newVCPU(t, dst.vm, 0)
	if err := dst.cpu.RestoreState(saved); err != nil {
		t.Fatalf("RestoreState: %v", err)
	}
	if mp, err := dst.cpu.MPState(); err != nil || mp.State != MPStateHalted {
		t.Fatalf("restored MP state %d (%v), want HALTED", mp.State, err)
	}
	haltedFor(dst, 300*time.Millisecond)

	// Wake it: runnable again, it executes the instructions after the HLT.
	if err := dst.cpu.SetMPState(MPState{State: MPStateRunnable}); err != nil {
		t.Fatal(err)
	}
	io := dst.runIO(dst.cpu, dst.r)
	if io.Port != portDone || io.Data[0] != 0x42 {
		t.Errorf("woken restored vCPU: OUT port %#x data %x, want %#x [42]", io.Port, io.Data, portDone)
	}
}
