#!/usr/bin/env bash
# examples/multigpu/run.sh end to end on the CPU: the real benches
# (examples/pytorch/{allreduce,collnet}_bench.py) with gloo instead of NCCL
# (--device-of-rank cpu in place of local), small sizes, the real summarizer.
# Checks that the benches' JSON and run.sh's folders are what summarize.py
# reads, that every result is right and bit-identical across ranks (gloo sums
# exactly), and that the world-size and --nodes handling works at 4 ranks.
# NCCL, airamp and a GPU are not involved: there are no NCCL logs, so the
# summary's calibration and decision checks fail, as they must without them.
# Usage: PYTHON=/path/to/python-with-torch examples/multigpu/testing/gloo_run.sh
# (skips, exit 0, when $PYTHON has no torch). Prints its wall time.
set -uo pipefail
start=$SECONDS
py=${PYTHON:-python3}
if ! "$py" -c 'import torch.distributed' 2>/dev/null; then
    echo "gloo run skipped: no torch in $py (set PYTHON)"; exit 0
fi
here=$(cd "$(dirname "$0")" && pwd)
real_py=$(command -v python3)
py=$(command -v "$py")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin"
cat >"$tmp/bin/python3" <<EOF
#!/usr/bin/env bash
case "\${1:-}" in
*_bench.py)
    args=()
    for a in "\$@"; do [ "\$a" = local ] && a=cpu; args+=("\$a"); done
    exec "$py" "\${args[@]}" ;;
esac
exec "$real_py" "\$@"
EOF
chmod +x "$tmp/bin/python3"
: >"$tmp/lib.so"
failures=0
check() { if "${@:2}"; then echo "ok   $1"; else echo "FAIL $1"; failures=$((failures + 1)); fi; }
PATH=$tmp/bin:$PATH PARTS="socket cn_lo" ROUNDS=1 ABBA=0 SOCKET_MAX=1048576 CN_MAX=4194304 RUN_TIMEOUT=200 BUDGET_S=1200 \
    nice -n 10 "$here/../run.sh" "$tmp/lib.so" "$tmp/out" 4 >"$tmp/run.txt" 2>&1
s=$tmp/out/summary.md
check "8 runs ok (3 socket, 5 collnet)" [ "$(grep -c '	ok$' "$tmp/out/runs.tsv")" = 8 ]
check "Ring vs Socket table, bf16 and fp32, exact" bash -c "grep -q '^| bfloat16 | 1 MiB | .* | yes |$' '$s' && grep -q '^| float32 | 1 MiB | .* | yes |$' '$s'"
check "collnet table: 1 MiB and 4 MiB, identical on all 4 ranks" bash -c "grep -q '^| 1 MiB | .* | yes |$' '$s' && grep -q '^| 4 MiB | .* | yes |$' '$s'"
check "no wrong answer, no rank disagreement, no hang" bash -c "! grep -qE 'FAIL \((wrong answer|ranks differ|hang|failed run)\)' '$s'"
check "4 ranks, 4 nodes in the JSON" grep -q '"nodes": 4' "$tmp/out/cn_lo/ring.json"
check "without NCCL logs the decision check fails (as it must)" grep -q "FAIL (no decisions)" "$s"
[ "$failures" = 0 ] || { cat "$tmp/run.txt"; cat "$s"; }
echo "gloo run: $((SECONDS - start)) s, $failures failure(s)"
[ "$failures" = 0 ]
