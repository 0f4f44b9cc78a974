"""Where the benchmarks' ranks run, and the NCCL_HOSTID each gets: shared by
allreduce_bench.py and collnet_bench.py (`--device-of-rank`, `--nodes`)."""
import torch

# "cuda", or "cpu" for gloo runs (`--device-of-rank cpu`); set by pick_device.
DEVICE = "cuda"


def host_id(rank, world, nodes):
    """NCCL_HOSTID of a rank: one per rank, or ranks rank*nodes//world share one."""
    return f"airamp-node{rank * nodes // world if nodes else rank}"


def pick_device(rank, how):
    """shared: every rank on GPU 0 (CUDA MPS); local: rank i on GPU i mod count;
    cpu: gloo on the CPU, to test this script where there is no GPU."""
    global DEVICE
    if how == "cpu":
        DEVICE = "cpu"
        return
    torch.cuda.set_device(0 if how == "shared" else rank % torch.cuda.device_count())


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def backend_version():
    return ".".join(map(str, torch.cuda.nccl.version())) if DEVICE == "cuda" else f"gloo (torch {torch.__version__})"
