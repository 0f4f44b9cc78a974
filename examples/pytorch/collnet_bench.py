#!/usr/bin/env python3
"""bf16 all_reduce through NCCL with N ranks on ONE GPU, forced over the
network (one NCCL_HOSTID per rank), for comparing Ring over airamp, airamp's
collective network (exact and FP8) and the tuner's choice.

Multi-GPU (examples/multigpu/run.sh): --device-of-rank local puts rank i on
GPU i mod device count; --nodes K gives ranks rank*K//world one NCCL_HOSTID
(K "nodes", so NCCL uses collective-network heads); --dtype float16 or
float32. The
defaults (shared, one host id per rank, bfloat16) are the one-GPU runs.

The mode is entirely in the environment (NCCL_ALGO, NCCL_COLLNET_ENABLE,
AIRAMP_ENABLE_FP8_ALLREDUCE, ...); see collnet_compare.sh. Per size this
prints bus bandwidth, the relative L2 error against an fp64 reference, and
whether every rank holds bit-identical bytes; rank 0 writes JSON with --out
(including a hash of the result, to compare modes with each other).
"""
import argparse
import json
import os
import resource
import subprocess
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import bench_devices as devices
from bench_devices import backend_version, host_id, pick_device, sync


def sizes_from(spec):
    lo, hi = (int(x) for x in spec.split(":"))
    s, out = lo, []
    while s <= hi:
        out.append(s)
        s *= 4
    return out


DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# The integer view the result digest is taken over, per dtype.
BITS = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}


def inputs_of(rank, n, dtype=torch.bfloat16):
    # The CUDA generator's stream depends on the seed only, not on which
    # GPU runs it: every rank computes the same reference on its own GPU.
    g = torch.Generator(device=devices.DEVICE).manual_seed(1000 + rank)
    return torch.randn(n, generator=g, device=devices.DEVICE, dtype=torch.float32).to(dtype)


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def gpu_mem_mib():
    """This process's GPU memory as NVML reports it (nvidia-smi), or None."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(os.getpid()) and parts[1].isdigit():
            return int(parts[1])
    return None


def run(rank, world, args):
    os.environ["NCCL_HOSTID"] = host_id(rank, world, args.nodes)
    os.environ.setdefault("LOCAL_RANK", str(rank))
    if args.device_of_rank != "shared":
        # Before the process group, so NCCL's communicator binds this GPU.
        pick_device(rank, args.device_of_rank)
    dist.init_process_group("gloo" if devices.DEVICE == "cpu" else "nccl", init_method=f"tcp://127.0.0.1:{args.port}", rank=rank, world_size=world)
    if args.device_of_rank == "shared":
        pick_device(rank, args.device_of_rank)
    dtype = DTYPES[args.dtype]
    elem = torch.tensor([], dtype=dtype).element_size()
    results = []
    for nbytes in sizes_from(args.sizes):
        n = max(1, nbytes // elem)
        x = inputs_of(rank, n, dtype)
        ref = sum(inputs_of(r, n, dtype).double() for r in range(world))
        buf = torch.empty_like(x)
        # Time about --timed-bytes per size (at least 3 calls, at most --iters):
        # a handful of calls at the large sizes is at the mercy of one slow call.
        iters = max(3, min(args.iters, args.timed_bytes // max(nbytes, 1)))
        for _ in range(args.warmup):
            buf.copy_(x)
            dist.all_reduce(buf)
        sync()
        dist.barrier()
        cpu0 = cpu_seconds()
        timed_from = time.time()
        start = time.perf_counter()
        for _ in range(iters):
            buf.copy_(x)
            dist.all_reduce(buf)
        sync()
        secs = (time.perf_counter() - start) / iters
        timed_to = time.time()
        # CPU time of this process (all its threads) per GB reduced.
        cpu_per_gb = (cpu_seconds() - cpu0) / (nbytes * iters / 1e9)
        # Accuracy and agreement on one more call.
        buf.copy_(x)
        dist.all_reduce(buf)
        out = buf.double()
        err = (torch.linalg.vector_norm(out - ref) / torch.linalg.vector_norm(ref)).item()
        gathered = torch.empty(world * n, dtype=dtype, device=devices.DEVICE)
        dist.all_gather_into_tensor(gathered, buf)
        parts = gathered.view(world, n)
        identical = all(torch.equal(parts[0], parts[r]) for r in range(1, world))
        w = (torch.arange(n, device=devices.DEVICE, dtype=torch.int64) % 1000003) + 1
        digest = int((buf.view(BITS[dtype]).to(torch.int64) * w).sum().item())
        busbw = nbytes * 2 * (world - 1) / world / secs / 1e9
        row = {"bytes": nbytes, "time_us": secs * 1e6, "busbw_GBps": busbw, "rel_err": err,
               "identical": identical, "digest": digest, "cpu_s_per_GB": cpu_per_gb,
               # Wall-clock span of the timed loop, for thread_cpu.py.
               "timed_epoch": [timed_from, timed_to]}
        results.append(row)
        if rank == 0:
            print(f"{nbytes:>11} B {secs * 1e6:10.1f} us busbw {busbw:8.3f} GB/s err {err:.5f} "
                  f"{'identical' if identical else 'DIFFERENT'} digest {digest} "
                  f"cpu {cpu_per_gb:.3f} s/GB", flush=True)
    mem = gpu_mem_mib()
    mems = [None] * world
    dist.all_gather_object(mems, mem)
    if rank == 0 and args.out:
        layout = {}
        if (args.device_of_rank, args.nodes, args.dtype) != ("shared", 0, "bfloat16"):
            layout = {"dtype": args.dtype, "device_of_rank": args.device_of_rank,
                      "nodes": args.nodes or world}
        with open(args.out, "w") as f:
            json.dump({"world": world, **layout, "results": results, "gpu_mem_MiB": mems,
                       "nccl": backend_version(),
                       "env": {k: v for k, v in os.environ.items() if k.startswith(("NCCL_", "AIRAMP_"))}},
                      f, indent=1)
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--sizes", default="4096:268435456", help="min:max bytes, x4 steps")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--timed-bytes", type=int, default=256 << 20,
                   help="bytes reduced in each size's timed loop (calls capped by --iters)")
    p.add_argument("--port", type=int, default=29544)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    p.add_argument("--device-of-rank", choices=("shared", "local", "cpu"), default="shared",
                   help="shared: all ranks on GPU 0 (CUDA MPS); local: rank i on GPU i mod device count; "
                        "cpu: gloo on the CPU (tests this script without a GPU; no NCCL, no airamp)")
    p.add_argument("--nodes", type=int, default=0,
                   help="NCCL_HOSTID per node: ranks rank*NODES//world share one (default: one per rank)")
    p.add_argument("--out")
    args = p.parse_args()
    if args.nodes and not 1 <= args.nodes <= args.world:
        p.error("--nodes must be between 1 and --world")
    mp.spawn(run, args=(args.world, args), nprocs=args.world, join=True)


if __name__ == "__main__":
    main()
