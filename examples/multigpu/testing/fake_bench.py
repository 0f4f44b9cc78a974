#!/usr/bin/env python3
"""Stands in for examples/pytorch/{collnet,allreduce}_bench.py in the dry run
(testing/dry_run.sh): no GPU, no torch, no NCCL. Reads the arguments and the
environment run.sh gives a run, sleeps FAKE_RUN_S, and writes what the real
bench and NCCL would: rank 0's JSON (--out) and one NCCL_DEBUG_FILE log per
rank with the lines the summarizers parse. The numbers are invented (Ring
10 GB/s on loopback, 1.5 at 25 Gbit/s; compressed 1.7x / 1.9x Ring); only
the control flow and the checks are under test.

FAKE_FAULT (space-separated KIND:MODE) injects faults into runs of MODE:
  hang     never returns (with a child process, like mp.spawn's ranks)
  crash    exits 1 with no JSON
  wrong    a wrong result (error 50%, not bit-identical, allreduce not exact)
  differ   the last rank logs another tuner decision digest
  p2p      the channels go via P2P instead of the network
"""
import argparse
import json
import os
import subprocess
import sys
import time


def mode_of(env):
    if env.get("NCCL_NET") == "Socket":
        return "socket4x4" if env.get("NCCL_SOCKET_NTHREADS") else "socket"
    if env.get("NCCL_COLLNET_ENABLE") != "1":
        if env.get("TORCH_NCCL_USE_TENSOR_REGISTER_ALLOCATOR_HOOK") == "1":
            return "ring_ub"
        return "ring" if env.get("AIRAMP_ENABLE_FP8_ALLREDUCE") == "0" else "airamp"
    if "collnet" not in env.get("NCCL_ALGO", ""):
        return "tuner"
    gpu = "_gpu_ub" if env.get("AIRAMP_GPU_COLLNET") == "1" else ""
    if env.get("AIRAMP_ENABLE_FP8_ALLREDUCE") != "1":
        return "cn_exact" + gpu
    return ("cn_int8" if env.get("AIRAMP_COMPRESSION_FORMAT") == "int8" else "cn_fp8") + gpu


def sizes(args):
    if getattr(args, "size_list", None):
        return [int(x) for x in args.size_list.split(",")]
    lo, hi = (int(x) for x in args.sizes.split(":"))
    out = []
    while lo <= hi:
        out.append(lo)
        lo *= 4
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--sizes", default="1048576:268435456")
    p.add_argument("--size-list")
    p.add_argument("--iters-list")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--iters", type=int)
    p.add_argument("--warmup", type=int)
    p.add_argument("--port", type=int)
    p.add_argument("--nodes", type=int, default=0)
    p.add_argument("--device-of-rank", default="shared")
    p.add_argument("--out")
    script, args = os.path.basename(sys.argv[1]), p.parse_args(sys.argv[2:])
    env = os.environ
    mode = mode_of(env)
    faults = {f.split(":")[0] for f in env.get("FAKE_FAULT", "").split() if f.split(":")[1:] == [mode]}
    world, nodes = args.world, args.nodes or args.world
    assert args.device_of_rank == "local", "run.sh must give every rank its own GPU"
    # The environment contract: multicast off always; P2P/SHM off unless
    # ranks share a node (heads), where NCCL needs them inside the node.
    assert env.get("NCCL_NVLS_ENABLE") == "0" and env.get("NCCL_MNNVL_ENABLE") == "0", "NVLS must be off"
    want = "0" if nodes < world else "1"
    assert env.get("NCCL_P2P_DISABLE") == want and env.get("NCCL_SHM_DISABLE") == want, \
        f"NCCL_P2P_DISABLE/NCCL_SHM_DISABLE must be {want} with {nodes} nodes of {world} ranks"
    print(f"fake {script} mode {mode} world {world} nodes {nodes} port {args.port} netns {env.get('FAKE_NETNS', '-')}", flush=True)
    if "hang" in faults:
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        time.sleep(3600)
    time.sleep(float(env.get("FAKE_RUN_S", "0.1")))
    if "crash" in faults:
        sys.exit(1)
    shaped = bool(env.get("FAKE_NETNS"))
    ring = 1.5 if shaped else 10.0
    gain = {"ring": 1.0, "ring_ub": 1.0, "airamp": 1.0, "socket": 0.5, "socket4x4": 0.8, "cn_exact": 0.4,
            "cn_exact_gpu_ub": 0.3, "cn_fp8": 1.9 if shaped else 1.7, "cn_fp8_gpu_ub": 1.95 if shaped else 1.75,
            "cn_int8": 1.85 if shaped else 1.65, "tuner": 1.9 if shaped else 1.7}[mode]
    err = {"cn_fp8": 0.033, "cn_fp8_gpu_ub": 0.033, "cn_int8": 0.008, "tuner": 0.033}.get(mode, 0.003)
    wrong = "wrong" in faults
    comm = "0x5eed00c0ffee"
    per_node = world // nodes
    pattern = env.get("NCCL_DEBUG_FILE")
    collnet = env.get("NCCL_COLLNET_ENABLE") == "1"
    for rank in range(world):
        lines = [f"host:{rank}:{rank} [0] NCCL INFO comm 0x{rank:x}00 rank {rank} nRanks {world} nNodes {nodes} "
                 f"localRanks {per_node} localRank {rank % per_node} MNNVL 0"]
        via = "P2P/CUMEM" if "p2p" in faults else f"NET/{'Socket' if 'socket' in mode else 'airamp'}/0"
        peer = (rank + 1) % world
        if per_node > 1 and peer // per_node == rank // per_node and "p2p" not in faults:
            via = "P2P/CUMEM"   # inside a node (heads)
        lines.append(f"host:{rank}:{rank} [0] NCCL INFO Channel 00/0 : {rank}[{rank}] -> {peer}[0] [send] via {via}")
        if collnet and rank % per_node == 0:
            member = rank // per_node
            lines.append(f"host:{rank}:{rank} [0] NCCL INFO NET/airamp collnet: member {member} of {nodes} joined; allreduce e4m3")
            lines.append(f"host:{rank}:{rank} [0] NCCL INFO collnet calibration, member {member} of {nodes}, comm {comm}: "
                         f"measured 12.5 Gbit/s; {150 + 10 * member:.1f} ms in connect (links 50.1, lone calls 20.2, "
                         f"streamed 70.3, agreement 0.4; +6.3 ms timing the codec)")
        if mode == "tuner":
            lines.append(f"host:{rank}:{rank} [0] NCCL INFO tuner v5: {world} ranks on {nodes} nodes, comm {comm}; "
                         f"calibration agreed; profile (measured): 12.5 Gbit/s; model crossover: 4 MiB")
            digest = "0x00000000deadbeef" if not ("differ" in faults and rank == world - 1) else "0x00000000badbad00"
            lines.append(f"host:{rank}:{rank} [0] NCCL INFO tuner: comm {comm}: 42 decisions, digest {digest} "
                         f"(equal on every rank that decided alike)")
        if rank == 0:
            algo = "COLLNET_CHAIN" if collnet else "RING"
            lines += [f"host:0:0 [0] NCCL INFO AllReduce: {s} Bytes -> Algo {algo} proto SIMPLE" for s in sizes(args)]
        if pattern:
            path = pattern.replace("%h", "fakehost").replace("%p", str(40000 + rank))
            with open(path, "w") as f:
                f.write("\n".join(lines) + "\n")
    results = []
    if script == "allreduce_bench.py":
        for dtype in args.dtypes.split(","):
            for s in sizes(args):
                results.append({"dtype": dtype, "bytes": s, "time_us": 1.0, "busbw_GBps": ring * gain, "correct": not wrong})
    else:
        for s in sizes(args):
            results.append({"bytes": s, "time_us": 1.0, "busbw_GBps": ring * gain, "rel_err": 0.5 if wrong else err,
                            "identical": not wrong, "digest": s * 7 + (1 if "fp8" in mode or "int8" in mode else 0),
                            "cpu_s_per_GB": 0.5})
    doc = {"world": world, "device_of_rank": "local", "nodes": nodes, "results": results, "nccl": "fake",
           "env": {k: v for k, v in env.items() if k.startswith(("NCCL_", "AIRAMP_"))}}
    if script == "collnet_bench.py":
        doc["dtype"] = args.dtype
    if args.out:
        with open(args.out, "w") as f:
            json.dump(doc, f)


if __name__ == "__main__":
    main()
