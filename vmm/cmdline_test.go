package vmm

import (
	"strings"
	"testing"
)

func TestCmdline(t *testing.T) {
	got := Cmdline(2600000, "ferry.run=x", false)
	if !strings.HasPrefix(got, DefaultCmdline+" ") {
		t.Errorf("command line %q does not start with the defaults", got)
	}
	fields := strings.Fields(got)
	has := func(p string) bool {
		for _, f := range fields {
			if f == p {
				return true
			}
		}
		return false
	}
	for _, p := range []string{"tsc_early_khz=2600000", "lpj=26000000", "console=ttyS0", "noxsave"} {
		if !has(p) {
			t.Errorf("command line %q lacks %s", got, p)
		}
	}
	if !strings.HasSuffix(got, " ferry.run=x") {
		t.Errorf("command line %q does not end with the extra parameters", got)
	}
	// The extras come after the calibration so they can override it.
	if strings.Index(got, "lpj=") > strings.Index(got, "ferry.run=x") {
		t.Errorf("extra parameters come before lpj= in %q", got)
	}

	if got := Cmdline(2600000, "  ferry.run=x  ", true); got != "ferry.run=x" {
		t.Errorf("noDefaults: %q, want only the extra", got)
	}
	if got := Cmdline(2600000, "", true); got != "" {
		t.Errorf("noDefaults, no extra: %q, want empty", got)
	}
	if got := Cmdline(0, "", false); got != DefaultCmdline {
		t.Errorf("unknown TSC rate: %q, want the bare defaults", got)
	}
	if got := Cmdline(3000000, "", false); got != DefaultCmdline+" tsc_early_khz=3000000 lpj=30000000" {
		t.Errorf("no extra: %q", got)
	}
	if len(Cmdline(5000000, strings.Repeat("x", 100), false)) > 2047 {
		t.Error("defaults plus a short extra exceed the PVH command line limit")
	}
}
