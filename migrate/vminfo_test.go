package migrate

import (
	"errors"
	"strings"
	"testing"
)

func TestVMInfoSizes(t *testing.T) {
	info := VMInfo{Regions: []Region{{GPA: 0, Size: 3 << 30}, {GPA: 4 << 30, Size: 1 << 30}}}
	if got := info.MemorySize(); got != 4<<30 {
		t.Errorf("MemorySize = %d, want %d", got, uint64(4<<30))
	}
	if got := info.Pages(); got != 4<<30/PageSize {
		t.Errorf("Pages = %d, want %d", got, 4<<30/PageSize)
	}
	if got := info.Regions[1].Pages(); got != 1<<30/PageSize {
		t.Errorf("Region.Pages = %d", got)
	}
	if (VMInfo{}).MemorySize() != 0 {
		t.Error("no regions, some memory")
	}
	r := Region{Size: 2 * PageSize}
	if err := r.checkMapped(0, make([]byte, 2*PageSize)); err != nil {
		t.Errorf("exact mapping: %v", err)
	}
	if err := r.checkMapped(1, make([]byte, PageSize)); err == nil || !strings.Contains(err.Error(), "region 1 maps 4096 bytes") {
		t.Errorf("short mapping: %v", err)
	}
}

func TestSameLayout(t *testing.T) {
	base := VMInfo{
		ID:      VMID{1},
		VCPUs:   2,
		Regions: []Region{{GPA: 0, Size: 16 << 20}},
		Devices: []string{"serial0", "virtio-blk0"},
	}
	other := base
	other.ID = VMID{2}
	if err := SameLayout(base, other); err != nil {
		t.Errorf("ids differ only: %v", err)
	}
	for _, c := range []struct {
		name    string
		change  func(*VMInfo)
		want    string
		devices bool
	}{
		{"vCPUs", func(i *VMInfo) { i.VCPUs = 1 }, "source has 1 vCPUs, here 2", false},
		{"region count", func(i *VMInfo) { i.Regions = append(i.Regions, Region{GPA: 4 << 30, Size: PageSize}) }, "source has 2 memory regions, here 1", false},
		{"region", func(i *VMInfo) { i.Regions = []Region{{GPA: 0, Size: 32 << 20}} }, "memory region 0: source 0x0+0x2000000, here 0x0+0x1000000", false},
		{"device missing", func(i *VMInfo) { i.Devices = i.Devices[:1] }, "source has devices [serial0], here [serial0 virtio-blk0]", true},
		{"device order", func(i *VMInfo) { i.Devices = []string{"virtio-blk0", "serial0"} }, "source has devices", true},
		{"names that print alike", func(i *VMInfo) { i.Devices = []string{"serial0 virtio-blk0"} }, "source has devices", true},
	} {
		want := base
		want.Regions = append([]Region(nil), base.Regions...)
		want.Devices = append([]string(nil), base.Devices...)
		c.change(&want)
		err := SameLayout(base, want)
		var le *LayoutError
		if !errors.As(err, &le) || !strings.Contains(err.Error(), c.want) || le.Devices != c.devices {
			t.Errorf("%s: err = %v, want a LayoutError (devices %v) saying %q", c.name, err, c.devices, c.want)
		}
	}
}
