package vmm

import (
	"os"
	"sort"
	"strings"
	"testing"
)

func TestCmdline(t *testing.T) {
	got := Cmdline(2600000, true, "ferry.run=x", false)
	if !strings.HasPrefix(got, DefaultCmdline+" "+EmulatorCmdline+" ") {
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

	if got := Cmdline(2600000, true, "  ferry.run=x  ", true); got != "ferry.run=x" {
		t.Errorf("noDefaults: %q, want only the extra", got)
	}
	if got := Cmdline(2600000, true, "", true); got != "" {
		t.Errorf("noDefaults, no extra: %q, want empty", got)
	}
	if got := Cmdline(0, false, "", false); got != DefaultCmdline {
		t.Errorf("unknown TSC rate: %q, want the bare defaults", got)
	}
	if got := Cmdline(3000000, false, "", false); got != DefaultCmdline+" tsc_early_khz=3000000 lpj=30000000" {
		t.Errorf("no extra: %q", got)
	}
	if len(Cmdline(5000000, true, strings.Repeat("x", 100), false)) > 2047 {
		t.Error("defaults plus a short extra exceed the PVH command line limit")
	}
}

// TestCmdlineMatchesGuestImage: the parameters ferry supplies on an
// emulating KVM are exactly those the guest image documents and was
// measured with (guest-images/cmdline.default).
func TestCmdlineMatchesGuestImage(t *testing.T) {
	b, err := os.ReadFile("../guest-images/cmdline.default")
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Fields(string(b))
	got := strings.Fields(DefaultCmdline + " " + EmulatorCmdline)
	sort.Strings(want)
	sort.Strings(got)
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("ferry's defaults and guest-images/cmdline.default differ:\n ferry: %v\n image: %v", got, want)
	}
	if strings.Contains(DefaultCmdline, "noxsave") || strings.Contains(DefaultCmdline, "mitigations") {
		t.Error("emulator-only parameters in the defaults used on hardware")
	}
}
