package migrate

import (
	"encoding/binary"
	"fmt"
)

// The records of parallel streams (PROTOCOL.md, "Parallel streams").

// MaxConnections bounds the connections of one migration: the main one
// and MaxConnections−1 extra streams.
const MaxConnections = 64

// STREAMS: extra streams u32, reserved u32.
func encodeStreams(extra int) []byte {
	p := binary.BigEndian.AppendUint32(nil, uint32(extra))
	return binary.BigEndian.AppendUint32(p, 0)
}

func decodeStreams(p []byte) (int, error) {
	n := binary.BigEndian.Uint32(p)
	if n < 1 || n > MaxConnections-1 {
		return 0, fmt.Errorf("%w: STREAMS announces %d extra streams (allowed 1..%d)", ErrMalformed, n, MaxConnections-1)
	}
	if r := binary.BigEndian.Uint32(p[4:]); r != 0 {
		return 0, fmt.Errorf("%w: STREAMS reserved field is %#x", ErrMalformed, r)
	}
	return int(n), nil
}

// syncSize is SYNC's payload: iteration u32, reserved u32, entries u64
// (the page entries this stream sent in every iteration so far).
const syncSize = 16

func encodeSync(iter uint32, entries uint64) []byte {
	p := binary.BigEndian.AppendUint32(nil, iter)
	p = binary.BigEndian.AppendUint32(p, 0)
	return binary.BigEndian.AppendUint64(p, entries)
}

func decodeSync(p []byte) (iter uint32, entries uint64, err error) {
	if r := binary.BigEndian.Uint32(p[4:]); r != 0 {
		return 0, 0, fmt.Errorf("%w: SYNC reserved field is %#x", ErrMalformed, r)
	}
	return binary.BigEndian.Uint32(p), binary.BigEndian.Uint64(p[8:]), nil
}
