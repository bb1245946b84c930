package kvm

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// ErrNotLogging is returned by GetDirtyLog for a slot without dirty logging.
// (gokvm's GetDirtyLog hides this ENOENT and returns an all-zero bitmap,
// which would make a migration silently skip every page.)
var ErrNotLogging = errors.New("memory slot has no dirty logging")

// PageSize is the page of memory slots and of the dirty log: one bit of a
// dirty bitmap per PageSize bytes of guest memory (x86's base page).
const PageSize = 4096

// sizePages is the number of pages that size bytes of a slot cover.
func sizePages(size uint64) uint64 { return (size + PageSize - 1) / PageSize }

// BitmapWords is the number of uint64 words a dirty bitmap for size bytes of
// guest memory needs (one bit per page, KVM rounds up to 64 bits).
func BitmapWords(size uint64) int {
	return int((sizePages(size) + 63) / 64)
}

// GetDirtyLog copies the slot's dirty bitmap into bitmap (bit p of word p/64
// is page p of the slot); it must hold at least BitmapWords(slot size)
// words, and the slot must have been set through this VM's SetMemoryRegion.
// Without manual protection KVM also clears the log and write-protects the
// pages again; with KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 enabled it does
// neither, and the caller must ClearDirtyLog.
func (vm *VM) GetDirtyLog(slot uint32, bitmap []uint64) error {
	// KVM writes the whole bitmap of the slot, however short the slice.
	pages, ok := vm.slotPages(slot)
	if !ok {
		return fmt.Errorf("KVM_GET_DIRTY_LOG slot %d: %w: no such slot in this VM", slot, ErrNotLogging)
	}
	if need := BitmapWords(pages * PageSize); len(bitmap) < need {
		return fmt.Errorf("KVM_GET_DIRTY_LOG slot %d: bitmap of %d words, the slot's %d pages need %d", slot, len(bitmap), pages, need)
	}
	if err := getDirtyLog(vm.fd, slot, bitmap); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("KVM_GET_DIRTY_LOG slot %d: %w: %w", slot, ErrNotLogging, err)
		}
		return fmt.Errorf("KVM_GET_DIRTY_LOG slot %d: %w", slot, err)
	}
	return nil
}

// ClearDirtyLog re-arms dirty logging (write-protects again) the pages of
// slot set in bits, which describe pages first .. first+64*len(bits)-1.
// first must be a multiple of 64; the range may end past the slot only at
// its last, partial word, and numPages says where it really ends.
func (vm *VM) ClearDirtyLog(slot uint32, first uint64, numPages uint32, bits []uint64) error {
	if first%64 != 0 {
		return fmt.Errorf("KVM_CLEAR_DIRTY_LOG slot %d: first page %d is not a multiple of 64", slot, first)
	}
	if len(bits) == 0 || uint64(numPages) > uint64(len(bits))*64 {
		return fmt.Errorf("KVM_CLEAR_DIRTY_LOG slot %d: %d pages do not fit a %d-word bitmap", slot, numPages, len(bits))
	}
	if err := clearDirtyLogIoctl(vm.fd, slot, first, numPages, bits); err != nil {
		return fmt.Errorf("KVM_CLEAR_DIRTY_LOG slot %d pages %d+%d: %w", slot, first, numPages, err)
	}
	return nil
}

// EnableManualDirtyLogProtect turns on KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 if
// KVM offers it and reports whether it is now in effect. It must be called
// before any slot enables dirty logging. initSet asks KVM to start each
// logging slot with every page dirty and unprotected (INITIALLY_SET), which
// saves write-protecting all memory up front.
func (vm *VM) EnableManualDirtyLogProtect(initSet bool) (bool, error) {
	offered, err := vm.CheckExtension(CapManualDirtyLogProtect2)
	if err != nil || offered == 0 {
		return false, err
	}
	flags := uint64(ManualProtectEnable)
	if initSet && offered&ManualProtectInitSet != 0 {
		flags |= ManualProtectInitSet
	}
	if err := vm.EnableCap(CapManualDirtyLogProtect2, flags); err != nil {
		return false, err
	}
	return true, nil
}
