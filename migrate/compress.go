package migrate

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/klauspost/compress/zstd"
)

// Compression of PAGES payloads (PROTOCOL.md, "Compressed PAGES"): zstd
// at its fastest level (github.com/klauspost/compress/zstd), one frame
// per record, so that each record decodes on its own. A compressed record
// has the COMPRESSED header flag; its payload is the uncompressed length
// (uvarint) and the frame.

// CompressMode chooses when PAGES records are compressed.
type CompressMode int

const (
	// CompressAuto compresses only while it pays: while the link bytes it
	// saves per second of compressing exceed the link's measured rate
	// (so a fast link, where compressing would slow the sender, goes
	// uncompressed). The default.
	CompressAuto CompressMode = iota
	// CompressOff never compresses.
	CompressOff
	// CompressZstd compresses every record (kept only when smaller).
	CompressZstd
)

func (m CompressMode) String() string {
	switch m {
	case CompressAuto:
		return "auto"
	case CompressOff:
		return "off"
	case CompressZstd:
		return "zstd"
	}
	return fmt.Sprintf("CompressMode(%d)", int(m))
}

// ParseCompressMode reads auto, off or zstd ("" is auto).
func ParseCompressMode(s string) (CompressMode, error) {
	switch s {
	case "", "auto":
		return CompressAuto, nil
	case "off":
		return CompressOff, nil
	case "zstd":
		return CompressZstd, nil
	}
	return CompressAuto, &OptionError{Option: "Compress", Err: fmt.Errorf("%q: want auto, off or zstd", s)}
}

// compressor compresses the sender's PAGES payloads and, in auto mode,
// decides record by record whether that pays. Used by one goroutine.
type compressor struct {
	mode CompressMode
	enc  *zstd.Encoder
	out  []byte

	// Auto mode: moving averages of what compressing achieved, and the
	// time spent compressing since the compressor was made (so that
	// trials, while compressing does not pay, cost little CPU).
	ratio float64 // compressed / raw bytes
	speed float64 // raw bytes per second of compressing
	born  time.Time
	spent time.Duration

	// The records sent compressed, and their bytes before and after.
	records        int
	rawIn, compOut int64
}

// probeShare is the most of its time the sender spends on trials while
// compressing does not pay: a fast link stays fast.
const probeShare = 0.02

// minAutoCompress is the smallest payload auto mode compresses, and
// learns from: a record of a few pages, or of zero pages only (a few bytes
// of entries), saves next to nothing, and its cost per call, next to its
// size, would drag the averages that decide whether compressing pays
// down to "never" while the sender crosses a guest's free memory.
const minAutoCompress = 16 << 10

func newCompressor(mode CompressMode) *compressor {
	c := &compressor{mode: mode, born: time.Now()}
	if mode != CompressOff {
		// Errors come only from bad options.
		c.enc, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest),
			zstd.WithEncoderConcurrency(1), zstd.WithEncoderCRC(false), zstd.WithLowerEncoderMem(true))
		// The first use allocates the encoder's tables: do it now, so that
		// it does not count as the speed of compressing.
		c.out = c.enc.EncodeAll(make([]byte, 64<<10), c.out[:0])
	}
	return c
}

// pays reports whether, at what compressing achieved so far, it is worth
// it on a link of linkBps bytes per second (0: not known yet, taken as
// unlimited): bytes saved per second of compressing against the link.
func (c *compressor) pays(linkBps float64) bool {
	if c.speed == 0 || linkBps <= 0 {
		return false
	}
	return (1-c.ratio)*c.speed > linkBps
}

// compress returns the payload to send for raw: a compressed one (length
// prefix and frame) when this record is compressed and that is smaller,
// else nil (send raw). The result is valid until the next call.
func (c *compressor) compress(raw []byte, linkBps float64) []byte {
	switch c.mode {
	case CompressOff:
		return nil
	case CompressAuto:
		if len(raw) < minAutoCompress {
			return nil
		}
		if c.speed != 0 && !c.pays(linkBps) &&
			c.spent.Seconds() > probeShare*time.Since(c.born).Seconds() {
			return nil // does not pay, and the last trial was recent
		}
	}
	start := time.Now()
	c.out = binary.AppendUvarint(c.out[:0], uint64(len(raw)))
	c.out = c.enc.EncodeAll(raw, c.out)
	el := time.Since(start)
	c.spent += el
	if el > 0 {
		c.learn(float64(len(c.out))/float64(len(raw)), float64(len(raw))/el.Seconds())
	}
	if len(c.out) >= len(raw) {
		return nil
	}
	c.records++
	c.rawIn += int64(len(raw))
	c.compOut += int64(len(c.out))
	return c.out
}

// learn folds one record's ratio and speed into the moving averages.
func (c *compressor) learn(ratio, speed float64) {
	const w = 0.25
	ratio = min(ratio, 1)
	if c.speed == 0 {
		c.ratio, c.speed = ratio, speed
		return
	}
	c.ratio += w * (ratio - c.ratio)
	c.speed += w * (speed - c.speed)
}

// decompressor undoes compressor for the receiver, with a bound on the
// output; used by one goroutine.
type decompressor struct {
	dec *zstd.Decoder
	buf []byte
}

func newDecompressor() *decompressor {
	d, _ := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecodeAllCapLimit(true),
		zstd.WithDecoderMaxMemory(maxPagesPayload), zstd.WithDecoderMaxWindow(maxPagesPayload))
	return &decompressor{dec: d, buf: make([]byte, 0, maxPagesPayload)}
}

// decode returns the payload that p (length prefix and frame) holds, at
// most limit bytes; the result is valid until the next call.
func (d *decompressor) decode(p []byte, limit int) ([]byte, error) {
	n, k := binary.Uvarint(p)
	if k <= 0 || n == 0 || n > uint64(limit) {
		return nil, fmt.Errorf("%w: compressed PAGES announce %d bytes (1..%d)", ErrMalformed, n, limit)
	}
	out, err := d.dec.DecodeAll(p[k:], d.buf[:0:n])
	if err != nil {
		return nil, fmt.Errorf("%w: compressed PAGES: %v", ErrMalformed, err)
	}
	if uint64(len(out)) != n {
		return nil, fmt.Errorf("%w: compressed PAGES hold %d bytes, announce %d", ErrMalformed, len(out), n)
	}
	return out, nil
}

// close releases the decoder's goroutines.
func (d *decompressor) close() { d.dec.Close() }
