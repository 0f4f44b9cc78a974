#!/usr/bin/env bash
# bf16 all_reduce, 2 ranks on one GPU (one NCCL_HOSTID each), in one run:
#   ring     Ring over airamp's net plugin (CollNet off)
#   ring_cn  Ring forced while CollNet is enabled and FP8 on, as in the
#            tuner's run (not in the default MODES): what the tuner gets
#            when it picks Ring
#   cn_exact NCCL's CollNet Chain over airamp's collective network, exact
#   cn_fp8   the same with AIRAMP_ENABLE_FP8_ALLREDUCE=1
#   tuner    CollNet enabled, FP8 on, no NCCL_ALGO: airamp's tuner decides
# Every mode runs PASSES times (default 2), every other pass in reverse
# order (ABBA...), and the summary keeps each mode's best: runs on a shared
# GPU are noisy. Pass k of a mode writes MODE-k (the first, MODE).
# Each process logs to its own file, OUTDIR/MODE[-2].nccl.HOST.PID.log
# (NCCL_DEBUG_FILE): NCCL's per-call "AllReduce: N Bytes -> Algo ..." lines
# and airamp's calibration, tuner and decision-digest lines, per rank, for
# calib_summarize.py. Without TUNER_PROFILE the tuner uses the figures the
# collective network measures and agrees on in connect.
# Usage: collnet_compare.sh /abs/path/libnccl-net-airamp.so OUTDIR [TUNER_PROFILE.toml]
# Env: MODES (default "ring cn_exact cn_fp8 tuner"), PASSES (2),
#      RUN_TIMEOUT seconds per run (300), BENCH_ARGS.
# Run it inside `ip netns exec NS` for a shaped link (see scripts/bench).
set -uo pipefail
plugin=$(realpath "$1"); out=${2:-.}; profile=${3:-}; here=$(dirname "$0")
mkdir -p "$out"
common=(NCCL_NET_PLUGIN="$plugin" NCCL_SOCKET_IFNAME=lo NCCL_IB_DISABLE=1 NCCL_DEBUG=INFO
        NCCL_DEBUG_SUBSYS=INIT,NET,TUNING AIRAMP_SOCKET_IFNAME=lo AIRAMP_METRICS=0)
[ -n "$profile" ] && common+=(AIRAMP_CONF="$(realpath "$profile")")
run() {
    local base=$1 name=$1 k=2; shift
    while [ -e "$out/$name.json" ] || [ -e "$out/$name.log" ]; do name=$base-$k; k=$((k + 1)); done
    echo "== $name"
    timeout -k 10 "${RUN_TIMEOUT:-300}" env "${common[@]}" NCCL_DEBUG_FILE="$out/$name.nccl.%h.%p.log" "$@" \
        python3 "$here/collnet_bench.py" --out "$out/$name.json" ${BENCH_ARGS:-} >"$out/$name.log" 2>&1
    echo "exit $?"
    cat "$out/$name".nccl.*.log "$out/$name.log" 2>/dev/null |
        grep -hoE "Using network [A-Za-z]+|Loaded collnet plugin [^ ]+ \(v[0-9]+\)|Loaded tuner plugin [^ ]+|NET/airamp collnet: member [0-9]+ of [0-9]+ joined; allreduce [A-Za-z0-9 ]+|collnet calibration, member [0-9]+ of [0-9]+, comm [0-9a-fx]+: [a-z]+|AllReduce: [0-9]+ Bytes -> Algo [A-Z_]+ proto [A-Z0-9]+" |
        sort | uniq -c | sort -k3 -n | head -40
    grep -E "busbw" "$out/$name.log" | tail -3
}
# NCCL_ALGO per collective: the harness's all_gather must stay on Ring.
ring() { run ring NCCL_COLLNET_ENABLE=0 NCCL_ALGO="allreduce:ring" AIRAMP_ENABLE_FP8_ALLREDUCE=0; }
cn_exact() { run cn_exact NCCL_COLLNET_ENABLE=1 NCCL_ALGO="allreduce:collnetchain" AIRAMP_ENABLE_FP8_ALLREDUCE=0; }
cn_fp8() { run cn_fp8 NCCL_COLLNET_ENABLE=1 NCCL_ALGO="allreduce:collnetchain" AIRAMP_ENABLE_FP8_ALLREDUCE=1; }
tuner() { run tuner NCCL_COLLNET_ENABLE=1 AIRAMP_ENABLE_FP8_ALLREDUCE=1; }
ring_cn() { run ring_cn NCCL_COLLNET_ENABLE=1 NCCL_ALGO="allreduce:ring" AIRAMP_ENABLE_FP8_ALLREDUCE=1; }
modes=${MODES:-ring cn_exact cn_fp8 tuner}
for mode in $modes; do
    case $mode in ring | ring_cn | cn_exact | cn_fp8 | tuner) ;; *) echo "unknown mode $mode"; exit 2 ;; esac
done
passes=${PASSES:-2}
for pass in $(seq 1 "$passes"); do
    order=$modes
    [ $((pass % 2)) -eq 0 ] && order=$(printf '%s\n' $modes | tac)
    for mode in $order; do "$mode"; done
done
python3 "$here/collnet_summarize.py" "$out"
python3 "$here/calib_summarize.py" "$out"
"$here/plot_busbw.sh" "$out" "$plugin"
