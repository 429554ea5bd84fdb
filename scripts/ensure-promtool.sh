#!/usr/bin/env bash
# Sourced by scripts/test.sh: makes sure `promtool` is there for the
# metrics tests (controlplane/tests/it/metrics.rs runs `promtool check
# metrics` on every process's /metrics and `promtool check rules` on
# deploy/prometheus/rap-alerts.yml). It comes with Debian's `prometheus`
# package, installed here when running as root with apt-get; exits 1 with
# the install command otherwise.

if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    printf '==> %s\n' "promtool missing (metrics and alert-rule tests): installing the prometheus package" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # The package's service is not started: only promtool is used.
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  else
    echo "promtool is missing (the metrics tests check /metrics and the alert rules with it)." >&2
    echo "Install it:  sudo apt-get update && sudo apt-get install -y prometheus" >&2
    exit 1
  fi
fi
