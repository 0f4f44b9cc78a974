// GPU residency probe: can a persistent ("resident") kernel carry airamp's
// data path, so that NCCL's proxy thread makes no CUDA call after setup?
// See README.md in this directory for the questions (Q1-Q5) and run.sh for
// how each case runs (one child process per case, every one under timeout).
//
// Build (run.sh does this):
//   nvcc -O2 -std=c++17 -arch=sm_90 -o probe probe.cu -ldl -lpthread
//   nvcc -O2 -std=c++17 -arch=sm_90 -Xcompiler -fPIC -shared -DPROBE_LIB
//        -o libprobe.so probe.cu -ldl -lpthread      (for probe_torch.py)
//
// Every result is one line `RESULT {json}` on stdout. A call that may block
// is run under a native watchdog: after --hang-ms it tells every resident
// kernel to exit through its mapped stop flag (a host write, no CUDA call),
// so a call that waits for the resident kernel returns and is reported as
// BLOCKED; one that still does not return 3 s later is reported as STUCK and
// the process exits (run.sh then goes on with the remaining items).
//
// No libcuda link: driver functions come from cudaGetDriverEntryPointByVersion
// for CUDA_VERSION, so the symbol versions match the headers.

#include <cuda.h>
#include <cuda_runtime.h>

#include <dlfcn.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

// ------------------------------------------------------------ driver API

#define DRV_LIST(X)                                                          \
  X(cuGetErrorName)                                                          \
  X(cuDeviceGet) X(cuDeviceGetAttribute)                                     \
  X(cuCtxGetCurrent) X(cuCtxSetCurrent) X(cuCtxPushCurrent)                  \
  X(cuCtxPopCurrent) X(cuCtxCreate) X(cuCtxGetExecAffinity)                  \
  X(cuDeviceGetDevResource) X(cuDevSmResourceSplitByCount)                   \
  X(cuDevResourceGenerateDesc) X(cuGreenCtxCreate) X(cuCtxFromGreenCtx)      \
  X(cuGreenCtxStreamCreate)                                                  \
  X(cuStreamCreate) X(cuStreamQuery) X(cuStreamSynchronize)                  \
  X(cuEventCreate) X(cuEventRecord) X(cuEventQuery)                          \
  X(cuLaunchKernel) X(cuKernelGetFunction) X(cuModuleLoadData) X(cuModuleGetFunction)               \
  X(cuModuleUnload)                                                          \
  X(cuMemcpyAsync) X(cuMemcpyHtoDAsync) X(cuMemcpyDtoHAsync)                 \
  X(cuPointerGetAttribute) X(cuMemHostGetDevicePointer)                      \
  X(cuMemCreate) X(cuMemRelease) X(cuMemAddressReserve) X(cuMemAddressFree)  \
  X(cuMemMap) X(cuMemUnmap) X(cuMemSetAccess)                                \
  X(cuMemGetAllocationGranularity)

// decltype(&name) follows cuda.h's versioned macros (cuCtxCreate ->
// cuCtxCreate_v4); the entry point query below asks for the same version.
#define DRV_DECL(n) static decltype(&n) p_##n = nullptr;
DRV_LIST(DRV_DECL)
#undef DRV_DECL

static std::string g_missing;

static void load_driver() {
#define DRV_LOAD(n)                                                          \
  {                                                                          \
    void* f = nullptr;                                                       \
    cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;  \
    if (cudaGetDriverEntryPointByVersion(#n, &f, CUDA_VERSION,               \
                                         cudaEnableDefault,                  \
                                         &q) == cudaSuccess &&               \
        q == cudaDriverEntryPointSuccess && f)                               \
      p_##n = reinterpret_cast<decltype(p_##n)>(f);                          \
    else                                                                     \
      g_missing += std::string(g_missing.empty() ? "" : " ") + #n;           \
  }
  DRV_LIST(DRV_LOAD)
#undef DRV_LOAD
}

static std::string cu_name(CUresult r) {
  const char* s = nullptr;
  if (p_cuGetErrorName && p_cuGetErrorName(r, &s) == CUDA_SUCCESS && s) return s;
  return "CUresult " + std::to_string(static_cast<int>(r));
}
static std::string rt_name(cudaError_t e) { return cudaGetErrorName(e); }

// Result of one call: empty string = success, else what failed.
using Err = std::string;
#define CK(call)                                                             \
  do {                                                                       \
    CUresult e_ = (call);                                                    \
    if (e_ != CUDA_SUCCESS) return Err(#call) + " -> " + cu_name(e_);        \
  } while (0)
#define RK(call)                                                             \
  do {                                                                       \
    cudaError_t e_ = (call);                                                 \
    if (e_ != cudaSuccess) return Err(#call) + " -> " + rt_name(e_);         \
  } while (0)
#define NEED(fn)                                                             \
  do {                                                                       \
    if (!p_##fn) return Err("driver lacks " #fn);                            \
  } while (0)

// ------------------------------------------------------------ time, JSON

static double now_ms() {
  return std::chrono::duration<double, std::milli>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
static double now_us() { return now_ms() * 1000.0; }
static double mono_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static std::string esc(const std::string& s) {
  std::string o;
  for (char ch : s) {
    unsigned char c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      o += '\\';
      o += ch;
    } else if (c < 0x20) {
      char b[8];
      snprintf(b, sizeof b, "\\u%04x", c);
      o += b;
    } else {
      o += ch;
    }
  }
  return o;
}

struct J {
  std::string s = "{";
  bool first = true;
  J& key(const char* k) {
    if (!first) s += ",";
    first = false;
    s += "\"";
    s += k;
    s += "\":";
    return *this;
  }
  J& str(const char* k, const std::string& v) {
    key(k);
    s += "\"" + esc(v) + "\"";
    return *this;
  }
  J& num(const char* k, double v) {
    key(k);
    if (std::isfinite(v)) {
      char b[64];
      snprintf(b, sizeof b, "%.6g", v);
      s += b;
    } else {
      s += "null";
    }
    return *this;
  }
  J& flag(const char* k, bool v) {
    key(k);
    s += v ? "true" : "false";
    return *this;
  }
  std::string done() const { return s + "}"; }
};

static std::string g_q = "?", g_test = "?", g_where = "-", g_tag;
static bool g_mps = false;
static int g_hang_ms = 700;

static J base(const std::string& item) {
  J j;
  j.str("q", g_q).str("test", g_test).str("where", g_where).flag("mps", g_mps);
  if (!g_tag.empty()) j.str("tag", g_tag);
  if (!item.empty()) j.str("item", item);
  return j;
}
static void emit(const J& j) {
  printf("RESULT %s\n", j.done().c_str());
  fflush(stdout);
}

static double pct(std::vector<double> v, double p) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(p / 100.0 * (v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}
static double median(std::vector<double> v) { return pct(std::move(v), 50); }

// ------------------------------------------------------------ kernels

// Control block in mapped pinned host memory. Host->device and
// device->host halves sit on different 256-byte lines.
struct HostToDev {
  unsigned stop;
  unsigned seq;
  unsigned op;
  unsigned pad;
  unsigned long long a[4];
};
struct DevToHost {
  unsigned started, exited, done, smid;
  unsigned long long r0, r1, heartbeat, max_gap_ns, bad_desc, loops;
};
struct Ctl {
  HostToDev h;
  unsigned char pad0[256 - sizeof(HostToDev)];
  DevToHost d;
  unsigned char pad1[256 - sizeof(DevToHost)];
};
static_assert(sizeof(Ctl) == 512, "control block layout");

enum : unsigned { OP_ECHO = 1, OP_MEMTEST = 2, OP_STATS = 3 };

__host__ __device__ inline unsigned pat(unsigned seed, unsigned i) {
  return (i * 2654435761u) ^ seed;
}

__device__ __forceinline__ unsigned long long gtimer() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
__device__ __forceinline__ unsigned ld_acq32(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ unsigned ld_rlx32(const unsigned* p) {
  unsigned v;
  asm volatile("ld.relaxed.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ unsigned long long ld_rlx64(const unsigned long long* p) {
  unsigned long long v;
  asm volatile("ld.relaxed.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void st_rel32(unsigned* p, unsigned v) {
  asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ void st_rlx64(unsigned long long* p, unsigned long long v) {
  asm volatile("st.relaxed.sys.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}

// The resident kernel: one warp, lane 0 polls the doorbell (h.seq) and the
// stop flag in mapped host memory and answers through mapped host memory.
// mode 0 spins, 1 sleeps sleep_ns per idle poll, 2 backs off exponentially
// from 32 ns to sleep_ns. It exits by itself after lifetime_ns, so no case
// can pin the GPU for longer than that.
__global__ void resident_kernel(Ctl* c, unsigned mode, unsigned sleep_ns,
                                unsigned long long lifetime_ns) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  unsigned smid;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));
  const unsigned long long t0 = gtimer();
  unsigned long long last = t0, last_pub = t0, maxgap = 0, loops = 0, bad = 0;
  unsigned handled = 0, backoff = 32, code = 0;
  c->d.smid = smid;
  st_rel32(&c->d.started, 1u);
  for (;;) {
    const unsigned long long now = gtimer();
    if (now - last > maxgap) maxgap = now - last;
    last = now;
    ++loops;
    const unsigned s = ld_acq32(&c->h.seq);
    if (s != handled) {
      const unsigned op = ld_rlx32(&c->h.op);
      const unsigned long long a0 = ld_rlx64(&c->h.a[0]), a1 = ld_rlx64(&c->h.a[1]),
                               a2 = ld_rlx64(&c->h.a[2]), a3 = ld_rlx64(&c->h.a[3]);
      unsigned long long r0 = 0, r1 = 0;
      if (op == OP_ECHO) {
        if (a3 != s) ++bad;  // a torn descriptor: the flag overtook the data
        r0 = a0 + a1 + a2 + a3;
      } else if (op == OP_MEMTEST) {
        volatile unsigned* p = reinterpret_cast<volatile unsigned*>(a0);
        const unsigned n = static_cast<unsigned>(a1), seed = static_cast<unsigned>(a2);
        unsigned long long mism = 0;
        for (unsigned i = 0; i < n; ++i) {
          if (p[i] != pat(seed, i)) ++mism;
          p[i] = ~pat(seed, i);
        }
        __threadfence_system();
        r0 = mism;
      } else if (op == OP_STATS) {
        r0 = maxgap;
        r1 = loops;
        maxgap = 0;
      }
      st_rlx64(&c->d.r0, r0);
      st_rlx64(&c->d.r1, r1);
      st_rlx64(&c->d.bad_desc, bad);
      st_rel32(&c->d.done, s);
      handled = s;
      backoff = 32;
      last = gtimer();
      continue;
    }
    if ((loops & 7) == 0) {
      if (now - last_pub > 20000) {
        st_rlx64(&c->d.heartbeat, loops);
        st_rlx64(&c->d.max_gap_ns, maxgap);
        last_pub = now;
      }
      if (ld_acq32(&c->h.stop)) {
        code = 1;
        break;
      }
      if (now - t0 > lifetime_ns) {
        code = 2;
        break;
      }
    }
    if (mode == 1) {
      __nanosleep(sleep_ns);
    } else if (mode == 2) {
      __nanosleep(backoff);
      backoff = backoff * 2 > sleep_ns ? sleep_ns : backoff * 2;
    }
  }
  st_rlx64(&c->d.heartbeat, loops);
  st_rlx64(&c->d.max_gap_ns, maxgap);
  st_rlx64(&c->d.loops, loops);
  st_rel32(&c->d.exited, code);
}

// Compute-bound load for the primary context: 4 FMA chains per thread.
__global__ void work_kernel(float* out, unsigned iters) {
  float x0 = threadIdx.x * 1e-3f, x1 = x0 + 1.f, x2 = x0 + 2.f, x3 = x0 + 3.f;
  const float b = 1.0000001f, c = 1e-7f;
  for (unsigned i = 0; i < iters; ++i) {
    x0 = fmaf(x0, b, c);
    x1 = fmaf(x1, b, c);
    x2 = fmaf(x2, b, c);
    x3 = fmaf(x3, b, c);
  }
  if (x0 + x1 + x2 + x3 == 12345.678f) out[blockIdx.x] = x0;
}

__global__ void tiny_kernel(unsigned* p) {
  if (p) atomicAdd(p, 1u);
}

// Distinct kernels never launched before their test: with lazy loading
// (CUDA_MODULE_LOADING=LAZY, the default) their first launch loads them.
template <int N>
__global__ void fresh_kernel(unsigned* p) {
  if (p) p[0] = 1000u + N;
}
static const void* const kFresh[] = {
    (const void*)fresh_kernel<0>,  (const void*)fresh_kernel<1>,
    (const void*)fresh_kernel<2>,  (const void*)fresh_kernel<3>,
    (const void*)fresh_kernel<4>,  (const void*)fresh_kernel<5>,
    (const void*)fresh_kernel<6>,  (const void*)fresh_kernel<7>,
    (const void*)fresh_kernel<8>,  (const void*)fresh_kernel<9>,
    (const void*)fresh_kernel<10>, (const void*)fresh_kernel<11>,
    (const void*)fresh_kernel<12>, (const void*)fresh_kernel<13>,
    (const void*)fresh_kernel<14>, (const void*)fresh_kernel<15>,
};
static int g_fresh_next = 0;
static const void* next_fresh() {
  return kFresh[g_fresh_next++ % (sizeof kFresh / sizeof kFresh[0])];
}

// A new module for cuModuleLoadData (PTX, JIT-compiled by the driver).
static std::string ptx_module(int major, int minor, int n) {
  char b[1024];
  snprintf(b, sizeof b,
           ".version 8.0\n.target sm_%d%d\n.address_size 64\n"
           ".visible .entry ptx_kernel_%d(.param .u64 p0)\n{\n"
           "  .reg .b32 %%r<2>;\n  .reg .b64 %%rd<3>;\n"
           "  ld.param.u64 %%rd1, [p0];\n  cvta.to.global.u64 %%rd2, %%rd1;\n"
           "  mov.u32 %%r1, %d;\n  st.global.u32 [%%rd2], %%r1;\n  ret;\n}\n",
           major, minor, n, 7 + n);
  return b;
}

// ------------------------------------------------------------ host state

static CUdevice g_dev = 0;
static CUcontext g_primary = nullptr;
static cudaKernel_t g_res_kernel = nullptr, g_tiny_kernel = nullptr;
static int g_sms = 0, g_cc_major = 0, g_cc_minor = 0;
static std::string g_devname;

template <class T>
static T vload(const T* p) {
  return *reinterpret_cast<const volatile T*>(p);
}
template <class T>
static void vstore(T* p, T v) {
  *reinterpret_cast<volatile T*>(p) = v;
}

// Everything the watchdog releases: resident kernels' stop flags and the
// lock test's launch loop.
static std::mutex g_rel_mu;
static std::vector<Ctl*> g_rel;
static std::atomic<bool> g_stop_loops{false};
static void register_release(Ctl* c) {
  std::lock_guard<std::mutex> lk(g_rel_mu);
  g_rel.push_back(c);
}
static void release_all() {
  std::lock_guard<std::mutex> lk(g_rel_mu);
  for (Ctl* c : g_rel) vstore(&c->h.stop, 1u);  // host write only
  g_stop_loops = true;
}

class Watchdog {
 public:
  void arm(int release_ms, int abort_ms, std::string abort_json) {
    std::lock_guard<std::mutex> lk(mu_);
    disarmed_ = false;
    released_ = false;
    t_release_ = 0;
    th_ = std::thread([this, release_ms, abort_ms, abort_json] {
      std::unique_lock<std::mutex> l(mu_);
      if (cv_.wait_for(l, std::chrono::milliseconds(release_ms), [this] { return disarmed_; }))
        return;
      release_all();
      released_ = true;
      t_release_ = now_ms();
      if (cv_.wait_for(l, std::chrono::milliseconds(abort_ms - release_ms),
                       [this] { return disarmed_; }))
        return;
      printf("RESULT %s\n", abort_json.c_str());
      fflush(stdout);
      _exit(3);
    });
  }
  // True when the watchdog had to release; *since = ms from release to now.
  bool disarm(double* since) {
    const double t = now_ms();
    {
      std::lock_guard<std::mutex> lk(mu_);
      disarmed_ = true;
    }
    cv_.notify_all();
    if (th_.joinable()) th_.join();
    *since = released_ ? t - t_release_ : 0.0;
    return released_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::thread th_;
  bool disarmed_ = true, released_ = false;
  double t_release_ = 0;
};
static Watchdog g_wd;

static std::string stuck_json(J j) {
  j.str("outcome", "STUCK").num("hang_ms", g_hang_ms)
      .str("detail", "did not return 3 s after the resident kernel was told to exit; process aborted");
  return j.done();
}

struct Timed {
  Err err;
  double ms = 0, after_release_ms = 0;
  bool released = false;
  // BLOCKED: returned within 100 ms of the resident kernel's release, so it
  // was waiting for it. SLOW: still running long after the release (slow on
  // its own, or waiting for something else).
  std::string outcome() const {
    std::string o = !released ? "ok" : after_release_ms <= 100 ? "BLOCKED" : "SLOW";
    if (!err.empty()) o = released ? o + "+error" : "error";
    return o;
  }
};
static Timed timed(const J& rec, const std::function<Err()>& fn) {
  Timed t;
  g_wd.arm(g_hang_ms, g_hang_ms + 3000, stuck_json(rec));
  const double t0 = now_ms();
  t.err = fn();
  t.ms = now_ms() - t0;
  t.released = g_wd.disarm(&t.after_release_ms);
  return t;
}

// ------------------------------------------------------------ residents

struct Resident {
  std::string where;
  int sms = 0;
  CUcontext ctx = nullptr;
  CUgreenCtx green = nullptr;
  CUstream st = nullptr;
  cudaStream_t rst = nullptr;
  bool runtime = false;
  Ctl* c = nullptr;
  CUdeviceptr cdev = 0;
  unsigned mode = 0, sleep_ns = 0;
  double lifetime_s = 30;
  unsigned seq = 0;
  bool launched = false;
  std::string info;
};

struct PushCtx {
  bool on = false;
  explicit PushCtx(CUcontext c) {
    if (c && c != g_primary) on = p_cuCtxPushCurrent(c) == CUDA_SUCCESS;
  }
  ~PushCtx() {
    CUcontext dummy;
    if (on) p_cuCtxPopCurrent(&dummy);
  }
};

// Where the resident kernel lives: "primary" (own non-blocking stream),
// "legacy" (primary, legacy default stream), "green" (green context with
// >= sms SMs), "ctx" (cuCtxCreate), "ctxaff" (cuCtxCreate with an SM-count
// execution affinity: MPS only).
static Err res_setup(Resident& r, const std::string& where, int sms) {
  r.where = where;
  if (where == "primary" || where == "legacy") {
    r.ctx = g_primary;
    r.runtime = true;
    r.sms = g_sms;
    if (where == "primary")
      RK(cudaStreamCreateWithFlags(&r.rst, cudaStreamNonBlocking));
    else
      r.rst = cudaStreamLegacy;
  } else if (where == "green") {
    NEED(cuGreenCtxCreate);
    NEED(cuDevSmResourceSplitByCount);
    NEED(cuGreenCtxStreamCreate);
    CUdevResource all{}, grp{}, rem{};
    CK(p_cuDeviceGetDevResource(g_dev, &all, CU_DEV_RESOURCE_TYPE_SM));
    unsigned nb = 1;
    CK(p_cuDevSmResourceSplitByCount(&grp, &nb, &all, &rem, 0, static_cast<unsigned>(sms)));
    if (nb < 1) return "cuDevSmResourceSplitByCount made no group";
    CUdevResourceDesc desc{};
    CK(p_cuDevResourceGenerateDesc(&desc, &grp, 1));
    CK(p_cuGreenCtxCreate(&r.green, desc, g_dev, CU_GREEN_CTX_DEFAULT_STREAM));
    CK(p_cuCtxFromGreenCtx(&r.ctx, r.green));
    CK(p_cuGreenCtxStreamCreate(&r.st, r.green, CU_STREAM_NON_BLOCKING, 0));
    r.sms = static_cast<int>(grp.sm.smCount);
    r.info = "green SMs " + std::to_string(grp.sm.smCount) + " of " +
             std::to_string(all.sm.smCount) + " (min partition " +
             std::to_string(all.sm.minSmPartitionSize) + ", alignment " +
             std::to_string(all.sm.smCoscheduledAlignment) + ")";
  } else if (where == "ctx" || where == "ctxaff") {
    CUctxCreateParams params{};
    CUexecAffinityParam aff{};
    if (where == "ctxaff") {
      aff.type = CU_EXEC_AFFINITY_TYPE_SM_COUNT;
      aff.param.smCount.val = static_cast<unsigned>(sms);
      params.execAffinityParams = &aff;
      params.numExecAffinityParams = 1;
    }
    const CUresult e = p_cuCtxCreate(&r.ctx, &params, 0, g_dev);
    p_cuCtxSetCurrent(g_primary);  // cuCtxCreate made the new one current
    if (e != CUDA_SUCCESS) return "cuCtxCreate -> " + cu_name(e);
    PushCtx pc(r.ctx);
    CK(p_cuStreamCreate(&r.st, CU_STREAM_NON_BLOCKING));
    r.sms = g_sms;
    if (where == "ctxaff") {
      CUexecAffinityParam got{};
      if (p_cuCtxGetExecAffinity(&got, CU_EXEC_AFFINITY_TYPE_SM_COUNT) == CUDA_SUCCESS)
        r.sms = static_cast<int>(got.param.smCount.val);
    }
    r.info = "context SMs " + std::to_string(r.sms);
  } else {
    return "unknown place " + where;
  }
  RK(cudaHostAlloc(reinterpret_cast<void**>(&r.c), sizeof(Ctl),
                   cudaHostAllocMapped | cudaHostAllocPortable));
  memset(static_cast<void*>(r.c), 0, sizeof(Ctl));
  r.cdev = reinterpret_cast<CUdeviceptr>(r.c);
  if (r.ctx != g_primary) {
    PushCtx pc(r.ctx);
    CUdeviceptr d = 0;
    const CUresult e = p_cuMemHostGetDevicePointer(&d, r.c, 0);
    if (e == CUDA_SUCCESS)
      r.cdev = d;
    else
      r.info += "; cuMemHostGetDevicePointer in that context -> " + cu_name(e);
  }
  register_release(r.c);
  return "";
}

static Err res_launch(Resident& r, double wait_ms = 5000) {
  memset(static_cast<void*>(r.c), 0, sizeof(Ctl));
  r.seq = 0;
  std::atomic_thread_fence(std::memory_order_seq_cst);
  unsigned long long life = static_cast<unsigned long long>(r.lifetime_s * 1e9);
  void* args[] = {&r.cdev, &r.mode, &r.sleep_ns, &life};
  if (r.runtime) {
    RK(cudaLaunchKernel(reinterpret_cast<const void*>(resident_kernel), dim3(1), dim3(32), args, 0,
                        r.rst));
  } else {
    // A CUkernel launches in the stream's context; if this driver refuses
    // that, fall back to the kernel's CUfunction in that context.
    CUresult le = p_cuLaunchKernel(reinterpret_cast<CUfunction>(g_res_kernel), 1, 1, 1, 32, 1, 1, 0,
                                   r.st, args, nullptr);
    if (le != CUDA_SUCCESS && p_cuKernelGetFunction) {
      PushCtx pc(r.ctx);
      CUfunction f = nullptr;
      CK(p_cuKernelGetFunction(&f, reinterpret_cast<CUkernel>(g_res_kernel)));
      CK(p_cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 0, r.st, args, nullptr));
      r.info += "; launched through cuKernelGetFunction (CUkernel launch: " + cu_name(le) + ")";
    } else if (le != CUDA_SUCCESS) {
      return "cuLaunchKernel(resident) -> " + cu_name(le);
    }
  }
  r.launched = true;
  const double t0 = now_ms();
  while (!vload(&r.c->d.started)) {
    if (now_ms() - t0 > wait_ms)
      return "resident kernel did not start within " + std::to_string(static_cast<int>(wait_ms)) +
             " ms";
    usleep(20);
  }
  return "";
}

static bool res_running(const Resident& r) {
  return r.launched && vload(&r.c->d.started) && !vload(&r.c->d.exited) && !vload(&r.c->h.stop);
}

static bool res_wait_exit(Resident& r, double ms) {
  if (!r.launched) return true;
  const double t0 = now_ms();
  while (!vload(&r.c->d.exited)) {
    if (now_ms() - t0 > ms) return false;
    usleep(50);
  }
  return true;
}

static void res_release(Resident& r) {
  if (r.c) vstore(&r.c->h.stop, 1u);
}

// Relaunch after a release. Err if the old one did not exit or the new one
// does not start.
static Err res_ensure(Resident& r) {
  if (res_running(r)) return "";
  if (r.launched && !res_wait_exit(r, 3000)) return "released resident kernel did not exit";
  return res_launch(r);
}

// One doorbell: descriptor, then the sequence number; wait for done == seq.
[[maybe_unused]] static bool res_call(Resident& r, unsigned op, unsigned long long a0, unsigned long long a1,
                     unsigned long long a2, double timeout_ms, unsigned long long* r0 = nullptr,
                     unsigned long long* r1 = nullptr) {
  const unsigned s = ++r.seq;
  HostToDev* h = &r.c->h;
  vstore(&h->op, op);
  vstore(&h->a[0], a0);
  vstore(&h->a[1], a1);
  vstore(&h->a[2], a2);
  vstore(&h->a[3], static_cast<unsigned long long>(s));
  std::atomic_thread_fence(std::memory_order_release);
  vstore(&h->seq, s);
  const double t0 = now_ms();
  unsigned spins = 0;
  while (vload(&r.c->d.done) != s) {
    if ((++spins & 1023) == 0 && now_ms() - t0 > timeout_ms) return false;
  }
  std::atomic_thread_fence(std::memory_order_acquire);
  if (r0) *r0 = vload(&r.c->d.r0);
  if (r1) *r1 = vload(&r.c->d.r1);
  return true;
}

// Doorbell round trips in microseconds; stops at the first lost answer.
[[maybe_unused]] static std::vector<double> doorbells(Resident& r, int n, int* lost, double timeout_ms = 2000) {
  std::vector<double> v;
  v.reserve(n);
  *lost = 0;
  for (int i = 0; i < n; ++i) {
    const double t0 = now_us();
    unsigned long long r0 = 0;
    const unsigned long long a0 = 0x1234u + i, a1 = 77, a2 = i * 3ull;
    if (!res_call(r, OP_ECHO, a0, a1, a2, timeout_ms, &r0)) {
      ++*lost;
      break;
    }
    v.push_back(now_us() - t0);
    if (r0 != a0 + a1 + a2 + r.seq) ++*lost;
  }
  return v;
}

// ------------------------------------------------------------ helpers

struct Vmm {
  CUdeviceptr ptr = 0;
  size_t size = 0;
  CUmemGenericAllocationHandle h = 0;
};
[[maybe_unused]] static Err vmm_alloc(Vmm& v, size_t want) {
  CUmemAllocationProp prop{};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = g_dev;
  size_t gran = 0;
  CK(p_cuMemGetAllocationGranularity(&gran, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM));
  v.size = (want + gran - 1) / gran * gran;
  CK(p_cuMemCreate(&v.h, v.size, &prop, 0));
  CK(p_cuMemAddressReserve(&v.ptr, v.size, 0, 0, 0));
  CK(p_cuMemMap(v.ptr, v.size, 0, v.h, 0));
  CUmemAccessDesc ad{};
  ad.location = prop.location;
  ad.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  CK(p_cuMemSetAccess(v.ptr, v.size, &ad, 1));
  return "";
}
[[maybe_unused]] static Err vmm_free(Vmm& v) {
  CK(p_cuMemUnmap(v.ptr, v.size));
  CK(p_cuMemRelease(v.h));
  CK(p_cuMemAddressFree(v.ptr, v.size));
  v = Vmm{};
  return "";
}

static Err init_cuda(const std::string& sched) {
  if (!sched.empty() && sched != "auto") {
    unsigned f = sched == "spin"       ? cudaDeviceScheduleSpin
                 : sched == "yield"    ? cudaDeviceScheduleYield
                 : sched == "blocking" ? cudaDeviceScheduleBlockingSync
                                       : cudaDeviceScheduleAuto;
    RK(cudaSetDeviceFlags(f));
  }
  RK(cudaSetDevice(0));
  RK(cudaFree(nullptr));
  load_driver();
  NEED(cuCtxGetCurrent);
  NEED(cuDeviceGet);
  NEED(cuLaunchKernel);
  CK(p_cuCtxGetCurrent(&g_primary));
  if (!g_primary) return "no current context after cudaFree(0)";
  CK(p_cuDeviceGet(&g_dev, 0));
  RK(cudaGetKernel(&g_res_kernel, reinterpret_cast<const void*>(resident_kernel)));
  RK(cudaGetKernel(&g_tiny_kernel, reinterpret_cast<const void*>(tiny_kernel)));
  cudaDeviceProp prop{};
  RK(cudaGetDeviceProperties(&prop, 0));
  g_sms = prop.multiProcessorCount;
  g_cc_major = prop.major;
  g_cc_minor = prop.minor;
  g_devname = prop.name;
  return "";
}

#ifndef PROBE_LIB  // the test modes; the library face is at the end

static std::vector<std::string> split_csv(const std::string& s) {
  std::vector<std::string> v;
  size_t i = 0;
  while (i <= s.size()) {
    size_t j = s.find(',', i);
    if (j == std::string::npos) j = s.size();
    if (j > i) v.push_back(s.substr(i, j - i));
    i = j + 1;
  }
  return v;
}
static bool selected(const std::vector<std::string>& sel, const std::string& item) {
  return sel.empty() || std::find(sel.begin(), sel.end(), item) != sel.end();
}

// ------------------------------------------------------------ NVML (optional)

struct Nvml {
  void* lib = nullptr;
  void* dev = nullptr;
  int (*energy)(void*, unsigned long long*) = nullptr;
  int (*power)(void*, unsigned*) = nullptr;
  bool ok = false;
  void open() {
    lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib) return;
    auto init = reinterpret_cast<int (*)()>(dlsym(lib, "nvmlInit_v2"));
    auto by_bus = reinterpret_cast<int (*)(const char*, void**)>(
        dlsym(lib, "nvmlDeviceGetHandleByPciBusId_v2"));
    energy = reinterpret_cast<int (*)(void*, unsigned long long*)>(
        dlsym(lib, "nvmlDeviceGetTotalEnergyConsumption"));
    power = reinterpret_cast<int (*)(void*, unsigned*)>(dlsym(lib, "nvmlDeviceGetPowerUsage"));
    if (!init || !by_bus || init() != 0) return;
    char bus[64] = {0};
    if (cudaDeviceGetPCIBusId(bus, sizeof bus, 0) != cudaSuccess) return;
    ok = by_bus(bus, &dev) == 0 && (energy || power);
  }
  // Mean board power in watts over `ms` (energy counter, else samples).
  double watts(int ms) {
    if (!ok) return NAN;
    unsigned long long e0 = 0, e1 = 0;
    if (energy && energy(dev, &e0) == 0) {
      const double t0 = now_ms();
      usleep(ms * 1000);
      if (energy(dev, &e1) == 0) return (e1 - e0) / (now_ms() - t0);  // mJ/ms = W
    }
    if (!power) return NAN;
    double sum = 0;
    int n = 0;
    const double t0 = now_ms();
    while (now_ms() - t0 < ms) {
      unsigned mw = 0;
      if (power(dev, &mw) == 0) {
        sum += mw / 1000.0;
        ++n;
      }
      usleep(20000);
    }
    return n ? sum / n : NAN;
  }
};

// ------------------------------------------------------------ work kernel

struct Work {
  cudaStream_t s = nullptr;
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  float* out = nullptr;
  unsigned iters = 0;
  Err init(double target_ms) {
    RK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    RK(cudaEventCreate(&e0));
    RK(cudaEventCreate(&e1));
    RK(cudaMalloc(&out, sizeof(float) * g_sms * 4));
    iters = 4096;
    double ms = 0;
    for (int k = 0; k < 3; ++k) {  // warm up, then scale to target_ms
      Err e = run(&ms);
      if (!e.empty()) return e;
    }
    iters = static_cast<unsigned>(std::min(4e9, std::max(1024.0, iters * target_ms / ms)));
    return "";
  }
  Err launch() {
    RK(cudaEventRecord(e0, s));
    // 4 blocks of 256 per SM: half occupancy, so a resident warp fits beside
    // them on its SM without pushing a block into a second wave.
    work_kernel<<<g_sms * 4, 256, 0, s>>>(out, iters);
    RK(cudaGetLastError());
    RK(cudaEventRecord(e1, s));
    return "";
  }
  Err run(double* ms) {
    Err e = launch();
    if (!e.empty()) return e;
    RK(cudaEventSynchronize(e1));
    float f = 0;
    RK(cudaEventElapsedTime(&f, e0, e1));
    *ms = f;
    return "";
  }
  Err median_ms(int n, double* ms, Resident* r = nullptr, double* maxgap_ms = nullptr) {
    std::vector<double> v;
    double gap = 0;
    for (int i = 0; i < n; ++i) {
      if (r) res_call(*r, OP_STATS, 0, 0, 0, 2000);
      double m = 0;
      Err e = run(&m);
      if (!e.empty()) return e;
      v.push_back(m);
      unsigned long long g = 0;
      if (r && res_call(*r, OP_STATS, 0, 0, 0, 5000, &g)) gap = std::max(gap, g / 1e6);
    }
    *ms = median(v);
    if (maxgap_ms) *maxgap_ms = gap;
    return "";
  }
};

// ------------------------------------------------------------ Q1/Q2/Q3: sync

static const char* const kSyncItems[] = {
    "device_sync",         "legacy_stream_sync", "memcpy_d2h_pageable", "own_stream_kernel_sync",
    "event_sync",          "malloc",             "free",                "host_alloc",
    "free_host",           "host_register",      "host_unregister",     "malloc_async",
    "vmm_alloc",           "vmm_free",           "mem_get_info",        "stream_create_destroy",
    "lazy_first_launch",   "module_load",        "module_first_launch", "module_unload",
};

static int mode_sync(const std::string& where, int sms, const std::vector<std::string>& sel) {
  g_test = "sync";
  Resident r;
  Err e = res_setup(r, where, sms);
  std::vector<std::string> items;
  for (const char* it : kSyncItems)
    if (selected(sel, it)) items.push_back(it);
  if (e.empty()) {
    J j = base("setup");
    j.str("outcome", "info").str("detail", r.info).num("sms", r.sms);
    emit(j);
  }
  // Everything the items free or use is made before the resident starts.
  cudaStream_t own = nullptr;
  void *dsmall = nullptr, *to_free = nullptr, *pinned_to_free = nullptr, *reg_buf = nullptr,
       *reg_buf2 = nullptr;
  std::vector<char> pageable(1 << 20);
  cudaEvent_t ev = nullptr;
  Vmm vfree;
  CUmodule mod_launch = nullptr, mod_unload = nullptr;
  CUfunction fn_launch = nullptr;
  auto prep = [&]() -> Err {
    RK(cudaStreamCreateWithFlags(&own, cudaStreamNonBlocking));
    RK(cudaMalloc(&dsmall, 1 << 20));
    RK(cudaMalloc(&to_free, 64 << 20));
    RK(cudaHostAlloc(&pinned_to_free, 16 << 20, cudaHostAllocMapped | cudaHostAllocPortable));
    reg_buf = aligned_alloc(4096, 4 << 20);
    reg_buf2 = aligned_alloc(4096, 4 << 20);
    if (!reg_buf || !reg_buf2) return "aligned_alloc failed";
    memset(reg_buf, 1, 4 << 20);
    memset(reg_buf2, 1, 4 << 20);
    RK(cudaHostRegister(reg_buf2, 4 << 20, cudaHostRegisterMapped | cudaHostRegisterPortable));
    RK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    tiny_kernel<<<1, 1, 0, own>>>(static_cast<unsigned*>(dsmall));  // loads tiny_kernel
    RK(cudaGetLastError());
    RK(cudaStreamSynchronize(own));
    Err v = vmm_alloc(vfree, 2 << 20);
    if (!v.empty()) return v;
    const std::string p1 = ptx_module(g_cc_major, g_cc_minor, 1);
    const std::string p2 = ptx_module(g_cc_major, g_cc_minor, 2);
    CK(p_cuModuleLoadData(&mod_launch, p1.c_str()));
    CK(p_cuModuleGetFunction(&fn_launch, mod_launch, "ptx_kernel_1"));
    CK(p_cuModuleLoadData(&mod_unload, p2.c_str()));
    RK(cudaDeviceSynchronize());
    return "";
  };
  if (e.empty()) e = prep();
  if (e.empty()) e = res_launch(r);
  if (!e.empty()) {
    for (const auto& it : items) {
      J j = base(it);
      j.str("outcome", "error").str("detail", "setup: " + e);
      emit(j);
    }
    return 0;
  }
  std::vector<std::pair<std::string, std::function<Err()>>> fns = {
      {"device_sync", [&]() -> Err { RK(cudaDeviceSynchronize()); return ""; }},
      {"legacy_stream_sync", [&]() -> Err { RK(cudaStreamSynchronize(nullptr)); return ""; }},
      {"memcpy_d2h_pageable",
       [&]() -> Err { RK(cudaMemcpy(pageable.data(), dsmall, 4096, cudaMemcpyDeviceToHost)); return ""; }},
      {"own_stream_kernel_sync",
       [&]() -> Err {
         tiny_kernel<<<1, 1, 0, own>>>(static_cast<unsigned*>(dsmall));
         RK(cudaGetLastError());
         RK(cudaStreamSynchronize(own));
         return "";
       }},
      {"event_sync",
       [&]() -> Err {
         tiny_kernel<<<1, 1, 0, own>>>(static_cast<unsigned*>(dsmall));
         RK(cudaEventRecord(ev, own));
         RK(cudaEventSynchronize(ev));
         return "";
       }},
      {"malloc", [&]() -> Err { void* p = nullptr; RK(cudaMalloc(&p, 64 << 20)); return ""; }},
      {"free", [&]() -> Err { RK(cudaFree(to_free)); return ""; }},
      {"host_alloc",
       [&]() -> Err {
         void* p = nullptr;
         RK(cudaHostAlloc(&p, 16 << 20, cudaHostAllocMapped | cudaHostAllocPortable));
         return "";
       }},
      {"free_host", [&]() -> Err { RK(cudaFreeHost(pinned_to_free)); return ""; }},
      {"host_register",
       [&]() -> Err {
         RK(cudaHostRegister(reg_buf, 4 << 20, cudaHostRegisterMapped | cudaHostRegisterPortable));
         return "";
       }},
      {"host_unregister", [&]() -> Err { RK(cudaHostUnregister(reg_buf2)); return ""; }},
      {"malloc_async",
       [&]() -> Err {
         void* p = nullptr;
         RK(cudaMallocAsync(&p, 1 << 20, own));
         RK(cudaFreeAsync(p, own));
         RK(cudaStreamSynchronize(own));
         return "";
       }},
      {"vmm_alloc", [&]() -> Err { Vmm v; return vmm_alloc(v, 2 << 20); }},
      {"vmm_free", [&]() -> Err { return vmm_free(vfree); }},
      {"mem_get_info", [&]() -> Err { size_t f = 0, t = 0; RK(cudaMemGetInfo(&f, &t)); return ""; }},
      {"stream_create_destroy",
       [&]() -> Err {
         cudaStream_t s = nullptr;
         RK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
         RK(cudaStreamDestroy(s));
         return "";
       }},
      {"lazy_first_launch",
       [&]() -> Err {
         void* args[] = {&dsmall};
         RK(cudaLaunchKernel(next_fresh(), dim3(1), dim3(1), args, 0, own));
         RK(cudaStreamSynchronize(own));
         return "";
       }},
      {"module_load",
       [&]() -> Err {
         CUmodule m = nullptr;
         CUfunction f = nullptr;
         const std::string p = ptx_module(g_cc_major, g_cc_minor, 3);
         CK(p_cuModuleLoadData(&m, p.c_str()));
         CK(p_cuModuleGetFunction(&f, m, "ptx_kernel_3"));
         return "";
       }},
      {"module_first_launch",
       [&]() -> Err {
         void* args[] = {&dsmall};
         CK(p_cuLaunchKernel(fn_launch, 1, 1, 1, 1, 1, 1, 0, reinterpret_cast<CUstream>(own), args,
                             nullptr));
         RK(cudaStreamSynchronize(own));
         return "";
       }},
      {"module_unload", [&]() -> Err { CK(p_cuModuleUnload(mod_unload)); return ""; }},
  };
  for (const auto& it : items) {
    auto f = std::find_if(fns.begin(), fns.end(), [&](const auto& p) { return p.first == it; });
    J rec = base(it);
    Err pre = res_ensure(r);
    if (!pre.empty()) {
      rec.str("outcome", "error").str("detail", "resident kernel: " + pre);
      emit(rec);
      continue;
    }
    Timed t = timed(rec, f->second);
    const bool alive = res_running(r);
    rec.str("outcome", t.outcome()).num("ms", t.ms).num("hang_ms", g_hang_ms);
    if (t.released) rec.num("after_release_ms", t.after_release_ms);
    rec.flag("resident_alive_after", alive);
    if (!t.err.empty()) rec.str("detail", t.err);
    emit(rec);
  }
  res_release(r);
  res_wait_exit(r, 3000);
  return 0;
}

// ------------------------------------------------------------ Q1b/Q2b/Q3b: memory

static const char* const kMemItems[] = {"dev", "vmm", "host", "hostreg"};

static int mode_mem(const std::string& where, int sms, const std::vector<std::string>& sel) {
  g_test = "mem";
  for (const char* kind : kMemItems) {
    if (!selected(sel, kind)) continue;
    J rec = base(kind);
    Resident r;
    const unsigned n = 4096, seed = 0xA1B2C3u;
    std::vector<unsigned> ref(n), back(n);
    for (unsigned i = 0; i < n; ++i) ref[i] = pat(seed, i);
    void* hostp = nullptr;
    CUdeviceptr devp = 0;
    Vmm v;
    auto fail = [&](const std::string& what) {
      rec.str("outcome", "error").str("detail", what);
      emit(rec);
    };
    Err e = res_setup(r, where, sms);
    if (!e.empty()) {
      fail("setup: " + e);
      continue;
    }
    std::string k = kind;
    if (k == "dev") {
      void* p = nullptr;
      e = cudaMalloc(&p, 2 << 20) == cudaSuccess ? "" : "cudaMalloc failed";
      devp = reinterpret_cast<CUdeviceptr>(p);
    } else if (k == "vmm") {
      e = vmm_alloc(v, 2 << 20);
      devp = v.ptr;
    } else if (k == "host") {
      e = cudaHostAlloc(&hostp, 2 << 20, cudaHostAllocMapped | cudaHostAllocPortable) == cudaSuccess
              ? ""
              : "cudaHostAlloc failed";
    } else {
      hostp = aligned_alloc(4096, 2 << 20);
      e = hostp && cudaHostRegister(hostp, 2 << 20,
                                    cudaHostRegisterMapped | cudaHostRegisterPortable) == cudaSuccess
              ? ""
              : "cudaHostRegister failed";
    }
    if (e.empty() && hostp) {
      memcpy(hostp, ref.data(), n * 4);
      PushCtx pc(r.ctx);
      const CUresult ce = p_cuMemHostGetDevicePointer(&devp, hostp, 0);
      if (ce != CUDA_SUCCESS) e = "cuMemHostGetDevicePointer in that context -> " + cu_name(ce);
    } else if (e.empty()) {
      const cudaError_t ce = cudaMemcpy(reinterpret_cast<void*>(devp), ref.data(), n * 4,
                                        cudaMemcpyHostToDevice);
      if (ce != cudaSuccess) e = "fill: " + rt_name(ce);
    }
    if (e.empty()) e = res_launch(r);
    if (!e.empty()) {
      fail(e);
      continue;
    }
    unsigned long long mism = 0;
    const double t0 = now_ms();
    const bool answered = res_call(r, OP_MEMTEST, devp, n, seed, 3000, &mism);
    const double ms = now_ms() - t0;
    rec.num("ms", ms).flag("same_address", hostp ? devp == reinterpret_cast<CUdeviceptr>(hostp) : true);
    if (!answered) {
      // Bounded: these calls might wait on a broken context.
      J aj = rec;
      aj.str("outcome", "NO ACCESS (kernel died)")
          .str("detail", "no answer in 3 s; querying the contexts afterwards hung");
      g_wd.arm(3000, 3001, aj.done());
      CUresult sq = p_cuStreamQuery(r.st ? r.st : reinterpret_cast<CUstream>(r.rst));
      void* probe_buf = nullptr;
      cudaError_t a = cudaMalloc(&probe_buf, 4096);
      cudaError_t b = a == cudaSuccess ? cudaMemcpy(back.data(), probe_buf, 16, cudaMemcpyDeviceToHost) : a;
      double since = 0;
      g_wd.disarm(&since);
      rec.str("outcome", "NO ACCESS (kernel died)")
          .str("detail", "no answer in 3 s; resident stream: " + cu_name(sq) +
                             "; primary context afterwards: " + rt_name(b));
      emit(rec);
      _exit(3);  // record written; run.sh goes on with the other kinds in a new process
    }
    size_t bad = 0;
    if (hostp) {
      memcpy(back.data(), hostp, n * 4);
    } else if (cudaMemcpy(back.data(), reinterpret_cast<void*>(devp), n * 4,
                          cudaMemcpyDeviceToHost) != cudaSuccess) {
      bad = n;
    }
    for (unsigned i = 0; i < n && bad < n; ++i) bad += back[i] != ~ref[i];
    rec.str("outcome", mism == 0 && bad == 0 ? "ok" : "WRONG DATA")
        .num("read_mismatches", static_cast<double>(mism))
        .num("write_mismatches", static_cast<double>(bad));
    emit(rec);
    res_release(r);
    res_wait_exit(r, 3000);
  }
  return 0;
}

// ------------------------------------------------------------ Q1a/Q2a/Q3a: concurrency

static int mode_conc(const std::string& where, int sms) {
  g_test = "conc";
  J rec = base("concurrency");
  Work w;
  Err e = w.init(20.0);
  double alone = 0, with = 0, gap = 0;
  if (e.empty()) e = w.median_ms(5, &alone);
  Resident r;
  if (e.empty()) e = res_setup(r, where, sms);
  if (e.empty()) e = res_launch(r);
  if (!e.empty()) {
    rec.str("outcome", "error").str("detail", e).num("work_alone_ms", alone);
    emit(rec);
    res_release(r);
    return 0;
  }
  int lost_idle = 0, lost_busy = 0;
  std::vector<double> idle = doorbells(r, 2000, &lost_idle);
  e = w.median_ms(5, &with, &r, &gap);
  // Doorbells while a long primary kernel (10x) occupies every SM.
  std::vector<double> busy;
  const unsigned it0 = w.iters;
  w.iters = static_cast<unsigned>(std::min(4e9, it0 * 10.0));
  double busy_span = 0;
  if (e.empty()) e = w.launch();
  if (e.empty()) {
    const double t0 = now_ms();
    while (cudaEventQuery(w.e1) == cudaErrorNotReady && now_ms() - t0 < 5000) {
      int l = 0;
      std::vector<double> one = doorbells(r, 1, &l, 3000);
      if (l) {
        ++lost_busy;
        break;
      }
      busy.push_back(one[0]);
    }
    busy_span = now_ms() - t0;
    cudaEventSynchronize(w.e1);
  }
  w.iters = it0;
  rec.str("outcome", e.empty() ? "measured" : "error")
      .str("detail", e.empty() ? r.info : e + "; " + r.info)
      .num("sms", r.sms)
      .num("work_alone_ms", alone)
      .num("work_with_resident_ms", with)
      .num("work_ratio", with / alone)
      .num("resident_max_gap_ms", gap)
      .num("db_idle_p50_us", pct(idle, 50))
      .num("db_idle_p99_us", pct(idle, 99))
      .num("db_idle_n", idle.size())
      .num("db_idle_lost", lost_idle)
      .num("db_busy_p50_us", pct(busy, 50))
      .num("db_busy_p99_us", pct(busy, 99))
      .num("db_busy_max_us", pct(busy, 100))
      .num("db_busy_n", busy.size())
      .num("db_busy_lost", lost_busy)
      .num("busy_kernel_ms", busy_span);
  emit(rec);
  res_release(r);
  res_wait_exit(r, 3000);
  return 0;
}

// ------------------------------------------------------------ exit with a resident kernel

static int mode_exit(const std::string& where, int sms, double lifetime_s) {
  g_test = "exit";
  J rec = base("process_exit");
  int fd[2];
  if (pipe(fd) != 0) return 1;
  fflush(stdout);
  const pid_t pid = fork();
  if (pid == 0) {  // child: start a resident kernel, then return from main
    close(fd[0]);
    Err e = init_cuda("");
    Resident r;
    r.lifetime_s = lifetime_s;
    if (e.empty()) e = res_setup(r, where, sms);
    if (e.empty()) e = res_launch(r);
    double t = e.empty() ? mono_ns() : -1;
    if (write(fd[1], &t, sizeof t) != sizeof t) _exit(5);
    close(fd[1]);
    return e.empty() ? 0 : 4;  // static destructors and CUDA's teardown run now
  }
  close(fd[1]);
  double t_exit = -1;
  pollfd p{fd[0], POLLIN, 0};
  if (poll(&p, 1, 30000) > 0) {
    if (read(fd[0], &t_exit, sizeof t_exit) != sizeof t_exit) t_exit = -1;
  }
  int status = 0;
  const double limit_ms = lifetime_s * 1000 + 5000;
  const double t0 = now_ms();
  bool killed = false;
  while (waitpid(pid, &status, WNOHANG) == 0) {
    if (now_ms() - t0 > limit_ms) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      killed = true;
      break;
    }
    usleep(2000);
  }
  const double exit_ms = t_exit > 0 ? (mono_ns() - t_exit) / 1e6 : NAN;
  std::string outcome = t_exit < 0 ? "error" : killed ? "STUCK (killed)" : exit_ms > 1000 ? "WAITED" : "ok";
  rec.str("outcome", outcome)
      .num("ms", exit_ms)
      .num("lifetime_ms", lifetime_s * 1000)
      .num("child_status", WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status))
      .str("detail", "time from main's return (resident kernel still running) to process end; "
                     "WAITED ~ lifetime means exit waited for the kernel to end by itself");
  emit(rec);
  return 0;
}

// ------------------------------------------------------------ Q4: the driver lock

static const char* const kLockItems[] = {
    "memcpy_d2d",    "memcpy_h2d_pinned", "memcpy_d2h_pinned", "launch_loaded", "launch_lazy",
    "event_record",  "event_query",       "stream_query",      "pointer_attr",  "ctx_set_current",
    "green_launch",  "green_memcpy",      "green_event_query",
    "ownctx_launch", "ownctx_memcpy",     "ownctx_memcpy_h2d_pinned", "ownctx_event_record",
    "ownctx_event_query",
};

struct Worker {
  std::thread th;
  std::mutex mu;
  std::condition_variable cv;
  std::function<Err()> job;
  bool has = false, done = false, quit = false;
  Err err;
  double t0 = 0, t1 = 0;
  void start() {
    th = std::thread([this] {
      for (;;) {
        std::function<Err()> j;
        {
          std::unique_lock<std::mutex> l(mu);
          cv.wait(l, [this] { return has || quit; });
          if (quit) return;
          j = job;
          has = false;
        }
        const double a = now_ms();
        Err e = j();
        const double b = now_ms();
        {
          std::lock_guard<std::mutex> l(mu);
          err = e;
          t0 = a;
          t1 = b;
          done = true;
        }
        cv.notify_all();
      }
    });
  }
  void post(std::function<Err()> f) {
    std::lock_guard<std::mutex> l(mu);
    job = std::move(f);
    has = true;
    done = false;
    cv.notify_all();
  }
  void wait() {
    std::unique_lock<std::mutex> l(mu);
    cv.wait(l, [this] { return done; });
  }
};

// Thread A blocks in `a_variant` behind a spinning kernel; thread B (its
// context set long before, like NCCL's proxy thread) then makes one call.
// Optional third thread C: after A blocks, C makes a call that may want the
// driver lock exclusively (cudaMalloc, or the first launch of a kernel under
// lazy loading); B then comes after it. A read-write lock that prefers
// writers would block B behind C even when B alone is not blocked.
static std::string g_writer = "none";

static int mode_lock(const std::string& a_variant, const std::vector<std::string>& sel) {
  g_test = "lock";
  std::vector<std::string> items;
  for (const char* it : kLockItems)
    if (selected(sel, it)) items.push_back(it);
  auto fail_all = [&](const Err& e) {
    for (const auto& it : items) {
      J j = base(it);
      j.str("outcome", "error").str("detail", "setup: " + e);
      emit(j);
    }
    return 0;
  };
  // Spinner: a resident kernel on the stream A waits on.
  Resident spin;
  const bool legacy = a_variant == "memcpy_d2h_pageable" || a_variant == "device_sync";
  Err e = res_setup(spin, legacy ? "legacy" : "primary", 0);
  spin.lifetime_s = 15;
  if (!e.empty()) return fail_all(e);
  cudaStream_t sB = nullptr;
  void *d1 = nullptr, *d2 = nullptr, *pinned = nullptr, *dres = nullptr;
  std::vector<char> pageable(4096);
  CUevent evB = nullptr, evDone = nullptr, gev = nullptr;
  cudaEvent_t evA = nullptr;
  auto prep = [&]() -> Err {
    RK(cudaStreamCreateWithFlags(&sB, cudaStreamNonBlocking));
    RK(cudaMalloc(&d1, 1 << 20));
    RK(cudaMalloc(&d2, 1 << 20));
    RK(cudaMalloc(&dres, 4096));
    RK(cudaHostAlloc(&pinned, 1 << 20, cudaHostAllocMapped | cudaHostAllocPortable));
    RK(cudaEventCreateWithFlags(&evA, cudaEventDisableTiming));
    CK(p_cuEventCreate(&evB, CU_EVENT_DISABLE_TIMING));
    CK(p_cuEventCreate(&evDone, CU_EVENT_DISABLE_TIMING));
    tiny_kernel<<<1, 1, 0, sB>>>(static_cast<unsigned*>(dres));
    RK(cudaGetLastError());
    CK(p_cuEventRecord(evDone, reinterpret_cast<CUstream>(sB)));
    RK(cudaStreamSynchronize(sB));
    return "";
  };
  e = prep();
  if (!e.empty()) return fail_all(e);
  // A green context for B's green_* calls (optional: its absence is reported per item).
  Resident g;
  Err gerr = res_setup(g, "green", 8);
  CUfunction gtiny = nullptr;
  if (gerr.empty()) {
    PushCtx pc(g.ctx);
    void* args[] = {&dres};
    CUresult r0 = p_cuKernelGetFunction(&gtiny, reinterpret_cast<CUkernel>(g_tiny_kernel));
    CUresult r1 = r0 == CUDA_SUCCESS
                      ? p_cuLaunchKernel(gtiny, 1, 1, 1, 1, 1, 1, 0, g.st, args, nullptr)
                      : r0;
    CUresult r2 = r1 == CUDA_SUCCESS ? p_cuEventCreate(&gev, CU_EVENT_DISABLE_TIMING) : r1;
    CUresult r3 = r2 == CUDA_SUCCESS ? p_cuEventRecord(gev, g.st) : r2;
    CUresult r4 = r3 == CUDA_SUCCESS ? p_cuStreamSynchronize(g.st) : r3;
    if (r4 != CUDA_SUCCESS) gerr = "green setup -> " + cu_name(r4);
  }
  // A context of B's own (cuCtxCreate) for the ownctx_* calls: is the lock per context?
  Resident o;
  Err oerr = res_setup(o, "ctx", 0);
  CUfunction otiny = nullptr;
  CUevent oev = nullptr, oevDone = nullptr;
  if (oerr.empty()) {
    PushCtx pc(o.ctx);
    void* args[] = {&dres};
    CUresult r0 = p_cuKernelGetFunction(&otiny, reinterpret_cast<CUkernel>(g_tiny_kernel));
    CUresult r1 = r0 == CUDA_SUCCESS
                      ? p_cuLaunchKernel(otiny, 1, 1, 1, 1, 1, 1, 0, o.st, args, nullptr)
                      : r0;
    CUresult r2 = r1 == CUDA_SUCCESS ? p_cuEventCreate(&oev, CU_EVENT_DISABLE_TIMING) : r1;
    CUresult r3 = r2 == CUDA_SUCCESS ? p_cuEventCreate(&oevDone, CU_EVENT_DISABLE_TIMING) : r2;
    CUresult r4 = r3 == CUDA_SUCCESS ? p_cuEventRecord(oevDone, o.st) : r3;
    CUresult r5 = r4 == CUDA_SUCCESS ? p_cuStreamSynchronize(o.st) : r4;
    if (r5 != CUDA_SUCCESS) oerr = "own context setup -> " + cu_name(r5);
  }
  Worker wk;
  wk.start();
  CUstream cB = reinterpret_cast<CUstream>(sB);

  for (const auto& it : items) {
    J rec = base(it);
    const bool green = it.rfind("green_", 0) == 0;
    const bool own = it.rfind("ownctx_", 0) == 0;
    if ((green && !gerr.empty()) || (own && !oerr.empty())) {
      rec.str("outcome", "error").str("detail", green ? gerr : oerr);
      emit(rec);
      continue;
    }
    // The handle of a kernel not launched yet (the launch is what is timed).
    cudaKernel_t lazy_k = nullptr;
    if (it == "launch_lazy" && cudaGetKernel(&lazy_k, next_fresh()) != cudaSuccess) lazy_k = nullptr;
    // B's context, set before A blocks (as on NCCL's proxy thread).
    CUcontext bctx = green ? g.ctx : own ? o.ctx : g_primary;
    wk.post([bctx]() -> Err { CK(p_cuCtxSetCurrent(bctx)); return ""; });
    wk.wait();
    std::function<Err()> fnB;
    if (it == "memcpy_d2d")
      fnB = [&]() -> Err {
        CK(p_cuMemcpyAsync(reinterpret_cast<CUdeviceptr>(d2), reinterpret_cast<CUdeviceptr>(d1),
                           1 << 20, cB));
        return "";
      };
    else if (it == "memcpy_h2d_pinned")
      fnB = [&]() -> Err {
        CK(p_cuMemcpyHtoDAsync(reinterpret_cast<CUdeviceptr>(d1), pinned, 1 << 20, cB));
        return "";
      };
    else if (it == "memcpy_d2h_pinned")
      fnB = [&]() -> Err {
        CK(p_cuMemcpyDtoHAsync(pinned, reinterpret_cast<CUdeviceptr>(d1), 1 << 20, cB));
        return "";
      };
    else if (it == "launch_loaded")
      fnB = [&]() -> Err {
        void* args[] = {&dres};
        CK(p_cuLaunchKernel(reinterpret_cast<CUfunction>(g_tiny_kernel), 1, 1, 1, 1, 1, 1, 0, cB,
                            args, nullptr));
        return "";
      };
    else if (it == "launch_lazy")
      fnB = [&]() -> Err {
        cudaKernel_t k = lazy_k;
        if (!k) return "cudaGetKernel failed";
        void* args[] = {&dres};
        CK(p_cuLaunchKernel(reinterpret_cast<CUfunction>(k), 1, 1, 1, 1, 1, 1, 0, cB, args,
                            nullptr));
        return "";
      };
    else if (it == "event_record")
      fnB = [&]() -> Err { CK(p_cuEventRecord(evB, cB)); return ""; };
    else if (it == "event_query")
      fnB = [&]() -> Err { CK(p_cuEventQuery(evDone)); return ""; };
    else if (it == "stream_query")
      fnB = [&]() -> Err {
        CUresult q = p_cuStreamQuery(cB);
        if (q != CUDA_SUCCESS && q != CUDA_ERROR_NOT_READY) return "cuStreamQuery -> " + cu_name(q);
        return "";
      };
    else if (it == "pointer_attr")
      fnB = [&]() -> Err {
        unsigned t = 0;
        CK(p_cuPointerGetAttribute(&t, CU_POINTER_ATTRIBUTE_MEMORY_TYPE,
                                   reinterpret_cast<CUdeviceptr>(d1)));
        return "";
      };
    else if (it == "ctx_set_current")
      fnB = [&]() -> Err {
        CK(p_cuCtxSetCurrent(g_primary));
        CUcontext c = nullptr;
        CK(p_cuCtxGetCurrent(&c));
        return "";
      };
    else if (it == "green_launch")
      fnB = [&]() -> Err {
        void* args[] = {&dres};
        CK(p_cuLaunchKernel(gtiny, 1, 1, 1, 1, 1, 1, 0, g.st, args, nullptr));
        return "";
      };
    else if (it == "green_memcpy")
      fnB = [&]() -> Err {
        CK(p_cuMemcpyAsync(reinterpret_cast<CUdeviceptr>(d2), reinterpret_cast<CUdeviceptr>(d1),
                           1 << 20, g.st));
        return "";
      };
    else if (it == "ownctx_launch")
      fnB = [&]() -> Err {
        void* args[] = {&dres};
        CK(p_cuLaunchKernel(otiny, 1, 1, 1, 1, 1, 1, 0, o.st, args, nullptr));
        return "";
      };
    else if (it == "ownctx_memcpy")
      fnB = [&]() -> Err {
        CK(p_cuMemcpyAsync(reinterpret_cast<CUdeviceptr>(d2), reinterpret_cast<CUdeviceptr>(d1),
                           1 << 20, o.st));
        return "";
      };
    else if (it == "ownctx_memcpy_h2d_pinned")
      fnB = [&]() -> Err {
        CK(p_cuMemcpyHtoDAsync(reinterpret_cast<CUdeviceptr>(d1), pinned, 1 << 20, o.st));
        return "";
      };
    else if (it == "ownctx_event_record")
      fnB = [&]() -> Err { CK(p_cuEventRecord(oev, o.st)); return ""; };
    else if (it == "ownctx_event_query")
      fnB = [&]() -> Err { CK(p_cuEventQuery(oevDone)); return ""; };
    else
      fnB = [&]() -> Err { CK(p_cuEventQuery(gev)); return ""; };

    // 1. spinner
    g_stop_loops = false;
    e = res_ensure(spin);
    if (!e.empty()) {
      rec.str("outcome", "error").str("detail", "spinner: " + e);
      emit(rec);
      continue;
    }
    // 2. thread A blocks behind it
    std::atomic<int> a_state{0};
    std::atomic<long> a_count{0};
    Err a_err;
    double a_t0 = 0, a_t1 = 0;
    std::thread A([&] {
      a_t0 = now_ms();
      a_state = 1;
      cudaError_t ae = cudaSuccess;
      if (a_variant == "memcpy_d2h_pageable") {
        ae = cudaMemcpy(pageable.data(), dres, 4, cudaMemcpyDeviceToHost);
      } else if (a_variant == "stream_sync") {
        ae = cudaStreamSynchronize(spin.rst);
      } else if (a_variant == "device_sync") {
        ae = cudaDeviceSynchronize();
      } else if (a_variant == "event_sync") {
        ae = cudaEventRecord(evA, spin.rst);
        if (ae == cudaSuccess) ae = cudaEventSynchronize(evA);
      } else if (a_variant == "launch_queue_full") {
        const double t0 = now_ms();
        while (!g_stop_loops && now_ms() - t0 < 4000) {
          tiny_kernel<<<1, 1, 0, spin.rst>>>(nullptr);
          ++a_count;
        }
        ae = cudaGetLastError();
      } else {
        a_err = "unknown A variant";
      }
      if (ae != cudaSuccess) a_err = rt_name(ae);
      a_t1 = now_ms();
      a_state = 2;
    });
    // 3. wait until A is inside its call
    while (a_state == 0) usleep(100);
    bool a_blocked = true;
    if (a_variant == "launch_queue_full") {
      long last = -1;
      double t_same = now_ms();
      const double t0 = now_ms();
      for (;;) {
        usleep(5000);
        const long c = a_count;
        if (c != last) {
          last = c;
          t_same = now_ms();
        } else if (now_ms() - t_same > 100) {
          break;  // no launch returned for 100 ms: the queue is full
        }
        if (a_state == 2 || now_ms() - t0 > 3000) {
          a_blocked = false;
          break;
        }
      }
      rec.num("a_launches_before_block", static_cast<double>(a_count.load()));
    } else {
      usleep(150000);
      a_blocked = a_state != 2;
    }
    if (!a_blocked) {
      release_all();
      A.join();
      rec.str("outcome", "no test").str("detail", "A did not block (" + a_variant + ") " + a_err);
      emit(rec);
      res_wait_exit(spin, 3000);
      continue;
    }
    // 3b. optional C
    std::atomic<int> c_state{0};
    double c_t0 = 0, c_t1 = 0;
    Err c_err;
    std::thread C;
    const void* c_fresh = g_writer == "lazy" ? next_fresh() : nullptr;
    if (g_writer != "none") {
      C = std::thread([&] {
        cudaError_t ce = cudaSetDevice(0);
        c_t0 = now_ms();
        c_state = 1;
        if (ce == cudaSuccess && g_writer == "malloc") {
          void* p = nullptr;
          ce = cudaMalloc(&p, 64 << 20);
        } else if (ce == cudaSuccess && g_writer == "lazy") {
          void* args[] = {&dres};
          ce = cudaLaunchKernel(c_fresh, dim3(1), dim3(1), args, 0, sB);
        }
        if (ce != cudaSuccess) c_err = rt_name(ce);
        c_t1 = now_ms();
        c_state = 2;
      });
      while (c_state == 0) usleep(100);
      usleep(100000);
      rec.flag("c_blocked_before_b", c_state != 2);
    }
    // 4. B's call, bounded by the watchdog
    g_wd.arm(g_hang_ms, g_hang_ms + 3000, stuck_json(rec));
    wk.post(fnB);
    wk.wait();
    double since = 0;
    const bool released = g_wd.disarm(&since);
    // 5. let A go; it must return
    release_all();
    const double tr = now_ms();
    while (a_state != 2 && now_ms() - tr < 3000) usleep(1000);
    if (a_state != 2) {
      J s = rec;
      s.str("outcome", "STUCK").str("detail", "thread A did not return after the spinner was released");
      emit(s);
      _exit(3);
    }
    A.join();
    if (C.joinable()) {
      const double tc = now_ms();
      while (c_state != 2 && now_ms() - tc < 3000) usleep(1000);
      if (c_state != 2) {
        J s = rec;
        s.str("outcome", "STUCK").str("detail", "thread C (" + g_writer + ") did not return after the spinner was released");
        emit(s);
        _exit(3);
      }
      C.join();
      rec.num("c_ms", c_t1 - c_t0);
      if (!c_err.empty()) rec.str("c_error", c_err);
    }
    Timed t;
    t.err = wk.err;
    t.ms = wk.t1 - wk.t0;
    t.released = released;
    t.after_release_ms = since;
    rec.str("outcome", t.outcome()).num("ms", t.ms).num("hang_ms", g_hang_ms).num("a_ms", a_t1 - a_t0);
    if (released) rec.num("after_release_ms", since);
    if (!t.err.empty()) rec.str("detail", t.err);
    if (!a_err.empty()) rec.str("a_error", a_err);
    emit(rec);
    res_wait_exit(spin, 3000);
    // drain everything before the next item (bounded)
    Timed d = timed(base("drain"), []() -> Err { RK(cudaDeviceSynchronize()); return ""; });
    if (!d.err.empty()) {
      J s = base("drain");
      s.str("outcome", "error").str("detail", d.err);
      emit(s);
    }
  }
  {
    std::lock_guard<std::mutex> l(wk.mu);
    wk.quit = true;
  }
  wk.cv.notify_all();
  wk.th.join();
  release_all();
  return 0;
}

// ------------------------------------------------------------ Q5: doorbell latency

static const char* const kDoorbellItems[] = {"spin", "sleep100", "sleep1000", "backoff2000",
                                              "backoff20000"};

static int mode_doorbell(const std::vector<std::string>& sel, int iters) {
  g_test = "doorbell";
  Nvml nv;
  nv.open();
  Work w;
  Err e = w.init(20.0);
  double base_ms = 0;
  if (e.empty()) e = w.median_ms(3, &base_ms);
  cudaDeviceSynchronize();
  const double idle_w = nv.watts(1000);
  {
    J j = base("baseline");
    j.str("outcome", e.empty() ? "measured" : "error").num("idle_w", idle_w).num("work_ms", base_ms);
    j.str("detail", e.empty() ? (nv.ok ? "NVML ok" : "NVML unavailable") : e);
    emit(j);
  }
  if (!e.empty()) return 0;
  for (const char* it : kDoorbellItems) {
    if (!selected(sel, it)) continue;
    J rec = base(it);
    Resident r;
    std::string s = it;
    if (s == "spin") {
      r.mode = 0;
    } else if (s.rfind("sleep", 0) == 0) {
      r.mode = 1;
      r.sleep_ns = static_cast<unsigned>(std::stoul(s.substr(5)));
    } else {
      r.mode = 2;
      r.sleep_ns = static_cast<unsigned>(std::stoul(s.substr(7)));
    }
    e = res_setup(r, "primary", 0);
    if (e.empty()) e = res_launch(r);
    if (!e.empty()) {
      rec.str("outcome", "error").str("detail", e);
      emit(rec);
      continue;
    }
    int lost = 0;
    doorbells(r, 200, &lost);  // warm up
    std::vector<double> v = doorbells(r, iters, &lost);
    unsigned long long loops0 = 0, loops1 = 0, g = 0;
    res_call(r, OP_STATS, 0, 0, 0, 2000, &g, &loops0);
    const double tw = now_ms();
    const double w_idle = nv.watts(1000);
    res_call(r, OP_STATS, 0, 0, 0, 2000, &g, &loops1);
    const double polls_per_s = (loops1 - loops0) / ((now_ms() - tw) / 1000.0);
    double with = 0;
    Err we = w.median_ms(3, &with);
    rec.str("outcome", lost ? "LOST" : "measured")
        .num("n", v.size())
        .num("lost", lost)
        .num("bad_desc", static_cast<double>(vload(&r.c->d.bad_desc)))
        .num("p50_us", pct(v, 50))
        .num("p90_us", pct(v, 90))
        .num("p99_us", pct(v, 99))
        .num("p999_us", pct(v, 99.9))
        .num("max_us", pct(v, 100))
        .num("idle_w", w_idle)
        .num("idle_w_delta", w_idle - idle_w)
        .num("polls_per_s", polls_per_s)
        .num("work_ratio", we.empty() ? with / base_ms : NAN)
        .num("smid", vload(&r.c->d.smid));
    if (!we.empty()) rec.str("detail", we);
    emit(rec);
    res_release(r);
    res_wait_exit(r, 3000);
  }
  return 0;
}

// ------------------------------------------------------------ info

static int mode_info() {
  g_test = "info";
  J j = base("device");
  int drv = 0, rt = 0;
  cudaDriverGetVersion(&drv);
  cudaRuntimeGetVersion(&rt);
  j.str("outcome", "info").str("name", g_devname).num("cc", g_cc_major * 10 + g_cc_minor);
  j.num("sms", g_sms).num("driver_api", drv).num("runtime", rt);
  const char* ml = getenv("CUDA_MODULE_LOADING");
  j.str("module_loading_env", ml ? ml : "(unset: LAZY)");
  int v = 0;
  if (p_cuDeviceGetAttribute) {
    p_cuDeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_COMPUTE_MODE, g_dev);
    j.num("compute_mode", v);
    p_cuDeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, g_dev);
    j.num("vmm", v);
    p_cuDeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_CAN_USE_HOST_POINTER_FOR_REGISTERED_MEM, g_dev);
    j.num("host_ptr_for_registered", v);
  }
  if (p_cuDeviceGetDevResource) {
    CUdevResource all{};
    if (p_cuDeviceGetDevResource(g_dev, &all, CU_DEV_RESOURCE_TYPE_SM) == CUDA_SUCCESS)
      j.num("green_sm_count", all.sm.smCount)
          .num("green_min_partition", all.sm.minSmPartitionSize)
          .num("green_alignment", all.sm.smCoscheduledAlignment);
  }
  j.str("missing_driver_symbols", g_missing);
  emit(j);
  return 0;
}

#endif  // !PROBE_LIB

// ------------------------------------------------------------ library face (probe_torch.py)

#ifdef PROBE_LIB
static Resident g_lib_r;
static bool g_lib_setup = false;
static std::string g_lib_err;
extern "C" {
int rp_init(int dev) {
  (void)dev;
  g_lib_err = init_cuda("");
  return g_lib_err.empty() ? 0 : 1;
}
const char* rp_error() { return g_lib_err.c_str(); }
int rp_start(const char* where, int sms, double lifetime_s) {
  if (!g_lib_setup) {
    g_lib_r.lifetime_s = lifetime_s;
    g_lib_err = res_setup(g_lib_r, where, sms);
    if (!g_lib_err.empty()) return 1;
    g_lib_setup = true;
  }
  g_lib_err = res_launch(g_lib_r);
  return g_lib_err.empty() ? 0 : 1;
}
int rp_ensure() {
  g_lib_err = res_ensure(g_lib_r);
  return g_lib_err.empty() ? 0 : 1;
}
int rp_running() { return res_running(g_lib_r) ? 1 : 0; }
int rp_sms() { return g_lib_r.sms; }
const char* rp_info() { return g_lib_r.info.c_str(); }
void rp_release_all() { release_all(); }
int rp_wait_exit(int ms) { return res_wait_exit(g_lib_r, ms) ? 0 : 1; }
void rp_arm(int release_ms, int abort_ms, const char* abort_json) {
  g_wd.arm(release_ms, abort_ms, abort_json ? abort_json : "{}");
}
int rp_disarm(double* since_release_ms) {
  double s = 0;
  const bool r = g_wd.disarm(&s);
  if (since_release_ms) *since_release_ms = s;
  return r ? 1 : 0;
}
}
#else

// ------------------------------------------------------------ main

static int usage() {
  fprintf(stderr,
          "usage: probe info\n"
          "       probe items sync|mem|lock|doorbell\n"
          "       probe sync|mem|conc|exit WHERE   (WHERE: primary green ctx ctxaff)\n"
          "       probe lock A_VARIANT             (memcpy_d2h_pageable stream_sync device_sync\n"
          "                                         event_sync launch_queue_full)\n"
          "       probe doorbell\n"
          "options: --items a,b  --sms N (8)  --hang-ms N (700)  --lifetime S (30)\n"
          "         --sched auto|spin|yield|blocking  --iters N (10000)\n"
          "         --writer none|malloc|lazy (lock: a third thread's call after A blocks)\n"
          "env: PROBE_TAG (added to every record), PROBE_MPS=1 (records say mps)\n");
  return 2;
}

template <size_t N>
static std::string join(const char* const (&a)[N]) {
  std::string s;
  for (size_t i = 0; i < N; ++i) s += (i ? "," : "") + std::string(a[i]);
  return s;
}

int main(int argc, char** argv) {
  if (argc < 2) return usage();
  const std::string mode = argv[1];
  std::vector<std::string> pos, items;
  int sms = 8, iters = 10000;
  double lifetime = 30;
  std::string sched;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    auto val = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (a == "--items") items = split_csv(val());
    else if (a == "--sms") sms = atoi(val().c_str());
    else if (a == "--hang-ms") g_hang_ms = atoi(val().c_str());
    else if (a == "--lifetime") lifetime = atof(val().c_str());
    else if (a == "--sched") sched = val();
    else if (a == "--iters") iters = atoi(val().c_str());
    else if (a == "--writer") g_writer = val();
    else pos.push_back(a);
  }
  if (mode == "items") {
    const std::string w = pos.empty() ? "" : pos[0];
    if (w == "sync") printf("%s\n", join(kSyncItems).c_str());
    else if (w == "mem") printf("%s\n", join(kMemItems).c_str());
    else if (w == "lock") printf("%s\n", join(kLockItems).c_str());
    else if (w == "doorbell") printf("%s\n", join(kDoorbellItems).c_str());
    else return usage();
    return 0;
  }
  if (const char* t = getenv("PROBE_TAG")) g_tag = t;
  if (const char* m = getenv("PROBE_MPS")) g_mps = std::string(m) == "1";
  const std::string where = pos.empty() ? "primary" : pos[0];
  g_where = mode == "lock" || mode == "doorbell" || mode == "info" ? "primary" : where;
  g_q = mode == "lock" ? "Q4" : mode == "doorbell" ? "Q5" : mode == "info" ? "info"
        : where == "primary" ? "Q1" : where == "green" ? "Q2" : "Q3";
  if (mode == "exit") return mode_exit(where, sms, lifetime > 15 ? 6 : lifetime);
  if (!sched.empty()) g_tag += (g_tag.empty() ? "" : ",") + std::string("sched=") + sched;
  if (mode == "lock") g_tag += (g_tag.empty() ? "" : ",") + std::string("A=") + where;
  if (mode == "lock" && g_writer != "none") g_tag += ",C=" + g_writer;
  Err e = init_cuda(sched);
  if (!e.empty()) {  // one error record per item, so run.sh does not retry them
    g_test = mode;
    if (items.empty()) {
      std::string all = mode == "sync"       ? join(kSyncItems)
                        : mode == "mem"      ? join(kMemItems)
                        : mode == "lock"     ? join(kLockItems)
                        : mode == "doorbell" ? join(kDoorbellItems)
                        : mode == "conc"     ? "concurrency"
                                             : "device";
      items = split_csv(all);
    }
    for (const auto& it : items) {
      J j = base(it);
      j.str("outcome", "error").str("detail", "init: " + e);
      emit(j);
    }
    return 1;
  }
  if (mode == "info") return mode_info();
  if (mode == "sync") return mode_sync(where, sms, items);
  if (mode == "mem") return mode_mem(where, sms, items);
  if (mode == "conc") return mode_conc(where, sms);
  if (mode == "lock") return mode_lock(where, items);
  if (mode == "doorbell") return mode_doorbell(items, iters);
  return usage();
}
#endif
