package tests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// helperEnv makes TestStoppedRunHelper run: TestStoppedRunLeavesNothing
// runs this test binary again with it set.
const helperEnv = "FERRY_TESTS_STOP_HELPER"

// TestStoppedRunHelper sets up what a migration test has (two hosts, as
// root network namespaces joined by a veth pair, a tap, `ferry receive`
// waiting on host B under ip netns exec, a temporary directory), says so,
// and waits to be stopped.
func TestStoppedRunHelper(t *testing.T) {
	if os.Getenv(helperEnv) == "" {
		t.Skip("run by TestStoppedRunLeavesNothing")
	}
	h := twoHosts(t)
	var links []string
	if h.ns[0] != "" {
		addTap(t, h, 1)
		id := strings.TrimPrefix(h.ns[0], "ferry-a-")
		links = []string{"fva" + id, "fvb" + id}
	}
	receiver(t, h, 1)
	fmt.Printf("HELPER-READY netns=%s links=%s\n", strings.Join(h.ns[:], ","), strings.Join(links, ","))
	time.Sleep(time.Hour)
}

// TestStoppedRunLeavesNothing stops a test run (this binary, running
// TestStoppedRunHelper) the ways a run gets stopped, once its ferry runs:
// Ctrl-C (SIGINT to its process group), SIGTERM to the test binary alone,
// and a -timeout that expires. Each time nothing of the run may survive: no
// process it started (ferry under ip netns exec included), none of its
// namespaces or interfaces, nothing in its temporary directory.
func TestStoppedRunLeavesNothing(t *testing.T) {
	if os.Getenv(helperEnv) != "" {
		t.Skip("not inside the helper run")
	}
	bin, err := filepath.Abs(ferryBin)
	if err != nil {
		t.Fatal(err)
	}
	reReady := regexp.MustCompile(`^HELPER-READY netns=(.*) links=(.*)$`)
	for _, c := range []struct {
		name    string
		stop    func(p *proc)
		timeout string
	}{
		{"SIGINT", func(p *proc) { p.signal(syscall.SIGINT) }, ""},
		{"SIGTERM", func(p *proc) { syscall.Kill(p.cmd.Process.Pid, syscall.SIGTERM) }, ""},
		{"timeout", nil, "10s"},
	} {
		t.Run(c.name, func(t *testing.T) {
			tmp := shortTempDir(t)
			mark := fmt.Sprintf("%s=%s-%d", helperEnv, c.name, os.Getpid())
			args := []string{"-test.run=^TestStoppedRunHelper$", "-test.v"}
			if c.timeout != "" {
				args = append(args, "-test.timeout="+c.timeout)
			}
			p := startCmdWith(t, func(cmd *exec.Cmd) {
				cmd.Env = append(os.Environ(), mark, "TMPDIR="+tmp, "FERRY_BIN="+bin)
			}, os.Args[0], args...)
			line, _ := p.waitFor(reReady, 0, time.Minute)
			m := reReady.FindStringSubmatch(line)
			if c.stop != nil {
				c.stop(p)
			}
			code := p.wait(time.Minute)
			t.Logf("the stopped run exited %d", code)
			if code == 0 {
				t.Errorf("the stopped run exited 0:\n%s", p.output())
			}
			var left []string
			for _, q := range processesWithEnv(mark) {
				left = append(left, q.String())
				syscall.Kill(q.pid, syscall.SIGKILL)
			}
			for _, ns := range strings.Split(m[1], ",") {
				if ns != "" && netnsExists(ns) {
					left = append(left, "network namespace "+ns)
					runTracked("ip", "netns", "del", ns)
				}
			}
			for _, l := range strings.Split(m[2], ",") {
				if l != "" && linkExists(l) {
					left = append(left, "interface "+l)
					runTracked("ip", "link", "del", l)
				}
			}
			ents, _ := os.ReadDir(tmp)
			for _, e := range ents {
				left = append(left, "temporary file "+filepath.Join(tmp, e.Name()))
			}
			if len(left) > 0 {
				t.Errorf("left behind by the stopped run:\n  %s\noutput:\n%s", strings.Join(left, "\n  "), p.output())
			}
		})
	}
}
