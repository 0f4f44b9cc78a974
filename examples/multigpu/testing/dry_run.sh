#!/usr/bin/env bash
# Dry run of examples/multigpu/run.sh without a GPU: fake python3 (for the
# two benches only: testing/fake_bench.py), nvidia-smi, ip and tc on PATH;
# the real python3 runs the summarizers. Checks the control flow (parts per
# GPU count, ABBA, ports, netns set-up and removal, the per-run timeout with
# the run's whole process group killed, the budget guard, the tarball) and
# that summarize.py passes clean runs and fails injected hangs, wrong
# answers, rank disagreement and P2P traffic. Nothing here touches NCCL,
# torch or a GPU. Prints its own wall time; exit status 0 when every check
# held.
# Usage: examples/multigpu/testing/dry_run.sh
set -uo pipefail
start=$SECONDS
here=$(cd "$(dirname "$0")" && pwd)
run=$here/../run.sh
real_py=$(command -v python3)
tmp=$(mktemp -d)
if [ -n "${KEEP:-}" ]; then echo "keeping $tmp"; else trap 'rm -rf "$tmp"' EXIT; fi
mkdir -p "$tmp/bin"
cat >"$tmp/bin/python3" <<EOF
#!/usr/bin/env bash
case "\${1:-}" in
*_bench.py) exec "$real_py" "$here/fake_bench.py" "\$@" ;;
esac
exec "$real_py" "\$@"
EOF
cat >"$tmp/bin/nvidia-smi" <<'EOF'
#!/usr/bin/env bash
[ "${1:-}" = -L ] || { echo "fake nvidia-smi $*"; exit 0; }
for i in $(seq 0 $((FAKE_GPUS - 1))); do echo "GPU $i: NVIDIA H200 (UUID: GPU-fake-$i)"; done
EOF
# ip netns add/del/exec (a file per namespace), ip link, tc: enough for run.sh.
cat >"$tmp/bin/ip" <<'EOF'
#!/usr/bin/env bash
[ -n "${FAKE_NO_NETNS:-}" ] && { echo "ip: Operation not permitted" >&2; exit 1; }
d=$FAKE_STATE/netns; mkdir -p "$d"
case "$1 $2" in
"netns add") [ -e "$d/$3" ] && exit 1; touch "$d/$3" ;;
"netns del") [ -e "$d/$3" ] || exit 1; rm "$d/$3" ;;
"netns exec") [ -e "$d/$3" ] || exit 1; ns=$3; shift 3; FAKE_NETNS=$ns exec "$@" ;;
"link set") ;;
*) echo "fake ip: $*" >&2; exit 1 ;;
esac
EOF
printf '#!/usr/bin/env bash\nexit 0\n' >"$tmp/bin/tc"
# MPS control: -d starts (a marker file), "quit" on stdin stops.
cat >"$tmp/bin/nvidia-cuda-mps-control" <<'EOF'
#!/usr/bin/env bash
if [ "${1:-}" = -d ]; then touch "$FAKE_STATE/mps"; echo "mps -d" >>"$FAKE_STATE/mps.log"; exit 0; fi
read -r cmd; case $cmd in quit*) rm -f "$FAKE_STATE/mps" ;; esac; echo "mps $cmd" >>"$FAKE_STATE/mps.log"
EOF
chmod +x "$tmp/bin/"*
: >"$tmp/libnccl-net-airamp.so"
export PATH=$tmp/bin:$PATH FAKE_STATE=$tmp/state FAKE_RUN_S=0.05
mkdir -p "$FAKE_STATE"
failures=0
check() {   # DESCRIPTION COMMAND...
    if "${@:2}"; then echo "ok   $1"; else echo "FAIL $1"; failures=$((failures + 1)); fi
}
runs() { grep -c "$2" "$1/runs.tsv"; }
no_leftovers() {   # no process of ours still runs (the fakes carry $tmp in their command line)
    local p left=""
    for p in /proc/[0-9]*; do
        tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -q "fake_bench.py\|time.sleep(3600)" && left="$left ${p#/proc/}"
    done
    [ -z "$left" ] && return 0
    echo "     leftover processes:$left"
    # shellcheck disable=SC2086  # a list of pids
    kill -9 $left 2>/dev/null
    return 1
}

echo "== PLAN=1 for 2, 4, 8 GPUs"
for g in 2 4 8; do
    PLAN=1 "$run" "$tmp/libnccl-net-airamp.so" "$tmp/plan$g" "$g" >"$tmp/plan$g.txt" 2>&1
    check "plan for $g GPUs prints an estimate" grep -q "estimated total" "$tmp/plan$g.txt"
done
check "2 GPUs: socket, cn_lo, cn_25" grep -q "parts: socket cn_lo cn_25;" "$tmp/plan2.txt"
check "8 GPUs: cn_lo, cn_25, heads" grep -q "parts: cn_lo cn_25 heads;" "$tmp/plan8.txt"

echo "== 2 GPUs, every default part and the GPU path, clean"
FAKE_GPUS=2 GPU_PATH=1 "$run" "$tmp/libnccl-net-airamp.so" "$tmp/two" >"$tmp/two.txt" 2>&1
rc=$?
check "exit 0 (summary PASS)" [ "$rc" = 0 ]
check "summary says PASS" grep -q ": PASS" "$tmp/two/summary.md"
check "32 runs ok (socket 3x2, cn_lo 5x2, cn_25 5x2, gpu 3+3)" [ "$(runs "$tmp/two" "	ok$")" = 32 ]
check "ABBA: the second pass starts with the first pass's last mode" \
    bash -c "grep -A1 'cn_lo	tuner	' '$tmp/two/runs.tsv' | tail -1 | grep -q 'tuner-2'"
check "cn_25 ran inside the namespace" grep -q "netns airamp-mg-cn_25" "$tmp/two/cn_25/ring.log"
check "cn_lo ran outside any namespace" grep -q "netns -$" "$tmp/two/cn_lo/ring.log"
check "namespaces removed" [ -z "$(ls "$FAKE_STATE/netns" 2>/dev/null)" ]
check "acceptance ratios printed, unshaped and 25 Gbit/s" \
    bash -c "grep -q 'Acceptance, cn_lo: compressed / Ring >= 1.5x' '$tmp/two/summary.md' && grep -q 'Acceptance, cn_25: compressed / Ring >= 1.8x' '$tmp/two/summary.md'"
check "tuner digests compared on both ranks" grep -q "decision digests from 2 of 2 ranks \[0, 1\]: identical" "$tmp/two/summary.md"
check "tarball holds the runs" bash -c "tar -tzf '$tmp/two.tar.gz' | grep -q 'two/cn_25/tuner-2.json'"
check "calib_summarize ran on cn_lo" grep -q "decision digests" "$tmp/two/cn_lo/calib.md"
check "a port of its own per run" [ "$(cat "$tmp/two"/*/*.log | grep -o 'port [0-9]*' | sort -u | wc -l)" = 32 ]

echo "== 2 GPUs, MPS=1, the GPU path"
FAKE_GPUS=2 MPS=1 PARTS=gpu_lo "$run" "$tmp/libnccl-net-airamp.so" "$tmp/mps" >"$tmp/mps.txt" 2>&1
check "MPS=1: started before the runs, stopped at the end" \
    bash -c "[ \"\$(cat '$FAKE_STATE/mps.log')\" = \"\$(printf 'mps -d\nmps quit -t 10')\" ] && [ ! -e '$FAKE_STATE/mps' ]"
check "MPS=1 keeps the summary's verdict (a wrong answer fails the call)" bash -c "FAKE_GPUS=2 MPS=1 PARTS=gpu_lo FAKE_FAULT=wrong:cn_fp8_gpu_ub \
    '$run' '$tmp/libnccl-net-airamp.so' '$tmp/mps-wrong' >/dev/null 2>&1; [ \$? = 1 ]"
check "MPS=1 is in host.txt, the runs ok" bash -c "grep -q '^MPS=1$' '$tmp/mps/host.txt' && [ \"\$(grep -c '	ok$' '$tmp/mps/runs.tsv')\" = 3 ]"

echo "== 8 GPUs, faults: a hang (cn_fp8), a wrong answer (cn_int8), ranks disagreeing (tuner), P2P (ring)"
FAKE_GPUS=8 PARTS="cn_lo heads" RUN_TIMEOUT=3 TARBALL=$tmp/eight-out.tar.gz \
    FAKE_FAULT="hang:cn_fp8 wrong:cn_int8 differ:tuner p2p:ring" \
    "$run" "$tmp/libnccl-net-airamp.so" "$tmp/eight" >"$tmp/eight.txt" 2>&1
rc=$?
check "exit 1 (summary FAIL)" [ "$rc" = 1 ]
check "the hang is a TIMEOUT in runs.tsv" grep -q "cn_lo	cn_fp8	124	.*TIMEOUT" "$tmp/eight/runs.tsv"
check "the hung run's stacks were written" [ -s "$tmp/eight/cn_lo/cn_fp8.stacks" ]
check "the hung run's process group is gone (rank and child)" no_leftovers
check "summary: FAIL (hang)" grep -q "FAIL (hang)" "$tmp/eight/summary.md"
check "summary: FAIL (wrong answer) for cn_int8" grep -q "FAIL (wrong answer): cn_lo/cn_int8" "$tmp/eight/summary.md"
check "summary: FAIL (ranks differ)" grep -q "FAIL (ranks differ)" "$tmp/eight/summary.md"
check "summary: FAIL (decisions differ)" grep -q "FAIL (decisions differ): cn_lo/tuner" "$tmp/eight/summary.md"
check "summary: FAIL (not through the network)" grep -q "FAIL (not through the network): cn_lo/ring" "$tmp/eight/summary.md"
check "heads: 2-member collective network, 8 ranks' digests" \
    grep -q "heads/tuner, comm 0x5eed00c0ffee: decision digests from 8 of 8 ranks" "$tmp/eight/summary.md"
check "heads: P2P inside a node is not a failure" bash -c "! grep -q 'FAIL (not through the network): heads' '$tmp/eight/summary.md' && \
    ! grep -q 'FAIL (not through airamp): heads/tuner' '$tmp/eight/summary.md'"
check "heads: NCCL saw 2 nodes, no topology failure" bash -c "! grep -q 'FAIL (topology)' '$tmp/eight/summary.md'"
check "8 GPUs: the 2-GPU bars are reported, not judged" grep -q "reported, not judged" "$tmp/eight/summary.md"
check "the summary beside a TARBALL elsewhere" [ -s "$tmp/eight-out.summary.md" ]

echo "== 4 GPUs, a budget that fits two runs; no namespace possible"
FAKE_GPUS=4 BUDGET_S=50 FAKE_RUN_S=3 FAKE_NO_NETNS=1 \
    "$run" "$tmp/libnccl-net-airamp.so" "$tmp/four" >"$tmp/four.txt" 2>&1
check "some runs, then the rest skipped (budget)" \
    bash -c "n=\$(grep -c '	ok$' '$tmp/four/runs.tsv'); [ \$n -ge 2 ] && [ \$n -le 4 ] && grep -q 'skipped (budget)' '$tmp/four/runs.tsv' && \
        ! grep -A99 'skipped (budget)' '$tmp/four/runs.tsv' | grep -q '	ok$'"
check "exit 2, INCOMPLETE" bash -c "grep -q ': INCOMPLETE$' '$tmp/four/summary.md'"
FAKE_GPUS=2 PARTS=cn_lo ABBA=0 BUDGET_S=22 EST_RUN_S=1 FAKE_RUN_S=60 \
    "$run" "$tmp/libnccl-net-airamp.so" "$tmp/cut" >"$tmp/cut.txt" 2>&1
check "a run outlasting the budget is CUT (INCOMPLETE), not a hang" bash -c "grep -q 'cn_lo	ring	124	.*CUT at the end of the budget' '$tmp/cut/runs.tsv' && \
    grep -q ': INCOMPLETE$' '$tmp/cut/summary.md' && ! grep -q 'FAIL (hang)' '$tmp/cut/summary.md'"
check "cn_25 skipped: no shaped namespace" grep -q "cn_25	-	-	0	skipped (no shaped namespace)" "$tmp/four/runs.tsv"
check "a crashed or missing run is not a PASS" bash -c "FAKE_GPUS=2 PARTS=cn_lo FAKE_FAULT=crash:ring ABBA=0 \
    '$run' '$tmp/libnccl-net-airamp.so' '$tmp/crash' >/dev/null 2>&1; [ \$? = 1 ] && grep -q 'FAIL (failed run)' '$tmp/crash/summary.md'"
check "heads on 2 GPUs is refused" bash -c "FAKE_GPUS=2 PARTS=heads '$run' '$tmp/libnccl-net-airamp.so' '$tmp/h2' >/dev/null 2>&1; \
    grep -q 'skipped (needs an even GPU count' '$tmp/h2/runs.tsv'"
check "no process left behind" no_leftovers

echo "dry run: $((SECONDS - start)) s, $failures failure(s)"
[ "$failures" = 0 ]
