#!/usr/bin/env bash
# Stop what infra/slurm/setup.sh started, by PID: cancel the jobs left, then slurmd,
# slurmctld and munged; then check that none of them is left and nothing listens on their ports.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib.sh"
S=$SSRL_CLUSTER_DIR/slurm
export SLURM_CONF=$S/slurm.conf
CTLD_PORT=${SSRL_SLURMCTLD_PORT:-6817}
SLURMD_PORT=${SSRL_SLURMD_PORT:-6818}

if alive "$(pid_of "$S/slurmctld.pid" || true)"; then
    scancel --full --user "$(id -un)" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        [ -z "$(squeue -h -t RUNNING,COMPLETING -o %i 2>/dev/null)" ] && break
        sleep 0.2
    done
fi
stop_pid slurmd "$S/slurmd.pid"
stop_pid slurmctld "$S/slurmctld.pid"
stop_pid munged "$S/munge/munged.pid"

[ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" = "$S/slurm.conf" ] && rm -f /etc/slurm/slurm.conf

left=0
for port in "$CTLD_PORT" "$SLURMD_PORT"; do
    if listening "$port"; then say "still listening on port $port"; left=1; fi
done
# slurmstepd of a job that outlived slurmd would name this cluster's spool folder.
for p in /proc/[0-9]*; do
    if tr '\0' ' ' < "$p/cmdline" 2>/dev/null | grep -q "slurmstepd"; then
        say "left over: $(tr '\0' ' ' < "$p/cmdline") (pid ${p#/proc/})"; left=1
    fi
done
[ $left -eq 0 ] && say "SLURM stopped; nothing left listening"
exit $left
