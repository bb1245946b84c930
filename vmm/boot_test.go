package vmm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// elfSegment is one PT_LOAD segment of a synthetic kernel.
type elfSegment struct {
	paddr uint64
	data  []byte
	memsz uint64 // >= len(data); the rest is bss
}

// elfSpec describes a synthetic ELF64 x86-64 "vmlinux".
type elfSpec struct {
	segments []elfSegment
	// pvhEntry, when non-nil, is put in a Xen note of type 18
	// (XEN_ELFNOTE_PHYS32_ENTRY), after an unrelated GNU note.
	pvhEntry *uint64
	// entry32 makes the note's descriptor 4 bytes instead of 8.
	entry32 bool
}

// buildELF writes the spec as an ELF file: header, program headers (one
// PT_NOTE if there is a note, then one PT_LOAD per segment), the notes and
// the segments' file bytes. Virtual addresses are the physical ones plus
// the kernel's __START_KERNEL_map, as in a real vmlinux, so a loader that
// used p_vaddr would fail.
func buildELF(spec elfSpec) []byte {
	le := binary.LittleEndian
	var notes []byte
	note := func(name string, typ uint32, desc []byte) {
		n := make([]byte, 12)
		nm := append([]byte(name), 0)
		le.PutUint32(n[0:], uint32(len(nm)))
		le.PutUint32(n[4:], uint32(len(desc)))
		le.PutUint32(n[8:], typ)
		n = append(n, nm...)
		for len(n)%4 != 0 {
			n = append(n, 0)
		}
		n = append(n, desc...)
		for len(n)%4 != 0 {
			n = append(n, 0)
		}
		notes = append(notes, n...)
	}
	if spec.pvhEntry != nil {
		note("GNU", 3, []byte{0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16})
		// A Xen note of another type first: the loader must keep looking.
		note("Xen", 6, []byte("linux\x00"))
		var d []byte
		if spec.entry32 {
			d = le.AppendUint32(nil, uint32(*spec.pvhEntry))
		} else {
			d = le.AppendUint64(nil, *spec.pvhEntry)
		}
		note("Xen", xenElfnotePhys32Entry, d)
	}
	nph := len(spec.segments)
	if notes != nil {
		nph++
	}
	const ehsize, phentsize = 64, 56
	off := uint64(ehsize + phentsize*nph)
	noteOff := off
	off += uint64(len(notes))
	off = (off + 0xfff) &^ 0xfff
	segOff := make([]uint64, len(spec.segments))
	for i, s := range spec.segments {
		segOff[i] = off
		off = (off + uint64(len(s.data)) + 0xfff) &^ 0xfff
	}
	f := make([]byte, off)
	copy(f, "\x7fELF")
	f[4], f[5], f[6] = 2, 1, 1 // ELFCLASS64, little endian, version 1
	le.PutUint16(f[16:], 2)    // ET_EXEC
	le.PutUint16(f[18:], 62)   // EM_X86_64
	le.PutUint32(f[20:], 1)
	le.PutUint64(f[24:], 0xffffffff81000000) // e_entry: the 64-bit virtual entry, not used by PVH
	le.PutUint64(f[32:], ehsize)             // e_phoff
	le.PutUint16(f[52:], ehsize)
	le.PutUint16(f[54:], phentsize)
	le.PutUint16(f[56:], uint16(nph))
	le.PutUint16(f[58:], 64) // e_shentsize, with no sections
	ph := f[ehsize:]
	phdr := func(typ, flags uint32, off, paddr, filesz, memsz, align uint64) {
		le.PutUint32(ph[0:], typ)
		le.PutUint32(ph[4:], flags)
		le.PutUint64(ph[8:], off)
		le.PutUint64(ph[16:], paddr+0xffffffff80000000)
		le.PutUint64(ph[24:], paddr)
		le.PutUint64(ph[32:], filesz)
		le.PutUint64(ph[40:], memsz)
		le.PutUint64(ph[48:], align)
		ph = ph[phentsize:]
	}
	if notes != nil {
		copy(f[noteOff:], notes)
		phdr(4, 4, noteOff, 0, uint64(len(notes)), uint64(len(notes)), 4) // PT_NOTE
	}
	for i, s := range spec.segments {
		copy(f[segOff[i]:], s.data)
		memsz := s.memsz
		if memsz < uint64(len(s.data)) {
			memsz = uint64(len(s.data))
		}
		phdr(1, 7, segOff[i], s.paddr, uint64(len(s.data)), memsz, 0x1000) // PT_LOAD, RWX
	}
	return f
}

func writeTemp(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7) + byte(i>>8)
	}
	return b
}

func ptr(v uint64) *uint64 { return &v }

func readCString(t *testing.T, m *Memory, gpa uint64, max int) string {
	t.Helper()
	b, err := m.Slice(gpa, uint64(max))
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		t.Fatalf("no NUL within %d bytes at %#x", max, gpa)
	}
	return string(b[:i])
}

func mustSlice(t *testing.T, m *Memory, gpa, n uint64) []byte {
	t.Helper()
	b, err := m.Slice(gpa, n)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestLoadPVH(t *testing.T) {
	for _, entry32 := range []bool{false, true} {
		m := newTestMemory(t, 32<<20)
		// Dirty all of low memory so zeroing is visible.
		for _, r := range m.Regions {
			for i := range r.Mem[:8<<20] {
				r.Mem[i] = 0xcc
			}
		}
		text := pattern(0x1234, 1)
		data := pattern(0x300, 9)
		const textAddr, dataAddr = 0x100000, 0x200000
		const dataMem = 0x5000 // bss of 0x4d00 bytes
		kernel := writeTemp(t, "vmlinux", buildELF(elfSpec{
			segments: []elfSegment{
				{paddr: textAddr, data: text, memsz: uint64(len(text))},
				{paddr: dataAddr, data: data, memsz: dataMem},
			},
			pvhEntry: ptr(0x1000a0),
			entry32:  entry32,
		}))
		initrd := pattern(100000, 77)
		initrdPath := writeTemp(t, "initrd.cpio", initrd)
		cmdline := "console=ttyS0 root=/dev/ram0 ferry.test=\"a b\""

		bi, err := LoadKernel(m, kernel, initrdPath, cmdline)
		if err != nil {
			t.Fatalf("LoadKernel: %v", err)
		}
		if bi.Format != "pvh" || bi.Entry != 0x1000a0 {
			t.Errorf("BootInfo %+v, want format pvh entry 0x1000a0 (the note's value)", *bi)
		}
		if bi.KernEnd != dataAddr+dataMem {
			t.Errorf("KernEnd = %#x, want %#x", bi.KernEnd, dataAddr+dataMem)
		}
		if !bytes.Equal(mustSlice(t, m, textAddr, uint64(len(text))), text) {
			t.Error("text segment not at its physical address")
		}
		if !bytes.Equal(mustSlice(t, m, dataAddr, uint64(len(data))), data) {
			t.Error("data segment not at its physical address")
		}
		bss := mustSlice(t, m, dataAddr+uint64(len(data)), dataMem-uint64(len(data)))
		if i := bytes.IndexFunc(bss, func(r rune) bool { return r != 0 }); i >= 0 {
			t.Errorf("bss byte %d (at %#x) not zeroed", i, dataAddr+len(data)+i)
		}
		if b := mustSlice(t, m, dataAddr+dataMem, 1)[0]; b != 0xcc {
			t.Errorf("byte after the bss = %#x: the loader wrote past memsz", b)
		}
		if b := mustSlice(t, m, textAddr+uint64(len(text)), 1)[0]; b != 0xcc {
			t.Errorf("byte after the text segment = %#x: the loader wrote past memsz", b)
		}

		// struct hvm_start_info at 0x6000.
		le := binary.LittleEndian
		si := mustSlice(t, m, 0x6000, 56)
		if got := le.Uint32(si[0:]); got != 0x336ec578 {
			t.Fatalf("hvm_start_info magic %#x, want 0x336ec578", got)
		}
		if got := le.Uint32(si[4:]); got != 1 {
			t.Errorf("version %d, want 1", got)
		}
		if got := le.Uint32(si[12:]); got != 1 {
			t.Errorf("nr_modules %d, want 1", got)
		}
		if got := le.Uint64(si[32:]); got != 0 {
			t.Errorf("rsdp_paddr %#x, want 0 (no ACPI)", got)
		}
		mod := mustSlice(t, m, le.Uint64(si[16:]), 32)
		paddr, size := le.Uint64(mod[0:]), le.Uint64(mod[8:])
		if size != uint64(len(initrd)) {
			t.Errorf("module size %d, want %d", size, len(initrd))
		}
		if got := mustSlice(t, m, paddr, uint64(len(initrd))); !bytes.Equal(got, initrd) {
			t.Errorf("initrd bytes not at module paddr %#x", paddr)
		}
		if paddr%pageSize != 0 || paddr < bi.KernEnd || paddr+size > m.lowEnd() {
			t.Errorf("initrd at %#x+%#x: want page aligned, above the kernel (%#x) and inside RAM", paddr, size, bi.KernEnd)
		}
		cmdAddr := le.Uint64(si[24:])
		if got := readCString(t, m, cmdAddr, 2048); got != cmdline {
			t.Errorf("cmdline at %#x = %q, want %q", cmdAddr, got, cmdline)
		}
		e820 := m.E820()
		if got := le.Uint32(si[48:]); got != uint32(len(e820)) {
			t.Errorf("memmap_entries %d, want %d", got, len(e820))
		}
		mm := mustSlice(t, m, le.Uint64(si[40:]), uint64(24*len(e820)))
		for i, e := range e820 {
			ent := mm[24*i:]
			got := E820Entry{le.Uint64(ent[0:]), le.Uint64(ent[8:]), le.Uint32(ent[16:])}
			if got != e || le.Uint32(ent[20:]) != 0 {
				t.Errorf("memmap[%d] = %+v (reserved %d), want %+v", i, got, le.Uint32(ent[20:]), e)
			}
		}
		// The boot structures do not overlap each other.
		if end := uint64(0x6000 + 56); le.Uint64(si[40:]) < end || le.Uint64(si[16:]) < le.Uint64(si[40:])+uint64(24*len(e820)) {
			t.Errorf("start info, memmap (%#x) and modlist (%#x) overlap", le.Uint64(si[40:]), le.Uint64(si[16:]))
		}
	}
}

func TestLoadPVHWithoutInitrd(t *testing.T) {
	m := newTestMemory(t, 16<<20)
	kernel := writeTemp(t, "vmlinux", buildELF(elfSpec{
		segments: []elfSegment{{paddr: 0x100000, data: []byte{0xeb, 0xfe}}},
		pvhEntry: ptr(0x100000),
	}))
	if _, err := LoadKernel(m, kernel, "", ""); err != nil {
		t.Fatal(err)
	}
	si := mustSlice(t, m, 0x6000, 56)
	if n := binary.LittleEndian.Uint32(si[12:]); n != 0 {
		t.Errorf("nr_modules %d without an initrd, want 0", n)
	}
	if got := readCString(t, m, binary.LittleEndian.Uint64(si[24:]), 16); got != "" {
		t.Errorf("empty cmdline reads %q", got)
	}
}

func TestLoadKernelErrors(t *testing.T) {
	m := newTestMemory(t, 16<<20)
	good := buildELF(elfSpec{
		segments: []elfSegment{{paddr: 0x100000, data: pattern(4096, 3)}},
		pvhEntry: ptr(0x100000),
	})
	goodPath := writeTemp(t, "vmlinux", good)

	t.Run("no PVH note", func(t *testing.T) {
		p := writeTemp(t, "vmlinux", buildELF(elfSpec{segments: []elfSegment{{paddr: 0x100000, data: []byte{1}}}}))
		_, err := LoadKernel(m, p, "", "")
		if err == nil || !strings.Contains(err.Error(), "CONFIG_PVH") {
			t.Fatalf("err = %v, want one that mentions CONFIG_PVH", err)
		}
		if !strings.Contains(err.Error(), p) {
			t.Errorf("err %q does not name the file", err)
		}
	})
	t.Run("unknown format", func(t *testing.T) {
		for _, img := range [][]byte{[]byte("#!/bin/sh\necho not a kernel\n"), make([]byte, 8192), {}} {
			p := writeTemp(t, "kernel", img)
			_, err := LoadKernel(m, p, "", "")
			if !errors.Is(err, ErrUnknownKernel) {
				t.Errorf("%d-byte file: err = %v, want ErrUnknownKernel", len(img), err)
			}
		}
	})
	t.Run("missing kernel", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "no-such-vmlinux")
		_, err := LoadKernel(m, p, "", "")
		if err == nil || !strings.Contains(err.Error(), p) || !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("err = %v, want a not-exist error naming %s", err, p)
		}
	})
	t.Run("missing initrd", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "no-such-initrd")
		_, err := LoadKernel(m, goodPath, p, "")
		if err == nil || !strings.Contains(err.Error(), p) || !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("err = %v, want a not-exist error naming %s", err, p)
		}
	})
	t.Run("initrd too large", func(t *testing.T) {
		p := writeTemp(t, "big.cpio", make([]byte, 17<<20))
		_, err := LoadKernel(m, goodPath, p, "")
		if err == nil || !strings.Contains(err.Error(), "initrd") || !strings.Contains(err.Error(), "--memory") {
			t.Fatalf("err = %v, want one about the initrd and --memory", err)
		}
	})
	t.Run("cmdline length", func(t *testing.T) {
		if _, err := LoadKernel(m, goodPath, "", strings.Repeat("a", 2047)); err != nil {
			t.Fatalf("2047-byte cmdline: %v", err)
		}
		if got := readCString(t, m, cmdlineAddr, 2048); len(got) != 2047 {
			t.Errorf("2047-byte cmdline reads back as %d bytes", len(got))
		}
		_, err := LoadKernel(m, goodPath, "", strings.Repeat("a", 2048))
		if err == nil || !strings.Contains(err.Error(), "command line") {
			t.Fatalf("2048-byte cmdline: err = %v, want a command line error", err)
		}
	})
	t.Run("32-bit ELF", func(t *testing.T) {
		img := append([]byte(nil), good...)
		img[4] = 1 // ELFCLASS32: the rest no longer parses as a valid 32-bit file either
		if _, err := LoadKernel(m, writeTemp(t, "vmlinux32", img), "", ""); err == nil {
			t.Fatal("a 32-bit ELF was accepted")
		}
	})
	t.Run("segment outside RAM", func(t *testing.T) {
		p := writeTemp(t, "vmlinux", buildELF(elfSpec{
			segments: []elfSegment{{paddr: 15 << 20, data: []byte{1}, memsz: 2 << 20}},
			pvhEntry: ptr(15 << 20),
		}))
		if _, err := LoadKernel(m, p, "", ""); err == nil || !strings.Contains(err.Error(), "does not fit") {
			t.Fatalf("err = %v, want a segment that does not fit", err)
		}
	})
	t.Run("no loadable segment", func(t *testing.T) {
		p := writeTemp(t, "vmlinux", buildELF(elfSpec{pvhEntry: ptr(0x100000)}))
		if _, err := LoadKernel(m, p, "", ""); err == nil {
			t.Fatal("an ELF without PT_LOAD was accepted")
		}
	})
}

// bzSpec describes a synthetic bzImage.
type bzSpec struct {
	setupSects    uint8
	version       uint16
	xloadflags    uint16
	cmdlineSize   uint32
	initrdAddrMax uint32
	initSize      uint32
	pm            []byte // the protected-mode kernel
}

func buildBzImage(s bzSpec) []byte {
	le := binary.LittleEndian
	sects := int(s.setupSects)
	if sects == 0 {
		sects = 4
	}
	img := make([]byte, (sects+1)*512)
	img[0x1f1] = s.setupSects
	le.PutUint16(img[0x1fe:], 0xaa55)
	img[0x200], img[0x201] = 0xeb, 0x6a // jmp over the header: it ends at 0x26c
	copy(img[0x202:], "HdrS")
	le.PutUint16(img[0x206:], s.version)
	img[0x211] = 0x01 // LOADED_HIGH
	le.PutUint32(img[0x214:], 0x100000)
	le.PutUint32(img[0x22c:], s.initrdAddrMax)
	img[0x234] = 1 // relocatable
	le.PutUint16(img[0x236:], s.xloadflags)
	le.PutUint32(img[0x238:], s.cmdlineSize)
	le.PutUint32(img[0x260:], s.initSize)
	return append(img, s.pm...)
}

func defaultBz() bzSpec {
	return bzSpec{
		setupSects: 4, version: 0x020f, xloadflags: 0x1 | 0x2 | 0x8,
		cmdlineSize: 2047, initrdAddrMax: 0x7fffffff, initSize: 0x400000,
		pm: pattern(0x3456, 5),
	}
}

func TestLoadBzImage(t *testing.T) {
	le := binary.LittleEndian
	m := newTestMemory(t, 64<<20)
	spec := defaultBz()
	kernel := writeTemp(t, "bzImage", buildBzImage(spec))
	initrd := pattern(300000, 11)
	initrdPath := writeTemp(t, "initrd", initrd)
	cmdline := "console=ttyS0 quiet"
	bi, err := LoadKernel(m, kernel, initrdPath, cmdline)
	if err != nil {
		t.Fatal(err)
	}
	if bi.Format != "bzimage" || bi.Entry != 0x100200 {
		t.Errorf("BootInfo %+v, want bzimage entry 0x100200 (startup_64)", *bi)
	}
	if bi.KernEnd != 0x100000+uint64(spec.initSize) {
		t.Errorf("KernEnd %#x, want %#x (init_size)", bi.KernEnd, 0x100000+uint64(spec.initSize))
	}
	if !bytes.Equal(mustSlice(t, m, 0x100000, uint64(len(spec.pm))), spec.pm) {
		t.Error("protected-mode kernel not at 1 MiB")
	}

	zp := mustSlice(t, m, 0x7000, 4096)
	if string(zp[0x202:0x206]) != "HdrS" || le.Uint16(zp[0x206:]) != 0x020f || zp[0x1f1] != 4 {
		t.Error("setup header not copied into the zero page")
	}
	if le.Uint32(zp[0x238:]) != 2047 || le.Uint32(zp[0x260:]) != spec.initSize {
		t.Error("setup header fields up to init_size not copied")
	}
	if zp[0x210] != 0xff {
		t.Errorf("type_of_loader %#x, want 0xff", zp[0x210])
	}
	if zp[0x211]&1 == 0 {
		t.Error("loadflags lacks LOADED_HIGH")
	}
	cmdPtr := uint64(le.Uint32(zp[0x228:])) | uint64(le.Uint32(zp[0x0c8:]))<<32
	if got := readCString(t, m, cmdPtr, 2048); got != cmdline {
		t.Errorf("cmd_line_ptr %#x → %q, want %q", cmdPtr, got, cmdline)
	}
	rdAddr := uint64(le.Uint32(zp[0x218:])) | uint64(le.Uint32(zp[0x0c0:]))<<32
	rdSize := uint64(le.Uint32(zp[0x21c:])) | uint64(le.Uint32(zp[0x0c4:]))<<32
	if rdSize != uint64(len(initrd)) {
		t.Errorf("ramdisk_size %d, want %d", rdSize, len(initrd))
	}
	if !bytes.Equal(mustSlice(t, m, rdAddr, uint64(len(initrd))), initrd) {
		t.Errorf("initrd not at ramdisk_image %#x", rdAddr)
	}
	if rdAddr < bi.KernEnd || rdAddr%pageSize != 0 {
		t.Errorf("ramdisk_image %#x: want page aligned and above the kernel's init_size end %#x", rdAddr, bi.KernEnd)
	}
	e820 := m.E820()
	if int(zp[0x1e8]) != len(e820) {
		t.Errorf("e820_entries %d, want %d", zp[0x1e8], len(e820))
	}
	for i, e := range e820 {
		o := 0x2d0 + 20*i
		got := E820Entry{le.Uint64(zp[o:]), le.Uint64(zp[o+8:]), le.Uint32(zp[o+16:])}
		if got != e {
			t.Errorf("e820_table[%d] = %+v, want %+v", i, got, e)
		}
	}

	// Identity page tables at 0x9000: walk them for a few addresses.
	checkIdentityMap(t, m)
}

// checkIdentityMap walks the 4-level page tables at 0x9000 and checks that
// addresses across the first 4 GiB map to themselves through 2 MiB pages,
// and that nothing above 4 GiB is mapped.
func checkIdentityMap(t *testing.T, m *Memory) {
	t.Helper()
	le := binary.LittleEndian
	read := func(a uint64) uint64 { return le.Uint64(mustSlice(t, m, a, 8)) }
	walk := func(va uint64) (uint64, bool) {
		pml4e := read(0x9000 + 8*(va>>39&511))
		if pml4e&1 == 0 {
			return 0, false
		}
		pdpte := read(pml4e&^0xfff + 8*(va>>30&511))
		if pdpte&1 == 0 || pdpte&0x80 != 0 {
			return 0, false
		}
		pde := read(pdpte&^0xfff&(1<<52-1) + 8*(va>>21&511))
		if pde&1 == 0 || pde&0x80 == 0 || pde&2 == 0 {
			t.Errorf("PDE for %#x = %#x: want present, writable, 2 MiB page", va, pde)
			return 0, false
		}
		return pde&^(1<<21-1)&(1<<52-1) | va&(1<<21-1), true
	}
	for _, va := range []uint64{0, 0x7000, 0x9000, 0x100000, 0x1fffff, 0x200000, 0x3ffffff, 1 << 30, 3 << 30, 0xfec00000, 0xfee00000, 0xffffffff} {
		pa, ok := walk(va)
		if !ok || pa != va {
			t.Errorf("virtual %#x → %#x (mapped %v), want identity", va, pa, ok)
		}
	}
	if _, ok := walk(4 << 30); ok {
		t.Error("4 GiB is mapped")
	}
	// The tables fit between the zero page and the MP table and do not
	// overlap the command line.
	if pdpt := read(0x9000) &^ 0xfff; pdpt != 0xa000 {
		t.Errorf("PML4[0] → %#x, want 0xa000", pdpt)
	}
}

func TestLoadBzImageInitrdAddrMax(t *testing.T) {
	m := newTestMemory(t, 64<<20)
	spec := defaultBz()
	spec.initrdAddrMax = 32<<20 - 1
	kernel := writeTemp(t, "bzImage", buildBzImage(spec))
	initrd := pattern(1<<20+123, 4)
	if _, err := LoadKernel(m, kernel, writeTemp(t, "initrd", initrd), ""); err != nil {
		t.Fatal(err)
	}
	zp := mustSlice(t, m, 0x7000, 4096)
	addr := uint64(binary.LittleEndian.Uint32(zp[0x218:]))
	if addr+uint64(len(initrd)) > 32<<20 {
		t.Errorf("initrd at %#x+%#x ends above initrd_addr_max 32 MiB", addr, len(initrd))
	}
	if !bytes.Equal(mustSlice(t, m, addr, uint64(len(initrd))), initrd) {
		t.Error("initrd not at ramdisk_image")
	}
}

func TestLoadBzImageErrors(t *testing.T) {
	m := newTestMemory(t, 16<<20)
	for _, c := range []struct {
		name string
		mod  func(*bzSpec)
		want string
	}{
		{"protocol 2.11", func(s *bzSpec) { s.version = 0x020b }, "2.12"},
		{"protocol 2.0", func(s *bzSpec) { s.version = 0x0200 }, "too old"},
		{"no XLF_KERNEL_64", func(s *bzSpec) { s.xloadflags = 0x2 }, "XLF_KERNEL_64"},
		{"no protected-mode part", func(s *bzSpec) { s.pm = nil }, "truncated"},
		{"kernel larger than RAM", func(s *bzSpec) { s.pm = make([]byte, 16<<20) }, "does not fit"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := defaultBz()
			c.mod(&s)
			_, err := LoadKernel(m, writeTemp(t, "bzImage", buildBzImage(s)), "", "")
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want one containing %q", err, c.want)
			}
		})
	}
	t.Run("cmdline over cmdline_size", func(t *testing.T) {
		s := defaultBz()
		s.cmdlineSize = 255
		p := writeTemp(t, "bzImage", buildBzImage(s))
		if _, err := LoadKernel(m, p, "", strings.Repeat("x", 255)); err != nil {
			t.Fatalf("255-byte cmdline with cmdline_size 255: %v", err)
		}
		if _, err := LoadKernel(m, p, "", strings.Repeat("x", 256)); err == nil {
			t.Fatal("256-byte cmdline with cmdline_size 255 accepted")
		}
	})
	t.Run("truncated header", func(t *testing.T) {
		img := buildBzImage(defaultBz())[:0x240]
		if _, err := LoadKernel(m, writeTemp(t, "bzImage", img), "", ""); err == nil {
			t.Fatal("truncated bzImage accepted")
		}
	})
	t.Run("initrd too large", func(t *testing.T) {
		p := writeTemp(t, "bzImage", buildBzImage(defaultBz()))
		_, err := LoadKernel(m, p, writeTemp(t, "initrd", make([]byte, 12<<20)), "")
		if err == nil || !strings.Contains(err.Error(), "--memory") {
			t.Fatalf("err = %v, want an initrd that does not fit", err)
		}
	})
}
