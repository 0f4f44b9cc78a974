//! `airamp bench collnet`: allreduce through the exported collective
//! network, exact against FP8, by size, next to the raw path NCCL would
//! otherwise run (a ring allreduce over the plugin's net API, as NCCL's
//! Ring does), with the tuner's pick between raw and FP8.
//!
//! N member processes join a group through `ncclCollNetPlugin_v12` exactly
//! as NCCL's proxy does, and a ring through `ncclNetPlugin_v12`. The whole size sweep runs once with FP8 off and
//! once with it on, alternating the order over rounds (ABBA) so drift on a
//! noisy machine does not favour either; each cell is the best round.
//! The tuner column is `tuner::decide_allreduce` with the profile every
//! rank's tuner of the job would use: the figures the FP8 group's members
//! measured and agreed on in `connect` (each member reads the record filed
//! under the communicator id it was given, as the tuner does), with any
//! calibration keys of this process's configuration overriding them.

use std::collections::VecDeque;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use airamp::abi::client::{handle_from_hex, handle_to_hex, CollNet, Comm, Library, NetVersion};
use airamp::codec::f32_to_bf16;
use airamp::collnet::calibrate::{self, store, Figures, NodeView};
use airamp::collnet::sim::SplitMix;
use airamp::config;
use airamp::tuner::{self, LinkProfile, Path, Policy};

use crate::peer::{self, from_parent, to_parent};
use crate::{plot, progress, Opts};

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

/// What one group's members reported about `connect`.
struct Joined {
    /// The agreed figures every member read back (`None`: no measurement).
    figures: Option<Figures>,
    /// What the record said, in words.
    view: String,
    /// The slowest member's `connect`, seconds.
    connect_s: f64,
}

/// A member's calibration line: the record's view, then the figures' bits.
fn calibration_line(view: &NodeView, connect_s: f64) -> String {
    match view {
        NodeView::Measured { figures: f, .. } => format!(
            "measured {connect_s:e} {:x} {:x} {:x} {:x}",
            f.gbps.to_bits(),
            f.latency_us.to_bits(),
            f.encode_gvps.to_bits(),
            f.decode_gvps.to_bits()
        ),
        other => format!("{} {connect_s:e}", format!("{other:?}").replace(' ', "")),
    }
}

fn parse_calibration(line: &str) -> Result<(Option<Figures>, String, f64), String> {
    let w: Vec<&str> = line.split(' ').collect();
    let secs = |s: &str| s.parse::<f64>().map_err(|e| format!("{line}: {e}"));
    let bits = |s: &str| {
        u64::from_str_radix(s, 16)
            .map(f64::from_bits)
            .map_err(|e| format!("{line}: {e}"))
    };
    match w.as_slice() {
        ["measured", t, g, l, e, d] => Ok((
            Some(Figures {
                gbps: bits(g)?,
                latency_us: bits(l)?,
                encode_gvps: bits(e)?,
                decode_gvps: bits(d)?,
            }),
            "agreed".into(),
            secs(t)?,
        )),
        [what, t] => Ok((None, what.to_string(), secs(t)?)),
        _ => Err(format!("bad calibration line {line:?}")),
    }
}

/// Seconds per allreduce of each size through the collective network and
/// through the ring, the slowest member's; and what `connect` agreed.
fn run_group(
    o: &Opts,
    ranks: usize,
    fp8: bool,
    sizes: &[u64],
) -> Result<(Vec<f64>, Vec<f64>, Joined), String> {
    std::env::set_var("AIRAMP_ENABLE_FP8_ALLREDUCE", if fp8 { "1" } else { "0" });
    let plugin = o.plugin()?.display().to_string();
    let list = sizes
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    // A fresh communicator id per group, as NCCL hashes a fresh unique id.
    let comm = SplitMix::new(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()),
    )
    .next_u64();
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
                    "--comm".into(),
                    format!("{comm:x}"),
                    "--call".into(),
                    o.bytes("call", 0)?.to_string(),
                    "--depth".into(),
                    o.num("depth", 1)?.max(1).to_string(),
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
    let mut calibrations = Vec::new();
    for m in &mut members {
        calibrations.push(parse_calibration(&m.recv()?)?);
    }
    let (figures, view, _) = calibrations[0].clone();
    if calibrations.iter().any(|c| {
        c.0.map(|f| [f.gbps, f.latency_us, f.encode_gvps, f.decode_gvps].map(f64::to_bits))
            != figures
                .map(|f| [f.gbps, f.latency_us, f.encode_gvps, f.decode_gvps].map(f64::to_bits))
    }) {
        return Err(format!(
            "members read different calibrations: {calibrations:?}"
        ));
    }
    let joined = Joined {
        figures,
        view,
        connect_s: calibrations.iter().map(|c| c.2).fold(0.0, f64::max),
    };
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
    Ok((slowest(&coll), slowest(&ring), joined))
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
    // A plot that cannot be written should fail now, not after the run.
    if let Some(file) = o.get("plot") {
        std::fs::File::create(file).map_err(|e| format!("{file}: {e}"))?;
    }
    let mut references = Vec::new();
    for spec in o.all("reference") {
        let (label, file) = plot::labelled(spec)?;
        references.extend(plot::series_from_file(&label, &file)?);
    }
    let ranks = o.num("ranks", 2)?.clamp(2, 16);
    let rounds = o.num("rounds", 2)?.max(1);
    let sizes = sizes(o)?;
    let mut best = [
        vec![f64::INFINITY; sizes.len()],
        vec![f64::INFINITY; sizes.len()],
    ];
    let mut ring_best = vec![f64::INFINITY; sizes.len()];
    let mut calibrations: Vec<(bool, Joined)> = Vec::new();
    let pb = progress::bar(
        o,
        2 * rounds as u64,
        &format!("bench collnet: {ranks} members, {} sizes", sizes.len()),
        "groups",
    );
    if !pb.is_hidden() {
        // Each group runs for seconds: keep the clock moving.
        pb.enable_steady_tick(Duration::from_millis(200));
    }
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for fp8 in order {
            pb.set_message(format!(
                "round {}/{rounds}, fp8 {}",
                round + 1,
                if fp8 { "on" } else { "off" }
            ));
            let (t, ring, joined) = run_group(o, ranks, fp8, &sizes)?;
            pb.inc(1);
            calibrations.push((fp8, joined));
            for (b, t) in best[usize::from(fp8)].iter_mut().zip(t) {
                *b = b.min(t);
            }
            for (b, t) in ring_best.iter_mut().zip(ring) {
                *b = b.min(t);
            }
        }
    }
    pb.finish_and_clear();
    let cfg = config::global();
    // The first FP8 group's agreement, as a job's tuners read it at init.
    let agreed = calibrations
        .iter()
        .find(|(fp8, _)| *fp8)
        .and_then(|(_, j)| j.figures);
    let (profile, source) = LinkProfile::resolve(&cfg.tuner, agreed.as_ref());
    let mut policy = Policy::from_config(cfg);
    // The sweep measures the FP8 path, so ask what the tuner would do with
    // FP8 enabled (the format the config names).
    policy.fp8 = Some(cfg.compression.format);
    let bus = 2.0 * (ranks as f64 - 1.0) / ranks as f64;
    let busbw = |s: u64, t: f64| gbps(s, t) * bus;
    let decisions: Vec<Path> = sizes
        .iter()
        .map(|&s| tuner::decide_allreduce(s, ranks, ranks, &profile, &policy).path)
        .collect();
    if let Some(file) = o.get("plot") {
        let series = [
            ("raw ring (reference)", &ring_best),
            ("exact collnet", &best[0]),
            ("compressed collnet", &best[1]),
        ]
        .map(|(name, times)| {
            (
                name.to_string(),
                sizes
                    .iter()
                    .zip(times.iter())
                    .map(|(&s, &t)| (s, busbw(s, t)))
                    .collect::<Vec<_>>(),
            )
        });
        let mut series = series.to_vec();
        series.extend(references);
        let series: Vec<(&str, Vec<(u64, f64)>)> = series
            .iter()
            .map(|(n, p)| (n.as_str(), p.clone()))
            .collect();
        plot::bus_bandwidth(
            file,
            &format!("airamp bench collnet: {ranks} members, bf16 sum, best of {rounds} rounds"),
            &series,
        )?;
    }
    if o.flag("json") {
        let rows: Vec<_> = sizes
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                let (tr, te, tf) = (ring_best[i], best[0][i], best[1][i]);
                let picked = match decisions[i] {
                    Path::CompressedCollNet => tf,
                    Path::Raw => tr,
                };
                serde_json::json!({
                    "bytes": s,
                    "busbw_gbit_per_s": {
                        "raw": busbw(s, tr),
                        "exact": busbw(s, te),
                        "compressed": busbw(s, tf),
                    },
                    "compressed_over_raw": tr / tf,
                    "tuner": match decisions[i] {
                        Path::CompressedCollNet => "compressed",
                        Path::Raw => "raw",
                    },
                    "picked_over_best": tr.min(tf) / picked,
                })
            })
            .collect();
        let v = serde_json::json!({
            "bench": "collnet",
            "members": ranks,
            "rounds": rounds,
            "dtype": "bf16",
            "tuner_profile": profile.to_string(),
            "tuner_profile_source": source.to_string(),
            "sizes": rows,
        });
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    println!("{ranks} members, bf16 sum, best of {rounds} rounds (ABBA); bus bandwidth in Gbit/s");
    println!(
        "raw = ring allreduce over the net API (what NCCL's Ring does); exact / fp8 = the collective network"
    );
    for (fp8, j) in &calibrations {
        let figures = j.figures.map_or(String::new(), |f| {
            format!(
                ": link {:.3} Gbit/s, {:.1} us; codec {:.3} / {:.3} G values/s",
                f.gbps, f.latency_us, f.encode_gvps, f.decode_gvps
            )
        });
        println!(
            "group with fp8 {}: connect {:.1} ms, calibration {}{figures}",
            if *fp8 { "on " } else { "off" },
            j.connect_s * 1e3,
            j.view
        );
    }
    println!("tuner profile: {profile} ({source})");
    println!(
        "{:>9} {:>9} {:>9} {:>9} {:>8} {:>7} {:>12}",
        "size", "raw", "exact", "fp8", "fp8/raw", "tuner", "picked/best"
    );
    let mut worst: f64 = 1.0;
    for (i, &s) in sizes.iter().enumerate() {
        let (tr, te, tf) = (ring_best[i], best[0][i], best[1][i]);
        let picked = match decisions[i] {
            Path::CompressedCollNet => tf,
            Path::Raw => tr,
        };
        let ratio = tr.min(tf) / picked;
        worst = worst.min(ratio);
        println!(
            "{:>9} {:>9.2} {:>9.2} {:>9.2} {:>7.2}x {:>7} {:>11.3}",
            human(s),
            busbw(s, tr),
            busbw(s, te),
            busbw(s, tf),
            tr / tf,
            match decisions[i] {
                Path::CompressedCollNet => "fp8",
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
    comm_id: u64,
) -> Result<(CollNet<'a>, Comm), String> {
    let mut coll = lib.collnet(NetVersion::V12)?;
    coll.init_comm(None, comm_id)
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
    let start = Instant::now();
    let comm = coll
        .connect(&mut handles, rank as i32, listen)
        .map_err(|c| format!("collnet connect: {c:?}"))?;
    let connect_s = start.elapsed().as_secs_f64();
    coll.close_listen(listen)
        .map_err(|c| format!("closeListen: {c:?}"))?;
    // What every rank's tuner of this communicator reads at its init.
    let view = match store::read(comm_id) {
        Ok(records) => calibrate::combine(&records),
        Err(_) => NodeView::Unreadable,
    };
    to_parent(&calibration_line(&view, connect_s))?;
    Ok((coll, comm))
}

/// One member: for each size, warm up, then time enough calls to fill
/// about half a second (at least 3).
pub fn member(o: &Opts) -> Result<(), String> {
    let rank = o.num("rank", 0)?;
    let n = o.num("ranks", 2)?;
    let call_bytes = o.bytes("call", 0)? as usize;
    let depth = o.num("depth", 1)?.max(1);
    let sizes: Vec<usize> = o
        .get("sizes")
        .ok_or("--sizes")?
        .split(',')
        .map(|s| s.parse().map_err(|e| format!("{s}: {e}")))
        .collect::<Result<_, _>>()?;
    let lib = Library::open(&o.plugin()?)?;
    let (net, ring_listen, ring_handle) = crate::demo::join_ring(&lib)?;
    let comm_id = u64::from_str_radix(o.get("comm").ok_or("--comm")?, 16)
        .map_err(|e| format!("--comm: {e}"))?;
    let (coll, comm) = join(&lib, rank, n, &ring_handle, comm_id)?;
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
        // NCCL's pattern: the allreduce cut into calls of `call` bytes
        // (whole when 0), at most `depth` of them in flight.
        let call = match call_bytes {
            0 => size,
            c => c.clamp(2, size.max(2)) & !1,
        };
        let mut once = || -> Result<(), String> {
            let mut in_flight = VecDeque::new();
            let mut post_all = || -> Result<(), String> {
                for offset in (0..size).step_by(call.max(1)) {
                    let bytes = call.min(size - offset);
                    if in_flight.len() == depth {
                        let oldest = in_flight.pop_front().ok_or("no call in flight")?;
                        coll.wait(oldest, TIMEOUT)
                            .map_err(|c| format!("test: {c:?}"))?;
                    }
                    // SAFETY: each call reads and writes its own range of
                    // the two buffers, which outlive it: every request still
                    // in flight is awaited below, after an error too.
                    let req = unsafe {
                        coll.iallreduce(
                            comm,
                            input.as_ptr().add(offset).cast_mut().cast(),
                            output.as_mut_ptr().add(offset).cast(),
                            bytes / 2,
                            BFLOAT16,
                            SUM,
                            std::ptr::null_mut(),
                        )
                    }
                    .map_err(|c| format!("iallreduce: {c:?}"))?
                    .ok_or("iallreduce: no request")?;
                    in_flight.push_back(req);
                }
                Ok(())
            };
            let posted = post_all();
            let mut drained = Ok(());
            for req in in_flight {
                let waited = coll.wait(req, TIMEOUT);
                if drained.is_ok() {
                    drained = waited.map(drop).map_err(|c| format!("test: {c:?}"));
                }
            }
            posted.and(drained)
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
