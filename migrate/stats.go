package migrate

import "fmt"

// IterationStats describes one pre-copy iteration (or the final
// stop-and-copy pass). For every iteration
//
//	PagesDirty = PagesFalseDirty + PagesHeld + PagesZero + PagesSent + PagesLeft
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
	// PagesHeld counts pages not sent because the destination already
	// held them with the same content (iteration 0 of a resumed migration).
	PagesHeld uint64 `json:"pages_held,omitempty"`
	// PagesZero counts ZERO records (no data) sent.
	PagesZero uint64 `json:"pages_zero"`
	// PagesSent counts FULL pages (data + digest) sent.
	PagesSent uint64 `json:"pages_sent"`
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
	BytesTotal int64   `json:"bytes_total"`
	// BytesReceived counts the bytes read from the destination (HELLO-ACK,
	// READY, DONE-ACK, and the HELD records of a resumed migration).
	BytesReceived int64 `json:"bytes_received"`
	// Converged is false when stop-and-copy was forced by a limit.
	Converged bool `json:"converged"`
	// Resumed: the migration resumed into pages the destination kept;
	// DestinationHeld is how many pages it held (HELD records).
	Resumed         bool   `json:"resumed,omitempty"`
	DestinationHeld uint64 `json:"destination_held,omitempty"`
	// SourcePaused: the guest was paused by its user and was sent in one
	// pass (Options.SourcePaused); it stays paused on the destination.
	SourcePaused bool `json:"source_paused,omitempty"`
	// Warnings are failures that did not fail the migration (the guest
	// already runs on the destination) but need an operator's eye.
	Warnings []string `json:"warnings,omitempty"`
}

const mib = 1 << 20

// FormatIteration renders one iteration as a single human-readable line.
func FormatIteration(it IterationStats) string {
	name := fmt.Sprintf("iter %d", it.Iteration)
	if it.StopAndCopy {
		name = fmt.Sprintf("stop-and-copy (iter %d)", it.Iteration)
	}
	extra := ""
	if it.PagesHeld > 0 {
		extra = fmt.Sprintf(", held by the destination %d", it.PagesHeld)
	}
	if it.PagesLeft > 0 {
		extra += fmt.Sprintf(", left to stop-and-copy %d", it.PagesLeft)
	}
	return fmt.Sprintf("%s: dirty %d, false-dirty skipped %d%s, zero %d, sent %d, %.1f MiB in %.3f s, dirty rate %.1f MiB/s",
		name, it.PagesDirty, it.PagesFalseDirty, extra, it.PagesZero, it.PagesSent,
		float64(it.Bytes)/mib, it.Seconds, it.DirtyRate/mib)
}

// Summary renders the end-of-migration line.
func (s *Stats) Summary() string {
	conv := "converged"
	switch {
	case s.SourcePaused:
		conv = "the guest was paused: sent in one pass, it stays paused"
	case !s.Converged:
		conv = "forced (did not converge)"
	}
	resumed := ""
	if s.Resumed {
		resumed = fmt.Sprintf(", resumed (the destination held %d pages; %.2f MiB received from it)", s.DestinationHeld, float64(s.BytesReceived)/mib)
	}
	return fmt.Sprintf("migrated in %.3f s, downtime %.1f ms, %d iterations, %.1f MiB sent, %s%s",
		s.TotalSeconds, s.DowntimeMS, len(s.Iterations), float64(s.BytesTotal)/mib, conv, resumed)
}

// ReceiveStats is the result of a migration, as the destination saw it.
type ReceiveStats struct {
	Iterations int    `json:"iterations"`
	PagesFull  uint64 `json:"pages_full"`
	PagesZero  uint64 `json:"pages_zero"`
	// PagesHeld: the pages kept from a failed migration that this one
	// resumed (0 for a new migration).
	PagesHeld  uint64  `json:"pages_held,omitempty"`
	StateBytes int     `json:"state_bytes"`
	BytesTotal int64   `json:"bytes_total"`
	Seconds    float64 `json:"seconds"`
}
