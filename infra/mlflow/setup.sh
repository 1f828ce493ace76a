#!/usr/bin/env bash
# A team MLflow server on PostgreSQL, on this machine: installs Debian's postgresql (if
# missing), creates a private PostgreSQL instance under $SSRL_CLUSTER_DIR/mlflow (initdb; own
# port, 127.0.0.1 only), a role and database `mlflow`, and starts `mlflow server` with that
# database as its backend store and an artifacts folder beside it. Idempotent; stop both with
# infra/mlflow/stop.sh. Then:  export MLFLOW_TRACKING_URI=http://127.0.0.1:$SSRL_MLFLOW_PORT
# Settings (environment): SSRL_CLUSTER_DIR (/tmp/ssrl-cluster), SSRL_PG_PORT (55432),
# SSRL_MLFLOW_PORT (5055), SSRL_PYTHON (the repository's .venv/bin/python, which has mlflow and
# psycopg2). The database password is taken from PGPASSWORD, or drawn at random when unset; it
# reaches PostgreSQL on standard input and the server through its environment, never a
# command line or a file.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib.sh"
need_root
apt_install postgresql

M=$SSRL_CLUSTER_DIR/mlflow
PG_PORT=${SSRL_PG_PORT:-55432}
MLFLOW_PORT=${SSRL_MLFLOW_PORT:-5055}
PY=${SSRL_PYTHON:-$(cd "$here/../.." && pwd)/.venv/bin/python}
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
[ -x "$PG_BIN/initdb" ] || die "no PostgreSQL server binaries under /usr/lib/postgresql"
"$PY" -c "import mlflow, psycopg2" 2>/dev/null \
    || die "$PY lacks mlflow or psycopg2 (make venv installs both)"
URI=http://127.0.0.1:$MLFLOW_PORT
as_pg() { runuser -u postgres -- "$@"; }
pg_pid() { pid_of "$M/pgdata/postmaster.pid"; }

mkdir -p "$M/log" "$M/artifacts"
chmod 755 "$SSRL_CLUSTER_DIR" "$M"
if [ ! -s "$M/pgdata/PG_VERSION" ]; then
    install -d -o postgres -g postgres -m 700 "$M/pgdata"
    as_pg "$PG_BIN/initdb" -D "$M/pgdata" -U postgres --auth-local=peer \
        --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >"$M/log/initdb.log"
fi
install -d -o postgres -g postgres -m 755 "$M/pgsock"
chown postgres:postgres "$M/log"
if ! alive "$(pg_pid || true)"; then
    listening "$PG_PORT" && die "port $PG_PORT is taken (set SSRL_PG_PORT)"
    as_pg "$PG_BIN/pg_ctl" -D "$M/pgdata" -l "$M/log/postgresql.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -c unix_socket_directories=$M/pgsock" \
        start >/dev/null
    say "PostgreSQL $(basename "$(dirname "$PG_BIN")") running (pid $(pg_pid)), 127.0.0.1:$PG_PORT"
fi

if alive "$(pid_of "$M/mlflow.pid" || true)"; then
    say "MLflow server already running: $URI"
    exit 0
fi
listening "$MLFLOW_PORT" && die "port $MLFLOW_PORT is taken (set SSRL_MLFLOW_PORT)"
PGPASSWORD=${PGPASSWORD:-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')}
case $PGPASSWORD in *\'*) die "PGPASSWORD may not contain a single quote" ;; esac
as_pg "$PG_BIN/psql" -q -h "$M/pgsock" -p "$PG_PORT" -d postgres -v ON_ERROR_STOP=1 <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mlflow') THEN CREATE ROLE mlflow LOGIN; END IF;
END \$\$;
ALTER ROLE mlflow WITH LOGIN PASSWORD '$PGPASSWORD';
SELECT 'CREATE DATABASE mlflow OWNER mlflow' WHERE NOT EXISTS
  (SELECT FROM pg_database WHERE datname = 'mlflow')\gexec
SQL
# The server reads the password from PGPASSWORD (libpq); the URI carries none. setsid: the
# server and its workers form one process group, stopped together by its PID. No job runner
# (MLflow's GenAI background jobs: seven more processes, unused here).
PGPASSWORD=$PGPASSWORD MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid "$PY" -m mlflow server \
    --backend-store-uri "postgresql://mlflow@127.0.0.1:$PG_PORT/mlflow" \
    --artifacts-destination "$M/artifacts" --host 127.0.0.1 --port "$MLFLOW_PORT" \
    --workers 1 >"$M/log/mlflow.log" 2>&1 </dev/null &
echo $! >"$M/mlflow.pid"
wait_for 120 "MLflow server ($M/log/mlflow.log)" \
    "$PY" -c "import urllib.request as u; u.urlopen('$URI/health', timeout=2)"
say "MLflow server running (pid $(pid_of "$M/mlflow.pid")): $URI, backend" \
    "postgresql://mlflow@127.0.0.1:$PG_PORT/mlflow, artifacts $M/artifacts"
say "clients need: export MLFLOW_TRACKING_URI=$URI"
