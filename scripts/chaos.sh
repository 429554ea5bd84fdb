#!/usr/bin/env bash
# Long simulator sweeps: every named scenario (or --scenario X, repeatable)
# over --seeds N seeds from --from S, stopping new runs after --minutes M.
# Prints each failed run as it happens, then a summary: runs, simulated
# hours, runs that broke an invariant (by invariant), non-recoverable
# runs, and for each failure the command that replays it and its trace
# file (under target/chaos/, or --trace-dir D). Exit 1: an invariant
# broke; 2: only runs that could not finish; 0: all passed.
#
#   scripts/chaos.sh --seeds 1000 --minutes 30
#   scripts/chaos.sh --seeds 50 --from 5000 --scenario loss-and-delay
#   scripts/chaos.sh --seeds 3 --mutant grant-without-quorum   # must fail
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=scripts/target-dir.sh
source scripts/target-dir.sh

echo "building rap-chaos (release)..." >&2
cargo build --release --quiet -p rap-sim --bin rap-chaos
trace_dir=(--trace-dir "$(cargo_target_dir)/chaos")
for arg in "$@"; do
    case "$arg" in --trace-dir|--trace-dir=*) trace_dir=() ;; esac
done
exec "$(cargo_target_dir)/release/rap-chaos" "${trace_dir[@]}" "$@"
