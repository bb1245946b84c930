package vmm

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ferryvmm/ferry/devices"
	"github.com/ferryvmm/ferry/kvm"
)

// The VM state format is ferry's: its bytes must not change because a
// dependency did. Most of it is KVM structures written with encoding/binary
// from types that gokvm (at the version go.mod pins) and kvm define, so a
// new gokvm that adds, drops, reorders or resizes a field would change the
// format without a word. These tests make that loud: the encoded size of
// every structure is pinned, and a real encoded state (testdata) must still
// decode to the same values and encode back to the same bytes.

// TestStateStructSizes pins the bytes each structure takes in the state
// (binary.Size, which is also its in-memory and kernel size for the KVM
// structures: struct kvm_* on x86-64, see kvm/abi_test.go). A change here
// is a change of the state format: bump stateVersion and keep decoding the
// old layout.
func TestStateStructSizes(t *testing.T) {
	for _, c := range []struct {
		name string
		v    any
		want int
	}{
		{"kvm.IRQChip (struct kvm_irqchip)", kvm.IRQChip{}, 520},
		{"kvm.PITState2 (struct kvm_pit_state2)", kvm.PITState2{}, 112},
		{"kvm.ClockData (struct kvm_clock_data)", kvm.ClockData{}, 48},
		{"kvm.CPUIDEntry (struct kvm_cpuid_entry2)", kvm.CPUIDEntry{}, 40},
		{"kvm.MPState (struct kvm_mp_state)", kvm.MPState{}, 4},
		{"kvm.Regs (struct kvm_regs)", kvm.Regs{}, 144},
		{"kvm.Sregs (struct kvm_sregs)", kvm.Sregs{}, 312},
		{"kvm.XSave (struct kvm_xsave, 4 KiB form)", kvm.XSave{}, 4096},
		{"kvm.XCRs (struct kvm_xcrs)", kvm.XCRs{}, 392},
		{"kvm.FPU (struct kvm_fpu)", kvm.FPU{}, 416},
		{"kvm.DebugRegs (struct kvm_debugregs)", kvm.DebugRegs{}, 128},
		{"kvm.LAPIC (struct kvm_lapic_state)", kvm.LAPIC{}, 1024},
		{"kvm.MSREntry (struct kvm_msr_entry)", kvm.MSREntry{}, 16},
		{"kvm.VCPUEvents (struct kvm_vcpu_events)", kvm.VCPUEvents{}, 64},
		// The devices' own states (ferry's types; their Save writes them).
		{"devices.VirtioMMIOState", devices.VirtioMMIOState{}, 100},
		{"devices.SerialState", devices.SerialState{}, 1036},
		{"devices.CMOSState", devices.CMOSState{}, 129},
		{"devices.I8042State", devices.I8042State{}, 2},
	} {
		if got := binary.Size(c.v); got != c.want {
			t.Errorf("%s encodes to %d bytes, the state format has %d: the format changed (a dependency's struct?)", c.name, got, c.want)
		}
	}
}

// The golden state: testdata/state-v3.bin is a state that EncodeState wrote
// from a real machine (two vCPUs of the counter guest, a virtio-blk disk
// and, as root, a virtio-net device, saved paused by its user), and
// testdata/state-v3.txt lists its values field by field, with their names.
var writeGoldenState = flag.Bool("write-golden-state", false,
	"boot a tiny guest, save its state and rewrite testdata/state-v3.bin and .txt (needs /dev/kvm)")

const (
	goldenStateBin  = "testdata/state-v3.bin"
	goldenStateText = "testdata/state-v3.txt"
)

// TestGoldenState: the checked-in state decodes to the checked-in values,
// and encodes back to the same bytes; its format 2 form (no run state)
// decodes to the same values, running.
func TestGoldenState(t *testing.T) {
	if *writeGoldenState {
		writeGolden(t)
	}
	b, err := os.ReadFile(goldenStateBin)
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(goldenStateText)
	if err != nil {
		t.Fatal(err)
	}
	s, err := DecodeState(b)
	if err != nil {
		t.Fatalf("%s no longer decodes: %v", goldenStateBin, err)
	}
	if got := dumpState(s); got != string(want) {
		t.Errorf("%s decodes to other values than %s:\n%s", goldenStateBin, goldenStateText, firstDiff(got, string(want)))
	}
	again, err := EncodeState(s)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again, b) {
		t.Errorf("%s does not encode back to the same %d bytes (got %d)", goldenStateBin, len(b), len(again))
	}
	if !s.Paused {
		t.Errorf("%s: the golden state was saved paused", goldenStateBin)
	}

	v2, err := DecodeState(olderFormat(b, 2))
	if err != nil {
		t.Fatalf("format 2 form: %v", err)
	}
	if v2.Paused {
		t.Error("format 2 form decodes as paused")
	}
	v2.Paused = true
	if !reflect.DeepEqual(v2, s) {
		t.Error("format 2 form decodes to other values")
	}
}

// writeGolden boots the counter guest, pauses it and writes its state.
func writeGolden(t *testing.T) {
	m := bootMachine(t, Config{Memory: 16 << 20, CPUs: 2, Disks: testDisks(t), Nets: testNets(t)}, counterLoop)
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	waitCounter(t, m, 1000, "golden state")
	time.Sleep(100 * time.Millisecond)
	if err := m.Pause(); err != nil {
		t.Fatal(err)
	}
	s, err := m.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	s.Paused = true
	b, err := EncodeState(s)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(goldenStateBin), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(goldenStateBin, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(goldenStateText, []byte(dumpState(s)), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s (%d bytes) and %s", goldenStateBin, len(b), goldenStateText)
}

// dumpState lists every value of s, one structure per line, with the
// field names (%+v), so that a field moved or renamed by a dependency
// shows up as a difference.
func dumpState(s *State) string {
	var w strings.Builder
	line := func(name string, v any) { fmt.Fprintf(&w, "%s %+v\n", name, v) }
	line("memory", s.Memory)
	line("paused", s.Paused)
	line("pic0", s.PIC[0])
	line("pic1", s.PIC[1])
	line("ioapic", s.IOAPIC)
	line("pit", s.PIT)
	line("clock", s.Clock)
	for _, v := range s.VCPUs {
		p := fmt.Sprintf("vcpu%d.", v.ID)
		line(p+"cpuid", v.CPUID)
		line(p+"mpstate", v.MPState)
		line(p+"regs", v.Regs)
		line(p+"sregs", v.Sregs)
		line(p+"hasxsave", v.HasXSave)
		if v.HasXSave {
			line(p+"xsave", v.XSave)
			line(p+"xcrs", v.XCRs)
		} else {
			line(p+"fpu", v.FPU)
		}
		line(p+"debugregs", v.DebugRegs)
		line(p+"lapic", v.LAPIC)
		line(p+"msrs", v.MSRs)
		line(p+"events", v.Events)
		line(p+"tsckhz", v.TSCKHz)
	}
	for _, d := range s.Devices {
		line("device "+d.Name, hex.EncodeToString(d.Data))
	}
	return w.String()
}

// firstDiff shows the first line where got and want differ.
func firstDiff(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	for i := 0; i < len(g) || i < len(w); i++ {
		var a, b string
		if i < len(g) {
			a = g[i]
		}
		if i < len(w) {
			b = w[i]
		}
		if a != b {
			return fmt.Sprintf("line %d:\n got  %.300s\n want %.300s", i+1, a, b)
		}
	}
	return "(no difference)"
}
