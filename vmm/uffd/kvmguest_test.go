package uffd

import (
	"encoding/binary"
	"errors"
	"os"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferryvmm/ferry/kvm"
)

// A tiny guest on the real /dev/kvm that reads and writes pages of its
// memory in an order the test gives, and times each access with RDTSC.
//
// Guest physical layout: one slot of gMem bytes at GPA 0; 32-bit protected
// mode, paging off, flat segments (as ferry's PVH entry).
//
//	gCode     the program (accessProgram)
//	gList     the accesses: a count, then one dword each: the address,
//	          | 1 for a write (the guest stores its loop counter there)
//	gResults  two dwords per access: the value read (or written), and the
//	          TSC cycles from just before the access to just after it
//	gGDT      the GDT behind the segment registers (never reloaded)
//	gData...  the data pages the test registers with userfaultfd
const (
	gCode     = 0x1000
	gList     = 0x2000
	gResults  = 0x4000 // two pages
	gGDT      = 0x6000
	gData     = 0x100000
	gMem      = 4 << 20
	gMaxList  = PageSize/4 - 1
	gTSSAddr  = 0xfffbd000
	gDataPage = gData / PageSize
)

// accessProgram walks the list: for each entry it reads the dword there
// (or, for a write, stores ECX, the entries left), records the value and
// the TSC cycles the access took, and halts at the end.
func accessProgram() []byte {
	le := binary.LittleEndian
	p := []byte{0xbe} // mov esi, gList
	p = le.AppendUint32(p, gList)
	p = append(p, 0x8b, 0x0e, 0xbf) // mov ecx, [esi]; mov edi, gResults
	p = le.AppendUint32(p, gResults)
	p = append(p, 0x83, 0xc6, 0x04) // add esi, 4
	loop := len(p)
	p = append(p,
		0x8b, 0x1e, // mov ebx, [esi]
		0x0f, 0x31, // rdtsc
		0x89, 0xc5, // mov ebp, eax
		0xf6, 0xc3, 0x01, // test bl, 1
		0x75, 0x06, // jnz write
		0x8b, 0x03, // mov eax, [ebx]   (the read)
		0x89, 0x07, // mov [edi], eax
		0xeb, 0x07, // jmp timed
		0x83, 0xe3, 0xfe, // write: and ebx, -2
		0x89, 0x0b, // mov [ebx], ecx   (the write)
		0x89, 0x0f, // mov [edi], ecx
		0x0f, 0x31, // timed: rdtsc
		0x29, 0xe8, // sub eax, ebp
		0x89, 0x47, 0x04, // mov [edi+4], eax
		0x83, 0xc6, 0x04, // add esi, 4
		0x83, 0xc7, 0x08, // add edi, 8
		0x49,       // dec ecx
		0x75, 0x00, // jnz loop (patched below)
		0xf4, // hlt
	)
	p[len(p)-2] = byte(loop - (len(p) - 1))
	return p
}

// access is one entry of the guest's list: a data page, an offset in it
// (a multiple of 4), and whether the guest writes rather than reads.
type access struct {
	page, off int
	write     bool
}

// result is what the guest recorded for one access.
type result struct {
	value  uint32
	cycles uint32
}

// guest is one VM with the access program and vCPU 0 on its own thread.
type guest struct {
	t     testing.TB
	vm    *kvm.VM
	cpu   *kvm.VCPU
	mem   []byte
	tid   int
	reqs  chan func()
	eintr atomic.Int64 // KVM_RUN returned EINTR (a kick, or the Go runtime's signal)
	stop  atomic.Bool  // the test gave up: leave KVM_RUN at the next EINTR
}

func newGuest(t testing.TB) *guest {
	t.Helper()
	if _, err := os.Stat(kvm.DevicePath); errors.Is(err, os.ErrNotExist) {
		t.Skipf("%s does not exist on this machine: skipping a test that needs a real KVM", kvm.DevicePath)
	}
	sys, err := kvm.Open("")
	if err != nil {
		t.Fatalf("open %s: %v", kvm.DevicePath, err)
	}
	t.Cleanup(func() { sys.Close() })
	g := &guest{t: t, mem: mapPages(t, gMem/PageSize), reqs: make(chan func())}
	if g.vm, err = sys.CreateVM(); err != nil {
		t.Fatalf("CreateVM: %v", err)
	}
	t.Cleanup(func() { g.vm.Close() })
	if n, err := sys.CheckExtension(kvm.CapSetTSSAddr); err == nil && n > 0 {
		if err := g.vm.SetTSSAddr(gTSSAddr); err != nil {
			t.Fatalf("SetTSSAddr: %v", err)
		}
	}
	copy(g.mem[gCode:], accessProgram())
	le := binary.LittleEndian
	for i, d := range []uint64{0, 0x00cf9b000000ffff, 0x00cf93000000ffff, 0x00008b0000000067} {
		le.PutUint64(g.mem[gGDT+8*i:], d)
	}
	if err := g.vm.SetMemoryRegion(kvm.MemoryRegion{Slot: 0, GPA: 0, Size: gMem, HostAddr: addrOf(g.mem)}); err != nil {
		t.Fatalf("SetMemoryRegion: %v", err)
	}
	if g.cpu, err = g.vm.CreateVCPU(0); err != nil {
		t.Fatalf("CreateVCPU: %v", err)
	}
	t.Cleanup(func() { g.cpu.Close() })
	if err := g.setup(sys); err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	go func() {
		// Locked until the goroutine ends: the thread ends with it, so a
		// late kick never signals a thread someone else uses.
		runtime.LockOSThread()
		g.tid = unix.Gettid()
		g.cpu.BindThread()
		defer g.cpu.UnbindThread()
		close(ready)
		for f := range g.reqs {
			f()
		}
	}()
	<-ready
	t.Cleanup(func() { close(g.reqs) })
	return g
}

// setup gives vCPU 0 the supported CPUID and flat 32-bit protected mode.
func (g *guest) setup(sys *kvm.System) error {
	ids, err := sys.SupportedCPUID()
	if err != nil {
		return err
	}
	if err := g.cpu.SetCPUID(ids); err != nil {
		return err
	}
	s, err := g.cpu.Sregs()
	if err != nil {
		return err
	}
	seg := func(sel uint16, typ uint8) kvm.Segment {
		return kvm.Segment{Limit: 0xffffffff, Selector: sel, Typ: typ, Present: 1, S: 1, DB: 1, G: 1}
	}
	s.CS = seg(0x08, 0xb)
	s.DS, s.ES, s.FS, s.GS, s.SS = seg(0x10, 0x3), seg(0x10, 0x3), seg(0x10, 0x3), seg(0x10, 0x3), seg(0x10, 0x3)
	s.TR = kvm.Segment{Selector: 0x18, Limit: 0x67, Typ: 0xb, Present: 1} // busy TSS
	s.GDT = kvm.Descriptor{Base: gGDT, Limit: 4*8 - 1}
	s.IDT = kvm.Descriptor{}
	s.CR0, s.CR4, s.EFER = 0x11, 0, 0 // PE | ET
	return g.cpu.SetSregs(s)
}

// data is the guest's data pages (from gData).
func (g *guest) data() []byte { return g.mem[gData:] }

// setList writes the access list.
func (g *guest) setList(acc []access) {
	if len(acc) > gMaxList {
		g.t.Fatalf("%d accesses do not fit the list", len(acc))
	}
	le := binary.LittleEndian
	le.PutUint32(g.mem[gList:], uint32(len(acc)))
	for i, a := range acc {
		addr := uint32(gData + a.page*PageSize + a.off)
		if a.write {
			addr |= 1
		}
		le.PutUint32(g.mem[gList+4+4*i:], addr)
	}
}

// run runs the program from its start until it halts. If it has not
// halted after timeout, the vCPU is kicked out and the test fails.
func (g *guest) run(timeout time.Duration) {
	g.t.Helper()
	if err := g.cpu.SetRegs(kvm.Regs{RIP: gCode, RFLAGS: 2}); err != nil {
		g.t.Fatal(err)
	}
	res := make(chan error, 1)
	g.reqs <- func() { res <- g.enter() }
	var err error
	select {
	case err = <-res:
	case <-time.After(timeout):
		g.stop.Store(true)
		g.cpu.Kick()
		<-res
		regs, _ := g.cpu.Regs()
		g.t.Fatalf("guest did not halt within %v (RIP %#x, ECX %d entries left)", timeout, regs.RIP, regs.RCX)
	}
	if err != nil {
		g.t.Fatalf("KVM_RUN: %v", err)
	}
	if r := g.cpu.ExitReason(); r != kvm.ExitHLT {
		regs, _ := g.cpu.Regs()
		g.t.Fatalf("guest exit %s at RIP %#x, want HLT", kvm.ExitName(r), regs.RIP)
	}
}

// enter runs KVM_RUN on the vCPU thread until a real exit. Every EINTR is
// counted and KVM_RUN entered again (after clearing immediate_exit, which
// a kick sets), unless the test gave up.
func (g *guest) enter() error {
	for {
		err := g.cpu.Run()
		if errors.Is(err, kvm.ErrInterrupted) {
			g.eintr.Add(1)
			g.cpu.ClearImmediateExit()
			if g.stop.Load() {
				return nil
			}
			continue
		}
		if errors.Is(err, kvm.ErrAgain) {
			continue
		}
		return err
	}
}

// results reads what the guest recorded for n accesses.
func (g *guest) results(n int) []result {
	le := binary.LittleEndian
	out := make([]result, n)
	for i := range out {
		out[i] = result{le.Uint32(g.mem[gResults+8*i:]), le.Uint32(g.mem[gResults+8*i+4:])}
	}
	return out
}
