#!/usr/bin/env bash
# The one command that runs every check and test, exactly as CI does
# (.ci/run calls this and nothing else):
#
#   scripts/test.sh
#
# 1. installs what is missing: PostgreSQL server binaries (the tests start
#    their own private server; nothing needs to be running), Chromium (the
#    web console's browser tests drive it headless; screenshots of every
#    page land in <target>/tmp/console-screenshots/), promtool (the
#    metrics tests lint every /metrics and the alert rules with it),
#    rustfmt/clippy;
# 2. cargo fmt --check;
# 3. cargo clippy --workspace --all-targets -- -D warnings;
# 4. cargo test --workspace;
# 5. scripts/nemesis.sh --minutes 2 --seed 1 (chaos on real processes:
#    PostgreSQL, a control plane, storage nodes and agents; partitions,
#    pauses, kills, slow links, promotion and rejoin; the history
#    checked), then its teeth (a storage node built with a broken rule
#    must be caught);
# 6. scripts/package-check.sh (the Debian packages installed into a
#    scratch root, the installed storage node started);
# then one closing line that totals cargo's per-binary "test result:"
# lines ("summary: N passed, N failed, N skipped").
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

say() { printf '==> %s\n' "$*" >&2; }

# shellcheck source=scripts/ensure-postgres.sh
source "$root/scripts/ensure-postgres.sh"
# shellcheck source=scripts/ensure-chromium.sh
source "$root/scripts/ensure-chromium.sh"
# shellcheck source=scripts/ensure-promtool.sh
source "$root/scripts/ensure-promtool.sh"

for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    say "installing the $component component"
    rustup component add "$component"
  fi
done

if [ "${CI:-}" = "true" ]; then
  # A clean clone builds everything once: incremental state is pure cost.
  export CARGO_INCREMENTAL=0
fi

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

say "cargo test --workspace"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked 2>&1 | tee "$log" || status=$?

# Chaos on real processes with a fixed seed (2 minutes of faults); its
# summary, history, timeline and logs land in <target>/nemesis/seed1/.
say "scripts/nemesis.sh --minutes 2 --seed 1"
"$root/scripts/nemesis.sh" --minutes 2 --seed 1 || status=$?
# Its teeth: a build whose leader keeps granting fences without its
# quorum must be caught (the run succeeds only when the checker reports
# duplicate fences).
say "scripts/nemesis.sh --mutant minority-grants (the checker must catch it)"
"$root/scripts/nemesis.sh" --mutant minority-grants --expect-violation fence-unique \
  --minutes 0.5 --seed 1 --faults partition || status=$?
# The Debian packages: built from the test build's binaries, installed
# into a scratch root, their units verified, the installed storage node
# started with a generated configuration.
say "scripts/package-check.sh"
"$root/scripts/package-check.sh" || status=$?
# cargo ends with the doc-tests of the last crate, often "0 passed"; total
# every binary's result line so the run closes with the whole count.
awk '/^test result:/ {
       for (i = 1; i <= NF; i++) {
         if ($(i+1) ~ /^passed/) passed += $i
         if ($(i+1) ~ /^failed/) failed += $i
         if ($(i+1) ~ /^ignored/) ignored += $i
       }
     }
     END { printf "summary: %d passed, %d failed, %d skipped\n", passed, failed, ignored }' "$log"
exit "$status"
