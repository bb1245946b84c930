package uffd

import (
	"context"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A goroutine that faults on a missing page in Go code is, for the Go
// runtime, a running goroutine. To stop the world (as every garbage
// collection does, twice) the runtime must preempt it, which it can only
// do at a safe point: ordinary Go code is one (the preemption signal
// interrupts the fault's wait, and the access is retried later), but the
// runtime's memmove, which copy() calls, is not. A garbage collection
// that starts while a goroutine waits in copy() for a missing page waits
// for that goroutine, with every other goroutine stopped, the handler
// that would serve the page included: the whole process hangs.
//
// A fault taken inside a system call (read(2) into guest memory, write(2)
// from it) is different: the goroutine is in a system call, which does
// not hold up the world.
//
// This test pins both facts in a child process (the hang cannot be undone
// in a live one), which it kills after a deadline.

const gcChildEnv = "FERRY_UFFD_GC_CHILD"

func TestGoCopyFaultBlocksGC(t *testing.T) {
	if os.Getenv(gcChildEnv) != "" {
		t.Skip("the child's test")
	}
	for _, c := range []struct {
		how    string
		hangs  bool
		detail string
	}{
		{"syscall", false, "a fault inside write(2) does not hold up a garbage collection"},
		{"copy", true, "a fault inside copy() holds up a garbage collection, and with it the handler"},
	} {
		t.Run(c.how, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestGCChild$", "-test.v")
			cmd.Env = append(os.Environ(), gcChildEnv+"="+c.how)
			out, err := cmd.CombinedOutput()
			gcDone := strings.Contains(string(out), "GC done")
			if c.hangs {
				if gcDone || ctx.Err() == nil {
					t.Fatalf("expected the child to hang (%s), but it did not: %v\n%s", c.detail, err, out)
				}
			} else if !gcDone || err != nil {
				t.Fatalf("%s, but the child: %v\n%s", c.detail, err, out)
			}
			t.Log(c.detail)
		})
	}
}

// TestGCChild is the child: a toucher faults on a missing page through
// copy() or write(2), the test waits for the fault, then collects garbage
// and only afterwards serves the page.
func TestGCChild(t *testing.T) {
	how := os.Getenv(gcChildEnv)
	if how == "" {
		t.Skip("run by TestGoCopyFaultBlocksGC")
	}
	mem := mapPages(t, 1)
	u := openUFFD(t, 0)
	if err := u.Register(mem, ModeMissing); err != nil {
		t.Fatal(err)
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	buf := make([]byte, PageSize)
	tc := newToucher(t)
	done := tc.do(func() {
		if how == "copy" {
			copy(buf, mem)
		} else {
			unix.Write(p[1], mem) // the kernel reads mem: the fault is in the system call
		}
	})
	if _, ok := nextFault(t, u, 2*time.Second); !ok {
		t.Fatal("no fault")
	}
	runtime.GC()
	t.Log("GC done")
	if _, err := u.Copy(mem, pattern(0, 1)); err != nil {
		t.Fatal(err)
	}
	waitDone(t, done, 2*time.Second, "toucher")
}
