use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;
use std::time::Duration;

use super::render::{render_with, set_info};
use super::*;

/// The exporter is a process-wide singleton: tests that start it run one at
/// a time.
static EXPORTER_TESTS: Mutex<()> = Mutex::new(());

fn exporter_lock() -> std::sync::MutexGuard<'static, ()> {
    EXPORTER_TESTS.lock().unwrap_or_else(|e| e.into_inner())
}

fn info() -> InfoLabels {
    InfoLabels {
        version: "0.1.0".into(),
        git_sha: "abc\"de\\f".into(),
        transport: "tcp".into(),
        nccl_abi: "v8".into(),
        fp8: true,
    }
}

fn cfg(addr: Option<SocketAddr>, textfile: Option<PathBuf>) -> ExporterConfig {
    ExporterConfig {
        addr,
        textfile,
        info: info(),
    }
}

fn localhost0() -> Option<SocketAddr> {
    Some("127.0.0.1:0".parse().unwrap())
}

fn valid_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn valid_label_name(n: &str) -> bool {
    valid_name(n) && !n.contains(':')
}

/// Parse `{k="v",...}`; returns the pairs and the rest of the line.
type Labels = Vec<(String, String)>;

fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    let mut rest = s.strip_prefix('{').ok_or("expected {")?;
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or("label without =")?;
        let name = &rest[..eq];
        if !valid_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        let mut chars = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("unquoted label value")?
            .char_indices();
        let body = &rest[eq + 2..];
        let mut value = String::new();
        let end = loop {
            match chars.next().ok_or("unterminated label value")? {
                (i, '"') => break i,
                (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                    'n' => value.push('\n'),
                    c @ ('\\' | '"') => value.push(c),
                    c => return Err(format!("bad escape \\{c}")),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((name.to_string(), value));
        rest = &body[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

fn parse_value(v: &str) -> Result<f64, String> {
    match v {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => v.parse().map_err(|e| format!("bad value {v:?}: {e}")),
    }
}

/// Checks `text` is valid exposition format 0.0.4 and returns every sample,
/// keyed by `name{labels as written}`.
fn check_exposition(text: &str) -> Result<HashMap<String, f64>, String> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps: HashMap<String, ()> = HashMap::new();
    let mut samples = HashMap::new();
    // (histogram, labels without le) -> [(le, cumulative)], sum, count
    type Series = (Vec<(f64, f64)>, Option<f64>, Option<f64>);
    let mut hists: BTreeMap<(String, String), Series> = BTreeMap::new();
    if !text.ends_with('\n') {
        return Err("no trailing newline".into());
    }
    for line in text.lines() {
        if let Some(r) = line.strip_prefix("# HELP ") {
            let name = r.split(' ').next().unwrap();
            if !valid_name(name) || helps.insert(name.into(), ()).is_some() {
                return Err(format!("bad or duplicate HELP: {line}"));
            }
            continue;
        }
        if let Some(r) = line.strip_prefix("# TYPE ") {
            let mut p = r.split(' ');
            let (name, ty) = (p.next().unwrap(), p.next().ok_or("TYPE without type")?);
            if !valid_name(name)
                || !matches!(
                    ty,
                    "counter" | "gauge" | "histogram" | "summary" | "untyped"
                )
                || types.insert(name.into(), ty.into()).is_some()
            {
                return Err(format!("bad or duplicate TYPE: {line}"));
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| format!("bad sample {line}"))?;
        let name = &line[..name_end];
        if !valid_name(name) {
            return Err(format!("bad metric name {name:?}"));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..])?
        } else {
            (Vec::new(), &line[name_end..])
        };
        let value = parse_value(rest.strip_prefix(' ').ok_or("no space before value")?)?;
        let family = if types.contains_key(name) {
            name.to_string()
        } else {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|b| {
                    types.get(*b).is_some_and(|t| {
                        t == "histogram" || (t == "summary" && !name.ends_with("_bucket"))
                    })
                })
                .ok_or_else(|| format!("sample {name} of an undeclared metric"))?
                .to_string()
        };
        if !helps.contains_key(&family) {
            return Err(format!("{family} has no HELP"));
        }
        let ty = types[&family].as_str();
        if ty == "counter" && (value.is_nan() || value < 0.0) {
            return Err(format!("negative counter: {line}"));
        }
        if ty == "histogram" {
            let key_labels: Vec<String> = labels
                .iter()
                .filter(|(k, _)| k != "le")
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let e = hists
                .entry((family.clone(), key_labels.join(",")))
                .or_default();
            if name.ends_with("_bucket") {
                let le = labels
                    .iter()
                    .find(|(k, _)| k == "le")
                    .ok_or("bucket without le")?;
                e.0.push((parse_value(&le.1)?, value));
            } else if name.ends_with("_sum") {
                e.1 = Some(value);
            } else {
                e.2 = Some(value);
            }
        }
        let key = format!("{name}{}", &line[name_end..line.len() - rest.len()]);
        if samples.insert(key.clone(), value).is_some() {
            return Err(format!("duplicate sample {key}"));
        }
    }
    for ((family, labels), (buckets, sum, count)) in &hists {
        let what = format!("{family}{{{labels}}}");
        let count = count.ok_or(format!("{what}: no _count"))?;
        sum.ok_or(format!("{what}: no _sum"))?;
        for w in buckets.windows(2) {
            if w[0].0 >= w[1].0 || w[0].1 > w[1].1 || w[1].1.is_nan() {
                return Err(format!("{what}: buckets not ascending/cumulative"));
            }
        }
        match buckets.last() {
            Some(&(le, c)) if le == f64::INFINITY && c == count => {}
            _ => return Err(format!("{what}: +Inf bucket missing or != _count")),
        }
    }
    Ok(samples)
}

#[test]
fn counters_reflect_increments_exactly() {
    let m = TransportMetrics::new(TransportKind::Verbs);
    for _ in 0..3 {
        m.bytes_sent(1000);
    }
    m.bytes_received(7);
    m.bytes_received(u32::MAX as u64);
    for _ in 0..5 {
        m.message_sent();
    }
    m.message_received();
    m.connection_opened();
    m.connection_opened();
    m.connection_closed();
    m.connection_failed(ConnError::BadToken);
    m.connection_failed(ConnError::BadToken);
    m.connection_failed(ConnError::Other);
    for _ in 0..4 {
        m.request_started();
    }
    m.request_finished();
    m.request_error(ConnError::Eof);
    m.request_latency(Duration::from_micros(10)); // le=1e-5, inclusive bound
    m.request_latency(Duration::from_millis(3)); // le=0.005
    m.request_latency(Duration::from_secs(20)); // +Inf only
    m.message_size(64);
    m.message_size(65);
    m.message_size(1 << 30);
    m.message_size(u64::MAX / 4);

    let text = render_with(None, &[&m]);
    let s = check_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let get = |k: &str| *s.get(k).unwrap_or_else(|| panic!("missing {k}\n{text}"));
    let t = "transport=\"verbs\"";
    assert_eq!(get(&format!("airamp_bytes_sent_total{{{t}}}")), 3000.0);
    assert_eq!(
        get(&format!("airamp_bytes_received_total{{{t}}}")),
        (u32::MAX as u64 + 7) as f64
    );
    assert_eq!(get(&format!("airamp_messages_sent_total{{{t}}}")), 5.0);
    assert_eq!(get(&format!("airamp_messages_received_total{{{t}}}")), 1.0);
    assert_eq!(get(&format!("airamp_connections_opened_total{{{t}}}")), 2.0);
    assert_eq!(get(&format!("airamp_connections_closed_total{{{t}}}")), 1.0);
    let ce = |c: &str| {
        get(&format!(
            "airamp_connection_errors_total{{{t},cause=\"{c}\"}}"
        ))
    };
    assert_eq!(ce("bad_token"), 2.0);
    assert_eq!(ce("other"), 1.0);
    assert_eq!(ce("refused"), 0.0);
    let re = |c: &str| get(&format!("airamp_request_errors_total{{{t},cause=\"{c}\"}}"));
    assert_eq!(re("eof"), 1.0);
    assert_eq!(re("timeout"), 0.0);
    assert_eq!(get(&format!("airamp_requests_in_flight{{{t}}}")), 3.0);

    let lat = |le: &str| {
        get(&format!(
            "airamp_request_duration_seconds_bucket{{{t},le=\"{le}\"}}"
        ))
    };
    assert_eq!(lat("0.00001"), 1.0);
    assert_eq!(lat("0.0025"), 1.0);
    assert_eq!(lat("0.005"), 2.0);
    assert_eq!(lat("10"), 2.0);
    assert_eq!(lat("+Inf"), 3.0);
    assert_eq!(
        get(&format!("airamp_request_duration_seconds_count{{{t}}}")),
        3.0
    );
    assert_eq!(
        get(&format!("airamp_request_duration_seconds_sum{{{t}}}")),
        20.00301
    );

    let sz = |le: &str| {
        get(&format!(
            "airamp_message_size_bytes_bucket{{{t},le=\"{le}\"}}"
        ))
    };
    assert_eq!(sz("64"), 1.0);
    assert_eq!(sz("256"), 2.0);
    assert_eq!(sz("268435456"), 2.0);
    assert_eq!(sz("1073741824"), 3.0);
    assert_eq!(sz("+Inf"), 4.0);
    assert_eq!(get(&format!("airamp_message_size_bytes_count{{{t}}}")), 4.0);

    // In-flight is a gauge and may go below zero transiently (finish racing
    // start on different threads); it must render as a signed integer.
    let g = TransportMetrics::new(TransportKind::Tcp);
    g.request_finished();
    assert!(render_with(None, &[&g]).contains("airamp_requests_in_flight{transport=\"tcp\"} -1\n"));
}

#[test]
fn buckets_match_spec() {
    assert_eq!(SIZE_BOUNDS[0], 64);
    assert_eq!(*SIZE_BOUNDS.last().unwrap(), 1 << 30);
    assert!(SIZE_BOUNDS.windows(2).all(|w| w[1] == w[0] * 4));
    assert_eq!(LATENCY_BOUNDS_NS[0], 10_000);
    assert_eq!(*LATENCY_BOUNDS_NS.last().unwrap(), 10_000_000_000);
    assert!(LATENCY_BOUNDS_NS.windows(2).all(|w| w[0] < w[1]));
}

const FAMILIES: [&str; 36] = [
    "airamp_status",
    "airamp_info",
    "airamp_bytes_sent_total",
    "airamp_bytes_received_total",
    "airamp_messages_sent_total",
    "airamp_messages_received_total",
    "airamp_connections_opened_total",
    "airamp_connections_closed_total",
    "airamp_poller_wakeups_total",
    "airamp_poller_spin_seconds_total",
    "airamp_connection_errors_total",
    "airamp_requests_in_flight",
    "airamp_request_errors_total",
    "airamp_request_duration_seconds",
    "airamp_message_size_bytes",
    "airamp_tuner_decisions_total",
    "airamp_collnet_ops_total",
    "airamp_collnet_input_bytes_total",
    "airamp_collnet_wire_bytes_total",
    "airamp_collnet_fp8_relative_error",
    "airamp_collnet_op_duration_seconds",
    "airamp_collnet_pool_lookups_total",
    "airamp_collnet_pool_bytes",
    "airamp_collnet_gpu_calls_total",
    "airamp_collnet_gpu_pinned_bytes",
    "airamp_collnet_gpu_context_bytes",
    "airamp_collnet_gpu_mirror_bytes",
    "airamp_collnet_gpu_mirror_refusals_total",
    "airamp_collnet_pola_calls_total",
    "airamp_collnet_pola_locks_total",
    "airamp_collnet_pola_locked_groups",
    "airamp_tuner_link_bytes_per_second",
    "airamp_tuner_link_latency_seconds",
    "airamp_tuner_codec_values_per_second",
    "airamp_tuner_crossover_bytes",
    "airamp_calibration_connect_seconds",
];

#[test]
fn render_is_valid_exposition_with_exactly_the_documented_metrics() {
    set_info(info());
    let text = render();
    check_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let declared: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    let mut expected = FAMILIES.to_vec();
    expected.sort_unstable();
    let mut got = declared.clone();
    got.sort_unstable();
    assert_eq!(got, expected);
    assert!(text.contains(
        "airamp_info{version=\"0.1.0\",git_sha=\"abc\\\"de\\\\f\",transport=\"tcp\",nccl_abi=\"v8\",fp8=\"true\"} 1\n"
    ));
}

#[test]
fn promtool_check_metrics() {
    use std::process::{Command, Stdio};
    set_info(info());
    let text = render();
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            println!("note: promtool not available ({e}); skipping promtool check");
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Send `req` raw, return (status line, headers lowercased, body).
fn http(addr: SocketAddr, req: &[u8]) -> (String, HashMap<String, String>, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    // Only a guard against a hung test, not a timing assertion.
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(req).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("no header end");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().to_string();
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    (status, headers, body.to_string())
}

#[test]
fn http_serves_metrics() {
    let _g = exporter_lock();
    shutdown();
    // The only test that touches the global verbs bytes_received counter.
    let m = transport(TransportKind::Verbs);
    let before = m.bytes_received.0.load(Relaxed);
    m.bytes_received(12345);
    set_status(true);

    let st = start(cfg(localhost0(), None)).unwrap().expect("running");
    let addr = st.addr.expect("bound addr");
    assert_ne!(addr.port(), 0);

    let (status, h, body) = http(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n",
    );
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(
        h["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert_eq!(h["content-length"].parse::<usize>().unwrap(), body.len());
    let s = check_exposition(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));
    assert_eq!(
        s["airamp_bytes_received_total{transport=\"verbs\"}"],
        (before + 12345) as f64
    );
    assert_eq!(s["airamp_status"], 1.0);
    assert!(body.contains("airamp_info{"));

    let (status, _, body) = http(addr, b"GET /?x=1 HTTP/1.0\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.contains("# TYPE airamp_status gauge"));

    let (status, h, body) = http(addr, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.is_empty());
    assert!(h["content-length"].parse::<usize>().unwrap() > 0);

    let (status, _, _) = http(addr, b"GET /nope HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, h, _) = http(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    assert_eq!(h["allow"], "GET, HEAD");
    let (status, _, _) = http(addr, b"garbage\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 400 Bad Request");

    // Oversized request: 431, not a hang or a crash.
    let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    big.resize(20_000, b'a');
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = c.write_all(&big);
    let mut resp = Vec::new();
    let _ = c.read_to_end(&mut resp);
    assert!(
        resp.starts_with(b"HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&resp)
    );

    // A client that connects and says nothing must not wedge the exporter:
    // shutdown still joins while it is connected.
    let _silent = TcpStream::connect(addr).unwrap();
    shutdown();
    set_status(false);
    // The port is released: the same address can be bound again.
    let again = start(cfg(Some(addr), None)).unwrap().unwrap();
    assert_eq!(again.addr, Some(addr));
    shutdown();
}

#[test]
fn bind_conflict_is_an_error_not_a_panic() {
    let _g = exporter_lock();
    shutdown();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = start(cfg(Some(addr), None)).unwrap_err();
    assert!(
        matches!(err, MetricsError::Bind { addr: a, .. } if a == addr),
        "{err:?}"
    );
    assert!(err.to_string().contains(&addr.to_string()));
    // Nothing is left running; a later start works.
    let st = start(cfg(localhost0(), None)).unwrap().unwrap();
    assert_ne!(st.addr, Some(addr));
    shutdown();
}

#[test]
fn start_is_idempotent_shutdown_joins_and_restart_works() {
    let _g = exporter_lock();
    shutdown();
    shutdown(); // nothing running: no-op
    assert_eq!(start(cfg(None, None)).unwrap(), None);
    let a = start(cfg(localhost0(), None)).unwrap().unwrap();
    let b = start(cfg(localhost0(), None)).unwrap().unwrap();
    assert_eq!(a, b, "second start while running must be a no-op");
    shutdown();
    shutdown();
    let c = start(cfg(localhost0(), None)).unwrap().unwrap();
    let (status, _, _) = http(c.addr.unwrap(), b"GET /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK");
    shutdown();
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("airamp-metrics-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn textfile_is_written_atomically() {
    use std::os::unix::fs::MetadataExt;
    let _g = exporter_lock();
    shutdown();
    let dir = temp_dir("textfile");
    let path = dir.join("airamp.prom");
    std::fs::write(&path, "stale\n").unwrap();
    let ino_before = std::fs::metadata(&path).unwrap().ino();

    // Textfile only, no HTTP: the thread still runs; first write is at start.
    let st = start(cfg(None, Some(path.clone())))
        .unwrap()
        .expect("running");
    assert_eq!(st.addr, None);
    assert_eq!(st.textfile.as_deref(), Some(path.as_path()));
    let text = std::fs::read_to_string(&path).unwrap();
    check_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    // Replaced by rename (new inode), not rewritten in place.
    assert_ne!(std::fs::metadata(&path).unwrap().ino(), ino_before);
    shutdown();
    // Final snapshot on shutdown; no temp files left behind.
    let text = std::fs::read_to_string(&path).unwrap();
    check_exposition(&text).unwrap();
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["airamp.prom".to_string()]);

    // Unwritable location: an error, nothing running.
    let bad = dir.join("no-such-dir").join("x.prom");
    assert!(matches!(
        start(cfg(None, Some(bad))),
        Err(MetricsError::Textfile { .. })
    ));
    assert_eq!(start(cfg(None, None)).unwrap(), None);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn concurrent_recording_is_exact() {
    let m = TransportMetrics::new(TransportKind::Tcp);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for i in 0..10_000u64 {
                    m.bytes_sent(1);
                    m.message_size(i);
                    m.request_started();
                    m.request_finished();
                }
            });
        }
    });
    assert_eq!(m.bytes_sent.0.load(Relaxed), 40_000);
    assert_eq!(m.requests_in_flight.0.load(Relaxed), 0);
    let snap = m.message_size.0.snapshot();
    assert_eq!(snap.cumulative[SIZE_BUCKETS - 1], 40_000);
    assert_eq!(snap.sum, 4 * (0..10_000u64).sum::<u64>());
}

/// Each context airamp makes adds what it took to the gauge.
#[test]
fn gpu_context_bytes_add_up() {
    let value = || -> u64 {
        render()
            .lines()
            .find_map(|l| l.strip_prefix("airamp_collnet_gpu_context_bytes "))
            .expect("the gauge is rendered")
            .parse()
            .expect("a number")
    };
    let before = value();
    crate::metrics::collnet().gpu_context(276 << 20);
    crate::metrics::collnet().gpu_context(269 << 20);
    assert_eq!(value() - before, (276 + 269) << 20);
}

/// Mirrors add to the gauge and leave it when freed; refusals count.
#[test]
fn gpu_mirror_bytes_and_refusals_follow_their_events() {
    let value = |family: &str| -> u64 {
        render()
            .lines()
            .find_map(|l| l.strip_prefix(family)?.strip_prefix(' '))
            .expect("the family is rendered")
            .parse()
            .expect("a number")
    };
    let (bytes, refusals) = (
        "airamp_collnet_gpu_mirror_bytes",
        "airamp_collnet_gpu_mirror_refusals_total",
    );
    let (bytes_before, refused_before) = (value(bytes), value(refusals));
    crate::metrics::collnet().gpu_mirrors(64 << 20);
    assert_eq!(value(bytes), bytes_before + (64 << 20));
    crate::metrics::collnet().gpu_mirror_refused();
    crate::metrics::collnet().gpu_mirrors(-(64 << 20));
    assert_eq!(value(bytes), bytes_before);
    assert_eq!(value(refusals), refused_before + 1);
}
