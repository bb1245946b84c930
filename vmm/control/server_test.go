package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
)

// call sends one request to the socket and returns the status and body.
func call(t *testing.T, sock, method, path, body string) (int, string) {
	t.Helper()
	cl := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	req, _ := http.NewRequest(method, "http://ferry"+path, strings.NewReader(body))
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestServer drives the API over its unix socket: the JSON of each answer,
// and the HTTP status of refused and bad requests.
func TestServer(t *testing.T) {
	f := newFake()
	c := New(f)
	sock := filepath.Join(t.TempDir(), "api.sock")
	s, err := Serve(sock, c)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := Serve(sock, c); err == nil || !strings.Contains(err.Error(), "another process is serving it") {
		t.Errorf("a second server on the socket: %v", err)
	}

	code, body := call(t, sock, "GET", "/v1/status", "")
	var st map[string]any
	if err := json.Unmarshal([]byte(body), &st); code != 200 || err != nil ||
		st["state"] != "running" || st["id"] != f.ID() || st["vcpus"] != 2.0 || st["memory_bytes"] != float64(128<<20) {
		t.Fatalf("status: %d %s", code, body)
	}
	if code, body := call(t, sock, "POST", "/v1/pause", ""); code != 200 || !strings.Contains(body, `"state":"paused"`) {
		t.Fatalf("pause: %d %s", code, body)
	}
	if code, body := call(t, sock, "POST", "/v1/migrate", `{"to":"h:1"}`); code != 200 || !strings.Contains(body, "link cut (the guest stays paused here)") {
		t.Errorf("failed migration of a paused guest: %d %s", code, body)
	}
	if code, body := call(t, sock, "POST", "/v1/resume", ""); code != 200 || !strings.Contains(body, `"state":"running"`) {
		t.Fatalf("resume: %d %s", code, body)
	}
	for _, bad := range []struct{ path, body, want string }{
		{"/v1/migrate", `{"to":""}`, "no destination"},
		{"/v1/migrate", `{"to":"h:1","on_timeout":"later"}`, "on_timeout"},
		{"/v1/migrate", `not json`, "migrate request"},
		{"/v1/snapshot", `{"path":"rel.snap"}`, "not absolute"},
	} {
		if code, body := call(t, sock, "POST", bad.path, bad.body); code != 400 || !strings.Contains(body, bad.want) {
			t.Errorf("POST %s %s: %d %s, want 400 with %q", bad.path, bad.body, code, body, bad.want)
		}
	}
	if code, body := call(t, sock, "POST", "/v1/snapshot", `{"path":"/x.snap"}`); code != 200 || !strings.Contains(body, `"path":"/x.snap"`) {
		t.Errorf("snapshot: %d %s", code, body)
	}
	f.snapErr = func() error { return errors.New("disk full") }
	if code, body := call(t, sock, "POST", "/v1/snapshot", `{"path":"/x.snap"}`); code != 500 || !strings.Contains(body, "disk full") {
		t.Errorf("failed snapshot: %d %s", code, body)
	}

	// A migration streams progress lines, then the outcome.
	code, body = call(t, sock, "POST", "/v1/migrate", `{"to":"h:1"}`)
	var events []MigrateEvent
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		var ev MigrateEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("migrate answer line %q: %v", sc.Text(), err)
		}
		events = append(events, ev)
	}
	if code != 200 || len(events) != 2 || events[0].Progress == nil ||
		events[1].Outcome != OutcomeFailed || !strings.Contains(events[1].Error, "link cut (the guest keeps running here)") {
		t.Fatalf("migrate: %d %s", code, body)
	}
	f.outcome = func() error { return nil }
	if code, body := call(t, sock, "POST", "/v1/migrate", `{"to":"h:1"}`); code != 200 || !strings.Contains(body, `"stats":{`) {
		t.Fatalf("migrate: %d %s", code, body)
	}
	if code, body := call(t, sock, "GET", "/v1/status", ""); code != 200 || !strings.Contains(body, `"state":"stopped"`) {
		t.Errorf("status after the migration: %d %s", code, body)
	}
	if code, body := call(t, sock, "POST", "/v1/pause", ""); code != 409 || !strings.Contains(body, "the VM has stopped") {
		t.Errorf("pause after the migration: %d %s", code, body)
	}
}
