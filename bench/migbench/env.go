package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
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

var (
	procsMu sync.Mutex
	procs   = map[*proc]bool{}
)

func startProc(name, logPath string, argv []string) (*proc, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(f, "# %s\n", shellQuote(argv))
	p := &proc{name: name, cmd: exec.Command(argv[0], argv[1:]...), log: f, done: make(chan struct{})}
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	pr, pw := io.Pipe()
	p.cmd.Stdout, p.cmd.Stderr = pw, pw
	if err := p.cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %v", argv[0], err)
	}
	procsMu.Lock()
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

func stopAll() {
	procsMu.Lock()
	var ps []*proc
	for p := range procs {
		ps = append(ps, p)
	}
	procsMu.Unlock()
	for _, p := range ps {
		p.stop()
	}
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
