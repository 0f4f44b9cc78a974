"""The ABBA passes of one gpu_path_compare.sh output folder, and the sizes
where a slow spell of the host shows: shared by gpu_path_summarize.py and
gpu_path_bars.py."""
import json
import os

# Two passes of one mode more than this far apart at a size: the host was
# slower during part of the call (a virtual machine's noisy neighbours).
SPREAD = 0.15


def load_passes(out, modes):
    """{pass number: {mode: {bytes: busbw GB/s}}}: MODE.json is pass 1,
    MODE-2.json pass 2, and so on."""
    passes = {}
    for m in modes:
        for k in range(1, 10):
            p = os.path.join(out, m + (".json" if k == 1 else f"-{k}.json"))
            if os.path.exists(p):
                passes.setdefault(k, {})[m] = {r["bytes"]: r["busbw_GBps"] for r in json.load(open(p))["results"]}
    return passes


def spreads(passes, mode, size):
    """How far apart a mode's passes are at a size (max / min - 1), or None
    with fewer than two passes."""
    bws = [runs[mode][size] for runs in passes.values() if runs.get(mode, {}).get(size)]
    return max(bws) / min(bws) - 1 if len(bws) > 1 else None


def slow_spell(passes, mode, size):
    """Whether the passes of `mode` or of Ring differ by more than SPREAD at
    `size`: a ratio of that mode to Ring there says more about the host
    than about the modes."""
    return any((spreads(passes, m, size) or 0) > SPREAD for m in ("ring", mode))
