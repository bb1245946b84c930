package vmm

import (
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ferryvmm/ferry/kvm"
	"github.com/ferryvmm/ferry/migrate"
)

// MigrationSource adapts a running Machine to migrate.Source.
type MigrationSource struct {
	m      *Machine
	manual bool // KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 is on (StartDirtyLog)
	// LogMemoryHash, if set, receives a hash of guest RAM from LogHash,
	// once the guest is paused for good (for tests; it reads all RAM).
	LogMemoryHash func(hash string)
	// Paused says the guest's user paused it (the migration does not):
	// its state says so, and it arrives paused (State.Paused).
	Paused bool
}

// NewMigrationSource prepares m to be migrated.
func NewMigrationSource(m *Machine) *MigrationSource { return &MigrationSource{m: m} }

// Info implements migrate.Source.
func (s *MigrationSource) Info() migrate.VMInfo { return s.m.info() }

func (m *Machine) info() migrate.VMInfo {
	info := migrate.VMInfo{ID: m.id, VCPUs: len(m.vcpus)}
	for _, r := range m.mem.Regions {
		info.Regions = append(info.Regions, migrate.Region{GPA: r.GPA, Size: r.Size()})
	}
	for _, d := range m.devices {
		info.Devices = append(info.Devices, d.Name())
	}
	return info
}

// Memory implements migrate.Source.
func (s *MigrationSource) Memory(i int) []byte { return s.m.mem.Regions[i].Mem }

// StartDirtyLog implements migrate.Source: manual protection first (it
// must be on before a slot starts logging), then logging on every slot.
func (s *MigrationSource) StartDirtyLog() (bool, error) {
	manual, err := s.m.vm.EnableManualDirtyLogProtect(false)
	if err != nil {
		return false, err
	}
	if err := s.m.setLogging(true); err != nil {
		if rerr := s.m.setLogging(false); rerr != nil {
			err = errors.Join(err, fmt.Errorf("undoing it: %w", rerr))
		}
		return false, err
	}
	s.manual = manual
	return manual, nil
}

// StopDirtyLog implements migrate.Source.
func (s *MigrationSource) StopDirtyLog() error { return s.m.setLogging(false) }

// setLogging turns dirty logging on or off on every slot. Turning it off
// goes on past a slot that fails, so that no other slot is left logging;
// the errors are joined.
func (m *Machine) setLogging(on bool) error {
	var errs []error
	for _, r := range m.mem.Regions {
		err := m.vm.SetMemoryRegion(kvm.MemoryRegion{Slot: r.Slot, GPA: r.GPA, Size: r.Size(), HostAddr: hostAddr(r.Mem), LogDirty: on})
		if err != nil {
			errs = append(errs, fmt.Errorf("dirty logging %v: %w", on, err))
			if on {
				break
			}
		}
	}
	return errors.Join(errs...)
}

// DirtyLog implements migrate.Source: KVM's log of guest writes, OR-ed
// with the pages ferry's own devices wrote (virtio rings and disk reads;
// see dirty.go), which follow the same rules: in manual mode both stay
// reported until ClearDirtyLog, in classic mode this read re-arms both.
func (s *MigrationSource) DirtyLog(i int, bitmap []uint64) error {
	if err := s.m.vm.GetDirtyLog(s.m.mem.Regions[i].Slot, bitmap); err != nil {
		return err
	}
	s.m.mem.dirty[i].Report(bitmap, !s.manual)
	return nil
}

// ClearDirtyLog implements migrate.Source: it re-arms the pages in KVM's
// log and in the devices' bitmap (before the caller reads the pages).
func (s *MigrationSource) ClearDirtyLog(i int, first uint64, bits []uint64) error {
	r := s.m.mem.Regions[i]
	pages := r.Size() / pageSize
	if first >= pages {
		return fmt.Errorf("clear dirty log: page %d is past the %d pages of region %d", first, pages, i)
	}
	n := uint64(len(bits)) * 64
	if first+n > pages {
		n = pages - first
	}
	if err := s.m.vm.ClearDirtyLog(r.Slot, first, uint32(n), bits); err != nil {
		return err
	}
	s.m.mem.dirty[i].Rearm(first, bits)
	return nil
}

// Throttle implements migrate.Throttler: every vCPU spends pct percent of
// the time out of the guest (throttle.go); 0 lifts it.
func (s *MigrationSource) Throttle(pct int) error { return s.m.SetThrottle(-1, pct) }

// Pause implements migrate.Source.
func (s *MigrationSource) Pause() error { return s.m.Pause() }

// Resume implements migrate.Source.
func (s *MigrationSource) Resume() error { return s.m.Resume() }

// State implements migrate.Source.
func (s *MigrationSource) State() ([]byte, error) {
	st, err := s.m.SaveState()
	if err != nil {
		return nil, err
	}
	st.Paused = s.Paused
	return EncodeState(st)
}

// LogHash hands LogMemoryHash, if set, the hash of guest RAM. The front
// end calls it once the guest is paused for good (after a migration that
// handed it over, or with a snapshot written), not inside State: hashing
// reads all of RAM, and the downtime must not include it.
func (s *MigrationSource) LogHash() {
	if s.LogMemoryHash != nil {
		s.LogMemoryHash(s.m.mem.Hash())
	}
}

// ID identifies the VM across migrations: random when the machine is
// made, taken over by the machine a migration builds, new for a restored
// snapshot. A resumed migration goes only into pages kept for the same id.
func (m *Machine) ID() migrate.VMID { return m.id }

func newVMID() migrate.VMID {
	var id migrate.VMID
	if _, err := rand.Read(id[:]); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return id
}

// MigrationDestination builds a Machine for an incoming migration (or a
// snapshot): it implements migrate.Destination and migrate.Resumable.
type MigrationDestination struct {
	// NewID gives the machine an id of its own instead of the source's
	// (for a restored snapshot: it may be restored more than once).
	NewID bool
	cfg   Config // Console and KVMPath; Memory and CPUs come from the source
	// mu guards m: the receiver prepares and discards it, while Machine
	// (the CLI, a kept resume's Reclaim) may ask for it.
	mu      sync.Mutex
	m       *Machine
	started chan *Machine // receives the machine once it runs
	// LogMemoryHash, if set, receives a hash of guest RAM taken just
	// before the guest starts here (see MigrationSource.LogMemoryHash).
	LogMemoryHash func(hash string)
	// A guest saved paused by its user (State.Paused) starts paused here,
	// until a resume, unless Run is set (ferry restore --run). If
	// RefusePaused is set, such a guest is refused with that reason
	// instead (nothing could resume it here: no control socket).
	Run          bool
	RefusePaused string
	paused       bool      // the restored guest starts paused
	pc           *postcopy // post-copy in progress (postcopy.go)
}

// StartsPaused reports whether the restored guest will start paused.
func (t *MigrationDestination) StartsPaused() bool { return t.paused }

// NewMigrationDestination prepares to receive a guest. The machine is created
// only when the source announces it.
func NewMigrationDestination(cfg Config) *MigrationDestination {
	return &MigrationDestination{cfg: cfg, started: make(chan *Machine, 1)}
}

// Started delivers the machine after the guest runs on this host.
func (t *MigrationDestination) Started() <-chan *Machine { return t.started }

// Prepare implements migrate.Destination.
func (t *MigrationDestination) Prepare(info migrate.VMInfo) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m != nil {
		return errors.New("a guest is already being received")
	}
	cfg := t.cfg
	cfg.Memory, cfg.CPUs = info.MemorySize(), info.VCPUs
	m, err := New(cfg)
	if err != nil {
		return err
	}
	if !t.NewID {
		m.id = info.ID
	}
	if err := sameLayout(m.info(), info); err != nil {
		m.Close()
		return err
	}
	t.m = m
	return nil
}

// Machine is the machine being built, nil before Prepare or after Discard.
func (t *MigrationDestination) Machine() *Machine {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.m
}

// sameLayout compares the machine built here (have) with the source's
// announcement (migrate.SameLayout), and says which devices are missing
// here when the devices differ.
func sameLayout(have, want migrate.VMInfo) error {
	err := migrate.SameLayout(have, want)
	var le *migrate.LayoutError
	if errors.As(err, &le) && le.Devices {
		if missing := missingNames(want.Devices, have.Devices); len(missing) > 0 {
			return fmt.Errorf("%w (missing here: %v; give ferry receive the source's --disk and --net devices)", err, missing)
		}
	}
	return err
}

// missingNames lists the names in want that have lacks.
func missingNames(want, have []string) []string {
	set := map[string]bool{}
	for _, n := range have {
		set[n] = true
	}
	var missing []string
	for _, n := range want {
		if !set[n] {
			missing = append(missing, n)
		}
	}
	return missing
}

// Memory implements migrate.Destination.
func (t *MigrationDestination) Memory(i int) []byte { return t.m.mem.Regions[i].Mem }

// Restore implements migrate.Destination.
func (t *MigrationDestination) Restore(state []byte) error {
	s, err := DecodeState(state)
	if err != nil {
		return err
	}
	if s.Paused && !t.Run && t.RefusePaused != "" {
		return fmt.Errorf("the guest was paused by its user and would stay paused here with nothing to resume it: %s", t.RefusePaused)
	}
	if err := t.m.RestoreState(s); err != nil {
		return err
	}
	t.paused = s.Paused && !t.Run
	return nil
}

// Start implements migrate.Destination: the guest runs, or, saved paused
// by its user, waits paused for a resume (its vCPUs never enter the guest
// before). Its network devices announce it either way.
func (t *MigrationDestination) Start() error {
	if t.LogMemoryHash != nil {
		// Inside the downtime, which only tests pay: say how much.
		at := time.Now()
		h := t.m.mem.Hash()
		t.LogMemoryHash(fmt.Sprintf("%s (the guest waited %.1f ms for this hash)", h, float64(time.Since(at).Microseconds())/1000))
	}
	return t.startGuest()
}

// startGuest runs the restored guest (paused, if its user paused it),
// announces it on the network and hands the machine over.
func (t *MigrationDestination) startGuest() error {
	start := t.m.Start
	if t.paused {
		start = t.m.StartPaused
	}
	if err := start(); err != nil {
		return err
	}
	t.m.announceNets()
	t.started <- t.m
	return nil
}

// announceNets has each virtio-net device announce the guest's MAC on its
// tap here (devices.Net.Announce: RARP frames, sent in the background), so
// the network learns where the guest moved. The migration destination and
// a restored snapshot both start through MigrationDestination.Start.
func (m *Machine) announceNets() {
	for _, n := range m.nets {
		n.Announce()
	}
}

// Suspend implements migrate.Resumable: the machine (never started) and
// its memory stay as they are until Reclaim or Discard.
func (t *MigrationDestination) Suspend() {}

// Reclaim implements migrate.Resumable.
func (t *MigrationDestination) Reclaim() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		return errors.New("the kept guest was discarded")
	}
	return nil
}

// Discard implements migrate.Destination.
func (t *MigrationDestination) Discard() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m != nil {
		t.m.Close()
		t.m = nil
	}
}
