//! `airamp tuner show`: the tuner's allreduce decisions for a job shape,
//! from the same pure functions the plugin runs (`airamp::tuner`), on the
//! configured profile or, with `--metrics`, on the figures a running job's
//! tuner reports (agreed in the collective network's `connect`).

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use airamp::config::{self, Config};
use airamp::tuner::{self, LinkProfile, Path as TunerPath, Policy};

use crate::Opts;

/// Loads `--config FILE` (plus `AIRAMP_*` env), or the process's config.
pub fn load_config(o: &Opts) -> Result<Config, String> {
    let (cfg, diags) = match o.get("config") {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
            let env: Vec<(String, String)> = std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect();
            Config::from_sources(Some((Path::new(path), text.as_str())), env)
        }
        None => Config::load_from_process(),
    };
    for d in diags.iter().filter(|d| d.level == config::Level::Warn) {
        eprintln!("{d}");
    }
    Ok(cfg)
}

fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 => format!("{} MiB", b >> 20),
        b => format!("{} KiB", b >> 10),
    }
}

fn human_time(us: f64) -> String {
    if us >= 1e6 {
        format!("{:.2} s", us / 1e6)
    } else if us >= 1e3 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{us:.1} us")
    }
}

/// One communicator's tuner figures, as its metrics report them.
#[derive(Debug, Default, Clone, PartialEq)]
struct Reported {
    source: String,
    link_bytes_per_s: Option<f64>,
    latency_s: Option<f64>,
    encode_per_s: Option<f64>,
    decode_per_s: Option<f64>,
}

/// `name{k="v",...} value` of one exposition line (labels without escapes,
/// as airamp's tuner families have none).
fn series(line: &str) -> Option<(&str, BTreeMap<&str, &str>, f64)> {
    let (name, rest) = line.split_once('{')?;
    let (labels, value) = rest.rsplit_once("} ")?;
    let mut map = BTreeMap::new();
    for kv in labels.split(',').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=')?;
        map.insert(k, v.strip_prefix('"')?.strip_suffix('"')?);
    }
    let value = match value.trim() {
        "+Inf" => f64::INFINITY,
        v => v.parse().ok()?,
    };
    Some((name, map, value))
}

/// Every communicator's figures in Prometheus text `text`, by `comm` label.
fn reported(text: &str) -> BTreeMap<String, Reported> {
    let mut out: BTreeMap<String, Reported> = BTreeMap::new();
    for (name, labels, value) in text.lines().filter_map(series) {
        let (Some(comm), Some(source)) = (labels.get("comm"), labels.get("source")) else {
            continue;
        };
        let r = out.entry(comm.to_string()).or_default();
        r.source = source.to_string();
        match (name, labels.get("stage").copied()) {
            ("airamp_tuner_link_bytes_per_second", _) => r.link_bytes_per_s = Some(value),
            ("airamp_tuner_link_latency_seconds", _) => r.latency_s = Some(value),
            ("airamp_tuner_codec_values_per_second", Some("encode")) => {
                r.encode_per_s = Some(value)
            }
            ("airamp_tuner_codec_values_per_second", Some("decode")) => {
                r.decode_per_s = Some(value)
            }
            _ => {}
        }
    }
    out
}

/// The exporter's text at `http://HOST:PORT[/PATH]`, or a file (the
/// textfile collector's, or a saved scrape).
pub(crate) fn fetch_metrics(src: &str) -> Result<String, String> {
    let Some(rest) = src.strip_prefix("http://") else {
        return std::fs::read_to_string(src).map_err(|e| format!("{src}: {e}"));
    };
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/metrics".to_string()), |(h, p)| {
            (h, format!("/{p}"))
        });
    let addr = std::net::ToSocketAddrs::to_socket_addrs(host)
        .map_err(|e| format!("{host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}: no address"))?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("{src}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").map_err(|e| format!("{src}: {e}"))?;
    let mut body = String::new();
    s.read_to_string(&mut body)
        .map_err(|e| format!("{src}: {e}"))?;
    let (head, text) = body
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{src}: not an HTTP response"))?;
    if !head.starts_with("HTTP/1.") || head.split(' ').nth(1).is_none_or(|c| c != "200") {
        return Err(format!("{src}: {}", head.lines().next().unwrap_or("")));
    }
    Ok(text.to_string())
}

/// The profile a running job's tuner reported for one communicator.
fn profile_from_metrics(
    o: &Opts,
    src: &str,
    call_overhead_us: f64,
) -> Result<(LinkProfile, String), String> {
    let all = reported(&fetch_metrics(src)?);
    let (comm, r) = match o.get("comm") {
        Some(c) => {
            let want = u64::from_str_radix(c.trim_start_matches("0x"), 16)
                .map(|id| format!("{id:#018x}"))
                .unwrap_or_else(|_| c.to_string());
            let r = all
                .get(&want)
                .ok_or_else(|| format!("{src}: no tuner figures for comm {want}"))?;
            (want, r.clone())
        }
        None if all.len() == 1 => {
            let (c, r) = all.iter().next().expect("one");
            (c.clone(), r.clone())
        }
        None => {
            let list: Vec<String> = all
                .iter()
                .map(|(c, r)| format!("  comm {c} ({}): {:?} B/s", r.source, r.link_bytes_per_s))
                .collect();
            return Err(format!(
                "{src}: {} communicators, pick one with --comm ID:\n{}",
                all.len(),
                list.join("\n")
            ));
        }
    };
    let need = |v: Option<f64>, what| v.ok_or_else(|| format!("{src}: comm {comm} has no {what}"));
    let profile = LinkProfile {
        gbps: need(r.link_bytes_per_s, "link bandwidth")? * 8.0 / 1e9,
        latency_us: need(r.latency_s, "latency")? * 1e6,
        encode_gvps: need(r.encode_per_s, "encode speed")? / 1e9,
        decode_gvps: need(r.decode_per_s, "decode speed")? / 1e9,
        call_overhead_us,
    };
    Ok((
        profile,
        format!("metrics of {src}, comm {comm}, source {}", r.source),
    ))
}

pub fn show(o: &Opts) -> Result<ExitCode, String> {
    let ranks = o.num("ranks", 2)?;
    let nodes = o.num("nodes", 2)?;
    if ranks == 0 || nodes == 0 || nodes > ranks {
        return Err("--ranks and --nodes must be >= 1, nodes <= ranks".into());
    }
    let mut cfg = load_config(o)?;
    if o.flag("fp8") {
        cfg.compression.fp8_allreduce = true;
    }
    let (profile, source) = match o.get("metrics") {
        Some(src) => profile_from_metrics(o, src, cfg.tuner.call_overhead_us)?,
        None => {
            let (p, s) = LinkProfile::from_config(&cfg.tuner);
            (p, s.to_string())
        }
    };
    let policy = Policy::from_config(&cfg);
    // The compressed column is shown even with FP8 off, for comparison.
    let what_if = Policy {
        fp8: Some(cfg.compression.format),
        ..policy
    };
    println!("airamp tuner show: allreduce, {ranks} ranks on {nodes} nodes");
    println!("profile ({source}): {profile}");
    println!(
        "tuner {}, fp8 allreduce {} ({}), min_gain {}",
        if cfg.tuner.enabled { "on" } else { "OFF" },
        if policy.fp8.is_some() { "on" } else { "off" },
        cfg.compression.format,
        policy.min_gain
    );
    println!(
        "raw = ring model (NCCL's own cost table replaces it inside NCCL); collnet = airamp's FP8 collective network, bf16 assumed\n"
    );
    println!(
        "{:>8}  {:>10}  {:>12}  {:>7}  decision",
        "size", "raw", "collnet fp8", "speedup"
    );
    // The tuner's channel rule, as it applies where NCCL runs a ring.
    let channel_rule = tuner::Tuner::new(ranks, nodes, profile, policy);
    let one_channel = |bytes| {
        let call = tuner::Call {
            func: tuner::FUNC_ALLREDUCE,
            bytes,
            pipe_ops: 1,
        };
        channel_rule
            .channels(call, Some((tuner::ALGO_RING, tuner::PROTO_SIMPLE)))
            .is_some()
    };
    let mut bytes: u64 = 4 << 10;
    while bytes <= 1 << 30 {
        let c = tuner::decide_allreduce(bytes, ranks, nodes, &profile, &policy);
        let w = tuner::decide_allreduce(bytes, ranks, nodes, &profile, &what_if);
        let decision = if !cfg.tuner.enabled {
            "NCCL decides (tuner off)".to_string()
        } else if nodes < 2 {
            "NCCL decides (one node: no CollNet)".to_string()
        } else {
            match c.path {
                TunerPath::CompressedCollNet => "compressed CollNet".to_string(),
                TunerPath::Raw if one_channel(bytes) => {
                    format!("raw, NCCL decides ({:?}), one channel", c.declined)
                }
                TunerPath::Raw => format!("raw, NCCL decides ({:?})", c.declined),
            }
        };
        println!(
            "{:>8}  {:>10}  {:>12}  {:>6.2}x  {decision}",
            human_bytes(bytes),
            human_time(w.raw_us),
            human_time(w.collnet_us),
            w.raw_us / w.collnet_us
        );
        bytes *= 4;
    }
    println!(
        "\nother collectives: left to NCCL (the tuner only keeps NCCL from picking airamp's CollNet where its in-network cost model does not hold)"
    );
    if cfg.tuner.enabled && one_channel(policy.single_channel_bytes) {
        println!(
            "one channel: where NCCL runs ring or tree, an allreduce up to {} B runs on one NCCL channel (tuner.single_channel_bytes: one rank per node and per NVLink domain)",
            policy.single_channel_bytes
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_the_tuner_families() {
        let text = "# HELP x y\n\
airamp_tuner_link_bytes_per_second{comm=\"0x0000000000000abc\",source=\"agreed\"} 312500000\n\
airamp_tuner_link_latency_seconds{comm=\"0x0000000000000abc\",source=\"agreed\"} 0.00004\n\
airamp_tuner_codec_values_per_second{comm=\"0x0000000000000abc\",source=\"agreed\",stage=\"encode\"} 1500000000\n\
airamp_tuner_codec_values_per_second{comm=\"0x0000000000000abc\",source=\"agreed\",stage=\"decode\"} 6500000000\n\
airamp_tuner_crossover_bytes{comm=\"0x0000000000000abc\",source=\"agreed\"} +Inf\n\
airamp_tuner_decisions_total{collective=\"allreduce\",algorithm=\"ring\",protocol=\"ll\"} 3\n";
        let all = reported(text);
        assert_eq!(all.len(), 1);
        let r = &all["0x0000000000000abc"];
        assert_eq!(r.source, "agreed");
        assert_eq!(r.link_bytes_per_s, Some(312_500_000.0));
        assert_eq!(r.latency_s, Some(0.00004));
        assert_eq!((r.encode_per_s, r.decode_per_s), (Some(1.5e9), Some(6.5e9)));
        assert_eq!(series("junk"), None);
        assert_eq!(series("a{b=\"c\"} +Inf").map(|s| s.2), Some(f64::INFINITY));
    }
}
