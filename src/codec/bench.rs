//! Single-thread codec throughput (`airamp bench codec`). Measures on the
//! calling thread so the caller controls pinning; buffers are allocated
//! once, so pick `n_values` to target the cache level of interest (the
//! allreduce works on L2-sized chunks).

use std::fmt;
use std::hint::black_box;
use std::time::{Duration, Instant};

use super::{encoded_len, half_sum_pair_into, Backend, Codec, HalfType, Src, WireFormat};

/// One measured operation.
#[derive(Clone, Debug)]
pub struct BenchRow {
    /// `encode bf16`, `encode f32` (into `format`) or `decode+acc` (from
    /// `format` into f32).
    pub op: &'static str,
    pub format: WireFormat,
    pub backend: Backend,
    /// Giga input values per second.
    pub gvalues_per_s: f64,
    /// Bytes read plus bytes written, GB/s (10^9).
    pub gbytes_per_s: f64,
}

/// Result of [`bench`]; `Display` prints a table with ratios vs memcpy.
#[derive(Clone, Debug)]
pub struct CodecBench {
    pub n_values: usize,
    pub rows: Vec<BenchRow>,
    /// The host path's exact sum of two members' bf16 values into a third
    /// buffer (two reads, one write), GB/s; `None` without a SIMD fold.
    pub exact_fold_gbytes_per_s: Option<f64>,
    /// memcpy of `4 * n_values` bytes, counted as read + write, GB/s.
    pub memcpy_gbytes_per_s: f64,
}

/// Best-of-runs seconds per call of `f`.
fn time(mut f: impl FnMut()) -> f64 {
    f(); // warm caches and lazily built tables
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let start = Instant::now();
        let mut reps = 0u32;
        while start.elapsed() < Duration::from_millis(20) || reps < 3 {
            f();
            reps += 1;
        }
        best = best.min(start.elapsed().as_secs_f64() / reps as f64);
    }
    best
}

/// Measure encode bf16/f32 -> each of `formats` and decode+accumulate
/// into f32 (scalar and best SIMD backend), and memcpy, each over
/// `n_values` values.
pub fn bench(n_values: usize, formats: &[WireFormat]) -> CodecBench {
    let n = n_values.max(1);
    let f32s: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 * 0.013 - 6.5)
        .collect();
    let bf16s: Vec<u16> = f32s.iter().map(|&x| super::f32_to_bf16(x)).collect();
    let mut acc = vec![0f32; n];

    let mut backends = vec![Backend::Scalar];
    if Backend::detect() != Backend::Scalar {
        backends.push(Backend::detect());
    }
    let mut rows = Vec::new();
    let mut push = |op, format, backend, secs: f64, bytes: f64| {
        rows.push(BenchRow {
            op,
            format,
            backend,
            gvalues_per_s: n as f64 / secs / 1e9,
            gbytes_per_s: bytes / secs / 1e9,
        })
    };
    for &f in formats {
        let mut wire = vec![0u8; encoded_len(f, n)];
        let wire_bytes = wire.len() as f64;
        for &b in &backends {
            let c = Codec::with_backend(f, b).expect("detected backend");
            let t = time(|| {
                c.encode_wire(Src::Bf16(black_box(&bf16s)), &mut wire)
                    .expect("lengths match");
                black_box(&wire);
            });
            push("encode bf16", f, b, t, 2.0 * n as f64 + wire_bytes);
            let t = time(|| {
                c.encode_wire(Src::F32(black_box(&f32s)), &mut wire)
                    .expect("lengths match");
                black_box(&wire);
            });
            push("encode f32", f, b, t, 4.0 * n as f64 + wire_bytes);
            let t = time(|| {
                c.decode_accumulate_wire(black_box(&wire), &mut acc)
                    .expect("lengths match");
                black_box(&acc);
            });
            // Keep the accumulator finite and small between runs.
            acc.iter_mut().for_each(|a| *a = 0.0);
            push("decode+acc", f, b, t, wire_bytes + 8.0 * n as f64);
        }
    }

    let earlier: Vec<u8> = bf16s.iter().flat_map(|h| h.to_ne_bytes()).collect();
    let later: Vec<u8> = bf16s.iter().rev().flat_map(|h| h.to_ne_bytes()).collect();
    let mut sum = vec![0u8; 2 * n];
    let exact_fold_gbytes_per_s =
        (half_sum_pair_into(HalfType::Bf16, &earlier, &later, &mut sum) > 0).then(|| {
            let t = time(|| {
                half_sum_pair_into(
                    HalfType::Bf16,
                    black_box(&earlier),
                    black_box(&later),
                    &mut sum,
                );
                black_box(&sum);
            });
            6.0 * n as f64 / t / 1e9
        });

    let mut dst = vec![0f32; n];
    let t = time(|| {
        dst.copy_from_slice(black_box(&f32s));
        black_box(&dst);
    });
    let memcpy_gbytes_per_s = 8.0 * n as f64 / t / 1e9;
    CodecBench {
        n_values: n,
        rows,
        exact_fold_gbytes_per_s,
        memcpy_gbytes_per_s,
    }
}

impl fmt::Display for CodecBench {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "codec bench: {} values, 1 thread (GB/s = bytes read + written)",
            self.n_values
        )?;
        writeln!(
            f,
            "{:<22} {:<7} {:>9} {:>8} {:>10}",
            "op", "backend", "Gvalues/s", "GB/s", "vs memcpy"
        )?;
        for r in &self.rows {
            let op = match r.op {
                "decode+acc" => format!("decode+acc {}->f32", r.format),
                op => format!("{op}->{}", r.format),
            };
            writeln!(
                f,
                "{:<22} {:<7} {:>9.3} {:>8.2} {:>9.2}x",
                op,
                format!("{:?}", r.backend),
                r.gvalues_per_s,
                r.gbytes_per_s,
                r.gbytes_per_s / self.memcpy_gbytes_per_s
            )?;
        }
        if let Some(gbytes) = self.exact_fold_gbytes_per_s {
            writeln!(
                f,
                "{:<22} {:<7} {:>9.3} {:>8.2} {:>9.2}x",
                "exact sum bf16 pair",
                "best",
                gbytes / 6.0,
                gbytes,
                gbytes / self.memcpy_gbytes_per_s
            )?;
        }
        write!(
            f,
            "{:<22} {:<7} {:>9.3} {:>8.2} {:>9.2}x",
            "memcpy f32",
            "-",
            self.memcpy_gbytes_per_s / 8.0,
            self.memcpy_gbytes_per_s,
            1.0
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bench_runs() {
        let b = super::bench(100, &[super::WireFormat::Int8]);
        assert!(b.rows.len() >= 3);
        assert!(b.rows.iter().all(|r| r.gvalues_per_s > 0.0));
        let text = b.to_string();
        assert!(
            text.contains("memcpy") && text.contains("encode bf16->int8"),
            "{text}"
        );
        if super::Backend::detect() != super::Backend::Scalar {
            assert!(b.exact_fold_gbytes_per_s.is_some_and(|g| g > 0.0));
            assert!(text.contains("exact sum bf16 pair"), "{text}");
        }
    }
}
