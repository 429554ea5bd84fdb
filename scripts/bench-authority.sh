#!/usr/bin/env bash
# Authority group benchmark (benchmarks are scripts that print
# figures). Builds release binaries, starts a 3-voter rap-configstore
# cluster on 127.0.0.1 with mTLS, and prints:
#   * fence grants/s and p50/p99 latency at 1, 16 and 64 concurrent clients
#   * the failover window after kill -9 of the leader (5 runs: median, range)
#   * how long a minority write takes to be refused (kill 2 of 3)
# The driver is bench/src/bin/bench_authority.rs (its measurements live in
# the rap-bench library, shared with scripts/bench.sh); extra arguments
# are passed to it (e.g. --seconds 2, --heartbeat-ms 50
# --election-timeout-min-ms 300 --election-timeout-max-ms 600; see
# `--help`). Loopback only; every process it starts is killed on exit.
set -euo pipefail

cd "$(dirname "$0")/.."

echo "building release binaries..." >&2
cargo build --release --quiet -p rap-configstore --bin rap-configstore -p rap-bench --bin bench-authority

# shellcheck source=scripts/bench-run.sh
source scripts/bench-run.sh
run_bench_driver "$(bench_release_bin bench-authority)" \
    --bin "$(bench_release_bin rap-configstore)" "$@"
