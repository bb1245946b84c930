package main

import (
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestFlagsFirst(t *testing.T) {
	for _, c := range []struct{ in, want []string }{
		{[]string{"ferry", "restore", "f.snap", "--api-socket", "/s", "--memory-hash"},
			[]string{"ferry", "restore", "--api-socket", "/s", "--memory-hash", "--", "f.snap"}},
		{[]string{"ferry", "restore", "-v", "f.snap", "--max-cpus=4"},
			[]string{"ferry", "restore", "-v", "--max-cpus=4", "--", "f.snap"}},
		{[]string{"ferry", "restore", "--", "-odd-name"}, []string{"ferry", "restore", "--", "-odd-name"}},
		{[]string{"ferry", "run", "x", "--memory", "1G"}, []string{"ferry", "run", "x", "--memory", "1G"}},
	} {
		if got := flagsFirst(c.in); !reflect.DeepEqual(got, c.want) {
			t.Errorf("flagsFirst(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// Bad command lines of the resume, snapshot and restore commands fail
// before anything is contacted or started.
func TestSnapshotRestoreResumeUsage(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing.snap")
	for _, c := range []struct {
		args []string
		want string
		code int
	}{
		{[]string{"migrate", "--api-socket", "/nonexistent.sock", "--to", "h:1", "--resume", "--no-digest"}, "--resume: needs the digest table", 2},
		{[]string{"restore"}, "restore takes one argument", 2},
		{[]string{"restore", "a", "b"}, "restore takes one argument", 2},
		{[]string{"restore", missing}, missing, 1},
		{[]string{"snapshot", "--api-socket", "/nonexistent.sock", "--to", "x.snap"}, "/nonexistent.sock", 1},
		{[]string{"receive", "--listen", "127.0.0.1:0", "--resume-window", "-1s"}, "--resume-window", 2},
	} {
		err := newApp().Run(flagsFirst(append([]string{"ferry"}, c.args...)))
		if err == nil || !strings.Contains(err.Error(), c.want) || exitCode(err) != c.code {
			t.Errorf("ferry %q: %v (exit %d), want exit %d mentioning %q", c.args, err, exitCode(err), c.code, c.want)
		}
	}
}
