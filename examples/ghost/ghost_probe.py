#!/usr/bin/env python3
"""ghost_probe.py: what slows the first kernel after a CPU gap? (airamp issue 12)

One run measures, for two workloads (a 4096^3 bf16 matmul and a batch-1 decode-like
transformer layer), the GPU time (CUDA events) and wall time (launch -> completion) of
the first step after the CPU sleeps g ms, for g in 0/5/20/100/500 ms, under one variant
at a time:

  plain, memory clock locked (-lmc), SM clock locked (-lgc), both locked,
  fresh operands (cold L2/TLB), L2 flushed by a large memset right before,
  a tiny "pre-kick" kernel right before, ghost kernels on a low-priority side stream
  (1 SM every 2 ms; every SM every 2 ms at low duty; every SM at ~10 % duty; a stream
  kept busy all the time), and, in child processes, the context scheduling flags
  (auto / spin / yield / blocking-sync), plus "plain" again at the end (drift check).

NVML (ctypes on libnvidia-ml.so.1; fallback: an `nvidia-smi -lms` sampler) is read just
before each launch. For each ghost variant the cost is measured: throughput of
back-to-back matmuls with and without it, and power (NVML energy counter).

Every variant that cannot run prints "n/a: reason" and the run goes on. Clocks are reset
at start and restored in finally blocks.

    python3 ghost_probe.py --out ghost.json            # full run, ~3-4 min on an H200
    python3 ghost_probe.py --quick --out ghost.json    # ~1.5 min
    python3 ghost_probe.py --cpu-smoke --out /tmp/s.json  # no GPU: FAKE timings, control flow only

Only the Python standard library is needed for --cpu-smoke; the GPU run needs PyTorch
(triton is used for the spin kernel when importable, otherwise fallbacks are used).
"""

import argparse
import ctypes
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time

GAPS_FULL = [0, 5, 20, 100, 500]
GAPS_QUICK = [0, 20, 100, 500]
REPS_FULL = {0: 10, 5: 10, 20: 10, 100: 8, 500: 4}
REPS_QUICK = {0: 5, 5: 5, 20: 5, 100: 4, 500: 2}
WORKLOADS = ["matmul", "decode"]
CHILD_SCHED = ["auto", "spin", "yield", "blocking_sync"]
CU_CTX_SCHED = {"auto": 0, "spin": 1, "yield": 2, "blocking_sync": 4}

CLOCK_EVENT_BITS = {
    0x1: "GpuIdle",
    0x2: "AppClocksSetting",
    0x4: "SwPowerCap",
    0x8: "HwSlowdown",
    0x10: "SyncBoost",
    0x20: "SwThermal",
    0x40: "HwThermal",
    0x80: "HwPowerBrake",
    0x100: "DisplayClock",
}

T0 = time.monotonic()


def log(msg):
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def decode_reasons(mask):
    if mask is None:
        return None
    names = [n for b, n in CLOCK_EVENT_BITS.items() if mask & b]
    return "|".join(names) if names else "none"


# ----------------------------------------------------------------------------- NVML


class Nvml:
    """Minimal NVML over ctypes. Every read returns None on failure (never raises)."""

    def __init__(self):
        self.ok = False
        self.reason = None
        self.h = ctypes.c_void_p()
        try:
            self.lib = ctypes.CDLL("libnvidia-ml.so.1")
        except OSError as e:
            self.reason = f"libnvidia-ml.so.1 not loadable: {e}"
            return
        try:
            r = self.lib.nvmlInit_v2()
            if r != 0:
                self.reason = f"nvmlInit_v2 returned {r}"
                return
            self.ok = True
        except Exception as e:  # noqa: BLE001
            self.reason = f"nvmlInit failed: {e}"

    def bind(self, uuid=None, index=0):
        """Pick the device: by UUID when given (matches the CUDA device), else index."""
        if not self.ok:
            return False
        if uuid:
            u = uuid if uuid.startswith("GPU-") else "GPU-" + uuid
            if self.lib.nvmlDeviceGetHandleByUUID(u.encode(), ctypes.byref(self.h)) == 0:
                self.bound_by = f"uuid {u}"
                return True
        if self.lib.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(index), ctypes.byref(self.h)) == 0:
            self.bound_by = f"index {index}"
            return True
        self.ok = False
        self.reason = "no NVML device handle"
        return False

    def _u(self, fn, *args, ctype=ctypes.c_uint):
        if not self.ok:
            return None
        v = ctype()
        try:
            f = getattr(self.lib, fn)
        except AttributeError:
            return None
        try:
            r = f(self.h, *args, ctypes.byref(v))
        except Exception:  # noqa: BLE001
            return None
        return v.value if r == 0 else None

    def sm_mhz(self):
        return self._u("nvmlDeviceGetClockInfo", ctypes.c_int(1))

    def mem_mhz(self):
        return self._u("nvmlDeviceGetClockInfo", ctypes.c_int(2))

    def max_sm_mhz(self):
        return self._u("nvmlDeviceGetMaxClockInfo", ctypes.c_int(1))

    def max_mem_mhz(self):
        return self._u("nvmlDeviceGetMaxClockInfo", ctypes.c_int(2))

    def power_w(self):
        mw = self._u("nvmlDeviceGetPowerUsage")
        return None if mw is None else mw / 1000.0

    def pstate(self):
        return self._u("nvmlDeviceGetPerformanceState", ctype=ctypes.c_int)

    def temp_c(self):
        return self._u("nvmlDeviceGetTemperature", ctypes.c_int(0))

    def reasons(self):
        v = self._u("nvmlDeviceGetCurrentClocksEventReasons", ctype=ctypes.c_ulonglong)
        if v is None:
            v = self._u("nvmlDeviceGetCurrentClocksThrottleReasons", ctype=ctypes.c_ulonglong)
        return v

    def energy_mj(self):
        return self._u("nvmlDeviceGetTotalEnergyConsumption", ctype=ctypes.c_ulonglong)

    def supported_mem_mhz(self):
        if not self.ok:
            return []
        n = ctypes.c_uint(64)
        arr = (ctypes.c_uint * 64)()
        try:
            r = self.lib.nvmlDeviceGetSupportedMemoryClocks(self.h, ctypes.byref(n), arr)
        except Exception:  # noqa: BLE001
            return []
        return list(arr[: n.value]) if r == 0 else []

    def sample(self):
        t = time.perf_counter()
        m = self.reasons()
        s = {
            "sm_mhz": self.sm_mhz(),
            "mem_mhz": self.mem_mhz(),
            "power_w": self.power_w(),
            "pstate": self.pstate(),
            "temp_c": self.temp_c(),
            "reasons": m,
            "reasons_txt": decode_reasons(m),
        }
        s["read_us"] = round((time.perf_counter() - t) * 1e6, 1)
        return s


class SmiSampler:
    """Fallback when NVML over ctypes is unusable: `nvidia-smi -lms` in the background;
    sample() returns the newest line (up to ~period old)."""

    FIELDS = "clocks.sm,clocks.mem,power.draw,pstate,temperature.gpu"

    def __init__(self, gpu, period_ms=20):
        self.ok = False
        self.last = None
        try:
            self.p = subprocess.Popen(
                ["nvidia-smi", "-i", str(gpu), f"--query-gpu={self.FIELDS}",
                 "--format=csv,noheader,nounits", f"--loop-ms={period_ms}"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except (OSError, ValueError) as e:
            self.reason = f"nvidia-smi sampler: {e}"
            return
        self.ok = True
        self.reason = f"NVML ctypes unusable; nvidia-smi -lms {period_ms} sampler (values up to {period_ms} ms old)"
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            self.last = (time.perf_counter(), line.strip())

    def sample(self):
        if not self.last:
            return {}
        t, line = self.last
        out = {"age_ms": round((time.perf_counter() - t) * 1e3, 1)}
        for k, v in zip(["sm_mhz", "mem_mhz", "power_w", "pstate", "temp_c"], line.split(",")):
            v = v.strip()
            try:
                out[k] = float(v) if k == "power_w" else int(v.lstrip("P")) if k == "pstate" else int(v)
            except ValueError:
                out[k] = None
        return out

    def stop(self):
        if self.ok:
            self.p.terminate()
            try:
                self.p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.p.kill()


class Monitor:
    """NVML if possible, else the nvidia-smi sampler, else nothing (reason kept)."""

    def __init__(self, uuid, index, allow_smi=True):
        self.nvml = Nvml()
        self.smi = None
        if self.nvml.ok and self.nvml.bind(uuid, index):
            self.kind = "nvml-ctypes (" + self.nvml.bound_by + ")"
            self.reason = None
            return
        self.reason = self.nvml.reason
        if allow_smi:
            self.smi = SmiSampler(index)
            if self.smi.ok:
                self.kind = "nvidia-smi-lms"
                self.reason = self.smi.reason
                return
            self.reason = f"{self.reason}; {self.smi.reason}"
        self.kind = "none"

    def sample(self):
        if self.kind.startswith("nvml"):
            return self.nvml.sample()
        if self.smi and self.smi.ok:
            return self.smi.sample()
        return None

    def energy_mj(self):
        return self.nvml.energy_mj() if self.kind.startswith("nvml") else None

    def power_w(self):
        s = self.sample()
        return s.get("power_w") if s else None

    def close(self):
        if self.smi:
            self.smi.stop()


# ----------------------------------------------------------------------------- clocks


class Clocks:
    """nvidia-smi -lgc/-lmc with guaranteed restore."""

    def __init__(self, gpu, fake=False):
        self.gpu = str(gpu)
        self.fake = fake
        self.log = []

    def smi(self, *args):
        if self.fake:
            r = (False, "FAKE: nvidia-smi not run in --cpu-smoke")
            self.log.append({"cmd": list(args), "ok": r[0], "out": r[1]})
            return r
        try:
            p = subprocess.run(["nvidia-smi", "-i", self.gpu, *args],
                               capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            r = (False, f"nvidia-smi {' '.join(args)}: {e}")
        else:
            out = (p.stdout + p.stderr).strip().replace("\n", " / ")
            # nvidia-smi prints "not supported"/"Insufficient permissions" with rc != 0,
            # but some builds print a warning with rc 0: treat those words as failure too.
            bad = any(w in out.lower() for w in ("not supported", "insufficient", "error", "failed"))
            r = (p.returncode == 0 and not bad, out[:300])
        self.log.append({"cmd": list(args), "ok": r[0], "out": r[1]})
        return r

    def snapshot(self):
        """nvidia-smi -q of performance/clock/power state, for the record (not a lock)."""
        if self.fake:
            return "FAKE: not run in --cpu-smoke"
        try:
            p = subprocess.run(["nvidia-smi", "-i", self.gpu, "-q", "-d", "PERFORMANCE,CLOCK,POWER"],
                               capture_output=True, text=True, timeout=30)
            return (p.stdout + p.stderr)[-6000:]
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"n/a: {e}"

    def reset_all(self):
        self.smi("-rgc")
        self.smi("-rmc")


# ----------------------------------------------------------------------------- GPU backend


class TorchGpu:
    def __init__(self, args, sched=None):
        self.args = args
        self.sched_info = None
        if sched is not None:
            self.sched_info = set_primary_ctx_flags(sched)
        import torch  # noqa: PLC0415
        import torch.nn.functional as F  # noqa: N812,PLC0415

        self.torch = torch
        self.F = F
        if not torch.cuda.is_available():
            raise RuntimeError("torch.cuda.is_available() is False")
        self.dev = torch.device("cuda", 0)
        torch.cuda.init()
        torch.zeros(1, device=self.dev)  # create the context now
        if sched is not None:
            self.sched_info["after_init"] = primary_ctx_flags()
        props = torch.cuda.get_device_properties(0)
        self.props = props
        self.n_sm = props.multi_processor_count
        self.l2 = getattr(props, "L2_cache_size", 50 << 20) or (50 << 20)
        self.stream = torch.cuda.Stream()  # measured work, normal priority
        try:
            lo, hi = torch.cuda.Stream.priority_range()
        except Exception:  # noqa: BLE001
            lo, hi = 0, -1
        self.prio_range = (lo, hi)
        self.ghost_stream = torch.cuda.Stream(priority=lo)  # lowest priority CUDA offers
        self.flush_buf = torch.empty(max(256 << 20, 4 * self.l2), dtype=torch.uint8, device=self.dev)
        self.spin_backend = None
        self._spin = None
        self._spin_out = torch.zeros(max(self.n_sm, 1) * 4, dtype=torch.float32, device=self.dev)
        self.graphs = {}

    def uuid(self):
        try:
            return str(self.props.uuid)
        except Exception:  # noqa: BLE001
            return None

    def info(self):
        t = self.torch
        try:
            nccl = ".".join(map(str, t.cuda.nccl.version()))
        except Exception:  # noqa: BLE001
            nccl = None
        return {
            "torch": t.__version__, "cuda": t.version.cuda, "nccl": nccl,
            "gpu": self.props.name, "sms": self.n_sm, "l2_bytes": self.l2,
            "stream_priority_range(lowest,highest)": list(self.prio_range),
            "spin_backend": self.spin_backend,
        }

    def sync(self):
        self.torch.cuda.synchronize()

    def sync_main(self):
        """Only the measured stream: a device-wide sync would also wait for a ghost."""
        self.stream.synchronize()

    def sleep(self, s):
        time.sleep(s)

    def event(self):
        return self.torch.cuda.Event(enable_timing=True)

    # --- workloads
    def make_workload(self, name, n_sets):
        return (Matmul if name == "matmul" else Decode)(self, n_sets)

    def flush_l2(self):
        with self.torch.cuda.stream(self.stream):
            self.flush_buf.zero_()

    def prekick(self):
        with self.torch.cuda.stream(self.stream):
            self.spin(1, 5.0)

    def bind_thread(self):
        """Make the primary context current in this (ghost) thread. Triton launches through
        the driver API, which needs a current context; a new thread has none until a CUDA
        runtime call binds it."""
        t = self.torch
        e = t.cuda.Event()
        e.record(self.ghost_stream)  # a runtime call: binds the primary context to the thread
        e.synchronize()
        try:
            cu = _libcuda()
            ctx = ctypes.c_void_p()
            if cu.cuCtxGetCurrent(ctypes.byref(ctx)) == 0 and not ctx.value:
                dev = ctypes.c_int()
                cu.cuDeviceGet(ctypes.byref(dev), 0)
                if cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev) == 0:
                    cu.cuCtxSetCurrent(ctx)
        except (OSError, AttributeError):
            pass

    def _thread_launch_check(self):
        """A spin launch from a fresh thread, as the ghost thread will do it."""
        err = []

        def f():
            try:
                self.bind_thread()
                with self.torch.cuda.stream(self.ghost_stream):
                    self._launch_raw(1, 16)
                self.ghost_stream.synchronize()
            except Exception as e:  # noqa: BLE001
                err.append(e)

        th = threading.Thread(target=f, daemon=True)
        th.start()
        th.join(60)
        if th.is_alive():
            raise RuntimeError("spin launch from a thread did not return in 60 s")
        if err:
            raise err[0]

    # --- spin kernel (ghost): triton if possible, fallbacks otherwise
    def setup_spin(self):
        try:
            self._spin = _triton_spin()
            self._spin[(1,)](self._spin_out, 16, num_warps=1)
            self.sync()
            self._thread_launch_check()
            self.spin_backend = "triton"
        except Exception as e:  # noqa: BLE001
            self._spin = None
            self.spin_backend = f"fallback (triton unusable: {type(e).__name__}: {str(e)[:120]})"
        try:
            self.iter_us = self._calibrate()
        except Exception as e:  # noqa: BLE001
            if self._spin is None:
                raise
            self._spin = None
            self.spin_backend = f"fallback (triton calibration failed: {type(e).__name__}: {str(e)[:120]})"
            self.iter_us = self._calibrate()

    def _calibrate(self):
        """us per loop iteration (triton) or per 1000 cycles (_sleep); measured warm."""
        t = self.torch
        res = {}
        for blocks in (1, self.n_sm):
            if self._spin is None and blocks > 1:
                continue
            pts = []
            for n in (256, 4096, 16384):
                ts = []
                for _ in range(3):
                    a, b = self.event(), self.event()
                    with t.cuda.stream(self.stream):
                        a.record()
                        self._launch_raw(blocks, n)
                        b.record()
                    b.synchronize()
                    ts.append(a.elapsed_time(b) * 1e3)
                pts.append((n, min(ts)))
            (n1, t1), (n2, t2) = pts[0], pts[-1]
            res[blocks] = max((t2 - t1) / (n2 - n1), 1e-6)
        return res

    def _launch_raw(self, blocks, n):
        if self._spin is not None:
            self._spin[(blocks,)](self._spin_out, int(n), num_warps=1)
        else:
            self.torch.cuda._sleep(int(n) * 1000)  # n = kilo-cycles

    def spin(self, blocks, us):
        """Launch a compute-only kernel on `blocks` blocks lasting ~us (warm clocks),
        on the current stream."""
        if self._spin is None and blocks > 1:
            return self._graph_burst(blocks, us)
        per = self.iter_us.get(blocks) or self.iter_us.get(1)
        n = max(16, int(us / per) // 16 * 16)
        self._launch_raw(blocks, n)

    def _graph_burst(self, blocks, us):
        """Fallback all-SM ghost: a CUDA graph of small elementwise kernels whose grid is
        ~#SMs (128 threads x 4 elems per block), replayed as one launch."""
        t = self.torch
        k = max(1, int(us / 2.5))
        key = (blocks, k)
        if key not in self.graphs:
            x = t.ones(blocks * 512, dtype=t.float32, device=self.dev)
            s = t.cuda.current_stream()
            g = t.cuda.CUDAGraph()
            side = t.cuda.Stream()
            side.wait_stream(s)
            with t.cuda.stream(side):
                for _ in range(3):
                    x.mul_(1.0000001)
            s.wait_stream(side)
            with t.cuda.graph(g, stream=side):
                for _ in range(k):
                    x.mul_(1.0000001)
            self.graphs[key] = (g, x)
        self.graphs[key][0].replay()

    def measure_spin_us(self, blocks, us):
        a, b = self.event(), self.event()
        with self.torch.cuda.stream(self.ghost_stream):
            a.record()
            self.spin(blocks, us)
            b.record()
        b.synchronize()
        return a.elapsed_time(b) * 1e3

    # --- busy workload for the cost of a ghost
    def busy(self, seconds, mm):
        t = self.torch
        a, b = self.event(), self.event()
        n = 0
        with t.cuda.stream(self.stream):
            mm.run(0)
            self.stream.synchronize()
            w0 = time.perf_counter()
            a.record()
            while time.perf_counter() - w0 < seconds:
                for _ in range(20):
                    mm.run(0)
                n += 20
                # keep the queue short but never empty: wait for the batch before last
                mm.mark()
            b.record()
        b.synchronize()
        gpu_ms = a.elapsed_time(b)
        us = gpu_ms * 1e3 / n
        return {"matmuls": n, "gpu_ms": round(gpu_ms, 2), "us_per_matmul": round(us, 3),
                "tflops": round(2 * 4096 ** 3 / (us * 1e-6) / 1e12, 2)}


def _triton_spin():
    import triton  # noqa: PLC0415
    import triton.language as tl  # noqa: PLC0415

    @triton.jit(do_not_specialize=["n_iter"])
    def spin_kernel(out_ptr, n_iter):
        pid = tl.program_id(0)
        acc = pid.to(tl.float32) + 1.0
        for _ in range(n_iter):
            acc = acc * 0.999 + 0.5
        tl.store(out_ptr + pid, acc)

    return spin_kernel


class Matmul:
    def __init__(self, gpu, n_sets):
        t = gpu.torch
        self.gpu = gpu
        self.sets = []
        for _ in range(n_sets):
            a = t.randn(4096, 4096, dtype=t.bfloat16, device=gpu.dev)
            b = t.randn(4096, 4096, dtype=t.bfloat16, device=gpu.dev)
            c = t.empty(4096, 4096, dtype=t.bfloat16, device=gpu.dev)
            self.sets.append((a, b, c))
        self.marks = []
        self.prime_n = 3

    def run(self, i, first=None):
        a, b, c = self.sets[i % len(self.sets)]
        self.gpu.torch.mm(a, b, out=c)
        if first is not None:
            first.record()

    def mark(self):
        e = self.gpu.torch.cuda.Event()
        e.record()
        self.marks.append(e)
        if len(self.marks) > 2:
            self.marks.pop(0).synchronize()


class Decode:
    """Batch 1, seq 1 decode step of a hidden-4096 layer: LN, QKV, SDPA over a 512-token
    KV cache (32 heads x 128), O proj, residual, LN, MLP 4x with GELU, residual."""

    H, HEADS, KV = 4096, 32, 512

    def __init__(self, gpu, n_sets):
        t = gpu.torch
        self.gpu = gpu
        H, hd = self.H, self.H // self.HEADS
        bf = dict(dtype=t.bfloat16, device=gpu.dev)
        self.sets = []
        for _ in range(n_sets):
            s = {
                "ln1w": t.ones(H, **bf), "ln1b": t.zeros(H, **bf),
                "wqkv": t.randn(H, 3 * H, **bf) * 0.02, "wo": t.randn(H, H, **bf) * 0.02,
                "ln2w": t.ones(H, **bf), "ln2b": t.zeros(H, **bf),
                "w1": t.randn(H, 4 * H, **bf) * 0.02, "w2": t.randn(4 * H, H, **bf) * 0.02,
                "k": t.randn(1, self.HEADS, self.KV, hd, **bf), "v": t.randn(1, self.HEADS, self.KV, hd, **bf),
                "x": t.randn(1, 1, H, **bf),
            }
            self.sets.append(s)
        self.prime_n = 3

    def run(self, i, first=None):
        F = self.gpu.F
        s = self.sets[i % len(self.sets)]
        H, hd = self.H, self.H // self.HEADS
        x = s["x"]
        h = F.layer_norm(x, (H,), s["ln1w"], s["ln1b"])
        if first is not None:
            first.record()
        q, k, v = (h @ s["wqkv"]).split(H, dim=-1)
        q = q.view(1, 1, self.HEADS, hd).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, s["k"], s["v"])
        x2 = x + a.transpose(1, 2).reshape(1, 1, H) @ s["wo"]
        h2 = F.layer_norm(x2, (H,), s["ln2w"], s["ln2b"])
        return x2 + F.gelu(h2 @ s["w1"]) @ s["w2"]


# ----------------------------------------------------------------------------- primary ctx flags (child processes)


def _libcuda():
    return ctypes.CDLL("libcuda.so.1")


def set_primary_ctx_flags(name):
    """Set the primary context's scheduling flag before anything creates it (driver API:
    cuDevicePrimaryCtxSetFlags, which is what cudaSetDeviceFlags does for the runtime)."""
    info = {"asked": name}
    cu = _libcuda()
    dev = ctypes.c_int()
    r = cu.cuInit(0)
    r2 = cu.cuDeviceGet(ctypes.byref(dev), 0)
    if r or r2:
        raise RuntimeError(f"cuInit={r} cuDeviceGet={r2}")
    fn = getattr(cu, "cuDevicePrimaryCtxSetFlags_v2", None) or cu.cuDevicePrimaryCtxSetFlags
    r = fn(dev, ctypes.c_uint(CU_CTX_SCHED[name]))
    info["set_rc"] = r
    info["before_init"] = primary_ctx_flags()
    if r:
        raise RuntimeError(f"cuDevicePrimaryCtxSetFlags({CU_CTX_SCHED[name]}) returned {r}")
    return info


def primary_ctx_flags():
    cu = _libcuda()
    dev = ctypes.c_int()
    cu.cuDeviceGet(ctypes.byref(dev), 0)
    flags, active = ctypes.c_uint(), ctypes.c_int()
    r = cu.cuDevicePrimaryCtxGetState(dev, ctypes.byref(flags), ctypes.byref(active))
    return {"rc": r, "flags": flags.value, "sched": flags.value & 7, "active": active.value}


# ----------------------------------------------------------------------------- fake backend (--cpu-smoke)


class _FakeEvent:
    def __init__(self, gpu):
        self.gpu = gpu
        self.t = None

    def record(self, *a):
        self.t = self.gpu.clock

    def synchronize(self):
        pass

    def elapsed_time(self, other):
        return (other.t - self.t) / 1e3


class FakeGpu:
    """FAKE timings for --cpu-smoke: a synthetic 'penalty grows with the gap' model so the
    tables have something to show. Nothing here says anything about a real GPU."""

    def __init__(self, args, sched=None):
        self.args = args
        self.n_sm = 132
        self.l2 = 50 << 20
        self.clock = 0.0  # fake GPU clock, us
        self.last_busy = time.perf_counter()
        self.spin_backend = "FAKE"
        self.sched_info = {"asked": sched, "FAKE": True} if sched else None
        self.rng = random.Random(1)
        self.pending_warm = False

    def uuid(self):
        return None

    def info(self):
        return {"gpu": "FAKE (cpu-smoke)", "sms": self.n_sm, "l2_bytes": self.l2,
                "spin_backend": self.spin_backend}

    def sync(self):
        pass

    def sync_main(self):
        pass

    def sleep(self, s):
        time.sleep(s * self.args.smoke_scale)

    def event(self):
        return _FakeEvent(self)

    def make_workload(self, name, n_sets):
        return FakeWork(self, 214.0 if name == "matmul" else 150.0)

    def _kernel(self, base):
        idle_ms = (time.perf_counter() - self.last_busy) * 1e3 / self.args.smoke_scale
        if self.pending_warm:
            idle_ms, self.pending_warm = 0.0, False
        pen = 0.9 * (1 - math.exp(-idle_ms / 15.0))
        self.clock += base * (1 + pen) * self.rng.uniform(0.98, 1.02)
        self.last_busy = time.perf_counter()

    def flush_l2(self):
        self._kernel(30.0)

    def prekick(self):
        self._kernel(5.0)

    def setup_spin(self):
        self.iter_us = {1: 0.002, self.n_sm: 0.002}

    def spin(self, blocks, us):
        self.clock += us

    def measure_spin_us(self, blocks, us):
        return us

    def busy(self, seconds, mm):
        time.sleep(min(seconds, 0.05))
        n = int(seconds * 1e6 / 214)
        return {"matmuls": n, "gpu_ms": seconds * 1e3, "us_per_matmul": 214.0,
                "tflops": round(2 * 4096 ** 3 / 214e-6 / 1e12, 2), "FAKE": True}


class FakeWork:
    prime_n = 3

    def __init__(self, gpu, base):
        self.gpu = gpu
        self.base = base

    def run(self, i, first=None):
        self.gpu._kernel(self.base)
        if first is not None:
            first.record()


# ----------------------------------------------------------------------------- ghost thread


class Ghost:
    """Host thread launching spin kernels on the low-priority ghost stream.
    period_ms > 0: one kernel of `us` on `blocks` blocks every period_ms.
    period_ms == 0: keep the stream busy (<= 2 kernels queued) all the time."""

    def __init__(self, gpu, blocks, us, period_ms):
        self.gpu, self.blocks, self.us, self.period = gpu, blocks, us, period_ms / 1e3
        self.stop_ev = threading.Event()
        self.launches = 0
        self.error = None
        self.th = None

    def _loop(self):
        g = self.gpu
        try:
            if hasattr(g, "bind_thread"):
                g.bind_thread()
            ctx = g.torch.cuda.stream(g.ghost_stream) if hasattr(g, "torch") else _Null()
            with ctx:
                if self.period == 0:
                    q = []
                    while not self.stop_ev.is_set():
                        g.spin(self.blocks, self.us)
                        self.launches += 1
                        if hasattr(g, "torch"):
                            e = g.torch.cuda.Event()
                            e.record()
                            q.append(e)
                            while len(q) > 2 and not self.stop_ev.is_set():
                                if q[0].query():
                                    q.pop(0)
                                else:
                                    time.sleep(50e-6)
                        else:
                            time.sleep(self.us / 1e6)
                    return
                nxt = time.perf_counter()
                while not self.stop_ev.is_set():
                    g.spin(self.blocks, self.us)
                    self.launches += 1
                    nxt += self.period
                    dt = nxt - time.perf_counter()
                    if dt > 0:
                        self.stop_ev.wait(dt)
                    else:
                        nxt = time.perf_counter()
        except Exception as e:  # noqa: BLE001
            self.error = f"{type(e).__name__}: {e}"

    def start(self):
        self.t_start = time.perf_counter()
        self.th = threading.Thread(target=self._loop, daemon=True)
        self.th.start()
        time.sleep(0.05)
        if self.error:
            raise RuntimeError(f"ghost thread failed: {self.error}")

    def stop(self):
        self.stop_ev.set()
        if self.th:
            self.th.join(timeout=10)
        self.gpu.sync()
        dt = time.perf_counter() - self.t_start
        return {"launches": self.launches, "seconds": round(dt, 2),
                "launch_hz": round(self.launches / dt, 1) if dt else None, "error": self.error}


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


# ----------------------------------------------------------------------------- measurement


def measure_variant(gpu, mon, works, gaps, reps, mode=None):
    """mode: None | 'fresh' | 'flush' | 'prekick'. Returns {workload: {gap: cell}}."""
    out = {}
    for wname, wl in works.items():
        cells = {g: {"gpu_us": [], "first_kernel_us": [], "wall_us": [], "nvml": []} for g in gaps}
        order = []
        for r in range(max(reps[g] for g in gaps)):
            gs = [g for g in gaps if r < reps[g]]
            order += gs if r % 2 == 0 else gs[::-1]  # alternate the order: no gap always follows the same one
        for k, g in enumerate(order):
            meas_set = (k + 1) if mode == "fresh" else 0
            prime_set = k if mode == "fresh" else 0
            stream_ctx = gpu.torch.cuda.stream(gpu.stream) if hasattr(gpu, "torch") else _Null()
            with stream_ctx:
                for _ in range(wl.prime_n):  # the same busy history (~1 ms) before every gap
                    wl.run(prime_set)
                gpu.sync_main()
                if g:
                    gpu.sleep(g / 1e3)
                    smp = mon.sample() if mon else None
                    smp_when = "before launch"
                else:
                    smp = None
                    smp_when = "after completion (g=0: a read before would add a gap)"
                a, f, b, a0 = gpu.event(), gpu.event(), gpu.event(), gpu.event()
                w0 = time.perf_counter()
                a0.record()  # before any pre-kernel: 'incl_pre_us' counts it too
                if mode == "flush":
                    gpu.flush_l2()
                elif mode == "prekick":
                    gpu.prekick()
                a.record()
                wl.run(meas_set, first=f)
                b.record()
                b.synchronize()
                w1 = time.perf_counter()
            if not g and mon:
                smp = mon.sample()
            c = cells[g]
            c["gpu_us"].append(round(a.elapsed_time(b) * 1e3, 2))
            c["first_kernel_us"].append(round(a.elapsed_time(f) * 1e3, 2))
            c["wall_us"].append(round((w1 - w0) * 1e6, 2))
            if mode in ("flush", "prekick"):
                c.setdefault("incl_pre_us", []).append(round(a0.elapsed_time(b) * 1e3, 2))
            if smp is not None:
                smp["when"] = smp_when
                c["nvml"].append(smp)
        for g, c in cells.items():
            c["median_gpu_us"] = median(c["gpu_us"])
            c["median_first_kernel_us"] = median(c["first_kernel_us"])
            c["median_wall_us"] = median(c["wall_us"])
            if "incl_pre_us" in c:
                c["median_incl_pre_us"] = median(c["incl_pre_us"])
            for key in ("sm_mhz", "mem_mhz", "power_w", "pstate", "temp_c"):
                c["median_" + key] = median([s.get(key) for s in c["nvml"]])
            rs = [s.get("reasons_txt") for s in c["nvml"] if s.get("reasons_txt")]
            c["reasons_seen"] = sorted(set(rs))
        base = cells[gaps[0]]["median_gpu_us"]
        basew = cells[gaps[0]]["median_wall_us"]
        basei = cells[gaps[0]].get("median_incl_pre_us")
        for c in cells.values():
            c["ratio_gpu"] = round(c["median_gpu_us"] / base, 3) if base else None
            c["ratio_wall"] = round(c["median_wall_us"] / basew, 3) if basew else None
            basef = cells[gaps[0]]["median_first_kernel_us"]
            c["ratio_first"] = round(c["median_first_kernel_us"] / basef, 3) if basef else None
            if basei:
                c["ratio_incl_pre"] = round(c["median_incl_pre_us"] / basei, 3)
        out[wname] = {str(g): c for g, c in cells.items()}
    return out


def warm_up(gpu, works):
    """cuBLAS handle and workspace, kernels, clocks: on the measured stream, since cuBLAS
    sets up per stream and the first g=0 sample must not pay for it."""
    with gpu.torch.cuda.stream(gpu.stream) if hasattr(gpu, "torch") else _Null():
        for wl in works.values():
            for i in range(20):
                wl.run(i)
    gpu.sync()


def est_variant_s(gaps, reps, n_work=2):
    return n_work * (sum(g / 1e3 * reps[g] for g in gaps) + 0.01 * sum(reps[g] for g in gaps)) + 0.5


# ----------------------------------------------------------------------------- main run


def ghost_specs(gpu):
    n = gpu.n_sm
    return {
        "ghost 1 SM, 10us/2ms": dict(blocks=1, us=10.0, period_ms=2.0),
        f"ghost all {n} SMs, 10us/2ms": dict(blocks=n, us=10.0, period_ms=2.0),
        f"ghost all {n} SMs, 200us/2ms (~10%)": dict(blocks=n, us=200.0, period_ms=2.0),
        "busy stream (1 SM, never idle)": dict(blocks=1, us=200.0, period_ms=0.0),
    }


def new_result(args):
    gaps = GAPS_QUICK if args.quick else GAPS_FULL
    reps = REPS_QUICK if args.quick else REPS_FULL
    return {"meta": {"argv": sys.argv, "quick": args.quick, "FAKE_TIMINGS": args.cpu_smoke,
                     "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "gaps_ms": gaps, "reps": {str(g): reps[g] for g in gaps},
                     "budget_s": args.budget_s},
            "variants": {}, "costs": {}, "clock_log": []}


def run_main(args, res):
    fake = args.cpu_smoke
    gaps = GAPS_QUICK if args.quick else GAPS_FULL
    reps = REPS_QUICK if args.quick else REPS_FULL
    busy_s = 1.0 if args.quick else 2.0
    idle_s = 0.5 if args.quick else 1.0
    gpu = (FakeGpu if fake else TorchGpu)(args)
    gpu_id = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or "0"
    if not gpu_id.isdigit():
        gpu_id = "0"
    uuid = gpu.uuid()
    mon = Monitor(uuid, int(gpu_id), allow_smi=not fake)
    # nvidia-smi -i: the UUID NVML accepted (same GPU as CUDA device 0), else the index
    smi_id = getattr(mon.nvml, "bound_by", "index " + gpu_id).split(" ", 1)[1]
    clocks = Clocks(smi_id, fake=fake)
    res["meta"]["nvidia_smi_id"] = smi_id
    res["meta"]["monitor"] = mon.kind
    res["meta"]["monitor_note"] = mon.reason
    try:
        clocks.reset_all()  # a lock left over by an earlier run would skew 'plain'
        res["meta"]["nvidia_smi_q_at_start"] = clocks.snapshot()
        try:
            gpu.setup_spin()
            spin_ok = None
        except Exception as e:  # noqa: BLE001
            spin_ok = f"n/a: no spin kernel: {type(e).__name__}: {e}"
            gpu.iter_us = {}
        info = gpu.info()
        info["spin_iter_us"] = {str(k): v for k, v in getattr(gpu, "iter_us", {}).items()}
        if mon.kind.startswith("nvml"):
            info["max_sm_mhz"] = mon.nvml.max_sm_mhz()
            info["max_mem_mhz"] = mon.nvml.max_mem_mhz()
            info["supported_mem_mhz"] = mon.nvml.supported_mem_mhz()
        res["meta"]["gpu"] = info
        log(f"device: {info}")
        log(f"monitor: {mon.kind} {mon.reason or ''}")
        works = {w: gpu.make_workload(w, 3) for w in WORKLOADS}
        warm_up(gpu, works)
        est = est_variant_s(gaps, reps)
        specs = ghost_specs(gpu)
        v = res["variants"]

        def budget_ok(name, extra=0.0):
            left = args.budget_s - (time.monotonic() - T0) - args.reserve_s
            if left < est + extra:
                v[name] = {"status": f"n/a: skipped, time budget ({left:.0f} s left, needs ~{est + extra:.0f} s)"}
                log(f"{name}: {v[name]['status']}")
                return False
            return True

        def plain(name, note, mode=None):
            if not budget_ok(name):
                return
            log(f"variant: {name}")
            try:
                v[name] = {"status": "ok", "note": note,
                           "workloads": measure_variant(gpu, mon, works, gaps, reps, mode)}
            except Exception as e:  # noqa: BLE001
                v[name] = {"status": f"n/a: {type(e).__name__}: {e}"}
            print_one(name, v[name], gaps)

        plain("plain", "no change")

        def locked(name, lock_args, note):
            if not budget_ok(name):
                return
            log(f"variant: {name}")
            try:
                msgs = []
                for la in lock_args:
                    ok, out = clocks.smi(*la)
                    msgs.append(out)
                    if not ok:
                        v[name] = {"status": f"n/a: nvidia-smi {' '.join(la)} failed: {out[:200]}"}
                        log(f"{name}: {v[name]['status']}")
                        return
                time.sleep(0.3)
                v[name] = {"status": "ok", "note": note + " | " + " / ".join(m[:120] for m in msgs),
                           "workloads": measure_variant(gpu, mon, works, gaps, reps)}
            except Exception as e:  # noqa: BLE001
                v[name] = {"status": f"n/a: {type(e).__name__}: {e}"}
            finally:
                clocks.reset_all()
                time.sleep(0.3)
            print_one(name, v[name], gaps)

        max_sm = (mon.nvml.max_sm_mhz() if mon.kind.startswith("nvml") else None) or args.sm_mhz
        mems = mon.nvml.supported_mem_mhz() if mon.kind.startswith("nvml") else []
        max_mem = (max(mems) if mems else None) or (mon.nvml.max_mem_mhz() if mon.kind.startswith("nvml") else None)
        lmc = ["-lmc", f"{max_mem},{max_mem}"] if max_mem else None
        lgc = ["-lgc", f"{max_sm},{max_sm}"]
        if lmc:
            locked("mem clock locked", [lmc], f"nvidia-smi {' '.join(lmc)}")
        else:
            v["mem clock locked"] = {"status": "n/a: max memory clock unknown (no NVML)"}
        locked("SM clock locked", [lgc], f"nvidia-smi {' '.join(lgc)}")
        if lmc and v.get("mem clock locked", {}).get("status") == "ok":
            locked("SM + mem clocks locked", [lgc, lmc], "both")
        plain("fresh operands", "prime on operand set k, measure on set k+1 (3 sets > L2: cold L2/TLB)", "fresh")
        plain("L2 flush right before", f"memset of {gpu.flush_buf.numel() >> 20 if hasattr(gpu, 'flush_buf') else 256} MiB "
              "enqueued right before the measured step (after the gap). g=0: cold L2 without a gap; "
              "g>0: the memset is the first kernel after the gap", "flush")
        if spin_ok:
            v["pre-kick 5us kernel right before"] = {"status": spin_ok}
        else:
            plain("pre-kick 5us kernel right before", "a ~5 us 1-block kernel enqueued right before the step", "prekick")

        for name, sp in specs.items():
            if spin_ok:
                v[name] = {"status": spin_ok}
                continue
            if not budget_ok(name):
                continue
            log(f"variant: {name}")
            gh = None
            try:
                dur = gpu.measure_spin_us(sp["blocks"], sp["us"])
                gh = Ghost(gpu, **sp)
                gh.start()
                w = measure_variant(gpu, mon, works, gaps, reps)
                st = gh.stop()
                gh = None
                v[name] = {"status": "ok" if not st["error"] else f"n/a: {st['error']}",
                           "note": f"spin kernel measured {dur:.1f} us (warm); {st['launch_hz']} launches/s; "
                                   f"backend {gpu.spin_backend}", "ghost": st, "spin_us": dur, "workloads": w}
            except Exception as e:  # noqa: BLE001
                v[name] = {"status": f"n/a: {type(e).__name__}: {e}"}
            finally:
                if gh:
                    gh.stop()
            print_one(name, v[name], gaps)

        # --- cost of each ghost: busy throughput + power (ABBA-ish: baseline first and last)
        if time.monotonic() - T0 + len(specs) * (busy_s + idle_s) + 2 * (busy_s + idle_s) + args.reserve_s < args.budget_s:
            log("cost: busy throughput and power with / without each ghost")
            mm = works["matmul"]
            costs = res["costs"]

            def cost(tag, spec):
                gh = None
                try:
                    if spec:
                        # builds the fallback CUDA graph here, not inside the ghost thread
                        gpu.measure_spin_us(spec["blocks"], spec["us"])
                        gh = Ghost(gpu, **spec)
                        gh.start()
                    e0 = mon.energy_mj()
                    t0 = time.perf_counter()
                    gpu.sleep(idle_s)
                    e1 = mon.energy_mj()
                    t1 = time.perf_counter()
                    b = gpu.busy(busy_s, mm)
                    e2 = mon.energy_mj()
                    t2 = time.perf_counter()
                    if gh:
                        b["ghost"] = gh.stop()
                        gh = None
                    b["idle_power_w"] = round((e1 - e0) / 1e3 / (t1 - t0), 1) if e0 is not None and e1 is not None else None
                    b["busy_power_w"] = round((e2 - e1) / 1e3 / (t2 - t1), 1) if e1 is not None and e2 is not None else None
                    if b["idle_power_w"] is None:
                        b["power_note"] = f"n/a: no NVML energy counter ({mon.kind})"
                    costs[tag] = b
                except Exception as e:  # noqa: BLE001
                    costs[tag] = {"status": f"n/a: {type(e).__name__}: {e}"}
                finally:
                    if gh:
                        gh.stop()
                log(f"cost {tag}: {costs[tag]}")

            cost("baseline (no ghost) #1", None)
            for name, sp in specs.items():
                if spin_ok:
                    res["costs"][name] = {"status": spin_ok}
                else:
                    cost(name, sp)
            cost("baseline (no ghost) #2", None)
        else:
            res["costs"] = {"status": "n/a: skipped, time budget"}

        # --- context scheduling flags: one child process each (flags precede context creation)
        for sched in (["spin", "blocking_sync"] if args.quick else CHILD_SCHED):
            name = f"sched={sched} (child process)"
            left = args.budget_s - (time.monotonic() - T0) - args.reserve_s
            need = est + args.child_overhead_s
            if left < need:
                v[name] = {"status": f"n/a: skipped, time budget ({left:.0f} s left, needs ~{need:.0f} s)"}
                log(f"{name}: {v[name]['status']}")
                continue
            log(f"variant: {name}")
            v[name] = run_child(args, sched, timeout=min(left, need + 60))
            print_one(name, v[name], gaps)

        plain("plain (again, drift check)", "same as plain, at the end of the run")
    finally:
        clocks.reset_all()
        res["clock_log"] = clocks.log
        mon.close()
    res["meta"]["wall_s"] = round(time.monotonic() - T0, 1)


def run_child(args, sched, timeout):
    out = f"{args.out}.child-{sched}.json"
    cmd = [sys.executable, os.path.abspath(__file__), "--child-sched", sched, "--out", out]
    if args.quick:
        cmd.append("--quick")
    if args.cpu_smoke:
        cmd += ["--cpu-smoke", "--smoke-scale", str(args.smoke_scale)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"n/a: child timed out after {timeout:.0f} s"}
    try:
        with open(out) as f:
            r = json.load(f)
    except (OSError, ValueError):
        tail = (p.stdout + p.stderr).strip().splitlines()[-3:]
        return {"status": f"n/a: child rc={p.returncode}: {' | '.join(tail)[:300]}"}
    finally:
        try:
            os.unlink(out)
        except OSError:
            pass
    return r


def run_child_main(args):
    """Child: set the primary context's scheduling flag, then measure 'plain'."""
    gaps = GAPS_QUICK if args.quick else GAPS_FULL
    reps = REPS_QUICK if args.quick else REPS_FULL
    t0 = time.monotonic()
    try:
        gpu = (FakeGpu if args.cpu_smoke else TorchGpu)(args, sched=args.child_sched)
        gpu_id = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
        mon = Monitor(gpu.uuid(), int(gpu_id) if gpu_id.isdigit() else 0, allow_smi=not args.cpu_smoke)
        works = {w: gpu.make_workload(w, 1) for w in WORKLOADS}
        warm_up(gpu, works)
        setup_s = time.monotonic() - t0
        r = {"status": "ok", "note": f"ctx flags {gpu.sched_info}; child setup {setup_s:.1f} s",
             "sched": gpu.sched_info, "workloads": measure_variant(gpu, mon, works, gaps, reps)}
        mon.close()
    except Exception as e:  # noqa: BLE001
        r = {"status": f"n/a: {type(e).__name__}: {e}"}
    with open(args.out, "w") as f:
        json.dump(r, f)


# ----------------------------------------------------------------------------- tables


def fmt_cell(c, key="median_gpu_us", rkey="ratio_gpu"):
    if not c or c.get(key) is None:
        return "n/a"
    v = f"{c[key]:.0f}" if c[key] >= 10 else f"{c[key]:.2f}"
    return f"{v} ({c[rkey]:.2f}x)" if c.get(rkey) is not None else v


def table(res, wname, key="median_gpu_us", rkey="ratio_gpu"):
    gaps = res["meta"]["gaps_ms"]
    lines = ["| variant | " + " | ".join(f"g={g} ms" for g in gaps) + " |",
             "|---|" + "---|" * len(gaps)]
    for name, vr in res["variants"].items():
        if vr.get("status") != "ok" or wname not in vr.get("workloads", {}):
            lines.append(f"| {name} | {vr.get('status', 'n/a')} |" + " |" * (len(gaps) - 1))
            continue
        w = vr["workloads"][wname]
        lines.append(f"| {name} | " + " | ".join(fmt_cell(w.get(str(g)), key, rkey) for g in gaps) + " |")
        if key == "median_gpu_us" and w.get(str(gaps[0]), {}).get("median_incl_pre_us") is not None:
            lines.append(f"| {name}, incl. the pre-kernel | " + " | ".join(
                fmt_cell(w.get(str(g)), "median_incl_pre_us", "ratio_incl_pre") for g in gaps) + " |")
    return "\n".join(lines)


def nvml_table(res, wname):
    gaps = res["meta"]["gaps_ms"]
    lines = ["| variant | " + " | ".join(f"g={g} ms" for g in gaps) + " |",
             "|---|" + "---|" * len(gaps)]
    for name, vr in res["variants"].items():
        if vr.get("status") != "ok":
            continue
        w = vr["workloads"].get(wname, {})
        cells = []
        for g in gaps:
            c = w.get(str(g), {})
            if c.get("median_sm_mhz") is None and c.get("median_power_w") is None:
                cells.append("n/a")
                continue
            def n(x, nd=0):
                return "?" if x is None else f"{x:.{nd}f}"

            cells.append(f"{n(c.get('median_sm_mhz'))}/{n(c.get('median_mem_mhz'))} MHz "
                         f"{n(c.get('median_power_w'), 1)} W P{n(c.get('median_pstate'))} "
                         f"{','.join(c.get('reasons_seen', [])) or ''}".strip())
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cost_table(res):
    c = res.get("costs", {})
    if "status" in c:
        return f"costs: {c['status']}"
    lines = ["| ghost | matmul TFLOP/s | us/matmul | busy power W | idle power W | launches/s |",
             "|---|---|---|---|---|---|"]
    for name, r in c.items():
        if "status" in r:
            lines.append(f"| {name} | {r['status']} | | | | |")
            continue
        g = r.get("ghost", {})
        lines.append(f"| {name} | {r['tflops']} | {r['us_per_matmul']} | {r.get('busy_power_w')} | "
                     f"{r.get('idle_power_w')} | {g.get('launch_hz', '-')} |")
    return "\n".join(lines)


def print_one(name, vr, gaps):
    if vr.get("status") != "ok":
        log(f"  {name}: {vr.get('status')}")
        return
    for wname, w in vr["workloads"].items():
        log(f"  {name} / {wname}: " + "  ".join(f"g={g}:{fmt_cell(w.get(str(g)))}" for g in gaps))


def print_tables(res):
    fake = res["meta"].get("FAKE_TIMINGS")
    hdr = " (FAKE timings: --cpu-smoke)" if fake else ""
    for wname in WORKLOADS:
        print(f"\n### {wname}: GPU time of the first step after the gap, median us (ratio to g=0 of the row){hdr}\n")
        print(table(res, wname))
        print(f"\n### {wname}: wall time launch -> completion, median us (ratio){hdr}\n")
        print(table(res, wname, "median_wall_us", "ratio_wall"))
        print(f"\n### {wname}: NVML just before launch (median SM/mem MHz, W, pstate, clock-event reasons){hdr}\n")
        print(nvml_table(res, wname))
    print(f"\n### cost of each ghost (busy matmuls, NVML energy){hdr}\n")
    print(cost_table(res))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="JSON result file")
    ap.add_argument("--quick", action="store_true", help="fewer gaps and reps (~1.5 min)")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="no GPU: FAKE timings, exercises control flow and tables (stdlib only)")
    ap.add_argument("--smoke-scale", type=float, default=0.02, help="--cpu-smoke: sleep scale")
    ap.add_argument("--budget-s", type=float, default=235.0, help="stop starting variants past this")
    ap.add_argument("--reserve-s", type=float, default=10.0, help="kept for the final steps")
    ap.add_argument("--child-overhead-s", type=float, default=15.0, help="child startup estimate")
    ap.add_argument("--sm-mhz", type=int, default=1980, help="-lgc value when NVML gives no max")
    ap.add_argument("--child-sched", choices=CHILD_SCHED, help=argparse.SUPPRESS)
    args = ap.parse_args()
    # a SIGTERM (e.g. a timeout wrapper) must still run the finally blocks that restore clocks
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.child_sched:
        run_child_main(args)
        return
    res = new_result(args)
    err = None
    try:
        run_main(args, res)
    except BaseException as e:  # noqa: BLE001  (SIGTERM, Ctrl-C, a bug: keep what was measured)
        err = e
        res["meta"]["aborted"] = f"{type(e).__name__}: {e}"
        res["meta"]["wall_s"] = round(time.monotonic() - T0, 1)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    try:
        print_tables(res)
    except Exception as e:  # noqa: BLE001
        log(f"tables failed: {e}")
    log(f"wrote {args.out}; wall {res['meta']['wall_s']} s" + (f"; ABORTED: {res['meta']['aborted']}" if err else ""))
    if err is not None:
        raise err


if __name__ == "__main__":
    main()
