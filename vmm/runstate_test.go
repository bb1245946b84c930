package vmm

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"time"
)

// The run state in the VM state format (version 3): a paused guest's
// state says so, and an older state (version 2) decodes as running.
func TestStateCodecPaused(t *testing.T) {
	for _, paused := range []bool{false, true} {
		s := sampleState()
		s.Paused = paused
		b, err := EncodeState(s)
		if err != nil {
			t.Fatal(err)
		}
		if v := binary.LittleEndian.Uint32(b[8:]); v != 3 {
			t.Errorf("encoded format version %d, want 3", v)
		}
		got, err := DecodeState(b)
		if err != nil || got.Paused != paused {
			t.Fatalf("paused=%v: decoded paused=%v, err %v", paused, got != nil && got.Paused, err)
		}
	}
	// Version 2 had no run state after the devices: such a guest runs.
	s := sampleState()
	s.Paused = true
	b, _ := EncodeState(s)
	got, err := DecodeState(olderFormat(b, 2))
	if err != nil || got.Paused || len(got.Devices) != len(s.Devices) {
		t.Fatalf("version 2 state: %+v, err %v; want it decoded, running", got, err)
	}
	// A run state other than 0 or 1 is refused.
	bad := append([]byte(nil), b...)
	bad[len(bad)-1] = 2
	if _, err := DecodeState(reseal(bad)); !errors.Is(err, ErrBadState) || !strings.Contains(err.Error(), "run state") {
		t.Errorf("run state 2: err %v, want ErrBadState naming the run state", err)
	}
}

// A machine started paused never enters the guest until Resume.
func TestMachineStartPaused(t *testing.T) {
	m := bootMachine(t, Config{Memory: 16 << 20, CPUs: 2}, counterLoop)
	if err := m.StartPaused(); err != nil {
		t.Fatal(err)
	}
	if !m.Paused() {
		t.Fatal("Paused() false right after StartPaused")
	}
	time.Sleep(300 * time.Millisecond)
	if c := counter(m); c != 0 {
		t.Fatalf("the guest ran while started paused: counter %d", c)
	}
	if _, err := m.SaveState(); err != nil {
		t.Fatalf("SaveState of a machine started paused: %v", err)
	}
	if err := m.Resume(); err != nil {
		t.Fatal(err)
	}
	waitCounter(t, m, 1000, "after Resume")
}

// savedCounter runs the counter guest, pauses it and returns it with its
// state encoded by a migration source told whether the user paused it.
func savedCounter(t *testing.T, userPaused bool) (*Machine, []byte, uint32) {
	t.Helper()
	src := bootMachine(t, Config{Memory: 16 << 20, CPUs: 1}, counterLoop)
	if err := src.Start(); err != nil {
		t.Fatal(err)
	}
	waitCounter(t, src, 1000, "source")
	if err := src.Pause(); err != nil {
		t.Fatal(err)
	}
	ms := NewMigrationSource(src)
	ms.Paused = userPaused
	blob, err := ms.State()
	if err != nil {
		t.Fatal(err)
	}
	return src, blob, counter(src)
}

// restoreInto builds the machine of a migration target from src's memory
// and the state blob, as the receiver does, and starts it.
func restoreInto(t *testing.T, target *MigrationDestination, src *Machine, blob []byte) (*Machine, error) {
	t.Helper()
	requireKVM(t)
	if err := target.Prepare(src.info()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if m := target.Machine(); m != nil {
			m.Stop("test cleanup")
			select {
			case <-m.Done():
			case <-time.After(10 * time.Second):
			}
		}
		target.Discard()
	})
	for i, r := range target.Machine().Memory().Regions {
		copy(r.Mem, src.Memory().Regions[i].Mem)
	}
	if err := target.Restore(blob); err != nil {
		return nil, err
	}
	if err := target.Start(); err != nil {
		t.Fatal(err)
	}
	return <-target.Started(), nil
}

// A guest saved paused by its user starts paused on the migration target
// (or restored snapshot) and runs on from where it was only after Resume;
// RefusePaused turns it away, Run starts it anyway, and a guest that was
// running starts running.
func TestMigrationTargetRunState(t *testing.T) {
	src, blob, saved := savedCounter(t, true)

	tgt := NewMigrationDestination(Config{})
	if m, err := restoreInto(t, tgt, src, blob); err != nil {
		t.Fatal(err)
	} else {
		if !tgt.StartsPaused() || !m.Paused() {
			t.Fatalf("target StartsPaused %v, machine Paused %v: want the guest paused", tgt.StartsPaused(), m.Paused())
		}
		time.Sleep(300 * time.Millisecond)
		if c := counter(m); c != saved {
			t.Fatalf("the guest ran on the target before Resume: counter %d, saved at %d", c, saved)
		}
		if err := m.Resume(); err != nil {
			t.Fatal(err)
		}
		if c := waitCounter(t, m, saved, "after Resume"); c < saved {
			t.Fatalf("resumed at %d, saved at %d", c, saved)
		}
	}

	refuse := NewMigrationDestination(Config{})
	refuse.RefusePaused = "this ferry receive has no --api-socket"
	if _, err := restoreInto(t, refuse, src, blob); err == nil || !strings.Contains(err.Error(), "paused") ||
		!strings.Contains(err.Error(), "no --api-socket") {
		t.Errorf("RefusePaused: Restore error %v, want one saying the guest is paused and why it is refused", err)
	}

	run := NewMigrationDestination(Config{})
	run.Run = true
	m, err := restoreInto(t, run, src, blob)
	if err != nil || run.StartsPaused() || m.Paused() {
		t.Fatalf("Run: err %v, StartsPaused %v: want it running", err, run.StartsPaused())
	}
	waitCounter(t, m, saved, "started with Run")

	src2, blob2, saved2 := savedCounter(t, false)
	running := NewMigrationDestination(Config{})
	running.RefusePaused = "no control socket" // does not concern a running guest
	m, err = restoreInto(t, running, src2, blob2)
	if err != nil || running.StartsPaused() {
		t.Fatalf("running guest: err %v, StartsPaused %v", err, running.StartsPaused())
	}
	waitCounter(t, m, saved2, "a guest saved running")
}
