//! `airamp bench collnet`: allreduce through the exported collective
//! network, exact against compressed (one or more wire formats, `--formats
//! e4m3,int8`), by size, next to the raw path NCCL would otherwise run (a
//! ring allreduce over the plugin's net API, as NCCL's Ring does), with the
//! tuner's pick between raw and the first format.
//!
//! N member processes join a group through `ncclCollNetPlugin_v12` exactly
//! as NCCL's proxy does, and a ring through `ncclNetPlugin_v12`. The whole
//! size sweep runs once with compression off and once per format,
//! reversing the order every other round (ABBA) so drift on a noisy
//! machine does not favour any; each cell is the best round.
//! The tuner column is `tuner::decide_allreduce` with the profile and policy
//! from this process's configuration (e.g. `AIRAMP_CONF` pointing at an
//! `airamp calibrate` profile), the same inputs every rank of a job uses.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use airamp::abi::client::{handle_from_hex, handle_to_hex, CollNet, Comm, Library, NetVersion};
use airamp::codec::{f32_to_bf16, WireFormat};
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

/// Seconds per allreduce of each size through the collective network
/// (compressed in `format`, or exact) and through the ring, the slowest
/// member's.
fn run_group(
    o: &Opts,
    ranks: usize,
    format: Option<WireFormat>,
    sizes: &[u64],
) -> Result<(Vec<f64>, Vec<f64>), String> {
    std::env::set_var(
        "AIRAMP_ENABLE_FP8_ALLREDUCE",
        if format.is_some() { "1" } else { "0" },
    );
    if let Some(f) = format {
        std::env::set_var("AIRAMP_COMPRESSION_FORMAT", f.name());
    }
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
    let mut coll_handles = Vec::new();
    let mut ring_handles = Vec::new();
    for m in &mut members {
        coll_handles.push(m.recv()?);
        ring_handles.push(m.recv()?);
    }
    let line = coll_handles.join(" ");
    for (r, m) in members.iter_mut().enumerate() {
        m.send(&line)?;
        m.send(&ring_handles[(r + 1) % ranks])?;
    }
    let parse = |line: &str| -> Result<Vec<f64>, String> {
        line.split(',')
            .map(|t| t.parse::<f64>().map_err(|e| format!("{line}: {e}")))
            .collect()
    };
    let (mut coll, mut ring) = (Vec::new(), Vec::new());
    for m in &mut members {
        coll.push(parse(&m.recv()?)?);
        ring.push(parse(&m.recv()?)?);
    }
    for m in members {
        m.finish()?;
    }
    // The slowest member bounds the collective.
    let slowest = |t: &[Vec<f64>]| -> Vec<f64> {
        (0..sizes.len())
            .map(|i| t.iter().map(|m| m[i]).fold(0.0, f64::max))
            .collect()
    };
    Ok((slowest(&coll), slowest(&ring)))
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

/// `--formats e4m3,int8`; the configured format when absent.
fn formats(o: &Opts) -> Result<Vec<WireFormat>, String> {
    let Some(list) = o.get("formats") else {
        return Ok(vec![config::global().compression.format]);
    };
    list.split(',')
        .map(|name| {
            WireFormat::ALL
                .into_iter()
                .find(|f| f.name().eq_ignore_ascii_case(name.trim()))
                .ok_or_else(|| format!("--formats: unknown format {name:?} (e4m3, e5m2, int8)"))
        })
        .collect()
}

pub fn run(o: &Opts) -> Result<ExitCode, String> {
    let ranks = o.num("ranks", 2)?.clamp(2, 16);
    let rounds = o.num("rounds", 2)?.max(1);
    let sizes = sizes(o)?;
    let formats = formats(o)?;
    // Exact first, then each format; `best[k]` per mode.
    let modes: Vec<Option<WireFormat>> = std::iter::once(None)
        .chain(formats.iter().copied().map(Some))
        .collect();
    let mut best = vec![vec![f64::INFINITY; sizes.len()]; modes.len()];
    let mut ring_best = vec![f64::INFINITY; sizes.len()];
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..modes.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for k in order {
            let (t, ring) = run_group(o, ranks, modes[k], &sizes)?;
            for (b, t) in best[k].iter_mut().zip(t) {
                *b = b.min(t);
            }
            for (b, t) in ring_best.iter_mut().zip(ring) {
                *b = b.min(t);
            }
        }
    }
    let cfg = config::global();
    let (profile, source) = LinkProfile::from_config(&cfg.tuner);
    let mut policy = Policy::from_config(cfg);
    // The sweep measures the compressed path, so ask what the tuner would
    // do with compression enabled in the first format measured.
    policy.fp8 = Some(formats[0]);
    let bus = 2.0 * (ranks as f64 - 1.0) / ranks as f64;
    println!("{ranks} members, bf16 sum, best of {rounds} rounds (ABBA); bus bandwidth in Gbit/s");
    println!(
        "raw = ring allreduce over the net API (what NCCL's Ring does); exact / {} = the collective network",
        formats.iter().map(|f| f.name()).collect::<Vec<_>>().join(" / ")
    );
    println!(
        "tuner profile: {profile} ({source}); tuner picks between raw and {}",
        formats[0]
    );
    let mut header = format!("{:>9} {:>9} {:>9}", "size", "raw", "exact");
    for f in &formats {
        header += &format!(" {:>9} {:>10}", f.name(), format!("{f}/exact"));
    }
    println!("{header} {:>7} {:>12}", "tuner", "picked/best");
    let mut worst: f64 = 1.0;
    for (i, &s) in sizes.iter().enumerate() {
        let (tr, te, tf) = (ring_best[i], best[0][i], best[1][i]);
        let choice = tuner::decide_allreduce(s, ranks, ranks, &profile, &policy);
        let picked = match choice.path {
            Path::CompressedCollNet => tf,
            Path::Raw => tr,
        };
        let ratio = tr.min(tf) / picked;
        worst = worst.min(ratio);
        let mut line = format!(
            "{:>9} {:>9.2} {:>9.2}",
            human(s),
            gbps(s, tr) * bus,
            gbps(s, te) * bus
        );
        for t in best.iter().skip(1).map(|b| b[i]) {
            line += &format!(" {:>9.2} {:>9.2}x", gbps(s, t) * bus, te / t);
        }
        println!(
            "{line} {:>7} {:>11.3}",
            match choice.path {
                Path::CompressedCollNet => formats[0].name(),
                Path::Raw => "raw",
            },
            ratio
        );
    }
    println!("worst picked/best: {worst:.3} (no-regret bar: >= 0.95)");
    Ok(ExitCode::SUCCESS)
}

fn join<'a>(
    lib: &'a Library,
    rank: usize,
    n: usize,
    ring_handle: &[u8; 128],
) -> Result<(CollNet<'a>, Comm), String> {
    let mut coll = lib.collnet(NetVersion::V12)?;
    coll.init(None)
        .map_err(|c| format!("collnet init: {c:?}"))?;
    let (handle, listen) = coll.listen(0).map_err(|c| format!("listen: {c:?}"))?;
    to_parent(&handle_to_hex(&handle))?;
    to_parent(&handle_to_hex(ring_handle))?;
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
    let (net, ring_listen, ring_handle) = crate::demo::join_ring(&lib)?;
    let (coll, comm) = join(&lib, rank, n, &ring_handle)?;
    let mut next = handle_from_hex(&from_parent()?)?;
    let ring_send = net.connect_wait(0, &mut next, TIMEOUT)?;
    let ring_recv = net.accept_wait(ring_listen, TIMEOUT)?;
    let mut rng = SplitMix::new(rank as u64 + 1);
    let max = sizes.iter().copied().max().unwrap_or(0);
    let input: Vec<u8> = (0..max / 2)
        .flat_map(|_| f32_to_bf16((rng.unit() - 0.5) as f32).to_ne_bytes())
        .collect();
    let mut output = vec![0u8; input.len()];
    let mut ring_data = vec![0f32; max / 4 + 1];
    let mut times = Vec::new();
    let mut ring_times = Vec::new();
    for &size in &sizes {
        // The raw path on the same bytes: fp32 (NCCL's Ring moves bytes;
        // the element type only changes the cheap local add).
        let ring_count = (size / 4).max(1);
        let iters = (((256u64 << 20) / size.max(1) as u64) as usize).clamp(3, 2000);
        let ring = &mut ring_data[..ring_count];
        crate::demo::ring_allreduce(&net, ring_send, ring_recv, ring, rank, n)?;
        let start = Instant::now();
        for _ in 0..iters {
            ring.fill(0.5);
            crate::demo::ring_allreduce(&net, ring_send, ring_recv, ring, rank, n)?;
        }
        ring_times.push(start.elapsed().as_secs_f64() / iters as f64);
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
    let line = |t: &[f64]| {
        t.iter()
            .map(|t| format!("{t:e}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    to_parent(&line(&times))?;
    to_parent(&line(&ring_times))?;
    net.close_send(ring_send).map_err(|e| format!("{e:?}"))?;
    net.close_recv(ring_recv).map_err(|e| format!("{e:?}"))?;
    coll.close_coll(comm)
        .map_err(|c| format!("closeColl: {c:?}"))?;
    Ok(())
}
