#!/usr/bin/env bash
# make demo: live migration of a running guest between two hosts.
#
# Host A boots the guest image with a counter (one line every 100 ms) and a
# memory writer; host B waits with `ferry receive`; `ferry migrate` moves the
# running guest from A to B and prints per-iteration statistics; the counter
# goes on, on B, from where it was on A. As root the two hosts are network
# namespaces joined by a veth pair; otherwise two processes on loopback.
# The migration runs over mutual TLS with certificates from `ferry certs`.
set -euo pipefail
cd "$(dirname "$0")/.."
FERRY=${FERRY:-bin/ferry}
WORKLOAD=${WORKLOAD:-"ferry.run=dirty ferry.mode=mix ferry.same=70 ferry.ws=32M ferry.rate=5000"}
work=$(mktemp -d)
ns_a= ns_b=
cleanup() {
	kill "${pids[@]}" 2>/dev/null || true
	wait 2>/dev/null || true
	[ -n "$ns_a" ] && ip netns del "$ns_a" 2>/dev/null
	[ -n "$ns_b" ] && ip netns del "$ns_b" 2>/dev/null
	rm -rf "$work"
}
pids=()
trap cleanup EXIT

on_a() { if [ -n "$ns_a" ]; then ip netns exec "$ns_a" "$@"; else "$@"; fi; }
on_b() { if [ -n "$ns_b" ]; then ip netns exec "$ns_b" "$@"; else "$@"; fi; }

addr_a=127.0.0.1 addr_b=127.0.0.1
if [ "$(id -u)" = 0 ] && command -v ip >/dev/null; then
	ns_a=ferry-demo-a ns_b=ferry-demo-b
	ip netns del $ns_a 2>/dev/null || true
	ip netns del $ns_b 2>/dev/null || true
	ip netns add $ns_a && ip netns add $ns_b
	ip link add fdemo-a type veth peer name fdemo-b
	ip link set fdemo-a netns $ns_a && ip link set fdemo-b netns $ns_b
	addr_a=10.231.9.1 addr_b=10.231.9.2
	ip -n $ns_a addr add $addr_a/24 dev fdemo-a && ip -n $ns_b addr add $addr_b/24 dev fdemo-b
	ip -n $ns_a link set fdemo-a up && ip -n $ns_b link set fdemo-b up
	ip -n $ns_a link set lo up && ip -n $ns_b link set lo up
	echo "== host A: netns $ns_a ($addr_a)   host B: netns $ns_b ($addr_b), joined by veth"
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
on_a $FERRY run --memory 128M --api-socket "$work/a.sock" --cmdline "$WORKLOAD" </dev/null >"$work/a.out" 2>&1 &
pids+=($!)
echo "== host B: ferry receive --listen $addr_b:7070 --tls-cert ... --tls-key ... --tls-ca ..."
on_b $FERRY receive --listen $addr_b:7070 --api-socket "$work/b.sock" "${tls_b[@]}" </dev/null >"$work/b.out" 2>&1 &
pids+=($!)
wait_for "$work/a.out" FERRY-GUEST-READY 180
wait_for "$work/a.out" FERRY-DIRTY 180
echo "-- host A console (last lines):"
grep FERRY- "$work/a.out" | tail -4 | sed 's/^/   A| /'

echo "== ferry migrate --to $addr_b:7070 (mutual TLS)"
$FERRY migrate --api-socket "$work/a.sock" --to $addr_b:7070 "${tls_a[@]}" --stats-json "$work/stats.json" | sed 's/^/   /'
wait_for "$work/b.out" "FERRY-COUNTER" 30
sleep 2
last_a=$(grep -o 'FERRY-COUNTER [0-9]*' "$work/a.out" | tail -1)
echo "-- host A: last counter line before the guest left: $last_a; ferry on A: $(tail -1 "$work/a.out")"
echo "-- host B console (the same guest, still counting):"
grep FERRY- "$work/b.out" | head -4 | sed 's/^/   B| /'
echo "== stats JSON ($work/stats.json):"
sed 's/^/   /' "$work/stats.json" | head -40
echo "== done: the guest moved from host A to host B while running"
