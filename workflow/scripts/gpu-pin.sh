#!/usr/bin/env bash
# gpu-pin.sh N COMMAND [ARG...]: run COMMAND on N GPUs of its own, named in CUDA_VISIBLE_DEVICES.
#
# The workflow's GPU jobs start through this script (workflow/rules/teacher.smk, ckd_launcher).
# Under SLURM (SLURM_JOB_ID set), or when CUDA_VISIBLE_DEVICES is already set, the scheduler has
# chosen the devices and COMMAND runs as it is. On one machine (the local profile, where
# `--resources gpu=K` only caps how many GPUs the running jobs ask for together) the script claims N
# free GPUs out of K with lock folders under $CKD_GPU_LOCKS (default /tmp/ckd-gpu-locks; mkdir is
# atomic), runs COMMAND on them and frees them when it ends. A lock whose owner died is taken over.
# K is $CKD_GPUS when set, else the number of GPUs `nvidia-smi -L` lists.
set -euo pipefail

if (($# < 2)) || ! [[ $1 =~ ^[0-9]+$ ]]; then
    echo "usage: $0 N COMMAND [ARG...]" >&2
    exit 2
fi
need=$1
shift

if ((need == 0)) || [[ -n ${SLURM_JOB_ID:-} || -n ${CUDA_VISIBLE_DEVICES:-} ]]; then
    exec "$@"
fi

if [[ -n ${CKD_GPUS:-} ]]; then
    total=$CKD_GPUS
elif command -v nvidia-smi >/dev/null 2>&1; then
    total=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
else
    total=0
fi
if ((need > total)); then
    echo "gpu-pin: the job asks for $need GPUs and this machine has $total (CKD_GPUS or nvidia-smi -L)" >&2
    exit 1
fi

locks=${CKD_GPU_LOCKS:-/tmp/ckd-gpu-locks}
mkdir -p "$locks"
chmod 1777 "$locks" 2>/dev/null || true
held=()

release() {
    local gpu
    for gpu in "${held[@]}"; do rm -rf "$locks/gpu$gpu"; done
    held=()
}

claim() {  # claim GPU: 0 when this process now holds it
    local gpu=$1 dir="$locks/gpu$1" owner
    if mkdir "$dir" 2>/dev/null; then
        echo $$ > "$dir/pid"
        return 0
    fi
    owner=$(cat "$dir/pid" 2>/dev/null || true)
    # A lock without a live owner (its job was killed): move it aside (rename is atomic, so one
    # claimant wins) and try again. A lock just made and not yet written has no pid for a moment.
    if [[ -n $owner && ! -d /proc/$owner ]] && mv "$dir" "$dir.stale.$$" 2>/dev/null; then
        rm -rf "$dir.stale.$$"
        if mkdir "$dir" 2>/dev/null; then
            echo $$ > "$dir/pid"
            return 0
        fi
    fi
    return 1
}

trap release EXIT
waited=0
while :; do
    for ((gpu = 0; gpu < total && ${#held[@]} < need; gpu++)); do
        if claim "$gpu"; then held+=("$gpu"); fi
    done
    ((${#held[@]} == need)) && break
    release   # all or nothing, so that two jobs cannot each hold half of what they need
    if ((waited % 60 == 0)); then echo "gpu-pin: waiting for $need free GPUs (locks in $locks)" >&2; fi
    sleep $((1 + RANDOM % 2))
    waited=$((waited + 1))
done

CUDA_VISIBLE_DEVICES=$(IFS=,; echo "${held[*]}")
export CUDA_VISIBLE_DEVICES
echo "gpu-pin: CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES" >&2
"$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null || true' TERM INT HUP
status=0
wait "$child" || status=$?
# A signal interrupts the first wait: wait again for the command to finish its checkpoint.
while kill -0 "$child" 2>/dev/null; do wait "$child" || status=$?; done
exit "$status"
