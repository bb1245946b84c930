package migrate

import (
	"encoding/binary"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Payload codecs. Every layout is in PROTOCOL.md, under the record's name;
// all integers are big-endian.

// helloFixedSize is the fixed part of a HELLO payload, before its regions
// and devices (PROTOCOL.md, "HELLO").
const helloFixedSize = 32

// HELLO's flags, and HELLO-ACK's (PROTOCOL.md, "HELLO").
const (
	// helloResume: resume a cut migration into the pages the destination
	// kept (HELLO), which KEPT records follow (HELLO-ACK).
	helloResume uint16 = 1 << 0
	// helloPostcopy: the source may switch to post-copy (HELLO); the
	// destination can take it (HELLO-ACK).
	helloPostcopy uint16 = 1 << 1
	// helloChannel: this connection is the request channel of the
	// post-copy migration of the VM the HELLO names (PROTOCOL.md,
	// "Post-copy").
	helloChannel uint16 = 1 << 2
	// helloStreams: the source sends pages on parallel streams, extra
	// connections that a STREAMS record announces (HELLO); the destination
	// takes them (HELLO-ACK). PROTOCOL.md, "Parallel streams".
	helloStreams uint16 = 1 << 3
	// helloStream: this connection is an extra stream of the migration of
	// the VM the HELLO names.
	helloStream   uint16 = 1 << 4
	helloFlagsAll        = helloResume | helloPostcopy | helloChannel | helloStreams | helloStream
)

// helloFlags are the flags of a HELLO or HELLO-ACK.
type helloFlags struct {
	Resume, Postcopy, Channel, Streams, Stream bool
}

func (f helloFlags) bits() uint16 {
	var b uint16
	if f.Resume {
		b |= helloResume
	}
	if f.Postcopy {
		b |= helloPostcopy
	}
	if f.Channel {
		b |= helloChannel
	}
	if f.Streams {
		b |= helloStreams
	}
	if f.Stream {
		b |= helloStream
	}
	return b
}

func flagsOf(b uint16) helloFlags {
	return helloFlags{Resume: b&helloResume != 0, Postcopy: b&helloPostcopy != 0, Channel: b&helloChannel != 0,
		Streams: b&helloStreams != 0, Stream: b&helloStream != 0}
}

// maxHelloVCPUs bounds HELLO's vCPU count as a sanity check of the
// payload; what a destination accepts is ReceiveOptions.MaxVCPUs.
const maxHelloVCPUs = 1 << 20

// hello is the decoded HELLO payload.
type hello struct {
	Version  uint16
	Flags    helloFlags
	PageSize uint32
	Info     VMInfo
}

// checkInfo validates a VMInfo against the protocol's structural limits
// (alignment, sizes, overlap, name lengths). Resource limits (how much memory
// a receiver accepts) are the receiver's business.
func checkInfo(info VMInfo) error {
	if len(info.Regions) == 0 || len(info.Regions) > MaxRegions {
		return fmt.Errorf("%d memory regions (allowed 1..%d)", len(info.Regions), MaxRegions)
	}
	if info.VCPUs < 1 || int64(info.VCPUs) > maxHelloVCPUs {
		return fmt.Errorf("%d vCPUs", info.VCPUs)
	}
	for i, r := range info.Regions {
		if r.Size == 0 || r.GPA%PageSize != 0 || r.Size%PageSize != 0 {
			return fmt.Errorf("region %d (gpa %#x size %#x) is empty or not page aligned", i, r.GPA, r.Size)
		}
		if r.GPA+r.Size < r.GPA || r.Size/PageSize > 1<<32 {
			return fmt.Errorf("region %d (gpa %#x size %#x) is too large", i, r.GPA, r.Size)
		}
		for j := range i {
			o := info.Regions[j]
			if r.GPA < o.GPA+o.Size && o.GPA < r.GPA+r.Size {
				return fmt.Errorf("regions %d and %d overlap", j, i)
			}
		}
	}
	if len(info.Devices) > MaxDevices {
		return fmt.Errorf("%d devices (allowed at most %d)", len(info.Devices), MaxDevices)
	}
	for i, d := range info.Devices {
		if d == "" || len(d) > MaxDeviceName || !utf8.ValidString(d) {
			return fmt.Errorf("device %d: name must be 1..%d bytes of UTF-8", i, MaxDeviceName)
		}
	}
	return nil
}

func encodeHello(info VMInfo, f helloFlags) ([]byte, error) {
	if err := checkInfo(info); err != nil {
		return nil, err
	}
	if (f.Resume || f.Channel || f.Streams || f.Stream) && info.ID.IsZero() {
		return nil, fmt.Errorf("a VM without an id cannot resume a migration, open its post-copy channel nor use parallel streams")
	}
	p := make([]byte, helloFixedSize, helloFixedSize+16*len(info.Regions)+64)
	binary.BigEndian.PutUint16(p[0:], ProtocolVersion)
	binary.BigEndian.PutUint16(p[2:], f.bits())
	binary.BigEndian.PutUint32(p[4:], PageSize)
	binary.BigEndian.PutUint32(p[8:], uint32(info.VCPUs))
	binary.BigEndian.PutUint16(p[12:], uint16(len(info.Regions)))
	binary.BigEndian.PutUint16(p[14:], uint16(len(info.Devices)))
	copy(p[16:32], info.ID[:])
	for _, r := range info.Regions {
		p = binary.BigEndian.AppendUint64(p, r.GPA)
		p = binary.BigEndian.AppendUint64(p, r.Size)
	}
	for _, d := range info.Devices {
		p = binary.BigEndian.AppendUint16(p, uint16(len(d)))
		p = append(p, d...)
	}
	if len(p) > MaxHelloSize {
		return nil, fmt.Errorf("HELLO would be %d bytes (max %d)", len(p), MaxHelloSize)
	}
	return p, nil
}

// decodeHello parses a HELLO payload. The version is returned even when the
// rest does not parse, so a receiver can answer a newer sender precisely.
func decodeHello(p []byte) (hello, error) {
	var h hello
	if len(p) < 2 {
		return h, fmt.Errorf("%w: HELLO of %d bytes", ErrMalformed, len(p))
	}
	h.Version = binary.BigEndian.Uint16(p[0:])
	if h.Version != ProtocolVersion {
		return h, fmt.Errorf("%w: peer speaks version %d, this side speaks %d", ErrVersion, h.Version, ProtocolVersion)
	}
	if len(p) < helloFixedSize {
		return h, fmt.Errorf("%w: HELLO of %d bytes", ErrMalformed, len(p))
	}
	flags := binary.BigEndian.Uint16(p[2:])
	if flags&^helloFlagsAll != 0 {
		return h, fmt.Errorf("%w: HELLO flags %#x", ErrMalformed, flags)
	}
	h.Flags = flagsOf(flags)
	h.PageSize = binary.BigEndian.Uint32(p[4:])
	h.Info.VCPUs = int(binary.BigEndian.Uint32(p[8:]))
	nreg := int(binary.BigEndian.Uint16(p[12:]))
	ndev := int(binary.BigEndian.Uint16(p[14:]))
	copy(h.Info.ID[:], p[16:32])
	if nreg > MaxRegions || ndev > MaxDevices {
		return h, fmt.Errorf("%w: HELLO announces %d regions and %d devices (max %d and %d)", ErrMalformed, nreg, ndev, MaxRegions, MaxDevices)
	}
	rest := p[helloFixedSize:]
	if len(rest) < 16*nreg {
		return h, fmt.Errorf("%w: HELLO region list truncated", ErrMalformed)
	}
	h.Info.Regions = make([]Region, nreg)
	for i := range h.Info.Regions {
		h.Info.Regions[i] = Region{GPA: binary.BigEndian.Uint64(rest), Size: binary.BigEndian.Uint64(rest[8:])}
		rest = rest[16:]
	}
	h.Info.Devices = make([]string, 0, ndev)
	for range ndev {
		if len(rest) < 2 {
			return h, fmt.Errorf("%w: HELLO device list truncated", ErrMalformed)
		}
		n := int(binary.BigEndian.Uint16(rest))
		if len(rest) < 2+n {
			return h, fmt.Errorf("%w: HELLO device name truncated", ErrMalformed)
		}
		h.Info.Devices = append(h.Info.Devices, string(rest[2:2+n]))
		rest = rest[2+n:]
	}
	if len(rest) != 0 {
		return h, fmt.Errorf("%w: %d trailing bytes after HELLO", ErrMalformed, len(rest))
	}
	if h.PageSize != PageSize {
		return h, fmt.Errorf("%w: page size %d, this side uses %d", ErrRefused, h.PageSize, PageSize)
	}
	if err := checkInfo(h.Info); err != nil {
		return h, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if (h.Flags.Resume || h.Flags.Channel || h.Flags.Streams || h.Flags.Stream) && h.Info.ID.IsZero() {
		return h, fmt.Errorf("%w: RESUME, CHANNEL, STREAMS or STREAM HELLO without a VM id", ErrMalformed)
	}
	if h.Flags.Stream && h.Flags != (helloFlags{Stream: true}) || h.Flags.Channel && h.Flags != (helloFlags{Channel: true}) {
		return h, fmt.Errorf("%w: a CHANNEL or STREAM HELLO with other flags (%#x)", ErrMalformed, h.Flags.bits())
	}
	return h, nil
}

// encodeHelloAck makes a HELLO-ACK (PROTOCOL.md, "HELLO-ACK"): RESUME is
// set exactly when the HELLO asked to resume (KEPT records follow),
// POSTCOPY when it asked for post-copy and this side can, CHANNEL exactly
// when the HELLO opened a post-copy channel.
func encodeHelloAck(f helloFlags) []byte {
	p := make([]byte, 4)
	binary.BigEndian.PutUint16(p, ProtocolVersion)
	binary.BigEndian.PutUint16(p[2:], f.bits())
	return p
}

func decodeHelloAck(p []byte) (helloFlags, error) {
	if v := binary.BigEndian.Uint16(p); v != ProtocolVersion {
		return helloFlags{}, fmt.Errorf("%w: peer acknowledged version %d, this side speaks %d", ErrVersion, v, ProtocolVersion)
	}
	f := binary.BigEndian.Uint16(p[2:])
	if f&^helloFlagsAll != 0 {
		return helloFlags{}, fmt.Errorf("%w: HELLO-ACK flags %#x", ErrMalformed, f)
	}
	return flagsOf(f), nil
}

// ITERATION-START flags: iterFinal marks the stop-and-copy iteration (the
// source guest is paused); iterPostcopy, with it, the switch to post-copy
// (MISSING records follow the iteration's pages).
const (
	iterFinal    uint32 = 1 << 0
	iterPostcopy uint32 = 1 << 1
)

func encodeIterationStart(k uint32, final bool) []byte {
	var f uint32
	if final {
		f = iterFinal
	}
	return encodeIterationStartFlags(k, f)
}

func encodeIterationStartFlags(k, flags uint32) []byte {
	p := make([]byte, 8)
	binary.BigEndian.PutUint32(p, k)
	binary.BigEndian.PutUint32(p[4:], flags)
	return p
}

// decodeIterationStart returns the iteration number and its flags: 0,
// FINAL, or FINAL with POSTCOPY.
func decodeIterationStart(p []byte) (k, flags uint32, err error) {
	k = binary.BigEndian.Uint32(p)
	f := binary.BigEndian.Uint32(p[4:])
	if f != 0 && f != iterFinal && f != iterFinal|iterPostcopy {
		return k, 0, fmt.Errorf("%w: ITERATION-START flags %#x", ErrMalformed, f)
	}
	return k, f, nil
}

func encodeEnd(entries uint64) []byte {
	return binary.BigEndian.AppendUint64(nil, entries)
}

func decodeEnd(p []byte) uint64 { return binary.BigEndian.Uint64(p) }

// encodeError makes an ERROR payload: valid UTF-8, at most MaxErrorMessage
// bytes (cut at a rune boundary).
func encodeError(msg string) []byte {
	msg = strings.ToValidUTF8(msg, "?")
	if len(msg) > MaxErrorMessage {
		cut := MaxErrorMessage
		for cut > 0 && !utf8.RuneStart(msg[cut]) {
			cut--
		}
		msg = msg[:cut]
	}
	if msg == "" {
		msg = "unspecified error"
	}
	return []byte(msg)
}

func decodeError(p []byte) *RemoteError {
	return &RemoteError{Msg: strings.ToValidUTF8(string(p), "?")}
}
