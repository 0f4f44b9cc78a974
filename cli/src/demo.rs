//! `airamp demo`: a real allreduce through the plugin's C ABI. N processes
//! form a ring (rank r sends to r+1), run reduce-scatter then all-gather on
//! fp32 data — the algorithm NCCL's Ring uses over a net plugin — and check
//! the result against the exact sum on every rank.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use airamp::abi::client::{
    handle_from_hex, handle_to_hex, post, Comm, Library, Net, NetVersion, Request,
};
use airamp::config;

use crate::peer::{self, from_parent, to_parent};
use crate::rendezvous::Rendezvous;
use crate::{progress, Opts};

const TIMEOUT: Duration = Duration::from_secs(120);

struct Params {
    ranks: usize,
    count: usize,
    iters: usize,
}

fn params(o: &Opts) -> Result<Params, String> {
    Ok(Params {
        ranks: o.num("ranks", 4)?,
        count: o.num("count", 16 << 20)?,
        iters: o.num("iters", 5)?.max(1),
    })
}

/// Rank `r`'s input: small integers, so every summation order is exact and
/// any deviation from the expected sum is a transport error.
fn input(rank: usize, i: usize) -> f32 {
    ((i * 7 + rank * 13) % 1024) as f32 - 512.0
}

fn chunk(count: usize, ranks: usize, c: usize) -> std::ops::Range<usize> {
    let per = count.div_ceil(ranks);
    (c * per).min(count)..((c + 1) * per).min(count)
}

/// Moves `src` to the next rank and fills `dst` from the previous one, in
/// segments, with a sliding window of them in flight on each connection
/// (the plugin's request pool is bounded; a message of any size must pass).
fn exchange(
    net: &Net,
    send: Comm,
    recv: Comm,
    src: (*const u8, usize),
    dst: (*mut u8, usize),
) -> Result<(), String> {
    const SEGMENT: usize = 1 << 20;
    const WINDOW: usize = 16;
    let total = src.1.div_ceil(SEGMENT).max(dst.1.div_ceil(SEGMENT));
    let mut reqs: std::collections::VecDeque<(Request, &str)> = Default::default();
    for i in 0..total {
        let off = i * SEGMENT;
        if off < dst.1 {
            let len = SEGMENT.min(dst.1 - off);
            // SAFETY: `off + len <= dst.1`, inside the destination slice.
            let p = unsafe { dst.0.add(off) };
            let r = post(TIMEOUT, || {
                // SAFETY: the buffer outlives the request, which completes (or its comm closes) before the buffer is dropped.
                unsafe { net.irecv(recv, &[(p, len, 0)], &mut [std::ptr::null_mut()]) }
            })
            .map_err(|e| format!("irecv: {e:?}"))?;
            reqs.push_back((r, "receive"));
        }
        if off < src.1 {
            let len = SEGMENT.min(src.1 - off);
            // SAFETY: `off + len <= src.1`, inside the source slice.
            let p = unsafe { src.0.add(off) };
            // SAFETY: the buffer outlives the request, which completes (or its comm closes) before the buffer is dropped.
            let r = post(TIMEOUT, || unsafe {
                net.isend(send, p, len, 0, std::ptr::null_mut())
            })
            .map_err(|e| format!("isend: {e:?}"))?;
            reqs.push_back((r, "send"));
        }
        // Each segment adds at most one request per connection.
        while reqs.len() > 2 * WINDOW {
            let (r, what) = reqs.pop_front().expect("non-empty");
            net.wait(r, 1, TIMEOUT)
                .map_err(|e| format!("{what}: {e:?}"))?;
        }
    }
    for (r, what) in reqs {
        net.wait(r, 1, TIMEOUT)
            .map_err(|e| format!("{what}: {e:?}"))?;
    }
    Ok(())
}

/// Values rank `rank` sends in one [`ring_allreduce`] of `count` values
/// across `n` ranks (the chunks it sends, step by step).
fn values_sent(count: usize, n: usize, rank: usize) -> usize {
    (0..n - 1)
        .map(|step| {
            chunk(count, n, (rank + n - step) % n).len()
                + chunk(count, n, (rank + 1 + n - step) % n).len()
        })
        .sum()
}

pub(crate) fn ring_allreduce(
    net: &Net,
    send: Comm,
    recv: Comm,
    data: &mut [f32],
    rank: usize,
    n: usize,
) -> Result<(), String> {
    let count = data.len();
    let mut tmp = vec![0f32; count.div_ceil(n)];
    for step in 0..n - 1 {
        let s = chunk(count, n, (rank + n - step) % n);
        let r = chunk(count, n, (rank + 2 * n - step - 1) % n);
        let src = (data[s.clone()].as_ptr().cast::<u8>(), s.len() * 4);
        exchange(net, send, recv, src, (tmp.as_mut_ptr().cast(), r.len() * 4))?;
        for (d, t) in data[r].iter_mut().zip(&tmp) {
            *d += *t;
        }
    }
    for step in 0..n - 1 {
        let s = chunk(count, n, (rank + 1 + n - step) % n);
        let r = chunk(count, n, (rank + n - step) % n);
        let src = (data[s.clone()].as_ptr().cast::<u8>(), s.len() * 4);
        let dst = (data[r.clone()].as_mut_ptr().cast::<u8>(), r.len() * 4);
        exchange(net, send, recv, src, dst)?;
    }
    Ok(())
}

/// What one rank reports: the largest deviation from the exact sum, an FNV
/// hash of its result (equal on every rank when they agree bit for bit),
/// the mean seconds per allreduce.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Outcome {
    max_err: f32,
    hash: u64,
    secs: f64,
}

impl Outcome {
    /// One line, as a rank hands it to the others.
    fn line(&self) -> String {
        format!("{} {:x} {}", self.max_err, self.hash, self.secs)
    }

    fn parse(line: &str) -> Result<Outcome, String> {
        let bad = |e: String| format!("bad result line {line:?}: {e}");
        let f: Vec<&str> = line.split_whitespace().collect();
        let [err, hash, secs] = f[..] else {
            return Err(bad("not 3 fields".into()));
        };
        Ok(Outcome {
            max_err: err.parse().map_err(|e| bad(format!("{e}")))?,
            hash: u64::from_str_radix(hash, 16).map_err(|e| bad(format!("{e}")))?,
            secs: secs.parse().map_err(|e| bad(format!("{e}")))?,
        })
    }
}

/// One rank: joins the ring, runs the iterations, returns its outcome.
fn run_rank(net: &Net, send: Comm, recv: Comm, rank: usize, p: &Params) -> Result<Outcome, String> {
    let mut data = vec![0f32; p.count];
    let mut total = 0.0;
    for iter in 0..=p.iters {
        for (i, d) in data.iter_mut().enumerate() {
            *d = input(rank, i);
        }
        let t = Instant::now();
        ring_allreduce(net, send, recv, &mut data, rank, p.ranks)?;
        if iter > 0 {
            total += t.elapsed().as_secs_f64();
        }
    }
    let mut max_err = 0f32;
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for (i, &d) in data.iter().enumerate() {
        let want: f32 = (0..p.ranks).map(|r| input(r, i)).sum();
        max_err = max_err.max((d - want).abs());
        for b in d.to_le_bytes() {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    Ok(Outcome {
        max_err,
        hash,
        secs: total / p.iters as f64,
    })
}

/// Prints the throughput and accuracy of all ranks' outcomes; true when
/// every rank got the exact sum and all results are bit-identical.
fn summarize(p: &Params, results: &[Outcome]) -> bool {
    let secs = results.iter().map(|r| r.secs).fold(0.0, f64::max);
    let bytes = (p.count * 4) as f64;
    let algbw = bytes / secs / 1e9;
    let busbw = algbw * 2.0 * (p.ranks - 1) as f64 / p.ranks as f64;
    let max_err = results.iter().map(|r| r.max_err).fold(0.0, f32::max);
    let identical = results.iter().all(|r| r.hash == results[0].hash);
    println!("  time per allreduce {:.2} ms   algbw {algbw:.2} GB/s   busbw {busbw:.2} GB/s ({:.1} Gbit/s)", secs * 1e3, busbw * 8.0);
    println!(
        "  accuracy: max |error| vs exact sum = {max_err} ; results bit-identical on all {} ranks: {}",
        results.len(),
        if identical { "yes" } else { "NO" }
    );
    max_err == 0.0 && identical && results.len() == p.ranks
}

pub(crate) fn join_ring(lib: &Library) -> Result<(Net<'_>, Comm, [u8; 128]), String> {
    let mut net = lib.net(NetVersion::V12)?;
    net.init(None).map_err(|e| format!("init: {e:?}"))?;
    let (handle, listen) = net.listen(0).map_err(|e| format!("listen: {e:?}"))?;
    Ok((net, listen, handle))
}

pub fn run(o: &Opts) -> Result<ExitCode, String> {
    let mut p = params(o)?;
    if let Some(dir) = o.get("rendezvous") {
        return run_member(o, &p, Path::new(dir));
    }
    p.ranks = p.ranks.clamp(2, 16);
    let plugin = o.plugin()?;
    println!(
        "airamp demo: ring allreduce of {} fp32 values ({} MiB) across {} processes through {}",
        p.count,
        (p.count * 4) >> 20,
        p.ranks,
        plugin.display()
    );
    let pb = progress::spinner(
        o,
        &format!(
            "demo: {} ranks, {} iterations of {} values",
            p.ranks, p.iters, p.count
        ),
    );
    let lib = Library::open(&plugin)?;
    let (net, listen, my_handle) = join_ring(&lib)?;
    let mut peers = Vec::new();
    let mut handles = vec![handle_to_hex(&my_handle)];
    for r in 1..p.ranks {
        let args: Vec<String> = [
            "--plugin",
            &plugin.display().to_string(),
            "--rank",
            &r.to_string(),
            "--ranks",
            &p.ranks.to_string(),
            "--count",
            &p.count.to_string(),
            "--iters",
            &p.iters.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut peer = peer::spawn("demo-rank", &args)?;
        handles.push(peer.recv()?);
        peers.push(peer);
    }
    for (i, peer) in peers.iter_mut().enumerate() {
        peer.send(&handles[(i + 2) % p.ranks])?;
    }
    let mut next = handle_from_hex(&handles[1])?;
    let send = net.connect_wait(0, &mut next, TIMEOUT)?;
    let recv = net.accept_wait(listen, TIMEOUT)?;
    let mut results = vec![run_rank(&net, send, recv, 0, &p)?];
    for peer in &mut peers {
        results.push(Outcome::parse(&peer.recv()?)?);
    }
    for peer in peers {
        peer.finish()?;
    }
    pb.finish_and_clear();
    let ok = summarize(&p, &results);
    net.close_send(send).map_err(|e| format!("{e:?}"))?;
    net.close_recv(recv).map_err(|e| format!("{e:?}"))?;
    if ok {
        Ok(ExitCode::SUCCESS)
    } else {
        Err("allreduce result is wrong".into())
    }
}

/// A non-zero rank of the demo (a child process).
pub fn rank_process(o: &Opts) -> Result<(), String> {
    let p = params(o)?;
    let rank = o.num("rank", 1)?;
    let lib = Library::open(&o.plugin()?)?;
    let (net, listen, my_handle) = join_ring(&lib)?;
    to_parent(&handle_to_hex(&my_handle))?;
    let mut next = handle_from_hex(&from_parent()?)?;
    let send = net.connect_wait(0, &mut next, TIMEOUT)?;
    let recv = net.accept_wait(listen, TIMEOUT)?;
    let outcome = run_rank(&net, send, recv, rank, &p)?;
    to_parent(&outcome.line())?;
    net.close_send(send).map_err(|e| format!("{e:?}"))?;
    net.close_recv(recv).map_err(|e| format!("{e:?}"))
}

/// `airamp demo --rank R --ranks N --rendezvous DIR`: this process is rank
/// R of N processes a launcher started (one per Slurm task, say). The ranks
/// exchange listen handles and outcomes as files in DIR, which all of them
/// see (a fresh directory per run); every rank checks every rank's result
/// and fails unless all are exact and identical.
fn run_member(o: &Opts, p: &Params, dir: &Path) -> Result<ExitCode, String> {
    let rank = o
        .get("rank")
        .ok_or("--rendezvous needs --rank R and --ranks N")?
        .parse::<usize>()
        .map_err(|e| format!("--rank: {e}"))?;
    if p.ranks < 2 || rank >= p.ranks {
        return Err(format!(
            "--rank {rank} --ranks {}: need 2 or more ranks and rank < ranks",
            p.ranks
        ));
    }
    let plugin = o.plugin()?;
    println!(
        "airamp demo: rank {rank} of {}: ring allreduce of {} fp32 values ({} MiB) through {}",
        p.ranks,
        p.count,
        (p.count * 4) >> 20,
        plugin.display()
    );
    let rdv = Rendezvous::new(dir, TIMEOUT)?;
    let lib = Library::open(&plugin)?;
    let (net, listen, my_handle) = join_ring(&lib)?;
    rdv.publish(&format!("handle.{rank}"), &handle_to_hex(&my_handle))?;
    let mut next = handle_from_hex(&rdv.wait(&format!("handle.{}", (rank + 1) % p.ranks))?)?;
    let send = net.connect_wait(0, &mut next, TIMEOUT)?;
    let recv = net.accept_wait(listen, TIMEOUT)?;
    let outcome = run_rank(&net, send, recv, rank, p)?;
    rdv.publish(&format!("result.{rank}"), &outcome.line())?;
    let results = (0..p.ranks)
        .map(|r| Outcome::parse(&rdv.wait(&format!("result.{r}"))?))
        .collect::<Result<Vec<_>, String>>()?;
    let ok = summarize(p, &results);
    if o.flag("check-metrics") {
        let sent = (p.iters + 1) * values_sent(p.count, p.ranks, rank) * 4;
        check_metrics(sent as f64)?;
    }
    net.close_send(send).map_err(|e| format!("{e:?}"))?;
    net.close_recv(recv).map_err(|e| format!("{e:?}"))?;
    if ok {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(format!("rank {rank}: allreduce result is wrong"))
    }
}

/// Scrapes this process's own exporter (the configured base port plus the
/// local rank, as the plugin picks it) and fails unless it reports the
/// plugin up and at least `min_sent` bytes sent: this rank's traffic, not
/// another process's on the same port.
fn check_metrics(min_sent: f64) -> Result<(), String> {
    let cfg = config::global();
    if !cfg.metrics.enabled {
        return Err("--check-metrics: metrics are off in this configuration".into());
    }
    let env = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
    let local_rank = config::MetricsAddr::local_rank_from_env(env).unwrap_or(0);
    let addr = cfg
        .metrics
        .addr
        .checked_for_local_rank(local_rank)
        .ok_or("--check-metrics: metrics port out of range")?;
    let url = format!("http://{addr}/metrics");
    let text = crate::tuner::fetch_metrics(&url)?;
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
    };
    let status = value("airamp_status");
    let sent = value("airamp_bytes_sent_total{transport=\"tcp\"}");
    let show = |v: Option<f64>| v.map_or("absent".to_string(), |v| v.to_string());
    println!(
        "  metrics of local rank {local_rank} at {url}: airamp_status {}, airamp_bytes_sent_total{{transport=\"tcp\"}} {}",
        show(status),
        show(sent)
    );
    if status != Some(1.0) || !sent.is_some_and(|s| s >= min_sent) {
        return Err(format!(
            "{url}: want airamp_status 1 and at least {min_sent} bytes sent"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_lines_round_trip() {
        let o = Outcome {
            max_err: 0.5,
            hash: 0xcbf2_9ce4_8422_2325,
            secs: 0.0125,
        };
        assert_eq!(Outcome::parse(&o.line()), Ok(o));
        assert!(Outcome::parse("0 zz 1").is_err());
        assert!(Outcome::parse("0 1").is_err());
    }

    #[test]
    fn ranks_send_two_passes_of_the_vector_between_them() {
        for (count, n) in [(10, 4), (16 << 20, 2), (1000, 3), (5, 8)] {
            let all: usize = (0..n).map(|r| values_sent(count, n, r)).sum();
            assert_eq!(all, 2 * (n - 1) * count, "count {count} ranks {n}");
        }
        assert_eq!(values_sent(1 << 20, 2, 1), 1 << 20);
    }

    #[test]
    fn only_exact_identical_complete_results_pass() {
        let p = Params {
            ranks: 2,
            count: 1024,
            iters: 1,
        };
        let good = Outcome {
            max_err: 0.0,
            hash: 7,
            secs: 0.001,
        };
        assert!(summarize(&p, &[good, good]));
        assert!(!summarize(&p, &[good]), "a missing rank");
        let off = Outcome { hash: 8, ..good };
        assert!(!summarize(&p, &[good, off]), "ranks disagree");
        let wrong = Outcome {
            max_err: 1.0,
            ..good
        };
        assert!(!summarize(&p, &[wrong, wrong]), "not the exact sum");
    }
}
