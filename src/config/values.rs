//! Value types of the configuration that need real parsing:
//! interface filters, the metrics address, byte sizes.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Longest interface name Linux allows (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

/// A parsed `NCCL_SOCKET_IFNAME`-style interface filter.
///
/// Syntax (same as NCCL): a comma-separated list of interface-name
/// prefixes; a leading `^` excludes the listed interfaces instead of
/// selecting them; a leading `=` (after the optional `^`) switches from
/// prefix to exact matching. Examples: `eth,ens`, `^docker,lo`, `=eth0`,
/// `^=eth0,eth1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfnameFilter {
    exclude: bool,
    exact: bool,
    names: Vec<String>,
}

impl IfnameFilter {
    /// Parses the NCCL syntax. Rejects an empty list, empty elements
    /// between commas are skipped, and names that no interface could
    /// have (whitespace, `/`, longer than 15 bytes) are errors.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut rest = spec.trim();
        let exclude = rest.starts_with('^');
        if exclude {
            rest = &rest[1..];
        }
        let exact = rest.starts_with('=');
        if exact {
            rest = &rest[1..];
        }
        let mut names = Vec::new();
        for name in rest.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name.len() > IFNAME_MAX {
                return Err(format!(
                    "interface name {name:?} is longer than {IFNAME_MAX} bytes"
                ));
            }
            if name
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || "/^=".contains(c))
            {
                return Err(format!(
                    "interface name {name:?} contains an invalid character"
                ));
            }
            names.push(name.to_string());
        }
        if names.is_empty() {
            return Err("no interface names given".to_string());
        }
        Ok(Self {
            exclude,
            exact,
            names,
        })
    }

    /// Whether interface `ifname` passes the filter.
    pub fn matches(&self, ifname: &str) -> bool {
        let listed = self.names.iter().any(|n| {
            if self.exact {
                ifname == n
            } else {
                ifname.starts_with(n.as_str())
            }
        });
        listed != self.exclude
    }

    /// `true` for `^...` filters.
    pub fn is_exclude(&self) -> bool {
        self.exclude
    }

    /// `true` for `=...` (exact-match) filters.
    pub fn is_exact(&self) -> bool {
        self.exact
    }

    /// The listed names / prefixes.
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

impl fmt::Display for IfnameFilter {
    /// Canonical NCCL syntax; parses back to an equal filter.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.exclude {
            f.write_str("^")?;
        }
        if self.exact {
            f.write_str("=")?;
        }
        f.write_str(&self.names.join(","))
    }
}

/// Default Prometheus port when `metrics.addr` names no port.
pub const DEFAULT_METRICS_PORT: u16 = 9090;

/// Where the metrics endpoint listens: an IP and the port of local rank 0;
/// local rank `n` listens on `base_port + n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsAddr {
    pub ip: IpAddr,
    pub base_port: u16,
}

impl Default for MetricsAddr {
    fn default() -> Self {
        Self {
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            base_port: DEFAULT_METRICS_PORT,
        }
    }
}

/// Environment variables that carry the node-local rank, in priority order.
pub const LOCAL_RANK_VARS: [&str; 4] = [
    "LOCAL_RANK",
    "SLURM_LOCALID",
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "MPI_LOCALRANKID",
];

/// Where launchers say how many ranks run on this host (torchrun, Open MPI,
/// MPICH, Slurm), in the order they are read.
pub const LOCAL_SIZE_VARS: [&str; 4] = [
    "LOCAL_WORLD_SIZE",
    "OMPI_COMM_WORLD_LOCAL_SIZE",
    "MPI_LOCALNRANKS",
    "SLURM_NTASKS_PER_NODE",
];

impl MetricsAddr {
    /// Accepted forms: `IP`, `IP:PORT`, `[IPv6]:PORT`, `[IPv6]`, bare
    /// `IPv6`. Port 0 is rejected (every local rank needs a known port).
    /// Host names are not accepted: the plugin must not do DNS at init.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty address".to_string());
        }
        let (ip, port) = if let Ok(sa) = s.parse::<SocketAddr>() {
            (sa.ip(), sa.port())
        } else if let Ok(ip) = s.parse::<IpAddr>() {
            (ip, DEFAULT_METRICS_PORT)
        } else if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            match inner.parse::<std::net::Ipv6Addr>() {
                Ok(ip) => (IpAddr::V6(ip), DEFAULT_METRICS_PORT),
                Err(_) => return Err(format!("{inner:?} is not an IPv6 address")),
            }
        } else {
            return Err("not an IP address or IP:PORT (host names are not accepted)".to_string());
        };
        if port == 0 {
            return Err("port 0 is not allowed".to_string());
        }
        Ok(Self {
            ip,
            base_port: port,
        })
    }

    /// The address local rank `local_rank` listens on: port
    /// `base_port + local_rank`, saturating at 65535 (use
    /// [`Self::checked_for_local_rank`] to detect the overflow).
    pub fn for_local_rank(&self, local_rank: u16) -> SocketAddr {
        SocketAddr::new(self.ip, self.base_port.saturating_add(local_rank))
    }

    /// Like [`Self::for_local_rank`] but `None` when the port would exceed 65535.
    pub fn checked_for_local_rank(&self, local_rank: u16) -> Option<SocketAddr> {
        self.base_port
            .checked_add(local_rank)
            .map(|p| SocketAddr::new(self.ip, p))
    }

    /// The node-local rank from the launcher's environment: the first of
    /// [`LOCAL_RANK_VARS`] (in that order) holding a valid `u16` wins.
    /// `env` is passed explicitly (e.g. `std::env::vars()`) for testability.
    pub fn local_rank_from_env<I, K, V>(env: I) -> Option<u16>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut found: [Option<u16>; LOCAL_RANK_VARS.len()] = [None; LOCAL_RANK_VARS.len()];
        for (k, v) in env {
            if let Some(i) = LOCAL_RANK_VARS.iter().position(|n| *n == k.as_ref()) {
                if let Ok(r) = v.as_ref().trim().parse::<u16>() {
                    found[i] = Some(r);
                }
            }
        }
        found.into_iter().flatten().next()
    }
}

impl fmt::Display for MetricsAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", SocketAddr::new(self.ip, self.base_port))
    }
}

/// Parses a byte size: a plain integer, or an integer with a binary
/// suffix `K`/`KiB`, `M`/`MiB`, `G`/`GiB` (case-insensitive, optional
/// space), e.g. `512K`, `1 MiB`. Decimal `KB`/`MB` are rejected as ambiguous.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    if num.is_empty() {
        return Err("not a byte size".to_string());
    }
    let n: u64 = num.parse().map_err(|_| "number too large".to_string())?;
    let mult: u64 = match suffix.trim().to_ascii_lowercase().as_str() {
        "" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        other => return Err(format!("unknown size suffix {other:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| "number too large".to_string())
}

/// Renders a byte count with the largest exact binary suffix (`512K`).
pub fn format_bytes(n: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")];
    for (m, u) in UNITS {
        if n != 0 && n.is_multiple_of(m) {
            return format!("{}{u}", n / m);
        }
    }
    n.to_string()
}
