package main

import (
	"fmt"
	"time"
)

// The guest workloads (ferry.run=dirty with its parameters) and the
// systems that migrate them.

type workload struct {
	Name  string
	Mode  string
	Same  int    // percent of writes that leave the page unchanged
	Class string // target class: "filter" (>= 60% write-not-dirty), "no-filter", "idle", "" (none)
	Note  string
	// SamePages > 0 makes the share per page (ferry.samepages) instead of
	// per write; Chg > 8 is the bytes a changing write alters (ferry.chg).
	SamePages int
	Chg       int
	// Fill is the working set's first contents (ferry.fill): "" (the
	// guest's default, copy) or "mixed" (text, sparse and random pages).
	Fill string
	// Systems, when set, are the only systems run on this workload
	// (unless -all-pairs); otherwise classicSystems.
	Systems []string
	// Mem and WS, when set, replace -mem and -ws (the guest's memory and
	// the writer's working set); Caps, when set, replaces -bws.
	Mem, WS string
	Caps    []int
	// BootWait, when longer than -boot-wait, is how long its guest may
	// take to boot and fill its working set.
	BootWait time.Duration
	// Repeat: system ferry runs -repeats times in a row on this workload
	// (ping-pong), for its downtimes.
	Repeat bool
	// Verify (mode idle): the guest checks every page of its working set
	// against checksums taken after the fill before each report
	// (ferry.verify=1), and each migration requires the destination's
	// first report to find them all intact: a check of every run, QEMU's
	// too, outside the downtime.
	Verify bool
	// OneConnection: ferry's systems without --connections N run with
	// --connections 1 (where ferry has the flag), not ferry's default.
	OneConnection bool
}

// classicSystems run on the workloads that name no systems of their own.
var classicSystems = []string{"ferry", "ferry-no-digest", "ferry-no-clear", "qemu", "qemu-xbzrle"}

// deltaSystems attribute what ferry saves after the first pass on the
// workloads whose writes change more than a word: delta entries
// (ferry-no-delta lacks them), compression (ferry-no-compress lacks it),
// against QEMU's delta encoding, XBZRLE.
var deltaSystems = []string{"ferry", "ferry-no-delta", "ferry-no-compress", "qemu-xbzrle"}

// outrunSystems move a guest that writes new data faster than the link
// carries it: plain pre-copy (which cannot converge), auto-converge
// (ferry's default) and post-copy, for both peers.
var outrunSystems = []string{"ferry", "ferry-no-auto-converge", "ferry-postcopy", "qemu", "qemu-auto-converge", "qemu-postcopy"}

// bigSystems move the 1 GiB guest on an unlimited link: ferry on one
// connection and on -connections N, TLS off and on, against QEMU's
// default migration, multifd (2 channels, no compression) and TLS.
var bigSystems = []string{"ferry", "ferry-tls", "ferry-conns", "ferry-conns-tls", "qemu", "qemu-multifd", "qemu-tls"}

var allWorkloads = []workload{
	{Name: "random", Mode: "random", Class: "no-filter", Note: "every write changes its page"},
	{Name: "same", Mode: "same", Same: 100, Class: "filter", Note: "every write stores the value already there"},
	{Name: "mix", Mode: "mix", Same: 70, Class: "filter", Note: "70% unchanged rewrites (zeusmp ~70%)"},
	{Name: "mcf", Mode: "mix", Same: 80, Class: "filter", Note: "80% unchanged rewrites (mcf ~80%)"},
	{Name: "memcached", Mode: "mix", Same: 45, Note: "45% unchanged rewrites (memcached, bzip2 ~45%)"},
	{Name: "hot", Mode: "hot", Class: "no-filter", Note: "all writes in a 1 MiB hot set, every write changes its page"},
	{Name: "idle", Mode: "idle", Class: "idle", Note: "working set filled, then no writes"},
	{Name: "mixpages", Mode: "mix", Same: 70, Class: "filter", Note: "70% of the pages only rewritten unchanged, the rest change 256 bytes per write", SamePages: 70, Chg: 256},
	{Name: "memcached-chg256", Mode: "mix", Same: 45, Chg: 256, Systems: deltaSystems,
		Note: "= memcached, but a changing write alters 256 bytes (delta entries, XBZRLE)"},
	{Name: "random-chg1024", Mode: "random", Chg: 1024, Systems: deltaSystems,
		Note: "every write changes 1024 bytes of its page (delta entries, XBZRLE)"},
	{Name: "fill-mixed", Mode: "idle", Fill: "mixed", Class: "idle",
		Systems: []string{"ferry", "ferry-zstd", "ferry-no-compress", "qemu", "qemu-multifd-zstd"},
		Note:    "working set filled with 40% text, 30% sparse, 30% random pages, then no writes (first-pass compression)"},
	{Name: "rewrite", Mode: "rewrite", Systems: outrunSystems,
		Note: "every write replaces a whole page with new data (78 MiB/s at 20000 writes/s): nothing to filter, delta or compress"},
	// big fills its working set with the mixed fill: ferry compresses by
	// default, and on the copy fill (each page almost a copy of the one
	// before) zstd shrinks 540 MiB to 60-200 MiB, which real memory would
	// not do; QEMU's default migration and multifd do not compress.
	{Name: "big", Mode: "idle", Fill: "mixed", Mem: "1G", WS: "512M", Caps: []int{0}, Repeat: true, Systems: bigSystems,
		BootWait: 40 * time.Minute, Verify: true, OneConnection: true,
		Note: "1 GiB guest, 512 MiB working set filled (mixed: 40% text, 30% sparse, 30% random pages), then no writes; unlimited link only"},
	{Name: "zeusmp", Mode: "mix", Same: 70, Class: "filter", Note: "= mix"},
	{Name: "bzip2", Mode: "mix", Same: 45, Note: "= memcached"},
	// Not in the default list: the two delta workloads on the mixed fill,
	// where compression meets realistic contents.
	{Name: "memcached-chg256-mixed", Mode: "mix", Same: 45, Chg: 256, Fill: "mixed", Systems: deltaSystems,
		Note: "= memcached-chg256 on the mixed fill"},
	{Name: "random-chg1024-mixed", Mode: "random", Chg: 1024, Fill: "mixed", Systems: deltaSystems,
		Note: "= random-chg1024 on the mixed fill"},
}

// planned is a workload and the systems to run on it.
type planned struct {
	w       workload
	systems []system
}

// runs reports whether sys is one of w's systems.
func (w workload) runs(sys string) bool {
	list := w.Systems
	if list == nil {
		list = classicSystems
	}
	for _, s := range list {
		if s == sys {
			return true
		}
	}
	return false
}

// mem is the workload's guest memory; pages, its count of 4 KiB pages.
func (w workload) mem(b *bench) string {
	if w.Mem != "" {
		return w.Mem
	}
	return b.mem
}

func (w workload) pages(b *bench) uint64 {
	n, _ := parseSize(w.mem(b))
	return n / 4096
}

// caps are the bandwidth caps the workload runs at: its own, or -bws.
func (w workload) caps(all []int) []int {
	if w.Caps != nil {
		return w.Caps
	}
	return all
}

func (w workload) cmdline(b *bench) string {
	ws := b.ws
	if w.WS != "" {
		ws = w.WS
	}
	s := fmt.Sprintf("ferry.run=dirty ferry.mode=%s ferry.ws=%s ferry.rate=%d", w.Mode, ws, b.rate)
	switch w.Mode {
	case "mix":
		if w.SamePages > 0 {
			s += fmt.Sprintf(" ferry.samepages=%d", w.SamePages)
		} else {
			s += fmt.Sprintf(" ferry.same=%d", w.Same)
		}
	case "hot":
		s += " ferry.hot=" + b.hot
	}
	if w.Chg > 8 {
		s += fmt.Sprintf(" ferry.chg=%d", w.Chg)
	}
	if w.Fill != "" {
		s += " ferry.fill=" + w.Fill
	}
	if w.Verify {
		s += " ferry.verify=1"
	}
	return s
}

type system struct {
	name       string
	family     string // ferry or qemu
	ferryFlags []string
	xbzrle     bool
	multifd    bool   // QEMU multifd, 2 channels
	multifdZ   string // multifd-compression ("" : none)
	// tls: ferry --tls-cert/--tls-key/--tls-ca on both sides (mutual TLS);
	// QEMU tls-creds (x509, verify-peer=on) on both sides. The same CA
	// (ferry certs) signs both peers' certificates.
	tls bool
	// connections: ferry migrate --connections N (-connections); run only
	// if the ferry binary has the flag.
	connections bool
	// QEMU: the auto-converge capability (QEMU's throttle defaults);
	// postcopy-ram on both sides, and migrate-start-postcopy once the
	// first pass is done.
	autoConverge bool
	qemuPostcopy bool
}

var allSystems = []system{
	{name: "ferry", family: "ferry"},
	{name: "ferry-no-digest", family: "ferry", ferryFlags: []string{"--no-digest"}},
	{name: "ferry-no-clear", family: "ferry", ferryFlags: []string{"--no-clear-before-send"}},
	{name: "ferry-no-delta", family: "ferry", ferryFlags: []string{"--no-delta"}},
	{name: "ferry-no-compress", family: "ferry", ferryFlags: []string{"--compress", "off"}},
	// ferry-zstd compresses every record (--compress zstd), whatever
	// the auto rule would decide.
	{name: "ferry-zstd", family: "ferry", ferryFlags: []string{"--compress", "zstd"}},
	{name: "ferry-no-auto-converge", family: "ferry", ferryFlags: []string{"--no-auto-converge"}},
	{name: "ferry-postcopy", family: "ferry", ferryFlags: []string{"--postcopy"}},
	{name: "ferry-tls", family: "ferry", tls: true},
	{name: "ferry-conns", family: "ferry", connections: true},
	{name: "ferry-conns-tls", family: "ferry", connections: true, tls: true},
	{name: "qemu", family: "qemu"},
	{name: "qemu-xbzrle", family: "qemu", xbzrle: true},
	{name: "qemu-multifd-zstd", family: "qemu", multifd: true, multifdZ: "zstd"},
	{name: "qemu-multifd", family: "qemu", multifd: true},
	{name: "qemu-tls", family: "qemu", tls: true},
	{name: "qemu-auto-converge", family: "qemu", autoConverge: true},
	{name: "qemu-postcopy", family: "qemu", qemuPostcopy: true},
}

func findSystem(name string) (system, bool) {
	for _, s := range allSystems {
		if s.name == name {
			return s, true
		}
	}
	return system{}, false
}

func findWorkload(name string) (workload, bool) {
	for _, w := range allWorkloads {
		if w.Name == name {
			return w, true
		}
	}
	return workload{}, false
}

// postcopy reports whether the system may switch to post-copy.
func (s system) postcopy() bool {
	if s.family == "qemu" {
		return s.qemuPostcopy
	}
	for _, f := range s.ferryFlags {
		if f == "--postcopy" || f == "--postcopy-after" {
			return true
		}
	}
	return false
}
