//! Prometheus text exposition format (0.0.4) renderer.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;

use super::histogram::Snapshot;
use super::{
    transport, ConnError, InfoLabels, TransportKind, TransportMetrics, LATENCY_BOUNDS_NS,
    SIZE_BOUNDS, STATUS,
};

/// `airamp_info` labels. Set by the first `start()` of the process and
/// fixed from then on (build information does not change at run time). A
/// `OnceLock` rather than a mutex keeps `render()` lock-free, hence safe in a
/// child after `fork()`.
static INFO: OnceLock<InfoLabels> = OnceLock::new();

pub(crate) fn set_info(info: InfoLabels) {
    let _ = INFO.set(info);
}

/// Render every metric as Prometheus text exposition format 0.0.4.
///
/// `airamp_info` appears once `start()` has been called (even with the
/// exporter off); everything else is always present, with zeros for
/// transports and causes that never happened.
pub fn render() -> String {
    let all = TransportKind::ALL.map(transport);
    render_with(INFO.get(), &all)
}

pub(super) fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escape a label value (backslash, double quote, newline).
fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

type Get = fn(&TransportMetrics) -> u64;
type GetByCause = fn(&TransportMetrics) -> &[AtomicU64; ConnError::COUNT];

pub(crate) fn render_with(info: Option<&InfoLabels>, ts: &[&TransportMetrics]) -> String {
    let mut out = String::with_capacity(16 * 1024);

    header(
        &mut out,
        "airamp_status",
        "gauge",
        "1 if the airamp plugin is initialised and healthy, 0 otherwise.",
    );
    let _ = writeln!(out, "airamp_status {}", u8::from(STATUS.load(Relaxed)));

    if let Some(i) = info {
        header(
            &mut out,
            "airamp_info",
            "gauge",
            "Build and runtime information about the airamp plugin; always 1.",
        );
        let _ = writeln!(
            out,
            "airamp_info{{version=\"{}\",git_sha=\"{}\",transport=\"{}\",nccl_abi=\"{}\",fp8=\"{}\"}} 1",
            escape(&i.version),
            escape(&i.git_sha),
            escape(&i.transport),
            escape(&i.nccl_abi),
            i.fp8
        );
    }

    let counters: [(&str, &str, Get); 7] = [
        (
            "airamp_bytes_sent_total",
            "Payload bytes written to the network.",
            |t| t.bytes_sent.0.load(Relaxed),
        ),
        (
            "airamp_bytes_received_total",
            "Payload bytes read from the network.",
            |t| t.bytes_received.0.load(Relaxed),
        ),
        (
            "airamp_messages_sent_total",
            "Completed NCCL send requests.",
            |t| t.messages_sent.0.load(Relaxed),
        ),
        (
            "airamp_messages_received_total",
            "Completed NCCL receive requests.",
            |t| t.messages_received.0.load(Relaxed),
        ),
        (
            "airamp_connections_opened_total",
            "Connections established.",
            |t| t.connections_opened.load(Relaxed),
        ),
        (
            "airamp_connections_closed_total",
            "Connections closed.",
            |t| t.connections_closed.load(Relaxed),
        ),
        (
            "airamp_poller_wakeups_total",
            "Times a poller thread woke up to move small messages (transport.poller).",
            |t| t.poller_wakeups.load(Relaxed),
        ),
    ];
    for (name, help, get) in counters {
        per_transport(&mut out, ts, name, "counter", help, |t| get(t).to_string());
    }

    let by_cause: [(&str, &str, GetByCause); 2] = [
        (
            "airamp_connection_errors_total",
            "Failed connection attempts and broken connections, by cause.",
            |t| &t.connection_errors,
        ),
        (
            "airamp_request_errors_total",
            "Failed send/receive requests, by cause.",
            |t| &t.request_errors,
        ),
    ];
    for (name, help, get) in by_cause {
        header(&mut out, name, "counter", help);
        for t in ts {
            for c in ConnError::ALL {
                let _ = writeln!(
                    out,
                    "{name}{{transport=\"{}\",cause=\"{}\"}} {}",
                    t.kind.as_str(),
                    c.as_str(),
                    get(t)[c as usize].load(Relaxed)
                );
            }
        }
    }

    per_transport(
        &mut out,
        ts,
        "airamp_poller_spin_seconds_total",
        "counter",
        "Time poller threads spent spinning, i.e. cores they kept busy (transport.poller).",
        |t| (t.poller_spin_ns.load(Relaxed) as f64 / 1e9).to_string(),
    );
    per_transport(
        &mut out,
        ts,
        "airamp_requests_in_flight",
        "gauge",
        "Send/receive requests posted and not yet completed.",
        |t| t.requests_in_flight.0.load(Relaxed).to_string(),
    );

    header(
        &mut out,
        "airamp_request_duration_seconds",
        "histogram",
        "Time from posting a send/receive request to its completion.",
    );
    for t in ts {
        let s = t.request_latency.0.snapshot();
        histogram(
            &mut out,
            "airamp_request_duration_seconds",
            t.kind,
            &s,
            &LATENCY_BOUNDS_NS,
            |ns| format!("{}", ns as f64 / 1e9),
        );
    }

    header(
        &mut out,
        "airamp_message_size_bytes",
        "histogram",
        "Size of completed send/receive messages.",
    );
    for t in ts {
        let s = t.message_size.0.snapshot();
        histogram(
            &mut out,
            "airamp_message_size_bytes",
            t.kind,
            &s,
            &SIZE_BOUNDS,
            |b| b.to_string(),
        );
    }

    super::collnet::render(&mut out);
    super::tuner::render(&mut out);
    super::calibration::render(&mut out);
    out
}

/// One series per transport, its value rendered by `value`.
fn per_transport(
    out: &mut String,
    ts: &[&TransportMetrics],
    name: &str,
    kind: &str,
    help: &str,
    value: impl Fn(&TransportMetrics) -> String,
) {
    header(out, name, kind, help);
    for t in ts {
        let _ = writeln!(
            out,
            "{name}{{transport=\"{}\"}} {}",
            t.kind.as_str(),
            value(t)
        );
    }
}

fn histogram<const N: usize>(
    out: &mut String,
    name: &str,
    kind: TransportKind,
    s: &Snapshot<N>,
    bounds: &[u64],
    fmt: impl Fn(u64) -> String,
) {
    let tr = kind.as_str();
    for (b, c) in bounds.iter().zip(&s.cumulative) {
        let _ = writeln!(
            out,
            "{name}_bucket{{transport=\"{tr}\",le=\"{}\"}} {c}",
            fmt(*b)
        );
    }
    let count = s.cumulative[N - 1];
    let _ = writeln!(
        out,
        "{name}_bucket{{transport=\"{tr}\",le=\"+Inf\"}} {count}"
    );
    let _ = writeln!(out, "{name}_sum{{transport=\"{tr}\"}} {}", fmt(s.sum));
    let _ = writeln!(out, "{name}_count{{transport=\"{tr}\"}} {count}");
}
