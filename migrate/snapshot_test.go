package migrate

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"testing"
)

// snapSource is a small paused VM: 8 + 4 pages, some zero.
func snapSource(t testing.TB) *fakeSource {
	src := newFakeSource(true, 8*PageSize, 4*PageSize)
	src.info.ID = VMID{0x5a}
	for p := uint64(0); p < 8; p += 2 {
		src.fillPage(0, p, byte(p+1))
	}
	src.fillPage(1, 3, 0x42)
	if err := src.Pause(); err != nil {
		t.Fatal(err)
	}
	return src
}

func writeSnap(t testing.TB, src SnapshotSource) []byte {
	var buf bytes.Buffer
	st, err := WriteSnapshot(context.Background(), &buf, src)
	if err != nil {
		t.Fatal(err)
	}
	if st.Bytes != int64(buf.Len()) || st.PagesFull+st.PagesZero != 12 {
		t.Fatalf("stats %+v for %d bytes", st, buf.Len())
	}
	return buf.Bytes()
}

func TestSnapshotRoundTrip(t *testing.T) {
	src := snapSource(t)
	file := writeSnap(t, src)
	dst := &fakeDest{}
	st, err := ReadSnapshot(context.Background(), bytes.NewReader(file), dst, ReceiveOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sameMemory(t, src, dst)
	if string(dst.state) != string(src.state) || dst.started || dst.discarded || dst.info.ID != src.info.ID {
		t.Fatalf("state %q, started %v, discarded %v, id %v", dst.state, dst.started, dst.discarded, dst.info.ID)
	}
	if st.PagesFull != 5 || st.PagesZero != 7 || st.Bytes != int64(len(file)) {
		t.Fatalf("read stats %+v", st)
	}
	// A running guest cannot be saved (the fake's State refuses).
	src.Resume()
	if _, err := WriteSnapshot(context.Background(), &bytes.Buffer{}, src); err == nil {
		t.Fatal("a running guest was saved")
	}
}

// refused checks that a damaged file fails with a *SnapshotError and
// leaves nothing prepared or running.
func refused(t *testing.T, what string, file []byte, opts ReceiveOptions) error {
	t.Helper()
	dst := &fakeDest{}
	_, err := ReadSnapshot(context.Background(), bytes.NewReader(file), dst, opts)
	var se *SnapshotError
	if !errors.As(err, &se) {
		t.Fatalf("%s: error %v, want a *SnapshotError", what, err)
	}
	if dst.started || (dst.prepared && !dst.discarded) {
		t.Fatalf("%s: the destination was started or kept (prepared %v, discarded %v)", what, dst.prepared, dst.discarded)
	}
	return err
}

func TestSnapshotRefusesDamage(t *testing.T) {
	file := writeSnap(t, snapSource(t))
	// Every bit flip is caught: header fields, record headers and CRCs,
	// page data.
	for off := 0; off < len(file); off += 13 {
		for _, bit := range []byte{0x01, 0x80} {
			bad := append([]byte(nil), file...)
			bad[off] ^= bit
			refused(t, "bit flip", bad, ReceiveOptions{})
		}
	}
	// Every truncation is caught, at record boundaries too.
	for n := 0; n < len(file); n += 11 {
		err := refused(t, "truncation", file[:n], ReceiveOptions{})
		if n >= snapshotHeaderSize && !errors.Is(err, ErrTruncated) {
			t.Fatalf("truncated at %d: %v, want ErrTruncated", n, err)
		}
	}
	for o := snapshotHeaderSize; o < len(file); {
		if err := refused(t, "cut at a record boundary", file[:o], ReceiveOptions{}); !errors.Is(err, ErrTruncated) {
			t.Fatalf("cut at %d: %v", o, err)
		}
		o += int(binary.BigEndian.Uint32(file[o+8:]))
	}
	bad := append([]byte("XRRYSNAP"), file[8:]...)
	if err := refused(t, "magic", bad, ReceiveOptions{}); !errors.Is(err, ErrNotSnapshot) {
		t.Fatalf("wrong magic: %v", err)
	}
	for _, at := range []int{11, 15} { // format version, protocol version
		bad = append([]byte(nil), file...)
		bad[at]++
		if err := refused(t, "version", bad, ReceiveOptions{}); !errors.Is(err, ErrVersion) {
			t.Fatalf("version byte %d: %v", at, err)
		}
	}
	if err := refused(t, "trailing byte", append(append([]byte(nil), file...), 0), ReceiveOptions{}); !errors.Is(err, ErrMalformed) {
		t.Fatalf("trailing byte: %v", err)
	}
	if err := refused(t, "limit", file, ReceiveOptions{MaxMemory: 8 * PageSize}); !errors.Is(err, ErrRefused) {
		t.Fatalf("over --max-memory: %v", err)
	}
	// A migration stream's records that do not belong in a file.
	withCommit := append(append([]byte(nil), file[:len(file)-HeaderSize-8]...), rec(RecCommit, nil)...)
	if err := refused(t, "COMMIT", withCommit, ReceiveOptions{}); !errors.Is(err, ErrUnexpected) {
		t.Fatalf("COMMIT in a snapshot: %v", err)
	}
}

// FuzzReadSnapshot: whatever the file, ReadSnapshot never panics, never
// goes past the limits, never starts the guest, and leaves nothing
// prepared after a failure. The first input byte chooses whether the
// records' CRCs are resealed after mutation (bit 0).
func FuzzReadSnapshot(f *testing.F) {
	// A small VM (3 pages, one of them not zero) keeps the fuzzer fast.
	small := newFakeSource(true, 2*PageSize, PageSize)
	small.fillPage(1, 0, 7)
	small.Pause()
	var buf bytes.Buffer
	if _, err := WriteSnapshot(context.Background(), &buf, small); err != nil {
		f.Fatal(err)
	}
	file := buf.Bytes()
	f.Add(append([]byte{1}, file...))
	f.Add(append([]byte{0}, file[:len(file)/2]...))
	f.Add(append([]byte{1}, file[:snapshotHeaderSize+40]...))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		file := append([]byte(nil), data[1:]...)
		if data[0]&1 == 1 && len(file) > snapshotHeaderSize {
			reseal(file[snapshotHeaderSize:])
		}
		dst := &fuzzDest{t: t}
		_, err := ReadSnapshot(context.Background(), bytes.NewReader(file), dst, ReceiveOptions{MaxMemory: 1 << 20, MaxVCPUs: 4})
		var se *SnapshotError
		switch {
		case dst.started:
			t.Fatal("ReadSnapshot started the guest")
		case err == nil && !dst.restored:
			t.Fatal("ReadSnapshot succeeded without restoring the state")
		case err != nil && !errors.As(err, &se):
			t.Fatalf("error %v is not a *SnapshotError", err)
		case err != nil && dst.prepared && !dst.closed:
			t.Fatalf("failed (%v) without discarding the prepared VM", err)
		}
	})
}
