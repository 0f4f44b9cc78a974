#!/usr/bin/env bash
# The collective network's GPU path against Ring and against its host path:
# bf16 (or DTYPE) all_reduce, 2 ranks on one GPU (one NCCL_HOSTID each, CUDA MPS), in
# one run, ABBA order:
#   ring           Ring over airamp's net plugin (CollNet off)
#   cn_exact_gpu   CollNet Chain on NCCL's GPU buffers (AIRAMP_GPU_COLLNET=1,
#                  NCCL_NET_GDR_LEVEL=PHB)
#   cn_fp8_gpu     the same with AIRAMP_ENABLE_FP8_ALLREDUCE=1: GPU kernels
#   cn_exact_host  CollNet on host buffers (AIRAMP_GPU_COLLNET=0)
#   cn_fp8_host    the same with FP8: the CPU worker pool runs the codec
#   cn_int8_gpu, cn_int8_host  the same two with AIRAMP_COMPRESSION_FORMAT=int8
#                  (GPU: the INT8 kernels; the two must agree bit for bit)
#   cn_exact_host_pa, cn_fp8_host_pa  the host path with collnet.proxy_assist
#                  (AIRAMP_COLLNET_PROXY_ASSIST=1: NCCL's proxy thread moves
#                  small messages and runs light steps itself)
#   *_ub           the same with user buffers registered with NCCL
#                  (TORCH_NCCL_USE_TENSOR_REGISTER_ALLOCATOR_HOOK=1): with one
#                  rank per node, NCCL then hands the collective network the
#                  whole tensor in one call instead of 256 KiB chunks of its
#                  own buffer (ring_ub, cn_fp8_gpu_ub, cn_exact_gpu_ub,
#                  cn_int8_gpu_ub)
# Usage: gpu_path_compare.sh /abs/libnccl-net-airamp.so OUTDIR [RATE]
#   RATE (e.g. 25gbit) runs every rank in a network namespace whose
#   loopback is shaped with tc tbf; needs ip/tc on PATH (as root).
# Env: SIZES (min:max bytes, x4 steps; default 4 MiB..256 MiB), MODES,
#      DTYPE (bfloat16, the default; float16; float32),
#      ABBA (1: run the modes again in reverse order, the default; 0: once),
#      TIMED_BYTES (bytes each size's timed loop reduces, default 2 GiB: 8
#      calls at 256 MiB, 32 at 64 MiB, at most 200),
#      RUN_TIMEOUT (seconds per mode run, default 180; a run still going then
#      has its threads' stacks written to NAME.stacks before it is killed),
#      THREAD_CPU (1: sample every thread's CPU time during the run and
#      write NAME.threads.md, cores busy per kind of thread in each size's
#      timed loop, by thread_cpu.py).
# Summary (gpu_path_summarize.py, OUTDIR/summary.md): each mode's best pass,
# and with ABBA each pass against its own Ring, flagging a size where a
# mode's passes differ by more than 15% (the host slowed down for a while).
# Over several runs (unshaped and RATE): gpu_path_bars.py --unshaped OUT ...
# --shaped OUT25 ... prints issue 9's bars without the flagged cells.
set -uo pipefail
plugin=$(realpath "$1"); out=${2:-.}; rate=${3:-}; here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
modes=${MODES:-"ring cn_exact_gpu cn_fp8_gpu cn_exact_host cn_fp8_host"}
prefix=()
if [ -n "$rate" ]; then
    ns=airamp-shaped
    ip netns del $ns 2>/dev/null
    ip netns add $ns && ip netns exec $ns ip link set lo up &&
        ip netns exec $ns tc qdisc add dev lo root tbf rate "$rate" burst 4mb latency 50ms || exit 1
    trap 'ip netns del $ns' EXIT
    prefix=(ip netns exec $ns)
fi
common=(NCCL_NET_PLUGIN="$plugin" NCCL_NET=airamp NCCL_SOCKET_IFNAME=lo NCCL_IB_DISABLE=1
        NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,NET,TUNING,REG AIRAMP_SOCKET_IFNAME=lo AIRAMP_METRICS=0)
# NCCL names its threads only when asked; thread_cpu.py then tells its
# proxy thread from Python's.
[ "${THREAD_CPU:-0}" = 1 ] && common+=(NCCL_SET_THREAD_NAME=1)
collnet=(NCCL_COLLNET_ENABLE=1 NCCL_ALGO="allreduce:collnetchain")
# Where a hung run stands: every thread of every process of the run.
dump_stacks() {
    local pids; pids=$(pgrep -s "$1" 2>/dev/null)
    for p in $pids; do
        echo "== pid $p: $(tr '\0' ' ' </proc/$p/cmdline 2>/dev/null | cut -c1-120)"
        if command -v gdb >/dev/null; then
            timeout 60 gdb -p "$p" -batch -ex "thread apply all bt 16" 2>&1 | grep -E "^Thread|^#|ptrace|denied"
        else
            for t in /proc/$p/task/*; do
                echo "$(cat $t/comm 2>/dev/null) wchan=$(cat $t/wchan 2>/dev/null)"
                cat $t/stack 2>/dev/null | head -6
            done
        fi
    done
}
run() {
    local base=$1 name=$1 k=2; shift
    while [ -e "$out/$name.json" ] || [ -e "$out/$name.log" ]; do name=$base-$k; k=$((k + 1)); done
    echo "== $name"
    setsid "${prefix[@]}" env "${common[@]}" "$@" python3 "$here/collnet_bench.py" \
        --sizes "${SIZES:-4194304:268435456}" --dtype "${DTYPE:-bfloat16}" \
        --timed-bytes "${TIMED_BYTES:-2147483648}" --iters 200 --out "$out/$name.json" >"$out/$name.log" 2>&1 &
    local pid=$! waited=0 sampler=
    if [ "${THREAD_CPU:-0}" = 1 ]; then
        python3 "$here/thread_cpu.py" sample "$out/$name.threads.csv" $pid &
        sampler=$!
    fi
    while kill -0 $pid 2>/dev/null && [ $waited -lt "${RUN_TIMEOUT:-180}" ]; do sleep 1; waited=$((waited + 1)); done
    if kill -0 $pid 2>/dev/null; then
        echo "timed out after ${waited}s; stacks in $name.stacks"
        dump_stacks $pid >"$out/$name.stacks" 2>&1
        kill -9 -- -$pid 2>/dev/null
        # A client killed mid-kernel leaves MPS refusing new clients
        # ("CUDA devices busy"): restart it for the next run.
        if pgrep -f nvidia-cuda-mps-control >/dev/null; then
            sleep 2; echo quit | nvidia-cuda-mps-control; sleep 2; nvidia-cuda-mps-control -d
        fi
    fi
    wait $pid; echo "exit $?"
    if [ -n "$sampler" ]; then
        kill $sampler
        python3 "$here/thread_cpu.py" summarize "$out/$name.threads.csv" "$out/$name.json" \
            >"$out/$name.threads.md" && rm "$out/$name.threads.csv"
        cat "$out/$name.threads.md"
    fi
    grep -hoE "via COLLNET/[^ ]+|registered GPU buffer|COLLNET (reuse )?register userbuff|NET/airamp collnet: member [0-9]+ of [0-9]+ (joined[^;]*; allreduce [A-Za-z0-9 ]+|closing after .*)|AllReduce: [0-9]+ Bytes -> Algo [A-Z_]+ proto [A-Z0-9]+" \
        "$out/$name.log" | sort | uniq -c | sort -k2 | head -16
    grep -E " busbw " "$out/$name.log" | tail -4
}
ring() { run ring NCCL_COLLNET_ENABLE=0 NCCL_ALGO="allreduce:ring" AIRAMP_ENABLE_FP8_ALLREDUCE=0; }
cn_exact_gpu() { run cn_exact_gpu "${collnet[@]}" NCCL_NET_GDR_LEVEL=PHB AIRAMP_GPU_COLLNET=1 AIRAMP_ENABLE_FP8_ALLREDUCE=0; }
cn_fp8_gpu() { run cn_fp8_gpu "${collnet[@]}" NCCL_NET_GDR_LEVEL=PHB AIRAMP_GPU_COLLNET=1 AIRAMP_ENABLE_FP8_ALLREDUCE=1; }
cn_exact_host() { run cn_exact_host "${collnet[@]}" AIRAMP_GPU_COLLNET=0 AIRAMP_ENABLE_FP8_ALLREDUCE=0; }
cn_fp8_host() { run cn_fp8_host "${collnet[@]}" AIRAMP_GPU_COLLNET=0 AIRAMP_ENABLE_FP8_ALLREDUCE=1; }
int8=(AIRAMP_ENABLE_FP8_ALLREDUCE=1 AIRAMP_COMPRESSION_FORMAT=int8)
cn_exact_host_pa() { run cn_exact_host_pa "${collnet[@]}" AIRAMP_GPU_COLLNET=0 AIRAMP_ENABLE_FP8_ALLREDUCE=0 AIRAMP_COLLNET_PROXY_ASSIST=1; }
cn_fp8_host_pa() { run cn_fp8_host_pa "${collnet[@]}" AIRAMP_GPU_COLLNET=0 AIRAMP_ENABLE_FP8_ALLREDUCE=1 AIRAMP_COLLNET_PROXY_ASSIST=1; }
cn_int8_gpu() { run cn_int8_gpu "${collnet[@]}" NCCL_NET_GDR_LEVEL=PHB AIRAMP_GPU_COLLNET=1 "${int8[@]}"; }
cn_int8_host() { run cn_int8_host "${collnet[@]}" AIRAMP_GPU_COLLNET=0 "${int8[@]}"; }
ub=(TORCH_NCCL_USE_TENSOR_REGISTER_ALLOCATOR_HOOK=1)
ring_ub() { run ring_ub "${ub[@]}" NCCL_COLLNET_ENABLE=0 NCCL_ALGO="allreduce:ring" AIRAMP_ENABLE_FP8_ALLREDUCE=0; }
cn_exact_gpu_ub() { run cn_exact_gpu_ub "${ub[@]}" "${collnet[@]}" NCCL_NET_GDR_LEVEL=PHB AIRAMP_GPU_COLLNET=1 AIRAMP_ENABLE_FP8_ALLREDUCE=0; }
cn_fp8_gpu_ub() { run cn_fp8_gpu_ub "${ub[@]}" "${collnet[@]}" NCCL_NET_GDR_LEVEL=PHB AIRAMP_GPU_COLLNET=1 AIRAMP_ENABLE_FP8_ALLREDUCE=1; }
cn_int8_gpu_ub() { run cn_int8_gpu_ub "${ub[@]}" "${collnet[@]}" NCCL_NET_GDR_LEVEL=PHB AIRAMP_GPU_COLLNET=1 "${int8[@]}"; }
for m in $modes; do $m; done
[ "${ABBA:-1}" = 1 ] && for m in $(echo $modes | tr ' ' '\n' | tac); do $m; done
python3 "$here/gpu_path_summarize.py" "$out" | tee "$out/summary.md"
"$here/plot_busbw.sh" "$out" "$plugin"
