package main

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

// asMainEnv makes the test binary run main(): the tests run the benchmark
// as make bench does, without building it first.
const asMainEnv = "MIGBENCH_TEST_AS_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(asMainEnv) != "" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestInterruptLeavesNothing runs a one-migration benchmark the way make
// bench does (its output through tee) and interrupts it with SIGINT to its
// process group (Ctrl-C: tee dies too) once its first VM runs, under ferry
// and under QEMU. Nothing of it may survive: no process it started (the
// VMMs run in process groups of their own, under ip netns exec as root),
// none of its namespaces or veths, nothing in its temporary directory.
func TestInterruptLeavesNothing(t *testing.T) {
	ferry, guest := os.Getenv("FERRY_BIN"), os.Getenv("FERRY_GUEST_DIR")
	if _, err := os.Stat("/dev/kvm"); err != nil {
		t.Skip("skipped: /dev/kvm is absent on this machine")
	}
	if ferry == "" || guest == "" {
		t.Skip("skipped: FERRY_BIN and FERRY_GUEST_DIR are not set (make test sets them)")
	}
	for _, c := range []struct{ system, vm string }{
		{"ferry", "ferry-1.sock"}, // ferry run, its control socket
		{"qemu", "qmp-1.sock"},    // qemu-system-x86_64, its QMP socket
	} {
		t.Run(c.system, func(t *testing.T) {
			if c.system == "qemu" {
				if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
					t.Skip("skipped: qemu-system-x86_64 is not installed")
				}
			}
			tmp, out := t.TempDir(), t.TempDir()
			outFile := filepath.Join(out, "output")
			f, err := os.Create(outFile)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			cmd := exec.Command("bash", "-c", `set -o pipefail; "$0" "$@" 2>&1 | tee "$OUT/migbench.txt"`,
				os.Args[0], "-ferry", ferry, "-guest", guest, "-workloads", "idle", "-systems", c.system,
				"-bws", "0", "-out", out)
			cmd.Env = append(os.Environ(), asMainEnv+"=1", "TMPDIR="+tmp, "OUT="+out)
			cmd.Stdout, cmd.Stderr = f, f
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			mark := "TMPDIR=" + tmp
			t.Cleanup(func() { // whatever happened: nothing of it stays on this machine
				syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				for _, p := range processesWithEnv(mark) {
					syscall.Kill(p.pid, syscall.SIGKILL)
				}
			})

			// Interrupt once the VM runs.
			deadline := time.Now().Add(2 * time.Minute)
			for !running(mark, c.vm) {
				if time.Now().After(deadline) {
					t.Fatalf("no VM with %s after 2 minutes:\n%s", c.vm, readFile(outFile))
				}
				select {
				case err := <-done:
					t.Fatalf("the benchmark ended (%v) before its VM ran:\n%s", err, readFile(outFile))
				case <-time.After(100 * time.Millisecond):
				}
			}
			time.Sleep(time.Second)
			syscall.Kill(-cmd.Process.Pid, syscall.SIGINT)
			select {
			case err := <-done:
				t.Logf("SIGINT while its VM runs: %v", err)
			case <-time.After(time.Minute):
				t.Fatalf("the benchmark did not end within a minute of SIGINT:\n%s", readFile(outFile))
			}

			var left []string
			for _, p := range processesWithEnv(mark) {
				left = append(left, p.String())
			}
			if m := regexp.MustCompile(`namespaces (fmig-a-(\d+)) .* and (fmig-b-\d+) `).FindStringSubmatch(readFile(outFile)); m != nil {
				for _, ns := range []string{m[1], m[3]} {
					if exec.Command("ip", "netns", "pids", ns).Run() == nil {
						left = append(left, "network namespace "+ns)
						exec.Command("ip", "netns", "del", ns).Run()
					}
				}
				for _, l := range []string{"fmga" + m[2], "fmgb" + m[2]} {
					if exec.Command("ip", "link", "show", "dev", l).Run() == nil {
						left = append(left, "veth "+l)
						exec.Command("ip", "link", "del", l).Run()
					}
				}
			} else if os.Geteuid() == 0 {
				t.Errorf("no namespaces in the benchmark's header:\n%s", readFile(outFile))
			}
			ents, _ := os.ReadDir(tmp)
			for _, e := range ents {
				left = append(left, "temporary file "+filepath.Join(tmp, e.Name()))
			}
			if len(left) > 0 {
				t.Errorf("left behind by the interrupted benchmark:\n  %s\noutput:\n%s", strings.Join(left, "\n  "), readFile(outFile))
			}
		})
	}
}

// running reports whether a process carrying mark has vm on its command line.
func running(mark, vm string) bool {
	for _, p := range processesWithEnv(mark) {
		if strings.Contains(p.cmdline, vm) {
			return true
		}
	}
	return false
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}
