package tests

import (
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

var reKeeping = regexp.MustCompile(`keeping (\d+) of (\d+) pages of VM ([0-9a-f]+) for a resume`)

// TestMigrateResume: a migration cut by the fault proxy after iteration 0
// sent most of the guest is resumed with `ferry migrate --resume` into the
// same, still waiting receiver: it succeeds (memory hashes equal, counter
// continues) and sends far fewer bytes than a fresh migration of the same
// guest, which the test measures first (host A → B) and logs next to the
// resumed one (B → A). Then the same over mutual TLS (A → B), where a
// resume from another certificate of the same CA is refused first.
//
// The guest runs the dirty workload of the other migration tests (counter
// plus a writer rewriting a 16 MiB working set), so some of what the
// destination kept is stale when the migration resumes and is sent again.
// FERRY_RESUME_CMDLINE chooses another workload (e.g. ferry.run=counter).
func TestMigrateResume(t *testing.T) {
	needGuest(t)
	cmdline := dirtyCmdline
	if c := os.Getenv("FERRY_RESUME_CMDLINE"); c != "" {
		cmdline = c
	}
	h := &hosts{addr: [2]string{"127.0.0.1", "127.0.0.1"}}
	src := bootCounter(t, h, 0, cmdline)

	t.Log("== fresh migration A → B (the baseline)")
	dstB, addrB := receiverAt(t, h, 1, nil)
	fresh := migratePlain(t, src, dstB, addrB)
	src = dstB

	t.Log("== migration B → A, cut after 3/4 of a fresh iteration 0")
	dstA, addrA := receiverAt(t, h, 0, nil, "--idle-timeout", "5s")
	cutAt := fresh.Iterations[0].Bytes * 3 / 4
	px := newFaultProxy(t, addrA, fault{off: cutAt})
	dstFrom := dstA.p.count()
	out, code := runFerry(t, "migrate", "--api-socket", src.sock, "--to", px.addr())
	if code != 1 || !px.didFire() || !strings.Contains(out, "keeps running") {
		t.Fatalf("cut migration: exit %d (fault fired %v), want 1 with the guest kept:\n%s", code, px.didFire(), out)
	}
	t.Logf("ferry migrate (exit %d): %s", code, lastLine(out))
	line, _ := dstA.p.waitFor(reKeeping, dstFrom, 30*time.Second)
	m := reKeeping.FindStringSubmatch(line)
	kept, _ := strconv.Atoi(m[1])
	total, _ := strconv.Atoi(m[2])
	dstA.p.waitFor(reDstFailed, dstFrom, 30*time.Second)
	noGuestSince(t, dstA, dstFrom)
	px.close()
	if st, _ := runFerry(t, "status", "--api-socket", src.sock); !strings.Contains(st, `"state":"running"`) || !strings.Contains(st, m[3]) {
		t.Fatalf("source after the cut: %s (want running, VM id %s)", st, m[3])
	}
	// Most of iteration 0's bytes are its non-zero pages; the zero pages
	// (tiny ZERO entries) may come later or, when the pass stops early
	// because its rest fits the downtime budget, in the stop-and-copy.
	if nonZero := fresh.Iterations[0].PagesSent; uint64(kept) < nonZero/2 {
		t.Fatalf("the receiver kept %d of %d pages, fewer than half the %d non-zero pages of a fresh iteration 0: the cut came too early for this test",
			kept, total, nonZero)
	}
	t.Logf("destination: %s", line)

	t.Log("== ferry migrate --resume B → A")
	resumed := migratePlain(t, src, dstA, addrA, "--resume")
	dstA.p.waitFor(regexp.MustCompile(`resumed: \d+ pages were kept from the failed attempt`), dstFrom, 10*time.Second)
	it0 := resumed.Iterations[0]
	if it0.PagesReused == 0 || it0.PagesReused > uint64(kept) {
		t.Fatalf("resumed iteration 0 skipped %d pages (reused; the destination kept %d)", it0.PagesReused, kept)
	}
	if resumed.BytesTotal*2 > fresh.BytesTotal {
		t.Fatalf("the resumed migration sent %d bytes, a fresh one %d: not far fewer", resumed.BytesTotal, fresh.BytesTotal)
	}
	resumeOverTLS(t, h, dstA, cutAt)

	mb := func(b int64) string { return fmt.Sprintf("%.2f MiB", float64(b)/(1<<20)) }
	t.Logf("RESUME RESULT (%s, 128 MiB guest, %d pages): fresh migration sent %s (%d iterations, iteration 0 %s); "+
		"cut attempt sent ~%s before the cut, destination kept %d pages; resumed migration sent %s (%.1f%% of fresh; iteration 0: %d pages reused, %d sent, %d zero), received %s from the destination (KEPT records and answers)",
		cmdline, total, mb(fresh.BytesTotal), len(fresh.Iterations), mb(fresh.Iterations[0].Bytes),
		mb(cutAt), kept, mb(resumed.BytesTotal), 100*float64(resumed.BytesTotal)/float64(fresh.BytesTotal),
		it0.PagesReused, it0.PagesSent, it0.PagesZero, mb(resumed.BytesReceived))
}

// resumeOverTLS: the same over mutual TLS (the proxy cuts at a byte
// offset, which works on the encrypted stream too). The kept pages are
// handed only to the peer that sent them: a source with another
// certificate from the same CA is refused, the right one resumes.
func resumeOverTLS(t *testing.T, h *hosts, src *guest, cutAt int64) {
	t.Helper()
	t.Log("== over mutual TLS: cut, resume with another certificate (refused), resume")
	h.makeCerts(t)
	if out, code := runFerry(t, "certs", "--dir", h.certs, "--host", "otherhost"); code != 0 {
		t.Fatalf("ferry certs: %s", out)
	}
	dst, addr := receiverAt(t, h, 1, h.tls(1), "--idle-timeout", "5s")
	px := newFaultProxy(t, addr, fault{off: cutAt})
	from := dst.p.count()
	out, code := runFerry(t, append([]string{"migrate", "--api-socket", src.sock, "--to", px.addr()}, h.tls(0)...)...)
	if code != 1 || !px.didFire() {
		t.Fatalf("cut TLS migration: exit %d (fired %v):\n%s", code, px.didFire(), out)
	}
	line, _ := dst.p.waitFor(reKeeping, from, 30*time.Second)
	dst.p.waitFor(reDstFailed, from, 30*time.Second)
	px.close()
	t.Logf("destination: %s", line)

	other := append(tlsArgs(h.certs, "otherhost")[:4], "--tls-ca", h.tls(0)[5])
	out, code = runFerry(t, append([]string{"migrate", "--api-socket", src.sock, "--to", addr, "--resume"}, other...)...)
	if code != 1 || !strings.Contains(out, "received from another peer") {
		t.Fatalf("resume with another certificate: exit %d, want 1 and a refusal:\n%s", code, out)
	}
	t.Logf("another certificate: %s", lastLine(out))
	dst.p.waitFor(reDstFailed, from, 30*time.Second)
	noGuestSince(t, dst, from)
	st := migrateTo(t, h, src, dst, addr, "--resume")
	if st.Iterations[0].PagesReused == 0 {
		t.Fatal("the TLS resume reused no kept page")
	}
}
