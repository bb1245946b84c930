package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/ferryvmm/ferry/kvm"
	"github.com/ferryvmm/ferry/vmm"
)

var probeCommand = &cli.Command{
	Name:  "probe",
	Usage: "report the KVM capabilities ferry needs and which are missing",
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "kvm", Value: "/dev/kvm", Usage: "KVM device node"},
	},
	Action: func(c *cli.Context) error {
		sys, err := kvm.Open(c.String("kvm"))
		if err != nil {
			return err
		}
		defer sys.Close()
		w := c.App.Writer
		fmt.Fprintf(w, "KVM device: %s (API 12)\n", sys.Path())
		missing := 0
		report := func(c vmm.Capability, required bool, without string) {
			n, err := sys.CheckExtension(c.Cap)
			state := "yes"
			switch {
			case err != nil:
				state = "error: " + err.Error()
			case n == 0 && required:
				state = "MISSING (required)"
				missing++
			case n == 0:
				state = "no (" + without + ")"
			case n > 1:
				state = fmt.Sprintf("yes (%#x)", n)
			}
			fmt.Fprintf(w, "  %-34s %s\n", c.Name, state)
		}
		for _, c := range vmm.RequiredCaps {
			report(c, true, "")
		}
		for _, c := range optionalCaps {
			report(c.Capability, false, c.without)
		}
		if mod := kvm.EmulatingModule(); mod != "" {
			fmt.Fprintf(w, "note: KVM is provided by module %s, which runs guests in an instruction\n"+
				"      emulator (about a million instructions per second): guests boot in\n"+
				"      seconds to minutes. ferry adds kernel parameters for it (see\n"+
				"      'ferry run -v'), and its guest image is built for it. On VT-x/AMD-V hardware guests run at native speed.\n", mod)
		}
		if missing > 0 {
			return fmt.Errorf("%d required KVM capabilities are missing", missing)
		}
		fmt.Fprintln(w, "ferry can run guests here")
		return nil
	},
}

// optionalCaps are used when KVM offers them; without each, ferry says
// what it does instead.
var optionalCaps = []struct {
	vmm.Capability
	without string
}{
	{vmm.Capability{Cap: kvm.CapXSave, Name: "KVM_CAP_XSAVE"}, "FPU state saved with KVM_GET_FPU"},
	{vmm.Capability{Cap: kvm.CapXCRs, Name: "KVM_CAP_XCRS"}, "no XCR state"},
	{vmm.Capability{Cap: kvm.CapManualDirtyLogProtect2, Name: "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2"}, "migration cannot clear just before sending"},
	{vmm.Capability{Cap: kvm.CapDirtyLogRing, Name: "KVM_CAP_DIRTY_LOG_RING"}, "not used yet"},
	{vmm.Capability{Cap: kvm.CapIRQFD, Name: "KVM_CAP_IRQFD"}, "virtio interrupts through KVM_IRQ_LINE"},
	{vmm.Capability{Cap: kvm.CapIOEventFD, Name: "KVM_CAP_IOEVENTFD"}, "virtio notifies as MMIO exits, served on the vCPU thread"},
	{vmm.Capability{Cap: kvm.CapAdjustClock, Name: "KVM_CAP_ADJUST_CLOCK"}, "kvmclock not migrated"},
}
