//! Which network interfaces the TCP transport uses, and what NCCL is told
//! about them. Selection is a pure function over the host's address list.

use std::net::IpAddr;
use std::path::PathBuf;

use crate::sys::InterfaceAddr;

/// Address family preference (`AIRAMP_SOCKET_FAMILY`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Family {
    #[default]
    Auto,
    V4,
    V6,
}

/// One TCP device: an interface and the address we listen on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetDevice {
    pub ifname: String,
    pub addr: IpAddr,
    pub scope_id: u32,
    pub loopback: bool,
}

/// Most devices we expose, as NCCL's own socket transport does.
pub const MAX_DEVICES: usize = 16;

/// Picks the devices: interfaces accepted by `filter` when one is given;
/// otherwise every up non-loopback interface (docker/virtual bridges left
/// out), and loopback only when nothing else exists. One address per
/// interface, IPv4 first unless the family says otherwise; IPv6 link-local
/// addresses only when nothing better exists on that interface.
pub fn select(
    addrs: &[InterfaceAddr],
    filter: Option<&dyn Fn(&str) -> bool>,
    family: Family,
) -> Vec<NetDevice> {
    let family_ok = |a: &IpAddr| match family {
        Family::Auto => true,
        Family::V4 => a.is_ipv4(),
        Family::V6 => a.is_ipv6(),
    };
    let rank = |a: &InterfaceAddr| match a.addr {
        IpAddr::V4(_) if family != Family::V6 => 0,
        IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) != 0xfe80 => 1,
        _ => 2,
    };
    let pick = |accept: &dyn Fn(&InterfaceAddr) -> bool| {
        let mut out: Vec<NetDevice> = Vec::new();
        for a in addrs
            .iter()
            .filter(|a| a.up && family_ok(&a.addr) && accept(a))
        {
            match out.iter().position(|d| d.ifname == a.name) {
                Some(i) => {
                    let current = addrs
                        .iter()
                        .find(|x| x.name == a.name && x.addr == out[i].addr)
                        .map(rank)
                        .unwrap_or(2);
                    if rank(a) < current {
                        out[i] = device(a);
                    }
                }
                None if out.len() < MAX_DEVICES => out.push(device(a)),
                None => {}
            }
        }
        out
    };
    if let Some(f) = filter {
        return pick(&|a| f(&a.name));
    }
    let virtual_if = |n: &str| n.starts_with("docker") || n.starts_with("virbr");
    let found = pick(&|a| !a.loopback && !virtual_if(&a.name));
    if !found.is_empty() {
        return found;
    }
    pick(&|a| a.loopback)
}

fn device(a: &InterfaceAddr) -> NetDevice {
    NetDevice {
        ifname: a.name.clone(),
        addr: a.addr,
        scope_id: a.scope_id,
        loopback: a.loopback,
    }
}

/// Link speed in Mbit/s from sysfs; 10 Gbit/s when the kernel does not know
/// (loopback, many virtual NICs), like NCCL's socket transport.
pub fn speed_mbps(ifname: &str) -> i32 {
    std::fs::read_to_string(format!("/sys/class/net/{ifname}/speed"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .filter(|&s| s > 0)
        .unwrap_or(10_000)
}

/// The NIC's PCI path, which NCCL uses to place it in the topology.
pub fn pci_path(ifname: &str) -> Option<PathBuf> {
    std::fs::canonicalize(format!("/sys/class/net/{ifname}/device")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ia(name: &str, addr: &str, up: bool) -> InterfaceAddr {
        let addr: IpAddr = addr.parse().unwrap();
        InterfaceAddr {
            name: name.into(),
            loopback: addr.is_loopback(),
            addr,
            scope_id: 0,
            up,
        }
    }

    fn names(d: &[NetDevice]) -> Vec<String> {
        d.iter()
            .map(|d| format!("{}={}", d.ifname, d.addr))
            .collect()
    }

    #[test]
    fn default_skips_loopback_down_and_docker() {
        let addrs = [
            ia("lo", "127.0.0.1", true),
            ia("docker0", "172.17.0.1", true),
            ia("eth1", "10.0.0.2", false),
            ia("eth0", "fe80::1", true),
            ia("eth0", "10.0.0.1", true),
            ia("ib0", "2001:db8::5", true),
        ];
        assert_eq!(
            names(&select(&addrs, None, Family::Auto)),
            ["eth0=10.0.0.1", "ib0=2001:db8::5"]
        );
        assert_eq!(
            names(&select(&addrs, None, Family::V6)),
            ["eth0=fe80::1", "ib0=2001:db8::5"]
        );
    }

    #[test]
    fn loopback_is_the_last_resort_and_filter_wins() {
        let addrs = [ia("lo", "127.0.0.1", true), ia("lo", "::1", true)];
        assert_eq!(names(&select(&addrs, None, Family::Auto)), ["lo=127.0.0.1"]);
        assert_eq!(names(&select(&addrs, None, Family::V6)), ["lo=::1"]);
        let addrs = [ia("lo", "127.0.0.1", true), ia("eth0", "10.0.0.1", true)];
        let only_lo = |n: &str| n == "lo";
        assert_eq!(
            names(&select(&addrs, Some(&only_lo), Family::Auto)),
            ["lo=127.0.0.1"]
        );
    }
}
