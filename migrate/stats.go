package migrate

import (
	"encoding/json"
	"fmt"
)

// IterationStats describes one pre-copy iteration (or the final
// stop-and-copy pass). For every iteration
//
//	PagesDirty = PagesFalseDirty + PagesReused + PagesZero + PagesSent + PagesDelta + PagesLeft
//
// In iteration 0 every page counts as dirty.
type IterationStats struct {
	Iteration   int  `json:"iteration"`
	StopAndCopy bool `json:"stop_and_copy"`
	// PagesDirty is the number of pages the dirty log reported (all pages in
	// iteration 0).
	PagesDirty uint64 `json:"pages_dirty"`
	// PagesFalseDirty counts dirty pages skipped because their digest matched
	// the content already sent.
	PagesFalseDirty uint64 `json:"pages_false_dirty"`
	// PagesReused counts pages not sent because the destination kept them,
	// with the same content, from a cut attempt (iteration 0 of a resumed
	// migration). Older stats called it pages_held; that name is still read.
	PagesReused uint64 `json:"pages_reused,omitempty"`
	// PagesZero counts ZERO records (no data) sent.
	PagesZero uint64 `json:"pages_zero"`
	// PagesSent counts pages sent whole (FULL).
	PagesSent uint64 `json:"pages_sent"`
	// PagesDelta counts pages sent as DELTA entries: only their changed
	// 512-byte blocks, DeltaBytes in all (the destination held them).
	PagesDelta uint64 `json:"pages_delta,omitempty"`
	DeltaBytes int64  `json:"delta_bytes,omitempty"`
	// ThrottlePct is the auto-converge throttle the guest ran under
	// during the iteration (percent of the time its vCPUs were kept out).
	ThrottlePct int `json:"throttle_pct,omitempty"`
	// CompressedRecords counts the PAGES records sent compressed;
	// CompressSaved is the bytes compression saved on them.
	CompressedRecords int   `json:"records_compressed,omitempty"`
	CompressSaved     int64 `json:"bytes_saved_compression,omitempty"`
	// Peeks counts the mid-pass reads of the dirty log (the convergence
	// check between chunks; see Options.Downtime).
	Peeks int `json:"peeks,omitempty"`
	// PagesLeft counts dirty pages the iteration did not reach because the
	// sender went to stop-and-copy in the middle of the pass (the downtime
	// budget could take the rest); the stop-and-copy pass sends them.
	PagesLeft uint64 `json:"pages_left,omitempty"`
	// Bytes is every byte written to the connection during the iteration,
	// record headers included.
	Bytes   int64   `json:"bytes"`
	Seconds float64 `json:"seconds"`
	// DirtyRate is the rate, in bytes per second, at which the guest dirtied
	// pages during this iteration: pages found by the dirty-log fetch that
	// followed it × PageSize / Seconds. Zero for the stop-and-copy pass.
	DirtyRate float64 `json:"dirty_rate"`
}

// Stats is the result of a migration, as the source saw it.
type Stats struct {
	Iterations   []IterationStats `json:"iterations"`
	TotalSeconds float64          `json:"total_seconds"`
	// DowntimeMS runs from pausing the source guest to receiving DONE-ACK
	// (for a guest its user had paused, SourcePaused: from the start of
	// its one pass).
	DowntimeMS float64 `json:"downtime_ms"`
	// DowntimeParts is where the downtime went.
	DowntimeParts DowntimeParts `json:"downtime_parts"`
	BytesTotal    int64         `json:"bytes_total"`
	// BytesReceived counts the bytes read from the destination (HELLO-ACK,
	// READY, DONE-ACK, and the KEPT records of a resumed migration).
	BytesReceived int64 `json:"bytes_received"`
	// Converged is false when stop-and-copy was forced by a limit.
	Converged bool `json:"converged"`
	// Resumed: the migration resumed into pages the destination kept;
	// DestinationKept is how many pages it kept (KEPT records). Older
	// stats called it destination_held; that name is still read.
	Resumed         bool   `json:"resumed,omitempty"`
	DestinationKept uint64 `json:"destination_kept,omitempty"`
	// SourcePaused: the guest was paused by its user and was sent in one
	// pass (Options.SourcePaused); it stays paused on the destination.
	SourcePaused bool `json:"source_paused,omitempty"`
	// Postcopy: the migration switched to post-copy; PagesMissing pages
	// were missing at the destination then, PagesPushed went on the main
	// connection and PagesServed on the request channel, in
	// PostcopySeconds after the switch; PostcopyStats is the
	// destination's account (COMPLETE). DowntimeMS is the switch's.
	Postcopy        bool          `json:"postcopy,omitempty"`
	PagesMissing    uint64        `json:"pages_missing,omitempty"`
	PagesPushed     uint64        `json:"pages_pushed,omitempty"`
	PagesServed     uint64        `json:"pages_served,omitempty"`
	PostcopySeconds float64       `json:"postcopy_seconds,omitempty"`
	PostcopyStats   PostcopyStats `json:"postcopy_stats,omitempty"`
	// TableBytes is the memory of the sender's per-page tables (digests
	// and block hashes): about 1.66% of guest memory, 0.49% with NoDelta.
	TableBytes int64 `json:"table_bytes"`
	// Connections is how many connections carried the pages (the main
	// one and the parallel streams; 0 or 1: one).
	Connections int `json:"connections,omitempty"`
	// Warnings are failures that did not fail the migration (the guest
	// already runs on the destination) but need an operator's eye.
	Warnings []string `json:"warnings,omitempty"`
}

// DowntimeParts splits the downtime, in milliseconds, in the order it
// passes: pausing the vCPUs (and draining the devices), the final dirty-log
// sync, the last pages (read, filtered, handed to the writer), saving the
// VM state, writing out what is buffered (pages, STATE, END), the wait for
// READY (the destination applies what is in flight, restores the state,
// checks END), and the commit handshake (COMMIT, the destination starts the
// guest, DONE-ACK). A guest its user paused has no pause nor sync part.
type DowntimeParts struct {
	PauseMS  float64 `json:"pause_ms"`
	SyncMS   float64 `json:"sync_ms"`
	PagesMS  float64 `json:"pages_ms"`
	StateMS  float64 `json:"state_ms"`
	FlushMS  float64 `json:"flush_ms"`
	ReadyMS  float64 `json:"ready_ms"`
	CommitMS float64 `json:"commit_ms"`
}

// String is the one-line account of a downtime.
func (p DowntimeParts) String() string {
	return fmt.Sprintf("pause %.1f, dirty-log sync %.1f, last pages %.1f, state %.1f, flush %.1f, destination restore %.1f, commit %.1f ms",
		p.PauseMS, p.SyncMS, p.PagesMS, p.StateMS, p.FlushMS, p.ReadyMS, p.CommitMS)
}

const mib = 1 << 20

// FormatIteration renders one iteration as a single human-readable line.
func FormatIteration(it IterationStats) string {
	name := fmt.Sprintf("iter %d", it.Iteration)
	if it.StopAndCopy {
		name = fmt.Sprintf("stop-and-copy (iter %d)", it.Iteration)
	}
	extra := ""
	if it.PagesReused > 0 {
		extra = fmt.Sprintf(", reused from the destination %d", it.PagesReused)
	}
	if it.PagesLeft > 0 {
		extra += fmt.Sprintf(", left to stop-and-copy %d", it.PagesLeft)
	}

	tail := ""
	if it.PagesDelta > 0 {
		tail = fmt.Sprintf(", delta %d (%.1f KiB of blocks)", it.PagesDelta, float64(it.DeltaBytes)/1024)
	}
	if it.CompressedRecords > 0 {
		tail += fmt.Sprintf(", %d records compressed (saved %.1f MiB)", it.CompressedRecords, float64(it.CompressSaved)/mib)
	}
	if it.ThrottlePct > 0 {
		tail += fmt.Sprintf(", guest throttled %d%%", it.ThrottlePct)
	}
	return fmt.Sprintf("%s: dirty %d, false-dirty skipped %d%s, zero %d, sent %d, %.1f MiB in %.3f s, dirty rate %.1f MiB/s%s",
		name, it.PagesDirty, it.PagesFalseDirty, extra, it.PagesZero, it.PagesSent,
		float64(it.Bytes)/mib, it.Seconds, it.DirtyRate/mib, tail)
}

// Summary renders the end-of-migration line.
func (s *Stats) Summary() string {
	conv := "converged"
	switch {
	case s.Postcopy:
		conv = fmt.Sprintf("switched to post-copy (%d pages missing: %d pushed, %d sent on request; done %.3f s after the switch)",
			s.PagesMissing, s.PagesPushed, s.PagesServed, s.PostcopySeconds)
	case s.SourcePaused:
		conv = "the guest was paused: sent in one pass, it stays paused"
	case !s.Converged:
		conv = "forced (did not converge)"
	}
	resumed := ""
	if s.Resumed {
		resumed = fmt.Sprintf(", resumed (the destination kept %d pages; %.2f MiB received from it)", s.DestinationKept, float64(s.BytesReceived)/mib)
	}
	return fmt.Sprintf("migrated in %.3f s, downtime %.1f ms, %d iterations, %.1f MiB sent, %s%s",
		s.TotalSeconds, s.DowntimeMS, len(s.Iterations), float64(s.BytesTotal)/mib, conv, resumed)
}

// ReceiveStats is the result of a migration, as the destination saw it.
type ReceiveStats struct {
	Iterations int    `json:"iterations"`
	PagesFull  uint64 `json:"pages_full"`
	PagesZero  uint64 `json:"pages_zero"`
	// PagesDelta counts pages received as DELTA entries (only the blocks
	// that changed); RecordsCompressed counts compressed PAGES records.
	PagesDelta        uint64 `json:"pages_delta,omitempty"`
	RecordsCompressed uint64 `json:"records_compressed,omitempty"`
	// Postcopy: the guest started before PagesMissing pages arrived; they
	// came afterwards (PostcopyStats). Channel: this connection was a
	// post-copy request channel, not a migration.
	Postcopy      bool          `json:"postcopy,omitempty"`
	PagesMissing  uint64        `json:"pages_missing,omitempty"`
	PostcopyStats PostcopyStats `json:"postcopy_stats,omitempty"`
	Channel       bool          `json:"channel,omitempty"`
	// Connections is how many connections carried the migration (the
	// main one and its parallel streams; 0 or 1: one). Stream: this
	// connection was an extra stream of a migration, whose counts the
	// main connection's stats include.
	Connections int  `json:"connections,omitempty"`
	Stream      bool `json:"stream,omitempty"`
	// Recovered: this connection resumed a post-copy whose connection had
	// broken.
	Recovered bool `json:"recovered,omitempty"`
	// PagesKept: the pages kept from a failed migration that this one
	// resumed (0 for a new migration). Older stats called it pages_held;
	// that name is still read.
	PagesKept  uint64  `json:"pages_kept,omitempty"`
	StateBytes int     `json:"state_bytes"`
	BytesTotal int64   `json:"bytes_total"`
	Seconds    float64 `json:"seconds"`
}

// Statistics written by an older ferry used other names for some fields
// ("held" meant three things then); these decoders still read them.

// UnmarshalJSON reads IterationStats, also with pages_held.
func (it *IterationStats) UnmarshalJSON(b []byte) error {
	type plain IterationStats
	var v struct {
		plain
		OldReused uint64 `json:"pages_held"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*it = IterationStats(v.plain)
	if it.PagesReused == 0 {
		it.PagesReused = v.OldReused
	}
	return nil
}

// UnmarshalJSON reads Stats, also with destination_held.
func (s *Stats) UnmarshalJSON(b []byte) error {
	type plain Stats
	var v struct {
		plain
		OldKept uint64 `json:"destination_held"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*s = Stats(v.plain)
	if s.DestinationKept == 0 {
		s.DestinationKept = v.OldKept
	}
	return nil
}

// UnmarshalJSON reads ReceiveStats, also with pages_held.
func (s *ReceiveStats) UnmarshalJSON(b []byte) error {
	type plain ReceiveStats
	var v struct {
		plain
		OldKept uint64 `json:"pages_held"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*s = ReceiveStats(v.plain)
	if s.PagesKept == 0 {
		s.PagesKept = v.OldKept
	}
	return nil
}
