package main

import (
	"bytes"
	"compress/flate"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// asMainEnv makes the test binary run main(): the tests run the benchmark,
// and the benchmark its children, without building it first.
const asMainEnv = "FERRY_SCALE_TEST_AS_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(asMainEnv) != "" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// benchmark is the benchmark's command with args, run by the test binary.
func benchmark(env []string, args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(append(os.Environ(), asMainEnv+"=1"), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// runBenchmark runs the benchmark to its end, at most timeout.
func runBenchmark(t *testing.T, timeout time.Duration, env []string, args ...string) ([]byte, error) {
	t.Helper()
	cmd := benchmark(env, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	timer := time.AfterFunc(timeout, func() { cmd.Process.Signal(syscall.SIGTERM) })
	err := cmd.Wait()
	timer.Stop()
	return out.Bytes(), err
}

// TestSmallRun runs the benchmark end to end on 64 MiB, one and two
// connections, TCP and TLS: the copies and the migrations complete, both
// sides' memory hashes match, and every number is there.
func TestSmallRun(t *testing.T) {
	js := filepath.Join(t.TempDir(), "scale.json")
	out, err := runBenchmark(t, 3*time.Minute, nil,
		"-sizes", "0.0625", "-conns", "1,2", "-tls", "off,on", "-reftime", "100ms", "-json", js)
	t.Logf("output:\n%s", out)
	if err != nil {
		t.Fatalf("benchmark: %v", err)
	}
	b, err := os.ReadFile(js)
	if err != nil {
		t.Fatal(err)
	}
	var rep Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.MemcpyGBps <= 0 || rep.AESGCMGBps <= 0 {
		t.Errorf("references: memcpy %v GB/s, AES-GCM %v GB/s", rep.MemcpyGBps, rep.AESGCMGBps)
	}
	want := []string{"copy tcp 1", "ferry tcp 1", "copy tcp 2", "ferry tcp 2", "copy tls 1", "ferry tls 1", "copy tls 2", "ferry tls 2"}
	if len(rep.Rows) != len(want) {
		t.Fatalf("%d rows, want %d", len(rep.Rows), len(want))
	}
	const pages = 64 << 20 / pageSize
	for i, r := range rep.Rows {
		name := fmt.Sprintf("%s %s %d", r.Kind, map[bool]string{false: "tcp", true: "tls"}[r.TLS], r.Conns)
		if name != want[i] || r.SizeGiB != 0.0625 {
			t.Errorf("row %d: %s, %v GiB; want %s, 0.0625 GiB", i, name, r.SizeGiB, want[i])
		}
		if r.Seconds <= 0 || r.GBps <= 0 || r.Sender.CPUSeconds <= 0 || r.Receiver.CPUSeconds <= 0 ||
			r.Sender.MaxRSS == 0 || r.Receiver.MaxRSS == 0 {
			t.Errorf("%s: missing measurements: %+v", name, r)
		}
		if m := r.Mix; m.Zero+m.Text+m.Random != pages || m.Zero == 0 || m.Text == 0 || m.Random == 0 {
			t.Errorf("%s: mix %+v of %d pages", name, m, pages)
		}
		// The sender's guest memory resident is its text and random
		// pages, to the page.
		if r.Sender.GuestResident != r.Mix.Touched() {
			t.Errorf("%s: sender: %d bytes of guest memory resident, want %d", name, r.Sender.GuestResident, r.Mix.Touched())
		}
		if r.TLS != (r.TLSSuite != "") {
			t.Errorf("%s: TLS cipher suite %q", name, r.TLSSuite)
		}
		if r.Kind != "ferry" {
			continue
		}
		if r.SenderHash == "" || r.SenderHash != r.ReceiverHash {
			t.Errorf("%s: memory hashes: sender %q, receiver %q", name, r.SenderHash, r.ReceiverHash)
		}
		if r.PagesZero != r.Mix.Zero || r.PagesSent != r.Mix.Text+r.Mix.Random || r.Iterations != 2 {
			t.Errorf("%s: %d zero and %d full pages in %d iterations, mix %+v", name, r.PagesZero, r.PagesSent, r.Iterations, r.Mix)
		}
		if r.Receiver.GuestResident != r.Mix.Touched() {
			t.Errorf("%s: receiver: %d bytes of guest memory resident, want %d", name, r.Receiver.GuestResident, r.Mix.Touched())
		}
		if r.VsCopy <= 0 || (r.TLS && r.VsAES <= 0) {
			t.Errorf("%s: ratios: %v of the copy, %v of AES-GCM", name, r.VsCopy, r.VsAES)
		}
	}
	for _, s := range []string{"x copy", "snd CPU s/GiB", "targets:", "of AES-128-GCM per core"} {
		if !bytes.Contains(out, []byte(s)) {
			t.Errorf("the output lacks %q", s)
		}
	}
}

// TestPrefault runs a migration into receiver memory faulted in before
// it: all of the guest is resident there, and the bytes still match.
func TestPrefault(t *testing.T) {
	js := filepath.Join(t.TempDir(), "scale.json")
	out, err := runBenchmark(t, 2*time.Minute, nil,
		"-sizes", "0.0625", "-conns", "1", "-tls", "off", "-reftime", "10ms", "-prefault", "-json", js)
	if err != nil {
		t.Fatalf("benchmark: %v\n%s", err, out)
	}
	b, err := os.ReadFile(js)
	if err != nil {
		t.Fatal(err)
	}
	var rep Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	if !rep.Prefault || len(rep.Rows) != 2 {
		t.Fatalf("prefault %v, %d rows:\n%s", rep.Prefault, len(rep.Rows), out)
	}
	r := rep.Rows[1]
	if r.Kind != "ferry" || r.Receiver.GuestResident != 64<<20 || r.SenderHash == "" || r.SenderHash != r.ReceiverHash {
		t.Errorf("%s: receiver's guest resident %d bytes, want %d; hashes %q and %q",
			r.Kind, r.Receiver.GuestResident, 64<<20, r.SenderHash, r.ReceiverHash)
	}
}

// TestCorruptionFails checks that a migration whose receiver ends with
// other bytes than the sender's fails the run, loudly.
func TestCorruptionFails(t *testing.T) {
	out, err := runBenchmark(t, 2*time.Minute, []string{corruptEnv + "=1"},
		"-sizes", "0.0625", "-conns", "1", "-tls", "off", "-reftime", "10ms")
	if err == nil {
		t.Fatalf("a corrupted migration passed:\n%s", out)
	}
	if !bytes.Contains(out, []byte("the receiver's memory differs from the sender's")) {
		t.Errorf("no word of the corruption:\n%s", out)
	}
}

// TestInterruptLeavesNothing interrupts the benchmark while its children
// run, with SIGINT to its process group (Ctrl-C at a terminal) and with
// SIGTERM to it alone: none of them may survive, and it exits with status
// 130.
func TestInterruptLeavesNothing(t *testing.T) {
	for _, c := range []struct {
		sig   syscall.Signal
		group bool
	}{{syscall.SIGINT, true}, {syscall.SIGTERM, false}} {
		t.Run(c.sig.String(), func(t *testing.T) {
			cmd := benchmark(nil, "-sizes", "0.5", "-conns", "1", "-tls", "off", "-reftime", "10ms")
			cmd.SysProcAttr.Setpgid = true
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer cmd.Process.Kill()
			var kids []int
			deadline := time.Now().Add(time.Minute)
			for len(kids) < 2 && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
				kids = childrenOf(cmd.Process.Pid)
			}
			if len(kids) < 2 {
				t.Fatalf("the benchmark did not start its two children within a minute (%v)", kids)
			}
			if c.group {
				syscall.Kill(-cmd.Process.Pid, c.sig)
			} else {
				cmd.Process.Signal(c.sig)
			}
			err := cmd.Wait()
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 130 {
				t.Errorf("the benchmark ended with %v, want exit status 130", err)
			}
			deadline = time.Now().Add(5 * time.Second)
			for _, pid := range kids {
				for alive(pid) && time.Now().Before(deadline) {
					time.Sleep(20 * time.Millisecond)
				}
				if alive(pid) {
					t.Errorf("child %d survived %v", pid, c.sig)
					unix.Kill(pid, syscall.SIGKILL)
				}
			}
		})
	}
}

// childrenOf lists the processes whose parent is pid.
func childrenOf(pid int) []int {
	ents, _ := os.ReadDir("/proc")
	var kids []int
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ppid, _ := parentOf(p); ppid == pid {
			kids = append(kids, p)
		}
	}
	return kids
}

// parentOf is the parent pid and the state of process pid (/proc/pid/stat).
func parentOf(pid int) (int, string) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, ""
	}
	// pid (comm) state ppid ...: comm may hold spaces and parentheses.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 2 {
		return 0, ""
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid, f[0]
}

// alive says whether pid still runs (a zombie does not).
func alive(pid int) bool {
	_, state := parentOf(pid)
	return state != "" && state != "Z"
}

// TestFill checks the mix: deterministic, about a third of each kind,
// text pages that compress and random pages that do not, and zero pages
// left untouched (not resident).
func TestFill(t *testing.T) {
	const size = 32 << 20
	a, err := mapGuest(size)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(a)
	b, err := mapGuest(size)
	if err != nil {
		t.Fatal(err)
	}
	ma, mb := fillGuest(a), fillGuest(b)
	if ma != mb || !bytes.Equal(a, b) {
		t.Fatalf("two fills differ: %+v, %+v", ma, mb)
	}
	// b may lie next to a, and the kernel then makes one mapping of both.
	unix.Munmap(b)
	pages := uint64(size / pageSize)
	for _, n := range []uint64{ma.Zero, ma.Text, ma.Random} {
		if n < pages/4 || n > pages*5/12 {
			t.Errorf("mix %+v: a kind is far from a third of %d pages", ma, pages)
		}
	}
	res, err := residentBytes(a)
	if err != nil {
		t.Fatal(err)
	}
	if res != ma.Touched() {
		t.Errorf("%d bytes resident, want %d (text and random pages)", res, ma.Touched())
	}
	var text, random []byte
	for p := 0; p < size/pageSize && (len(text) < 256<<10 || len(random) < 256<<10); p++ {
		page := a[p*pageSize : (p+1)*pageSize]
		switch {
		case bytes.HasPrefix(page, []byte("page "+strconv.Itoa(p)+"\n")):
			text = append(text, page...)
		case !isZero(page):
			random = append(random, page...)
		}
	}
	if r := ratio(t, text); r < 2 {
		t.Errorf("text pages compress %.2f:1 with deflate, want at least 2:1", r)
	}
	if r := ratio(t, random); r > 1.01 {
		t.Errorf("random pages compress %.2f:1 with deflate", r)
	}
}

func isZero(p []byte) bool { return bytes.Count(p, []byte{0}) == len(p) }

// ratio is how much deflate compresses b.
func ratio(t *testing.T, b []byte) float64 {
	var z bytes.Buffer
	w, err := flate.NewWriter(&z, flate.DefaultCompression)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(b)
	w.Close()
	return float64(len(b)) / float64(z.Len())
}

// TestLeastSquares checks the overhead fit on a line.
func TestLeastSquares(t *testing.T) {
	a, b := leastSquares([]float64{1, 4, 8}, []float64{12, 18, 26})
	if a != 10 || b != 2 {
		t.Errorf("fit: %v + %v x, want 10 + 2 x", a, b)
	}
}
