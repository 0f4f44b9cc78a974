#!/usr/bin/env bash
# Smoke tests of ddp_minimal.py (needs PyTorch; run by hand, not in CI):
#   ddp_smoke.sh gloo            2 ranks on CPU with gloo (tests the script only)
#   ddp_smoke.sh nccl PLUGIN     two torchrun "nodes" of one rank each on ONE
#                                GPU host, each with its own NCCL_HOSTID, so
#                                NCCL sees two hosts and all traffic goes
#                                through the net plugin PLUGIN (airamp's .so);
#                                run twice: exact, then with the FP8 opt-in
#                                (AIRAMP_ENABLE_FP8_ALLREDUCE=1 NCCL_COLLNET_ENABLE=1)
# Each run is bounded by RUN_LIMIT seconds (default 180). Logs go to OUTDIR
# (default a temporary directory). Exits non-zero if any run fails.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
mode=${1:?usage: ddp_smoke.sh gloo | nccl PLUGIN}
limit=${RUN_LIMIT:-180}
out=${OUTDIR:-$(mktemp -d)}
mkdir -p "$out"
py=${PYTHON:-python3}
# NVLink multicast stays off (shared hosts).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
rc=0
if [ "$mode" = gloo ]; then
    timeout "$limit" "$py" -m torch.distributed.run --standalone --nproc-per-node=2 \
        "$here/ddp_minimal.py" --backend gloo --steps 200 >"$out/gloo.log" 2>&1 || rc=$?
    tail -4 "$out/gloo.log"
    echo "gloo: rc=$rc"
    exit $rc
fi
plugin=$(realpath "${2:?usage: ddp_smoke.sh nccl PLUGIN}")
[ -f "$plugin" ] || { echo "no plugin at $plugin"; exit 2; }
# Two ranks on one GPU need CUDA MPS to run their kernels at once.
mps=$(mktemp -d /tmp/airamp-mps.XXXXXX)
export CUDA_MPS_PIPE_DIRECTORY=$mps/pipe CUDA_MPS_LOG_DIRECTORY=$mps/log
mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
if nvidia-cuda-mps-control -d; then
    trap 'echo quit | nvidia-cuda-mps-control; rm -rf "$mps"' EXIT
else
    echo "warning: no CUDA MPS; the two ranks time-slice the GPU"
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
fi
port=29571
run() {  # name, extra env..., -- extra args...
    local name=$1
    shift
    local envs=() args=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do envs+=("$1"); shift; done
    [ $# -gt 0 ] && shift
    args=("$@")
    port=$((port + 1))
    local pids=() r
    for node in 0 1; do
        # The two env lines of the recipe, plus what makes one host look
        # like two (NCCL_HOSTID, loopback) and the logs.
        env NCCL_NET_PLUGIN="$plugin" "${envs[@]}" \
            NCCL_HOSTID="ddp-smoke-$node" NCCL_SOCKET_IFNAME=lo AIRAMP_SOCKET_IFNAME=lo \
            NCCL_IB_DISABLE=1 NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,NET,TUNING \
            AIRAMP_METRICS_ADDR="127.0.0.1:$((9190 + node))" \
            timeout "$limit" "$py" -m torch.distributed.run --nnodes=2 --nproc-per-node=1 \
            --node-rank=$node --master-addr=127.0.0.1 --master-port=$port \
            "$here/ddp_minimal.py" --backend nccl "${args[@]}" \
            >"$out/$name.node$node.log" 2>&1 &
        pids+=($!)
    done
    local rcs=()
    for p in "${pids[@]}"; do wait "$p"; r=$?; rcs+=($r); [ $r -eq 0 ] || rc=1; done
    echo "== $name: rc ${rcs[*]}"
    grep -h -E 'ddp_minimal|weights identical|NCCL_NET_PLUGIN=' "$out/$name.node0.log" || true
    # What NCCL says it used (the net plugin, CollNet) and airamp's own lines.
    grep -h -i -E 'Using network|NET/Plugin|collnet|airamp' "$out/$name.node0.log" \
        | sed 's/^[^ ]* [0-9]*:[0-9]* \[[0-9]*\] //' | sort | uniq -c | sort -rn | head -20
}
run exact -- --steps 200
run fp8 AIRAMP_ENABLE_FP8_ALLREDUCE=1 NCCL_COLLNET_ENABLE=1 -- --steps 200 --dtype bfloat16
echo "logs in $out; rc=$rc"
exit $rc
