package tests

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// guest is a ferry process running (or receiving) the guest, with its
// control socket.
type guest struct {
	p    *proc
	sock string
	host int
}

var (
	reHashSrc = regexp.MustCompile(`memory hash \(paused source\): ([0-9a-f]+)`)
	reHashDst = regexp.MustCompile(`memory hash \(destination before start\): ([0-9a-f]+)`)
	reDirty   = regexp.MustCompile(`^FERRY-DIRTY mode=`)
	reWaiting = regexp.MustCompile(`waiting for a migration on`)
	reRunning = regexp.MustCompile(`guest received from .* and running`)
)

// bootCounter boots the dirty workload (counter lines plus a memory writer)
// on host i and waits until it counts.
func bootCounter(t *testing.T, h *hosts, i int, cmdline string) *guest {
	t.Helper()
	g := &guest{sock: filepath.Join(t.TempDir(), "src.sock"), host: i}
	g.p = h.startOn(t, i, kernelArgs("--memory", "128M", "--api-socket", g.sock, "--memory-hash", "--cmdline", cmdline)...)
	_, n := g.p.waitFor(reCounter, 0, bootTimeout)
	g.p.waitFor(reCounter, n+3, time.Minute)
	if strings.Contains(cmdline, "ferry.run=dirty") {
		g.p.waitFor(reDirty, 0, 2*time.Minute) // the writer has filled its working set
	}
	return g
}

var portSeq = 7400

// receiver starts `ferry receive` with mutual TLS on host i and waits
// until it listens.
func receiver(t *testing.T, h *hosts, i int, extra ...string) (*guest, string) {
	t.Helper()
	return receiverAt(t, h, i, h.tls(i), extra...)
}

// receiverAt starts `ferry receive` on host i with the given TLS flags
// (none: plain TCP, loopback only).
func receiverAt(t *testing.T, h *hosts, i int, tls []string, extra ...string) (*guest, string) {
	t.Helper()
	portSeq++
	addr := net.JoinHostPort(h.addr[i], strconv.Itoa(portSeq))
	g := &guest{sock: filepath.Join(t.TempDir(), "dst.sock"), host: i}
	args := append([]string{"receive", "--listen", addr, "--api-socket", g.sock, "--memory-hash"}, tls...)
	g.p = h.startOn(t, i, append(args, extra...)...)
	g.p.waitFor(reWaiting, 0, 30*time.Second)
	return g, addr
}

type migStats struct {
	Iterations []struct {
		PagesDirty      uint64 `json:"pages_dirty"`
		PagesFalseDirty uint64 `json:"pages_false_dirty"`
		PagesZero       uint64 `json:"pages_zero"`
		PagesSent       uint64 `json:"pages_sent"`
		PagesReused     uint64 `json:"pages_reused"`
		PagesLeft       uint64 `json:"pages_left"`
		Peeks           int    `json:"peeks"`
		ThrottlePct     int    `json:"throttle_pct"`
		Bytes           int64  `json:"bytes"`
	} `json:"iterations"`
	TotalSeconds  float64 `json:"total_seconds"`
	DowntimeMS    float64 `json:"downtime_ms"`
	BytesTotal    int64   `json:"bytes_total"`
	BytesReceived int64   `json:"bytes_received"`
	Converged     *bool   `json:"converged"`
	Postcopy      bool    `json:"postcopy"`
	PagesMissing  uint64  `json:"pages_missing"`
	PagesPushed   uint64  `json:"pages_pushed"`
	PagesServed   uint64  `json:"pages_served"`
	Connections   int     `json:"connections"`
	PostcopyStats struct {
		FaultMedianUS float64 `json:"fault_median_us"`
		FaultP99US    float64 `json:"fault_p99_us"`
	} `json:"postcopy_stats"`
}

// migrateTo moves src's guest to dst over mutual TLS and checks everything
// a live migration promises: the command succeeds, the source exits 0,
// memory hashes agree, and the counter continues on the destination.
func migrateTo(t *testing.T, h *hosts, src, dst *guest, addr string, extra ...string) migStats {
	t.Helper()
	return migratePlain(t, src, dst, addr, append(h.tls(src.host), extra...)...)
}

// migrateChecked runs ferry migrate from src to dst and checks what every
// successful migration promises, whatever the guest runs: exit 0, the
// source ferry exits 0, and the memory of the paused source equals the
// destination's before it starts. It returns ferry migrate's output.
func migrateChecked(t *testing.T, src, dst *guest, addr string, extra ...string) string {
	t.Helper()
	from := src.p.count() // earlier, failed migrations may have logged a hash
	args := append([]string{"migrate", "--api-socket", src.sock, "--to", addr}, extra...)
	out, code := runFerry(t, args...)
	if code != 0 {
		t.Fatalf("ferry migrate: exit %d:\n%s", code, out)
	}
	t.Logf("ferry migrate:\n%s", out)
	if c := src.p.wait(time.Minute); c != 0 {
		t.Fatalf("source ferry exited %d after the migration, want 0", c)
	}
	dst.p.waitFor(reRunning, 0, 30*time.Second)
	sameMemory(t, src, from, dst)
	return out
}

// sameMemory compares the memory hash the source logged (at or after line
// from) with the one the destination logged before starting the guest.
func sameMemory(t *testing.T, src *guest, from int, dst *guest) {
	t.Helper()
	hs, _ := src.p.waitFor(reHashSrc, from, time.Second)
	hd, _ := dst.p.waitFor(reHashDst, 0, time.Second)
	if a, b := reHashSrc.FindStringSubmatch(hs)[1], reHashDst.FindStringSubmatch(hd)[1]; a != b {
		t.Fatalf("guest memory differs: paused source %s, destination %s", a, b)
	}
}

// migratePlain is migrateTo with the flags given (no TLS unless in extra).
func migratePlain(t *testing.T, src, dst *guest, addr string, extra ...string) migStats {
	t.Helper()
	statsFile := filepath.Join(t.TempDir(), "stats.json")
	migrateChecked(t, src, dst, addr, append([]string{"--stats-json", statsFile}, extra...)...)
	last := lastCounter(t, src.p)
	st := readStats(t, statsFile)

	// The counter goes on from the source's last value: no reset, and no
	// gap longer than the downtime (plus one period and scheduling slack).
	line, _ := dst.p.waitFor(reCounter, 0, time.Minute)
	first := counterValue(t, line)
	maxGap := 2 + int(st.DowntimeMS/100)
	if first <= last || first > last+maxGap {
		t.Fatalf("counter was %d on the source, %d first on the destination (downtime %.1f ms): want %d..%d",
			last, first, st.DowntimeMS, last+1, last+maxGap)
	}
	l2, _ := dst.p.waitFor(reCounter, 0, time.Minute)
	_ = l2
	dst.p.waitFor(regexp.MustCompile(fmt.Sprintf(`^FERRY-COUNTER %d$`, first+3)), 0, time.Minute)
	t.Logf("counter %d on the source, %d on the destination; downtime %.1f ms, %d iterations, %.1f MiB",
		last, first, st.DowntimeMS, len(st.Iterations), float64(st.BytesTotal)/(1<<20))
	return st
}

// readStats reads the --stats-json file of a migration and checks that
// it is complete.
func readStats(t *testing.T, path string) migStats {
	t.Helper()
	var st migStats
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("--stats-json: %v", err)
	}
	if err := json.Unmarshal(b, &st); err != nil || st.Converged == nil || len(st.Iterations) == 0 || st.BytesTotal <= 0 {
		t.Fatalf("--stats-json is incomplete (%v): %s", err, b)
	}
	return st
}

const dirtyCmdline = "ferry.run=dirty ferry.mode=mix ferry.ws=16M ferry.rate=2000 ferry.same=70"

// TestMigrateBetweenHosts: a guest counting and writing memory moves from
// host A to host B.
func TestMigrateBetweenHosts(t *testing.T) {
	needGuest(t)
	h := twoHosts(t)
	src := bootCounter(t, h, 0, dirtyCmdline)
	dst, addr := receiver(t, h, 1)
	st := migrateTo(t, h, src, dst, addr)
	if !*st.Converged {
		t.Errorf("migration did not converge")
	}
}

// TestMigrateConnectionsTLS: four mutual-TLS connections between the two
// hosts carry a guest that writes memory; the destination ends with the
// paused source's memory and says it took four connections.
func TestMigrateConnectionsTLS(t *testing.T) {
	needGuest(t)
	h := twoHosts(t)
	src := bootCounter(t, h, 0, dirtyCmdline)
	dst, addr := receiver(t, h, 1)
	st := migrateTo(t, h, src, dst, addr, "--connections", "4")
	if st.Connections != 4 {
		t.Fatalf("the source's stats say %d connections, want 4", st.Connections)
	}
	line, _ := dst.p.waitFor(regexp.MustCompile(`received \d+ pages .* on 4 connections`), 0, 10*time.Second)
	t.Logf("destination: %s", line)
}

// TestMigratePingPong moves the same guest A→B→A→B.
func TestMigratePingPong(t *testing.T) {
	needGuest(t)
	h := twoHosts(t)
	cur := bootCounter(t, h, 0, dirtyCmdline)
	for hop, to := range []int{1, 0, 1} {
		dst, addr := receiver(t, h, to)
		t.Logf("hop %d: host %d → host %d", hop+1, cur.host, to)
		migrateTo(t, h, cur, dst, addr)
		cur = dst
	}
}
