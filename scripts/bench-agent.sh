#!/usr/bin/env bash
# The node agent's figures: RSS and CPU at steady state, the time from a
# role assignment to its workload answering (p50/p99 over 20 runs), and
# the time from kill -9 of the serving storage node to the next
# successful read. The release agent binary against the test platform
# (private PostgreSQL, the served control plane, 3 voters and the cache
# replicas as rap-configstore processes).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=scripts/ensure-postgres.sh
source "$root/scripts/ensure-postgres.sh"
exec cargo bench --quiet -p rap-node-agent-e2e --bench agent
