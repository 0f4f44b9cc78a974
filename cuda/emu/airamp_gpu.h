// CPU stand-in for ../airamp_gpu.h: runs the kernels of ../codec.cu as
// plain C++ on the host, for scripts/check-kernels-emu (see README.md).
//
// One CTA of 1..8 logical warps, each warp 32 std::threads (the driver
// starts them, one kernel call each); thread_x() is the thread's index in
// the CTA, block_x() is 0. Every lane exchange
// (warp_max, warp_bcast, warp_xor, warp_next, warp_any) publishes the
// lane's value in a shared slot, waits on a 32-thread std::barrier, reads,
// and waits again before the slots can be reused: the same values a
// converged CUDA warp's __shfl_sync/__reduce_max_sync/__any_sync return.
//
// It defines the include guard of ../airamp_gpu.h, so when codec.cu (which
// is compiled unmodified) includes "airamp_gpu.h" from its own directory,
// the real header expands to nothing and these definitions stand.
//
// Numerics: fadd_rn/fmul_rn are plain IEEE f32 operations; the build must
// pass -ffp-contract=off (no FMA contraction; GPU builds pass --fmad=false).
// AIRAMP_HAS_CVT_FP8 is never defined: the sm_89+ hardware FP8 conversion
// does not exist here, so FP8 encoding always runs the software path (the
// path sm_80 and AIRAMP_SOFT_FP8 builds run).
#ifndef AIRAMP_GPU_H
#define AIRAMP_GPU_H
#define AIRAMP_GPU_EMU 1

#include <barrier>
#include <cstring>

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define AIRAMP_INL inline __attribute__((always_inline))
#define AIRAMP_DEV static inline
#define AIRAMP_KERNEL extern "C" void

// The calling thread's index in the CTA and its warp (set by the driver in
// each thread).
struct EmuWarp {
    std::barrier<> bar{32};
    u32 slot[32];
};
extern thread_local u32 g_thread;
extern thread_local EmuWarp* g_warp;

AIRAMP_DEV u32 thread_x() { return g_thread; }
AIRAMP_DEV u32 emu_lane() { return g_thread & 31u; }
AIRAMP_DEV u32 block_x() { return 0; }
AIRAMP_DEV float as_f(u32 b) {
    float f;
    std::memcpy(&f, &b, 4);
    return f;
}
AIRAMP_DEV u32 as_u(float f) {
    u32 b;
    std::memcpy(&b, &f, 4);
    return b;
}
AIRAMP_DEV float fadd_rn(float a, float b) { return a + b; }
AIRAMP_DEV float fmul_rn(float a, float b) { return a * b; }
AIRAMP_DEV float u2f_rn(u32 v) { return (float)v; }

// Value of `v` in lane `src` (every lane of the warp must call it).
AIRAMP_DEV u32 emu_read(u32 v, u32 src) {
    g_warp->slot[emu_lane()] = v;
    g_warp->bar.arrive_and_wait();
    const u32 r = g_warp->slot[src];
    g_warp->bar.arrive_and_wait();
    return r;
}
AIRAMP_DEV u32 warp_max(u32 v) {
    g_warp->slot[emu_lane()] = v;
    g_warp->bar.arrive_and_wait();
    u32 m = 0;
    for (int i = 0; i < 32; ++i) m = g_warp->slot[i] > m ? g_warp->slot[i] : m;
    g_warp->bar.arrive_and_wait();
    return m;
}
AIRAMP_DEV u32 warp_bcast(u32 v, u32 k) { return emu_read(v, k); }
AIRAMP_DEV u32 warp_xor(u32 v, u32 m) { return emu_read(v, emu_lane() ^ m); }
// CUDA's __shfl_down_sync(.., 1) returns the lane's own value in lane 31.
AIRAMP_DEV u32 warp_next(u32 v) { return emu_read(v, emu_lane() < 31 ? emu_lane() + 1 : emu_lane()); }
AIRAMP_DEV bool warp_any(bool p) {
    g_warp->slot[emu_lane()] = p;
    g_warp->bar.arrive_and_wait();
    bool any = false;
    for (int i = 0; i < 32; ++i) any = any || g_warp->slot[i];
    g_warp->bar.arrive_and_wait();
    return any;
}

#endif // AIRAMP_GPU_H
