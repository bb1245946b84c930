package uffd

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// DropPages discards the content of mem (whole aligned pages of an
// anonymous private mapping) with MADV_DONTNEED, so that the next access
// to each page starts afresh: in a range registered in ModeMissing it
// faults (and a handler must Copy or ZeroPage it again), elsewhere it
// reads as zeros. KVM drops its own mapping of the pages too (through its
// MMU notifier), so a guest access faults the same way.
//
// Use it for pages whose content is stale, e.g. pages a post-copy
// destination must fetch again. It needs no userfaultfd. With
// UFFD_FEATURE_EVENT_REMOVE (not enabled by this package) the kernel would
// block the caller until a reader took a remove event.
func DropPages(mem []byte) error {
	a, err := checkRange("MADV_DONTNEED", mem)
	if err != nil {
		return err
	}
	if err := unix.Madvise(mem, unix.MADV_DONTNEED); err != nil {
		return fmt.Errorf("MADV_DONTNEED %#x+%#x: %w", a, len(mem), err)
	}
	return nil
}
