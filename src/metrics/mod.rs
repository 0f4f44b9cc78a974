//! Metrics registry and the in-process Prometheus exporter.
//!
//! The registry is a set of `static` atomics (one [`TransportMetrics`] per
//! transport) plus fixed-bucket atomic histograms; every recording method is
//! a handful of `Relaxed` atomic RMWs, with no locks and no allocation, so the
//! transport's I/O threads can call them per chunk. [`render`] turns the
//! registry into Prometheus text exposition format (version 0.0.4).
//!
//! [`start`] runs one plain `std::thread` (no async runtime in the host
//! process) that serves the text over HTTP and/or rewrites a textfile for
//! node_exporter every 10 s; [`shutdown`] stops and joins it. No global
//! `metrics` recorder is installed: the host process may have its own.
//! See `docs/metrics.md` for the metric list and the design rationale.

mod calibration;
mod collnet;
#[allow(unsafe_code)] // pthread_atfork child handler
mod exporter;
mod histogram;
mod render;
mod tuner;

#[cfg(test)]
mod dashboard_tests;
#[cfg(test)]
#[allow(unsafe_code)] // sysconf for the CPU-time check
mod exporter_tests;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

pub use calibration::{calibration, CalibrationMetrics, Profile as TunerProfile};
pub use collnet::{collnet, CollnetMetrics, GpuCall};
pub use exporter::{shutdown, start, ExporterConfig, ExporterStatus, InfoLabels, MetricsError};
pub use render::render;
pub use tuner::tuner_decision;

use histogram::Histogram;

/// Which transport a [`TransportMetrics`] belongs to (label `transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// `transport="tcp"`
    Tcp,
    /// `transport="verbs"`
    Verbs,
}

impl TransportKind {
    /// Every transport, in rendering order.
    pub const ALL: [TransportKind; 2] = [TransportKind::Tcp, TransportKind::Verbs];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            TransportKind::Tcp => "tcp",
            TransportKind::Verbs => "verbs",
        }
    }
}

/// Why a connection or a request failed (label `cause`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnError {
    /// Peer refused the connection.
    Refused,
    /// Connect, handshake or I/O timed out.
    Timeout,
    /// Peer presented a wrong connection token.
    BadToken,
    /// Handshake failed (version mismatch, malformed hello, ...).
    Handshake,
    /// Connection reset by peer.
    Reset,
    /// Unexpected end of stream.
    Eof,
    /// Peer violated the wire protocol.
    Protocol,
    /// Anything else.
    Other,
}

impl ConnError {
    /// Number of causes.
    pub const COUNT: usize = 8;
    /// Every cause, in rendering order (index == `self as usize`).
    pub const ALL: [ConnError; Self::COUNT] = [
        ConnError::Refused,
        ConnError::Timeout,
        ConnError::BadToken,
        ConnError::Handshake,
        ConnError::Reset,
        ConnError::Eof,
        ConnError::Protocol,
        ConnError::Other,
    ];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            ConnError::Refused => "refused",
            ConnError::Timeout => "timeout",
            ConnError::BadToken => "bad_token",
            ConnError::Handshake => "handshake",
            ConnError::Reset => "reset",
            ConnError::Eof => "eof",
            ConnError::Protocol => "protocol",
            ConnError::Other => "other",
        }
    }
}

/// Keeps a hot counter on its own cache line(s) so that sender and receiver
/// threads bumping different counters do not false-share. 128 bytes covers
/// the adjacent-line prefetcher on x86_64 and the 128-byte lines on some
/// aarch64 parts.
#[repr(align(128))]
struct Padded<T>(T);

/// Upper bounds (inclusive, nanoseconds) of `airamp_request_duration_seconds`:
/// 10 us .. 10 s in 1-2.5-5 steps.
const LATENCY_BOUNDS_NS: [u64; 19] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Upper bounds (inclusive, bytes) of `airamp_message_size_bytes`: powers of
/// 4 from 64 B (4^3) to 1 GiB (4^15).
const SIZE_BOUNDS: [u64; 13] = {
    let mut b = [0u64; 13];
    let mut i = 0;
    while i < 13 {
        b[i] = 64u64 << (2 * i);
        i += 1;
    }
    b
};

const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_NS.len() + 1;
const SIZE_BUCKETS: usize = SIZE_BOUNDS.len() + 1;

/// Counters, gauge and histograms of one transport. Every method is `&self`,
/// lock-free and allocation-free: a few `Relaxed` atomic read-modify-writes.
pub struct TransportMetrics {
    kind: TransportKind,
    bytes_sent: Padded<AtomicU64>,
    bytes_received: Padded<AtomicU64>,
    messages_sent: Padded<AtomicU64>,
    messages_received: Padded<AtomicU64>,
    requests_in_flight: Padded<AtomicI64>,
    connections_opened: AtomicU64,
    connections_closed: AtomicU64,
    connection_errors: [AtomicU64; ConnError::COUNT],
    request_errors: [AtomicU64; ConnError::COUNT],
    request_latency: Padded<Histogram<LATENCY_BUCKETS>>,
    message_size: Padded<Histogram<SIZE_BUCKETS>>,
    poller_wakeups: AtomicU64,
    poller_spin_ns: AtomicU64,
}

impl TransportMetrics {
    pub(crate) const fn new(kind: TransportKind) -> Self {
        Self {
            kind,
            bytes_sent: Padded(AtomicU64::new(0)),
            bytes_received: Padded(AtomicU64::new(0)),
            messages_sent: Padded(AtomicU64::new(0)),
            messages_received: Padded(AtomicU64::new(0)),
            requests_in_flight: Padded(AtomicI64::new(0)),
            connections_opened: AtomicU64::new(0),
            connections_closed: AtomicU64::new(0),
            connection_errors: [const { AtomicU64::new(0) }; ConnError::COUNT],
            request_errors: [const { AtomicU64::new(0) }; ConnError::COUNT],
            request_latency: Padded(Histogram::new()),
            message_size: Padded(Histogram::new()),
            poller_wakeups: AtomicU64::new(0),
            poller_spin_ns: AtomicU64::new(0),
        }
    }

    /// Which transport these metrics belong to.
    pub fn kind(&self) -> TransportKind {
        self.kind
    }

    /// `n` payload bytes were written to the wire.
    #[inline]
    pub fn bytes_sent(&self, n: u64) {
        self.bytes_sent.0.fetch_add(n, Relaxed);
    }

    /// `n` payload bytes were read from the wire.
    #[inline]
    pub fn bytes_received(&self, n: u64) {
        self.bytes_received.0.fetch_add(n, Relaxed);
    }

    /// One NCCL send request slot completed.
    #[inline]
    pub fn message_sent(&self) {
        self.messages_sent.0.fetch_add(1, Relaxed);
    }

    /// One NCCL receive request slot completed.
    #[inline]
    pub fn message_received(&self) {
        self.messages_received.0.fetch_add(1, Relaxed);
    }

    /// A connection was established.
    #[inline]
    pub fn connection_opened(&self) {
        self.connections_opened.fetch_add(1, Relaxed);
    }

    /// A connection was closed (orderly or not).
    #[inline]
    pub fn connection_closed(&self) {
        self.connections_closed.fetch_add(1, Relaxed);
    }

    /// A connection attempt or an established connection failed.
    #[inline]
    pub fn connection_failed(&self, cause: ConnError) {
        self.connection_errors[cause as usize].fetch_add(1, Relaxed);
    }

    /// A request was posted (in-flight gauge +1).
    #[inline]
    pub fn request_started(&self) {
        self.requests_in_flight.0.fetch_add(1, Relaxed);
    }

    /// A request completed or was abandoned (in-flight gauge -1).
    #[inline]
    pub fn request_finished(&self) {
        self.requests_in_flight.0.fetch_sub(1, Relaxed);
    }

    /// A request failed.
    #[inline]
    pub fn request_error(&self, cause: ConnError) {
        self.request_errors[cause as usize].fetch_add(1, Relaxed);
    }

    /// Observe one request's duration (post to completion).
    #[inline]
    pub fn request_latency(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.request_latency.0.observe(&LATENCY_BOUNDS_NS, ns);
    }

    /// Observe one message's size in bytes.
    #[inline]
    pub fn message_size(&self, bytes: u64) {
        self.message_size.0.observe(&SIZE_BOUNDS, bytes);
    }

    /// A poller thread woke up to spin (`transport.poller`).
    pub fn poller_woke(&self) {
        self.poller_wakeups.fetch_add(1, Relaxed);
    }

    /// A poller thread spun for `d` before going back to sleep.
    pub fn poller_spun(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.poller_spin_ns.fetch_add(ns, Relaxed);
    }
}

static TCP: TransportMetrics = TransportMetrics::new(TransportKind::Tcp);
static VERBS: TransportMetrics = TransportMetrics::new(TransportKind::Verbs);

/// The process-wide metrics of one transport. Always valid, whether or not
/// the exporter runs; grab it once and keep the `&'static`.
#[inline]
pub fn transport(kind: TransportKind) -> &'static TransportMetrics {
    match kind {
        TransportKind::Tcp => &TCP,
        TransportKind::Verbs => &VERBS,
    }
}

static STATUS: AtomicBool = AtomicBool::new(false);

/// Set the `airamp_status` gauge (1 = plugin initialised and healthy).
pub fn set_status(up: bool) {
    STATUS.store(up, Relaxed);
}
