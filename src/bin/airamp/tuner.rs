//! `airamp tuner show`: the tuner's allreduce decisions for a job shape,
//! from the same pure functions the plugin runs (`airamp::tuner`).

use std::path::Path;
use std::process::ExitCode;

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
    let (profile, source) = LinkProfile::from_config(&cfg.tuner);
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
    Ok(ExitCode::SUCCESS)
}
