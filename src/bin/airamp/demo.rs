//! `airamp demo`: a real allreduce through the plugin's C ABI. N processes
//! form a ring (rank r sends to r+1), run reduce-scatter then all-gather on
//! fp32 data — the algorithm NCCL's Ring uses over a net plugin — and check
//! the result against the exact sum on every rank.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use airamp::abi::client::{
    handle_from_hex, handle_to_hex, post, Comm, Library, Net, NetVersion, Request,
};

use crate::peer::{self, from_parent, to_parent};
use crate::Opts;

const TIMEOUT: Duration = Duration::from_secs(120);

struct Params {
    ranks: usize,
    count: usize,
    iters: usize,
}

fn params(o: &Opts) -> Result<Params, String> {
    Ok(Params {
        ranks: o.num("ranks", 4)?.clamp(2, 16),
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

/// One rank: joins the ring, runs the iterations, returns
/// (max abs error, FNV hash of the result, mean seconds per allreduce).
fn run_rank(
    net: &Net,
    send: Comm,
    recv: Comm,
    rank: usize,
    p: &Params,
) -> Result<(f32, u64, f64), String> {
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
    Ok((max_err, hash, total / p.iters as f64))
}

pub(crate) fn join_ring(lib: &Library) -> Result<(Net<'_>, Comm, [u8; 128]), String> {
    let mut net = lib.net(NetVersion::V12)?;
    net.init(None).map_err(|e| format!("init: {e:?}"))?;
    let (handle, listen) = net.listen(0).map_err(|e| format!("listen: {e:?}"))?;
    Ok((net, listen, handle))
}

pub fn run(o: &Opts) -> Result<ExitCode, String> {
    let p = params(o)?;
    let plugin = o.plugin()?;
    println!(
        "airamp demo: ring allreduce of {} fp32 values ({} MiB) across {} processes through {}",
        p.count,
        (p.count * 4) >> 20,
        p.ranks,
        plugin.display()
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
        let line = peer.recv()?;
        let f: Vec<&str> = line.split_whitespace().collect();
        let parse = |i: usize| f.get(i).ok_or_else(|| format!("bad result line {line:?}"));
        results.push((
            parse(0)?.parse().map_err(|e| format!("{e}"))?,
            u64::from_str_radix(parse(1)?, 16).map_err(|e| format!("{e}"))?,
            parse(2)?.parse().map_err(|e| format!("{e}"))?,
        ));
    }
    for peer in peers {
        peer.finish()?;
    }
    let secs = results.iter().map(|r| r.2).fold(0.0, f64::max);
    let bytes = (p.count * 4) as f64;
    let algbw = bytes / secs / 1e9;
    let busbw = algbw * 2.0 * (p.ranks - 1) as f64 / p.ranks as f64;
    let max_err = results.iter().map(|r| r.0).fold(0.0, f32::max);
    let identical = results.iter().all(|r| r.1 == results[0].1);
    println!("  time per allreduce {:.2} ms   algbw {algbw:.2} GB/s   busbw {busbw:.2} GB/s ({:.1} Gbit/s)", secs * 1e3, busbw * 8.0);
    println!(
        "  accuracy: max |error| vs exact sum = {max_err} ; results bit-identical on all {} ranks: {}",
        p.ranks,
        if identical { "yes" } else { "NO" }
    );
    net.close_send(send).map_err(|e| format!("{e:?}"))?;
    net.close_recv(recv).map_err(|e| format!("{e:?}"))?;
    if max_err == 0.0 && identical {
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
    let (err, hash, secs) = run_rank(&net, send, recv, rank, &p)?;
    to_parent(&format!("{err} {hash:x} {secs}"))?;
    net.close_send(send).map_err(|e| format!("{e:?}"))?;
    net.close_recv(recv).map_err(|e| format!("{e:?}"))
}
