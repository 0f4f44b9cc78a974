#!/usr/bin/env python3
"""all_reduce through NCCL with N ranks on ONE GPU, forced over the network.

Each rank gets its own NCCL_HOSTID, so NCCL believes the ranks are on
different nodes and moves every byte through the network plugin (airamp, or
NCCL's own Socket transport for the baseline). Checks every result exactly
and prints bus bandwidth per size and dtype; rank 0 writes JSON with --out.

  NCCL_NET_PLUGIN=/abs/path/libnccl-net-airamp.so python3 allreduce_bench.py --out airamp.json
  NCCL_NET=Socket python3 allreduce_bench.py --out socket.json

Multi-GPU (examples/multigpu/run.sh): --device-of-rank local puts rank i on
GPU i mod device count; --nodes K gives ranks rank*K//world one NCCL_HOSTID.
The defaults (shared, one host id per rank) are the one-GPU runs.
"""
import argparse
import json
import os
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import bench_devices as devices
from bench_devices import backend_version, host_id, pick_device, sync

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cpu_list(spec):
    """CPU numbers of a taskset-style list: "0-3,8"."""
    cpus = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def sizes_from(spec):
    lo, hi = (int(x) for x in spec.split(":"))
    s, out = lo, []
    while s <= hi:
        out.append(s)
        s *= 4
    return out


def run(rank, world, args):
    if args.cpus_of_rank:
        # Before NCCL starts its threads, so they inherit the set.
        os.sched_setaffinity(0, cpu_list(args.cpus_of_rank.split(";")[rank]))
    # Separate "hosts": NCCL must use the network, not shared memory or P2P.
    os.environ["NCCL_HOSTID"] = host_id(rank, world, args.nodes)
    os.environ.setdefault("LOCAL_RANK", str(rank))
    if args.device_of_rank != "shared":
        # Before the process group, so NCCL's communicator binds this GPU.
        pick_device(rank, args.device_of_rank)
    dist.init_process_group("gloo" if devices.DEVICE == "cpu" else "nccl", init_method=f"tcp://127.0.0.1:{args.port}", rank=rank, world_size=world)
    if args.device_of_rank == "shared":
        pick_device(rank, args.device_of_rank)
    results = []
    sizes = [int(x) for x in args.size_list.split(",")] if args.size_list else sizes_from(args.sizes)
    iters_for = dict(zip(sizes, (int(x) for x in args.iters_list.split(",")))) if args.iters_list else {}
    warmup_for = dict(zip(sizes, (int(x) for x in args.warmup_list.split(",")))) if args.warmup_list else {}
    for dtype_name in args.dtypes.split(","):
        dtype = DTYPES[dtype_name]
        elem = torch.tensor([], dtype=dtype).element_size()
        for nbytes in sizes:
            n = max(1, nbytes // elem)
            # Small integers: every sum is exact in every dtype, so any
            # difference from the expected tensor is a transport error.
            base = (torch.arange(n, device=devices.DEVICE) % 7).to(dtype)
            expect = base * world + sum(range(world))
            iters = iters_for.get(nbytes) or (args.iters if n * elem >= (16 << 20) else args.iters * 4)
            ok = True
            for _ in range(warmup_for.get(nbytes, args.warmup)):
                x = base + rank
                dist.all_reduce(x)
                ok &= bool(torch.equal(x, expect))
            sync()
            dist.barrier()
            xs = [base + rank for _ in range(2)]
            start = time.perf_counter()
            for i in range(iters):
                dist.all_reduce(xs[i % 2])
            sync()
            secs = (time.perf_counter() - start) / iters
            # Verify one more fresh run after timing.
            x = base + rank
            dist.all_reduce(x)
            ok &= bool(torch.equal(x, expect))
            ok_all = torch.tensor([1 if ok else 0], device=devices.DEVICE)
            dist.all_reduce(ok_all, op=dist.ReduceOp.MIN)
            bytes_ = n * elem
            busbw = bytes_ * 2 * (world - 1) / world / secs / 1e9
            row = {"dtype": dtype_name, "bytes": bytes_, "time_us": secs * 1e6, "busbw_GBps": busbw, "correct": bool(ok_all.item())}
            results.append(row)
            if rank == 0:
                print(f"{dtype_name:9} {bytes_:>11} B  {secs * 1e6:10.1f} us  busbw {busbw:8.3f} GB/s  {'ok' if row['correct'] else 'WRONG'}", flush=True)
    if rank == 0 and args.out:
        layout = {}
        if (args.device_of_rank, args.nodes) != ("shared", 0):
            layout = {"device_of_rank": args.device_of_rank, "nodes": args.nodes or world}
        with open(args.out, "w") as f:
            json.dump({"world": world, **layout, "results": results, "nccl": backend_version()}, f, indent=1)
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--sizes", default="8:268435456", help="min:max bytes, x4 steps")
    p.add_argument("--size-list", help="comma-separated sizes in bytes (instead of --sizes)")
    p.add_argument("--iters-list", help="timed iterations for each --size-list entry")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--warmup-list", help="untimed iterations for each --size-list entry (instead of --warmup)")
    p.add_argument("--port", type=int, default=29533)
    p.add_argument("--device-of-rank", choices=("shared", "local", "cpu"), default="shared",
                   help="shared: all ranks on GPU 0 (CUDA MPS); local: rank i on GPU i mod device count; "
                        "cpu: gloo on the CPU (tests this script without a GPU; no NCCL, no airamp)")
    p.add_argument("--nodes", type=int, default=0,
                   help="NCCL_HOSTID per node: ranks rank*NODES//world share one (default: one per rank)")
    p.add_argument("--cpus-of-rank",
                   help="CPUs of each rank, ';' between ranks, taskset-style lists (e.g. '0-3;4-7'): "
                        "every thread of rank i, NCCL's and the plugin's included, runs on its list")
    p.add_argument("--out")
    args = p.parse_args()
    if args.cpus_of_rank and len(args.cpus_of_rank.split(";")) != args.world:
        p.error("--cpus-of-rank needs one list per rank")
    if args.nodes and not 1 <= args.nodes <= args.world:
        p.error("--nodes must be between 1 and --world")
    mp.spawn(run, args=(args.world, args), nprocs=args.world, join=True)


if __name__ == "__main__":
    main()
