#!/usr/bin/env bash
# make demo: live migration of a running guest between two hosts.
#
# Host A boots the guest image with a counter (one line every 100 ms) and a
# memory writer; host B waits with `ferry receive`; `ferry migrate` moves the
# running guest from A to B and prints per-iteration statistics; the counter
# goes on, on B, from where it was on A. As root the two hosts are network
# namespaces joined by a veth pair; otherwise two processes on loopback.
# The migration runs over mutual TLS with certificates from `ferry certs`.
#
# The demo leaves nothing behind when it ends, fails or is interrupted
# (Ctrl-C, SIGTERM): it stops both ferry processes, removes its namespaces,
# veth pair and work directory, then checks that none of them survived; if
# something did, it says what and exits non-zero.
#
# Environment: FERRY (bin/ferry), WORKLOAD (the guest's kernel parameters).
set -euo pipefail
cd "$(dirname "$0")/.."
FERRY=${FERRY:-bin/ferry}
WORKLOAD=${WORKLOAD:-"ferry.run=dirty ferry.mode=mix ferry.same=70 ferry.ws=32M ferry.rate=5000"}
work=$(mktemp -d "${TMPDIR:-/tmp}/ferry-demo.XXXXXX")
ns_a= ns_b= veth_a= veth_b=
pids=()   # the ferry processes themselves (not shells around them)

# alive PID: the process runs (a zombie waiting for wait does not count).
alive() {
	local s
	s=$(ps -o stat= -p "$1" 2>/dev/null) && [[ $s != Z* ]]
}

# stop_all: TERM to every process the demo started, KILL after 5 s.
stop_all() {
	local p i any
	[ ${#pids[@]} -gt 0 ] || return 0
	kill "${pids[@]}" 2>/dev/null
	for ((i = 0; i < 50; i++)); do
		any=
		for p in "${pids[@]}"; do alive "$p" && any=1; done
		[ -n "$any" ] || break
		sleep 0.1
	done
	for p in "${pids[@]}"; do alive "$p" && kill -9 "$p" 2>/dev/null; done
	wait 2>/dev/null
}

# survivors: what of the demo is still there (one line each).
survivors() {
	local ns l
	# processes: anything whose command line names the work directory (every
	# ferry command of the demo has its socket or certificates there) or a
	# demo namespace (ip netns exec before it has become ferry)
	pgrep -af -- "$work" 2>/dev/null | sed 's/^/process: /' || true
	for ns in $ns_a $ns_b; do
		pgrep -af -- "netns exec $ns " 2>/dev/null | sed 's/^/process: /' || true
		ip netns list 2>/dev/null | grep -qE "^$ns( |\$)" && echo "namespace: $ns"
	done
	for l in $veth_a $veth_b; do
		ip link show "$l" >/dev/null 2>&1 && echo "veth: $l"
	done
	[ -e "$work" ] && echo "work directory: $work"
	return 0
}

cleanup() {
	local rc=$? ns l left
	trap - EXIT INT TERM
	set +e
	stop_all
	for ns in $ns_a $ns_b; do
		# a process still in the namespace keeps it (and its veth end) alive
		# after ip netns del: report it, do not hide it
		ip netns pids "$ns" 2>/dev/null | sed "s/^/process in $ns: /" >>"$work/.left" || true
		ip netns del "$ns" 2>/dev/null || true
	done
	for l in $veth_a $veth_b; do ip link del "$l" 2>/dev/null || true; done
	left=$(cat "$work/.left" 2>/dev/null || true)
	rm -rf "$work"
	left=$(printf '%s\n%s\n' "$left" "$(survivors)" | sed '/^$/d')
	if [ -n "$left" ]; then
		echo "demo: left behind after its exit:" >&2
		printf '%s\n' "$left" | sed 's/^/   /' >&2
		[ "$rc" = 0 ] && rc=1
	else
		echo "== stopped: no process, namespace, veth or work directory of the demo is left"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'echo "demo: interrupted" >&2; exit 130' INT
trap 'echo "demo: terminated" >&2; exit 143' TERM

# on_a/on_b: the prefix that runs a command on host A/B. Commands are run
# as "${on_b[@]}" ferry ... & so that $! is ferry itself (ip netns exec
# execs it), never a shell around it that a kill would miss.
on_a=() on_b=()
addr_a=127.0.0.1 addr_b=127.0.0.1
if [ "$(id -u)" = 0 ] && command -v ip >/dev/null; then
	ns_a=ferry-demo-a-$$ ns_b=ferry-demo-b-$$
	ip netns add $ns_a && ip netns add $ns_b
	veth_a=fdemo-a$$ veth_b=fdemo-b$$
	ip link add $veth_a type veth peer name $veth_b
	ip link set $veth_a netns $ns_a && ip link set $veth_b netns $ns_b
	addr_a=10.231.9.1 addr_b=10.231.9.2
	ip -n $ns_a addr add $addr_a/24 dev $veth_a && ip -n $ns_b addr add $addr_b/24 dev $veth_b
	ip -n $ns_a link set $veth_a up && ip -n $ns_b link set $veth_b up
	ip -n $ns_a link set lo up && ip -n $ns_b link set lo up
	on_a=(ip netns exec $ns_a) on_b=(ip netns exec $ns_b)
	echo "== host A: netns $ns_a ($addr_a)   host B: netns $ns_b ($addr_b), joined by veth $veth_a/$veth_b"
else
	echo "== not root: host A and host B are two processes on loopback"
fi

wait_for() { # file pattern seconds
	for _ in $(seq $((${3} * 10))); do grep -q "$2" "$1" && return 0; sleep 0.1; done
	echo "demo: no '$2' in $1 after $3 s:" >&2; tail -20 "$1" >&2; exit 1
}

echo "== ferry certs: a CA and one certificate per host (mutual TLS)"
hosts_flags=(--host "$addr_a")
[ "$addr_b" != "$addr_a" ] && hosts_flags+=(--host "$addr_b")
$FERRY certs --dir "$work/certs" "${hosts_flags[@]}" | sed 's/^/   /'
tls_a=(--tls-cert "$work/certs/$addr_a.pem" --tls-key "$work/certs/$addr_a-key.pem" --tls-ca "$work/certs/ca.pem")
tls_b=(--tls-cert "$work/certs/$addr_b.pem" --tls-key "$work/certs/$addr_b-key.pem" --tls-ca "$work/certs/ca.pem")

echo "== host A: ferry run --cmdline \"$WORKLOAD\""
"${on_a[@]}" $FERRY run --memory 128M --api-socket "$work/a.sock" --cmdline "$WORKLOAD" </dev/null >"$work/a.out" 2>&1 &
pids+=($!)
echo "== host B: ferry receive --listen $addr_b:7070 --tls-cert ... --tls-key ... --tls-ca ..."
"${on_b[@]}" $FERRY receive --listen $addr_b:7070 --api-socket "$work/b.sock" "${tls_b[@]}" </dev/null >"$work/b.out" 2>&1 &
pids+=($!)
wait_for "$work/a.out" FERRY-GUEST-READY 180
wait_for "$work/a.out" FERRY-DIRTY 180
echo "-- host A console (last lines):"
grep FERRY- "$work/a.out" | tail -4 | sed 's/^/   A| /'

echo "== ferry migrate --to $addr_b:7070 (mutual TLS)"
# In the background and waited for, so that a signal to this script is
# acted on at once, not when the migration is over.
$FERRY migrate --api-socket "$work/a.sock" --to $addr_b:7070 "${tls_a[@]}" --stats-json "$work/stats.json" \
	</dev/null > >(sed -u 's/^/   /') 2>&1 &
pids+=($!)
wait $!
wait_for "$work/b.out" "FERRY-COUNTER" 30
sleep 2
last_a=$(grep -o 'FERRY-COUNTER [0-9]*' "$work/a.out" | tail -1)
echo "-- host A: last counter line before the guest left: $last_a; ferry on A: $(tail -1 "$work/a.out")"
echo "-- host B console (the same guest, still counting):"
grep FERRY- "$work/b.out" | head -4 | sed 's/^/   B| /'
echo "== stats JSON:"
sed 's/^/   /' "$work/stats.json" | head -40
echo "== done: the guest moved from host A to host B while running; stopping it"
