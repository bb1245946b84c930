package vmm

import (
	"os"
	"testing"

	"github.com/ferryvmm/ferry/kvm"
)

// fullCPUID is a supported-CPUID list with every feature bit set.
func fullCPUID() []kvm.CPUIDEntry {
	all := ^uint32(0)
	return []kvm.CPUIDEntry{
		{Function: 0, Eax: 0xd, Ebx: 0x756e6547},
		{Function: 1, Eax: 0x906ea, Ebx: 0x00ab0800 | 0xff000000, Ecx: all, Edx: all &^ (1 << 28)},
		{Function: 7, Index: 0, Flags: kvm.CPUIDFlagSignificantIndex, Eax: 0, Ebx: all, Ecx: all, Edx: all},
		{Function: 0xb, Index: 0, Flags: kvm.CPUIDFlagSignificantIndex, Eax: 1, Ebx: 1, Ecx: 0x100, Edx: 0x55},
		{Function: 0xd, Index: 0, Flags: kvm.CPUIDFlagSignificantIndex, Eax: 7, Ebx: 0x340, Ecx: 0x340},
		{Function: 0xd, Index: 1, Flags: kvm.CPUIDFlagSignificantIndex, Eax: 0xf},
		{Function: 0x40000000, Eax: 0x40000001, Ebx: 0x4b4d564b},
		{Function: 0x80000001, Ecx: all, Edx: all},
	}
}

func findLeaf(es []kvm.CPUIDEntry, fn, idx uint32) *kvm.CPUIDEntry {
	for i := range es {
		if es[i].Function == fn && es[i].Index == idx {
			return &es[i]
		}
	}
	return nil
}

func TestGuestCPUIDMasks(t *testing.T) {
	in := fullCPUID()
	out := guestCPUID(in, 0, 1, true)
	bits := []struct {
		fn   uint32
		reg  int
		bit  uint
		name string
	}{
		{1, 2, 17, "PCID"}, {1, 2, 23, "POPCNT"}, {1, 2, 26, "XSAVE"}, {1, 2, 27, "OSXSAVE"},
		{1, 2, 28, "AVX"}, {1, 2, 29, "F16C"}, {1, 2, 12, "FMA"}, {1, 2, 30, "RDRAND"},
		{7, 1, 0, "FSGSBASE"}, {7, 1, 5, "AVX2"}, {7, 1, 9, "ERMS"}, {7, 1, 10, "INVPCID"},
		{7, 1, 18, "RDSEED"}, {7, 1, 20, "SMAP"}, {7, 1, 16, "AVX512F"}, {7, 2, 22, "RDPID"},
		{7, 3, 4, "FSRM"}, {0x80000001, 2, 5, "ABM"},
	}
	for _, b := range bits {
		e := findLeaf(out, b.fn, 0)
		if e == nil {
			t.Fatalf("leaf %#x missing", b.fn)
		}
		regs := [4]uint32{e.Eax, e.Ebx, e.Ecx, e.Edx}
		if regs[b.reg]&(1<<b.bit) != 0 {
			t.Errorf("%s (leaf %#x reg %d bit %d) still set", b.name, b.fn, b.reg, b.bit)
		}
	}
	l1 := findLeaf(out, 1, 0)
	if l1.Ecx&(1<<31) == 0 {
		t.Error("hypervisor bit (leaf 1 ECX[31]) not set")
	}
	// Every bit that cpuidMask does not list passes through: compare
	// each masked leaf with the input minus the table's bits.
	for _, fn := range []uint32{1, 7, 0x80000001} {
		want := *findLeaf(in, fn, 0)
		regs := [4]*uint32{&want.Eax, &want.Ebx, &want.Ecx, &want.Edx}
		for _, m := range cpuidMask {
			if m.leaf == fn && m.index == 0 {
				*regs[m.reg] &^= m.bits
			}
		}
		if fn == 1 {
			want.Ecx |= 1 << 31
			want.Ebx = want.Ebx&0xffff | 1<<16 // APIC id 0, 1 logical CPU
		}
		if got := *findLeaf(out, fn, 0); got != want {
			t.Errorf("leaf %#x = %+v, want %+v (only the listed bits removed)", fn, got, want)
		}
	}
	// Baseline features Linux needs are never in the mask.
	if l1.Edx&(1<<26|1<<25|1<<24|1<<0) != 1<<26|1<<25|1<<24|1<<0 {
		t.Errorf("leaf 1 EDX %#x lost SSE2/SSE/FXSR/FPU", l1.Edx)
	}
	for _, e := range out {
		if e.Function == 0xd {
			t.Errorf("leaf 0xd index %d kept (XSAVE state enumeration without XSAVE)", e.Index)
		}
	}
	if len(out) != len(in)-2 {
		t.Errorf("%d leaves out of %d, want all but the two 0xd leaves", len(out), len(in))
	}
	// Untouched leaves pass through as they are.
	for _, fn := range []uint32{0, 0x40000000} {
		if *findLeaf(out, fn, 0) != *findLeaf(in, fn, 0) {
			t.Errorf("leaf %#x changed: %+v → %+v", fn, *findLeaf(in, fn, 0), *findLeaf(out, fn, 0))
		}
	}
	// The input is not modified.
	if in[1].Ecx != ^uint32(0) || in[2].Ebx != ^uint32(0) {
		t.Error("guestCPUID modified the supported list")
	}
}

func TestGuestCPUIDPerVCPU(t *testing.T) {
	for _, ncpu := range []int{1, 2, 4} {
		for id := 0; id < ncpu; id++ {
			out := guestCPUID(fullCPUID(), id, ncpu, true)
			l1 := findLeaf(out, 1, 0)
			if got := int(l1.Ebx >> 24); got != id {
				t.Errorf("ncpu %d vCPU %d: leaf 1 EBX[31:24] APIC id = %d", ncpu, id, got)
			}
			if got := int(l1.Ebx >> 16 & 0xff); got != ncpu {
				t.Errorf("ncpu %d vCPU %d: leaf 1 EBX[23:16] = %d, want %d", ncpu, id, got, ncpu)
			}
			if got := l1.Ebx & 0xffff; got != 0x0800 {
				t.Errorf("ncpu %d: leaf 1 EBX[15:0] = %#x, want 0x0800 (unchanged)", ncpu, got)
			}
			if htt := l1.Edx&(1<<28) != 0; htt != (ncpu > 1) {
				t.Errorf("ncpu %d: HTT = %v", ncpu, htt)
			}
			if got := findLeaf(out, 0xb, 0).Edx; got != uint32(id) {
				t.Errorf("ncpu %d vCPU %d: leaf 0xb EDX x2APIC id = %d", ncpu, id, got)
			}
		}
	}
}

// TestGuestCPUIDFromKVM applies the masks to what this host's KVM offers.
func TestGuestCPUIDFromKVM(t *testing.T) {
	requireKVM(t)
	sys, err := kvm.Open("")
	if err != nil {
		t.Fatal(err)
	}
	defer sys.Close()
	sup, err := sys.SupportedCPUID()
	if err != nil {
		t.Fatal(err)
	}
	out := guestCPUID(sup, 1, 2, true)
	l1 := findLeaf(out, 1, 0)
	if l1 == nil {
		t.Fatal("KVM offers no leaf 1")
	}
	if l1.Ecx&(1<<26|1<<23|1<<30|1<<27) != 0 {
		t.Errorf("leaf 1 ECX %#x still has XSAVE/POPCNT/RDRAND/OSXSAVE", l1.Ecx)
	}
	if l1.Ecx&(1<<31) == 0 || l1.Ebx>>24 != 1 {
		t.Errorf("leaf 1: ECX %#x EBX %#x, want the hypervisor bit and APIC id 1", l1.Ecx, l1.Ebx)
	}
	if l7 := findLeaf(out, 7, 0); l7 != nil && l7.Ebx&(1<<20|1<<18|1<<0) != 0 {
		t.Errorf("leaf 7 EBX %#x still has SMAP/RDSEED/FSGSBASE", l7.Ebx)
	}
	for _, e := range out {
		if e.Function == 0xd {
			t.Error("leaf 0xd kept")
		}
	}
}

// requireKVM skips a test only when this machine has no KVM device at all;
// a KVM device that is present but fails is a test failure.
func requireKVM(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(kvm.DevicePath); os.IsNotExist(err) {
		t.Skipf("%s does not exist on this machine: skipping a test that needs KVM", kvm.DevicePath)
	}
}

// TestGuestCPUIDHardware: on a KVM that does not emulate, nothing is hidden.
func TestGuestCPUIDHardware(t *testing.T) {
	in := fullCPUID()
	out := guestCPUID(in, 0, 1, false)
	if len(out) != len(in) {
		t.Fatalf("%d leaves out of %d: none may be dropped on hardware", len(out), len(in))
	}
	for i, e := range out {
		want := in[i]
		if e.Function == 1 {
			continue // hypervisor bit and APIC id are set on purpose
		}
		if e.Function == 0xb || e.Function == 0x1f {
			want.Edx = e.Edx
		}
		if e != want {
			t.Errorf("leaf %#x.%d changed on hardware: %+v, want %+v", e.Function, e.Index, e, want)
		}
	}
}
