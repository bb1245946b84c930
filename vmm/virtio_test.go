package vmm

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferryvmm/ferry/migrate"
)

// testDisks is one 1 MiB raw disk image in a test directory.
func testDisks(t *testing.T) []DiskConfig {
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	return []DiskConfig{{Path: path}}
}

// testNets is one virtio-net device on a transient tap (which vanishes
// when ferry closes it) when running as root; none otherwise.
func testNets(t *testing.T) []NetConfig {
	if os.Geteuid() != 0 {
		t.Log("not root: no tap, no virtio-net device")
		return nil
	}
	return []NetConfig{{Tap: fmt.Sprintf("fvt%d", os.Getpid()%100000), MAC: [6]byte{0x52, 0x54, 0, 0xfe, 0, 1}}}
}

func TestParseNet(t *testing.T) {
	n, err := ParseNet("tap=tap0", 1)
	if err != nil || n.Tap != "tap0" || n.MAC != [6]byte{0x52, 0x54, 0, 0xfe, 0, 2} {
		t.Errorf("ParseNet(tap=tap0) = %+v, %v", n, err)
	}
	n, err = ParseNet("tap=t1,mac=02:11:22:33:44:55", 0)
	if err != nil || n.Tap != "t1" || n.MAC != [6]byte{2, 0x11, 0x22, 0x33, 0x44, 0x55} {
		t.Errorf("ParseNet with mac = %+v, %v", n, err)
	}
	for _, bad := range []string{"", "tap=", "mac=02:11:22:33:44:55", "tap=x,mac=zz", "tap=x,foo=1", "tap=0123456789abcdef"} {
		if _, err := ParseNet(bad, 0); err == nil {
			t.Errorf("ParseNet(%q) accepted", bad)
		}
	}
}

func TestParseDisk(t *testing.T) {
	for in, want := range map[string]DiskConfig{
		"a.img":             {Path: "a.img"},
		"/x/a.img,readonly": {Path: "/x/a.img", ReadOnly: true},
		"a.img,ro":          {Path: "a.img", ReadOnly: true},
	} {
		if got, err := ParseDisk(in); err != nil || got != want {
			t.Errorf("ParseDisk(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", ",readonly", "a.img,rw", "a.img,readonly,x"} {
		if _, err := ParseDisk(bad); err == nil {
			t.Errorf("ParseDisk(%q) accepted", bad)
		}
	}
}

func TestVirtioKernelParams(t *testing.T) {
	disks := append(testDisks(t), testDisks(t)[0])
	disks[1].ReadOnly = true
	m := newMachine(t, Config{Memory: 16 << 20, CPUs: 1, Disks: disks})
	want := "virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
	if got := m.KernelParams(); got != want {
		t.Errorf("KernelParams = %q, want %q", got, want)
	}
	var magic [4]byte
	m.mmio.Read(0xd0001000, magic[:])
	if string(magic[:]) != "virt" {
		t.Errorf("magic at the second window %q", magic)
	}
	m.mmio.Read(0xd0002000, magic[:])
	if magic != [4]byte{0xff, 0xff, 0xff, 0xff} {
		t.Errorf("unmapped MMIO reads %x, want all ones", magic)
	}
	if _, err := New(Config{Memory: 16 << 20, CPUs: 1, Disks: []DiskConfig{{Path: "/nonexistent/disk.img"}}}); err == nil {
		t.Error("machine with a missing disk image created")
	}
}

func TestSameLayoutDevices(t *testing.T) {
	base := migrate.VMInfo{Regions: []migrate.Region{{GPA: 0, Size: 16 << 20}}, Devices: []string{"serial0", "virtio-blk0"}}
	have := base
	have.Devices = []string{"serial0"}
	err := sameLayout(have, base)
	if err == nil || !strings.Contains(err.Error(), "missing here: [virtio-blk0]") {
		t.Errorf("destination without the disk: %v", err)
	}
	if err := sameLayout(base, base); err != nil {
		t.Errorf("same devices: %v", err)
	}
	have.Devices = []string{"virtio-blk0", "serial0"}
	if err := sameLayout(have, base); err == nil {
		t.Error("devices in another order accepted")
	}
}
