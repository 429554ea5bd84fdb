#!/usr/bin/env bash
# A scripted tour of the control plane on this machine, as an operator
# meets it: a private PostgreSQL, `rap-controlplane init` + `serve` (TLS),
# three rap-configstore storage nodes enrolled with `rap-configstore join`
# (their keys made on the node, single-use storage tokens approved at once
# before the group exists), `rapctl cluster create/bootstrap`, a join
# token, a real
# `rap-node-agent join` approved by the operator, a role and a service,
# an org admin who sees only the org-safe view, `rap-node-agent run`
# reading its verified scopes and running synthetic-echo once its role
# allows, a refused mutation without quorum (NO_QUORUM, audited), the
# audit trail, and the agent still serving on its last verified state
# with the control plane stopped (degraded).
#
#   scripts/controlplane-tour.sh [BIN_DIR]     (default: cargo's target dir /debug)
#
# Ports: RAP_TOUR_PORT_BASE (default 38000): +1..3 storage gRPC, +11..13
# storage HTTP, +20 control plane gRPC, +21 control plane HTTP, +40 the
# agent's synthetic echo.
# Exits 1 at the first step that does not behave as designed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/target-dir.sh
source "$root/scripts/target-dir.sh"
bin="${1:-$(cargo_target_dir)/debug}"
base="${RAP_TOUR_PORT_BASE:-38000}"
work="$(mktemp -d)"
chmod 755 "$work"   # the postgres user must reach the database directory inside
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  RAP_DEV_DIR="$work" RAP_PG_PORT=$((base + 30)) "$root/scripts/pg-dev.sh" stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }
fail() {
  printf 'TOUR FAILED: %s\n' "$*" >&2
  for log in "$work"/*.log; do [ -f "$log" ] && { echo "--- $log (tail)"; tail -n 20 "$log"; } >&2; done
  exit 1
}
wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  fail "port $1 did not open"
}
expect_code() { # expect_code CODE command...: the command must fail with CODE
  local code=$1; shift
  local out
  if out=$("$@" 2>&1); then fail "expected $code, but it succeeded: $out"; fi
  grep -q "$code" <<<"$out" || fail "expected $code, got: $out"
  printf '%s\n' "$out" | head -n 2
}

step "a private PostgreSQL (scripts/pg-dev.sh in a temp dir)"
export RAP_DEV_DIR="$work" RAP_PG_PORT=$((base + 30))
"$root/scripts/pg-dev.sh" start >/dev/null
export RAP_DATABASE_URL
RAP_DATABASE_URL="$("$root/scripts/pg-dev.sh" url)"
echo "database: $RAP_DATABASE_URL"

step "rap-controlplane init: schema, platform CA, first platform-owner token (shown once)"
export RAP_KEYS_DIR="$work/keys"
"$bin/rap-controlplane" init | tee "$work/init.out" | sed 's/rapat\.[0-9a-f]*\.[0-9a-f]*/rapat.<id>.<secret, shown once>/'
token=$(grep -o 'rapat\.[0-9a-f]*\.[0-9a-f]*' "$work/init.out" | head -n 1)
[ -n "$token" ] || fail "init printed no token"
umask 077 && printf '%s\n' "$token" >"$work/token" && umask 022
export RAP_TOKEN_FILE="$work/token" RAP_CA="$work/keys/platform/ca.pem"
export RAP_ENDPOINT="https://127.0.0.1:$((base + 20))"
"$bin/rap-controlplane" init | grep -q 'exists already' || fail "a second init must not print a token"

step "rap-controlplane serve (TLS on :$((base + 20)), metrics on :$((base + 21)))"
"$bin/rap-controlplane" serve --listen "127.0.0.1:$((base + 20))" --http-listen "127.0.0.1:$((base + 21))" \
  --public-endpoint "127.0.0.1:$((base + 20))" >>"$work/controlplane.log" 2>&1 &
pids+=($!); disown "$!"
wait_port $((base + 20))
curl -sf "127.0.0.1:$((base + 21))/readyz" >/dev/null || fail "/readyz is not ready"
"$bin/rapctl" whoami

step "rapctl cluster create c1 (CA + signing key in the keys dir, never in PostgreSQL)"
"$bin/rapctl" cluster create c1 --name "Tour cluster"

step "three storage nodes enrol with rap-configstore join (keys made on the node)"
for i in 1 2 3; do
  "$bin/rapctl" token create --cluster c1 --storage-node "s$i" --ttl 10m -o json >"$work/storage-token-$i.json"
  raw=$(sed -n 's/.*"raw_token": *"\([^"]*\)".*/\1/p' "$work/storage-token-$i.json")
  fingerprint=$(sed -n 's/.*"ca_fingerprint": *"\([^"]*\)".*/\1/p' "$work/storage-token-$i.json")
  [ -n "$raw" ] && [ -n "$fingerprint" ] || fail "no storage token in $(cat "$work/storage-token-$i.json")"
  "$bin/rap-configstore" join --control-plane "127.0.0.1:$((base + 20))" --cluster c1 --node-id "s$i" \
    --token "$raw" --ca-fingerprint "$fingerprint" --tls-dir "$work/tls-s$i" \
    --advertise "127.0.0.1:$((base + i))" | head -n 1
done
for i in 1 2 3; do
  "$bin/rap-configstore" serve --node-id "s$i" --cluster-id c1 --listen "127.0.0.1:$((base + i))" \
    --http-listen "127.0.0.1:$((base + 10 + i))" --data-dir "$work/s$i" --tls-dir "$work/tls-s$i" \
    --region r1 --zone "z$i" --host "h$i" --heartbeat-ms 50 \
    --election-timeout-min-ms 300 --election-timeout-max-ms 600 >>"$work/s$i.log" 2>&1 &
  pids+=($!); disown "$!"
done
for i in 1 2 3; do wait_port $((base + i)); done

step "rapctl cluster bootstrap: authority term 1, failure tolerance"
voters=()
for i in 1 2 3; do voters+=(--voter "s$i=127.0.0.1:$((base + i)),region=r1,zone=z$i,host=h$i"); done
"$bin/rapctl" cluster bootstrap c1 "${voters[@]}"
sleep 1
"$bin/rapctl" cluster show c1

step "rapctl token create: the raw token once, and the join command"
"$bin/rapctl" token create --cluster c1 --ttl 10m --max-uses 1 -o json >"$work/token.json"
join=$(sed -n 's/.*"join_command": *"\([^"]*\)".*/\1/p' "$work/token.json")
[ -n "$join" ] || fail "no join command in: $(cat "$work/token.json")"
echo "${join//rapjt.*.* --ca/rapjt.<id>.<secret> --ca}"

step "rap-node-agent join on the 'host' (key generated locally, request waits for review)"
# shellcheck disable=SC2086
"$bin/"$join --state-dir "$work/agent" --capability can_run_rdp_worker --capability can_route_mesh --hostname tour-host \
  --poll-interval 200ms --wait 60s >"$work/agent.log" 2>&1 &
agent_pid=$!
pids+=("$agent_pid")
for _ in $(seq 1 100); do
  id=$("$bin/rapctl" join-request list --cluster c1 -o json | sed -n 's/.*"join_request_id": *"\([^"]*\)".*/\1/p' | head -n 1)
  [ -n "$id" ] && break
  sleep 0.1
done
[ -n "${id:-}" ] || fail "no pending join request"
"$bin/rapctl" join-request list --cluster c1

step "rapctl join-request approve (fenced): node, identity, certificate"
"$bin/rapctl" join-request approve "$id" --node-id rdp-1
wait "$agent_pid" || fail "the agent did not finish its join: $(cat "$work/agent.log")"
tail -n 3 "$work/agent.log"
"$bin/rapctl" node list --cluster c1

step "roles need the reported capability; a service's desired state (both fenced)"
expect_code MISSING_CAPABILITY "$bin/rapctl" role assign --cluster c1 --node rdp-1 --role vpn-exit
"$bin/rapctl" role assign --cluster c1 --node rdp-1 --role rdp-worker
"$bin/rapctl" service set --cluster c1 --node rdp-1 --service rdp-worker --state enabled
"$bin/rapctl" group create --cluster c1 office
"$bin/rapctl" group move --cluster c1 --to office --node rdp-1

step "an org admin sees only its org-safe view"
"$bin/rapctl" org create acme --name "Acme"
"$bin/rapctl" org endpoint-add --org acme --cluster c1 --name office-moscow --kind egress --role rdp-worker
"$bin/rapctl" principal create acme-admin --kind org-admin --org acme -o json >"$work/acme.json"
acme_token=$(grep -o 'rapat\.[0-9a-f]*\.[0-9a-f]*' "$work/acme.json" | head -n 1)
umask 077 && printf '%s\n' "$acme_token" >"$work/acme-token" && umask 022
RAP_TOKEN_FILE="$work/acme-token" "$bin/rapctl" org view acme
expect_code PERMISSION_DENIED env RAP_TOKEN_FILE="$work/acme-token" "$bin/rapctl" node list --cluster c1

step "rap-node-agent run: verified scopes from the nearest storage node; synthetic-echo once its role allows"
echo_port=$((base + 40))
"$bin/rap-node-agent" run --cluster c1 --state-dir "$work/agent" --echo-listen "127.0.0.1:$echo_port" \
  >"$work/agent-run.log" 2>&1 &
pids+=($!)
agent_status() { "$bin/rap-node-agent" status --cluster c1 --state-dir "$work/agent" "$@"; }
for _ in $(seq 1 100); do
  agent_status -o json 2>/dev/null | grep -q '"node/rdp-1"' && break
  sleep 0.1
done
agent_status -o json 2>/dev/null | grep -q '"node/rdp-1"' || fail "the agent holds no node/rdp-1"
expect_code SERVICE_NOT_ALLOWED "$bin/rapctl" service set --cluster c1 --node rdp-1 --service synthetic-echo --state enabled
"$bin/rapctl" role assign --cluster c1 --node rdp-1 --role relay-node
"$bin/rapctl" service set --cluster c1 --node rdp-1 --service synthetic-echo --state enabled
echoes() {
  exec 3<>"/dev/tcp/127.0.0.1/$echo_port" 2>/dev/null || return 1
  printf 'ping\n' >&3
  local line=""
  read -r -t 2 line <&3 || true
  exec 3<&- 3>&-
  [ "$line" = "ping" ]
}
for _ in $(seq 1 100); do echoes && break; sleep 0.1; done
echoes || fail "synthetic-echo does not answer on $echo_port: $(tail -n 5 "$work/agent-run.log")"
echo "synthetic-echo answers on 127.0.0.1:$echo_port"
agent_status

step "kill -9 two of three storage nodes: a mutation is refused (NO_QUORUM), nothing changes"
kill -9 "${pids[2]}" "${pids[3]}"   # s2, s3 (pids[1] is s1, pids[0] the control plane)
expect_code NO_QUORUM "$bin/rapctl" service set --cluster c1 --node rdp-1 --service rdp-worker --state disabled
"$bin/rapctl" service list --cluster c1

step "the audit trail (mutations with their fences, and every refusal)"
"$bin/rapctl" audit list --cluster c1 --limit 12

step "the control plane stops too: the agent keeps its verified state and its workload, degraded"
kill -9 "${pids[0]}"
for _ in $(seq 1 150); do
  agent_status -o json 2>/dev/null | grep -q '"health": "degraded"' && break
  sleep 0.1
done
agent_status -o json 2>/dev/null | grep -q '"health": "degraded"' || fail "the agent does not say it is degraded"
echoes || fail "synthetic-echo stopped with the control plane"
agent_status
printf '\nTOUR OK\n'
