package devices

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// Fuzz targets for what a device reads from outside ferry: descriptor
// chains from guest memory, and saved states (a migration, a snapshot):
//
//	go test -run '^$' -fuzz '^FuzzVirtqueue$' -fuzztime 20s ./devices
//
// and FuzzSerialRestore, FuzzCMOSRestore, FuzzI8042Restore,
// FuzzVirtioBlkRestore, FuzzVirtioNetRestore the same way. The seed
// corpus is in testdata/fuzz/ (TestFuzzDeviceSeeds checks it;
// FERRY_WRITE_FUZZ_SEEDS=1 makes it rewrite it).

// fuzzMemSize is the guest RAM of the virtio targets: big enough for the
// rigs' rings (below 0x8000) and buffers, small enough that the fuzzer
// fills it.
const fuzzMemSize = 0x10000

func fuzzMem(b []byte) *testMem {
	m := newTestMem(fuzzMemSize)
	copy(m.b, b)
	return m
}

// FuzzVirtqueue walks the chains of a split virtqueue whose layout and
// position come from cfg (byte 0: log2 of the size, modulo 9, | 0x10
// indirect | 0x20 EVENT_IDX; then little-endian u16s from byte 2: desc,
// avail, used, last avail, used idx, signalled used) and whose rings and
// buffers are mem (guest RAM from 0). The queue is one the transport accepts (validate); then every
// Pop either fails with ErrRing or returns a chain whose every buffer is
// in RAM, readable ones first, at most 4 GiB, which the device can read,
// write and return. Nothing may panic, and the walk takes no more chains
// than were pending.
func FuzzVirtqueue(f *testing.F) {
	f.Fuzz(func(t *testing.T, cfg, mem []byte) {
		var c [14]byte
		copy(c[:], cfg)
		u16 := func(i int) uint16 { return binary.LittleEndian.Uint16(c[i:]) }
		m := fuzzMem(mem)
		q := &Queue{Mem: m, Indirect: c[0]&0x10 != 0, EventIdx: c[0]&0x20 != 0, S: QueueState{
			Num: 1 << (c[0] & 15 % 9), Ready: 1,
			Desc: uint64(u16(2) &^ 15), Avail: uint64(u16(4) &^ 1), Used: uint64(u16(6) &^ 3),
			LastAvail: u16(8), UsedIdx: u16(10), SignalledUsed: u16(12),
		}}
		if q.validate() != nil {
			return
		}
		// The used ring, which alone is written here, overlaps neither
		// the avail ring nor the descriptors (validate): the walk takes at
		// most the chains pending at its start.
		pending, err := q.Pending()
		if err != nil && !errors.Is(err, ErrRing) {
			t.Fatalf("Pending: %v is not ErrRing", err)
		}
		for pops := 0; ; pops++ {
			if pops > int(pending) {
				t.Fatalf("%d chains taken, %d were pending", pops, pending)
			}
			ch, err := q.Pop()
			if err != nil {
				if !errors.Is(err, ErrRing) {
					t.Fatalf("Pop: %v is not ErrRing", err)
				}
				return
			}
			if ch == nil {
				return
			}
			checkChain(t, q, m, ch)
			if err := q.Push(ch.Head, uint32(ch.Len(true))); err != nil {
				t.Fatalf("Push into a validated used ring: %v", err)
			}
			q.WantInterrupt()
		}
	})
}

func checkChain(t *testing.T, q *Queue, m *testMem, c *Chain) {
	t.Helper()
	if c.Head >= q.S.Num || len(c.Bufs) == 0 {
		t.Fatalf("chain head %d (queue size %d) with %d buffers", c.Head, q.S.Num, len(c.Bufs))
	}
	var total uint64
	for i, b := range c.Bufs {
		if _, err := m.Slice(b.Addr, uint64(b.Len)); err != nil {
			t.Fatalf("buffer %d outside RAM: %v", i, err)
		}
		if i > 0 && c.Bufs[i-1].Write && !b.Write {
			t.Fatalf("buffer %d readable after a writable one", i)
		}
		total += uint64(b.Len)
	}
	if total > 1<<32 || c.Len(false)+c.Len(true) != total {
		t.Fatalf("chain of %d bytes (readable %d, writable %d)", total, c.Len(false), c.Len(true))
	}
	p := make([]byte, min(c.Len(false), 4096))
	if n, err := c.ReadFrom(m, 0, p); err != nil || n != len(p) {
		t.Fatalf("ReadFrom: %d of %d bytes, %v", n, len(p), err)
	}
	segs, _, err := c.Segments(m, true, 0, c.Len(true))
	if err != nil {
		t.Fatalf("Segments: %v", err)
	}
	n := 0
	for _, s := range segs {
		n += len(s)
	}
	if uint64(n) != c.Len(true) {
		t.Fatalf("Segments cover %d of %d writable bytes", n, c.Len(true))
	}
}

// checkRestore is the property of every Restore target: a state d
// refuses gets an error naming d and leaves d as it was; a state d
// accepts saves back to bytes that a fresh device (fresh()) accepts and
// saves identically; and the state d reaches by running (exercise) after
// that still saves to a state a fresh device accepts.
func checkRestore(t *testing.T, d Stateful, fresh func() Stateful, data []byte, exercise func()) {
	t.Helper()
	save := func(d Stateful) []byte {
		b, err := d.Save()
		if err != nil {
			t.Fatalf("Save: %v", err)
		}
		return b
	}
	before := save(d)
	if err := d.Restore(data); err != nil {
		if !strings.Contains(err.Error(), d.Name()) {
			t.Fatalf("error %q does not name %s", err, d.Name())
		}
		if !bytes.Equal(save(d), before) {
			t.Fatalf("the refused state (%v) changed %s", err, d.Name())
		}
		return
	}
	saved := save(d)
	d2 := fresh()
	if err := d2.Restore(saved); err != nil {
		t.Fatalf("a state %s accepted saves to one it refuses: %v", d.Name(), err)
	}
	if !bytes.Equal(save(d2), saved) {
		t.Fatalf("%s: a restored state saves differently", d.Name())
	}
	exercise()
	if err := fresh().Restore(save(d)); err != nil {
		t.Fatalf("%s ran into a state it refuses: %v", d.Name(), err)
	}
}

// FuzzSerialRestore restores a UART state, then runs ops on it: pairs of
// (register | 8 read | 16 input, value).
func FuzzSerialRestore(f *testing.F) {
	fresh := func() Stateful { return NewSerial("serial0", io.Discard, &fakeIRQ{}) }
	f.Fuzz(func(t *testing.T, state, ops []byte) {
		u := fresh().(*Serial)
		checkRestore(t, u, fresh, state, func() {
			for i := 0; i+1 < len(ops); i += 2 {
				reg, v := uint16(ops[i]&7), ops[i+1]
				switch {
				case ops[i]&16 != 0:
					if u.s.RXLen < SerialRXSize { // Input waits for room
						u.Input([]byte{v})
					}
				case ops[i]&8 != 0:
					var b [1]byte
					u.PortRead(COM1Base+reg, b[:])
				default:
					u.PortWrite(COM1Base+reg, []byte{v})
				}
			}
		})
	})
}

// FuzzCMOSRestore restores a CMOS state, then runs ops: pairs of
// (port 0x70/0x71 | 2 read, value).
func FuzzCMOSRestore(f *testing.F) {
	fresh := func() Stateful { return NewCMOS(nil) }
	f.Fuzz(func(t *testing.T, state, ops []byte) {
		c := fresh().(*CMOS)
		checkRestore(t, c, fresh, state, func() {
			for i := 0; i+1 < len(ops); i += 2 {
				port := CMOSIndex + uint16(ops[i]&1)
				if ops[i]&2 != 0 {
					var b [1]byte
					c.PortRead(port, b[:])
				} else {
					c.PortWrite(port, []byte{ops[i+1]})
				}
			}
		})
	})
}

// FuzzI8042Restore restores the i8042's state, then writes ops to its
// command port; the reset line may fire once.
func FuzzI8042Restore(f *testing.F) {
	f.Fuzz(func(t *testing.T, state, ops []byte) {
		resets := 0
		fresh := func() Stateful { return NewI8042(func() { resets++ }) }
		k := fresh().(*I8042)
		checkRestore(t, k, fresh, state, func() {
			seen := k.s.ResetSeen
			for _, v := range ops {
				k.PortWrite(I8042Command, []byte{v})
			}
			if resets > 1 || (seen == 1 && resets > 0) {
				t.Fatalf("reset line fired %d times (reset already seen: %d)", resets, seen)
			}
		})
	})
}

// fuzzTransport restores a virtio-mmio transport of backend over guest RAM
// mem, then writes ops to its registers (5 bytes each: register / 4,
// value; a register offset of 0x50 is a queue notify) and kicks every
// queue. The backend persists across inputs (one disk, one tap per fuzz
// worker); everything a restore sets is in the transport.
func fuzzTransport(t *testing.T, name string, backend VirtioBackend, state, mem, ops []byte) {
	m := fuzzMem(mem)
	fresh := func() Stateful { return NewVirtioMMIO(name, backend, m, &vioIRQ{}) }
	tr := fresh().(*VirtioMMIO)
	checkRestore(t, tr, fresh, state, func() {
		for i := 0; i+4 < len(ops); i += 5 {
			reg(tr, uint64(ops[i])*4, binary.LittleEndian.Uint32(ops[i+1:]))
		}
		tr.Kick()
	})
}

// quietLogs drops the devices' log lines (one per broken ring: too many
// when fuzzing).
func quietLogs(f *testing.F) {
	saved := logf
	logf = func(string, ...any) {}
	f.Cleanup(func() { logf = saved })
}

// FuzzVirtioBlkRestore: fuzzTransport on a read-only virtio-blk disk
// (read-only: garbage flush requests cost no fsync).
func FuzzVirtioBlkRestore(f *testing.F) {
	quietLogs(f)
	path := filepath.Join(f.TempDir(), "disk.img")
	if err := os.WriteFile(path, make([]byte, 64*sectorSize), 0o644); err != nil {
		f.Fatal(err)
	}
	blk, err := OpenBlk(path, true)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { blk.Close() })
	f.Fuzz(func(t *testing.T, state, mem, ops []byte) {
		fuzzTransport(t, "virtio-blk0", blk, state, mem, ops)
	})
}

// FuzzVirtioNetRestore: fuzzTransport on virtio-net, whose "tap" is a
// socket pair drained by a goroutine. The device stays paused, so its
// receive goroutine delivers nothing; transmitting reaches the socket.
func FuzzVirtioNetRestore(f *testing.F) {
	quietLogs(f)
	n, closeNet := fuzzNet(f)
	f.Cleanup(closeNet)
	f.Fuzz(func(t *testing.T, state, mem, ops []byte) {
		fuzzTransport(t, "virtio-net0", n, state, mem, ops)
	})
}

// fuzzNet is a Net on one end of a SOCK_SEQPACKET pair, attached to a
// transport of its own (its receive goroutine waits on it), with the other
// end read and dropped.
func fuzzNet(tb testing.TB) (*Net, func()) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_SEQPACKET, 0)
	if err != nil {
		tb.Fatal(err)
	}
	syscall.SetNonblock(fds[0], true)
	peer := os.NewFile(uintptr(fds[1]), "peer")
	n := NewNet("tap-fuzz", os.NewFile(uintptr(fds[0]), "tap"), [6]byte{2, 0, 0, 0, 0, 9})
	n.Attach(NewVirtioMMIO("virtio-net0", n, newTestMem(fuzzMemSize), &vioIRQ{}))
	go io.Copy(io.Discard, peer)
	return n, func() { n.Close(); peer.Close() }
}
