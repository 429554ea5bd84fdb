#!/usr/bin/env bash
# Shared by scripts/bench.sh and scripts/bench-authority.sh (sourced):
# `run_bench_driver DRIVER ARGS...` makes a temporary work directory,
# runs DRIVER --work-dir DIR ARGS..., and on exit, error or Ctrl-C kills
# the driver and every server it recorded in DIR/pids (only recorded pids
# whose command line names DIR), then removes DIR.

run_bench_driver() {
    local driver="$1"
    shift
    bench_work="$(mktemp -d "${TMPDIR:-/tmp}/rap-bench.XXXXXX")"
    bench_driver_pid=""
    trap bench_cleanup EXIT INT TERM
    "$driver" --work-dir "$bench_work" "$@" &
    bench_driver_pid=$!
    wait "$bench_driver_pid"
}

bench_cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ -n "$bench_driver_pid" ]] && kill -0 "$bench_driver_pid" 2>/dev/null; then
        kill -9 "$bench_driver_pid" 2>/dev/null || true
    fi
    # Servers the driver started (it kills them itself unless it was killed).
    if [[ -f "$bench_work/pids" ]]; then
        while read -r pid; do
            if [[ -r "/proc/$pid/cmdline" ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$bench_work"; then
                kill -9 "$pid" 2>/dev/null || true
            fi
        done <"$bench_work/pids"
    fi
    rm -rf "$bench_work"
    exit "$status"
}

# shellcheck source=scripts/target-dir.sh
source "$(dirname "${BASH_SOURCE[0]}")/target-dir.sh"

# The release binary `name` in cargo's target directory.
bench_release_bin() {
    printf '%s/release/%s\n' "$(cargo_target_dir)" "$1"
}
