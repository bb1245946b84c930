package devices

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// The seed corpora of the fuzz targets in fuzz_test.go, written to
// testdata/fuzz/<target>/<name>: valid inputs the targets accept and run,
// and near misses.

// seed is one corpus entry: the target's arguments.
type seed [][]byte

// seedRing lays out the virtqueue tests' queue (desc tDesc, avail tAvail,
// used tUsed, tQSize entries) in m: the chain 0 -> 3 -> 5 (a readable
// request header at 0x8000, then writable buffers), an indirect
// descriptor 7 (table at 0x6000: readable, writable), both made
// available.
func seedRing(m *testMem) {
	m.putDesc(tDesc, 0, tDescr{0x8000, 16, vringDescFNext, 3})
	m.putDesc(tDesc, 3, tDescr{0x9000, 512, vringDescFWrite | vringDescFNext, 5})
	m.putDesc(tDesc, 5, tDescr{0xa000, 1, vringDescFWrite, 0})
	m.putDesc(tDesc, 7, tDescr{0x6000, 32, vringDescFIndir, 0})
	m.putDesc(0x6000, 0, tDescr{0x8000, 16, vringDescFNext, 1})
	m.putDesc(0x6000, 1, tDescr{0xa000, 513, vringDescFWrite, 0})
	m.offer(0)
	m.offer(7)
}

// queueCfg is FuzzVirtqueue's cfg argument (byte 1 is unused).
func queueCfg(flags byte, desc, avail, used, lastAvail uint16) []byte {
	c := []byte{flags | 4, 0} // 1<<4 = tQSize entries
	for _, v := range []uint16{desc, avail, used, lastAvail} {
		c = binary.LittleEndian.AppendUint16(c, v)
	}
	return c
}

// trimmed is m's bytes without the trailing zeros (fuzzMem adds them back).
func trimmed(m *testMem) []byte { return bytes.TrimRight(m.b[:fuzzMemSize], "\x00") }

// regOps are fuzzTransport ops: register offset, value; ...
func regOps(pairs ...uint32) []byte {
	var b []byte
	for i := 0; i+1 < len(pairs); i += 2 {
		b = append(b, byte(pairs[i]/4))
		b = binary.LittleEndian.AppendUint32(b, pairs[i+1])
	}
	return b
}

func deviceSeeds(t *testing.T) map[string]map[string]seed {
	ring := newTestMem(fuzzMemSize)
	seedRing(ring)
	loop := newTestMem(fuzzMemSize)
	loop.putDesc(tDesc, 0, tDescr{0x8000, 16, vringDescFNext, 1})
	loop.putDesc(tDesc, 1, tDescr{0x8000, 16, vringDescFNext, 0})
	loop.offer(0)

	save := func(d Stateful) []byte {
		b, err := d.Save()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	devs := map[string]Device{}
	for _, c := range allDevices() {
		d := c.make()
		c.poke(d)
		devs[c.name] = d
	}
	serial := save(devs["serial"].(Stateful))
	cmos := save(devs["cmos"].(Stateful))
	i8042 := save(NewI8042(nil))

	// The transports as the rigs leave them: features negotiated, queues
	// at the layout seedRing (blk) and the net rig use.
	blk := save(newBlkRig(t, true).t)
	blkMem := newTestMem(fuzzMemSize)
	seedRing(blkMem)
	binary.LittleEndian.PutUint32(blkMem.b[0x8000:], virtioBlkTIn)
	binary.LittleEndian.PutUint64(blkMem.b[0x8008:], 1)
	nr := newNetRig(t)
	net := save(nr.t)
	netMem := newTestMem(fuzzMemSize)
	netMem.putDesc(nTxDesc, 0, tDescr{0x8000, virtioNetHdr + 60, 0, 0})
	copy(netMem.b[0x8000+virtioNetHdr:], AnnounceFrame([6]byte{2, 0, 0, 0, 0, 9}))
	binary.LittleEndian.PutUint16(netMem.b[nTxAvail+2:], 1)
	netMem.putDesc(nRxDesc, 0, tDescr{0x9000, 2048, vringDescFWrite, 0})
	binary.LittleEndian.PutUint16(netMem.b[nRxAvail+2:], 1)
	notify := regOps(vmQueueNotify, 0, vmQueueNotify, 1)
	reset := regOps(vmStatus, 0, vmIntACK, 3)

	short := func(b []byte) []byte { return b[:len(b)-1] }
	return map[string]map[string]seed{
		"FuzzVirtqueue": {
			"chains":          {queueCfg(0x10, tDesc, tAvail, tUsed, 0), trimmed(ring)},
			"chains-eventidx": {queueCfg(0x30, tDesc, tAvail, tUsed, 0), trimmed(ring)},
			"no-indirect":     {queueCfg(0, tDesc, tAvail, tUsed, 0), trimmed(ring)},
			"ahead":           {queueCfg(0x10, tDesc, tAvail, tUsed, 0x8000), trimmed(ring)},
			"loop":            {queueCfg(0x10, tDesc, tAvail, tUsed, 0), trimmed(loop)},
			"used-on-avail":   {queueCfg(0x10, tDesc, tAvail, tAvail, 0), trimmed(ring)},
		},
		"FuzzSerialRestore": {
			"used":  {serial, []byte{0x08, 0, 0x0a, 0, 0x10, 'a', 0x00, 'x', 0x02, 0x02}},
			"fresh": {save(NewSerial("serial0", nil, nil)), []byte{0x01, 0x0f, 0x0a, 0}},
			"short": {short(serial), nil},
		},
		"FuzzCMOSRestore": {
			"used":  {cmos, []byte{0, 0x0b, 2, 0, 1, 0x42, 0, 0x0d, 3, 0}},
			"short": {short(cmos), nil},
		},
		"FuzzI8042Restore": {
			"fresh": {i8042, []byte{0xfe, 0xfe}},
			"short": {short(i8042), nil},
		},
		"FuzzVirtioBlkRestore": {
			"read":  {blk, trimmed(blkMem), notify},
			"reset": {blk, trimmed(blkMem), reset},
			"short": {short(blk), nil, nil},
		},
		"FuzzVirtioNetRestore": {
			"transmit": {net, trimmed(netMem), notify},
			"reset":    {net, trimmed(netMem), reset},
			"short":    {short(net), nil, nil},
		},
	}
}

// seedFile is a corpus file in the format of `go test -fuzz`.
func seedFile(s seed) []byte {
	var b strings.Builder
	b.WriteString("go test fuzz v1\n")
	for _, a := range s {
		fmt.Fprintf(&b, "[]byte(%q)\n", a)
	}
	return []byte(b.String())
}

// TestFuzzDeviceSeeds checks that the corpus files match deviceSeeds
// (FERRY_WRITE_FUZZ_SEEDS=1 rewrites them), and that the valid states
// among them restore, so that the fuzzer starts from states the devices
// accept.
func TestFuzzDeviceSeeds(t *testing.T) {
	write := os.Getenv("FERRY_WRITE_FUZZ_SEEDS") != ""
	seeds := deviceSeeds(t)
	targets := make([]string, 0, len(seeds))
	for target := range seeds {
		targets = append(targets, target)
	}
	sort.Strings(targets)
	for _, target := range targets {
		dir := filepath.Join("testdata", "fuzz", target)
		for name, s := range seeds[target] {
			p := filepath.Join(dir, name)
			if write {
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, seedFile(s), 0o644); err != nil {
					t.Fatal(err)
				}
				continue
			}
			if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, seedFile(s)) {
				t.Errorf("%s is missing or stale (%v): rewrite with FERRY_WRITE_FUZZ_SEEDS=1 go test -run TestFuzzDeviceSeeds ./devices", p, err)
			}
		}
	}
	n, closeNet := fuzzNet(t)
	defer closeNet()
	blk := newBlkRig(t, true).blk
	for target, dev := range map[string]func() Stateful{
		"FuzzSerialRestore":    func() Stateful { return NewSerial("serial0", nil, nil) },
		"FuzzCMOSRestore":      func() Stateful { return NewCMOS(nil) },
		"FuzzI8042Restore":     func() Stateful { return NewI8042(nil) },
		"FuzzVirtioBlkRestore": func() Stateful { return NewVirtioMMIO("virtio-blk0", blk, newTestMem(fuzzMemSize), &vioIRQ{}) },
		"FuzzVirtioNetRestore": func() Stateful { return NewVirtioMMIO("virtio-net0", n, newTestMem(fuzzMemSize), &vioIRQ{}) },
	} {
		for name, s := range seeds[target] {
			if err := dev().Restore(s[0]); (err == nil) != (name != "short") {
				t.Errorf("%s seed %s: Restore: %v", target, name, err)
			}
		}
	}
}
