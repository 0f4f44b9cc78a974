#!/usr/bin/env python3
"""Summary of latency_same_process.py's rounds; no torch needed.

  python3 latency_rounds.py airamp,Socket RUN.jsonl [RUN.jsonl ...]

Pools the rounds of every file (each file's process pairs stay apart) and
prints, per process pair and over all of them, each network's median us per
call and the median of the per-round ratios of the first network to the
second. A round's two blocks ran one after the other in the same processes.
With six process pairs or more it adds a 95 % interval of that pooled
median, resampling whole process pairs (a pair's rounds share its pace);
with fewer, the range of the pairs' medians is all there is.
"""
import json
import random
import statistics
import sys

# Draws of the process pairs for the interval of the pooled median.
DRAWS = 2000
# Fewer pairs than this draw one pair for all often enough (1 in 27 for
# three) that the "interval" is just the range of the pairs' medians.
INTERVAL_PAIRS = 6


def load(paths):
    """Every block of every file; a process pair is (file, process)."""
    rows = []
    for path in paths:
        for line in open(path):
            row = json.loads(line)
            row["process"] = (path, row["process"])
            rows.append(row)
    return rows


def by_process(rows):
    """Each process pair's blocks, in the pairs' order."""
    pairs = {}
    for r in rows:
        pairs.setdefault(r["process"], []).append(r)
    return dict(sorted(pairs.items()))


def round_ratios(rows):
    """Network 0's time over network 1's, one per round that has both."""
    by_round = {}
    for r in rows:
        by_round.setdefault((r["process"], r["round"]), {})[r["net"]] = r["us"]
    return [t[0] / t[1] for _, t in sorted(by_round.items()) if 0 in t and 1 in t]


def describe(nets, rows):
    """Each network's median us, then the median ratio; and the ratios."""
    us = {i: [r["us"] for r in rows if r["net"] == i] for i in range(len(nets))}
    meds = "  ".join(f"{nets[i]} {statistics.median(v):6.1f} us" for i, v in us.items() if v)
    ratios = round_ratios(rows)
    if not ratios:
        raise SystemExit(f"no round timed both {nets[0]} and {nets[1]}")
    return f"{meds}  {nets[0]} / {nets[1]} median {statistics.median(ratios):.3f}", ratios


def report(nets, rows):
    """The lines latency_same_process.py prints at the end."""
    if not all(r["correct"] for r in rows):
        raise SystemExit("WRONG: an allreduce returned a wrong sum")
    lines, per_process = [], []
    pooled = len({path for path, _ in (r["process"] for r in rows)}) > 1
    for process, blocks in by_process(rows).items():
        text, ratios = describe(nets, blocks)
        per_process.append(statistics.median(ratios))
        name = f"{process[0]} process {process[1]}" if pooled else f"process {process[1]}"
        lines.append(f"{name}: {text} (rounds {' '.join(f'{x:.2f}' for x in ratios)})")
    text, ratios = describe(nets, rows)
    lines.append(f"all {len(ratios)} rounds of {len(per_process)} process pairs: {text}, "
                 f"{sum(r <= 1.0 for r in ratios)} of {len(ratios)} at or under 1.0; "
                 f"process pairs' medians {min(per_process):.3f}-{max(per_process):.3f}")
    if len(per_process) >= INTERVAL_PAIRS:
        lo, hi = interval(rows)
        lines.append(f"95% interval of that median, process pairs resampled {DRAWS} times: {lo:.3f}-{hi:.3f}")
    return lines


def interval(rows):
    """2.5th and 97.5th percentile of the pooled median over resampled process pairs."""
    ratios = {p: round_ratios(blocks) for p, blocks in by_process(rows).items()}
    pairs, draw = list(ratios), random.Random(1)
    medians = sorted(statistics.median([x for p in draw.choices(pairs, k=len(pairs)) for x in ratios[p]])
                     for _ in range(DRAWS))
    return medians[DRAWS * 25 // 1000], medians[DRAWS * 975 // 1000 - 1]


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    nets = sys.argv[1].split(",")
    for line in report(nets, load(sys.argv[2:])):
        print(line)


if __name__ == "__main__":
    main()
