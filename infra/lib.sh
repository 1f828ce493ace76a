# Shared by infra/*/setup.sh and stop.sh (sourced, not run).
# SSRL_CLUSTER_DIR holds every file the daemons write (configs, data, logs, PID files).
SSRL_CLUSTER_DIR=${SSRL_CLUSTER_DIR:-/tmp/ssrl-cluster}
export SSRL_CLUSTER_DIR

say() { echo "[cluster] $*"; }
die() { echo "[cluster] error: $*" >&2; exit 2; }

need_root() {
    [ "$(id -u)" -eq 0 ] || die "run as root (installs Debian packages, starts daemons)"
}

# Install the Debian packages that are missing; `apt-get update` once, only when one is.
# Services are not started by the packages' install scripts (policy-rc.d says no): this
# project starts its own private instances and stops them by PID.
apt_install() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get"
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && made_policy=1
    fi
    say "installing ${missing[*]}"
    if [ ! -e "$SSRL_CLUSTER_DIR/.apt-updated" ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        mkdir -p "$SSRL_CLUSTER_DIR" && touch "$SSRL_CLUSTER_DIR/.apt-updated"
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
    [ $made_policy -eq 1 ] && rm -f "$policy"
    return 0
}

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

pid_of() { [ -s "$1" ] && head -n1 "$1" | tr -dc '0-9'; }

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND until it succeeds.
wait_for() {
    local seconds=$1 what=$2 i
    shift 2
    for ((i = 0; i < seconds * 5; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    die "$what did not come up within ${seconds}s"
}

# stop_pid NAME PIDFILE [SIGNAL]: stop the daemon whose PID the file holds; SIGKILL after 20 s.
stop_pid() {
    local name=$1 file=$2 sig=${3:-TERM} pid i
    pid=$(pid_of "$file" || true)
    if alive "$pid"; then
        kill -s "$sig" "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do alive "$pid" || break; sleep 0.2; done
        if alive "$pid"; then
            say "$name (pid $pid) ignored SIG$sig; SIGKILL"
            kill -s KILL "$pid" 2>/dev/null || true
            sleep 0.5
        fi
        say "stopped $name (pid $pid)"
    fi
    rm -f "$file"
}

# listening PORT: true while something listens on the TCP port.
listening() { ss -Hltn "sport = :$1" | grep -q .; }
