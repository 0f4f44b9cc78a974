#!/usr/bin/env python3
"""Turn run.sh's raw.jsonl into results.json and markdown tables on stdout.

Usage: summarize.py OUTDIR   (reads OUTDIR/raw.jsonl and OUTDIR/meta.json)
"""

import json
import os
import sys


def load(path):
    recs = []
    if not os.path.exists(path):
        return recs
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:
                recs.append({"q": "?", "test": "?", "item": "?", "outcome": "unparsable",
                             "detail": line[:200]})
    return recs


def fmt(v, nd=1):
    if v is None:
        return "–"
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:.0f}"
        if 0 < abs(v) < 1:
            return f"{v:.3f}"
        return f"{v:.{nd}f}"
    return str(v)


def place(r):
    p = r.get("where", "-")
    if r.get("mps"):
        p += "+MPS"
    if r.get("tag"):
        p += f" [{r['tag']}]"
    return p


def cell(r):
    o = r.get("outcome", "?")
    ms = r.get("ms")
    s = o
    if ms is not None and o not in ("info",):
        s += f" {fmt(ms)}"
    if "c_blocked_before_b" in r:
        s += " [C was blocked]" if r["c_blocked_before_b"] else " [C had returned]"
    if r.get("after_release_ms") is not None:
        s += f" (+{fmt(r['after_release_ms'])})"
    if o.split()[0].split("+")[-1] in ("error", "KILLED", "CRASHED", "NO", "WRONG", "STUCK", "missing"):
        d = r.get("detail", "")
        if d:
            s += f": {d[:90]}"
    return s.replace("|", "/")


def pivot(recs, row_key, col_key, title, row_label):
    cols, rows, cells = [], [], {}
    for r in recs:
        c, k = col_key(r), row_key(r)
        if c not in cols:
            cols.append(c)
        if k not in rows:
            rows.append(k)
        cells[(k, c)] = cell(r)
    if not recs:
        return []
    out = [f"### {title}", "", "| " + row_label + " | " + " | ".join(cols) + " |",
           "|---" * (len(cols) + 1) + "|"]
    for k in rows:
        out.append("| " + k + " | " + " | ".join(cells.get((k, c), "") for c in cols) + " |")
    out.append("")
    return out


def table(recs, cols, title):
    if not recs:
        return []
    out = [f"### {title}", "", "| " + " | ".join(h for h, _ in cols) + " |",
           "|---" * len(cols) + "|"]
    for r in recs:
        vals = []
        for _, k in cols:
            v = k(r) if callable(k) else r.get(k)
            vals.append(fmt(v).replace("|", "/") if not isinstance(v, str) else v.replace("|", "/"))
        out.append("| " + " | ".join(vals) + " |")
    out.append("")
    return out


def main():
    out_dir = sys.argv[1]
    recs = load(os.path.join(out_dir, "raw.jsonl"))
    meta = {}
    mp = os.path.join(out_dir, "meta.json")
    if os.path.exists(mp):
        with open(mp, encoding="utf-8") as f:
            meta = json.load(f)
    with open(os.path.join(out_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "results": recs}, f, indent=1)

    by = lambda t: [r for r in recs if r.get("test") == t]  # noqa: E731
    lines = ["# GPU residency probe", ""]
    for k in ("started", "host", "gpu", "driver", "nvcc", "python", "mps_note", "wall_s",
              "budget_s", "hang_ms"):
        if k in meta:
            lines.append(f"- {k}: {meta[k]}")
    for r in by("info"):
        if r.get("item") == "device":
            lines.append("- device: " + ", ".join(
                f"{k}={r[k]}" for k in r if k not in ("q", "test", "where", "mps", "item", "outcome")))
        else:
            lines.append(f"- info {r.get('item')}: {r.get('outcome')} {r.get('detail', '')}")
    lines.append("")
    lines.append("Cells: `ok` returned while the resident kernel ran; `BLOCKED` returned within "
                 "100 ms of the resident kernel being told to exit (it waited for it); `SLOW` ran "
                 "past the hang threshold and on long after the release; `STUCK` did not return "
                 "even then; `KILLED`/`CRASHED`/`missing`/`skipped` come from run.sh. "
                 "Numbers: the call's time in ms; (+x): ms from the release to its return.")
    lines.append("")

    sync = [r for r in by("sync") + by("torch") if r.get("item") != "setup"]
    lines += pivot(sync, lambda r: f"{r.get('test')}: {r.get('item')}", place,
                   "Q1 / Q2c / Q3c: calls on the primary context while a resident kernel runs "
                   "(columns: where the resident kernel is)", "call")
    setups = [r for r in by("sync") + by("torch") if r.get("item") == "setup"]
    lines += table(setups, [("test", "test"), ("where", place), ("detail", "detail"),
                            ("torch", "torch"), ("nccl", "nccl")], "Setups")
    lines += pivot(by("mem"), lambda r: r.get("item", "?"), place,
                   "Q1b / Q2b / Q3b: can the resident kernel read and write this memory "
                   "(allocated in the primary context)?", "memory")
    lines += table(by("conc"), [
        ("where", place), ("outcome", "outcome"), ("SMs", "sms"),
        ("work alone ms", "work_alone_ms"), ("work with resident ms", "work_with_resident_ms"),
        ("ratio", lambda r: fmt(r.get("work_ratio"), 3)),
        ("resident max gap ms", lambda r: fmt(r.get("resident_max_gap_ms"), 3)),
        ("doorbell idle p50/p99 us", lambda r: f"{fmt(r.get('db_idle_p50_us'))} / {fmt(r.get('db_idle_p99_us'))}"),
        ("doorbell under load p50/p99/max us",
         lambda r: f"{fmt(r.get('db_busy_p50_us'))} / {fmt(r.get('db_busy_p99_us'))} / {fmt(r.get('db_busy_max_us'))}"),
        ("n under load", "db_busy_n"), ("lost", lambda r: f"{r.get('db_idle_lost', '–')}/{r.get('db_busy_lost', '–')}"),
        ("detail", lambda r: str(r.get("detail", ""))[:80]),
    ], "Q1a / Q2a / Q3a: concurrency with a primary-context kernel on every SM")
    lines += table(by("exit"), [("where", place), ("outcome", "outcome"), ("exit ms", "ms"),
                                ("kernel lifetime ms", "lifetime_ms"), ("status", "child_status")],
                   "Process exit with the resident kernel still running")
    lock = [r for r in by("lock") if r.get("item") != "drain"]
    lines += pivot(lock, lambda r: r.get("item", "?"),
                   lambda r: r.get("tag", "?"),
                   "Q4: thread B's call while thread A blocks in a CUDA call behind a running kernel "
                   "(columns: A's call)", "B's call")
    db = by("doorbell")
    lines += table(db, [
        ("variant", "item"), ("outcome", "outcome"), ("p50 us", "p50_us"), ("p90 us", "p90_us"),
        ("p99 us", "p99_us"), ("p99.9 us", "p999_us"), ("max us", "max_us"), ("n", "n"),
        ("torn", "bad_desc"), ("idle W", "idle_w"), ("idle W vs no kernel", "idle_w_delta"),
        ("polls/s", "polls_per_s"), ("work ratio", lambda r: fmt(r.get("work_ratio"), 3)),
        ("work ms", "work_ms"), ("detail", lambda r: str(r.get("detail", ""))[:60]),
    ], "Q5: doorbell round trip through mapped host memory (resident kernel, 1 warp)")
    other = [r for r in recs if r.get("test") not in
             ("info", "sync", "torch", "mem", "conc", "exit", "lock", "doorbell")]
    lines += table(other, [("q", "q"), ("test", "test"), ("where", place), ("item", "item"),
                           ("outcome", "outcome"), ("detail", "detail")], "Other records")
    lines += compact(recs)
    print("\n".join(lines))
    return 0


def short(o):
    o = o or "?"
    for k, v in (("BLOCKED", "B"), ("SLOW", "S"), ("STUCK", "STUCK"), ("ok", "ok"),
                 ("error", "err"), ("NO ACCESS", "NOACCESS"), ("WRONG DATA", "WRONG"),
                 ("KILLED", "KILLED"), ("CRASHED", "CRASH"), ("skipped", "skip"),
                 ("missing", "missing"), ("WAITED", "WAITED"), ("measured", "ok")):
        if o.startswith(k):
            return v + ("+err" if o.endswith("+error") else "")
    return o.split()[0]


def compact(recs):
    """One line per group, last in the output (a run's tail is what is seen first)."""
    out = ["## Compact (B = BLOCKED, S = SLOW; see the tables above)", ""]
    groups = {}
    for r in recs:
        t = r.get("test")
        if t in ("sync", "torch", "mem", "lock") and r.get("item") not in ("setup", "drain"):
            key = (r.get("q"), t, place(r))
            groups.setdefault(key, []).append(f"{r.get('item')}={short(r.get('outcome'))}")
    for (q, t, p), cells in groups.items():
        out.append(f"- {q} {t} {p}: " + " ".join(cells))
    for r in recs:
        if r.get("test") == "conc":
            out.append(f"- {r.get('q')} conc {place(r)}: {short(r.get('outcome'))} ratio="
                       f"{fmt(r.get('work_ratio'), 3)} gap_ms={fmt(r.get('resident_max_gap_ms'), 3)} "
                       f"db_idle_p50/p99={fmt(r.get('db_idle_p50_us'))}/{fmt(r.get('db_idle_p99_us'))}us "
                       f"db_load_p50/p99/max={fmt(r.get('db_busy_p50_us'))}/{fmt(r.get('db_busy_p99_us'))}/"
                       f"{fmt(r.get('db_busy_max_us'))}us")
        elif r.get("test") == "exit":
            out.append(f"- {r.get('q')} exit {place(r)}: {short(r.get('outcome'))} {fmt(r.get('ms'))} ms")
        elif r.get("test") == "doorbell" and r.get("item") != "baseline":
            out.append(f"- Q5 {r.get('item')}: p50/p99/max={fmt(r.get('p50_us'))}/{fmt(r.get('p99_us'))}/"
                       f"{fmt(r.get('max_us'))}us torn={r.get('bad_desc', '–')} "
                       f"idleW+={fmt(r.get('idle_w_delta'))} work={fmt(r.get('work_ratio'), 3)}")
    out.append("")
    return out


if __name__ == "__main__":
    sys.exit(main())
