#!/usr/bin/env python3
"""Turn ghost_probe.py's JSON into docs/results/ghost-kernels-h200.md (markdown on stdout).

    python3 examples/ghost/summarize.py ghost.json > docs/results/ghost-kernels-h200.md

Everything below the "Conclusion" heading is computed from the JSON; the conclusion
itself is left for a person to write from the verdict table. Stdlib only.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ghost_probe import WORKLOADS, cost_table, nvml_table, table  # noqa: E402

WITHIN = 0.10  # issue 12 acceptance: within 10 % of back-to-back
LONG_GAPS = (20, 100, 500)


def ok_variants(res):
    return {n: v for n, v in res["variants"].items() if v.get("status") == "ok"}


def verdict(res, wname):
    """Per variant: the worst ratio over the long gaps, to its own g=0 and to plain's g=0,
    and how much of plain's excess it removes."""
    gaps = [g for g in res["meta"]["gaps_ms"] if g in LONG_GAPS]
    plain = res["variants"].get("plain", {}).get("workloads", {}).get(wname, {})
    p0 = plain.get("0", {}).get("median_gpu_us")
    rows = []
    for name, v in ok_variants(res).items():
        w = v["workloads"].get(wname, {})
        own0 = w.get("0", {}).get("median_gpu_us")
        if not own0 or not gaps:
            continue
        worst_own = max(w[str(g)]["median_gpu_us"] / own0 for g in gaps)
        worst_plain = max(w[str(g)]["median_gpu_us"] / p0 for g in gaps) if p0 else None
        removed = []
        for g in gaps:
            pe = plain.get(str(g), {}).get("median_gpu_us")
            if pe is None or p0 is None or pe - p0 <= 0:
                continue
            removed.append(1 - (w[str(g)]["median_gpu_us"] - own0) / (pe - p0))
        rows.append((name, worst_own, worst_plain, min(removed) if removed else None))
        if w.get("0", {}).get("median_incl_pre_us"):
            # the pre-kernel may just absorb the penalty: judge the pair too
            i0 = w["0"]["median_incl_pre_us"]
            worst_i = max(w[str(g)]["median_incl_pre_us"] / i0 for g in gaps)
            rows.append((name + ", incl. the pre-kernel", worst_i, None, None))
    return rows


def verdict_table(res, wname):
    lines = ["| variant | worst g>=20 ms / own g=0 | worst g>=20 ms / plain g=0 | share of plain's penalty removed (worst gap) | within 10 %? |",
             "|---|---|---|---|---|"]
    for name, own, pl, rem in verdict(res, wname):
        lines.append(f"| {name} | {own:.2f}x | {'n/a' if pl is None else f'{pl:.2f}x'} | "
                     f"{'n/a' if rem is None else f'{rem * 100:.0f} %'} | {'yes' if own <= 1 + WITHIN else 'no'} |")
    return "\n".join(lines)


def cost_delta(res):
    c = res.get("costs", {})
    if "status" in c:
        return f"costs: {c['status']}"
    base = [r for n, r in c.items() if n.startswith("baseline") and "tflops" in r]
    if not base:
        return "costs: no baseline"
    bt = sum(r["tflops"] for r in base) / len(base)
    bp = [r.get("busy_power_w") for r in base if r.get("busy_power_w") is not None]
    ip = [r.get("idle_power_w") for r in base if r.get("idle_power_w") is not None]
    spread = (max(r["tflops"] for r in base) - min(r["tflops"] for r in base)) / bt * 100
    lines = [f"Baselines: {bt:.1f} TFLOP/s mean (spread between first and last: {spread:.2f} %)"
             + (f", busy {sum(bp) / len(bp):.0f} W" if bp else "") + (f", idle {sum(ip) / len(ip):.0f} W." if ip else "."),
             "", "| ghost | throughput vs baseline | busy power vs baseline | idle power vs baseline | within 1 %? |",
             "|---|---|---|---|---|"]
    for name, r in c.items():
        if name.startswith("baseline") or "tflops" not in r:
            continue
        d = (r["tflops"] / bt - 1) * 100
        dp = f"{r['busy_power_w'] - sum(bp) / len(bp):+.0f} W" if bp and r.get("busy_power_w") is not None else "n/a"
        di = f"{r['idle_power_w'] - sum(ip) / len(ip):+.0f} W" if ip and r.get("idle_power_w") is not None else "n/a"
        lines.append(f"| {name} | {d:+.2f} % | {dp} | {di} | {'yes' if d >= -1.0 else 'no'} |")
    return "\n".join(lines)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: summarize.py ghost.json")
    with open(sys.argv[1]) as f:
        res = json.load(f)
    m = res["meta"]
    g = m.get("gpu", {})
    fake = m.get("FAKE_TIMINGS")
    out = []
    p = out.append
    p("# Ghost kernels on the H200: what slows the first kernel after a CPU gap")
    p("")
    if fake:
        p("> **FAKE timings (`--cpu-smoke`): this file shows the layout only, not a measurement.**")
        p("")
    p(f"Issue 12. One run of `examples/ghost/ghost_probe.py{' --quick' if m.get('quick') else ''}` "
      f"({m.get('started_utc')}, {m.get('wall_s')} s): {g.get('gpu')}, {g.get('sms')} SMs, "
      f"L2 {int(g.get('l2_bytes', 0)) >> 20} MiB, torch {g.get('torch')}, CUDA {g.get('cuda')}, "
      f"NCCL {g.get('nccl')}; max SM/mem clock {g.get('max_sm_mhz')}/{g.get('max_mem_mhz')} MHz; "
      f"spin kernel: {g.get('spin_backend')}; NVML: {m.get('monitor')}.")
    p("")
    if m.get("aborted"):
        p(f"> **The run was cut short ({m['aborted']}); variants missing below did not run.**")
        p("")
    p("Reproduce on the GPU host (root, GPU otherwise idle):")
    p("")
    p("```")
    p("python3 examples/ghost/ghost_probe.py --out ghost.json")
    p("python3 examples/ghost/summarize.py ghost.json > docs/results/ghost-kernels-h200.md")
    p("```")
    p("")
    p("Method: 3 back-to-back steps, stream sync, CPU sleep g ms, NVML read, then the timed "
      "step (CUDA events; wall = launch to completion). Medians over "
      + ", ".join(f"{v} (g={k})" for k, v in m.get("reps", {}).items())
      + " samples. Ratios are to the same row's g=0. See examples/ghost/README.md for each variant.")
    p("")
    p("## Conclusion")
    p("")
    p("_To write from the verdict tables below: which variant (if any) brings every gap >= 20 ms "
      "within 10 % of back-to-back for both workloads, at what cost; otherwise what the data "
      "points to as the cause._")
    p("")
    for wname in WORKLOADS:
        p(f"## Verdict: {wname}")
        p("")
        p(verdict_table(res, wname))
        p("")
    p("## Cost of each ghost (back-to-back 4096³ bf16 matmuls, NVML energy)")
    p("")
    p(cost_delta(res))
    p("")
    p(cost_table(res))
    p("")
    for wname in WORKLOADS:
        p(f"## {wname}: GPU time of the first step after the gap, median µs (ratio to g=0)")
        p("")
        p(table(res, wname))
        p("")
        if wname == "decode":
            p("## decode: GPU time of its first kernel only (the LayerNorm), median µs (ratio to g=0)")
            p("")
            p("If the whole penalty sits in this kernel, something is woken once; if every kernel "
              "of the step is slower, the clocks or the memory are.")
            p("")
            p(table(res, wname, "median_first_kernel_us", "ratio_first"))
            p("")
        p(f"## {wname}: wall time, launch to completion, median µs (ratio)")
        p("")
        p(table(res, wname, "median_wall_us", "ratio_wall"))
        p("")
        p(f"## {wname}: NVML just before the launch (median SM/mem MHz, W, pstate, clock-event reasons)")
        p("")
        p(nvml_table(res, wname))
        p("")
    notes = [(n, v.get("note")) for n, v in res["variants"].items() if v.get("note")]
    if notes:
        p("## Variant notes (from the run)")
        p("")
        for n, note in notes:
            p(f"- **{n}**: {note}")
        p("")
    failed = [c for c in res.get("clock_log", []) if not c.get("ok")]
    if failed:
        p("## nvidia-smi calls that failed")
        p("")
        for c in failed:
            p(f"- `nvidia-smi {' '.join(c['cmd'])}`: {c['out']}")
        p("")
    q = m.get("nvidia_smi_q_at_start")
    if q:
        p("<details><summary>nvidia-smi -q -d PERFORMANCE,CLOCK,POWER at the start of the run</summary>")
        p("")
        p("```")
        p(q.strip())
        p("```")
        p("</details>")
        p("")
    print("\n".join(out))


if __name__ == "__main__":
    main()
