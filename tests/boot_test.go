package tests

import (
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestBootPowerOff boots the guest image to its marker and a clean exit 0.
func TestBootPowerOff(t *testing.T) {
	needGuest(t)
	p := start(t, kernelArgs("--memory", "128M", "--cmdline", "ferry.run=poweroff")...)
	p.waitFor(reReady, 0, bootTimeout)
	if code := p.wait(time.Minute); code != 0 {
		t.Fatalf("ferry exited %d after the guest powered off, want 0", code)
	}
	if !strings.Contains(p.output(), "guest reset") {
		t.Errorf("ferry did not report how the guest stopped")
	}
}

// TestBootSMP boots with two vCPUs: both come up, marker, exit 0.
func TestBootSMP(t *testing.T) {
	needGuest(t)
	p := start(t, kernelArgs("--memory", "128M", "--cpus", "2", "--cmdline", "ferry.run=poweroff")...)
	p.waitFor(regexp.MustCompile(`smp: Brought up 1 node, 2 CPUs`), 0, bootTimeout)
	p.waitFor(reReady, 0, bootTimeout)
	if code := p.wait(time.Minute); code != 0 {
		t.Fatalf("ferry exited %d, want 0", code)
	}
}

// TestBootBzImage boots the same kernel through the 64-bit boot protocol.
func TestBootBzImage(t *testing.T) {
	needGuest(t)
	p := start(t, "run", "--kernel", filepath.Join(guestDir, "bzImage"),
		"--initrd", filepath.Join(guestDir, "initramfs.cpio"), "--memory", "128M", "--cmdline", "ferry.run=poweroff")
	p.waitFor(reReady, 0, bootTimeout)
	if code := p.wait(time.Minute); code != 0 {
		t.Fatalf("ferry exited %d, want 0", code)
	}
}

// TestCounterPauseResume: the counter stops while paused and goes on after
// resume from where it was, without restarting.
func TestCounterPauseResume(t *testing.T) {
	needGuest(t)
	sock := filepath.Join(t.TempDir(), "api.sock")
	p := start(t, kernelArgs("--memory", "128M", "--api-socket", sock, "--cmdline", "ferry.run=counter")...)
	_, i := p.waitFor(reCounter, 0, bootTimeout)
	_, i = p.waitFor(reCounter, i+5, time.Minute) // counting steadily

	out, code := runFerry(t, "pause", "--api-socket", sock)
	if code != 0 || !strings.Contains(out, `"state":"paused"`) {
		t.Fatalf("ferry pause: exit %d: %s", code, out)
	}
	last := lastCounter(t, p)
	time.Sleep(3 * time.Second)
	if now := lastCounter(t, p); now != last {
		t.Fatalf("counter moved from %d to %d while paused", last, now)
	}
	if out, _ := runFerry(t, "status", "--api-socket", sock); !strings.Contains(out, `"state":"paused"`) {
		t.Fatalf("status while paused: %s", out)
	}

	if out, code := runFerry(t, "resume", "--api-socket", sock); code != 0 {
		t.Fatalf("ferry resume: exit %d: %s", code, out)
	}
	_, j := p.waitFor(reCounter, p.count(), time.Minute)
	line, _ := p.waitFor(reCounter, j+3, time.Minute)
	n := counterValue(t, line)
	if n <= last {
		t.Fatalf("after resume the counter is %d, not past %d: it restarted", n, last)
	}
	t.Logf("counter %d before pause, %d after resume", last, n)
}

func counterValue(t *testing.T, line string) int {
	t.Helper()
	m := reCounter.FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("%q is not a counter line", line)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

func lastCounter(t *testing.T, p *proc) int {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := len(p.lines) - 1; i >= 0; i-- {
		if m := reCounter.FindStringSubmatch(p.lines[i]); m != nil {
			n, _ := strconv.Atoi(m[1])
			return n
		}
	}
	t.Fatal("no counter line yet")
	return 0
}

// TestBadFlags: every bad flag or file is a one-line error naming it, with
// a non-zero exit, before any guest starts.
func TestBadFlags(t *testing.T) {
	needGuest(t)
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"run", "--kernel", "/nonexistent"}, "/nonexistent"},
		{kernelArgs("--initrd", "/no/such/initrd"), "/no/such/initrd"},
		{kernelArgs("--memory", "lots"), "--memory"},
		{kernelArgs("--memory", "1M"), "--memory"},
		{kernelArgs("--cpus", "0"), "--cpus"},
		{[]string{"run", "--kernel", "/etc/hostname"}, "/etc/hostname"},
		{[]string{"run", "--bogus"}, "bogus"},
	}
	for _, c := range cases {
		out, code := runFerry(t, c.args...)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if code == 0 || !strings.Contains(out, c.want) {
			t.Errorf("ferry %v: exit %d, output %q: want a non-zero exit and an error naming %q", c.args, code, out, c.want)
			continue
		}
		if len(lines) != 1 && !strings.Contains(out, "USAGE") {
			t.Errorf("ferry %v: error is %d lines, want one: %q", c.args, len(lines), out)
		}
	}
}
