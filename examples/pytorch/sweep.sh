#!/usr/bin/env bash
# The TCP transport's acceptance sweep (issue 15) in one call: all_reduce with
# 2 ranks on one GPU (one NCCL_HOSTID each, so every byte goes through the
# network), airamp vs NCCL Socket (default) vs Socket with 4 threads x 4
# sockets, ROUNDS rounds in ABBA order (odd rounds A S S4 X..., even rounds
# ... X S4 S A: airamp and Socket always run back to back), each run timing
#   8 B (latency, 1000 iterations after 200 untimed, so the first calls of a
#   new communicator, which NCCL connects lazily, stay out of it) and 256 KiB, 1 MiB, 4 MiB, 8 MiB, 32 MiB (busbw)
# in fp32, checking every result. The summary prints the ratios against the
# bars: 8 B airamp/Socket (median of the per-round pairs) <= 1.0; busbw at
# 256K/1M/4M airamp/max(Socket, Socket 4x4) >= 1.2; >= 8 MiB airamp/Socket >= 2.
#
# Usage: sweep.sh /abs/path/libnccl-net-airamp.so OUTDIR [NAME=VAR=VALUE[,VAR=VALUE]...]
#   Each extra NAME=... is one more airamp configuration in every round, e.g.
#   inline1G=AIRAMP_INLINE_BYTES=1G  to compare the proxy-thread-only path.
# Needs CUDA MPS running (nvidia-cuda-mps-control -d): without it the two
# ranks time-slice the GPU and every transport measures the same.
# Time: about 12 s per run, ROUNDS x (3 + extras) runs: 6 rounds, one extra
# -> ~5 min. ROUNDS (default 6) and PORT (default 29533) are read from the env.
# PROTOCOLS=1 adds one short untimed run per configuration with NCCL's TUNING
# log and prints the algorithm and protocol NCCL picked per size (kept out
# of the timed runs: NCCL logs every call there).
set -uo pipefail
plugin=$(realpath "$1"); out=${2:-sweep}; shift 2 || shift $#
here=$(dirname "$0"); rounds=${ROUNDS:-6}
mkdir -p "$out"
common=(NCCL_SOCKET_IFNAME=lo NCCL_IB_DISABLE=1 NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,NET
        AIRAMP_METRICS=0 AIRAMP_SOCKET_IFNAME=lo)
args=(--dtypes float32
      --size-list 8,262144,1048576,2097152,4194304,8388608,33554432
      --warmup-list 200,5,5,5,5,5,5 --iters-list 1000,300,150,100,60,40,15)
names=(airamp socket socket4x4); envs=("NCCL_NET_PLUGIN=$plugin NCCL_NET=airamp" "NCCL_NET=Socket"
      "NCCL_NET=Socket NCCL_SOCKET_NTHREADS=4 NCCL_NSOCKS_PERTHREAD=4")
for extra in "$@"; do
    names+=("airamp_${extra%%=*}")
    envs+=("NCCL_NET_PLUGIN=$plugin NCCL_NET=airamp ${extra#*=}")
done
run() {
    local i=$1 round=$2 tag="${names[$1]}.r$2"
    # shellcheck disable=SC2086  # the config's variables are words
    timeout 150 env "${common[@]}" ${envs[$i]//,/ } python3 "$here/allreduce_bench.py" \
        --port $((${PORT:-29533} + round * 16 + i)) --out "$out/$tag.json" "${args[@]}" >"$out/$tag.log" 2>&1
    printf '%-22s exit %s  %s\n' "$tag" "$?" "$(grep -ohE 'Using network [A-Za-z]+' "$out/$tag.log" | sort -u | tr '\n' ' ')"
}
start=$(date +%s)
for round in $(seq 1 "$rounds"); do
    order=$(seq 0 $((${#names[@]} - 1)))
    [ $((round % 2)) -eq 0 ] && order=$(echo "$order" | tac)
    for i in $order; do run "$i" "$round"; done
done
echo "sweep took $(( $(date +%s) - start )) s"
if [ "${PROTOCOLS:-0}" = 1 ]; then
    echo "NCCL's choice per size (one untimed run each, NCCL_DEBUG_SUBSYS=TUNING):"
    for i in "${!names[@]}"; do
        tag="${names[$i]}.protocols"
        # shellcheck disable=SC2086  # the config's variables are words
        timeout 150 env "${common[@]}" NCCL_DEBUG_SUBSYS=INIT,NET,TUNING ${envs[$i]//,/ } \
            python3 "$here/allreduce_bench.py" --port $((${PORT:-29533} + 8 * 16 + i)) \
            --out "$out/$tag.json" --dtypes float32 --warmup 1 \
            --size-list 8,262144,1048576,4194304,8388608,33554432 --iters-list 2,2,2,2,2,2 \
            >"$out/$tag.log" 2>&1
        printf '  %-18s %s\n' "${names[$i]}" "$(grep -ohE 'AllReduce: [0-9]+ Bytes -> Algo [A-Z_]+ proto [A-Z0-9]+( channel\{Lo..Hi\}=\{[0-9.]+\})?' \
            "$out/$tag.log" | sed -E 's/AllReduce: ([0-9]+) Bytes -> Algo ([A-Z_]+) proto ([A-Z0-9]+)( channel.Lo..Hi.=.([0-9.]+).)?/\1:\2\/\3\/ch\5/' | sort -un | tr '\n' ' ')"
    done
fi
python3 "$here/sweep_summary.py" "$out" | tee "$out/summary.txt"
