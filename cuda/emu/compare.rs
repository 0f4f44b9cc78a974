//! The GPU codec kernels (cuda/codec.cu) run on the CPU against the CPU
//! codec, bit for bit. `cuda/emu/driver.cpp` builds codec.cu, unmodified,
//! as a host library in which one logical warp is 32 threads
//! (cuda/emu/airamp_gpu.h) and a launch is one CTA of 1 to 3 such warps;
//! this test dlopens it and compares every
//! encode, decode and reduce_encode kernel (E4M3, E5M2, INT8 x f32, f16,
//! bf16) with `airamp::codec` and `airamp::gpu::reference::reduce_encode`.
//!
//! Ignored by default (it needs the library, built by g++):
//! `scripts/check-kernels-emu` builds the vector and the lane-strided
//! variants and runs it once for each, with `AIRAMP_EMU_LIB=<library>`
//! (and `AIRAMP_EMU_BUILD=vector|lane-strided`, checked against it).
//! `AIRAMP_EMU_CASES=quick` leaves out the large inputs (see cases()).
#![deny(unsafe_code)]

use airamp::codec::{bf16_to_f32, encoded_len, f16_to_f32, Codec, WireFormat};
use airamp::gpu::inputs::{edge_blocks, member_wires, Rng, Values};
use airamp::gpu::reference;
use airamp::gpu::Elem;
use std::time::Instant;

/// The emulated kernels, from the library built of driver.cpp.
#[allow(unsafe_code)]
mod emu {
    use std::ffi::{c_char, c_int, c_void, CStr, CString};

    type CodecFn = unsafe extern "C" fn(*const c_char, u32, u64, u64, u64) -> c_int;
    type ReduceFn =
        unsafe extern "C" fn(*const c_char, u32, u64, u64, u32, u32, u64, u64, u64) -> c_int;
    type VectorFn = unsafe extern "C" fn() -> c_int;

    pub struct Lib {
        codec: CodecFn,
        reduce: ReduceFn,
        pub vector: bool,
    }

    fn sym(h: *mut c_void, name: &CStr) -> *mut c_void {
        // SAFETY: `h` is a live handle from dlopen (never closed) and
        // `name` is NUL-terminated.
        let p = unsafe { libc::dlsym(h, name.as_ptr()) };
        assert!(!p.is_null(), "{name:?} missing from the emulation library");
        p
    }

    impl Lib {
        pub fn load(path: &str) -> Lib {
            let c = CString::new(path).expect("library path");
            // SAFETY: a NUL-terminated path; the library is ours
            // (driver.cpp) and runs no code at load beyond C++ static
            // initialisers (its kernel table).
            let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
            assert!(!h.is_null(), "dlopen {path} failed");
            let (codec, reduce, vector) = (
                sym(h, c"emu_codec"),
                sym(h, c"emu_reduce"),
                sym(h, c"emu_vector"),
            );
            // SAFETY: the three symbols are defined in driver.cpp as
            // `extern "C"` functions with exactly these signatures; the
            // handle stays open for the whole process.
            let (codec, reduce, vector) = unsafe {
                (
                    std::mem::transmute::<*mut c_void, CodecFn>(codec),
                    std::mem::transmute::<*mut c_void, ReduceFn>(reduce),
                    std::mem::transmute::<*mut c_void, VectorFn>(vector),
                )
            };
            // SAFETY: takes no arguments, only returns a constant.
            let vector = unsafe { vector() } != 0;
            Lib {
                codec,
                reduce,
                vector,
            }
        }

        /// Runs `airamp_{encode,decode}_<fmt>_<elem>(a, n, b)` on `warps`
        /// (1..=8) logical warps. The caller passes addresses of live
        /// buffers large enough for `n` values (elements and wire), as the
        /// kernel's contract requires.
        pub fn codec(&self, kernel: &str, warps: u32, a: u64, n: u64, b: u64) {
            let k = CString::new(kernel).unwrap();
            // SAFETY: `k` is NUL-terminated; the buffers behind `a` and `b`
            // are checked for size by the callers (Buf) and outlive the call,
            // which joins every emulated lane before returning.
            let r = unsafe { (self.codec)(k.as_ptr(), warps, a, n, b) };
            assert_eq!(r, 0, "no kernel {kernel}");
        }

        /// Runs `airamp_reduce_encode_<fmt>_<elem>`; same contract.
        #[allow(clippy::too_many_arguments)]
        pub fn reduce(
            &self,
            kernel: &str,
            warps: u32,
            own_src: u64,
            table: u64,
            members: u32,
            own: u32,
            n: u64,
            wire_out: u64,
            dst: u64,
        ) {
            let k = CString::new(kernel).unwrap();
            // SAFETY: as in `codec`; `table` holds `members` addresses of
            // live wires of `n` values (the own slot is never read).
            let r = unsafe {
                (self.reduce)(
                    k.as_ptr(),
                    warps,
                    own_src,
                    table,
                    members,
                    own,
                    n,
                    wire_out,
                    dst,
                )
            };
            assert_eq!(r, 0, "no kernel {kernel}");
        }
    }
}

const GUARD: u8 = 0xA5;
const GUARD_LEN: usize = 64;

/// A byte buffer whose data starts `off` bytes past a 16-byte boundary,
/// with guard bytes on both sides to catch stray writes.
struct Buf {
    mem: Vec<u8>,
    start: usize,
    len: usize,
}

impl Buf {
    fn new(bytes: &[u8], off: usize) -> Buf {
        let mut mem = vec![GUARD; GUARD_LEN + 16 + off + bytes.len() + GUARD_LEN];
        let start = GUARD_LEN + mem[GUARD_LEN..].as_ptr().align_offset(16) + off;
        mem[start..start + bytes.len()].copy_from_slice(bytes);
        Buf {
            mem,
            start,
            len: bytes.len(),
        }
    }
    fn scratch(len: usize, off: usize) -> Buf {
        Buf::new(&vec![GUARD; len], off)
    }
    fn addr(&self) -> u64 {
        self.mem[self.start..].as_ptr() as u64
    }
    fn data(&self) -> &[u8] {
        let (before, rest) = self.mem.split_at(self.start);
        let (data, after) = rest.split_at(self.len);
        assert!(
            before.iter().all(|&b| b == GUARD),
            "kernel wrote before its buffer"
        );
        assert!(
            after.iter().all(|&b| b == GUARD),
            "kernel wrote past its buffer"
        );
        data
    }
}

fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// Random values over a wide and a tiny exponent range (in runs of 2048),
/// with NaN, -Inf, -0, subnormals and f32::MAX sprinkled in.
fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng(seed | 1);
    (0..n)
        .map(|i| match i % 97 {
            13 => f32::NAN,
            14 => f32::NEG_INFINITY,
            15 => -0.0,
            16 => f32::from_bits((r.next_u64() as u32) & 0x807F_FFFF),
            17 => f32::MAX,
            _ if (i / 2048) % 3 == 0 => r.f32_with_exp(-130, -110),
            _ => r.f32_with_exp(-20, 20),
        })
        .collect()
}

struct Tally {
    cases: usize,
    failed: usize,
}

impl Tally {
    fn check(&mut self, what: &str, expected: &[u8], got: &[u8]) {
        self.cases += 1;
        match first_diff(expected, got) {
            None => println!("ok   {what}"),
            Some(d) => {
                self.failed += 1;
                println!(
                    "FAIL {what}: byte {d} of {}: cpu {:#04x} emu {:#04x}",
                    expected.len(),
                    expected[d],
                    got[d]
                );
            }
        }
    }
}

/// Encode and decode inputs. Quick mode keeps every f16 and bf16 pattern
/// (as themselves; the f32 widening of every pattern only in full mode),
/// the edge blocks in f32, and the random inputs; full mode adds the
/// scattered patterns and the edge blocks narrowed to f16/bf16.
fn inputs(quick: bool) -> Vec<(String, Values)> {
    let mut inputs: Vec<(String, Values)> = Vec::new();
    let pats: Vec<u16> = (0..=u16::MAX).collect();
    let widen = |f: fn(u16) -> f32| pats.iter().map(|&h| f(h)).collect::<Vec<f32>>();
    inputs.push(("every f16".into(), Values::F16(pats.clone())));
    inputs.push(("every bf16".into(), Values::Bf16(pats.clone())));
    if !quick {
        inputs.push(("every f16 as f32".into(), Values::F32(widen(f16_to_f32))));
        inputs.push(("every bf16 as f32".into(), Values::F32(widen(bf16_to_f32))));
        let scattered: Vec<u16> = pats.iter().map(|i| i.wrapping_mul(40503)).collect();
        inputs.push(("scattered bf16".into(), Values::Bf16(scattered.clone())));
        inputs.push(("scattered f16".into(), Values::F16(scattered)));
    }
    let e = edge_blocks();
    for elem in Elem::ALL {
        let t = elem.name();
        if !quick || t == "f32" {
            inputs.push((format!("edges {t}"), Values::F32(e.to_vec()).as_elem(elem)));
        }
        inputs.push((
            format!("random {t}"),
            Values::F32(random(20_011, 5)).as_elem(elem),
        ));
    }
    inputs
}

fn encode_decode(lib: &emu::Lib, codec: &Codec, inputs: &[(String, Values)], tally: &mut Tally) {
    let fmt = codec.format();
    for (i, (what, data)) in inputs.iter().enumerate() {
        let n = data.len();
        // Every third input starts one element past a 16-byte boundary
        // (the vector build's lane-strided fallback); wires at any offset.
        let elem_off = if i % 3 == 2 { data.elem().size() } else { 0 };
        let wire_off = (i * 3 + 1) % 8;
        // Every other input is split between 3 warps (grid-stride loops).
        let warps = if i % 2 == 1 { 3 } else { 1 };
        let mut cpu = vec![0u8; encoded_len(fmt, n)];
        codec.encode_wire(data.src(), &mut cpu).unwrap();
        let src = Buf::new(&data.bytes(), elem_off);
        let wire = Buf::scratch(cpu.len(), wire_off);
        let kernel = format!("airamp_encode_{}_{}", fmt.name(), data.elem().name());
        lib.codec(&kernel, warps, src.addr(), n as u64, wire.addr());
        let at = format!("n={n} elem+{elem_off} wire+{wire_off} warps={warps}");
        tally.check(&format!("encode {fmt} {what} {at}"), &cpu, wire.data());

        let mut out = Values::zeros(data.elem(), data.len());
        codec.decode_into_wire(&cpu, out.dst()).unwrap();
        let wire = Buf::new(&cpu, wire_off);
        let dst = Buf::scratch(n * data.elem().size(), elem_off);
        let kernel = format!("airamp_decode_{}_{}", fmt.name(), data.elem().name());
        lib.codec(&kernel, warps, wire.addr(), n as u64, dst.addr());
        tally.check(
            &format!("decode {fmt} {what} {at}"),
            &out.bytes(),
            dst.data(),
        );
    }
}

/// INT8 decode of (scale, code) pairs: block b has the bf16 scale pattern
/// b / 8 * step and codes 0..=255 over its 8 blocks. step 1 (full) is every
/// bf16 scale with every code; quick mode takes every 16th scale pattern.
fn int8_scale_codes(lib: &emu::Lib, codec: &Codec, quick: bool, tally: &mut Tally) {
    let step = if quick { 16 } else { 1 };
    let scales = 65536 / step;
    let n = scales * 8 * 32;
    let nb = n / 32;
    let mut w = vec![0u8; encoded_len(WireFormat::Int8, n)];
    let (s, c) = w.split_at_mut(nb * 2);
    for (b, sc) in s.chunks_exact_mut(2).enumerate() {
        sc.copy_from_slice(&(((b / 8) * step) as u16).to_le_bytes());
    }
    for (v, x) in c.iter_mut().enumerate() {
        *x = v as u8;
    }
    for elem in Elem::ALL {
        let t = elem.name();
        let mut out = Values::zeros(elem, n);
        codec.decode_into_wire(&w, out.dst()).unwrap();
        let wire = Buf::new(&w, 1);
        let dst = Buf::scratch(n * out.elem().size(), 0);
        lib.codec(
            &format!("airamp_decode_int8_{t}"),
            2,
            wire.addr(),
            n as u64,
            dst.addr(),
        );
        let what = format!("decode int8 {scales} scales x 256 codes {t} (n={n}, warps=2)");
        tally.check(&what, &out.bytes(), dst.data());
    }
}

/// reduce_encode: folds of 1, 2, 3 and 8 members with the own member
/// first, middle and last, random inputs (odd members scaled by 3), and
/// (full mode) two members holding every f16/bf16 pattern.
fn reduces(lib: &emu::Lib, codec: &Codec, quick: bool, tally: &mut Tally) {
    let mut case = 0;
    for elem in Elem::ALL {
        let t = elem.name();
        for members in [1usize, 2, 3, 8] {
            let mut owns = vec![0, members / 2, members - 1];
            owns.dedup();
            for own in owns {
                case += 1;
                let n = if quick { 2_000 } else { 9_000 } + 29 + case;
                let inputs: Vec<Values> = (0..members)
                    .map(|m| {
                        let mut v = random(n, (case * 100 + m) as u64);
                        if m % 2 == 1 {
                            v.iter_mut().for_each(|x| *x *= 3.0);
                        }
                        Values::F32(v).as_elem(elem)
                    })
                    .collect();
                reduce_one(lib, codec, own, &inputs, case, tally);
            }
        }
        if t != "f32" && !quick {
            let p: Vec<u16> = (0..=u16::MAX).collect();
            let q: Vec<u16> = p.iter().rev().map(|x| x.rotate_left(5)).collect();
            let (a, b) = if t == "f16" {
                (Values::F16(p), Values::F16(q))
            } else {
                (Values::Bf16(p), Values::Bf16(q))
            };
            for own in [0, 1] {
                case += 1;
                reduce_one(lib, codec, own, &[a.clone(), b.clone()], case, tally);
            }
        }
    }
}

fn reduce_one(
    lib: &emu::Lib,
    codec: &Codec,
    own: usize,
    inputs: &[Values],
    case: usize,
    tally: &mut Tally,
) {
    let fmt = codec.format();
    let n = inputs[own].len();
    let size = inputs[own].elem().size();
    let wires = member_wires(codec, inputs, own).unwrap();
    let refs: Vec<&[u8]> = wires.iter().map(Vec::as_slice).collect();
    let mut cpu_wire = vec![0u8; encoded_len(fmt, n)];
    let mut cpu_out = Values::zeros(inputs[own].elem(), inputs[own].len());
    reference::reduce_encode(
        codec,
        own,
        inputs[own].src(),
        &refs,
        &mut cpu_wire,
        cpu_out.dst(),
    )
    .unwrap();

    let elem_off = if case % 3 == 2 { size } else { 0 };
    let own_src = Buf::new(&inputs[own].bytes(), elem_off);
    let dst = Buf::scratch(n * size, elem_off);
    let bufs: Vec<Buf> = wires
        .iter()
        .enumerate()
        .map(|(m, w)| Buf::new(w, (m * 3 + case) % 8))
        .collect();
    let table: Vec<u8> = bufs
        .iter()
        .enumerate()
        .flat_map(|(m, b)| (if m == own { 0 } else { b.addr() }).to_ne_bytes())
        .collect();
    let table = Buf::new(&table, 0);
    let out = Buf::scratch(cpu_wire.len(), case % 8);
    let kernel = format!(
        "airamp_reduce_encode_{}_{}",
        fmt.name(),
        inputs[own].elem().name()
    );
    // Every other case is split between 2 warps.
    let warps = 1 + (case % 2) as u32;
    lib.reduce(
        &kernel,
        warps,
        own_src.addr(),
        table.addr(),
        inputs.len() as u32,
        own as u32,
        n as u64,
        out.addr(),
        dst.addr(),
    );
    let what = format!(
        "reduce {fmt} {} members={} own={own} n={n} elem+{elem_off} warps={warps}",
        inputs[own].elem().name(),
        inputs.len()
    );
    tally.check(&format!("{what}: wire"), &cpu_wire, out.data());
    tally.check(&format!("{what}: output"), &cpu_out.bytes(), dst.data());
}

#[test]
#[ignore = "needs the emulation library: run scripts/check-kernels-emu"]
fn kernels_match_the_cpu_codec() {
    let path = std::env::var("AIRAMP_EMU_LIB")
        .expect("AIRAMP_EMU_LIB: the library built of cuda/emu/driver.cpp");
    let quick = match std::env::var("AIRAMP_EMU_CASES").as_deref() {
        Ok("quick") => true,
        Ok("full") | Err(_) => false,
        Ok(other) => panic!("AIRAMP_EMU_CASES={other}: quick or full"),
    };
    let lib = emu::Lib::load(&path);
    let build = if lib.vector { "vector" } else { "lane-strided" };
    if let Ok(want) = std::env::var("AIRAMP_EMU_BUILD") {
        assert_eq!(want, build, "{path} is not the build asked for");
    }
    println!(
        "{path}: {build} build, {} cases",
        if quick { "quick" } else { "full" }
    );
    let t0 = Instant::now();
    let inputs = inputs(quick);
    let mut tally = Tally {
        cases: 0,
        failed: 0,
    };
    for fmt in WireFormat::ALL {
        let codec = Codec::new(fmt);
        encode_decode(&lib, &codec, &inputs, &mut tally);
        if fmt == WireFormat::Int8 {
            int8_scale_codes(&lib, &codec, quick, &mut tally);
        }
        reduces(&lib, &codec, quick, &mut tally);
    }
    println!(
        "kernels-emu ({build}): {} cases, {} failed ({:.1} s)",
        tally.cases,
        tally.failed,
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(
        tally.failed, 0,
        "emulated kernels differ from the CPU codec"
    );
}
