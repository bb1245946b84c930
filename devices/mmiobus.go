package devices

import (
	"fmt"
	"sort"
	"sync"
)

// MMIOBus routes guest MMIO exits to the device whose window holds the
// address. Unclaimed reads return all ones and unclaimed writes are dropped.
type MMIOBus struct {
	mu      sync.Mutex // guards windows: vCPU threads route while devices register
	windows []mmioWindow
}

type mmioWindow struct {
	base, size uint64
	dev        MMIODevice
}

// Register attaches dev to [base, base+size).
func (b *MMIOBus) Register(base, size uint64, dev MMIODevice) error {
	if size == 0 || base+size < base {
		return fmt.Errorf("MMIO window %#x+%#x is invalid", base, size)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, w := range b.windows {
		if base < w.base+w.size && w.base < base+size {
			return fmt.Errorf("MMIO %#x+%#x of %s overlaps %#x+%#x of %s", base, size, dev.Name(), w.base, w.size, w.dev.Name())
		}
	}
	b.windows = append(b.windows, mmioWindow{base, size, dev})
	sort.Slice(b.windows, func(i, j int) bool { return b.windows[i].base < b.windows[j].base })
	return nil
}

func (b *MMIOBus) find(addr uint64, n int) (MMIODevice, uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	i := sort.Search(len(b.windows), func(i int) bool { return b.windows[i].base+b.windows[i].size > addr })
	if i < len(b.windows) {
		w := b.windows[i]
		if addr >= w.base && addr+uint64(n) <= w.base+w.size {
			return w.dev, addr - w.base
		}
	}
	return nil, 0
}

// Read dispatches an MMIO read.
func (b *MMIOBus) Read(addr uint64, data []byte) {
	if d, off := b.find(addr, len(data)); d != nil {
		d.MMIORead(off, data)
		return
	}
	for i := range data {
		data[i] = 0xff
	}
}

// Write dispatches an MMIO write.
func (b *MMIOBus) Write(addr uint64, data []byte) {
	if d, off := b.find(addr, len(data)); d != nil {
		d.MMIOWrite(off, data)
	}
}
