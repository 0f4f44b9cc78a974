// Device memory a context of its own costs, beside the application's
// primary context: cuMemGetInfo before and after cuCtxCreate, after its
// stack/printf/heap limits are set, and after a first kernel launch (local
// memory is reserved lazily). One line per run: "stack=<bytes>", then the
// SM count the context was limited to (execution affinity, honoured under
// MPS only; 0 = no limit) and the device runtime's pending launch count
// (-1 = left at the driver's default).
// Build: nvcc -arch=sm_90 -o context_cost context_cost.cu -lcuda
// Run:   ./context_cost STACK [SMS [PENDING]]   e.g. ./context_cost 64 16 1
//        (one variant per process: run.sh-style callers run it once per value)
#include <cuda.h>
#include <cuda_runtime.h>
#include <cstdio>
#include <cstdlib>

__global__ void touch(unsigned* p) {
    if (p) p[threadIdx.x] = threadIdx.x;
}

static size_t used_mib() {
    size_t free_b = 0, total_b = 0;
    cuMemGetInfo(&free_b, &total_b);
    return (total_b - free_b) >> 20;
}

#define CK(x)                                                                  \
    do {                                                                       \
        CUresult r_ = (x);                                                     \
        if (r_ != CUDA_SUCCESS) {                                              \
            const char* n_ = nullptr;                                          \
            cuGetErrorName(r_, &n_);                                           \
            printf("%s -> %s\n", #x, n_ ? n_ : "?");                           \
            return 1;                                                          \
        }                                                                      \
    } while (0)

int main(int argc, char** argv) {
    const long stack = argc > 1 ? atol(argv[1]) : 1024;
    const unsigned sms = argc > 2 ? (unsigned)atol(argv[2]) : 0;
    const long pending = argc > 3 ? atol(argv[3]) : -1;
    cudaFree(nullptr);  // the primary context, as the application has it
    CUcontext primary = nullptr, own = nullptr;
    CK(cuCtxGetCurrent(&primary));
    CUdevice dev = 0;
    CK(cuCtxGetDevice(&dev));
    const size_t base = used_mib();
    CUctxCreateParams params{};
    CUexecAffinityParam affinity{};
    if (sms > 0) {
        int supported = 0;
        CK(cuDeviceGetExecAffinitySupport(&supported, CU_EXEC_AFFINITY_TYPE_SM_COUNT, dev));
        if (!supported) {
            printf("stack=%ld sms=%u: SM-count affinity not supported here (MPS off?)\n", stack, sms);
            return 1;
        }
        affinity.type = CU_EXEC_AFFINITY_TYPE_SM_COUNT;
        affinity.param.smCount.val = sms;
        params.execAffinityParams = &affinity;
        params.numExecAffinityParams = 1;
    }
    CK(cuCtxCreate(&own, &params, 0, dev));
    CUexecAffinityParam granted{};
    if (sms > 0) CK(cuCtxGetExecAffinity(&granted, CU_EXEC_AFFINITY_TYPE_SM_COUNT));
    const size_t created = used_mib();
    if (stack >= 0) {
        CK(cuCtxSetLimit(CU_LIMIT_STACK_SIZE, (size_t)stack));
        CK(cuCtxSetLimit(CU_LIMIT_PRINTF_FIFO_SIZE, 4096));
        CK(cuCtxSetLimit(CU_LIMIT_MALLOC_HEAP_SIZE, 0));
    }
    if (pending >= 0) CK(cuCtxSetLimit(CU_LIMIT_DEV_RUNTIME_PENDING_LAUNCH_COUNT, (size_t)pending));
    const size_t limited = used_mib();
    touch<<<1, 32>>>(nullptr);
    CK(cuCtxSynchronize());
    const size_t launched = used_mib();
    size_t got = 0;
    cuCtxGetLimit(&got, CU_LIMIT_STACK_SIZE);
    printf("stack=%ld (driver %zu) sms=%u (granted %u) pending=%ld: primary only %zu MiB; "
           "+own context %zu; after limits %zu; after first launch %zu; own context costs %zu MiB\n",
           stack, got, sms, sms > 0 ? granted.param.smCount.val : 0, pending, base, created - base,
           limited - base, launched - base, launched - base);
    return 0;
}
