package devices

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
)

// failingIRQ is an interrupt line whose SetLevel fails while fail is set.
type failingIRQ struct {
	mu   sync.Mutex
	fail bool
	sets int
}

var errLine = errors.New("irq line broken")

func (f *failingIRQ) SetLevel(bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sets++
	if f.fail {
		return errLine
	}
	return nil
}

// captureLogs sends the devices' log lines to the returned function for
// the rest of the test.
func captureLogs(t *testing.T) func() []string {
	var mu sync.Mutex
	var lines []string
	saved := logf
	logf = func(format string, a ...any) {
		mu.Lock()
		lines = append(lines, fmt.Sprintf(format, a...))
		mu.Unlock()
	}
	t.Cleanup(func() { logf = saved })
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		l := lines
		lines = nil
		return l
	}
}

// TestIRQLineErrors: a device whose interrupt line fails says so: Restore
// returns the error (naming the device), and while running the failure is
// logged once when it starts and once when the line works again, not at
// every interrupt.
func TestIRQLineErrors(t *testing.T) {
	logs := captureLogs(t)
	t.Run("virtio-mmio", func(t *testing.T) {
		r := newBlkRig(t, false)
		r.t.mu.Lock()
		r.t.raise(virtioIntUsed)
		r.t.mu.Unlock()
		data, err := r.t.Save()
		if err != nil {
			t.Fatal(err)
		}
		line := &failingIRQ{fail: true}
		t2 := NewVirtioMMIO("virtio-blk0", r.blk, r.m, line)
		if err := t2.Restore(data); !errors.Is(err, errLine) || !strings.Contains(err.Error(), "virtio-blk0") {
			t.Fatalf("Restore with a failing line: %v, want errLine naming virtio-blk0", err)
		}
		logs()
		for range 3 {
			t2.mu.Lock()
			t2.raise(virtioIntUsed)
			t2.mu.Unlock()
			reg(t2, vmIntACK, virtioIntUsed)
		}
		checkLogs(t, logs(), "virtio-blk0", errLine.Error())
		line.mu.Lock()
		line.fail = false
		line.mu.Unlock()
		t2.mu.Lock()
		t2.raise(virtioIntUsed)
		t2.mu.Unlock()
		checkLogs(t, logs(), "virtio-blk0", "works again")
	})
	t.Run("serial", func(t *testing.T) {
		src := NewSerial("serial0", &bytes.Buffer{}, &fakeIRQ{})
		src.PortWrite(COM1Base+uartIER, []byte{ierRDA})
		src.Input([]byte("x"))
		data, err := src.Save()
		if err != nil {
			t.Fatal(err)
		}
		line := &failingIRQ{fail: true}
		u := NewSerial("serial0", &bytes.Buffer{}, line)
		if err := u.Restore(data); !errors.Is(err, errLine) || !strings.Contains(err.Error(), "serial0") {
			t.Fatalf("Restore with a failing line: %v, want errLine naming serial0", err)
		}
		logs()
		for range 3 {
			var b [1]byte
			u.PortRead(COM1Base+uartRBR, b[:]) // empties RX: line low
			u.Input([]byte("y"))               // line high
		}
		checkLogs(t, logs(), "serial0", errLine.Error())
		line.mu.Lock()
		line.fail = false
		line.mu.Unlock()
		var b [1]byte
		u.PortRead(COM1Base+uartRBR, b[:])
		checkLogs(t, logs(), "serial0", "works again")
	})
}

func checkLogs(t *testing.T, got []string, want ...string) {
	t.Helper()
	if len(got) != 1 {
		t.Fatalf("%d log lines %q, want one", len(got), got)
	}
	for _, w := range want {
		if !strings.Contains(got[0], w) {
			t.Fatalf("log %q does not say %q", got[0], w)
		}
	}
}
