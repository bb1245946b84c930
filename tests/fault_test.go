package tests

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ferryvmm/ferry/migrate"
)

// Fault injection: one guest, booted once, is migrated back and forth
// between two ferry processes on loopback while a proxy breaks each attempt
// at a different point. After every fault: ferry migrate exits non-zero
// with a reason, the source guest runs (or, when the outcome is unknown,
// stays paused and never runs on both sides), the destination runs no
// guest and keeps waiting, and a migration through that same destination
// then succeeds with equal memory hashes.

var (
	reDstFailed = regexp.MustCompile(`(incoming migration from .* failed: .*; no guest runs here|refused a connection from .*); still waiting`)
	reReceiving = regexp.MustCompile(`receiving a guest from`)
)

type faultCase struct {
	name  string
	f     fault
	args  []string // extra ferry migrate flags
	code  int      // ferry migrate's exit status
	srcRe string   // in ferry migrate's output
	dstRe string   // in the destination's failure line
}

func faultCases() []faultCase {
	pageData := int64(migrate.HeaderSize + 9 + 16 + 100) // inside the first entry of a PAGES record
	return []faultCase{
		{"handshake: HELLO cut after 10 bytes", fault{rec: migrate.RecHello, nth: 1, off: 10}, nil,
			1, `during handshake`, `truncated`},
		{"handshake: HELLO-ACK cut", fault{toSource: true, rec: migrate.RecHelloAck, nth: 1}, nil,
			1, `during handshake`, `AwaitPagesOrState`},
		{"iteration 0: cut after 4 MiB", fault{off: 4 << 20}, nil,
			1, `migration failed`, `truncated|AwaitPagesOrState`},
		{"iteration 2 (pre-copy): cut", fault{rec: migrate.RecIterationStart, nth: 3, off: 3000},
			[]string{"--downtime", "1ms", "--max-bandwidth", "32MiB/s", "--max-iterations", "4", "--on-timeout", "force"},
			1, `migration failed`, `truncated|AwaitPagesOrState`},
		{"stop-and-copy: cut inside STATE", fault{rec: migrate.RecState, nth: 1, off: 2000}, nil,
			1, `migration failed`, `truncated`},
		{"READY cut (before COMMIT)", fault{toSource: true, rec: migrate.RecReady, nth: 1}, nil,
			1, `READY`, `AwaitCommit`},
		{"stall after 2 MiB", fault{off: 2 << 20, action: stall}, nil,
			1, `timeout`, `timeout`},
		{"bit flipped in a page", fault{rec: migrate.RecPages, nth: 20, off: pageData, action: flip, bit: 0x04}, nil,
			1, `checksum`, `checksum`},
		{"COMMIT cut (outcome unknown, guest not started)", fault{rec: migrate.RecCommit, nth: 1}, nil,
			exitOutcomeUnknown, `outcome unknown: the guest may be running on the destination`, `AwaitCommit`},
	}
}

// exitOutcomeUnknown is ferry migrate's status when COMMIT went unanswered.
const exitOutcomeUnknown = 3

func TestMigrateFaults(t *testing.T) {
	needGuest(t)
	h := &hosts{addr: [2]string{"127.0.0.1", "127.0.0.1"}}
	h.makeCerts(t)
	cur := bootCounter(t, h, 0, dirtyCmdline)
	side := 1
	plainReceiver := func() (*guest, string) {
		return receiverAt(t, h, side, nil, "--idle-timeout", "3s")
	}
	dst, addr := plainReceiver()
	for _, c := range faultCases() {
		t.Logf("== fault: %s", c.name)
		px := newFaultProxy(t, addr, c.f)
		srcFrom, dstFrom := cur.p.count(), dst.p.count()
		out, code := runFerry(t, append([]string{"migrate", "--api-socket", cur.sock, "--to", px.addr()}, c.args...)...)
		if !px.didFire() {
			t.Fatalf("%s: the fault was never injected; ferry migrate exit %d:\n%s", c.name, code, out)
		}
		if code != c.code || !regexp.MustCompile(c.srcRe).MatchString(out) {
			t.Fatalf("%s: ferry migrate exit %d, want %d with %q:\n%s", c.name, code, c.code, c.srcRe, out)
		}
		t.Logf("ferry migrate (exit %d): %s", code, strings.TrimSpace(lastLine(out)))
		line, _ := dst.p.waitFor(reDstFailed, dstFrom, 30*time.Second)
		if !regexp.MustCompile(c.dstRe).MatchString(line) {
			t.Fatalf("%s: destination said %q, want it to mention %q", c.name, line, c.dstRe)
		}
		t.Logf("destination: %s", line)
		px.close()
		noGuestSince(t, dst, dstFrom)
		if code == exitOutcomeUnknown {
			// The guest never started there (COMMIT was lost): the operator
			// checks, then resumes the paused source.
			expectPaused(t, cur)
			if out, code := runFerry(t, "resume", "--api-socket", cur.sock); code != 0 {
				t.Fatalf("ferry resume: exit %d: %s", code, out)
			}
		}
		expectRunning(t, cur, srcFrom)
		// The same destination, still waiting, now takes the guest.
		migratePlain(t, cur, dst, addr)
		cur, side = dst, 1-side
		dst, addr = plainReceiver()
	}

	t.Log("== destination killed during a TLS migration, while scanned, probed and asked for a second migration")
	dst.p.kill()
	dst, addr = receiverAt(t, h, side, h.tls(side))
	destinationKilled(t, h, cur, dst, addr)
	dst, addr = receiverAt(t, h, side, h.tls(side))
	migrateTo(t, h, cur, dst, addr)
	cur, side = dst, 1-side

	t.Log("== DONE-ACK cut: the guest runs on the destination, the source stays paused")
	dst, addr = plainReceiver()
	doneAckLost(t, cur, dst, addr)
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	return s[strings.LastIndexByte(s, '\n')+1:]
}

// expectRunning checks that g's guest runs: status running, and the
// counter advances past its last value.
func expectRunning(t *testing.T, g *guest, from int) {
	t.Helper()
	out, _ := runFerry(t, "status", "--api-socket", g.sock)
	if !strings.Contains(out, `"state":"running"`) {
		t.Fatalf("source status after the failed migration: %s", out)
	}
	n := lastCounter(t, g.p)
	g.p.waitFor(regexp.MustCompile(fmt.Sprintf(`^FERRY-COUNTER %d$`, n+3)), from, 30*time.Second)
}

// expectPaused checks that g's guest stays paused: status paused and no
// counter line for a second.
func expectPaused(t *testing.T, g *guest) {
	t.Helper()
	out, _ := runFerry(t, "status", "--api-socket", g.sock)
	if !strings.Contains(out, `"state":"paused"`) {
		t.Fatalf("source status after an unknown outcome: %s, want paused", out)
	}
	n := lastCounter(t, g.p)
	time.Sleep(1500 * time.Millisecond)
	if m := lastCounter(t, g.p); m != n {
		t.Fatalf("the paused source counted on (%d → %d)", n, m)
	}
}

// noGuestSince checks that the destination started no guest.
func noGuestSince(t *testing.T, g *guest, from int) {
	t.Helper()
	g.p.mu.Lock()
	defer g.p.mu.Unlock()
	for _, l := range g.p.lines[from:] {
		if reRunning.MatchString(l) || reCounter.MatchString(l) {
			t.Fatalf("the destination started the guest after a failed migration: %q", l)
		}
	}
}

// destinationKilled: connections that are not migrations (a port scan,
// garbage, a silent peer, a second source) do not disturb a receiver;
// then the receiver dies mid-migration and the source keeps its guest.
func destinationKilled(t *testing.T, h *hosts, src, dst *guest, addr string) {
	t.Helper()
	from, srcFrom := dst.p.count(), src.p.count()
	if c, err := net.Dial("tcp", addr); err == nil { // port scan
		c.Close()
	}
	if c, err := net.Dial("tcp", addr); err == nil { // not TLS
		fmt.Fprintf(c, "GET / HTTP/1.0\r\n\r\n")
		io.Copy(io.Discard, c)
		c.Close()
	}
	dst.p.waitFor(regexp.MustCompile(`refused a connection .*TLS handshake`), from, 30*time.Second)
	silent, err := net.Dial("tcp", addr) // holds a connection, says nothing
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()

	done := make(chan string, 1)
	go func() {
		out, code := runFerry(t, append([]string{"migrate", "--api-socket", src.sock, "--to", addr, "--max-bandwidth", "2MiB/s"}, h.tls(src.host)...)...)
		done <- fmt.Sprintf("exit %d: %s", code, out)
	}()
	dst.p.waitFor(reReceiving, from, 30*time.Second)

	// A second source is refused while the first migration runs.
	files := migrate.TLSFiles{Cert: h.tls(0)[1], Key: h.tls(0)[3], CA: h.tls(0)[5]}
	cfg, err := migrate.ClientTLSConfig(files, addr)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = migrate.Send(ctx, &tinySource{}, tlsClient(conn, cfg), migrate.Options{})
	conn.Close()
	var re *migrate.RemoteError
	if !errors.As(err, &re) || !strings.Contains(re.Msg, "another migration into this receiver is in progress") {
		t.Fatalf("second source during a migration: %v, want it refused as busy", err)
	}

	time.Sleep(time.Second)
	dst.p.kill()
	var res string
	select {
	case res = <-done:
	case <-time.After(2 * time.Minute):
		t.Fatal("ferry migrate did not return after its destination died")
	}
	if !strings.HasPrefix(res, "exit 1:") || !strings.Contains(res, "keeps running") {
		t.Fatalf("ferry migrate after the destination died: %s; want exit 1 and the guest kept", res)
	}
	t.Logf("ferry migrate: %s", lastLine(res))
	expectRunning(t, src, srcFrom)
}

// doneAckLost: the destination gets COMMIT and starts the guest, DONE-ACK
// never reaches the source: the source stays paused (exit 3), the guest
// runs only on the destination, with the memory the source had.
func doneAckLost(t *testing.T, src, dst *guest, addr string) {
	t.Helper()
	px := newFaultProxy(t, addr, fault{toSource: true, rec: migrate.RecDoneAck, nth: 1})
	srcFrom := src.p.count()
	out, code := runFerry(t, "migrate", "--api-socket", src.sock, "--to", px.addr())
	if code != exitOutcomeUnknown || !strings.Contains(out, "outcome unknown") || !strings.Contains(out, "ferry resume") {
		t.Fatalf("ferry migrate: exit %d, want %d (outcome unknown):\n%s", code, exitOutcomeUnknown, out)
	}
	t.Logf("ferry migrate (exit %d): %s", code, lastLine(out))
	dst.p.waitFor(reRunning, 0, 30*time.Second)
	expectPaused(t, src)
	last := lastCounter(t, src.p)
	sameMemory(t, src, srcFrom, dst)
	line, _ := dst.p.waitFor(reCounter, 0, time.Minute)
	if first := counterValue(t, line); first <= last || first > last+10 {
		t.Fatalf("counter %d on the source, %d first on the destination", last, first)
	}
	dst.p.waitFor(regexp.MustCompile(fmt.Sprintf(`^FERRY-COUNTER %d$`, last+5)), 0, time.Minute)
	if m := lastCounter(t, src.p); m != last {
		t.Fatalf("the source counted on (%d → %d) while the destination runs the guest", last, m)
	}
}

func tlsClient(c net.Conn, cfg *tls.Config) net.Conn { return tls.Client(c, cfg) }

// tinySource is a 1 MiB VM that exists only to knock at a receiver.
type tinySource struct{ mem [1 << 20]byte }

func (s *tinySource) Info() migrate.VMInfo {
	return migrate.VMInfo{Regions: []migrate.Region{{GPA: 0, Size: 1 << 20}}, VCPUs: 1, Devices: []string{"serial"}}
}
func (s *tinySource) Memory(int) []byte                         { return s.mem[:] }
func (s *tinySource) StartDirtyLog() (bool, error)              { return false, nil }
func (s *tinySource) StopDirtyLog() error                       { return nil }
func (s *tinySource) DirtyLog(int, []uint64) error              { return nil }
func (s *tinySource) ClearDirtyLog(int, uint64, []uint64) error { return nil }
func (s *tinySource) Pause() error                              { return nil }
func (s *tinySource) Resume() error                             { return nil }
func (s *tinySource) State() ([]byte, error)                    { return nil, errors.New("tiny source has no state") }
