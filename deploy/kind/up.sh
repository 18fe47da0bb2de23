#!/usr/bin/env bash
# Switchyard on a local kind cluster without kube-proxy, end to end, on a Linux machine with Docker, kind and
# kubectl: creates the cluster "switchyard" (unless it exists), builds and loads the image, applies
# deploy/kind, waits for every node's Switchyard to be ready, deploys an echo workload and reaches its ClusterIP
# and NodePort from a pod, from a node and from this machine, then prints `switchyard dump` of one node.
# Remove everything with: kind delete cluster --name switchyard
set -euo pipefail
cd "$(dirname "$0")/../.."

cluster=switchyard
image=switchyard:dev
k() { kubectl --context "kind-$cluster" "$@"; }
step() { printf '\n== %s\n' "$*"; }
# Retries while the daemon has not yet programmed a just-created Service (refused, or no answer yet).
fetch=(curl -sS --fail --max-time 5 --retry 10 --retry-delay 1 --retry-connrefused)

step "kind cluster $cluster (kube-proxy disabled)"
if ! kind get clusters | grep -qx "$cluster"; then
  kind create cluster --config deploy/kind/cluster.yaml
fi

step "image $image"
docker build -f deploy/Dockerfile -t "$image" .
kind load docker-image "$image" --name "$cluster"

step "Switchyard"
k apply -k deploy/kind
k -n kube-system rollout status daemonset/switchyard --timeout=180s

step "echo workload"
k apply -f deploy/kind/test-workload.yaml
k rollout status deployment/echo --timeout=180s
cluster_ip=$(k get service echo -o jsonpath='{.spec.clusterIP}')
node="$cluster-worker"
node_ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$node")
echo "ClusterIP $cluster_ip:80, NodePort $node_ip:30080"

step "from a pod"
k delete pod curl --ignore-not-found --wait
k run curl --image=curlimages/curl:8.11.0 --restart=Never --rm -i --command -- \
  sh -c "${fetch[*]} http://$cluster_ip/hostname && echo && ${fetch[*]} http://$node_ip:30080/hostname && echo"

step "from node $node"
docker exec "$node" "${fetch[@]}" "http://$cluster_ip/hostname"
echo
docker exec "$node" "${fetch[@]}" "http://$node_ip:30080/hostname"
echo

step "from this machine"
"${fetch[@]}" "http://$node_ip:30080/hostname"
echo

step "switchyard dump on $node"
pod=$(k -n kube-system get pods -l app.kubernetes.io/name=switchyard --field-selector "spec.nodeName=$node" \
  -o jsonpath='{.items[0].metadata.name}')
k -n kube-system exec "$pod" -- switchyard dump
