//! `airamp`: the operator's command line.
//!
//! ```text
//! airamp config check [FILE]   validate a config file, print the effective config
//! airamp devices               interfaces the TCP transport sees and uses
//! airamp doctor [--peer HOST:PORT] [--json]
//!                              is airamp in use here? the plugin, NCCL_*, config, port, each with its fix
//! airamp bench net [OPTS]      plugin throughput through the C ABI next to iperf3
//! airamp bench latency [OPTS]  round trip of one message (8 bytes by default) through the C ABI, next to plain TCP
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
//!
//! Arguments are parsed by clap ([`Cli`]): `--help` on every subcommand,
//! `--version` with the git sha, and a bad flag or value exits with code 2.
//! The parsed options reach the subcommands as [`Opts`]: only the options
//! given, so each subcommand keeps its own defaults (named in `--help`).

mod bench;
mod calibrate;
mod collbench;
mod demo;
mod doctor;
mod gpu;
mod peer;
mod plot;
mod progress;
mod raw_tcp;
mod rendezvous;
mod tuner;
mod wake;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use airamp::config::{self, Config};

/// `airamp --version`: the crate version and the commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("CLI_GIT_SHA"),
    ")"
);

/// airamp: NCCL net / collective-network / tuner plugin, the operator's command line.
#[derive(Parser, Debug)]
#[command(name = "airamp", version = VERSION, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Configuration: validate a file, print the effective config.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Interfaces the TCP transport sees and uses.
    Devices,
    /// Check this node the way support would: the plugin NCCL_NET_PLUGIN
    /// resolves to (found, loads, exports, glibc), NCCL_NET, interfaces,
    /// config, this rank's metrics port, CollNet/GDR settings, the tuner.
    /// Exit 0: nothing stops airamp from being used; 1: something does.
    Doctor(DoctorArgs),
    /// Benchmarks through the plugin's C ABI.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Ring allreduce across processes through the C ABI; with --rendezvous,
    /// one rank of it, started by a launcher (srun).
    Demo(DemoArgs),
    /// Measure link + codec, print the [tuner] profile.
    Calibrate(CalibrateArgs),
    /// The tuner's decisions.
    #[command(subcommand)]
    Tuner(TunerCmd),
    /// Draw bus bandwidth against size from results files into an SVG:
    /// the PyTorch benchmarks' JSON (examples/pytorch/), `bench collnet
    /// --json`, or CSV lines `bytes,gbit_per_s`.
    Plot {
        /// The SVG file to write.
        #[arg(value_name = "OUT.svg")]
        out: String,
        /// One or more results files, each named for the legend.
        #[arg(value_name = "LABEL=FILE", required = true)]
        series: Vec<String>,
        /// Title of the chart.
        #[arg(long, default_value = "bus bandwidth")]
        title: String,
    },
    /// GPU codec kernels: self test, benchmark, compile check.
    #[command(subcommand)]
    Gpu(GpuCmd),
}

#[derive(Subcommand, Debug)]
enum ConfigCmd {
    /// Validate a config file (default: /etc/airamp.conf or AIRAMP_CONF) with
    /// the environment, print the effective config; exit 1 on warnings.
    Check {
        /// The config file to check.
        file: Option<String>,
    },
}

#[derive(Args, Debug)]
struct DoctorArgs {
    /// Also connect through the plugin to a host running
    /// `airamp calibrate --serve PORT`.
    #[arg(long, value_name = "HOST:PORT")]
    peer: Option<String>,
    /// Print the findings as a JSON array.
    #[arg(long)]
    json: bool,
}

/// `--json`: results as one JSON object on stdout, no tables.
#[derive(Args, Debug, Default)]
struct JsonArg {
    /// Print the results as one JSON object on stdout (no tables, no progress).
    #[arg(long)]
    json: bool,
}

/// `--plugin SO`: the plugin library to load.
#[derive(Args, Debug, Default)]
struct PluginArg {
    /// The plugin library to load [default: libnccl-net-airamp.so or
    /// libairamp.so beside this binary].
    #[arg(long, value_name = "SO")]
    plugin: Option<String>,
}

#[derive(Subcommand, Debug)]
enum BenchCmd {
    /// Plugin throughput through the C ABI next to iperf3.
    Net {
        #[command(flatten)]
        plugin: PluginArg,
        /// Message size [default: 1M].
        #[arg(long, value_name = "BYTES", value_parser = bytes_arg)]
        size: Option<String>,
        /// Bytes to send in all [default: 8G].
        #[arg(long, value_name = "BYTES", value_parser = bytes_arg)]
        total: Option<String>,
        /// Messages in flight, 1 to 32 [default: 8].
        #[arg(long, value_name = "N", value_parser = num_arg)]
        window: Option<String>,
        /// Skip the iperf3 reference run.
        #[arg(long)]
        no_iperf: bool,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Round trip of one message (8 bytes by default) through the C ABI, next to plain TCP.
    Latency {
        #[command(flatten)]
        plugin: PluginArg,
        /// Round trips to time [default: 5000].
        #[arg(long, value_name = "N", value_parser = num_arg)]
        iters: Option<String>,
        /// Message size [default: 8].
        #[arg(long, value_name = "BYTES", value_parser = bytes_arg)]
        size: Option<String>,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Codec speed (E4M3, E5M2, INT8) on this core next to memcpy.
    Codec {
        /// Values per run [default: 1048576].
        #[arg(value_name = "VALUES")]
        values: Option<usize>,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Allreduce through the collective network: exact vs compressed, tuner pick.
    Collnet {
        #[command(flatten)]
        plugin: PluginArg,
        /// Member processes, 2 to 16 [default: 2].
        #[arg(long, value_name = "N", value_parser = num_arg)]
        ranks: Option<String>,
        /// Smallest allreduce [default: 4K].
        #[arg(long, value_name = "BYTES", value_parser = bytes_arg)]
        min: Option<String>,
        /// Largest allreduce [default: 256M].
        #[arg(long, value_name = "BYTES", value_parser = bytes_arg)]
        max: Option<String>,
        /// Rounds per size [default: 2].
        #[arg(long, value_name = "N", value_parser = num_arg)]
        rounds: Option<String>,
        /// Cut each allreduce into collective-network calls of this many
        /// bytes, as NCCL cuts a collective into chunks of its buffer
        /// (512 KiB on the host path) [default: the whole allreduce].
        #[arg(long, value_name = "BYTES", value_parser = bytes_arg)]
        call: Option<String>,
        /// Calls in flight at once, as NCCL keeps several chunks posted
        /// [default: 1].
        #[arg(long, value_name = "N", value_parser = num_arg)]
        depth: Option<String>,
        #[command(flatten)]
        out: JsonArg,
        /// Also draw bus bandwidth against size for each path (raw ring,
        /// exact, compressed) into this SVG file.
        #[arg(long, value_name = "FILE.svg")]
        plot: Option<String>,
        /// A reference to draw on the same plot, e.g. NCCL Socket measured
        /// by examples/pytorch (its JSON) or a CSV of bytes,gbit_per_s.
        #[arg(long, value_name = "LABEL=FILE", requires = "plot")]
        reference: Vec<String>,
    },
    /// How long a sleeping thread takes to run once signalled, by how long
    /// it slept: the cost of every hand-off between airamp's threads on
    /// this host (large on virtual machines).
    Wake {
        /// Idle gaps to measure, microseconds, comma-separated
        /// [default: 50,100,200,300,1000,2000].
        #[arg(long, value_name = "US,...")]
        gaps: Option<String>,
        /// Wake-ups per gap [default: 1000].
        #[arg(long, value_name = "N", value_parser = num_arg)]
        wakes: Option<String>,
        #[command(flatten)]
        out: JsonArg,
    },
    /// CPU used while a connection sits idle.
    Idle {
        #[command(flatten)]
        plugin: PluginArg,
        /// How long to watch [default: 10].
        #[arg(long, value_name = "N", value_parser = num_arg)]
        seconds: Option<String>,
        #[command(flatten)]
        out: JsonArg,
    },
}

#[derive(Args, Debug)]
struct DemoArgs {
    #[command(flatten)]
    plugin: PluginArg,
    /// Processes in the ring, 2 to 16 without --rendezvous [default: 4].
    #[arg(long, value_name = "N", value_parser = num_arg)]
    ranks: Option<String>,
    /// fp32 values per rank [default: 16777216].
    #[arg(long, value_name = "FLOATS", value_parser = num_arg)]
    count: Option<String>,
    /// Allreduce iterations [default: 5].
    #[arg(long, value_name = "N", value_parser = num_arg)]
    iters: Option<String>,
    /// This process's rank (with --rendezvous).
    #[arg(long, value_name = "R", value_parser = num_arg)]
    rank: Option<String>,
    /// A directory every rank sees: run one rank of a job a launcher started.
    #[arg(long, value_name = "DIR")]
    rendezvous: Option<String>,
    /// Also check this rank's metrics exporter (with --rendezvous).
    #[arg(long)]
    check_metrics: bool,
}

#[derive(Args, Debug)]
struct CalibrateArgs {
    #[command(flatten)]
    plugin: PluginArg,
    /// Measure over loopback (this host only, not a real link).
    #[arg(long)]
    loopback: bool,
    /// Measure the link to a host running `airamp calibrate --serve PORT`.
    #[arg(long, value_name = "HOST:PORT")]
    peer: Option<String>,
    /// Serve the other end of --peer on this port.
    #[arg(long, value_name = "PORT")]
    serve: Option<String>,
    /// Write the profile to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<String>,
    /// Replace an existing --out file.
    #[arg(long)]
    force: bool,
    /// Messages per measurement [default: 256].
    #[arg(long, value_name = "N", value_parser = num_arg)]
    messages: Option<String>,
}

#[derive(Subcommand, Debug)]
enum TunerCmd {
    /// The tuner's allreduce decisions for a job shape.
    Show {
        /// Ranks in the job [default: 2].
        #[arg(long, value_name = "R", value_parser = num_arg)]
        ranks: Option<String>,
        /// Nodes in the job [default: 2].
        #[arg(long, value_name = "N", value_parser = num_arg)]
        nodes: Option<String>,
        /// Config file [default: /etc/airamp.conf or AIRAMP_CONF].
        #[arg(long, value_name = "FILE")]
        config: Option<String>,
        /// Turn FP8 allreduce on.
        #[arg(long)]
        fp8: bool,
        /// Take the link profile from a running job's metrics (URL or file).
        #[arg(long, value_name = "http://HOST:PORT|FILE")]
        metrics: Option<String>,
        /// The communicator to read from --metrics.
        #[arg(long, value_name = "ID")]
        comm: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum GpuCmd {
    /// GPU codec kernels vs the CPU codec, bit for bit.
    Selftest {
        /// CUDA device [default: 0].
        #[arg(long, value_name = "N", value_parser = num_arg)]
        device: Option<String>,
    },
    /// GPU codec throughput next to memcpy.
    Bench {
        /// CUDA device [default: 0].
        #[arg(long, value_name = "N", value_parser = num_arg)]
        device: Option<String>,
        /// MiB per buffer [default: 256].
        #[arg(long, value_name = "MIB", value_parser = num_arg)]
        mib: Option<String>,
        /// Iterations [default: 20].
        #[arg(long, value_name = "N", value_parser = num_arg)]
        iters: Option<String>,
        /// Also time each kernel's launch shapes.
        #[arg(long)]
        tune: bool,
        #[command(flatten)]
        out: JsonArg,
    },
    /// NVRTC compile of the kernels for sm_80/90/100 (no GPU needed).
    CompileCheck,
}

/// A byte count as the config takes it (`1M`, `4G`, `65536`); kept as text.
fn bytes_arg(v: &str) -> Result<String, String> {
    config::parse_bytes(v).map(|_| v.to_string())
}

/// A non-negative integer; kept as text.
fn num_arg(v: &str) -> Result<String, String> {
    v.parse::<usize>()
        .map(|_| v.to_string())
        .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Child processes of the CLI itself (peer.rs): an internal protocol, not
    // a user command.
    if args.first().map(String::as_str) == Some(peer::ROLE_FLAG) {
        let words: Vec<&str> = args[1..].iter().map(String::as_str).collect();
        return report(peer::run_role(&words));
    }
    report(run(Cli::parse().cmd))
}

fn run(cmd: Cmd) -> Result<ExitCode, String> {
    match cmd {
        Cmd::Config(ConfigCmd::Check { file }) => config_check(file.as_deref()),
        Cmd::Devices => devices(),
        Cmd::Plot { out, series, title } => plot_files(&out, &series, &title),
        Cmd::Doctor(d) => doctor::run(&doctor::DoctorOpts {
            peer: d.peer,
            json: d.json,
        }),
        Cmd::Bench(b) => match b {
            BenchCmd::Net {
                plugin,
                size,
                total,
                window,
                no_iperf,
                out,
            } => bench::net(
                &Opts::from(plugin)
                    .with("size", size)
                    .with("total", total)
                    .with("window", window)
                    .with_flag("no-iperf", no_iperf)
                    .with_flag("json", out.json),
            ),
            BenchCmd::Latency {
                plugin,
                iters,
                size,
                out,
            } => bench::latency(
                &Opts::from(plugin)
                    .with("iters", iters)
                    .with("size", size)
                    .with_flag("json", out.json),
            ),
            BenchCmd::Codec { values, out } => bench::codec(values, out.json),
            BenchCmd::Wake { gaps, wakes, out } => {
                wake_bench(gaps.as_deref(), wakes.as_deref(), out.json)
            }
            BenchCmd::Collnet {
                plugin,
                ranks,
                min,
                max,
                rounds,
                call,
                depth,
                out,
                plot,
                reference,
            } => collbench::run(
                &Opts::from(plugin)
                    .with("ranks", ranks)
                    .with("min", min)
                    .with("max", max)
                    .with("rounds", rounds)
                    .with("call", call)
                    .with("depth", depth)
                    .with("plot", plot)
                    .with_all("reference", reference)
                    .with_flag("json", out.json),
            ),
            BenchCmd::Idle {
                plugin,
                seconds,
                out,
            } => bench::idle(
                &Opts::from(plugin)
                    .with("seconds", seconds)
                    .with_flag("json", out.json),
            ),
        },
        Cmd::Demo(d) => demo::run(
            &Opts::from(d.plugin)
                .with("ranks", d.ranks)
                .with("count", d.count)
                .with("iters", d.iters)
                .with("rank", d.rank)
                .with("rendezvous", d.rendezvous)
                .with_flag("check-metrics", d.check_metrics),
        ),
        Cmd::Calibrate(c) => calibrate::run(
            &Opts::from(c.plugin)
                .with_flag("loopback", c.loopback)
                .with("peer", c.peer)
                .with("serve", c.serve)
                .with("out", c.out)
                .with_flag("force", c.force)
                .with("messages", c.messages),
        ),
        Cmd::Tuner(TunerCmd::Show {
            ranks,
            nodes,
            config,
            fp8,
            metrics,
            comm,
        }) => tuner::show(
            &Opts::default()
                .with("ranks", ranks)
                .with("nodes", nodes)
                .with("config", config)
                .with_flag("fp8", fp8)
                .with("metrics", metrics)
                .with("comm", comm),
        ),
        Cmd::Gpu(g) => match g {
            GpuCmd::Selftest { device } => gpu::selftest(&Opts::default().with("device", device)),
            GpuCmd::Bench {
                device,
                mib,
                iters,
                tune,
                out,
            } => gpu::bench(
                &Opts::default()
                    .with("device", device)
                    .with("mib", mib)
                    .with("iters", iters)
                    .with_flag("tune", tune)
                    .with_flag("json", out.json),
            ),
            GpuCmd::CompileCheck => gpu::compile_check(&Opts::default()),
        },
    }
}

fn report(result: Result<ExitCode, String>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("airamp: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `airamp plot`: results files drawn on one chart.
fn plot_files(out: &str, specs: &[String], title: &str) -> Result<ExitCode, String> {
    let mut series = Vec::new();
    for spec in specs {
        let (label, file) = plot::labelled(spec)?;
        series.extend(plot::series_from_file(&label, &file)?);
    }
    let named: Vec<(&str, Vec<(u64, f64)>)> = series
        .iter()
        .map(|(n, p)| (n.as_str(), p.clone()))
        .collect();
    plot::bus_bandwidth(out, title, &named)?;
    println!("wrote {out}: {} series", named.len());
    Ok(ExitCode::SUCCESS)
}

impl From<PluginArg> for Opts {
    fn from(p: PluginArg) -> Opts {
        Opts::default().with("plugin", p.plugin)
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

    /// Adds `--key value` when the value was given.
    fn with(mut self, key: &str, value: Option<String>) -> Opts {
        if let Some(v) = value {
            self.pairs.push((key.to_string(), v));
        }
        self
    }

    /// Adds `--key value` once per value.
    fn with_all(mut self, key: &str, values: Vec<String>) -> Opts {
        for v in values {
            self.pairs.push((key.to_string(), v));
        }
        self
    }

    /// Every value given for `--key`, in order.
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Adds the flag `--key` when set.
    fn with_flag(mut self, key: &str, on: bool) -> Opts {
        if on {
            self.flags.push(key.to_string());
        }
        self
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

/// `airamp bench wake`: the gaps as given (comma-separated µs) or the defaults.
fn wake_bench(gaps: Option<&str>, wakes: Option<&str>, json: bool) -> Result<ExitCode, String> {
    let gaps = match gaps {
        Some(list) => list
            .split(',')
            .map(|g| {
                g.trim()
                    .parse::<u64>()
                    .map_err(|e| format!("--gaps {g:?}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => wake::DEFAULT_GAPS_US.to_vec(),
    };
    let wakes = wakes
        .map_or(Ok(1000), str::parse)
        .map_err(|e| format!("--wakes: {e}"))?;
    wake::run(&gaps, wakes, json)
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
