#!/usr/bin/env bash
# Sourced by scripts/test.sh and scripts/dev.sh: makes sure the PostgreSQL
# server binaries (initdb, pg_ctl) are there, installing the `postgresql`
# package when running as root on Debian, and that the `postgres` system
# user exists (initdb refuses to run as root; the harness drops to it).
# Exits 1 with the install command otherwise.

have_pg_server() {
  if [ -n "${RAP_PG_BINDIR:-}" ] && [ -x "$RAP_PG_BINDIR/initdb" ]; then return 0; fi
  command -v initdb >/dev/null 2>&1 && return 0
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

if ! have_pg_server; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    printf '==> %s\n' "PostgreSQL server binaries missing: installing the postgresql package" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql >/dev/null
  else
    echo "PostgreSQL server binaries (initdb, pg_ctl) are missing." >&2
    echo "Install them:  sudo apt-get update && sudo apt-get install -y postgresql" >&2
    exit 1
  fi
fi
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
  printf '==> %s\n' "creating the postgres system user" >&2
  useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi
