package kvm

// Test harness: tiny long-mode guests on the real /dev/kvm.
//
// Guest physical layout (slot 0 at GPA 0, 4 MiB by default, 4 KiB pages):
//
//	page 1      PML4            (one entry -> PDPT)
//	page 2      PDPT            (one entry -> PD)
//	page 3      PD              (2 MiB pages, identity map of all guest RAM)
//	page 4      GDT             (null, code 0x08, data 0x10, TSS 0x18)
//	pages 8-9   code            (the guest program)
//	page 10     stack           (RSP = 0xb000; the programs here never push)
//	pages 12-13 list area       (host-written parameters the guest only reads)
//	pages 16-   data            (pages the guest writes)
//
// Besides the data pages a program stores to, KVM writes guest memory on the
// guest's behalf when its page walker sets Accessed/Dirty bits in the paging
// structures (pages 1-3), when a segment load sets a descriptor's Accessed
// bit (page 4) and when a push, call or exception uses the stack (page 10).
// The programs here never load a segment and never use the stack, and the
// GDT descriptors have Accessed preset, so the only such pages are the
// paging structures, and only when their A/D bits start clear
// (vmOptions.clearAD): pagingPages.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	pageSize = 4096

	pml4Addr   = 0x1000
	pdptAddr   = 0x2000
	pdAddr     = 0x3000
	gdtAddr    = 0x4000
	codeAddr   = 0x8000
	stackPage  = 10
	stackTop   = 0xb000
	listAddr   = 0xc000
	listMax    = (2*pageSize)/8 - 1 // entries after the count word
	firstData  = 16
	defaultMem = 4 << 20

	// Ports the test programs use.
	portDone = 0x10

	// Page-table entry bits.
	ptePresent  = 1 << 0
	pteWritable = 1 << 1
	pteAccessed = 1 << 5
	pteDirty    = 1 << 6
	ptePS       = 1 << 7

	// Control-register and EFER bits.
	cr0PE   = 1 << 0
	cr0ET   = 1 << 4
	cr0NE   = 1 << 5
	cr0PG   = 1 << 31
	cr4PAE  = 1 << 5
	cr4FXSR = 1 << 9 // OSFXSR: SSE instructions allowed
	eferLME = 1 << 8
	eferLMA = 1 << 10
)

// pagingPages are the PML4, PDPT and PD pages.
var pagingPages = []int{pml4Addr / pageSize, pdptAddr / pageSize, pdAddr / pageSize}

// requireKVM skips the test only when there is no KVM device at all. Any other
// failure to use /dev/kvm is a test failure.
func requireKVM(t testing.TB) *System {
	t.Helper()
	if _, err := os.Stat(DevicePath); errors.Is(err, os.ErrNotExist) {
		t.Skipf("%s does not exist on this machine: skipping a test that needs a real KVM", DevicePath)
	}
	sys, err := Open("")
	if err != nil {
		t.Fatalf("Open(%q): %v", DevicePath, err)
	}
	t.Cleanup(func() { sys.Close() })
	return sys
}

// vmOptions configures newTestVM.
type vmOptions struct {
	memSize      int  // bytes of guest RAM in slot 0; defaultMem when 0
	logDirty     bool // register slot 0 with KVM_MEM_LOG_DIRTY_PAGES
	manual       bool // enable MANUAL_DIRTY_LOG_PROTECT2 (no INITIALLY_SET) first
	irqchip      bool // in-kernel PIC/IOAPIC/LAPIC (needed for LAPIC state)
	clearAD      bool // leave Accessed/Dirty clear in the paging structures
	noVCPU       bool // do not create vCPU 0
	skipLongMode bool // create the vCPU but leave it in its reset state
}

// testVM is one VM with guest RAM in slot 0 and (normally) vCPU 0 in long mode.
type testVM struct {
	t    testing.TB
	sys  *System
	vm   *VM
	mem  []byte
	opts vmOptions
	cpu  *VCPU
	r    *runner
}

func newTestVM(t testing.TB, sys *System, opts vmOptions) *testVM {
	t.Helper()
	if opts.memSize == 0 {
		opts.memSize = defaultMem
	}
	vm, err := sys.CreateVM()
	if err != nil {
		t.Fatalf("CreateVM: %v", err)
	}
	tv := &testVM{t: t, sys: sys, vm: vm, opts: opts}
	t.Cleanup(tv.close)

	if n, err := sys.CheckExtension(CapSetTSSAddr); err != nil {
		t.Fatalf("CheckExtension(SET_TSS_ADDR): %v", err)
	} else if n > 0 {
		if err := vm.SetTSSAddr(0xfffbd000); err != nil {
			t.Fatalf("SetTSSAddr: %v", err)
		}
	}
	if opts.irqchip {
		if err := vm.CreateIRQChip(); err != nil {
			t.Fatalf("CreateIRQChip: %v", err)
		}
	}
	if opts.manual {
		on, err := vm.EnableManualDirtyLogProtect(false)
		if err != nil {
			t.Fatalf("EnableManualDirtyLogProtect: %v", err)
		}
		if !on {
			t.Fatalf("EnableManualDirtyLogProtect: KVM does not offer MANUAL_DIRTY_LOG_PROTECT2 (GUEST-NOTES says it does)")
		}
	}
	mem, err := unix.Mmap(-1, 0, opts.memSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANONYMOUS|unix.MAP_PRIVATE)
	if err != nil {
		t.Fatalf("mmap guest RAM: %v", err)
	}
	tv.mem = mem
	tv.buildPageTables()
	tv.buildGDT()
	if err := vm.SetMemoryRegion(tv.region()); err != nil {
		t.Fatalf("SetMemoryRegion: %v", err)
	}
	if opts.noVCPU {
		return tv
	}
	tv.cpu, tv.r = newVCPU(t, vm, 0)
	if err := tv.setupVCPU(tv.cpu); err != nil {
		t.Fatal(err)
	}
	return tv
}

func (tv *testVM) region() MemoryRegion {
	return MemoryRegion{
		Slot:     0,
		GPA:      0,
		Size:     uint64(len(tv.mem)),
		HostAddr: uintptr(unsafe.Pointer(&tv.mem[0])),
		LogDirty: tv.opts.logDirty,
	}
}

func (tv *testVM) close() {
	if tv.r != nil {
		tv.r.stop()
		tv.r = nil
	}
	if tv.cpu != nil {
		tv.cpu.Close()
		tv.cpu = nil
	}
	if tv.vm != nil {
		tv.vm.Close()
		tv.vm = nil
	}
	if tv.mem != nil {
		unix.Munmap(tv.mem)
		tv.mem = nil
	}
}

func (tv *testVM) pages() int { return len(tv.mem) / pageSize }

// buildPageTables identity-maps all guest RAM with 2 MiB pages.
func (tv *testVM) buildPageTables() {
	ad := uint64(pteAccessed | pteDirty)
	if tv.opts.clearAD {
		ad = 0
	}
	tableAD := ad & pteAccessed // a non-leaf entry has no Dirty bit
	le := binary.LittleEndian
	le.PutUint64(tv.mem[pml4Addr:], pdptAddr|ptePresent|pteWritable|tableAD)
	le.PutUint64(tv.mem[pdptAddr:], pdAddr|ptePresent|pteWritable|tableAD)
	for i := 0; i*(2<<20) < len(tv.mem); i++ {
		le.PutUint64(tv.mem[pdAddr+8*i:], uint64(i)*(2<<20)|ptePresent|pteWritable|ptePS|ad)
	}
}

// buildGDT writes null, 64-bit code (0x08), data (0x10) and a 64-bit TSS
// descriptor (0x18, 16 bytes). Accessed bits are preset so that a segment
// load would not write the GDT.
func (tv *testVM) buildGDT() {
	le := binary.LittleEndian
	le.PutUint64(tv.mem[gdtAddr+0x00:], 0)
	le.PutUint64(tv.mem[gdtAddr+0x08:], 0x00af9b000000ffff) // code: P DPL0 S type 0xb, L=1, G=1
	le.PutUint64(tv.mem[gdtAddr+0x10:], 0x00cf93000000ffff) // data: P DPL0 S type 0x3, D/B=1, G=1
	le.PutUint64(tv.mem[gdtAddr+0x18:], 0x00008b0000000067) // TSS: P type 0xb (busy), base 0, limit 0x67
	le.PutUint64(tv.mem[gdtAddr+0x20:], 0)                  // TSS base bits 63:32
}

// longModeSregs turns a vCPU's reset sregs into flat 64-bit long mode.
func longModeSregs(s Sregs) Sregs {
	code := Segment{Base: 0, Limit: 0xffffffff, Selector: 0x08, Typ: 0xb, Present: 1, DPL: 0, DB: 0, S: 1, L: 1, G: 1}
	data := Segment{Base: 0, Limit: 0xffffffff, Selector: 0x10, Typ: 0x3, Present: 1, DPL: 0, DB: 1, S: 1, L: 0, G: 1}
	s.CS = code
	s.DS, s.ES, s.FS, s.GS, s.SS = data, data, data, data, data
	s.TR = Segment{Base: 0, Limit: 0x67, Selector: 0x18, Typ: 0xb, Present: 1}
	s.GDT = Descriptor{Base: gdtAddr, Limit: 0x27}
	s.IDT = Descriptor{Base: 0, Limit: 0} // any exception becomes a triple fault: a SHUTDOWN exit
	s.CR0 = cr0PE | cr0ET | cr0NE | cr0PG
	s.CR3 = pml4Addr
	s.CR4 = cr4PAE | cr4FXSR
	s.EFER = eferLME | eferLMA
	return s
}

// setupVCPU gives the vCPU the supported CPUID and puts it in long mode at
// codeAddr.
func (tv *testVM) setupVCPU(cpu *VCPU) error {
	ids, err := tv.sys.SupportedCPUID()
	if err != nil {
		return err
	}
	if err := cpu.SetCPUID(ids); err != nil {
		return err
	}
	if tv.opts.skipLongMode {
		return nil
	}
	s, err := cpu.Sregs()
	if err != nil {
		return err
	}
	if err := cpu.SetSregs(longModeSregs(s)); err != nil {
		return err
	}
	return cpu.SetRegs(Regs{RIP: codeAddr, RFLAGS: 2, RSP: stackTop})
}

// load copies a guest program to codeAddr.
func (tv *testVM) load(code []byte) {
	if len(code) > 2*pageSize {
		tv.t.Fatalf("guest program of %d bytes does not fit the two code pages", len(code))
	}
	copy(tv.mem[codeAddr:], code)
}

// pageAddr is the guest-physical address of byte off of page p.
func pageAddr(p, off int) uint64 { return uint64(p*pageSize + off) }

// setList writes the list the writer program reads: a count, then one
// guest address per page (a different offset in each page).
func (tv *testVM) setList(pages []int) {
	if len(pages) > listMax {
		tv.t.Fatalf("%d pages do not fit the list area", len(pages))
	}
	le := binary.LittleEndian
	le.PutUint64(tv.mem[listAddr:], uint64(len(pages)))
	for i, p := range pages {
		le.PutUint64(tv.mem[listAddr+8+8*i:], pageAddr(p, writeOffset(p)))
	}
}

// writeOffset spreads the writer program's stores over each page.
func writeOffset(p int) int { return (p * 57) % pageSize }

// ---------------------------------------------------------------------------
// A tiny assembler: bytes are written by hand, the builder only resolves the
// rel8 targets of jumps so that editing a program does not mean recounting.

type asm struct {
	b      []byte
	labels map[string]int
	fixups []fixup
}

type fixup struct {
	at    int // offset of the rel8 byte
	label string
}

func newAsm() *asm { return &asm{labels: map[string]int{}} }

// i emits one instruction; the comment is for the reader only.
func (a *asm) i(_ string, b ...byte) { a.b = append(a.b, b...) }

func (a *asm) label(name string) { a.labels[name] = len(a.b) }

// jmp8 emits a short jump (op is 0xEB, or a Jcc opcode 0x70-0x7F) to label.
func (a *asm) jmp8(_ string, op byte, label string) {
	a.b = append(a.b, op, 0)
	a.fixups = append(a.fixups, fixup{at: len(a.b) - 1, label: label})
}

func (a *asm) bytes(t testing.TB) []byte {
	for _, f := range a.fixups {
		to, ok := a.labels[f.label]
		if !ok {
			t.Fatalf("asm: undefined label %q", f.label)
		}
		rel := to - (f.at + 1)
		if rel < -128 || rel > 127 {
			t.Fatalf("asm: jump to %q out of rel8 range (%d)", f.label, rel)
		}
		a.b[f.at] = byte(int8(rel))
	}
	return a.b
}

func imm32(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }

func cat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// writerProgram is the workhorse guest. Each iteration it increments RBX,
// stores BL to every address in the list at listAddr, then reports BL with
// OUT to portDone, and starts over (re-reading the list, which the host may
// have changed meanwhile). It uses no stack and loads no segment, so the only
// guest-memory writes it makes on purpose are the list's stores.
//
//	RBX  iteration counter (1 after the first iteration)
//	R12  sum of all counters so far (extra non-trivial register state)
func writerProgram(t testing.TB) []byte {
	a := newAsm()
	a.label("top")
	a.i("inc ebx               ", 0xFF, 0xC3)       // FF /0
	a.i("add r12, rbx          ", 0x49, 0x01, 0xDC) // REX.W+B 01 /r (r/m=r12, reg=rbx)
	a.i("mov eax, ebx          ", 0x89, 0xD8)       // 89 /r (r/m=eax, reg=ebx)
	a.i("mov esi, listAddr     ", cat([]byte{0xBE}, imm32(listAddr))...)
	a.i("mov rcx, [rsi]        ", 0x48, 0x8B, 0x0E) // count
	a.i("test rcx, rcx         ", 0x48, 0x85, 0xC9)
	a.jmp8("jz done            ", 0x74, "done")
	a.label("store")
	a.i("add rsi, 8            ", 0x48, 0x83, 0xC6, 0x08)
	a.i("mov rdi, [rsi]        ", 0x48, 0x8B, 0x3E)
	a.i("mov [rdi], al         ", 0x88, 0x07)
	a.i("dec rcx               ", 0x48, 0xFF, 0xC9)
	a.jmp8("jnz store          ", 0x75, "store")
	a.label("done")
	a.i("mov edx, portDone     ", cat([]byte{0xBA}, imm32(portDone))...)
	a.i("out dx, al            ", 0xEE)
	a.jmp8("jmp top            ", 0xEB, "top")
	return a.bytes(t)
}

// spinProgram is `jmp $`.
func spinProgram() []byte { return []byte{0xEB, 0xFE} }

// ---------------------------------------------------------------------------
// vCPU thread: Run must happen on one locked OS thread so Kick can signal it.

type runner struct {
	cpu      *VCPU
	reqs     chan func()
	stopping atomic.Bool // set before an intentional Kick
	spurious atomic.Int64
}

// newVCPU creates vCPU id and a runner goroutine locked to its own thread.
func newVCPU(t testing.TB, vm *VM, id int) (*VCPU, *runner) {
	t.Helper()
	cpu, err := vm.CreateVCPU(id)
	if err != nil {
		t.Fatalf("CreateVCPU(%d): %v", id, err)
	}
	r := &runner{cpu: cpu, reqs: make(chan func())}
	ready := make(chan struct{})
	go func() {
		// The thread stays locked until the goroutine exits, and then the
		// runtime ends the thread: no other goroutine ever runs on a
		// thread a stale Kick could signal.
		runtime.LockOSThread()
		cpu.BindThread()
		close(ready)
		for f := range r.reqs {
			f()
		}
	}()
	<-ready
	return cpu, r
}

func (r *runner) stop() { close(r.reqs) }

// do runs f on the vCPU thread and waits for it.
func (r *runner) do(f func()) {
	done := make(chan struct{})
	r.reqs <- func() { f(); close(done) }
	<-done
}

// start runs KVM_RUN on the vCPU thread until a real exit or an intentional
// kick (r.stopping). An EINTR nobody asked for (the Go runtime preempts with
// SIGURG, which is also KickSignal) is counted and KVM_RUN re-entered.
func (r *runner) start() <-chan error {
	res := make(chan error, 1)
	r.reqs <- func() {
		for {
			err := r.cpu.Run()
			if errors.Is(err, ErrInterrupted) && !r.stopping.Load() {
				r.spurious.Add(1)
				continue
			}
			res <- err
			return
		}
	}
	return res
}

// runExit runs the vCPU until it exits, with a timeout after which it kicks
// the vCPU and fails the test.
func (tv *testVM) runExit(cpu *VCPU, r *runner, timeout time.Duration) uint32 {
	tv.t.Helper()
	res := r.start()
	select {
	case err := <-res:
		if err != nil {
			tv.t.Fatalf("Run: %v", err)
		}
	case <-time.After(timeout):
		r.stopping.Store(true)
		cpu.Kick()
		err := <-res
		r.stopping.Store(false)
		cpu.ClearImmediateExit()
		regs, _ := cpu.Regs()
		tv.t.Fatalf("guest did not exit within %v (Run after kick: %v; RIP %#x RBX %d)", timeout, err, regs.RIP, regs.RBX)
	}
	return cpu.ExitReason()
}

// runIO runs until the next exit, which must be KVM_EXIT_IO; it returns the
// decoded exit with Data copied out of kvm_run.
func (tv *testVM) runIO(cpu *VCPU, r *runner) IOExit {
	tv.t.Helper()
	reason := tv.runExit(cpu, r, 10*time.Second)
	if reason != ExitIO {
		tv.t.Fatalf("expected an IO exit, got %s", describeExit(cpu, reason))
	}
	io := cpu.IO()
	io.Data = append([]byte(nil), io.Data...)
	return io
}

// completeIO lets KVM finish the last I/O exit (advance RIP past the OUT)
// without running guest code: immediate_exit + KVM_RUN returns EINTR after
// the completion. Afterwards the vCPU state is safe to save.
func completeIO(t testing.TB, cpu *VCPU, r *runner) {
	t.Helper()
	var err error
	r.stopping.Store(true)
	cpu.Kick()
	r.do(func() { err = cpu.Run() })
	r.stopping.Store(false)
	cpu.ClearImmediateExit()
	if !errors.Is(err, ErrInterrupted) {
		t.Fatalf("Run with immediate_exit set: got %v, want ErrInterrupted", err)
	}
}

func describeExit(cpu *VCPU, reason uint32) string {
	var b strings.Builder
	b.WriteString(ExitName(reason))
	switch reason {
	case ExitInternalError:
		fmt.Fprintf(&b, " (%v)", cpu.InternalError())
	case ExitFailEntry:
		fmt.Fprintf(&b, " (hardware reason %#x)", cpu.FailEntry())
	case ExitMMIO:
		m := cpu.MMIO()
		fmt.Fprintf(&b, " (addr %#x write %v)", m.Addr, m.Write)
	case ExitIO:
		io := cpu.IO()
		fmt.Fprintf(&b, " (port %#x out %v size %d)", io.Port, io.Out, io.Size)
	}
	if regs, err := cpu.Regs(); err == nil {
		fmt.Fprintf(&b, " at RIP %#x RBX %d RAX %#x", regs.RIP, regs.RBX, regs.RAX)
	}
	return b.String()
}

// ---------------------------------------------------------------------------
// Dirty bitmaps.

// bitmapPages lists the set bits of a dirty bitmap.
func bitmapPages(bm []uint64) []int {
	var out []int
	for w, word := range bm {
		for b := 0; b < 64; b++ {
			if word&(1<<b) != 0 {
				out = append(out, w*64+b)
			}
		}
	}
	return out
}

func pageSet(pages ...[]int) map[int]bool {
	m := map[int]bool{}
	for _, ps := range pages {
		for _, p := range ps {
			m[p] = true
		}
	}
	return m
}

func sortedKeys(m map[int]bool) []int {
	var out []int
	for k, v := range m {
		if v {
			out = append(out, k)
		}
	}
	sort.Ints(out)
	return out
}

// checkDirty asserts want ⊆ got ⊆ want ∪ extras and returns got \ want.
func checkDirty(t testing.TB, what string, got []int, want []int, extras []int) []int {
	t.Helper()
	g, w, x := pageSet(got), pageSet(want), pageSet(extras)
	var missing, unexpected, extra []int
	for p := range w {
		if !g[p] {
			missing = append(missing, p)
		}
	}
	for p := range g {
		if w[p] {
			continue
		}
		if x[p] {
			extra = append(extra, p)
		} else {
			unexpected = append(unexpected, p)
		}
	}
	sort.Ints(missing)
	sort.Ints(unexpected)
	sort.Ints(extra)
	if len(missing) > 0 {
		t.Errorf("%s: pages the guest wrote but the dirty log misses: %v", what, missing)
	}
	if len(unexpected) > 0 {
		t.Errorf("%s: pages reported dirty that nobody wrote: %v", what, unexpected)
	}
	return extra
}
