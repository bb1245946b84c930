// Package tests holds ferry's integration tests: they boot real Linux guests
// (the image `make guest` builds) with the ferry binary on the real KVM.
package tests

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	ferryBin string // the binary under test
	guestDir string // kernel and initramfs
)

func TestMain(m *testing.M) {
	code, err := setup(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tests:", err)
		os.Exit(1)
	}
	os.Exit(code)
}

func setup(m *testing.M) (int, error) {
	flag.Parse()
	done, err := setupRun()
	if err != nil {
		return 0, err
	}
	defer done()
	var keep []string
	ferryBin = os.Getenv("FERRY_BIN")
	if ferryBin == "" {
		dir, err := os.MkdirTemp("", "ferry-bin")
		if err != nil {
			return 0, err
		}
		keep = append(keep, dir)
		ferryBin = filepath.Join(dir, "ferry")
		out, err := exec.Command("go", "build", "-o", ferryBin, "../cmd/ferry").CombinedOutput()
		if err != nil {
			return 0, fmt.Errorf("build ferry: %v\n%s", err, out)
		}
	}
	guestDir = os.Getenv("FERRY_GUEST_DIR")
	if guestDir == "" {
		guestDir = filepath.Join("..", "guest-images", "out")
	}
	code := m.Run()
	if left := leftovers(true, keep...); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "tests: FAIL: left behind after the tests:\n  %s\n", strings.Join(left, "\n  "))
		removeAll()
		code = 1
	}
	return code, nil
}

// needGuest skips without /dev/kvm (and only then) and fails without a
// built guest image. After the test's other cleanups it checks that the
// test left no process, namespace or interface behind.
func needGuest(t *testing.T) {
	t.Helper()
	t.Cleanup(func() { checkNothingLeft(t) })
	if _, err := os.Stat("/dev/kvm"); err != nil {
		t.Skip("skipped: /dev/kvm is absent on this machine")
	}
	for _, f := range []string{"vmlinux", "initramfs.cpio"} {
		if _, err := os.Stat(filepath.Join(guestDir, f)); err != nil {
			t.Fatalf("guest image %s is missing: run 'make guest' (or set FERRY_GUEST_DIR)", filepath.Join(guestDir, f))
		}
	}
}

// proc is a running ferry process whose output is scanned line by line.
type proc struct {
	t     *testing.T
	cmd   *exec.Cmd
	mu    sync.Mutex
	lines []string
	cond  *sync.Cond
	done  chan struct{}
	err   error
	stdin io.WriteCloser
}

// start runs ferry with args; stdout and stderr are merged and logged on failure.
func start(t *testing.T, args ...string) *proc {
	t.Helper()
	return startCmd(t, ferryBin, args...)
}

// startCmd runs a command (ferry, or ferry under ip netns exec) in a
// process group of its own (startTracked), killed when the test ends.
func startCmd(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	return startCmdWith(t, nil, name, args...)
}

// startCmdWith is startCmd with setup applied to the command before it starts.
func startCmdWith(t *testing.T, setup func(*exec.Cmd), name string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, cmd: exec.Command(name, args...), done: make(chan struct{})}
	if setup != nil {
		setup(p.cmd)
	}
	p.cond = sync.NewCond(&p.mu)
	pr, pw := io.Pipe()
	p.cmd.Stdout, p.cmd.Stderr = pw, pw
	var err error
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := startTracked(p.cmd); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, strings.TrimRight(sc.Text(), "\r"))
			p.cond.Broadcast()
			p.mu.Unlock()
		}
	}()
	go func() {
		p.err = p.cmd.Wait()
		forget(p.cmd)
		pw.Close()
		close(p.done)
		p.mu.Lock()
		p.cond.Broadcast()
		p.mu.Unlock()
	}()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("output of %s %s:\n%s", name, strings.Join(args, " "), p.output())
		}
	})
	return p
}

// kill kills the process's group (ferry itself under ip netns exec, which
// execs it) and waits for it.
func (p *proc) kill() {
	select {
	case <-p.done:
	default:
		p.signal(syscall.SIGKILL)
		<-p.done
	}
}

// signal sends sig to the process's group (as Ctrl-C does to a
// foreground job).
func (p *proc) signal(sig syscall.Signal) {
	syscall.Kill(-p.cmd.Process.Pid, sig)
}

// count is the number of lines read so far.
func (p *proc) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.lines)
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n")
}

// waitFor returns the first line at or after index from that matches re,
// and its index, failing the test after timeout or if ferry exits first.
func (p *proc) waitFor(re *regexp.Regexp, from int, timeout time.Duration) (string, int) {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	timer := time.AfterFunc(timeout, func() {
		p.mu.Lock()
		p.cond.Broadcast()
		p.mu.Unlock()
	})
	defer timer.Stop()
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := from; ; {
		for ; i < len(p.lines); i++ {
			if re.MatchString(p.lines[i]) {
				return p.lines[i], i
			}
		}
		select {
		case <-p.done:
			p.mu.Unlock()
			time.Sleep(100 * time.Millisecond) // let the reader drain
			p.mu.Lock()
			for ; i < len(p.lines); i++ {
				if re.MatchString(p.lines[i]) {
					return p.lines[i], i
				}
			}
			p.t.Fatalf("ferry exited (%v) before printing a line matching %q", p.err, re)
		default:
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("no line matching %q within %v", re, timeout)
		}
		p.cond.Wait()
	}
}

// wait waits for ferry to exit and returns its exit code.
func (p *proc) wait(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.t.Fatalf("ferry did not exit within %v", timeout)
	}
	if p.err == nil {
		return 0
	}
	if ee, ok := p.err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	p.t.Fatalf("ferry: %v", p.err)
	return -1
}

// runFerry runs a short ferry command and returns its combined output and exit code.
func runFerry(t *testing.T, args ...string) (string, int) {
	t.Helper()
	out, err := runTracked(ferryBin, args...)
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatalf("ferry %v: %v", args, err)
	}
	return string(out), 0
}

func kernelArgs(extra ...string) []string {
	return append([]string{"run",
		"--kernel", filepath.Join(guestDir, "vmlinux"),
		"--initrd", filepath.Join(guestDir, "initramfs.cpio")}, extra...)
}

var (
	reReady   = regexp.MustCompile(`^FERRY-GUEST-READY$`)
	reCounter = regexp.MustCompile(`^FERRY-COUNTER (\d+)$`)
)

// bootTimeout bounds a guest boot: ~10 s on the emulating KVM of our
// development machines, well under a second on hardware.
const bootTimeout = 3 * time.Minute
