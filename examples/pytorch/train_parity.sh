#!/usr/bin/env bash
# Training parity: the same small transformer (train_parity.py) trained with
# DDP on 2 ranks of ONE GPU (one NCCL_HOSTID each, CUDA MPS), its bf16
# gradients all-reduced through airamp's collective network (CollNet Chain
# forced), in these runs:
#   exact_a  exact allreduce, seed A          exact_b  the same, seed B (noise band)
#   e4m3_a   AIRAMP_ENABLE_FP8_ALLREDUCE=1, E4M3, seed A
#   int8_a   AIRAMP_ENABLE_FP8_ALLREDUCE=1, INT8, seed A
#   e5m2_a   E5M2, seed A (only with RUN_E5M2=1)
# then train_parity_summarize.py writes summary.md and loss_curves.png.
#
# Usage: train_parity.sh /abs/path/libnccl-net-airamp.so OUTDIR
# Env: STEPS (600), SEED_A (1), SEED_B (2), RUN_LIMIT seconds per run (90),
#      RUN_E5M2=1, PYTHON (python3), CPU_GLOO=1 (smoke test of the scripts on
#      CPU with gloo: no GPU, no MPS, the plugin is not used).
set -uo pipefail
if [ $# -lt 2 ]; then
    sed -n '2,17p' "$0"
    exit 2
fi
plugin=$1
out=$2
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-python3}
steps=${STEPS:-600}
seed_a=${SEED_A:-1}
seed_b=${SEED_B:-2}
limit=${RUN_LIMIT:-90}
mkdir -p "$out"
out=$(cd "$out" && pwd)

common=(AIRAMP_METRICS=0 AIRAMP_TUNER=0)
extra=()
if [ "${CPU_GLOO:-0}" = 1 ]; then
    extra=(--cpu-gloo)
else
    plugin=$(realpath "$plugin")
    [ -f "$plugin" ] || { echo "no plugin at $plugin"; exit 2; }
    # The tuner is off so that NCCL_ALGO alone decides: the experiment is
    # about the numbers, and every run takes the collective network.
    common+=(NCCL_NET_PLUGIN="$plugin" NCCL_NET=airamp NCCL_SOCKET_IFNAME=lo
             AIRAMP_SOCKET_IFNAME=lo NCCL_IB_DISABLE=1 NCCL_COLLNET_ENABLE=1
             NCCL_ALGO=allreduce:collnetchain NCCL_NET_GDR_LEVEL=PHB
             NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,NET)
    # A private MPS daemon, so that both ranks' kernels run at once.
    mps=$(mktemp -d /tmp/airamp-mps.XXXXXX)
    export CUDA_MPS_PIPE_DIRECTORY=$mps/pipe CUDA_MPS_LOG_DIRECTORY=$mps/log
    mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
    if nvidia-cuda-mps-control -d; then
        trap 'echo quit | nvidia-cuda-mps-control; rm -rf "$mps"' EXIT
    else
        echo "warning: could not start CUDA MPS; the two ranks will time-slice the GPU"
        unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
    fi
fi

port=29561
run() {
    local name=$1 seed=$2
    shift 2
    port=$((port + 1))
    echo "== $name (seed $seed)"
    local start=$SECONDS
    env "${common[@]}" "$@" timeout -k 10 "$limit" "$py" "$here/train_parity.py" \
        --label "$name" --seed "$seed" --steps "$steps" --port "$port" \
        --out "$out/$name.csv" "${extra[@]}" >"$out/$name.log" 2>&1
    echo "exit $? after $((SECONDS - start)) s"
    grep -hoE "Using network [A-Za-z]+|Loaded collnet plugin [^ ]+ \(v[0-9]+\)|NET/airamp collnet: member [0-9]+ of [0-9]+ joined; allreduce [A-Za-z0-9 ]+" \
        "$out/$name.log" | sort | uniq -c
    grep -E "^\[$name\] step" "$out/$name.log" | tail -2
}

run exact_a "$seed_a" AIRAMP_ENABLE_FP8_ALLREDUCE=0
run int8_a "$seed_a" AIRAMP_ENABLE_FP8_ALLREDUCE=1 AIRAMP_COMPRESSION_FORMAT=int8
run e4m3_a "$seed_a" AIRAMP_ENABLE_FP8_ALLREDUCE=1 AIRAMP_COMPRESSION_FORMAT=e4m3
run exact_b "$seed_b" AIRAMP_ENABLE_FP8_ALLREDUCE=0
if [ "${RUN_E5M2:-0}" = 1 ]; then
    run e5m2_a "$seed_a" AIRAMP_ENABLE_FP8_ALLREDUCE=1 AIRAMP_COMPRESSION_FORMAT=e5m2
fi
"$py" "$here/train_parity_summarize.py" "$out"
