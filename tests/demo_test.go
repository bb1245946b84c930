package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

var (
	reDemoNetns = regexp.MustCompile(`netns (\S+) \(`)
	reDemoVeth  = regexp.MustCompile(`veth (\S+)/(\S+)$`)
	reDemoHosts = regexp.MustCompile(`^== (host A: netns|not root)`)
)

// demo is a run of tests/demo.sh (make demo) with its own TMPDIR.
type demo struct {
	p   *proc
	tmp string // the demo's TMPDIR: its work directory goes there
}

// startDemo runs the demo with the binary and guest image under test, in a
// process group of its own (as a shell runs a foreground job), and
// registers its namespaces for removal should the test run be stopped.
func startDemo(t *testing.T) *demo {
	t.Helper()
	bin, err := filepath.Abs(ferryBin)
	if err != nil {
		t.Fatal(err)
	}
	guest, err := filepath.Abs(guestDir)
	if err != nil {
		t.Fatal(err)
	}
	d := &demo{tmp: shortTempDir(t)}
	d.p = startCmdWith(t, func(c *exec.Cmd) {
		c.Env = append(os.Environ(), "FERRY="+bin, "FERRY_GUEST_DIR="+guest, "TMPDIR="+d.tmp)
	}, "bash", "demo.sh")
	t.Cleanup(func() { // before the SIGKILL of startCmd's cleanup: let the demo clean up
		select {
		case <-d.p.done:
		default:
			d.p.signal(syscall.SIGTERM)
			select {
			case <-d.p.done:
			case <-time.After(30 * time.Second):
			}
		}
	})
	d.p.waitFor(reDemoHosts, 0, time.Minute)
	for _, ns := range d.names(reDemoNetns) {
		registerNetns(ns)
	}
	return d
}

// names are the submatches of re in the demo's output.
func (d *demo) names(re *regexp.Regexp) []string {
	var names []string
	for _, m := range re.FindAllStringSubmatch(d.p.output(), -1) {
		names = append(names, m[1:]...)
	}
	return names
}

// workFile waits until a file name in the demo's work directory has a
// line matching re; false after timeout.
func (d *demo) workFile(name string, re *regexp.Regexp, timeout time.Duration) bool {
	for end := time.Now().Add(timeout); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		files, _ := filepath.Glob(filepath.Join(d.tmp, "*", name))
		for _, f := range files {
			if b, err := os.ReadFile(f); err == nil && re.Match(b) {
				return true
			}
		}
	}
	return false
}

// checkGone fails t if anything of the demo survived its exit: a process
// started under it (its environment has the demo's TMPDIR), one of its
// namespaces or veths, a file in its TMPDIR. What survived is removed.
func (d *demo) checkGone(t *testing.T) {
	t.Helper()
	var left []string
	for _, p := range processesWithEnv("TMPDIR=" + d.tmp) {
		left = append(left, p.String())
		syscall.Kill(p.pid, syscall.SIGKILL)
	}
	for _, ns := range d.names(reDemoNetns) {
		if netnsExists(ns) {
			left = append(left, "network namespace "+ns)
			exec.Command("ip", "netns", "del", ns).Run()
		}
	}
	for _, l := range d.names(reDemoVeth) {
		if linkExists(l) {
			left = append(left, "veth "+l)
			exec.Command("ip", "link", "del", l).Run()
		}
	}
	ents, _ := os.ReadDir(d.tmp)
	for _, e := range ents {
		left = append(left, "temporary file "+filepath.Join(d.tmp, e.Name()))
	}
	if len(left) > 0 {
		t.Errorf("left behind by the demo:\n  %s\ndemo output:\n%s", strings.Join(left, "\n  "), d.p.output())
	}
}

// TestDemoLeavesNothing runs make demo's script with the binary under
// test. complete: the demo migrates the guest and exits 0. interrupted:
// SIGINT to its process group (Ctrl-C) while the guest migrates.
// terminated: SIGTERM to the demo's shell alone (kill PID) while the guest
// boots on host A. Each time nothing of it may survive: no process started
// under it (ferry under ip netns exec included), none of its namespaces or
// veths, nothing in its temporary directory.
func TestDemoLeavesNothing(t *testing.T) {
	needGuest(t)
	t.Run("complete", func(t *testing.T) {
		d := startDemo(t)
		if code := d.p.wait(10 * time.Minute); code != 0 {
			t.Errorf("demo: exit %d:\n%s", code, d.p.output())
		} else {
			d.p.waitFor(regexp.MustCompile(`^== done: the guest moved`), 0, time.Second)
			d.p.waitFor(regexp.MustCompile(`^   B\| FERRY-COUNTER`), 0, time.Second)
		}
		d.checkGone(t)
	})
	t.Run("interrupted", func(t *testing.T) {
		d := startDemo(t)
		d.p.waitFor(regexp.MustCompile(`^== ferry migrate`), 0, bootTimeout)
		when := "while the guest migrates (the receiver has the connection)"
		if !d.workFile("b.out", reReceiving, 20*time.Second) {
			when = "after 20 s of ferry migrate, the receiver not receiving"
		}
		d.p.signal(syscall.SIGINT)
		code := d.p.wait(time.Minute)
		t.Logf("SIGINT %s: the demo exited %d", when, code)
		if code == 0 {
			t.Errorf("the interrupted demo exited 0:\n%s", d.p.output())
		}
		d.checkGone(t)
	})
	t.Run("terminated", func(t *testing.T) {
		d := startDemo(t)
		d.p.waitFor(regexp.MustCompile(`^== host B: ferry receive`), 0, time.Minute)
		d.workFile("a.out", regexp.MustCompile(`Linux version`), 30*time.Second)
		syscall.Kill(d.p.cmd.Process.Pid, syscall.SIGTERM)
		code := d.p.wait(time.Minute)
		t.Logf("SIGTERM to the demo's shell while the guest boots: the demo exited %d", code)
		if code == 0 {
			t.Errorf("the terminated demo exited 0:\n%s", d.p.output())
		}
		d.checkGone(t)
	})
}
