package migrate

import (
	"encoding/binary"
	"fmt"
	"io"
	"math/bits"
	"sync"
	"time"
)

// Resuming a cut migration (PROTOCOL.md, "Resume").
//
// A destination that loses its source before COMMIT can keep what it
// received: the prepared VM with its memory, and the digest of every page
// it holds. When the same source (same VM id, same peer, same layout)
// comes back with a RESUME HELLO within the keep window, the destination
// answers HELLO-ACK{RESUME} followed by KEPT records (which pages it holds,
// with their digests), and the source's iteration 0 skips every page whose
// content still has the digest the destination holds.

// The KEPT record's layout is in PROTOCOL.md ("KEPT").
const (
	keptFixedSize = 16
	// MaxKeptPages is the number of pages one KEPT record describes.
	MaxKeptPages   = 4096
	maxKeptPayload = keptFixedSize + 2*(MaxKeptPages/8) + MaxKeptPages*digestSize
)

// encodeKept describes pages [first, first+n) of t (n ≤ MaxKeptPages); a
// page is kept when its table entry is not NeverSent.
func encodeKept(t *DigestTable, first uint64, n int) []byte {
	bm := (n + 7) / 8
	p := make([]byte, keptFixedSize+2*bm, keptFixedSize+2*bm+n*digestSize)
	binary.BigEndian.PutUint64(p, first)
	binary.BigEndian.PutUint32(p[8:], uint32(n))
	kept, zero := p[keptFixedSize:keptFixedSize+bm], p[keptFixedSize+bm:keptFixedSize+2*bm]
	for i := range n {
		d, it := t.Lookup(first + uint64(i))
		if it == NeverSent {
			continue
		}
		kept[i/8] |= 1 << (i % 8)
		if d == ZeroDigest {
			zero[i/8] |= 1 << (i % 8)
			continue
		}
		p = append(p, d[:]...)
	}
	return p
}

// bitmapRecordRange checks the fixed part that MISSING and KEPT share
// (layout: PROTOCOL.md): the first page (u64), the page count (u32) and a
// reserved word (u32, zero). The record must start at page want of a guest
// of total pages and cover min(limit, total-want) pages; it returns the
// first page and the count.
func bitmapRecordRange(name string, p []byte, want, total, limit uint64) (first, n uint64, err error) {
	if len(p) < 16 {
		return 0, 0, fmt.Errorf("%w: %s of %d bytes", ErrMalformed, name, len(p))
	}
	first = binary.BigEndian.Uint64(p)
	n = uint64(binary.BigEndian.Uint32(p[8:]))
	if first != want || want >= total {
		return 0, 0, fmt.Errorf("%w: %s starts at page %d, expected %d (guest has %d pages)", ErrMalformed, name, first, want, total)
	}
	if n != min(limit, total-first) {
		return 0, 0, fmt.Errorf("%w: %s at page %d covers %d pages, expected %d", ErrMalformed, name, first, n, min(limit, total-first))
	}
	if r := binary.BigEndian.Uint32(p[12:]); r != 0 {
		return 0, 0, fmt.Errorf("%w: %s reserved field is %#x", ErrMalformed, name, r)
	}
	return first, n, nil
}

// decodeKept checks a KEPT payload that must start at page want of a
// guest of total pages, and calls kept for every page it keeps (with
// ZeroDigest for a zero page). It returns the number of pages covered.
func decodeKept(p []byte, want, total uint64, kept func(page uint64, d Digest)) (uint64, error) {
	first, n, err := bitmapRecordRange("KEPT", p, want, total, MaxKeptPages)
	if err != nil {
		return 0, err
	}
	bm := int(n+7) / 8
	if len(p) < keptFixedSize+2*bm {
		return 0, fmt.Errorf("%w: KEPT bitmaps truncated", ErrMalformed)
	}
	hb, zb := p[keptFixedSize:keptFixedSize+bm], p[keptFixedSize+bm:keptFixedSize+2*bm]
	if pad := n % 8; pad != 0 && (hb[bm-1]|zb[bm-1])>>pad != 0 {
		return 0, fmt.Errorf("%w: KEPT bitmap bits past page %d are set", ErrMalformed, first+n-1)
	}
	full := 0
	for i := range bm {
		if zb[i]&^hb[i] != 0 {
			return 0, fmt.Errorf("%w: KEPT marks a page zero that it does not hold", ErrMalformed)
		}
		full += bits.OnesCount8(hb[i] &^ zb[i])
	}
	digests := p[keptFixedSize+2*bm:]
	if len(digests) != full*digestSize {
		return 0, fmt.Errorf("%w: KEPT has %d digest bytes for %d kept non-zero pages", ErrMalformed, len(digests), full)
	}
	for i := range int(n) {
		switch {
		case hb[i/8]&(1<<(i%8)) == 0:
		case zb[i/8]&(1<<(i%8)) != 0:
			kept(first+uint64(i), ZeroDigest)
		default:
			d := Digest(digests[:digestSize])
			digests = digests[digestSize:]
			if d == ZeroDigest {
				return 0, fmt.Errorf("%w: KEPT gives page %d the zero page's digest without its zero bit", ErrMalformed, first+uint64(i))
			}
			kept(first+uint64(i), d)
		}
	}
	return n, nil
}

// writeKept sends the KEPT records describing r.table, in page order.
func (r *receiver) writeKept(conn io.Writer) error {
	idle := r.opts.IdleTimeout
	if idle > 0 {
		defer setWriteDeadline(conn, time.Time{})
	}
	for first := uint64(0); first < r.total; first += MaxKeptPages {
		if idle > 0 {
			// A source that stops reading must not block this side forever.
			setWriteDeadline(conn, time.Now().Add(idle))
		}
		n := int(min(MaxKeptPages, r.total-first))
		if err := writeRecord(conn, RecKept, encodeKept(r.table, first, n)); err != nil {
			return fmt.Errorf("migrate: send KEPT: %w", err)
		}
	}
	return nil
}

// receiveKept reads the destination's KEPT records after a RESUME
// HELLO-ACK and fills the digest table with them, so that iteration 0
// skips the pages the destination holds with the same content.
func (s *sender) receiveKept() error {
	t := time.NewTimer(s.opts.HandshakeTimeout)
	defer t.Stop()
	for next := uint64(0); next < s.vm.total; {
		select {
		case m := <-s.peer.ch:
			if m.err != nil || m.t != RecKept {
				s.peer.end = true
				return s.peerFailure(m, "the wait for KEPT")
			}
			n, err := decodeKept(m.payload, next, s.vm.total, func(page uint64, d Digest) {
				s.table.Update(page, d, 0)
				s.stats.DestinationKept++
			})
			if err != nil {
				return err
			}
			next += n
			t.Reset(s.opts.HandshakeTimeout)
		case <-t.C:
			return fmt.Errorf("migrate: KEPT records stopped coming for %v", s.opts.HandshakeTimeout)
		case <-s.ctx.Done():
			return s.ctx.Err()
		}
	}
	return nil
}

// Keeper keeps, for a bounded time, what a failed incoming migration had
// received (the prepared VM and the digest of every page it holds), so
// that its source can resume it (Options.Resume). It holds at most one VM;
// one Keeper serves every connection of a receiver. What it keeps is
// dropped (Discard) when the window ends, when a new (not resumed)
// migration arrives, and on Close; a resume takes it over.
type Keeper struct {
	window time.Duration
	logf   func(format string, args ...any)

	// mu guards k, timer, gen, active and closed: connections of the
	// receiver and the window's timer use the Keeper at once.
	mu     sync.Mutex
	k      *kept
	timer  *time.Timer
	gen    uint64       // bumped by every swap: an older timer does nothing
	active map[VMID]int // migrations in progress, by VM id
	closed bool
}

// kept is one failed migration's VM, as the Keeper holds it.
type kept struct {
	dst   Resumable
	info  VMInfo
	peer  string
	table *DigestTable // digest of every page kept (NeverSent: not kept)
	pages uint64       // pages kept
	total uint64
}

// NewKeeper keeps a failed migration's pages for window (zero or less:
// keep nothing). logf, if not nil, is told what is kept and dropped.
func NewKeeper(window time.Duration, logf func(format string, args ...any)) *Keeper {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	return &Keeper{window: window, logf: logf, active: map[VMID]int{}}
}

// Window is how long a failed migration's pages are kept.
func (k *Keeper) Window() time.Duration { return k.window }

// enabled reports whether k keeps anything at all.
func (k *Keeper) enabled() bool { return k != nil && k.window > 0 }

// Holding describes what is kept now ("" when nothing is).
func (k *Keeper) Holding() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.k == nil {
		return ""
	}
	return fmt.Sprintf("%d of %d pages of VM %v", k.k.pages, k.k.total, k.k.info.ID)
}

// put keeps kp, suspending its destination, in place of anything kept
// before; it reports false (and discards kp) when k keeps nothing.
func (k *Keeper) put(kp *kept) bool {
	k.mu.Lock()
	if k.closed || !k.enabled() {
		k.mu.Unlock()
		kp.dst.Discard()
		return false
	}
	kp.dst.Suspend()
	old := k.swap(kp)
	k.mu.Unlock()
	k.discard(old, "pages of another migration are kept instead")
	k.logf("keeping %d of %d pages of VM %v for a resume (ferry migrate --resume) for %v", kp.pages, kp.total, kp.info.ID, k.window)
	return true
}

// swap replaces what is kept and (re)arms the window; k.mu is held.
func (k *Keeper) swap(kp *kept) *kept {
	old := k.k
	k.k = kp
	k.gen++
	if k.timer != nil {
		k.timer.Stop()
		k.timer = nil
	}
	if kp != nil {
		gen := k.gen
		k.timer = time.AfterFunc(k.window, func() { k.expire(gen) })
	}
	return old
}

func (k *Keeper) expire(gen uint64) {
	k.mu.Lock()
	if k.gen != gen {
		k.mu.Unlock()
		return
	}
	old := k.swap(nil)
	k.mu.Unlock()
	k.discard(old, fmt.Sprintf("no resume within %v", k.window))
}

func (k *Keeper) discard(kp *kept, why string) {
	if kp == nil {
		return
	}
	kp.dst.Discard()
	k.logf("dropped the %d pages kept for VM %v: %s", kp.pages, kp.info.ID, why)
}

// drop discards whatever is kept.
func (k *Keeper) drop(why string) {
	if k == nil {
		return
	}
	k.mu.Lock()
	old := k.swap(nil)
	k.mu.Unlock()
	k.discard(old, why)
}

// Close drops what is kept and keeps nothing from now on.
func (k *Keeper) Close() {
	k.mu.Lock()
	k.closed = true
	old := k.swap(nil)
	k.mu.Unlock()
	k.discard(old, "the receiver stopped")
}

// take hands the kept VM to a resumed migration of info from peer, or
// says why it cannot.
func (k *Keeper) take(info VMInfo, peer string) (*kept, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	kp := k.k
	switch {
	case kp == nil && k.active[info.ID] > 0:
		return nil, fmt.Errorf("a migration of VM %v into this receiver is still in progress (it has not noticed the failure yet): retry in a moment", info.ID)
	case kp == nil:
		return nil, fmt.Errorf("this receiver keeps no pages of VM %v (none received, the --resume-window of %v ended, or a newer migration replaced them): migrate without --resume", info.ID, k.window)
	case kp.info.ID != info.ID:
		return nil, fmt.Errorf("this receiver keeps pages of another VM, not of VM %v: migrate without --resume", info.ID)
	case kp.peer != peer:
		return nil, fmt.Errorf("the pages of VM %v were received from another peer", info.ID)
	}
	if err := SameLayout(kp.info, info); err != nil {
		return nil, fmt.Errorf("VM %v announces another layout than its kept pages: %v", info.ID, err)
	}
	k.swap(nil)
	return kp, nil
}

// putBack returns a VM that take handed out but that could not be used.
func (k *Keeper) putBack(kp *kept) {
	k.mu.Lock()
	if k.closed || k.k != nil {
		k.mu.Unlock()
		k.discard(kp, "the receiver stopped or keeps other pages")
		return
	}
	k.swap(kp)
	k.mu.Unlock()
}

// begin and end track the migrations in progress (for take's message).
func (k *Keeper) begin(id VMID) {
	if k == nil {
		return
	}
	k.mu.Lock()
	k.active[id]++
	k.mu.Unlock()
}

func (k *Keeper) end(id VMID) {
	if k == nil {
		return
	}
	k.mu.Lock()
	if k.active[id]--; k.active[id] <= 0 {
		delete(k.active, id)
	}
	k.mu.Unlock()
}

// onResume takes over the VM a failed migration of the same source left
// here: its memory and the digests of its pages stay, the KEPT records
// that follow HELLO-ACK tell the source which pages it need not send.
func (r *receiver) onResume(info VMInfo, streams bool) error {
	if !r.opts.Keep.enabled() {
		return fmt.Errorf("%w: cannot resume: this receiver keeps no pages of failed migrations (ferry receive --resume-window)", ErrRefused)
	}
	kp, err := r.opts.Keep.take(info, r.opts.Peer)
	if err != nil {
		return fmt.Errorf("%w: cannot resume: %v", ErrRefused, err)
	}
	if err := kp.dst.Reclaim(); err != nil {
		r.opts.Keep.putBack(kp)
		return fmt.Errorf("%w: cannot resume: %v", ErrRefused, err)
	}
	r.dst, r.prepared, r.resumed, r.table = kp.dst, true, true, kp.table
	if err := r.layout(info); err != nil {
		return err
	}
	for p := range r.total {
		if _, it := r.table.Lookup(p); it != NeverSent {
			r.present[p/64] |= 1 << (p % 64)
			r.npresent.Add(1)
		}
	}
	r.stats.PagesKept = r.npresent.Load()
	r.opts.Keep.begin(info.ID)
	r.active = true
	r.state = stateAwaitPagesOrState
	if streams {
		if err := r.acceptStreams(info); err != nil {
			return err
		}
		r.state = stateAwaitStreams
	}
	r.reply, r.replyPayload, r.sendKept = RecHelloAck, encodeHelloAck(helloFlags{Resume: true, Streams: streams}), true
	return nil
}
