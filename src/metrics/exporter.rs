//! The exporter thread: HTTP on a `std::net::TcpListener` and/or a textfile
//! for node_exporter, rendered from the lock-free registry. The HTTP side is
//! one `poll(2)` loop over non-blocking sockets, with a cap on clients, a
//! deadline per client and bounded buffers, so that no client can hold it.

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::render::{render, set_info};
use crate::sys::poll::{self as os, poll_fd, PollFd, POLLIN, POLLOUT};
use crate::sys::thread::spawn_running;

/// Content type of text exposition format 0.0.4; accepted by Prometheus 2
/// and 3 (the latter needs an explicit version in the header).
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Longest `poll(2)` wait: bounds shutdown latency and the idle wake-up rate
/// (20/s, one `poll` each).
pub(super) const POLL: Duration = Duration::from_millis(50);
/// Connections taken from the accept queue per round at most, so that a
/// connect flood cannot keep the thread from the clients it holds.
const ACCEPT_BATCH: usize = 64;
/// Request line + headers larger than this get a 431.
const MAX_REQUEST: usize = 8 * 1024;
/// Size of the shared read buffer.
const SCRATCH: usize = 16 * 1024;
/// Textfile rewrite period.
pub(crate) const TEXTFILE_PERIOD: Duration = Duration::from_secs(10);

/// What [`start`] should run. Decided by the config module.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExporterConfig {
    /// Where to serve HTTP (`None`: no HTTP server). Port 0 picks a free port;
    /// the bound address comes back in [`ExporterStatus::addr`].
    pub addr: Option<SocketAddr>,
    /// Where to write the textfile for node_exporter (`None`: no textfile).
    pub textfile: Option<PathBuf>,
    /// Labels of `airamp_info`.
    pub info: InfoLabels,
}

/// Labels of the `airamp_info` gauge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InfoLabels {
    pub version: String,
    pub git_sha: String,
    pub transport: String,
    pub nccl_abi: String,
    pub fp8: bool,
}

/// What is running after a successful [`start`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExporterStatus {
    /// The address actually bound (port 0 resolved), if serving HTTP.
    pub addr: Option<SocketAddr>,
    /// The textfile being rewritten, if any.
    pub textfile: Option<PathBuf>,
}

/// Why [`start`] started nothing. The caller logs it as one warning; the
/// job goes on without the exporter.
#[derive(Debug)]
pub enum MetricsError {
    /// The HTTP address could not be bound (in use, no permission, ...).
    Bind { addr: SocketAddr, source: io::Error },
    /// The first textfile write failed (bad directory, permissions, ...).
    Textfile { path: PathBuf, source: io::Error },
    /// The exporter thread could not be spawned.
    Spawn(io::Error),
}

impl fmt::Display for MetricsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricsError::Bind { addr, source } => {
                write!(f, "metrics exporter disabled: cannot bind {addr}: {source}")
            }
            MetricsError::Textfile { path, source } => write!(
                f,
                "metrics exporter disabled: cannot write textfile {}: {source}",
                path.display()
            ),
            MetricsError::Spawn(e) => {
                write!(f, "metrics exporter disabled: cannot spawn thread: {e}")
            }
        }
    }
}

impl std::error::Error for MetricsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MetricsError::Bind { source, .. } | MetricsError::Textfile { source, .. } => {
                Some(source)
            }
            MetricsError::Spawn(e) => Some(e),
        }
    }
}

struct Running {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
    status: ExporterStatus,
    /// Process that spawned the thread; differs in a `fork()`ed child, where
    /// the thread does not exist.
    pid: u32,
}

static EXPORTER: Mutex<Option<Running>> = Mutex::new(None);
/// Raw fd of the live listening socket (-1: none), for the atfork child
/// handler to close in the child.
static LISTENER_FD: AtomicI32 = AtomicI32::new(-1);

/// Lock the exporter slot, dropping state inherited from the parent when we
/// are a `fork()`ed child (its thread does not exist here; joining it would
/// be undefined, so the handle is leaked on purpose).
fn slot() -> MutexGuard<'static, Option<Running>> {
    let mut g = EXPORTER.lock().unwrap_or_else(PoisonError::into_inner);
    if g.as_ref().is_some_and(|r| r.pid != std::process::id()) {
        std::mem::forget(g.take());
    }
    g
}

/// Start the exporter.
///
/// * Both `addr` and `textfile` `None`: records the info labels, starts
///   nothing, returns `Ok(None)`.
/// * Already running (in this process): no-op, returns the running status.
/// * Otherwise binds, writes the textfile once, spawns the thread and returns
///   what runs. On `Err` nothing runs; the caller logs one warning and goes on.
///
/// The info labels of the first call in the process stick.
pub fn start(cfg: ExporterConfig) -> Result<Option<ExporterStatus>, MetricsError> {
    let mut slot = slot();
    if let Some(r) = slot.as_ref() {
        return Ok(Some(r.status.clone()));
    }
    set_info(cfg.info);
    if cfg.addr.is_none() && cfg.textfile.is_none() {
        return Ok(None);
    }

    let listener = match cfg.addr {
        None => None,
        Some(addr) => {
            let bind_err = |source| MetricsError::Bind { addr, source };
            let l = TcpListener::bind(addr).map_err(bind_err)?;
            l.set_nonblocking(true).map_err(bind_err)?;
            let bound = l.local_addr().map_err(bind_err)?;
            Some((l, bound))
        }
    };
    if let Some(path) = &cfg.textfile {
        write_textfile(path).map_err(|source| MetricsError::Textfile {
            path: path.clone(),
            source,
        })?;
    }

    register_atfork();
    let status = ExporterStatus {
        addr: listener.as_ref().map(|(_, a)| *a),
        textfile: cfg.textfile.clone(),
    };
    let listener = listener.map(|(l, _)| l);
    let fd = listener.as_ref().map_or(-1, |l| l.as_raw_fd());
    LISTENER_FD.store(fd, Ordering::SeqCst);
    let stop = Arc::new(AtomicBool::new(false));
    let builder = thread::Builder::new()
        .name("airamp-metrics".into())
        .stack_size(256 * 1024);
    let thread = spawn_running(builder, {
        let stop = stop.clone();
        let textfile = cfg.textfile;
        move || run(listener, textfile, &stop)
    })
    .map_err(|e| {
        let _ = LISTENER_FD.compare_exchange(fd, -1, Ordering::SeqCst, Ordering::SeqCst);
        MetricsError::Spawn(e)
    })?;
    *slot = Some(Running {
        stop,
        thread,
        status: status.clone(),
        pid: std::process::id(),
    });
    Ok(Some(status))
}

/// Stop the exporter thread and join it (within about one poll interval,
/// plus a final textfile write). No-op when nothing runs; `start` works again
/// afterwards.
pub fn shutdown() {
    let mut slot = slot();
    if let Some(r) = slot.take() {
        r.stop.store(true, Ordering::SeqCst);
        let _ = r.thread.join();
    }
}

/// The thread's body: serve and rewrite the textfile until `stop`.
fn run(listener: Option<TcpListener>, textfile: Option<PathBuf>, stop: &AtomicBool) {
    let mut server = listener.map(|l| Server::new(l, Limits::DEFAULT));
    let mut next_write = Instant::now() + TEXTFILE_PERIOD;
    while !stop.load(Ordering::SeqCst) {
        let mut wake = Instant::now() + POLL;
        if textfile.is_some() {
            wake = wake.min(next_write);
        }
        match &mut server {
            Some(server) => server.poll_once(wake),
            None => thread::sleep(wake.saturating_duration_since(Instant::now())),
        }
        if let Some(path) = &textfile {
            if Instant::now() >= next_write {
                // Failures after the first (reported by start) are retried
                // next period; there is nobody to report them to.
                let _ = write_textfile(path);
                next_write = Instant::now() + TEXTFILE_PERIOD;
            }
        }
    }
    drop(server);
    if let Some(path) = &textfile {
        let _ = write_textfile(path);
    }
}

/// How many clients the HTTP server holds, and for how long.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// Most client connections held at once; a newcomer beyond it evicts
    /// one (see [`Client::eviction_key`]). With [`MAX_REQUEST`] this bounds
    /// the server's memory: per client an 8 KiB head or one rendered page.
    pub max_clients: usize,
    /// A client must have sent its whole request head this long after
    /// accept...
    pub head_deadline: Duration,
    /// ...and must have read the whole reply this long after accept.
    pub exchange_deadline: Duration,
}

impl Limits {
    pub(super) const DEFAULT: Limits = Limits {
        max_clients: 32,
        head_deadline: Duration::from_secs(1),
        exchange_deadline: Duration::from_secs(2),
    };
}

/// The HTTP side: a non-blocking listener and up to `max_clients`
/// non-blocking client connections, all driven by one `poll(2)`.
pub(super) struct Server {
    listener: TcpListener,
    limits: Limits,
    clients: Vec<Client>,
    /// One entry per client, in `clients` order, then the listener's.
    fds: Vec<PollFd>,
    /// Shared read buffer; what a client sends is copied out of it into
    /// that client's bounded head buffer, or discarded.
    scratch: Box<[u8]>,
    /// Admission counter; orders clients by age.
    next_seq: u64,
    /// Set when `accept` failed for lack of resources (EMFILE, ENOBUFS):
    /// the listener stays readable, so it is left out of `poll` until then
    /// instead of waking the thread in a loop.
    accept_paused_until: Option<Instant>,
}

impl Server {
    pub(super) fn new(listener: TcpListener, limits: Limits) -> Server {
        // Without it, a scraper can be accepted between its connect and its
        // request, and connections accepted right behind it can evict it
        // before the request is read (seen in about 1 run in 3 of the
        // 64-slow-client plugin test). With it the request is normally there
        // at accept and answered before anyone is evicted, and connections
        // that never send wait in the kernel, not in a slot, for about a
        // second. Best effort: without the option the server still works.
        let _ = os::defer_accept(&listener, 1);
        Server {
            listener,
            limits,
            clients: Vec::with_capacity(limits.max_clients),
            fds: Vec::with_capacity(limits.max_clients + 1),
            scratch: vec![0; SCRATCH].into_boxed_slice(),
            next_seq: 0,
            accept_paused_until: None,
        }
    }

    /// One round: wait for I/O until `wake` (or the nearest client
    /// deadline), move every ready client on, drop clients past their
    /// deadline, then accept newcomers.
    pub(super) fn poll_once(&mut self, wake: Instant) {
        let now = Instant::now();
        let wake = self
            .clients
            .iter()
            .map(Client::deadline)
            .fold(wake, Instant::min);
        let listening = self.accept_paused_until.is_none_or(|until| now >= until);
        if listening {
            self.accept_paused_until = None;
        }
        self.fds.clear();
        self.fds.extend(
            self.clients
                .iter()
                .map(|c| poll_fd(c.stream.as_raw_fd(), c.events())),
        );
        if listening {
            self.fds.push(poll_fd(self.listener.as_raw_fd(), POLLIN));
        }
        if let Err(e) = os::poll(&mut self.fds, wake.saturating_duration_since(now)) {
            if e.kind() != io::ErrorKind::Interrupted {
                // ENOMEM, the only error possible here: wait instead of spinning.
                thread::sleep(wake.saturating_duration_since(Instant::now()));
            }
            return;
        }
        // Backwards, so that swap_remove only moves clients already seen and
        // `fds[i]` still belongs to `clients[i]`.
        for i in (0..self.clients.len()).rev() {
            if self.fds[i].revents != 0
                && self.clients[i].advance(&mut self.scratch) == Progress::Done
            {
                self.clients.swap_remove(i);
            }
        }
        let now = Instant::now();
        self.clients.retain(|c| now < c.deadline());
        if listening && self.fds.last().is_some_and(|l| l.revents != 0) {
            self.accept_batch(now);
        }
    }

    fn accept_batch(&mut self, now: Instant) {
        for _ in 0..ACCEPT_BATCH {
            match self.listener.accept() {
                Ok((stream, _)) => self.admit(stream, now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => {
                    self.accept_paused_until = Some(now + POLL);
                    return;
                }
            }
        }
    }

    /// Serve a new connection as far as it goes at once (a scraper has
    /// usually sent its whole request by the time it is accepted, so it is
    /// answered before anything can evict it), then keep it if unfinished.
    /// When full, the client first in [`Client::eviction_key`] order goes.
    fn admit(&mut self, stream: TcpStream, now: Instant) {
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        let _ = stream.set_nodelay(true);
        let mut client = Client {
            stream,
            seq: self.next_seq,
            head_deadline: now + self.limits.head_deadline,
            exchange_deadline: now + self.limits.exchange_deadline,
            phase: Phase::Head(Vec::new()),
        };
        self.next_seq += 1;
        if client.advance(&mut self.scratch) == Progress::Done {
            return;
        }
        if self.clients.len() >= self.limits.max_clients {
            let victim = self
                .clients
                .iter()
                .enumerate()
                .min_by_key(|(_, c)| c.eviction_key())
                .map(|(i, _)| i);
            if let Some(i) = victim {
                self.clients.swap_remove(i);
            }
        }
        self.clients.push(client);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Forget the fd before it is closed (right after this), so a
        // concurrent fork's child handler never closes a reused fd number.
        let fd = self.listener.as_raw_fd();
        let _ = LISTENER_FD.compare_exchange(fd, -1, Ordering::SeqCst, Ordering::SeqCst);
    }
}

/// One client connection and how far its single exchange has got.
struct Client {
    stream: TcpStream,
    /// Admission order: lower is older.
    seq: u64,
    head_deadline: Instant,
    exchange_deadline: Instant,
    phase: Phase,
}

enum Phase {
    /// Reading the request line and headers (at most [`MAX_REQUEST`] bytes).
    Head(Vec<u8>),
    /// Writing the reply, rendered once when the head was complete.
    Reply { bytes: Vec<u8>, sent: usize },
    /// Reply written and our side shut: reading and discarding until the
    /// client closes. Closing while its unread bytes (an oversized head, a
    /// body) sit in our receive queue would send a reset, which can destroy
    /// the reply before the client reads it.
    Linger,
}

#[derive(Debug, PartialEq, Eq)]
enum Progress {
    /// Waiting for the socket; poll for [`Client::events`].
    Open,
    /// Finished or broken: drop the client.
    Done,
}

impl Client {
    /// Past this the client is dropped.
    fn deadline(&self) -> Instant {
        match self.phase {
            Phase::Head(_) => self.head_deadline,
            Phase::Reply { .. } | Phase::Linger => self.exchange_deadline,
        }
    }

    fn events(&self) -> i16 {
        match self.phase {
            Phase::Reply { .. } => POLLOUT,
            Phase::Head(_) | Phase::Linger => POLLIN,
        }
    }

    /// Who is dropped first when a new client arrives and all slots are
    /// taken (lowest first): clients already answered, then clients still
    /// sending their request, then clients reading their reply; the oldest
    /// first within each.
    fn eviction_key(&self) -> (u8, u64) {
        let rank = match self.phase {
            Phase::Linger => 0,
            Phase::Head(_) => 1,
            Phase::Reply { .. } => 2,
        };
        (rank, self.seq)
    }

    /// Everything the socket allows without blocking: reads (bounded by
    /// [`MAX_REQUEST`]), renders the reply once the head is complete, writes
    /// it. Lingering reads at most one `scratch` per call, so a client that
    /// keeps sending cannot keep the thread from the others.
    fn advance(&mut self, scratch: &mut [u8]) -> Progress {
        loop {
            match &mut self.phase {
                Phase::Head(head) => {
                    let room = MAX_REQUEST - head.len();
                    if room == 0 {
                        self.phase = Phase::Reply {
                            bytes: too_large(),
                            sent: 0,
                        };
                        continue;
                    }
                    let take = room.min(scratch.len());
                    let n = match self.stream.read(&mut scratch[..take]) {
                        Ok(0) => return Progress::Done,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Progress::Open,
                        Err(_) => return Progress::Done,
                    };
                    // A terminator may straddle the old and the new bytes.
                    let from = head.len().saturating_sub(3);
                    head.extend_from_slice(&scratch[..n]);
                    if let Some(end) = head_end(&head[from..]) {
                        self.phase = Phase::Reply {
                            bytes: respond(&head[..from + end]),
                            sent: 0,
                        };
                    }
                }
                Phase::Reply { bytes, sent } => {
                    if *sent == bytes.len() {
                        let _ = self.stream.shutdown(Shutdown::Write);
                        self.phase = Phase::Linger;
                        continue;
                    }
                    match self.stream.write(&bytes[*sent..]) {
                        Ok(0) => return Progress::Done,
                        Ok(n) => *sent += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Progress::Open,
                        Err(_) => return Progress::Done,
                    }
                }
                Phase::Linger => {
                    return match self.stream.read(scratch) {
                        Ok(0) => Progress::Done,
                        Ok(_) => Progress::Open,
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                            ) =>
                        {
                            Progress::Open
                        }
                        Err(_) => Progress::Done,
                    }
                }
            }
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Ends the connection for the peer even where a fork()ed child holds
        // a copy of the fd, which would keep a plain close(2) from doing so.
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// Where the request head ends: the first blank line (`\r\n\r\n`, or a bare
/// `\n\n` from lenient clients).
fn head_end(bytes: &[u8]) -> Option<usize> {
    let find = |needle: &[u8]| bytes.windows(needle.len()).position(|w| w == needle);
    match (find(b"\r\n\r\n"), find(b"\n\n")) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn too_large() -> Vec<u8> {
    response(
        "431 Request Header Fields Too Large",
        "text/plain",
        b"request too large\n",
        true,
        "",
    )
}

/// Build the response to a request head (request line + headers).
pub(crate) fn respond(head: &[u8]) -> Vec<u8> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return response("400 Bad Request", "text/plain", b"bad request\n", true, "");
    };
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => {
            return response(
                "405 Method Not Allowed",
                "text/plain",
                b"method not allowed\n",
                true,
                "Allow: GET, HEAD\r\n",
            )
        }
    };
    let path = target.split('?').next().unwrap_or_default();
    match path {
        "/metrics" | "/" => response("200 OK", CONTENT_TYPE, render().as_bytes(), !head_only, ""),
        _ => response(
            "404 Not Found",
            "text/plain",
            b"not found; try /metrics\n",
            !head_only,
            "",
        ),
    }
}

fn response(status: &str, ctype: &str, body: &[u8], with_body: bool, extra: &str) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    if with_body {
        r.extend_from_slice(body);
    }
    r
}

/// Write `render()` to `path` atomically: a temp file in the same directory
/// (hidden, not ending in `.prom`, so the textfile collector ignores it),
/// then `rename(2)` over the target. Readers see the old or the new file,
/// never a partial one. No fsync: atomic visibility does not need it, and a
/// crash only loses a snapshot.
pub(crate) fn write_textfile(path: &Path) -> io::Result<()> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "textfile path has no file name",
        )
    })?;
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let body = render();
    let res = fs::write(&tmp, body.as_bytes()).and_then(|()| fs::rename(&tmp, path));
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Runs in the child after `fork()`: the exporter thread does not exist
/// there, so close the inherited listening socket (otherwise a long-lived
/// child keeps the port in LISTEN with nobody accepting once the parent
/// exits). The stale `Running` is dropped lazily by `slot()` (pid check).
unsafe extern "C" fn atfork_child() {
    let fd = LISTENER_FD.swap(-1, Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: `fd` is the listening socket owned by the exporter thread,
        // which does not exist in the child, so nothing else will use or
        // close it. close(2) is async-signal-safe, as a fork child handler
        // requires.
        unsafe {
            libc::close(fd);
        }
    }
}

fn register_atfork() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers a plain `extern "C"` function with no arguments.
        // The library is linked with `-z nodelete`, so the handler's code
        // stays mapped even after NCCL dlclose()s us. The handler only
        // touches a static atomic and calls close(2).
        unsafe {
            libc::pthread_atfork(None, None, Some(atfork_child));
        }
    });
}
