// Package migrate is ferry's live migration: pre-copy migration of a
// running guest (or a one-pass copy of a paused one) over one connection
// or several in parallel, with auto-converge and post-copy for guests that
// outrun the link, and a per-page digest table that skips the "false dirty" pages KVM's dirty
// log reports although they did not change; the commit handshake that
// keeps a guest from ever running on both hosts; resuming a cut migration
// into the pages the destination kept; snapshot files, which are the same
// records in a file; and mutual TLS for the connection. PROTOCOL.md is the
// wire format. The engine sees a VM only through the interfaces below, so
// it is tested against fake guest memory without KVM; package vmm
// implements them.
//
//	vm.go          Source, Destination, Resumable: what the engine needs of a VM
//	vminfo.go      VMInfo, Region, VMID: a VM's shape, its sums, SameLayout
//	protocol.go    record header, types and limits, the record readers, Checksum
//	records.go     payload codecs (HELLO, HELLO-ACK, ITERATION-START, END, ERROR)
//	pages.go       PAGES payloads: ZERO and FULL runs, DELTA entries, the pages digest
//	blocks.go      sub-page digests: the block hashes DELTA entries are chosen by
//	compress.go    zstd compression of PAGES records, and when it pays
//	writer.go      the sender's record writer: PAGES built in place, optional writer goroutine
//	ratelimit.go   the token bucket behind Options.MaxBandwidth
//	digest.go      XXH3-128 page digests and the digest table
//	dirtybits.go   DirtyBitmap: pages a VMM wrote itself, under KVM's dirty-log rules
//	options.go     Options of Send: defaults and checks
//	sender.go      Send: setup, the handshake and the run loop
//	precopy.go     the pre-copy passes: the dirty log, chunks, the mid-pass check
//	streams.go     a stream: the per-page filter and its counts, per connection
//	streams_send.go  parallel streams, the source's side: extra connections, a goroutine each, SYNC
//	streams_recv.go  parallel streams, the destination's side: the group and its barriers
//	streams_records.go  STREAMS and SYNC payloads
//	live.go        PassProgress: where a pass stands, for a live progress line
//	converge.go    the convergence rules, as pure functions
//	peer.go        the destination's records, read on their own goroutine
//	commit.go      stop-and-copy, the commit handshake, the roll-back before COMMIT
//	conn.go        connection helpers shared by sender and receiver (deadlines, ERROR, watchdog)
//	stats.go       per-iteration and whole-migration statistics
//	receiver.go    Receive: the destination's state machine
//	recvoptions.go ReceiveOptions: what a destination accepts
//	recvpages.go   the destination's PAGES: checked whole, then stored
//	resume.go      resuming a cut migration: KEPT records and the Keeper
//	postcopy.go    post-copy: its records and the destination's session
//	postcopy_send.go  post-copy, the source's side: the switch, the push, the request channel
//	postcopy_recv.go  post-copy, the destination's side
//	sessions.go    Sessions: a migration's extra connections find their migration
//	snapshot.go    WriteSnapshot and ReadSnapshot: the snapshot file format
//	tls.go         mutual TLS configurations of both sides
package migrate

// Source is a running VM as the sender sees it.
type Source interface {
	Info() VMInfo
	// Memory returns the host mapping of region i (len == Regions[i].Size).
	// The guest may write it concurrently while it runs; the sender copies
	// a page before hashing it, so what it sends always matches its digest.
	Memory(i int) []byte
	// StartDirtyLog enables dirty logging on every region. manual reports
	// whether KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 is in effect: then DirtyLog
	// does not re-protect pages and the caller must ClearDirtyLog. In manual
	// mode the sender clears every chunk before it first reads it, so logging
	// may start with every bit set (KVM_DIRTY_LOG_INITIALLY_SET) or clear.
	StartDirtyLog() (manual bool, err error)
	StopDirtyLog() error
	// DirtyLog fills bitmap (bit p of word p/64, one bit per page of region
	// i; len(bitmap) == ceil(pages/64); the caller passes it zeroed) with the
	// pages written since logging started or since they were last re-armed,
	// including pages the VMM itself wrote (device emulation; a DirtyBitmap
	// keeps them under these same rules).
	// Without manual mode a fetch re-arms every page it reports (classic
	// KVM_GET_DIRTY_LOG); in manual mode a page stays reported, by every
	// call, until ClearDirtyLog re-arms it: the sender relies on that when
	// it reads the log mid-pass without merging it (a peek), so no read may
	// forget a page, whoever wrote it.
	DirtyLog(i int, bitmap []uint64) error
	// ClearDirtyLog re-arms logging for the pages of region i whose bits are
	// set in bits, bit b of bits[w] being page first+64*w+b; first is a
	// multiple of 64. A write after the call is reported again. bits is only
	// read during the call. Manual mode only.
	ClearDirtyLog(i int, first uint64, bits []uint64) error
	// Pause stops every vCPU outside KVM_RUN; Resume restarts them.
	Pause() error
	Resume() error
	// State serialises the whole VM (vCPUs, VM, devices), at most
	// MaxStateSize bytes. Called only while paused, after the final dirty-log
	// fetch.
	State() ([]byte, error)
}

// Throttler is a Source that can slow its guest down, for auto-converge
// (Options.NoAutoConverge): Throttle keeps the guest's vCPUs out of the
// guest pct percent of the time, 1 to 99; 0 lifts the throttle. The sender
// lifts it when the migration ends, however it ends.
type Throttler interface {
	Throttle(pct int) error
}

// Destination is the VM being built on the receiving host.
type Destination interface {
	// Prepare allocates guest memory and vCPUs for the
	// announced VM. It returns an error (sent to the source) if the VM cannot
	// be hosted, e.g. its regions or devices do not match this host's; a
	// failed Prepare frees what it allocated itself.
	Prepare(info VMInfo) error
	// Memory returns the host mapping of region i, after Prepare.
	Memory(i int) []byte
	// Restore loads the state produced by Source.State; the guest does not run yet.
	Restore(state []byte) error
	// Start runs the restored guest.
	Start() error
	// Discard frees everything a successful Prepare allocated; the guest
	// never runs. Called at most once, only after Prepare succeeded.
	Discard()
}

// PostcopyDestination is a Destination that can run the guest before every
// page arrived (post-copy). Pages are numbered globally (region 0's first).
type PostcopyDestination interface {
	Destination
	// CanPostcopy says, before anything is sent, whether this host can run
	// a guest whose pages arrive after it started (nil), or why not.
	CanPostcopy() error
	// StartPostcopy starts the restored guest (instead of Start) while the
	// pages set in missing (a bitmap, one bit per page) have not arrived:
	// their old content is dropped, and an access to one, by the guest or
	// by the VMM, waits until Fill puts it in place. For each page an
	// access waits for, it calls need(page), from any goroutine (need
	// does not block).
	StartPostcopy(missing []uint64, need func(page uint64)) error
	// Fill puts missing page page in place (data is PageSize bytes, nil
	// for a zero page) and wakes whoever waits for it. Called once per
	// missing page, from one goroutine at a time.
	Fill(page uint64, data []byte) error
	// EndPostcopy is called once every missing page was filled.
	EndPostcopy() error
}

// Resumable is a Destination whose prepared VM can outlive a failed
// migration, so that the same source can resume it (see Keeper). Receive
// keeps a Resumable destination instead of discarding it only when
// ReceiveOptions.Keep is set.
type Resumable interface {
	Destination
	// Suspend is called instead of Discard when the receiver keeps the
	// prepared VM for a resume: its memory stays, nothing runs. It is
	// later either reclaimed by a resumed migration or discarded.
	Suspend()
	// Reclaim is called when a resumed migration takes the kept VM over.
	// An error refuses the resume (e.g. another migration is in progress
	// here); the VM then stays kept.
	Reclaim() error
}
