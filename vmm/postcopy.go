package vmm

import (
	"errors"
	"fmt"
	"math/bits"
	"sync"
	"sync/atomic"

	"github.com/zeebo/xxh3"

	"github.com/ferryvmm/ferry/migrate"
	"github.com/ferryvmm/ferry/vmm/uffd"
)

// Post-copy on the destination (migrate.PostcopyDestination): the guest
// runs before every page arrived. The pages still missing are dropped from
// guest memory, which is registered with userfaultfd: a guest access to
// one (through KVM, from a vCPU thread or a KVM worker) faults, and the
// fault handler asks for the page; Fill puts it in place with UFFDIO_COPY,
// which wakes the faulting thread. ferry's own accesses (virtio devices
// reading and writing rings and buffers) go through Memory.Slice, which
// waits for missing pages first: Go code must never fault on a missing
// page itself (a goroutine blocked inside copy() cannot be preempted, and
// a garbage collection would then stop the whole process; see vmm/uffd).

// postcopy is the destination's post-copy state.
type postcopy struct {
	u    *uffd.UFFD
	mem  *Memory
	need func(page uint64)
	base []uint64 // global index of each region's first page

	// mu guards missing and digests; arrived is broadcast when a page
	// arrives.
	mu      sync.Mutex
	arrived *sync.Cond
	missing []uint64         // bitmap: pages not in place yet
	digests []migrate.Digest // every page's content as the guest started with it (LogMemoryHash)
	handler sync.WaitGroup   // the fault handler goroutine
	fatal   atomic.Pointer[error]
}

// CanPostcopy implements migrate.PostcopyDestination: userfaultfd must
// work here.
func (t *MigrationDestination) CanPostcopy() error {
	u, err := uffd.Open(0)
	if err != nil {
		return fmt.Errorf("userfaultfd: %w", err)
	}
	return u.Close()
}

// StartPostcopy implements migrate.PostcopyDestination.
func (t *MigrationDestination) StartPostcopy(missing []uint64, need func(page uint64)) error {
	m := t.m
	u, err := uffd.Open(0)
	if err != nil {
		return fmt.Errorf("userfaultfd: %w", err)
	}
	pc := &postcopy{u: u, mem: m.mem, need: need, missing: append([]uint64(nil), missing...)}
	pc.arrived = sync.NewCond(&pc.mu)
	var g uint64
	for _, r := range m.mem.Regions {
		pc.base = append(pc.base, g)
		if err := u.Register(r.Mem, uffd.ModeMissing); err != nil {
			u.Close()
			return fmt.Errorf("userfaultfd: register region %#x+%#x: %w", r.GPA, r.Size(), err)
		}
		g += r.Size() / pageSize
	}
	if t.LogMemoryHash != nil {
		// The hash of memory as the guest starts with it: the pages here
		// now, and the missing ones as they will arrive (Fill).
		pc.digests = make([]migrate.Digest, g)
		pc.eachPage(func(g uint64, page []byte, miss bool) {
			if !miss {
				pc.digests[g] = migrate.HashPage(page)
			}
		})
	}
	// Drop what this side held of the missing pages: an access must fault.
	var dropErr error
	pc.eachMissingRun(func(run []byte) {
		if err := uffd.DropPages(run); err != nil && dropErr == nil {
			dropErr = err
		}
	})
	if dropErr != nil {
		u.Close()
		return fmt.Errorf("drop the pages that are to come: %w", dropErr)
	}
	m.mem.gate.Store(pc)
	t.pc = pc
	m.onStop(pc.abandon)
	pc.handler.Add(1)
	go pc.serveFaults()
	if err := t.startGuest(); err != nil {
		pc.stop()
		return err
	}
	return nil
}

// eachPage calls f for every guest page with its global index and whether
// it is missing.
func (pc *postcopy) eachPage(f func(g uint64, page []byte, missing bool)) {
	for i, r := range pc.mem.Regions {
		for p := uint64(0); p < r.Size()/pageSize; p++ {
			g := pc.base[i] + p
			f(g, r.Mem[p*pageSize:(p+1)*pageSize], pc.missing[g/64]&(1<<(g%64)) != 0)
		}
	}
}

// eachMissingRun calls f for every run of contiguous missing pages.
func (pc *postcopy) eachMissingRun(f func(run []byte)) {
	for i, r := range pc.mem.Regions {
		n := r.Size() / pageSize
		for p := uint64(0); p < n; {
			g := pc.base[i] + p
			if pc.missing[g/64]&(1<<(g%64)) == 0 {
				p++
				continue
			}
			q := p
			for q < n && pc.missing[(pc.base[i]+q)/64]&(1<<((pc.base[i]+q)%64)) != 0 {
				q++
			}
			f(r.Mem[p*pageSize : q*pageSize])
			p = q
		}
	}
}

// locate maps a host address of guest memory to its global page index and
// its page.
func (pc *postcopy) locate(addr uintptr) (uint64, []byte, bool) {
	for i, r := range pc.mem.Regions {
		if off, ok := uffd.Offset(r.Mem, addr); ok {
			p := uint64(off) / pageSize
			return pc.base[i] + p, r.Mem[p*pageSize : (p+1)*pageSize], true
		}
	}
	return 0, nil, false
}

// pageOf is the host view of global page g.
func (pc *postcopy) pageOf(g uint64) []byte {
	for i := len(pc.base) - 1; i >= 0; i-- {
		if g >= pc.base[i] {
			p := g - pc.base[i]
			return pc.mem.Regions[i].Mem[p*pageSize : (p+1)*pageSize]
		}
	}
	return nil
}

// isMissing reports whether page g has not arrived yet (mu held).
func (pc *postcopy) isMissing(g uint64) bool { return pc.missing[g/64]&(1<<(g%64)) != 0 }

// serveFaults handles userfaultfd's fault messages until it is stopped: a
// missing page is asked for (the faulting thread waits for Fill); any
// other page is one this side holds as zero and never touched (its memory
// was never populated), so it gets a zero page at once.
func (pc *postcopy) serveFaults() {
	defer pc.handler.Done()
	for {
		f, err := pc.u.Next()
		if err != nil {
			if !errors.Is(err, uffd.ErrStopped) && !errors.Is(err, uffd.ErrClosed) {
				pc.fatal.Store(&err)
			}
			return
		}
		g, page, ok := pc.locate(f.Page())
		if !ok {
			continue
		}
		pc.mu.Lock()
		miss := pc.isMissing(g)
		pc.mu.Unlock()
		if miss {
			pc.need(g)
			continue
		}
		if _, err := pc.u.ZeroPage(page); err != nil {
			pc.fatal.Store(&err)
			return
		}
	}
}

// Fill implements migrate.PostcopyDestination.
func (t *MigrationDestination) Fill(g uint64, data []byte) error {
	pc := t.pc
	if pc == nil {
		return errors.New("not in post-copy")
	}
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if !pc.isMissing(g) {
		return fmt.Errorf("page %d is not missing", g)
	}
	page := pc.pageOf(g)
	var err error
	if data == nil {
		_, err = pc.u.ZeroPage(page)
	} else {
		_, err = pc.u.Copy(page, data)
	}
	if err != nil {
		return err
	}
	if pc.digests != nil {
		if data == nil {
			pc.digests[g] = migrate.ZeroDigest
		} else {
			pc.digests[g] = migrate.HashPage(data)
		}
	}
	pc.missing[g/64] &^= 1 << (g % 64)
	pc.arrived.Broadcast()
	return nil
}

// EndPostcopy implements migrate.PostcopyDestination: every page is in
// place; userfaultfd lets go of guest memory.
func (t *MigrationDestination) EndPostcopy() error {
	pc := t.pc
	if pc == nil {
		return errors.New("not in post-copy")
	}
	pc.stop()
	if t.LogMemoryHash != nil {
		t.LogMemoryHash(pc.hash())
	}
	if errp := pc.fatal.Load(); errp != nil {
		return fmt.Errorf("userfaultfd: %w", *errp)
	}
	return nil
}

// stop ends the fault handler and unregisters guest memory.
func (pc *postcopy) stop() {
	pc.mem.gate.Store(nil)
	pc.u.Stop()
	pc.handler.Wait()
	for _, r := range pc.mem.Regions {
		pc.u.Unregister(r.Mem)
	}
	pc.u.Close()
}

// hash is Memory.Hash of the memory the guest started with, assembled
// from the pages here at the start and those that arrived since.
func (pc *postcopy) hash() string {
	h := xxh3.New()
	for i, r := range pc.mem.Regions {
		fmt.Fprintf(h, "%x+%x:", r.GPA, r.Size())
		n := r.Size() / pageSize
		for p := uint64(0); p < n; p++ {
			h.Write(pc.digests[pc.base[i]+p][:])
		}
	}
	return fmt.Sprintf("%x", h.Sum128().Bytes())
}

// waitRange is Memory.Slice's gate during post-copy: it returns once every
// page of [gpa, gpa+n) is in place, asking for the missing ones.
func (pc *postcopy) waitRange(gpa, n uint64) {
	for i, r := range pc.mem.Regions {
		if gpa >= r.GPA+r.Size() || gpa+n <= r.GPA {
			continue
		}
		first := (max(gpa, r.GPA) - r.GPA) / pageSize
		last := (min(gpa+n, r.GPA+r.Size()) - 1 - r.GPA) / pageSize
		for p := first; p <= last; p++ {
			g := pc.base[i] + p
			pc.mu.Lock()
			miss := pc.isMissing(g)
			pc.mu.Unlock()
			if !miss {
				continue
			}
			pc.need(g) // not under mu: need takes the session's lock, which Fill holds
			pc.mu.Lock()
			for pc.isMissing(g) {
				pc.arrived.Wait()
			}
			pc.mu.Unlock()
		}
	}
}

// abandon puts a zero page in place of every page still missing, so that
// no thread waits for ever: the machine stops while post-copy is not over
// (the user quit, or the source is gone), and the guest, whose missing
// pages are lost with the source's, ends with it.
func (pc *postcopy) abandon() {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	for w, x := range pc.missing {
		for ; x != 0; x &= x - 1 {
			g := uint64(w)*64 + uint64(bits.TrailingZeros64(x))
			pc.u.ZeroPage(pc.pageOf(g)) // best effort: the guest is being destroyed
		}
		pc.missing[w] = 0
	}
	pc.arrived.Broadcast()
}
