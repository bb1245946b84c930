package migrate

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// Wire constants. PROTOCOL.md is the normative description of every
// layout and limit; the comments here name them, PROTOCOL.md says them.
const (
	// ProtocolVersion is the only version this package speaks. Version 2
	// ended with the commit handshake (END, READY, COMMIT, DONE-ACK);
	// version 3 adds the VM id and the RESUME flag to HELLO, the flags of
	// HELLO-ACK, and the KEPT record (resuming a cut migration); version 4
	// has PAGES of runs and DELTA entries with one digest per record, and
	// compressed PAGES records (pages.go, compress.go).
	ProtocolVersion = 4

	// Magic is the sync word that starts every record ("FRRY").
	Magic uint32 = 0x46525259

	// HeaderSize is the size of the fixed record header.
	HeaderSize = 16

	// MaxPagesPerBatch caps the pages with data (FULL and DELTA) of one
	// PAGES record.
	MaxPagesPerBatch = 256
	// MaxStateSize caps the VM state blob carried by the STATE record.
	MaxStateSize = 16 << 20
	// MaxErrorMessage caps the UTF-8 message of an ERROR record, in bytes.
	MaxErrorMessage = 4096
	// MaxHelloSize caps the payload of a HELLO record.
	MaxHelloSize = 64 << 10
	// MaxRegions, MaxDevices and MaxDeviceName cap the VMInfo of a HELLO.
	MaxRegions    = 64
	MaxDevices    = 256
	MaxDeviceName = 128

	// digestSize is the size of a Digest on the wire.
	digestSize = 16

	// MaxRecordSize is the largest record of any type, header included.
	MaxRecordSize = HeaderSize + MaxStateSize
)

// Page entry kinds in a PAGES record (pages.go).
const (
	pageZero uint8 = 1 // a run of pages that are all zero bytes
	pageFull uint8 = 2 // a run of pages sent whole
)

// FlagCompressed marks a PAGES record whose payload is compressed
// (compress.go); no other record type and no other flag is defined.
const FlagCompressed uint16 = 1

// RecordType identifies a record. Zero is reserved as invalid.
type RecordType uint16

// Record types, in the order they appear on the wire.
const (
	RecInvalid        RecordType = 0
	RecHello          RecordType = 1  // source → destination
	RecHelloAck       RecordType = 2  // destination → source
	RecError          RecordType = 3  // either direction
	RecIterationStart RecordType = 4  // source → destination
	RecPages          RecordType = 5  // source → destination
	RecState          RecordType = 6  // source → destination
	RecEnd            RecordType = 7  // source → destination
	RecDoneAck        RecordType = 8  // destination → source
	RecReady          RecordType = 9  // destination → source
	RecCommit         RecordType = 10 // source → destination
	RecKept           RecordType = 11 // destination → source, after a RESUME HELLO-ACK
	RecMissing        RecordType = 12 // source → destination: post-copy's missing pages
	RecRequest        RecordType = 13 // destination → source, on the post-copy channel
	RecPostcopyEnd    RecordType = 14 // source → destination: every missing page was sent
	RecComplete       RecordType = 15 // destination → source: every missing page arrived
	RecStreams        RecordType = 16 // source → destination: how many extra streams follow
	RecSync           RecordType = 17 // source → destination, on an extra stream: the end of its share of an iteration
)

func (t RecordType) String() string {
	switch t {
	case RecHello:
		return "HELLO"
	case RecHelloAck:
		return "HELLO-ACK"
	case RecError:
		return "ERROR"
	case RecIterationStart:
		return "ITERATION-START"
	case RecPages:
		return "PAGES"
	case RecState:
		return "STATE"
	case RecEnd:
		return "END"
	case RecDoneAck:
		return "DONE-ACK"
	case RecReady:
		return "READY"
	case RecCommit:
		return "COMMIT"
	case RecKept:
		return "KEPT"
	case RecMissing:
		return "MISSING"
	case RecRequest:
		return "REQUEST"
	case RecPostcopyEnd:
		return "POSTCOPY-END"
	case RecComplete:
		return "COMPLETE"
	case RecStreams:
		return "STREAMS"
	case RecSync:
		return "SYNC"
	}
	return fmt.Sprintf("type-%d", uint16(t))
}

// payloadLimits returns the allowed payload size range of a record type;
// ok is false for unknown types (including the reserved type 0).
func payloadLimits(t RecordType) (minLen, maxLen int, ok bool) {
	switch t {
	case RecHello:
		// The version comes first: a shorter fixed part from another
		// version is answered with a version error, not a length error.
		return 4, MaxHelloSize, true
	case RecHelloAck:
		return 4, 4, true
	case RecError:
		return 0, MaxErrorMessage, true
	case RecIterationStart:
		return 8, 8, true
	case RecPages:
		return 2, maxPagesPayload, true
	case RecState:
		return 0, MaxStateSize, true
	case RecEnd:
		return 8, 8, true
	case RecDoneAck, RecReady, RecCommit:
		return 0, 0, true
	case RecKept:
		return keptFixedSize + 2, maxKeptPayload, true
	case RecMissing:
		return missingFixedSize + 1, maxMissingPayload, true
	case RecRequest:
		return 8, 8 * MaxRequestPages, true
	case RecPostcopyEnd:
		return 8, 8, true
	case RecComplete:
		return completeSize, completeSize, true
	case RecStreams:
		return 8, 8, true
	case RecSync:
		return syncSize, syncSize, true
	}
	return 0, 0, false
}

// Errors returned for malformed or unexpected input. They are wrapped with
// detail; test with errors.Is.
var (
	ErrBadMagic       = errors.New("migrate: bad record magic (stream out of sync)")
	ErrUnknownType    = errors.New("migrate: unknown record type")
	ErrBadFlags       = errors.New("migrate: unsupported record flags")
	ErrTooLarge       = errors.New("migrate: record length out of bounds")
	ErrChecksum       = errors.New("migrate: record checksum mismatch")
	ErrTruncated      = errors.New("migrate: truncated record")
	ErrClosed         = errors.New("migrate: connection closed by peer")
	ErrMalformed      = errors.New("migrate: malformed record payload")
	ErrUnexpected     = errors.New("migrate: unexpected record")
	ErrDigestMismatch = errors.New("migrate: page digest mismatch")
	ErrVersion        = errors.New("migrate: protocol version mismatch")
	ErrRefused        = errors.New("migrate: VM refused")
	ErrNotConverged   = errors.New("migrate: migration did not converge")
	ErrAckTimeout     = errors.New("migrate: no answer from the destination before the deadline")
	// ErrOutcomeUnknown: COMMIT was sent but no DONE-ACK (nor ERROR) came
	// back. The guest may be running on the destination, so the source
	// stays paused; see OutcomeUnknownMessage.
	ErrOutcomeUnknown = errors.New("migrate: outcome unknown: the guest may be running on the destination; check it, then resume here with `ferry resume` only if it is not")
	// ErrStalled: the connection accepted no byte for Options.IOTimeout.
	ErrStalled = errors.New("migrate: the connection to the destination made no progress")
	// ErrDoneAckLost: the destination started the guest but could not send
	// DONE-ACK; the guest runs there and the source stays paused.
	ErrDoneAckLost = errors.New("migrate: DONE-ACK could not be sent")
)

// RemoteError is an ERROR record received from the peer.
type RemoteError struct {
	Msg string
}

func (e *RemoteError) Error() string { return "migrate: peer reported: " + e.Msg }

// castagnoli is the CRC32C table of every checksum ferry computes: record
// payloads here, and the VM state format (vmm) through Checksum.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Checksum is the CRC32C (Castagnoli polynomial) of p: the checksum of a
// record's payload, and of ferry's other formats (the VM state blob).
func Checksum(p []byte) uint32 { return crc32.Checksum(p, castagnoli) }

// header is the fixed record header (layout: PROTOCOL.md, "Record
// header"); Length counts the whole record, header included.
type header struct {
	Type   RecordType
	Flags  uint16
	Length uint32
	CRC    uint32
}

func putHeader(b []byte, h header) {
	binary.BigEndian.PutUint32(b[0:], Magic)
	binary.BigEndian.PutUint16(b[4:], uint16(h.Type))
	binary.BigEndian.PutUint16(b[6:], h.Flags)
	binary.BigEndian.PutUint32(b[8:], h.Length)
	binary.BigEndian.PutUint32(b[12:], h.CRC)
}

// parseHeader decodes and validates a header, enforcing the per-type payload
// limits so that no buffer is ever sized from an unchecked length.
func parseHeader(b []byte) (header, error) {
	if m := binary.BigEndian.Uint32(b[0:]); m != Magic {
		return header{}, fmt.Errorf("%w: got %#08x, want %#08x", ErrBadMagic, m, Magic)
	}
	h := header{
		Type:   RecordType(binary.BigEndian.Uint16(b[4:])),
		Flags:  binary.BigEndian.Uint16(b[6:]),
		Length: binary.BigEndian.Uint32(b[8:]),
		CRC:    binary.BigEndian.Uint32(b[12:]),
	}
	minLen, maxLen, ok := payloadLimits(h.Type)
	if !ok {
		return h, fmt.Errorf("%w: %d", ErrUnknownType, uint16(h.Type))
	}
	allowed := uint16(0)
	if h.Type == RecPages {
		allowed = FlagCompressed
	}
	if h.Flags&^allowed != 0 {
		return h, fmt.Errorf("%w: %#04x on %v", ErrBadFlags, h.Flags, h.Type)
	}
	if h.Length < HeaderSize {
		return h, fmt.Errorf("%w: %v length %d is shorter than the header", ErrTooLarge, h.Type, h.Length)
	}
	if n := int64(h.Length) - HeaderSize; n < int64(minLen) || n > int64(maxLen) {
		return h, fmt.Errorf("%w: %v payload of %d bytes, allowed %d..%d", ErrTooLarge, h.Type, n, minLen, maxLen)
	}
	return h, nil
}

// appendRecord appends a complete record (header + payload) to dst.
func appendRecord(dst []byte, t RecordType, payload []byte) []byte {
	return appendRecordFlags(dst, t, 0, payload)
}

// appendRecordFlags is appendRecord with header flags.
func appendRecordFlags(dst []byte, t RecordType, flags uint16, payload []byte) []byte {
	var h [HeaderSize]byte
	putHeader(h[:], header{
		Type:   t,
		Flags:  flags,
		Length: uint32(HeaderSize + len(payload)),
		CRC:    Checksum(payload),
	})
	dst = append(dst, h[:]...)
	return append(dst, payload...)
}

// writeRecord writes one record with a single Write call.
func writeRecord(w io.Writer, t RecordType, payload []byte) error {
	_, err := w.Write(appendRecord(make([]byte, 0, HeaderSize+len(payload)), t, payload))
	return err
}

// record is one decoded record. Payload aliases the reader's buffer and is
// valid only until the next call to next.
type record struct {
	Type    RecordType
	Flags   uint16
	Payload []byte
}

// recordReader reads and verifies records from a stream. It does no
// buffering of its own: the header and the payload are each read with
// io.ReadFull, so a large payload goes from the kernel straight into its
// final buffer (two system calls per record, no extra copy).
type recordReader struct {
	r   io.Reader
	hdr [HeaderSize]byte
	buf []byte
}

func newRecordReader(r io.Reader) *recordReader {
	return &recordReader{r: r}
}

// next reads one record into the reader's own buffer.
func (rr *recordReader) next() (record, error) {
	rec, buf, err := readRecord(rr.r, &rr.hdr, rr.buf)
	rr.buf = buf
	return rec, err
}

// readRecord reads one record: header checks, bounded allocation (buf is
// reused when it is large enough, and returned), CRC check.
func readRecord(r io.Reader, hdr *[HeaderSize]byte, buf []byte) (record, []byte, error) {
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if errors.Is(err, io.EOF) {
			return record{}, buf, ErrClosed
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return record{}, buf, fmt.Errorf("%w: stream ended inside a record header", ErrTruncated)
		}
		return record{}, buf, err
	}
	h, err := parseHeader(hdr[:])
	if err != nil {
		return record{}, buf, err
	}
	n := int(h.Length) - HeaderSize
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	p := buf[:n]
	if _, err := io.ReadFull(r, p); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return record{}, buf, fmt.Errorf("%w: %v announced %d payload bytes, stream ended early", ErrTruncated, h.Type, n)
		}
		return record{}, buf, err
	}
	if c := Checksum(p); c != h.CRC {
		return record{}, buf, fmt.Errorf("%w: %v crc %#08x, header says %#08x", ErrChecksum, h.Type, c, h.CRC)
	}
	return record{Type: h.Type, Flags: h.Flags, Payload: p}, buf, nil
}

// readAhead reads and verifies records in a goroutine, up to depth records
// ahead of the consumer, so that receiving overlaps with processing.
// Payloads live in recycled buffers: a record is valid until the next call
// to next.
type readAhead struct {
	out  chan readResult
	free chan []byte
	stop chan struct{}
	cur  []byte
}

type readResult struct {
	rec record
	buf []byte
	err error
}

// beforeRead, if not nil, runs before each record is read (to arm a read
// deadline).
func startReadAhead(r io.Reader, depth int, beforeRead func()) *readAhead {
	ra := &readAhead{
		out:  make(chan readResult, depth),
		free: make(chan []byte, depth+1),
		stop: make(chan struct{}),
	}
	for range depth + 1 {
		ra.free <- nil
	}
	go func() {
		var hdr [HeaderSize]byte
		for {
			var buf []byte
			select {
			case buf = <-ra.free:
			case <-ra.stop:
				return
			}
			if beforeRead != nil {
				beforeRead()
			}
			rec, buf, err := readRecord(r, &hdr, buf)
			select {
			case ra.out <- readResult{rec, buf, err}:
			case <-ra.stop:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return ra
}

// next returns the next record; the previous one's buffer is recycled.
func (ra *readAhead) next() (record, error) {
	if ra.cur != nil {
		ra.free <- ra.cur
		ra.cur = nil
	}
	res := <-ra.out
	ra.cur = res.buf
	return res.rec, res.err
}

// close stops the goroutine once its current read returns (the caller
// closes the connection or sets a read deadline to end a blocked read).
func (ra *readAhead) close() { close(ra.stop) }
