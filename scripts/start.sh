#!/usr/bin/env bash
# The one command that installs nasweb and starts it: creates .venv, migrates, creates a demo
# user, makes sure a Redis server is there, then runs one Celery worker (it trains the
# candidates) and the web server on http://127.0.0.1:${PORT:-8000}/.  Ctrl-C stops everything
# this script started.
#
# Redis: REDIS_URL if set; else the server on 127.0.0.1:6379 if one answers; else a private
# redis-server (installed from Debian if missing) on a free port from 6390, keeping nothing on
# disk, stopped again on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

ensure_venv requirements.txt
PY="$NASWEB_VENV/bin/python"
PORT=${PORT:-8000}
DATA_DIR=${NASWEB_DATA_DIR:-var}

children=()       # background processes to stop on exit
private_redis=""  # pid file of the redis-server this script started, if any

# Stop what this script started: the web server and the worker (given a few seconds to hand its
# task back to the queue, then killed with its pool processes), then the private Redis.
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ ${#children[@]} -gt 0 ]; then
        say "stopping nasweb"
        kill -TERM "${children[@]}" 2>/dev/null || true
        for _ in $(seq 20); do
            alive=0
            for pid in "${children[@]}"; do
                kill -0 "$pid" 2>/dev/null && alive=1
            done
            [ "$alive" -eq 0 ] && break
            sleep 0.5
        done
        for pid in "${children[@]}"; do
            # Each child leads its own process group (setsid): this also ends a worker's pool.
            kill -KILL -- "-$pid" 2>/dev/null || true
        done
    fi
    [ -n "$private_redis" ] && stop_redis "$private_redis"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

redis_answers() {
    "$PY" -c 'import sys, redis; redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1).ping()' \
        "$1" 2>/dev/null
}

port_listening() {
    "$PY" -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1)' \
        "$1" 2>/dev/null
}

stop_redis() {
    local pidfile=$1 pid
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "redis-server" ]; then
        kill -TERM "$pid"
        for _ in $(seq 20); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.25
        done
    fi
    rm -f "$pidfile"
}

start_private_redis() {
    command -v redis-server >/dev/null || ensure_debian_packages redis-server
    if ! command -v redis-server >/dev/null; then
        echo "nasweb needs Redis: install redis-server, or set REDIS_URL to a running one" >&2
        return 1
    fi
    mkdir -p "$DATA_DIR/redis"
    local dir port=6390
    dir=$(cd "$DATA_DIR/redis" && pwd)
    # Left running by a start.sh that was killed outright: it holds nothing worth keeping.
    stop_redis "$dir/redis.pid"
    while port_listening "$port"; do
        port=$((port + 1))
    done
    say "starting a private Redis on 127.0.0.1:$port (log: $dir/redis.log)"
    redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no --daemonize yes \
        --dir "$dir" --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
    private_redis="$dir/redis.pid"
    REDIS_URL="redis://127.0.0.1:$port/0"
    for _ in $(seq 40); do
        redis_answers "$REDIS_URL" && return 0
        sleep 0.25
    done
    echo "the private Redis did not start; see $dir/redis.log" >&2
    return 1
}

say "migrating the database"
"$PY" manage.py migrate --noinput
"$PY" manage.py collectstatic --noinput --verbosity 0

say "demo user"
export NASWEB_DEMO_USER=${NASWEB_DEMO_USER:-demo}
demo_login=$(NASWEB_DEMO_PASSWORD=${NASWEB_DEMO_PASSWORD:-demo} "$PY" manage.py shell --no-imports -c '
import os
from django.contrib.auth import get_user_model

username, password = os.environ["NASWEB_DEMO_USER"], os.environ["NASWEB_DEMO_PASSWORD"]
User = get_user_model()
user = User.objects.filter(username=username).first()
if user is not None and user.has_usable_password():
    print(f"Demo login: {username} (already set up; its password was left as it is)")
else:
    # Also adopts a password-less user that an earlier `manage.py search` created as the run owner.
    user = user or User(username=username)
    user.is_staff = user.is_superuser = True
    user.set_password(password)
    user.save()
    print(f"Demo login: {username} / {password}  (change it before exposing nasweb on a network)")
')
echo "$demo_login"

say "Redis"
if [ -n "${REDIS_URL:-}" ]; then
    redis_answers "$REDIS_URL" || {
        echo "REDIS_URL=$REDIS_URL does not answer" >&2
        exit 1
    }
elif redis_answers redis://127.0.0.1:6379/0; then
    REDIS_URL=redis://127.0.0.1:6379/0
else
    start_private_redis
fi
export REDIS_URL
echo "using $REDIS_URL"

if port_listening "$PORT"; then
    echo "port $PORT is in use: stop what runs there or start nasweb with PORT=<another port>" >&2
    exit 1
fi

# Runs whose queued work a restarted (private) Redis forgot get it queued again.
"$PY" manage.py shell --no-imports -c '
from searches.services.execution import recover_runs

if count := recover_runs():
    print(f"re-queued the work of {count} unfinished run(s)")
'

say "starting the Celery worker and the web server"
# One single-threaded training per core is the fastest layout (docs/benchmarks.md, "Threads and
# processes"); NASWEB_WORKERS overrides it.
setsid "$NASWEB_VENV/bin/celery" -A nasweb worker --concurrency "${NASWEB_WORKERS:-$(nproc)}" -l info &
children+=($!)
setsid "$NASWEB_VENV/bin/daphne" -b 127.0.0.1 -p "$PORT" nasweb.asgi:application &
children+=($!)

for _ in $(seq 120); do
    port_listening "$PORT" && break
    sleep 0.25
done
say "nasweb is running at http://127.0.0.1:$PORT/  (Ctrl-C stops it)"
echo "$demo_login"
echo "Searches from the command line: $PY manage.py search --help"

# Whichever stops first (Ctrl-C, or a crash), everything else is stopped by cleanup.
wait -n "${children[@]}"
