package migrate

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"sort"
	"sync"
	"time"
)

// Post-copy (PROTOCOL.md, "Post-copy"): when pre-copy does not converge,
// the source pauses, sends what is cheap (zero pages), the state, and the
// set of pages the destination does not hold up to date (MISSING); after
// COMMIT the destination runs the guest at once, those pages absent: an
// access to one blocks until it arrives. The source pushes every missing
// page on the main connection, and answers the destination's requests for
// the pages the guest waits for on a connection of their own, the request
// channel, so that they do not wait behind the push.
//
// This file has the records and the destination's session; the sender's
// side is in postcopy_send.go, the receiver's in postcopy_recv.go.

// MaxMissingPages is the number of pages one MISSING record describes.
const MaxMissingPages = 1 << 15

// missingFixedSize is MISSING's header: first page u64, count u32,
// reserved u32; the bitmap follows.
const missingFixedSize = 16

// maxMissingPayload bounds a MISSING record.
const maxMissingPayload = missingFixedSize + MaxMissingPages/8

// MaxRequestPages is the most pages one REQUEST record asks for.
const MaxRequestPages = 512

// completeSize is COMPLETE's payload: pages requested, and the median and
// 99th percentile of the fault service time in nanoseconds.
const completeSize = 24

// encodeMissing describes pages [first, first+n) of the bitmap missing
// (one bit per global page).
func encodeMissing(missing []uint64, first uint64, n int) []byte {
	p := make([]byte, missingFixedSize+(n+7)/8)
	binary.BigEndian.PutUint64(p, first)
	binary.BigEndian.PutUint32(p[8:], uint32(n))
	bm := p[missingFixedSize:]
	for i := range n {
		g := first + uint64(i)
		if missing[g/64]&(1<<(g%64)) != 0 {
			bm[i/8] |= 1 << (i % 8)
		}
	}
	return p
}

// decodeMissing checks a MISSING record that must start at page want of a
// guest of total pages, and sets its pages in missing. It returns the
// number of pages covered.
func decodeMissing(p []byte, want, total uint64, missing []uint64) (uint64, error) {
	first, n, err := bitmapRecordRange("MISSING", p, want, total, MaxMissingPages)
	if err != nil {
		return 0, err
	}
	bm := p[missingFixedSize:]
	if uint64(len(bm)) != (n+7)/8 {
		return 0, fmt.Errorf("%w: MISSING has a bitmap of %d bytes for %d pages", ErrMalformed, len(bm), n)
	}
	if pad := n % 8; pad != 0 && bm[len(bm)-1]>>pad != 0 {
		return 0, fmt.Errorf("%w: MISSING bits past page %d are set", ErrMalformed, first+n-1)
	}
	for i := range n {
		if bm[i/8]&(1<<(i%8)) != 0 {
			g := first + i
			missing[g/64] |= 1 << (g % 64)
		}
	}
	return n, nil
}

// encodeRequest asks for pages (1..MaxRequestPages global indices).
func encodeRequest(pages []uint64) []byte {
	p := make([]byte, 0, 8*len(pages))
	for _, g := range pages {
		p = binary.BigEndian.AppendUint64(p, g)
	}
	return p
}

// decodeRequest returns the pages a REQUEST asks for, each < total.
func decodeRequest(p []byte, total uint64) ([]uint64, error) {
	if len(p) == 0 || len(p)%8 != 0 || len(p)/8 > MaxRequestPages {
		return nil, fmt.Errorf("%w: REQUEST of %d bytes", ErrMalformed, len(p))
	}
	pages := make([]uint64, len(p)/8)
	for i := range pages {
		g := binary.BigEndian.Uint64(p[8*i:])
		if g >= total {
			return nil, fmt.Errorf("%w: REQUEST for page %d, outside the guest's %d pages", ErrMalformed, g, total)
		}
		pages[i] = g
	}
	return pages, nil
}

// PostcopyStats is what the destination measured of a post-copy phase
// (COMPLETE): how many pages the guest asked for, and the time from a
// fault to the page being in place.
type PostcopyStats struct {
	PagesRequested uint64  `json:"pages_requested"`
	FaultMedianUS  float64 `json:"fault_median_us"`
	FaultP99US     float64 `json:"fault_p99_us"`
}

func encodeComplete(st PostcopyStats) []byte {
	p := binary.BigEndian.AppendUint64(nil, st.PagesRequested)
	p = binary.BigEndian.AppendUint64(p, uint64(st.FaultMedianUS*1000))
	return binary.BigEndian.AppendUint64(p, uint64(st.FaultP99US*1000))
}

func decodeComplete(p []byte) PostcopyStats {
	return PostcopyStats{
		PagesRequested: binary.BigEndian.Uint64(p),
		FaultMedianUS:  float64(binary.BigEndian.Uint64(p[8:])) / 1000,
		FaultP99US:     float64(binary.BigEndian.Uint64(p[16:])) / 1000,
	}
}

// postcopySession is the destination's post-copy: which pages are still
// missing, which the guest waits for, and the way pages go in.
type postcopySession struct {
	id    VMID
	peer  string
	total uint64
	dst   PostcopyDestination

	// mu guards the fields below; wake is signalled when needs grows or
	// the session ends.
	mu        sync.Mutex
	missing   []uint64             // bitmap: pages not arrived yet
	left      uint64               // bits set in missing
	requested []uint64             // bitmap: pages asked for on the channel
	needs     []uint64             // pages the guest waits for, not asked for yet
	faults    map[uint64]time.Time // when the guest began to wait, by page
	served    []time.Duration      // fault service times
	nreq      uint64
	channel   bool // a request channel is attached
	ended     bool // every missing page arrived (or the registry let go)
	complete  bool // COMPLETE was sent: nothing is missing any more
	attached  bool // a main connection serves the session (the first, or a recovery)
	wake      chan struct{}
}

func newPostcopySession(id VMID, peer string, total uint64, dst PostcopyDestination) *postcopySession {
	return &postcopySession{id: id, peer: peer, total: total, dst: dst,
		missing: make([]uint64, (total+63)/64), requested: make([]uint64, (total+63)/64),
		faults: map[uint64]time.Time{}, wake: make(chan struct{}, 1)}
}

func (s *postcopySession) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// need is what the destination calls when an access waits for page g:
// it queues g for the request channel, once. It never blocks.
func (s *postcopySession) need(g uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if g >= s.total || s.missing[g/64]&(1<<(g%64)) == 0 || s.requested[g/64]&(1<<(g%64)) != 0 {
		return
	}
	s.requested[g/64] |= 1 << (g % 64)
	s.faults[g] = time.Now()
	s.needs = append(s.needs, g)
	s.nreq++
	s.signal()
}

// takeNeeds returns the pages to ask for next (at most MaxRequestPages),
// or ok false once the session ended.
func (s *postcopySession) takeNeeds() (pages []uint64, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return nil, false
	}
	n := min(len(s.needs), MaxRequestPages)
	pages = append(pages, s.needs[:n]...)
	s.needs = s.needs[n:]
	return pages, true
}

// fill puts page g in place (data nil: a zero page). Every missing page
// arrives exactly once, pushed or requested; any other page is refused.
func (s *postcopySession) fill(g uint64, data []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if g >= s.total || s.missing[g/64]&(1<<(g%64)) == 0 {
		return fmt.Errorf("%w: page %d arrived in post-copy, but it is not missing (any more)", ErrMalformed, g)
	}
	if err := s.dst.Fill(g, data); err != nil {
		return fmt.Errorf("migrate: post-copy: put page %d in place: %w", g, err)
	}
	s.missing[g/64] &^= 1 << (g % 64)
	s.left--
	if at, ok := s.faults[g]; ok {
		s.served = append(s.served, time.Since(at))
		delete(s.faults, g)
	}
	return nil
}

// end closes the session: no more requests.
func (s *postcopySession) end() {
	s.mu.Lock()
	s.ended = true
	s.mu.Unlock()
	s.signal()
}

func (s *postcopySession) isComplete() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.complete
}

// reattach gives the session to a new main connection (a recovery) if
// none serves it now.
func (s *postcopySession) reattach() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.attached {
		return fmt.Errorf("the post-copy migration of VM %v is still in progress here (its connection has not broken yet: retry in a moment)", s.id)
	}
	s.attached = true
	return nil
}

// detach: the main connection that served the session broke.
func (s *postcopySession) detach() {
	s.mu.Lock()
	s.attached = false
	s.mu.Unlock()
}

// detachChannel: the request channel broke; a recovery opens another.
func (s *postcopySession) detachChannel() {
	s.mu.Lock()
	s.channel = false
	// The pages asked for on it may be lost with it: ask again.
	for g := range s.faults {
		s.requested[g/64] &^= 1 << (g % 64)
	}
	s.mu.Unlock()
}

// reask queues again every page the guest waits for (a new channel).
func (s *postcopySession) reask() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.needs = s.needs[:0]
	for g := range s.faults {
		if s.missing[g/64]&(1<<(g%64)) != 0 {
			s.requested[g/64] |= 1 << (g % 64)
			s.needs = append(s.needs, g)
		}
	}
	s.signal()
}

func (s *postcopySession) isEnded() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ended
}

// stats sums up the faults served.
func (s *postcopySession) stats() PostcopyStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := PostcopyStats{PagesRequested: s.nreq}
	if n := len(s.served); n > 0 {
		d := append([]time.Duration(nil), s.served...)
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		st.FaultMedianUS = float64(d[n/2]) / 1e3
		st.FaultP99US = float64(d[min(n-1, n*99/100)]) / 1e3
	}
	return st
}

// popcountWords counts the bits set in bm.
func popcountWords(bm []uint64) uint64 {
	var n uint64
	for _, w := range bm {
		n += uint64(bits.OnesCount64(w))
	}
	return n
}
