//! One test per misconfiguration `airamp doctor` reports, each set up in
//! the test's own [`Host`] (temporary directories, shared objects built
//! with `cc` here, real sockets), never in the process environment.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{IpAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A temporary directory, removed on drop.
struct Tmp(PathBuf);

impl Tmp {
    fn new() -> Tmp {
        let p = std::env::temp_dir().join(format!(
            "airamp-doctor-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).expect("temp dir");
        Tmp(p)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Builds `dir/name`, a shared object defining `symbols` (as data, like
/// the plugin's vtables) and calling `getpid`, so it needs a versioned
/// glibc symbol.
fn build_so(dir: &Path, name: &str, symbols: &[&str]) -> PathBuf {
    let mut c = String::from("#include <unistd.h>\nstruct v { const char *name; };\n");
    for s in symbols {
        c.push_str(&format!("const struct v {s} = {{ \"fake\" }};\n"));
    }
    c.push_str("int fake_pid(void) { return (int)getpid(); }\n");
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, c).expect("write C source");
    let out = dir.join(name);
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("cc (a C compiler is needed by build.rs too)");
    assert!(status.success(), "cc failed");
    out
}

fn all_symbols() -> Vec<&'static str> {
    wanted_symbols().collect()
}

fn ia(name: &str, addr: &str, up: bool) -> InterfaceAddr {
    let addr: IpAddr = addr.parse().expect("address");
    InterfaceAddr {
        name: name.into(),
        loopback: addr.is_loopback(),
        addr,
        scope_id: 0,
        up,
    }
}

/// A well-configured node: the plugin by absolute path, `NCCL_NET=airamp`,
/// one up NIC with a PCI device, metrics off, no config file.
struct Fixture {
    tmp: Tmp,
    plugin: PathBuf,
    vars: BTreeMap<String, String>,
    interfaces: Vec<InterfaceAddr>,
    pci_nics: BTreeSet<String>,
    glibc: Option<String>,
    default_lib_dirs: Vec<PathBuf>,
    mps_daemon: bool,
    cores: (usize, usize),
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = Tmp::new();
        let lib = tmp.0.join("lib");
        std::fs::create_dir_all(&lib).expect("lib dir");
        let plugin = build_so(&lib, "libnccl-net-airamp.so", &all_symbols());
        let vars = [
            ("NCCL_NET_PLUGIN", plugin.to_string_lossy().into_owned()),
            ("NCCL_NET", "airamp".into()),
            ("AIRAMP_METRICS", "0".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Fixture {
            plugin,
            vars,
            interfaces: vec![ia("lo", "127.0.0.1", true), ia("eth0", "10.0.0.1", true)],
            pci_nics: ["eth0".to_string()].into(),
            glibc: Some("2.36".into()),
            default_lib_dirs: Vec::new(),
            mps_daemon: true,
            cores: (16, 16),
            tmp,
        }
    }

    fn set(&mut self, k: &str, v: &str) -> &mut Self {
        self.vars.insert(k.into(), v.into());
        self
    }

    fn unset(&mut self, k: &str) -> &mut Self {
        self.vars.remove(k);
        self
    }

    fn run_with(&self, opts: &DoctorOpts) -> (Vec<Finding>, u8) {
        let peer = |addr: &str, lib: Option<&Path>| {
            crate::calibrate::ping_peer(lib.ok_or("no plugin")?, addr)
        };
        let host = Host {
            vars: self.vars.clone(),
            default_conf: self.tmp.0.join("no-such-airamp.conf"),
            cwd: self.tmp.0.clone(),
            ld_cache: Vec::new(),
            default_lib_dirs: self.default_lib_dirs.clone(),
            glibc: self.glibc.clone(),
            interfaces: self.interfaces.clone(),
            pci_nics: self.pci_nics.clone(),
            beside_binary: None,
            mps_daemon: self.mps_daemon,
            cores: self.cores,
            load: &load_in_process,
            peer: &peer,
        };
        let f = collect(&host, opts);
        let code = exit_status(&f);
        (f, code)
    }

    fn run(&self) -> (Vec<Finding>, u8) {
        self.run_with(&DoctorOpts::default())
    }
}

/// The findings of `check`, shown in full when an assertion fails.
fn of<'a>(f: &'a [Finding], check: &str) -> Vec<&'a Finding> {
    f.iter().filter(|x| x.check == check).collect()
}

/// The one finding of `check`, asserted to have `status`.
fn one<'a>(f: &'a [Finding], check: &str, status: Status) -> &'a Finding {
    let found = of(f, check);
    assert_eq!(found.len(), 1, "{check}: {}", render_text(f));
    assert_eq!(found[0].status, status, "{check}: {}", render_text(f));
    found[0]
}

#[test]
fn a_well_configured_node_is_all_ok() {
    let fx = Fixture::new();
    let (f, code) = fx.run();
    assert!(
        f.iter().all(|x| x.status == Status::Ok),
        "{}",
        render_text(&f)
    );
    assert_eq!(code, 0);
    let exports = one(&f, "plugin exports", Status::Ok);
    assert_eq!(
        exports.message,
        "net v7 v8 v9 v10 v11 v12; collnet v7 v8 v9 v10 v11 v12; tuner v2 v3 v4 v5 v6 (from dlsym)"
    );
    assert!(one(&f, "plugin glibc", Status::Ok)
        .message
        .contains("GLIBC_2."));
    assert!(one(&f, "interfaces", Status::Ok)
        .message
        .starts_with("eth0 10.0.0.1 (up)"));
}

#[test]
fn plugin_name_not_on_the_loader_path() {
    let mut fx = Fixture::new();
    fx.set("NCCL_NET_PLUGIN", "airamp");
    let (f, code) = fx.run();
    let p = one(&f, "plugin", Status::Fail);
    assert!(
        p.message.contains("airamp, then libnccl-net-airamp.so"),
        "{}",
        p.message
    );
    assert!(p.fix.as_deref().unwrap_or("").contains("NCCL_NET_PLUGIN="));
    assert!(of(&f, "plugin load").is_empty());
    assert_eq!(code, 1);

    // The same name, its directory on LD_LIBRARY_PATH: found as NCCL would.
    let dir = fx
        .plugin
        .parent()
        .expect("dir")
        .to_string_lossy()
        .into_owned();
    fx.set("LD_LIBRARY_PATH", &format!("/nonexistent:{dir}"));
    let (f, code) = fx.run();
    let p = one(&f, "plugin", Status::Ok);
    assert!(
        p.message
            .contains("(libnccl-net-airamp.so on LD_LIBRARY_PATH)"),
        "{}",
        p.message
    );
    assert_eq!(code, 0, "{}", render_text(&f));
}

#[test]
fn plugin_unset_means_libnccl_net_so() {
    let mut fx = Fixture::new();
    fx.unset("NCCL_NET_PLUGIN");
    let (f, code) = fx.run();
    assert!(one(&f, "plugin", Status::Fail)
        .message
        .contains("no libnccl-net.so"));
    assert_eq!(code, 1);

    let sys = fx.tmp.0.join("usr-lib");
    std::fs::create_dir_all(&sys).expect("dir");
    std::fs::copy(&fx.plugin, sys.join("libnccl-net.so")).expect("copy");
    fx.default_lib_dirs = vec![sys];
    let (f, code) = fx.run();
    assert!(one(&f, "plugin", Status::Ok)
        .message
        .contains("libnccl-net.so in a default library directory"));
    assert_eq!(code, 0, "{}", render_text(&f));
}

#[test]
fn plugin_that_is_not_a_shared_object_does_not_load() {
    let mut fx = Fixture::new();
    let bogus = fx.tmp.0.join("libnccl-net-airamp.so");
    std::fs::write(&bogus, "#!/bin/sh\necho not a library\n").expect("write");
    fx.set("NCCL_NET_PLUGIN", &bogus.to_string_lossy());
    let (f, code) = fx.run();
    one(&f, "plugin", Status::Ok);
    let load = one(&f, "plugin load", Status::Fail);
    assert!(
        load.message.starts_with("dlopen fails:"),
        "{}",
        load.message
    );
    assert!(one(&f, "plugin glibc", Status::Fail)
        .message
        .contains("not an ELF file"));
    assert!(of(&f, "plugin exports").is_empty());
    assert_eq!(code, 1);
}

#[test]
fn plugin_missing_vtables() {
    let mut fx = Fixture::new();
    let old = build_so(&fx.tmp.0, "libnccl-net-old.so", &["ncclNetPlugin_v8"]);
    fx.set("NCCL_NET_PLUGIN", &old.to_string_lossy());
    let (f, code) = fx.run();
    let e = one(&f, "plugin exports", Status::Warn);
    assert!(
        e.message
            .starts_with("net v8; collnet none; tuner none (from dlsym)"),
        "{}",
        e.message
    );
    assert_eq!(code, 0);

    let none = build_so(&fx.tmp.0, "libnccl-net-none.so", &["ncclNetPlugin_v6"]);
    fx.set("NCCL_NET_PLUGIN", &none.to_string_lossy());
    let (f, code) = fx.run();
    assert!(one(&f, "plugin exports", Status::Fail)
        .message
        .contains("no ncclNetPlugin_v7..v12"));
    assert_eq!(code, 1);
}

#[test]
fn plugin_needs_a_newer_glibc_than_the_host() {
    let mut fx = Fixture::new();
    // The library needs GLIBC_2.2.5 or newer (getpid); a host "older" than
    // any glibc the library could need.
    fx.glibc = Some("2.0".into());
    let (f, code) = fx.run();
    let g = one(&f, "plugin glibc", Status::Fail);
    assert!(
        g.message.contains("needs GLIBC_2.") && g.message.contains("host has glibc 2.0"),
        "{}",
        g.message
    );
    assert!(g.fix.as_deref().unwrap_or("").contains("portable build"));
    assert_eq!(code, 1);

    fx.glibc = None;
    let (f, code) = fx.run();
    one(&f, "plugin glibc", Status::Warn);
    assert_eq!(code, 0);
}

#[test]
fn elf_reader_agrees_with_objdump() {
    let fx = Fixture::new();
    let info = elf::parse(&std::fs::read(&fx.plugin).expect("read")).expect("parse");
    for s in all_symbols() {
        assert!(info.exports.contains(s), "{s} missing");
    }
    assert!(info.exports.contains("fake_pid"));
    assert!(
        !info.exports.contains("getpid"),
        "undefined symbols are not exports"
    );
    let Ok(out) = Command::new("objdump").arg("-T").arg(&fx.plugin).output() else {
        return; // no binutils: the parse above still checked the exports
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut theirs: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .filter(|w| w.starts_with("GLIBC_"))
        .collect();
    theirs.sort_unstable();
    theirs.dedup();
    let mut ours: Vec<&str> = info.needs.iter().map(|(_, v)| v.as_str()).collect();
    ours.sort_unstable();
    ours.dedup();
    assert_eq!(ours, theirs);
    assert!(info.needs.iter().all(|(lib, _)| lib.starts_with("libc.so")));
}

#[test]
fn nccl_net_selects_another_network() {
    let mut fx = Fixture::new();
    fx.set("NCCL_NET", "Socket");
    let (f, code) = fx.run();
    assert!(one(&f, "NCCL_NET", Status::Fail)
        .message
        .contains("not airamp"));
    assert_eq!(code, 1);

    fx.unset("NCCL_NET");
    let (f, code) = fx.run();
    let n = one(&f, "NCCL_NET", Status::Ok);
    assert!(n.fix.as_deref().unwrap_or("").contains("NCCL_NET=airamp"));
    assert_eq!(code, 0);
}

#[test]
fn no_interface_up() {
    let mut fx = Fixture::new();
    fx.interfaces.push(ia("eth1", "10.1.0.1", false));
    fx.set("AIRAMP_SOCKET_IFNAME", "eth1");
    let (f, code) = fx.run();
    let i = one(&f, "interfaces", Status::Fail);
    assert!(
        i.message
            .contains("filter eth1 from env AIRAMP_SOCKET_IFNAME")
            && i.message.contains("down: eth1"),
        "{}",
        i.message
    );
    assert_eq!(code, 1);

    // A name no interface has.
    fx.set("AIRAMP_SOCKET_IFNAME", "ib0");
    let (f, code) = fx.run();
    assert!(one(&f, "interfaces", Status::Fail)
        .message
        .contains("no interface here matches it (this host has: eth0, eth1, lo)"));
    assert_eq!(code, 1);

    // NCCL_SOCKET_IFNAME is the fallback when AIRAMP_SOCKET_IFNAME is unset.
    fx.unset("AIRAMP_SOCKET_IFNAME")
        .set("NCCL_SOCKET_IFNAME", "eth0");
    let (f, code) = fx.run();
    assert!(one(&f, "interfaces", Status::Ok)
        .message
        .contains("from env NCCL_SOCKET_IFNAME"));
    assert_eq!(code, 0);

    // No filter, no NIC: loopback only.
    fx.unset("NCCL_SOCKET_IFNAME");
    fx.interfaces = vec![ia("lo", "127.0.0.1", true), ia("eth0", "10.0.0.1", false)];
    let (f, code) = fx.run();
    assert!(one(&f, "interfaces", Status::Warn)
        .message
        .contains("loopback only"));
    assert_eq!(code, 0);
}

#[test]
fn bad_config_values_and_unknown_variables() {
    let mut fx = Fixture::new();
    fx.set("AIRAMP_NSTREAMS", "banana")
        .set("AIRAMP_NSTREEMS", "4");
    let (f, code) = fx.run();
    let c = of(&f, "config");
    assert_eq!(c.len(), 2, "{}", render_text(&f));
    assert!(c.iter().all(|x| x.status == Status::Warn));
    assert!(c.iter().any(|x| x
        .message
        .contains("transport.streams: invalid value \"banana\"")));
    assert!(c.iter().any(|x| x
        .message
        .contains("unknown environment variable AIRAMP_NSTREEMS")));
    assert_eq!(code, 0, "a bad value is a warning: airamp still runs");

    // AIRAMP_CONF names a file that is not TOML.
    let conf = fx.tmp.0.join("airamp.conf");
    std::fs::write(&conf, "[transport\nstreams = 4\n").expect("write");
    fx.unset("AIRAMP_NSTREAMS")
        .unset("AIRAMP_NSTREEMS")
        .set("AIRAMP_CONF", &conf.to_string_lossy());
    let (f, _) = fx.run();
    assert!(one(&f, "config", Status::Warn)
        .message
        .contains("is not valid TOML"));

    // A missing AIRAMP_CONF file is reported; a valid one is OK.
    fx.set("AIRAMP_CONF", "/nonexistent/airamp.conf");
    let (f, _) = fx.run();
    assert!(one(&f, "config", Status::Warn)
        .message
        .contains("cannot read /nonexistent/airamp.conf"));
    std::fs::write(&conf, "[transport]\nstreams = 4\n").expect("write");
    fx.set("AIRAMP_CONF", &conf.to_string_lossy());
    let (f, _) = fx.run();
    assert!(one(&f, "config", Status::Ok)
        .message
        .contains("airamp.conf"));
}

/// Reads an HTTP request up to its blank line. A fake server must: closing
/// a socket with unread request bytes sends a reset, which can reach the
/// client before the reply does.
fn read_request(s: &std::net::TcpStream) {
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) && !line.trim_end().is_empty() {
        line.clear();
    }
}

#[test]
fn metrics_port_of_this_local_rank_in_use() {
    let mut fx = Fixture::new();
    // Something that is not airamp holds the port of local rank 1.
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port();
    let server = std::thread::spawn(move || {
        if let Ok((mut s, _)) = busy.accept() {
            read_request(&s);
            let _ = s.write_all(b"HTTP/1.0 404 Not Found\r\n\r\nnope\n");
        }
    });
    fx.set("AIRAMP_METRICS", "1")
        .set("AIRAMP_METRICS_ADDR", &format!("127.0.0.1:{}", port - 1))
        .set("SLURM_LOCALID", "1");
    let (f, code) = fx.run();
    let m = one(&f, "metrics port", Status::Warn);
    assert!(
        m.message.contains(&format!(
            "127.0.0.1:{port} in use; local rank 1 from SLURM_LOCALID"
        )) && m.message.contains("not an airamp exporter"),
        "{}",
        m.message
    );
    assert_eq!(code, 0);
    server.join().expect("server");

    // An airamp exporter answers there.
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port();
    let server = std::thread::spawn(move || {
        if let Ok((mut s, _)) = busy.accept() {
            read_request(&s);
            let _ = s.write_all(
                b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n# TYPE airamp_status gauge\nairamp_status 1\n",
            );
        }
    });
    fx.set("AIRAMP_METRICS_ADDR", &format!("127.0.0.1:{port}"))
        .unset("SLURM_LOCALID");
    let (f, _) = fx.run();
    let m = one(&f, "metrics port", Status::Warn);
    assert!(
        m.message.contains("an airamp exporter answers")
            && m.message
                .contains("local rank 0: none of LOCAL_RANK, SLURM_LOCALID"),
        "{}",
        m.message
    );
    server.join().expect("server");

    // Free once nobody holds it.
    let (f, code) = fx.run();
    assert!(one(&f, "metrics port", Status::Ok)
        .message
        .contains(&format!("127.0.0.1:{port} free")));
    assert_eq!(code, 0);
}

#[test]
fn fp8_without_collnet_enable() {
    let mut fx = Fixture::new();
    fx.set("AIRAMP_ENABLE_FP8_ALLREDUCE", "1");
    let (f, code) = fx.run();
    let c = one(&f, "compression", Status::Warn);
    assert!(
        c.message.contains("nothing will be compressed"),
        "{}",
        c.message
    );
    assert_eq!(c.fix.as_deref(), Some("export NCCL_COLLNET_ENABLE=1"));
    assert_eq!(code, 0);

    fx.set("NCCL_COLLNET_ENABLE", "1");
    let (f, _) = fx.run();
    one(&f, "compression", Status::Ok);
}

#[test]
fn gpu_collnet_on_a_virtual_nic_without_gdr_level() {
    let mut fx = Fixture::new();
    fx.set("AIRAMP_GPU_COLLNET", "1");
    fx.pci_nics.clear(); // eth0 is now virtual (no PCI device)
    let (f, code) = fx.run();
    let g = of(&f, "gpu.collnet");
    assert_eq!(g.len(), 2, "{}", render_text(&f));
    assert_eq!(g[0].status, Status::Ok);
    assert!(
        g[0].message.contains("limited to 16 SMs") && g[0].message.contains("63 MiB"),
        "{}",
        g[0].message
    );
    assert_eq!(g[1].status, Status::Warn);
    assert!(g[1].message.contains("eth0"), "{}", g[1].message);
    assert_eq!(g[1].fix.as_deref(), Some("export NCCL_NET_GDR_LEVEL=PHB"));
    assert_eq!(code, 0);

    // With the level set, or on a PCI NIC: only the note on its memory.
    fx.set("NCCL_NET_GDR_LEVEL", "PHB");
    let (f, _) = fx.run();
    assert_eq!(of(&f, "gpu.collnet").len(), 1);
    fx.unset("NCCL_NET_GDR_LEVEL");
    fx.pci_nics.insert("eth0".into());
    let (f, _) = fx.run();
    assert_eq!(of(&f, "gpu.collnet").len(), 1);
}

#[test]
fn gpu_collnet_without_an_mps_daemon() {
    let mut fx = Fixture::new();
    fx.set("AIRAMP_GPU_COLLNET", "1");
    fx.mps_daemon = false;
    let (f, code) = fx.run();
    let g = of(&f, "gpu.collnet");
    assert_eq!(g.len(), 2, "{}", render_text(&f));
    assert_eq!(g[1].status, Status::Warn);
    assert!(g[1].message.contains("MPS"), "{}", g[1].message);
    assert_eq!(g[1].fix.as_deref(), Some("nvidia-cuda-mps-control -d"));
    assert_eq!(code, 0);
    // Without MPS the context cannot be limited: its full cost is named.
    assert!(g[0].message.contains("every SM") && g[0].message.contains("270 MiB"));

    // With MPS and gpu.sms = 0, the same cost.
    fx.mps_daemon = true;
    fx.set("AIRAMP_GPU_SMS", "0");
    let (f, _) = fx.run();
    let g = of(&f, "gpu.collnet");
    assert!(g[0].message.contains("gpu.sms = 0") && g[0].message.contains("270 MiB"));
    fx.unset("AIRAMP_GPU_SMS");

    // gpu.collnet off: MPS does not matter.
    fx.unset("AIRAMP_GPU_COLLNET");
    let (f, _) = fx.run();
    assert!(of(&f, "gpu.collnet").is_empty(), "{}", render_text(&f));
}

/// `transport.poller`: what `auto` comes to per rank, and a warning when
/// spinning threads are forced onto too few cores.
#[test]
fn poller_threads_per_rank() {
    let mut fx = Fixture::new();
    let p = one(&fx.run().0, "poller", Status::Ok).message.clone();
    assert!(
        p.contains("16 cores for this rank: two poller threads"),
        "{p}"
    );

    // Four ranks share the 16 cores: 4 each, enough (measured on 8 cores
    // shared by 2 ranks).
    fx.set("LOCAL_WORLD_SIZE", "4");
    let p = one(&fx.run().0, "poller", Status::Ok).message.clone();
    assert!(
        p.contains("4 cores per rank: 16 cores shared by 4 ranks: two poller threads"),
        "{p}"
    );

    // Eight ranks share the 16 cores: too few for pollers.
    fx.set("LOCAL_WORLD_SIZE", "8");
    let p = one(&fx.run().0, "poller", Status::Ok).message.clone();
    assert!(
        p.contains("2 cores per rank: 16 cores shared by 8 ranks: no poller threads"),
        "{p}"
    );

    // Pinned to 12 of 128 cores, the rank counts its own.
    fx.cores = (12, 128);
    let p = one(&fx.run().0, "poller", Status::Ok).message.clone();
    assert!(
        p.contains("12 cores for this rank: two poller threads"),
        "{p}"
    );

    // Forced on with 2 cores per rank: a warning, and the way back.
    fx.cores = (16, 16);
    fx.set("AIRAMP_POLLER", "two");
    let (f, code) = fx.run();
    let p = one(&f, "poller", Status::Warn);
    assert!(p.message.contains("2 cores per rank"), "{}", p.message);
    assert_eq!(p.fix.as_deref(), Some("export AIRAMP_POLLER=auto"));
    assert_eq!(code, 0);

    // Turned off by hand: fine anywhere.
    fx.set("AIRAMP_POLLER", "off");
    let p = one(&fx.run().0, "poller", Status::Ok).message.clone();
    assert!(p.contains("no poller threads"), "{p}");
}

/// The MPS probe: a pipe left behind by a killed daemon (no reader) is
/// not a running daemon.
#[test]
fn the_mps_pipe_counts_only_with_a_reader() {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = Tmp::new();
    let pipe = tmp.0.join("control");
    assert!(!super::pipe_has_reader(&pipe), "no file");
    let c = std::ffi::CString::new(pipe.to_str().expect("utf-8")).expect("no NUL");
    // SAFETY: a valid C string; creates a FIFO in the test's directory.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    assert!(!super::pipe_has_reader(&pipe), "a FIFO nobody reads");
    let _reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&pipe)
        .expect("open for reading");
    assert!(super::pipe_has_reader(&pipe), "a FIFO with a reader");
}

#[test]
fn tuner_plugin_points_elsewhere() {
    let mut fx = Fixture::new();
    let other = build_so(&fx.tmp.0, "libnccl-tuner-other.so", &["ncclTunerPlugin_v4"]);
    fx.set("NCCL_TUNER_PLUGIN", &other.to_string_lossy());
    let (f, code) = fx.run();
    assert!(one(&f, "NCCL_TUNER_PLUGIN", Status::Warn)
        .message
        .contains("another tuner"));
    assert_eq!(code, 0);

    // Unset, but a libnccl-tuner.so on the path wins over the net plugin's.
    std::fs::copy(&other, fx.tmp.0.join("libnccl-tuner.so")).expect("copy");
    let dir = fx.tmp.0.to_string_lossy().into_owned();
    fx.unset("NCCL_TUNER_PLUGIN").set("LD_LIBRARY_PATH", &dir);
    let (f, _) = fx.run();
    assert!(one(&f, "NCCL_TUNER_PLUGIN", Status::Warn)
        .message
        .contains("libnccl-tuner.so first"));

    // Disabled, or a name NCCL cannot find (it then falls back to the net
    // plugin's tuner).
    fx.set("NCCL_TUNER_PLUGIN", "none");
    let (f, _) = fx.run();
    assert!(one(&f, "NCCL_TUNER_PLUGIN", Status::Warn)
        .message
        .contains("loads no tuner"));
    fx.set("NCCL_TUNER_PLUGIN", "nosuchtuner");
    let (f, _) = fx.run();
    assert!(one(&f, "NCCL_TUNER_PLUGIN", Status::Warn)
        .message
        .contains("not found; NCCL falls back to the net plugin's tuner"));

    // Pointing at the airamp library is right.
    let plugin = fx.plugin.to_string_lossy().into_owned();
    fx.set("NCCL_TUNER_PLUGIN", &plugin);
    let (f, _) = fx.run();
    one(&f, "NCCL_TUNER_PLUGIN", Status::Ok);
}

#[test]
fn peer_that_does_not_answer() {
    let fx = Fixture::new();
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let opts = DoctorOpts {
        peer: Some(format!("127.0.0.1:{port}")),
        json: false,
    };
    let (f, code) = fx.run_with(&opts);
    let p = one(&f, "peer", Status::Fail);
    assert!(
        p.message.contains("control connection (plain TCP)"),
        "{}",
        p.message
    );
    assert!(p.fix.as_deref().unwrap_or("").contains("calibrate --serve"));
    assert_eq!(code, 1);

    let opts = DoctorOpts {
        peer: Some("no-port-here".into()),
        json: false,
    };
    let (f, code) = fx.run_with(&opts);
    one(&f, "peer", Status::Fail);
    assert_eq!(code, 1);
}

#[test]
fn nccl_resolution_rules() {
    assert_eq!(nccl_candidates("libnccl-net", None), ["libnccl-net.so"]);
    assert_eq!(
        nccl_candidates("libnccl-net", Some("airamp")),
        ["airamp", "libnccl-net-airamp.so"]
    );
    assert_eq!(
        nccl_candidates("libnccl-net", Some("libnccl-net-airamp.so")),
        ["libnccl-net-airamp.so"]
    );
    assert_eq!(
        nccl_candidates("libnccl-tuner", Some("/opt/x.so")),
        ["/opt/x.so"]
    );
}

#[test]
fn output_forms() {
    let f = vec![
        finding(
            "NCCL_NET",
            Status::Fail,
            "a \"quoted\"\nline".into(),
            Some("fix it".into()),
        ),
        finding("config", Status::Ok, "fine".into(), None),
    ];
    let text = render_text(&f);
    assert!(
        text.starts_with("FAIL  NCCL_NET          a \"quoted\"\nline\n"),
        "{text}"
    );
    assert!(text.contains("fix: fix it\n"));
    assert!(text.contains("1 OK, 0 WARN, 1 FAIL"));
    assert_eq!(
        render_json(&f),
        "[{\"check\":\"NCCL_NET\",\"status\":\"FAIL\",\"message\":\"a \\\"quoted\\\"\\nline\",\"fix\":\"fix it\"},\n {\"check\":\"config\",\"status\":\"OK\",\"message\":\"fine\",\"fix\":null}]\n"
    );
}
