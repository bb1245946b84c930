package vmm

import (
	"fmt"
	"strings"
)

// DefaultCmdline is the kernel command line ferry gives a guest unless told
// otherwise. Each parameter is there for a reason:
//   - console=ttyS0 earlyprintk=serial: the 8250 on COM1 is the console.
//   - reboot=k: reboot through the i8042 reset line, which ends the VM.
//   - no_timer_check tsc=reliable: trust the TSC; nested KVMs that emulate
//     guests run too slowly for the timer sanity checks.
//   - noxsave nofsgsbase nopcid noinvpcid clearcpuid=...: features the
//     instruction emulator of nested KVMs cannot run (also hidden in CPUID;
//     the parameters cover kernels that probe by other means).
//   - mitigations=off rodata=off: speculative-execution mitigations add
//     instructions on every kernel entry and nothing inside a test VM.
//   - ferry.*: switches for the small patches of ferry's guest kernel
//     (guest-images/README.md), each working around an instruction that
//     nested, emulating KVMs cannot run; other kernels ignore them.
//
// lpj= and tsc_early_khz= are added at run time from the host's TSC
// frequency, so the guest skips its delay-loop and TSC calibration.
const DefaultCmdline = "console=ttyS0 earlyprintk=serial reboot=k no_timer_check tsc=reliable " +
	"noxsave clearcpuid=308,151,158,306,534,297,580,141 nofsgsbase nopcid noinvpcid " +
	"mitigations=off rodata=off " +
	"ferry.no_int3_selftest ferry.no_fwait ferry.syscall_fixup ferry.no_initmem_poison"

// GuestHZ is the timer frequency of ferry's guest kernel (CONFIG_HZ_100).
const GuestHZ = 100

// Cmdline builds the command line: ferry's defaults (unless noDefaults),
// the TSC calibration, then the user's extra parameters (which win, since
// Linux takes the last value of a repeated parameter).
func Cmdline(tscKHz uint64, extra string, noDefaults bool) string {
	var parts []string
	if !noDefaults {
		parts = append(parts, DefaultCmdline)
		if tscKHz > 0 {
			parts = append(parts, fmt.Sprintf("tsc_early_khz=%d lpj=%d", tscKHz, tscKHz*1000/GuestHZ))
		}
	}
	if extra = strings.TrimSpace(extra); extra != "" {
		parts = append(parts, extra)
	}
	return strings.Join(parts, " ")
}
