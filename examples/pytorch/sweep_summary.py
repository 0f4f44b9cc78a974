#!/usr/bin/env python3
"""The ratios table of sweep.sh: medians over rounds, checked against the bars.

  8 B time: airamp / Socket, median of the per-round ratios (the two ran back
            to back in every round)                                  <= 1.00
  busbw 256 KiB, 1 MiB, 4 MiB: airamp / max(Socket, Socket 4x4)      >= 1.20
  busbw >= 8 MiB: airamp / Socket                                    >= 2.00
Every airamp configuration of the sweep gets its own rows.
"""
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

d = Path(sys.argv[1] if len(sys.argv) > 1 else "sweep")
# runs[config][round] = {bytes: row}
runs = defaultdict(dict)
wrong = []
nccl = "?"
for f in sorted(d.glob("*.r*.json")):
    config, rnd = f.stem.rsplit(".r", 1)
    data = json.loads(f.read_text())
    nccl = data.get("nccl", nccl)
    runs[config][int(rnd)] = {r["bytes"]: r for r in data["results"]}
    wrong += [f"{f.name}: {r['bytes']} B" for r in data["results"] if not r["correct"]]
if "socket" not in runs or not any(c.startswith("airamp") for c in runs):
    sys.exit(f"no airamp and socket results in {d}")

def med(config, size, key):
    vals = [r[size][key] for r in runs[config].values() if size in r]
    return statistics.median(vals) if vals else float("nan")

sizes = sorted({s for r in runs["socket"].values() for s in r})
print(f"NCCL {nccl}, 2 ranks, one GPU; medians over {len(runs['socket'])} rounds")
print(f"{'size':>9} {'':6} " + " ".join(f"{c:>14}" for c in sorted(runs)))
for s in sizes:
    key = "time_us" if s <= 8 else "busbw_GBps"
    unit = "us" if s <= 8 else "GB/s"
    print(f"{s:>9} {unit:6} " + " ".join(f"{med(c, s, key):14.3f}" for c in sorted(runs)))
print()
ok = True
for a in sorted(c for c in runs if c.startswith("airamp")):
    print(f"== {a}")
    pairs = [runs[a][k][8]["time_us"] / runs["socket"][k][8]["time_us"]
             for k in runs[a] if k in runs["socket"] and 8 in runs[a][k] and 8 in runs["socket"][k]]
    if pairs:
        r = statistics.median(pairs)
        good = r <= 1.0 and len(pairs) >= 5
        ok &= good
        print(f"  8 B time  {a}/socket      {r:5.2f}  (bar <= 1.00, {len(pairs)} pairs: "
              + " ".join(f"{p:.2f}" for p in pairs) + f")  {'PASS' if good else 'FAIL'}")
    for s in sizes:
        if s <= 8:
            continue
        if s < 8 << 20:
            ref = max(med("socket", s, "busbw_GBps"), med("socket4x4", s, "busbw_GBps") if "socket4x4" in runs else 0)
            bar, what = 1.2, "max(socket, 4x4)"
        else:
            ref, bar, what = med("socket", s, "busbw_GBps"), 2.0, "socket"
        r = med(a, s, "busbw_GBps") / ref
        good = r >= bar
        ok &= good
        print(f"  {s >> 10:>6} KiB busbw {a}/{what:16} {r:5.2f}  (bar >= {bar:.2f})  {'PASS' if good else 'FAIL'}")
if wrong:
    ok = False
    print("WRONG RESULTS: " + ", ".join(wrong))
print("all bars met" if ok else "some bars missed")
