//! Benchmarks that go through the plugin's C ABI, with a reference measured
//! in the same run on the same link (iperf3, memcpy), printed as ratios.

use std::collections::VecDeque;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use airamp::abi::client::{handle_from_hex, handle_to_hex, post, Library, Net, NetVersion};

use crate::peer::{self, from_parent, to_parent};
use crate::raw_tcp::{self, Layout};
use crate::{progress, Opts};

const TIMEOUT: Duration = Duration::from_secs(120);

fn open(opts: &Opts) -> Result<Library, String> {
    Library::open(&opts.plugin()?)
}

fn init(lib: &Library) -> Result<Net<'_>, String> {
    let mut net = lib.net(NetVersion::V12)?;
    net.init(None).map_err(|e| format!("init: {e:?}"))?;
    if net.devices().map_err(|e| format!("devices: {e:?}"))? < 1 {
        return Err("the plugin found no network device".into());
    }
    Ok(net)
}

struct NetParams {
    size: usize,
    total: u64,
    window: usize,
}

fn net_params(o: &Opts) -> Result<NetParams, String> {
    Ok(NetParams {
        size: o.bytes("size", 1 << 20)? as usize,
        total: o.bytes("total", 8 << 30)?,
        window: o.num("window", 8)?.clamp(1, 32),
    })
}

fn forward(o: &Opts, p: &NetParams) -> Result<Vec<String>, String> {
    Ok(vec![
        "--plugin".into(),
        o.plugin()?.display().to_string(),
        "--size".into(),
        p.size.to_string(),
        "--total".into(),
        p.total.to_string(),
        "--window".into(),
        p.window.to_string(),
    ])
}

/// Receiver side (this process) of `bench net`; the sender is a child.
fn plugin_throughput(o: &Opts, p: &NetParams) -> Result<(f64, String), String> {
    let lib = open(o)?;
    let net = init(&lib)?;
    let props = net
        .properties(0)
        .map_err(|e| format!("getProperties: {e:?}"))?;
    let (handle, listen) = net.listen(0).map_err(|e| format!("listen: {e:?}"))?;
    let mut sender = peer::spawn("net-send", &forward(o, p)?)?;
    sender.send(&handle_to_hex(&handle))?;
    let recv = net.accept_wait(listen, TIMEOUT)?;
    let count = p.total.div_ceil(p.size as u64) as usize;
    let mut bufs: Vec<Vec<u8>> = (0..p.window).map(|_| vec![0u8; p.size]).collect();
    let mut inflight = VecDeque::new();
    let mut posted = 0;
    let mut done = 0;
    let mut first: Option<Instant> = None;
    let mut bytes_after_first = 0u64;
    let pb = progress::bar(o, count as u64, "bench net: airamp", "messages");
    while done < count {
        while posted < count && inflight.len() < p.window {
            let b = &mut bufs[posted % p.window];
            let r = post(TIMEOUT, || {
                // SAFETY: the buffer outlives the request, which completes (or its comm closes) before the buffer is dropped.
                unsafe {
                    net.irecv(
                        recv,
                        &[(b.as_mut_ptr(), b.len(), 0)],
                        &mut [std::ptr::null_mut()],
                    )
                }
            })
            .map_err(|e| format!("irecv: {e:?}"))?;
            inflight.push_back(r);
            posted += 1;
        }
        let r = inflight.pop_front().expect("posted above");
        let got = net
            .wait(r, 1, TIMEOUT)
            .map_err(|e| format!("receive: {e:?}"))?;
        match first {
            None => first = Some(Instant::now()),
            Some(_) => bytes_after_first += got[0] as u64,
        }
        done += 1;
        pb.inc(1);
    }
    pb.finish_and_clear();
    let secs = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    sender.finish()?;
    net.close_recv(recv)
        .map_err(|e| format!("closeRecv: {e:?}"))?;
    net.close_listen(listen)
        .map_err(|e| format!("closeListen: {e:?}"))?;
    Ok((bytes_after_first as f64 * 8.0 / secs / 1e9, props.name))
}

/// The child of `bench net`: connects and streams `total` bytes.
pub fn net_sender(o: &Opts) -> Result<(), String> {
    let p = net_params(o)?;
    let lib = open(o)?;
    let net = init(&lib)?;
    let mut handle = handle_from_hex(&from_parent()?)?;
    let send = net.connect_wait(0, &mut handle, TIMEOUT)?;
    let buf = vec![0x5Au8; p.size];
    let count = p.total.div_ceil(p.size as u64) as usize;
    let mut inflight = VecDeque::new();
    for _ in 0..count {
        if inflight.len() == p.window {
            net.wait(inflight.pop_front().expect("full"), 1, TIMEOUT)
                .map_err(|e| format!("send: {e:?}"))?;
        }
        inflight.push_back(
            post(TIMEOUT, || {
                // SAFETY: the buffer outlives the request, which completes (or its comm closes) before the buffer is dropped.
                unsafe { net.isend(send, buf.as_ptr(), buf.len(), 0, std::ptr::null_mut()) }
            })
            .map_err(|e| format!("isend: {e:?}"))?,
        );
    }
    for r in inflight {
        net.wait(r, 1, TIMEOUT)
            .map_err(|e| format!("send: {e:?}"))?;
    }
    net.close_send(send)
        .map_err(|e| format!("closeSend: {e:?}"))
}

/// iperf3 on the same address and link, `-l 1M`, `streams` parallel flows.
fn iperf3(addr: &str, streams: usize, seconds: u32) -> Result<f64, String> {
    let port = 5201 + (std::process::id() % 2000) as u16;
    let mut server = Command::new("iperf3")
        .args(["-s", "-1", "-B", addr, "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("iperf3 not available ({e}); install it or pass --no-iperf"))?;
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new("iperf3")
        .args([
            "-c",
            addr,
            "-p",
            &port.to_string(),
            "-l",
            "1M",
            "-P",
            &streams.to_string(),
            "-t",
            &seconds.to_string(),
            "-J",
        ])
        .output()
        .map_err(|e| format!("iperf3 client: {e}"))?;
    let _ = server.wait();
    let json = String::from_utf8_lossy(&out.stdout);
    let tail = json
        .split("\"sum_received\"")
        .nth(1)
        .ok_or("iperf3 printed no sum_received")?;
    let value = tail
        .split("\"bits_per_second\":")
        .nth(1)
        .ok_or("no bits_per_second")?;
    let num: String = value
        .trim()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == 'e' || *c == '+')
        .collect();
    num.parse::<f64>()
        .map(|b| b / 1e9)
        .map_err(|e| format!("iperf3 output: {e}"))
}

pub fn net(o: &Opts) -> Result<ExitCode, String> {
    let p = net_params(o)?;
    let cfg = airamp::config::global();
    let plugin = airamp::net::Plugin::from_config(cfg);
    let dev = plugin.devices.first().ok_or("no network device")?;
    let json = o.flag("json");
    let say = |line: String| {
        if !json {
            println!("{line}");
        }
    };
    say(format!(
        "airamp bench net: {} {} | streams={} chunk={} B min_chunk={} B inline={} B poller={} | messages of {} B, window {}, {} MiB total",
        dev.net.ifname,
        dev.net.addr,
        plugin.settings.streams,
        plugin.settings.chunk_bytes,
        plugin.settings.min_chunk_bytes,
        plugin.settings.inline_bytes,
        plugin.settings.poller.name(),
        p.size,
        p.window,
        p.total >> 20
    ));
    let mut best_ref: Option<f64> = None;
    let mut iperf = serde_json::Map::new();
    if !o.flag("no-iperf") {
        for streams in [1, 4] {
            let pb = progress::spinner(o, &format!("bench net: iperf3 -P {streams}, 5 s"));
            let gbps = iperf3(&dev.net.addr.to_string(), streams, 5)?;
            pb.finish_and_clear();
            say(format!(
                "  iperf3 -l 1M -P {streams}        {gbps:8.2} Gbit/s"
            ));
            iperf.insert(format!("P{streams}"), gbps.into());
            best_ref = Some(best_ref.map_or(gbps, |b: f64| b.max(gbps)));
        }
    }
    let (gbps, name) = plugin_throughput(o, &p)?;
    say(format!(
        "  airamp through the C ABI ({name}) {gbps:8.2} Gbit/s{}",
        best_ref.map_or(String::new(), |r| format!(
            "   = {:.2}x the better iperf3",
            gbps / r
        ))
    ));
    if json {
        let v = serde_json::json!({
            "bench": "net",
            "interface": dev.net.ifname,
            "address": dev.net.addr.to_string(),
            "streams": plugin.settings.streams,
            "chunk_bytes": plugin.settings.chunk_bytes,
            "min_chunk_bytes": plugin.settings.min_chunk_bytes,
            "inline_bytes": plugin.settings.inline_bytes,
            "poller": plugin.settings.poller.name(),
            "message_bytes": p.size,
            "window": p.window,
            "total_bytes": p.total,
            "via": name,
            "airamp_gbit_per_s": gbps,
            "iperf3_gbit_per_s": iperf,
            "airamp_over_best_iperf3": best_ref.map(|r| gbps / r),
        });
        println!("{v}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Round trips of one message (8 bytes unless `--size`) through the C ABI,
/// one connection each way, against plain TCP in the same run
/// ([`raw_tcp`]): before and after airamp, one connection per direction
/// (the same layout), the same with peeked receives (airamp's way with
/// small messages), and one connection both ways.
pub fn latency(o: &Opts) -> Result<ExitCode, String> {
    let iters = o.num("iters", 5000)?;
    let size = o.bytes("size", 8)? as usize;
    let raw = |layout| raw_tcp::round_trips(layout, size, 100, iters, TIMEOUT);
    let before = [
        raw(Layout::PerDirection)?,
        raw(Layout::PerDirectionPeeked)?,
        raw(Layout::Shared)?,
    ];
    let lib = open(o)?;
    let net = init(&lib)?;
    let (handle, listen) = net.listen(0).map_err(|e| format!("listen: {e:?}"))?;
    let mut echo = peer::spawn(
        "latency-echo",
        &[
            "--plugin".into(),
            o.plugin()?.display().to_string(),
            "--iters".into(),
            iters.to_string(),
            "--size".into(),
            size.to_string(),
        ],
    )?;
    echo.send(&handle_to_hex(&handle))?;
    let mut back = handle_from_hex(&echo.recv()?)?;
    let recv = net.accept_wait(listen, TIMEOUT)?;
    let send = net.connect_wait(0, &mut back, TIMEOUT)?;
    let out = vec![42u8; size];
    let mut inb = vec![0u8; size];
    let mut rtts = Vec::with_capacity(iters);
    let pb = progress::bar(
        o,
        (iters + 100) as u64,
        "bench latency: round trips",
        "iterations",
    );
    for i in 0..iters + 100 {
        let t = Instant::now();
        let r = post(TIMEOUT, || {
            // SAFETY: the buffer outlives the request, which completes (or its comm closes) before the buffer is dropped.
            unsafe {
                net.irecv(
                    recv,
                    &[(inb.as_mut_ptr(), size, 1)],
                    &mut [std::ptr::null_mut()],
                )
            }
        })
        .map_err(|e| format!("{e:?}"))?;
        let s = post(TIMEOUT, || {
            // SAFETY: the buffer outlives the request, which completes (or its comm closes) before the buffer is dropped.
            unsafe { net.isend(send, out.as_ptr(), size, 1, std::ptr::null_mut()) }
        })
        .map_err(|e| format!("{e:?}"))?;
        net.wait(s, 1, TIMEOUT)
            .map_err(|e| format!("send: {e:?}"))?;
        net.wait(r, 1, TIMEOUT)
            .map_err(|e| format!("recv: {e:?}"))?;
        if i >= 100 {
            rtts.push(t.elapsed());
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    echo.finish()?;
    rtts.sort();
    let after = [
        raw(Layout::Shared)?,
        raw(Layout::PerDirectionPeeked)?,
        raw(Layout::PerDirection)?,
    ];
    let us = |times: &[Duration], q: f64| {
        times[((times.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6
    };
    let airamp = us(&rtts, 0.5);
    // p50 of each raw layout, before and after airamp's run.
    let per_direction = [us(&before[0], 0.5), us(&after[2], 0.5)];
    let peeked = [us(&before[1], 0.5), us(&after[1], 0.5)];
    let shared = [us(&before[2], 0.5), us(&after[0], 0.5)];
    let mean = |pair: [f64; 2]| (pair[0] + pair[1]) / 2.0;
    let ratio = airamp / mean(per_direction);
    let ratio_peeked = airamp / mean(peeked);
    if o.flag("json") {
        let v = serde_json::json!({
            "bench": "latency",
            "message_bytes": size,
            "iterations": iters,
            "round_trip_us": {"p50": airamp, "p90": us(&rtts, 0.9), "p99": us(&rtts, 0.99)},
            "raw_tcp_p50_us": {
                "connection_per_direction": per_direction,
                "connection_per_direction_peeked": peeked,
                "one_connection": shared,
            },
            "airamp_over_raw_tcp": ratio,
            "airamp_over_raw_tcp_peeked": ratio_peeked,
        });
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "airamp bench latency: {size}-byte round trip through the C ABI over {iters} iterations: p50 {airamp:.1}µs  p90 {:.1}µs  p99 {:.1}µs",
        us(&rtts, 0.9),
        us(&rtts, 0.99)
    );
    println!(
        "  raw TCP in the same run, p50 before / after: a connection per direction (NCCL's layout) {:.1} / {:.1}µs, the same with peeked receives {:.1} / {:.1}µs, one connection both ways {:.1} / {:.1}µs",
        per_direction[0], per_direction[1], peeked[0], peeked[1], shared[0], shared[1]
    );
    println!("  airamp / raw TCP with a connection per direction: {ratio:.2}x (with peeked receives: {ratio_peeked:.2}x)");
    Ok(ExitCode::SUCCESS)
}

/// The far end of `bench latency`: echoes every message back.
pub fn latency_echo(o: &Opts) -> Result<(), String> {
    let iters = o.num("iters", 5000)? + 100;
    let size = o.bytes("size", 8)? as usize;
    let lib = open(o)?;
    let net = init(&lib)?;
    let mut handle = handle_from_hex(&from_parent()?)?;
    let (mine, listen) = net.listen(0).map_err(|e| format!("listen: {e:?}"))?;
    to_parent(&handle_to_hex(&mine))?;
    let send = net.connect_wait(0, &mut handle, TIMEOUT)?;
    let recv = net.accept_wait(listen, TIMEOUT)?;
    let mut buf = vec![0u8; size];
    for _ in 0..iters {
        let r = post(TIMEOUT, || {
            // SAFETY: the buffer outlives the request, which completes (or its comm closes) before the buffer is dropped.
            unsafe {
                net.irecv(
                    recv,
                    &[(buf.as_mut_ptr(), size, 1)],
                    &mut [std::ptr::null_mut()],
                )
            }
        })
        .map_err(|e| format!("{e:?}"))?;
        net.wait(r, 1, TIMEOUT)
            .map_err(|e| format!("recv: {e:?}"))?;
        let s = post(TIMEOUT, || {
            // SAFETY: the buffer outlives the request, which completes (or its comm closes) before the buffer is dropped.
            unsafe { net.isend(send, buf.as_ptr(), size, 1, std::ptr::null_mut()) }
        })
        .map_err(|e| format!("{e:?}"))?;
        net.wait(s, 1, TIMEOUT)
            .map_err(|e| format!("send: {e:?}"))?;
    }
    Ok(())
}

pub fn codec(values: Option<usize>, json: bool) -> Result<ExitCode, String> {
    let n = values.unwrap_or(1 << 20);
    let b = airamp::codec::bench::bench(n, &airamp::codec::WireFormat::ALL);
    if json {
        let rows: Vec<_> = b
            .rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "op": r.op,
                    "format": format!("{:?}", r.format),
                    "backend": format!("{:?}", r.backend),
                    "gvalues_per_s": r.gvalues_per_s,
                    "gbytes_per_s": r.gbytes_per_s,
                })
            })
            .collect();
        let v = serde_json::json!({
            "bench": "codec",
            "values": b.n_values,
            "memcpy_gbytes_per_s": b.memcpy_gbytes_per_s,
            "exact_fold_gbytes_per_s": b.exact_fold_gbytes_per_s,
            "rows": rows,
        });
        println!("{v}");
    } else {
        println!("{b}");
    }
    Ok(ExitCode::SUCCESS)
}

/// CPU used by an idle process holding an open connection (both ends) and
/// the metrics exporter: what airamp costs between collectives.
pub fn idle(o: &Opts) -> Result<ExitCode, String> {
    let secs = o.num("seconds", 10)? as u64;
    let lib = open(o)?;
    let net = init(&lib)?;
    let (send, recv, _listen) = net.local_pair(0, TIMEOUT)?;
    let cpu = || -> Result<f64, String> {
        let stat = std::fs::read_to_string("/proc/self/stat").map_err(|e| e.to_string())?;
        let after_comm = stat.rsplit_once(')').ok_or("bad /proc/self/stat")?.1;
        let f: Vec<&str> = after_comm.split_whitespace().collect();
        let ticks: f64 = f[11].parse::<f64>().map_err(|e| e.to_string())?
            + f[12].parse::<f64>().map_err(|e| e.to_string())?;
        Ok(ticks / 100.0)
    };
    let before = cpu()?;
    let start = Instant::now();
    // One second at a time, so the bar can move; nothing draws between.
    let pb = progress::bar(o, secs, "bench idle", "s");
    for _ in 0..secs {
        std::thread::sleep(Duration::from_secs(1));
        pb.inc(1);
    }
    pb.finish_and_clear();
    let used = cpu()? - before;
    let threads = std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0);
    let idle_s = start.elapsed().as_secs_f64();
    if o.flag("json") {
        let v = serde_json::json!({
            "bench": "idle",
            "threads": threads,
            "idle_s": idle_s,
            "cpu_s": used,
            "percent_of_one_core": 100.0 * used / idle_s,
        });
        println!("{v}");
    } else {
        println!(
            "airamp bench idle: {threads} threads, one open connection, {idle_s:.1} s idle: {used:.3} s CPU = {:.3}% of one core",
            100.0 * used / idle_s
        );
    }
    net.close_send(send).map_err(|e| format!("{e:?}"))?;
    net.close_recv(recv).map_err(|e| format!("{e:?}"))?;
    Ok(ExitCode::SUCCESS)
}
