#!/usr/bin/env python3
"""Issue 10's acceptance table from collnet_compare.sh output directories
(one per link): per size, bus bandwidth of Ring, CollNet FP8 and the tuner's
choice, tuner / best of (Ring, CollNet FP8) against the bars (>= 0.9 at every
size, >= 0.95 from 4 MiB), and the algorithm NCCL ran on each rank in the
tuner runs (from the per-process NCCL_DEBUG_FILE logs), with a check that
every rank ran the same. Also per communicator: what the collective
network's members agreed on in connect and how long calibration took, the
profile every rank's tuner logged, and the tuner's decision digests.

Usage: calib_summarize.py OUTDIR [OUTDIR ...]   (exit status 1 if a bar or
a cross-rank check fails)
"""
import glob
import json
import os
import re
import sys

CALIB = re.compile(r"collnet calibration, member (\d+) of (\d+), comm (0x[0-9a-f]+): (.*); ([0-9.]+) ms in connect")
TUNER = re.compile(r"tuner v(\d+): .*?comm (0x[0-9a-f]+).*?; calibration (.*?); profile \((.*?)\): (.*?); model crossover: (.*)$", re.MULTILINE)
DIGEST = re.compile(r"tuner: comm (0x[0-9a-f]+): (\d+) decisions, digest (0x[0-9a-f]+)")
RANK = re.compile(r"\brank (\d+) nranks (\d+)\b", re.IGNORECASE)
ALGO = re.compile(r"AllReduce: (\d+) Bytes -> Algo (\S+) proto (\S+)")


def passes(out, mode, ext):
    """The files of every pass of `mode`, in pass order: m.EXT, m-2.EXT, ..."""
    found = []
    for path in glob.glob(os.path.join(out, f"{mode}*{ext}")):
        m = re.fullmatch(re.escape(mode) + r"(?:-(\d+))?" + re.escape(ext), os.path.basename(path))
        if m:
            found.append((int(m.group(1) or 1), path))
    return [p for _, p in sorted(found)]


def best_rows(out, mode):
    """bytes -> best busbw over the mode's passes (m.json, m-2.json, ...)."""
    rows = {}
    for p in passes(out, mode, ".json"):
        for r in json.load(open(p))["results"]:
            rows[r["bytes"]] = max(rows.get(r["bytes"], 0.0), r["busbw_GBps"])
    return rows


def process_logs(out, run):
    """Per process of one run: its rank and what it logged."""
    procs = []
    for path in sorted(glob.glob(os.path.join(out, run + ".nccl.*.log"))):
        text = open(path, errors="replace").read()
        m = RANK.search(text)
        procs.append({
            "path": os.path.basename(path),
            "rank": int(m.group(1)) if m else None,
            "algos": {},
            "calib": CALIB.findall(text),
            "tuner": TUNER.findall(text),
            "digest": DIGEST.findall(text),
        })
        for b, a, p in ALGO.findall(text):
            procs[-1]["algos"].setdefault(int(b), set()).add(f"{a}/{p}")
    return sorted(procs, key=lambda p: (p["rank"] is None, p["rank"] or 0, p["path"]))


def human(b):
    for shift, unit in ((30, "GiB"), (20, "MiB"), (10, "KiB")):
        if b >= 1 << shift:
            return f"{b >> shift} {unit}"
    return f"{b} B"


def summarize(out):
    ok = True
    print(f"## {out}\n")
    ring, fp8, tuner, ring_cn = (best_rows(out, m) for m in ("ring", "cn_fp8", "tuner", "ring_cn"))
    # From the logs, so a tuner pass that wrote no JSON (it crashed or
    # timed out) is still checked.
    runs = [os.path.basename(p)[:-len(".log")] for p in passes(out, "tuner", ".log")]
    runs = [r for r in runs if glob.glob(os.path.join(out, r + ".nccl.*.log"))]
    per_run = {r: process_logs(out, r) for r in runs}
    for run, procs in per_run.items():
        print(f"### {run}: {len(procs)} processes")
        for p in procs:
            for member, n, comm, what, ms in p["calib"]:
                print(f"- rank {p['rank']}: collective network member {member} of {n}, comm {comm}: "
                      f"calibration {ms} ms in connect: {what}")
        profiles = {}
        for p in procs:
            for version, comm, calib, source, profile, crossover in p["tuner"]:
                profiles.setdefault(comm, []).append((p["rank"], f"{calib}; ({source}) {profile}; {crossover}"))
        for comm, seen in profiles.items():
            same = len({s for _, s in seen}) == 1
            ok &= same
            print(f"- comm {comm}: tuner profile on ranks {[r for r, _ in seen]}: "
                  f"{'identical' if same else 'DIFFERENT'}: {seen[0][1]}")
            if not same:
                for r, s in seen:
                    print(f"  - rank {r}: {s}")
        digests = {}
        for p in procs:
            for comm, calls, digest in p["digest"]:
                digests.setdefault(comm, []).append((p["rank"], calls, digest))
        for comm, seen in digests.items():
            same = len({(c, d) for _, c, d in seen}) == 1
            ok &= same
            print(f"- comm {comm}: decision digests {seen}: {'identical' if same else 'DIFFERENT'}")
        print()
    sizes = sorted(set(ring) | set(fp8) | set(tuner))
    # NCCL logs "AllReduce: N Bytes -> Algo ..." on rank 0 only; every
    # rank's choices are compared through the tuner's decision digests
    # above.
    # With ring_cn measured (Ring forced while CollNet is enabled, as in
    # the tuner's run), a second ratio isolates the tuner's decision from
    # what enabling CollNet costs NCCL's Ring itself.
    in_setup = bool(ring_cn)
    extra_head = " Ring, CollNet on GB/s | tuner / best (CollNet on) |" if in_setup else ""
    print("| size | Ring GB/s | CollNet FP8 GB/s | tuner GB/s | tuner / best | bar |" + extra_head
          + " NCCL ran (tuner runs, rank 0) |")
    print("|---|---|---|---|---|---|" + ("---|---|" if in_setup else "") + "---|")
    worst = worst_in_setup = None
    for s in sizes:
        r, f, t = ring.get(s), fp8.get(s), tuner.get(s)
        rc = ring_cn.get(s)
        best_cn = max(v for v in (rc, f) if v is not None) if (rc or f) else None
        ratio_cn = t / best_cn if t and best_cn else None
        best = max(v for v in (r, f) if v is not None) if (r or f) else None
        ratio = t / best if t and best else None
        bar = 0.95 if s >= 4 << 20 else 0.9
        passed = ratio is not None and ratio >= bar
        ok &= passed
        worst = ratio if worst is None or (ratio is not None and ratio < worst) else worst
        ran = set()
        for procs in per_run.values():
            for p in procs:
                ran |= p["algos"].get(s, set())
        fmt = lambda v: f"{v:.3f}" if v is not None else "-"
        extra = ""
        if in_setup:
            if ratio_cn is not None and (worst_in_setup is None or ratio_cn < worst_in_setup):
                worst_in_setup = ratio_cn
            verdict = "ok" if ratio_cn is not None and ratio_cn >= bar else "below"
            extra = f" {fmt(rc)} | {fmt(ratio_cn)} ({verdict}) |"
        print(f"| {human(s)} | {fmt(r)} | {fmt(f)} | {fmt(t)} | {fmt(ratio)} | {'ok' if passed else 'FAIL'} >= {bar} |"
              + extra + f" {', '.join(sorted(ran)) or '-'} |")
    print(f"\nworst tuner / best: {worst if worst is None else f'{worst:.3f}'}")
    if in_setup:
        print(f"worst tuner / best with Ring measured with CollNet on: "
              f"{worst_in_setup if worst_in_setup is None else f'{worst_in_setup:.3f}'}")
    print()
    return ok


def main():
    dirs = sys.argv[1:] or ["."]
    ok = all([summarize(d) for d in dirs])
    print("all bars and cross-rank checks:", "PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
