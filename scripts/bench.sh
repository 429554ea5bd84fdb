#!/usr/bin/env bash
# rap side by side with etcd: one benchmark, one table (benchmarks are
# scripts that print figures; no test asserts speed).
#
#   scripts/bench.sh            # about 4 minutes on 2 cores (after the build)
#   scripts/bench.sh --quick    # about 1 minute: 1 s per row, fewer runs
#
# Installs etcd from the distribution's packages if it is missing
# (etcd-server, etcd-client), builds the release driver and
# rap-configstore, then on 127.0.0.1, one system at a time:
#   * a 3-voter rap-configstore group (mTLS, heartbeat 100 ms, election
#     500-1000 ms);
#   * a 3-member etcd, plaintext, and a 3-member etcd with mutual TLS on
#     client and peer URLs (heartbeat 100 ms, election 1000 ms);
# drives them with the same load generator and prints the machine's
# floors and one table: durable small writes, 64 KiB writes, reads at
# 1/16/64 clients, a 200-watcher fan-out, the failover window after kill -9
# of the leader and the time until a minority write fails, with the ratio
# rap / etcd (mTLS) and which direction is better. The driver is
# bench/src/bin/bench.rs; extra arguments are passed to it (see --help).
# Every process it starts is recorded in a pid file and killed on exit,
# error or Ctrl-C.
set -euo pipefail

cd "$(dirname "$0")/.."

quick=()
args=()
for arg in "$@"; do
    case "$arg" in
        --quick) quick=(--seconds 1 --failover-runs 2 --minority-runs 1 --updates 300 --floor-samples 600) ;;
        *) args+=("$arg") ;;
    esac
done

if ! command -v etcd >/dev/null 2>&1; then
    echo "installing etcd (etcd-server, etcd-client)..." >&2
    sudo=()
    if [[ "$(id -u)" != 0 ]]; then sudo=(sudo); fi
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client >/dev/null
fi
etcd_bin="$(command -v etcd)"

echo "building release binaries..." >&2
cargo build --release --quiet -p rap-configstore --bin rap-configstore -p rap-bench --bin bench

# shellcheck source=scripts/bench-run.sh
source scripts/bench-run.sh
run_bench_driver "$(bench_release_bin bench)" \
    --rap-bin "$(bench_release_bin rap-configstore)" --etcd-bin "$etcd_bin" \
    "${quick[@]}" "${args[@]}"
