#!/usr/bin/env bash
# pg-tmp.sh start | stop DIR — a throwaway PostgreSQL server for the tests.
# start: prints DATABASE_URL=... and PGTMP_DIR=... (one per line) on stdout.
# As root the server runs as the unprivileged "postgres" user (PostgreSQL refuses root).
set -euo pipefail

bindir() {
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

as_owner() {
    if [[ $EUID -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start() {
    local bin dir port
    bin=$(bindir)
    [[ -n "$bin" && -x "$bin/initdb" ]] || { echo "no PostgreSQL server binaries (apt-get install postgresql)" >&2; exit 1; }
    if [[ $EUID -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
        useradd --system --no-create-home --shell /usr/sbin/nologin postgres
    fi
    dir=$(mktemp -d /tmp/bridge-pg.XXXXXX)
    [[ $EUID -eq 0 ]] && chown postgres "$dir"
    as_owner "$bin/initdb" -D "$dir/data" -U bridge --auth=trust --encoding=UTF8 --locale=C.UTF-8 \
        --no-sync >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c max_connections=200" start >/dev/null \
        || { tail -n 20 "$dir/server.log" >&2; exit 1; }
    "$bin/createdb" -h 127.0.0.1 -p "$port" -U bridge bridge
    echo "DATABASE_URL=postgresql://bridge@127.0.0.1:$port/bridge"
    echo "PGTMP_DIR=$dir"
}

stop() {
    local dir=${1:?usage: pg-tmp.sh stop DIR}
    as_owner "$(bindir)/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf -- "$dir"
}

case "${1:-}" in
    start) start ;;
    stop) stop "${2:-}" ;;
    *) echo "usage: pg-tmp.sh start | stop DIR" >&2; exit 2 ;;
esac
