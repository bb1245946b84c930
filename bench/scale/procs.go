package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The children: started from this executable with the hidden child
// command, each in a process group of its own (Ctrl-C at the terminal
// reaches the benchmark only, which stops them: a child that died of it
// first would fail the measurement before the benchmark saw the signal),
// killed when the benchmark dies (Pdeathsig: the kernel kills a child
// whose parent thread exits, and the Go runtime keeps its threads), and
// registered while they run, so that killChildren can stop them.

var (
	childMu  sync.Mutex // guards children and stopping
	children = map[*child]bool{}
	stopping bool // killChildren was called: nothing starts any more
)

var errStopping = errors.New("the benchmark is being stopped")

// signalled is set when a signal stops the benchmark: the children it
// kills then make the measurement under way fail, and that failure is not
// the benchmark's end (the signal handler's is).
var signalled atomic.Bool

func interrupt()        { signalled.Store(true) }
func interrupted() bool { return signalled.Load() }

// child is a running child process and its stdout, line by line.
type child struct {
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan []byte // closed at the end of its stdout
}

// startChild runs this executable with the child command line args
// (childFlags.args); name is the child's name in messages.
func startChild(name string, args []string) (*child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find this executable: %w", err)
	}
	c := &child{name: name, cmd: exec.Command(exe, args...), lines: make(chan []byte, 4)}
	c.cmd.Stderr = os.Stderr
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if c.stdin, err = c.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	stdout, err := c.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	childMu.Lock()
	if stopping {
		childMu.Unlock()
		return nil, errStopping
	}
	err = c.cmd.Start()
	if err == nil {
		children[c] = true
	}
	childMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", c.name, err)
	}
	go func() {
		defer close(c.lines)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			c.lines <- append([]byte(nil), sc.Bytes()...)
		}
		io.Copy(io.Discard, stdout)
	}()
	return c, nil
}

// next decodes the child's next line of output into v, waiting at most
// timeout for it.
func (c *child) next(v any, timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case l, ok := <-c.lines:
		if !ok {
			return fmt.Errorf("%s ended without reporting (see its errors above)", c.name)
		}
		if err := json.Unmarshal(l, v); err != nil {
			return fmt.Errorf("%s said %q: %w", c.name, l, err)
		}
		return nil
	case <-t.C:
		return fmt.Errorf("%s reported nothing within %v", c.name, timeout)
	}
}

// wait waits for the child's end (after the end of its output) and
// returns its peak RSS in bytes; an exit status other than 0 is an error.
func (c *child) wait() (uint64, error) {
	for range c.lines {
	}
	err := c.cmd.Wait()
	childMu.Lock()
	delete(children, c)
	childMu.Unlock()
	if err != nil {
		return 0, fmt.Errorf("%s: %w", c.name, err)
	}
	ru, ok := c.cmd.ProcessState.SysUsage().(*syscall.Rusage)
	if !ok {
		return 0, fmt.Errorf("%s: no resource usage", c.name)
	}
	return uint64(ru.Maxrss) << 10, nil // KiB on Linux
}

// kill stops the child if it still runs and reaps it.
func (c *child) kill() {
	childMu.Lock()
	alive := children[c]
	childMu.Unlock()
	if !alive {
		return
	}
	c.cmd.Process.Kill()
	c.wait()
}

// killChildren kills every child still running, for good: no child
// starts after it.
func killChildren() {
	childMu.Lock()
	defer childMu.Unlock()
	stopping = true
	for c := range children {
		c.cmd.Process.Kill()
	}
}

// pair is one measurement's two sides.
type pair struct {
	send, recv             childResult
	sendMaxRSS, recvMaxRSS uint64
}

// runPair runs a receiver and a sender with f (the roles and the address
// are filled in), and returns both results once both have exited.
func runPair(f childFlags) (pair, error) {
	var p pair
	rf, sf := f, f
	rf.role, sf.role = "recv", "send"
	if f.profile != "" {
		rf.profile, sf.profile = f.profile+"-recv.pprof", f.profile+"-send.pprof"
	}
	recv, err := startChild("scale recv", rf.args())
	if err != nil {
		return p, err
	}
	defer recv.kill()
	var port struct{ Port int }
	if err := recv.next(&port, time.Minute); err != nil {
		return p, err
	}
	sf.addr = fmt.Sprintf("127.0.0.1:%d", port.Port)
	send, err := startChild("scale send", sf.args())
	if err != nil {
		return p, err
	}
	defer send.kill()

	var sres, rres struct{ Result *childResult }
	if err := send.next(&sres, f.timeout); err != nil {
		return p, err
	}
	if p.sendMaxRSS, err = send.wait(); err != nil {
		return p, err
	}
	if err := recv.next(&rres, f.timeout); err != nil {
		return p, err
	}
	recv.stdin.Close() // the sender is done: the receiver may go
	if p.recvMaxRSS, err = recv.wait(); err != nil {
		return p, err
	}
	if sres.Result == nil || rres.Result == nil {
		return p, errors.New("a child reported no result")
	}
	p.send, p.recv = *sres.Result, *rres.Result
	return p, nil
}

// measureRefs measures the one-core references in a child (runRefs).
func measureRefs(d time.Duration) (refResult, error) {
	var res struct{ Result *refResult }
	c, err := startChild("scale refs", []string{childCommand, "refs", "-reftime", d.String()})
	if err != nil {
		return refResult{}, err
	}
	defer c.kill()
	if err := c.next(&res, 2*time.Minute+4*d); err != nil {
		return refResult{}, err
	}
	if _, err := c.wait(); err != nil {
		return refResult{}, err
	}
	if res.Result == nil {
		return refResult{}, errors.New("scale refs reported no result")
	}
	return *res.Result, nil
}
