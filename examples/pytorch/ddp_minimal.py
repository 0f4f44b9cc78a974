#!/usr/bin/env python3
"""Minimal PyTorch DDP training, launched by torchrun, whose gradient
all-reduces go through NCCL and therefore through airamp for traffic between
nodes when NCCL_NET_PLUGIN points at libnccl-net-airamp.so. Nothing in the
script knows about airamp: the plugin is chosen entirely by the environment.

    export NCCL_NET_PLUGIN=/path/to/libnccl-net-airamp.so
    torchrun --nnodes=2 --nproc-per-node=8 --node-rank=$NODE_RANK \
        --master-addr=$MASTER --master-port=29500 ddp_minimal.py

A synthetic regression task (a fixed random linear teacher plus noise), a
2-layer MLP, Adam. Each rank draws its own batches (seeded by rank and step).
At the end the script checks what DDP promises: every rank holds the same
weights (the max/min of a weight checksum over ranks agree), and the loss
went down. It exits non-zero otherwise.

--backend gloo runs it on CPU (a smoke test of the script; airamp is not
involved, gloo does not use NCCL).
"""
import argparse
import os
import sys

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", choices=["nccl", "gloo"],
                    default="nccl" if torch.cuda.is_available() else "gloo")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="bfloat16 casts the model (and its gradients, which DDP "
                         "all-reduces) to bf16: the dtype FP8 all-reduce compresses")
    args = ap.parse_args()

    rank = int(os.environ["RANK"])          # set by torchrun
    local_rank = int(os.environ["LOCAL_RANK"])
    world = int(os.environ["WORLD_SIZE"])
    if args.backend == "nccl":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    dist.init_process_group(args.backend)
    if rank == 0:
        print(f"world {world}, backend {args.backend}, "
              f"NCCL_NET_PLUGIN={os.environ.get('NCCL_NET_PLUGIN', '(unset: NCCL built-in)')}",
              flush=True)

    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)  # the same initial weights and teacher on every rank
    teacher = torch.randn(args.dim, 1, device=device) / args.dim**0.5
    model = nn.Sequential(nn.Linear(args.dim, 4 * args.dim), nn.ReLU(),
                          nn.Linear(4 * args.dim, 1)).to(device=device, dtype=dtype)
    ddp = DDP(model, device_ids=[local_rank] if args.backend == "nccl" else None)
    opt = torch.optim.Adam(ddp.parameters(), lr=1e-3)

    gen = torch.Generator(device=device)
    losses = []
    for step in range(args.steps):
        gen.manual_seed(1_000_003 * rank + step)
        x = torch.randn(args.batch, args.dim, device=device, generator=gen)
        y = x @ teacher + 0.01 * torch.randn(args.batch, 1, device=device, generator=gen)
        loss = nn.functional.mse_loss(ddp(x.to(dtype)).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # DDP all-reduces the gradients here (NCCL: through the plugin)
        opt.step()
        losses.append(loss.item())
        if rank == 0 and (step % 50 == 0 or step == args.steps - 1):
            print(f"step {step:4d} loss {loss.item():.4f}", flush=True)

    # DDP's promise: identical weights everywhere. Compare a checksum's
    # max and min over ranks (exact: the same bits give the same sum).
    s = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum()
    hi, lo = s.clone(), s.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    # The loss: mean over ranks of the first and last tenth of the steps, so
    # every rank reaches the same verdict.
    k = max(1, args.steps // 10)
    fl = torch.tensor([sum(losses[:k]) / k, sum(losses[-k:]) / k], device=device)
    dist.all_reduce(fl)
    first, last = (fl / world).tolist()
    ok = hi.item() == lo.item() and last < 0.5 * first
    if rank == 0 or not ok:
        print(f"[rank {rank}] weights identical on all ranks: {hi.item() == lo.item()} "
              f"(checksum {hi.item():.9g}); loss {first:.4f} -> {last:.4f}", flush=True)
        print("ddp_minimal: OK" if ok else "ddp_minimal: FAIL", flush=True)
    # Leave together, and drop DDP (its reducer holds pending work objects of
    # the backend) before the process group: gloo's worker threads can abort
    # the process at exit otherwise ("terminate called without an active
    # exception", pytorch/pytorch#190489).
    dist.barrier()
    del ddp, opt
    dist.destroy_process_group()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
