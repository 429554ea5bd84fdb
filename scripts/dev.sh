#!/usr/bin/env bash
# The quick start's main job: build the CLI and the storage node, then run
# two scripted tours that exit non-zero if anything misbehaves:
#   1. `rapctl demo`: the signed-snapshot rules (rollback, tamper, rotation);
#   2. scripts/authority-tour.sh: three real storage nodes with mTLS,
#      fences, loss of the majority (fast NO_QUORUM), promotion, rejoin.
#
#   scripts/dev.sh
#
# The control plane and agents are not built yet; `rapctl dev up` will
# replace this with a full local platform on an ephemeral PostgreSQL.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install a Rust toolchain (rustup) first" >&2
  exit 1
fi
cargo build --locked -p rap-controlplane --bin rapctl -p rap-configstore --bin rap-configstore
"$root/target/debug/rapctl" demo
echo
exec "$root/scripts/authority-tour.sh" "$root/target/debug"
