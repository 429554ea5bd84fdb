#!/usr/bin/env bash
# Fuzz envelope decoding + verification for N seconds (default 60).
#
#   scripts/fuzz.sh [SECONDS]
#
# Needs a nightly toolchain (libFuzzer's sanitizer flags) and cargo-fuzz,
# which this script installs from the crate registry when it is missing.
# Not part of scripts/test.sh / CI: a fresh machine may lack nightly, and a
# time-boxed fuzz run is a search, not a pass/fail test. Crashes land in
# proto/fuzz/artifacts/decode_verify/; replay one with
#   cd proto/fuzz && cargo +nightly fuzz run decode_verify <artifact>
set -euo pipefail
seconds="${1:-60}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz.sh: needs a nightly toolchain: rustup toolchain install nightly" >&2
  exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz" >&2
  cargo install --locked cargo-fuzz
fi
cd "$root/proto/fuzz"
mkdir -p corpus/decode_verify
if [ -z "$(ls -A corpus/decode_verify)" ]; then
  # Seed with a real signed envelope so mutations start from valid structure.
  (cd "$root" && cargo build -q -p rapctl --bin rapctl)
  # shellcheck source=scripts/target-dir.sh
  source "$root/scripts/target-dir.sh"
  rapctl="$(cd "$root" && cargo_target_dir)/debug/rapctl"
  seed="$(mktemp -d)"
  "$rapctl" snapshot keygen --cluster c1 --dir "$seed/keys" >/dev/null
  printf 'roles: [entry-node]' >"$seed/body"
  "$rapctl" snapshot sign --key "$seed/keys/signing.key" \
    --trust-root "$seed/keys/trust-root.bin" --scope node/n1 --version 1 \
    --reader node:n1 --body "$seed/body" --out corpus/decode_verify/seed-v1 >/dev/null
  rm -rf "$seed"
fi
exec cargo +nightly fuzz run decode_verify corpus/decode_verify -- \
  -max_total_time="$seconds" -max_len=65536
