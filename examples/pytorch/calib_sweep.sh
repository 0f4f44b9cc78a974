#!/usr/bin/env bash
# Issue 10's acceptance sweep on the GPU host: no profile and no AIRAMP_LINK_*
# setting, so the tuner uses only what the collective network measures and
# agrees on in connect. collnet_compare.sh (Ring, CollNet exact and FP8, the
# tuner; 2 ranks on one GPU, one NCCL_HOSTID each, ABBA) on a 5 Gbit/s and a
# 25 Gbit/s tbf-shaped loopback (network namespaces) and on the unshaped
# loopback, then calib_summarize.py over the three: tuner / best of (Ring,
# CollNet FP8) per size against the bars (>= 0.9 everywhere, >= 0.95 from
# 4 MiB), decisions per rank compared, calibration time per communicator,
# the decision table.
#
# PASSES (default 2) runs every mode that many times, alternating the
# order (ABBA...), and each cell is the best pass: the ratio bars sit
# within the host's run-to-run spread (docs/results/calibration-h200.md).
#
# Needs CUDA MPS running (nvidia-cuda-mps-control -d) and ip/tc on PATH
# (../shared/gpu/stage-tools .tools; PATH=$PWD/.tools/bin:$PATH), as root.
# Usage: calib_sweep.sh /abs/path/libnccl-net-airamp.so OUTDIR
set -uo pipefail
plugin=$(realpath "$1"); out=$(mkdir -p "${2:-calib-sweep}" && realpath "${2:-calib-sweep}")
here=$(cd "$(dirname "$0")" && pwd)
# 5 warm-up calls and up to 200 timed ones per size (the bench caps each
# size at 256 MiB of traffic, so fewer from 2 MiB up): the small sizes'
# bars need more than a few milliseconds of timing. Only the modes the
# bars compare: Ring, CollNet FP8, the tuner.
export BENCH_ARGS=${BENCH_ARGS:---sizes 65536:268435456 --iters 200 --warmup 5}
export MODES=${MODES:-ring cn_fp8 tuner}
# LINKS: which of 5, 25 and lo (unshaped loopback) to run, in that order.
links=${LINKS:-5 25 lo}
# No profile: an empty config file (so /etc/airamp.conf is not read) and no
# calibration variables.
: >"$out/empty.conf"
export AIRAMP_CONF="$out/empty.conf"
unset AIRAMP_LINK_GBPS AIRAMP_LINK_LATENCY_US AIRAMP_TUNER_ENCODE_GVPS AIRAMP_TUNER_DECODE_GVPS
for rate in $links; do
    [ "$rate" = lo ] && continue
    ns=airamp-calib-$rate
    ip netns del "$ns" 2>/dev/null || true
    ip netns add "$ns" && ip netns exec "$ns" ip link set lo up &&
        ip netns exec "$ns" tc qdisc add dev lo root tbf rate "${rate}gbit" burst 4mb latency 50ms ||
        { echo "cannot shape a $rate Gbit/s namespace (root, ip, tc?)"; exit 1; }
    echo "#### ${rate} Gbit/s"
    ip netns exec "$ns" "$here/collnet_compare.sh" "$plugin" "$out/${rate}gbit"
    ip netns del "$ns"
done
case " $links " in *" lo "*)
    echo "#### unshaped loopback"
    "$here/collnet_compare.sh" "$plugin" "$out/loopback" ;;
esac
dirs=()
for link in $links; do
    [ "$link" = lo ] && dirs+=("$out/loopback") || dirs+=("$out/${link}gbit")
done
python3 "$here/calib_summarize.py" "${dirs[@]}" | tee "$out/summary.md"
