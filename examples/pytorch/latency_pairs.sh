#!/usr/bin/env bash
# 8-byte allreduce time, airamp against NCCL Socket in alternating pairs, at
# steady state: each process warms up with 200 calls, then times 3000 (the
# sweep times 1000 after 200). 2 ranks on one GPU, as
# sweep.sh runs them (start MPS first: nvidia-cuda-mps-control -d).
#
#   examples/pytorch/latency_pairs.sh /abs/libnccl-net-airamp.so OUT_DIR [name=ENV,ENV ...]
#
# Each extra `name=ENV,ENV` is airamp with those variables, e.g.
# `streams1=AIRAMP_NSTREAMS=1`. ROUNDS (default 6) rounds, ABBA order.
# CPUS pins every configuration's ranks alike (allreduce_bench.py
# --cpus-of-rank, e.g. CPUS='0-3;4-7'), so that a run's time does not
# depend on where the scheduler put its threads.
# Prints each run's µs per call, then per configuration the median and the
# median of its ratios to the same round's Socket.
set -euo pipefail
plugin=${1:?usage: latency_pairs.sh PLUGIN_SO OUT_DIR [name=ENV,ENV ...]}
out=${2:?usage: latency_pairs.sh PLUGIN_SO OUT_DIR [name=ENV,ENV ...]}
shift 2
here=$(dirname "$0"); rounds=${ROUNDS:-6}
pin=(); [ -n "${CPUS:-}" ] && pin=(--cpus-of-rank "$CPUS")
mkdir -p "$out"
common=(NCCL_SOCKET_IFNAME=lo NCCL_IB_DISABLE=1 AIRAMP_METRICS=0 AIRAMP_SOCKET_IFNAME=lo)
names=(airamp socket); envs=("NCCL_NET_PLUGIN=$plugin NCCL_NET=airamp" "NCCL_NET=Socket")
for extra in "$@"; do
    names+=("${extra%%=*}")
    envs+=("NCCL_NET_PLUGIN=$plugin NCCL_NET=airamp ${extra#*=}")
done
port=${PORT:-29700}
: >"$out/times.txt"
for round in $(seq 1 "$rounds"); do
    order=$(seq 0 $((${#names[@]} - 1)))
    [ $((round % 2)) -eq 0 ] && order=$(echo "$order" | tac)
    for i in $order; do
        port=$((port + 1)); log="$out/${names[$i]}.r$round.log"
        # shellcheck disable=SC2086  # the config's variables are words
        timeout 120 env "${common[@]}" ${envs[$i]//,/ } python3 "$here/allreduce_bench.py" --world 2 \
            --port $port --dtypes float32 --warmup 200 --size-list 8 --iters-list 3000 "${pin[@]}" >"$log" 2>&1 || true
        us=$(grep -h ' us ' "$log" | awk '{print $4}' | head -1)
        echo "${names[$i]} $round ${us:-failed}" | tee -a "$out/times.txt"
    done
done
python3 - "$out/times.txt" <<'PY'
import statistics, sys
t = {}
for line in open(sys.argv[1]):
    name, rnd, us = line.split()
    if us != "failed":
        t.setdefault(name, {})[int(rnd)] = float(us)
sock = t.get("socket", {})
for name, runs in t.items():
    pairs = [runs[r] / sock[r] for r in sorted(runs) if r in sock]
    ratio = f"/ socket {statistics.median(pairs):.2f} (pairs {' '.join(f'{p:.2f}' for p in pairs)})" if name != "socket" and pairs else ""
    print(f"{name:12} median {statistics.median(runs.values()):6.1f} us  {ratio}")
PY
