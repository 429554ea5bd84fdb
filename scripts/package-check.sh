#!/usr/bin/env bash
# Tests the Debian packages without touching this machine's system:
#
#   scripts/package-check.sh [--profile debug|release]
#
# 1. builds them (scripts/package.sh; debug by default: the binaries the
#    tests built, stripped);
# 2. installs all four with dpkg into a scratch root (its own dpkg
#    database; the maintainer scripts run and, seeing DPKG_ROOT, make no
#    user), then checks what each package put there: the program, its
#    manual pages, its bash/zsh/fish completions, the daemons' units and
#    example configurations;
# 3. checks each unit with `systemd-analyze verify`;
# 4. starts the installed storage node, as its unit would, with a
#    configuration generated from the packaged example (fresh
#    certificates from `rap-configstore dev-ca`, free ports, a data
#    directory in the scratch root) until /healthz answers and /readyz
#    says why it is not ready (no group yet), then stops it with SIGTERM.
# Prints one line per check; exits 1 on the first failure.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
profile=debug
if [ "${1:-}" = "--profile" ]; then profile="${2:?--profile debug|release}"; fi

work="$(mktemp -d)"
node_pid=""
cleanup() {
  if [ -n "$node_pid" ]; then kill "$node_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
ok() { printf 'ok   %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*" >&2; exit 1; }

mapfile -t debs < <("$root/scripts/package.sh" --profile "$profile" --out "$work/debs")
[ "${#debs[@]}" -eq 4 ] || fail "expected 4 packages, got ${#debs[@]}"
ok "built ${#debs[@]} packages: $(basename -a "${debs[@]}" | tr '\n' ' ')"

scratch="$work/root"
install -d "$scratch/var/lib/dpkg/info" "$scratch/var/lib/dpkg/updates" "$scratch/var/lib/dpkg/triggers"
touch "$scratch/var/lib/dpkg/status"
# The scratch root has no libc or adduser of its own: their absence is not
# what is tested; the scripts run outside it (DPKG_ROOT set).
dpkg --root="$scratch" --force-script-chrootless --force-depends --force-not-root \
  --log="$work/dpkg.log" -i "${debs[@]}" >"$work/dpkg.out" 2>&1 \
  || { cat "$work/dpkg.out" >&2; fail "dpkg -i into the scratch root"; }
installed="$(dpkg --root="$scratch" -l 'rap*' | awk '/^ii/ {print $2}' | sort | tr '\n' ' ')"
[ "$installed" = "rap-configstore rap-controlplane rap-node-agent rapctl " ] \
  || fail "dpkg lists: $installed"
ok "dpkg installed into a scratch root: $installed"

for program in rap-configstore rap-controlplane rap-node-agent rapctl; do
  for file in "usr/bin/$program" "usr/share/man/man1/$program.1.gz" \
    "usr/share/bash-completion/completions/$program" \
    "usr/share/zsh/vendor-completions/_$program" \
    "usr/share/fish/vendor_completions.d/$program.fish" \
    "usr/share/doc/$program/copyright"; do
    [ -s "$scratch/$file" ] || fail "$program: /$file is missing or empty"
  done
  pages="$(ls "$scratch/usr/share/man/man1/" | grep -c "^$program[.-]")"
  "$scratch/usr/bin/$program" --version >/dev/null || fail "$program --version"
  ok "$program: binary, $pages manual pages, completions, copyright"
done
for unit in rap-configstore.service rap-controlplane.service rap-node-agent@.service; do
  [ -s "$scratch/lib/systemd/system/$unit" ] || fail "/lib/systemd/system/$unit is missing"
done
for example in rap-configstore/examples/configstore.toml rap-controlplane/examples/controlplane.toml; do
  [ -s "$scratch/usr/share/doc/$example" ] || fail "/usr/share/doc/$example is missing"
done
ok "units and example configurations in place"

if command -v systemd-analyze >/dev/null; then
  # The units name /usr/bin/<program>: verify copies that point into the
  # scratch root, so the check finds the installed programs.
  install -d "$work/units"
  for unit in rap-configstore.service rap-controlplane.service; do
    sed "s|/usr/bin/|$scratch/usr/bin/|g" "$scratch/lib/systemd/system/$unit" >"$work/units/$unit"
  done
  sed "s|/usr/bin/|$scratch/usr/bin/|g" "$scratch/lib/systemd/system/rap-node-agent@.service" \
    >"$work/units/rap-node-agent@c1.service"
  if ! SYSTEMD_LOG_LEVEL=warning systemd-analyze verify --man=no "$work"/units/*.service >"$work/verify.out" 2>&1; then
    cat "$work/verify.out" >&2
    fail "systemd-analyze verify"
  fi
  ok "systemd-analyze verify: the three units are clean"
else
  ok "systemd-analyze is not installed: units not verified"
fi

# Start the installed storage node with a generated configuration.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
grpc="$(free_port)"
http="$(free_port)"
state="$scratch/var/lib/rap-configstore"
install -d -m0700 "$state"
"$scratch/usr/bin/rap-configstore" dev-ca --cluster c1 --dir "$work/ca" --node s1 >/dev/null
install -d -m0700 "$state/tls"
cp "$work/ca/ca.pem" "$state/tls/ca.pem"
cp "$work/ca/s1/node.pem" "$state/tls/node.pem"
install -m0600 "$work/ca/s1/node.key" "$state/tls/node.key"
sed -e "s|^listen = .*|listen = \"127.0.0.1:$grpc\"|" \
  -e "s|^advertise = .*|advertise = \"127.0.0.1:$grpc\"|" \
  -e "s|^http-listen = .*|http-listen = \"127.0.0.1:$http\"|" \
  -e "s|/var/lib/rap-configstore|$state|g" \
  "$scratch/usr/share/doc/rap-configstore/examples/configstore.toml" >"$work/configstore.toml"
"$scratch/usr/bin/rap-configstore" serve --config "$work/configstore.toml" >"$work/node.log" 2>&1 &
node_pid=$!
http_get() {
  exec 3<>"/dev/tcp/127.0.0.1/$http" || return 1
  printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$1" >&3
  cat <&3
  exec 3<&-
}
healthy=""
for _ in $(seq 1 100); do
  if answer="$(http_get /healthz 2>/dev/null)" && [[ "$answer" == *" 200 "* ]]; then
    healthy=yes
    break
  fi
  kill -0 "$node_pid" 2>/dev/null || { cat "$work/node.log" >&2; fail "the storage node exited"; }
  sleep 0.1
done
[ -n "$healthy" ] || { cat "$work/node.log" >&2; fail "no /healthz 200 within 10 s"; }
ready="$(http_get /readyz | head -1 | tr -d '\r')"
head -1 "$work/node.log" | python3 -c 'import json,sys; line=json.loads(sys.stdin.readline()); assert line["cluster_id"]=="c1" and line["node_id"]=="s1", line' \
  || fail "the node's log is not JSON with its cluster and node ids"
ok "the installed storage node serves with the generated configuration: /healthz 200, /readyz '$ready', JSON logs"
kill -TERM "$node_pid"
status=0
wait "$node_pid" || status=$?
node_pid=""
[ "$status" -eq 0 ] || { tail -5 "$work/node.log" >&2; fail "the storage node exited $status on SIGTERM"; }
ok "SIGTERM: the storage node stopped cleanly"
