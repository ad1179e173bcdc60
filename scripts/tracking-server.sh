#!/usr/bin/env bash
# A tracking server a lab can share: PostgreSQL (the distribution's package) holding MLflow's runs and Optuna's
# studies, and `mlflow server` in front of it with proxied artifact storage and, optionally, basic authentication.
#
#   scripts/tracking-server.sh start [--dir DIR] [--host HOST] [--port PORT] [--db-port PORT] [--auth]
#                                    [--workers N] [-- MORE MLFLOW SERVER OPTIONS]
#   scripts/tracking-server.sh stop [--dir DIR]
#
# `start` runs in the foreground until SIGTERM or SIGINT (Ctrl-C), then stops MLflow and PostgreSQL cleanly;
# `stop` sends that signal to the one running on DIR. Everything lives in DIR (default $SEGFT_SERVER_DIR or
# ./segft-server): postgres/ (the cluster), artifacts/, secrets/ (generated passwords, mode 0600), logs and the pid
# file. Data is kept between starts. Passwords never appear on a command line, in a URL or in the output: MLflow
# reaches PostgreSQL through a pgpass file, Optuna workers get theirs in SEGFT_STORAGE_PASSWORD.
set -euo pipefail

usage() { sed -n '5,7p' "$0" | sed 's/^# \{0,3\}//' >&2; exit 2; }
die() { echo "tracking-server: $*" >&2; exit 1; }

command=${1:-}; [ $# -gt 0 ] && shift
dir=${SEGFT_SERVER_DIR:-./segft-server} host=127.0.0.1 port=5000 db_port=5433 auth=0 workers="" extra=()
while [ $# -gt 0 ]; do
    case $1 in
        --dir) dir=$2; shift 2 ;;
        --host) host=$2; shift 2 ;;
        --port) port=$2; shift 2 ;;
        --db-port) db_port=$2; shift 2 ;;
        --auth) auth=1; shift ;;
        --workers) workers=$2; shift 2 ;;
        --) shift; extra=("$@"); break ;;
        *) usage ;;
    esac
done
case $command in start|stop) ;; *) usage ;; esac
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
pid_file=$dir/server.pid

if [ "$command" = stop ]; then
    [ -f "$pid_file" ] || die "no server running on $dir (no $pid_file)"
    pid=$(cat "$pid_file")
    kill -TERM "$pid" 2>/dev/null || { rm -f "$pid_file"; die "no server running on $dir (process $pid is gone)"; }
    # Done once the server has removed its pid file (it may linger as a zombie until its parent reaps it).
    for _ in $(seq 120); do
        [ -f "$pid_file" ] && kill -0 "$pid" 2>/dev/null || { echo "stopped the server on $dir"; exit 0; }
        sleep 0.5
    done
    die "the server on $dir (process $pid) did not stop within 60 s"
fi

# --- PostgreSQL binaries, and who runs them (PostgreSQL refuses to run as root) -------------------------------
pg_bin=${PG_BIN:-}
if [ -z "$pg_bin" ]; then
    if command -v initdb >/dev/null; then
        pg_bin=$(dirname "$(readlink -f "$(command -v initdb)")")
    else
        pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    fi
fi
if [ ! -x "$pg_bin/initdb" ]; then
    [ "$(id -u)" = 0 ] || die "PostgreSQL is not installed: apt-get install postgresql (or set PG_BIN)"
    echo "tracking-server: installing PostgreSQL from the distribution's packages" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends postgresql >/dev/null \
        || { apt-get update >/dev/null && apt-get install -y --no-install-recommends postgresql >/dev/null; }
    pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi
if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 \
        || useradd --system --user-group --home-dir /var/lib/postgresql --shell /usr/sbin/nologin postgres
    as_db_owner=(setpriv --reuid=postgres --regid=postgres --init-groups --)
    chmod o+x "$dir"
    "${as_db_owner[@]}" test -x "$dir" || die "the postgres user cannot reach $dir: give its parent folders search" \
        "permission (chmod o+x) or choose another --dir"
else
    as_db_owner=()
fi
db_owner=$("${as_db_owner[@]}" id -un)

# --- MLflow: the project's virtual environment when there is one ----------------------------------------------
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$repo/.venv/bin/python}
[ -x "$python" ] || python=python3
"$python" -c "import mlflow, psycopg" 2>/dev/null \
    || die "$python lacks mlflow or psycopg2: pip install -e '$repo[server]'"

# --- The data folder ----------------------------------------------------------------------------------------
secret() {  # the password kept in secrets/$1, generated on first use
    local file=$dir/secrets/$1
    [ -s "$file" ] || (umask 077 && "$python" -c "import secrets; print(secrets.token_urlsafe(24))" >"$file")
    cat "$file"
}
mkdir -p "$dir/artifacts" "$dir/logs" "$dir/postgres" "$dir/run"
(umask 077 && mkdir -p "$dir/secrets")
chmod 700 "$dir/secrets"
chown "$db_owner" "$dir/postgres" "$dir/run"
chmod 700 "$dir/postgres"
if [ ! -f "$dir/postgres/PG_VERSION" ]; then
    "${as_db_owner[@]}" "$pg_bin/initdb" -D "$dir/postgres" -U postgres --encoding=UTF8 --locale=C \
        --auth-local=peer --auth-host=scram-sha-256 >"$dir/logs/initdb.log" 2>&1 \
        || die "initdb failed: see $dir/logs/initdb.log"
    # Tuning workers on other machines (--host other than loopback) log in as optuna or mlflow, with a password.
    echo "host all mlflow,optuna all scram-sha-256" >>"$dir/postgres/pg_hba.conf"
fi
if [ -f "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
    die "a server already runs on $dir (process $(cat "$pid_file")): scripts/tracking-server.sh stop --dir $dir"
fi

mlflow_pid="" pg_pid=""
shutdown() {
    trap - TERM INT EXIT
    if [ -n "$mlflow_pid" ]; then kill -TERM "$mlflow_pid" 2>/dev/null || true; wait "$mlflow_pid" || true; fi
    # SIGINT is PostgreSQL's fast shutdown: clients are disconnected, the data is written out cleanly.
    if [ -n "$pg_pid" ]; then kill -INT "$pg_pid" 2>/dev/null || true; wait "$pg_pid" || true; fi
    rm -f "$pid_file"
    echo "tracking-server: stopped (data kept in $dir)" >&2
}
trap 'shutdown; exit 0' TERM INT
trap shutdown EXIT
echo $$ >"$pid_file"

# PostgreSQL stays a child of this script (no pg_ctl, which detaches it), so ending the script's process group
# ends it too. It listens where MLflow does, so that tuning workers elsewhere can share Optuna's database.
case $host in
    127.0.0.1|localhost) listen=127.0.0.1 ;;
    0.0.0.0|::) listen='*' ;;
    *) listen=127.0.0.1,$host ;;
esac
"${as_db_owner[@]}" "$pg_bin/postgres" -D "$dir/postgres" -p "$db_port" -c listen_addresses="$listen" \
    -c unix_socket_directories="$dir/run" >>"$dir/logs/postgres.log" 2>&1 &
pg_pid=$!
for _ in $(seq 60); do
    "$pg_bin/pg_isready" -q -h "$dir/run" -p "$db_port" && break
    kill -0 "$pg_pid" 2>/dev/null || die "PostgreSQL did not start: see $dir/logs/postgres.log"
    sleep 0.5
done

# Roles and databases, created once and given their passwords on every start (through stdin, never argv).
mlflow_password=$(secret postgres-mlflow-password)
optuna_password=$(secret postgres-optuna-password)
"${as_db_owner[@]}" "$pg_bin/psql" -q -X -h "$dir/run" -p "$db_port" -U postgres -d postgres -v ON_ERROR_STOP=1 \
    >/dev/null <<SQL || die "could not create the databases: see $dir/logs/postgres.log"
SELECT 'CREATE ROLE mlflow LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mlflow') \gexec
SELECT 'CREATE ROLE optuna LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'optuna') \gexec
ALTER ROLE mlflow PASSWORD '$mlflow_password';
ALTER ROLE optuna PASSWORD '$optuna_password';
SELECT 'CREATE DATABASE mlflow OWNER mlflow' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'mlflow') \gexec
SELECT 'CREATE DATABASE mlflow_auth OWNER mlflow'
    WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'mlflow_auth') \gexec
SELECT 'CREATE DATABASE optuna OWNER optuna' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'optuna') \gexec
SQL
(umask 077 && printf '127.0.0.1:%s:*:mlflow:%s\n' "$db_port" "$mlflow_password" >"$dir/secrets/pgpass")
export PGPASSFILE=$dir/secrets/pgpass
optuna_url=postgresql://optuna@127.0.0.1:$db_port/optuna
# Optuna's tables, made here once: tuning workers that start together on an empty database would race to create
# them, and all but one fail (UniqueViolation).
if "$python" -c "import optuna" 2>/dev/null; then
    PGPASSWORD=$optuna_password "$python" -c "import sys, optuna; optuna.storages.RDBStorage(sys.argv[1])" \
        "$optuna_url" || die "could not create Optuna's tables in $optuna_url"
fi

server=(--host "$host" --port "$port" --backend-store-uri "postgresql://mlflow@127.0.0.1:$db_port/mlflow"
        --artifacts-destination "$dir/artifacts")
[ -n "$workers" ] && server+=(--workers "$workers")
if [ "$auth" = 1 ]; then
    admin_password=$(secret mlflow-admin-password)
    (umask 077 && cat >"$dir/secrets/basic_auth.ini" <<INI
[mlflow]
default_permission = READ
database_uri = postgresql://mlflow@127.0.0.1:$db_port/mlflow_auth
admin_username = admin
admin_password = $admin_password
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
    )
    export MLFLOW_AUTH_CONFIG_PATH=$dir/secrets/basic_auth.ini
    MLFLOW_FLASK_SERVER_SECRET_KEY=$(secret flask-secret-key)
    export MLFLOW_FLASK_SERVER_SECRET_KEY
    server+=(--app-name basic-auth)
fi

shown=$host; case $host in 0.0.0.0|::) shown=$(hostname) ;; esac
cat <<EOF
tracking-server: MLflow runs in PostgreSQL, artifacts in $dir/artifacts
  MLflow:  export MLFLOW_TRACKING_URI=http://$shown:$port
  Optuna:  segft tune --storage postgresql://optuna@$shown:$db_port/optuna
           with export SEGFT_STORAGE_PASSWORD=\$(cat $dir/secrets/postgres-optuna-password)
EOF
[ "$auth" = 1 ] && cat <<EOF
  Login:   user admin, password in $dir/secrets/mlflow-admin-password
           (clients: export MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD=...)
EOF
echo "  Stop:    Ctrl-C, or scripts/tracking-server.sh stop --dir $dir"

"$python" -m mlflow server "${server[@]}" "${extra[@]}" &
mlflow_pid=$!
wait "$mlflow_pid"
