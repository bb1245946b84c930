package vmm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"testing"

	"github.com/ferryvmm/ferry/devices"
	"github.com/ferryvmm/ferry/kvm"
	"github.com/ferryvmm/ferry/migrate"
)

func sampleState() *State {
	s := &State{Memory: 128 << 20}
	s.PIC[0].ChipID, s.PIC[1].ChipID, s.IOAPIC.ChipID = 0, 1, 2
	s.PIC[1].Chip[3] = 0x55
	s.PIT.Channels[0].Count = 1193
	s.Clock.Clock = 123456789
	for i := 0; i < 2; i++ {
		v := &kvm.VCPUState{ID: i, HasXSave: i == 0, TSCKHz: 2600000}
		v.CPUID = []kvm.CPUIDEntry{{Function: 1, Eax: 0x806a7}, {Function: 7, Ebx: 1}}
		v.Regs.RIP = 0xffffffff81000000 + uint64(i)
		v.Sregs.CR3 = 0x1000
		if v.HasXSave { // only the one in use is encoded
			v.XSave.Region[7] = 0x1f80
			v.XCRs.NrXRCS = 1
		} else {
			v.FPU.MXCSR = 0x1f80
		}
		v.LAPIC.Regs[0x20] = byte(i)
		v.MSRs = []kvm.MSREntry{{Index: 0x10, Data: 42}, {Index: 0xc0000080, Data: 0xd01}}
		v.Events.Flags = 1
		s.VCPUs = append(s.VCPUs, v)
	}
	s.Devices = []DeviceState{{Name: "serial0", Data: []byte{1, 2, 3}}, {Name: "cmos", Data: bytes.Repeat([]byte{9}, 129)}}
	return s
}

func TestStateCodecRoundTrip(t *testing.T) {
	s := sampleState()
	b, err := EncodeState(s)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeState(b)
	if err != nil {
		t.Fatal(err)
	}
	for i := range s.VCPUs {
		if !reflect.DeepEqual(s.VCPUs[i], got.VCPUs[i]) {
			t.Errorf("vCPU %d differs after the round trip", i)
		}
	}
	got.VCPUs, s.VCPUs = nil, nil
	if !reflect.DeepEqual(s, got) {
		t.Errorf("VM-wide state or devices differ after the round trip")
	}
}

// olderFormat turns a state encoded now into the same state in format 1
// or 2, which end after the devices (no run state).
func olderFormat(b []byte, version uint32) []byte {
	old := append([]byte(nil), b[:len(b)-1]...)
	binary.LittleEndian.PutUint32(old[8:], version)
	return reseal(old)
}

// reseal fixes the checksum after a test edits the payload, so the decoder's
// structural checks (not the CRC) must catch the damage.
func reseal(b []byte) []byte {
	binary.LittleEndian.PutUint64(b[12:], uint64(len(b)-stateHdrLen))
	binary.LittleEndian.PutUint32(b[20:], migrate.Checksum(b[stateHdrLen:]))
	return b
}

func TestStateCodecRejects(t *testing.T) {
	good, err := EncodeState(sampleState())
	if err != nil {
		t.Fatal(err)
	}
	clone := func() []byte { return append([]byte(nil), good...) }
	vcpuCountOff := stateHdrLen + 8 + 3*520 + 112 + 48
	cases := map[string][]byte{
		"empty":     nil,
		"bad magic": append([]byte("NOTFERRY"), good[8:]...),
		"version": func() []byte {
			b := clone()
			binary.LittleEndian.PutUint32(b[8:], 99)
			return b
		}(),
		"truncated": good[:len(good)-10],
		"bit flip": func() []byte {
			b := clone()
			b[len(b)/2] ^= 0x10
			return b
		}(),
		"trailing bytes": reseal(append(clone(), 0)),
		"too many vCPUs": func() []byte {
			b := clone()
			binary.LittleEndian.PutUint32(b[vcpuCountOff:], 1<<30)
			return reseal(b)
		}(),
		"payload truncated, length consistent": reseal(clone()[:len(good)-40]),
	}
	for name, b := range cases {
		if _, err := DecodeState(b); !errors.Is(err, ErrBadState) {
			t.Errorf("%s: err = %v, want ErrBadState", name, err)
		}
	}
}

func FuzzDecodeState(f *testing.F) {
	good, _ := EncodeState(sampleState())
	f.Add(good)
	f.Add([]byte(stateMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := DecodeState(b)
		if err != nil {
			return
		}
		if binary.LittleEndian.Uint32(b[8:]) < stateVersion {
			// Upgraded from an older format: its encoding in the
			// current format must round-trip.
			if b, err = EncodeState(s); err != nil {
				t.Fatalf("upgraded state does not encode: %v", err)
			}
			if s, err = DecodeState(b); err != nil {
				t.Fatalf("upgraded state does not decode: %v", err)
			}
		}
		// Whatever decodes must encode back to the same bytes.
		again, err := EncodeState(s)
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("decoded state does not re-encode to its input (err %v)", err)
		}
	})
}

// TestStateCodecVersion1 reads a format 1 state: the virtio devices'
// queues gain SignalledUsed (their used idx), other devices are unchanged.
func TestStateCodecVersion1(t *testing.T) {
	var old bytes.Buffer
	for _, v := range []uint32{0xf, 0, 0, 1, 1, 0} { // status ... broken
		binary.Write(&old, binary.LittleEndian, v)
	}
	binary.Write(&old, binary.LittleEndian, uint64(devices.VirtioFVersion1))
	for q := 0; q < devices.VirtioMaxQueues; q++ {
		binary.Write(&old, binary.LittleEndian, []uint16{16, 1, 7 + uint16(q), 5 + uint16(q)}) // num, ready, last avail, used idx
		binary.Write(&old, binary.LittleEndian, []uint64{0x1000, 0x2000, 0x3000})
	}
	s := sampleState()
	s.Devices = append(s.Devices, DeviceState{Name: "virtio-blk0", Data: old.Bytes()})
	b, err := EncodeState(s)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeState(olderFormat(b, 1))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got.Devices[:2], s.Devices[:2]) {
		t.Error("other devices changed")
	}
	want := devices.VirtioMMIOState{Status: 0xf, QueueSel: 1, InterruptStatus: 1, DriverFeatures: devices.VirtioFVersion1}
	for q := range want.Queues {
		want.Queues[q] = devices.QueueState{Num: 16, Ready: 1, LastAvail: 7 + uint16(q), UsedIdx: 5 + uint16(q),
			Desc: 0x1000, Avail: 0x2000, Used: 0x3000, SignalledUsed: 5 + uint16(q)}
	}
	var w bytes.Buffer
	binary.Write(&w, binary.LittleEndian, &want)
	if !bytes.Equal(got.Devices[2].Data, w.Bytes()) {
		t.Errorf("virtio-blk0 upgraded to\n%x, want\n%x", got.Devices[2].Data, w.Bytes())
	}
	// A format 1 virtio state of the wrong size is refused.
	s.Devices[2].Data = old.Bytes()[1:]
	b, _ = EncodeState(s)
	if _, err := DecodeState(olderFormat(b, 1)); !errors.Is(err, ErrBadState) {
		t.Errorf("short format 1 virtio state: err = %v, want ErrBadState", err)
	}
}

// stateOfPayload is a state with no vCPUs whose encoded payload is n bytes
// (device states of at most maxDevStateLen make up the size).
func stateOfPayload(t *testing.T, n int) *State {
	t.Helper()
	s := &State{Memory: 16 << 20}
	empty, err := EncodeState(s)
	if err != nil {
		t.Fatal(err)
	}
	left := n - (len(empty) - stateHdrLen)
	for i := 0; left > 0; i++ {
		name := fmt.Sprintf("dev%02d", i)
		over := 2 + len(name) + 4
		size := min(maxDevStateLen, left-over)
		if size < 0 {
			t.Fatalf("cannot make a payload of exactly %d bytes", n)
		}
		s.Devices = append(s.Devices, DeviceState{Name: name, Data: make([]byte, size)})
		left -= over + size
	}
	return s
}

// TestStateSizeLimit: the largest state EncodeState makes is one the
// migration protocol carries (migrate.MaxStateSize bytes, header
// included) and DecodeState reads; a byte more is refused by EncodeState
// instead of failing later in the migration.
func TestStateSizeLimit(t *testing.T) {
	most := migrate.MaxStateSize - stateHdrLen
	b, err := EncodeState(stateOfPayload(t, most))
	if err != nil {
		t.Fatalf("EncodeState of a %d-byte payload: %v", most, err)
	}
	if len(b) != migrate.MaxStateSize {
		t.Fatalf("blob of %d bytes, want %d", len(b), migrate.MaxStateSize)
	}
	if _, err := DecodeState(b); err != nil {
		t.Fatalf("DecodeState of the largest blob: %v", err)
	}
	for _, n := range []int{most + 1, migrate.MaxStateSize} {
		if b, err := EncodeState(stateOfPayload(t, n)); err == nil {
			t.Errorf("EncodeState of a %d-byte payload made a %d-byte blob; migrate accepts at most %d", n, len(b), migrate.MaxStateSize)
		}
	}
}
