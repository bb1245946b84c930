package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/zeebo/xxh3"
	"golang.org/x/sys/unix"

	"github.com/ferryvmm/ferry/migrate"
)

// The fake guest: its memory, the fill, the hash both sides compare, and
// the migrate.Source and migrate.Destination around it.

const pageSize = migrate.PageSize

// mapGuest maps size bytes of anonymous memory the way vmm maps guest RAM:
// private, anonymous, no swap reservation. Nothing is resident until a
// page is written (a read maps the kernel's shared zero page, which does
// not count in RSS).
func mapGuest(size uint64) ([]byte, error) {
	mem, err := unix.Mmap(-1, 0, int(size), unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("mmap %d MiB of guest memory: %w", size>>20, err)
	}
	// Out of core dumps, as guest memory should be; the flag also keeps
	// the kernel from merging the mapping with a neighbour (another
	// anonymous mapping without swap reservation), so that its resident
	// size in /proc/self/smaps is the guest's alone.
	if err := unix.Madvise(mem, unix.MADV_DONTDUMP); err != nil {
		unix.Munmap(mem)
		return nil, fmt.Errorf("madvise guest memory: %w", err)
	}
	return mem, nil
}

// The fill: guest memory is a sequence of runs of 1 to maxRun pages, each
// run of one kind drawn with equal odds, so about a third of the pages of
// each kind:
//
//   - zero: never written (free memory of an idle guest). The sender
//     finds them with its zero check and sends no data for them; the
//     receiver never writes them either.
//   - text: a 4 KiB window of a text-like corpus (words, spaces,
//     punctuation, newlines) stamped with the page number, so that every
//     page differs: page cache and program text, which zstd compresses
//     about 2.5:1 in 64-page records.
//   - random: xorshift64* output, incompressible (compressed or encrypted
//     data, media).
//
// Runs rather than single pages because real guests' free and used
// memory come in stretches; short runs still mix the kinds within every
// PAGES record. Only the text and random pages are touched, so each side
// holds about two thirds of the guest's size resident: 5.3 GiB per side
// for 8 GiB, both sides at once well within a 24 GiB machine.
//
// Each fillBlock-sized block draws its runs from its own seed, so blocks
// fill in parallel and the content depends only on the size.
const (
	maxRun    = 16
	fillBlock = 2 << 20
)

// Page kinds of the fill.
const (
	kindZero = iota
	kindText
	kindRandom
	nKinds
)

// Mix counts the pages of each kind.
type Mix struct {
	Zero   uint64 `json:"zero_pages"`
	Text   uint64 `json:"text_pages"`
	Random uint64 `json:"random_pages"`
}

func (m *Mix) add(o Mix) { m.Zero += o.Zero; m.Text += o.Text; m.Random += o.Random }

// Touched is the bytes of the pages written (text and random).
func (m Mix) Touched() uint64 { return (m.Text + m.Random) * pageSize }

// fillGuest fills mem (a fresh mapping, all zero) with the mix, on every
// core.
func fillGuest(mem []byte) Mix {
	corpus := textCorpus(4 << 20)
	nblocks := (len(mem) + fillBlock - 1) / fillBlock
	var next atomic.Int64
	var mu sync.Mutex // guards total
	var total Mix
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			var m Mix
			for {
				b := int(next.Add(1) - 1)
				if b >= nblocks {
					break
				}
				end := min((b+1)*fillBlock, len(mem))
				m.add(fillBlockAt(mem[b*fillBlock:end], uint64(b*fillBlock/pageSize), corpus))
			}
			mu.Lock()
			total.add(m)
			mu.Unlock()
		})
	}
	wg.Wait()
	return total
}

// fillBlockAt fills one block whose first page is guest page first.
func fillBlockAt(block []byte, first uint64, corpus []byte) Mix {
	var m Mix
	var stamp [32]byte
	rng := newRNG(first)
	npages := uint64(len(block) / pageSize)
	for p := uint64(0); p < npages; {
		n := 1 + rng.next()%maxRun
		kind := rng.next() % nKinds
		for ; n > 0 && p < npages; n, p = n-1, p+1 {
			page := block[p*pageSize : (p+1)*pageSize]
			switch kind {
			case kindZero:
				m.Zero++
			case kindText:
				off := rng.next() % uint64(len(corpus)-pageSize)
				copy(page, corpus[off:off+pageSize])
				copy(page, append(strconv.AppendUint(append(stamp[:0], "page "...), first+p, 10), '\n'))
				m.Text++
			case kindRandom:
				randomPage(page, first+p)
				m.Random++
			}
		}
	}
	return m
}

// rng is xorshift64* with a splitmix64-scrambled seed.
type rng struct{ x uint64 }

func newRNG(seed uint64) *rng {
	z := seed + 0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return &rng{x: z ^ (z >> 31) | 1}
}

func (r *rng) next() uint64 {
	r.x ^= r.x >> 12
	r.x ^= r.x << 25
	r.x ^= r.x >> 27
	return r.x * 2685821657736338717
}

// randomPage fills page with pseudo-random bytes seeded by its number.
func randomPage(page []byte, n uint64) {
	r := newRNG(n ^ 0x5eed)
	for o := 0; o < len(page); o += 8 {
		binary.LittleEndian.PutUint64(page[o:], r.next())
	}
}

// words is the corpus's vocabulary: English, log and program text.
var words = strings.Fields(`the of and to in is that for it as with was on be by at this are from
or have an they which one you were her all she there would their we him been has when who will more
no if out so said what up its about into than them can only other new some could time these two may
then do first any my now such like our over man me even most made after also did many before must
through back years where much your way well down should because each just those people how too
little state good very make world still own see men work long get here between both life being under
never day same another know while last might us great old year off come since against go came right
used take three kernel memory page error warning info debug return func nil err int string struct
const var type package import interface map range append len make chan select case default switch
for break continue goto true false request response server client connection timeout retry user
file path open close read write buffer queue thread lock mutex value key index table record entry`)

// textCorpus makes n bytes of text-like data: words of the vocabulary,
// sentences of 6 to 20 of them, a line break every few sentences, and now
// and then a number.
func textCorpus(n int) []byte {
	r := newRNG(0x7e47)
	var b bytes.Buffer
	b.Grow(n + 256)
	for b.Len() < n {
		nw := 6 + r.next()%15
		for i := uint64(0); i < nw; i++ {
			if i > 0 {
				b.WriteByte(' ')
			}
			if r.next()%16 == 0 {
				b.WriteString(strconv.FormatUint(r.next()%100000, 10))
				continue
			}
			b.WriteString(words[r.next()%uint64(len(words))])
		}
		if r.next()%4 == 0 {
			b.WriteString(".\n")
		} else {
			b.WriteString(". ")
		}
	}
	return b.Bytes()[:n]
}

// hashGuest is the digest both sides print at the end, made as vmm's
// Memory.Hash makes ferry's RAM hash: XXH3-128 of the layout and of every
// page's digest. Page after page on one core, where Memory.Hash keeps
// every page's digest in a slice to hash on every core: that slice would
// count in the peak RSS the benchmark measures.
func hashGuest(mem []byte) string {
	h := xxh3.New()
	fmt.Fprintf(h, "%x+%x:", 0, len(mem))
	for off := 0; off < len(mem); off += pageSize {
		d := migrate.HashPage(mem[off : off+pageSize])
		h.Write(d[:])
	}
	return fmt.Sprintf("%x", h.Sum128().Bytes())
}

// residentBytes is the resident size of the mapping mem (Rss in
// /proc/self/smaps: pages written, not the zero page a read maps).
func residentBytes(mem []byte) (uint64, error) {
	start := addressOf(mem)
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		return 0, fmt.Errorf("resident guest memory: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	found := false
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		if lo, hi, ok := strings.Cut(fields[0], "-"); ok && !strings.HasSuffix(fields[0], ":") {
			a, err1 := strconv.ParseUint(lo, 16, 64)
			z, err2 := strconv.ParseUint(hi, 16, 64)
			found = err1 == nil && err2 == nil && a <= start && start < z
			if found && z-a != uint64(len(mem)) {
				return 0, fmt.Errorf("resident guest memory: the mapping at %#x is %d bytes long, not %d (merged with another)", a, z-a, len(mem))
			}
			continue
		}
		if found && fields[0] == "Rss:" && len(fields) >= 2 {
			kb, err := strconv.ParseUint(fields[1], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("resident guest memory: %q: %w", sc.Text(), err)
			}
			return kb << 10, nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("resident guest memory: %w", err)
	}
	return 0, fmt.Errorf("resident guest memory: no mapping at %#x in /proc/self/smaps", start)
}

// guestInfo is the fake VM's layout: one region, one vCPU, one device.
func guestInfo(size uint64) migrate.VMInfo {
	return migrate.VMInfo{
		ID:      migrate.VMID{'f', 'e', 'r', 'r', 'y', '-', 's', 'c', 'a', 'l', 'e'},
		Regions: []migrate.Region{{GPA: 0, Size: size}},
		VCPUs:   1,
		Devices: []string{"serial0"},
	}
}

// guestState is the fake VM's state: 16 KiB, about what one vCPU and a
// few devices take.
func guestState() []byte {
	st := make([]byte, 16<<10)
	randomPage(st[:pageSize], 1)
	copy(st[pageSize:], textCorpus(len(st)-pageSize))
	return st
}

// source is an idle guest: dirty logging in manual-protect mode (as vmm
// on KVM with KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) that never reports a
// page, so the migration is iteration 0 (every page) and an empty
// stop-and-copy.
type source struct {
	info  migrate.VMInfo
	mem   []byte
	state []byte
}

func (s *source) Info() migrate.VMInfo                      { return s.info }
func (s *source) Memory(int) []byte                         { return s.mem }
func (s *source) StartDirtyLog() (bool, error)              { return true, nil }
func (s *source) StopDirtyLog() error                       { return nil }
func (s *source) DirtyLog(int, []uint64) error              { return nil }
func (s *source) ClearDirtyLog(int, uint64, []uint64) error { return nil }
func (s *source) Pause() error                              { return nil }
func (s *source) Resume() error                             { return nil }
func (s *source) State() ([]byte, error)                    { return s.state, nil }

// destination maps the guest's memory in Prepare and checks the state it
// is given. It is a migrate.Resumable, as vmm's destination is, so that
// the receiver keeps its digest table for resumes as ferry receive does.
type destination struct {
	want  migrate.VMInfo
	state []byte
	mem   []byte
	// pool, if set, holds guest memory mapped and faulted in before the
	// measurement (-prefault): the first Prepare takes it.
	pool    *prefaulted
	started atomic.Bool
}

func (d *destination) Prepare(info migrate.VMInfo) error {
	if err := migrate.SameLayout(d.want, info); err != nil {
		return err
	}
	if mem := d.pool.take(); mem != nil {
		d.mem = mem
		return nil
	}
	mem, err := mapGuest(info.MemorySize())
	if err != nil {
		return err
	}
	d.mem = mem
	return nil
}

// prefaulted is guest memory whose every page is already resident, as a
// VMM that preallocates guest memory would hand it over: a migration into
// it pays no page faults.
type prefaulted struct {
	mu  sync.Mutex // guards mem
	mem []byte
}

// prefault maps size bytes and writes every page.
func prefault(size uint64) (*prefaulted, error) {
	mem, err := mapGuest(size)
	if err != nil {
		return nil, err
	}
	for o := 0; o < len(mem); o += pageSize {
		mem[o] = 0 // a write fault: the page is allocated (zeroed)
	}
	return &prefaulted{mem: mem}, nil
}

// take hands the memory over, once; nil after that, or without a pool.
func (p *prefaulted) take() []byte {
	if p == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	mem := p.mem
	p.mem = nil
	return mem
}

func (d *destination) Memory(int) []byte { return d.mem }

func (d *destination) Restore(state []byte) error {
	if !bytes.Equal(state, d.state) {
		return fmt.Errorf("the guest state differs from the source's (%d bytes, want %d)", len(state), len(d.state))
	}
	return nil
}

func (d *destination) Start() error {
	d.started.Store(true)
	return nil
}

func (d *destination) Discard() {
	if d.mem != nil {
		unix.Munmap(d.mem)
		d.mem = nil
	}
}

func (d *destination) Suspend()       {}
func (d *destination) Reclaim() error { return nil }
