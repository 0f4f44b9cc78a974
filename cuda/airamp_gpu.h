// Portability layer for cuda/codec.cu: the same kernel source compiles as
// CUDA (NVRTC or nvcc, sm_80+) and as HIP (clang -x hip, gfx90a/gfx942)
// without any HIP header. Everything the kernels need from the platform is
// defined here: thread/block indices, exact float add/multiply (no
// contraction), 32-lane warp max, lane exchanges and vote, and one optional
// hardware FP8 conversion.
//
// AIRAMP_INL marks inline device functions (members too), AIRAMP_DEV
// file-local ones.
//
// Kernels work on "logical warps" of 32 lanes. On AMD wave64 hardware a
// wavefront holds two of them; every cross-lane operation here stays inside
// its own 32-lane half.
#ifndef AIRAMP_GPU_H
#define AIRAMP_GPU_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#if defined(__HIP__)

// Without HIP headers (clang -nogpuinc) the attribute macros are ours.
#ifndef __device__
#define __device__ __attribute__((device))
#endif
#ifndef __global__
#define __global__ __attribute__((global))
#endif
#define AIRAMP_INL __device__ inline __attribute__((always_inline))
#define AIRAMP_DEV static AIRAMP_INL
#define AIRAMP_KERNEL extern "C" __global__ __attribute__((amdgpu_flat_work_group_size(1, 256))) void
// IEEE add/multiply, one rounding each: never fused into an FMA.
#pragma clang fp contract(off)

AIRAMP_DEV u32 thread_x() { return __builtin_amdgcn_workitem_id_x(); }
AIRAMP_DEV u32 block_x() { return __builtin_amdgcn_workgroup_id_x(); }
AIRAMP_DEV float as_f(u32 b) { return __builtin_bit_cast(float, b); }
AIRAMP_DEV u32 as_u(float f) { return __builtin_bit_cast(u32, f); }
AIRAMP_DEV float fadd_rn(float a, float b) { return a + b; }
AIRAMP_DEV float fmul_rn(float a, float b) { return a * b; }
AIRAMP_DEV float u2f_rn(u32 v) { return (float)v; }

// Lane index inside the wavefront (0..63 on wave64, 0..31 on wave32).
AIRAMP_DEV u32 wave_lane() { return __builtin_amdgcn_mbcnt_hi(~0u, __builtin_amdgcn_mbcnt_lo(~0u, 0u)); }
AIRAMP_DEV u32 lane_read(u32 v, u32 src_wave_lane) {
    return (u32)__builtin_amdgcn_ds_bpermute((int)(src_wave_lane << 2), (int)v);
}
// Maximum over the 32 lanes of this logical warp, returned to all of them.
AIRAMP_DEV u32 warp_max(u32 v) {
    const u32 me = wave_lane();
    for (u32 m = 16; m >= 1; m >>= 1) {
        const u32 o = lane_read(v, me ^ m);
        v = o > v ? o : v;
    }
    return v;
}
// Value of `v` in lane `k` (0..31) of this logical warp.
AIRAMP_DEV u32 warp_bcast(u32 v, u32 k) { return lane_read(v, (wave_lane() & ~31u) | k); }
// Value of `v` in lane `lane ^ m` (m < 32).
AIRAMP_DEV u32 warp_xor(u32 v, u32 m) { return lane_read(v, wave_lane() ^ m); }
// Value of `v` in the next lane (unspecified in lane 31).
AIRAMP_DEV u32 warp_next(u32 v) { return lane_read(v, wave_lane() + 1); }
// Whether `p` holds in any lane: of the whole wavefront, a superset of the
// logical warp (callers only use it to pick a slower, always-correct path).
AIRAMP_DEV bool warp_any(bool p) { return __builtin_amdgcn_ballot_w64(p) != 0; }

#else // CUDA

#define AIRAMP_INL __device__ __forceinline__
#define AIRAMP_DEV static AIRAMP_INL
#define AIRAMP_KERNEL extern "C" __global__ void __launch_bounds__(256)

AIRAMP_DEV u32 thread_x() { return threadIdx.x; }
AIRAMP_DEV u32 block_x() { return blockIdx.x; }
AIRAMP_DEV float as_f(u32 b) { return __uint_as_float(b); }
AIRAMP_DEV u32 as_u(float f) { return __float_as_uint(f); }
// Explicit round-to-nearest intrinsics: never contracted into FMA, whatever
// the compiler flags (we also pass --fmad=false).
AIRAMP_DEV float fadd_rn(float a, float b) { return __fadd_rn(a, b); }
AIRAMP_DEV float fmul_rn(float a, float b) { return __fmul_rn(a, b); }
AIRAMP_DEV float u2f_rn(u32 v) { return __uint2float_rn(v); }
AIRAMP_DEV u32 warp_max(u32 v) { return __reduce_max_sync(0xFFFFFFFFu, v); }
AIRAMP_DEV u32 warp_bcast(u32 v, u32 k) { return __shfl_sync(0xFFFFFFFFu, v, (int)k); }
AIRAMP_DEV u32 warp_xor(u32 v, u32 m) { return __shfl_xor_sync(0xFFFFFFFFu, v, (int)m); }
AIRAMP_DEV u32 warp_next(u32 v) { return __shfl_down_sync(0xFFFFFFFFu, v, 1); }
AIRAMP_DEV bool warp_any(bool p) { return __any_sync(0xFFFFFFFFu, p); }

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
// sm_89+ converts two f32 to OCP FP8 in one instruction (round to nearest
// even, finite values saturate to the maximum).
#define AIRAMP_HAS_CVT_FP8 1
AIRAMP_DEV u32 cvt_e4m3x2(float hi, float lo) {
    unsigned short r;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(hi), "f"(lo));
    return r;
}
AIRAMP_DEV u32 cvt_e5m2x2(float hi, float lo) {
    unsigned short r;
    asm("cvt.rn.satfinite.e5m2x2.f32 %0, %1, %2;" : "=h"(r) : "f"(hi), "f"(lo));
    return r;
}
#endif

#endif // CUDA / HIP

#endif // AIRAMP_GPU_H
