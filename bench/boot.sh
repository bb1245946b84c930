#!/usr/bin/env bash
# bench/boot.sh — boot time, ferry vs QEMU (-enable-kvm), same guest.
#
# Boots guest-images/out/vmlinux (PVH entry) + initramfs.cpio, 128 MiB,
# "ferry.run=poweroff", N times under ferry and N times under
# qemu-system-x86_64 -enable-kvm (microvm), runs interleaved
# (ferry 1, qemu 1, ferry 2, qemu 2, ...) so that background load hits both
# alike. For each run it prints the wall-clock seconds from process start to
# the FERRY-GUEST-READY line on the serial console and to process exit; then
# the medians and the ratio ferry/QEMU.
#
# Both VMMs get exactly the same kernel command line: ferry's defaults, read
# from the "ferry: cmdline:" line that `ferry run -v` prints (that probe run is
# killed as soon as the line appears), plus ferry.run=poweroff. ferry runs are
# started without -v, i.e. with its defaults; QEMU gets the same string via
# -append, with auto-kernel-cmdline=off so that QEMU adds nothing.
#
# The QEMU side is bench/boot-qemu.sh (the guest-image engineer's QEMU
# setup: microvm with an RTC and an i8042 as ferry has, -no-reboot so QEMU
# exits on the guest's reboot=k reset), called once per run with CMDLINE set
# to ferry's command line and GUEST_DIR set to this script's copy of the image.
#
# Usage: bench/boot.sh [-n RUNS]
# Environment: FERRY (bin/ferry), QEMU (qemu-system-x86_64), GUEST_DIR
# (guest-images/out), MEM (128M), TIMEOUT (seconds per run, 300),
# KEEP_LOGS (unset: logs go to a temp dir that is removed).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
# shown: a path as the output shows it, relative to the checkout when it is
# inside it, so that results name no directory of the machine they ran on.
shown() { case "$1" in "$ROOT"/*) echo "${1#"$ROOT"/}" ;; *) echo "$1" ;; esac; }
RUNS=3
while [ $# -gt 0 ]; do
	case $1 in
	-n) RUNS=$2; shift 2 ;;
	-h | --help) sed -n '2,26s/^# \{0,1\}//p' "$0"; exit 0 ;;
	*) echo "usage: $0 [-n RUNS]" >&2; exit 2 ;;
	esac
done
FERRY=${FERRY:-$ROOT/bin/ferry}
QEMU=${QEMU:-qemu-system-x86_64}
GUEST_DIR=${GUEST_DIR:-$ROOT/guest-images/out}
KERNEL=$GUEST_DIR/vmlinux
INITRD=$GUEST_DIR/initramfs.cpio
MEM=${MEM:-128M}
TIMEOUT=${TIMEOUT:-300}
MARKER=FERRY-GUEST-READY

for f in "$FERRY" "$KERNEL" "$INITRD"; do
	[ -e "$f" ] || { echo "boot.sh: $f is missing (make build / make guest)" >&2; exit 1; }
done
command -v "$QEMU" >/dev/null || { echo "boot.sh: $QEMU not found" >&2; exit 1; }
[ -w /dev/kvm ] || { echo "boot.sh: /dev/kvm is not usable" >&2; exit 1; }

# Every process this script starts carries BOOT_SH_RUN in its environment:
# cleanup finds ferry and QEMU that way, although timeout runs them in a
# process group of their own (Ctrl-C does not reach them) and a shell
# around them may be gone. Guests are waited for in the background, so
# that a signal is acted on at once.
export BOOT_SH_RUN=$$-$EPOCHREALTIME
started() {
	local p IFS=$' \t\n' # (a trap may run inside "IFS= read")
	for p in $(grep -lsxzF "BOOT_SH_RUN=$BOOT_SH_RUN" /proc/[0-9]*/environ | cut -d/ -f3); do
		[ "$p" != $$ ] && [ -e "/proc/$p" ] && echo "$p"
	done
	return 0
}
LOGS=$(mktemp -d "${TMPDIR:-/tmp}/ferry-bench-boot.XXXXXX")
# tmpshown: text with this run's temporary directory written $TMP.
tmpshown() { echo "${1//"$LOGS"/\$TMP}"; }
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
	[ -n "${KEEP_LOGS:-}" ] || rm -rf "$LOGS"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
if [ -n "${KEEP_LOGS:-}" ]; then echo "logs: $LOGS"; fi
# Private copies of the binary and the guest image: other people may rebuild
# bin/ferry or guest-images/out while this runs.
cp "$FERRY" "$LOGS/ferry" && FERRY=$LOGS/ferry
cp "$KERNEL" "$LOGS/vmlinux" && KERNEL=$LOGS/vmlinux
cp "$INITRD" "$LOGS/initramfs.cpio" && INITRD=$LOGS/initramfs.cpio

# --- the kernel command line: ferry's defaults ------------------------------
probe=$LOGS/probe.log
timeout "$TIMEOUT" "$FERRY" run -v --memory "$MEM" --kernel "$KERNEL" --initrd "$INITRD" \
	--cmdline "ferry.run=poweroff" </dev/null >"$probe" 2>&1 &
ppid=$!
for _ in $(seq 1 300); do
	grep -qs '^ferry: cmdline: ' "$probe" && break
	kill -0 "$ppid" 2>/dev/null || break
	sleep 0.1
done
kill "$ppid" 2>/dev/null || true
wait "$ppid" 2>/dev/null || true
CMDLINE=$(sed -n 's/^ferry: cmdline: //p' "$probe" | head -1)
[ -n "$CMDLINE" ] || { echo "boot.sh: no 'ferry: cmdline:' line from ferry run -v:" >&2; cat "$probe" >&2; exit 1; }

QEMU_SH=$ROOT/bench/boot-qemu.sh
[ -x "$QEMU_SH" ] || { echo "boot.sh: $QEMU_SH is missing" >&2; exit 1; }
FERRY_ARGS=(run --memory "$MEM" --kernel "$KERNEL" --initrd "$INITRD" --cmdline "ferry.run=poweroff")

echo "== boot benchmark: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(nproc) CPUs, $(uname -r), ${RUNS} runs each"
echo "ferry:  $(tmpshown "$FERRY ${FERRY_ARGS[*]}")"
echo "        ($("$FERRY" version 2>/dev/null || echo "version unknown"), tree $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo "?"), sha256 $(sha256sum "$FERRY" | cut -c1-12))"
# one QEMU boot just to record its exact command line (not timed)
mkdir -p "$LOGS/qemu-probe"
CMDLINE=$CMDLINE GUEST_DIR=$LOGS QEMU=$QEMU timeout 10 "$QEMU_SH" -n 1 -m "$MEM" -t 1 -l "$LOGS/qemu-probe" >/dev/null 2>&1 &
wait $! || true
echo "qemu:   via bench/boot-qemu.sh: $(tmpshown "$(sed 's/-append .*/-append "<cmdline>"/' "$LOGS/qemu-probe/qemu-command" 2>/dev/null || echo "?")")"
echo "        ($("$QEMU" --version | head -1))"
echo "guest:  vmlinux sha256 $(sha256sum "$KERNEL" | cut -c1-12), initramfs.cpio sha256 $(sha256sum "$INITRD" | cut -c1-12) (copies of $(shown "$GUEST_DIR"))"
echo "cmdline (both): $CMDLINE"
echo

# timed LABEL LOG CMD...: runs CMD under timeout, stdout+stderr through a
# reader that stamps the first marker line with $EPOCHREALTIME (no fork per
# line). Sets R_MARKER, R_EXIT (seconds from start), R_RC, R_KINIT (guest
# kernel timestamp of "Run /init"), R_LOAD (1-min load average at the end).
timed() {
	local log=$1; shift
	local t0 t1 tm
	rm -f "$log.marker"
	t0=$EPOCHREALTIME
	set +e
	{
		timeout "$TIMEOUT" "$@" </dev/null 2>&1
		echo $? >"$log.rc"
	} | {
		seen=""
		while IFS= read -r line; do
			if [ -z "$seen" ] && [[ $line == *"$MARKER"* ]]; then
				seen=$EPOCHREALTIME
				printf '%s' "$seen" >"$log.marker"
			fi
			printf '%s\n' "$line"
		done
	} >"$log" &
	wait $!
	set -e
	t1=$EPOCHREALTIME
	R_RC=$(cat "$log.rc" 2>/dev/null || echo 255)
	tm=$(cat "$log.marker" 2>/dev/null || true)
	R_EXIT=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}')
	if [ -n "$tm" ]; then
		R_MARKER=$(awk -v a="$t0" -v b="$tm" 'BEGIN{printf "%.2f", b-a}')
	else
		R_MARKER=NA
	fi
	R_KINIT=$(sed -n 's/^\[ *\([0-9.]*\)\] Run \/init as init process.*/\1/p' "$log" | head -1)
	R_KINIT=${R_KINIT:-NA}
	R_LOAD=$(cut -d' ' -f1 /proc/loadavg)
}

# qemu_run I: one boot through bench/boot-qemu.sh; sets the same R_* as timed.
qemu_run() {
	local dir=$LOGS/qemu-$1 out
	set +e
	CMDLINE=$CMDLINE GUEST_DIR=$LOGS QEMU=$QEMU "$QEMU_SH" -n 1 -m "$MEM" -t "$TIMEOUT" -l "$dir" >"$dir.out" 2>/dev/null &
	wait $!
	set -e
	out=$(cat "$dir.out")
	R_MARKER=$(sed -n 's/.*marker_s=\([^ ]*\).*/\1/p' <<<"$out"); R_MARKER=${R_MARKER:-NA}
	R_EXIT=$(sed -n 's/.*exit_s=\([^ ]*\).*/\1/p' <<<"$out"); R_EXIT=${R_EXIT:-NA}
	R_RC=$(sed -n 's/.*rc=\([^ ]*\).*/\1/p' <<<"$out"); R_RC=${R_RC:-255}
	R_KINIT=$(sed -n 's/^\[ *\([0-9.]*\)\] Run \/init as init process.*/\1/p' "$dir/qemu-run1.log" 2>/dev/null | head -1)
	R_KINIT=${R_KINIT:-NA}
	R_LOAD=$(cut -d' ' -f1 /proc/loadavg)
}

declare -a F_MARK F_EXIT Q_MARK Q_EXIT
printf '%-6s %4s %10s %9s %4s %14s %9s\n' vmm run "marker_s" "exit_s" rc "guest_/init_s" "load1"
for i in $(seq 1 "$RUNS"); do
	timed "$LOGS/ferry-$i.log" "$FERRY" "${FERRY_ARGS[@]}"
	printf '%-6s %4d %10s %9s %4d %14s %9s\n' ferry "$i" "$R_MARKER" "$R_EXIT" "$R_RC" "$R_KINIT" "$R_LOAD"
	[ "$R_RC" = 0 ] && [ "$R_MARKER" != NA ] && F_MARK+=("$R_MARKER") && F_EXIT+=("$R_EXIT")
	qemu_run "$i"
	printf '%-6s %4d %10s %9s %4d %14s %9s\n' qemu "$i" "$R_MARKER" "$R_EXIT" "$R_RC" "$R_KINIT" "$R_LOAD"
	[ "$R_RC" = 0 ] && [ "$R_MARKER" != NA ] && Q_MARK+=("$R_MARKER") && Q_EXIT+=("$R_EXIT")
done

median() {
	[ $# -gt 0 ] || { echo NA; return; }
	printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END{ if (NR%2) printf "%.2f", v[(NR+1)/2]; else printf "%.2f", (v[NR/2]+v[NR/2+1])/2 }'
}
ratio() { if [ "$1" = NA ] || [ "$2" = NA ]; then echo NA; else awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'; fi; }

# The kernel really got the same command line under both?
kc() { tr -d '\r' <"$1" 2>/dev/null | sed -n 's/^\[ *[0-9.]*\] Command line: //p' | head -1; }
kf=$(kc "$LOGS/ferry-1.log"); kq=$(kc "$LOGS/qemu-1/qemu-run1.log")
if [ -n "$kf" ] && [ "$kf" = "$kq" ]; then
	echo "kernel 'Command line:' identical under ferry and QEMU (run 1)"
else
	echo "WARNING: kernel command lines differ: ferry [$kf] qemu [$kq]"
fi

fm=$(median "${F_MARK[@]}"); fe=$(median "${F_EXIT[@]}")
qm=$(median "${Q_MARK[@]}"); qe=$(median "${Q_EXIT[@]}")
echo
echo "medians over successful runs (ferry ${#F_MARK[@]}/$RUNS, qemu ${#Q_MARK[@]}/$RUNS):"
printf '%-26s %8s %8s %12s\n' "" ferry qemu "ferry/qemu"
printf '%-26s %8s %8s %12s\n' "to $MARKER (s)" "$fm" "$qm" "$(ratio "$fm" "$qm")"
printf '%-26s %8s %8s %12s\n' "to process exit (s)" "$fe" "$qe" "$(ratio "$fe" "$qe")"
