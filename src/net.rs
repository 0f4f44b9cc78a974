//! The one internal API behind every `ncclNet` version.
//!
//! `src/abi/` turns C calls into calls on [`Plugin`]; nothing here knows
//! which ABI version is being served.

use std::ffi::CString;
use std::sync::{Mutex, OnceLock};

use crate::config::{self, Config, PollerThreads, SocketFamily};
use crate::error::{NetError, NetResult};
use crate::transport::iface::{self, Family, NetDevice};
use crate::transport::tcp::{Connecting, Listener, PollerMode, TcpSettings, MAX_RECVS};
use crate::transport::wire::{ListenHandle, HANDLE_BYTES};
use crate::{info, log, metrics, warn};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// NCCL may move at most this many bytes in one request (it reports sizes as `int`).
pub const MAX_REQUEST_BYTES: usize = 1 << 30;

/// A device as NCCL sees it.
pub struct Device {
    pub net: NetDevice,
    pub name: CString,
    pub pci_path: Option<CString>,
    pub speed_mbps: i32,
}

/// What `getProperties` reports, independent of the ABI version.
pub struct Properties<'a> {
    pub device: &'a Device,
    pub guid: u64,
    pub max_comms: i32,
    pub max_recvs: i32,
    pub max_bytes: usize,
    pub latency_us: f32,
}

pub struct Plugin {
    pub devices: Vec<Device>,
    pub settings: TcpSettings,
}

static PLUGIN: OnceLock<Plugin> = OnceLock::new();

/// Loads the configuration, finds devices, starts the exporter: once per
/// process, however many times NCCL calls `init`.
pub fn init() -> &'static Plugin {
    PLUGIN.get_or_init(|| {
        let cfg = config::global();
        for d in config::global_diagnostics() {
            match d.level {
                config::Level::Warn => warn!("config: {d}"),
                config::Level::Info => info!(log::SUBSYS_INIT, "config: {d}"),
            }
        }
        let plugin = Plugin::from_config(cfg);
        let metrics_addr = start_metrics(cfg);
        let devices: Vec<String> = plugin
            .devices
            .iter()
            .enumerate()
            .map(|(i, d)| format!("{i}:{}/{} ({} Mb/s)", d.net.ifname, d.net.addr, d.speed_mbps))
            .collect();
        info!(
            log::SUBSYS_INIT | log::SUBSYS_NET,
            "{VERSION} transport=tcp devices=[{}] streams={} chunk={} B inline={} B poller={} peer_timeout={} ms fp8_allreduce={} metrics={}",
            devices.join(", "),
            plugin.settings.streams,
            plugin.settings.chunk_bytes,
            plugin.settings.inline_bytes,
            plugin.settings.poller.name(),
            plugin.settings.peer_timeout.as_millis(),
            if cfg.compression.fp8_allreduce {
                format!("{} (collective network, where every member enables it)", cfg.compression.format)
            } else {
                "off".to_string()
            },
            metrics_addr,
        );
        for what in inert_key_warnings(cfg) {
            warn!("{what}");
        }
        if plugin.devices.is_empty() {
            warn!("no usable network interface: airamp offers no device and NCCL will use another transport");
        }
        metrics::set_status(!plugin.devices.is_empty());
        plugin
    })
}

/// Why `AIRAMP_ENABLE_GHOST_KERNELS` does nothing: the measured outcome of
/// issue 12, documented in `docs/results/ghost-kernels-h200.md`.
pub const GHOST_KERNELS_NO_EFFECT: &str = "AIRAMP_ENABLE_GHOST_KERNELS=1 has no effect: \
     measured on an H200, the first kernel after a CPU gap of 20 ms or more runs 1.8-3x slower, \
     and no ghost-kernel mode (1 SM or every SM, low or 10 % duty, a never-idle stream) \
     nor an SM clock lock removed it; see docs/results/ghost-kernels-h200.md";

/// One warning per key that is set but that this build does not act on;
/// `init` logs them once per process.
pub fn inert_key_warnings(cfg: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if cfg.transport.kind == config::TransportKind::Verbs {
        out.push("AIRAMP_TRANSPORT=verbs: the verbs transport is not in this build; using TCP");
    }
    if cfg.gpu.ghost_kernels {
        out.push(GHOST_KERNELS_NO_EFFECT);
    }
    out
}

/// Live per-communicator contexts (net v11+).
static CONTEXTS: Mutex<usize> = Mutex::new(0);

/// A communicator opened a context: the exporter runs while any is open.
pub fn context_opened() {
    let mut open = CONTEXTS.lock().unwrap_or_else(|e| e.into_inner());
    *open += 1;
    if *open == 1 {
        // A no-op when init already started it; restarts it after a finalize.
        start_metrics(config::global());
    }
}

/// The last context closing stops and joins the exporter thread, so
/// nothing of ours runs once NCCL has finalized every communicator.
pub fn context_closed() {
    let mut open = CONTEXTS.lock().unwrap_or_else(|e| e.into_inner());
    *open = open.saturating_sub(1);
    if *open == 0 {
        metrics::shutdown();
    }
}

/// The initialized plugin, or an error if NCCL skipped `init`.
pub fn plugin() -> NetResult<&'static Plugin> {
    PLUGIN
        .get()
        .ok_or_else(|| NetError::InvalidUsage("called before init".into()))
}

fn start_metrics(cfg: &Config) -> String {
    if !cfg.metrics.enabled {
        return "off".into();
    }
    let env = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
    let local_rank = config::MetricsAddr::local_rank_from_env(env).unwrap_or(0);
    let Some(addr) = cfg.metrics.addr.checked_for_local_rank(local_rank) else {
        warn!("metrics: port for local rank {local_rank} out of range; exporter off");
        return "off".into();
    };
    let exporter = metrics::ExporterConfig {
        addr: Some(addr),
        textfile: cfg.metrics.textfile.clone(),
        info: metrics::InfoLabels {
            version: VERSION.into(),
            git_sha: option_env!("AIRAMP_GIT_SHA").unwrap_or("unknown").into(),
            transport: "tcp".into(),
            nccl_abi: "net_v8-v12,collnet_v8-v12,tuner_v2-v6".into(),
            fp8: cfg.compression.fp8_allreduce,
        },
    };
    match metrics::start(exporter) {
        Ok(Some(status)) => status
            .addr
            .map(|a| format!("http://{a}/metrics"))
            .unwrap_or_else(|| "textfile".into()),
        Ok(None) => "off".into(),
        Err(e) => {
            warn!("metrics exporter not started ({e}); the job continues without it");
            "off".into()
        }
    }
}

impl Plugin {
    pub fn from_config(cfg: &Config) -> Plugin {
        let t = &cfg.transport;
        let family = match t.socket_family {
            SocketFamily::Auto => Family::Auto,
            SocketFamily::Ipv4 => Family::V4,
            SocketFamily::Ipv6 => Family::V6,
        };
        let addrs = crate::sys::interface_addrs().unwrap_or_else(|e| {
            warn!("cannot list network interfaces: {e}");
            Vec::new()
        });
        let filter = t.socket_ifname.as_ref();
        let matches = |name: &str| filter.is_some_and(|f| f.matches(name));
        let found = iface::select(
            &addrs,
            filter.map(|_| &matches as &dyn Fn(&str) -> bool),
            family,
        );
        let devices = found
            .into_iter()
            .map(|net| Device {
                name: CString::new(net.ifname.clone()).unwrap_or_default(),
                pci_path: iface::pci_path(&net.ifname)
                    .and_then(|p| CString::new(p.to_string_lossy().into_owned()).ok()),
                speed_mbps: iface::speed_mbps(&net.ifname),
                net,
            })
            .collect();
        Plugin {
            devices,
            settings: TcpSettings {
                streams: t.streams(),
                chunk_bytes: t.chunk_size as u32,
                min_chunk_bytes: t.min_chunk_size as u32,
                narrow_bytes: t.narrow_bytes,
                socket_buffer: t.socket_buffer,
                peer_timeout: t.peer_timeout(),
                inline_bytes: t.inline_bytes(),
                poller: match t.poller() {
                    PollerThreads::Auto | PollerThreads::Off => PollerMode::Off,
                    PollerThreads::One => PollerMode::One,
                    PollerThreads::Two => PollerMode::Two,
                },
                handshake_timeout: t.handshake_timeout(),
                agreement: crate::tuner::agreement_digest(cfg),
            },
        }
    }

    fn device(&self, dev: i32) -> NetResult<&Device> {
        usize::try_from(dev)
            .ok()
            .and_then(|d| self.devices.get(d))
            .ok_or_else(|| NetError::InvalidArgument(format!("no device {dev}")))
    }

    pub fn properties(&self, dev: i32) -> NetResult<Properties<'_>> {
        Ok(Properties {
            device: self.device(dev)?,
            guid: dev as u64,
            max_comms: 65_536,
            max_recvs: MAX_RECVS as i32,
            max_bytes: MAX_REQUEST_BYTES,
            latency_us: 0.0,
        })
    }

    /// Opens a listener on `dev` and fills NCCL's handle buffer.
    pub fn listen(&self, dev: i32, handle: &mut [u8; HANDLE_BYTES]) -> NetResult<Listener> {
        let (listener, h) = Listener::bind(&self.device(dev)?.net, &self.settings)?;
        h.encode(handle);
        Ok(listener)
    }

    /// Starts a connection to the listener described by `handle`.
    pub fn connect(&self, dev: i32, handle: &[u8; HANDLE_BYTES]) -> NetResult<Connecting> {
        self.device(dev)?;
        let h = ListenHandle::decode(handle)
            .map_err(|e| NetError::InvalidArgument(format!("listen handle: {e}")))?;
        Connecting::start(&h, &self.settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn env(vars: &[(&str, &str)]) -> Config {
        Config::from_sources(None, vars.iter().copied()).0
    }

    fn ghost_lines(cfg: &Config) -> usize {
        inert_key_warnings(cfg)
            .iter()
            .filter(|l| l.contains("AIRAMP_ENABLE_GHOST_KERNELS"))
            .count()
    }

    #[test]
    fn ghost_key_logs_once_that_it_has_no_effect() {
        for on in ["1", "true", "yes"] {
            let w = inert_key_warnings(&env(&[("AIRAMP_ENABLE_GHOST_KERNELS", on)]));
            assert_eq!(
                w.iter()
                    .filter(|l| l.contains("AIRAMP_ENABLE_GHOST_KERNELS"))
                    .count(),
                1,
                "{on}: {w:?}"
            );
            let line = w
                .iter()
                .find(|l| l.contains("AIRAMP_ENABLE_GHOST_KERNELS"))
                .unwrap();
            assert!(line.contains("has no effect"), "{line}");
            assert!(
                line.contains("docs/results/ghost-kernels-h200.md"),
                "{line}"
            );
        }
        // Also when the key comes from the file.
        let (c, d) = Config::from_sources(
            Some((Path::new("airamp.conf"), "[gpu]\nghost_kernels = true\n")),
            [("", ""); 0],
        );
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(ghost_lines(&c), 1);
    }

    #[test]
    fn ghost_line_absent_when_key_unset_or_off() {
        assert_eq!(ghost_lines(&env(&[])), 0);
        assert_eq!(
            ghost_lines(&env(&[("AIRAMP_ENABLE_GHOST_KERNELS", "0")])),
            0
        );
        assert_eq!(
            ghost_lines(&env(&[("AIRAMP_ENABLE_GHOST_KERNELS", "off")])),
            0
        );
        // An unrelated inert key does not bring the ghost line with it.
        let w = inert_key_warnings(&env(&[("AIRAMP_TRANSPORT", "verbs")]));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(!w[0].contains("GHOST"));
    }

    #[test]
    fn ghost_line_points_at_a_document_that_exists() {
        let doc = GHOST_KERNELS_NO_EFFECT
            .split_whitespace()
            .find(|w| w.starts_with("docs/"))
            .unwrap();
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(doc);
        assert!(
            path.is_file(),
            "{} is missing: the log line points at it",
            path.display()
        );
    }
}
