package main

import (
	"strings"
	"testing"

	"github.com/ferryvmm/ferry/vmm/incoming"
)

func TestLoopbackOnly(t *testing.T) {
	for addr, ok := range map[string]bool{
		"127.0.0.1:7070": true, "[::1]:7070": true, "localhost:7070": true, "127.3.4.5:1": true,
		"0.0.0.0:7070": false, ":7070": false, "10.0.0.2:7070": false, "[::]:7070": false,
	} {
		err := incoming.LoopbackOnly(addr)
		if (err == nil) != ok {
			t.Errorf("%s: %v, want allowed=%v", addr, err, ok)
		}
		if err != nil && !strings.Contains(err.Error(), "--insecure") {
			t.Errorf("%s: the error does not say how to proceed: %v", addr, err)
		}
	}
}

func TestDefaultMaxMemory(t *testing.T) {
	if m := defaultMaxMemory(); m < 64<<20 || m > 64<<30 {
		t.Fatalf("default --max-memory %d", m)
	}
}
