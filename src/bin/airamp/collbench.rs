//! `airamp bench collnet`: allreduce through the exported collective
//! network, exact against FP8, by size, with the tuner's pick beside them.
//!
//! N member processes join a group through `ncclCollNetPlugin_v12` exactly
//! as NCCL's proxy does. The whole size sweep runs once with FP8 off and
//! once with it on, alternating the order over rounds (ABBA) so drift on a
//! noisy machine does not favour either; each cell is the best round.
//! The tuner column is `tuner::decide_allreduce` with the profile and policy
//! from this process's configuration (e.g. `AIRAMP_CONF` pointing at an
//! `airamp calibrate` profile), the same inputs every rank of a job uses.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use airamp::abi::client::{handle_from_hex, handle_to_hex, CollNet, Comm, Library, NetVersion};
use airamp::codec::f32_to_bf16;
use airamp::collnet::sim::SplitMix;
use airamp::config;
use airamp::tuner::{self, LinkProfile, Path, Policy};

use crate::peer::{self, from_parent, to_parent};
use crate::Opts;

const TIMEOUT: Duration = Duration::from_secs(300);
const BFLOAT16: u32 = 9;
const SUM: u32 = 0;

fn sizes(o: &Opts) -> Result<Vec<u64>, String> {
    let lo = o.bytes("min", 4 << 10)?;
    let hi = o.bytes("max", 256 << 20)?;
    let mut v = Vec::new();
    let mut s = lo.max(64);
    while s <= hi {
        v.push(s);
        s *= 4;
    }
    Ok(v)
}

/// Seconds per allreduce of each size, as member 0 measured them.
fn run_group(o: &Opts, ranks: usize, fp8: bool, sizes: &[u64]) -> Result<Vec<f64>, String> {
    std::env::set_var("AIRAMP_ENABLE_FP8_ALLREDUCE", if fp8 { "1" } else { "0" });
    let plugin = o.plugin()?.display().to_string();
    let list = sizes
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut members = (0..ranks)
        .map(|r| {
            peer::spawn(
                "collnet-member",
                &[
                    "--plugin".into(),
                    plugin.clone(),
                    "--rank".into(),
                    r.to_string(),
                    "--ranks".into(),
                    ranks.to_string(),
                    "--sizes".into(),
                    list.clone(),
                ],
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let handles = members
        .iter_mut()
        .map(|m| m.recv())
        .collect::<Result<Vec<_>, _>>()?;
    let line = handles.join(" ");
    for m in &mut members {
        m.send(&line)?;
    }
    let mut times = Vec::new();
    for m in &mut members {
        let line = m.recv()?;
        times.push(
            line.split(',')
                .map(|t| t.parse::<f64>().map_err(|e| format!("{line}: {e}")))
                .collect::<Result<Vec<_>, _>>()?,
        );
    }
    for m in members {
        m.finish()?;
    }
    // The slowest member bounds the collective.
    Ok((0..sizes.len())
        .map(|i| times.iter().map(|t| t[i]).fold(0.0, f64::max))
        .collect())
}

fn gbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 * 8.0 / secs / 1e9
}

fn human(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

pub fn run(o: &Opts) -> Result<ExitCode, String> {
    let ranks = o.num("ranks", 2)?.clamp(2, 16);
    let rounds = o.num("rounds", 2)?.max(1);
    let sizes = sizes(o)?;
    let mut best = [
        vec![f64::INFINITY; sizes.len()],
        vec![f64::INFINITY; sizes.len()],
    ];
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for fp8 in order {
            let t = run_group(o, ranks, fp8, &sizes)?;
            for (b, t) in best[usize::from(fp8)].iter_mut().zip(t) {
                *b = b.min(t);
            }
        }
    }
    let cfg = config::global();
    let (profile, source) = LinkProfile::from_config(&cfg.tuner);
    let mut policy = Policy::from_config(cfg);
    // The sweep measures the FP8 path, so ask what the tuner would do with
    // FP8 enabled (the format the config names).
    policy.fp8 = Some(cfg.compression.fp8_format);
    let bus = 2.0 * (ranks as f64 - 1.0) / ranks as f64;
    println!(
        "collective network, {ranks} members, bf16 sum, best of {rounds} rounds (ABBA); bus bandwidth in Gbit/s"
    );
    println!("tuner profile: {profile} ({source})");
    println!(
        "{:>9} {:>10} {:>10} {:>9} {:>7} {:>12}",
        "size", "exact", "fp8", "fp8/exact", "tuner", "picked/best"
    );
    let mut worst: f64 = 1.0;
    for (i, &s) in sizes.iter().enumerate() {
        let (te, tf) = (best[0][i], best[1][i]);
        let (be, bf) = (gbps(s, te) * bus, gbps(s, tf) * bus);
        let choice = tuner::decide_allreduce(s, ranks, ranks, &profile, &policy);
        let picked = match choice.path {
            Path::CompressedCollNet => tf,
            Path::Raw => te,
        };
        let ratio = te.min(tf) / picked;
        worst = worst.min(ratio);
        println!(
            "{:>9} {:>10.2} {:>10.2} {:>8.2}x {:>7} {:>11.3}",
            human(s),
            be,
            bf,
            bf / be,
            match choice.path {
                Path::CompressedCollNet => "fp8",
                Path::Raw => "exact",
            },
            ratio
        );
    }
    println!("worst picked/best: {worst:.3} (no-regret bar: >= 0.95)");
    Ok(ExitCode::SUCCESS)
}

fn join<'a>(lib: &'a Library, rank: usize, n: usize) -> Result<(CollNet<'a>, Comm), String> {
    let mut coll = lib.collnet(NetVersion::V12)?;
    coll.init(None)
        .map_err(|c| format!("collnet init: {c:?}"))?;
    let (handle, listen) = coll.listen(0).map_err(|c| format!("listen: {c:?}"))?;
    to_parent(&handle_to_hex(&handle))?;
    let mut handles = from_parent()?
        .split(' ')
        .map(handle_from_hex)
        .collect::<Result<Vec<_>, _>>()?;
    if handles.len() != n {
        return Err(format!("{} handles for {n} members", handles.len()));
    }
    let comm = coll
        .connect(&mut handles, rank as i32, listen)
        .map_err(|c| format!("collnet connect: {c:?}"))?;
    coll.close_listen(listen)
        .map_err(|c| format!("closeListen: {c:?}"))?;
    Ok((coll, comm))
}

/// One member: for each size, warm up, then time enough calls to fill
/// about half a second (at least 3).
pub fn member(o: &Opts) -> Result<(), String> {
    let rank = o.num("rank", 0)?;
    let n = o.num("ranks", 2)?;
    let sizes: Vec<usize> = o
        .get("sizes")
        .ok_or("--sizes")?
        .split(',')
        .map(|s| s.parse().map_err(|e| format!("{s}: {e}")))
        .collect::<Result<_, _>>()?;
    let lib = Library::open(&o.plugin()?)?;
    let (coll, comm) = join(&lib, rank, n)?;
    let mut rng = SplitMix::new(rank as u64 + 1);
    let max = sizes.iter().copied().max().unwrap_or(0);
    let input: Vec<u8> = (0..max / 2)
        .flat_map(|_| f32_to_bf16((rng.unit() - 0.5) as f32).to_ne_bytes())
        .collect();
    let mut output = vec![0u8; input.len()];
    let mut times = Vec::new();
    for &size in &sizes {
        let count = size / 2;
        let mut once = || -> Result<(), String> {
            // SAFETY: both buffers outlive the request, awaited right here.
            let req = unsafe {
                coll.iallreduce(
                    comm,
                    input.as_ptr().cast_mut().cast(),
                    output.as_mut_ptr().cast(),
                    count,
                    BFLOAT16,
                    SUM,
                    std::ptr::null_mut(),
                )
            }
            .map_err(|c| format!("iallreduce: {c:?}"))?
            .ok_or("iallreduce: no request")?;
            coll.wait(req, TIMEOUT)
                .map(drop)
                .map_err(|c| format!("test: {c:?}"))
        };
        once()?;
        // Every member runs the same number of calls: derive it from the
        // size only, never from a local clock.
        let iters = (((256u64 << 20) / size.max(1) as u64) as usize).clamp(3, 2000);
        let start = Instant::now();
        for _ in 0..iters {
            once()?;
        }
        times.push(start.elapsed().as_secs_f64() / iters as f64);
    }
    to_parent(
        &times
            .iter()
            .map(|t| format!("{t:e}"))
            .collect::<Vec<_>>()
            .join(","),
    )?;
    coll.close_coll(comm)
        .map_err(|c| format!("closeColl: {c:?}"))?;
    Ok(())
}
