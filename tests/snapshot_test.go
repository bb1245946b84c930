package tests

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

var reHashRestored = regexp.MustCompile(`memory hash \(restored before start\): ([0-9a-f]+)`)

// TestSnapshotRestore, on one guest: `ferry snapshot` pauses, saves and
// resumes it (the counter goes on); damaged copies of that file (a flipped
// bit, a truncation, a wrong magic) are refused by `ferry restore` with a
// message naming the file and the fault, and nothing runs; `ferry snapshot
// --stop` saves and ends the VM, and `ferry restore` runs it again: equal
// memory hashes, the counter continues from where it stopped, a new VM id.
func TestSnapshotRestore(t *testing.T) {
	needGuest(t)
	h := &hosts{addr: [2]string{"127.0.0.1", "127.0.0.1"}}
	g := bootCounter(t, h, 0, "ferry.run=counter")
	dir := t.TempDir()

	t.Log("== snapshot of the running guest")
	live := filepath.Join(dir, "live.snap")
	from := g.p.count()
	out, code := runFerry(t, "snapshot", "--api-socket", g.sock, "--to", live)
	if code != 0 || !strings.Contains(out, "the guest runs on") {
		t.Fatalf("ferry snapshot: exit %d: %s", code, out)
	}
	t.Logf("ferry snapshot: %s", strings.TrimSpace(out))
	expectRunning(t, g, from)
	if st, err := os.Stat(live); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("snapshot file: %v (mode %v), want it readable by its owner only", err, st.Mode())
	}
	file, err := os.ReadFile(live)
	if err != nil {
		t.Fatal(err)
	}

	t.Log("== damaged snapshots are refused")
	for _, c := range []struct {
		name, why string
		data      []byte
	}{
		{"bitflip", `record \d+ at byte \d+: .*checksum mismatch`, flipBit(file, len(file)/2)},
		{"truncated", `truncated`, file[:len(file)/2]},
		{"magic", `not a ferry snapshot: it starts with "XRRYSNAP"`, append([]byte("XRRYSNAP"), file[8:]...)},
		{"empty", `not a ferry snapshot`, nil},
	} {
		bad := filepath.Join(dir, c.name+".snap")
		if err := os.WriteFile(bad, c.data, 0o600); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		out, code := runFerry(t, "restore", bad, "--api-socket", filepath.Join(dir, c.name+".sock"))
		if code != 1 || !strings.Contains(out, bad) || !strings.Contains(out, "nothing was started") ||
			!regexp.MustCompile(c.why).MatchString(out) || reCounter.MatchString(out) || strings.Contains(out, "console attached") {
			t.Fatalf("ferry restore of a %s snapshot: exit %d, want 1 naming %s and /%s/:\n%s", c.name, code, bad, c.why, out)
		}
		t.Logf("%s: %s (%v)", c.name, strings.TrimSpace(out), time.Since(start).Round(time.Millisecond))
	}

	t.Log("== snapshot --stop, then restore")
	var before struct{ ID string }
	st, _ := runFerry(t, "status", "--api-socket", g.sock)
	if err := json.Unmarshal([]byte(st), &before); err != nil || before.ID == "" {
		t.Fatalf("status: %s", st)
	}
	final := filepath.Join(dir, "final.snap")
	from = g.p.count()
	out, code = runFerry(t, "snapshot", "--api-socket", g.sock, "--to", final, "--stop")
	if code != 0 || !strings.Contains(out, "the VM has ended") {
		t.Fatalf("ferry snapshot --stop: exit %d: %s", code, out)
	}
	if c := g.p.wait(time.Minute); c != 0 {
		t.Fatalf("the saved VM's ferry exited %d, want 0", c)
	}
	last := lastCounter(t, g.p)
	hs, _ := g.p.waitFor(reHashSrc, from, time.Second)

	sock := filepath.Join(dir, "restored.sock")
	r := start(t, "restore", final, "--api-socket", sock, "--memory-hash")
	hr, _ := r.waitFor(reHashRestored, 0, time.Minute)
	if a, b := reHashSrc.FindStringSubmatch(hs)[1], reHashRestored.FindStringSubmatch(hr)[1]; a != b {
		t.Fatalf("guest memory differs: saved %s, restored %s", a, b)
	}
	line, _ := r.waitFor(reCounter, 0, time.Minute)
	first := counterValue(t, line)
	if first <= last || first > last+2 {
		t.Fatalf("counter was %d when saved, %d first after restore: want %d..%d", last, first, last+1, last+2)
	}
	r.waitFor(regexp.MustCompile(fmt.Sprintf(`^FERRY-COUNTER %d$`, first+3)), 0, time.Minute)
	var after struct{ ID, State string }
	st, _ = runFerry(t, "status", "--api-socket", sock)
	if err := json.Unmarshal([]byte(st), &after); err != nil || after.State != "running" || after.ID == "" || after.ID == before.ID {
		t.Fatalf("restored VM status %s: want running with a new VM id (saved VM: %s)", st, before.ID)
	}
	t.Logf("counter %d when saved, %d after restore; memory hash %s on both sides", last, first, reHashSrc.FindStringSubmatch(hs)[1])
}

func flipBit(b []byte, at int) []byte {
	c := append([]byte(nil), b...)
	c[at] ^= 0x10
	return c
}
