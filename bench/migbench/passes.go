package main

import "math"

// The first pass and what follows it, and what ferry's mechanisms saved.
//
// Pre-copy sends every page once (the first pass), then the pages the
// guest dirtied meanwhile, until the rest fits the downtime budget. The
// first pass is the same work for every system but for how each encodes
// zero pages and whether it compresses; what follows it is where the
// false-dirty filter, delta entries and XBZRLE act. The two peers
// delimit their passes differently (ferry's iteration 0 may be cut short
// and leave pages to the stop-and-copy; QEMU syncs its dirty bitmap as
// soon as what is pending fits bandwidth × downtime, which without a
// cap is at once), so neither's "iteration 0" is the first pass. One
// rule for both instead: the first pass ends when the sender has sent as
// many pages (whole, zero, delta or XBZRLE) as the guest has, counted from
// the start, with bytes and time interpolated linearly in pages between
// the points where the counts are known: the end of each ferry iteration,
// each 50 ms query-migrate poll of QEMU.

// PassSplit divides a migration at the end of its first pass.
type PassSplit struct {
	Bytes        int64   `json:"bytes"` // on the wire, as bytes_total
	Seconds      float64 `json:"seconds"`
	AfterBytes   int64   `json:"after_bytes"`   // bytes_total - bytes
	AfterSeconds float64 `json:"after_seconds"` // total_seconds - seconds
	How          string  `json:"how"`
}

// point is a cumulative count at one moment of a migration: pages sent
// (whole, zero, delta, XBZRLE), bytes, seconds since its start.
type point struct {
	pages   float64
	bytes   float64
	seconds float64
}

// crossing interpolates the bytes and seconds at which the cumulative
// page count reaches total; ok is false if it never does.
func crossing(pts []point, total float64) (bytes, seconds float64, ok bool) {
	prev := point{}
	for _, p := range pts {
		if p.pages >= total {
			f := 1.0
			if p.pages > prev.pages {
				f = (total - prev.pages) / (p.pages - prev.pages)
			}
			return prev.bytes + f*(p.bytes-prev.bytes), prev.seconds + f*(p.seconds-prev.seconds), true
		}
		prev = p
	}
	return 0, 0, false
}

func (r *Run) setSplit(bytes, seconds float64, how string) {
	s := &PassSplit{Bytes: int64(math.Round(bytes)), Seconds: seconds, How: how}
	s.AfterBytes = max(r.BytesTotal-s.Bytes, 0)
	s.AfterSeconds = max(r.TotalSeconds-s.Seconds, 0)
	r.FirstPass = s
}

// ferrySplit: from the per-iteration counts, the bytes there being what
// ferry wrote to the connection; scaled to the wire by the run's ratio of
// wire bytes to reported bytes (TCP/IP headers are a near-constant share
// of full segments).
func (r *Run) ferrySplit(totalPages uint64) {
	var pts []point
	var c point
	for _, it := range r.PerIteration {
		for _, p := range []*uint64{it.PagesSent, it.PagesZero, it.PagesDelta} {
			if p != nil {
				c.pages += float64(*p)
			}
		}
		c.bytes += float64(it.Bytes)
		c.seconds += it.Seconds
		pts = append(pts, c)
	}
	bytes, secs, ok := crossing(pts, float64(totalPages))
	if !ok {
		return
	}
	how := "ferry iterations"
	if r.BytesTotal != r.BytesReported && r.BytesReported > 0 {
		bytes *= float64(r.BytesTotal) / float64(r.BytesReported)
		how += ", scaled to the wire"
	}
	r.setSplit(bytes, secs, how)
}

// qemuSplit: from the query-migrate polls (pages: normal + duplicate +
// XBZRLE), the bytes being the source's veth tx count read with each poll
// when there is one, else QEMU's ram.transferred (which counts multifd
// pages uncompressed).
func (r *Run) qemuSplit(samples []migSample, totalPages uint64, tx0 int64) {
	var pts []point
	wire := tx0 >= 0
	for _, s := range samples {
		if s.tx < 0 {
			wire = false
		}
	}
	for _, s := range samples {
		p := point{pages: float64(s.normal + s.duplicate + s.xbzrle), bytes: float64(s.transfered), seconds: s.secs}
		if wire {
			p.bytes = float64(s.tx - tx0)
		}
		pts = append(pts, p)
	}
	bytes, secs, ok := crossing(pts, float64(totalPages))
	if !ok {
		return
	}
	how := "QEMU polls, veth tx"
	if !wire {
		how = "QEMU polls, ram.transferred"
	}
	r.setSplit(bytes, secs, how)
}

// Savings is what each of ferry's mechanisms kept off the wire, from its
// per-iteration statistics: pages skipped as false dirty (× 4 KiB),
// delta entries (pages × 4 KiB − their bytes of blocks), compression
// (bytes saved on the records sent compressed), the last split into
// iteration 0 and the rest.
type Savings struct {
	FalseDirtyPages    uint64 `json:"false_dirty_pages"`
	FalseDirtyBytes    int64  `json:"false_dirty_bytes"`
	DeltaPages         uint64 `json:"delta_pages"`
	DeltaBytes         int64  `json:"delta_bytes"`
	DeltaSaved         int64  `json:"delta_saved"`
	RecordsCompressed  int    `json:"records_compressed"`
	CompressSavedIter0 int64  `json:"compression_saved_iteration0"`
	CompressSavedLater int64  `json:"compression_saved_later"`
}

func ferrySavings(its []IterStat) *Savings {
	s := &Savings{}
	for _, it := range its {
		if it.PagesFalseDirty != nil {
			s.FalseDirtyPages += *it.PagesFalseDirty
		}
		if it.PagesDelta != nil {
			s.DeltaPages += *it.PagesDelta
		}
		s.DeltaBytes += it.DeltaBytes
		s.RecordsCompressed += it.RecordsCompressed
		if it.Iteration == 0 {
			s.CompressSavedIter0 += it.CompressSaved
		} else {
			s.CompressSavedLater += it.CompressSaved
		}
	}
	s.FalseDirtyBytes = int64(s.FalseDirtyPages) * 4096
	s.DeltaSaved = int64(s.DeltaPages)*4096 - s.DeltaBytes
	return s
}
