#!/usr/bin/env bash
# bench/boot-qemu.sh — boot ferry's guest under QEMU (-enable-kvm), N times.
#
# Boots guest-images/out/vmlinux (PVH entry) + initramfs.cpio under
# qemu-system-x86_64's microvm machine with "ferry.run=poweroff" and prints,
# per run, one machine-readable line:
#
#   qemu marker_s=<s> exit_s=<s> rc=<QEMU exit status>
#
# marker_s: seconds from QEMU's start to the FERRY-GUEST-READY line on the
# serial console ("NA" if it never came); exit_s: seconds to QEMU's exit.
#
# Kernel command line: guest-images/cmdline.default (the parameters ferry
# uses by default), then lpj= and tsc_early_khz= computed here from the
# host's TSC frequency (HZ=100), then ferry.run=poweroff, then EXTRA.
# With CMDLINE set in the environment, exactly that string is used instead
# (bench/boot.sh passes ferry's own, as `ferry run -v` prints it).
#
# QEMU setup, chosen to match ferry's machine:
#  - microvm, no ACPI, no option ROMs, auto-kernel-cmdline=off (QEMU adds
#    nothing to the command line);
#  - rtc=on: an MC146818 RTC, as ferry has; without one the kernel polls the
#    missing clock for a second of (emulated) time at boot;
#  - -device i8042 and -no-reboot: the guest restarts through the i8042
#    (reboot=k) and QEMU exits on that reset. microvm has no i8042 of its
#    own; without it the restart path spins for ~20 s before it falls back
#    to a triple fault.
#
# Usage: bench/boot-qemu.sh [-n RUNS] [-m MEM] [-s VCPUS] [-t TIMEOUT]
#                           [-l LOGDIR] [EXTRA kernel parameters...]
# Environment: QEMU (qemu-system-x86_64), GUEST_DIR (guest-images/out),
# TSC_KHZ (override the host TSC frequency), CMDLINE (the whole kernel
# command line, instead of the one built here).
set -euo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=1 MEM=128M VCPUS=1 TIMEOUT=300 LOGDIR=
while getopts "n:m:s:t:l:h" opt; do
	case $opt in
	n) RUNS=$OPTARG ;;
	m) MEM=$OPTARG ;;
	s) VCPUS=$OPTARG ;;
	t) TIMEOUT=$OPTARG ;;
	l) LOGDIR=$OPTARG ;;
	h) sed -n '2,30s/^# \{0,1\}//p' "$0"; exit 0 ;;
	*) echo "usage: $0 [-n RUNS] [-m MEM] [-s VCPUS] [-t TIMEOUT] [-l LOGDIR] [EXTRA...]" >&2; exit 2 ;;
	esac
done
shift $((OPTIND - 1))
EXTRA="$*"

QEMU=${QEMU:-qemu-system-x86_64}
GUEST_DIR=${GUEST_DIR:-$ROOT/guest-images/out}
KERNEL=$GUEST_DIR/vmlinux
INITRD=$GUEST_DIR/initramfs.cpio
CMDLINE_FILE=$ROOT/guest-images/cmdline.default
MARKER=FERRY-GUEST-READY
GUEST_HZ=100

CMDLINE_OVERRIDE=${CMDLINE:-}
[ -n "$CMDLINE_OVERRIDE" ] && CMDLINE_FILE=/dev/null
for f in "$KERNEL" "$INITRD" "$CMDLINE_FILE"; do
	[ -e "$f" ] || { echo "boot-qemu.sh: $f is missing (make -C guest-images)" >&2; exit 1; }
done
command -v "$QEMU" >/dev/null || { echo "boot-qemu.sh: $QEMU not found (apt-get install qemu-system-x86)" >&2; exit 1; }
[ -w /dev/kvm ] || { echo "boot-qemu.sh: /dev/kvm is not usable" >&2; exit 1; }

# Host TSC frequency in kHz: the refined calibration from the kernel log if
# there is one, else the detected frequency, else "cpu MHz" of /proc/cpuinfo.
tsc_khz() {
	local log mhz
	log=$( (dmesg 2>/dev/null || journalctl -k -q 2>/dev/null || true) | grep -E 'tsc: (Refined TSC clocksource calibration|Detected) ' || true)
	mhz=$(printf '%s\n' "$log" | sed -n 's/.*Refined TSC clocksource calibration: \([0-9.]*\) MHz.*/\1/p' | tail -1)
	[ -n "$mhz" ] || mhz=$(printf '%s\n' "$log" | sed -n 's/.*tsc: Detected \([0-9.]*\) MHz.*/\1/p' | tail -1)
	[ -n "$mhz" ] || mhz=$(sed -n 's/^cpu MHz[[:space:]]*: \([0-9.]*\)/\1/p' /proc/cpuinfo | head -1)
	[ -n "$mhz" ] || { echo "boot-qemu.sh: cannot find the host TSC frequency; set TSC_KHZ" >&2; exit 1; }
	awk -v m="$mhz" 'BEGIN { printf "%d\n", m * 1000 + 0.5 }'
}
if [ -n "$CMDLINE_OVERRIDE" ]; then
	CMDLINE=$CMDLINE_OVERRIDE
else
	KHZ=${TSC_KHZ:-$(tsc_khz)}
	LPJ=$((KHZ * 1000 / GUEST_HZ))
	CMDLINE="$(tr -s ' \n' '  ' < "$CMDLINE_FILE" | sed 's/ *$//') lpj=$LPJ tsc_early_khz=$KHZ ferry.run=poweroff"
fi
[ -n "$EXTRA" ] && CMDLINE="$CMDLINE $EXTRA"

QEMU_ARGS=(-M microvm,x-option-roms=off,acpi=off,rtc=on,auto-kernel-cmdline=off
	-enable-kvm -cpu host,-arch-capabilities -m "$MEM" -smp "$VCPUS"
	-nodefaults -no-user-config -display none -serial stdio
	-device i8042 -no-reboot
	-kernel "$KERNEL" -initrd "$INITRD" -append "$CMDLINE")

[ -n "$LOGDIR" ] && mkdir -p "$LOGDIR" && echo "# cmdline: $CMDLINE" >&2 &&
	printf '%s ' "$QEMU" "${QEMU_ARGS[@]}" > "$LOGDIR/qemu-command"

# Every process this script starts carries BOOT_QEMU_RUN in its
# environment: cleanup finds QEMU that way, although timeout runs it in a
# process group of its own, where Ctrl-C does not reach it.
export BOOT_QEMU_RUN=$$-$EPOCHREALTIME
started() {
	local p IFS=$' \t\n' # (a trap may run inside "IFS= read")
	for p in $(grep -lsxzF "BOOT_QEMU_RUN=$BOOT_QEMU_RUN" /proc/[0-9]*/environ | cut -d/ -f3); do
		[ "$p" != $$ ] && [ -e "/proc/$p" ] && echo "$p"
	done
	return 0
}
cleanup() {
	local pids i IFS=$' \t\n'
	trap - EXIT INT TERM
	set +e
	for ((i = 0; i < 50; i++)); do
		pids=$(started)
		[ -n "$pids" ] || break
		[ $i = 0 ] && kill $pids 2>/dev/null
		sleep 0.1
	done
	[ -n "$pids" ] && kill -9 $pids 2>/dev/null
	wait 2>/dev/null # the shells around them, before their files go
	return 0
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for run in $(seq 1 "$RUNS"); do
	log=/dev/null
	[ -n "$LOGDIR" ] && log=$LOGDIR/qemu-run$run.log
	: > "$log"
	marker=
	start=$EPOCHREALTIME
	while IFS= read -r line; do
		[ -n "$LOGDIR" ] && printf '%s\n' "$line" >> "$log"
		if [ -z "$marker" ] && [[ $line == *"$MARKER"* ]]; then
			marker=$EPOCHREALTIME
		fi
	done < <(timeout "$TIMEOUT" "$QEMU" "${QEMU_ARGS[@]}" </dev/null 2>&1)
	qpid=$!
	end=$EPOCHREALTIME
	rc=0
	wait "$qpid" || rc=$?
	awk -v s="$start" -v m="$marker" -v e="$end" -v rc="$rc" 'BEGIN {
		ms = (m == "") ? "NA" : sprintf("%.2f", m - s)
		printf "qemu marker_s=%s exit_s=%.2f rc=%s\n", ms, e - s, rc
	}'
done
