package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/ferryvmm/ferry/kvm"
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
		for _, p := range probeCaps {
			n, err := sys.CheckExtension(p.cap)
			state := "yes"
			switch {
			case err != nil:
				state = "error: " + err.Error()
			case n == 0 && p.required:
				state = "MISSING (required)"
				missing++
			case n == 0:
				state = "no (" + p.without + ")"
			case p.cap == kvm.CapManualDirtyLogProtect2 || p.cap == kvm.CapDirtyLogRing:
				state = fmt.Sprintf("yes (%#x)", n)
			}
			fmt.Fprintf(w, "  %-34s %s\n", p.name, state)
		}
		if mod := emulatingModule(); mod != "" {
			fmt.Fprintf(w, "note: KVM is provided by module %s, which runs guests in an instruction\n"+
				"      emulator (about a million instructions per second): guests boot in\n"+
				"      seconds to minutes, and ferry's default guest image and command line\n"+
				"      are tuned for it. On VT-x/AMD-V hardware guests run at native speed.\n", mod)
		}
		if missing > 0 {
			return fmt.Errorf("%d required KVM capabilities are missing", missing)
		}
		fmt.Fprintln(w, "ferry can run guests here")
		return nil
	},
}

var probeCaps = []struct {
	cap      kvm.Capability
	name     string
	required bool
	without  string
}{
	{kvm.CapUserMemory, "KVM_CAP_USER_MEMORY", true, ""},
	{kvm.CapIRQChip, "KVM_CAP_IRQCHIP", true, ""},
	{kvm.CapPIT2, "KVM_CAP_PIT2", true, ""},
	{kvm.CapSetTSSAddr, "KVM_CAP_SET_TSS_ADDR", true, ""},
	{kvm.CapImmediateExit, "KVM_CAP_IMMEDIATE_EXIT", true, ""},
	{kvm.CapExtCPUID, "KVM_CAP_EXT_CPUID", true, ""},
	{kvm.CapMPState, "KVM_CAP_MP_STATE", true, ""},
	{kvm.CapVCPUEvents, "KVM_CAP_VCPU_EVENTS", true, ""},
	{kvm.CapDebugRegs, "KVM_CAP_DEBUGREGS", true, ""},
	{kvm.CapGetTSCKHz, "KVM_CAP_GET_TSC_KHZ", true, ""},
	{kvm.CapXSave, "KVM_CAP_XSAVE", false, "FPU state saved with KVM_GET_FPU"},
	{kvm.CapXCRs, "KVM_CAP_XCRS", false, "no XCR state"},
	{kvm.CapManualDirtyLogProtect2, "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2", false, "migration cannot clear just before sending"},
	{kvm.CapDirtyLogRing, "KVM_CAP_DIRTY_LOG_RING", false, "not used yet"},
	{kvm.CapIRQFD, "KVM_CAP_IRQFD", false, "device interrupts go through KVM_IRQ_LINE"},
	{kvm.CapIOEventFD, "KVM_CAP_IOEVENTFD", false, "device notifications exit to ferry"},
	{kvm.CapAdjustClock, "KVM_CAP_ADJUST_CLOCK", false, "kvmclock not migrated"},
}

// emulatingModule names the loaded KVM module if it is one that emulates
// guests instead of using hardware virtualisation.
func emulatingModule() string {
	for _, name := range []string{"kvm_pvm"} {
		if _, err := os.Stat("/sys/module/" + name); err == nil {
			return name
		}
	}
	return ""
}
