#!/usr/bin/env bash
# The quick start's main job: build the binaries, then run three scripted
# tours that exit non-zero if anything misbehaves:
#   1. `rapctl demo`: the signed-snapshot rules (rollback, tamper, rotation);
#   2. scripts/authority-tour.sh: three real storage nodes with mTLS,
#      fences, loss of the majority (fast NO_QUORUM), promotion, rejoin;
#   3. scripts/controlplane-tour.sh: PostgreSQL + the control plane + three
#      storage nodes: cluster create/bootstrap, a join token, a real
#      `rap-node-agent join` approved by the operator, roles, an org
#      admin's view, `rap-node-agent run` reading its verified scopes and
#      running synthetic-echo once its role allows, a refused mutation
#      without quorum, the audit trail, the agent degraded but serving with
#      the control plane gone.
# Then it leaves a local platform running: `rapctl dev up` (PostgreSQL, the
# control plane, three storage voters, two agents; state in .rap-dev of the
# repository). `rapctl dev down` stops it, `--purge` deletes it.
#
#   scripts/dev.sh
#
# Installs the postgresql package when it is missing and we are root.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install a Rust toolchain (rustup) first" >&2
  exit 1
fi
# shellcheck source=scripts/ensure-postgres.sh
source "$root/scripts/ensure-postgres.sh"
cargo build --locked -p rapctl --bin rapctl -p rap-controlplane-server --bin rap-controlplane \
  -p rap-configstore --bin rap-configstore -p rap-node-agent --bin rap-node-agent
# shellcheck source=scripts/target-dir.sh
source "$root/scripts/target-dir.sh"
bin="$(cargo_target_dir)/debug"
"$bin/rapctl" demo
echo
"$root/scripts/authority-tour.sh" "$bin"
echo
"$root/scripts/controlplane-tour.sh" "$bin"
echo
exec "$bin/rapctl" dev up
