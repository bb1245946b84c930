#!/usr/bin/env bash
# bench/migrate-digest.sh — live migration with and without the digest filter.
#
# For each workload and each bandwidth cap: boot a fresh guest running the
# dirty workload (a counter plus a memory writer), wait until the writer
# reports its rate (first FERRY-DIRTY line), start `ferry receive`, migrate
# with the digest filter (ferry's default); then the same again with a fresh
# guest and --no-digest. Same --max-bandwidth, --downtime, --max-iterations
# and --timeout (with --on-timeout force) for both, so a run that does not
# converge still ends, and is recorded as not converged.
#
# The two "hosts" are two network namespaces joined by a veth pair when run
# as root (NETNS=0 to use loopback instead); `ferry migrate` talks to the
# source over its unix control socket from the root namespace.
#
# After each migration the script checks that the source ferry exited 0 and
# that the destination printed "guest received ... and running" followed by a
# FERRY-COUNTER line (the guest runs there); it records the last counter
# value on the source and the first on the destination.
#
# Output: the `ferry migrate` lines of every run, a summary table, and a
# per-iteration table (pages dirty / false dirty skipped / zero / sent).
#
# Usage: bench/migrate-digest.sh
# Environment (defaults in brackets):
#   FERRY [bin/ferry]  GUEST_DIR [guest-images/out]  MEM [128M]
#   BWS ["8MiB/s 32MiB/s"]  caps, one pair of runs per cap and workload
#   WORKLOADS  ';'-separated list of NAME=PARAMS (see below)
#   DOWNTIME [300ms]  MAX_ITER [15]  MIG_TIMEOUT [60s]
#   NETNS [auto]  KEEP_LOGS (unset: logs are removed)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
# shown: a path as the output shows it, relative to the checkout when it is
# inside it, so that results name no directory of the machine they ran on.
shown() { case "$1" in "$ROOT"/*) echo "${1#"$ROOT"/}" ;; *) echo "$1" ;; esac; }
FERRY_SRC=${FERRY:-$ROOT/bin/ferry}
GUEST_DIR=${GUEST_DIR:-$ROOT/guest-images/out}
MEM=${MEM:-128M}
BWS=${BWS:-"8MiB/s 32MiB/s"}
WORKLOADS=${WORKLOADS:-"same=ferry.mode=same ferry.ws=32M ferry.rate=5000;mix70=ferry.mode=mix ferry.same=70 ferry.ws=32M ferry.rate=5000"}
DOWNTIME=${DOWNTIME:-300ms}
MAX_ITER=${MAX_ITER:-15}
MIG_TIMEOUT=${MIG_TIMEOUT:-60s}
NETNS=${NETNS:-auto}
BOOT_WAIT=${BOOT_WAIT:-400} # seconds until the first FERRY-DIRTY line
PROC_TIMEOUT=1200           # hard bound on every ferry process

for f in "$FERRY_SRC" "$GUEST_DIR/vmlinux" "$GUEST_DIR/initramfs.cpio"; do
	[ -e "$f" ] || { echo "migrate-digest.sh: $f is missing (make build / make guest)" >&2; exit 1; }
done
command -v jq >/dev/null || { echo "migrate-digest.sh: needs jq" >&2; exit 1; }

LOGS=$(mktemp -d "${TMPDIR:-/tmp}/ferry-bench-mig.XXXXXX")
# A private copy: other people may rebuild bin/ferry while this runs.
FERRY=$LOGS/ferry
cp "$FERRY_SRC" "$FERRY"
cp "$GUEST_DIR/vmlinux" "$GUEST_DIR/initramfs.cpio" "$LOGS/"
KERNEL=$LOGS/vmlinux INITRD=$LOGS/initramfs.cpio

# Every process this script starts carries MIGRATE_DIGEST_RUN in its
# environment: cleanup finds them all that way, whatever became of the
# shell or timeout around them. Long commands run in the background and
# are waited for, so that a signal is acted on at once.
export MIGRATE_DIGEST_RUN=$$-$EPOCHREALTIME
started() {
	local p IFS=$' \t\n' # (a trap may run inside "IFS= read")
	for p in $(grep -lsxzF "MIGRATE_DIGEST_RUN=$MIGRATE_DIGEST_RUN" /proc/[0-9]*/environ | cut -d/ -f3); do
		[ "$p" != $$ ] && [ -e "/proc/$p" ] && echo "$p"
	done
	return 0
}
PIDS=()
NS_A="" NS_B="" VETH=""
cleanup() {
	local p pids i IFS=$' \t\n'
	trap - EXIT INT TERM
	set +e
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	for ((i = 0; i < 50; i++)); do
		pids=$(started)
		[ -n "$pids" ] || break
		[ $i = 0 ] && kill $pids 2>/dev/null
		sleep 0.1
	done
	[ -n "$pids" ] && kill -9 $pids 2>/dev/null
	wait 2>/dev/null
	[ -n "$NS_A" ] && ip netns del "$NS_A" 2>/dev/null
	[ -n "$NS_B" ] && ip netns del "$NS_B" 2>/dev/null
	[ -n "$VETH" ] && ip link show "$VETH" >/dev/null 2>&1 && ip link del "$VETH"
	if [ -z "${KEEP_LOGS:-}" ]; then rm -rf "$LOGS"; else echo "logs: $LOGS"; fi
}
trap cleanup EXIT
trap 'echo "migrate-digest.sh: interrupted" >&2; exit 130' INT
trap 'echo "migrate-digest.sh: terminated" >&2; exit 143' TERM

# --- two hosts --------------------------------------------------------------
if [ "$NETNS" = auto ]; then
	if [ "$(id -u)" = 0 ] && command -v ip >/dev/null; then NETNS=1; else NETNS=0; fi
fi
EXEC_A=() EXEC_B=()
if [ "$NETNS" = 1 ]; then
	id=$$
	NS_A=fbench-a-$id NS_B=fbench-b-$id
	ADDR_A=10.233.0.1 ADDR_B=10.233.0.2
	ip netns add "$NS_A"
	ip netns add "$NS_B"
	VETH=fba$id
	ip link add "fba$id" type veth peer name "fbb$id"
	ip link set "fba$id" netns "$NS_A"
	ip link set "fbb$id" netns "$NS_B"
	ip -n "$NS_A" addr add "$ADDR_A/24" dev "fba$id"
	ip -n "$NS_B" addr add "$ADDR_B/24" dev "fbb$id"
	for ns in "$NS_A" "$NS_B"; do ip -n "$ns" link set lo up; done
	ip -n "$NS_A" link set "fba$id" up
	ip -n "$NS_B" link set "fbb$id" up
	EXEC_A=(ip netns exec "$NS_A") EXEC_B=(ip netns exec "$NS_B")
	HOSTS="two network namespaces ($NS_A $ADDR_A, $NS_B $ADDR_B) joined by a veth pair"
else
	ADDR_B=127.0.0.1
	HOSTS="one namespace, loopback"
fi

# Without TLS, ferry receive listens on a non-loopback address only with
# --insecure (ferry since d2733cb): the veth between our own two namespaces
# is a trusted link, and TLS would add nothing to compare here.
RECV_FLAGS=()
recv_help=$("$FERRY" receive --help 2>&1 || true) # (not piped into grep -q: SIGPIPE + pipefail)
if [ "$ADDR_B" != 127.0.0.1 ] && [[ $recv_help == *--insecure* ]]; then
	RECV_FLAGS=(--insecure)
fi

echo "== migration benchmark: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(nproc) CPUs, $(uname -r)"
echo "ferry: $(shown "$FERRY_SRC") ($("$FERRY" version 2>/dev/null || echo "version unknown"), tree $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo "?"), sha256 $(sha256sum "$FERRY" | cut -c1-12))"
echo "hosts: $HOSTS"
echo "guest: $MEM, 1 vCPU, copies of $(shown "$GUEST_DIR"): vmlinux sha256 $(sha256sum "$KERNEL" | cut -c1-12), initramfs.cpio sha256 $(sha256sum "$INITRD" | cut -c1-12)"
echo "receive flags: --listen $ADDR_B:PORT --api-socket S ${RECV_FLAGS[*]} (no TLS)"
echo "migrate flags (all runs): --downtime $DOWNTIME --max-iterations $MAX_ITER --timeout $MIG_TIMEOUT --on-timeout force, --max-bandwidth from: $BWS"
echo

# wait_line FILE REGEX SECONDS [PID]: until a line of FILE matches (0) or
# the time is up or PID died (1).
wait_line() {
	local file=$1 re=$2 secs=$3 pid=${4:-} i
	for ((i = 0; i < secs * 5; i++)); do
		grep -Eq -- "$re" "$file" 2>/dev/null && return 0
		if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
			grep -Eq -- "$re" "$file" 2>/dev/null && return 0
			return 1
		fi
		sleep 0.2
	done
	return 1
}

# stop PID: end a process this script started (TERM, then KILL).
stop() {
	local pid=$1 i
	kill "$pid" 2>/dev/null || return 0
	for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
	kill -9 "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

RESULTS=$LOGS/results.tsv
: >"$RESULTS"
run=0
PORT=$((7800 + $$ % 1000))

# run_one NAME PARAMS BW MODE: one fresh guest, one migration.
run_one() {
	local name=$1 params=$2 bw=$3 mode=$4
	run=$((run + 1))
	PORT=$((PORT + 1))
	local d=$LOGS/run$run
	mkdir -p "$d"
	local extra=()
	[ "$mode" = no-digest ] && extra=(--no-digest)
	echo "---- run $run: workload $name ($params), --max-bandwidth $bw, filter: $mode"

	timeout "$PROC_TIMEOUT" "${EXEC_A[@]}" "$FERRY" run --memory "$MEM" \
		--kernel "$KERNEL" --initrd "$INITRD" \
		--api-socket "$d/src.sock" --cmdline "ferry.run=dirty $params" \
		</dev/null >"$d/src.log" 2>&1 &
	local spid=$!
	PIDS+=("$spid")
	local t0=$EPOCHREALTIME
	if ! wait_line "$d/src.log" '^FERRY-DIRTY mode=' "$BOOT_WAIT" "$spid"; then
		echo "     guest did not report FERRY-DIRTY within ${BOOT_WAIT}s: run not measured"
		tail -5 "$d/src.log" | sed 's/^/     | /'
		stop "$spid"
		printf '%s\t%s\t%s\tNA\tNA\tNA\tNA\tNA\tNA\tNA\tNA\tboot-failed\n' "$name" "$bw" "$mode" >>"$RESULTS"
		return
	fi
	local boot_s
	boot_s=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.0f", b-a}')
	local rate
	rate=$(grep -E '^FERRY-DIRTY mode=' "$d/src.log" | tail -1 | sed -n 's/.*actual=\([0-9]*\)\/s.*/\1/p')
	echo "     guest up, writer at ${rate} pages/s (first FERRY-DIRTY after ${boot_s}s)"

	timeout "$PROC_TIMEOUT" "${EXEC_B[@]}" "$FERRY" receive --listen "$ADDR_B:$PORT" \
		--api-socket "$d/dst.sock" "${RECV_FLAGS[@]}" </dev/null >"$d/dst.log" 2>&1 &
	local dpid=$!
	PIDS+=("$dpid")
	if ! wait_line "$d/dst.log" 'waiting for a migration on' 30 "$dpid"; then
		echo "     ferry receive did not start: run not measured"
		cat "$d/dst.log" | sed 's/^/     | /'
		stop "$dpid"; stop "$spid"
		echo "migrate-digest.sh: ferry receive cannot start; stopping here" >&2
		exit 1
	fi

	local mrc=0
	set +e
	timeout 600 "$FERRY" migrate --api-socket "$d/src.sock" --to "$ADDR_B:$PORT" \
		--max-bandwidth "$bw" --downtime "$DOWNTIME" --max-iterations "$MAX_ITER" \
		--timeout "$MIG_TIMEOUT" --on-timeout force --stats-json "$d/stats.json" "${extra[@]}" \
		</dev/null >"$d/mig.log" 2>&1 &
	PIDS+=($!)
	wait $!
	mrc=$?
	set -e
	sed 's/^/     /' "$d/mig.log"

	# Did the guest arrive and run? Source exits 0; destination counts on.
	local src_rc=NA check=ok
	if [ "$mrc" = 0 ]; then
		for ((i = 0; i < 300; i++)); do kill -0 "$spid" 2>/dev/null || break; sleep 0.2; done
		set +e; wait "$spid"; src_rc=$?; set -e
		[ "$src_rc" = 0 ] || check="source-exit-$src_rc"
		if wait_line "$d/dst.log" 'guest received from .* and running' 30 "$dpid"; then
			# a counter line after the "running" line
			local after
			for ((i = 0; i < 300; i++)); do
				after=$(sed -n '/guest received from .* and running/,$p' "$d/dst.log" | grep -m1 -E '^FERRY-COUNTER [0-9]+' || true)
				[ -n "$after" ] && break
				sleep 0.2
			done
			[ -n "$after" ] || check="no-counter-on-destination"
		else
			check="destination-not-running"
		fi
	else
		check="migrate-exit-$mrc"
	fi
	local last first
	# (serial console lines end in CR LF)
	last=$(tr -d '\r' <"$d/src.log" | grep -E '^FERRY-COUNTER [0-9]+$' | tail -1 | cut -d' ' -f2) || true
	first=$(tr -d '\r' <"$d/dst.log" | grep -E '^FERRY-COUNTER [0-9]+$' | head -1 | cut -d' ' -f2) || true
	echo "     check: $check (counter: last on source ${last:-?}, first on destination ${first:-?})"
	stop "$dpid"
	stop "$spid"

	if [ -s "$d/stats.json" ]; then
		jq -r --arg n "$name" --arg bw "$bw" --arg m "$mode" --arg rate "${rate:-NA}" --arg chk "$check" '
			[ $n, $bw, $m, $rate, (.converged|tostring), (.iterations|length),
			  (.total_seconds*100|round/100), (.downtime_ms*10|round/10),
			  (.bytes_total/1048576*10|round/10),
			  ([.iterations[1:][].pages_sent]|add // 0),
			  ([.iterations[].pages_false_dirty]|add // 0), $chk ] | @tsv' "$d/stats.json" >>"$RESULTS"
		jq -r --arg r "$run" --arg n "$name" --arg bw "$bw" --arg m "$mode" '
			.iterations[] | [ $r, $n, $bw, $m,
			  (if .stop_and_copy then "S&C \(.iteration)" else "\(.iteration)" end),
			  .pages_dirty, .pages_false_dirty, .pages_zero, .pages_sent,
			  (.bytes/1048576*100|round/100), (.seconds*1000|round/1000) ] | @tsv' "$d/stats.json" >>"$LOGS/iters.tsv"
	else
		printf '%s\t%s\t%s\t%s\tNA\tNA\tNA\tNA\tNA\tNA\tNA\t%s\n' "$name" "$bw" "$mode" "${rate:-NA}" "$check" >>"$RESULTS"
	fi
	echo "     load average: $(cut -d' ' -f1-3 /proc/loadavg)"
}

IFS=';' read -r -a WL <<<"$WORKLOADS"
for w in "${WL[@]}"; do
	name=${w%%=*} params=${w#*=}
	for bw in $BWS; do
		for mode in digest no-digest; do
			run_one "$name" "$params" "$bw" "$mode"
		done
	done
done

echo
echo "== summary (sent after it0 = full pages sent in iterations 1.. incl. stop-and-copy; skipped = false-dirty pages not sent)"
{
	printf 'workload\tcap\tfilter\tguest_writes/s\tconverged\titers\ttotal_s\tdowntime_ms\tMiB_sent\tsent_after_it0\tskipped\tcheck\n'
	cat "$RESULTS"
} | column -t -s $'\t'
echo
echo "== per iteration (pages; S&C = stop-and-copy, guest paused)"
{
	printf 'run\tworkload\tcap\tfilter\titer\tdirty\tfalse_dirty\tzero\tsent\tMiB\tseconds\n'
	cat "$LOGS/iters.tsv" 2>/dev/null || true
} | column -t -s $'\t'
