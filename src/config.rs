//! One typed configuration for airamp.
//!
//! Sources, lowest to highest priority: built-in defaults, the TOML file
//! (`/etc/airamp.conf`, or the path in `AIRAMP_CONF`), then `AIRAMP_*`
//! environment variables. For a few keys NCCL's own variables
//! (`NCCL_SOCKET_IFNAME`, `NCCL_SOCKET_FAMILY`) are used when neither the
//! file nor an `AIRAMP_*` variable sets the key.
//!
//! Loading never fails and never panics: every problem becomes a
//! [`Diagnostic`], and a bad value leaves its key at the value of the
//! lower layer (the file's value, or the default).
//!
//! Every key is described once, in [`KEYS`]; validation, diagnostics,
//! `docs/configuration.md` ([`keys_markdown`]) and `examples/airamp.conf`
//! ([`example_conf`]) are all derived from that table.

mod values;

#[cfg(test)]
mod tests;

pub use values::{
    format_bytes, parse_bytes, IfnameFilter, MetricsAddr, DEFAULT_METRICS_PORT, LOCAL_RANK_VARS,
    LOCAL_SIZE_VARS,
};

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use crate::codec::WireFormat;
use crate::sys;

/// Env var naming the configuration file.
pub const CONF_ENV: &str = "AIRAMP_CONF";
/// `AIRAMP_*` variables read elsewhere, not configuration keys: the config
/// file's path, where to find NVRTC and where to cache its output
/// (`gpu::nvrtc`, read when the GPU kernels are first compiled), and the
/// build's git sha (set by build.rs with `cargo:rustc-env`, which cargo
/// also exports to every process it runs: `cargo run`, `cargo test`).
const OTHER_ENV: [&str; 4] = [
    CONF_ENV,
    crate::gpu::nvrtc::NVRTC_ENV,
    crate::gpu::nvrtc::CACHE_ENV,
    "AIRAMP_GIT_SHA",
];
/// `tuner.call_overhead_us` by default: what one compressed CollNet call
/// costs beyond wire, codec and two latencies, microseconds (NCCL's CollNet
/// kernels and proxy, the hand-offs to the workers). On the H200 host (NCCL 2.28.9) a 64 KiB FP8 CollNet
/// allreduce took 270-300 us against 85-180 us of the rest, on a 5 and a
/// 25 Gbit/s link and on loopback.
pub const DEFAULT_CALL_OVERHEAD_US: f64 = 150.0;
/// `tuner.single_channel_bytes` by default. On the H200 host (NCCL 2.28.9,
/// one rank per node, loopback) one channel against NCCL's two ran 64-512
/// KiB allreduce 1.04-1.45x as fast and 1-2 MiB 0.79-0.89x (docs/tuner.md,
/// "Channels for mid-size allreduce").
pub const DEFAULT_SINGLE_CHANNEL_BYTES: u64 = 512 << 10;
/// Configuration file used when `AIRAMP_CONF` is unset or empty.
pub const DEFAULT_CONF_PATH: &str = "/etc/airamp.conf";
/// Values longer than this are cut in diagnostics.
const MAX_SHOWN_VALUE: usize = 120;

// ---------------------------------------------------------------------------
// Value types
// ---------------------------------------------------------------------------

/// `transport.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportKind {
    /// verbs when an RDMA device is usable, else TCP.
    #[default]
    Auto,
    Tcp,
    Verbs,
}

/// `transport.socket_family`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SocketFamily {
    #[default]
    Auto,
    Ipv4,
    Ipv6,
}

/// `transport.poller`: which threads move the messages NCCL's proxy thread
/// would (`transport::tcp::PollerMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PollerThreads {
    /// `two` where each rank has 4 cores or more on a host where
    /// `inline_bytes` is 64 KiB, `off` otherwise.
    #[default]
    Auto,
    Off,
    One,
    Two,
}

macro_rules! enum_names {
    ($t:ty { $($v:ident => $s:literal),+ $(,)? }) => {
        impl $t {
            /// Accepted spellings (case-insensitive).
            pub const NAMES: &'static [&'static str] = &[$($s),+];
            /// The config spelling of this value.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s),+ }
            }
            fn from_name(s: &str) -> Option<Self> {
                let s = s.trim();
                $(if s.eq_ignore_ascii_case($s) { return Some(Self::$v); })+
                None
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
enum_names!(TransportKind { Auto => "auto", Tcp => "tcp", Verbs => "verbs" });
enum_names!(SocketFamily { Auto => "auto", Ipv4 => "ipv4", Ipv6 => "ipv6" });
enum_names!(PollerThreads { Auto => "auto", Off => "off", One => "one", Two => "two" });

/// `compression.format`: a [`WireFormat`] by its name, any case.
fn wire_format_from_name(s: &str) -> Option<WireFormat> {
    let s = s.trim();
    WireFormat::ALL
        .into_iter()
        .find(|f| f.name().eq_ignore_ascii_case(s))
}

// ---------------------------------------------------------------------------
// The configuration
// ---------------------------------------------------------------------------

/// `[transport]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TransportConfig {
    pub kind: TransportKind,
    /// `None`: no filter (the transport applies its own defaults).
    pub socket_ifname: Option<IfnameFilter>,
    pub socket_family: SocketFamily,
    /// TCP streams per connection, 1..=16; 0 means auto ([`TransportConfig::streams`]).
    pub streams: u32,
    /// Bytes, 4 KiB..=16 MiB.
    pub chunk_size: usize,
    /// Bytes, 4 KiB..=16 MiB: a message up to this size is not split.
    pub min_chunk_size: usize,
    /// Bytes, 0..=16 MiB: messages for the stream threads up to this size
    /// use the first two streams only; 0: none.
    pub narrow_bytes: u64,
    /// `SO_SNDBUF`/`SO_RCVBUF` bytes; 0 = kernel autotuning.
    pub socket_buffer: usize,
    pub peer_timeout_ms: u64,
    /// Messages up to this many bytes are moved by NCCL's proxy thread
    /// itself, larger ones by the stream threads; `None` means auto
    /// ([`TransportConfig::inline_bytes`]).
    pub inline_bytes: Option<u64>,
    /// Poller threads that move the messages NCCL's proxy would, spinning
    /// while such messages flow.
    pub poller: PollerThreads,
    pub handshake_timeout_ms: u64,
}

impl TransportConfig {
    /// Streams per connection; `auto` takes one per 4 cores, between 2 and 8:
    /// enough parallel copies on big hosts, few threads on small ones.
    pub fn streams(&self) -> usize {
        match self.streams {
            0 => {
                let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
                (cores / 4).clamp(2, 8)
            }
            n => n as usize,
        }
    }
    pub fn peer_timeout(&self) -> Duration {
        Duration::from_millis(self.peer_timeout_ms)
    }
    /// Largest message NCCL's proxy thread moves itself. `auto`: 64 KiB
    /// where the stream threads have cores of their own (8 or more), so the
    /// proxy stays free and large messages are copied in parallel; every
    /// message on smaller hosts, where extra busy threads only compete with
    /// the proxy (which polls anyway) for the same cores. A send the proxy
    /// cannot finish (full socket) goes on on its stream thread, so nothing
    /// waits for the proxy to come back (docs/transport.md).
    pub fn inline_bytes(&self) -> u64 {
        self.inline_bytes.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
            inline_bytes_auto(cores)
        })
    }
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
    /// Poller threads, never `Auto`: two where each rank of the host has 4
    /// cores or more and the process may run on 8 or more (so
    /// `inline_bytes` is 64 KiB and the pollers' share 4–64 KiB), as
    /// measured on an H200 host with 2 ranks on 16 and on 8 cores; none
    /// where they would take the cores the proxy and the stream threads
    /// run on (docs/transport.md).
    pub fn poller(&self) -> PollerThreads {
        let available = std::thread::available_parallelism().map_or(2, |n| n.get());
        let ranks = local_ranks(|name| std::env::var(name).ok());
        self.poller_for(
            cores_per_rank(available, sys::online_cpus(), ranks),
            available,
        )
    }

    /// [`TransportConfig::poller`] for a rank with `cores` cores of its own
    /// in a process that may run on `available` cores.
    pub fn poller_for(&self, cores: usize, available: usize) -> PollerThreads {
        match self.poller {
            PollerThreads::Auto => poller_auto(cores, available),
            chosen => chosen,
        }
    }
}

/// `transport.poller = auto` for a rank with `cores` cores of its own, in
/// a process that may run on `available` cores.
pub fn poller_auto(cores: usize, available: usize) -> PollerThreads {
    if cores >= 4 && inline_bytes_auto(available) < 1 << 30 {
        PollerThreads::Two
    } else {
        PollerThreads::Off
    }
}

/// The cores one rank may count on: those it may run on, shared with the
/// host's other `local_ranks` when every rank may run everywhere (not
/// pinned to cores of its own).
pub fn cores_per_rank(available: usize, online: usize, local_ranks: usize) -> usize {
    if available >= online {
        available / local_ranks.max(1)
    } else {
        available
    }
}

/// Ranks on this host as the launcher tells them ([`LOCAL_SIZE_VARS`]); 1
/// when none does.
pub fn local_ranks(var: impl Fn(&str) -> Option<String>) -> usize {
    LOCAL_SIZE_VARS
        .into_iter()
        .find_map(|name| {
            let value = var(name)?;
            // Slurm may say "8(x2)" or "4,2": the first count is this kind of node's.
            let digits: String = value
                .trim()
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse::<usize>().ok().filter(|&n| n > 0)
        })
        .unwrap_or(1)
}

/// `transport.inline_bytes = auto` on a host with `cores` cores.
pub(crate) fn inline_bytes_auto(cores: usize) -> u64 {
    match cores {
        0..=7 => 1 << 30,
        _ => 64 << 10,
    }
}

/// `[metrics]`.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    pub enabled: bool,
    pub addr: MetricsAddr,
    pub textfile: Option<PathBuf>,
}

/// `[compression]`.
#[derive(Debug, Clone, PartialEq)]
pub struct CompressionConfig {
    /// `AIRAMP_ENABLE_FP8_ALLREDUCE`: compression on (in [`Self::format`],
    /// E4M3 unless set).
    pub fp8_allreduce: bool,
    pub format: WireFormat,
}

/// `[collnet]`.
#[derive(Debug, Clone, PartialEq)]
pub struct CollnetConfig {
    /// Codec/fold worker threads per collective group; `None` means auto
    /// ([`CollnetConfig::workers`]), 0 runs everything on NCCL's proxy thread.
    pub workers: Option<u32>,
    /// NCCL's proxy thread moves the group's small messages and runs its
    /// light codec-free steps itself (a gain on 2 cores, a loss under NCCL
    /// on a 16-core host: off by default).
    pub proxy_assist: bool,
}

impl CollnetConfig {
    /// Worker threads; `auto` takes one per 4 cores, between 1 and 8, so
    /// two ranks on a 16-core host keep cores for their TCP streams.
    pub fn workers(&self) -> usize {
        match self.workers {
            None => {
                let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
                (cores / 4).clamp(1, 8)
            }
            Some(n) => n as usize,
        }
    }
}

/// `[gpu]`.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuConfig {
    pub ghost_kernels: bool,
    /// Let the collective network take NCCL's GPU buffers and run FP8 and
    /// exact sums as kernels in airamp's own CUDA context.
    pub collnet: bool,
    /// Most pinned host memory the mirrors of registered GPU buffers may
    /// hold in this process (bytes).
    pub mirror_budget: usize,
    /// SMs airamp's own CUDA context is limited to where the driver can
    /// limit it (under MPS); 0: every SM. Its device memory grows with it.
    pub sms: u32,
}

/// `[tuner]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TunerConfig {
    pub enabled: bool,
    /// Measure link and codec in the collective network's `connect`.
    pub calibrate: bool,
    /// Fraction (0..=1) by which the compressed path must be predicted faster.
    pub min_gain: f64,
    /// Calibration: measured link bandwidth, Gbit/s.
    pub link_gbps: Option<f64>,
    /// Calibration: measured link latency, microseconds.
    pub link_latency_us: Option<f64>,
    /// Calibration: FP8 encode speed of one core, G values/s.
    pub encode_gvps: Option<f64>,
    /// Calibration: FP8 decode-and-accumulate speed of one core, G values/s.
    pub decode_gvps: Option<f64>,
    /// Fixed cost of one collective-network call, microseconds.
    pub call_overhead_us: f64,
    /// Allreduces up to this size run on one NCCL channel where every hop
    /// is a network hop (0: NCCL's channel count everywhere).
    pub single_channel_bytes: u64,
}

/// Where an effective value came from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Source {
    #[default]
    Default,
    File(PathBuf),
    /// The environment variable's name (`AIRAMP_*`, or an `NCCL_*` fallback).
    Env(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::Env(v) => write!(f, "env {v}"),
        }
    }
}

/// The whole configuration, with the source of every value.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub transport: TransportConfig,
    pub metrics: MetricsConfig,
    pub compression: CompressionConfig,
    pub collnet: CollnetConfig,
    pub gpu: GpuConfig,
    pub tuner: TunerConfig,
    /// Indexed like [`KEYS`].
    sources: Vec<Source>,
    file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            transport: TransportConfig {
                kind: TransportKind::Auto,
                socket_ifname: None,
                socket_family: SocketFamily::Auto,
                streams: 0,
                chunk_size: 512 << 10,
                min_chunk_size: 64 << 10,
                narrow_bytes: 256 << 10,
                socket_buffer: 0,
                peer_timeout_ms: 30_000,
                inline_bytes: None,
                poller: PollerThreads::Auto,
                handshake_timeout_ms: 10_000,
            },
            metrics: MetricsConfig {
                enabled: true,
                addr: MetricsAddr::default(),
                textfile: None,
            },
            compression: CompressionConfig {
                fp8_allreduce: false,
                format: WireFormat::E4M3,
            },
            collnet: CollnetConfig {
                workers: None,
                proxy_assist: false,
            },
            gpu: GpuConfig {
                ghost_kernels: false,
                collnet: false,
                mirror_budget: 8 << 30,
                sms: 16,
            },
            tuner: TunerConfig {
                enabled: true,
                calibrate: true,
                min_gain: 0.05,
                link_gbps: None,
                link_latency_us: None,
                encode_gvps: None,
                decode_gvps: None,
                call_overhead_us: DEFAULT_CALL_OVERHEAD_US,
                single_channel_bytes: DEFAULT_SINGLE_CHANNEL_BYTES,
            },
            sources: vec![Source::Default; KEYS.len()],
            file: None,
        }
    }
}

// ---------------------------------------------------------------------------
// Diagnostics
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Info,
    Warn,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Info => "info",
            Level::Warn => "warning",
        })
    }
}

/// One problem found while loading the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub level: Level,
    /// The config key (`transport.streams`) when the problem is about one.
    pub key: Option<String>,
    pub message: String,
}

impl Diagnostic {
    fn warn(key: Option<&str>, message: String) -> Self {
        Self {
            level: Level::Warn,
            key: key.map(str::to_string),
            message,
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "airamp config {}: {}", self.level, self.message)
    }
}

// ---------------------------------------------------------------------------
// Key table
// ---------------------------------------------------------------------------

/// A raw value from one source.
#[derive(Clone, Copy)]
enum Raw<'a> {
    Toml(&'a toml::Value),
    Str(&'a str),
}

impl<'a> Raw<'a> {
    /// The value as shown in diagnostics: quoted, escaped, length-capped.
    fn shown(&self) -> String {
        let s = match self {
            Raw::Str(s) => format!("{s:?}"),
            Raw::Toml(v) => match v {
                toml::Value::String(s) => format!("{s:?}"),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(x) => x.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Datetime(d) => d.to_string(),
                toml::Value::Array(_) => "(an array)".to_string(),
                toml::Value::Table(_) => "(a table)".to_string(),
            },
        };
        if s.chars().count() > MAX_SHOWN_VALUE {
            let cut: String = s.chars().take(MAX_SHOWN_VALUE).collect();
            format!("{cut}...")
        } else {
            s
        }
    }

    /// String content: env values, or TOML strings.
    fn text(&self) -> Result<&'a str, String> {
        match self {
            Raw::Str(s) => Ok(*s),
            Raw::Toml(toml::Value::String(s)) => Ok(s.as_str()),
            Raw::Toml(v) => Err(format!("expected a string, got {}", v.type_str())),
        }
    }
}

type Apply = fn(&mut Config, Raw<'_>) -> Result<(), String>;
type Show = fn(&Config) -> String;

/// Description of one configuration key; [`KEYS`] lists them all.
pub struct KeySpec {
    /// TOML `section.key`.
    pub name: &'static str,
    /// Overriding environment variable.
    pub env: &'static str,
    /// Default, as shown in the docs.
    pub default: &'static str,
    /// Accepted values, as shown in diagnostics and the docs.
    pub accepted: &'static str,
    /// What the key does.
    pub doc: &'static str,
    /// A valid TOML value for `examples/airamp.conf` (the default when there is one).
    pub example: &'static str,
    apply: Apply,
    show: Show,
}

/// The value `auto` (any case), as a string in the file or the environment.
fn is_auto(r: &Raw<'_>) -> bool {
    let text = match r {
        Raw::Str(s) => *s,
        Raw::Toml(toml::Value::String(s)) => s.as_str(),
        Raw::Toml(_) => return false,
    };
    text.trim().eq_ignore_ascii_case("auto")
}

fn want_bool(r: Raw<'_>) -> Result<bool, String> {
    match r {
        Raw::Toml(toml::Value::Boolean(b)) => Ok(*b),
        Raw::Toml(toml::Value::Integer(0)) => Ok(false),
        Raw::Toml(toml::Value::Integer(1)) => Ok(true),
        _ => match r.text()?.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err("not a boolean".to_string()),
        },
    }
}

fn want_int(r: Raw<'_>, lo: i64, hi: i64) -> Result<i64, String> {
    let n = match r {
        Raw::Toml(toml::Value::Integer(i)) => *i,
        _ => r
            .text()?
            .trim()
            .parse::<i64>()
            .map_err(|_| "not an integer".to_string())?,
    };
    if (lo..=hi).contains(&n) {
        Ok(n)
    } else {
        Err("out of range".to_string())
    }
}

fn want_bytes(r: Raw<'_>, ok: fn(u64) -> bool) -> Result<usize, String> {
    let n = match r {
        Raw::Toml(toml::Value::Integer(i)) => {
            u64::try_from(*i).map_err(|_| "negative size".to_string())?
        }
        _ => parse_bytes(r.text()?)?,
    };
    if !ok(n) {
        return Err("out of range".to_string());
    }
    usize::try_from(n).map_err(|_| "out of range".to_string())
}

fn want_float(r: Raw<'_>) -> Result<f64, String> {
    let x = match r {
        Raw::Toml(toml::Value::Float(x)) => *x,
        Raw::Toml(toml::Value::Integer(i)) => *i as f64,
        _ => r
            .text()?
            .trim()
            .parse::<f64>()
            .map_err(|_| "not a number".to_string())?,
    };
    if x.is_finite() {
        Ok(x)
    } else {
        Err("not a finite number".to_string())
    }
}

/// `Ok(None)` for an empty / all-blank string: explicitly unset.
fn want_opt_text(r: Raw<'_>) -> Result<Option<&str>, String> {
    let s = r.text()?;
    Ok(if s.trim().is_empty() { None } else { Some(s) })
}

fn want_enum<T>(r: Raw<'_>, parse: fn(&str) -> Option<T>) -> Result<T, String> {
    parse(r.text()?).ok_or_else(|| "unknown value".to_string())
}

fn show_opt<T: fmt::Display>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "(unset)".to_string(), |v| v.to_string())
}

/// Keys whose effective values every host of a job must share, because
/// the tuner decides from them alone (`tuner::agreement_digest`, checked at
/// connect): ranks that differ would run a collective with different
/// channel counts or algorithms and hang.
/// `tuner.calibrate` and the `compression.*` keys may differ: the
/// collective network's members agree on those when they join
/// (calibration runs only if every member asks; a group whose members
/// differ in compression runs exact).
pub const AGREED_KEYS: [&str; 8] = [
    "tuner.enabled",
    "tuner.single_channel_bytes",
    "tuner.min_gain",
    "tuner.call_overhead_us",
    "tuner.link_gbps",
    "tuner.link_latency_us",
    "tuner.encode_gvps",
    "tuner.decode_gvps",
];

/// Every configuration key, in documentation order.
pub static KEYS: &[KeySpec] = &[
    KeySpec {
        name: "transport.kind",
        env: "AIRAMP_TRANSPORT",
        default: "auto",
        accepted: "one of: auto, tcp, verbs",
        doc: "Transport: `auto` uses verbs when an RDMA device is usable, else TCP. Not built yet: verbs (every value runs TCP today).",
        example: "\"auto\"",
        apply: |c, r| {
            c.transport.kind = want_enum(r, TransportKind::from_name)?;
            Ok(())
        },
        show: |c| c.transport.kind.to_string(),
    },
    KeySpec {
        name: "transport.socket_ifname",
        env: "AIRAMP_SOCKET_IFNAME",
        default: "unset (falls back to NCCL_SOCKET_IFNAME)",
        accepted: "comma-separated interface-name prefixes; leading ^ excludes, leading = matches exactly (e.g. eth,ens or ^docker,lo or =eth0)",
        doc: "Network interfaces to use, NCCL_SOCKET_IFNAME syntax. An empty string means no filter.",
        example: "\"^docker,lo\"",
        apply: |c, r| {
            c.transport.socket_ifname = want_opt_text(r)?.map(IfnameFilter::parse).transpose()?;
            Ok(())
        },
        show: |c| show_opt(&c.transport.socket_ifname),
    },
    KeySpec {
        name: "transport.socket_family",
        env: "AIRAMP_SOCKET_FAMILY",
        default: "auto (falls back to NCCL_SOCKET_FAMILY)",
        accepted: "one of: auto, ipv4, ipv6",
        doc: "Address family for sockets.",
        example: "\"auto\"",
        apply: |c, r| {
            c.transport.socket_family = want_enum(r, SocketFamily::from_name)?;
            Ok(())
        },
        show: |c| c.transport.socket_family.to_string(),
    },
    KeySpec {
        name: "transport.streams",
        env: "AIRAMP_NSTREAMS",
        default: "auto",
        accepted: "auto, or integer 1..=16",
        doc: "TCP streams per connection; chunks of each message are spread over them dynamically. `auto`: one per 4 CPU cores, 2..=8 (2 on a 2-core box, 4 on 16 cores).",
        example: "\"auto\"",
        apply: |c, r| {
            c.transport.streams = match r {
                _ if is_auto(&r) => 0,
                _ => want_int(r, 1, 16)? as u32,
            };
            Ok(())
        },
        show: |c| match c.transport.streams {
            0 => "auto".to_string(),
            n => n.to_string(),
        },
    },
    KeySpec {
        name: "transport.chunk_size",
        env: "AIRAMP_CHUNK_SIZE",
        default: "524288 (512K)",
        accepted: "bytes 4096..=16777216; plain integer or suffix K, KiB, M, MiB (e.g. 512K)",
        doc: "Transfer chunk size.",
        example: "\"512K\"",
        apply: |c, r| {
            c.transport.chunk_size = want_bytes(r, |n| (4096..=16 << 20).contains(&n))?;
            Ok(())
        },
        show: |c| c.transport.chunk_size.to_string(),
    },
    KeySpec {
        name: "transport.min_chunk_size",
        env: "AIRAMP_MIN_CHUNK_SIZE",
        default: "65536 (64K)",
        accepted: "bytes 4096..=16777216; plain integer or suffix K, KiB, M, MiB",
        doc: "A message up to this size (and up to transport.chunk_size) travels whole on one stream; a larger one is spread over the streams in chunks of at least this size and at most transport.chunk_size, which wins. Fewer, larger chunks wake fewer stream threads per message; smaller ones copy more of a mid-size message in parallel. The collective network's links use at least 256K where the process offers NCCL no GPU buffers, so host-path shards travel whole (docs/collnet.md).",
        example: "\"64K\"",
        apply: |c, r| {
            c.transport.min_chunk_size = want_bytes(r, |n| (4096..=16 << 20).contains(&n))?;
            Ok(())
        },
        show: |c| c.transport.min_chunk_size.to_string(),
    },
    KeySpec {
        name: "transport.narrow_bytes",
        env: "AIRAMP_NARROW_BYTES",
        default: "262144 (256K)",
        accepted: "bytes 0..=16777216; plain integer or suffix K, KiB, M, MiB; 0 = off",
        doc: "Messages larger than transport.inline_bytes and up to this size go on the first two streams of a connection only, so the few stream threads that move them stay warm; larger ones use every stream. 256K ran 1 MiB allreduces (NCCL's 128 KiB messages) 5 % faster on the H200 host, other sizes the same (docs/transport.md). 0 = off. The collective network's links do not use it.",
        example: "\"256K\"",
        apply: |c, r| {
            c.transport.narrow_bytes = want_bytes(r, |n| n <= 16 << 20)? as u64;
            Ok(())
        },
        show: |c| c.transport.narrow_bytes.to_string(),
    },
    KeySpec {
        name: "transport.socket_buffer",
        env: "AIRAMP_SOCKET_BUFFER",
        default: "0",
        accepted: "bytes: 0 (kernel autotuning) or 65536..=268435456; plain integer or suffix K, KiB, M, MiB",
        doc: "SO_SNDBUF/SO_RCVBUF per socket; 0 leaves kernel autotuning on.",
        example: "0",
        apply: |c, r| {
            c.transport.socket_buffer =
                want_bytes(r, |n| n == 0 || (64 << 10..=256 << 20).contains(&n))?;
            Ok(())
        },
        show: |c| c.transport.socket_buffer.to_string(),
    },
    KeySpec {
        name: "transport.peer_timeout_ms",
        env: "AIRAMP_PEER_TIMEOUT_MS",
        default: "30000",
        accepted: "integer milliseconds 100..=3600000",
        doc: "A connection whose peer sends nothing, not even a heartbeat, for this long fails with ncclRemoteError (both sides send a heartbeat every quarter of it). A peer that is merely slow to post a receive is never failed.",
        example: "30000",
        apply: |c, r| {
            c.transport.peer_timeout_ms = want_int(r, 100, 3_600_000)? as u64;
            Ok(())
        },
        show: |c| c.transport.peer_timeout_ms.to_string(),
    },
    KeySpec {
        name: "transport.inline_bytes",
        env: "AIRAMP_INLINE_BYTES",
        default: "auto",
        accepted: "auto, or bytes 0..=1073741824; plain integer or suffix K, KiB, M, MiB",
        doc: "Messages up to this size are sent and received by NCCL's proxy thread itself inside isend/test (one system call each way, no thread wake-up); larger ones by the stream threads, in parallel (and a send the proxy thread could not finish, its socket full). `auto`: 64K on hosts with 8 or more cores, every message (1G) on smaller ones.",
        example: "\"auto\"",
        apply: |c, r| {
            c.transport.inline_bytes = match r {
                _ if is_auto(&r) => None,
                _ => Some(want_bytes(r, |n| n <= 1 << 30)? as u64),
            };
            Ok(())
        },
        show: |c| c.transport.inline_bytes.map_or_else(|| "auto".to_string(), |n| n.to_string()),
    },
    KeySpec {
        name: "transport.poller",
        env: "AIRAMP_POLLER",
        default: "auto",
        accepted: "auto, off, one, two",
        doc: "Threads that move the messages above 4 KiB and up to transport.inline_bytes for every connection of the process instead of NCCL's proxy thread: `one` for sends and receives, `two` one for each. They spin (a core each) while such small messages flow and sleep 1 ms after the last one; bulk traffic never wakes them, and while they sleep the proxy moves small messages itself. Frees NCCL's proxy loop from the copies: on a 16-core H200 host with 2 ranks a 256 KiB allreduce ran 1.3x faster with `two`, while `one` and larger sizes did not change (docs/transport.md). `auto`: `two` where each rank has 4 cores or more (the cores it may run on, divided by the host's ranks from LOCAL_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_SIZE, MPI_LOCALNRANKS or SLURM_NTASKS_PER_NODE unless it is pinned to cores of its own) and the process may run on 8 or more, `off` otherwise (measured with 2 ranks on 16 and on 8 cores).",
        example: "\"auto\"",
        apply: |c, r| {
            c.transport.poller = want_enum(r, PollerThreads::from_name)?;
            Ok(())
        },
        show: |c| c.transport.poller.to_string(),
    },
    KeySpec {
        name: "transport.handshake_timeout_ms",
        env: "AIRAMP_HANDSHAKE_TIMEOUT_MS",
        default: "10000",
        accepted: "integer milliseconds 100..=600000",
        doc: "A connection that does not present its hello and token within this time is dropped.",
        example: "10000",
        apply: |c, r| {
            c.transport.handshake_timeout_ms = want_int(r, 100, 600_000)? as u64;
            Ok(())
        },
        show: |c| c.transport.handshake_timeout_ms.to_string(),
    },
    KeySpec {
        name: "metrics.enabled",
        env: "AIRAMP_METRICS",
        default: "true",
        accepted: "boolean: true, false, 1, 0, yes, no, on, off",
        doc: "Serve Prometheus metrics.",
        example: "true",
        apply: |c, r| {
            c.metrics.enabled = want_bool(r)?;
            Ok(())
        },
        show: |c| c.metrics.enabled.to_string(),
    },
    KeySpec {
        name: "metrics.addr",
        env: "AIRAMP_METRICS_ADDR",
        default: "127.0.0.1:9090",
        accepted: "IP, IP:PORT, [IPv6]:PORT, [IPv6] or bare IPv6 (port defaults to 9090, must not be 0)",
        doc: "Metrics listen address; local rank n listens on port + n.",
        example: "\"127.0.0.1:9090\"",
        apply: |c, r| {
            c.metrics.addr = MetricsAddr::parse(r.text()?)?;
            Ok(())
        },
        show: |c| c.metrics.addr.to_string(),
    },
    KeySpec {
        name: "metrics.textfile",
        env: "AIRAMP_METRICS_TEXTFILE",
        default: "unset",
        accepted: "a file path (empty = unset)",
        doc: "Also write metrics to this file (node-exporter textfile collector format).",
        example: "\"/var/lib/node_exporter/textfile/airamp.prom\"",
        apply: |c, r| {
            c.metrics.textfile = want_opt_text(r)?.map(PathBuf::from);
            Ok(())
        },
        show: |c| {
            c.metrics
                .textfile
                .as_ref()
                .map_or_else(|| "(unset)".to_string(), |p| p.display().to_string())
        },
    },
    KeySpec {
        name: "compression.fp8_allreduce",
        env: "AIRAMP_ENABLE_FP8_ALLREDUCE",
        default: "false",
        accepted: "boolean: true, false, 1, 0, yes, no, on, off",
        doc: "Allow compressed allreduce on the collective network (fp32/fp16/bf16 sum only; every other dtype/op stays exact), in the wire format of `compression.format` (E4M3 unless set). Used only when every member of the group enables it with the same format.",
        example: "false",
        apply: |c, r| {
            c.compression.fp8_allreduce = want_bool(r)?;
            Ok(())
        },
        show: |c| c.compression.fp8_allreduce.to_string(),
    },
    KeySpec {
        name: "compression.format",
        env: "AIRAMP_COMPRESSION_FORMAT",
        default: "e4m3",
        accepted: "one of: e4m3, e5m2, int8",
        doc: "Wire format of compressed allreduce, one byte per value plus one scale per 32 values: e4m3 (FP8, 3 mantissa bits, power-of-two scales), e5m2 (FP8, 2 mantissa bits, more range) or int8 (symmetric -127..127 with a bf16 scale: 3-5x lower error than e4m3 for 3% more bytes; the recommended format, see docs/collnet.md). Members that disagree run exact.",
        example: "\"e4m3\"",
        apply: |c, r| {
            c.compression.format = want_enum(r, wire_format_from_name)?;
            Ok(())
        },
        show: |c| c.compression.format.to_string(),
    },
    KeySpec {
        name: "collnet.workers",
        env: "AIRAMP_COLLNET_WORKERS",
        default: "auto",
        accepted: "auto, or integer 0..=64",
        doc: "Threads per collective group that run the host path's codec and reduction work off NCCL's proxy thread; 0 runs it on the proxy thread. `auto`: one per 4 CPU cores, 1..=8.",
        example: "\"auto\"",
        apply: |c, r| {
            c.collnet.workers = match r {
                _ if is_auto(&r) => None,
                _ => Some(want_int(r, 0, 64)? as u32),
            };
            Ok(())
        },
        show: |c| c.collnet.workers.map_or_else(|| "auto".to_string(), |n| n.to_string()),
    },
    KeySpec {
        name: "collnet.proxy_assist",
        env: "AIRAMP_COLLNET_PROXY_ASSIST",
        default: "false",
        accepted: "boolean: true, false, 1, 0, yes, no, on, off",
        doc: "Host path: NCCL's proxy thread moves the collective network's messages up to transport.inline_bytes itself inside test (no stream thread woken per message) and runs codec-free steps of at most 256 KiB (exact sums, allgather, reduce-scatter) itself instead of handing them to a worker. For hosts with few cores: on the 2-core build machine it cut a 256 KiB exact allreduce from about 370 to 200 us, while under NCCL on a 16-core H200 host it ran exact sums at 0.65-0.76x the default at 4-16 MiB and at par from 64 MiB, as that work then competes with NCCL's other channels for the proxy thread (docs/collnet.md). false leaves all the group's socket I/O to the stream threads and all its steps to the workers.",
        example: "false",
        apply: |c, r| {
            c.collnet.proxy_assist = want_bool(r)?;
            Ok(())
        },
        show: |c| c.collnet.proxy_assist.to_string(),
    },
    KeySpec {
        name: "gpu.collnet",
        env: "AIRAMP_GPU_COLLNET",
        default: "false",
        accepted: "boolean: true, false, 1, 0, yes, no, on, off",
        doc: "Offer NCCL GPU buffers to the collective network (NCCL_PTR_CUDA) and run compressed allreduce (FP8, INT8) and exact float sums as CUDA kernels, when a CUDA driver and NVRTC load. The kernels run in a CUDA context of airamp's own, so no call on NCCL's threads can wait for the application (docs/gpu.md). Off by default: that context costs GPU memory, about 63 MiB per process under MPS with gpu.sms = 16 and about 270 MiB without MPS, NCCL uses GPU buffers only where its GPUDirect check passes (NCCL_NET_GDR_LEVEL), and it needs MPS to be fast: without MPS the GPU takes turns between that context and the application's, and the path ran at 0.34-0.49x Ring on loopback against 1.6-1.8x with MPS (docs/results/multigpu-h200x2.md; a warning is logged). false keeps the collective network on host buffers.",
        example: "false",
        apply: |c, r| {
            c.gpu.collnet = want_bool(r)?;
            Ok(())
        },
        show: |c| c.gpu.collnet.to_string(),
    },
    KeySpec {
        name: "gpu.mirror_budget",
        env: "AIRAMP_GPU_MIRROR_BUDGET",
        default: "8G",
        accepted: "bytes: 67108864 (64 MiB)..=1099511627776 (1 TiB); plain integer or suffix K, KiB, M, MiB, G, GiB",
        doc: "Most pinned host memory this process's mirrors of registered GPU buffers may hold. TCP cannot read GPU memory, so every GPU buffer NCCL registers with airamp (its own buffers at connect; the application's, when it registers them, e.g. PyTorch's TORCH_NCCL_USE_TENSOR_REGISTER_ALLOCATOR_HOOK=1, which registers whole allocator segments) gets a page-locked host mirror of its size. A registration that would pass the budget is refused with one warning (repeats of it are logged at INFO): NCCL then moves that user buffer through its own buffers, slower but with the same result; a refused registration of NCCL's own buffers (about 50 MiB for two ranks on one H200) fails the communicator at connect, naming this key. A user buffer NCCL registers with both the TCP path and the collective network counts twice. Ranks may refuse differently (the budget counts each process's own registrations): NCCL then cuts that reduction differently on each, which gives the same bytes where the cuts fall on airamp's 1 MiB segments and otherwise fails the collective with a protocol error, never a hang (tested). The budget counts mirrors only; the collective network's fixed staging slots (20-40 MiB per group) are not in it (docs/gpu.md).",
        example: "\"8G\"",
        apply: |c, r| {
            c.gpu.mirror_budget = want_bytes(r, |n| (64 << 20..=1 << 40).contains(&n))?;
            Ok(())
        },
        show: |c| format_bytes(c.gpu.mirror_budget as u64),
    },
    KeySpec {
        name: "gpu.sms",
        env: "AIRAMP_GPU_SMS",
        default: "16",
        accepted: "integer 0..=1024",
        doc: "Streaming multiprocessors that airamp's own CUDA context (gpu.collnet) may run on, where the driver can limit a context's SMs: under MPS (execution affinity; the driver rounds up to its granularity, 8 on an H200). The context's device memory grows with its SMs: on an H200 under MPS 49 MiB at 8, 63 at 16, 91 at 32, 269 on all 132. Its kernels only encode, fold and copy what the network carries: with 16 SMs FP8 allreduce ran as fast as on all 132 under NCCL on an H200, with 8 about 11 % slower (docs/results/gpu-path-h200.md). 0: every SM. Without MPS the driver cannot limit a context and the context costs about 270 MiB (logged at INFO); an MPS client that CUDA_MPS_ACTIVE_THREAD_PERCENTAGE holds to fewer SMs is refused the limit, and airamp warns and runs on that client's SMs.",
        example: "16",
        apply: |c, r| {
            c.gpu.sms = want_int(r, 0, 1024)? as u32;
            Ok(())
        },
        show: |c| c.gpu.sms.to_string(),
    },
    KeySpec {
        name: "gpu.ghost_kernels",
        env: "AIRAMP_ENABLE_GHOST_KERNELS",
        default: "false",
        accepted: "boolean: true, false, 1, 0, yes, no, on, off",
        doc: "Accepted and ignored: measured on an H200, no ghost-kernel mode removed the slower first kernel after a CPU gap, so none is built; setting it logs that once (docs/results/ghost-kernels-h200.md).",
        example: "false",
        apply: |c, r| {
            c.gpu.ghost_kernels = want_bool(r)?;
            Ok(())
        },
        show: |c| c.gpu.ghost_kernels.to_string(),
    },
    KeySpec {
        name: "tuner.enabled",
        env: "AIRAMP_TUNER",
        default: "true",
        accepted: "boolean: true, false, 1, 0, yes, no, on, off",
        doc: "Enable the tuner (`ncclTunerPlugin_v2`..`v6`, see docs/tuner.md). It decides collective network versus NCCL's own algorithms for allreduce, and runs mid-size allreduce on one channel where every hop is the net (tuner.single_channel_bytes); off, it leaves every NCCL choice alone. Must be the same on every host (checked at connect: a peer that differs is refused on both ends).",
        example: "true",
        apply: |c, r| {
            c.tuner.enabled = want_bool(r)?;
            Ok(())
        },
        show: |c| c.tuner.enabled.to_string(),
    },
    KeySpec {
        name: "tuner.calibrate",
        env: "AIRAMP_TUNER_CALIBRATE",
        default: "true",
        accepted: "boolean: true, false, 1, 0, yes, no, on, off",
        doc: "Measure link bandwidth, latency and codec speed inside the collective network's connect (about 30 ms at 5 Gbit/s), agreed by every member and used by every rank's tuner of that communicator; calibration keys that are set override the measured figures. Runs only when every member has it on, FP8 allreduce on, and not all four calibration keys set. Must be the same on every host.",
        example: "true",
        apply: |c, r| {
            c.tuner.calibrate = want_bool(r)?;
            Ok(())
        },
        show: |c| c.tuner.calibrate.to_string(),
    },
    KeySpec {
        name: "tuner.min_gain",
        env: "AIRAMP_TUNER_MIN_GAIN",
        default: "0.05",
        accepted: "number 0.0..=1.0",
        doc: "The compressed collective network is chosen only when predicted at least this fraction faster than NCCL's best raw algorithm. The margin bounds what keeping the raw algorithm can cost when the prediction is right: at most 1 - 1/(1 + min_gain) of the faster path's speed (0.05: under 5%). Must be the same on every host (checked at connect).",
        example: "0.05",
        apply: |c, r| {
            let x = want_float(r)?;
            if !(0.0..=1.0).contains(&x) {
                return Err("out of range".to_string());
            }
            c.tuner.min_gain = x;
            Ok(())
        },
        show: |c| c.tuner.min_gain.to_string(),
    },
    KeySpec {
        name: "tuner.link_gbps",
        env: "AIRAMP_LINK_GBPS",
        default: "unset",
        accepted: "number > 0 (empty = unset)",
        doc: "Calibration profile (`airamp calibrate`): link bandwidth in Gbit/s; overrides the figure measured in connect. Unset: the measured figure, else the tuner assumes 100 Gbit/s, where compression rarely pays. Must be the same on every host (checked at connect).",
        example: "100.0",
        apply: |c, r| {
            if matches!(r, Raw::Str(s) if s.trim().is_empty()) {
                c.tuner.link_gbps = None;
                return Ok(());
            }
            let x = want_float(r)?;
            if x <= 0.0 {
                return Err("out of range".to_string());
            }
            c.tuner.link_gbps = Some(x);
            Ok(())
        },
        show: |c| show_opt(&c.tuner.link_gbps),
    },
    KeySpec {
        name: "tuner.link_latency_us",
        env: "AIRAMP_LINK_LATENCY_US",
        default: "unset",
        accepted: "number >= 0 (empty = unset)",
        doc: "Calibration profile (`airamp calibrate`): one-way link latency in microseconds; overrides the figure measured in connect. Unset: the measured figure, else 10 us. Must be the same on every host (checked at connect).",
        example: "5.0",
        apply: |c, r| {
            if matches!(r, Raw::Str(s) if s.trim().is_empty()) {
                c.tuner.link_latency_us = None;
                return Ok(());
            }
            let x = want_float(r)?;
            if x < 0.0 {
                return Err("out of range".to_string());
            }
            c.tuner.link_latency_us = Some(x);
            Ok(())
        },
        show: |c| show_opt(&c.tuner.link_latency_us),
    },
    KeySpec {
        name: "tuner.encode_gvps",
        env: "AIRAMP_TUNER_ENCODE_GVPS",
        default: "unset",
        accepted: "number > 0 (empty = unset)",
        doc: "Calibration profile (`airamp calibrate`): FP8 encode speed, G values/s (one core; the figure measured in connect is the group's executor: workers x one core); overrides the measured figure. Unset: the measured figure, else 1.9 (AVX2). Must be the same on every host (checked at connect).",
        example: "1.9",
        apply: |c, r| {
            c.tuner.encode_gvps = want_opt_positive(r)?;
            Ok(())
        },
        show: |c| show_opt(&c.tuner.encode_gvps),
    },
    KeySpec {
        name: "tuner.decode_gvps",
        env: "AIRAMP_TUNER_DECODE_GVPS",
        default: "unset",
        accepted: "number > 0 (empty = unset)",
        doc: "Calibration profile (`airamp calibrate`): FP8 decode-and-accumulate speed, G values/s (one core; the measured figure is the group's executor); overrides the measured figure. Unset: the measured figure, else 6.9 (AVX2). Must be the same on every host (checked at connect).",
        example: "6.9",
        apply: |c, r| {
            c.tuner.decode_gvps = want_opt_positive(r)?;
            Ok(())
        },
        show: |c| show_opt(&c.tuner.decode_gvps),
    },
    KeySpec {
        name: "tuner.call_overhead_us",
        env: "AIRAMP_TUNER_CALL_OVERHEAD_US",
        default: "150",
        accepted: "number 0..=100000",
        doc: "Fixed extra cost of one compressed collective-network allreduce over the raw path (NCCL's CollNet kernels and proxy, step scheduling, codec start-up), microseconds; keeps small messages on NCCL's own algorithms. 150 fits the H200 measurements in docs/tuner.md (a 64 KiB FP8 CollNet call: 270-300 us, 120-185 us beyond wire, codec and two latencies). Must be the same on every host (checked at connect).",
        example: "150.0",
        apply: |c, r| {
            let x = want_float(r)?;
            if !(0.0..=100_000.0).contains(&x) {
                return Err("out of range".to_string());
            }
            c.tuner.call_overhead_us = x;
            Ok(())
        },
        show: |c| c.tuner.call_overhead_us.to_string(),
    },
    KeySpec {
        name: "tuner.single_channel_bytes",
        env: "AIRAMP_TUNER_SINGLE_CHANNEL_BYTES",
        default: "524288 (512K)",
        accepted: "bytes 0..=1073741824; plain integer or suffix K, KiB, M, MiB; 0 turns it off",
        doc: "Where every rank is a node of its own and alone in its NVLink domain (each hop of NCCL's ring or tree goes through airamp's net), an allreduce up to this size that NCCL runs as ring or tree uses one NCCL channel. airamp moves messages of this size inline on NCCL's one proxy thread, so more channels only add per-message costs there; larger allreduces keep NCCL's channel count, where the stream threads copy in parallel. Assumes airamp's net carries the traffic: set 0 when airamp's tuner runs over another net. Must be the same on every host, and so must the airamp version (checked at connect: a peer that differs is refused on both ends, since ranks that disagree on a channel count would hang).",
        example: "\"512K\"",
        apply: |c, r| {
            c.tuner.single_channel_bytes = want_bytes(r, |n| n <= 1 << 30)? as u64;
            Ok(())
        },
        show: |c| c.tuner.single_channel_bytes.to_string(),
    },
];

/// A former name of a key, still read everywhere the key is.
pub struct Alias {
    /// Former TOML `section.key`.
    pub name: &'static str,
    /// Former environment variable.
    pub env: &'static str,
    /// The key it stands for, in [`KEYS`].
    pub key: &'static str,
}

/// Former names that keep working. Where a key is set under both names in
/// the same place (the file, or the environment), its own name wins.
pub static ALIASES: &[Alias] = &[Alias {
    name: "compression.fp8_format",
    env: "AIRAMP_FP8_FORMAT",
    key: "compression.format",
}];

/// The alias of `KEYS[i]`, if it has one.
fn alias_of_key(i: usize) -> Option<&'static Alias> {
    ALIASES.iter().find(|a| a.key == KEYS[i].name)
}

/// A positive number, or `None` for an empty env value (explicitly unset).
fn want_opt_positive(r: Raw<'_>) -> Result<Option<f64>, String> {
    if matches!(r, Raw::Str(s) if s.trim().is_empty()) {
        return Ok(None);
    }
    let x = want_float(r)?;
    if x <= 0.0 {
        return Err("out of range".to_string());
    }
    Ok(Some(x))
}

fn key_index(name: &str) -> Option<usize> {
    KEYS.iter().position(|k| k.name == name)
}

/// Names of the TOML sections that hold keys.
fn sections() -> Vec<&'static str> {
    let mut s: Vec<&'static str> = KEYS
        .iter()
        .map(|k| k.name.split_once('.').map_or(k.name, |(s, _)| s))
        .collect();
    s.dedup();
    s
}

/// Levenshtein distance, for "did you mean" hints.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn did_you_mean<'a>(what: &str, candidates: impl Iterator<Item = &'a str>) -> String {
    let what = what.to_ascii_lowercase();
    candidates
        .map(|c| (edit_distance(&what, &c.to_ascii_lowercase()), c))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map_or_else(String::new, |(_, c)| format!(" (did you mean {c}?)"))
}

/// Whether an unknown `AIRAMP_*` name looks like a Kubernetes service link
/// variable (injected for a Service named `airamp`).
fn is_k8s_service_var(name: &str) -> bool {
    let rest = &name["AIRAMP_".len()..];
    rest == "PORT" || rest.starts_with("PORT_") || rest.starts_with("SERVICE_")
}

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

impl Config {
    /// Builds the configuration from a file (`(path, contents)`) and an
    /// environment. Pure: touches neither the file system nor the process
    /// environment. Never panics.
    pub fn from_sources<I, K, V>(file: Option<(&Path, &str)>, env: I) -> (Config, Vec<Diagnostic>)
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut cfg = Config::default();
        let mut diags = Vec::new();

        if let Some((path, text)) = file {
            cfg.file = Some(path.to_path_buf());
            cfg.apply_file(path, text, &mut diags);
        }

        // Sorted, last duplicate wins: deterministic diagnostics.
        let env: BTreeMap<String, String> = env
            .into_iter()
            .map(|(k, v)| (k.as_ref().to_string(), v.as_ref().to_string()))
            .collect();
        cfg.apply_env(&env, &mut diags);
        (cfg, diags)
    }

    /// Reads `AIRAMP_CONF` (or `/etc/airamp.conf`) and the process
    /// environment. A missing default file is silent; a missing
    /// `AIRAMP_CONF` file, an unreadable or non-UTF-8 file is one
    /// diagnostic and the file is ignored.
    pub fn load_from_process() -> (Config, Vec<Diagnostic>) {
        let mut diags = Vec::new();
        let mut env = Vec::new();
        for (k, v) in std::env::vars_os() {
            match (k.into_string(), v.into_string()) {
                (Ok(k), Ok(v)) => env.push((k, v)),
                (Ok(k), Err(_)) if k.starts_with("AIRAMP_") || k.starts_with("NCCL_SOCKET_") => {
                    diags.push(Diagnostic::warn(
                        None,
                        format!("ignoring {k}: its value is not valid UTF-8"),
                    ));
                }
                _ => {}
            }
        }
        let explicit = env
            .iter()
            .find(|(k, v)| k == CONF_ENV && !v.trim().is_empty())
            .map(|(_, v)| PathBuf::from(v.trim()));
        let path = explicit
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONF_PATH));
        let text = read_conf_file(&path, explicit.is_some(), &mut diags);
        let (cfg, more) = Config::from_sources(text.as_deref().map(|t| (path.as_path(), t)), env);
        diags.extend(more);
        (cfg, diags)
    }

    fn apply_file(&mut self, path: &Path, text: &str, diags: &mut Vec<Diagnostic>) {
        let table: toml::Table = match text.parse() {
            Ok(t) => t,
            Err(e) => {
                let msg = e.to_string();
                diags.push(Diagnostic::warn(
                    None,
                    format!(
                        "{} is not valid TOML, ignoring the whole file and using defaults: {}",
                        path.display(),
                        msg.trim_end()
                    ),
                ));
                return;
            }
        };
        let sections = sections();
        for (section, value) in &table {
            if !sections.contains(&section.as_str()) {
                diags.push(Diagnostic::warn(
                    Some(section),
                    format!(
                        "{}: ignoring unknown key {section:?}{}",
                        path.display(),
                        did_you_mean(section, sections.iter().copied())
                    ),
                ));
                continue;
            }
            let Some(inner) = value.as_table() else {
                diags.push(Diagnostic::warn(
                    Some(section),
                    format!(
                        "{}: [{section}] must be a table, got {}; ignoring it",
                        path.display(),
                        value.type_str()
                    ),
                ));
                continue;
            };
            for (key, value) in inner {
                let full = format!("{section}.{key}");
                match key_index(&full) {
                    Some(i) => {
                        self.apply_one(i, Raw::Toml(value), Source::File(path.to_path_buf()), diags)
                    }
                    None if ALIASES.iter().any(|a| a.name == full) => {
                        self.apply_file_alias(path, inner, &full, value, diags)
                    }
                    None => diags.push(Diagnostic::warn(
                        Some(&full),
                        format!(
                            "{}: ignoring unknown key {full}{}",
                            path.display(),
                            did_you_mean(&full, KEYS.iter().map(|k| k.name))
                        ),
                    )),
                }
            }
        }
    }

    /// `section.name = value` where `section.name` is the former name of a
    /// key in the same `section` table.
    fn apply_file_alias(
        &mut self,
        path: &Path,
        section: &toml::Table,
        name: &str,
        value: &toml::Value,
        diags: &mut Vec<Diagnostic>,
    ) {
        let Some((alias, i)) = ALIASES
            .iter()
            .find(|a| a.name == name)
            .and_then(|a| Some((a, key_index(a.key)?)))
        else {
            return;
        };
        let own = alias.key.split_once('.').map_or(alias.key, |(_, k)| k);
        match section.get(own) {
            None => self.apply_one(i, Raw::Toml(value), Source::File(path.to_path_buf()), diags),
            Some(v) if v == value => {}
            Some(_) => diags.push(Diagnostic::warn(
                Some(alias.key),
                format!(
                    "{}: ignoring {name} (former name of {}): {} is also set",
                    path.display(),
                    alias.key,
                    alias.key
                ),
            )),
        }
    }

    fn apply_env(&mut self, env: &BTreeMap<String, String>, diags: &mut Vec<Diagnostic>) {
        for (name, value) in env {
            if !name.starts_with("AIRAMP_") || OTHER_ENV.contains(&name.as_str()) {
                continue;
            }
            match KEYS.iter().position(|k| k.env == name) {
                Some(i) => self.apply_one(i, Raw::Str(value), Source::Env(name.clone()), diags),
                None if ALIASES.iter().any(|a| a.env == name) => {
                    self.apply_env_alias(env, name, value, diags)
                }
                // Never echo the value of an unknown variable: it may be a secret.
                None if is_k8s_service_var(name) => diags.push(Diagnostic::warn(
                    None,
                    format!(
                        "ignoring unknown environment variable {name}: not an airamp setting; \
                         Kubernetes injects AIRAMP_PORT*/AIRAMP_SERVICE_* variables for a \
                         Service named \"airamp\" (set enableServiceLinks: false to silence this)"
                    ),
                )),
                None => diags.push(Diagnostic::warn(
                    None,
                    format!(
                        "ignoring unknown environment variable {name}{}",
                        did_you_mean(
                            name,
                            KEYS.iter()
                                .map(|k| k.env)
                                .chain(ALIASES.iter().map(|a| a.env))
                                .chain(OTHER_ENV.iter().copied())
                        )
                    ),
                )),
            }
        }

        // NCCL fallbacks, only for keys neither the file nor AIRAMP_* set.
        let ifname = key_index("transport.socket_ifname").unwrap_or(0);
        if self.sources[ifname] == Source::Default {
            if let Some(v) = env.get("NCCL_SOCKET_IFNAME") {
                self.apply_one(
                    ifname,
                    Raw::Str(v),
                    Source::Env("NCCL_SOCKET_IFNAME".into()),
                    diags,
                );
            }
        }
        let family = key_index("transport.socket_family").unwrap_or(0);
        if self.sources[family] == Source::Default {
            if let Some(v) = env.get("NCCL_SOCKET_FAMILY") {
                let mapped = match v.trim() {
                    "AF_INET" => Some(SocketFamily::Ipv4),
                    "AF_INET6" => Some(SocketFamily::Ipv6),
                    _ => None,
                };
                match mapped {
                    Some(f) => {
                        self.transport.socket_family = f;
                        self.sources[family] = Source::Env("NCCL_SOCKET_FAMILY".into());
                    }
                    None => diags.push(Diagnostic::warn(
                        Some("transport.socket_family"),
                        format!(
                            "transport.socket_family: ignoring NCCL_SOCKET_FAMILY={}; accepted: \
                             AF_INET, AF_INET6; using {}",
                            Raw::Str(v).shown(),
                            self.transport.socket_family
                        ),
                    )),
                }
            }
        }
    }

    /// `name=value` where `name` is the former variable of a key.
    fn apply_env_alias(
        &mut self,
        env: &BTreeMap<String, String>,
        name: &str,
        value: &str,
        diags: &mut Vec<Diagnostic>,
    ) {
        let Some((alias, i)) = ALIASES
            .iter()
            .find(|a| a.env == name)
            .and_then(|a| Some((a, key_index(a.key)?)))
        else {
            return;
        };
        let own = KEYS[i].env;
        match env.get(own) {
            None => self.apply_one(i, Raw::Str(value), Source::Env(name.to_string()), diags),
            Some(v) if v == value => {}
            Some(_) => diags.push(Diagnostic::warn(
                Some(alias.key),
                format!("ignoring {name} (former name of {own}): {own} is also set"),
            )),
        }
    }

    /// Applies one raw value to key `i`; on error the key keeps its
    /// current (lower-layer) value and one diagnostic is pushed.
    fn apply_one(&mut self, i: usize, raw: Raw<'_>, src: Source, diags: &mut Vec<Diagnostic>) {
        let spec = &KEYS[i];
        let mut trial = self.clone();
        match (spec.apply)(&mut trial, raw) {
            Ok(()) => {
                *self = trial;
                self.sources[i] = src;
            }
            Err(why) => diags.push(Diagnostic::warn(
                Some(spec.name),
                format!(
                    "{}: invalid value {} from {src} ({why}); accepted: {}; using {} ({})",
                    spec.name,
                    raw.shown(),
                    spec.accepted,
                    (spec.show)(self),
                    self.sources[i],
                ),
            )),
        }
    }

    /// Where key `key` (`section.name`) got its value; `None` for an unknown key.
    pub fn source(&self, key: &str) -> Option<&Source> {
        key_index(key).map(|i| &self.sources[i])
    }

    /// The file that was parsed, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// The effective value of `key`, rendered as in [`Self::render_effective`].
    pub fn value_string(&self, key: &str) -> Option<String> {
        key_index(key).map(|i| (KEYS[i].show)(self))
    }

    /// A table of every key, its effective value and its source, for
    /// `airamp config check`.
    pub fn render_effective(&self) -> String {
        let rows: Vec<[String; 3]> = KEYS
            .iter()
            .zip(&self.sources)
            .map(|(k, s)| [k.name.to_string(), (k.show)(self), s.to_string()])
            .collect();
        let header = ["KEY", "VALUE", "SOURCE"].map(String::from);
        let mut w = [0usize; 2];
        for r in rows.iter().chain(std::iter::once(&header)) {
            w[0] = w[0].max(r[0].chars().count());
            w[1] = w[1].max(r[1].chars().count());
        }
        let mut out = String::new();
        match &self.file {
            Some(p) => out.push_str(&format!("config file: {}\n", p.display())),
            None => out.push_str("config file: (none)\n"),
        }
        for r in std::iter::once(&header).chain(rows.iter()) {
            let line = format!("{:w0$}  {:w1$}  {}", r[0], r[1], r[2], w0 = w[0], w1 = w[1]);
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Reads the configuration file. A missing file is silent unless it was
/// named explicitly by `AIRAMP_CONF`; any other failure is one diagnostic.
fn read_conf_file(path: &Path, explicit: bool, diags: &mut Vec<Diagnostic>) -> Option<String> {
    let from = if explicit {
        format!(" (from {CONF_ENV})")
    } else {
        String::new()
    };
    match std::fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(t) => Some(t),
            Err(_) => {
                diags.push(Diagnostic::warn(
                    None,
                    format!(
                        "{}{from} is not valid UTF-8; ignoring the file, using defaults",
                        path.display()
                    ),
                ));
                None
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => None,
        Err(e) => {
            diags.push(Diagnostic::warn(
                None,
                format!("cannot read {}{from}: {e}; using defaults", path.display()),
            ));
            None
        }
    }
}

// ---------------------------------------------------------------------------
// Process-wide configuration
// ---------------------------------------------------------------------------

static GLOBAL: OnceLock<(Config, Vec<Diagnostic>)> = OnceLock::new();

fn global_pair() -> &'static (Config, Vec<Diagnostic>) {
    GLOBAL.get_or_init(Config::load_from_process)
}

/// The process-wide configuration, loaded once on first use.
pub fn global() -> &'static Config {
    &global_pair().0
}

/// The diagnostics produced when [`global`] loaded; the init path logs them.
pub fn global_diagnostics() -> &'static [Diagnostic] {
    &global_pair().1
}

// ---------------------------------------------------------------------------
// Derived docs
// ---------------------------------------------------------------------------

/// `docs/configuration.md`, generated from [`KEYS`].
pub fn keys_markdown() -> String {
    let mut s = String::from(
        "# airamp configuration\n\n\
         <!-- Generated from src/config.rs (keys_markdown); do not edit by hand. -->\n\n\
         airamp reads `/etc/airamp.conf` (TOML; set `AIRAMP_CONF` to use another file) once \
         at init. Every key can be overridden by its environment variable. A bad value is \
         reported and ignored (the key keeps the file value or the default); a missing file \
         means defaults. Unknown keys and unknown `AIRAMP_*` variables are reported and \
         ignored. `airamp config check [FILE]` prints the effective configuration and where \
         each value came from. See `examples/airamp.conf`. `AIRAMP_NVRTC_LIB` is not a key: \
         it names the NVRTC library (file or directory) for the GPU kernels, see \
         `docs/gpu.md`.\n\n\
         | key | env var | default | meaning |\n\
         |---|---|---|---|\n",
    );
    for (i, k) in KEYS.iter().enumerate() {
        let former = alias_of_key(i).map_or_else(String::new, |a| {
            format!(" Former name, still read: `{}` / `{}`.", a.name, a.env)
        });
        s.push_str(&format!(
            "| `{}` | `{}` | {} | {}{former} Accepted: {}. |\n",
            k.name,
            k.env,
            k.default,
            k.doc,
            k.accepted.replace('|', "\\|")
        ));
    }
    s
}

/// `examples/airamp.conf`, generated from [`KEYS`]: every key, commented out.
pub fn example_conf() -> String {
    let mut s = String::from(
        "# airamp configuration: /etc/airamp.conf (or the file named by AIRAMP_CONF).\n\
         # Generated from src/config.rs (example_conf). Every key is optional and shown\n\
         # commented out with its default (or an example value when it has none).\n\
         # Each key can be overridden by the environment variable named above it.\n",
    );
    let mut section = "";
    for (i, k) in KEYS.iter().enumerate() {
        let (sec, key) = k.name.split_once('.').unwrap_or(("", k.name));
        if sec != section {
            section = sec;
            s.push_str(&format!("\n[{sec}]\n"));
        }
        let former = alias_of_key(i).map_or_else(String::new, |a| {
            format!("\n# former name, still read: {} / {}", a.name, a.env)
        });
        s.push_str(&format!(
            "\n# {}\n# env: {}; default: {}\n# accepted: {}{former}\n#{key} = {}\n",
            k.doc, k.env, k.default, k.accepted, k.example
        ));
    }
    s
}

/// Fuzzing entry point: bytes up to the first NUL are the file, the rest
/// is `NAME=value` lines for the environment. Never panics.
pub fn parse_for_fuzz(bytes: &[u8]) {
    let (file, env) = match bytes.iter().position(|&b| b == 0) {
        Some(i) => (&bytes[..i], &bytes[i + 1..]),
        None => (bytes, &[][..]),
    };
    let file = String::from_utf8_lossy(file);
    let env = String::from_utf8_lossy(env);
    let env: Vec<(String, String)> = env
        .lines()
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or((l, ""));
            (k.to_string(), v.to_string())
        })
        .collect();
    let (cfg, diags) = Config::from_sources(Some((Path::new("fuzz.conf"), &file)), env);
    let _ = cfg.render_effective();
    for d in &diags {
        let _ = d.to_string();
    }
    let _ = MetricsAddr::local_rank_from_env([("LOCAL_RANK", &*file)]);
    let _ = cfg.metrics.addr.for_local_rank(u16::MAX);
    if let Some(f) = &cfg.transport.socket_ifname {
        let _ = f.matches(&file);
    }
}
