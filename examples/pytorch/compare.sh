#!/usr/bin/env bash
# all_reduce with 2 ranks on one GPU through airamp and through NCCL's own
# Socket transport (default, and 4 threads x 4 sockets), same machine, same
# run. Usage: examples/pytorch/compare.sh /abs/path/libnccl-net-airamp.so OUTDIR
set -uo pipefail
plugin=$(realpath "$1"); out=${2:-.}; here=$(dirname "$0")
mkdir -p "$out"
common=(NCCL_SOCKET_IFNAME=lo NCCL_IB_DISABLE=1 NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,NET AIRAMP_METRICS=0)
run() {
    local name=$1; shift
    echo "== $name"
    env "${common[@]}" "$@" python3 "$here/allreduce_bench.py" --out "$out/$name.json" ${BENCH_ARGS:-} >"$out/$name.log" 2>&1
    echo "exit $?"; grep -E "Using network|NET/airamp [0-9]" "$out/$name.log" | sort | uniq -c | head -5
    grep -E "busbw" "$out/$name.log" | tail -4
}
run airamp NCCL_NET_PLUGIN="$plugin" NCCL_NET=airamp
run socket NCCL_NET=Socket
run socket4x4 NCCL_NET=Socket NCCL_SOCKET_NTHREADS=4 NCCL_NSOCKS_PERTHREAD=4
python3 "$here/summarize.py" "$out"
