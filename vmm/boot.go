package vmm

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/ferryvmm/ferry/kvm"
)

// Fixed addresses of boot structures in low guest memory.
const (
	gdtAddr       = 0x500
	pvhInfoAddr   = 0x6000 // struct hvm_start_info
	pvhMemmapAddr = 0x6100 // hvm_memmap_table_entry[]
	pvhModAddr    = 0x6f00 // hvm_modlist_entry (the initrd)
	zeroPageAddr  = 0x7000 // struct boot_params for the 64-bit boot protocol
	pml4Addr      = 0x9000 // identity page tables for the 64-bit entry
	cmdlineAddr   = 0x20000
	cmdlineMax    = 0x10000
	bzImageLoad   = 0x100000
)

// BootInfo says where a kernel was loaded and how its first vCPU starts.
type BootInfo struct {
	Format  string // "pvh" or "bzimage"
	Entry   uint64
	KernEnd uint64 // first byte after the kernel image
}

// ErrUnknownKernel means the kernel file is neither format ferry loads.
var ErrUnknownKernel = errors.New("not an ELF vmlinux with a PVH entry note, nor a bzImage")

// LoadKernel loads the kernel at path, the initrd (if any) and the command
// line into guest memory, and returns how to start the boot vCPU.
func LoadKernel(mem *Memory, kernelPath, initrdPath, cmdline string) (*BootInfo, error) {
	img, err := os.ReadFile(kernelPath)
	if err != nil {
		return nil, fmt.Errorf("kernel: %w", err)
	}
	var initrd []byte
	if initrdPath != "" {
		if initrd, err = os.ReadFile(initrdPath); err != nil {
			return nil, fmt.Errorf("initrd: %w", err)
		}
	}
	var bi *BootInfo
	switch {
	case bytes.HasPrefix(img, []byte(elf.ELFMAG)):
		bi, err = loadPVH(mem, img, initrd, cmdline)
	case len(img) > 0x206 && string(img[0x202:0x206]) == "HdrS":
		bi, err = loadBzImage(mem, img, initrd, cmdline)
	default:
		err = ErrUnknownKernel
	}
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w", kernelPath, err)
	}
	return bi, nil
}

// placeInitrd puts the initrd at the top of low RAM (below limit), page
// aligned, above the kernel. It returns its guest address.
func placeInitrd(mem *Memory, initrd []byte, kernEnd, limit uint64) (uint64, error) {
	top := mem.lowEnd()
	if limit != 0 && top > limit {
		top = limit
	}
	size := uint64(len(initrd))
	if size+kernEnd > top {
		return 0, fmt.Errorf("initrd of %d MiB does not fit in guest memory above the kernel (%d MiB of RAM): give the guest more --memory", size>>20, mem.Size()>>20)
	}
	addr := (top - size) &^ (pageSize - 1)
	if addr < kernEnd {
		return 0, fmt.Errorf("initrd of %d MiB overlaps the kernel: give the guest more --memory", size>>20)
	}
	return addr, mem.Write(addr, initrd)
}

func writeCmdline(mem *Memory, cmdline string, max int) error {
	if len(cmdline)+1 > max {
		return fmt.Errorf("kernel command line is %d bytes, the kernel accepts at most %d", len(cmdline), max-1)
	}
	return mem.Write(cmdlineAddr, append([]byte(cmdline), 0))
}

// xenElfnotePhys32Entry is the ELF note (owner "Xen") giving the 32-bit
// physical entry point of a PVH-capable kernel.
const xenElfnotePhys32Entry = 18

func pvhEntry(f *elf.File) (uint64, bool) {
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		data, err := io.ReadAll(p.Open())
		if err != nil {
			continue
		}
		for len(data) >= 12 {
			namesz := binary.LittleEndian.Uint32(data[0:])
			descsz := binary.LittleEndian.Uint32(data[4:])
			typ := binary.LittleEndian.Uint32(data[8:])
			nameEnd := 12 + (uint64(namesz)+3)&^3
			descEnd := nameEnd + (uint64(descsz)+3)&^3
			if descEnd > uint64(len(data)) {
				break
			}
			name := string(bytes.TrimRight(data[12:12+namesz], "\x00"))
			if name == "Xen" && typ == xenElfnotePhys32Entry && descsz >= 4 {
				d := data[nameEnd : nameEnd+uint64(descsz)]
				if descsz >= 8 {
					return binary.LittleEndian.Uint64(d), true
				}
				return uint64(binary.LittleEndian.Uint32(d)), true
			}
			data = data[descEnd:]
		}
	}
	return 0, false
}

func loadPVH(mem *Memory, img, initrd []byte, cmdline string) (*BootInfo, error) {
	f, err := elf.NewFile(bytes.NewReader(img))
	if err != nil {
		return nil, fmt.Errorf("parse ELF: %w", err)
	}
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 {
		return nil, fmt.Errorf("ELF is %v %v, want a 64-bit x86-64 kernel", f.Class, f.Machine)
	}
	entry, ok := pvhEntry(f)
	if !ok {
		return nil, errors.New("ELF vmlinux has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY): build the kernel with CONFIG_PVH=y, or use a bzImage")
	}
	bi := &BootInfo{Format: "pvh", Entry: entry}
	for _, p := range f.Progs {
		if p.Type != elf.PT_LOAD || p.Memsz == 0 {
			continue
		}
		dst, err := mem.Slice(p.Paddr, p.Memsz)
		if err != nil {
			return nil, fmt.Errorf("segment at %#x (%d MiB) does not fit in guest memory: %w", p.Paddr, p.Memsz>>20, err)
		}
		if p.Filesz > p.Memsz {
			return nil, fmt.Errorf("segment at %#x: file size %d > memory size %d", p.Paddr, p.Filesz, p.Memsz)
		}
		n, err := p.ReadAt(dst[:p.Filesz], 0)
		if err != nil && uint64(n) != p.Filesz {
			return nil, fmt.Errorf("read segment at %#x: %w", p.Paddr, err)
		}
		clear(dst[p.Filesz:])
		if end := p.Paddr + p.Memsz; end > bi.KernEnd {
			bi.KernEnd = end
		}
	}
	if bi.KernEnd == 0 {
		return nil, errors.New("ELF has no loadable segments")
	}
	if err := writeCmdline(mem, cmdline, 2048); err != nil {
		return nil, err
	}
	info := pvhStartInfo{
		Magic:         pvhMagic,
		Version:       1,
		CmdlinePaddr:  cmdlineAddr,
		MemmapPaddr:   pvhMemmapAddr,
		MemmapEntries: uint32(len(mem.E820())),
	}
	if len(initrd) > 0 {
		addr, err := placeInitrd(mem, initrd, bi.KernEnd, 0)
		if err != nil {
			return nil, err
		}
		info.NrModules = 1
		info.ModlistPaddr = pvhModAddr
		if err := writeStruct(mem, pvhModAddr, pvhModule{Paddr: addr, Size: uint64(len(initrd))}); err != nil {
			return nil, err
		}
	}
	for i, e := range mem.E820() {
		ent := pvhMemmapEntry{Addr: e.Addr, Size: e.Size, Type: e.Type}
		if err := writeStruct(mem, pvhMemmapAddr+uint64(i)*24, ent); err != nil {
			return nil, err
		}
	}
	if err := writeStruct(mem, pvhInfoAddr, info); err != nil {
		return nil, err
	}
	return bi, nil
}

// PVH boot ABI (xen/include/public/arch-x86/hvm/start_info.h).
const pvhMagic = 0x336ec578

type pvhStartInfo struct {
	Magic         uint32
	Version       uint32
	Flags         uint32
	NrModules     uint32
	ModlistPaddr  uint64
	CmdlinePaddr  uint64
	RsdpPaddr     uint64
	MemmapPaddr   uint64
	MemmapEntries uint32
	_             uint32
}

type pvhModule struct {
	Paddr, Size, CmdlinePaddr, _ uint64
}

type pvhMemmapEntry struct {
	Addr, Size uint64
	Type, _    uint32
}

func writeStruct(mem *Memory, gpa uint64, v any) error {
	var b bytes.Buffer
	if err := binary.Write(&b, binary.LittleEndian, v); err != nil {
		return err
	}
	return mem.Write(gpa, b.Bytes())
}

// Boot-protocol offsets in struct boot_params / setup_header
// (Documentation/arch/x86/boot.rst, zero-page.rst).
const (
	bpExtRamdiskImage = 0x0c0
	bpExtRamdiskSize  = 0x0c4
	bpExtCmdLinePtr   = 0x0c8
	bpE820Entries     = 0x1e8
	bpSetupSects      = 0x1f1
	bpHeaderEnd       = 0x201 // byte holding the jump offset that ends the header
	bpVersion         = 0x206
	bpTypeOfLoader    = 0x210
	bpLoadFlags       = 0x211
	bpRamdiskImage    = 0x218
	bpRamdiskSize     = 0x21c
	bpCmdLinePtr      = 0x228
	bpInitrdAddrMax   = 0x22c
	bpXLoadFlags      = 0x236
	bpCmdlineSize     = 0x238
	bpE820Table       = 0x2d0
	e820Max           = 128
)

func loadBzImage(mem *Memory, img, initrd []byte, cmdline string) (*BootInfo, error) {
	le := binary.LittleEndian
	if len(img) < 0x264 {
		return nil, errors.New("bzImage is truncated")
	}
	if v := le.Uint16(img[bpVersion:]); v < 0x20c {
		return nil, fmt.Errorf("boot protocol %d.%d is too old: the 64-bit entry needs 2.12", v>>8, v&0xff)
	}
	if img[bpXLoadFlags]&1 == 0 {
		return nil, errors.New("bzImage has no 64-bit entry point (XLF_KERNEL_64)")
	}
	setupSects := int(img[bpSetupSects])
	if setupSects == 0 {
		setupSects = 4
	}
	kernOff := (setupSects + 1) * 512
	if kernOff >= len(img) {
		return nil, errors.New("bzImage is truncated: no protected-mode kernel after the setup sectors")
	}
	kernel := img[kernOff:]
	if err := mem.Write(bzImageLoad, kernel); err != nil {
		return nil, fmt.Errorf("kernel of %d MiB does not fit in guest memory: %w", len(kernel)>>20, err)
	}
	bi := &BootInfo{Format: "bzimage", Entry: bzImageLoad + 0x200, KernEnd: bzImageLoad + uint64(len(kernel))}
	if initSize := uint64(le.Uint32(img[0x260:])); bzImageLoad+initSize > bi.KernEnd {
		bi.KernEnd = bzImageLoad + initSize // room the decompressor needs
	}

	zp := make([]byte, 4096)
	hdrEnd := 0x202 + int(img[bpHeaderEnd])
	copy(zp[bpSetupSects:hdrEnd], img[bpSetupSects:hdrEnd])
	zp[bpTypeOfLoader] = 0xff
	zp[bpLoadFlags] |= 0x01 // LOADED_HIGH
	max := int(le.Uint32(img[bpCmdlineSize:])) + 1
	if err := writeCmdline(mem, cmdline, max); err != nil {
		return nil, err
	}
	le.PutUint32(zp[bpCmdLinePtr:], cmdlineAddr)
	le.PutUint32(zp[bpExtCmdLinePtr:], 0)
	if len(initrd) > 0 {
		addr, err := placeInitrd(mem, initrd, bi.KernEnd, uint64(le.Uint32(img[bpInitrdAddrMax:]))+1)
		if err != nil {
			return nil, err
		}
		le.PutUint32(zp[bpRamdiskImage:], uint32(addr))
		le.PutUint32(zp[bpExtRamdiskImage:], uint32(addr>>32))
		le.PutUint32(zp[bpRamdiskSize:], uint32(len(initrd)))
		le.PutUint32(zp[bpExtRamdiskSize:], uint32(uint64(len(initrd))>>32))
	}
	e820 := mem.E820()
	if len(e820) > e820Max {
		return nil, fmt.Errorf("%d E820 entries, at most %d", len(e820), e820Max)
	}
	zp[bpE820Entries] = uint8(len(e820))
	for i, e := range e820 {
		o := bpE820Table + 20*i
		le.PutUint64(zp[o:], e.Addr)
		le.PutUint64(zp[o+8:], e.Size)
		le.PutUint32(zp[o+16:], e.Type)
	}
	if err := mem.Write(zeroPageAddr, zp); err != nil {
		return nil, err
	}
	return bi, writeIdentityPageTables(mem)
}

// writeIdentityPageTables maps the first 4 GiB 1:1 with 2 MiB pages, as the
// 64-bit boot protocol requires for the kernel, zero page, command line and
// initrd.
func writeIdentityPageTables(mem *Memory) error {
	le := binary.LittleEndian
	const pdpt, pd = pml4Addr + 0x1000, pml4Addr + 0x2000
	tables := make([]byte, 6*0x1000)
	le.PutUint64(tables[0:], pdpt|0x3) // PML4[0] → PDPT, present+writable
	for i := uint64(0); i < 4; i++ {
		le.PutUint64(tables[0x1000+8*i:], (pd+i*0x1000)|0x3)
	}
	for i := uint64(0); i < 4*512; i++ {
		le.PutUint64(tables[0x2000+8*i:], i<<21|0x83) // present+writable+2 MiB page
	}
	return mem.Write(pml4Addr, tables)
}

// Flat GDT shared by both entry modes: 0x08 32-bit code, 0x10 64-bit code,
// 0x18 data, 0x20 TSS (never loaded by the guest; KVM needs a valid TR).
var gdt = []uint64{
	0,
	0x00cf9b000000ffff, // 32-bit code, base 0, limit 4 GiB
	0x00af9b000000ffff, // 64-bit code
	0x00cf93000000ffff, // data, base 0, limit 4 GiB
	0x00008b0000000067, // 32-bit busy TSS
}

func segment(sel uint16, typ uint8, l, db uint8) kvm.Segment {
	return kvm.Segment{Base: 0, Limit: 0xffffffff, Selector: sel, Typ: typ, Present: 1, S: 1, DB: db, L: l, G: 1}
}

// bootRegisters sets the boot vCPU's registers for the loaded kernel.
func bootRegisters(mem *Memory, v *kvm.VCPU, bi *BootInfo) error {
	b := make([]byte, 8*len(gdt))
	for i, d := range gdt {
		binary.LittleEndian.PutUint64(b[8*i:], d)
	}
	if err := mem.Write(gdtAddr, b); err != nil {
		return err
	}
	sregs, err := v.Sregs()
	if err != nil {
		return err
	}
	sregs.GDT = kvm.Descriptor{Base: gdtAddr, Limit: uint16(len(b) - 1)}
	sregs.IDT = kvm.Descriptor{}
	data := segment(0x18, 0x3, 0, 1)
	sregs.DS, sregs.ES, sregs.FS, sregs.GS, sregs.SS = data, data, data, data, data
	sregs.TR = kvm.Segment{Selector: 0x20, Limit: 0x67, Typ: 0xb, Present: 1} // busy TSS, a system segment
	regs := kvm.Regs{RFLAGS: 2, RIP: bi.Entry}
	switch bi.Format {
	case "pvh":
		// 32-bit protected mode, paging off, EBX → hvm_start_info.
		sregs.CS = segment(0x08, 0xb, 0, 1)
		sregs.CR0 = 0x11 // PE | ET
		sregs.CR4 = 0
		sregs.EFER = 0
		regs.RBX = pvhInfoAddr
	case "bzimage":
		// 64-bit mode, identity paging, RSI → boot_params.
		sregs.CS = segment(0x10, 0xb, 1, 0)
		sregs.CR3 = pml4Addr
		sregs.CR4 = 0x20       // PAE
		sregs.CR0 = 0x80000011 // PG | ET | PE
		sregs.EFER = 0x500     // LME | LMA
		regs.RSI = zeroPageAddr
	default:
		return fmt.Errorf("unknown boot format %q", bi.Format)
	}
	if err := v.SetSregs(sregs); err != nil {
		return err
	}
	return v.SetRegs(regs)
}
