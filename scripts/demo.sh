#!/usr/bin/env bash
# Builds Switchyard and runs it on the bundled example manifests (examples/manifests) inside a throwaway
# network namespace: two "pods" serve demo/web, a client sends requests to its ClusterIP, and the script
# shows `switchyard dump` and some metrics. Everything it creates is removed on exit. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cargo build --quiet -p switchyard
bin=$PWD/target/debug/switchyard

tag=$$
node=sydemo-node-$tag
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for ns in "$node" sydemo-a-$tag sydemo-b-$tag; do ip netns del "$ns" 2>/dev/null || true; done
}
trap cleanup EXIT

# The node, and two pods on it joined by veth pairs with /32 routes, as a simple CNI would do.
ip netns add "$node"
ip -n "$node" link set lo up
ip netns exec "$node" sysctl -qw net.ipv4.ip_forward=1
# An uplink with the node's address and a default route, as a real node has: node-originated connections
# to a ClusterIP need a route before netfilter rewrites them.
ip -n "$node" link add uplink type veth peer name uplink-peer
ip -n "$node" link set uplink-peer up
ip -n "$node" addr add 192.0.2.10/24 dev uplink
ip -n "$node" link set uplink up
ip -n "$node" route add default dev uplink
i=0
for pod in a b; do
  i=$((i + 1))
  ns=sydemo-$pod-$tag
  ip=10.244.0.$((i + 1))
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip link add "sy$pod$tag" netns "$node" type veth peer name eth0 netns "$ns"
  ip -n "$node" addr add 10.244.0.1/32 dev "sy$pod$tag"
  ip -n "$node" link set "sy$pod$tag" up
  ip -n "$node" route add "$ip/32" dev "sy$pod$tag"
  ip -n "$ns" addr add "$ip/32" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" route add 10.244.0.1/32 dev eth0
  ip -n "$ns" route add default via 10.244.0.1 dev eth0
  ip netns exec "$ns" socat TCP-LISTEN:8080,fork,reuseaddr SYSTEM:"echo served by pod-$pod" &
  pids+=($!)
done

echo "== switchyard run --manifests examples/manifests (in network namespace $node)"
ip netns exec "$node" "$bin" run --manifests examples/manifests --node-name node-a \
  --min-sync-period 100ms --healthz-bind-address 127.0.0.1:10256 2>"/tmp/switchyard-demo-$tag.log" &
pids+=($!)
for _ in $(seq 50); do
  ip netns exec "$node" curl -sf http://127.0.0.1:10256/healthz >/dev/null 2>&1 && break
  sleep 0.2
done
ip netns exec "$node" curl -s http://127.0.0.1:10256/healthz; echo

echo
echo "== four requests from the node to demo/web's ClusterIP 10.96.0.10:80 (scheduler rr)"
for _ in 1 2 3 4; do ip netns exec "$node" socat -T2 - TCP:10.96.0.10:80 </dev/null || true; done
echo "== and one to its NodePort on the node's address, 192.0.2.10:30080"
ip netns exec "$node" socat -T2 - TCP:192.0.2.10:30080 </dev/null || true
echo
echo "== a request to demo/empty (no endpoints) is refused at once"
ip netns exec "$node" socat -T2 - TCP:10.96.0.99:8080 </dev/null 2>&1 | sed 's/^.*E /  /' || true

echo
echo "== switchyard dump (read from the kernel)"
ip netns exec "$node" "$bin" dump
echo
echo "== metrics (a few of them)"
ip netns exec "$node" curl -s http://127.0.0.1:10249/metrics \
  | grep -E '^(switchyard_backend_connections_total|switchyard_backend_bytes_total|kubeproxy_sync_proxy_rules_(service|endpoint)_changes_total)' \
  | grep -v kube-system
echo
echo "(daemon log: /tmp/switchyard-demo-$tag.log; everything else is removed now)"
