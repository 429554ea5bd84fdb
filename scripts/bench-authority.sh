#!/usr/bin/env bash
# Authority group benchmark (benchmarks are scripts that print
# figures). Builds release binaries, starts a 3-voter rap-configstore
# cluster on 127.0.0.1 with mTLS, and prints:
#   * fence grants/s and p50/p99 latency at 1, 16 and 64 concurrent clients
#   * the failover window after kill -9 of the leader (5 runs: median, range)
#   * how long a minority write takes to be refused (kill 2 of 3)
# The driver is configstore/examples/bench_authority.rs; extra arguments
# are passed to it (e.g. --seconds 2, --heartbeat-ms 50
# --election-timeout-min-ms 300 --election-timeout-max-ms 600; see
# `--help`). Loopback only; every process it starts is killed on exit.
set -euo pipefail

cd "$(dirname "$0")/.."

echo "building release binaries..." >&2
cargo build --release --quiet -p rap-configstore --bin rap-configstore --example bench_authority

target_dir="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
bin="$target_dir/release/rap-configstore"
driver="$target_dir/release/examples/bench_authority"

work="$(mktemp -d "${TMPDIR:-/tmp}/rap-bench-authority.XXXXXX")"
driver_pid=""

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ -n "$driver_pid" ]] && kill -0 "$driver_pid" 2>/dev/null; then
        kill -9 "$driver_pid" 2>/dev/null || true
    fi
    # Nodes the driver started (it kills them itself unless it was killed).
    if [[ -f "$work/pids" ]]; then
        while read -r pid; do
            if [[ -r "/proc/$pid/cmdline" ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "rap-configstore serve"; then
                kill -9 "$pid" 2>/dev/null || true
            fi
        done <"$work/pids"
    fi
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT INT TERM

"$driver" --bin "$bin" --work-dir "$work" "$@" &
driver_pid=$!
wait "$driver_pid"
