#!/usr/bin/env python3
"""Issue 13's acceptance from an examples/multigpu/run.sh output directory.

Prints, for the parts that ran:
- every run's outcome (runs.tsv): hangs (timeouts) and failures;
- Ring over airamp vs NCCL Socket (default, 4x4) per dtype and size;
- per collective-network part (cn_lo, cn_25, heads, gpu_lo, gpu_25): bus
  bandwidth per mode and size (best of the passes), compressed / Ring,
  error against the fp64 reference, bit-identity across every rank;
- the acceptance ratios: compressed (best of CollNet FP8 and INT8) / Ring
  >= 1.5x unshaped and >= 1.8x at 25 Gbit/s, on 2 GPUs, at 64 MiB and up;
- the tuner's decision digests and profile per communicator on every rank,
  the calibration time per communicator, and (heads) that NCCL ran CollNet
  with 2 nodes;
- that every rank reached its peers through the network (NET), never P2P
  or SHM.

Verdict and exit status: PASS (0) when nothing hung, no answer was wrong,
every cross-rank check held and, on 2 GPUs, the ratios met their bars; FAIL
(1) otherwise; INCOMPLETE (2) when nothing failed but a run was skipped
(budget, no namespace) or a part has no results. Only the parts in OUTDIR
(one folder each) are judged.

Usage: summarize.py OUTDIR
"""
import csv
import glob
import json
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pytorch"))
from calib_summarize import process_logs  # noqa: E402  (per-rank log parsing, shared)

MiB = 1 << 20
CN_PARTS = ("cn_lo", "cn_25", "heads", "gpu_lo", "gpu_25")
# Relative L2 error bars against the fp64 sum (docs/collnet.md: the tests'
# bars per wire format; exact bf16 results carry one bf16 rounding of the
# sum, ~0.2-0.4% at 2-8 members).
EXACT_BAR = {"bfloat16": 0.01, "float32": 1e-4}
FORMAT_BAR = {"e4m3": 0.04, "e5m2": 0.08, "int8": 0.015}
RATIO_BARS = {"cn_lo": 1.5, "cn_25": 1.8, "gpu_lo": 1.5, "gpu_25": 1.8}
NNODES = re.compile(r"\bnRanks (\d+) nNodes (\d+)")
VIA = re.compile(r"via (NET/[A-Za-z]+|P2P|SHM|COLLNET/[A-Za-z]+)")
MEMBER = re.compile(r"collnet: member (\d+) of (\d+) joined")

problems = []   # (what, detail): each fails the verdict
missing = []    # runs or parts asked for that did not measure: the verdict is INCOMPLETE
notes = []


def fail(what, detail):
    problems.append((what, detail))


def human(b):
    for shift, unit in ((30, "GiB"), (20, "MiB"), (10, "KiB")):
        if b >= 1 << shift and b % (1 << shift) == 0:
            return f"{b >> shift} {unit}"
    return f"{b} B"


def f3(v):
    return f"{v:.3f}" if isinstance(v, (int, float)) else "-"


def pct(v):
    return f"{100 * v:.2f}%" if isinstance(v, (int, float)) else "-"


def load_runs(d, mode):
    """The JSON of every pass of a mode: MODE.json, MODE-2.json, ..."""
    out = []
    for p in sorted(glob.glob(os.path.join(d, mode + ".json")) + glob.glob(os.path.join(d, mode + "-[0-9]*.json"))):
        try:
            out.append((os.path.basename(p)[:-5], json.load(open(p))))
        except (OSError, ValueError) as e:
            fail("unreadable result", f"{p}: {e}")
    return out


def modes_in(d):
    names = {os.path.basename(p)[:-5] for p in glob.glob(os.path.join(d, "*.json"))}
    return sorted({re.sub(r"-\d+$", "", n) for n in names})


def section_runs(out):
    path = os.path.join(out, "runs.tsv")
    print("## Runs\n")
    if not os.path.exists(path):
        print("no runs.tsv: nothing ran\n")
        fail("no runs", out)
        return
    rows = list(csv.DictReader(open(path), delimiter="\t"))
    counts = {}
    for r in rows:
        kind = r["status"].split(" ")[0]
        counts[kind] = counts.get(kind, 0) + 1
        if r["status"] == "ok":
            continue
        print(f"- {r['part']}/{r['run']}: {r['status']} ({r['seconds']} s)")
        where = f"{r['part']}/{r['run']}: {r['status']}"
        if r["status"].startswith("TIMEOUT"):
            fail("hang", where)
        elif r["status"].startswith("FAILED"):
            fail("failed run", where)
        elif r["status"].startswith(("skipped", "CUT")):
            missing.append(f"{r['part']}/{r['run']}: {r['status']}")
    total = sum(int(r["seconds"]) for r in rows)
    print(f"\n{len(rows)} runs, {total} s: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + "\n")


def transport_check(d, run):
    """Every process's channels went over the network, and how many nodes NCCL saw."""
    vias, nodes = {}, set()
    for path in glob.glob(os.path.join(d, run + ".nccl.*.log")):
        text = open(path, errors="replace").read()
        for v in VIA.findall(text):
            vias[v] = vias.get(v, 0) + 1
        nodes |= {(int(a), int(b)) for a, b in NNODES.findall(text)}
    return vias, nodes


def section_socket(out):
    d = os.path.join(out, "socket")
    if not os.path.isdir(d):
        print("## Ring over airamp vs NCCL Socket: not run\n")
        return
    world = None
    best = {}
    for mode in ("airamp", "socket", "socket4x4"):
        for name, data in load_runs(d, mode):
            world = data.get("world", world)
            for r in data["results"]:
                k = (r["dtype"], r["bytes"])
                cell = best.setdefault(mode, {}).setdefault(k, {"bw": 0.0, "correct": True})
                cell["bw"] = max(cell["bw"], r["busbw_GBps"])
                if not r["correct"]:
                    cell["correct"] = False
                    fail("wrong answer", f"socket/{name}: {r['dtype']} {human(r['bytes'])}")
            vias, nodes = transport_check(d, name)
            check_transport(f"socket/{name}", vias, nodes, world, 1 if mode == "airamp" else 0)
    print(f"## Ring over airamp vs NCCL Socket, {world} ranks, one per GPU, loopback (bus bandwidth GB/s, best pass)\n")
    print("| dtype | size | airamp | Socket | Socket 4x4 | airamp / best Socket | all results exact |")
    print("|---|---|---|---|---|---|---|")
    for k in sorted(best.get("airamp", {}), key=lambda k: (k[0], k[1])):
        a = best["airamp"][k]
        s, s4 = best.get("socket", {}).get(k), best.get("socket4x4", {}).get(k)
        base = max([c["bw"] for c in (s, s4) if c] or [0])
        ok = all(c["correct"] for c in (a, s, s4) if c)
        print(f"| {k[0]} | {human(k[1])} | {f3(a['bw'])} | {f3(s and s['bw'])} | {f3(s4 and s4['bw'])} | "
              f"{f3(a['bw'] / base) if base else '-'} | {'yes' if ok else 'NO'} |")
    print()


def check_transport(where, vias, nodes, world, airamp, intra_node=False):
    """intra_node: ranks share a node (heads), so P2P/SHM inside it are expected."""
    if not intra_node and (vias.get("P2P") or vias.get("SHM")):
        fail("not through the network", f"{where}: channels via P2P {vias.get('P2P', 0)}, SHM {vias.get('SHM', 0)}")
    if not vias:
        notes.append(f"{where}: no 'via ...' channel lines in the NCCL logs (transport not checked)")
    if airamp and vias and not any(v in ("NET/airamp", "COLLNET/airamp") for v in vias):
        fail("not through airamp", f"{where}: channels {vias}")
    return nodes


def error_bar(data):
    env = data.get("env", {})
    dtype = data.get("dtype", "bfloat16")
    if env.get("AIRAMP_ENABLE_FP8_ALLREDUCE") == "1" and env.get("NCCL_COLLNET_ENABLE") == "1":
        return FORMAT_BAR.get(env.get("AIRAMP_COMPRESSION_FORMAT", "e4m3"), 0.04), env.get("AIRAMP_COMPRESSION_FORMAT", "e4m3")
    return EXACT_BAR.get(dtype, 0.01), "exact"


def section_cn(out, part, gpus):
    d = os.path.join(out, part)
    if not os.path.isdir(d):
        print(f"## {part}: not run\n")
        return
    modes = modes_in(d)
    if not modes:
        print(f"## {part}: no results\n")
        missing.append(f"{part}: no results")
        return
    best, errs, ident, digests, world, nodes_wanted = {}, {}, {}, {}, None, None
    # The tuner compresses in the one format it is given: it can only be
    # asked to match Ring and that format's CollNet, not every format.
    tuner_comp = "cn_fp8"
    for mode in modes:
        for name, data in load_runs(d, mode):
            world = data.get("world", world)
            nodes_wanted = data.get("nodes", data.get("world"))
            bar, kind = error_bar(data)
            if mode == "tuner" and kind == "int8":
                tuner_comp = "cn_int8"
            differ, wrong = [], []
            for r in data["results"]:
                s = r["bytes"]
                best.setdefault(mode, {})[s] = max(best.get(mode, {}).get(s, 0.0), r["busbw_GBps"])
                errs.setdefault(mode, {})[s] = max(errs.get(mode, {}).get(s, 0.0), r["rel_err"])
                ident[mode] = ident.get(mode, True) and r["identical"]
                digests.setdefault(mode, {}).setdefault(s, set()).add(r["digest"])
                if not r["identical"]:
                    differ.append(human(s))
                if r["rel_err"] > bar:
                    wrong.append(f"{human(s)} {pct(r['rel_err'])}")
            if differ:
                fail("ranks differ", f"{part}/{name}: not bit-identical on every rank at {', '.join(differ)}")
            if wrong:
                fail("wrong answer", f"{part}/{name}: error above {pct(bar)} ({kind}) at {', '.join(wrong)}")
            vias, nodes = transport_check(d, name)
            check_transport(f"{part}/{name}", vias, nodes, world, 1, intra_node=part == "heads")
            want = {(world, nodes_wanted)}
            if nodes and nodes != want:
                fail("topology", f"{part}/{name}: NCCL saw (ranks, nodes) {sorted(nodes)}, expected {sorted(want)}")
    title = {"cn_lo": "loopback", "cn_25": "25 Gbit/s tbf (shared by all ranks)",
             "heads": "loopback, 2 nodes (collective-network heads)",
             "gpu_lo": "GPU path, loopback", "gpu_25": "GPU path, 25 Gbit/s tbf"}[part]
    print(f"## Collective network, {title}: {world} ranks, one per GPU, {nodes_wanted} nodes (GB/s, best pass)\n")
    cols = [m for m in ("ring", "ring_ub", "cn_exact", "cn_exact_gpu_ub", "cn_fp8", "cn_fp8_gpu_ub", "cn_int8", "tuner") if m in best]
    sizes = sorted(set().union(*[best[m].keys() for m in cols])) if cols else []
    ring = "ring_ub" if "ring_ub" in best else "ring"
    comp = [m for m in ("cn_fp8", "cn_int8", "cn_fp8_gpu_ub") if m in best]
    print("| size | " + " | ".join(cols) + f" | compressed / Ring | tuner / best of (Ring, {tuner_comp}) | errors (max over passes) | identical |")
    print("|---|" + "---|" * len(cols) + "---|---|---|---|")
    for s in sizes:
        cells = [f3(best[m].get(s)) for m in cols]
        r = best.get(ring, {}).get(s)
        c = max([best[m].get(s, 0.0) for m in comp] or [0.0])
        fixed = [best[m].get(s) for m in ("ring", tuner_comp) if m in best and best[m].get(s)]
        t = best.get("tuner", {}).get(s)
        e = ", ".join(f"{m} {pct(errs[m].get(s))}" for m in cols if m in errs and s in errs[m] and m not in ("ring", "ring_ub"))
        print(f"| {human(s)} | " + " | ".join(cells) + f" | {f3(c / r) if r and c else '-'} | "
              f"{f3(t / max(fixed)) if t and fixed else '-'} | {e or '-'} | "
              f"{'yes' if all(ident.get(m, True) for m in cols) else 'NO'} |")
    # Exact CollNet equals Ring bit for bit with 2 members (one rounding of a + b either way).
    if world == 2 and "cn_exact" in digests and "ring" in digests:
        for s in sorted(digests["cn_exact"]):
            a, b = digests["cn_exact"][s], digests["ring"].get(s)
            if b is not None and (len(a) != 1 or a != b):
                fail("wrong answer", f"{part}: exact CollNet differs from Ring at {human(s)} (2 ranks)")
    print()
    ratios(part, gpus, best, ring, comp, sizes)
    cross_rank(d, part, world, nodes_wanted)


def ratios(part, gpus, best, ring, comp, sizes):
    bar = RATIO_BARS.get(part)
    big = [s for s in sizes if s >= 64 * MiB and best.get(ring, {}).get(s)]
    if bar is None or not comp or not big:
        return
    applies = gpus == 2
    print(f"Acceptance, {part}: compressed / Ring >= {bar}x at 64 MiB and up"
          + ("" if applies else f" (the issue's bar is for 2 GPUs; {gpus} here: reported, not judged)") + ":\n")
    for s in big:
        c = max(best[m].get(s, 0.0) for m in comp)
        which = max(comp, key=lambda m: best[m].get(s, 0.0))
        ratio = c / best[ring][s]
        verdict = ("ok" if ratio >= bar else "FAIL") if applies else "-"
        print(f"- {human(s)}: {ratio:.2f}x ({which}) {verdict}")
        if applies and ratio < bar:
            fail("ratio", f"{part}: compressed / Ring {ratio:.2f}x < {bar}x at {human(s)}")
    print()


def cross_rank(d, part, world, nodes_wanted):
    runs = sorted({os.path.basename(p).split(".nccl.")[0] for p in glob.glob(os.path.join(d, "*.nccl.*.log"))}
                  | {os.path.basename(p)[:-5] for p in glob.glob(os.path.join(d, "*.json"))})
    calib = []
    for run in runs:
        procs = process_logs(d, run)
        for p in procs:
            for member, n, comm, what, ms in p["calib"]:
                calib.append((run, comm, int(member), int(n), float(ms)))
        if not run.startswith("tuner"):
            continue
        digests, profiles = {}, {}
        for p in procs:
            for comm, calls, digest in p["digest"]:
                digests.setdefault(comm, []).append((p["rank"], calls, digest))
            for version, comm, cal, source, profile, crossover in p["tuner"]:
                profiles.setdefault(comm, []).append((p["rank"], (cal, source, profile, crossover)))
        if not digests:
            fail("no decisions", f"{part}/{run}: no tuner decision digest in any rank's log")
        for comm, seen in digests.items():
            ranks = sorted(r for r, _, _ in seen if r is not None)
            same = len({(c, g) for _, c, g in seen}) == 1
            print(f"- {part}/{run}, comm {comm}: decision digests from {len(seen)} of {world} ranks "
                  f"{ranks}: {'identical' if same else 'DIFFERENT'} ({seen[0][1]} decisions, {seen[0][2]})")
            if not same:
                fail("decisions differ", f"{part}/{run} comm {comm}: {seen}")
            if len(seen) != world:
                fail("decisions missing", f"{part}/{run} comm {comm}: digests from {len(seen)} of {world} ranks")
        for comm, seen in profiles.items():
            same = len({s for _, s in seen}) == 1
            print(f"- {part}/{run}, comm {comm}: tuner profile on {len(seen)} ranks: {'identical' if same else 'DIFFERENT'}")
            if not same:
                fail("profiles differ", f"{part}/{run} comm {comm}")
    if calib:
        by_comm = {}
        for run, comm, member, n, ms in calib:
            by_comm.setdefault((run, comm, n), []).append(ms)
        times = sorted(max(v) for v in by_comm.values())
        members = sorted({n for _, _, n in by_comm})
        print(f"- {part}: calibration in connect, {len(by_comm)} communicators (one a run) of {members} members: "
              f"slowest member per communicator {times[0]:.1f} .. {times[-1]:.1f} ms "
              f"(median {times[len(times) // 2]:.1f} ms)")
        if members != [nodes_wanted]:
            fail("collnet members", f"{part}: collective-network groups of {members} members, "
                 f"expected {nodes_wanted} (one per node)")
    elif part in ("cn_lo", "cn_25", "heads"):
        fail("no calibration", f"{part}: no 'collnet calibration' line in any log (did CollNet connect?)")
    if part == "heads":
        ran = set()
        for run in runs:
            for p in process_logs(d, run):
                for algos in p["algos"].values():
                    ran |= algos
        coll = sorted(a for a in ran if a.startswith("COLLNET"))
        print(f"- heads: NCCL ran {', '.join(sorted(ran)) or 'nothing logged'}")
        if not coll:
            fail("heads", "heads: NCCL never ran a CollNet algorithm")
    print()


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "."
    gpus = None
    for p in glob.glob(os.path.join(out, "*", "*.json")):
        try:
            gpus = json.load(open(p)).get("world") or gpus
        except (OSError, ValueError):
            pass
        if gpus:
            break
    print(f"# airamp multi-GPU validation (issue 13): {out}, {gpus} GPUs\n")
    section_runs(out)
    section_socket(out)
    for part in CN_PARTS:
        if os.path.isdir(os.path.join(out, part)):   # run.sh makes a folder per part it runs
            section_cn(out, part, gpus)
    print("## Verdict\n")
    for n in notes:
        print(f"- note: {n}")
    for m in missing:
        print(f"- INCOMPLETE: {m}")
    for what, detail in problems:
        print(f"- FAIL ({what}): {detail}")
    verdict = "FAIL" if problems else "INCOMPLETE" if missing else "PASS"
    print(f"\nno hang, no wrong answer, cross-rank checks{' and the 2-GPU ratios' if gpus == 2 else ''} "
          f"(parts in this directory): {verdict}")
    sys.exit({"PASS": 0, "FAIL": 1, "INCOMPLETE": 2}[verdict])


if __name__ == "__main__":
    main()
