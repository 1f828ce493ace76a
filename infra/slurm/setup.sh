#!/usr/bin/env bash
# Install (Debian's slurmctld, slurmd, slurm-client, munge) and start a one-node SLURM cluster
# on this machine: munged, slurmctld and slurmd, private to $SSRL_CLUSTER_DIR/slurm, listening
# on 127.0.0.1 only, one partition with every CPU of the machine. Idempotent: a running
# cluster is left as it is. Stop it with infra/slurm/stop.sh.
#   infra/slurm/setup.sh        (then sinfo, sbatch, snakemake --profile profiles/slurm ...)
# Settings (environment): SSRL_CLUSTER_DIR (/tmp/ssrl-cluster), SSRL_SLURM_PARTITION (cpu),
# SSRL_SLURMCTLD_PORT (6817), SSRL_SLURMD_PORT (6818).
# No slurmdbd: see slurm.conf.in (job states come from squeue).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib.sh"
need_root
apt_install munge slurmctld slurmd slurm-client

S=$SSRL_CLUSTER_DIR/slurm
CONF=$S/slurm.conf
export SLURM_CONF=$CONF
PARTITION=${SSRL_SLURM_PARTITION:-cpu}
CTLD_PORT=${SSRL_SLURMCTLD_PORT:-6817}
SLURMD_PORT=${SSRL_SLURMD_PORT:-6818}
HOST=$(hostname -s)

if alive "$(pid_of "$S/slurmctld.pid" || true)" && alive "$(pid_of "$S/slurmd.pid" || true)"; then
    say "SLURM already running ($CONF)"
    exit 0
fi

mkdir -p "$S"/{ctld,slurmd,log,munge}
chmod 700 "$S/munge"
# munge: a key of this cluster's own, and a private socket (the system's munged, if any, is
# left alone).
if [ ! -s "$S/munge/munge.key" ]; then
    dd if=/dev/urandom of="$S/munge/munge.key" bs=1024 count=1 status=none
fi
chmod 400 "$S/munge/munge.key"
if ! alive "$(pid_of "$S/munge/munged.pid" || true)"; then
    munged --force --socket="$S/munge/munge.socket.2" --key-file="$S/munge/munge.key" \
        --pid-file="$S/munge/munged.pid" --log-file="$S/log/munged.log" \
        --seed-file="$S/munge/munged.seed"
    wait_for 10 munged munge --socket="$S/munge/munge.socket.2" -n
    say "munged running (pid $(pid_of "$S/munge/munged.pid"))"
fi

# The node as slurmd sees it (CPUs, sockets, cores, memory), minus 1 GB of memory for the OS.
node=$(slurmd -C | head -n1)
mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
node=$(sed "s/RealMemory=[0-9]*/RealMemory=$((mem > 2048 ? mem - 1024 : mem))/" <<<"$node")
sed -e "s|@STATE@|$S|g" -e "s|@HOST@|$HOST|g" -e "s|@CTLD_PORT@|$CTLD_PORT|g" \
    -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" -e "s|@PARTITION@|$PARTITION|g" -e "s|@NODE@|$node|" \
    "$here/slurm.conf.in" > "$CONF"
# The default path too: inside a job, snakemake-executor-plugin-slurm-jobstep (0.6.1) runs
# `srun` with every SLURM_* variable removed, SLURM_CONF included. A slurm.conf of another
# cluster is never replaced.
SYS_CONF=/etc/slurm/slurm.conf
if [ -e "$SYS_CONF" ] || [ -L "$SYS_CONF" ]; then
    [ "$(readlink "$SYS_CONF")" = "$CONF" ] \
        || die "$SYS_CONF exists and is not this cluster's; move it away first"
else
    mkdir -p /etc/slurm && ln -s "$CONF" "$SYS_CONF"
fi

for port in "$CTLD_PORT" "$SLURMD_PORT"; do
    listening "$port" && die "port $port is taken (set SSRL_SLURMCTLD_PORT / SSRL_SLURMD_PORT)"
done
# -c: a fresh controller state (no jobs of an earlier cluster come back).
slurmctld -c -f "$CONF"
wait_for 30 slurmctld scontrol ping
slurmd -f "$CONF"
wait_for 30 "slurmd (node $HOST idle)" \
    bash -c "sinfo -h -N -o '%T' | grep -qE '^(idle|mixed|allocated)'"
say "SLURM running: slurmctld pid $(pid_of "$S/slurmctld.pid"), slurmd pid" \
    "$(pid_of "$S/slurmd.pid"); partition '$PARTITION': $(sinfo -h -p "$PARTITION" -o '%c CPUs, %m MB')"
say "configuration: $CONF (linked from $SYS_CONF)"
