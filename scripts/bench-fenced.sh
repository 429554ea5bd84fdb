#!/usr/bin/env bash
# Fenced mutation latency (DESIGN.md §3, §8): builds the driver in release
# mode and prints p50/p90/p99/max and mutations/s of a fenced control-plane
# mutation (`service set`) at 1, 4 and 16 concurrent clients, plus the bare
# AcquireFence latency. Real PostgreSQL (a private server in a temp dir,
# like the tests) and a real 3-voter authority group over mTLS with fsync
# per Raft commit. Arguments go to the driver: [N per row] [CONCURRENCY...].
# Needs the PostgreSQL server binaries (see scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "building the driver (release)..." >&2
cargo build --release --quiet -p rap-controlplane --example bench_fenced
target_dir="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
exec "$target_dir/release/examples/bench_fenced" "$@"
