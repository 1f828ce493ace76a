#!/usr/bin/env bash
# Stop what infra/mlflow/setup.sh started, by PID: the MLflow server (its process group), then
# PostgreSQL (fast shutdown); then check that nothing listens on their ports. The database
# stays on disk under $SSRL_CLUSTER_DIR/mlflow for the next setup.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib.sh"
M=$SSRL_CLUSTER_DIR/mlflow
PG_PORT=${SSRL_PG_PORT:-55432}
MLFLOW_PORT=${SSRL_MLFLOW_PORT:-5055}

pgid=$(pid_of "$M/mlflow.pid" || true)
if alive "$pgid"; then
    kill -TERM -- "-$pgid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do kill -0 -- "-$pgid" 2>/dev/null || break; sleep 0.2; done
    kill -0 -- "-$pgid" 2>/dev/null && kill -KILL -- "-$pgid" 2>/dev/null
    say "stopped MLflow server (process group $pgid)"
fi
rm -f "$M/mlflow.pid"
# SIGINT is PostgreSQL's fast shutdown; postmaster.pid goes away with it.
stop_pid PostgreSQL "$M/pgdata/postmaster.pid" INT

left=0
for port in "$PG_PORT" "$MLFLOW_PORT"; do
    if listening "$port"; then say "still listening on port $port"; left=1; fi
done
[ $left -eq 0 ] && say "MLflow server and PostgreSQL stopped; nothing left listening"
exit $left
