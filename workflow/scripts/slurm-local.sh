#!/usr/bin/env bash
# A throwaway single-node Slurm on this machine, to try the cluster profile before burning queue time.
#
#   bash workflow/scripts/slurm-local.sh install  # only the Debian packages (`up` does it too)
#   bash workflow/scripts/slurm-local.sh up       # install (Debian packages), configure, start; idempotent
#   sbatch / squeue / sacct / snakemake --profile workflow/profiles/slurm ...   # as on a cluster
#   bash workflow/scripts/slurm-local.sh status   # daemons, node, partition
#   bash workflow/scripts/slurm-local.sh down     # stop what `up` started (by its pid files), nothing else
#
# Needs root (apt-get, daemons), Debian/Ubuntu. Everything it writes lives under $CKD_SLURM_DIR
# (default /tmp/ckd-slurm): configs in etc/, pid files and sockets in run/, logs in log/, spool and
# accounting database below. The configs are written by the first `up` (delete the folder to change
# them: CKD_SLURM_* settings, a new machine size). It runs munged, mariadbd + slurmdbd (accounting, so that `sacct` works
# as on a real cluster), slurmctld and slurmd, all talking over 127.0.0.1 on ports
# $CKD_SLURM_PORT .. $CKD_SLURM_PORT+3 (default 6817..6820). No system service is touched: the
# packages' own daemons are not started. One thing lives outside that folder: /etc/slurm/slurm.conf,
# a symbolic link to etc/slurm.conf made by `up` and removed by `down`, because the `srun` that
# snakemake-executor-plugin-slurm runs inside each job drops SLURM_CONF from its environment and reads
# the default path. `up` refuses to run where /etc/slurm/slurm.conf is a real cluster's file.
#
# One node named after this host with all its CPUs (nproc) and its memory less 1 GB, one partition
# `local` (the default), accounting account `local` with root (and $SUDO_USER) in it. GPUs: when
# nvidia-smi lists N GPUs the node gets Gres=gpu:N (override with CKD_SLURM_GPUS=N; the device
# files with CKD_SLURM_GPU_FILES, default /dev/nvidia[0-(N-1)]). CKD_SLURM_FAKE_GPUS=N gives a
# machine without GPUs N pretend ones (character devices like /dev/null, under $CKD_SLURM_DIR/fake-gpu):
# `--gpus=N` jobs are scheduled and get CUDA_VISIBLE_DEVICES, and torch still finds no CUDA, so a
# multi-GPU config can be tried end to end on CPU (torchrun falls back to gloo).
set -euo pipefail

DIR="${CKD_SLURM_DIR:-/tmp/ckd-slurm}"
PORT="${CKD_SLURM_PORT:-6817}"
CLUSTER="${CKD_SLURM_CLUSTER:-ckdlocal}"
PARTITION="${CKD_SLURM_PARTITION:-local}"
ACCOUNT="${CKD_SLURM_ACCOUNT:-local}"
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server)
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)   # start order; stopped in reverse

ETC="$DIR/etc" RUN="$DIR/run" LOG="$DIR/log" SPOOL="$DIR/spool" DB="$DIR/db"
CTLD_PORT=$PORT SLURMD_PORT=$((PORT + 1)) DBD_PORT=$((PORT + 2)) DB_PORT=$((PORT + 3))
MUNGE_SOCKET="$RUN/munge.socket"
DB_SOCKET="$RUN/mariadb.sock"
export SLURM_CONF="$ETC/slurm.conf"

say() { echo "slurm-local: $*"; }
die() { echo "slurm-local: error: $*" >&2; exit 1; }

pidfile() { echo "$RUN/$1.pid"; }

# The pid of a daemon we started, if it is still that daemon (pid files can outlive a reboot).
running_pid() {
    local name=$1 file pid comm
    file=$(pidfile "$name")
    [[ -s $file ]] || return 1
    pid=$(tr -dc '0-9' < "$file")
    [[ -n $pid && -d /proc/$pid ]] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
    [[ $comm == "$name"* ]] || return 1
    echo "$pid"
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local seconds=$1 what=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
}

fail_start() {  # fail_start NAME LOGFILE
    echo "slurm-local: error: $1 did not start; last lines of $2:" >&2
    tail -n 20 "$2" >&2 2>/dev/null || true
    echo "slurm-local: what did start keeps running: stop it with '$0 down'" >&2
    exit 1
}

install_packages() {
    local missing=()
    for tool in slurmctld slurmd slurmdbd sbatch sacct sacctmgr munged mungekey mariadbd mariadb-install-db; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    ((${#missing[@]} == 0)) && return 0
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get: install Slurm, slurmdbd, munge and MariaDB yourself"
    say "installing ${PACKAGES[*]} (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >"$LOG/apt.log" 2>&1 || { tail -n 20 "$LOG/apt.log" >&2; die "apt-get update failed"; }
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >>"$LOG/apt.log" 2>&1 \
        || { tail -n 20 "$LOG/apt.log" >&2; die "apt-get install failed (log: $LOG/apt.log)"; }
}

gpu_count() {
    if [[ -n ${CKD_SLURM_FAKE_GPUS:-} ]]; then
        echo "$CKD_SLURM_FAKE_GPUS"
    elif [[ -n ${CKD_SLURM_GPUS:-} ]]; then
        echo "$CKD_SLURM_GPUS"
    elif command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true
    else
        echo 0
    fi
}

write_configs() {
    # Written once; a later `up` reuses them (and the database password in slurmdbd.conf).
    [[ -s $ETC/slurm.conf && -s $ETC/slurmdbd.conf ]] && return 0
    local host cpus mem_mb gpus gres="" gres_types="" password
    host=$(hostname -s)
    cpus=$(nproc)
    mem_mb=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
    ((mem_mb > 500)) || mem_mb=500
    gpus=$(gpu_count)
    if ((gpus > 0)); then
        local files="${CKD_SLURM_GPU_FILES:-/dev/nvidia[0-$((gpus - 1))]}" i
        if [[ -n ${CKD_SLURM_FAKE_GPUS:-} ]]; then
            mkdir -p "$DIR/fake-gpu"
            for ((i = 0; i < gpus; i++)); do
                [[ -c $DIR/fake-gpu/gpu$i ]] || mknod "$DIR/fake-gpu/gpu$i" c 1 3   # what /dev/null is
            done
            files="$DIR/fake-gpu/gpu[0-$((gpus - 1))]"
        fi
        gres_types="GresTypes=gpu
AccountingStorageTRES=gres/gpu"
        gres="Gres=gpu:$gpus"
        echo "Name=gpu File=$files" > "$ETC/gres.conf"
    fi
    password=$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
    cat > "$ETC/slurm.conf" <<EOF
# Written by workflow/scripts/slurm-local.sh: a throwaway one-node cluster on 127.0.0.1.
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
CryptoType=crypto/munge
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=$(pidfile slurmctld)
SlurmdPidFile=$(pidfile slurmd)
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
ReturnToService=2
MailProg=/bin/true
KillWait=5
InactiveLimit=0
MinJobAge=300
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$MUNGE_SOCKET
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=10
JobCompType=jobcomp/none
$gres_types
NodeName=$host NodeAddr=127.0.0.1 NodeHostname=$host CPUs=$cpus RealMemory=$mem_mb $gres State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    cat > "$ETC/slurmdbd.conf" <<EOF
# Written by workflow/scripts/slurm-local.sh
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=$host
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$(pidfile slurmdbd)
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$password
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$ETC/slurmdbd.conf"
    printf '%s\n' "$password" > "$ETC/db.password"
    chmod 600 "$ETC/db.password"
}

start_munged() {
    running_pid munged >/dev/null && return 0
    if [[ ! -s $ETC/munge.key ]]; then
        mungekey --create --keyfile="$ETC/munge.key" 2>/dev/null \
            || dd if=/dev/urandom of="$ETC/munge.key" bs=1024 count=1 status=none
    fi
    chmod 400 "$ETC/munge.key"
    munged --force --socket="$MUNGE_SOCKET" --key-file="$ETC/munge.key" --pid-file="$(pidfile munged)" \
        --log-file="$LOG/munged.log" --seed-file="$RUN/munged.seed" >>"$LOG/munged.log" 2>&1 \
        || fail_start munged "$LOG/munged.log"
    wait_for 10 munged bash -c "munge -n -S '$MUNGE_SOCKET' | unmunge -S '$MUNGE_SOCKET'" || fail_start munged "$LOG/munged.log"
}

db() { mariadb --no-defaults --socket="$DB_SOCKET" -u root "$@"; }

start_mariadbd() {
    running_pid mariadbd >/dev/null && return 0
    if [[ ! -d $DB/mysql ]]; then
        mariadb-install-db --no-defaults --datadir="$DB" --user=root --auth-root-authentication-method=socket \
            --skip-test-db >"$LOG/mariadb-install.log" 2>&1 || fail_start mariadb-install-db "$LOG/mariadb-install.log"
    fi
    setsid mariadbd --no-defaults --datadir="$DB" --socket="$DB_SOCKET" --port="$DB_PORT" --bind-address=127.0.0.1 \
        --pid-file="$(pidfile mariadbd)" --log-error="$LOG/mariadb.log" --user=root --skip-log-bin \
        --innodb-buffer-pool-size=64M --innodb-log-file-size=16M </dev/null >/dev/null 2>&1 &
    wait_for 60 mariadbd db -e "SELECT 1" || fail_start mariadbd "$LOG/mariadb.log"
    local password
    password=$(cat "$ETC/db.password")
    db -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$password';
           CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$password';
           GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
           GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
           FLUSH PRIVILEGES;"
}

start_slurmdbd() {
    running_pid slurmdbd >/dev/null && return 0
    slurmdbd >>"$LOG/slurmdbd.log" 2>&1 || fail_start slurmdbd "$LOG/slurmdbd.log"
    wait_for 60 slurmdbd sacctmgr -n list cluster || fail_start slurmdbd "$LOG/slurmdbd.log"
    # The cluster, an account and the users who submit, as a site's administrators would set them up.
    if [[ -z $(sacctmgr -n -P list cluster "$CLUSTER" format=cluster) ]]; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
    if [[ -z $(sacctmgr -n -P list account "$ACCOUNT" format=account) ]]; then
        sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description="ckd local" Organization=ckd >/dev/null
    fi
    local user
    for user in root ${SUDO_USER:-}; do
        if [[ -z $(sacctmgr -n -P list assoc user="$user" account="$ACCOUNT" format=user) ]]; then
            sacctmgr -i add user "$user" Account="$ACCOUNT" Cluster="$CLUSTER" >/dev/null
        fi
    done
}

start_slurmctld() {
    running_pid slurmctld >/dev/null && return 0
    slurmctld >>"$LOG/slurmctld.log" 2>&1 || fail_start slurmctld "$LOG/slurmctld.log"
    wait_for 60 slurmctld scontrol ping || fail_start slurmctld "$LOG/slurmctld.log"
}

SYSTEM_CONF=/etc/slurm/slurm.conf

ours_linked() { [[ -L $SYSTEM_CONF && $(readlink "$SYSTEM_CONF") == "$ETC/slurm.conf" ]]; }

link_conf() {
    ours_linked && return 0
    if [[ -L $SYSTEM_CONF && ! -e $SYSTEM_CONF ]]; then
        rm -f "$SYSTEM_CONF"   # a dangling link, left by a throwaway cluster whose folder is gone
    elif [[ -e $SYSTEM_CONF || -L $SYSTEM_CONF ]]; then
        die "$SYSTEM_CONF exists ($(readlink -f "$SYSTEM_CONF")): this machine already has a Slurm (or another throwaway one is up); use that one or stop it first"
    fi
    mkdir -p "$(dirname "$SYSTEM_CONF")"
    ln -s "$ETC/slurm.conf" "$SYSTEM_CONF"
}

unlink_conf() {
    if ours_linked; then rm -f "$SYSTEM_CONF"; say "removed the link $SYSTEM_CONF"; fi
}

node_ready() { sinfo -h -N -o '%T' | grep -Eq '^(idle|mixed|allocated)'; }

start_slurmd() {
    running_pid slurmd >/dev/null && return 0
    slurmd >>"$LOG/slurmd.log" 2>&1 || fail_start slurmd "$LOG/slurmd.log"
    if ! wait_for 60 slurmd node_ready; then
        scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
        wait_for 20 slurmd node_ready || fail_start slurmd "$LOG/slurmd.log"
    fi
}

all_up() {
    local name
    ours_linked || return 1
    for name in "${DAEMONS[@]}"; do running_pid "$name" >/dev/null || return 1; done
    node_ready
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

check_ports() {  # the ports of the daemons not running yet must be free
    local name port
    for name in slurmctld:$CTLD_PORT slurmd:$SLURMD_PORT slurmdbd:$DBD_PORT mariadbd:$DB_PORT; do
        port=${name#*:} name=${name%%:*}
        running_pid "$name" >/dev/null && continue
        port_free "$port" || die "port $port (for $name) is taken on 127.0.0.1: another Slurm? Pick other ports with CKD_SLURM_PORT=N (uses N..N+3)"
    done
}

up() {
    if all_up; then
        say "already up ($DIR)"
    else
        ((EUID == 0)) || die "'up' needs root (apt-get, daemons): run it with sudo"
        mkdir -p "$ETC" "$RUN" "$LOG" "$SPOOL/ctld" "$SPOOL/d" "$DB"
        chmod 755 "$DIR" "$ETC" "$RUN" "$LOG"
        install_packages
        check_ports
        write_configs
        link_conf
        start_munged
        start_mariadbd
        start_slurmdbd
        start_slurmctld
        start_slurmd
        say "up: cluster $CLUSTER, partition $PARTITION, account $ACCOUNT; state and logs in $DIR"
    fi
    echo "export SLURM_CONF=$SLURM_CONF"
}

stop_daemon() {
    local name=$1 pid i
    pid=$(running_pid "$name") || { rm -f "$(pidfile "$name")"; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 60; i++)); do
        [[ -d /proc/$pid ]] || break
        sleep 0.25
    done
    if [[ -d /proc/$pid ]]; then
        say "$name ($pid) ignored SIGTERM for 15 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$(pidfile "$name")"
    say "stopped $name ($pid)"
}

down() {
    [[ -d $RUN ]] || { say "nothing to stop ($DIR has no run/ folder)"; return 0; }
    # Jobs still on the throwaway cluster go first, so that no job step outlives slurmd.
    if running_pid slurmctld >/dev/null; then
        squeue -h -o %i 2>/dev/null | xargs -r scancel 2>/dev/null || true
        wait_for 15 jobs test -z "$(squeue -h -o %i 2>/dev/null)" || true
    fi
    local i
    for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do stop_daemon "${DAEMONS[i]}"; done
    unlink_conf
    say "down ($DIR kept: logs, configs and the accounting database; delete it to start afresh)"
}

status() {
    local name pid rc=0
    for name in "${DAEMONS[@]}"; do
        if pid=$(running_pid "$name"); then say "$name running ($pid)"; else say "$name not running"; rc=1; fi
    done
    if running_pid slurmctld >/dev/null; then sinfo || true; fi
    echo "export SLURM_CONF=$SLURM_CONF"
    return $rc
}

case "${1:-}" in
    install)
        ((EUID == 0)) || die "'install' needs root (apt-get): run it with sudo"
        mkdir -p "$LOG"
        install_packages
        ;;
    up) up ;;
    down) down ;;
    status) status ;;
    env) echo "export SLURM_CONF=$SLURM_CONF" ;;
    *) echo "usage: $0 install|up|down|status|env   (state in \$CKD_SLURM_DIR, default /tmp/ckd-slurm)" >&2; exit 2 ;;
esac
