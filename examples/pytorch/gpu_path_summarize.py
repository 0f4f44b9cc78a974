#!/usr/bin/env python3
"""Table of gpu_path_compare.sh results: each mode's best bus bandwidth per
size (ABBA passes), the ratios against Ring the GPU-path issue asks for,
each pass against its own Ring (with a flag where a mode's passes differ by
more than 15%), FP8 error and agreement, exact == Ring bit for bit, GPU
memory per process and CPU time per GB."""
import glob
import json
import os
import re
import sys

from gpu_path_passes import SPREAD, load_passes, spreads

out = sys.argv[1]
modes = ["ring", "cn_exact_gpu", "cn_fp8_gpu", "cn_exact_host", "cn_fp8_host", "ring_ub", "cn_exact_gpu_ub", "cn_fp8_gpu_ub",
         "cn_int8_gpu", "cn_int8_host", "cn_int8_gpu_ub", "cn_exact_host_pa", "cn_fp8_host_pa"]
data, mem = {}, {}
for m in modes:
    for p in [os.path.join(out, m + ".json")] + [
            q for q in glob.glob(os.path.join(out, m + "-*.json"))
            if re.fullmatch(re.escape(m) + r"-\d+\.json", os.path.basename(q))]:
        if not os.path.exists(p):
            continue
        doc = json.load(open(p))
        mem.setdefault(m, []).extend(v for v in doc.get("gpu_mem_MiB", []) if v is not None)
        for r in doc["results"]:
            old = data.setdefault(m, {}).get(r["bytes"])
            if old is not None:
                r = dict(max(old, r, key=lambda x: x["busbw_GBps"]),
                         identical=old["identical"] and r["identical"],
                         rel_err=max(old["rel_err"], r["rel_err"]),
                         cpu_s_per_GB=min(old["cpu_s_per_GB"], r["cpu_s_per_GB"]),
                         digest=r["digest"] if old["digest"] == r["digest"] else "differs")
            data[m][r["bytes"]] = r
sizes = sorted(set().union(*[d.keys() for d in data.values()])) if data else []
g = lambda m, s, k: data.get(m, {}).get(s, {}).get(k)
f = lambda v: f"{v:.2f}" if isinstance(v, float) else "-"
ratio = lambda a, b: f"{a / b:.2f}x" if isinstance(a, float) and isinstance(b, float) and b > 0 else "-"


def same_bytes(a, b, s):
    """Whether modes a and b returned the same bytes at size s ("-" when one did not run)."""
    da, db = g(a, s, "digest"), g(b, s, "digest")
    return da == db if da is not None and db is not None else "-"
print("Bus bandwidth, GB/s (best of the ABBA passes)\n")
print("| size | ring | exact GPU | FP8 GPU | exact host | FP8 host | FP8 GPU / ring | exact GPU / ring | exact host / ring | FP8 host / ring |")
print("|---|---|---|---|---|---|---|---|---|---|")
base = ["ring", "cn_exact_gpu", "cn_fp8_gpu", "cn_exact_host", "cn_fp8_host"]
for s in sizes:
    bw = {m: g(m, s, "busbw_GBps") for m in modes}
    print(f"| {s >> 20} MiB | " + " | ".join(f(bw[m]) for m in base) + " | "
          + " | ".join(ratio(bw[m], bw["ring"]) for m in ["cn_fp8_gpu", "cn_exact_gpu", "cn_exact_host", "cn_fp8_host"]) + " |")
if any(m in data for m in ("ring_ub", "cn_exact_gpu_ub", "cn_fp8_gpu_ub")):
    print("\nWith user buffers registered (one call per tensor), GB/s; ratios against Ring without and with registration\n")
    print("| size | ring (UB) | exact GPU (UB) | FP8 GPU (UB) | FP8 GPU UB / ring | FP8 GPU UB / ring UB | exact GPU UB / ring | exact GPU UB == ring |")
    print("|---|---|---|---|---|---|---|---|")
    for s in sizes:
        bw = {m: g(m, s, "busbw_GBps") for m in modes}
        print(f"| {s >> 20} MiB | {f(bw['ring_ub'])} | {f(bw['cn_exact_gpu_ub'])} | {f(bw['cn_fp8_gpu_ub'])} | "
              f"{ratio(bw['cn_fp8_gpu_ub'], bw['ring'])} | {ratio(bw['cn_fp8_gpu_ub'], bw['ring_ub'])} | "
              f"{ratio(bw['cn_exact_gpu_ub'], bw['ring'])} | {same_bytes('cn_exact_gpu_ub', 'ring', s)} |")
if any(m in data for m in ("cn_int8_gpu", "cn_int8_host", "cn_int8_gpu_ub")):
    print("\nINT8 (AIRAMP_COMPRESSION_FORMAT=int8), GB/s; each GPU mode against Ring and FP8 with the same buffers\n")
    print("| size | INT8 GPU | INT8 host | INT8 GPU (UB) | INT8 GPU / ring | INT8 host / ring | INT8 GPU UB / ring UB | INT8 / FP8, GPU UB "
          "| INT8 GPU err | INT8 host err | INT8 GPU == INT8 host |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for s in sizes:
        bw = {m: g(m, s, "busbw_GBps") for m in modes}
        same = same_bytes("cn_int8_gpu", "cn_int8_host", s)
        err = lambda m: f"{100 * g(m, s, 'rel_err'):.2f}%" if isinstance(g(m, s, "rel_err"), float) else "-"
        print(f"| {s >> 20} MiB | {f(bw['cn_int8_gpu'])} | {f(bw['cn_int8_host'])} | {f(bw['cn_int8_gpu_ub'])} | "
              f"{ratio(bw['cn_int8_gpu'], bw['ring'])} | {ratio(bw['cn_int8_host'], bw['ring'])} | "
              f"{ratio(bw['cn_int8_gpu_ub'], bw['ring_ub'])} | {ratio(bw['cn_int8_gpu_ub'], bw['cn_fp8_gpu_ub'])} | "
              f"{err('cn_int8_gpu' if 'cn_int8_gpu' in data else 'cn_int8_gpu_ub')} | {err('cn_int8_host')} | {same} |")
if any(m in data for m in ("cn_exact_host_pa", "cn_fp8_host_pa")):
    print("\nHost path with collnet.proxy_assist (pa) against the default, GB/s\n")
    print("| size | exact host | exact host pa | pa / default | exact pa / ring | FP8 host | FP8 host pa | pa / default | FP8 pa / ring | exact pa == ring | FP8 pa == FP8 host |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for s in sizes:
        bw = {m: g(m, s, "busbw_GBps") for m in modes}
        print(f"| {s >> 20} MiB | {f(bw['cn_exact_host'])} | {f(bw['cn_exact_host_pa'])} | {ratio(bw['cn_exact_host_pa'], bw['cn_exact_host'])} | "
              f"{ratio(bw['cn_exact_host_pa'], bw['ring'])} | {f(bw['cn_fp8_host'])} | {f(bw['cn_fp8_host_pa'])} | "
              f"{ratio(bw['cn_fp8_host_pa'], bw['cn_fp8_host'])} | {ratio(bw['cn_fp8_host_pa'], bw['ring'])} | "
              f"{same_bytes('cn_exact_host_pa', 'ring', s)} | {same_bytes('cn_fp8_host_pa', 'cn_fp8_host', s)} |")
# Per pass: each mode against the Ring of its own pass. The best-of-passes
# table above can pair one mode's fast pass with Ring's slow one (or the
# other way round) when the host has a slow spell during the call.
per_pass = load_passes(out, modes)
shown = [m for m in modes[1:] if any(m in runs for runs in per_pass.values())]
if len(per_pass) > 1 and all("ring" in runs for runs in per_pass.values()) and shown:
    print("\nPer pass, against the same pass's Ring\n")
    print("| size | pass | ring | " + " | ".join(f"{m} / ring" for m in shown) + " |")
    print("|---|---|---|" + "---|" * len(shown))
    for s in sizes:
        for k, runs in sorted(per_pass.items()):
            ring = runs["ring"].get(s)
            print(f"| {s >> 20} MiB | {k} | {f(ring)} | "
                  + " | ".join(ratio(runs.get(m, {}).get(s), ring) for m in shown) + " |")
    for s in sizes:
        wide = [f"{m} {100 * spreads(per_pass, m, s):.0f}%" for m in ["ring"] + shown
                if (spreads(per_pass, m, s) or 0) > SPREAD]
        if wide:
            print(f"\nAt {s >> 20} MiB a mode's passes differ by more than {100 * SPREAD:.0f}% ({', '.join(wide)}): the host "
                  "was slower during part of the call; compare modes within a pass, not by the best-of-passes table.")
print("\nCorrectness\n")
print("| size | FP8 GPU err | FP8 host err | every mode identical on all ranks | exact GPU == ring | exact host == ring | FP8 GPU == FP8 host |")
print("|---|---|---|---|---|---|---|")
e = lambda v: f"{100 * v:.2f}%" if isinstance(v, float) else "-"
# The GPU modes as measured: without registration if that ran, else with.
# (FP8 GPU == FP8 host compares the unregistered runs only: with user
# buffers the segments, and so which member folds which values exactly,
# differ from NCCL's chunks.)
gpu = lambda m: m if m in data else m + "_ub"
for s in sizes:
    ident = all(g(m, s, "identical") for m in data if g(m, s, "identical") is not None)
    print(f"| {s >> 20} MiB | {e(g(gpu('cn_fp8_gpu'), s, 'rel_err'))} | {e(g('cn_fp8_host', s, 'rel_err'))} | {ident} | "
          f"{same_bytes(gpu('cn_exact_gpu'), 'ring', s)} | {same_bytes('cn_exact_host', 'ring', s)} | "
          f"{same_bytes('cn_fp8_gpu', 'cn_fp8_host', s)} |")
print("\nOverheads (GPU memory per process from NVML at the end of the run; CPU seconds of the process per GB reduced, best pass)\n")
print("| mode | GPU MiB per process | " + " | ".join(f"CPU s/GB at {s >> 20} MiB" for s in sizes) + " |")
print("|---|---|" + "---|" * len(sizes))
for m in modes:
    if m not in data:
        continue
    mm = f"{min(mem[m])}–{max(mem[m])}" if mem.get(m) else "-"
    print(f"| {m} | {mm} | " + " | ".join(f(g(m, s, "cpu_s_per_GB")) for s in sizes) + " |")
