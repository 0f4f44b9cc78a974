#!/usr/bin/env python3
"""Summary of train_parity.sh: per run the final training loss, the mean of
the last 50 steps, the final evaluation loss and the wall time per step;
the exact runs' seed-to-seed noise band; whether each compressed run is
within it (or within 1% of exact when the band is smaller); and a PNG of
the loss curves. Writes OUTDIR/summary.md and OUTDIR/loss_curves.png.

Usage: train_parity_summarize.py OUTDIR
"""
import csv
import json
import os
import statistics
import sys

RUNS = ["exact_a", "exact_b", "int8_a", "e4m3_a", "e5m2_a"]
TAIL = 50


def load(out, name):
    path = os.path.join(out, name + ".csv")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    meta_path = os.path.join(out, name + ".json")
    meta = json.load(open(meta_path)) if os.path.exists(meta_path) else {}
    loss = [float(r["loss"]) for r in rows]
    evals = [(int(r["step"]), float(r["eval_loss"])) for r in rows if r["eval_loss"]]
    secs = [float(r["step_seconds"]) for r in rows]
    return {
        "steps": len(rows),
        "loss": loss,
        "evals": evals,
        "final": loss[-1],
        "tail": statistics.fmean(loss[-TAIL:]),
        "eval": evals[-1][1] if evals else float("nan"),
        # The first steps include warm-up (allocation, NCCL connections).
        "step_ms": 1e3 * statistics.median(secs[10:] or secs),
        "complete": meta.get("steps") == len(rows),
        "identical": meta.get("weights_identical_on_all_ranks"),
    }


def main():
    out = sys.argv[1]
    runs = {n: r for n in RUNS if (r := load(out, n)) is not None}
    lines = []
    say = lines.append
    say("| run | steps | final loss | mean last 50 | final eval loss | ms / step | weights identical on both ranks |")
    say("|---|---:|---:|---:|---:|---:|---|")
    for n, r in runs.items():
        steps = f"{r['steps']}" + ("" if r["complete"] else " (INCOMPLETE)")
        say(f"| {n} | {steps} | {r['final']:.4f} | {r['tail']:.4f} | {r['eval']:.4f} | {r['step_ms']:.1f} | {r['identical']} |")
    a, b = runs.get("exact_a"), runs.get("exact_b")
    if a and b:
        say("")
        say("Noise band = |exact_a - exact_b| (two seeds); a compressed run passes when "
            "|run - exact_a| <= max(band, 1% of exact_a).")
        say("")
        say("| run | metric | run - exact_a | band | 1% of exact | verdict |")
        say("|---|---|---:|---:|---:|---|")
        for n in ("int8_a", "e4m3_a", "e5m2_a"):
            r = runs.get(n)
            if not r:
                continue
            for key, label in (("tail", "mean last 50"), ("eval", "final eval"), ("final", "final step")):
                band = abs(a[key] - b[key])
                diff = r[key] - a[key]
                limit = max(band, 0.01 * a[key])
                ok = r["complete"] and abs(diff) <= limit
                say(f"| {n} | {label} | {diff:+.4f} | {band:.4f} | {0.01 * a[key]:.4f} | {'within' if ok else 'OUTSIDE'} |")
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(text + "\n")
    plot(out, runs)


def plot(out, runs):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not available: no plot (the CSVs have the curves)")
        return
    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(13, 4.5))
    for n, r in runs.items():
        k = 20
        smooth = [statistics.fmean(r["loss"][max(0, i - k + 1) : i + 1]) for i in range(len(r["loss"]))]
        (line,) = ax.plot(smooth, label=f"{n} (train, {k}-step mean)", linewidth=1)
        for a in (ax, zoom):
            if r["evals"]:
                xs, ys = zip(*r["evals"])
                a.plot(xs, ys, "o--", color=line.get_color(), markersize=3, linewidth=0.8,
                       label=f"{n} (eval)" if a is ax else None)
        half = len(smooth) // 2
        zoom.plot(range(half, len(smooth)), smooth[half:], color=line.get_color(), linewidth=1, label=n)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / byte)")
    ax.set_title("byte-level transformer, DDP 2 ranks, bf16 gradients via airamp CollNet")
    ax.legend(fontsize=7)
    zoom.set_xlabel("step")
    zoom.set_title("second half")
    zoom.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(out, "loss_curves.png")
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
