package tests

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The tests leave nothing behind, however the run ends: passed, failed,
// Ctrl-C, SIGTERM, or the -timeout about to expire. Every process they
// start runs in a process group of its own, is killed when the test binary
// dies (Pdeathsig), and is registered until it has been waited for; every
// network namespace and interface they create is registered; and their
// temporary files are under one directory, the run's $TMPDIR. On a signal
// (or just before the -timeout panic, which skips every cleanup) the
// registered groups get SIGTERM (ferry stops its guest, the demo script
// cleans up after itself), then SIGKILL, as does any other process of the
// run; the namespaces, interfaces and the directory are removed. After the
// tests, TestMain fails the run if anything survived: a process carrying
// the run's mark in its environment (runEnv: inherited by everything the
// tests start, under ip netns exec and the demo too), a namespace or
// interface the run created, a file in its $TMPDIR.

// runEnv is the environment variable that marks the processes of one run.
const runEnv = "FERRY_TESTS_RUN"

var (
	runMark string // runEnv=<this run's id>, in every process the tests start
	tmpRoot string // $TMPDIR of the run: t.TempDir()s and the demo's work directory

	reg = struct {
		sync.Mutex
		stopping bool
		groups   map[int]bool    // process groups (leader pids) not waited for yet
		netns    map[string]bool // namespaces created by the run
		links    map[string]bool // interfaces created in this namespace by the run
	}{groups: map[int]bool{}, netns: map[string]bool{}, links: map[string]bool{}}

	errStopping = errors.New("the test run is being stopped")
)

// setupRun marks the run, gives it its own $TMPDIR and removes everything
// on a signal or just before the -timeout expires. The returned function
// removes the $TMPDIR once the run is over.
func setupRun() (func(), error) {
	id := fmt.Sprintf("%d-%d", os.Getpid(), time.Now().UnixNano())
	runMark = runEnv + "=" + id
	os.Setenv(runEnv, id)
	var err error
	if tmpRoot, err = os.MkdirTemp("", "ferry-tests."); err != nil {
		return nil, err
	}
	os.Setenv("TMPDIR", tmpRoot)

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sigs
		removeAll() // first: stderr may be gone
		fmt.Fprintf(os.Stderr, "\ntests: %v: stopped what the tests had started\n", s)
		code := 130
		if s == syscall.SIGTERM {
			code = 143
		}
		os.Exit(code)
	}()
	if f := flag.Lookup("test.timeout"); f != nil {
		if d, ok := f.Value.(flag.Getter).Get().(time.Duration); ok && d > 0 {
			margin := min(15*time.Second, d/10)
			time.AfterFunc(d-margin, func() {
				fmt.Fprintf(os.Stderr, "\ntests: the -timeout %v expires in %v: stopping what the tests started\n", d, margin)
				removeAll()
			})
		}
	}
	return func() { os.RemoveAll(tmpRoot) }, nil
}

// startTracked starts cmd in a process group of its own, killed when the
// test binary dies, and registers the group until forget.
func startTracked(cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	reg.Lock()
	defer reg.Unlock()
	if reg.stopping {
		return errStopping
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	reg.groups[cmd.Process.Pid] = true
	return nil
}

// forget unregisters cmd once it has been waited for.
func forget(cmd *exec.Cmd) {
	reg.Lock()
	delete(reg.groups, cmd.Process.Pid)
	reg.Unlock()
}

// runTracked runs a command to its end (ip, ferry certs, ferry migrate,
// ping) and returns its combined output.
func runTracked(name string, args ...string) ([]byte, error) {
	var out bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := startTracked(cmd); err != nil {
		return nil, err
	}
	err := cmd.Wait()
	forget(cmd)
	return out.Bytes(), err
}

// shortTempDir is a new directory with a short name under the run's
// $TMPDIR, removed when t ends. t.TempDir's names carry the test's name:
// under a script's work directory there, a unix socket path can exceed
// the 107 bytes a socket address holds.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "t")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// addNetns creates network namespace ns, registered for removal.
func addNetns(ns string) error {
	registerNetns(ns)
	if out, err := runTracked("ip", "netns", "add", ns); err != nil {
		return fmt.Errorf("ip netns add %s: %v: %s", ns, err, out)
	}
	return nil
}

// registerNetns notes a namespace of the run (made by the demo, say).
func registerNetns(ns string) {
	reg.Lock()
	reg.netns[ns] = true
	reg.Unlock()
}

// registerLink notes an interface created in this namespace (removed
// unless it moved into a namespace that is removed).
func registerLink(name string) {
	reg.Lock()
	reg.links[name] = true
	reg.Unlock()
}

// removeAll stops every process of the run and removes its namespaces,
// interfaces and temporary files; no process starts afterwards.
func removeAll() {
	reg.Lock()
	reg.stopping = true
	var groups []int
	for g := range reg.groups {
		groups = append(groups, g)
	}
	var netns, links []string
	for ns := range reg.netns {
		netns = append(netns, ns)
	}
	for l := range reg.links {
		links = append(links, l)
	}
	reg.Unlock()
	for _, g := range groups {
		syscall.Kill(-g, syscall.SIGTERM)
	}
	for _, p := range runProcesses() {
		syscall.Kill(p.pid, syscall.SIGTERM)
	}
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end) && len(runProcesses()) > 0; {
		time.Sleep(100 * time.Millisecond)
	}
	for _, g := range groups {
		syscall.Kill(-g, syscall.SIGKILL)
	}
	for _, p := range runProcesses() {
		syscall.Kill(p.pid, syscall.SIGKILL)
	}
	for _, ns := range netns {
		exec.Command("ip", "netns", "del", ns).Run()
	}
	for _, l := range links {
		if linkExists(l) {
			exec.Command("ip", "link", "del", l).Run()
		}
	}
	os.RemoveAll(tmpRoot)
}

type procInfo struct {
	pid     int
	cmdline string
}

func (p procInfo) String() string { return fmt.Sprintf("process %d: %s", p.pid, p.cmdline) }

// processesWithEnv lists the live processes (this one aside) whose
// environment holds entry ("NAME=value"): what a command started with it
// in its environment left running, whatever became of its parents.
func processesWithEnv(entry string) []procInfo {
	dirs, _ := os.ReadDir("/proc")
	var ps []procInfo
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", d.Name(), "environ"))
		if err != nil || !hasEntry(env, entry) {
			continue // gone, a zombie (empty environment), or not ours to read
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
		ps = append(ps, procInfo{pid, strings.TrimSpace(string(bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '})))})
	}
	return ps
}

func hasEntry(environ []byte, entry string) bool {
	for _, e := range bytes.Split(environ, []byte{0}) {
		if string(e) == entry {
			return true
		}
	}
	return false
}

// netnsExists reports whether network namespace ns is listed by ip netns.
func netnsExists(ns string) bool {
	out, _ := exec.Command("ip", "netns", "list").Output()
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == ns {
			return true
		}
	}
	return false
}

// linkExists reports whether interface name exists in this namespace.
func linkExists(name string) bool {
	return exec.Command("ip", "link", "show", "dev", name).Run() == nil
}

// runProcesses are the live processes the tests started (directly or not).
func runProcesses() []procInfo { return processesWithEnv(runMark) }

// leftovers is what of the run still exists: processes, the namespaces and
// interfaces it created, and (with tmp) the files in its $TMPDIR but keep.
func leftovers(tmp bool, keep ...string) []string {
	var left []string
	for _, p := range runProcesses() {
		left = append(left, p.String())
	}
	reg.Lock()
	defer reg.Unlock()
	for ns := range reg.netns {
		if netnsExists(ns) {
			left = append(left, "network namespace "+ns)
		}
	}
	for l := range reg.links {
		if linkExists(l) {
			left = append(left, "interface "+l)
		}
	}
	if tmp {
		ents, _ := os.ReadDir(tmpRoot)
	next:
		for _, e := range ents {
			for _, k := range keep {
				if filepath.Join(tmpRoot, e.Name()) == k {
					continue next
				}
			}
			left = append(left, "temporary file "+filepath.Join(tmpRoot, e.Name()))
		}
	}
	sort.Strings(left)
	return left
}

// checkNothingLeft fails t if a process, namespace or interface of the run
// survives (needGuest registers it first, so it runs after the test's
// other cleanups), then removes what it found: the next test starts clean.
func checkNothingLeft(t *testing.T) {
	left := leftovers(false)
	if len(left) == 0 {
		return
	}
	t.Errorf("left behind by %s:\n  %s", t.Name(), strings.Join(left, "\n  "))
	for _, p := range runProcesses() {
		syscall.Kill(p.pid, syscall.SIGKILL)
	}
	reg.Lock()
	defer reg.Unlock()
	for ns := range reg.netns {
		exec.Command("ip", "netns", "del", ns).Run()
	}
	for l := range reg.links {
		if linkExists(l) {
			exec.Command("ip", "link", "del", l).Run()
		}
	}
}
