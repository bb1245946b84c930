// Package vmm is ferry's machine: guest RAM and its memory map, kernel
// loading, the vCPU threads and their exits, pause and resume, the devices
// with their virtio plumbing, the whole-VM state and its format, and the
// adapters through which package migrate moves a machine. Two packages
// below it serve a machine from outside: vmm/control is its control socket
// (one state machine for status, pause, resume, migrate and snapshot, and
// its JSON-over-HTTP server on a unix socket), and vmm/incoming is the
// receiving end of a migration (the server ferry receive runs).
//
//	machine.go        Machine and Config: New (VM, memory, irqchip, devices, vCPUs), Boot, Close, MaxCPUs
//	memory.go         guest RAM: the PC memory map, regions, E820, CheckMemory
//	memory_unsafe.go  the host address of a RAM mapping, for KVM
//	boot.go           loading a PVH vmlinux or a bzImage and the initrd; the boot vCPU's registers
//	cmdline.go        the kernel command line ferry gives the guest
//	cpuid.go          the guest's CPUID (features an emulating KVM cannot run are hidden)
//	mptable.go        the MP table: CPUs, the IOAPIC and the interrupt wiring
//	run.go            the vCPU threads and their exits; Start, Stop, Wait, Pause, Resume
//	virtio.go         virtio-blk and virtio-net devices on virtio-mmio, and their flags
//	notify.go         irqfd interrupt lines and ioeventfd queue notifies
//	dirty.go          pages the devices write into guest memory, for the dirty log
//	state.go          State: save and restore the whole VM (vCPUs, irqchip, PIT, clock, devices)
//	statecodec.go     the VM state format (version 3; versions 1 and 2 still read)
//	migration.go      MigrationSource and MigrationDestination: a Machine as migrate sees it
package vmm

import (
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/ferryvmm/ferry/devices"
	"github.com/ferryvmm/ferry/kvm"
	"github.com/ferryvmm/ferry/migrate"
)

// Config describes a machine.
type Config struct {
	Memory  uint64       // bytes of RAM
	CPUs    int          // vCPUs
	Console io.Writer    // guest serial output (nil: discarded)
	KVMPath string       // "" for /dev/kvm
	Disks   []DiskConfig // virtio-blk disks (virtio.go)
	Nets    []NetConfig  // virtio-net devices on taps (virtio.go)

	// Tests: use the fallbacks (KVM_IRQ_LINE, MMIO exits) as if KVM
	// lacked KVM_CAP_IRQFD or KVM_CAP_IOEVENTFD.
	noIRQFD, noIOEventFD bool
}

// MaxCPUs is the most vCPUs a machine has: the MP table announces each
// (mptable.go), and the VM state format caps its vCPU count with it. The
// CLI's --cpus and the default of --max-cpus (receive, restore) follow it.
const MaxCPUs = 32

// CheckCPUs says whether a machine can have n vCPUs: 1 to MaxCPUs.
func CheckCPUs(n int) error {
	if n < 1 || n > MaxCPUs {
		return fmt.Errorf("ferry supports 1 to %d vCPUs", MaxCPUs)
	}
	return nil
}

// Exit says how a machine stopped. Err is nil for a guest that powered off
// or reset (a clean exit).
type Exit struct {
	Reason string
	Err    error
}

// Machine is one VM with its vCPUs and devices.
type Machine struct {
	cfg      Config
	id       migrate.VMID // random; kept across migrations (resume)
	sys      *kvm.System
	vm       *kvm.VM
	mem      *Memory
	vcpus    []*kvm.VCPU
	msrs     []uint32 // MSRs saved with each vCPU
	hasXSave bool
	emulated bool // KVM runs guests in an instruction emulator
	tscKHz   uint64
	// Virtio interrupts through irqfds, notifies through ioeventfds
	// (notify.go); else KVM_IRQ_LINE and MMIO exits.
	hasIRQFD, hasIOEventFD bool

	ports   devices.PortBus
	mmio    devices.MMIOBus
	virtio  []virtioSlot
	disks   []*devices.Blk
	nets    []*devices.Net
	serial  *devices.Serial
	devices []devices.Device // in registration order

	// ctl guards the run state below (started, pauseReq, parked,
	// stopping, exit, and the closing of stopReq); cond, on ctl, is
	// broadcast whenever it changes. The vCPU threads (run.go) take ctl
	// only to park; each touches its own kvm.VCPU without it.
	ctl      sync.Mutex
	cond     *sync.Cond
	pauseReq bool // vCPUs park at their next exit, and stay parked, while set
	parked   int  // vCPUs parked or stopped
	stopping bool
	stopReq  chan struct{} // closed by the first stop
	// stopHooks run when the machine starts to stop (onStop).
	stopHooks []func()
	started   bool
	exit      *Exit
	done      chan struct{}  // closed by reap once every vCPU thread has ended
	wg        sync.WaitGroup // the vCPU threads
	// kick makes a vCPU leave KVM_RUN ((*kvm.VCPU).Kick; tests lose kicks).
	kick func(*kvm.VCPU) error
	// throttle slows vCPUs down for a migration that does not converge
	// (throttle.go).
	throttle throttle
}

// New creates the VM, its memory, irqchip, timer, devices and vCPUs. The
// guest does not run until Boot or Restore and then Start.
func New(cfg Config) (m *Machine, err error) {
	if err := CheckCPUs(cfg.CPUs); err != nil {
		return nil, fmt.Errorf("--cpus %d: %w", cfg.CPUs, err)
	}
	mc := &Machine{cfg: cfg, id: newVMID(), done: make(chan struct{}), stopReq: make(chan struct{}), kick: (*kvm.VCPU).Kick}
	mc.cond = sync.NewCond(&mc.ctl)
	m = mc
	defer func() {
		if err != nil {
			mc.Close() // m is nil here: the error returns reset it
		}
	}()
	if m.sys, err = kvm.Open(cfg.KVMPath); err != nil {
		return nil, err
	}
	if err = m.checkCaps(); err != nil {
		return nil, err
	}
	if m.vm, err = m.sys.CreateVM(); err != nil {
		return nil, err
	}
	if m.mem, err = NewMemory(cfg.Memory); err != nil {
		return nil, err
	}
	if err = m.vm.SetTSSAddr(tssAddr); err != nil {
		return nil, err
	}
	if err = m.vm.SetIdentityMapAddr(identityMap); err != nil {
		return nil, err
	}
	for _, r := range m.mem.Regions {
		if err = m.vm.SetMemoryRegion(kvm.MemoryRegion{Slot: r.Slot, GPA: r.GPA, Size: r.Size(), HostAddr: hostAddr(r.Mem)}); err != nil {
			return nil, err
		}
	}
	if err = m.vm.CreateIRQChip(); err != nil {
		return nil, err
	}
	if err = m.vm.CreatePIT2(); err != nil {
		return nil, err
	}
	if err = m.addDevices(); err != nil {
		return nil, err
	}
	if err = m.createVCPUs(); err != nil {
		return nil, err
	}
	return m, nil
}

// Capability is a KVM capability with its name for messages.
type Capability struct {
	Cap  kvm.Capability
	Name string
}

// RequiredCaps are the KVM capabilities ferry cannot run without.
var RequiredCaps = []Capability{
	{kvm.CapUserMemory, "KVM_CAP_USER_MEMORY"},
	{kvm.CapIRQChip, "KVM_CAP_IRQCHIP"},
	{kvm.CapPIT2, "KVM_CAP_PIT2"},
	{kvm.CapSetTSSAddr, "KVM_CAP_SET_TSS_ADDR"},
	{kvm.CapImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"},
	{kvm.CapExtCPUID, "KVM_CAP_EXT_CPUID"},
	{kvm.CapMPState, "KVM_CAP_MP_STATE"},
	{kvm.CapVCPUEvents, "KVM_CAP_VCPU_EVENTS"},
	{kvm.CapDebugRegs, "KVM_CAP_DEBUGREGS"},
	{kvm.CapGetTSCKHz, "KVM_CAP_GET_TSC_KHZ"},
}

func (m *Machine) checkCaps() error {
	var missing []string
	for _, c := range RequiredCaps {
		if n, err := m.sys.CheckExtension(c.Cap); err != nil || n == 0 {
			missing = append(missing, c.Name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%s lacks capabilities ferry needs: %v (see `ferry probe`)", m.sys.Path(), missing)
	}
	n, _ := m.sys.CheckExtension(kvm.CapXSave)
	m.hasXSave = n > 0
	m.emulated = kvm.EmulatingModule() != ""
	n, _ = m.sys.CheckExtension(kvm.CapIRQFD)
	m.hasIRQFD = n > 0 && !m.cfg.noIRQFD
	n, _ = m.sys.CheckExtension(kvm.CapIOEventFD)
	m.hasIOEventFD = n > 0 && !m.cfg.noIOEventFD
	return nil
}

// irqLine drives one GSI of the in-kernel irqchip.
type irqLine struct {
	vm  *kvm.VM
	gsi uint32
}

func (l irqLine) SetLevel(high bool) error { return l.vm.IRQLine(l.gsi, high) }

func (m *Machine) addDevices() error {
	console := m.cfg.Console
	if console == nil {
		console = io.Discard
	}
	m.serial = devices.NewSerial("serial0", console, irqLine{m.vm, devices.COM1IRQ})
	kbd := devices.NewI8042(func() { m.stop(Exit{Reason: "guest reset (i8042 reset line)"}) })
	regs := []struct {
		base  uint16
		count int
		dev   devices.PortDevice
	}{
		{devices.COM1Base, 8, m.serial},
		{devices.I8042Data, 1, kbd},
		{devices.I8042Command, 1, kbd},
		{devices.CMOSIndex, 2, devices.NewCMOS(nil)},
		{0x61, 1, devices.NewSink("port-b")},
		{0x80, 1, devices.NewSink("post")},
		{0xed, 1, devices.NewSink("iodelay")},
		{0x92, 1, devices.NewSink("sysctl-a")},
	}
	for _, r := range regs {
		if err := m.ports.Register(r.base, r.count, r.dev); err != nil {
			return err
		}
		if n := len(m.devices); n == 0 || m.devices[n-1] != r.dev {
			m.devices = append(m.devices, r.dev)
		}
	}
	return m.addVirtio()
}

func (m *Machine) createVCPUs() error {
	supported, err := m.sys.SupportedCPUID()
	if err != nil {
		return err
	}
	candidates, err := m.sys.MSRIndexList()
	if err != nil {
		return err
	}
	for i := 0; i < m.cfg.CPUs; i++ {
		v, err := m.vm.CreateVCPU(i)
		if err != nil {
			return err
		}
		m.vcpus = append(m.vcpus, v)
		if err := v.SetCPUID(guestCPUID(supported, i, m.cfg.CPUs, m.emulated)); err != nil {
			return err
		}
	}
	m.throttle = newThrottle(len(m.vcpus))
	m.msrs = m.vcpus[0].SavableMSRs(candidates)
	if m.tscKHz, err = m.vcpus[0].TSCKHz(); err != nil {
		return err
	}
	return nil
}

// Boot loads a kernel, initrd and command line and sets up the boot vCPU
// and the MP table, ready for Start.
func (m *Machine) Boot(kernel, initrd, cmdline string) (*BootInfo, error) {
	bi, err := LoadKernel(m.mem, kernel, initrd, cmdline)
	if err != nil {
		return nil, err
	}
	if err := writeMPTable(m.mem, m.cfg.CPUs); err != nil {
		return nil, err
	}
	if err := bootRegisters(m.mem, m.vcpus[0], bi); err != nil {
		return nil, err
	}
	return bi, nil
}

// Emulated reports whether this KVM emulates guests (kvm.EmulatingModule):
// the guest then gets a reduced CPUID and needs EmulatorCmdline.
func (m *Machine) Emulated() bool { return m.emulated }

// TSCKHz is the guest TSC frequency.
func (m *Machine) TSCKHz() uint64 { return m.tscKHz }

// Memory is the guest RAM.
func (m *Machine) Memory() *Memory { return m.mem }

// CPUs is the number of vCPUs.
func (m *Machine) CPUs() int { return len(m.vcpus) }

// Serial is the console UART, for input.
func (m *Machine) Serial() *devices.Serial { return m.serial }

// Devices lists the attached devices in registration order.
func (m *Machine) Devices() []devices.Device { return m.devices }

// UnclaimedPorts returns how often the guest touched ports no device claims.
func (m *Machine) UnclaimedPorts() map[uint16]int { return m.ports.Unclaimed() }

// Close releases the VM. The machine must be stopped.
func (m *Machine) Close() {
	m.endThrottle()
	for _, v := range m.vcpus {
		v.Close()
	}
	m.vcpus = nil
	m.closeVirtio() // before the VM: ioeventfds and irqfds are deassigned on it
	if m.serial != nil {
		m.serial.Close()
	}
	if m.vm != nil {
		m.vm.Close()
		m.vm = nil
	}
	if m.mem != nil {
		m.mem.Close()
		m.mem = nil
	}
	if m.sys != nil {
		m.sys.Close()
		m.sys = nil
	}
}

// ErrNotPaused is returned by operations that need a paused machine.
var ErrNotPaused = errors.New("machine is not paused")
