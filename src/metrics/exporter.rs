//! The exporter thread: HTTP on a `std::net::TcpListener` and/or a textfile
//! for node_exporter, rendered from the lock-free registry.

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

/// Content type of text exposition format 0.0.4; accepted by Prometheus 2
/// and 3 (the latter needs an explicit version in the header).
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Accept-poll and socket-I/O granularity: bounds shutdown latency and the
/// idle wake-up rate (20/s, one failed `accept` each).
const POLL: Duration = Duration::from_millis(50);
/// A client gets this long in total to send its request and read the reply.
const CLIENT_DEADLINE: Duration = Duration::from_secs(2);
/// Request line + headers larger than this get a 431.
const MAX_REQUEST: usize = 8 * 1024;
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
    let thread = thread::Builder::new()
        .name("airamp-metrics".into())
        .stack_size(256 * 1024)
        .spawn({
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

fn run(listener: Option<TcpListener>, textfile: Option<PathBuf>, stop: &AtomicBool) {
    let mut last_write = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let mut served = false;
        if let Some(l) = &listener {
            // WouldBlock: nobody waiting. Other errors (EMFILE, ECONNABORTED):
            // nothing to do but retry after the sleep.
            if let Ok((s, _)) = l.accept() {
                serve(s, stop);
                served = true;
            }
        }
        if let Some(path) = &textfile {
            if last_write.elapsed() >= TEXTFILE_PERIOD {
                // Failures after the first (reported by start) are retried
                // next period; there is nobody to report them to.
                let _ = write_textfile(path);
                last_write = Instant::now();
            }
        }
        if !served {
            thread::sleep(POLL);
        }
    }
    if let Some(l) = listener {
        // Forget the fd before closing it, so a concurrent fork's child
        // handler never closes a reused fd number.
        let _ = LISTENER_FD.compare_exchange(l.as_raw_fd(), -1, Ordering::SeqCst, Ordering::SeqCst);
        drop(l);
    }
    if let Some(path) = &textfile {
        let _ = write_textfile(path);
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Serve one request and close. Socket I/O is sliced into `POLL`-long
/// timeouts so that a slow or silent client can hold the thread for at most
/// `CLIENT_DEADLINE`, and never delays `shutdown()` by more than a slice.
fn serve(mut s: TcpStream, stop: &AtomicBool) {
    let deadline = Instant::now() + CLIENT_DEADLINE;
    if s.set_nonblocking(false).is_err()
        || s.set_read_timeout(Some(POLL)).is_err()
        || s.set_write_timeout(Some(POLL)).is_err()
    {
        return;
    }
    let _ = s.set_nodelay(true);
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut len = 0;
    let head = loop {
        if let Some(p) = find(&buf[..len], b"\r\n\r\n").or_else(|| find(&buf[..len], b"\n\n")) {
            break Some(&buf[..p]);
        }
        if len == buf.len() {
            break None;
        }
        if stop.load(Ordering::SeqCst) || Instant::now() >= deadline {
            return;
        }
        match s.read(&mut buf[len..]) {
            Ok(0) => return,
            Ok(n) => len += n,
            Err(e) if is_transient(&e) => {}
            Err(_) => return,
        }
    };
    let resp = match head {
        Some(head) => respond(head),
        None => response(
            "431 Request Header Fields Too Large",
            "text/plain",
            b"request too large\n",
            true,
            "",
        ),
    };
    let mut off = 0;
    while off < resp.len() {
        if stop.load(Ordering::SeqCst) || Instant::now() >= deadline {
            return;
        }
        match s.write(&resp[off..]) {
            Ok(0) => return,
            Ok(n) => off += n,
            Err(e) if is_transient(&e) => {}
            Err(_) => return,
        }
    }
    let _ = s.shutdown(Shutdown::Write);
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
