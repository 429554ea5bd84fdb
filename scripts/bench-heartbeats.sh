#!/usr/bin/env bash
# Heartbeat ingestion benchmark (benchmarks are scripts that print
# figures; nothing asserts speed). Run:
#
#   scripts/bench-heartbeats.sh                 # the standard set (below)
#   RAP_BENCH_DURABLE=1 scripts/bench-heartbeats.sh
#                                               # PostgreSQL with fsync on
#   scripts/bench-heartbeats.sh -- --via direct --saturate --seconds 10
#                                               # one run, own arguments
#
# The standard set, 10,000 agents (one heartbeat per 10 s each = 1,000/s):
#   1. paced, through AgentApi over the control plane's real mTLS listener
#      (200 connections, each a node identity);
#   2. paced, straight into the batcher (10,000 distinct nodes);
#   3. saturated through gRPC (2,000 in flight): the ceiling;
#   4. saturated straight into the batcher with submit_and_wait (2,000 and
#      6,000 in flight), then with submit (no wait, 64 producers): what
#      waiting for the commit costs;
#   5. --flood: 200 nodes over mTLS, each its own identity, one heartbeat
#      per 2 s; 15 s quiet, then 15 s while one more node floods (256 in
#      flight): prints the other nodes' "quiet p50/p99" and "during flood
#      p50/p99" (target: within 2x) and the flooder's RATE_LIMITED count.
# Every node has its own rate limit (burst 10, one per second). Runs 1 and
# 3 make each of the 200 identities speak for 50 simulated agents, and the
# saturated runs send each node more than one heartbeat a second, so they
# lift the per-node limit ($UNLIMITED) to measure the shared write path.
# The driver is controlplane/examples/bench_heartbeats.rs (see `--help`).
# By default each run gets a private throw-away PostgreSQL from rap_pgtest
# (fsync=off, synchronous_commit=off); with RAP_BENCH_DURABLE=1 each run
# gets a fresh server with fsync and synchronous commit on, started by
# scripts/pg-dev.sh in a temp directory and stopped afterwards. Client,
# control plane and PostgreSQL share this machine's cores.
set -euo pipefail

cd "$(dirname "$0")/.."

echo "building the release driver..." >&2
cargo build --release --quiet -p rap-controlplane --example bench_heartbeats

# shellcheck source=scripts/target-dir.sh
source "$(dirname "${BASH_SOURCE[0]}")/target-dir.sh"
target_dir="$(cargo_target_dir)"
driver="$target_dir/release/examples/bench_heartbeats"

dev_dir=""
stop_pg() {
    if [[ -n "$dev_dir" ]]; then
        RAP_DEV_DIR="$dev_dir" scripts/pg-dev.sh stop >/dev/null 2>&1 || true
        rm -rf "$dev_dir"
        dev_dir=""
    fi
}
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    stop_pg
    exit "$status"
}
trap cleanup EXIT INT TERM

run() {
    local extra=()
    if [[ "${RAP_BENCH_DURABLE:-0}" == 1 ]]; then
        stop_pg
        dev_dir="$(mktemp -d "${TMPDIR:-/tmp}/rap-bench-heartbeats.XXXXXX")"
        # pg-dev runs the server as `postgres` when we are root.
        chmod 755 "$dev_dir"
        RAP_DEV_DIR="$dev_dir" RAP_PG_SYNCHRONOUS_COMMIT=on scripts/pg-dev.sh start >/dev/null
        extra=(--database-url "$(RAP_DEV_DIR="$dev_dir" scripts/pg-dev.sh url)")
    fi
    "$driver" "${extra[@]}" "$@"
    stop_pg
    echo
}

if [[ "${1:-}" == "--" ]]; then
    shift
    run "$@"
    exit 0
fi

UNLIMITED=(--node-burst 1000000 --node-refill-ms 1)
run --via grpc "${UNLIMITED[@]}"
run --via direct
run --via grpc --saturate --seconds 15 "${UNLIMITED[@]}"
run --via direct --saturate --seconds 15 "${UNLIMITED[@]}"
run --via direct --saturate --seconds 15 --concurrency 6000 "${UNLIMITED[@]}"
run --via direct --saturate --seconds 15 --no-wait --concurrency 64 "${UNLIMITED[@]}"
run --via grpc --flood --connections 200 --interval-ms 2000 --seconds 15 --concurrency 256
