#!/usr/bin/env bash
# GPU residency probe (README.md beside this file). One GPU host call:
#   examples/gpu-residency/run.sh OUTDIR [GROUP...]
# GROUPs, in the order they run (default: all):
#   q1 torch1 q2 torch2 q4 q5 q3 torch3 mps
# Every case is its own child process under `timeout`; a hang is a result,
# not a lost run. A total budget (BUDGET_S, default 225 s from the start,
# build included) skips what would not fit and says so in the table.
# Writes OUTDIR/raw.jsonl, OUTDIR/results.json, OUTDIR/table.md, logs/.
# Env: CUDA_HOME (/usr/local/cuda-13.0), ARCH (sm_90), PYTHON (python3),
#      BUDGET_S (225), HANG_MS (700), SMS (8: green-context SMs asked for),
#      NVCC_EXTRA (extra nvcc flags, e.g. -L for a toolkit without lib64).
# Never touches the GPU's settings; NVLink multicast (NVLS) stays off.
set -u -o pipefail

if [ $# -lt 1 ]; then
    sed -n '2,14p' "$0" >&2
    exit 2
fi
OUT=$1
shift
SEL=" ${*:-all} "
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT/logs" "$OUT/build"
OUT=$(cd "$OUT" && pwd)
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda-13.0}
NVCC=${NVCC:-$CUDA_HOME/bin/nvcc}
ARCH=${ARCH:-sm_90}
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-225}
HANG_MS=${HANG_MS:-700}
SMS=${SMS:-8}
RAW=$OUT/raw.jsonl
: >"$RAW"
START=$(date +%s)
P=$OUT/build/probe
LIB=$OUT/build/libprobe.so
LOGN=0
LAST_BAD=0

export NCCL_NVLS_ENABLE=0 NCCL_NET_PLUGIN=none NCCL_SOCKET_IFNAME=lo
export NCCL_DEBUG=${NCCL_DEBUG:-WARN} CUDA_DEVICE_ORDER=PCI_BUS_ID
# Cases without MPS point the client at an empty pipe directory, so they
# run without MPS even if some MPS daemon uses the default one.
NOMPS=$OUT/no-mps
mkdir -p "$NOMPS"
export CUDA_MPS_PIPE_DIRECTORY=$NOMPS CUDA_MPS_LOG_DIRECTORY=$NOMPS
MPSDIR=$OUT/mps
MPS_UP=0

elapsed() { echo $(($(date +%s) - START)); }
want() { [ "$SEL" = " all " ] || [[ "$SEL" == *" $1 "* ]]; }
say() { echo "[$(elapsed)s] $*" >&2; }

# synth META ITEM OUTCOME DETAIL: a record for something run.sh saw itself.
synth() {
    local d
    d=$(printf '%s' "$4" | tr -d '\000-\037' | sed 's/\\/\\\\/g; s/"/'"'"'/g')
    printf '{%s,"item":"%s","outcome":"%s","detail":"%s","source":"run.sh"}\n' \
        "$1" "$2" "$3" "$d" >>"$RAW"
}

# Seconds a case may take: its own limit, cut to what the budget has left.
# Prints 0 when fewer than 8 s are left.
limit_for() {
    local left=$((BUDGET_S - $(elapsed)))
    if [ "$left" -lt 8 ]; then echo 0; elif [ "$1" -lt "$left" ]; then echo "$1"; else echo "$left"; fi
}

rc_text() {
    case $1 in
        124 | 137) echo "KILLED (timeout ${2}s)" ;;
        *) echo "CRASHED rc=$1" ;;
    esac
}

# run_items META TIMEOUT ITEMS -- CMD...: runs CMD --items ITEMS; after a
# crash or timeout goes on with the items that have no record yet (the first
# of them, the one that was running, gets a KILLED/CRASHED record). rc 3 is
# the probe's own abort after it wrote a STUCK/NO ACCESS record.
run_items() {
    local meta=$1 t=$2 items=$3 lim rc log rem it first tries=0
    shift 4
    while [ -n "$items" ] && [ $tries -lt 12 ]; do
        tries=$((tries + 1))
        lim=$(limit_for "$t")
        if [ "$lim" = 0 ]; then
            IFS=, read -r -a arr <<<"$items"
            for it in "${arr[@]}"; do synth "$meta" "$it" "skipped (budget)" "over BUDGET_S=$BUDGET_S"; done
            return
        fi
        LOGN=$((LOGN + 1))
        log=$OUT/logs/$(printf '%03d' $LOGN)
        printf '%s\n' "$*  --items $items" >"$log.cmd"
        say "$(brief "$meta") ($(tr -cd , <<<"$items" | wc -c | awk '{print $1 + 1}') items)"
        timeout -k 5 "$lim" "$@" --items "$items" >"$log.out" 2>"$log.err"
        rc=$?
        grep '^RESULT ' "$log.out" | sed 's/^RESULT //' >>"$RAW"
        [ $rc -ne 0 ] && LAST_BAD=1
        rem=""
        IFS=, read -r -a arr <<<"$items"
        for it in "${arr[@]}"; do
            grep -q "\"item\": *\"$it\"" "$log.out" || rem="$rem${rem:+,}$it"
        done
        [ -z "$rem" ] && return
        if [ $rc -eq 0 ]; then
            IFS=, read -r -a arr <<<"$rem"
            for it in "${arr[@]}"; do synth "$meta" "$it" "missing" "process ended without a record; see $log.err"; done
            return
        fi
        if [ $rc -ne 3 ] && [ "$rem" = "$items" ]; then
            # No item got a record: it hung or died in setup; retrying would too.
            IFS=, read -r -a arr <<<"$rem"
            for it in "${arr[@]}"; do
                synth "$meta" "$it" "$(rc_text $rc "$lim")" "no record at all (setup hung or died): $(tail -c 200 "$log.err" | tr '\n' ' ')"
            done
            return
        fi
        if [ $rc -ne 3 ]; then
            first=${rem%%,*}
            synth "$meta" "$first" "$(rc_text $rc "$lim")" "$(tail -c 300 "$log.err" | tr '\n' ' ')"
            rem=${rem#"$first"}
            rem=${rem#,}
        fi
        items=$rem
    done
}

# run_one META TIMEOUT ITEM -- CMD...: a case with one record and no --items.
run_one() {
    local meta=$1 t=$2 item=$3 lim rc log
    shift 4
    lim=$(limit_for "$t")
    if [ "$lim" = 0 ]; then
        synth "$meta" "$item" "skipped (budget)" "over BUDGET_S=$BUDGET_S"
        return
    fi
    LOGN=$((LOGN + 1))
    log=$OUT/logs/$(printf '%03d' $LOGN)
    printf '%s\n' "$*" >"$log.cmd"
    say "$(brief "$meta") $item"
    timeout -k 5 "$lim" "$@" >"$log.out" 2>"$log.err"
    rc=$?
    grep '^RESULT ' "$log.out" | sed 's/^RESULT //' >>"$RAW"
    if [ $rc -ne 0 ]; then
        LAST_BAD=1
        grep -q '^RESULT ' "$log.out" ||
            synth "$meta" "$item" "$(rc_text $rc "$lim")" "$(tail -c 300 "$log.err" | tr '\n' ' ')"
    fi
}

m() { printf '"q":"%s","test":"%s","where":"%s","mps":%s' "$1" "$2" "$3" "${4:-false}"; }
brief() { local b=${1//\"/}; b=${b//,/ }; echo "${b//:/=}"; }

# ---------------------------------------------------------------- MPS (ours only)

mps_env() {
    env CUDA_MPS_PIPE_DIRECTORY="$MPSDIR/pipe" CUDA_MPS_LOG_DIRECTORY="$MPSDIR/log" "$@"
}
mps_pids() {
    local p
    for p in $(pgrep -x nvidia-cuda-mps-control) $(pgrep -x nvidia-cuda-mps-server); do
        tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null |
            grep -qx "CUDA_MPS_PIPE_DIRECTORY=$MPSDIR/pipe" && echo "$p"
    done
}
mps_start() {
    if ! command -v nvidia-cuda-mps-control >/dev/null; then
        MPS_NOTE="nvidia-cuda-mps-control not found: MPS cases skipped"
        return 1
    fi
    if [ -n "$(pgrep -x nvidia-cuda-mps-control)" ] || [ -n "$(pgrep -x nvidia-cuda-mps-server)" ]; then
        MPS_NOTE="an MPS daemon was already running (not ours): MPS cases skipped"
        return 1
    fi
    mkdir -p "$MPSDIR/pipe" "$MPSDIR/log"
    if ! mps_env timeout 20 nvidia-cuda-mps-control -d; then
        MPS_NOTE="nvidia-cuda-mps-control -d failed"
        return 1
    fi
    MPS_UP=1
    MPS_NOTE="own MPS daemon, pipe directory under OUTDIR"
    sleep 1
}
mps_stop() {
    [ "$MPS_UP" = 1 ] || return 0
    echo quit | mps_env timeout 15 nvidia-cuda-mps-control >/dev/null 2>&1
    local pids
    for _ in $(seq 50); do
        pids=$(mps_pids)
        [ -z "$pids" ] && break
        sleep 0.2
    done
    pids=$(mps_pids)
    if [ -n "$pids" ]; then
        # shellcheck disable=SC2086 # a list of our own daemon's pids
        kill $pids 2>/dev/null
        sleep 1
        pids=$(mps_pids)
        # shellcheck disable=SC2086
        [ -n "$pids" ] && kill -9 $pids 2>/dev/null
    fi
    MPS_UP=0
}
# After a client was killed mid-kernel MPS may refuse new clients: restart.
mps_check() {
    if [ "$LAST_BAD" = 1 ] && [ "$MPS_UP" = 1 ]; then
        say "a case under MPS failed: restarting our MPS daemon"
        mps_stop
        mps_start || true
    fi
    LAST_BAD=0
}
trap mps_stop EXIT
trap 'exit 130' INT TERM
MPS_NOTE="not run"

# scripts/check-gpu-residency sources this file up to here to test the
# functions above without a GPU.
if [ "${RESIDENCY_FUNCTIONS_ONLY:-0}" = 1 ]; then
    trap - EXIT INT TERM
    # shellcheck disable=SC2317 # exit when run rather than sourced
    return 0 2>/dev/null || exit 0
fi

# ---------------------------------------------------------------- build

say "building with $NVCC for $ARCH"
read -r -a NVX <<<"${NVCC_EXTRA:-}"
BUILD_OK=1
if [ ! -x "$NVCC" ]; then
    echo "no nvcc at $NVCC (set CUDA_HOME or NVCC)" >&2
    BUILD_OK=0
else
    # nvcc as is; then allowing a host compiler newer than it knows; then clang++.
    build() { # TAG EXTRA...
        local tag=$1
        shift
        (timeout 240 "$NVCC" -O2 -std=c++17 -arch="$ARCH" "${NVX[@]}" "$@" -o "$P" "$HERE/probe.cu" \
            -ldl -lpthread >"$OUT/logs/build-probe$tag.log" 2>&1) &
        local b1=$!
        (timeout 240 "$NVCC" -O2 -std=c++17 -arch="$ARCH" -Xcompiler -fPIC -shared -DPROBE_LIB \
            -diag-suppress 177,550 "${NVX[@]}" "$@" -o "$LIB" "$HERE/probe.cu" -ldl -lpthread \
            >"$OUT/logs/build-lib$tag.log" 2>&1) &
        local b2=$!
        wait $b1
        local r1=$?
        wait $b2
        [ $r1 -eq 0 ] && [ -x "$P" ]
    }
    if ! build ""; then
        say "nvcc failed (logs/build-probe.log); retrying with -allow-unsupported-compiler"
        if ! build "-2" -allow-unsupported-compiler; then
            if command -v clang++ >/dev/null && build "-3" -ccbin clang++ -allow-unsupported-compiler; then
                :
            else
                BUILD_OK=0
            fi
        fi
    fi
    [ -f "$LIB" ] || LIB_FAIL=1
fi
BUILD_S=$(elapsed)
if [ $BUILD_OK = 0 ]; then
    cat "$OUT/logs/build-probe.log" >&2 2>/dev/null
    synth "$(m build build -)" probe "error" "nvcc failed: see logs/build-probe.log"
fi
[ "${LIB_FAIL:-0}" = 1 ] && synth "$(m build build -)" libprobe "error" "nvcc failed: see logs/build-lib.log"
say "build done (${BUILD_S}s)"

TORCH_OK=1
"$PY" -c 'import torch' >/dev/null 2>&1 || TORCH_OK=0
[ -f "$LIB" ] || TORCH_OK=0

torch_case() { # WHERE Q [MPS]
    local meta
    meta=$(m "$2" torch "$1" "${3:-false}")
    if [ $TORCH_OK = 0 ]; then
        synth "$meta" all "skipped" "no torch in $PY or no libprobe.so"
        return
    fi
    run_items "$meta" 120 "$("$PY" "$HERE/probe_torch.py" --list-items)" -- \
        "$PY" "$HERE/probe_torch.py" --lib "$LIB" --where "$1" --sms "$SMS" \
        --hang-ms "$HANG_MS" --store-dir "$OUT"
}

COMMON=(--hang-ms "$HANG_MS" --sms "$SMS")
if [ $BUILD_OK = 1 ]; then
    SYNC_ITEMS=$("$P" items sync)
    MEM_ITEMS=$("$P" items mem)
    LOCK_ITEMS=$("$P" items lock)
    LOCK_SHORT=memcpy_d2d,launch_loaded,event_record,event_query,stream_query,green_launch,ownctx_launch,ownctx_memcpy
    DB_ITEMS=$("$P" items doorbell)

    run_one "$(m info info -)" 30 device -- "$P" info

    if want q1; then
        run_items "$(m Q1 sync primary)" 90 "$SYNC_ITEMS" -- "$P" sync primary "${COMMON[@]}"
        run_items "$(m Q1 sync primary)" 30 lazy_first_launch,module_first_launch -- \
            env PROBE_TAG=EAGER CUDA_MODULE_LOADING=EAGER "$P" sync primary "${COMMON[@]}"
        run_items "$(m Q1 mem primary)" 30 "$MEM_ITEMS" -- "$P" mem primary "${COMMON[@]}"
        run_one "$(m Q1 conc primary)" 40 concurrency -- "$P" conc primary "${COMMON[@]}"
        run_one "$(m Q1 exit primary)" 30 process_exit -- "$P" exit primary "${COMMON[@]}"
    fi
    want torch1 && torch_case primary Q1
    if want q2; then
        run_items "$(m Q2 sync green)" 90 "$SYNC_ITEMS" -- "$P" sync green "${COMMON[@]}"
        run_items "$(m Q2 mem green)" 40 "$MEM_ITEMS" -- "$P" mem green "${COMMON[@]}"
        run_one "$(m Q2 conc green)" 40 concurrency -- "$P" conc green "${COMMON[@]}"
        run_one "$(m Q2 exit green)" 30 process_exit -- "$P" exit green "${COMMON[@]}"
    fi
    want torch2 && torch_case green Q2
    if want q4; then
        run_items "$(m Q4 lock primary)" 60 "$LOCK_ITEMS" -- "$P" lock memcpy_d2h_pageable "${COMMON[@]}"
        run_items "$(m Q4 lock primary)" 40 "$LOCK_SHORT" -- \
            "$P" lock memcpy_d2h_pageable --writer malloc "${COMMON[@]}"
        run_items "$(m Q4 lock primary)" 40 "$LOCK_SHORT" -- \
            "$P" lock memcpy_d2h_pageable --writer lazy "${COMMON[@]}"
        run_items "$(m Q4 lock primary)" 40 "$LOCK_SHORT" -- "$P" lock stream_sync "${COMMON[@]}"
        run_items "$(m Q4 lock primary)" 40 "$LOCK_SHORT" -- "$P" lock launch_queue_full "${COMMON[@]}"
        run_items "$(m Q4 lock primary)" 40 "$LOCK_SHORT" -- "$P" lock device_sync "${COMMON[@]}"
        run_items "$(m Q4 lock primary)" 40 "$LOCK_SHORT" -- \
            "$P" lock memcpy_d2h_pageable --sched blocking "${COMMON[@]}"
    fi
    want q5 && run_items "$(m Q5 doorbell primary)" 60 "$DB_ITEMS" -- "$P" doorbell "${COMMON[@]}"
    if want q3; then
        run_items "$(m Q3 sync ctx)" 90 "$SYNC_ITEMS" -- "$P" sync ctx "${COMMON[@]}"
        run_items "$(m Q3 mem ctx)" 40 "$MEM_ITEMS" -- "$P" mem ctx "${COMMON[@]}"
        run_one "$(m Q3 conc ctx)" 40 concurrency -- "$P" conc ctx "${COMMON[@]}"
        run_one "$(m Q3 exit ctx)" 30 process_exit -- "$P" exit ctx "${COMMON[@]}"
    fi
    want torch3 && torch_case ctx Q3
    if want mps; then
        if [ "$(limit_for 60)" -lt 30 ]; then
            synth "$(m Q3 mps - true)" all "skipped (budget)" "MPS cases need about 60 s"
        elif mps_start; then
            MP=(env "CUDA_MPS_PIPE_DIRECTORY=$MPSDIR/pipe" "CUDA_MPS_LOG_DIRECTORY=$MPSDIR/log"
                PROBE_MPS=1 "$P")
            LAST_BAD=0
            run_one "$(m Q3 conc ctx true)" 40 concurrency -- "${MP[@]}" conc ctx "${COMMON[@]}"
            mps_check
            run_one "$(m Q3 conc ctxaff true)" 40 concurrency -- "${MP[@]}" conc ctxaff "${COMMON[@]}"
            mps_check
            run_one "$(m Q2 conc green true)" 40 concurrency -- "${MP[@]}" conc green "${COMMON[@]}"
            mps_check
            run_items "$(m Q3 mem ctx true)" 40 "$MEM_ITEMS" -- "${MP[@]}" mem ctx "${COMMON[@]}"
            mps_check
            run_items "$(m Q3 sync ctx true)" 60 "$SYNC_ITEMS" -- "${MP[@]}" sync ctx "${COMMON[@]}"
            mps_check
            run_items "$(m Q1 sync primary true)" 60 device_sync,free,lazy_first_launch -- \
                "${MP[@]}" sync primary "${COMMON[@]}"
            mps_check
            run_items "$(m Q2 sync green true)" 60 device_sync,free,lazy_first_launch -- \
                "${MP[@]}" sync green "${COMMON[@]}"
            mps_check
            run_items "$(m Q4 lock primary true)" 60 "$LOCK_SHORT" -- \
                "${MP[@]}" lock memcpy_d2h_pageable "${COMMON[@]}"
            mps_stop
        else
            synth "$(m Q3 mps - true)" all "skipped" "$MPS_NOTE"
        fi
    fi
fi

WALL=$(elapsed)
{
    printf '{"started":"%s","host":"%s",' "$(date -u -d "@$START" +%Y-%m-%dT%H:%M:%SZ)" "$(hostname)"
    printf '"gpu":"%s",' "$(timeout 10 nvidia-smi --query-gpu=name,pci.bus_id,compute_mode,mig.mode.current --format=csv,noheader 2>/dev/null | head -1 | tr -d '"')"
    printf '"driver":"%s",' "$(timeout 10 nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)"
    printf '"nvcc":"%s",' "$("$NVCC" --version 2>/dev/null | tail -1 | tr -d '"')"
    printf '"python":"%s",' "$("$PY" --version 2>&1 | tr -d '"')"
    printf '"mps_note":"%s","build_s":%s,"wall_s":%s,"budget_s":%s,"hang_ms":%s,"groups":"%s"}\n' \
        "$MPS_NOTE" "$BUILD_S" "$WALL" "$BUDGET_S" "$HANG_MS" "${SEL# }"
} >"$OUT/meta.json"
"$PY" "$HERE/summarize.py" "$OUT" >"$OUT/table.md" || python3 "$HERE/summarize.py" "$OUT" >"$OUT/table.md"
cat "$OUT/table.md"
say "done in ${WALL}s; results in $OUT (raw.jsonl, results.json, table.md, logs/)"
