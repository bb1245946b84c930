package devices

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// virtio-net (virtio 1.x, 5.1).
const (
	virtioNetID    = 1
	virtioNetFMAC  = 1 << 5
	virtioNetHdr   = 12 // struct virtio_net_hdr_v1 (num_buffers included)
	virtioNetRX    = 0
	virtioNetTX    = 1
	virtioNetMaxTX = 65536 + virtioNetHdr
)

// Net is a virtio-net device backed by a tap interface. A goroutine reads
// the tap and delivers frames into the receive queue; the transmit queue
// is drained synchronously when the driver notifies it. No offloads are
// negotiated, so the virtio-net header is zero on receive and ignored on
// transmit.
type Net struct {
	tapName string
	tap     *os.File
	mac     [6]byte
	t       *VirtioMMIO
	// paused, closed and Dropped are guarded by the transport's lock
	// (t.mu), under which Process runs too; room waits on it.
	room   *sync.Cond // on t.mu: receive buffers, resume, close
	paused bool       // the VM is paused: guest memory must not change
	closed bool
	done   chan struct{}
	// Dropped counts frames read from the tap that were dropped (too big
	// for the guest's buffer, or the device closed while holding one).
	Dropped int
}

// OpenTap opens (or creates) the tap interface name, non-blocking and on
// Go's poller, so that Close ends a Read in progress.
func OpenTap(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("tap %s: /dev/net/tun: %w", name, err)
	}
	ifr, err := unix.NewIfreq(name)
	if err == nil {
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
		err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tap %s: TUNSETIFF: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "tap "+name), nil
}

// NewNet creates a virtio-net device on tap with the given MAC address.
// Attach connects it to its transport; it delivers nothing until Resume.
func NewNet(tapName string, tap *os.File, mac [6]byte) *Net {
	return &Net{tapName: tapName, tap: tap, mac: mac, paused: true, done: make(chan struct{})}
}

// Attach connects the device to its transport and starts receiving.
func (n *Net) Attach(t *VirtioMMIO) {
	n.t = t
	n.room = sync.NewCond(&t.mu)
	go n.receive()
}

// Tap is the tap interface's name.
func (n *Net) Tap() string { return n.tapName }

// DeviceID implements VirtioBackend.
func (n *Net) DeviceID() uint32 { return virtioNetID }

// Features implements VirtioBackend.
func (n *Net) Features() uint64 { return virtioNetFMAC }

// NumQueues implements VirtioBackend: receive and transmit.
func (n *Net) NumQueues() int { return 2 }

// ReadConfig implements VirtioBackend: the MAC address at 0.
func (n *Net) ReadConfig(off uint64, data []byte) {
	var cfg [8]byte
	copy(cfg[:], n.mac[:])
	if off < uint64(len(cfg)) {
		copy(data, cfg[off:])
	}
}

// Reset implements VirtioBackend.
func (n *Net) Reset() { n.room.Broadcast() }

// Process implements VirtioBackend (t.mu held).
func (n *Net) Process(t *VirtioMMIO, qi int) error {
	if qi == virtioNetRX {
		n.room.Broadcast() // new receive buffers
		return nil
	}
	q := t.Queue(qi)
	pushed := false
	defer func() {
		if pushed {
			t.Used(qi)
		}
	}()
	buf := make([]byte, virtioNetMaxTX)
	for {
		c, err := q.Pop()
		if err != nil || c == nil {
			return err
		}
		l := c.Len(false)
		if l > virtioNetHdr && l <= virtioNetMaxTX {
			k, _ := c.ReadFrom(q.Mem, 0, buf[:l])
			// A tap that cannot take the frame drops it, as a wire would.
			n.tap.Write(buf[virtioNetHdr:k])
		}
		if err := q.Push(c.Head, 0); err != nil {
			return err
		}
		pushed = true
	}
}

// Pause stops delivery into guest memory (the VM is being paused).
func (n *Net) Pause() {
	n.t.mu.Lock()
	n.paused = true
	n.t.mu.Unlock()
}

// Resume restarts delivery.
func (n *Net) Resume() {
	n.t.mu.Lock()
	n.paused = false
	n.room.Broadcast()
	n.t.mu.Unlock()
}

// Close stops the receive goroutine and closes the tap.
func (n *Net) Close() error {
	if n.t == nil {
		return n.tap.Close()
	}
	n.t.mu.Lock()
	n.closed = true
	n.room.Broadcast()
	n.t.mu.Unlock()
	err := n.tap.Close() // ends a Read in progress
	<-n.done
	return err
}

// receive reads frames from the tap and delivers each into the next
// receive buffer, waiting (with the frame) while the guest has none, the
// VM is paused or the device is not running.
func (n *Net) receive() {
	defer close(n.done)
	frame := make([]byte, 65536)
	for {
		k, err := n.tap.Read(frame)
		if err != nil {
			if errors.Is(err, os.ErrClosed) {
				return
			}
			log.Printf("%s: tap %s: %v", n.t.name, n.tapName, err)
			return
		}
		n.t.mu.Lock()
		for !n.closed && !n.deliver(frame[:k]) {
			n.room.Wait()
		}
		if n.closed {
			n.Dropped++
		}
		n.t.mu.Unlock()
	}
}

// deliver puts frame into a receive buffer and reports whether the frame
// is done with (delivered or dropped); false means wait. t.mu held.
func (n *Net) deliver(frame []byte) bool {
	t := n.t
	if n.paused || t.s.Broken != 0 || t.s.Status&VirtioStatusDriverOK == 0 || t.s.Queues[virtioNetRX].Ready == 0 {
		return false
	}
	q := t.Queue(virtioNetRX)
	c, err := q.Pop()
	if err != nil {
		t.fail(err)
		return false
	}
	if c == nil {
		return false
	}
	need := uint64(virtioNetHdr + len(frame))
	written := uint32(0)
	if c.Len(true) >= need {
		segs, bufs, err := c.Segments(q.Mem, true, 0, need)
		if err != nil {
			t.fail(err)
			return false
		}
		var hdr [virtioNetHdr]byte
		hdr[10] = 1 // num_buffers
		src := append(hdr[:], frame...)
		for i, s := range segs {
			src = src[copy(s, src):]
			q.Mem.MarkDirty(bufs[i].Addr, uint64(bufs[i].Len))
		}
		written = uint32(need)
	} else {
		n.Dropped++ // the buffer is returned empty: the driver drops it
	}
	if err := q.Push(c.Head, written); err != nil {
		t.fail(err)
		return false
	}
	t.Used(virtioNetRX)
	return true
}

// After the guest moved to this host (a migration, a restored snapshot),
// Announce sends a few RARP frames from its MAC, as QEMU's announce_self
// does, so that bridges and switches learn the guest's new port at once
// instead of when the guest next transmits.
const (
	announceCount = 3
	announceGap   = 50 * time.Millisecond
	ethTypeRARP   = 0x8035
	ethMinFrame   = 60 // without the FCS
)

// AnnounceFrame is the broadcast RARP "request reverse" (RFC 903) for mac:
// Ethernet hardware, IPv4 protocol, mac as sender and target hardware
// address, no IP addresses, padded to the minimum Ethernet frame.
func AnnounceFrame(mac [6]byte) []byte {
	f := make([]byte, ethMinFrame)
	copy(f[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(f[6:12], mac[:])
	binary.BigEndian.PutUint16(f[12:], ethTypeRARP)
	binary.BigEndian.PutUint16(f[14:], 1)      // hardware type: Ethernet
	binary.BigEndian.PutUint16(f[16:], 0x0800) // protocol type: IPv4
	f[18], f[19] = 6, 4                        // address lengths
	binary.BigEndian.PutUint16(f[20:], 3)      // operation: request reverse
	copy(f[22:28], mac[:])                     // sender hardware address
	copy(f[32:38], mac[:])                     // target hardware address
	return f
}

// Announce writes announceCount RARP frames with the guest's MAC to the
// tap, announceGap apart, from a goroutine of its own: it returns at once.
func (n *Net) Announce() { go n.announce(announceCount, announceGap) }

func (n *Net) announce(count int, gap time.Duration) {
	f := AnnounceFrame(n.mac)
	for i := 0; i < count; i++ {
		if i > 0 {
			time.Sleep(gap)
		}
		if _, err := n.tap.Write(f); err != nil {
			if !errors.Is(err, os.ErrClosed) {
				log.Printf("tap %s: announcing %s: %v", n.tapName, net.HardwareAddr(n.mac[:]), err)
			}
			return
		}
	}
}
