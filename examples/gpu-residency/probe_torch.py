#!/usr/bin/env python3
"""The PyTorch and NCCL side of the residency probe (Q1, Q2c, Q3c).

A resident kernel (from libprobe.so, built from probe.cu) runs in the
chosen place (primary context, green context, or a context of its own) while
this process does what a training job does: torch.cuda.synchronize(),
.item(), allocations, empty_cache(), a first use of an op (lazy kernel
loading), a first matmul (cuBLAS), and NCCL's init / all_reduce / destroy.

Each item runs under libprobe's native watchdog: after --hang-ms it tells the
resident kernel to exit (a write to mapped host memory), so a call that waits
for it returns and is reported BLOCKED. One that still does not return is
reported STUCK by the watchdog, which then ends the process; run.sh goes on
with the remaining items in a new process.

Prints one `RESULT {json}` line per item. Usage (run.sh does this):
  probe_torch.py --lib build/libprobe.so --where primary|green|ctx [--items a,b]
  probe_torch.py --list-items
"""

import argparse
import ctypes
import json
import os
import sys
import time

ITEMS = [
    ("torch_sync", "torch.cuda.synchronize()"),
    ("item_warm_op", "x.sum().item() (warm op, legacy default stream)"),
    ("cpu_to_cuda", "torch.ones(n).cuda() (pageable H2D)"),
    ("alloc_new", "torch.empty(256 MiB) (caching allocator grows: cudaMalloc)"),
    ("empty_cache", "del tensor; torch.cuda.empty_cache() (cudaFree)"),
    ("new_op", "first use of an op (lazy kernel load) + stream sync"),
    ("first_matmul", "first matmul (cuBLAS handle, workspace, lazy load) + stream sync"),
    ("new_stream_event", "torch.cuda.Stream() + Event.synchronize()"),
    ("pin_memory", "torch.empty(pin_memory=True) (cudaHostAlloc)"),
    ("nccl_init", "dist.init_process_group(nccl, world_size=1, device_id) (eager ncclCommInitRank)"),
    ("nccl_all_reduce", "dist.all_reduce + current_stream().synchronize()"),
    ("nccl_destroy", "dist.destroy_process_group() (ncclCommDestroy)"),
]

# Items that take long on their own: they get this long before the resident
# kernel is released (ms), so slowness is not taken for blocking.
SLOW_ITEMS_MS = {"nccl_init": 4000, "nccl_destroy": 3000, "nccl_all_reduce": 2000,
                 "first_matmul": 2000, "new_op": 1500}


def emit(rec):
    print("RESULT " + json.dumps(rec), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib")
    ap.add_argument("--where", default="primary")
    ap.add_argument("--sms", type=int, default=8)
    ap.add_argument("--hang-ms", type=int, default=700)
    ap.add_argument("--items", default="")
    ap.add_argument("--store-dir", default="/tmp")
    ap.add_argument("--list-items", action="store_true")
    args = ap.parse_args()
    if args.list_items:
        print(",".join(name for name, _ in ITEMS))
        return 0
    want = [i for i in args.items.split(",") if i] or [name for name, _ in ITEMS]
    q = {"primary": "Q1", "green": "Q2"}.get(args.where, "Q3")
    base = {"q": q, "test": "torch", "where": args.where, "mps": os.environ.get("PROBE_MPS") == "1"}
    if os.environ.get("PROBE_TAG"):
        base["tag"] = os.environ["PROBE_TAG"]

    # NVLink SHARP (multicast) stays off; no network plugin; loopback only.
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    os.environ.setdefault("NCCL_NET_PLUGIN", "none")
    os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")

    def fail_all(detail):
        for name in want:
            emit(dict(base, item=name, outcome="error", detail=detail))

    t0 = time.perf_counter()
    try:
        import torch
        import torch.distributed as dist
    except Exception as e:  # noqa: BLE001 - reported, not raised
        fail_all(f"import torch: {e}")
        return 0
    import_s = time.perf_counter() - t0

    lib = ctypes.CDLL(args.lib)
    lib.rp_init.argtypes = [ctypes.c_int]
    lib.rp_error.restype = ctypes.c_char_p
    lib.rp_info.restype = ctypes.c_char_p
    lib.rp_start.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_double]
    lib.rp_wait_exit.argtypes = [ctypes.c_int]
    lib.rp_arm.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p]
    lib.rp_disarm.argtypes = [ctypes.POINTER(ctypes.c_double)]

    dev = torch.device("cuda", 0)
    torch.cuda.set_device(dev)
    # Warm up everything the items reuse, before the resident kernel starts.
    x = torch.randn(1 << 20, device=dev)
    float(x.sum().item())
    torch.ones(16, device=dev)
    keep = {"victim": torch.empty(256 << 20, dtype=torch.uint8, device=dev)}
    torch.cuda.synchronize()

    if lib.rp_init(0) != 0:
        fail_all("rp_init: " + lib.rp_error().decode())
        return 0
    if lib.rp_start(args.where.encode(), args.sms, 60.0) != 0:
        fail_all("resident kernel: " + lib.rp_error().decode())
        return 0
    try:
        nccl_version = ".".join(map(str, torch.cuda.nccl.version()))
    except Exception as e:  # noqa: BLE001 - reported, not raised
        nccl_version = f"unknown ({e})"
    emit(dict(base, item="setup", outcome="info", detail=lib.rp_info().decode(),
              torch=torch.__version__, cuda=torch.version.cuda, nccl=nccl_version,
              import_s=round(import_s, 2),
              module_loading=os.environ.get("CUDA_MODULE_LOADING", "")))

    store_path = os.path.join(args.store_dir, f"filestore-{os.getpid()}")

    def torch_sync():
        torch.cuda.synchronize()

    def item_warm_op():
        float(x.sum().item())

    def cpu_to_cuda():
        torch.ones(4096).cuda()

    def alloc_new():
        keep["new"] = torch.empty(256 << 20, dtype=torch.uint8, device=dev)

    def empty_cache():
        keep.pop("victim", None)
        torch.cuda.empty_cache()

    def new_op():
        torch.special.i0e(x)
        torch.cuda.current_stream().synchronize()

    def first_matmul():
        a = torch.randn(512, 512, device=dev)
        (a @ a).sum()
        torch.cuda.current_stream().synchronize()

    def new_stream_event():
        s = torch.cuda.Stream()
        with torch.cuda.stream(s):
            y = x * 2
        e = torch.cuda.Event()
        e.record(s)
        e.synchronize()
        del y

    def pin_memory():
        keep["pinned"] = torch.empty(1 << 20, dtype=torch.uint8, pin_memory=True)

    def nccl_init():
        store = dist.FileStore(store_path, 1)
        dist.init_process_group("nccl", store=store, rank=0, world_size=1, device_id=dev)

    def nccl_all_reduce():
        t = torch.ones(1 << 20, device=dev)
        dist.all_reduce(t)
        torch.cuda.current_stream().synchronize()
        # One rank: the sum is the input. (Checked on the host without another
        # device sync: .item() on the legacy stream.)
        if float(t[0].item()) != 1.0:
            raise RuntimeError("all_reduce gave a wrong value")

    def nccl_destroy():
        dist.destroy_process_group()

    fns = {
        "torch_sync": torch_sync, "item_warm_op": item_warm_op, "cpu_to_cuda": cpu_to_cuda,
        "alloc_new": alloc_new, "empty_cache": empty_cache, "new_op": new_op,
        "first_matmul": first_matmul, "new_stream_event": new_stream_event,
        "pin_memory": pin_memory, "nccl_init": nccl_init, "nccl_all_reduce": nccl_all_reduce,
        "nccl_destroy": nccl_destroy,
    }
    labels = dict(ITEMS)
    for name, _ in ITEMS:
        if name not in want:
            continue
        rec = dict(base, item=name, label=labels[name])
        if lib.rp_ensure() != 0:
            emit(dict(rec, outcome="error", detail="resident kernel: " + lib.rp_error().decode()))
            continue
        stuck = dict(rec, outcome="STUCK", hang_ms=args.hang_ms,
                     detail="did not return 5 s after the resident kernel was told to exit; process aborted")
        hang_ms = max(args.hang_ms, SLOW_ITEMS_MS.get(name, 0))
        stuck["hang_ms"] = hang_ms
        lib.rp_arm(hang_ms, hang_ms + 5000, json.dumps(stuck).encode())
        err = None
        t = time.perf_counter()
        try:
            fns[name]()
        except Exception as e:  # noqa: BLE001 - reported, not raised
            err = f"{type(e).__name__}: {e}"[:400]
        ms = (time.perf_counter() - t) * 1e3
        since = ctypes.c_double(0.0)
        released = lib.rp_disarm(ctypes.byref(since)) == 1
        # BLOCKED: returned within 100 ms of the release (it waited for the
        # resident kernel); SLOW: ran on long after it (slow, or another wait).
        outcome = "ok" if not released else ("BLOCKED" if since.value <= 100 else "SLOW")
        if err:
            outcome = outcome + "+error" if released else "error"
        rec.update(outcome=outcome, ms=round(ms, 3), hang_ms=hang_ms,
                   resident_alive_after=bool(lib.rp_running()))
        if released:
            rec["after_release_ms"] = round(since.value, 3)
        if err:
            rec["detail"] = err
        emit(rec)
    lib.rp_release_all()
    lib.rp_wait_exit(3000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
