#!/usr/bin/env bash
# Installs what building Switchyard's eBPF programs needs on Debian 12 (as root), and nothing that is
# already there: LLVM 22 (for bpf-linker), the pinned nightly Rust with rust-src (the kernel programs are
# built with `-Z build-std=core` for bpfel-unknown-none by aya-build from dataplanes/ebpf/build.rs), and
# bpf-linker. Safe to run again.
#
# Keep NIGHTLY in step with dataplanes/ebpf/build.rs (EBPF_TOOLCHAIN).
set -euo pipefail

NIGHTLY="${SWITCHYARD_EBPF_NIGHTLY:-nightly-2026-05-19}"
LLVM=22
BPF_LINKER_VERSION=0.13.0
have() { command -v "$1" >/dev/null 2>&1; }

# LLVM 22 development files: bpf-linker links against them (/usr/bin/llvm-config is an older LLVM).
need=()
for pkg in "llvm-$LLVM-dev" "libpolly-$LLVM-dev" zlib1g-dev libzstd-dev "clang-$LLVM" "libclang-$LLVM-dev"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-ebpf-toolchain: need root to install: ${need[*]}" >&2
    exit 1
  fi
  echo "install-ebpf-toolchain: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! have rustup; then
  echo "install-ebpf-toolchain: rustup is needed (the eBPF build uses a pinned nightly: $NIGHTLY)" >&2
  exit 1
fi
if ! rustup toolchain list | grep -q "^$NIGHTLY"; then
  echo "install-ebpf-toolchain: installing Rust $NIGHTLY"
  rustup toolchain install "$NIGHTLY" --profile minimal --component rust-src --no-self-update
fi
if ! rustup component list --toolchain "$NIGHTLY" --installed | grep -q '^rust-src'; then
  rustup component add rust-src --toolchain "$NIGHTLY"
fi

if ! have bpf-linker; then
  echo "install-ebpf-toolchain: building bpf-linker (LLVM $LLVM)"
  LLVM_PREFIX="/usr/lib/llvm-$LLVM" LLVM_SYS_221_PREFIX="/usr/lib/llvm-$LLVM" \
    cargo install bpf-linker --version "$BPF_LINKER_VERSION" --locked --no-default-features --features "llvm-$LLVM"
fi
