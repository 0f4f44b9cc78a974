//! `airamp calibrate`: measures the link (through the plugin's own C ABI,
//! as NCCL drives it) and the FP8 codec on this CPU, and writes the
//! `[tuner]` profile every rank must then share. Run it once, offline, on
//! a representative pair of hosts; distribute the one resulting profile
//! (config file or `AIRAMP_*` env) to every host: ranks never calibrate
//! locally, so they cannot disagree.
//!
//! ```text
//! airamp calibrate --loopback [--out FILE]          this host, through loopback
//! airamp calibrate --serve PORT                      far end (host B)
//! airamp calibrate --peer HOST:PORT [--out FILE]     near end (host A)
//! ```
//!
//! `--serve`/`--peer` exchange the plugin's listen handles over a plain TCP
//! control connection to PORT, then measure over the plugin's connections.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use airamp::abi::client::{handle_from_hex, handle_to_hex, post, Comm, Library, Net, NetVersion};
use airamp::codec::bench::bench as codec_bench;

use crate::{progress, Opts};

const TIMEOUT: Duration = Duration::from_secs(60);
/// Bandwidth messages: big enough to reach line rate, as NCCL's chunks do.
const MSG: usize = 4 << 20;
const WINDOW: usize = 8;

/// What one calibration measured.
struct Measured {
    gbps: f64,
    latency_us: f64,
    encode_gvps: f64,
    decode_gvps: f64,
}

fn open_net(lib: &Library) -> Result<Net<'_>, String> {
    let mut net = lib.net(NetVersion::V12)?;
    net.init(None).map_err(|e| format!("init: {e:?}"))?;
    if net.devices().map_err(|e| format!("devices: {e:?}"))? < 1 {
        return Err("the plugin found no network device".into());
    }
    Ok(net)
}

fn send(
    net: &Net<'_>,
    comm: Comm,
    buf: &[u8],
    tag: i32,
) -> Result<airamp::abi::client::Request, String> {
    post(TIMEOUT, || {
        // SAFETY: every caller waits for the request before `buf` is dropped or reused.
        unsafe { net.isend(comm, buf.as_ptr(), buf.len(), tag, std::ptr::null_mut()) }
    })
    .map_err(|e| format!("isend: {e:?}"))
}

fn recv(
    net: &Net<'_>,
    comm: Comm,
    buf: &mut [u8],
    tag: i32,
) -> Result<airamp::abi::client::Request, String> {
    post(TIMEOUT, || {
        // SAFETY: every caller waits for the request before `buf` is dropped or reused.
        unsafe {
            net.irecv(
                comm,
                &[(buf.as_mut_ptr(), buf.len(), tag)],
                &mut [std::ptr::null_mut()],
            )
        }
    })
    .map_err(|e| format!("irecv: {e:?}"))
}

fn wait(net: &Net<'_>, r: airamp::abi::client::Request) -> Result<(), String> {
    net.wait(r, 1, TIMEOUT)
        .map(drop)
        .map_err(|e| format!("wait: {e:?}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Streams `count` messages of [`MSG`] bytes from `tx` to `rx` in one
/// process; returns Gbit/s.
fn loopback_bandwidth(net: &Net<'_>, tx: Comm, rx: Comm, count: usize) -> Result<f64, String> {
    let src = vec![0x5Au8; MSG];
    let mut dst: Vec<Vec<u8>> = (0..WINDOW).map(|_| vec![0u8; MSG]).collect();
    let start = Instant::now();
    let mut inflight = VecDeque::new();
    for i in 0..count {
        if inflight.len() == WINDOW {
            let (s, r) = inflight.pop_front().expect("full");
            wait(net, s)?;
            wait(net, r)?;
        }
        let r = recv(net, rx, &mut dst[i % WINDOW], 2)?;
        let s = send(net, tx, &src, 2)?;
        inflight.push_back((s, r));
    }
    for (s, r) in inflight {
        wait(net, s)?;
        wait(net, r)?;
    }
    Ok((count * MSG) as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e9)
}

fn loopback(o: &Opts) -> Result<(f64, f64), String> {
    let lib = Library::open(&o.plugin()?)?;
    let net = open_net(&lib)?;
    let (tx, rx, listen) = net.local_pair(0, TIMEOUT)?;
    let mut one_way = Vec::new();
    let out = [7u8; 8];
    let mut inb = [0u8; 8];
    let count = o.num("messages", 256)?.max(WINDOW);
    let pb = progress::bar(o, (2100 + count) as u64, "calibrate: loopback", "messages");
    pb.set_message("round trips");
    for i in 0..2100 {
        let t = Instant::now();
        let r = recv(&net, rx, &mut inb, 1)?;
        let s = send(&net, tx, &out, 1)?;
        wait(&net, s)?;
        wait(&net, r)?;
        if i >= 100 {
            one_way.push(t.elapsed().as_secs_f64() * 1e6);
        }
        pb.inc(1);
    }
    pb.set_message("stream");
    let gbps = loopback_bandwidth(&net, tx, rx, count)?;
    pb.finish_and_clear();
    net.close_send(tx).map_err(|e| format!("{e:?}"))?;
    net.close_recv(rx).map_err(|e| format!("{e:?}"))?;
    net.close_listen(listen).map_err(|e| format!("{e:?}"))?;
    Ok((gbps, median(one_way)))
}

fn line(r: &mut BufReader<TcpStream>) -> Result<String, String> {
    let mut s = String::new();
    match r.read_line(&mut s) {
        Ok(0) => Err("control connection closed".into()),
        Ok(_) => Ok(s.trim().to_string()),
        Err(e) => Err(format!("control connection: {e}")),
    }
}

fn say(w: &mut TcpStream, s: &str) -> Result<(), String> {
    writeln!(w, "{s}")
        .and_then(|_| w.flush())
        .map_err(|e| format!("control connection: {e}"))
}

/// The far end: echoes pings, sinks the stream, acknowledges it. Serves
/// one calibration, then exits.
pub fn serve(o: &Opts, port: &str) -> Result<ExitCode, String> {
    let lib = Library::open(&o.plugin()?)?;
    let net = open_net(&lib)?;
    let ctl = TcpListener::bind((
        "0.0.0.0",
        port.parse::<u16>()
            .map_err(|e| format!("port {port}: {e}"))?,
    ))
    .map_err(|e| format!("bind control port {port}: {e}"))?;
    eprintln!("airamp calibrate: waiting for --peer on control port {port}");
    let (mut w, from) = ctl.accept().map_err(|e| e.to_string())?;
    eprintln!("airamp calibrate: peer {from}");
    let mut r = BufReader::new(w.try_clone().map_err(|e| e.to_string())?);
    let (handle, listen) = net.listen(0).map_err(|e| format!("listen: {e:?}"))?;
    say(&mut w, &handle_to_hex(&handle))?;
    let mut back = handle_from_hex(&line(&mut r)?)?;
    let rx = net.accept_wait(listen, TIMEOUT)?;
    let tx = net.connect_wait(0, &mut back, TIMEOUT)?;
    let params = line(&mut r)?;
    let mut it = params.split_whitespace().map(|x| x.parse::<usize>());
    let (Some(Ok(pings)), Some(Ok(count))) = (it.next(), it.next()) else {
        return Err(format!("bad parameters from peer: {params:?}"));
    };
    let mut buf = [0u8; 8];
    for _ in 0..pings {
        let rq = recv(&net, rx, &mut buf, 1)?;
        wait(&net, rq)?;
        let s = send(&net, tx, &buf, 1)?;
        wait(&net, s)?;
    }
    let mut bufs: Vec<Vec<u8>> = (0..WINDOW).map(|_| vec![0u8; MSG]).collect();
    let mut inflight = VecDeque::new();
    for i in 0..count {
        if inflight.len() == WINDOW {
            wait(&net, inflight.pop_front().expect("full"))?;
        }
        inflight.push_back(recv(&net, rx, &mut bufs[i % WINDOW], 2)?);
    }
    for rq in inflight {
        wait(&net, rq)?;
    }
    let s = send(&net, tx, &[1u8; 8], 3)?;
    wait(&net, s)?;
    let _ = line(&mut r); // the peer says when it is done
    net.close_send(tx).map_err(|e| format!("{e:?}"))?;
    net.close_recv(rx).map_err(|e| format!("{e:?}"))?;
    net.close_listen(listen).map_err(|e| format!("{e:?}"))?;
    eprintln!("airamp calibrate: served one calibration");
    Ok(ExitCode::SUCCESS)
}

/// The near end: connects to `--serve`, measures round trips and a stream.
fn peer(o: &Opts, addr: &str) -> Result<(f64, f64), String> {
    let lib = Library::open(&o.plugin()?)?;
    let net = open_net(&lib)?;
    let mut w =
        TcpStream::connect(addr).map_err(|e| format!("control connection to {addr}: {e}"))?;
    let mut r = BufReader::new(w.try_clone().map_err(|e| e.to_string())?);
    let mut theirs = handle_from_hex(&line(&mut r)?)?;
    let (mine, listen) = net.listen(0).map_err(|e| format!("listen: {e:?}"))?;
    say(&mut w, &handle_to_hex(&mine))?;
    let tx = net.connect_wait(0, &mut theirs, TIMEOUT)?;
    let rx = net.accept_wait(listen, TIMEOUT)?;
    let pings = 2100;
    let count = o.num("messages", 256)?.max(WINDOW);
    say(&mut w, &format!("{pings} {count}"))?;
    let out = [7u8; 8];
    let mut inb = [0u8; 8];
    let mut one_way = Vec::new();
    let pb = progress::bar(
        o,
        (pings + count) as u64,
        &format!("calibrate: peer {addr}"),
        "messages",
    );
    pb.set_message("round trips");
    for i in 0..pings {
        let t = Instant::now();
        let rq = recv(&net, rx, &mut inb, 1)?;
        let s = send(&net, tx, &out, 1)?;
        wait(&net, s)?;
        wait(&net, rq)?;
        if i >= 100 {
            one_way.push(t.elapsed().as_secs_f64() * 1e6 / 2.0);
        }
        pb.inc(1);
    }
    pb.set_message("stream");
    let src = vec![0x5Au8; MSG];
    let mut ack = [0u8; 8];
    let ack_rq = recv(&net, rx, &mut ack, 3)?;
    let start = Instant::now();
    let mut inflight = VecDeque::new();
    for _ in 0..count {
        if inflight.len() == WINDOW {
            wait(&net, inflight.pop_front().expect("full"))?;
        }
        inflight.push_back(send(&net, tx, &src, 2)?);
        pb.inc(1);
    }
    for s in inflight {
        wait(&net, s)?;
    }
    wait(&net, ack_rq)?;
    let secs = start.elapsed().as_secs_f64();
    pb.finish_and_clear();
    say(&mut w, "done")?;
    net.close_send(tx).map_err(|e| format!("{e:?}"))?;
    net.close_recv(rx).map_err(|e| format!("{e:?}"))?;
    net.close_listen(listen).map_err(|e| format!("{e:?}"))?;
    Ok(((count * MSG) as f64 * 8.0 / secs / 1e9, median(one_way)))
}

/// `airamp doctor --peer`: the reachability test through the plugin
/// `lib`, against `airamp calibrate --serve PORT` at `addr`. The control
/// connection (5 s to connect), then the plugin's own connections both
/// ways, and [`DOCTOR_PINGS`] 8-byte round trips; no stream. Returns a
/// one-line summary.
pub fn ping_peer(lib: &std::path::Path, addr: &str) -> Result<String, String> {
    let target = std::net::ToSocketAddrs::to_socket_addrs(addr)
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr}: no address"))?;
    let mut w = TcpStream::connect_timeout(&target, Duration::from_secs(5)).map_err(|e| {
        if target.to_string() == addr {
            format!("control connection (plain TCP): {e}")
        } else {
            format!("control connection (plain TCP) to {target}: {e}")
        }
    })?;
    w.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut r = BufReader::new(w.try_clone().map_err(|e| e.to_string())?);
    let lib = Library::open(lib)?;
    let net = open_net(&lib)?;
    let mut theirs = handle_from_hex(&line(&mut r)?)?;
    let (mine, listen) = net.listen(0).map_err(|e| format!("listen: {e:?}"))?;
    say(&mut w, &handle_to_hex(&mine))?;
    let tx = net
        .connect_wait(0, &mut theirs, TIMEOUT)
        .map_err(|e| format!("plugin connect to the peer: {e}"))?;
    let rx = net
        .accept_wait(listen, TIMEOUT)
        .map_err(|e| format!("plugin accept from the peer: {e}"))?;
    say(&mut w, &format!("{DOCTOR_PINGS} 0"))?;
    let out = [7u8; 8];
    let mut inb = [0u8; 8];
    let mut rtt = Vec::new();
    for _ in 0..DOCTOR_PINGS {
        let t = Instant::now();
        let rq = recv(&net, rx, &mut inb, 1)?;
        let s = send(&net, tx, &out, 1)?;
        wait(&net, s)?;
        wait(&net, rq)?;
        rtt.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let mut ack = [0u8; 8];
    let ack_rq = recv(&net, rx, &mut ack, 3)?;
    wait(&net, ack_rq)?;
    say(&mut w, "done")?;
    net.close_send(tx).map_err(|e| format!("{e:?}"))?;
    net.close_recv(rx).map_err(|e| format!("{e:?}"))?;
    net.close_listen(listen).map_err(|e| format!("{e:?}"))?;
    Ok(format!(
        "{addr}: plugin connections both ways, {DOCTOR_PINGS} round trips of 8 bytes, median {:.1} us (through {})",
        median(rtt),
        net.name()
    ))
}

/// Round trips `airamp doctor --peer` makes.
pub const DOCTOR_PINGS: usize = 20;

/// Codec speed on this core (the best backend) in the configured wire
/// format, G values/s.
fn codec() -> (f64, f64) {
    let b = codec_bench(1 << 20, &[airamp::config::global().compression.format]);
    let best = |op: &str| {
        b.rows
            .iter()
            .filter(|r| r.op == op)
            .map(|r| r.gvalues_per_s)
            .fold(0.0, f64::max)
    };
    (best("encode bf16"), best("decode+acc"))
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn profile_toml(m: &Measured, how: &str) -> String {
    format!(
        "# airamp calibrate ({how}). Give every host the same [tuner] values:\n\
         # the tuner's choice must be identical on every rank.\n\
         [tuner]\n\
         link_gbps = {}\n\
         link_latency_us = {}\n\
         encode_gvps = {}\n\
         decode_gvps = {}\n",
        round(m.gbps),
        round(m.latency_us),
        round(m.encode_gvps),
        round(m.decode_gvps)
    )
}

pub fn run(o: &Opts) -> Result<ExitCode, String> {
    if let Some(port) = o.get("serve") {
        return serve(o, port);
    }
    let (how, (gbps, latency_us)) = match (o.get("peer"), o.flag("loopback")) {
        (Some(addr), false) => (format!("peer {addr}"), peer(o, addr)?),
        (None, true) => ("loopback: this host only, not a real link".to_string(), loopback(o)?),
        _ => {
            return Err(
                "usage: airamp calibrate (--loopback | --peer HOST:PORT | --serve PORT) [--out FILE] [--force] [--plugin SO] [--messages N]".into(),
            )
        }
    };
    let pb = progress::spinner(o, "calibrate: codec throughput");
    let (encode_gvps, decode_gvps) = codec();
    pb.finish_and_clear();
    if !(gbps.is_finite() && gbps > 0.0 && encode_gvps > 0.0 && decode_gvps > 0.0) {
        return Err("measurement failed (zero or non-finite result)".into());
    }
    let m = Measured {
        gbps,
        latency_us,
        encode_gvps,
        decode_gvps,
    };
    let text = profile_toml(&m, &how);
    eprintln!(
        "airamp calibrate: link {:.3} Gbit/s, {:.1} us one way; codec encode {:.3}, decode+acc {:.3} G values/s",
        gbps, latency_us, encode_gvps, decode_gvps
    );
    match o.get("out") {
        None => print!("{text}"),
        Some(path) => {
            if std::path::Path::new(path).exists() && !o.flag("force") {
                return Err(format!(
                    "{path} exists: merge the profile below into it by hand, or pass --force to replace it\n{text}"
                ));
            }
            std::fs::write(path, &text).map_err(|e| format!("{path}: {e}"))?;
            eprintln!("airamp calibrate: wrote {path}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_is_valid_config() {
        let m = Measured {
            gbps: 4.9123456,
            latency_us: 51.25,
            encode_gvps: 1.9,
            decode_gvps: 6.9,
        };
        let text = profile_toml(&m, "test");
        let (c, d) = airamp::config::Config::from_sources(
            Some((std::path::Path::new("p.toml"), text.as_str())),
            std::iter::empty::<(String, String)>(),
        );
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(c.tuner.link_gbps, Some(4.912));
        assert_eq!(c.tuner.link_latency_us, Some(51.25));
        let (_, src) = airamp::tuner::LinkProfile::from_config(&c.tuner);
        assert_eq!(src, airamp::tuner::ProfileSource::Calibrated);
    }
}
