package tests

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ferryvmm/ferry/migrate"
)

// Guests that rewrite whole pages with new data faster than the link
// carries them: plain pre-copy cannot move them; auto-converge (slowing
// the guest down) and post-copy (running it on the destination at once)
// can. Every migration here checks the destination's memory hash against
// the paused source's, and that the counter goes on.

// rewriteCmdline rewrites 20,000 whole pages a second (78 MiB/s of new
// data) over a 32 MiB working set: more than the 32 MiB/s link.
const rewriteCmdline = "ferry.run=dirty ferry.mode=rewrite ferry.ws=32M ferry.rate=20000"

var capped = []string{"--max-bandwidth", "32MiB/s"}

// Without auto-converge or post-copy the guest does not migrate, and keeps
// running at the source.
func TestRewriteDoesNotConverge(t *testing.T) {
	needGuest(t)
	h := twoHosts(t)
	src := bootCounter(t, h, 0, rewriteCmdline)
	dst, addr := receiver(t, h, 1)
	from := src.p.count()
	args := append([]string{"migrate", "--api-socket", src.sock, "--to", addr, "--no-auto-converge", "--max-iterations", "5"},
		append(h.tls(0), capped...)...)
	out, code := runFerry(t, args...)
	if code != 1 || !strings.Contains(out, "did not converge") {
		t.Fatalf("ferry migrate: exit %d, want 1 with 'did not converge':\n%s", code, out)
	}
	expectRunning(t, src, from)
	noGuestSince(t, dst, 0)
}

// Auto-converge slows the guest down until pre-copy converges.
func TestRewriteAutoConverge(t *testing.T) {
	needGuest(t)
	h := twoHosts(t)
	src := bootCounter(t, h, 0, rewriteCmdline)
	dst, addr := receiver(t, h, 1)
	st := migrateTo(t, h, src, dst, addr, capped...)
	top := 0
	for _, it := range st.Iterations {
		top = max(top, it.ThrottlePct)
	}
	if !*st.Converged || top == 0 || st.DowntimeMS > 300 {
		t.Fatalf("converged %v, highest throttle %d%%, downtime %.1f ms", *st.Converged, top, st.DowntimeMS)
	}
	t.Logf("converged with the guest throttled up to %d%%, %d iterations, %.2f s, downtime %.1f ms",
		top, len(st.Iterations), st.TotalSeconds, st.DowntimeMS)
}

// Post-copy after the first pass: the guest runs on the destination at
// once, the pages it lacks follow.
func TestRewritePostcopy(t *testing.T) {
	needGuest(t)
	h := twoHosts(t)
	src := bootCounter(t, h, 0, rewriteCmdline)
	dst, addr := receiver(t, h, 1)
	st := migrateTo(t, h, src, dst, addr, append(capped, "--postcopy")...)
	if !st.Postcopy || st.PagesMissing == 0 || st.PagesPushed+st.PagesServed != st.PagesMissing || st.DowntimeMS > 300 {
		t.Fatalf("post-copy %v: %d missing, %d pushed, %d served; downtime %.1f ms", st.Postcopy, st.PagesMissing, st.PagesPushed, st.PagesServed, st.DowntimeMS)
	}
	t.Logf("post-copy: %d pages missing at the switch, %d pushed, %d asked for; fault service median %.0f us, p99 %.0f us; %.2f s in all, downtime %.1f ms",
		st.PagesMissing, st.PagesPushed, st.PagesServed, st.PostcopyStats.FaultMedianUS, st.PostcopyStats.FaultP99US, st.TotalSeconds, st.DowntimeMS)
}

// The link breaks while the missing pages are pushed: ferry migrate exits
// 4, the source stays paused (handed over: pause and resume refused), the
// guest runs on the destination and waits for pages; ferry migrate
// --resume finishes, and nothing is lost.
func TestPostcopyCutResume(t *testing.T) {
	needGuest(t)
	h := &hosts{addr: [2]string{"127.0.0.1", "127.0.0.1"}}
	h.makeCerts(t)
	src := bootCounter(t, h, 0, rewriteCmdline)
	dst, addr := receiverAt(t, h, 1, nil)
	// 4 MiB into the push: MISSING, STATE and END come first.
	px := newFaultProxy(t, addr, fault{rec: migrate.RecMissing, nth: 1, off: 4 << 20, action: cut})
	from := src.p.count()
	args := append([]string{"migrate", "--api-socket", src.sock, "--to", px.addr(), "--postcopy"}, capped...)
	out, code := runFerry(t, args...)
	if !px.didFire() || code != 4 || !strings.Contains(out, "post-copy interrupted") {
		t.Fatalf("ferry migrate: fault fired %v, exit %d, want 4 with 'post-copy interrupted':\n%s", px.didFire(), code, out)
	}
	t.Logf("cut: %s", lastLine(out))
	status, _ := runFerry(t, "status", "--api-socket", src.sock)
	if !strings.Contains(status, `"state":"handed-over"`) {
		t.Fatalf("source status after the cut: %s", status)
	}
	if out, code := runFerry(t, "resume", "--api-socket", src.sock); code == 0 || !strings.Contains(out, "--resume") {
		t.Fatalf("ferry resume of a handed-over guest: exit %d: %s", code, out)
	}
	dst.p.waitFor(reRunning, 0, 30*time.Second)

	out, code = runFerry(t, "migrate", "--api-socket", src.sock, "--to", addr, "--resume")
	if code != 0 {
		t.Fatalf("ferry migrate --resume: exit %d:\n%s", code, out)
	}
	t.Logf("ferry migrate --resume:\n%s", out)
	if c := src.p.wait(time.Minute); c != 0 {
		t.Fatalf("source ferry exited %d after the resumed post-copy, want 0", c)
	}
	sameMemory(t, src, from, dst)
	last := lastCounter(t, src.p)
	dst.p.waitFor(regexp.MustCompile(`^FERRY-COUNTER `), 0, time.Minute)
	line, i := dst.p.waitFor(reCounter, 0, time.Minute)
	if first := counterValue(t, line); first <= last || first > last+50 {
		t.Fatalf("counter %d on the source, %d first on the destination", last, first)
	}
	dst.p.waitFor(reCounter, i+3, time.Minute)
}
