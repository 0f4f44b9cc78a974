//! `airamp doctor`: checks a node the way a support engineer would, one
//! finding per line (OK / WARN / FAIL) with the fix.
//!
//! The checks ([`collect`]) run on an explicit [`Host`] (environment
//! variables, loader search path, interfaces, the loader probe), so tests
//! set up a misconfiguration without touching the process environment;
//! [`run`] fills a [`Host`] from this process and machine and prints.
//! See docs/doctor.md.

mod elf;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use airamp::config::{
    self, Config, Diagnostic, MetricsAddr, PollerThreads, SocketFamily, LOCAL_RANK_VARS,
};
use airamp::sys::InterfaceAddr;
use airamp::transport::iface::{self, Family};

/// Options of `airamp doctor`.
#[derive(Clone, Debug, Default)]
pub struct DoctorOpts {
    /// `--peer HOST:PORT`: a host running `airamp calibrate --serve PORT`.
    pub peer: Option<String>,
    /// `--json`: one JSON array of findings instead of text.
    pub json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One finding: what was checked, how it went, and the fix.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    pub check: &'static str,
    pub status: Status,
    pub message: String,
    pub fix: Option<String>,
}

fn finding(check: &'static str, status: Status, message: String, fix: Option<String>) -> Finding {
    Finding {
        check,
        status,
        message,
        fix,
    }
}

/// The vtables NCCL looks up in a net plugin, newest last.
pub const NET_SYMBOLS: [&str; 6] = [
    "ncclNetPlugin_v7",
    "ncclNetPlugin_v8",
    "ncclNetPlugin_v9",
    "ncclNetPlugin_v10",
    "ncclNetPlugin_v11",
    "ncclNetPlugin_v12",
];
pub const COLLNET_SYMBOLS: [&str; 6] = [
    "ncclCollNetPlugin_v7",
    "ncclCollNetPlugin_v8",
    "ncclCollNetPlugin_v9",
    "ncclCollNetPlugin_v10",
    "ncclCollNetPlugin_v11",
    "ncclCollNetPlugin_v12",
];
pub const TUNER_SYMBOLS: [&str; 5] = [
    "ncclTunerPlugin_v2",
    "ncclTunerPlugin_v3",
    "ncclTunerPlugin_v4",
    "ncclTunerPlugin_v5",
    "ncclTunerPlugin_v6",
];

fn wanted_symbols() -> impl Iterator<Item = &'static str> {
    NET_SYMBOLS
        .into_iter()
        .chain(COLLNET_SYMBOLS)
        .chain(TUNER_SYMBOLS)
}

/// What loading a library gave: the wanted symbols it resolves, or the
/// loader's error.
pub type LoadResult = Result<Vec<String>, String>;

/// Everything the checks look at.
pub struct Host<'a> {
    /// The environment (`AIRAMP_*`, `NCCL_*`, `LD_LIBRARY_PATH`, local rank).
    pub vars: BTreeMap<String, String>,
    /// The config file read when `AIRAMP_CONF` is unset (`/etc/airamp.conf`).
    pub default_conf: PathBuf,
    /// Directory that relative paths in `NCCL_NET_PLUGIN` are taken from.
    pub cwd: PathBuf,
    /// Libraries in the loader cache (`ldconfig -p`), full paths.
    pub ld_cache: Vec<PathBuf>,
    /// The loader's default directories, searched after the cache.
    pub default_lib_dirs: Vec<PathBuf>,
    /// This host's glibc version (`2.36`), when known.
    pub glibc: Option<String>,
    /// The host's interface addresses.
    pub interfaces: Vec<InterfaceAddr>,
    /// Interfaces with a PCI device (the others are virtual or loopback).
    pub pci_nics: BTreeSet<String>,
    /// The plugin installed beside this binary, offered as the fix.
    pub beside_binary: Option<PathBuf>,
    /// Whether a CUDA MPS control daemon listens on the pipe directory this
    /// environment names ([`mps_daemon_running`]).
    pub mps_daemon: bool,
    /// Cores this process may run on, and cores online on the host.
    pub cores: (usize, usize),
    /// Loads a library as NCCL does (`RTLD_NOW | RTLD_LOCAL`), calling nothing in it.
    pub load: &'a dyn Fn(&Path) -> LoadResult,
    /// The `--peer` test: `(HOST:PORT, plugin)` → a line on success.
    pub peer: &'a PeerProbe,
}

/// The `--peer` test: `(HOST:PORT, plugin library)` → a line on success.
pub type PeerProbe = dyn Fn(&str, Option<&Path>) -> Result<String, String>;

impl Host<'_> {
    fn var(&self, k: &str) -> Option<&str> {
        self.vars.get(k).map(|v| v.trim()).filter(|v| !v.is_empty())
    }
}

/// Every finding for `host`, in a fixed order.
pub fn collect(host: &Host<'_>, opts: &DoctorOpts) -> Vec<Finding> {
    let mut out = Vec::new();
    let plugin = check_plugin(host, &mut out);
    check_nccl_net(host, &mut out);
    let (cfg, diags) = load_config(host);
    let devices = check_interfaces(host, &cfg, &mut out);
    check_config(&cfg, &diags, &mut out);
    check_metrics_port(host, &cfg, &mut out);
    check_compression(host, &cfg, &devices, &mut out);
    check_poller(host, &cfg, &mut out);
    check_tuner(host, plugin.as_deref(), &mut out);
    if let Some(peer) = &opts.peer {
        let lib = plugin.as_deref().or(host.beside_binary.as_deref());
        out.push(match (host.peer)(peer, lib) {
            Ok(msg) => finding("peer", Status::Ok, msg, None),
            Err(e) => finding(
                "peer",
                Status::Fail,
                format!("{peer}: {e}"),
                Some(
                    "run `airamp calibrate --serve PORT` on the peer; check firewalls and AIRAMP_SOCKET_IFNAME on both hosts"
                        .to_string(),
                ),
            ),
        });
    }
    out
}

/// 1 when something would stop airamp from being used, else 0.
pub fn exit_status(findings: &[Finding]) -> u8 {
    u8::from(findings.iter().any(|f| f.status == Status::Fail))
}

// ---------------------------------------------------------------------------
// The plugin library
// ---------------------------------------------------------------------------

/// The names NCCL `dlopen`s for `NCCL_NET_PLUGIN` (or its tuner
/// counterpart with `prefix` `libnccl-tuner`), in order: the value as
/// given, then `<prefix>-<value>.so` unless the value is a path or a
/// `lib*.so` name; unset: `<prefix>.so`.
pub fn nccl_candidates(prefix: &str, value: Option<&str>) -> Vec<String> {
    match value {
        None => vec![format!("{prefix}.so")],
        Some(v) => {
            let mut c = vec![v.to_string()];
            // NCCL adds the prefix unless the value is a path or a lib*.so name.
            let full_name = v.starts_with("lib") && v.ends_with(".so");
            if !v.contains('/') && !full_name {
                c.push(format!("{prefix}-{v}.so"));
            }
            c
        }
    }
}

/// Where `dlopen(name)` finds `name`: a path as given (relative to the
/// working directory); a bare name on `LD_LIBRARY_PATH`, then in the
/// loader cache, then in the default directories. (The `RPATH`/`RUNPATH`
/// of `libnccl.so` itself, which the loader also searches, is not known here.)
fn find_library(host: &Host<'_>, name: &str) -> Option<(PathBuf, &'static str)> {
    if name.contains('/') {
        let p = host.cwd.join(name);
        return p.is_file().then_some((p, "path"));
    }
    let ld_path = host.var("LD_LIBRARY_PATH").unwrap_or("");
    for dir in ld_path.split(':').filter(|d| !d.is_empty()) {
        let p = host.cwd.join(dir).join(name);
        if p.is_file() {
            return Some((p, "on LD_LIBRARY_PATH"));
        }
    }
    if let Some(p) = host
        .ld_cache
        .iter()
        .find(|p| p.file_name().is_some_and(|f| f == name) && p.is_file())
    {
        return Some((p.clone(), "in the loader cache"));
    }
    host.default_lib_dirs
        .iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .map(|p| (p, "in a default library directory"))
}

fn plugin_fix(host: &Host<'_>) -> String {
    let path = host.beside_binary.as_ref().map_or_else(
        || "/path/to/libnccl-net-airamp.so".to_string(),
        |p| p.display().to_string(),
    );
    format!("export NCCL_NET_PLUGIN={path} (an absolute path needs no LD_LIBRARY_PATH)")
}

/// `net v7 v8; collnet -; tuner v2 v3`-style list of the present versions.
fn versions(present: &BTreeSet<String>, names: &[&str], prefix: &str) -> Vec<String> {
    names
        .iter()
        .filter(|n| present.contains(**n))
        .map(|n| n.trim_start_matches(prefix).to_string())
        .collect()
}

fn check_plugin(host: &Host<'_>, out: &mut Vec<Finding>) -> Option<PathBuf> {
    let value = host.var("NCCL_NET_PLUGIN");
    let shown = value.map_or("unset".to_string(), |v| format!("NCCL_NET_PLUGIN={v}"));
    let candidates = nccl_candidates("libnccl-net", value);
    let Some((name, (path, how))) = candidates
        .iter()
        .find_map(|c| Some((c, find_library(host, c)?)))
    else {
        let what = match value {
            None => "NCCL_NET_PLUGIN unset and no libnccl-net.so on the loader path: NCCL uses its built-in transports (Socket/IB), not airamp".to_string(),
            Some(_) => format!(
                "{shown}: not found (NCCL tries {}; searched LD_LIBRARY_PATH, the loader cache and the default directories): NCCL falls back to its built-in transports",
                candidates.join(", then ")
            ),
        };
        out.push(finding(
            "plugin",
            Status::Fail,
            what,
            Some(plugin_fix(host)),
        ));
        return None;
    };
    let message = if name.contains('/') {
        let real = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        if real == Path::new(name) {
            format!("{shown}: found")
        } else {
            format!("{shown}: found, {}", real.display())
        }
    } else {
        format!("{shown} -> {} ({name} {how})", path.display())
    };
    out.push(finding("plugin", Status::Ok, message, None));

    let elf = std::fs::read(&path)
        .map_err(|e| e.to_string())
        .and_then(|b| elf::parse(&b));
    let loaded = (host.load)(&path);
    match &loaded {
        Ok(_) => out.push(finding(
            "plugin load",
            Status::Ok,
            "dlopen(RTLD_NOW|RTLD_LOCAL) succeeds, as NCCL opens it (no plugin function called)"
                .into(),
            None,
        )),
        Err(e) => {
            let fix = if elf.is_err() {
                "not a shared library: reinstall libnccl-net-airamp.so from scripts/build-plugin"
                    .to_string()
            } else if e.contains("GLIBC") {
                "install the portable build (scripts/build-plugin: glibc >= 2.28)".to_string()
            } else {
                format!("`ldd {}` shows what the loader is missing", path.display())
            };
            out.push(finding(
                "plugin load",
                Status::Fail,
                format!("dlopen fails: {e}"),
                Some(fix),
            ));
        }
    }

    // Exports: what dlsym resolves, else what the ELF symbol table defines.
    let exports: Option<(BTreeSet<String>, &str)> = match (&loaded, &elf) {
        (Ok(syms), _) => Some((syms.iter().cloned().collect(), "dlsym")),
        (Err(_), Ok(info)) => Some((info.exports.clone(), "ELF symbol table")),
        (Err(_), Err(_)) => None,
    };
    if let Some((present, source)) = exports {
        let net = versions(&present, &NET_SYMBOLS, "ncclNetPlugin_");
        let coll = versions(&present, &COLLNET_SYMBOLS, "ncclCollNetPlugin_");
        let tuner = versions(&present, &TUNER_SYMBOLS, "ncclTunerPlugin_");
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(" ")
            }
        };
        let message = format!(
            "net {}; collnet {}; tuner {} (from {source})",
            list(&net),
            list(&coll),
            list(&tuner)
        );
        out.push(if net.is_empty() {
            finding(
                "plugin exports",
                Status::Fail,
                format!("{message}: no ncclNetPlugin_v7..v12, NCCL cannot use it as a network"),
                Some(plugin_fix(host)),
            )
        } else if coll.is_empty() || tuner.is_empty() {
            finding(
                "plugin exports",
                Status::Warn,
                format!("{message}: not airamp's full set (no compressed collective network or no tuner)"),
                Some(plugin_fix(host)),
            )
        } else {
            finding("plugin exports", Status::Ok, message, None)
        });
    }

    match &elf {
        Err(e) => out.push(finding(
            "plugin glibc",
            Status::Fail,
            format!("{}: {e}", path.display()),
            Some(plugin_fix(host)),
        )),
        Ok(info) => {
            let need = info
                .needs
                .iter()
                .filter_map(|(_, v)| Some((elf::glibc_version(v)?, v)))
                .max();
            let have = host.glibc.as_deref().and_then(elf::parse_version);
            out.push(match (need, have) {
                (None, _) => finding(
                    "plugin glibc",
                    Status::Ok,
                    "needs no versioned glibc symbol".into(),
                    None,
                ),
                (Some((_, name)), None) => finding(
                    "plugin glibc",
                    Status::Warn,
                    format!("needs {name}; this host's glibc version is unknown"),
                    Some("check `ldd --version` (>= the version above)".into()),
                ),
                (Some((n, name)), Some(h)) if n > h => finding(
                    "plugin glibc",
                    Status::Fail,
                    format!(
                        "needs {name}, this host has glibc {}: the loader refuses it",
                        elf::show_version(&h)
                    ),
                    Some("install the portable build (scripts/build-plugin: glibc >= 2.28)".into()),
                ),
                (Some((_, name)), Some(h)) => finding(
                    "plugin glibc",
                    Status::Ok,
                    format!("needs at most {name}, host glibc {}", elf::show_version(&h)),
                    None,
                ),
            });
        }
    }
    Some(path)
}

fn check_nccl_net(host: &Host<'_>, out: &mut Vec<Finding>) {
    out.push(match host.var("NCCL_NET") {
        None => finding(
            "NCCL_NET",
            Status::Ok,
            "unset: NCCL picks the plugin if it loads, else falls back to Socket without an error".into(),
            Some("export NCCL_NET=airamp (a plugin that fails to load then stops NCCL with the reason)".into()),
        ),
        Some(v) if v.eq_ignore_ascii_case("airamp") => {
            finding("NCCL_NET", Status::Ok, format!("NCCL_NET={v}"), None)
        }
        Some(v) => finding(
            "NCCL_NET",
            Status::Fail,
            format!("NCCL_NET={v}: NCCL uses the network named {v:?}, not airamp"),
            Some("export NCCL_NET=airamp (or unset it)".into()),
        ),
    });
}

// ---------------------------------------------------------------------------
// Configuration, interfaces, metrics port
// ---------------------------------------------------------------------------

/// The effective configuration, as `airamp config check` computes it, from
/// `host` (`AIRAMP_CONF` or the default file, `AIRAMP_*` variables).
fn load_config(host: &Host<'_>) -> (Config, Vec<Diagnostic>) {
    let explicit = host.var(config::CONF_ENV).map(PathBuf::from);
    let path = explicit
        .clone()
        .unwrap_or_else(|| host.default_conf.clone());
    let mut diags = Vec::new();
    let text = match std::fs::read(&path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(t) => Some(t),
            Err(_) => {
                diags.push(warn_diag(format!(
                    "{} is not valid UTF-8; ignoring the file, using defaults",
                    path.display()
                )));
                None
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && explicit.is_none() => None,
        Err(e) => {
            diags.push(warn_diag(format!(
                "cannot read {}: {e}; using defaults",
                path.display()
            )));
            None
        }
    };
    let (cfg, more) = Config::from_sources(
        text.as_deref().map(|t| (path.as_path(), t)),
        host.vars.iter(),
    );
    diags.extend(more);
    (cfg, diags)
}

fn warn_diag(message: String) -> Diagnostic {
    Diagnostic {
        level: config::Level::Warn,
        key: None,
        message,
    }
}

fn check_config(cfg: &Config, diags: &[Diagnostic], out: &mut Vec<Finding>) {
    let file = cfg.file().map_or("no config file".to_string(), |p| {
        format!("file {}", p.display())
    });
    let warnings: Vec<&Diagnostic> = diags
        .iter()
        .filter(|d| d.level == config::Level::Warn)
        .collect();
    if warnings.is_empty() {
        out.push(finding(
            "config",
            Status::Ok,
            format!("{file}; every value valid (`airamp config check` prints them)"),
            None,
        ));
    }
    for d in warnings {
        out.push(finding(
            "config",
            Status::Warn,
            d.message.clone(),
            Some(format!(
                "fix or remove the setting ({file}, AIRAMP_* variables); `airamp config check` shows the effective values"
            )),
        ));
    }
}

/// The devices the plugin would use, as `airamp::net::Plugin::from_config`
/// selects them from the host's addresses.
fn check_interfaces(
    host: &Host<'_>,
    cfg: &Config,
    out: &mut Vec<Finding>,
) -> Vec<iface::NetDevice> {
    let family = match cfg.transport.socket_family {
        SocketFamily::Auto => Family::Auto,
        SocketFamily::Ipv4 => Family::V4,
        SocketFamily::Ipv6 => Family::V6,
    };
    let filter = cfg.transport.socket_ifname.as_ref();
    let matches = |name: &str| filter.is_some_and(|f| f.matches(name));
    let found = iface::select(
        &host.interfaces,
        filter.map(|_| &matches as &dyn Fn(&str) -> bool),
        family,
    );
    let rule = match filter {
        Some(f) => format!(
            "filter {f} from {}",
            cfg.source("transport.socket_ifname")
                .map_or("?".to_string(), |s| s.to_string())
        ),
        None => "no filter: up non-loopback interfaces, loopback only if none".to_string(),
    };
    let mut down: Vec<&str> = host
        .interfaces
        .iter()
        .filter(|a| !a.up && filter.map_or(!a.loopback, |f| f.matches(&a.name)))
        .map(|a| a.name.as_str())
        .collect();
    down.sort_unstable();
    down.dedup();
    let mut down = if down.is_empty() {
        String::new()
    } else {
        format!("; down: {}", down.join(", "))
    };
    if let Some(f) = filter {
        if !host.interfaces.iter().any(|a| f.matches(&a.name)) {
            let mut names: Vec<&str> = host.interfaces.iter().map(|a| a.name.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            down.push_str(&format!(
                "; no interface here matches it (this host has: {})",
                names.join(", ")
            ));
        }
    }
    let list: Vec<String> = found
        .iter()
        .map(|d| format!("{} {} (up)", d.ifname, d.addr))
        .collect();
    out.push(if found.is_empty() {
        finding(
            "interfaces",
            Status::Fail,
            format!("no usable interface ({rule}{down}): the plugin reports no device and NCCL cannot use it"),
            Some("export AIRAMP_SOCKET_IFNAME=<an up interface> (`airamp devices` lists them); bring the interface up".into()),
        )
    } else if found.iter().all(|d| d.loopback) {
        finding(
            "interfaces",
            Status::Warn,
            format!("{} ({rule}{down}): loopback only, ranks on other hosts cannot connect", list.join(", ")),
            Some("bring up a NIC or set AIRAMP_SOCKET_IFNAME to it".into()),
        )
    } else {
        finding("interfaces", Status::Ok, format!("{} ({rule}{down})", list.join(", ")), None)
    });
    found
}

fn check_metrics_port(host: &Host<'_>, cfg: &Config, out: &mut Vec<Finding>) {
    if !cfg.metrics.enabled {
        out.push(finding(
            "metrics port",
            Status::Ok,
            "metrics off: no port needed".into(),
            None,
        ));
        return;
    }
    let rank = MetricsAddr::local_rank_from_env(host.vars.iter());
    let rank_from = match rank {
        Some(r) => {
            let var = LOCAL_RANK_VARS
                .iter()
                .find(|v| host.var(v).is_some_and(|x| x.parse::<u16>() == Ok(r)))
                .copied()
                .unwrap_or("?");
            format!("local rank {r} from {var}")
        }
        None => format!("local rank 0: none of {} set", LOCAL_RANK_VARS.join(", ")),
    };
    let fix = Some(
        "set AIRAMP_METRICS_ADDR=IP:PORT to a free base port (local rank n uses PORT+n), or AIRAMP_METRICS=0".to_string(),
    );
    let Some(addr) = cfg.metrics.addr.checked_for_local_rank(rank.unwrap_or(0)) else {
        out.push(finding(
            "metrics port",
            Status::Warn,
            format!(
                "{} + {rank_from} is above 65535: the exporter does not start",
                cfg.metrics.addr
            ),
            fix,
        ));
        return;
    };
    out.push(match TcpListener::bind(addr) {
        Ok(_) => finding(
            "metrics port",
            Status::Ok,
            format!("{addr} free; {rank_from}"),
            None,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let who = match scrape(addr) {
                Ok(body) if body.lines().any(|l| l.starts_with("airamp_status")) => {
                    "an airamp exporter answers /metrics there (another rank or job on this node)"
                }
                _ => "something that is not an airamp exporter listens there",
            };
            finding(
                "metrics port",
                Status::Warn,
                format!("{addr} in use; {rank_from}: {who}; this rank's exporter would not start (the job runs without its metrics)"),
                fix,
            )
        }
        Err(e) => finding(
            "metrics port",
            Status::Warn,
            format!("cannot bind {addr}; {rank_from}: {e}"),
            fix,
        ),
    });
}

/// `GET /metrics` at `addr` with short timeouts; the body on 200. A busy
/// node (or a loaded CI machine) may take a while to answer a local
/// connection, so allow a few seconds before calling it silent.
fn scrape(addr: SocketAddr) -> Result<String, String> {
    let t = Duration::from_secs(3);
    let mut s = TcpStream::connect_timeout(&addr, t).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(t)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(t)).map_err(|e| e.to_string())?;
    // One write: `write!` would send each formatted piece on its own.
    let request = format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    s.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut body = Vec::new();
    s.take(1 << 20)
        .read_to_end(&mut body)
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&body);
    let (head, rest) = text.split_once("\r\n\r\n").ok_or("not HTTP")?;
    if head.split(' ').nth(1) != Some("200") {
        return Err(head.lines().next().unwrap_or("").to_string());
    }
    Ok(rest.to_string())
}

// ---------------------------------------------------------------------------
// Compression, GPU path, tuner
// ---------------------------------------------------------------------------

fn check_compression(
    host: &Host<'_>,
    cfg: &Config,
    devices: &[iface::NetDevice],
    out: &mut Vec<Finding>,
) {
    let source = |k: &str| cfg.source(k).map_or("?".to_string(), |s| s.to_string());
    let collnet = host.var("NCCL_COLLNET_ENABLE");
    out.push(match (cfg.compression.fp8_allreduce, collnet) {
        (false, _) => finding(
            "compression",
            Status::Ok,
            "compressed allreduce off: allreduce stays exact".into(),
            None,
        ),
        (true, Some("1")) => finding(
            "compression",
            Status::Ok,
            format!(
                "compressed allreduce on ({}, {}), NCCL_COLLNET_ENABLE=1",
                cfg.compression.format,
                source("compression.fp8_allreduce")
            ),
            None,
        ),
        (true, other) => finding(
            "compression",
            Status::Warn,
            format!(
                "compressed allreduce on ({}) but NCCL_COLLNET_ENABLE={}: NCCL never calls the collective network, nothing will be compressed",
                source("compression.fp8_allreduce"),
                other.unwrap_or("(unset)")
            ),
            Some("export NCCL_COLLNET_ENABLE=1".into()),
        ),
    });
    if !cfg.gpu.collnet {
        return;
    }
    let context = match (host.mps_daemon, cfg.gpu.sms) {
        (true, 0) => "on every SM (gpu.sms = 0): about 270 MiB of GPU memory per process on an H200".to_string(),
        (true, sms) => format!(
            "limited to {sms} SMs (gpu.sms, under MPS): on an H200 about 63 MiB of GPU memory per process at 16 SMs, 49 at 8, 91 at 32"
        ),
        (false, _) => "on every SM (no MPS to limit it): about 270 MiB of GPU memory per process on an H200".to_string(),
    };
    out.push(finding(
        "gpu.collnet",
        Status::Ok,
        format!(
            "gpu.collnet on ({}): kernels in airamp's own CUDA context, {context} (docs/gpu.md)",
            source("gpu.collnet")
        ),
        None,
    ));
    if !host.mps_daemon {
        out.push(finding(
            "gpu.collnet",
            Status::Warn,
            "no CUDA MPS daemon found: without MPS, airamp's kernels take turns with NCCL's on the GPU (measured on H200s: the GPU path at 0.34-0.49x Ring unshaped, against 1.6-1.8x with MPS; docs/results/multigpu-h200x2.md)".to_string(),
            Some("nvidia-cuda-mps-control -d".into()),
        ));
    }
    let virtual_nics: Vec<&str> = devices
        .iter()
        .filter(|d| d.loopback || !host.pci_nics.contains(&d.ifname))
        .map(|d| d.ifname.as_str())
        .collect();
    if host.var("NCCL_NET_GDR_LEVEL").is_none()
        && !devices.is_empty()
        && virtual_nics.len() == devices.len()
    {
        out.push(finding(
            "gpu.collnet",
            Status::Warn,
            format!(
                "NICs {} are virtual or loopback (no PCI device) and NCCL_NET_GDR_LEVEL is unset: NCCL does not hand GPU buffers to them, the GPU path stays unused",
                virtual_nics.join(", ")
            ),
            Some("export NCCL_NET_GDR_LEVEL=PHB".into()),
        ));
    }
}

fn is_airamp_lib(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.contains("airamp"))
}

/// What `transport.poller` comes to on this host, and whether the poller
/// threads have the cores to spin on.
fn check_poller(host: &Host<'_>, cfg: &Config, out: &mut Vec<Finding>) {
    let (available, online) = host.cores;
    let ranks = config::local_ranks(|name| host.var(name).map(str::to_string));
    let cores = config::cores_per_rank(available, online, ranks);
    let share = if available >= online && ranks > 1 {
        format!("{cores} cores per rank: {available} cores shared by {ranks} ranks")
    } else {
        format!("{cores} cores for this rank")
    };
    let effective = cfg.transport.poller_for(cores, available);
    let threads = match effective {
        PollerThreads::Two => "two poller threads (sends, receives)",
        PollerThreads::One => "one poller thread",
        PollerThreads::Off | PollerThreads::Auto => "no poller threads",
    };
    let chosen = cfg.transport.poller;
    let spinning = effective != PollerThreads::Off;
    let source = cfg
        .source("transport.poller")
        .map_or("?".to_string(), |s| s.to_string());
    out.push(if spinning && chosen != PollerThreads::Auto && cores < 4 {
        finding(
            "poller",
            Status::Warn,
            format!(
                "transport.poller = {chosen} ({source}) with {share}: {threads} spin while mid-size messages (4 KiB to transport.inline_bytes) flow, on cores NCCL's proxy thread and the stream threads need (on 2 cores they halved airamp bench net; docs/transport.md)"
            ),
            Some("export AIRAMP_POLLER=auto".into()),
        )
    } else {
        finding(
            "poller",
            Status::Ok,
            format!(
                "transport.poller = {chosen} ({source}), {share}: {threads}{}",
                if spinning {
                    ", a core each while mid-size messages (4 KiB to transport.inline_bytes) flow"
                } else {
                    "; NCCL's proxy thread moves small messages itself"
                }
            ),
            None,
        )
    });
}

fn check_tuner(host: &Host<'_>, net_plugin: Option<&Path>, out: &mut Vec<Finding>) {
    let value = host.var("NCCL_TUNER_PLUGIN");
    let found = nccl_candidates("libnccl-tuner", value)
        .iter()
        .find_map(|c| find_library(host, c))
        .map(|(p, _)| p);
    let same_as_net = |p: &Path| {
        net_plugin.is_some_and(|n| std::fs::canonicalize(n).ok() == std::fs::canonicalize(p).ok())
    };
    let fix = Some(
        "unset NCCL_TUNER_PLUGIN (NCCL then takes the tuner from the net plugin) or point it at libnccl-net-airamp.so"
            .to_string(),
    );
    out.push(match (value, found) {
        (None, None) => finding(
            "NCCL_TUNER_PLUGIN",
            Status::Ok,
            "unset, no libnccl-tuner.so: NCCL takes the tuner from the net plugin".into(),
            None,
        ),
        (None, Some(p)) if !(is_airamp_lib(&p) || same_as_net(&p)) => finding(
            "NCCL_TUNER_PLUGIN",
            Status::Warn,
            format!(
                "unset, but NCCL finds {} first: that tuner is used, not airamp's",
                p.display()
            ),
            Some("export NCCL_TUNER_PLUGIN=<path of libnccl-net-airamp.so>".into()),
        ),
        (None, Some(p)) => finding(
            "NCCL_TUNER_PLUGIN",
            Status::Ok,
            format!("unset; libnccl-tuner.so is airamp's ({})", p.display()),
            None,
        ),
        (Some(v), Some(p)) if is_airamp_lib(&p) || same_as_net(&p) => finding(
            "NCCL_TUNER_PLUGIN",
            Status::Ok,
            format!("NCCL_TUNER_PLUGIN={v} -> {}", p.display()),
            None,
        ),
        (Some(v), _) if v.eq_ignore_ascii_case("none") => finding(
            "NCCL_TUNER_PLUGIN",
            Status::Warn,
            "NCCL_TUNER_PLUGIN=none: NCCL loads no tuner, airamp's tuner is not used".into(),
            fix,
        ),
        (Some(v), None) => finding(
            "NCCL_TUNER_PLUGIN",
            Status::Warn,
            format!("NCCL_TUNER_PLUGIN={v}: not found; NCCL falls back to the net plugin's tuner"),
            fix,
        ),
        (Some(v), Some(p)) => finding(
            "NCCL_TUNER_PLUGIN",
            Status::Warn,
            format!(
                "NCCL_TUNER_PLUGIN={v} -> {}: another tuner, airamp's tuner is not used",
                p.display()
            ),
            fix,
        ),
    });
}

// ---------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------

/// The findings as text: one line each, the fix indented below.
pub fn render_text(findings: &[Finding]) -> String {
    let mut s = String::new();
    for f in findings {
        s.push_str(&format!(
            "{:<4}  {:<17} {}\n",
            f.status.as_str(),
            f.check,
            f.message
        ));
        if let Some(fix) = &f.fix {
            s.push_str(&format!("{:<24}fix: {fix}\n", ""));
        }
    }
    let count = |st| findings.iter().filter(|f| f.status == st).count();
    s.push_str(&format!(
        "\n{} OK, {} WARN, {} FAIL: {}\n",
        count(Status::Ok),
        count(Status::Warn),
        count(Status::Fail),
        if count(Status::Fail) > 0 {
            "airamp would not be used as configured (exit 1)"
        } else {
            "nothing stops airamp from being used (exit 0)"
        }
    ));
    s
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// The findings as one JSON array of `{check, status, message, fix}`.
pub fn render_json(findings: &[Finding]) -> String {
    let items: Vec<String> = findings
        .iter()
        .map(|f| {
            format!(
                "{{\"check\":{},\"status\":{},\"message\":{},\"fix\":{}}}",
                json_str(f.check),
                json_str(f.status.as_str()),
                json_str(&f.message),
                f.fix.as_deref().map_or("null".to_string(), json_str)
            )
        })
        .collect();
    format!("[{}]\n", items.join(",\n "))
}

// ---------------------------------------------------------------------------
// This machine
// ---------------------------------------------------------------------------

/// Full paths in the loader cache, from `ldconfig -p`.
fn ld_cache() -> Vec<PathBuf> {
    let out = ["ldconfig", "/sbin/ldconfig", "/usr/sbin/ldconfig"]
        .iter()
        .find_map(|c| {
            Command::new(c)
                .arg("-p")
                .stderr(Stdio::null())
                .output()
                .ok()
        });
    let Some(out) = out else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.rsplit_once(" => ").map(|(_, p)| PathBuf::from(p.trim())))
        .collect()
}

fn default_lib_dirs() -> Vec<PathBuf> {
    let multiarch = format!("{}-linux-gnu", std::env::consts::ARCH);
    [
        format!("/lib/{multiarch}"),
        format!("/usr/lib/{multiarch}"),
        "/lib64".into(),
        "/usr/lib64".into(),
        "/lib".into(),
        "/usr/lib".into(),
    ]
    .into_iter()
    .map(PathBuf::from)
    .collect()
}

/// `getconf GNU_LIBC_VERSION` (`glibc 2.36`), else `ldd --version`'s first line.
fn host_glibc() -> Option<String> {
    let run = |cmd: &str, arg: &str| {
        Command::new(cmd)
            .arg(arg)
            .stderr(Stdio::null())
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    if let Some(v) = run("getconf", "GNU_LIBC_VERSION")
        .and_then(|s| s.trim().strip_prefix("glibc ").map(str::to_string))
    {
        return Some(v);
    }
    let first = run("ldd", "--version")?;
    let v = first.lines().next()?.rsplit(' ').next()?.to_string();
    elf::parse_version(&v).map(|_| v)
}

/// The hidden child role: `dlopen` the library at `--path` and print the
/// wanted symbols it resolves, one per line. The parent reads the result,
/// so a library that crashes in its constructors cannot take doctor down.
pub fn load_role(o: &crate::Opts) -> Result<(), String> {
    let path = o.get("path").ok_or("doctor-load: no --path")?;
    let syms = load_in_process(Path::new(path))?;
    crate::peer::to_parent(&syms.join("\n"))
}

/// `dlopen` in this process (as NCCL: `RTLD_NOW | RTLD_LOCAL`) and `dlsym`
/// of the vtables; the library is closed again.
pub fn load_in_process(path: &Path) -> LoadResult {
    let lib = airamp::abi::client::Library::open(path)?;
    Ok(wanted_symbols()
        .filter(|s| lib.symbol(s).is_some())
        .map(str::to_string)
        .collect())
}

/// [`load_in_process`] in a child (`airamp --role doctor-load`), 20 s at most.
fn load_in_child(path: &Path) -> LoadResult {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args([crate::peer::ROLE_FLAG, "doctor-load", "--path"])
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the loader child: {e}"))?;
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            break s;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            return Err("loading took over 20 s (killed)".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut stdout);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    if status.success() {
        return Ok(stdout
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect());
    }
    let msg = stderr.trim().trim_start_matches("airamp: ").to_string();
    Err(if msg.is_empty() {
        format!("the process died while loading it ({status}); NCCL's process would too")
    } else {
        msg
    })
}

fn process_vars() -> BTreeMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// Whether an MPS control daemon reads its pipe: `control` in
/// `CUDA_MPS_PIPE_DIRECTORY`, default `/tmp/nvidia-mps`, where
/// `nvidia-cuda-mps-control -d` creates it. Opening a FIFO for writing
/// without blocking fails (ENXIO) when nobody reads it, as after a daemon
/// that was killed left its pipe behind.
fn mps_daemon_running() -> bool {
    let dir = std::env::var_os("CUDA_MPS_PIPE_DIRECTORY")
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from("/tmp/nvidia-mps"), PathBuf::from);
    pipe_has_reader(&dir.join("control"))
}

/// Whether something reads the FIFO at `path` (false: no such file, or no
/// reader).
fn pipe_has_reader(path: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .is_ok()
}

/// The plugin installed beside this binary (as `--plugin`'s default).
fn beside_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    ["libnccl-net-airamp.so", "libairamp.so"]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

/// `airamp doctor`: checks this node, prints the findings; exit 1 when
/// something would stop airamp from being used.
pub fn run(opts: &DoctorOpts) -> Result<ExitCode, String> {
    let interfaces = airamp::sys::interface_addrs().map_err(|e| e.to_string())?;
    let pci_nics = interfaces
        .iter()
        .filter(|a| iface::pci_path(&a.name).is_some())
        .map(|a| a.name.clone())
        .collect();
    let peer = |addr: &str, lib: Option<&Path>| {
        let lib = lib.ok_or("no plugin library to test with (see the plugin finding)")?;
        crate::calibrate::ping_peer(lib, addr)
    };
    let host = Host {
        vars: process_vars(),
        default_conf: PathBuf::from(config::DEFAULT_CONF_PATH),
        cwd: std::env::current_dir().map_err(|e| e.to_string())?,
        ld_cache: ld_cache(),
        default_lib_dirs: default_lib_dirs(),
        glibc: host_glibc(),
        interfaces,
        pci_nics,
        beside_binary: beside_binary(),
        mps_daemon: mps_daemon_running(),
        cores: (
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            airamp::sys::online_cpus(),
        ),
        load: &load_in_child,
        peer: &peer,
    };
    let findings = collect(&host, opts);
    if opts.json {
        print!("{}", render_json(&findings));
    } else {
        print!("{}", render_text(&findings));
    }
    Ok(ExitCode::from(exit_status(&findings)))
}
