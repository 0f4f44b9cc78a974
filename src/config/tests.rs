use super::*;
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const NOENV: [(&str, &str); 0] = [];

fn file(text: &str) -> (Config, Vec<Diagnostic>) {
    Config::from_sources(Some((Path::new("/etc/airamp.conf"), text)), NOENV)
}

fn env(vars: &[(&str, &str)]) -> (Config, Vec<Diagnostic>) {
    Config::from_sources(None, vars.iter().copied())
}

fn spec(key: &str) -> &'static KeySpec {
    KEYS.iter().find(|k| k.name == key).unwrap()
}

fn toml_line(key: &str, value: &str) -> String {
    let (sec, k) = key.split_once('.').unwrap();
    format!("[{sec}]\n{k} = {value}\n")
}

/// (key, valid env value, valid TOML literal, expected rendered value)
const VALID: &[(&str, &str, &str, &str)] = &[
    ("transport.kind", "VERBS", "\"tcp\"", "verbs"),
    (
        "transport.socket_ifname",
        "^docker,lo",
        "\"^docker,lo\"",
        "^docker,lo",
    ),
    ("transport.socket_family", "ipv6", "\"IPv6\"", "ipv6"),
    ("transport.streams", "16", "16", "16"),
    ("transport.chunk_size", "1M", "\"1M\"", "1048576"),
    ("transport.min_chunk_size", "256K", "\"1M\"", "262144"),
    ("transport.narrow_bytes", "0", "\"1M\"", "0"),
    ("transport.socket_buffer", "64KiB", "65536", "65536"),
    ("transport.peer_timeout_ms", "100", "100", "100"),
    ("transport.inline_bytes", "0", "\"1M\"", "0"),
    ("transport.poller", "TWO", "\"one\"", "two"),
    (
        "transport.handshake_timeout_ms",
        "600000",
        "600000",
        "600000",
    ),
    ("metrics.enabled", "off", "false", "false"),
    ("metrics.addr", "[::1]:9100", "\"0.0.0.0\"", "[::1]:9100"),
    (
        "metrics.textfile",
        "/tmp/a.prom",
        "\"/tmp/a.prom\"",
        "/tmp/a.prom",
    ),
    ("compression.fp8_allreduce", "yes", "true", "true"),
    ("compression.format", "INT8", "\"e5m2\"", "int8"),
    ("gpu.ghost_kernels", "1", "true", "true"),
    ("gpu.collnet", "on", "true", "true"),
    ("gpu.mirror_budget", "512M", "\"2G\"", "512M"),
    ("gpu.sms", "8", "0", "8"),
    ("collnet.workers", "0", "\"auto\"", "0"),
    ("collnet.proxy_assist", "yes", "true", "true"),
    ("tuner.enabled", "No", "false", "false"),
    ("tuner.calibrate", "off", "false", "false"),
    ("tuner.min_gain", "0.5", "1", "0.5"),
    ("tuner.link_gbps", "400", "400.0", "400"),
    ("tuner.link_latency_us", "0", "2.5", "0"),
    ("tuner.encode_gvps", "2.5", "3", "2.5"),
    ("tuner.decode_gvps", "7", "6.5", "7"),
    ("tuner.call_overhead_us", "0", "12.5", "0"),
    ("tuner.single_channel_bytes", "0", "\"1M\"", "0"),
];

/// (key, invalid env value, invalid TOML literal)
const INVALID: &[(&str, &str, &str)] = &[
    ("transport.kind", "rdma", "\"ib\""),
    ("transport.socket_ifname", "^", "42"),
    ("transport.socket_family", "inet", "4"),
    ("transport.streams", "17", "0"),
    ("transport.chunk_size", "4095", "\"32M\""),
    ("transport.min_chunk_size", "0", "\"17M\""),
    ("transport.narrow_bytes", "17M", "-1"),
    ("transport.socket_buffer", "1K", "-1"),
    ("transport.peer_timeout_ms", "99", "3600001"),
    ("transport.inline_bytes", "2G", "-1"),
    ("transport.poller", "three", "true"),
    ("transport.handshake_timeout_ms", "ten", "1.5"),
    ("metrics.enabled", "maybe", "2"),
    ("metrics.addr", "localhost:9090", "\"1.2.3.4:0\""),
    ("metrics.textfile", "", "7"),
    ("compression.fp8_allreduce", "enable", "\"y\""),
    ("compression.format", "e3m4", "\"fp8\""),
    ("gpu.ghost_kernels", "2", "[true]"),
    ("gpu.collnet", "maybe", "3"),
    ("gpu.mirror_budget", "1025G", "0"),
    ("gpu.sms", "-1", "1025"),
    ("collnet.workers", "-1", "65"),
    ("collnet.proxy_assist", "sometimes", "2"),
    ("tuner.enabled", "", "{ a = 1 }"),
    ("tuner.calibrate", "sometimes", "7"),
    ("tuner.min_gain", "1.5", "-0.1"),
    ("tuner.link_gbps", "0", "-5"),
    ("tuner.link_latency_us", "-1", "\"NaN\""),
    ("tuner.encode_gvps", "0", "-1"),
    ("tuner.decode_gvps", "fast", "\"inf\""),
    ("tuner.call_overhead_us", "-1", "100001"),
    ("tuner.single_channel_bytes", "2G", "-1"),
];

#[test]
fn tables_cover_every_key() {
    for k in KEYS {
        assert!(VALID.iter().any(|v| v.0 == k.name), "{} in VALID", k.name);
        assert!(
            INVALID.iter().any(|v| v.0 == k.name),
            "{} in INVALID",
            k.name
        );
    }
    let mut envs: Vec<_> = KEYS.iter().map(|k| k.env).collect();
    envs.sort();
    envs.dedup();
    assert_eq!(envs.len(), KEYS.len(), "env var names are unique");
}

#[test]
fn defaults() {
    let (c, d) = Config::from_sources(None, NOENV);
    assert!(d.is_empty());
    assert_eq!(c, Config::default());
    assert_eq!(c.transport.kind, TransportKind::Auto);
    assert_eq!(c.transport.socket_ifname, None);
    assert_eq!(c.transport.streams, 0);
    assert_eq!(c.transport.chunk_size, 524288);
    assert_eq!(c.transport.socket_buffer, 0);
    assert_eq!(c.transport.peer_timeout(), Duration::from_secs(30));
    assert_eq!(c.transport.inline_bytes, None);
    assert!([64 << 10, 1 << 30].contains(&c.transport.inline_bytes()));
    // Everything inline where the stream threads have no cores of their own.
    assert_eq!(super::inline_bytes_auto(2), 1 << 30);
    assert_eq!(super::inline_bytes_auto(7), 1 << 30);
    assert_eq!(super::inline_bytes_auto(8), 64 << 10);
    assert_eq!(super::inline_bytes_auto(128), 64 << 10);
    // Two spinning pollers only where they are a small share of the cores.
    assert_eq!(c.transport.poller, PollerThreads::Auto);
    assert_ne!(c.transport.poller(), PollerThreads::Auto);
    assert_eq!(super::poller_auto(3, 16), PollerThreads::Off);
    assert_eq!(super::poller_auto(4, 16), PollerThreads::Two);
    assert_eq!(super::poller_auto(8, 8), PollerThreads::Two);
    // Below 8 cores the proxy moves every message itself: nothing for a
    // poller's share to be measured against.
    assert_eq!(super::poller_auto(4, 4), PollerThreads::Off);
    assert_eq!(super::poller_auto(7, 7), PollerThreads::Off);
    // Ranks that may all run everywhere share the host's cores; a pinned
    // rank counts its own.
    assert_eq!(super::cores_per_rank(128, 128, 8), 16);
    assert_eq!(super::cores_per_rank(16, 16, 2), 8);
    assert_eq!(super::cores_per_rank(12, 128, 8), 12);
    assert_eq!(super::cores_per_rank(2, 2, 0), 2);
    let launcher = |vars: &'static [(&'static str, &'static str)]| {
        super::local_ranks(move |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    };
    assert_eq!(launcher(&[]), 1);
    assert_eq!(launcher(&[("LOCAL_WORLD_SIZE", "8")]), 8);
    assert_eq!(launcher(&[("SLURM_NTASKS_PER_NODE", "4(x2)")]), 4);
    assert_eq!(
        launcher(&[
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "0"),
            ("MPI_LOCALNRANKS", "2")
        ]),
        2
    );
    assert_eq!(launcher(&[("LOCAL_WORLD_SIZE", "many")]), 1);
    assert_eq!(c.transport.handshake_timeout(), Duration::from_secs(10));
    assert!(c.metrics.enabled);
    assert_eq!(c.metrics.addr.to_string(), "127.0.0.1:9090");
    assert!(!c.compression.fp8_allreduce);
    assert_eq!(c.compression.format, WireFormat::E4M3);
    assert!(!c.gpu.ghost_kernels);
    assert!(c.tuner.enabled);
    assert!(c.tuner.calibrate);
    assert_eq!(c.tuner.min_gain, 0.05);
    assert_eq!(c.tuner.link_gbps, None);
    assert_eq!(c.tuner.link_latency_us, None);
    assert_eq!(c.tuner.encode_gvps, None);
    assert_eq!(c.tuner.decode_gvps, None);
    assert_eq!(c.tuner.call_overhead_us, 150.0);
    for k in KEYS {
        assert_eq!(c.source(k.name), Some(&Source::Default));
    }
    assert_eq!(c.source("nope"), None);
}

#[test]
fn every_key_valid_from_env_and_file() {
    for &(key, ev, tv, want) in VALID {
        let s = spec(key);
        let (c, d) = env(&[(s.env, ev)]);
        assert!(d.is_empty(), "{key} env {ev:?}: {d:?}");
        assert_eq!(c.value_string(key).unwrap(), want, "{key} env");
        assert_eq!(c.source(key), Some(&Source::Env(s.env.to_string())));

        let (c, d) = file(&toml_line(key, tv));
        assert!(d.is_empty(), "{key} file {tv}: {d:?}");
        assert_eq!(
            c.source(key),
            Some(&Source::File("/etc/airamp.conf".into()))
        );
    }
}

fn assert_one_bad(d: &[Diagnostic], key: &str, shown: &str) {
    assert_eq!(d.len(), 1, "{key}: {d:?}");
    let d = &d[0];
    assert_eq!(d.level, Level::Warn);
    assert_eq!(d.key.as_deref(), Some(key));
    assert!(d.message.contains(key), "{d}");
    assert!(d.message.contains(shown), "{d} should show {shown}");
    assert!(d.message.contains(spec(key).accepted), "{d}");
}

#[test]
fn every_key_invalid_gives_one_diagnostic_and_default() {
    let default = Config::default();
    for &(key, ev, tv) in INVALID {
        let s = spec(key);
        // metrics.textfile / tuner.enabled "" are special below.
        if !ev.is_empty() {
            let (c, d) = env(&[(s.env, ev)]);
            assert_one_bad(&d, key, &format!("{ev:?}"));
            assert!(d[0].message.contains(s.env));
            assert_eq!(c.value_string(key), default.value_string(key), "{key}");
            assert_eq!(c.source(key), Some(&Source::Default));
        }
        let (c, d) = file(&toml_line(key, tv));
        assert_eq!(d.len(), 1, "{key} = {tv}: {d:?}");
        assert_eq!(d[0].key.as_deref(), Some(key));
        assert!(d[0].message.contains(s.accepted), "{}", d[0]);
        assert_eq!(c, default_with_file(), "{key} = {tv}");
    }
}

fn default_with_file() -> Config {
    Config {
        file: Some("/etc/airamp.conf".into()),
        ..Config::default()
    }
}

#[test]
fn empty_string_unsets_optional_keys_but_is_bad_for_bool() {
    let (c, d) = env(&[("AIRAMP_METRICS_TEXTFILE", ""), ("AIRAMP_LINK_GBPS", " ")]);
    assert!(d.is_empty(), "{d:?}");
    assert_eq!(c.metrics.textfile, None);
    assert_eq!(c.tuner.link_gbps, None);
    assert_eq!(
        c.source("metrics.textfile"),
        Some(&Source::Env("AIRAMP_METRICS_TEXTFILE".into()))
    );
    let (c, d) = env(&[("AIRAMP_TUNER", "")]);
    assert_one_bad(&d, "tuner.enabled", "\"\"");
    assert!(c.tuner.enabled);
    assert!(c.tuner.calibrate);
}

#[test]
fn diagnostic_message_shape() {
    let (_, d) = env(&[("AIRAMP_NSTREAMS", "17")]);
    assert_eq!(
        d[0].to_string(),
        "airamp config warning: transport.streams: invalid value \"17\" from env \
         AIRAMP_NSTREAMS (out of range); accepted: auto, or integer 1..=16; using auto (default)"
    );
}

#[test]
fn env_beats_file() {
    let text = "[transport]\nstreams = 8\nkind = \"verbs\"\n[tuner]\nmin_gain = 0.2\n";
    let (c, d) = Config::from_sources(
        Some((Path::new("/x.conf"), text)),
        [("AIRAMP_NSTREAMS", "2"), ("AIRAMP_TUNER_MIN_GAIN", "0.3")],
    );
    assert!(d.is_empty(), "{d:?}");
    assert_eq!(c.transport.streams, 2);
    assert_eq!(c.tuner.min_gain, 0.3);
    assert_eq!(c.transport.kind, TransportKind::Verbs);
    assert_eq!(
        c.source("transport.kind"),
        Some(&Source::File("/x.conf".into()))
    );
    assert_eq!(
        c.source("transport.streams"),
        Some(&Source::Env("AIRAMP_NSTREAMS".into()))
    );
    assert_eq!(c.file(), Some(Path::new("/x.conf")));
}

#[test]
fn former_format_names_still_work() {
    let key = "compression.format";
    // Environment: the former variable alone sets the key.
    let (c, d) = env(&[("AIRAMP_FP8_FORMAT", "e5m2")]);
    assert!(d.is_empty(), "{d:?}");
    assert_eq!(c.compression.format, WireFormat::E5M2);
    assert_eq!(
        c.source(key),
        Some(&Source::Env("AIRAMP_FP8_FORMAT".into()))
    );
    // Both: the key's own variable wins, a differing former one is reported.
    let (c, d) = env(&[
        ("AIRAMP_FP8_FORMAT", "e5m2"),
        ("AIRAMP_COMPRESSION_FORMAT", "int8"),
    ]);
    assert_eq!(c.compression.format, WireFormat::Int8);
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(d[0].message.contains("AIRAMP_FP8_FORMAT"), "{}", d[0]);
    let (_, d) = env(&[
        ("AIRAMP_FP8_FORMAT", "int8"),
        ("AIRAMP_COMPRESSION_FORMAT", "int8"),
    ]);
    assert!(d.is_empty(), "{d:?}");
    // A bad value under the former name is reported against the key.
    let (c, d) = env(&[("AIRAMP_FP8_FORMAT", "e3m4")]);
    assert_one_bad(&d, key, "\"e3m4\"");
    assert_eq!(c.compression.format, WireFormat::E4M3);
    // File: the same rules, and the environment still beats the file.
    let (c, d) = file("[compression]\nfp8_format = \"int8\"\n");
    assert!(d.is_empty(), "{d:?}");
    assert_eq!(c.compression.format, WireFormat::Int8);
    let (c, d) = file("[compression]\nfp8_format = \"int8\"\nformat = \"e5m2\"\n");
    assert_eq!(c.compression.format, WireFormat::E5M2);
    assert_eq!(d.len(), 1, "{d:?}");
    let (c, d) = Config::from_sources(
        Some((
            Path::new("/etc/airamp.conf"),
            "[compression]\nformat = \"e5m2\"\n",
        )),
        [("AIRAMP_FP8_FORMAT", "int8")],
    );
    assert!(d.is_empty(), "{d:?}");
    assert_eq!(c.compression.format, WireFormat::Int8);
    // The generated docs name the former spellings.
    assert!(keys_markdown().contains("`AIRAMP_FP8_FORMAT`"));
    assert!(example_conf().contains("compression.fp8_format / AIRAMP_FP8_FORMAT"));
}

#[test]
fn bad_env_keeps_file_value() {
    let (c, d) = Config::from_sources(
        Some((Path::new("/x.conf"), "[transport]\nstreams = 8\n")),
        [("AIRAMP_NSTREAMS", "lots")],
    );
    assert_eq!(d.len(), 1);
    assert!(d[0].message.contains("using 8 (file /x.conf)"), "{}", d[0]);
    assert_eq!(c.transport.streams, 8);
    assert_eq!(
        c.source("transport.streams"),
        Some(&Source::File("/x.conf".into()))
    );
}

#[test]
fn bad_value_affects_only_its_key() {
    let (c, d) = file("[transport]\nstreams = \"many\"\nkind = \"tcp\"\nchunk_size = \"64K\"\n");
    assert_eq!(d.len(), 1);
    assert_eq!(c.transport.streams, 0);
    assert_eq!(c.transport.kind, TransportKind::Tcp);
    assert_eq!(c.transport.chunk_size, 65536);
}

#[test]
fn unknown_env_vars_warn() {
    let (c, d) = env(&[
        ("AIRAMP_PORT", "tcp://10.0.0.1:80"),
        ("AIRAMP_PORT_80_TCP_ADDR", "10.0.0.1"),
        ("AIRAMP_SERVICE_HOST", "10.0.0.1"),
        ("AIRAMP_NSTREAM", "3"),
        ("AIRAMP_CONF", "/nonexistent"),
        ("AIRAMP_NVRTC_LIB", "/opt/cuda/lib64"),
        ("AIRAMP_GIT_SHA", "56e4e16"),
        ("PATH", "/bin"),
        ("NCCL_DEBUG", "INFO"),
    ]);
    assert_eq!(c, Config::default());
    assert_eq!(d.len(), 4, "{d:?}");
    assert!(d.iter().all(|d| d.level == Level::Warn && d.key.is_none()));
    let k8s: Vec<_> = d
        .iter()
        .filter(|d| d.message.contains("Kubernetes"))
        .collect();
    assert_eq!(k8s.len(), 3);
    assert!(
        d.iter().all(|d| !d.message.contains("10.0.0.1")),
        "values not echoed"
    );
    let typo = d
        .iter()
        .find(|d| d.message.contains("AIRAMP_NSTREAM "))
        .unwrap();
    assert!(
        typo.message.contains("did you mean AIRAMP_NSTREAMS?"),
        "{typo}"
    );
}

#[test]
fn unknown_file_keys_warn() {
    let (c, d) = file("streams = 3\n[transport]\nstreem = 3\n[trnsport]\nkind = \"tcp\"\n[gpu]\n");
    assert_eq!(c, default_with_file());
    assert_eq!(d.len(), 3, "{d:?}");
    assert!(d
        .iter()
        .any(|d| d.message.contains("did you mean transport.streams?")));
    assert!(d
        .iter()
        .any(|d| d.message.contains("did you mean transport?")));
    let (_, d) = file("transport = 5\n");
    assert_eq!(d.len(), 1);
    assert!(d[0].message.contains("must be a table"));
}

#[test]
fn dotted_keys_work() {
    let (c, d) = file("transport.streams = 2\nmetrics.enabled = false\n");
    assert!(d.is_empty());
    assert_eq!(c.transport.streams, 2);
    assert!(!c.metrics.enabled);
}

#[test]
fn syntax_error_gives_one_diagnostic_and_defaults() {
    for text in [
        "[transport\nstreams = 2",
        "transport.streams = = 2",
        "[a]\nx=1\n[a]\n",
        "\u{0}",
    ] {
        let (c, d) = file(text);
        assert_eq!(d.len(), 1, "{text:?}: {d:?}");
        assert!(d[0].key.is_none());
        assert!(d[0].message.contains("/etc/airamp.conf"));
        assert!(d[0].message.contains("not valid TOML"));
        assert_eq!(c, default_with_file());
    }
    // Env still applies.
    let (c, d) = Config::from_sources(Some((Path::new("/f"), "[[[")), [("AIRAMP_NSTREAMS", "5")]);
    assert_eq!(d.len(), 1);
    assert_eq!(c.transport.streams, 5);
}

#[test]
fn empty_file_is_fine() {
    let (c, d) = file("# nothing\n");
    assert!(d.is_empty());
    assert_eq!(c, default_with_file());
}

#[test]
fn nccl_socket_ifname_fallback() {
    let (c, d) = env(&[("NCCL_SOCKET_IFNAME", "=eth0")]);
    assert!(d.is_empty());
    assert_eq!(
        c.transport.socket_ifname.as_ref().unwrap().to_string(),
        "=eth0"
    );
    assert_eq!(
        c.source("transport.socket_ifname"),
        Some(&Source::Env("NCCL_SOCKET_IFNAME".into()))
    );
    // AIRAMP_ wins.
    let (c, _) = env(&[
        ("NCCL_SOCKET_IFNAME", "=eth0"),
        ("AIRAMP_SOCKET_IFNAME", "ib"),
    ]);
    assert_eq!(c.transport.socket_ifname.unwrap().to_string(), "ib");
    // The file wins too.
    let (c, _) = Config::from_sources(
        Some((Path::new("/f"), "[transport]\nsocket_ifname = \"ens\"\n")),
        [("NCCL_SOCKET_IFNAME", "eth")],
    );
    assert_eq!(c.transport.socket_ifname.unwrap().to_string(), "ens");
    // An explicitly empty AIRAMP_SOCKET_IFNAME disables the fallback.
    let (c, _) = env(&[("NCCL_SOCKET_IFNAME", "eth"), ("AIRAMP_SOCKET_IFNAME", "")]);
    assert_eq!(c.transport.socket_ifname, None);
    // A bad NCCL value is reported under the key.
    let (c, d) = env(&[("NCCL_SOCKET_IFNAME", "^")]);
    assert_eq!(c.transport.socket_ifname, None);
    assert_eq!(d.len(), 1);
    assert!(d[0].message.contains("NCCL_SOCKET_IFNAME"));
}

#[test]
fn nccl_socket_family_fallback() {
    let (c, d) = env(&[("NCCL_SOCKET_FAMILY", "AF_INET6")]);
    assert!(d.is_empty());
    assert_eq!(c.transport.socket_family, SocketFamily::Ipv6);
    assert_eq!(
        c.source("transport.socket_family"),
        Some(&Source::Env("NCCL_SOCKET_FAMILY".into()))
    );
    let (c, _) = env(&[
        ("NCCL_SOCKET_FAMILY", "AF_INET"),
        ("AIRAMP_SOCKET_FAMILY", "ipv6"),
    ]);
    assert_eq!(c.transport.socket_family, SocketFamily::Ipv6);
    let (c, d) = env(&[("NCCL_SOCKET_FAMILY", "inet")]);
    assert_eq!(c.transport.socket_family, SocketFamily::Auto);
    assert_eq!(d.len(), 1);
    assert!(d[0].message.contains("AF_INET, AF_INET6"));
}

#[test]
fn ifname_filter() {
    let f = IfnameFilter::parse("eth,ib").unwrap();
    assert!(f.matches("eth0") && f.matches("ib1") && !f.matches("lo") && !f.matches("et"));
    let f = IfnameFilter::parse("^docker,lo").unwrap();
    assert!(f.is_exclude() && !f.is_exact());
    assert!(f.matches("eth0") && !f.matches("docker0") && !f.matches("lo"));
    let f = IfnameFilter::parse("=eth0").unwrap();
    assert!(f.matches("eth0") && !f.matches("eth01") && !f.matches("eth"));
    let f = IfnameFilter::parse("^=eth0, eth1 ,").unwrap();
    assert_eq!(f.names(), ["eth0", "eth1"]);
    assert!(!f.matches("eth0") && !f.matches("eth1") && f.matches("eth10"));
    assert_eq!(f.to_string(), "^=eth0,eth1");
    assert_eq!(IfnameFilter::parse(&f.to_string()).unwrap(), f);
    for bad in ["", "^", "=", "^=", ",,", "eth 0", "a/b", "abcdefghijklmnop"] {
        assert!(IfnameFilter::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn metrics_addr_forms() {
    let v4 = |a, b, c, d| IpAddr::V4(Ipv4Addr::new(a, b, c, d));
    let cases: &[(&str, IpAddr, u16)] = &[
        ("127.0.0.1", v4(127, 0, 0, 1), 9090),
        ("0.0.0.0", v4(0, 0, 0, 0), 9090),
        ("10.1.2.3:9200", v4(10, 1, 2, 3), 9200),
        (" 10.1.2.3:1 ", v4(10, 1, 2, 3), 1),
        ("::1", IpAddr::V6(Ipv6Addr::LOCALHOST), 9090),
        ("::", IpAddr::V6(Ipv6Addr::UNSPECIFIED), 9090),
        ("[::1]:9300", IpAddr::V6(Ipv6Addr::LOCALHOST), 9300),
        ("[fe80::1]", "fe80::1".parse().unwrap(), 9090),
        ("2001:db8::7", "2001:db8::7".parse().unwrap(), 9090),
    ];
    for &(s, ip, port) in cases {
        assert_eq!(
            MetricsAddr::parse(s),
            Ok(MetricsAddr {
                ip,
                base_port: port
            }),
            "{s}"
        );
    }
    for bad in [
        "",
        "localhost",
        "localhost:9090",
        "1.2.3.4:0",
        "1.2.3.4:65536",
        "1.2.3.4:",
        ":9090",
        "[::1",
        "[1.2.3.4]",
        "[::1]:x",
        "1.2.3",
        "::1:9090:zz",
        "http://1.2.3.4",
    ] {
        assert!(MetricsAddr::parse(bad).is_err(), "{bad:?}");
    }
    let (_, d) = env(&[("AIRAMP_METRICS_ADDR", "[::1")]);
    assert_one_bad(&d, "metrics.addr", "\"[::1\"");
}

#[test]
fn local_rank_port_offset() {
    let a = MetricsAddr::parse("0.0.0.0:9100").unwrap();
    assert_eq!(
        a.for_local_rank(0),
        "0.0.0.0:9100".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(a.for_local_rank(7).port(), 9107);
    let a6 = MetricsAddr::parse("[::1]:65530").unwrap();
    assert_eq!(
        a6.for_local_rank(3),
        "[::1]:65533".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(a6.for_local_rank(10).port(), 65535, "saturates");
    assert_eq!(a6.checked_for_local_rank(10), None);
    assert_eq!(a6.checked_for_local_rank(5).unwrap().port(), 65535);
}

#[test]
fn local_rank_from_env_priority() {
    let lr = |v: &[(&str, &str)]| MetricsAddr::local_rank_from_env(v.iter().copied());
    assert_eq!(lr(&[]), None);
    assert_eq!(lr(&[("MPI_LOCALRANKID", "3")]), Some(3));
    assert_eq!(
        lr(&[("MPI_LOCALRANKID", "3"), ("SLURM_LOCALID", "2")]),
        Some(2)
    );
    assert_eq!(
        lr(&[
            ("OMPI_COMM_WORLD_LOCAL_RANK", "5"),
            ("LOCAL_RANK", "1"),
            ("SLURM_LOCALID", "2")
        ]),
        Some(1)
    );
    // First *valid* wins.
    assert_eq!(
        lr(&[("LOCAL_RANK", "x"), ("SLURM_LOCALID", " 4 ")]),
        Some(4)
    );
    assert_eq!(lr(&[("LOCAL_RANK", "-1"), ("LOCAL_RANK_X", "9")]), None);
    assert_eq!(lr(&[("LOCAL_RANK", "70000")]), None);
    let owned = vec![("LOCAL_RANK".to_string(), "6".to_string())];
    assert_eq!(MetricsAddr::local_rank_from_env(owned), Some(6));
}

#[test]
fn bool_spellings() {
    for (s, want) in [
        ("1", true),
        ("true", true),
        ("TRUE", true),
        ("Yes", true),
        ("on", true),
        (" ON ", true),
        ("0", false),
        ("false", false),
        ("False", false),
        ("NO", false),
        ("off", false),
    ] {
        let (c, d) = env(&[("AIRAMP_ENABLE_FP8_ALLREDUCE", s), ("AIRAMP_METRICS", s)]);
        assert!(d.is_empty(), "{s:?}");
        assert_eq!(c.compression.fp8_allreduce, want, "{s:?}");
        assert_eq!(c.metrics.enabled, want, "{s:?}");
        // TOML strings use the same spellings.
        let (c, d) = file(&format!("[gpu]\nghost_kernels = {s:?}\n"));
        assert!(d.is_empty(), "{s:?}");
        assert_eq!(c.gpu.ghost_kernels, want);
    }
    for bad in ["y", "n", "2", "enabled", "tru"] {
        let (_, d) = env(&[("AIRAMP_TUNER", bad)]);
        assert_one_bad(&d, "tuner.enabled", &format!("{bad:?}"));
    }
}

#[test]
fn byte_sizes() {
    for (s, n) in [
        ("4096", 4096),
        ("512K", 512 << 10),
        ("512k", 512 << 10),
        ("512KiB", 512 << 10),
        ("2 MiB", 2 << 20),
        ("16M", 16 << 20),
        ("1G", 1 << 30),
    ] {
        assert_eq!(parse_bytes(s), Ok(n), "{s}");
    }
    for bad in [
        "",
        "K",
        "1.5M",
        "-1",
        "512KB",
        "1T",
        "99999999999999999999",
        "18446744073709551615G",
    ] {
        assert!(parse_bytes(bad).is_err(), "{bad}");
    }
    assert_eq!(format_bytes(524288), "512K");
    assert_eq!(format_bytes(0), "0");
    assert_eq!(format_bytes(4097), "4097");
    let (c, d) = env(&[
        ("AIRAMP_CHUNK_SIZE", "16MiB"),
        ("AIRAMP_SOCKET_BUFFER", "256M"),
    ]);
    assert!(d.is_empty());
    assert_eq!(c.transport.chunk_size, 16 << 20);
    assert_eq!(c.transport.socket_buffer, 256 << 20);
    let (_, d) = env(&[("AIRAMP_SOCKET_BUFFER", "257M")]);
    assert_one_bad(&d, "transport.socket_buffer", "\"257M\"");
}

#[test]
fn long_values_are_cut_in_diagnostics() {
    let long = "x".repeat(10_000);
    let (_, d) = env(&[("AIRAMP_TRANSPORT", long.as_str())]);
    assert_eq!(d.len(), 1);
    assert!(d[0].message.len() < 1000);
}

#[test]
fn render_effective_table() {
    let (c, _) = Config::from_sources(
        Some((Path::new("/x.conf"), "[transport]\nkind = \"tcp\"\n")),
        [("AIRAMP_NSTREAMS", "2")],
    );
    let out = c.render_effective();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "config file: /x.conf");
    assert!(lines[1].starts_with("KEY"));
    assert_eq!(lines.len(), 2 + KEYS.len());
    let row = |k: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(&format!("{k} ")))
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        row("transport.kind"),
        ["transport.kind", "tcp", "file", "/x.conf"]
    );
    assert_eq!(
        row("transport.streams"),
        ["transport.streams", "2", "env", "AIRAMP_NSTREAMS"]
    );
    assert_eq!(
        row("tuner.link_gbps"),
        ["tuner.link_gbps", "(unset)", "default"]
    );
    // Columns line up.
    let col = lines[1].find("VALUE").unwrap();
    assert!(lines[2..].iter().all(|l| l.as_bytes()[col - 1] == b' '));
}

fn manifest_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Set `UPDATE_DOCS=1` to rewrite the generated files instead of failing.
fn check_generated(rel: &str, want: &str) {
    let path = manifest_file(rel);
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&path, want).unwrap();
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{rel} is out of date; regenerate with UPDATE_DOCS=1 cargo test --lib config"
    );
}

#[test]
fn docs_configuration_md_is_generated() {
    check_generated("docs/configuration.md", &keys_markdown());
    let md = keys_markdown();
    for k in KEYS {
        assert!(md.contains(&format!("`{}`", k.env)));
    }
}

#[test]
fn example_conf_is_generated_and_valid() {
    check_generated("examples/airamp.conf", &example_conf());
    let text = std::fs::read_to_string(manifest_file("examples/airamp.conf")).unwrap();
    let path = Path::new("examples/airamp.conf");
    let (c, d) = Config::from_sources(Some((path, text.as_str())), NOENV);
    assert!(d.is_empty(), "{d:?}");
    assert_eq!(c.transport, Config::default().transport);

    // Uncommented, every example value is valid and every key is set.
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if rest.contains(" = ") && !rest.starts_with(' ') => rest,
            _ => l,
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let (c, d) = Config::from_sources(Some((path, uncommented.as_str())), NOENV);
    assert!(d.is_empty(), "{d:?}");
    for k in KEYS {
        assert_eq!(
            c.source(k.name),
            Some(&Source::File(path.into())),
            "{}",
            k.name
        );
    }
    // Keys that have a default show it in the example.
    let def = Config::default();
    for k in KEYS.iter().filter(|k| !k.default.starts_with("unset")) {
        if k.name != "transport.socket_ifname" {
            assert_eq!(
                c.value_string(k.name),
                def.value_string(k.name),
                "{}",
                k.name
            );
        }
    }
}

#[test]
fn global_loads_once() {
    let a = global() as *const Config;
    let b = global() as *const Config;
    assert_eq!(a, b);
    let _ = global_diagnostics();
}

#[test]
fn fuzz_entry_smoke() {
    parse_for_fuzz(b"");
    parse_for_fuzz(
        b"[transport]\nstreams = 99\0AIRAMP_NSTREAMS=0\nAIRAMP_PORT=x\nNCCL_SOCKET_IFNAME=^",
    );
    parse_for_fuzz(&[0xff, 0xfe, 0, 0xff, b'=', 0]);
}

fn env_name() -> impl Strategy<Value = String> {
    let mut names: Vec<String> = KEYS.iter().map(|k| k.env.to_string()).collect();
    names.extend(
        [
            "NCCL_SOCKET_IFNAME",
            "NCCL_SOCKET_FAMILY",
            "AIRAMP_CONF",
            "AIRAMP_PORT",
            "AIRAMP_X",
            "LOCAL_RANK",
        ]
        .map(String::from),
    );
    proptest::sample::select(names)
}

fn toml_literal() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|i| i.to_string()),
        any::<f64>().prop_map(|x| format!("{x:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<String>().prop_map(|s| format!("{s:?}")),
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_text_and_env_never_panic(
        text in any::<String>(),
        vars in proptest::collection::vec((env_name(), any::<String>()), 0..6),
    ) {
        let (c, d) = Config::from_sources(Some((Path::new("p"), text.as_str())), vars);
        let _ = c.render_effective();
        for x in &d {
            let _ = x.to_string();
        }
    }

    #[test]
    fn random_values_for_known_keys_never_panic(
        idx in 0..KEYS.len(),
        lit in toml_literal(),
        ev in any::<String>(),
    ) {
        let k = &KEYS[idx];
        let (c, d) = Config::from_sources(
            Some((Path::new("p"), toml_line(k.name, &lit).as_str())),
            [(k.env.to_string(), ev)],
        );
        for x in &d {
            let _ = x.to_string();
        }
        let _ = c.render_effective();
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        parse_for_fuzz(&bytes);
    }

    #[test]
    fn ifname_and_addr_parsers_never_panic(s in any::<String>(), n in any::<u16>()) {
        if let Ok(f) = IfnameFilter::parse(&s) {
            let _ = f.matches(&s);
            prop_assert_eq!(IfnameFilter::parse(&f.to_string()), Ok(f));
        }
        if let Ok(a) = MetricsAddr::parse(&s) {
            let _ = a.for_local_rank(n);
            prop_assert_eq!(MetricsAddr::parse(&a.to_string()), Ok(a));
        }
        let _ = parse_bytes(&s);
    }
}

#[test]
fn reading_the_file() {
    let dir = std::env::temp_dir().join(format!("airamp-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut d = Vec::new();
    assert_eq!(read_conf_file(&dir.join("missing"), false, &mut d), None);
    assert!(d.is_empty(), "missing default file is silent");
    assert_eq!(read_conf_file(&dir.join("missing"), true, &mut d), None);
    assert_eq!(d.len(), 1);
    assert!(d[0].message.contains("AIRAMP_CONF"), "{}", d[0]);
    d.clear();
    assert_eq!(read_conf_file(&dir, false, &mut d), None, "a directory");
    assert_eq!(d.len(), 1);
    d.clear();
    let bad = dir.join("bad.conf");
    std::fs::write(&bad, [0xff, 0xfe]).unwrap();
    assert_eq!(read_conf_file(&bad, false, &mut d), None);
    assert!(d[0].message.contains("UTF-8"));
    d.clear();
    let good = dir.join("good.conf");
    std::fs::write(&good, "[transport]\nstreams = 2\n").unwrap();
    assert_eq!(
        read_conf_file(&good, true, &mut d).as_deref(),
        Some("[transport]\nstreams = 2\n")
    );
    assert!(d.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}
