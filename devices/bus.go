package devices

import (
	"fmt"
	"sort"
	"sync"
)

// PortBus routes port I/O to the device registered for the port range.
// Unclaimed reads return all ones, as on a PC with nothing on the bus, and
// unclaimed writes are dropped; both are counted for diagnostics.
type PortBus struct {
	mu        sync.Mutex // guards ranges and unclaimed (every vCPU thread routes through the bus)
	ranges    []portRange
	unclaimed map[uint16]int
}

type portRange struct {
	base, end uint16 // [base, end]
	dev       PortDevice
}

// Register attaches dev to ports [base, base+count).
func (b *PortBus) Register(base uint16, count int, dev PortDevice) error {
	if count <= 0 || int(base)+count > 0x10000 {
		return fmt.Errorf("port range %#x+%d is invalid", base, count)
	}
	end := base + uint16(count-1)
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, r := range b.ranges {
		if base <= r.end && end >= r.base {
			return fmt.Errorf("ports %#x-%#x of %s overlap %#x-%#x of %s", base, end, dev.Name(), r.base, r.end, r.dev.Name())
		}
	}
	b.ranges = append(b.ranges, portRange{base, end, dev})
	sort.Slice(b.ranges, func(i, j int) bool { return b.ranges[i].base < b.ranges[j].base })
	return nil
}

func (b *PortBus) find(port uint16) PortDevice {
	b.mu.Lock()
	defer b.mu.Unlock()
	i := sort.Search(len(b.ranges), func(i int) bool { return b.ranges[i].end >= port })
	if i < len(b.ranges) && b.ranges[i].base <= port {
		return b.ranges[i].dev
	}
	if b.unclaimed == nil {
		b.unclaimed = map[uint16]int{}
	}
	b.unclaimed[port]++
	return nil
}

// Read dispatches an IN.
func (b *PortBus) Read(port uint16, data []byte) {
	if d := b.find(port); d != nil {
		d.PortRead(port, data)
		return
	}
	for i := range data {
		data[i] = 0xff
	}
}

// Write dispatches an OUT.
func (b *PortBus) Write(port uint16, data []byte) {
	if d := b.find(port); d != nil {
		d.PortWrite(port, data)
	}
}

// Unclaimed returns a copy of the access counts of ports no device claims.
func (b *PortBus) Unclaimed() map[uint16]int {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make(map[uint16]int, len(b.unclaimed))
	for p, n := range b.unclaimed {
		out[p] = n
	}
	return out
}
