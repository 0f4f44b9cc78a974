#!/usr/bin/env bash
# Issue 13 (multi-GPU validation) in one call: one rank per GPU on one host,
# each rank its own NCCL_HOSTID, so every byte goes through the network plugin
# (NVLink multicast, P2P and shared memory off), on loopback and on a
# tbf-shaped network namespace. Runs the parts below for the GPU count it
# finds, writes OUTDIR/summary.md (examples/multigpu/summarize.py: the issue's
# acceptance ratios, hangs, wrong answers, cross-rank checks) and tars OUTDIR.
#
# Usage: run.sh /abs/libnccl-net-airamp.so OUTDIR [GPUS]
#   GPUS: ranks (one per GPU); default: the GPUs `nvidia-smi -L` lists.
# Parts (PARTS, space-separated; default: every part for the GPU count):
#   socket  Ring over airamp vs NCCL Socket (default, and 4 threads x 4
#           sockets), NCCL_ALGO=allreduce:ring, bf16 and fp32, 1 MiB..1 GiB,
#           loopback, every result checked exactly (allreduce_bench.py).
#           Default part on 2 GPUs only (the issue asks it there).
#   cn_lo   collective network, loopback: ring, cn_exact, cn_fp8 (E4M3),
#           cn_int8 (host path), tuner (CollNet on, FP8 on, no NCCL_ALGO, no
#           profile); bf16 1 MiB..256 MiB; error vs fp64, bit-identity across
#           every rank, tuner decision digests per rank (collnet_bench.py).
#   cn_25   the same inside a network namespace whose loopback is shaped with
#           tc tbf to SHAPED_RATE (25gbit). tbf on lo shapes all ranks'
#           traffic together: N ranks share 25 Gbit/s.
#   heads   (GPUS >= 4, even; default on 8) GPUS ranks as 2 "nodes"
#           (--nodes 2: ranks share an NCCL_HOSTID per half), so NCCL uses
#           collective-network heads: ring, cn_exact, cn_fp8, cn_int8,
#           tuner, loopback. Inside a node P2P/SHM stay on (NCCL will not put
#           two GPUs of one host id on a loopback net device); between nodes,
#           the network.
#   gpu_lo, gpu_25  the GPU data path of the collective network (opt-in,
#           kernels in airamp's own CUDA context): ring_ub, cn_exact_gpu_ub,
#           cn_fp8_gpu_ub (AIRAMP_GPU_COLLNET=1, user buffers registered,
#           NCCL_NET_GDR_LEVEL=SYS: the loopback NIC hangs off one CPU, and
#           with PHB the GPUs of the other socket would decide GDR
#           otherwise). Without MPS the two contexts take turns on each GPU
#           (0.34-0.49x Ring unshaped on 2 H200s,
#           docs/results/multigpu-h200x2.md); MPS=1 runs them under MPS.
#           Only with GPU_PATH=1 or named in PARTS; runs get
#           RUN_TIMEOUT_GPU (90 s), a hung run's thread stacks go to
#           NAME.stacks, and a hang fails the summary.
# Env: PARTS, BUDGET_S (540: the whole call, summary and tar included; a run
#   that would not fit is skipped and listed as such), RUN_TIMEOUT (240 s
#   per run), ABBA (1: every mode again in reverse order; default 1 on 2
#   GPUs, 0 above), ROUNDS (socket part: 1 = airamp socket socket4x4,
#   2 = and back; default 2 on 2 GPUs, else 1), SHAPED_RATE (25gbit),
#   CN_MAX / CN25_MAX (largest collnet size in bytes, 256 MiB; CN25_MAX is
#   64 MiB from 4 GPUs), SOCKET_MAX (1 GiB), TUNER_FORMAT (e4m3: the tuner
#   mode's wire format), PORT (29600), TARBALL (OUTDIR.tar.gz), PLAN=1
#   (print the plan and the time estimate, run nothing). A run cut short by
#   the budget (not its own RUN_TIMEOUT) is CUT, not a hang: INCOMPLETE.
#   MPS=1: every part runs under the CUDA MPS daemon. A daemon already
#   running is used as it is; otherwise one is started
#   (nvidia-cuda-mps-control -d) and stopped at the end.
# Needs: PyTorch with NCCL, root and ip/tc on PATH for the shaped parts (a
#   staged .tools/bin at the repository root is appended to PATH, for what
#   the host lacks; see the GPU host README). No CUDA MPS unless MPS=1:
#   every rank has its own GPU.
set -uo pipefail
usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
[ $# -ge 2 ] || { usage; exit 2; }
lib=$(realpath -m "$1") || exit 2
out=$(realpath -m "$2") || exit 2
here=$(cd "$(dirname "$0")" && pwd)
bench=$(cd "$here/../pytorch" && pwd)
repo=$(cd "$here/../.." && pwd)
[ -d "$repo/.tools/bin" ] && PATH=$PATH:$repo/.tools/bin
gpus=${3:-$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ')}
case $gpus in '' | *[!0-9]*) echo "GPUS must be a number (got '$gpus')"; exit 2 ;; esac
[ "$gpus" -ge 2 ] || { echo "needs 2 or more GPUs (found $gpus); one-GPU runs: examples/pytorch/"; exit 2; }
[ -f "$lib" ] || [ "${PLAN:-0}" = 1 ] || { echo "no plugin at $lib"; exit 2; }
world=$gpus
budget=${BUDGET_S:-540}
run_timeout=${RUN_TIMEOUT:-240}
gpu_timeout=${RUN_TIMEOUT_GPU:-90}
if [ "$gpus" -eq 2 ]; then abba=${ABBA:-1}; rounds=${ROUNDS:-2}; else abba=${ABBA:-0}; rounds=${ROUNDS:-1}; fi
rate=${SHAPED_RATE:-25gbit}
cn_max=${CN_MAX:-268435456}
if [ "$gpus" -ge 4 ]; then cn25_max=${CN25_MAX:-67108864}; else cn25_max=${CN25_MAX:-268435456}; fi
socket_max=${SOCKET_MAX:-1073741824}
port=${PORT:-29600}
tarball=${TARBALL:-$out.tar.gz}

if [ -n "${PARTS:-}" ]; then
    parts=$PARTS
else
    parts="cn_lo cn_25"
    [ "$gpus" -eq 2 ] && parts="socket $parts"
    [ "$gpus" -eq 8 ] && parts="$parts heads"
    [ "${GPU_PATH:-0}" = 1 ] && parts="$parts gpu_lo gpu_25"
fi
for p in $parts; do
    case $p in socket | cn_lo | cn_25 | heads | gpu_lo | gpu_25) ;; *) echo "unknown part $p"; exit 2 ;; esac
done

# One rank per GPU, forced through the network plugin even inside the host:
# a host id per rank (per "node" in heads) makes NCCL see separate nodes;
# P2P, SHM, PXN, NVLS (multicast) and MNNVL off in case any path remains.
export NCCL_NVLS_ENABLE=0 NCCL_MNNVL_ENABLE=0 NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1 NCCL_PXN_DISABLE=1
export NCCL_NET_DISABLE_INTRA=0 NCCL_IB_DISABLE=1 NCCL_SOCKET_IFNAME=lo AIRAMP_SOCKET_IFNAME=lo AIRAMP_METRICS=0
export NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,NET,TUNING
# The tuner with no profile: an empty config (so /etc/airamp.conf is not
# read) and no calibration variables, as in examples/pytorch/calib_sweep.sh.
export AIRAMP_CONF="$out/empty.conf"
unset AIRAMP_LINK_GBPS AIRAMP_LINK_LATENCY_US AIRAMP_TUNER_ENCODE_GVPS AIRAMP_TUNER_DECODE_GVPS
unset NCCL_ALGO NCCL_PROTO NCCL_COLLNET_ENABLE NCCL_NET NCCL_NET_PLUGIN NCCL_HOSTID CUDA_VISIBLE_DEVICES

# --- modes: a name and its environment ------------------------------------
airamp=(NCCL_NET_PLUGIN="$lib" NCCL_NET=airamp)
collnet=(NCCL_COLLNET_ENABLE=1 NCCL_ALGO=allreduce:collnetchain)
mode_env() {   # MODE -> the environment of a run of it, one word a line
    case $1 in
    airamp) printf '%s\n' "${airamp[@]}" NCCL_ALGO=allreduce:ring ;;
    socket) printf '%s\n' NCCL_NET=Socket NCCL_ALGO=allreduce:ring ;;
    socket4x4) printf '%s\n' NCCL_NET=Socket NCCL_ALGO=allreduce:ring NCCL_SOCKET_NTHREADS=4 NCCL_NSOCKS_PERTHREAD=4 ;;
    ring) printf '%s\n' "${airamp[@]}" NCCL_COLLNET_ENABLE=0 NCCL_ALGO=allreduce:ring AIRAMP_ENABLE_FP8_ALLREDUCE=0 ;;
    cn_exact) printf '%s\n' "${airamp[@]}" "${collnet[@]}" AIRAMP_ENABLE_FP8_ALLREDUCE=0 ;;
    cn_fp8) printf '%s\n' "${airamp[@]}" "${collnet[@]}" AIRAMP_ENABLE_FP8_ALLREDUCE=1 AIRAMP_COMPRESSION_FORMAT=e4m3 ;;
    cn_int8) printf '%s\n' "${airamp[@]}" "${collnet[@]}" AIRAMP_ENABLE_FP8_ALLREDUCE=1 AIRAMP_COMPRESSION_FORMAT=int8 ;;
    tuner) printf '%s\n' "${airamp[@]}" NCCL_COLLNET_ENABLE=1 AIRAMP_ENABLE_FP8_ALLREDUCE=1 \
        AIRAMP_COMPRESSION_FORMAT="${TUNER_FORMAT:-e4m3}" ;;
    ring_ub) printf '%s\n' "${airamp[@]}" TORCH_NCCL_USE_TENSOR_REGISTER_ALLOCATOR_HOOK=1 NCCL_COLLNET_ENABLE=0 \
        NCCL_ALGO=allreduce:ring AIRAMP_ENABLE_FP8_ALLREDUCE=0 ;;
    cn_exact_gpu_ub) printf '%s\n' "${airamp[@]}" "${collnet[@]}" TORCH_NCCL_USE_TENSOR_REGISTER_ALLOCATOR_HOOK=1 \
        NCCL_NET_GDR_LEVEL=SYS AIRAMP_GPU_COLLNET=1 AIRAMP_ENABLE_FP8_ALLREDUCE=0 NCCL_DEBUG_SUBSYS=INIT,NET,TUNING,REG ;;
    cn_fp8_gpu_ub) printf '%s\n' "${airamp[@]}" "${collnet[@]}" TORCH_NCCL_USE_TENSOR_REGISTER_ALLOCATOR_HOOK=1 \
        NCCL_NET_GDR_LEVEL=SYS AIRAMP_GPU_COLLNET=1 AIRAMP_ENABLE_FP8_ALLREDUCE=1 NCCL_DEBUG_SUBSYS=INIT,NET,TUNING,REG ;;
    *) return 1 ;;
    esac
}

# --- per part: modes, bench script and its arguments, time estimate -------
cn_modes="ring cn_exact cn_fp8 cn_int8 tuner"
part_modes() {
    case $1 in
    socket) echo "airamp socket socket4x4" ;;
    cn_lo | cn_25) echo "$cn_modes" ;;
    heads) echo "ring cn_exact cn_fp8 cn_int8 tuner" ;;
    gpu_lo | gpu_25) echo "ring_ub cn_fp8_gpu_ub cn_exact_gpu_ub" ;;
    esac
}
part_passes() {   # how many times each mode runs
    case $1 in
    socket) echo "$rounds" ;;
    gpu_lo | gpu_25 | heads) echo 1 ;;
    *) [ "$abba" = 1 ] && echo 2 || echo 1 ;;
    esac
}
sizes_upto() {   # MAX -> 1 MiB, 4 MiB, ... <= MAX (comma-separated)
    local s=1048576 list=""
    while [ "$s" -le "$1" ]; do list="$list${list:+,}$s"; s=$((s * 4)); done
    echo "$list"
}
iters_for() {   # sizes -> timed iterations per size (fewer for large sizes)
    local s list=""
    for s in ${1//,/ }; do
        if [ "$s" -le 4194304 ]; then i=50; elif [ "$s" -le 67108864 ]; then i=10; elif [ "$s" -le 268435456 ]; then i=5; else i=3; fi
        list="$list${list:+,}$i"
    done
    echo "$list"
}
part_args() {   # PART -> bench script and its arguments, one word a line
    local s
    case $1 in
    socket)
        s=$(sizes_upto "$socket_max")
        printf '%s\n' allreduce_bench.py --dtypes bfloat16,float32 --warmup 2 --size-list "$s" --iters-list "$(iters_for "$s")" ;;
    cn_lo) printf '%s\n' collnet_bench.py --sizes "1048576:$cn_max" --iters 20 --warmup 2 ;;
    cn_25) printf '%s\n' collnet_bench.py --sizes "1048576:$cn25_max" --iters 20 --warmup 2 ;;
    heads) printf '%s\n' collnet_bench.py --sizes "1048576:$cn_max" --iters 20 --warmup 2 --nodes 2 ;;
    gpu_lo | gpu_25) printf '%s\n' collnet_bench.py --sizes "4194304:268435456" --iters 20 --warmup 2 ;;
    esac
}
# Estimated seconds of one run (not measured on a multi-GPU host: from the
# one-GPU runs, ~12-15 s per run for process start, NCCL init and
# calibration, plus the data at the one-GPU rates; N ranks share one
# loopback, and the 25 Gbit/s link is shared by all ranks).
est_run() {
    [ -n "${EST_RUN_S:-}" ] && { echo "$EST_RUN_S"; return; }   # tests
    local start=$((12 + 2 * gpus)) data
    case $1 in
    socket) data=$((6 + 4 * gpus)) ;;
    cn_lo | heads) data=$((4 + gpus)) ;;
    cn_25) [ "$gpus" -ge 4 ] && data=$((6 + 2 * gpus)) || data=10 ;;
    gpu_lo | gpu_25) echo "$gpu_timeout"; return ;;
    esac
    echo $((start + data))
}
est_part() {
    local n; n=$(part_modes "$1" | wc -w)
    echo $((n * $(part_passes "$1") * $(est_run "$1")))
}
total=0
echo "airamp multi-GPU: $gpus GPUs, parts: $parts; budget ${budget} s"
for p in $parts; do
    e=$(est_part "$p"); total=$((total + e))
    echo "  $p: $(part_modes "$p" | wc -w) modes x $(part_passes "$p") pass(es), ~$(est_run "$p") s a run: ~${e} s (estimate)"
done
echo "  estimated total ~${total} s (+ ~15 s summary and tar)"
[ "$total" -gt $((budget - 15)) ] && echo "  over the budget: runs that no longer fit are skipped; split PARTS over calls"
[ "${PLAN:-0}" = 1 ] && exit 0
mkdir -p "$out" || exit 2
: >"$out/empty.conf"

# --- MPS, when asked ----------------------------------------------------------
mps=${MPS:-0}
if [ "$mps" = 1 ]; then
    if pgrep -x nvidia-cuda-mps-control >/dev/null; then
        echo "MPS=1: using the MPS daemon already running"
    elif nvidia-cuda-mps-control -d; then
        # quit -t: ranks left over from a hung run do not keep it alive.
        trap 'echo "quit -t 10" | nvidia-cuda-mps-control' EXIT
        echo "MPS daemon started (MPS=1)"
    else
        echo "MPS=1: cannot start the MPS daemon (nvidia-cuda-mps-control -d)"; exit 2
    fi
fi

# --- the host, for the record ---------------------------------------------
{
    date -u; uname -a
    nvidia-smi -L 2>&1; nvidia-smi topo -m 2>&1
    nproc; python3 -c 'import torch; print("torch", torch.__version__, "nccl", torch.cuda.nccl.version(), "gpus", torch.cuda.device_count())' 2>&1
    echo "MPS=$mps"
    sha256sum "$lib"
    git -C "$repo" rev-parse HEAD 2>/dev/null
    env | grep -E '^(NCCL|AIRAMP|TORCH)_' | sort
} >"$out/host.txt" 2>&1
printf 'part\trun\trc\tseconds\tstatus\n' >"$out/runs.tsv"

# --- running one bench, bounded --------------------------------------------
t0=$SECONDS
prefix=()
session_pids() {   # the processes whose session id is $1
    local p
    for p in /proc/[0-9]*; do
        [ "$(sed 's/.*) //' "$p/stat" 2>/dev/null | cut -d' ' -f4)" = "$1" ] && echo "${p#/proc/}"
    done
}
dump_stacks() {   # every thread of every process of session $1
    local p t
    for p in $(session_pids "$1"); do
        echo "== pid $p: $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | cut -c1-160)"
        if command -v gdb >/dev/null && [ $((budget - (SECONDS - t0))) -gt 90 ]; then
            timeout 20 gdb -p "$p" -batch -ex "thread apply all bt 16" 2>&1 | grep -E "^Thread|^#|ptrace|denied"
        else
            for t in /proc/"$p"/task/*; do
                echo "$(cat "$t/comm" 2>/dev/null) wchan=$(cat "$t/wchan" 2>/dev/null)"
                head -6 "$t/stack" 2>/dev/null
            done
        fi
    done
}
runs_done=0
bench() {   # PART DIR MODE [TIMEOUT]
    local part=$1 dir=$2 mode=$3 limit=${4:-$run_timeout} name=$3 envs script args left pid waited rc status
    local k=2
    while [ -e "$dir/$name.json" ] || [ -e "$dir/$name.log" ]; do name=$mode-$k; k=$((k + 1)); done
    mapfile -t envs < <(mode_env "$mode")
    mapfile -t args < <(part_args "$part")
    script=${args[0]}; args=("${args[@]:1}")
    left=$((budget - 15 - (SECONDS - t0)))
    local cut=0
    [ "$left" -lt "$limit" ] && { limit=$left; cut=1; }
    if [ "$left" -lt "$(est_run "$part")" ]; then
        printf '%s\t%s\t-\t0\tskipped (budget)\n' "$part" "$name" >>"$out/runs.tsv"
        echo "-- $part/$name: skipped, ${left} s of the budget left"
        return
    fi
    local start=$SECONDS
    port=$((port + 1))
    # heads: ranks of one "node" share a host id, and NCCL only lets two
    # GPUs of one host talk through a net plugin when the NIC sits at PXB or
    # closer (ncclTopoCheckNet); the loopback NIC does not. So inside a node
    # they use P2P (NVLink), as on a real cluster; between nodes, the network.
    [ "$part" = heads ] && envs=(NCCL_P2P_DISABLE=0 NCCL_SHM_DISABLE=0 "${envs[@]}")
    setsid "${prefix[@]}" env "${envs[@]}" NCCL_DEBUG_FILE="$dir/$name.nccl.%h.%p.log" \
        python3 "$bench/$script" --world "$world" --device-of-rank local --port "$port" \
        --out "$dir/$name.json" "${args[@]}" >"$dir/$name.log" 2>&1 &
    pid=$!; waited=0
    while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt $((limit * 4)) ]; do sleep 0.25; waited=$((waited + 1)); done
    if kill -0 "$pid" 2>/dev/null; then
        dump_stacks "$pid" >"$dir/$name.stacks" 2>&1
        kill -TERM -- -"$pid" 2>/dev/null; sleep 2; kill -KILL -- -"$pid" 2>/dev/null
        wait "$pid" 2>/dev/null; rc=124
        if [ "$cut" = 1 ]; then
            status="CUT at the end of the budget after ${limit} s (stacks in $name.stacks)"
        else
            status="TIMEOUT after ${limit} s (stacks in $name.stacks)"
        fi
    else
        wait "$pid"; rc=$?
        if [ "$rc" = 0 ] && [ -s "$dir/$name.json" ]; then status=ok; else status="FAILED (exit $rc)"; fi
    fi
    # Leftovers of the run's session (a rank stuck in the driver): give them
    # 5 s to go (Python's resource tracker outlives its parent briefly), then
    # kill them.
    local rest tries=0
    rest=$(session_pids "$pid" | tr '\n' ' ')
    while [ -n "$rest" ] && [ "$tries" -lt 20 ]; do
        sleep 0.25; tries=$((tries + 1)); rest=$(session_pids "$pid" | tr '\n' ' ')
    done
    if [ -n "$rest" ]; then
        # shellcheck disable=SC2086  # a list of pids
        kill -KILL $rest 2>/dev/null; status="$status; killed leftovers $rest"
    fi
    printf '%s\t%s\t%s\t%s\t%s\n' "$part" "$name" "$rc" $((SECONDS - start)) "$status" >>"$out/runs.tsv"
    printf -- '-- %-8s %-18s %4s s  %s  %s\n' "$part" "$name" $((SECONDS - start)) "$status" \
        "$(cat "$dir/$name".nccl.*.log "$dir/$name.log" 2>/dev/null | grep -ohE 'Using network [A-Za-z]+' | sort | uniq -c | tr -s ' \n' ' ')"
    runs_done=$((runs_done + 1))
}
shape() {   # NS RATE: a namespace whose loopback is shaped; sets prefix
    ip netns del "$1" 2>/dev/null
    ip netns add "$1" && ip netns exec "$1" ip link set lo up &&
        ip netns exec "$1" tc qdisc add dev lo root tbf rate "$2" burst 4mb latency 50ms || return 1
    prefix=(ip netns exec "$1")
}
run_part() {
    local part=$1 dir=$out/$1 modes passes pass m ns="" limit=$run_timeout
    mkdir -p "$dir"
    modes=$(part_modes "$part"); passes=$(part_passes "$part")
    case $part in gpu_*) limit=$gpu_timeout ;; esac
    prefix=()
    if [ "$part" = heads ] && { [ "$gpus" -lt 4 ] || [ $((gpus % 2)) -ne 0 ]; }; then
        echo "#### heads: needs an even GPU count >= 4 (2 nodes of several GPUs): skipped"
        printf '%s\t-\t-\t0\tskipped (needs an even GPU count >= 4)\n' "$part" >>"$out/runs.tsv"
        return
    fi
    case $part in
    *_25)
        ns=airamp-mg-$part
        if ! shape "$ns" "$rate"; then
            echo "#### $part: cannot shape a $rate namespace (root? ip and tc on PATH?): skipped"
            printf '%s\t-\t-\t0\tskipped (no shaped namespace)\n' "$part" >>"$out/runs.tsv"
            ip netns del "$ns" 2>/dev/null
            return
        fi ;;
    esac
    echo "#### $part ($(part_modes "$part" | wc -w) modes, $passes pass(es)${ns:+, $rate tbf in $ns})"
    for pass in $(seq 1 "$passes"); do
        local order=$modes
        # shellcheck disable=SC2086  # the modes are words
        [ $((pass % 2)) -eq 0 ] && order=$(printf '%s\n' $modes | tac)
        for m in $order; do bench "$part" "$dir" "$m" "$limit"; done
    done
    [ -n "$ns" ] && ip netns del "$ns" 2>/dev/null
    prefix=()
}
for p in $parts; do run_part "$p"; done
echo "runs took $((SECONDS - t0)) s"

# --- summary and tar ---------------------------------------------------------
for p in cn_lo cn_25 heads; do
    [ -d "$out/$p" ] && ls "$out/$p"/tuner*.json >/dev/null 2>&1 &&
        timeout 60 python3 "$bench/calib_summarize.py" "$out/$p" >"$out/$p/calib.md" 2>&1
done
timeout 60 python3 "$here/summarize.py" "$out" | tee "$out/summary.md"
verdict=${PIPESTATUS[0]}
tar -czf "$tarball" -C "$(dirname "$out")" "$(basename "$out")" && echo "tarball: $tarball ($(du -h "$tarball" | cut -f1))"
# The summary beside the tarball too, when the tarball goes elsewhere.
case $tarball in "$out".tar.gz) ;; *.tar.gz) cp "$out/summary.md" "${tarball%.tar.gz}.summary.md" ;; esac
echo "total $((SECONDS - t0)) s"
exit "$verdict"
