package migrate

import "time"

// What a destination accepts (Receive's options); the sender's are in
// options.go.

// The limits a Receive without ReceiveOptions accepts. ferry's front ends
// always set their own (vmm's machine limits); these bound a bare Receive.
const (
	DefaultMaxMemory = 1 << 40
	DefaultMaxVCPUs  = 1024
)

// ReceiveOptions limit what a destination accepts.
type ReceiveOptions struct {
	// MaxMemory is the largest guest (sum of region sizes) accepted, in
	// bytes. Default DefaultMaxMemory (1 TiB).
	MaxMemory uint64
	// MaxVCPUs is the largest vCPU count accepted. Default DefaultMaxVCPUs.
	MaxVCPUs int
	// IdleTimeout, if positive, aborts when no record arrives from the
	// source for that long (needs a conn with SetReadDeadline). The source
	// sends continuously until END, so a stall means it is gone. Zero: wait
	// as long as ctx allows.
	IdleTimeout time.Duration
	// Sessions, if set, routes a migration's extra connections (its
	// parallel streams, its post-copy request channel) to it, and lets a
	// migration switch to post-copy when the destination is a
	// PostcopyDestination (sessions.go); nil: one connection per migration
	// and no post-copy here.
	Sessions *Sessions
	// Keep, if set, keeps what a migration that fails before COMMIT has
	// received (a Resumable destination and the digest of every page it
	// holds) for the Keeper's window, and serves resumed migrations from
	// it. One Keeper serves every connection of a receiver.
	Keep *Keeper
	// Peer identifies the authenticated source (e.g. the fingerprint of
	// its TLS certificate): pages kept from one peer are resumed only by
	// the same peer. Empty: no such check.
	Peer string
}

func (o ReceiveOptions) normalize() ReceiveOptions {
	if o.MaxMemory == 0 {
		o.MaxMemory = DefaultMaxMemory
	}
	if o.MaxVCPUs <= 0 {
		o.MaxVCPUs = DefaultMaxVCPUs
	}
	return o
}
