package migrate

import (
	"bytes"
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"
)

// fakeSource is guest memory in plain byte slices plus a dirty log with KVM
// semantics: a write sets the page's bit while logging is on; without manual
// mode DirtyLog reports and re-arms; in manual mode DirtyLog only reports and
// ClearDirtyLog re-arms, so a write after a clear marks the page again.
//
// Hooks run synchronously on the sender's goroutine, which makes the
// interleaving of "guest writes" and sender steps deterministic.
type fakeSource struct {
	mu      sync.Mutex
	info    VMInfo
	mem     [][]byte
	dirty   [][]uint64     // KVM's log: guest writes
	dev     []*DirtyBitmap // pages the VMM's devices wrote, as in vmm
	manual  bool
	logging bool
	paused  bool
	state   []byte

	// fetches counts DirtyLog calls on region 0, i.e. dirty-log syncs.
	fetches int
	// beforeFetch / afterFetch run around the DirtyLog of region 0 with the
	// sync number (1 for the first sync, after iteration 0).
	beforeFetch func(n int)
	afterFetch  func(n int)
	// onClear runs after each ClearDirtyLog.
	onClear func(region int, first uint64)

	clears, pauses, resumes, starts, stops int
	pauseErr, stateErr, dirtyErr, stopErr  error
}

func newFakeSource(manual bool, sizes ...uint64) *fakeSource {
	f := &fakeSource{manual: manual, state: []byte("vcpu+vm+devices state")}
	gpa := uint64(0)
	for _, sz := range sizes {
		f.info.Regions = append(f.info.Regions, Region{GPA: gpa, Size: sz})
		f.mem = append(f.mem, make([]byte, sz))
		f.dirty = append(f.dirty, make([]uint64, (sz/PageSize+63)/64))
		f.dev = append(f.dev, NewDirtyBitmap(sz/PageSize))
		gpa += sz + 1<<30 // leave a hole, like the PCI gap
	}
	f.info.VCPUs = 2
	f.info.Devices = []string{"serial0", "virtio-blk0"}
	return f
}

// write stores data at the start of page p of region i, like a guest store.
func (f *fakeSource) write(i int, p uint64, data []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	copy(f.mem[i][p*PageSize:(p+1)*PageSize], data)
	if f.logging {
		f.dirty[i][p/64] |= 1 << (p % 64)
	}
}

// deviceWrite stores data at the start of page p of region i as a VMM
// device does (a disk read, a received frame): KVM does not see it, the
// device marks the page in its DirtyBitmap after the write.
func (f *fakeSource) deviceWrite(i int, p uint64, data []byte) {
	f.mu.Lock()
	copy(f.mem[i][p*PageSize:(p+1)*PageSize], data)
	f.mu.Unlock()
	f.dev[i].Mark(p, 1)
}

// fillPage writes a page of repeated b (b == 0 zeroes it).
func (f *fakeSource) fillPage(i int, p uint64, b byte) {
	f.write(i, p, bytes.Repeat([]byte{b}, PageSize))
}

func (f *fakeSource) page(i int, p uint64) []byte { return f.mem[i][p*PageSize : (p+1)*PageSize] }

func (f *fakeSource) Info() VMInfo        { return f.info }
func (f *fakeSource) Memory(i int) []byte { return f.mem[i] }

func (f *fakeSource) StartDirtyLog() (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.logging = true
	f.starts++
	return f.manual, nil
}

func (f *fakeSource) StopDirtyLog() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.logging = false
	f.stops++
	return f.stopErr
}

func (f *fakeSource) DirtyLog(i int, bm []uint64) error {
	if f.dirtyErr != nil {
		return f.dirtyErr
	}
	if i == 0 {
		f.fetches++
		if f.beforeFetch != nil {
			f.beforeFetch(f.fetches)
		}
	}
	f.mu.Lock()
	copy(bm, f.dirty[i])
	if !f.manual {
		clear(f.dirty[i])
	}
	f.dev[i].Report(bm, !f.manual)
	f.mu.Unlock()
	if i == 0 && f.afterFetch != nil {
		f.afterFetch(f.fetches)
	}
	return nil
}

func (f *fakeSource) ClearDirtyLog(i int, first uint64, bits []uint64) error {
	f.mu.Lock()
	if !f.manual {
		f.mu.Unlock()
		return errors.New("fake: ClearDirtyLog without manual mode")
	}
	for w, x := range bits {
		f.dirty[i][first/64+uint64(w)] &^= x
	}
	f.dev[i].Rearm(first, bits)
	f.clears++
	f.mu.Unlock()
	if f.onClear != nil {
		f.onClear(i, first)
	}
	return nil
}

func (f *fakeSource) Pause() error {
	if f.pauseErr != nil {
		return f.pauseErr
	}
	f.mu.Lock()
	f.paused = true
	f.mu.Unlock()
	f.pauses++
	return nil
}

func (f *fakeSource) Resume() error {
	f.mu.Lock()
	f.paused = false
	f.mu.Unlock()
	f.resumes++
	return nil
}

// guestWrite is a store by a running vCPU: it does nothing while paused.
func (f *fakeSource) guestWrite(i int, p uint64, data []byte) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.paused {
		return false
	}
	copy(f.mem[i][p*PageSize:(p+1)*PageSize], data)
	if f.logging {
		f.dirty[i][p/64] |= 1 << (p % 64)
	}
	return true
}

func (f *fakeSource) State() ([]byte, error) {
	if !f.paused {
		return nil, errors.New("fake: State while running")
	}
	if f.stateErr != nil {
		return nil, f.stateErr
	}
	return f.state, nil
}

// fakeDest builds the VM in byte slices.
type fakeDest struct {
	info       VMInfo
	mem        [][]byte
	state      []byte
	prepared   bool
	started    bool
	discarded  bool
	prepareErr error
	restoreErr error
	startErr   error
}

func (d *fakeDest) Prepare(info VMInfo) error {
	if d.prepareErr != nil {
		return d.prepareErr
	}
	d.info = info
	for _, r := range info.Regions {
		d.mem = append(d.mem, make([]byte, r.Size))
	}
	d.prepared = true
	return nil
}

func (d *fakeDest) Memory(i int) []byte { return d.mem[i] }

func (d *fakeDest) Restore(state []byte) error {
	if d.restoreErr != nil {
		return d.restoreErr
	}
	d.state = append([]byte(nil), state...)
	return nil
}

func (d *fakeDest) Start() error {
	if d.startErr != nil {
		return d.startErr
	}
	d.started = true
	return nil
}

func (d *fakeDest) Discard() { d.discarded = true }

// tapConn records every byte the receiver reads (the sender's stream).
type tapConn struct {
	net.Conn
	mu  sync.Mutex
	buf bytes.Buffer
}

// bytes is a copy of what was read so far.
func (c *tapConn) bytes() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.buf.Bytes())
}

func (c *tapConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.buf.Write(p[:n])
	c.mu.Unlock()
	return n, err
}

// wireLog is the sender's stream, decoded.
type wireLog struct {
	types      []RecordType
	full       map[uint64]int // pages sent whole
	zero       map[uint64]int // pages sent as zero
	delta      map[uint64]int // pages sent as DELTA entries
	compressed int            // compressed PAGES records
	raw        []byte         // the bytes
}

func decodeWire(t *testing.T, b []byte) *wireLog {
	t.Helper()
	w := &wireLog{full: map[uint64]int{}, zero: map[uint64]int{}, delta: map[uint64]int{}, raw: b}
	rr := newRecordReader(bytes.NewReader(b))
	unzip := newDecompressor()
	defer unzip.close()
	for {
		rec, err := rr.next()
		if err != nil {
			break // end of stream, or the cut of an aborted migration
		}
		w.types = append(w.types, rec.Type)
		if rec.Type != RecPages {
			continue
		}
		p := rec.Payload
		if rec.Flags&FlagCompressed != 0 {
			w.compressed++
			if p, err = unzip.decode(p, maxPagesPayload); err != nil {
				t.Fatalf("wire: %v", err)
			}
		}
		it := newRunIter(p, 1<<62)
		var r pageRun
		for it.next(&r) {
			for g := r.First; g < r.First+r.Count; g++ {
				switch r.Kind {
				case pageFull:
					w.full[g]++
				case pageZero:
					w.zero[g]++
				case pageDelta:
					w.delta[g]++
				}
			}
		}
		if it.err != nil {
			t.Fatalf("wire: %v", it.err)
		}
	}
	return w
}

// result is what one migration over net.Pipe produced on both sides.
type result struct {
	stats   *Stats
	sendErr error
	rstats  *ReceiveStats
	recvErr error
	wire    *wireLog
}

// net2 is a connection end in these tests.
type net2 = net.Conn

var errCanceled = context.Canceled

// runMigration wires Send and Receive over net.Pipe.
func runMigration(t *testing.T, src Source, dst Destination, opts Options, ropts ReceiveOptions) result {
	t.Helper()
	return runFull(t, src, dst, opts, ropts, nil, nil)
}

// runProxied puts a record-rewriting proxy between the two sides.
func runProxied(t *testing.T, src Source, dst Destination, opts Options, mutate func(final bool, rec *record)) result {
	t.Helper()
	link := func(b net.Conn) net.Conn {
		a2, b2 := net.Pipe()
		corruptProxy(t, b, a2, mutate)
		return b2
	}
	return runFull(t, src, dst, opts, ReceiveOptions{}, link, nil)
}

// runMigrationCtx hands setup the cancel function of the sender's context.
func runMigrationCtx(t *testing.T, src Source, dst Destination, opts Options, setup func(cancel func())) result {
	t.Helper()
	return runFull(t, src, dst, opts, ReceiveOptions{}, nil, setup)
}

// runFull wires Send and Receive over net.Pipe. link, if set, gets the
// pipe's far end and returns the end the receiver uses (a proxy between
// them); setup gets the cancel function of the sender's context.
func runFull(t *testing.T, src Source, dst Destination, opts Options, ropts ReceiveOptions,
	link func(net.Conn) net.Conn, setup func(cancel func())) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sctx, scancel := context.WithCancel(ctx)
	defer scancel()
	if setup != nil {
		setup(scancel)
	}
	a, b := net.Pipe()
	if link != nil {
		b = link(b)
	}
	tap := &tapConn{Conn: b}
	var res result
	done := make(chan struct{})
	go func() {
		res.rstats, res.recvErr = Receive(ctx, tap, dst, ropts)
		b.Close()
		close(done)
	}()
	res.stats, res.sendErr = Send(sctx, src, a, opts)
	a.Close()
	<-done
	tap.mu.Lock()
	res.wire = decodeWire(t, tap.buf.Bytes())
	tap.mu.Unlock()
	return res
}

// sameMemory fails the test unless destination memory equals the source's.
func sameMemory(t *testing.T, src *fakeSource, dst *fakeDest) {
	t.Helper()
	if len(dst.mem) != len(src.mem) {
		t.Fatalf("destination has %d regions, source %d", len(dst.mem), len(src.mem))
	}
	for i := range src.mem {
		if !bytes.Equal(src.mem[i], dst.mem[i]) {
			for p := uint64(0); p < uint64(len(src.mem[i]))/PageSize; p++ {
				if !bytes.Equal(src.page(i, p), dst.mem[i][p*PageSize:(p+1)*PageSize]) {
					t.Fatalf("region %d page %d differs between source and destination", i, p)
				}
			}
		}
	}
}
