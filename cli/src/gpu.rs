//! `airamp gpu ...`: the CUDA layer on a GPU host.
//!
//! * `selftest`: every kernel against the CPU codec and reducer, bit for
//!   bit, in every wire format (E4M3, E5M2, INT8): exhaustive fp16/bf16
//!   patterns, random f32, edge blocks, odd lengths, every wire byte, 2/3/8
//!   members; with the production kernels and the sm_80 ("soft") FP8
//!   conversion path.
//! * `bench`: encode/decode/fold throughput (E4M3 and INT8) next to memcpy
//!   on the same device.
//! * `compile-check`: NVRTC compile of the kernels for sm_80/90/100 (no GPU
//!   needed).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use airamp::codec::{encoded_len, num_blocks, scales_len, Codec, WireFormat};
use airamp::gpu::{
    self, nvrtc, reference, DevAddr, DeviceBuf, Elem, Fold, GpuContext, GpuError, GpuQueue,
    KernelOptions, PinnedBuf, PrimaryContext,
};

use airamp::gpu::inputs::{all_patterns, edge_blocks, member_wires, Rng, Values};

use crate::Opts;

type R<T> = Result<T, String>;

trait OrString<T> {
    fn s(self) -> R<T>;
}

impl<T> OrString<T> for Result<T, GpuError> {
    fn s(self) -> R<T> {
        self.map_err(|e| e.to_string())
    }
}

/// The FP8 formats; the hardware conversion and `soft_fp8` change their
/// code.
const FP8_FORMATS: [WireFormat; 2] = [WireFormat::E4M3, WireFormat::E5M2];

fn fmt_name(f: WireFormat) -> &'static str {
    f.name()
}

// ---------- host data ----------

const KINDS: [&str; 6] = [
    "normal",
    "heavy-tailed",
    "subnormal",
    "huge",
    "specials",
    "zeros",
];

/// `n` f32 of one kind (a few specials sprinkled into every kind).
fn random_f32(kind: &str, n: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    (0..n)
        .map(|i| {
            if i % 997 == 13 {
                return [f32::NAN, -f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0][i % 5];
            }
            match kind {
                "normal" => r.f32_with_exp(-8, 8),
                "heavy-tailed" => r.f32_with_exp(-60, 60),
                "subnormal" => {
                    let b = r.next_u64();
                    if b & 1 == 0 {
                        f32::from_bits(((b >> 32) as u32) & 0x807F_FFFF)
                    } else {
                        r.f32_with_exp(-126, -110)
                    }
                }
                "huge" => r.f32_with_exp(110, 127),
                "specials" => {
                    let b = r.next_u64();
                    match b % 6 {
                        0 => f32::from_bits(
                            0x7F80_0001
                                | ((b >> 40) as u32 & 0x7F_FFFF)
                                | ((b >> 8) as u32 & 0x8000_0000),
                        ),
                        1 => f32::INFINITY,
                        2 => f32::NEG_INFINITY,
                        3 => f32::MAX,
                        4 => -f32::MAX,
                        _ => r.f32_with_exp(-3, 3),
                    }
                }
                _ => [0.0, -0.0][i % 2],
            }
        })
        .collect()
}

// ---------- device plumbing ----------

/// One context + queue, with blocking helpers (this is a tool).
struct Lab {
    ctx: Arc<GpuContext>,
    q: GpuQueue,
    tag: &'static str,
}

/// Guard bytes after every placed buffer, checked on download.
const GUARD: usize = 16;
const FILL: u8 = 0xA5;

/// `len` bytes placed `offset` bytes into a device allocation (so kernels
/// meet every alignment), followed by guard bytes.
struct Placed {
    buf: DeviceBuf,
    offset: usize,
    len: usize,
}

impl Placed {
    fn addr(&self) -> R<DevAddr> {
        self.buf.device_addr(self.offset).s()
    }
}

impl Lab {
    fn new(options: KernelOptions, tag: &'static str) -> R<Lab> {
        let ctx = GpuContext::current_with(options).s()?;
        let q = ctx.queue().s()?;
        Ok(Lab { ctx, q, tag })
    }

    /// The wire formats to test in this build: all of them, except that
    /// the `soft_fp8` builds test only FP8 (the option changes nothing
    /// else, and INT8 runs in the other builds).
    fn formats(&self) -> &'static [WireFormat] {
        if self.ctx.options().soft_fp8 {
            &FP8_FORMATS
        } else {
            &WireFormat::ALL
        }
    }

    /// Waits for the queue by polling its fence, as the plugin's progress
    /// thread does (with a sleep here, since this is a tool).
    fn sync(&self) -> R<()> {
        let fence = self.q.record().s()?;
        while !fence.is_complete().s()? {
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
        Ok(())
    }

    fn pinned_with(&self, bytes: &[u8]) -> R<PinnedBuf> {
        let mut p = self.ctx.alloc_pinned(bytes.len()).s()?;
        p.write(0, bytes).s()?;
        Ok(p)
    }

    /// `bytes` at `offset` in device memory; the rest of the allocation is
    /// FILL.
    fn upload_at(&self, bytes: &[u8], offset: usize) -> R<Placed> {
        let mut host = vec![FILL; offset + bytes.len() + GUARD];
        host[offset..offset + bytes.len()].copy_from_slice(bytes);
        let p = self.pinned_with(&host)?;
        let buf = self.ctx.alloc_device(host.len()).s()?;
        self.q
            .copy_async(buf.device_addr(0).s()?, p.device_addr(0).s()?, host.len())
            .s()?;
        self.sync()?;
        Ok(Placed {
            buf,
            offset,
            len: bytes.len(),
        })
    }

    fn upload(&self, bytes: &[u8]) -> R<Placed> {
        self.upload_at(bytes, 0)
    }

    /// `len` bytes of FILL at `offset`, so bytes a kernel fails to write
    /// show up as mismatches.
    fn scratch_at(&self, len: usize, offset: usize) -> R<Placed> {
        self.upload_at(&vec![FILL; len], offset)
    }

    fn scratch(&self, len: usize) -> R<Placed> {
        self.scratch_at(len, 0)
    }

    /// The placed bytes; an error if anything around them changed.
    fn download(&self, d: &Placed) -> R<Vec<u8>> {
        let all = d.offset + d.len + GUARD;
        let p = self.ctx.alloc_pinned(all).s()?;
        self.q
            .copy_async(p.device_addr(0).s()?, d.buf.device_addr(0).s()?, all)
            .s()?;
        self.sync()?;
        let mut v = vec![0u8; all];
        p.read(0, &mut v).s()?;
        let outside = v[..d.offset].iter().chain(&v[d.offset + d.len..]);
        if outside.into_iter().any(|&b| b != FILL) {
            return Err("  a kernel wrote outside its buffer".into());
        }
        Ok(v[d.offset..d.offset + d.len].to_vec())
    }

    fn read_pinned(&self, p: &PinnedBuf, offset: usize, len: usize) -> R<Vec<u8>> {
        self.sync()?;
        let mut v = vec![0u8; p.len()];
        p.read(0, &mut v).s()?;
        if v[..offset]
            .iter()
            .chain(&v[offset + len..])
            .any(|&b| b != FILL)
        {
            return Err("  a kernel wrote outside its buffer".into());
        }
        Ok(v[offset..offset + len].to_vec())
    }
}

/// Offsets for case `i`: every wire alignment in turn, and every third
/// case an element buffer one element off 16-byte alignment (the kernels'
/// unaligned path).
fn offsets(i: usize, elem: Elem) -> (usize, usize) {
    let elem_off = if i % 3 == 2 { elem.size() } else { 0 };
    (elem_off, i % 8)
}

// ---------- comparing ----------

#[derive(Default)]
struct Tally {
    passed: usize,
    failed: usize,
}

impl Tally {
    fn record(&mut self, label: &str, result: R<()>) {
        match result {
            Ok(()) => {
                self.passed += 1;
                println!("ok   {label}");
            }
            Err(why) => {
                self.failed += 1;
                println!("FAIL {label}\n{why}");
            }
        }
    }
}

/// First mismatches between two wire buffers of `n` values in `fmt`.
fn diff_wire(
    fmt: WireFormat,
    n: usize,
    expected: &[u8],
    got: &[u8],
    input: Option<&Values>,
) -> R<()> {
    let scales = scales_len(fmt, n);
    let bad: Vec<usize> = (0..expected.len())
        .filter(|&i| expected[i] != got[i])
        .collect();
    if bad.is_empty() {
        return Ok(());
    }
    let mut out = format!("  {} wire bytes differ", bad.len());
    for &i in bad.iter().take(6) {
        if i < scales {
            out += &format!(
                "\n  scale byte {i} (block {}): cpu {:#04x} gpu {:#04x}",
                i / fmt.scale_bytes(),
                expected[i],
                got[i]
            );
        } else {
            let v = i - scales;
            let x = input.map_or(String::new(), |d| format!(" input bits {:#x}", d.bits(v)));
            out += &format!(
                "\n  code[{v}] (block {}): cpu {:#04x} gpu {:#04x}{x}",
                v / 32,
                expected[i],
                got[i]
            );
        }
    }
    Err(out)
}

/// First mismatches between two element buffers.
fn diff_elems(expected: &Values, got_bytes: &[u8]) -> R<()> {
    let size = expected.elem().size();
    let exp_bytes = expected.bytes();
    let bad: Vec<usize> = (0..expected.len())
        .filter(|&i| exp_bytes[i * size..(i + 1) * size] != got_bytes[i * size..(i + 1) * size])
        .collect();
    if bad.is_empty() {
        return Ok(());
    }
    let mut out = format!("  {} elements differ", bad.len());
    for &i in bad.iter().take(6) {
        let mut g = [0u8; 4];
        g[..size].copy_from_slice(&got_bytes[i * size..(i + 1) * size]);
        out += &format!(
            "\n  [{i}]: cpu {:#x} gpu {:#x}",
            expected.bits(i),
            u32::from_ne_bytes(g)
        );
    }
    Err(out)
}

// ---------- selftest ----------

pub fn selftest(o: &Opts) -> R<ExitCode> {
    let device = o.num("device", 0)? as i32;
    if !gpu::available() {
        return Err(format!(
            "no usable GPU: {}",
            gpu::unavailable_reason().map_or("?".into(), |e| e.to_string())
        ));
    }
    let _primary = PrimaryContext::bind(device).s()?;
    let (major, minor) = nvrtc::load().s()?;
    let mut tally = Tally::default();
    let started = Instant::now();
    // Every code path the plugin can take: vector and lane-strided layouts,
    // each with the hardware FP8 conversion (sm_89+) and without (sm_80;
    // FP8 only: INT8 has one conversion path).
    let variant = |vector, soft_fp8| KernelOptions {
        vector,
        soft_fp8,
        ..KernelOptions::default()
    };
    for (options, tag) in [
        (variant(true, false), "vector"),
        (variant(true, true), "vector soft-fp8"),
        (variant(false, false), "strided"),
        (variant(false, true), "strided soft-fp8"),
    ] {
        let t = Instant::now();
        let lab = Lab::new(options, tag)?;
        let (cmaj, cmin) = lab.ctx.capability();
        println!(
            "gpu selftest [{tag}]: {} (sm_{cmaj}{cmin}), driver {}, NVRTC {major}.{minor}, {} loaded in {:.1} s",
            lab.ctx.name(),
            gpu::driver_version().s()?,
            lab.ctx.image_kind(),
            t.elapsed().as_secs_f64()
        );
        codec_cases(&lab, &mut tally)?;
        every_wire_byte(&lab, &mut tally)?;
        reduce_cases(&lab, &mut tally)?;
        zero_copy_cases(&lab, &mut tally)?;
    }
    let lab = Lab::new(KernelOptions::default(), "copy")?;
    copy_cases(&lab, &mut tally)?;
    exact_cases(&lab, &mut tally)?;
    println!(
        "gpu selftest: {} passed, {} failed ({:.1} s)",
        tally.passed,
        tally.failed,
        started.elapsed().as_secs_f64()
    );
    Ok(if tally.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Inputs for encode/decode: exhaustive 16-bit patterns in their own type
/// and widened to f32, and random f32 of every kind.
fn codec_inputs() -> Vec<(String, Values)> {
    let patterns = all_patterns();
    let f16 = Values::F16(patterns.clone());
    let bf16 = Values::Bf16(patterns);
    let mut v = vec![
        ("every f16 pattern".to_string(), f16.clone()),
        ("every bf16 pattern".to_string(), bf16.clone()),
        ("every f16 pattern as f32".to_string(), f16.widened()),
        ("every bf16 pattern as f32".to_string(), bf16.widened()),
    ];
    for (i, kind) in KINDS.iter().enumerate() {
        let n = (1 << 18) + 7 + i;
        v.push((
            format!("random f32 {kind}"),
            Values::F32(random_f32(kind, n, i as u64 + 1)),
        ));
    }
    let edges = Values::F32(edge_blocks());
    v.push(("edge blocks as f16".into(), edges.as_elem(Elem::F16)));
    v.push(("edge blocks as bf16".into(), edges.as_elem(Elem::Bf16)));
    v.push(("edge blocks".into(), edges));
    // Random data narrowed to the 16-bit types (tails of other lengths).
    let mixed = Values::F32(random_f32("heavy-tailed", 100_003, 99));
    v.push((
        "random heavy-tailed as f16".into(),
        mixed.as_elem(Elem::F16),
    ));
    v.push((
        "random heavy-tailed as bf16".into(),
        mixed.as_elem(Elem::Bf16),
    ));
    v
}

fn codec_cases(lab: &Lab, tally: &mut Tally) -> R<()> {
    let inputs = codec_inputs();
    for &fmt in lab.formats() {
        let codec = Codec::new(fmt);
        for (i, (what, data)) in inputs.iter().enumerate() {
            let n = data.len();
            let elem = data.elem();
            let (elem_off, wire_off) = offsets(i, elem);
            let place = format!("elements +{elem_off}, wire +{wire_off}");
            let mut cpu_wire = vec![0u8; encoded_len(fmt, n)];
            codec
                .encode_wire(data.src(), &mut cpu_wire)
                .map_err(|e| e.to_string())?;
            let src = lab.upload_at(&data.bytes(), elem_off)?;
            let wire = lab.scratch_at(encoded_len(fmt, n), wire_off)?;
            lab.q.encode(fmt, elem, src.addr()?, n, wire.addr()?).s()?;
            let label = format!(
                "[{}] encode {} {} <- {what} (n={n}, {place})",
                lab.tag,
                fmt_name(fmt),
                elem.name()
            );
            let result = lab
                .download(&wire)
                .and_then(|got| diff_wire(fmt, n, &cpu_wire, &got, Some(data)));
            tally.record(&label, result);

            // Decode the CPU's bytes, so a decode bug is not masked by an
            // encode bug.
            let mut cpu_out = Values::zeros(elem, n);
            codec
                .decode_into_wire(&cpu_wire, cpu_out.dst())
                .map_err(|e| e.to_string())?;
            let wire = lab.upload_at(&cpu_wire, wire_off)?;
            let dst = lab.scratch_at(n * elem.size(), elem_off)?;
            lab.q.decode(fmt, elem, wire.addr()?, n, dst.addr()?).s()?;
            let label = format!(
                "[{}] decode {} -> {} of {what} (n={n}, {place})",
                lab.tag,
                fmt_name(fmt),
                elem.name()
            );
            tally.record(
                &label,
                lab.download(&dst)
                    .and_then(|got| diff_elems(&cpu_out, &got)),
            );
        }
    }
    Ok(())
}

/// Decode of every (scale, code byte) pair, including bytes the encoder
/// never writes (E8M0 0xFF, every NaN code; INT8 scales that are Inf, NaN,
/// negative, zero or subnormal): wire bytes come from the network.
fn every_wire_byte(lab: &Lab, tally: &mut Tally) -> R<()> {
    every_fp8_wire_byte(lab, tally)?;
    if lab.formats().contains(&WireFormat::Int8) {
        every_int8_wire_byte(lab, tally)?;
    }
    Ok(())
}

fn every_fp8_wire_byte(lab: &Lab, tally: &mut Tally) -> R<()> {
    let n = 256 * 256;
    let nb = num_blocks(n);
    // The FP8 formats share one layout: one scale byte per block.
    let mut wire = vec![0u8; encoded_len(WireFormat::E4M3, n)];
    let (scales, codes) = wire.split_at_mut(nb);
    for (b, s) in scales.iter_mut().enumerate() {
        *s = (b / 8) as u8;
    }
    for (v, c) in codes.iter_mut().enumerate() {
        *c = (v % 256) as u8;
    }
    let dev_wire = lab.upload(&wire)?;
    for fmt in FP8_FORMATS {
        decode_into_every_elem(
            lab,
            tally,
            fmt,
            (&wire, &dev_wire),
            n,
            "every scale x every code byte",
        )?;
    }
    Ok(())
}

/// Decodes `wire` (on the device: `dev_wire`) of `n` values of `fmt` into
/// every element type, by the kernel and by the CPU codec, and records
/// whether they agree bit for bit.
fn decode_into_every_elem(
    lab: &Lab,
    tally: &mut Tally,
    fmt: WireFormat,
    (wire, dev_wire): (&[u8], &Placed),
    n: usize,
    what: &str,
) -> R<()> {
    let codec = Codec::new(fmt);
    for elem in Elem::ALL {
        let mut cpu_out = Values::zeros(elem, n);
        codec
            .decode_into_wire(wire, cpu_out.dst())
            .map_err(|e| e.to_string())?;
        let dst = lab.scratch(n * elem.size())?;
        lab.q
            .decode(fmt, elem, dev_wire.addr()?, n, dst.addr()?)
            .s()?;
        let label = format!(
            "[{}] decode {} -> {} of {what}",
            lab.tag,
            fmt_name(fmt),
            elem.name()
        );
        tally.record(
            &label,
            lab.download(&dst)
                .and_then(|got| diff_elems(&cpu_out, &got)),
        );
    }
    Ok(())
}

/// INT8: every one of the 65536 bf16 scale patterns with each of the 256
/// code bytes (8 blocks per scale), the wire at an odd address (its 2-byte
/// scales unaligned).
fn every_int8_wire_byte(lab: &Lab, tally: &mut Tally) -> R<()> {
    let fmt = WireFormat::Int8;
    let n = 65536 * 256;
    let nb = num_blocks(n);
    let mut wire = vec![0u8; encoded_len(fmt, n)];
    let (scales, codes) = wire.split_at_mut(nb * 2);
    for (b, s) in scales.chunks_exact_mut(2).enumerate() {
        s.copy_from_slice(&((b / 8) as u16).to_le_bytes());
    }
    for (v, c) in codes.iter_mut().enumerate() {
        *c = (v % 256) as u8;
    }
    let wire_off = 1;
    let dev_wire = lab.upload_at(&wire, wire_off)?;
    decode_into_every_elem(
        lab,
        tally,
        fmt,
        (&wire, &dev_wire),
        n,
        &format!("every bf16 scale x every code byte (wire +{wire_off})"),
    )
}

/// One member's values for a reduce case.
fn member_values(case: usize, m: usize, n: usize) -> Vec<f32> {
    let kind = KINDS[(case + m) % (KINDS.len() - 1)];
    random_f32(kind, n, (case * 1000 + m) as u64 + 7)
}

fn reduce_cases(lab: &Lab, tally: &mut Tally) -> R<()> {
    let n = 65_536 + 29;
    let mut case = 0;
    for &fmt in lab.formats() {
        for elem in Elem::ALL {
            for members in [2usize, 3, 8] {
                let mut owns = vec![0, members / 2, members - 1];
                owns.dedup();
                for own in owns {
                    case += 1;
                    let inputs: Vec<Values> = (0..members)
                        .map(|m| Values::F32(member_values(case, m, n)).as_elem(elem))
                        .collect();
                    let (elem_off, wire_off) = offsets(case, elem);
                    let label = format!(
                        "[{}] reduce_encode {} {} members={members} own={own} (n={n}, elements +{elem_off}, wire out +{wire_off})",
                        lab.tag,
                        fmt_name(fmt),
                        elem.name()
                    );
                    tally.record(&label, reduce_one(lab, fmt, own, &inputs, case, false));
                }
            }
            // Exhaustive: the owner holds every pattern, the other member
            // the patterns scattered (NaN/Inf/zero signs meet in the fold).
            if elem != Elem::F32 {
                let p = all_patterns();
                let scattered: Vec<u16> = p.iter().rev().map(|x| x.rotate_left(5)).collect();
                let (a, b) = match elem {
                    Elem::F16 => (Values::F16(p), Values::F16(scattered)),
                    _ => (Values::Bf16(p), Values::Bf16(scattered)),
                };
                for own in [0, 1] {
                    case += 1;
                    let label = format!(
                        "[{}] reduce_encode {} {} members=2 own={own} every pattern",
                        lab.tag,
                        fmt_name(fmt),
                        elem.name()
                    );
                    tally.record(
                        &label,
                        reduce_one(lab, fmt, own, &[a.clone(), b.clone()], case, false),
                    );
                }
            }
        }
    }
    Ok(())
}

/// Runs one fold on the GPU and on the CPU. `inputs[m]` are member `m`'s
/// values; the others' are encoded by the CPU, as the network delivers
/// them. `case` varies the buffers' alignment. `pinned`: wires, table and
/// output wire in mapped pinned memory (the real zero-copy path) instead
/// of device memory.
fn reduce_one(
    lab: &Lab,
    fmt: WireFormat,
    own: usize,
    inputs: &[Values],
    case: usize,
    pinned: bool,
) -> R<()> {
    let codec = Codec::new(fmt);
    let n = inputs[own].len();
    let elem = inputs[own].elem();
    let (elem_off, wire_off) = offsets(case, elem);
    let wires = member_wires(&codec, inputs, own).map_err(|e| e.to_string())?;
    let refs: Vec<&[u8]> = wires.iter().map(Vec::as_slice).collect();
    let mut cpu_wire = vec![0u8; encoded_len(fmt, n)];
    let mut cpu_out = Values::zeros(elem, n);
    reference::reduce_encode(
        &codec,
        own,
        inputs[own].src(),
        &refs,
        &mut cpu_wire,
        cpu_out.dst(),
    )
    .map_err(|e| e.to_string())?;

    let own_src = lab.upload_at(&inputs[own].bytes(), elem_off)?;
    let dst = lab.scratch_at(n * elem.size(), elem_off)?;
    // Keep every buffer alive until the kernel is done. Member m's wire sits
    // at its own alignment.
    let mut dev_wires: Vec<Placed> = Vec::new();
    let mut pin_wires: Vec<PinnedBuf> = Vec::new();
    let mut table = Vec::with_capacity(wires.len());
    for (m, w) in wires.iter().enumerate() {
        let off = (m * 3 + case) % 8;
        let addr = if m == own {
            DevAddr(0)
        } else if pinned {
            let mut padded = vec![FILL; off];
            padded.extend_from_slice(w);
            pin_wires.push(lab.pinned_with(&padded)?);
            pin_wires.last().expect("pushed").device_addr(off).s()?
        } else {
            dev_wires.push(lab.upload_at(w, off)?);
            dev_wires.last().expect("pushed").addr()?
        };
        table.extend_from_slice(&addr.0.to_ne_bytes());
    }
    let fold = |table: DevAddr, wire_out: DevAddr| -> R<Fold> {
        Ok(Fold {
            members: inputs.len(),
            own_index: own,
            own_src: own_src.addr()?,
            wire_table: table,
            n,
            wire_out,
            dst: dst.addr()?,
        })
    };
    let got_wire = if pinned {
        let t = lab.pinned_with(&table)?;
        let out = lab.pinned_with(&vec![FILL; wire_off + encoded_len(fmt, n) + GUARD])?;
        lab.q
            .reduce_encode(
                fmt,
                elem,
                &fold(t.device_addr(0).s()?, out.device_addr(wire_off).s()?)?,
            )
            .s()?;
        lab.read_pinned(&out, wire_off, encoded_len(fmt, n))?
    } else {
        let t = lab.upload(&table)?;
        let out = lab.scratch_at(encoded_len(fmt, n), wire_off)?;
        lab.q
            .reduce_encode(fmt, elem, &fold(t.addr()?, out.addr()?)?)
            .s()?;
        lab.download(&out)?
    };
    let got_dst = lab.download(&dst)?;
    diff_wire(fmt, n, &cpu_wire, &got_wire, None)?;
    diff_elems(&cpu_out, &got_dst)
}

/// The copy kernel (the data path's only way to move bytes): every
/// direction, lengths around its 16-byte words, and source and destination
/// at equal and at different alignments (byte path).
fn copy_cases(lab: &Lab, tally: &mut Tally) -> R<()> {
    for len in [1usize, 15, 16, 17, 4099, (1 << 20) + 7] {
        for (src_off, dst_off) in [(0usize, 0usize), (3, 3), (1, 8), (15, 0)] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let src = lab.upload_at(&bytes, src_off)?;
            let dst = lab.scratch_at(len, dst_off)?;
            lab.q.copy_async(dst.addr()?, src.addr()?, len).s()?;
            let same = |got: Vec<u8>| {
                if got == bytes {
                    Ok(())
                } else {
                    let at = got.iter().zip(&bytes).position(|(g, e)| g != e);
                    Err(format!("  first difference at byte {at:?}"))
                }
            };
            let label = format!("[copy] device to device, {len} bytes, +{src_off} to +{dst_off}");
            tally.record(
                &label,
                lab.sync().and_then(|()| lab.download(&dst)).and_then(same),
            );

            let mut host = vec![FILL; dst_off + len + GUARD];
            let pinned = lab.pinned_with(&host)?;
            lab.q
                .copy_async(pinned.device_addr(dst_off).s()?, src.addr()?, len)
                .s()?;
            let label =
                format!("[copy] device to pinned host, {len} bytes, +{src_off} to +{dst_off}");
            tally.record(
                &label,
                lab.read_pinned(&pinned, dst_off, len).and_then(same),
            );

            host.truncate(src_off);
            host.extend_from_slice(&bytes);
            host.extend_from_slice(&[FILL; GUARD]);
            let pinned = lab.pinned_with(&host)?;
            let dst = lab.scratch_at(len, dst_off)?;
            lab.q
                .copy_async(dst.addr()?, pinned.device_addr(src_off).s()?, len)
                .s()?;
            let label =
                format!("[copy] pinned host to device, {len} bytes, +{src_off} to +{dst_off}");
            tally.record(
                &label,
                lab.sync().and_then(|()| lab.download(&dst)).and_then(same),
            );
        }
    }
    Ok(())
}

/// The exact path's fold against `reference::sum_exact` (pinned to the
/// host path's reducer): every element type, 1 to 8 members, the owner
/// first and last, every value class, members' elements and the output
/// wire in mapped pinned memory as on the data path.
fn exact_cases(lab: &Lab, tally: &mut Tally) -> R<()> {
    for elem in Elem::ALL {
        for (kind, members, n) in [
            ("normal", 1usize, 33usize),
            ("specials", 2, 100_003),
            ("heavy-tailed", 3, 4099),
            ("subnormal", 8, 70_001),
            ("huge", 2, 1),
        ] {
            for own in [0, members - 1] {
                let inputs: Vec<Vec<u8>> = (0..members)
                    .map(|m| {
                        Values::F32(random_f32(kind, n, (m * 31 + n) as u64))
                            .as_elem(elem)
                            .bytes()
                    })
                    .collect();
                let label = format!(
                    "[exact] sum {} {kind} members={members} own={own} n={n}",
                    elem.name()
                );
                tally.record(&label, exact_one(lab, elem, own, &inputs));
            }
        }
    }
    Ok(())
}

fn exact_one(lab: &Lab, elem: Elem, own: usize, inputs: &[Vec<u8>]) -> R<()> {
    let size = elem.size();
    let n = inputs[own].len() / size;
    let refs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
    let expected = reference::sum_exact(elem, &refs);
    let own_src = lab.upload_at(&inputs[own], size)?;
    let dst = lab.scratch_at(n * size, size)?;
    let wires: Vec<PinnedBuf> = inputs
        .iter()
        .map(|w| lab.pinned_with(w))
        .collect::<R<_>>()?;
    let mut table = Vec::with_capacity(inputs.len() * 8);
    for (m, w) in wires.iter().enumerate() {
        let addr = if m == own { 0 } else { w.device_addr(0).s()?.0 };
        table.extend_from_slice(&addr.to_ne_bytes());
    }
    let table = lab.pinned_with(&table)?;
    let out = lab.pinned_with(&vec![FILL; size + n * size + GUARD])?;
    lab.q
        .reduce_exact(
            elem,
            &Fold {
                members: inputs.len(),
                own_index: own,
                own_src: own_src.addr()?,
                wire_table: table.device_addr(0).s()?,
                n,
                wire_out: out.device_addr(size).s()?,
                dst: dst.addr()?,
            },
        )
        .s()?;
    let got_wire = lab.read_pinned(&out, size, n * size)?;
    let got_dst = lab.download(&dst)?;
    let first_diff = |got: &[u8]| {
        got.chunks(size)
            .zip(expected.chunks(size))
            .position(|(g, e)| g != e)
    };
    match (first_diff(&got_wire), first_diff(&got_dst)) {
        (None, None) => Ok(()),
        (w, d) => Err(format!(
            "  first different element: sent shard {w:?}, own output {d:?}"
        )),
    }
}

/// Kernels reading and writing mapped pinned host memory directly.
fn zero_copy_cases(lab: &Lab, tally: &mut Tally) -> R<()> {
    for (i, &fmt) in lab.formats().iter().enumerate() {
        let codec = Codec::new(fmt);
        let data = Values::F32(random_f32("heavy-tailed", 300_001, 5)).as_elem(Elem::Bf16);
        let n = data.len();
        let mut cpu_wire = vec![0u8; encoded_len(fmt, n)];
        codec
            .encode_wire(data.src(), &mut cpu_wire)
            .map_err(|e| e.to_string())?;
        let src = lab.upload(&data.bytes())?;
        let wire_off = 3 + i;
        let wire = lab.pinned_with(&vec![FILL; wire_off + encoded_len(fmt, n) + GUARD])?;
        lab.q
            .encode(
                fmt,
                Elem::Bf16,
                src.addr()?,
                n,
                wire.device_addr(wire_off).s()?,
            )
            .s()?;
        let label = format!(
            "[{}] encode {} bf16 into pinned host memory (n={n}, wire +{wire_off})",
            lab.tag,
            fmt_name(fmt)
        );
        let result = lab
            .read_pinned(&wire, wire_off, encoded_len(fmt, n))
            .and_then(|got| diff_wire(fmt, n, &cpu_wire, &got, Some(&data)));
        tally.record(&label, result);

        let inputs: Vec<Values> = (0..8)
            .map(|m| Values::F32(member_values(77, m, 50_001)).as_elem(Elem::Bf16))
            .collect();
        let label = format!(
            "[{}] reduce_encode {} bf16 members=8 own=3, wires in pinned host memory",
            lab.tag,
            fmt_name(fmt)
        );
        tally.record(&label, reduce_one(lab, fmt, 3, &inputs, i, true));
    }
    Ok(())
}

// ---------- bench ----------

/// One measured figure of `gpu bench`.
#[derive(Clone, Debug, PartialEq)]
struct BenchRow {
    /// Kernel variant (launch shape, conversion path).
    kernels: &'static str,
    /// What ran, e.g. `encode bf16 -> e4m3 (device)`.
    op: String,
    /// Bytes read + written per second (wire bytes only for the PCIe rows).
    gbytes_per_s: f64,
    /// Input values per second, where the op has input values.
    gvalues_per_s: Option<f64>,
    /// `gbytes_per_s` over the same run's device-to-device memcpy.
    memcpy_fraction: Option<f64>,
}

/// What `gpu bench` measured: the device and every row, for the table
/// and for `--json`.
#[derive(Debug)]
struct BenchReport {
    device: String,
    capability: (u32, u32),
    sms: usize,
    buffer_bytes: usize,
    iters: usize,
    memcpy_dtod_gbytes_per_s: f64,
    rows: Vec<BenchRow>,
}

impl BenchReport {
    /// One JSON object in base units (bytes, per second).
    fn to_json(&self) -> serde_json::Value {
        let rows: Vec<_> = self
            .rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "kernels": r.kernels,
                    "op": r.op,
                    "gbytes_per_s": r.gbytes_per_s,
                    "gvalues_per_s": r.gvalues_per_s,
                    "memcpy_fraction": r.memcpy_fraction,
                })
            })
            .collect();
        serde_json::json!({
            "bench": "gpu",
            "device": self.device,
            "compute_capability": format!("{}.{}", self.capability.0, self.capability.1),
            "sms": self.sms,
            "buffer_bytes": self.buffer_bytes,
            "iters": self.iters,
            "memcpy_dtod_gbytes_per_s": self.memcpy_dtod_gbytes_per_s,
            "rows": rows,
        })
    }

    fn print_table(&self) {
        println!(
            "gpu bench: {} (sm_{}{}, {} SMs), {} MiB bf16 buffers ({} values), {} iterations after warm-up",
            self.device,
            self.capability.0,
            self.capability.1,
            self.sms,
            self.buffer_bytes >> 20,
            self.buffer_bytes / 2,
            self.iters
        );
        println!(
            "  memcpy DtoD {} bytes {:>19.1} GB/s read+written",
            self.buffer_bytes, self.memcpy_dtod_gbytes_per_s
        );
        let mut variant = "";
        for r in &self.rows {
            if r.kernels != variant {
                variant = r.kernels;
                println!("kernels {variant}:");
            }
            let share = r.memcpy_fraction.map_or(String::new(), |f| {
                format!(" = {:5.1}% of memcpy", 100.0 * f)
            });
            let values = r
                .gvalues_per_s
                .map_or(String::new(), |v| format!(", {v:6.1} G values/s"));
            println!("  {:<36} {:8.1} GB/s{share}{values}", r.op, r.gbytes_per_s);
        }
    }
}

pub fn bench(o: &Opts) -> R<ExitCode> {
    let device = o.num("device", 0)? as i32;
    let mib = o.num("mib", 256)?.max(1);
    let iters = o.num("iters", 20)?.max(1);
    if !gpu::available() {
        return Err(format!(
            "no usable GPU: {}",
            gpu::unavailable_reason().map_or("?".into(), |e| e.to_string())
        ));
    }
    let _primary = PrimaryContext::bind(device).s()?;
    let d = KernelOptions::default();
    let mut variants = vec![("default: vector, tile=16", d)];
    if o.flag("tune") {
        variants.extend([
            (
                "vector, tile=8",
                KernelOptions {
                    tile_blocks: 8,
                    ..d
                },
            ),
            (
                "vector, tile=32",
                KernelOptions {
                    tile_blocks: 32,
                    ..d
                },
            ),
            (
                "vector, soft fp8 (sm_80 path)",
                KernelOptions {
                    soft_fp8: true,
                    ..d
                },
            ),
            ("strided, tile=16", KernelOptions { vector: false, ..d }),
            (
                "strided, tile=16, soft fp8",
                KernelOptions {
                    vector: false,
                    soft_fp8: true,
                    ..d
                },
            ),
        ]);
    }
    let n = mib * (1 << 20) / 2; // bf16 values
    let src = Values::F32(random_f32("normal", n, 3))
        .as_elem(Elem::Bf16)
        .bytes();
    let mut report: Option<BenchReport> = None;
    for (label, options) in variants {
        let lab = Lab::new(options, "bench")?;
        let report = report.get_or_insert_with(|| BenchReport {
            device: lab.ctx.name().to_string(),
            capability: lab.ctx.capability(),
            sms: lab.ctx.sm_count() as usize,
            buffer_bytes: n * 2,
            iters,
            memcpy_dtod_gbytes_per_s: 0.0,
            rows: Vec::new(),
        });
        bench_one(&lab, label, &src, report)?;
    }
    let report = report.expect("at least the default variant ran");
    if o.flag("json") {
        println!("{}", report.to_json());
    } else {
        report.print_table();
    }
    Ok(ExitCode::SUCCESS)
}

/// Mean seconds per call of `f` over `iters` calls, after 3 warm-up calls,
/// timed with events on the queue.
fn time(q: &GpuQueue, iters: usize, mut f: impl FnMut() -> Result<(), GpuError>) -> R<f64> {
    for _ in 0..3 {
        f().s()?;
    }
    let start = q.record_timing().s()?;
    for _ in 0..iters {
        f().s()?;
    }
    let end = q.record_timing().s()?;
    Ok(start.elapsed_ms(&end).s()? as f64 / 1e3 / iters as f64)
}

/// One kernel variant over `src` (bf16 bytes), its rows appended to
/// `report`. Each variant measures memcpy in its own run; the report keeps
/// the first as the reference.
fn bench_one(lab: &Lab, kernels: &'static str, src: &[u8], report: &mut BenchReport) -> R<()> {
    let q = &lab.q;
    let iters = report.iters;
    let n = src.len() / 2;
    // The largest wire of the formats measured (INT8's 2-byte scales).
    let wire_room = encoded_len(WireFormat::Int8, n);
    let src_bytes = n * 2;
    let src = lab.upload(src)?;
    let wire = lab.scratch(wire_room)?;
    let dst = lab.scratch(src_bytes)?;
    let (s, w, d) = (src.addr()?, wire.addr()?, dst.addr()?);
    let pinned = lab.ctx.alloc_pinned(wire_room).s()?;
    let p = pinned.device_addr(0).s()?;

    let copy = time(q, iters, || q.copy_async(d, s, src_bytes))?;
    let copy_gbs = 2.0 * src_bytes as f64 / copy / 1e9;
    if report.rows.is_empty() {
        report.memcpy_dtod_gbytes_per_s = copy_gbs;
    }
    let mut row = |op: String, bytes: f64, secs: f64, values: Option<usize>, vs_memcpy: bool| {
        let gbytes_per_s = bytes / secs / 1e9;
        report.rows.push(BenchRow {
            kernels,
            op,
            gbytes_per_s,
            gvalues_per_s: values.map(|v| v as f64 / secs / 1e9),
            memcpy_fraction: vs_memcpy.then(|| gbytes_per_s / copy_gbs),
        });
    };
    // E4M3 (the default format) and INT8 (E5M2 runs E4M3's code); the
    // soft-FP8 builds only change FP8.
    let formats = [WireFormat::E4M3, WireFormat::Int8]
        .into_iter()
        .filter(|f| lab.formats().contains(f));
    for fmt in formats {
        let f = fmt_name(fmt);
        let wire_bytes = encoded_len(fmt, n);
        let moved = (src_bytes + wire_bytes) as f64;
        let enc = time(q, iters, || q.encode(fmt, Elem::Bf16, s, n, w))?;
        row(
            format!("encode bf16 -> {f} (device)"),
            moved,
            enc,
            Some(n),
            true,
        );
        let dec = time(q, iters, || q.decode(fmt, Elem::Bf16, w, n, d))?;
        row(
            format!("decode {f} -> bf16 (device)"),
            moved,
            dec,
            Some(n),
            true,
        );

        // The real path: compressed bytes written straight into pinned host
        // staging over PCIe, next to copying the same bytes D2H.
        let enc_pinned = time(q, iters, || q.encode(fmt, Elem::Bf16, s, n, p))?;
        let pcie = wire_bytes as f64;
        row(
            format!("encode bf16 -> {f} -> pinned host"),
            pcie,
            enc_pinned,
            Some(n),
            false,
        );
        let d2h = time(q, iters, || q.copy_async(p, w, wire_bytes))?;
        row(
            format!("memcpy DtoH of the same {f} wire bytes"),
            pcie,
            d2h,
            None,
            false,
        );

        // The owner's fold of one shard: n/8 values per member.
        let shard = n / 8;
        let shard_wire = encoded_len(fmt, shard);
        for members in [2usize, 8] {
            let member_wires = lab.scratch(shard_wire * members)?;
            let mut table = Vec::new();
            for m in 0..members {
                let mw = member_wires.addr()?.offset(m * shard_wire);
                q.encode(fmt, Elem::Bf16, s.offset(m * shard * 2), shard, mw)
                    .s()?;
                table.extend_from_slice(&mw.0.to_ne_bytes());
            }
            let table = lab.upload(&table)?;
            let fold = Fold {
                members,
                own_index: 0,
                own_src: s,
                wire_table: table.addr()?,
                n: shard,
                wire_out: w,
                dst: d,
            };
            let t = time(q, iters, || q.reduce_encode(fmt, Elem::Bf16, &fold))?;
            let bytes = (shard * 2 + (members - 1) * shard_wire + shard_wire + shard * 2) as f64;
            row(
                format!("reduce_encode bf16 {f} members={members}"),
                bytes,
                t,
                Some(shard),
                true,
            );
        }
    }
    lab.sync()
}

// ---------- compile-check ----------

pub fn compile_check(_o: &Opts) -> R<ExitCode> {
    let (major, minor) = nvrtc::load().s()?;
    println!("NVRTC {major}.{minor}");
    let mut failed = 0;
    // sm_80 compiles the conversion path that `soft_fp8` forces on newer
    // GPUs, so the default options cover both.
    for arch in ["sm_80", "sm_90", "sm_100"] {
        let t = Instant::now();
        match nvrtc::compile(arch, KernelOptions::default()) {
            Ok(image) => println!(
                "ok   {arch:<6} {} {} bytes in {:.1} s",
                image.kind(),
                image.bytes().len(),
                t.elapsed().as_secs_f64()
            ),
            Err(e) => {
                failed += 1;
                println!("FAIL {arch:<6} {e}");
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> BenchReport {
        BenchReport {
            device: "NVIDIA H200".into(),
            capability: (9, 0),
            sms: 132,
            buffer_bytes: 256 << 20,
            iters: 20,
            memcpy_dtod_gbytes_per_s: 3800.0,
            rows: vec![
                BenchRow {
                    kernels: "default: vector, tile=16",
                    op: "encode bf16 -> e4m3 (device)".into(),
                    gbytes_per_s: 2470.0,
                    gvalues_per_s: Some(820.0),
                    memcpy_fraction: Some(0.65),
                },
                BenchRow {
                    kernels: "default: vector, tile=16",
                    op: "memcpy DtoH of the same wire bytes".into(),
                    gbytes_per_s: 50.0,
                    gvalues_per_s: None,
                    memcpy_fraction: None,
                },
            ],
        }
    }

    #[test]
    fn bench_json_is_one_object_with_every_row() {
        let text = report().to_json().to_string();
        let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(v["bench"], "gpu");
        assert_eq!(v["compute_capability"], "9.0");
        assert_eq!(v["buffer_bytes"], 256 << 20);
        assert_eq!(v["memcpy_dtod_gbytes_per_s"], 3800.0);
        let rows = v["rows"].as_array().expect("rows");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["op"], "encode bf16 -> e4m3 (device)");
        assert_eq!(rows[0]["memcpy_fraction"], 0.65);
        assert!(rows[1]["gvalues_per_s"].is_null());
        assert!(rows[1]["memcpy_fraction"].is_null());
    }
}
