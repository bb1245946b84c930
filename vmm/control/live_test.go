package control

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferryvmm/ferry/migrate"
)

// livePasses are three reports of iteration 0, the last one 250 of 1000
// pages in 2 s: 2 MiB/s, 6 s to the end of the pass.
var livePasses = []migrate.PassProgress{
	{Iteration: 0, PagesDone: 50, PagesTotal: 1000, Bytes: 1 << 20, Seconds: 0.5},
	{Iteration: 0, PagesDone: 120, PagesTotal: 1000, Bytes: 2 << 20, Seconds: 1},
	{Iteration: 0, PagesDone: 250, PagesTotal: 1000, Bytes: 4 << 20, Seconds: 2},
}

// gate makes f's migration stop at each step until the test lets it go
// on; reached tells the test which step it stopped at.
func gate(f *fakeMachine) (reached chan string, next chan struct{}) {
	reached, next = make(chan string), make(chan struct{})
	f.step = func(at string) {
		reached <- at
		<-next
	}
	return reached, next
}

func expectStep(t *testing.T, reached chan string, want string) {
	t.Helper()
	select {
	case at := <-reached:
		if at != want {
			t.Fatalf("the migration reached %q, want %q", at, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("the migration did not reach %q", want)
	}
}

// statusJSON is the status as GET /v1/status encodes it, decoded again.
func statusJSON(t *testing.T, st Status) map[string]any {
	t.Helper()
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestStatusShowsPass: while a pass runs, status shows where it stands
// (migration.pass, with its rate and time to its end); once the pass has
// ended, its iteration; after the migration, neither.
func TestStatusShowsPass(t *testing.T) {
	c, f := setup(t, Running)
	f.live = livePasses
	reached, next := gate(f)
	var got []migrate.PassProgress // what Migrate.Live was given
	done := make(chan error)
	go func() {
		_, err := c.Handle(ctx, Migrate{Request: MigrateRequest{To: "h:1"},
			Live: func(p migrate.PassProgress) { got = append(got, p) }})
		done <- err
	}()

	expectStep(t, reached, "pass")
	if len(got) != len(livePasses) {
		t.Errorf("Migrate.Live called %d times, want %d", len(got), len(livePasses))
	}
	m := statusJSON(t, c.Status())
	mig, _ := m["migration"].(map[string]any)
	pass, _ := mig["pass"].(map[string]any)
	want := map[string]any{"iteration": 0.0, "pages_done": 250.0, "pages_total": 1000.0, "bytes": float64(4 << 20),
		"seconds": 2.0, "rate_bytes_per_sec": float64(2 << 20), "eta_seconds": 6.0}
	if m["state"] != "migrating" || fmt.Sprint(pass) != fmt.Sprint(want) {
		t.Errorf("status during the pass: %v, want migrating with migration.pass %v", m, want)
	}
	if _, ok := mig["pages_dirty"]; ok {
		t.Errorf("status during the first pass shows an iteration: %v", mig)
	}

	next <- struct{}{}
	expectStep(t, reached, "iteration")
	m = statusJSON(t, c.Status())
	mig, _ = m["migration"].(map[string]any)
	if _, ok := mig["pages_dirty"]; !ok || mig["pass"] != nil {
		t.Errorf("status after the pass: %v, want migration with the iteration and no pass", m)
	}

	next <- struct{}{}
	if err := <-done; err == nil {
		t.Fatal("the fake migration succeeded")
	}
	if m := statusJSON(t, c.Status()); m["state"] != "running" || m["migration"] != nil {
		t.Errorf("status after the migration: %v, want running with no migration", m)
	}
}

// TestServerLiveEvents: POST /v1/migrate streams Live lines while a pass
// runs, the latest report last, then the iteration line and the outcome,
// with no Live line after the iteration's; GET /v1/status meanwhile shows
// the pass.
func TestServerLiveEvents(t *testing.T) {
	f := newFake()
	f.live = livePasses
	reached, next := gate(f)
	sock := filepath.Join(t.TempDir(), "api.sock")
	s, err := Serve(sock, New(f))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cl := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err := cl.Post("http://ferry/v1/migrate", "application/json", strings.NewReader(`{"to":"h:1"}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	read := func() MigrateEvent {
		t.Helper()
		if !sc.Scan() {
			t.Fatalf("the answer ended: %v", sc.Err())
		}
		var ev MigrateEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("answer line %q: %v", sc.Text(), err)
		}
		return ev
	}

	// The fake holds the pass until the latest report has come through.
	expectStep(t, reached, "pass")
	last := livePasses[len(livePasses)-1]
	var seen []migrate.PassProgress
	for len(seen) == 0 || seen[len(seen)-1] != last {
		ev := read()
		if ev.Live == nil {
			t.Fatalf("got %s during the pass, want Live lines up to %+v", sc.Text(), last)
		}
		if len(seen) > 0 && ev.Live.PagesDone <= seen[len(seen)-1].PagesDone {
			t.Fatalf("Live lines out of order: %+v after %+v", *ev.Live, seen[len(seen)-1])
		}
		seen = append(seen, *ev.Live)
	}
	req, _ := http.NewRequest("GET", "http://ferry/v1/status", nil)
	st, err := cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(st.Body)
	st.Body.Close()
	if !strings.Contains(string(body), `"pass":{"iteration":0,"pages_done":250,"pages_total":1000,`) ||
		!strings.Contains(string(body), `"rate_bytes_per_sec":2097152,"eta_seconds":6}`) {
		t.Errorf("status during the pass: %s", body)
	}

	next <- struct{}{}
	expectStep(t, reached, "iteration")
	next <- struct{}{}
	if ev := read(); ev.Progress == nil {
		t.Errorf("after the Live lines: %s, want the iteration line", sc.Text())
	}
	if ev := read(); ev.Outcome != OutcomeFailed {
		t.Errorf("after the iteration line: %s, want the outcome", sc.Text())
	}
	if sc.Scan() {
		t.Errorf("a line after the outcome: %s", sc.Text())
	}
}

// TestEventWriterSlowClient: a client that does not read never holds up
// Live; it gets the live line being written, at most the latest one after
// it, then the iteration line, and nothing once stopped.
func TestEventWriterSlowClient(t *testing.T) {
	// Nothing reads the pipe until the client below starts: every
	// write blocks till then.
	pr, pw := io.Pipe()
	ew := newEventWriter(pw)
	ew.start()
	live := func(i int) migrate.PassProgress {
		return migrate.PassProgress{Iteration: 1, PagesDone: uint64(i), PagesTotal: 1000}
	}
	sent := make(chan struct{})
	go func() {
		ew.Live(live(0))
		time.Sleep(50 * time.Millisecond) // the live goroutine is stuck writing it
		for i := 1; i <= 999; i++ {
			ew.Live(live(i))
		}
		close(sent)
	}()
	select {
	case <-sent:
	case <-time.After(5 * time.Second):
		t.Fatal("Live waited for the client")
	}
	emitted := make(chan struct{})
	go func() {
		ew.Emit(MigrateEvent{Progress: &migrate.IterationStats{Iteration: 1}})
		close(emitted)
	}()

	// The client reads at last.
	lines := make(chan MigrateEvent, 16)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			var ev MigrateEvent
			json.Unmarshal(sc.Bytes(), &ev)
			lines <- ev
		}
	}()

	var got []MigrateEvent
	for ev := range lines {
		got = append(got, ev)
		if ev.Progress != nil {
			break
		}
	}
	<-emitted
	ew.stop()
	ew.Live(live(1000)) // after stop: never written
	pw.Close()
	for ev := range lines {
		got = append(got, ev)
	}
	desc := fmt.Sprintf("%d lines:", len(got))
	for _, ev := range got {
		b, _ := json.Marshal(ev)
		desc += " " + string(b)
	}
	ok := len(got) >= 2 && len(got) <= 3 && got[0].Live != nil && got[0].Live.PagesDone == 0 &&
		got[len(got)-1].Progress != nil
	if len(got) == 3 && (got[1].Live == nil || got[1].Live.PagesDone != 999) {
		ok = false
	}
	if !ok {
		t.Errorf("%s; want live 0, perhaps live 999, then the iteration", desc)
	}
}

// A Status decodes back as it was encoded, both parts of "migration"
// included.
func TestMigrationStatusJSON(t *testing.T) {
	for _, m := range []*MigrationStatus{
		nil,
		{Pass: newPassStatus(livePasses[2])},
		{IterationStats: &migrate.IterationStats{Iteration: 1, PagesDirty: 7, PagesSent: 5}},
		{IterationStats: &migrate.IterationStats{Iteration: 1, PagesDirty: 7}, Pass: newPassStatus(livePasses[0])},
	} {
		in := Status{State: "migrating", ID: "x", VCPUs: 1, Migration: m}
		b, err := json.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		var out Status
		if err := json.Unmarshal(b, &out); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		if fmt.Sprintf("%+v", statusJSON(t, out)) != fmt.Sprintf("%+v", statusJSON(t, in)) ||
			(m == nil) != (out.Migration == nil) ||
			m != nil && ((m.IterationStats == nil) != (out.Migration.IterationStats == nil) || (m.Pass == nil) != (out.Migration.Pass == nil)) {
			t.Errorf("%s decoded as %+v", b, out.Migration)
		}
	}
}
