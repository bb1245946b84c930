package main

import (
	"fmt"
	"strings"
	"testing"

	"github.com/ferryvmm/ferry/vmm"
)

// ferry run checks --memory and --cpus with vmm's own limits, before it
// opens anything; receive and restore accept vmm.MaxCPUs by default.
func TestMachineLimits(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"run", "--cpus", fmt.Sprint(vmm.MaxCPUs + 1)}, fmt.Sprintf("--cpus: %d: ferry supports 1 to %d vCPUs", vmm.MaxCPUs+1, vmm.MaxCPUs)},
		{[]string{"run", "--cpus", "0"}, "--cpus: 0"},
		{[]string{"run", "--memory", "8M"}, "--memory: 8M: must be a multiple of 4 KiB"},
		{[]string{"run", "--memory", "2T"}, "--memory: 2T: must be a multiple of 4 KiB"},
	} {
		err := newApp().Run(flagsFirst(append([]string{"ferry"}, c.args...)))
		if err == nil || !strings.Contains(err.Error(), c.want) || exitCode(err) != 2 {
			t.Errorf("ferry %q: %v (exit %d), want exit 2 mentioning %q", c.args, err, exitCode(err), c.want)
		}
	}
	for _, cmd := range []string{"receive", "restore"} {
		found := false
		for _, f := range newApp().Command(cmd).Flags {
			if f.Names()[0] != "max-cpus" {
				continue
			}
			found = true
			if !strings.Contains(f.String(), fmt.Sprintf("(default: %d)", vmm.MaxCPUs)) {
				t.Errorf("%s --max-cpus: %s, want the default %d", cmd, f, vmm.MaxCPUs)
			}
		}
		if !found {
			t.Errorf("%s has no --max-cpus", cmd)
		}
	}
}
