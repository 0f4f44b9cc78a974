// Builds ../codec.cu, unmodified, as a host shared library with the CPU
// warp of ./airamp_gpu.h, for cuda/emu/compare.rs (scripts/check-kernels-emu).
//
//   g++ -std=c++20 -O2 -ffp-contract=off -fPIC -shared [-DAIRAMP_VECTOR]
//       cuda/emu/driver.cpp -o libemu.so -lpthread
//
// Exports emu_codec (encode/decode kernels) and emu_reduce (reduce_encode
// kernels): each runs the named kernel once in one CTA of `warps` (1..8)
// logical warps of 32 threads, with warp_stride = warps, so the warps
// split the message's tiles (and vector steps) between them as the warps
// of a grid do.
#include "airamp_gpu.h" // the shim beside this file, first: see its comment
#include "../codec.cu"

#ifndef AIRAMP_GPU_EMU
#error "codec.cu was built against the GPU header, not the CPU shim"
#endif
#if defined(AIRAMP_HAS_CVT_FP8)
#error "no hardware FP8 conversion on the CPU"
#endif

#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

thread_local u32 g_thread;
thread_local EmuWarp* g_warp;

typedef void (*Kernel4)(u64, u64, u64, u64);
typedef void (*Kernel8)(u64, u64, u32, u32, u64, u64, u64, u64);

#define EMU_K(f) {#f, (void*)&f}
#define EMU_FORMAT(fmt)                                                                                   \
    EMU_K(airamp_encode_##fmt##_f32), EMU_K(airamp_encode_##fmt##_f16), EMU_K(airamp_encode_##fmt##_bf16), \
        EMU_K(airamp_decode_##fmt##_f32), EMU_K(airamp_decode_##fmt##_f16),                               \
        EMU_K(airamp_decode_##fmt##_bf16), EMU_K(airamp_reduce_encode_##fmt##_f32),                        \
        EMU_K(airamp_reduce_encode_##fmt##_f16), EMU_K(airamp_reduce_encode_##fmt##_bf16)

static const std::map<std::string, void*> kernels = {EMU_FORMAT(e4m3), EMU_FORMAT(e5m2), EMU_FORMAT(int8)};

// Runs f in 32 * warps threads (thread t: lane t % 32 of warp t / 32) and
// waits for them.
template <class F> static void run_cta(u32 warps, F f) {
    std::unique_ptr<EmuWarp[]> w(new EmuWarp[warps]);
    EmuWarp* ws = w.get();
    std::vector<std::thread> threads;
    for (u32 t = 0; t < 32 * warps; ++t) {
        threads.emplace_back([=] {
            g_thread = t;
            g_warp = &ws[t / 32];
            f();
        });
    }
    for (auto& t : threads) t.join();
}

static void* find(const char* name) {
    auto it = kernels.find(name);
    return it == kernels.end() ? nullptr : it->second;
}

// Whether this library was built with the vector path (AIRAMP_VECTOR).
extern "C" int emu_vector() {
#if defined(AIRAMP_VECTOR)
    return 1;
#else
    return 0;
#endif
}

// airamp_{encode,decode}_<fmt>_<elem>(a, n, b); -1 for an unknown name or
// a warp count outside 1..8 (one CTA of 256 threads at most).
extern "C" int emu_codec(const char* name, u32 warps, u64 a, u64 n, u64 b) {
    Kernel4 k = (Kernel4)find(name);
    if (!k || warps < 1 || warps > airamp::WARPS_PER_CTA) return -1;
    run_cta(warps, [=] { k(a, n, b, warps); });
    return 0;
}

// airamp_reduce_encode_<fmt>_<elem>(...); -1 for an unknown name.
extern "C" int emu_reduce(const char* name, u32 warps, u64 own_src, u64 table, u32 members, u32 own, u64 n,
                          u64 wire_out, u64 dst) {
    Kernel8 k = (Kernel8)find(name);
    if (!k || warps < 1 || warps > airamp::WARPS_PER_CTA) return -1;
    run_cta(warps, [=] { k(own_src, table, members, own, n, wire_out, dst, warps); });
    return 0;
}
