package uffd

import (
	"encoding/binary"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/ferryvmm/ferry/kvm"
)

// TestKVMGuestFaults: a guest on the real KVM reads 16 and writes 8 pages
// of its memory that are registered missing; a handler serves them (three
// as zero pages, two after 150 ms, one after a kick of the blocked vCPU). The guest's results prove it saw what was served, its
// writes land on top of the served pages, every fault comes from the vCPU
// thread, and the untouched pages never fault. Then some pages are
// dropped (DropPages) and served anew: the guest faults on exactly those
// and reads their new content.
func TestKVMGuestFaults(t *testing.T) {
	g := newGuest(t)
	u := openUFFD(t, FeatureThreadID)
	if err := u.Register(g.data(), ModeMissing); err != nil {
		t.Fatal(err)
	}
	const nRead, nWrite, kickPage, delay = 16, 8, 7, 150 * time.Millisecond
	zero := map[int]bool{0: true, 5: true, 10: true}
	var mu sync.Mutex
	delayed := map[int]bool{3: true, 12: true} // guarded by mu, as are the next three
	version := map[int]int{}                   // page -> version served (default 1)
	existed := 0
	kicked := false
	eintrBeforeServed := false
	content := func(p int) []byte {
		if zero[p] {
			return make([]byte, PageSize)
		}
		mu.Lock()
		defer mu.Unlock()
		return pattern(gDataPage+p, max(version[p], 1))
	}
	h := startHandler(t, u, func(f Fault) error {
		off, ok := Offset(g.data(), f.Addr)
		if !ok {
			return fmt.Errorf("%v outside the data pages", f)
		}
		p := off / PageSize
		mu.Lock()
		wait, kick := delayed[p], p == kickPage && !kicked
		delete(delayed, p)
		kicked = kicked || kick
		mu.Unlock()
		if wait {
			time.Sleep(delay)
		}
		if kick {
			// The vCPU thread is blocked on this page. Kick it: where
			// KVM waits for the page interruptibly, KVM_RUN returns EINTR
			// now and the guest faults again on re-entry; where it does
			// not (this machine's KVM), EINTR comes once the page is
			// served. Either way the guest must go on correctly.
			before := g.eintr.Load()
			if err := g.cpu.Kick(); err != nil {
				return err
			}
			time.Sleep(200 * time.Millisecond)
			mu.Lock()
			eintrBeforeServed = g.eintr.Load() > before
			mu.Unlock()
		}
		var e bool
		var err error
		if zero[p] {
			e, err = u.ZeroPage(page(g.data(), p))
		} else {
			e, err = u.Copy(page(g.data(), p), content(p))
		}
		if e {
			mu.Lock()
			existed++
			mu.Unlock()
		}
		return err
	})

	// Reads and writes interleaved, each at its own offset.
	var list []access
	for i := 0; i < nRead; i++ {
		list = append(list, access{page: i, off: (i * 52) % PageSize})
		if i < nWrite {
			list = append(list, access{page: nRead + i, off: (i * 68) % PageSize, write: true})
		}
	}
	g.setList(list)
	start := time.Now()
	g.run(30 * time.Second)
	t.Logf("pass 1: %d accesses in %v", len(list), time.Since(start))
	checkResults(t, g, list, content)
	for _, a := range list {
		if !a.write {
			continue
		}
		want := content(a.page)
		binary.LittleEndian.PutUint32(want[a.off:], uint32(len(list)-indexOf(list, a)))
		if i := mismatch(page(g.data(), a.page), want); i >= 0 {
			t.Errorf("written page %d: byte %d is neither served nor the guest's write", a.page, i)
		}
	}
	faults, errs := h.faults()
	for _, err := range errs {
		t.Errorf("handler: %v", err)
	}
	checkFaults(t, g, faults, list)
	if khz, err := g.cpu.TSCKHz(); err == nil && khz > 0 {
		for _, i := range []int{indexOf(list, access{page: 3, off: 3 * 52}), indexOf(list, access{page: 12, off: 12 * 52})} {
			took := time.Duration(uint64(g.results(len(list))[i].cycles) * 1e6 / khz)
			if took < delay*9/10 {
				t.Errorf("access %d to a page served after %v took only %v in the guest", i, delay, took)
			}
			t.Logf("access to a page served after %v: %v in the guest", delay, took)
		}
	}
	mu.Lock()
	t.Logf("pass 1: %d faults for %d pages, %d served twice (EEXIST), %d EINTRs from KVM_RUN", len(faults), len(list), existed, g.eintr.Load())
	if !kicked || g.eintr.Load() == 0 {
		t.Errorf("kicked the vCPU blocked on page %d: %v; KVM_RUN never returned EINTR", kickPage, kicked)
	}
	t.Logf("KVM_RUN returned EINTR within 200 ms of the kick, before the page was served: %v", eintrBeforeServed)
	mu.Unlock()

	// Pass 2: drop four read pages and serve them anew; read all again.
	dropped := []int{1, 2, 3, 12}
	mu.Lock()
	for _, p := range dropped {
		version[p] = 2
		if err := DropPages(page(g.data(), p)); err != nil {
			t.Fatal(err)
		}
	}
	mu.Unlock()
	reads := list[:0:0]
	for _, a := range list {
		if !a.write {
			reads = append(reads, a)
		}
	}
	g.setList(reads)
	g.run(30 * time.Second)
	checkResults(t, g, reads, content)
	all, _ := h.faults()
	again := map[int]bool{}
	for _, f := range all[len(faults):] {
		off, _ := Offset(g.data(), f.Addr)
		again[off/PageSize] = true
	}
	if fmt.Sprint(keys(again)) != fmt.Sprint(dropped) {
		t.Errorf("pass 2 faulted on pages %v, want exactly the dropped %v", keys(again), dropped)
	}
}

// checkResults compares what the guest recorded with what it must have
// seen: the served dword for a read, its loop counter for a write.
func checkResults(t *testing.T, g *guest, list []access, content func(int) []byte) {
	t.Helper()
	for i, r := range g.results(len(list)) {
		a := list[i]
		want := uint32(len(list) - i)
		if !a.write {
			want = binary.LittleEndian.Uint32(content(a.page)[a.off:])
		}
		if r.value != want {
			t.Errorf("access %d (%+v): guest recorded %#x, want %#x", i, a, r.value, want)
		}
	}
}

// checkFaults: the touched pages, and only they, faulted; every fault came
// from the vCPU thread; a page first written faulted as a write.
func checkFaults(t *testing.T, g *guest, faults []Fault, list []access) {
	t.Helper()
	first := map[int]Fault{}
	for _, f := range faults {
		off, _ := Offset(g.data(), f.Addr)
		if f0, ok := first[off/PageSize]; !ok {
			first[off/PageSize] = f
		} else {
			t.Logf("page %d faulted again: %v (first: %v)", off/PageSize, f, f0)
		}
		if f.TID != g.tid {
			t.Errorf("%v: not from the vCPU thread %d", f, g.tid)
		}
	}
	reads := 0
	for _, a := range list {
		f, ok := first[a.page]
		switch {
		case !ok:
			t.Errorf("page %d (%+v) never faulted", a.page, a)
		case a.write && !f.Write:
			t.Errorf("page %d, first written: first fault %+v is not a write", a.page, f)
		case !a.write && !f.Write:
			reads++
		}
		delete(first, a.page)
	}
	if len(first) > 0 {
		t.Errorf("faults on pages the guest never touched: %v", first)
	}
	t.Logf("first faults of the pages the guest read: %d of them reported as reads", reads)
}

func indexOf(list []access, a access) int {
	for i, b := range list {
		if b == a {
			return i
		}
	}
	return -1
}

func keys(m map[int]bool) []int {
	var out []int
	for k := range m {
		out = append(out, k)
	}
	sort.Ints(out)
	return out
}

// TestKVMUserModeOnly pins why Open never passes UFFD_USER_MODE_ONLY: a
// userfaultfd made with it sees only faults taken in user mode, and KVM
// reaches guest memory from the kernel, so a guest read of a missing
// page raises no event; KVM reports it as an MMIO exit at a RAM address.
func TestKVMUserModeOnly(t *testing.T) {
	g := newGuest(t)
	const userModeOnly = 1 // UFFD_USER_MODE_ONLY
	u, err := open(0, []opener{{"the userfaultfd system call, user mode only", func(flags int) (int, error) {
		return openSyscall(flags | userModeOnly)
	}}})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if err := u.Register(g.data(), ModeMissing); err != nil {
		t.Fatal(err)
	}
	g.setList([]access{{page: 0}})
	if err := g.cpu.SetRegs(kvm.Regs{RIP: gCode, RFLAGS: 2}); err != nil {
		t.Fatal(err)
	}
	res := make(chan error, 1)
	g.reqs <- func() { res <- g.enter() }
	select {
	case err := <-res:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		g.stop.Store(true)
		g.cpu.Kick()
		u.Close() // wakes the vCPU if it did block after all
		<-res
		t.Fatal("the guest blocked on the page: this KVM does deliver kernel faults to a user-mode-only userfaultfd")
	}
	r := g.cpu.ExitReason()
	if r != kvm.ExitMMIO || g.cpu.MMIO().Addr != gData {
		t.Fatalf("exit %s, want the MMIO exit at %#x this test pins", kvm.ExitName(r), gData)
	}
	t.Logf("a guest read of a missing page under a user-mode-only userfaultfd: MMIO exit at %#x", g.cpu.MMIO().Addr)
}
