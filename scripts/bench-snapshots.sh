#!/usr/bin/env bash
# Snapshot compile + sign + publish: builds the driver in release mode
# and prints the time to compile, sign and publish every scope of a
# 10,000-node cluster, the same with nothing changed, one role change
# (fenced assign, then the publisher's dirty pass), the bytes a typical
# node downloads, GetShard reads/s and p50/p99 at 1, 16 and 64 concurrent
# node readers on one storage node, the latency from one publisher pass to
# 1,000 watchers (200 node identities x 5 streams), and the time from a
# non-mesh role change to the node's own watch, with the load average
# before and after each section. Real
# PostgreSQL with fsync and synchronous commit on (scripts/pg-dev.sh in a
# temp dir) and a real 3-voter authority group over mTLS with fsync per
# Raft commit, in-process like the tests.
# Arguments go to the driver: [NODES] [ORGS].
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=scripts/ensure-postgres.sh
source "$root/scripts/ensure-postgres.sh"
work="$(mktemp -d)"
chmod 755 "$work"   # the postgres user must reach the database directory
export RAP_DEV_DIR="$work" RAP_PG_PORT="${RAP_BENCH_PG_PORT:-39432}" RAP_PG_SYNCHRONOUS_COMMIT=on
cleanup() { "$root/scripts/pg-dev.sh" stop >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
echo "building the driver (release)..." >&2
cargo build --release --quiet -p rap-controlplane --example bench_snapshots
"$root/scripts/pg-dev.sh" start >/dev/null
RAP_PLATFORM_DATABASE_URL="$("$root/scripts/pg-dev.sh" url)"
export RAP_PLATFORM_DATABASE_URL
target_dir="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
"$target_dir/release/examples/bench_snapshots" "$@"
