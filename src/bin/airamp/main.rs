//! `airamp`: the operator's command line.
//!
//! ```text
//! airamp config check [FILE]   validate a config file, print the effective config
//! airamp devices               interfaces the TCP transport sees and uses
//! airamp doctor [--peer HOST:PORT] [--json]
//!                              check this node: plugin found and loadable, NCCL_* settings, config, port
//! airamp bench net [OPTS]      plugin throughput through the C ABI next to iperf3
//! airamp bench latency [OPTS]  8-byte round trip of one message (8 bytes by default) through the C ABI
//! airamp bench codec [N]       codec speed (E4M3, E5M2, INT8) on this core next to memcpy
//! airamp bench collnet [OPTS]  allreduce through the collective network: exact vs compressed, tuner pick
//! airamp bench idle            CPU used while a connection sits idle
//! airamp demo [OPTS]           ring allreduce across processes through the C ABI
//! airamp demo --rank R --ranks N --rendezvous DIR [--check-metrics]
//!                              one rank of it, started by a launcher (srun)
//! airamp calibrate [OPTS]      measure link + codec, print the [tuner] profile
//! airamp tuner show [OPTS]     the tuner's allreduce decisions for a job shape
//! airamp gpu selftest          GPU codec kernels vs the CPU codec, bit for bit
//! airamp gpu bench [OPTS]      GPU codec throughput next to memcpy
//! airamp gpu compile-check     NVRTC compile of the kernels for sm_80/90/100 (no GPU needed)
//! ```

mod bench;
mod calibrate;
mod collbench;
mod demo;
mod doctor;
mod gpu;
mod peer;
mod rendezvous;
mod tuner;

use std::path::PathBuf;
use std::process::ExitCode;

use airamp::config::{self, Config};

fn usage() -> ExitCode {
    eprintln!(
        "usage:\n  airamp config check [FILE]\n  airamp devices\n  airamp doctor [--peer HOST:PORT] [--json]\n  airamp bench net [--plugin SO] [--size BYTES] [--total BYTES] [--window N] [--no-iperf]\n  airamp bench latency [--plugin SO] [--iters N] [--size BYTES]\n  airamp bench codec [VALUES]\n  airamp bench collnet [--plugin SO] [--ranks N] [--min BYTES] [--max BYTES] [--rounds N]\n  airamp bench idle [--seconds N]\n  airamp demo [--plugin SO] [--ranks N] [--count FLOATS] [--iters N]\n  airamp demo --rank R --ranks N --rendezvous DIR [--plugin SO] [--count FLOATS] [--iters N] [--check-metrics]\n  airamp calibrate (--loopback | --peer HOST:PORT | --serve PORT) [--out FILE] [--force] [--plugin SO]\n  airamp tuner show [--ranks R] [--nodes N] [--config FILE] [--fp8] [--metrics http://HOST:PORT|FILE [--comm ID]]\n  airamp gpu selftest [--device N]\n  airamp gpu bench [--device N] [--mib MIB] [--iters N] [--tune]\n  airamp gpu compile-check"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match words.as_slice() {
        ["config", "check", rest @ ..] => config_check(rest.first().copied()),
        ["devices"] => devices(),
        ["doctor", rest @ ..] => {
            let o = Opts::parse(rest);
            doctor::run(&doctor::DoctorOpts {
                peer: o.get("peer").map(str::to_string),
                json: o.flag("json"),
            })
        }
        ["bench", "net", rest @ ..] => bench::net(&Opts::parse(rest)),
        ["bench", "latency", rest @ ..] => bench::latency(&Opts::parse(rest)),
        ["bench", "idle", rest @ ..] => bench::idle(&Opts::parse(rest)),
        ["bench", "collnet", rest @ ..] => collbench::run(&Opts::parse(rest)),
        ["bench", "codec", rest @ ..] => bench::codec(rest.first().and_then(|s| s.parse().ok())),
        ["demo", rest @ ..] => demo::run(&Opts::parse(rest)),
        ["calibrate", rest @ ..] => calibrate::run(&Opts::parse(rest)),
        ["tuner", "show", rest @ ..] => tuner::show(&Opts::parse(rest)),
        ["gpu", "selftest", rest @ ..] => gpu::selftest(&Opts::parse(rest)),
        ["gpu", "bench", rest @ ..] => gpu::bench(&Opts::parse(rest)),
        ["gpu", "compile-check", rest @ ..] => gpu::compile_check(&Opts::parse(rest)),
        [peer::ROLE_FLAG, rest @ ..] => peer::run_role(rest),
        _ => return usage(),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("airamp: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--key value` options shared by the subcommands.
#[derive(Clone, Debug, Default)]
pub struct Opts {
    pairs: Vec<(String, String)>,
    flags: Vec<String>,
}

impl Opts {
    fn parse(words: &[&str]) -> Opts {
        let mut o = Opts::default();
        let mut i = 0;
        while i < words.len() {
            let w = words[i].trim_start_matches("--").to_string();
            match words.get(i + 1) {
                Some(v) if !v.starts_with("--") => {
                    o.pairs.push((w, v.to_string()));
                    i += 2;
                }
                _ => {
                    o.flags.push(w);
                    i += 1;
                }
            }
        }
        o
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn bytes(&self, key: &str, default: u64) -> Result<u64, String> {
        self.get(key).map_or(Ok(default), |v| {
            config::parse_bytes(v).map_err(|e| format!("--{key}: {e}"))
        })
    }

    pub fn num(&self, key: &str, default: usize) -> Result<usize, String> {
        self.get(key).map_or(Ok(default), |v| {
            v.parse().map_err(|e| format!("--{key} {v}: {e}"))
        })
    }

    pub fn flag(&self, key: &str) -> bool {
        self.flags.iter().any(|f| f == key)
    }

    /// The plugin to load: `--plugin`, else the library installed beside
    /// this binary (`dist/` or cargo's target directory).
    pub fn plugin(&self) -> Result<PathBuf, String> {
        if let Some(p) = self.get("plugin") {
            return Ok(PathBuf::from(p));
        }
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let dir = exe.parent().ok_or("binary has no directory")?;
        ["libnccl-net-airamp.so", "libairamp.so"]
            .iter()
            .map(|n| dir.join(n))
            .find(|p| p.exists())
            .ok_or_else(|| {
                format!(
                    "no libnccl-net-airamp.so beside {}; pass --plugin PATH",
                    exe.display()
                )
            })
    }
}

fn config_check(file: Option<&str>) -> Result<ExitCode, String> {
    let env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let (cfg, diags) = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
            Config::from_sources(Some((std::path::Path::new(path), text.as_str())), env)
        }
        None => Config::load_from_process(),
    };
    for d in &diags {
        eprintln!("{d}");
    }
    print!("{}", cfg.render_effective());
    let warnings = diags
        .iter()
        .filter(|d| d.level == config::Level::Warn)
        .count();
    if warnings > 0 {
        eprintln!("{warnings} warning(s); airamp would use the values above");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn devices() -> Result<ExitCode, String> {
    let cfg = config::global();
    let all = airamp::sys::interface_addrs().map_err(|e| e.to_string())?;
    println!(
        "{:<16} {:<40} {:>5} {:>9} {:>8}",
        "interface", "address", "up", "speed", "loopback"
    );
    for a in &all {
        println!(
            "{:<16} {:<40} {:>5} {:>9} {:>8}",
            a.name,
            a.addr.to_string(),
            a.up,
            format!("{} Mb/s", airamp::transport::iface::speed_mbps(&a.name)),
            a.loopback
        );
    }
    let plugin = airamp::net::Plugin::from_config(cfg);
    println!(
        "\nfilter: {} (AIRAMP_SOCKET_IFNAME, else NCCL_SOCKET_IFNAME), family: {}",
        cfg.transport.socket_ifname.as_ref().map_or(
            "none: first non-loopback up interfaces, loopback last".to_string(),
            |f| f.to_string()
        ),
        cfg.transport.socket_family
    );
    for (i, d) in plugin.devices.iter().enumerate() {
        println!(
            "device {i}: {} {} {} Mb/s pci={}",
            d.net.ifname,
            d.net.addr,
            d.speed_mbps,
            d.pci_path
                .as_ref()
                .map_or("-".into(), |p| p.to_string_lossy().into_owned())
        );
    }
    if plugin.devices.is_empty() {
        println!("no device: NCCL would not use airamp on this host");
    }
    Ok(ExitCode::SUCCESS)
}
