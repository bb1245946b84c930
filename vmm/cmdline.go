package vmm

import (
	"fmt"
	"strings"
)

// DefaultCmdline is the kernel command line ferry gives every guest unless
// told otherwise:
//   - console=ttyS0 earlyprintk=serial: the 8250 on COM1 is the console.
//   - reboot=k: reboot through the i8042 reset line, which ends the VM
//     (ferry has no ACPI).
//   - ferry.*: switches for the small patches of ferry's guest kernel
//     (guest-images/README.md), each working around an instruction that
//     emulating KVMs cannot run; they change nothing on hardware, and
//     other kernels ignore them.
const DefaultCmdline = "console=ttyS0 earlyprintk=serial reboot=k " +
	"ferry.no_int3_selftest ferry.no_fwait ferry.syscall_fixup ferry.no_initmem_poison"

// EmulatorCmdline is added when /dev/kvm emulates guests (kvm.EmulatingModule):
// there every guest instruction costs about a microsecond, and the emulator
// cannot run some instructions at all. On VT-x/AMD-V hardware these
// parameters would cost the guest performance, so ferry leaves them out.
//   - no_timer_check tsc=reliable: trust the TSC; the timer sanity checks
//     fail on a guest this slow.
//   - noxsave clearcpuid=... nofsgsbase nopcid noinvpcid: features the
//     emulator cannot run (SMAP, POPCNT, RDRAND, RDSEED, RDPID, ERMS, FSRM,
//     CMPXCHG16B). They are hidden in CPUID too, but such a KVM reports host
//     features through CPUID regardless.
//   - mitigations=off rodata=off: speculation mitigations and read-only
//     data protection add instructions on every kernel entry and page
//     remapping at boot, which the emulator runs slowly.
//   - percpu_alloc=page: the embedding per-CPU allocator zeroes a 2 MiB
//     unit at boot (0.45 s emulated).
const EmulatorCmdline = "no_timer_check tsc=reliable noxsave " +
	"clearcpuid=308,151,158,306,534,297,580,141 nofsgsbase nopcid noinvpcid " +
	"mitigations=off rodata=off percpu_alloc=page"

// GuestHZ is the timer frequency of ferry's guest kernel (CONFIG_HZ_100).
const GuestHZ = 100

// Cmdline builds the command line: ferry's defaults (unless noDefaults),
// the emulator parameters when emulated, the TSC calibration (so the guest
// skips its delay-loop and TSC calibration), then the user's extra
// parameters, which win since Linux takes the last value of a repeated one.
func Cmdline(tscKHz uint64, emulated bool, extra string, noDefaults bool) string {
	var parts []string
	if !noDefaults {
		parts = append(parts, DefaultCmdline)
		if emulated {
			parts = append(parts, EmulatorCmdline)
		}
		if tscKHz > 0 {
			parts = append(parts, fmt.Sprintf("tsc_early_khz=%d lpj=%d", tscKHz, tscKHz*1000/GuestHZ))
		}
	}
	if extra = strings.TrimSpace(extra); extra != "" {
		parts = append(parts, extra)
	}
	return strings.Join(parts, " ")
}
