#!/usr/bin/env bash
# Shared by the control-plane benchmarks: builds a release example of
# rap-controlplane and runs it against a durable PostgreSQL (fsync and
# synchronous commit on; scripts/pg-dev.sh in a temp dir, stopped and
# removed afterwards), named by RAP_PLATFORM_DATABASE_URL.
#
#   scripts/bench-durable-pg.sh <example> [driver arguments...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
example="${1:?usage: bench-durable-pg.sh <example> [args...]}"
shift
# shellcheck source=scripts/ensure-postgres.sh
source "$root/scripts/ensure-postgres.sh"
work="$(mktemp -d)"
chmod 755 "$work"   # the postgres user must reach the database directory
export RAP_DEV_DIR="$work" RAP_PG_PORT="${RAP_BENCH_PG_PORT:-39432}" RAP_PG_SYNCHRONOUS_COMMIT=on
cleanup() { "$root/scripts/pg-dev.sh" stop >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
echo "building the driver (release)..." >&2
cargo build --release --quiet -p rap-controlplane --example "$example"
"$root/scripts/pg-dev.sh" start >/dev/null
RAP_PLATFORM_DATABASE_URL="$("$root/scripts/pg-dev.sh" url)"
export RAP_PLATFORM_DATABASE_URL
# shellcheck source=scripts/target-dir.sh
source "$(dirname "${BASH_SOURCE[0]}")/target-dir.sh"
target_dir="$(cargo_target_dir)"
"$target_dir/release/examples/$example" "$@"
