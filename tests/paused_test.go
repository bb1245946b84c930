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

var (
	reArrivedPaused = regexp.MustCompile(`guest received from .*, paused as it was on the source`)
	reAnyCounter    = regexp.MustCompile(`(?m)^FERRY-COUNTER \d+$`)
)

// pauseGuest pauses g with `ferry pause` and returns its last counter.
func pauseGuest(t *testing.T, g *guest) int {
	t.Helper()
	if out, code := runFerry(t, "pause", "--api-socket", g.sock); code != 0 || !strings.Contains(out, `"state":"paused"`) {
		t.Fatalf("ferry pause: exit %d: %s", code, out)
	}
	return lastCounter(t, g.p)
}

// stillPaused checks that g's status says paused and that its counter
// does not move past last (none printed if last < 0) for a while.
func stillPaused(t *testing.T, g *guest, last int, what string) {
	t.Helper()
	if out, _ := runFerry(t, "status", "--api-socket", g.sock); !strings.Contains(out, `"state":"paused"`) {
		t.Fatalf("%s: status %s, want paused", what, out)
	}
	time.Sleep(3 * time.Second)
	n := -1
	if reAnyCounter.MatchString(g.p.output()) {
		n = lastCounter(t, g.p)
	}
	if n != last {
		t.Fatalf("%s: the paused guest counted (last counter %d, %d now)", what, last, n)
	}
}

// resumedFrom resumes g and checks that its counter goes on from last.
func resumedFrom(t *testing.T, g *guest, last int, what string) {
	t.Helper()
	from := g.p.count()
	if out, code := runFerry(t, "resume", "--api-socket", g.sock); code != 0 || !strings.Contains(out, `"state":"running"`) {
		t.Fatalf("%s: ferry resume: exit %d: %s", what, code, out)
	}
	line, _ := g.p.waitFor(reCounter, from, time.Minute)
	if first := counterValue(t, line); first != last+1 {
		t.Fatalf("%s: the counter was %d when paused, %d first after resume: want %d", what, last, first, last+1)
	}
	g.p.waitFor(regexp.MustCompile(fmt.Sprintf(`^FERRY-COUNTER %d$`, last+4)), from, time.Minute)
}

// TestMigratePausedGuest: a guest paused with `ferry pause` is migrated.
// A destination without --api-socket (nothing could resume it there)
// refuses it, and it stays paused on the source. The next migration sends
// it in one pass; it arrives paused (status paused, no counter) with the
// memory of the paused source, and counts on from where it stopped only
// after `ferry resume` there.
func TestMigratePausedGuest(t *testing.T) {
	needGuest(t)
	h := twoHosts(t)
	src := bootCounter(t, h, 0, "ferry.run=counter")
	last := pauseGuest(t, src)
	t.Logf("paused at counter %d", last)

	t.Log("== a destination without --api-socket refuses the paused guest")
	portSeq++
	addr := net.JoinHostPort(h.addr[1], strconv.Itoa(portSeq))
	bare := h.startOn(t, 1, append([]string{"receive", "--listen", addr}, h.tls(1)...)...)
	bare.waitFor(reWaiting, 0, 30*time.Second)
	out, code := runFerry(t, append([]string{"migrate", "--api-socket", src.sock, "--to", addr}, h.tls(0)...)...)
	if code != 1 || !strings.Contains(out, "no --api-socket") || !strings.Contains(out, "the guest stays paused here") {
		t.Fatalf("ferry migrate to a receiver without --api-socket: exit %d, want 1 saying why:\n%s", code, out)
	}
	t.Logf("refused: %s", strings.TrimSpace(lastLine(out)))
	bare.kill()
	stillPaused(t, src, last, "the source after the refused migration")

	t.Log("== migrate the paused guest")
	dst, addr := receiver(t, h, 1)
	from := src.p.count()
	stats := filepath.Join(t.TempDir(), "stats.json")
	out, code = runFerry(t, append([]string{"migrate", "--api-socket", src.sock, "--to", addr, "--stats-json", stats}, h.tls(0)...)...)
	if code != 0 || !strings.Contains(out, "sent in one pass, it stays paused") {
		t.Fatalf("ferry migrate of the paused guest: exit %d:\n%s", code, out)
	}
	t.Logf("ferry migrate:\n%s", out)
	if c := src.p.wait(time.Minute); c != 0 {
		t.Fatalf("source ferry exited %d after the migration, want 0", c)
	}
	if n := lastCounter(t, src.p); n != last {
		t.Fatalf("the paused source counted during the migration: %d → %d", last, n)
	}
	dst.p.waitFor(reArrivedPaused, 0, 30*time.Second)
	sameMemory(t, src, from, dst)
	var st struct {
		Iterations []struct {
			StopAndCopy bool `json:"stop_and_copy"`
		} `json:"iterations"`
		SourcePaused bool `json:"source_paused"`
	}
	if b, err := os.ReadFile(stats); err != nil || json.Unmarshal(b, &st) != nil ||
		len(st.Iterations) != 1 || !st.Iterations[0].StopAndCopy || !st.SourcePaused {
		t.Fatalf("--stats-json %s (%v): want one stop-and-copy pass of a paused source", b, err)
	}

	stillPaused(t, dst, -1, "the destination before resume")
	resumedFrom(t, dst, last, "the destination")
}

// TestSnapshotPausedGuest: `ferry snapshot` of a paused guest keeps it
// paused and saves it as paused. `ferry restore` brings it back paused:
// refused without --api-socket (nothing could resume it), paused with
// one until `ferry resume`, then counting on from where it stopped; with
// --run it runs at once.
func TestSnapshotPausedGuest(t *testing.T) {
	needGuest(t)
	h := &hosts{addr: [2]string{"127.0.0.1", "127.0.0.1"}}
	g := bootCounter(t, h, 0, "ferry.run=counter")
	last := pauseGuest(t, g)
	dir := t.TempDir()
	file := filepath.Join(dir, "paused.snap")
	out, code := runFerry(t, "snapshot", "--api-socket", g.sock, "--to", file)
	if code != 0 || !strings.Contains(out, "stays paused (saved as paused)") {
		t.Fatalf("ferry snapshot of the paused guest: exit %d: %s", code, out)
	}
	t.Logf("ferry snapshot: %s", strings.TrimSpace(out))
	stillPaused(t, g, last, "the snapshotted guest")

	out, code = runFerry(t, "restore", file)
	if code != 1 || !strings.Contains(out, "nothing was started") || !strings.Contains(out, "--api-socket") || reAnyCounter.MatchString(out) {
		t.Fatalf("ferry restore of a paused snapshot without --api-socket: exit %d, want 1 saying why:\n%s", code, out)
	}
	t.Logf("without --api-socket: %s", strings.TrimSpace(lastLine(out)))

	r := &guest{sock: filepath.Join(dir, "restored.sock")}
	r.p = start(t, "restore", file, "--api-socket", r.sock)
	r.p.waitFor(regexp.MustCompile(`saved paused and stays paused`), 0, time.Minute)
	r.p.waitFor(regexp.MustCompile(`console attached|ferry: restored`), 0, time.Minute)
	waitSocket(t, r.sock)
	stillPaused(t, r, -1, "the restored guest before resume")
	resumedFrom(t, r, last, "the restored guest")

	run := start(t, "restore", file, "--run")
	line, _ := run.waitFor(reCounter, 0, time.Minute)
	if first := counterValue(t, line); first != last+1 {
		t.Fatalf("restore --run: first counter %d, want %d", first, last+1)
	}
	resumedFrom(t, g, last, "the snapshotted source")
}

// waitSocket waits until a control socket answers.
func waitSocket(t *testing.T, sock string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if _, code := runFerry(t, "status", "--api-socket", sock); code == 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("control socket %s does not answer", sock)
}
