#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs system dependencies, builds everything, runs every test.
# The real-kernel tests need root (network namespaces, nftables); they fail, not skip, without it.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
if [ "$(id -u)" -ne 0 ]; then
  echo "test.sh: the real-kernel tests need root (network namespaces and nftables)" >&2
  exit 1
fi

cargo build --workspace --all-targets --locked
cargo test --workspace --locked -- --test-threads="${SWITCHYARD_TEST_THREADS:-4}"
