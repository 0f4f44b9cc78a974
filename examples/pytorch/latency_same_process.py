#!/usr/bin/env python3
"""Small allreduce time of two networks, timed inside the same processes.

`latency_pairs.sh` starts a fresh pair of processes for every run, and on the
H200 host an 8-byte allreduce takes 25-57 us depending on the process, for
NCCL Socket and airamp alike: that spread hides a difference of a few
microseconds. Here each rank opens one NCCL communicator per network over the
same ranks (`ncclConfig_t.netName`, PyTorch's `pg_options.config.net_name`)
and times them in alternating blocks (ABBA), so both networks share what
sets a process's pace (its threads' placement, the GPU, the MPS server).
Each communicator still has a proxy thread of its own; `--nets
airamp,airamp` measures the spread that leaves. `--processes` repeats all of
it in fresh process pairs.

  NCCL_NET_PLUGIN=/abs/libnccl-net-airamp.so NCCL_SOCKET_IFNAME=lo AIRAMP_SOCKET_IFNAME=lo \
      python3 latency_same_process.py --out RUN.jsonl

(defaults: 4 process pairs, 12 rounds each, 3000 calls per block after 200;
about 40 s).

Two ranks on one GPU with their own NCCL_HOSTID, as allreduce_bench.py runs
them (start MPS first: nvidia-cuda-mps-control -d). NCCL_NET is removed from
the environment, so that only each communicator's `net_name` chooses. The
tuner loaded from the plugin serves both communicators alike.

Prints each block's us per call, then per process pair and over all of them
the median us of each network and the median of the per-round ratios of the
first network to the second (each round's two blocks are adjacent):
latency_rounds.py, which also pools the --out files of several runs.
The timed calls sum zeros (no overflow, whatever the count); after them one
call per communicator sums known values and is checked on every rank.
"""
import argparse
import json
import os
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import latency_rounds
from bench_devices import host_id


def open_group(world, net):
    opts = dist.ProcessGroupNCCL.Options()
    if not hasattr(opts.config, "net_name"):
        raise SystemExit("this PyTorch cannot choose a network per communicator (config.net_name)")
    opts.config.net_name = net
    return dist.new_group(ranks=list(range(world)), backend="nccl", pg_options=opts)


def timed_block(group, x, iters):
    """Mean seconds per all_reduce over `iters` calls, both ranks started together."""
    dist.all_reduce(x, group=group)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        dist.all_reduce(x, group=group)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def exact(group, n, rank, world):
    x = torch.full((n,), float(rank + 1), device="cuda")
    dist.all_reduce(x, group=group)
    return bool(torch.all(x == world * (world + 1) / 2))


def run(rank, world, args, process, out):
    os.environ["NCCL_HOSTID"] = host_id(rank, world, 0)
    os.environ.setdefault("LOCAL_RANK", str(rank))
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{args.port + process}",
                            rank=rank, world_size=world)
    nets = args.nets.split(",")
    groups = [open_group(world, net) for net in nets]
    n = max(1, args.bytes // 4)
    # Zeros stay zeros however often they are summed: no overflow to time.
    x = torch.zeros(n, device="cuda")
    for g in groups:
        for _ in range(args.warmup):
            dist.all_reduce(x, group=g)
    torch.cuda.synchronize()
    rows = []
    for rnd in range(args.rounds):
        order = range(len(groups)) if rnd % 2 == 0 else reversed(range(len(groups)))
        for i in order:
            us = timed_block(groups[i], x, args.iters) * 1e6
            rows.append({"process": process, "round": rnd, "net": i, "us": us})
            if rank == 0:
                print(f"process {process} round {rnd} {nets[i]:8} {us:7.1f} us", flush=True)
    # Every rank runs every check (no short cut), so that the collectives match.
    checks = [exact(g, n, rank, world) for g in groups]
    ok = torch.tensor([int(all(checks))], device="cuda")
    dist.all_reduce(ok, op=dist.ReduceOp.MIN, group=groups[0])
    correct = bool(ok.item())
    if rank == 0:
        with open(out, "a") as f:
            for row in rows:
                f.write(json.dumps({**row, "correct": correct}) + "\n")
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--nets", default="airamp,Socket",
                   help="networks by NCCL name, one communicator each; the ratio is the first over the second")
    p.add_argument("--bytes", type=int, default=8)
    p.add_argument("--rounds", type=int, default=12, help="alternating rounds per process pair (ABBA)")
    p.add_argument("--iters", type=int, default=3000, help="timed calls per block")
    p.add_argument("--warmup", type=int, default=200, help="untimed calls per communicator")
    p.add_argument("--processes", type=int, default=4, help="fresh process pairs, one after the other")
    p.add_argument("--port", type=int, default=29800)
    p.add_argument("--out", help="JSON lines of every block (default: a temporary file)")
    args = p.parse_args()
    nets = args.nets.split(",")
    if len(nets) != 2:
        p.error("--nets takes two networks")
    if os.environ.pop("NCCL_NET", None) is not None:
        print("NCCL_NET removed here, so that only each communicator's net_name chooses")
    if args.out:
        open(args.out, "w").close()
        out = args.out
    else:
        with tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False) as f:
            out = f.name
    for process in range(args.processes):
        mp.spawn(run, args=(args.world, args, process, out), nprocs=args.world, join=True)
    for line in latency_rounds.report(nets, latency_rounds.load([out])):
        print(line)


if __name__ == "__main__":
    main()
