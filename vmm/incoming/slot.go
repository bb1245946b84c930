package incoming

import (
	"errors"
	"net"

	"github.com/ferryvmm/ferry/migrate"
)

// errBusy refuses a second migration while one holds the slot.
var errBusy = errors.New("another migration into this receiver is in progress")

// slot wraps the target of one connection with the server's single-slot
// rule: Prepare takes the slot (or refuses), Discard gives it back;
// Suspend (the target is kept for a resume) gives it back and keeps the
// memory; Reclaim (a resume takes the kept target over) takes it again.
// A target whose guest started keeps the slot for good, and is handed to
// Serve through the server's started channel: a resumed migration starts
// the target an earlier connection prepared, not its own.
//
// The migrate receiver calls these methods from its one goroutine; the
// server's mu guards the shared busy flag.
type slot[T Target] struct {
	s    *Server[T]
	t    T
	peer net.Addr
	owns bool // this target holds the server's slot
}

func (sl *slot[T]) take() error {
	sl.s.mu.Lock()
	defer sl.s.mu.Unlock()
	if sl.s.busy {
		return errBusy
	}
	sl.s.busy, sl.owns = true, true
	return nil
}

func (sl *slot[T]) release() {
	if !sl.owns {
		return
	}
	sl.s.mu.Lock()
	sl.s.busy, sl.owns = false, false
	sl.s.mu.Unlock()
}

func (sl *slot[T]) Prepare(info migrate.VMInfo) error {
	if err := sl.take(); err != nil {
		return err
	}
	sl.s.cfg.Logf("receiving a guest from %s: %d MiB, %d vCPUs", sl.peer, info.MemorySize()>>20, info.VCPUs)
	if err := sl.t.Prepare(info); err != nil {
		sl.release()
		return err
	}
	return nil
}

func (sl *slot[T]) Memory(i int) []byte        { return sl.t.Memory(i) }
func (sl *slot[T]) Restore(state []byte) error { return sl.t.Restore(state) }

func (sl *slot[T]) Start() error {
	if err := sl.t.Start(); err != nil {
		return err
	}
	sl.s.running(sl.t, sl.peer, false)
	sl.s.started <- sl.t // never blocks: one guest starts, the slot stays taken
	return nil
}

// The post-copy methods go to the target when it can take post-copy.

func (sl *slot[T]) postcopy() (migrate.PostcopyDestination, error) {
	pd, ok := any(sl.t).(migrate.PostcopyDestination)
	if !ok {
		return nil, errors.New("this destination cannot run a guest before all its pages arrived")
	}
	return pd, nil
}

func (sl *slot[T]) CanPostcopy() error {
	pd, err := sl.postcopy()
	if err != nil {
		return err
	}
	return pd.CanPostcopy()
}

func (sl *slot[T]) StartPostcopy(missing []uint64, need func(uint64)) error {
	pd, err := sl.postcopy()
	if err != nil {
		return err
	}
	if err := pd.StartPostcopy(missing, need); err != nil {
		return err
	}
	sl.s.running(sl.t, sl.peer, true)
	sl.s.postcopy.Store(true)
	sl.s.started <- sl.t
	return nil
}

func (sl *slot[T]) Fill(page uint64, data []byte) error {
	pd, err := sl.postcopy()
	if err != nil {
		return err
	}
	return pd.Fill(page, data)
}

func (sl *slot[T]) EndPostcopy() error {
	pd, err := sl.postcopy()
	if err != nil {
		return err
	}
	defer close(sl.s.postcopyDone) // every page is here: no recovery to wait for
	return pd.EndPostcopy()
}

func (sl *slot[T]) Suspend() {
	sl.t.Suspend()
	sl.release()
}

func (sl *slot[T]) Reclaim() error {
	if err := sl.take(); err != nil {
		return err
	}
	if err := sl.t.Reclaim(); err != nil {
		sl.release()
		return err
	}
	sl.s.cfg.Logf("resuming the migration of the guest first received from %s", sl.peer)
	return nil
}

func (sl *slot[T]) Discard() {
	sl.t.Discard()
	sl.release()
}
