#!/usr/bin/env bash
# Chaos on real processes: PostgreSQL and a control plane, rap-configstore
# voters and a cache replica whose every link runs through a
# fault-injecting TCP proxy, and agents; a seeded nemesis (partitions
# majority/minority, one-way and bridged, SIGSTOP/SIGCONT, kill -9 and
# restart, slow links, connection resets, promotion of a cut-off minority
# and rejoin of the old side); a workload of fences, fenced control-plane
# mutations, publications and agent reads and watches, each operation
# logged with invoke and complete times; and a checker of the whole
# history. Everything it starts it stops.
#
#   scripts/nemesis.sh [--minutes M] [--seed S]
#                      [--faults partition,one-way,bridge,pause,kill,delay,reset,promote]
#                      [--voters 3|5] [--clients N] [--agents N] [--out DIR]
#                      [--mutant minority-grants --expect-violation fence-unique]
#
# --mutant runs the debug build's storage nodes with a rule broken on
# purpose (`serve --nemesis-mutant`, absent from release builds): the
# teeth of the checker.
#
# Output (default target/nemesis/seed<S>): summary.txt (operations by
# kind and outcome, faults injected, the longest window without a grant
# per fault kind, violations by rule), history.jsonl, faults.json,
# timeline.svg and logs/ of every node and the control plane. Exits 1 on
# a violation. scripts/test.sh runs a 2-minute run with seed 1, then the
# teeth: a build whose leader keeps granting fences without its quorum
# must be caught.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# The same selection as `cargo test --workspace`, so after the tests this
# only links what is missing (a narrower one would rebuild dependencies
# with other features).
cargo build --locked -q --workspace --all-targets
# shellcheck source=scripts/target-dir.sh
source "$root/scripts/target-dir.sh"
target="$(cargo_target_dir)"
out=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  if [ "${args[$i]}" = "--out" ] && [ $((i + 1)) -lt ${#args[@]} ]; then out="${args[$((i + 1))]}"; fi
done
if [ -z "$out" ]; then
  seed=1
  for ((i = 0; i < ${#args[@]}; i++)); do
    if [ "${args[$i]}" = "--seed" ] && [ $((i + 1)) -lt ${#args[@]} ]; then seed="${args[$((i + 1))]}"; fi
  done
  out="$target/nemesis/seed$seed"
  for arg in "${args[@]}"; do
    if [ "$arg" = "--mutant" ]; then out="$target/nemesis/mutant-seed$seed"; fi
  done
  rm -rf "$out"
  args+=(--out "$out")
fi
exec "$target/debug/nemesis" --bin-dir "$target/debug" "${args[@]}"
