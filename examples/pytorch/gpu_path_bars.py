#!/usr/bin/env python3
"""Issue 9's bars over several gpu_path_compare.sh runs: every ABBA pass of
every run against the Ring of the same pass, leaving out the cells where a
slow spell of the host shows (Ring's or that mode's passes more than 15%
apart at that size, as gpu_path_summarize.py flags them).

    gpu_path_bars.py --unshaped OUT1 [OUT2 ...] [--shaped OUT25 ...]

Prints, per check and size, the range of the kept ratios, how many met the
bar, and how many cells were left out."""
import argparse
import sys

from gpu_path_passes import load_passes, slow_spell

# (check, link, modes in order of preference, bar): the registered-buffer
# mode where a run has it, as the GPU rows are measured.
CHECKS = [
    ("FP8 GPU / Ring", "unshaped", ["cn_fp8_gpu_ub", "cn_fp8_gpu"], 1.5),
    ("exact GPU / Ring", "unshaped", ["cn_exact_gpu_ub", "cn_exact_gpu"], 0.9),
    ("host path: exact / Ring", "unshaped", ["cn_exact_host"], 0.8),
    ("FP8 GPU / Ring", "shaped", ["cn_fp8_gpu_ub", "cn_fp8_gpu"], 1.8),
    ("host path: FP8 / Ring", "shaped", ["cn_fp8_host"], 1.3),
]


def cells(outs, candidates):
    """{size: ([kept ratios], number left out)} over every pass of every folder."""
    kept, left_out = {}, {}
    for out in outs:
        passes = load_passes(out, ["ring"] + candidates)
        mode = next((m for m in candidates if any(m in runs for runs in passes.values())), None)
        if mode is None:
            continue
        for runs in passes.values():
            ring, bw = runs.get("ring", {}), runs.get(mode, {})
            for size in set(ring) & set(bw):
                kept.setdefault(size, [])
                left_out.setdefault(size, 0)
                if slow_spell(passes, mode, size):
                    left_out[size] += 1
                else:
                    kept[size].append(bw[size] / ring[size])
    return {size: (kept[size], left_out[size]) for size in kept}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--unshaped", nargs="*", default=[], metavar="OUT")
    p.add_argument("--shaped", nargs="*", default=[], metavar="OUT")
    args = p.parse_args()
    if not args.unshaped and not args.shaped:
        p.error("give --unshaped and/or --shaped output folders")
    print("| check | link | bar | size | cells kept | range | met | left out (slow spell) |")
    print("|---|---|---|---|---|---|---|---|")
    for check, link, candidates, bar in CHECKS:
        for size, (kept, left) in sorted(cells(getattr(args, link), candidates).items()):
            met = sum(r >= bar for r in kept)
            span = f"{min(kept):.2f}–{max(kept):.2f}" if kept else "-"
            verdict = "-" if not kept else "all" if met == len(kept) else f"{met} of {len(kept)}"
            print(f"| {check} | {link} | ≥ {bar} | {size >> 20} MiB | {len(kept)} | {span} | {verdict} | {left} |")


if __name__ == "__main__":
    sys.exit(main())
