#!/usr/bin/env bash
# A private PostgreSQL for development, the same way the test harness
# (controlplane/pgtest) starts one for tests: initdb + pg_ctl into a
# directory of the repo, listening on a unix socket in that directory only.
#
#   scripts/pg-dev.sh start    create (first time) and start; idempotent
#   scripts/pg-dev.sh stop     stop (fast shutdown); no-op when stopped
#   scripts/pg-dev.sh url      print the connection URL (sqlx and psql)
#   scripts/pg-dev.sh status   print state; exit 0 running, 3 stopped
#
# Data lives in ${RAP_DEV_DIR:-<repo>/.dev}/pg (kept across restarts; delete
# the directory to start over). The port only names the socket file
# (.s.PGSQL.<port>); default 55432, override with RAP_PG_PORT. Binaries come
# from RAP_PG_BINDIR, else PATH, else the newest /usr/lib/postgresql/*/bin.
# As root, initdb and pg_ctl run as the `postgres` user through runuser
# (initdb refuses to run as root). Installs nothing.
#
# Unlike the test servers this one keeps fsync on: its data outlives a run.
# Commits are asynchronous (synchronous_commit=off) unless
# RAP_PG_SYNCHRONOUS_COMMIT=on (the benchmarks set it).
set -euo pipefail

readonly INSTALL_COMMAND='apt-get update && apt-get install -y postgresql'
readonly DEFAULT_PORT=55432
# Seconds pg_ctl waits for the server to start or stop (its own default).
readonly WAIT_SECONDS_MAX=60

# runuser lives in sbin, which a non-login PATH may lack.
PATH=${PATH:-/usr/bin:/bin}:/usr/sbin:/sbin
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dev_dir=${RAP_DEV_DIR:-$repo/.dev}
port=${RAP_PG_PORT:-$DEFAULT_PORT}

die() {
    echo "pg-dev: $*" >&2
    exit 1
}

usage() {
    echo "usage: $0 start|stop|url|status" >&2
    exit 2
}

# The first directory holding initdb, pg_ctl and postgres together.
find_bindir() {
    local dir candidates=()
    if [[ -n ${RAP_PG_BINDIR:-} ]]; then
        candidates=("$RAP_PG_BINDIR")
    else
        IFS=: read -r -a candidates <<<"${PATH:-}"
        local versioned
        while IFS= read -r versioned; do
            candidates+=("$versioned")
        done < <(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -rV)
    fi
    for dir in "${candidates[@]}"; do
        if [[ -x $dir/initdb && -x $dir/pg_ctl && -x $dir/postgres ]]; then
            printf '%s\n' "$dir"
            return 0
        fi
    done
    echo "pg-dev: PostgreSQL server binaries (initdb, pg_ctl, postgres) not found" \
        "(searched ${RAP_PG_BINDIR:+RAP_PG_BINDIR=}${RAP_PG_BINDIR:-PATH and /usr/lib/postgresql/*/bin})." >&2
    echo "pg-dev: install them with: $INSTALL_COMMAND" >&2
    echo "pg-dev: or point RAP_PG_BINDIR at their directory" >&2
    exit 1
}

# Runs a server program as a user it accepts.
as_server_user() {
    if [[ $EUID -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# Quotes one word for sh (pg_ctl passes -o through a shell).
shell_quote() {
    local quote="'" escaped="'\\''"
    printf "'%s'" "${1//$quote/$escaped}"
}

url() {
    # libpq and sqlx both read a host= starting with / as the socket
    # directory; this path holds no characters that need encoding unless
    # RAP_DEV_DIR does.
    printf 'postgres://postgres@localhost/postgres?host=%s&port=%s\n' "$pg_dir" "$port"
}

is_running() {
    [[ -d $data ]] && as_server_user "$bindir/pg_ctl" -D "$data" status >/dev/null 2>&1
}

start() {
    if is_running; then
        echo "pg-dev: already running in $pg_dir" >&2
        url
        return 0
    fi
    mkdir -p "$pg_dir"
    chmod 700 "$pg_dir"
    if [[ $EUID -eq 0 ]]; then
        id -u postgres >/dev/null 2>&1 ||
            die "running as root needs the postgres system user, which the Debian package creates: $INSTALL_COMMAND"
        chown postgres: "$pg_dir"
        runuser -u postgres -- test -w "$pg_dir" ||
            die "the postgres user cannot reach $pg_dir (a parent directory is not searchable); set RAP_DEV_DIR elsewhere"
    fi
    if [[ ! -f $data/PG_VERSION ]]; then
        (cd "$pg_dir" && as_server_user "$bindir/initdb" -D "$data" -U postgres -A trust \
            -E UTF8 --locale=C) >"$pg_dir/initdb.log" 2>&1 ||
            die "initdb failed; see $pg_dir/initdb.log: $(tail -n 20 "$pg_dir/initdb.log")"
    fi
    local options
    local sync=${RAP_PG_SYNCHRONOUS_COMMIT:-off}
    [[ $sync == on || $sync == off ]] || die "RAP_PG_SYNCHRONOUS_COMMIT must be on or off"
    options="-c listen_addresses='' -k $(shell_quote "$pg_dir") -p $port -c synchronous_commit=$sync"
    if ! (cd "$pg_dir" && as_server_user "$bindir/pg_ctl" -D "$data" -l "$log" -w \
        -t "$WAIT_SECONDS_MAX" -o "$options" start) >/dev/null; then
        echo "pg-dev: pg_ctl start failed; last lines of $log:" >&2
        tail -n 20 "$log" >&2 || true
        exit 1
    fi
    echo "pg-dev: started in $pg_dir" >&2
    url
}

stop() {
    if ! is_running; then
        echo "pg-dev: not running" >&2
        return 0
    fi
    (cd "$pg_dir" && as_server_user "$bindir/pg_ctl" -D "$data" -m fast -w \
        -t "$WAIT_SECONDS_MAX" stop) >/dev/null
    echo "pg-dev: stopped" >&2
}

status() {
    if is_running; then
        echo "running in $pg_dir (postmaster pid $(head -n 1 "$data/postmaster.pid"))"
        url
    else
        echo "stopped ($pg_dir)"
        exit 3
    fi
}

[[ $# -eq 1 ]] || usage
[[ $dev_dir == /* ]] || dev_dir=$PWD/$dev_dir
pg_dir=$dev_dir/pg
data=$pg_dir/data
log=$pg_dir/postgres.log

case $1 in
url) url ;;
start)
    bindir=$(find_bindir)
    start
    ;;
stop)
    bindir=$(find_bindir)
    stop
    ;;
status)
    bindir=$(find_bindir)
    status
    ;;
*) usage ;;
esac
