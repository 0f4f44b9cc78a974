#!/usr/bin/env python3
"""Where a benchmark's CPU time goes, thread by thread.

    thread_cpu.py sample OUT.csv SID       # until killed: every 0.1 s, the
                                           # CPU time of each thread of each
                                           # process of session SID
    thread_cpu.py summarize OUT.csv RESULT.json

`summarize` takes each size's timed loop from collnet_bench.py's JSON
(`timed_epoch`) and prints, per process, how many cores each kind of thread
kept busy in it (a kind is a thread name with its digits dropped:
`airamp-tx#`, `airamp-cn#-w#`, NCCL's threads when `NCCL_SET_THREAD_NAME=1`
names them, else they count under the process's name with Python's), and
the CPU time per GB that the loop reduced. The sampler reads /proc, so it
costs a few percent of one core itself."""
import collections
import json
import os
import re
import sys
import time

INTERVAL_S = 0.1


def sample(out_path, sid):
    tick = os.sysconf("SC_CLK_TCK")
    with open(out_path, "w") as out:
        while True:
            now = time.time()
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open(f"/proc/{pid}/stat") as f:
                        stat = f.read()
                    if stat[stat.rindex(")") + 2 :].split()[3] != sid:
                        continue
                    for tid in os.listdir(f"/proc/{pid}/task"):
                        with open(f"/proc/{pid}/task/{tid}/stat") as f:
                            stat = f.read()
                        name = stat[stat.index("(") + 1 : stat.rindex(")")]
                        fields = stat[stat.rindex(")") + 2 :].split()
                        cpu = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
                        out.write(f"{now:.3f},{pid},{tid},{name},{cpu:.2f}\n")
                except (OSError, ValueError):
                    pass  # the process or thread ended while being read
            out.flush()
            time.sleep(INTERVAL_S)


def load(csv_path):
    """{pid: [(time, tid, name, cpu seconds so far)]} in time order."""
    by_pid = collections.defaultdict(list)
    with open(csv_path) as f:
        for line in f:
            t, pid, tid, name, cpu = line.rstrip("\n").rsplit(",", 4)
            by_pid[pid].append((float(t), tid, name, float(cpu)))
    return by_pid


def busy_cores(samples, start, end):
    """{thread kind: cores busy} between the first sample at or after
    `start` and the last at or before `end`, and that span in seconds."""
    first, last, names = {}, {}, {}
    for t, tid, name, cpu in samples:
        names[tid] = name
        if start <= t <= end:
            first.setdefault(tid, (t, cpu))
            last[tid] = (t, cpu)
    if not first:
        return {}, 0.0
    span = max(t for t, _ in last.values()) - min(t for t, _ in first.values())
    if span <= 0:
        return {}, 0.0
    kinds = collections.Counter()
    for tid, (t0, c0) in first.items():
        kinds[re.sub(r"\d+", "#", names[tid])] += last[tid][1] - c0
    return {k: v / span for k, v in kinds.items()}, span


def summarize(csv_path, json_path):
    with open(json_path) as f:
        results = json.load(f)["results"]
    by_pid = load(csv_path)
    for row in results:
        if "timed_epoch" not in row:
            sys.exit(f"{json_path}: no timed_epoch (collnet_bench.py before this tool)")
        start, end = row["timed_epoch"]
        print(f"### {row['bytes'] >> 20} MiB: {row['busbw_GBps']:.2f} GB/s, "
              f"{row['cpu_s_per_GB']:.2f} CPU s/GB (rank 0)\n")
        print("| process | thread kind | cores busy | CPU s/GB |")
        print("|---|---|---|---|")
        if end - start < 1.0:
            print("| | (timed loop under 1 s: too short to sample) | | |\n")
            continue
        for pid, samples in sorted(by_pid.items()):
            cores, span = busy_cores(samples, start, end)
            if span < 0.5 * (end - start) or sum(cores.values()) < 0.01:
                continue  # not alive through the loop, or idle (the launcher)
            print(f"| {pid} | all | {sum(cores.values()):.2f} | "
                  f"{sum(cores.values()) / row['busbw_GBps']:.3f} |")
            for kind, c in sorted(cores.items(), key=lambda kv: -kv[1]):
                if c >= 0.01:
                    print(f"| {pid} | {kind} | {c:.2f} | {c / row['busbw_GBps']:.3f} |")
        print()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "sample":
        sample(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "summarize":
        summarize(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
