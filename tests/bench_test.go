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

// interruptScript runs a script of bench/ in a process group of its own
// with its own TMPDIR (which every process it starts inherits), sends it
// stop once one of them has vm on its command line, and checks that it
// ends within 15 s and that nothing of it survives: no process, no
// namespace or veth it names in its output (reNS: the two namespaces and
// the veth suffix), nothing in its TMPDIR.
func interruptScript(t *testing.T, vm *regexp.Regexp, stop func(*proc), reNS *regexp.Regexp, env []string, script string, args ...string) {
	t.Helper()
	tmp := shortTempDir(t)
	mark := "TMPDIR=" + tmp
	p := startCmdWith(t, func(c *exec.Cmd) {
		c.Env = append(append(os.Environ(), env...), mark)
	}, "bash", append([]string{filepath.Join("..", "bench", script)}, args...)...)
	deadline := time.Now().Add(2 * time.Minute)
	for !hasProcess(mark, vm) {
		select {
		case <-p.done:
			t.Fatalf("%s ended (%v) before a process matching %q ran:\n%s", script, p.err, vm, p.output())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no process matching %q after 2 minutes:\n%s", vm, p.output())
		}
	}
	time.Sleep(500 * time.Millisecond)
	t0 := time.Now()
	stop(p)
	code := p.wait(time.Minute)
	t.Logf("%s exited %d after %.1f s", script, code, time.Since(t0).Seconds())
	if d := time.Since(t0); d > 15*time.Second {
		t.Errorf("%s took %.0f s to stop", script, d.Seconds())
	}

	var left []string
	for _, q := range processesWithEnv(mark) {
		left = append(left, q.String())
		syscall.Kill(q.pid, syscall.SIGKILL)
	}
	if reNS != nil {
		if m := reNS.FindStringSubmatch(p.output()); m != nil {
			for _, ns := range m[1:3] {
				if netnsExists(ns) {
					left = append(left, "network namespace "+ns)
					exec.Command("ip", "netns", "del", ns).Run()
				}
			}
			for _, l := range []string{"fba" + m[3], "fbb" + m[3]} {
				if linkExists(l) {
					left = append(left, "veth "+l)
					exec.Command("ip", "link", "del", l).Run()
				}
			}
		} else if os.Geteuid() == 0 {
			t.Errorf("%s named no namespaces:\n%s", script, p.output())
		}
	}
	ents, _ := os.ReadDir(tmp)
	for _, e := range ents {
		left = append(left, "temporary file "+filepath.Join(tmp, e.Name()))
	}
	if len(left) > 0 {
		t.Errorf("left behind by %s:\n  %s\noutput:\n%s", script, strings.Join(left, "\n  "), p.output())
	}
}

// hasProcess reports whether a process with mark in its environment has a
// command line matching re.
func hasProcess(mark string, re *regexp.Regexp) bool {
	for _, p := range processesWithEnv(mark) {
		if re.MatchString(p.cmdline) {
			return true
		}
	}
	return false
}

// TestBenchScriptsLeaveNothing interrupts the benchmark scripts of bench/
// while a guest boots under them: Ctrl-C (SIGINT to the process group) or
// SIGTERM to the script alone (kill PID). Nothing of them may survive: not
// the VMM (QEMU or ferry, which timeout runs in a process group of its
// own), not a namespace or veth, not their temporary directory.
func TestBenchScriptsLeaveNothing(t *testing.T) {
	needGuest(t)
	bin, err := filepath.Abs(ferryBin)
	if err != nil {
		t.Fatal(err)
	}
	guest, err := filepath.Abs(guestDir)
	if err != nil {
		t.Fatal(err)
	}
	env := []string{"FERRY=" + bin, "GUEST_DIR=" + guest}
	ctrlC := func(p *proc) { p.signal(syscall.SIGINT) }
	term := func(p *proc) { syscall.Kill(p.cmd.Process.Pid, syscall.SIGTERM) }
	reQEMU := regexp.MustCompile(`^qemu-system-x86_64 `)
	reFerryRun := regexp.MustCompile(`ferry run --memory `) // not the -v probe of boot.sh
	needQEMU := func(t *testing.T) {
		if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
			t.Skip("skipped: qemu-system-x86_64 is not installed")
		}
	}

	t.Run("boot-qemu.sh/SIGINT", func(t *testing.T) {
		needQEMU(t)
		interruptScript(t, reQEMU, ctrlC, nil, env, "boot-qemu.sh", "-n", "1")
	})
	t.Run("boot.sh/SIGTERM", func(t *testing.T) { // while its QEMU probe boots
		needQEMU(t)
		interruptScript(t, reQEMU, term, nil, env, "boot.sh", "-n", "1")
	})
	t.Run("boot.sh/SIGINT", func(t *testing.T) { // while its first ferry boot runs
		needQEMU(t)
		interruptScript(t, reFerryRun, ctrlC, nil, env, "boot.sh", "-n", "1")
	})
	t.Run("migrate-digest.sh/SIGINT", func(t *testing.T) {
		if _, err := exec.LookPath("jq"); err != nil {
			t.Skip("skipped: jq is not installed")
		}
		reNS := regexp.MustCompile(`namespaces \((fbench-a-\d+) \S+, (fbench-b-(\d+)) `)
		interruptScript(t, reFerryRun, ctrlC, reNS, append(env, "BWS=32MiB/s", "WORKLOADS=idle=ferry.mode=idle ferry.ws=4M"),
			"migrate-digest.sh")
	})
}
