#!/usr/bin/env bash
# The quick start's main job: build the workspace's CLI, show what it
# offers, and run the scripted tour of the signed-snapshot rules.
#
#   scripts/dev.sh
#
# Today the service's servers (control plane, storage nodes, agents) are not
# built yet; `rapctl dev up` will replace this script's tour with a full
# local platform on an ephemeral PostgreSQL once they are.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install a Rust toolchain (rustup) first" >&2
  exit 1
fi
cargo build --locked -p rap-controlplane --bin rapctl
rapctl="$root/target/debug/rapctl"
"$rapctl" --help
echo
exec "$rapctl" demo "$@"
