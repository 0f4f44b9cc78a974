#!/usr/bin/env python3
"""Side-by-side table of compare.sh's JSON results: airamp / NCCL Socket."""
import json
import sys
from pathlib import Path

d = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
runs = {n: json.loads((d / f"{n}.json").read_text()) for n in ("airamp", "socket", "socket4x4") if (d / f"{n}.json").exists()}
key = lambda r: (r["dtype"], r["bytes"])
tables = {n: {key(r): r for r in v["results"]} for n, v in runs.items()}
print(f"NCCL {runs.get('airamp', runs.get('socket', {})).get('nccl', '?')}, 2 ranks, one GPU, bus bandwidth GB/s")
print(f"{'dtype':9} {'bytes':>11} {'airamp':>8} {'socket':>8} {'sock4x4':>8} {'ratio':>6} {'ratio4x4':>8} correct")
for k in sorted(tables.get("airamp", {})):
    a = tables["airamp"][k]
    s = tables.get("socket", {}).get(k)
    s4 = tables.get("socket4x4", {}).get(k)
    f = lambda r: f"{r['busbw_GBps']:8.3f}" if r else "       -"
    ratio = lambda r: f"{a['busbw_GBps'] / r['busbw_GBps']:6.2f}" if r and r["busbw_GBps"] > 0 else "     -"
    correct = all(r["correct"] for r in (a, s, s4) if r)
    print(f"{k[0]:9} {k[1]:>11} {f(a)} {f(s)} {f(s4)} {ratio(s)} {ratio(s4):>8} {'yes' if correct else 'NO'}")
