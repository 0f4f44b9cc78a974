//! The exporter's HTTP server under awkward clients: eviction order when
//! full, deadlines, trickled and oversized requests, idle cost. Each test
//! runs its own [`Server`] (not the process-wide exporter), with limits
//! chosen so that no outcome depends on how fast a loaded box runs.
//! The 64-slow-client siege with scrape latencies, thread count and memory
//! is `metrics_scrapes_survive_slow_clients` in plugin-tests.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::exporter::{Limits, Server, POLL};

/// Only a guard against a hung test, never a timing assertion.
const GUARD: Duration = Duration::from_secs(30);
/// Deadlines no test reaches unless it means to.
const NEVER: Duration = Duration::from_secs(600);

fn limits(max_clients: usize, head_deadline: Duration) -> Limits {
    Limits {
        max_clients,
        head_deadline,
        exchange_deadline: NEVER,
    }
}

/// A [`Server`] on `127.0.0.1:0` in its own thread, stopped and joined on
/// drop.
struct TestServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Returns the CPU time the server thread used.
    thread: Option<JoinHandle<Duration>>,
}

impl TestServer {
    fn start(limits: Limits) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = thread::spawn({
            let stop = stop.clone();
            move || {
                let mut server = Server::new(listener, limits);
                while !stop.load(Ordering::SeqCst) {
                    server.poll_once(Instant::now() + POLL);
                }
                thread_cpu_time()
            }
        });
        TestServer {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the server and returns the CPU time its thread used.
    fn stop(mut self) -> Duration {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// User + system CPU time of the calling thread.
fn thread_cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    // Fields after the parenthesised name; utime and stime are fields 14, 15.
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// Connects and sends the start of a request, then nothing.
fn slow_client(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metr").unwrap();
    s
}

/// Waits (up to [`GUARD`]) for the server to close `s`.
fn closed_by_server(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(GUARD)).unwrap();
    match s.read(&mut [0; 64]) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
    }
}

/// True if the server has neither closed `s` nor sent anything on it.
fn still_open(s: &mut TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let open = matches!(s.read(&mut [0; 64]), Err(e) if e.kind() == ErrorKind::WouldBlock);
    s.set_nonblocking(false).unwrap();
    open
}

/// Sends `req` and reads the whole reply. The connection stays open as long
/// as the caller keeps the stream (the server lingers on it meanwhile).
fn exchange(addr: SocketAddr, req: &[u8]) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(GUARD)).unwrap();
    s.write_all(req).unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).unwrap();
    (s, String::from_utf8_lossy(&reply).into_owned())
}

#[test]
fn a_full_server_evicts_the_oldest_waiting_client() {
    let server = TestServer::start(limits(3, NEVER));
    let mut held: Vec<TcpStream> = (0..3).map(|_| slow_client(server.addr)).collect();
    // Accept order is connect order: the fourth client pushes out the first.
    held.push(slow_client(server.addr));
    assert!(closed_by_server(&mut held[0]));
    for (i, s) in held.iter_mut().enumerate().skip(1) {
        assert!(still_open(s), "client {i} was dropped too");
    }
    // A scrape while full is answered at once; once answered, it takes a
    // slot while it lingers, which drops the next-oldest waiting client.
    let (_scrape, reply) = exchange(server.addr, b"GET /metrics HTTP/1.1\r\n\r\n");
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    assert!(closed_by_server(&mut held[1]));
    for (i, s) in held.iter_mut().enumerate().skip(2) {
        assert!(still_open(s), "client {i} was dropped too");
    }
    // Stopping with clients held is prompt and closes them.
    drop(server);
    assert!(closed_by_server(&mut held[3]));
}

#[test]
fn answered_clients_are_evicted_before_waiting_ones() {
    let server = TestServer::start(limits(2, NEVER));
    let mut waiting = slow_client(server.addr);
    // Answered, but keeps its connection open: the server lingers on it.
    let (mut answered, reply) = exchange(server.addr, b"GET / HTTP/1.1\r\n\r\n");
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    // Full: the newcomer must push out the answered client, although the
    // waiting one is older. Once the server has closed its end, writes to
    // it fail (reset).
    let _newcomer = slow_client(server.addr);
    let start = Instant::now();
    while answered.write_all(b"x").is_ok() {
        assert!(start.elapsed() < GUARD, "the answered client was kept");
        thread::sleep(Duration::from_millis(10));
    }
    assert!(still_open(&mut waiting), "the waiting client was dropped");
}

#[test]
fn a_silent_client_is_dropped_at_its_deadline() {
    let server = TestServer::start(limits(4, Duration::from_millis(200)));
    let mut silent = TcpStream::connect(server.addr).unwrap();
    let mut slow = slow_client(server.addr);
    assert!(closed_by_server(&mut silent));
    assert!(closed_by_server(&mut slow));
    // Others are still served.
    let (_, reply) = exchange(server.addr, b"GET /metrics HTTP/1.1\r\n\r\n");
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
}

#[test]
fn a_request_trickled_byte_by_byte_is_answered() {
    let server = TestServer::start(limits(4, NEVER));
    for req in [
        &b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"GET / HTTP/1.0\n\n",
        b"HEAD /nope HTTP/1.1\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(server.addr).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(GUARD)).unwrap();
        for b in req {
            s.write_all(&[*b]).unwrap();
            thread::sleep(Duration::from_millis(1));
        }
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        let want = if req.starts_with(b"HEAD") {
            "HTTP/1.1 404 Not Found\r\n"
        } else {
            "HTTP/1.1 200 OK\r\n"
        };
        assert!(reply.starts_with(want), "{reply}");
    }
}

#[test]
fn an_oversized_head_gets_431_and_its_rest_is_drained() {
    let server = TestServer::start(limits(4, NEVER));
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(GUARD)).unwrap();
    let mut writer = s.try_clone().unwrap();
    // 16 MiB of header, more than socket buffers hold: the server answers
    // after 8 KiB and then reads and discards the rest, so the client can
    // send all of it and still read the reply (closing on unread bytes
    // would reset the connection and fail the client's write).
    let sent = thread::spawn(move || {
        let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        big.resize(16 << 20, b'a');
        let res = writer.write_all(&big);
        let _ = writer.shutdown(Shutdown::Write);
        res
    });
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(
        reply.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{reply}"
    );
    sent.join().unwrap().unwrap();
}

#[test]
fn held_clients_cost_no_cpu_while_silent() {
    let server = TestServer::start(limits(8, NEVER));
    let _held: Vec<TcpStream> = (0..8).map(|_| slow_client(server.addr)).collect();
    thread::sleep(Duration::from_millis(1500));
    // 20 bounded polls a second cost microseconds; a loop that spun on a
    // ready descriptor would burn hundreds of milliseconds here even on a
    // loaded box.
    let cpu = server.stop();
    assert!(
        cpu < Duration::from_millis(100),
        "server thread used {cpu:?}"
    );
}
