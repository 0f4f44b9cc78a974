#!/usr/bin/env python3
"""Table of collnet_compare.sh results: bus bandwidth of each mode per size,
the tuner's bandwidth against the better fixed choice, FP8 error, agreement
between ranks, and whether exact CollNet equals Ring bit for bit."""
import glob
import json
import os
import re
import sys

out = sys.argv[1]
modes = ["ring", "cn_exact", "cn_fp8", "tuner"]
data = {}
for m in modes:
    # Each mode may have run several passes (m.json, m-2.json, ...): keep the faster row
    # per size; errors and agreement must hold in every run.
    for p in [os.path.join(out, m + ".json")] + [
            q for q in glob.glob(os.path.join(out, m + "-*.json"))
            if re.fullmatch(re.escape(m) + r"-\d+\.json", os.path.basename(q))]:
        if not os.path.exists(p):
            continue
        for r in json.load(open(p))["results"]:
            old = data.setdefault(m, {}).get(r["bytes"])
            if old is not None:
                r = dict(max(old, r, key=lambda x: x["busbw_GBps"]),
                         identical=old["identical"] and r["identical"],
                         rel_err=max(old["rel_err"], r["rel_err"]),
                         digest=r["digest"] if old["digest"] == r["digest"] else "differs")
            data[m][r["bytes"]] = r
sizes = sorted(set().union(*[d.keys() for d in data.values()])) if data else []
print("| size | ring GB/s | CollNet exact | CollNet FP8 | tuner | tuner / max(ring, CollNet) | FP8 err | exact err | all identical | exact == ring |")
print("|---|---|---|---|---|---|---|---|---|---|")
for s in sizes:
    g = lambda m, k: data.get(m, {}).get(s, {}).get(k)
    bw = {m: g(m, "busbw_GBps") for m in modes}
    best = max(v for m, v in bw.items() if v is not None and m != "tuner") if any(bw[m] for m in modes[:3]) else None
    ratio = f"{bw['tuner'] / best:.2f}" if bw["tuner"] and best else "-"
    ident = all(g(m, "identical") for m in data if g(m, "identical") is not None)
    same = (g("cn_exact", "digest") == g("ring", "digest")) if g("ring", "digest") is not None and g("cn_exact", "digest") is not None else "-"
    f = lambda v: f"{v:.3f}" if isinstance(v, float) else "-"
    e = lambda v: f"{100 * v:.2f}%" if isinstance(v, float) else "-"
    print(f"| {s} | {f(bw['ring'])} | {f(bw['cn_exact'])} | {f(bw['cn_fp8'])} | {f(bw['tuner'])} | {ratio} | {e(g('cn_fp8', 'rel_err'))} | {e(g('cn_exact', 'rel_err'))} | {ident} | {same} |")
