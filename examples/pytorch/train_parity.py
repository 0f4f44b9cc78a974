#!/usr/bin/env python3
"""Training parity: a small byte-level decoder-only transformer trained with
DDP on 2 ranks, its bf16 gradients all-reduced through whatever NCCL is set
up to use (airamp's collective network, exact or compressed: the mode is
entirely in the environment, see train_parity.sh).

* Corpus: the Python standard library's own source files (every *.py in
  the directory of the `os` module, sorted by name), as bytes: real text
  that exists offline. The last 5% is held out for the evaluation loss.
* Model: 4 layers, d=256, 4 heads, context 128, vocabulary 256 (bytes),
  learned positions, pre-norm, GELU MLP; fp32 weights, bf16 autocast on GPU.
* Gradients: DDP with torch's `bf16_compress_hook`, which casts each bucket
  to bf16, divides it by the world size and all-reduces it as a bf16 sum
  (the dtype/op airamp compresses), then copies it back to fp32.
* Determinism: `--seed` sets the initial weights and the data order (the
  batch of every step is drawn from a generator seeded with seed and step,
  rank r takes its slice), so two runs with the same seed differ only by
  the all-reduce (and GPU kernel nondeterminism).

Rank 0 writes a CSV with one row per step: the training loss of the step
(the mean over ranks, gathered exactly with all_gather), the evaluation
loss on a fixed held-out set every `--eval-every` steps and at the end, and
the wall time of the step; and a JSON summary next to it.

`--cpu-gloo` runs the same on CPU with the gloo backend (a smoke test of
the script where there is no GPU; it tests nothing of airamp).
"""
import argparse
import csv
import glob
import json
import math
import os
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel as DDP


def corpus():
    """The standard library's *.py files, sorted, as one uint8 tensor."""
    root = os.path.dirname(os.__file__)
    data = bytearray()
    for path in sorted(glob.glob(os.path.join(root, "*.py"))):
        with open(path, "rb") as f:
            data += f.read()
    return torch.frombuffer(data, dtype=torch.uint8).clone()


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        shape = (b, t, self.heads, d // self.heads)
        q, k, v = (z.view(shape).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class ByteGPT(nn.Module):
    def __init__(self, layers, d, heads, context):
        super().__init__()
        self.tok = nn.Embedding(256, d)
        self.pos = nn.Parameter(torch.zeros(context, d))
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, 256, bias=False)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, idx):
        x = self.tok(idx) + self.pos[: idx.shape[1]]
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln(x))


def batch_at(data, starts, context, device):
    rows = torch.stack([data[s : s + context + 1] for s in starts.tolist()]).long()
    return rows[:, :-1].to(device), rows[:, 1:].to(device)


def lr_at(step, args):
    """Linear warm-up, then cosine down to 10%."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    p = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def run(rank, world, args):
    gpu = not args.cpu_gloo
    if gpu:
        # One "node" per rank, so that NCCL must go through the network.
        os.environ["NCCL_HOSTID"] = f"airamp-node{rank}"
    os.environ.setdefault("LOCAL_RANK", str(rank))
    dist.init_process_group(
        "nccl" if gpu else "gloo",
        init_method=f"tcp://127.0.0.1:{args.port}",
        rank=rank,
        world_size=world,
    )
    device = torch.device("cuda", 0) if gpu else torch.device("cpu")
    if gpu:
        torch.cuda.set_device(device)

    data = corpus()
    split = int(len(data) * 0.95)
    train, held = data[:split], data[split:]
    torch.manual_seed(args.seed)
    model = ByteGPT(args.layers, args.d, args.heads, args.context).to(device)
    ddp = DDP(model, device_ids=[0] if gpu else None, gradient_as_bucket_view=True)
    ddp.register_comm_hook(dist.group.WORLD, default_hooks.bf16_compress_hook)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if gpu else torch.autocast("cpu", enabled=False)

    # A fixed held-out set, the same for every run.
    g = torch.Generator().manual_seed(12345)
    eval_starts = torch.randint(0, len(held) - args.context - 1, (args.eval_batches * args.batch,), generator=g)

    def evaluate():
        model.eval()
        total = 0.0
        with torch.no_grad(), autocast:
            for i in range(args.eval_batches):
                x, y = batch_at(held, eval_starts[i * args.batch : (i + 1) * args.batch], args.context, device)
                total += F.cross_entropy(model(x).float().view(-1, 256), y.reshape(-1)).item()
        model.train()
        return total / args.eval_batches

    writer = None
    if rank == 0:
        f = open(args.out, "w", newline="")
        writer = csv.writer(f)
        writer.writerow(["step", "loss", "eval_loss", "step_seconds"])
    losses = torch.zeros(world, device=device)
    t_start = time.perf_counter()
    for step in range(args.steps):
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        starts = torch.randint(0, len(train) - args.context - 1, (world * args.batch,), generator=gen)
        x, y = batch_at(train, starts[rank * args.batch : (rank + 1) * args.batch], args.context, device)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        with autocast:
            logits = ddp(x)
        loss = F.cross_entropy(logits.float().view(-1, 256), y.reshape(-1))
        opt.zero_grad(set_to_none=False)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        # The logged loss is the mean over ranks, gathered exactly (an
        # all_gather never takes the compressed path).
        dist.all_gather_into_tensor(losses, loss.detach().reshape(1))
        mean_loss = losses.mean().item()
        if gpu:
            torch.cuda.synchronize()
        secs = time.perf_counter() - t0
        last = step == args.steps - 1
        ev = evaluate() if rank == 0 and (last or (step + 1) % args.eval_every == 0) else None
        if writer:
            writer.writerow([step, f"{mean_loss:.6f}", "" if ev is None else f"{ev:.6f}", f"{secs:.6f}"])
            if step % 50 == 0 or last:
                print(f"[{args.label}] step {step} loss {mean_loss:.4f}"
                      + ("" if ev is None else f" eval {ev:.4f}") + f" {secs * 1e3:.1f} ms", flush=True)
        if not math.isfinite(mean_loss):
            raise RuntimeError(f"step {step}: loss {mean_loss}")
    total = time.perf_counter() - t_start

    # Every rank must hold the same weights: the all-reduce gave them the
    # same gradients (bit-identical results on every member).
    digest = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1).float()
    digests = torch.zeros(world, device=device)
    dist.all_gather_into_tensor(digests, digest.to(device))
    if rank == 0:
        f.close()
        summary = {
            "label": args.label,
            "seed": args.seed,
            "steps": args.steps,
            "world": world,
            "backend": "gloo-cpu" if not gpu else "nccl",
            "total_seconds": total,
            "weights_identical_on_all_ranks": bool((digests == digests[0]).all().item()),
            "params": sum(p.numel() for p in model.parameters()),
            "env": {k: v for k, v in os.environ.items() if k.startswith(("NCCL_", "AIRAMP_"))},
        }
        if gpu:
            summary["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
            json.dump(summary, f, indent=1)
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--label", default="run", help="name of the run in logs and the summary")
    p.add_argument("--out", required=True, help="CSV of per-step losses (rank 0)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=16, help="sequences per rank per step")
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-batches", type=int, default=16)
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--port", type=int, default=29561)
    p.add_argument("--cpu-gloo", action="store_true", help="CPU + gloo smoke test of the script")
    args = p.parse_args()
    mp.spawn(run, args=(args.world, args), nprocs=args.world, join=True)


if __name__ == "__main__":
    main()
