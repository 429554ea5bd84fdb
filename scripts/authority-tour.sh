#!/usr/bin/env bash
# A scripted tour of the authority group on this machine: three real
# rap-configstore processes on 127.0.0.1 with mTLS, bootstrap, fences,
# loss of the majority (NO_QUORUM, fast), promotion of the survivor to
# authority term 2, and the old side coming back fenced.
#
#   scripts/authority-tour.sh [BIN_DIR]     (default: cargo's target dir /debug)
#
# Ports: RAP_TOUR_PORT_BASE (default 37000) + 1..3 for gRPC, + 11..13 HTTP.
# Exits 1 at the first step that does not behave as designed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/target-dir.sh
source "$root/scripts/target-dir.sh"
bin="${1:-$(cargo_target_dir)/debug}"
base="${RAP_TOUR_PORT_BASE:-37000}"
work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

cs="$bin/rap-configstore"
step() { printf '\n== %s\n' "$*"; }
fail() { printf 'TOUR FAILED: %s\n' "$*" >&2; exit 1; }
admin=(--cluster c1 --tls-dir "$work/ca/admin")
start() {
  local i=$1
  "$cs" serve --node-id "s$i" --cluster-id c1 --listen "127.0.0.1:$((base + i))" \
    --http-listen "127.0.0.1:$((base + 10 + i))" --data-dir "$work/s$i" --tls-dir "$work/ca/s$i" \
    --region "r$i" --zone "z$i" --host "h$i" --heartbeat-ms 50 \
    --election-timeout-min-ms 300 --election-timeout-max-ms 600 >>"$work/s$i.log" 2>&1 &
  pids[i]=$!
  disown "$!"  # no "Killed" job notices when the tour kills it
}
wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  fail "port $1 did not open"
}

step "a development CA (storage certificates s1-s3, an operator's), the signing key + genesis trust root"
"$cs" dev-ca --cluster c1 --dir "$work/ca" --node s1 --node s2 --node s3 --operator admin | tail -n 1
"$bin/rapctl" snapshot keygen --cluster c1 --dir "$work/keys" | sed -n '1,4p'

step "three storage nodes in three regions (mTLS)"
for i in 1 2 3; do start "$i"; done
for i in 1 2 3; do wait_port $((base + i)); done
echo "s1 s2 s3 listening on 127.0.0.1:$((base + 1))-$((base + 3))"

step "bootstrap the group"
voters=()
for i in 1 2 3; do voters+=(--voter "s$i=127.0.0.1:$((base + i)),region=r$i,zone=z$i,host=h$i"); done
"$cs" bootstrap --endpoint "127.0.0.1:$((base + 1))" "${admin[@]}" \
  --trust-root "$work/keys/trust-root.bin" "${voters[@]}"

step "fences from every node (followers forward to the leader): seq strictly increases"
for i in 1 2 3; do "$cs" fence --endpoint "127.0.0.1:$((base + i))" "${admin[@]}" --purpose tour; done
"$cs" status --endpoint "127.0.0.1:$((base + 2))" --endpoint-node s2 "${admin[@]}"

step "a valid storage certificate of the CA that is no member of the group is refused"
"$cs" dev-ca --renew --dir "$work/ca" --node s9 >/dev/null
if out=$("$cs" fence --endpoint "127.0.0.1:$((base + 1))" --cluster c1 --tls-dir "$work/ca/s9" 2>&1); then
  fail "a non-member storage certificate got a fence: $out"
fi
echo "$out"
grep -q NOT_A_MEMBER <<<"$out" || fail "expected NOT_A_MEMBER"

step "kill -9 two of three voters: the survivor refuses writes, fast"
kill -9 "${pids[2]}" "${pids[3]}"
# When the survivor was a follower, it answers NOT_LEADER (its leader is
# unreachable) until its election timeout (300-600 ms) has passed; from
# then on NO_QUORUM. Every answer is a fast typed refusal.
quorum_refusals=0
for attempt in $(seq 1 15); do
  started=$(date +%s%N)
  if out=$("$cs" fence --endpoint "127.0.0.1:$((base + 1))" "${admin[@]}" --expected-term 1 2>&1); then
    fail "a fence was granted without a quorum: $out"
  fi
  ms=$(( ($(date +%s%N) - started) / 1000000 ))
  echo "attempt $attempt: $out  (${ms} ms)"
  if grep -q NO_QUORUM <<<"$out"; then
    quorum_refusals=$((quorum_refusals + 1))
    [ "$quorum_refusals" -ge 2 ] && break
  elif ! grep -q 'NOT_LEADER.*unreachable' <<<"$out" || [ "$quorum_refusals" -gt 0 ]; then
    fail "expected NO_QUORUM (or NOT_LEADER naming the dead leader before the election timeout)"
  fi
  sleep 0.2
done
[ "$quorum_refusals" -ge 2 ] || fail "expected NO_QUORUM within 3 s of losing the majority"
"$cs" status --endpoint "127.0.0.1:$((base + 1))" "${admin[@]}" | grep 'PARTITION VIEW'
echo "readyz: $(curl -s "127.0.0.1:$((base + 11))/readyz" || true)"

step "promote the survivor to authority term 2 (signed order)"
sleep 1
"$cs" promote --cluster c1 --tls-dir "$work/ca/admin" --key "$work/keys/signing.key" \
  --survivor "s1=127.0.0.1:$((base + 1))"
"$cs" fence --endpoint "127.0.0.1:$((base + 1))" "${admin[@]}" --purpose after-promotion \
  | tee "$work/fence"
grep -q 'term=2' "$work/fence" || fail "expected a fence of term 2"

step "the old side comes back: it is fenced, its term-1 fences are refused"
start 2
wait_port $((base + 2))
sleep 1.5
if out=$("$cs" fence --endpoint "127.0.0.1:$((base + 2))" "${admin[@]}" --expected-term 1 2>&1); then
  fail "the old side granted a fence: $out"
fi
echo "$out"
"$cs" status --endpoint "127.0.0.1:$((base + 2))" "${admin[@]}" | grep -E 'AUTHORITY TERM|PARTITION VIEW'

step "rejoin s2 into term 2"
"$cs" rejoin --endpoint "127.0.0.1:$((base + 1))" "${admin[@]}" --key "$work/keys/signing.key" \
  --node "s2=127.0.0.1:$((base + 2)),region=r2,zone=z2,host=h2" | sed -n '1p'
"$cs" fence --endpoint "127.0.0.1:$((base + 2))" "${admin[@]}" --purpose after-rejoin

printf '\nAuthority tour: every step behaved as designed.\n'
