package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// host is one of the two "hosts": a network namespace with one end of a
// veth pair, or (without root) this machine's loopback.
type host struct {
	name string // "A" or "B"
	ns   string // network namespace, "" for the current one
	addr string // address on the link
	dev  string // veth device inside ns ("" on loopback)
}

// wrap returns the argv that runs argv on this host.
func (h *host) wrap(argv ...string) []string {
	if h.ns == "" {
		return argv
	}
	return append([]string{"ip", "netns", "exec", h.ns}, argv...)
}

// txBytes is the byte count the host's end of the link has transmitted:
// everything the migration stream put on the wire, TCP/IP headers included.
func (h *host) txBytes() (int64, error) {
	if h.dev == "" {
		return -1, nil
	}
	out, err := exec.Command("ip", "-n", h.ns, "-s", "-j", "link", "show", h.dev).Output()
	if err != nil {
		return -1, fmt.Errorf("ip -s link show %s: %v", h.dev, err)
	}
	var links []struct {
		Stats64 struct {
			TX struct {
				Bytes int64 `json:"bytes"`
			} `json:"tx"`
		} `json:"stats64"`
	}
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
		return -1, fmt.Errorf("ip -s -j link show %s: %v %s", h.dev, err, out)
	}
	return links[0].Stats64.TX.Bytes, nil
}

// txBytesOf is the same count as txBytes, read from /proc/PID/net/dev of a
// process in the host's namespace (cheap enough for every 50 ms poll); -1
// if unavailable.
func (h *host) txBytesOf(pid int) int64 {
	if h.dev == "" {
		return -1
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/dev", pid))
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(data), "\n") {
		name, rest, ok := strings.Cut(l, ":")
		if !ok || strings.TrimSpace(name) != h.dev {
			continue
		}
		f := strings.Fields(rest) // 8 receive counters, then transmit bytes
		if len(f) < 9 {
			return -1
		}
		n, err := strconv.ParseInt(f[8], 10, 64)
		if err != nil {
			return -1
		}
		return n
	}
	return -1
}

// setupHosts makes two namespaces joined by a veth pair (root), or two
// loopback "hosts". The returned function removes them.
func setupHosts(netns bool) ([2]*host, func(), error) {
	if !netns {
		a := &host{name: "A", addr: "127.0.0.1"}
		b := &host{name: "B", addr: "127.0.0.1"}
		return [2]*host{a, b}, func() {}, nil
	}
	id := strconv.Itoa(os.Getpid() % 100000)
	a := &host{name: "A", ns: "fmig-a-" + id, addr: "10.234.0.1", dev: "fmga" + id}
	b := &host{name: "B", ns: "fmig-b-" + id, addr: "10.234.0.2", dev: "fmgb" + id}
	cleanup := func() {
		exec.Command("ip", "netns", "del", a.ns).Run()
		exec.Command("ip", "netns", "del", b.ns).Run()
		// (moved into the namespaces, the veth ends went with them)
		if exec.Command("ip", "link", "show", "dev", a.dev).Run() == nil {
			exec.Command("ip", "link", "del", a.dev).Run()
		}
	}
	cmds := [][]string{
		{"netns", "add", a.ns},
		{"netns", "add", b.ns},
		{"link", "add", a.dev, "type", "veth", "peer", "name", b.dev},
		{"link", "set", a.dev, "netns", a.ns},
		{"link", "set", b.dev, "netns", b.ns},
		{"-n", a.ns, "addr", "add", a.addr + "/24", "dev", a.dev},
		{"-n", b.ns, "addr", "add", b.addr + "/24", "dev", b.dev},
		{"-n", a.ns, "link", "set", a.dev, "up"},
		{"-n", b.ns, "link", "set", b.dev, "up"},
		{"-n", a.ns, "link", "set", "lo", "up"},
		{"-n", b.ns, "link", "set", "lo", "up"},
	}
	for _, c := range cmds {
		if out, err := exec.Command("ip", c...).CombinedOutput(); err != nil {
			cleanup()
			return [2]*host{}, nil, fmt.Errorf("ip %s: %v: %s", strings.Join(c, " "), err, out)
		}
	}
	return [2]*host{a, b}, cleanup, nil
}

// line is one line of a process's output, with the time it was read.
type line struct {
	t time.Time
	s string
}

// proc is a process we started (a VMM, under ip netns exec when needed);
// its stdout and stderr are read line by line, time-stamped, and logged.
type proc struct {
	name  string
	cmd   *exec.Cmd
	mu    sync.Mutex // guards lines: the output readers append, the harness waits for lines
	lines []line
	log   *os.File
	done  chan struct{}
	err   error
}

// Every VMM and ferry command runs in a process group of its own, killed
// when migbench dies (Pdeathsig), and is registered until it has ended, so
// that stopAll can stop it however the benchmark ends.
var (
	procsMu  sync.Mutex // guards procs, groups and stopping
	procs    = map[*proc]bool{}
	groups   = map[int]bool{} // process groups of commands run to their end
	stopping bool             // stopAll was called: nothing starts any more

	errStopping = errors.New("the benchmark is being stopped")
)

// startGroup starts cmd in a process group of its own; under procsMu.
func startGroup(cmd *exec.Cmd) error {
	if stopping {
		return errStopping
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	return cmd.Start()
}

// runGroup runs cmd to its end (or ctx's) in a process group of its own and
// returns its combined output and exit status (-1: it did not exit).
func runGroup(ctx context.Context, cmd *exec.Cmd) ([]byte, int) {
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	procsMu.Lock()
	err := startGroup(cmd)
	if err == nil {
		groups[cmd.Process.Pid] = true
	}
	procsMu.Unlock()
	if err != nil {
		return []byte(err.Error()), -1
	}
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		case <-done:
		}
	}()
	cmd.Wait()
	close(done)
	procsMu.Lock()
	delete(groups, cmd.Process.Pid)
	procsMu.Unlock()
	return out.Bytes(), cmd.ProcessState.ExitCode()
}

func startProc(name, logPath string, argv []string) (*proc, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(f, "# %s\n", shellQuote(argv))
	p := &proc{name: name, cmd: exec.Command(argv[0], argv[1:]...), log: f, done: make(chan struct{})}
	pr, pw := io.Pipe()
	p.cmd.Stdout, p.cmd.Stderr = pw, pw
	procsMu.Lock()
	if err := startGroup(p.cmd); err != nil {
		procsMu.Unlock()
		f.Close()
		return nil, fmt.Errorf("start %s: %v", argv[0], err)
	}
	procs[p] = true
	procsMu.Unlock()
	read := make(chan struct{})
	go func() {
		defer close(read)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			l := line{t: time.Now(), s: strings.TrimRight(sc.Text(), "\r")}
			p.mu.Lock()
			p.lines = append(p.lines, l)
			fmt.Fprintf(p.log, "%s %s\n", l.t.Format("15:04:05.000"), l.s)
			p.mu.Unlock()
		}
		io.Copy(io.Discard, pr)
	}()
	go func() {
		p.err = p.cmd.Wait()
		pw.Close()
		<-read
		p.mu.Lock()
		fmt.Fprintf(p.log, "# exit: %v\n", p.err)
		p.log.Close()
		p.mu.Unlock()
		procsMu.Lock()
		delete(procs, p)
		procsMu.Unlock()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// exitCode waits up to d for the process to end: its exit status, or -1.
func (p *proc) exitCode(d time.Duration) int {
	select {
	case <-p.done:
	case <-time.After(d):
		return -1
	}
	if p.err == nil {
		return 0
	}
	if ee, ok := p.err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}

// stop ends the process (its process group): TERM, then KILL after 5 s.
func (p *proc) stop() {
	if !p.alive() {
		return
	}
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(5 * time.Second):
	}
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// stopAll stops every process the benchmark started, for good: TERM to
// each process group, KILL 5 s later; then KILL to any other process of
// the run (runMark in its environment), whatever became of its parent.
func stopAll() {
	procsMu.Lock()
	stopping = true
	var ps []*proc
	for p := range procs {
		ps = append(ps, p)
	}
	var gs []int
	for g := range groups {
		gs = append(gs, g)
	}
	procsMu.Unlock()
	for _, g := range gs {
		syscall.Kill(-g, syscall.SIGTERM)
	}
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Add(1)
		go func() { defer wg.Done(); p.stop() }()
	}
	wg.Wait()
	for _, g := range gs {
		syscall.Kill(-g, syscall.SIGKILL)
	}
	for _, p := range runProcesses() {
		syscall.Kill(p.pid, syscall.SIGKILL)
	}
}

// runMark (NAME=value) is in the environment of every process the
// benchmark starts, directly or not.
var runMark string

func markRun() {
	id := fmt.Sprintf("%d-%d", os.Getpid(), time.Now().UnixNano())
	os.Setenv("FERRY_MIGBENCH_RUN", id)
	runMark = "FERRY_MIGBENCH_RUN=" + id
}

type procInfo struct {
	pid     int
	cmdline string
}

func (p procInfo) String() string { return fmt.Sprintf("process %d: %s", p.pid, p.cmdline) }

// runProcesses lists the live processes (migbench aside) with runMark in
// their environment.
func runProcesses() []procInfo {
	if runMark == "" {
		return nil
	}
	return processesWithEnv(runMark)
}

// processesWithEnv lists the live processes (this one aside) whose
// environment holds entry ("NAME=value").
func processesWithEnv(entry string) []procInfo {
	dirs, _ := os.ReadDir("/proc")
	var ps []procInfo
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", d.Name(), "environ"))
		if err != nil || !bytes.Contains(append([]byte{0}, env...), []byte("\x00"+entry+"\x00")) {
			continue // gone, a zombie (empty environment), or not ours to read
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
		ps = append(ps, procInfo{pid, strings.TrimSpace(string(bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '})))})
	}
	return ps
}

func (p *proc) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.lines)
}

func (p *proc) text() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var b strings.Builder
	for _, l := range p.lines {
		b.WriteString(l.s)
		b.WriteByte('\n')
	}
	return b.String()
}

// find returns the index of the first line at or after from matching re, or -1.
func (p *proc) find(re *regexp.Regexp, from int) (int, line, []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := max(from, 0); i < len(p.lines); i++ {
		if m := re.FindStringSubmatch(p.lines[i].s); m != nil {
			return i, p.lines[i], m
		}
	}
	return -1, line{}, nil
}

// waitFor waits up to d for a line at or after from matching re.
func (p *proc) waitFor(re *regexp.Regexp, from int, d time.Duration) (int, line, []string, error) {
	deadline := time.Now().Add(d)
	for {
		if i, l, m := p.find(re, from); i >= 0 {
			return i, l, m, nil
		}
		if !p.alive() {
			time.Sleep(100 * time.Millisecond)
			if i, l, m := p.find(re, from); i >= 0 {
				return i, l, m, nil
			}
			return -1, line{}, nil, fmt.Errorf("%s exited (%v) before a line matching %q", p.name, p.err, re)
		}
		if time.Now().After(deadline) {
			return -1, line{}, nil, fmt.Errorf("%s: no line matching %q within %v", p.name, re, d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// last returns the last line before index to matching re.
func (p *proc) last(re *regexp.Regexp, to int) (int, line, []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if to < 0 || to > len(p.lines) {
		to = len(p.lines)
	}
	for i := to - 1; i >= 0; i-- {
		if m := re.FindStringSubmatch(p.lines[i].s); m != nil {
			return i, p.lines[i], m
		}
	}
	return -1, line{}, nil
}

var (
	reCounter = regexp.MustCompile(`^FERRY-COUNTER ([0-9]+)$`)
	reDirty   = regexp.MustCompile(`^FERRY-DIRTY mode=.* actual=([0-9]+)/s same=([0-9]+)%`)
	reCmdline = regexp.MustCompile(`\] Command line: (.*)$`)
	// the writer's check of its working set (ferry.verify=1)
	reVerify = regexp.MustCompile(`verify=([A-Za-z]+)(?: [a-z]+=[0-9]+)*`)
	// the writer's fill (guest-images/src/dirty.c): mapped, then filled
	reFilled = regexp.MustCompile(`^ferry-dirty: [0-9]+ pages mapped in ([0-9]+) ms, filled .*in ([0-9]+) ms$`)
)

func shellQuote(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		if a == "" || strings.ContainsAny(a, " \t\"'$\\|&;<>()*?") {
			q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		} else {
			q[i] = a
		}
	}
	return strings.Join(q, " ")
}

func copyFile(dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, st.Mode().Perm())
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
