package devices

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
)

// virtio-blk (virtio 1.x, 5.2).
const (
	virtioBlkID        = 2
	virtioBlkFSegMax   = 1 << 2
	virtioBlkFRO       = 1 << 5
	virtioBlkFFlush    = 1 << 9
	virtioBlkSegMax    = 126
	virtioBlkTIn       = 0
	virtioBlkTOut      = 1
	virtioBlkTFlush    = 4
	virtioBlkTGetID    = 8
	virtioBlkSOK       = 0
	virtioBlkSIOErr    = 1
	virtioBlkSUnsupp   = 2
	virtioBlkHeaderLen = 16
	virtioBlkIDLen     = 20
	sectorSize         = 512
)

// Blk is a virtio-blk disk backed by a raw image file. Requests are done
// synchronously in the driver's notify: on the vCPU thread that wrote
// QueueNotify, or on the VMM's notifier goroutine when the write went to
// an ioeventfd (vmm/notify.go drains it before the VM is saved), so none
// is in flight when a paused VM is saved.
type Blk struct {
	path     string
	f        *os.File
	readOnly bool
	sectors  uint64
	id       [virtioBlkIDLen]byte
}

// OpenBlk opens the raw image at path. Its size is rounded down to whole
// sectors.
func OpenBlk(path string, readOnly bool) (*Blk, error) {
	flag := os.O_RDWR
	if readOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, fmt.Errorf("disk: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("disk: %w", err)
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("disk %s: not a regular file", path)
	}
	b := &Blk{path: path, f: f, readOnly: readOnly, sectors: uint64(st.Size()) / sectorSize}
	copy(b.id[:], filepath.Base(path))
	return b, nil
}

// Path is the image file.
func (b *Blk) Path() string { return b.path }

// Close closes the image.
func (b *Blk) Close() error { return b.f.Close() }

// DeviceID implements VirtioBackend.
func (b *Blk) DeviceID() uint32 { return virtioBlkID }

// Features implements VirtioBackend.
func (b *Blk) Features() uint64 {
	f := uint64(virtioBlkFSegMax | virtioBlkFFlush)
	if b.readOnly {
		f |= virtioBlkFRO
	}
	return f
}

// NumQueues implements VirtioBackend.
func (b *Blk) NumQueues() int { return 1 }

// Reset implements VirtioBackend.
func (b *Blk) Reset() {}

// ReadConfig implements VirtioBackend: capacity (sectors) at 0, seg_max at 12.
func (b *Blk) ReadConfig(off uint64, data []byte) {
	var cfg [24]byte
	binary.LittleEndian.PutUint64(cfg[0:], b.sectors)
	binary.LittleEndian.PutUint32(cfg[12:], virtioBlkSegMax)
	if off < uint64(len(cfg)) {
		copy(data, cfg[off:])
	}
}

// Process implements VirtioBackend.
func (b *Blk) Process(t *VirtioMMIO, qi int) error {
	q := t.Queue(qi)
	pushed := false
	defer func() {
		if pushed {
			t.Used(qi)
		}
	}()
	for {
		c, err := q.Pop()
		if err != nil || c == nil {
			return err
		}
		written, err := b.request(q.Mem, c)
		if err != nil {
			return err
		}
		if err := q.Push(c.Head, written); err != nil {
			return err
		}
		pushed = true
	}
}

// request does one request and returns how many bytes it wrote into the
// chain. An error means the chain itself is unusable (no room for the
// status byte); I/O failures go to the guest as VIRTIO_BLK_S_IOERR.
func (b *Blk) request(mem GuestMemory, c *Chain) (uint32, error) {
	wlen := c.Len(true)
	if wlen == 0 {
		return 0, ringErr("block request without a status byte")
	}
	dataIn := wlen - 1 // writable bytes before the status byte
	var hdr [virtioBlkHeaderLen]byte
	status := byte(virtioBlkSOK)
	written := uint64(0)
	if n, _ := c.ReadFrom(mem, 0, hdr[:]); n != len(hdr) {
		status = virtioBlkSIOErr
	} else {
		typ := binary.LittleEndian.Uint32(hdr[0:])
		sector := binary.LittleEndian.Uint64(hdr[8:])
		switch typ {
		case virtioBlkTIn:
			status = b.rw(mem, c, false, sector, 0, dataIn)
			if status == virtioBlkSOK {
				written = dataIn
			}
		case virtioBlkTOut:
			status = b.rw(mem, c, true, sector, virtioBlkHeaderLen, c.Len(false)-virtioBlkHeaderLen)
		case virtioBlkTFlush:
			if !b.readOnly && b.f.Sync() != nil {
				status = virtioBlkSIOErr
			}
		case virtioBlkTGetID:
			segs, bufs, err := c.Segments(mem, true, 0, min(dataIn, virtioBlkIDLen))
			if err != nil {
				status = virtioBlkSIOErr
				break
			}
			id := b.id[:]
			for i, s := range segs {
				id = id[copy(s, id):]
				mem.MarkDirty(bufs[i].Addr, uint64(bufs[i].Len))
				written += uint64(bufs[i].Len)
			}
		default:
			status = virtioBlkSUnsupp
		}
	}
	// The status is the last writable byte.
	segs, bufs, err := c.Segments(mem, true, wlen-1, 1)
	if err != nil || len(segs) != 1 {
		return 0, ringErr("block request status byte: %v", err)
	}
	segs[0][0] = status
	mem.MarkDirty(bufs[0].Addr, 1)
	return uint32(written + 1), nil
}

// rw moves n bytes between the disk at sector and the chain's readable
// (write) or writable (read) buffers from offset off.
func (b *Blk) rw(mem GuestMemory, c *Chain, write bool, sector, off, n uint64) byte {
	if n%sectorSize != 0 || sector > b.sectors || n/sectorSize > b.sectors-sector {
		return virtioBlkSIOErr
	}
	if write && b.readOnly {
		return virtioBlkSIOErr
	}
	segs, bufs, err := c.Segments(mem, !write, off, n)
	if err != nil {
		return virtioBlkSIOErr
	}
	pos := int64(sector * sectorSize)
	for i, s := range segs {
		var k int
		if write {
			k, err = b.f.WriteAt(s, pos)
		} else {
			k, err = b.f.ReadAt(s, pos)
			mem.MarkDirty(bufs[i].Addr, uint64(bufs[i].Len))
		}
		if err != nil || k != len(s) {
			return virtioBlkSIOErr
		}
		pos += int64(k)
	}
	return virtioBlkSOK
}
