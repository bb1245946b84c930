package vmm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/ferryvmm/ferry/devices"
	"github.com/ferryvmm/ferry/kvm"
	"github.com/ferryvmm/ferry/migrate"
)

// The VM state format (migration STATE record, snapshots):
//
//	+--------+---------+-------+-------------+--------+----------+
//	| "FERRYVM" 8 B    | ver 4 | payload len 8 | crc32c 4 | rsvd 4 |
//	+--------+---------+-------+-------------+--------+----------+
//	| payload: memory size, PIC×2, IOAPIC, PIT, clock,             |
//	|   vCPUs (count, then each: id, CPUID, MP state, regs, sregs, |
//	|   FPU or XSAVE+XCRs, debug regs, LAPIC, MSRs, events, TSC),  |
//	|   devices (count, then each: name, data),                    |
//	|   run state (1 byte: 0 running, 1 paused by its user)        |
//	+--------------------------------------------------------------+
//
// Integers are little endian; KVM structures are written field by field in
// their kernel layout (encoding/binary). Every count is checked against a
// cap before anything is allocated, so a hostile blob cannot make the
// decoder allocate more than the blob's own (capped) size.
//
// Those structures are types of gokvm (at the version go.mod pins) and of
// package kvm, so the format is pinned by tests, not by their definitions:
// statelayout_test.go checks the encoded size of each, and a real encoded
// state (testdata/state-v3.bin, rewritten only with -write-golden-state)
// must still decode to the values listed in testdata/state-v3.txt and
// encode back to the same bytes. A change there is a new format version.
//
// Version 2 added QueueState.SignalledUsed (VIRTIO_F_EVENT_IDX) to the
// virtio-mmio devices' state; a version 1 blob is still read, its virtio
// devices' states converted (devices.UpgradeVirtioStateV1).
//
// Version 3 added the run state (State.Paused): a guest its user paused
// is migrated, or saved, paused, and restarts paused. It lives here, in
// the VM state, rather than in the migration protocol: it is the guest's
// state like its registers (QEMU, likewise, sends the run state inside its
// migration stream, as a device state), so a migration and a snapshot
// both carry it with no change to their records. A version 1 or 2 blob
// has none and decodes as running; an older ferry refuses a version 3
// blob (so it cannot start, running, a guest that was paused).
const (
	stateMagic   = "FERRYVM\x00"
	stateVersion = 3
	stateHdrLen  = 28

	// MaxStateSize caps a whole encoded state, header included: what the
	// migration's STATE record (and so a snapshot) carries at most.
	MaxStateSize = migrate.MaxStateSize
	// maxStatePayload is what is left of it after the header.
	maxStatePayload = MaxStateSize - stateHdrLen

	maxStateVCPUs  = MaxCPUs
	maxStateCPUID  = 256
	maxStateMSRs   = 1024
	maxStateDevs   = 64
	maxDevNameLen  = 64
	maxDevStateLen = 1 << 20
)

// ErrBadState wraps every reason a state blob is refused.
var ErrBadState = errors.New("invalid VM state")

// EncodeState serialises s.
func EncodeState(s *State) ([]byte, error) {
	var p bytes.Buffer
	w := func(v any) {
		if err := binary.Write(&p, binary.LittleEndian, v); err != nil {
			panic(err) // only fixed-size values are written
		}
	}
	w(s.Memory)
	w(&s.PIC[0])
	w(&s.PIC[1])
	w(&s.IOAPIC)
	w(&s.PIT)
	w(&s.Clock)
	w(uint32(len(s.VCPUs)))
	for _, v := range s.VCPUs {
		w(uint32(v.ID))
		w(uint32(len(v.CPUID)))
		w(v.CPUID)
		w(&v.MPState)
		w(&v.Regs)
		w(&v.Sregs)
		var hasX uint8
		if v.HasXSave {
			hasX = 1
		}
		w(hasX)
		if v.HasXSave {
			w(&v.XSave)
			w(&v.XCRs)
		} else {
			w(&v.FPU)
		}
		w(&v.DebugRegs)
		w(&v.LAPIC)
		w(uint32(len(v.MSRs)))
		w(v.MSRs)
		w(&v.Events)
		w(v.TSCKHz)
	}
	w(uint32(len(s.Devices)))
	for _, d := range s.Devices {
		if len(d.Name) > maxDevNameLen || len(d.Data) > maxDevStateLen {
			return nil, fmt.Errorf("device %q: state too large to encode", d.Name)
		}
		w(uint16(len(d.Name)))
		p.WriteString(d.Name)
		w(uint32(len(d.Data)))
		p.Write(d.Data)
	}
	var run uint8
	if s.Paused {
		run = 1
	}
	w(run)
	if p.Len() > maxStatePayload {
		return nil, fmt.Errorf("VM state is %d bytes, more than the %d the format allows", stateHdrLen+p.Len(), MaxStateSize)
	}
	out := make([]byte, stateHdrLen, stateHdrLen+p.Len())
	copy(out, stateMagic)
	binary.LittleEndian.PutUint32(out[8:], stateVersion)
	binary.LittleEndian.PutUint64(out[12:], uint64(p.Len()))
	binary.LittleEndian.PutUint32(out[20:], migrate.Checksum(p.Bytes()))
	return append(out, p.Bytes()...), nil
}

// stateReader decodes with bounds checks; the first error sticks.
type stateReader struct {
	r   *bytes.Reader
	err error
}

func (d *stateReader) read(v any) {
	if d.err == nil {
		if err := binary.Read(d.r, binary.LittleEndian, v); err != nil {
			d.err = fmt.Errorf("%w: truncated (%v)", ErrBadState, err)
		}
	}
}

func (d *stateReader) count(what string, max int) int {
	var n uint32
	d.read(&n)
	if d.err == nil && int64(n) > int64(max) {
		d.err = fmt.Errorf("%w: %d %s, at most %d", ErrBadState, n, what, max)
	}
	if d.err != nil {
		return 0
	}
	return int(n)
}

func (d *stateReader) bytes(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n > d.r.Len() {
		d.err = fmt.Errorf("%w: truncated", ErrBadState)
		return nil
	}
	b := make([]byte, n)
	io.ReadFull(d.r, b)
	return b
}

// DecodeState parses and checks a blob made by EncodeState.
func DecodeState(b []byte) (*State, error) {
	if len(b) < stateHdrLen || string(b[:8]) != stateMagic {
		return nil, fmt.Errorf("%w: no FERRYVM header", ErrBadState)
	}
	version := binary.LittleEndian.Uint32(b[8:])
	if version < 1 || version > stateVersion {
		return nil, fmt.Errorf("%w: format version %d, this ferry reads 1 to %d", ErrBadState, version, stateVersion)
	}
	if r := binary.LittleEndian.Uint32(b[24:]); r != 0 {
		return nil, fmt.Errorf("%w: reserved header field is %#x, not 0", ErrBadState, r)
	}
	n := binary.LittleEndian.Uint64(b[12:])
	if n > maxStatePayload || n != uint64(len(b)-stateHdrLen) {
		return nil, fmt.Errorf("%w: payload length %d does not match the %d bytes present", ErrBadState, n, len(b)-stateHdrLen)
	}
	payload := b[stateHdrLen:]
	if crc := migrate.Checksum(payload); crc != binary.LittleEndian.Uint32(b[20:]) {
		return nil, fmt.Errorf("%w: checksum mismatch", ErrBadState)
	}
	d := &stateReader{r: bytes.NewReader(payload)}
	s := &State{}
	d.read(&s.Memory)
	d.read(&s.PIC[0])
	d.read(&s.PIC[1])
	d.read(&s.IOAPIC)
	d.read(&s.PIT)
	d.read(&s.Clock)
	nv := d.count("vCPUs", maxStateVCPUs)
	for i := 0; i < nv && d.err == nil; i++ {
		v := &kvm.VCPUState{}
		var id uint32
		d.read(&id)
		v.ID = int(id)
		v.CPUID = make([]kvm.CPUIDEntry, d.count("CPUID entries", maxStateCPUID))
		d.read(v.CPUID)
		d.read(&v.MPState)
		d.read(&v.Regs)
		d.read(&v.Sregs)
		var hasX uint8
		d.read(&hasX)
		if d.err == nil && hasX > 1 {
			d.err = fmt.Errorf("%w: vCPU %d: XSAVE flag %d", ErrBadState, i, hasX)
		}
		v.HasXSave = hasX != 0
		if v.HasXSave {
			d.read(&v.XSave)
			d.read(&v.XCRs)
		} else {
			d.read(&v.FPU)
		}
		d.read(&v.DebugRegs)
		d.read(&v.LAPIC)
		v.MSRs = make([]kvm.MSREntry, d.count("MSRs", maxStateMSRs))
		d.read(v.MSRs)
		d.read(&v.Events)
		d.read(&v.TSCKHz)
		if d.err == nil && v.ID != i {
			d.err = fmt.Errorf("%w: vCPU %d has id %d", ErrBadState, i, v.ID)
		}
		s.VCPUs = append(s.VCPUs, v)
	}
	nd := d.count("devices", maxStateDevs)
	for i := 0; i < nd && d.err == nil; i++ {
		var nl uint16
		d.read(&nl)
		if d.err == nil && int(nl) > maxDevNameLen {
			d.err = fmt.Errorf("%w: device name of %d bytes", ErrBadState, nl)
		}
		name := string(d.bytes(int(nl)))
		data := d.bytes(d.count("bytes of device state", maxDevStateLen))
		s.Devices = append(s.Devices, DeviceState{Name: name, Data: data})
	}
	if version >= 3 {
		var run uint8
		d.read(&run)
		if d.err == nil && run > 1 {
			d.err = fmt.Errorf("%w: run state %d (0 running, 1 paused)", ErrBadState, run)
		}
		s.Paused = run == 1
	}
	if d.err == nil && d.r.Len() != 0 {
		d.err = fmt.Errorf("%w: %d bytes after the last device", ErrBadState, d.r.Len())
	}
	if d.err == nil && version == 1 {
		d.err = upgradeDevicesV1(s.Devices)
	}
	if d.err != nil {
		return nil, d.err
	}
	return s, nil
}

// upgradeDevicesV1 converts the virtio-mmio devices' states (named
// virtio-blk0, virtio-net0, ...; see addVirtio) of a version 1 blob.
func upgradeDevicesV1(list []DeviceState) error {
	for i, d := range list {
		if !strings.HasPrefix(d.Name, "virtio-") {
			continue
		}
		data, err := devices.UpgradeVirtioStateV1(d.Name, d.Data)
		if err != nil {
			return fmt.Errorf("%w: format 1: %v", ErrBadState, err)
		}
		list[i].Data = data
	}
	return nil
}
