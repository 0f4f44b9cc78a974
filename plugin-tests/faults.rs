//! Faults as a cluster meets them, on a real link: two network namespaces
//! joined by two veth pairs, three processes with traffic both ways on
//! every connection (small messages the proxy thread moves inline, large
//! ones the stream threads move), then one fault.
//!
//! ```text
//!   namespace a                namespace b
//!   U (survivor) --fx0 10.77.0.0/24-- V (victim)
//!                --fx1 10.77.1.0/24-- W (bystander)
//! ```
//!
//! Each scenario checks, for every side that can still speak: the error
//! code, the error text and the time from the fault to the error, against
//! the peer timeout the processes run with ([`TIMEOUT`]); and that U's
//! traffic with W never stops. Every wait is bounded; the namespaces and
//! the processes go away even when a check fails. Needs root (CI runs as
//! root); skipped with a note otherwise.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use airamp::abi::client::{Comm, Net, NetVersion, Request, REMOTE_ERROR};
use airamp::transport::wire::ListenHandle;

use crate::scenarios::ensure;
use crate::support::*;

/// The peer timeout every process runs with (`AIRAMP_PEER_TIMEOUT_MS`).
const TIMEOUT: Duration = Duration::from_millis(1500);
/// Added to every upper bound: scheduling on a loaded 2-core CI box.
const SLACK: Duration = Duration::from_millis(1500);
/// Sizes each connection cycles through: two below `inline_bytes` (the
/// proxy thread's path), one above (the stream threads').
const SIZES: [usize; 3] = [8, 4096, 300_000];
const WINDOW: usize = 4;
/// Longest any single wait of the harness may take.
const WAIT_LIMIT: Duration = Duration::from_secs(20);

/// Two namespaces and two veth pairs; removed on drop, whatever happened.
struct Topology {
    a: String,
    b: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    ensure(out.status.success(), || {
        format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}

impl Topology {
    fn new() -> Result<Self, String> {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let tag = format!(
            "ampf{}x{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        );
        let t = Topology {
            a: format!("{tag}a"),
            b: format!("{tag}b"),
        };
        ip(&["netns", "add", &t.a])?;
        ip(&["netns", "add", &t.b])?;
        for (i, dev) in ["fx0", "fx1"].into_iter().enumerate() {
            ip(&[
                "-n", &t.a, "link", "add", dev, "type", "veth", "peer", "name", dev, "netns", &t.b,
            ])?;
            for (ns, host) in [(&t.a, 1), (&t.b, 2)] {
                ip(&[
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("10.77.{i}.{host}/24"),
                    "dev",
                    dev,
                ])?;
                ip(&["-n", ns, "link", "set", dev, "up"])?;
            }
        }
        t.wait_carrier()?;
        Ok(t)
    }

    /// The kernel reports carrier on a new veth a little later (linkwatch);
    /// the plugin only uses interfaces that are up and running.
    fn wait_carrier(&self) -> TestResult {
        let deadline = Instant::now() + Duration::from_secs(10);
        for ns in [&self.a, &self.b] {
            for dev in ["fx0", "fx1"] {
                loop {
                    let out = Command::new("ip")
                        .args(["-n", ns, "-o", "link", "show", dev])
                        .output()
                        .map_err(|e| e.to_string())?;
                    if String::from_utf8_lossy(&out.stdout).contains("LOWER_UP") {
                        break;
                    }
                    ensure(Instant::now() < deadline, || {
                        format!("{dev} in {ns} has no carrier")
                    })?;
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        Ok(())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// One line a node printed, when the parent read it.
struct Line {
    node: &'static str,
    text: String,
    at: Instant,
}

struct Node {
    name: &'static str,
    child: Child,
    input: ChildStdin,
}

impl Node {
    fn send(&mut self, line: &str) {
        // A dead node cannot read; the scenario notices through its events.
        let _ = writeln!(self.input, "{line}").and_then(|()| self.input.flush());
    }

    fn signal(&self, sig: i32) -> Result<(), String> {
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        ensure(rc == 0, || {
            format!(
                "kill {} {sig}: {}",
                self.name,
                std::io::Error::last_os_error()
            )
        })
    }
}

/// U, V and W running, connected, with traffic flowing.
struct Cluster {
    nodes: Vec<Node>,
    lines: Receiver<Line>,
    /// Lines read but not yet consumed by an expectation.
    backlog: VecDeque<Line>,
    topology: Topology,
}

/// A connection error a node reported.
#[derive(Debug)]
struct Failure {
    node: &'static str,
    peer: String,
    dir: String,
    code: u32,
    text: String,
    after: Duration,
}

impl Cluster {
    fn start() -> Result<Self, String> {
        let topology = Topology::new()?;
        let (tx, lines) = mpsc::channel();
        let specs: [(&'static str, &String, &[&str]); 3] = [
            ("U", &topology.a, &["V:fx0", "W:fx1"]),
            ("V", &topology.b, &["U:fx0"]),
            ("W", &topology.b, &["U:fx1"]),
        ];
        let nodes = specs
            .iter()
            .map(|(name, ns, links)| spawn_node(name, ns, links, tx.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut c = Cluster {
            nodes,
            lines,
            backlog: VecDeque::new(),
            topology,
        };
        // Each node listens once per link and prints "handle PEER HEX";
        // every node gets the handles its peers made for it.
        let mut handles = Vec::new();
        let setup = |l: &Line| l.text.starts_with("handle ") || l.text == "exited";
        for _ in 0..4 {
            let l = c.next_matching(setup, WAIT_LIMIT)?;
            ensure(l.text != "exited", || {
                format!("node {} exited during setup", l.node)
            })?;
            let mut w = l.text.split_whitespace().skip(1);
            let (peer, hex) = (w.next().unwrap_or(""), w.next().unwrap_or(""));
            handles.push((l.node, peer.to_string(), hex.to_string()));
        }
        for (from, to, hex) in handles {
            c.node(&to)?.send(&format!("peer {from} {hex}"));
        }
        for _ in 0..3 {
            let l = c.next_matching(|l| l.text == "ready" || l.text == "exited", WAIT_LIMIT)?;
            ensure(l.text != "exited", || {
                format!("node {} exited during setup", l.node)
            })?;
        }
        Ok(c)
    }

    fn node(&mut self, name: &str) -> Result<&mut Node, String> {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .ok_or_else(|| format!("no node {name}"))
    }

    /// The next line (from the backlog first) that `want` accepts; other
    /// lines stay in the backlog, except that a payload mismatch fails at
    /// once. Errs when none comes within `limit`.
    fn next_matching(
        &mut self,
        want: impl Fn(&Line) -> bool,
        limit: Duration,
    ) -> Result<Line, String> {
        if let Some(i) = self.backlog.iter().position(&want) {
            return Ok(self.backlog.remove(i).expect("index is valid"));
        }
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.text.starts_with("bad ") => {
                    return Err(format!("{}: {}", l.node, l.text));
                }
                Ok(l) if want(&l) => return Ok(l),
                Ok(l) => self.backlog.push_back(l),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "nothing expected within {limit:?}; unconsumed: {:?}",
                        self.backlog
                            .iter()
                            .map(|l| format!("{}: {}", l.node, l.text))
                            .collect::<Vec<_>>()
                    ))
                }
                Err(RecvTimeoutError::Disconnected) => return Err("every node has exited".into()),
            }
        }
    }

    /// Waits for exactly these (node, peer, direction) connection errors,
    /// each within `limit` of `since`; any other error fails the check.
    fn expect_failures(
        &mut self,
        expected: &[(&str, &str, &str)],
        since: Instant,
        limit: Duration,
    ) -> Result<Vec<Failure>, String> {
        let mut got: Vec<Failure> = Vec::new();
        while got.len() < expected.len() {
            let left = (since + limit).saturating_duration_since(Instant::now());
            let l = self
                .next_matching(|l| l.text.starts_with("error "), left)
                .map_err(|e| {
                    let seen: Vec<_> = got
                        .iter()
                        .map(|f| (f.node, f.peer.clone(), f.dir.clone()))
                        .collect();
                    format!("expected errors {expected:?} within {limit:?}, got {seen:?}: {e}")
                })?;
            let f = parse_failure(&l, since)?;
            let known = expected
                .iter()
                .any(|&(n, p, d)| n == f.node && p == f.peer && d == f.dir);
            let again = got
                .iter()
                .any(|g| g.node == f.node && g.peer == f.peer && g.dir == f.dir);
            ensure(known && !again, || format!("unexpected failure {f:?}"))?;
            got.push(f);
        }
        Ok(got)
    }

    /// Lets `d` pass; any connection error or payload mismatch meanwhile fails.
    fn no_failures_for(&mut self, d: Duration) -> Result<(), String> {
        match self.next_matching(|l| l.text.starts_with("error "), d) {
            Ok(l) => Err(format!("{}: {}", l.node, l.text)),
            Err(e) if e.starts_with("nothing expected") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Messages completed so far by `node` with `peer`: (sent, received),
    /// and the longest a send to `peer` waited (ms).
    fn counts(&mut self, node: &str, peer: &str) -> Result<(u64, u64, u64), String> {
        self.node(node)?.send(&format!("mark {peer}"));
        let key = format!("mark {peer} ");
        let owner = self.node(node)?.name;
        let l = self.next_matching(|l| l.node == owner && l.text.starts_with(&key), WAIT_LIMIT)?;
        let field = |k: &str| -> u64 {
            l.text
                .split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok((field("sent="), field("recv="), field("stall_ms=")))
    }

    /// U's traffic with W still flows: more messages both ways over `d`.
    fn bystander_flows(&mut self, d: Duration) -> Result<(), String> {
        let (s0, r0, _) = self.counts("U", "W")?;
        self.no_failures_for(d)?;
        let (s1, r1, _) = self.counts("U", "W")?;
        ensure(s1 > s0 + 5 && r1 > r0 + 5, || {
            format!("U-W traffic stalled: sent {s0}->{s1}, received {r0}->{r1}")
        })?;
        println!(
            "    U-W kept flowing: {} sent, {} received in {d:.1?}",
            s1 - s0,
            r1 - r0
        );
        Ok(())
    }

    /// Stops every node that is still alive and checks it exited cleanly.
    fn stop(mut self, dead: &[&str]) -> Result<(), String> {
        for n in &mut self.nodes {
            n.send("stop");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut result = Ok(());
        for n in &mut self.nodes {
            let status = loop {
                match n.child.try_wait() {
                    Ok(Some(s)) => break Some(s),
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => break None,
                }
            };
            let ok = match status {
                Some(s) => s.success() || dead.contains(&n.name),
                None => false,
            };
            if !ok && result.is_ok() {
                result = Err(format!("node {} ended with {status:?}", n.name));
            }
        }
        result
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            let _ = n.signal(libc::SIGCONT);
            let _ = n.child.kill();
            let _ = n.child.wait();
        }
    }
}

fn spawn_node(
    name: &'static str,
    ns: &str,
    links: &[&str],
    lines: Sender<Line>,
) -> Result<Node, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(exe)
        .args(["--child", "fault-node", name])
        .args(links)
        .env("AIRAMP_SOCKET_IFNAME", "fx")
        .env("AIRAMP_PEER_TIMEOUT_MS", TIMEOUT.as_millis().to_string())
        .env("AIRAMP_INLINE_BYTES", "64K")
        .env("AIRAMP_NSTREAMS", "2")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawn {name}: {e}"))?;
    let out = BufReader::new(child.stdout.take().expect("piped"));
    std::thread::spawn(move || {
        for text in out.lines().map_while(Result::ok) {
            if lines
                .send(Line {
                    node: name,
                    text,
                    at: Instant::now(),
                })
                .is_err()
            {
                return;
            }
        }
        let _ = lines.send(Line {
            node: name,
            text: "exited".into(),
            at: Instant::now(),
        });
    });
    Ok(Node {
        name,
        input: child.stdin.take().expect("piped"),
        child,
    })
}

/// "error PEER DIR CODE | TEXT"
fn parse_failure(l: &Line, since: Instant) -> Result<Failure, String> {
    let (head, text) = l.text.split_once(" | ").unwrap_or((&l.text, ""));
    let w: Vec<&str> = head.split_whitespace().collect();
    ensure(w.len() == 4, || format!("bad error line {:?}", l.text))?;
    Ok(Failure {
        node: l.node,
        peer: w[1].to_string(),
        dir: w[2].to_string(),
        code: w[3]
            .parse()
            .map_err(|_| format!("bad code in {:?}", l.text))?,
        text: text.to_string(),
        after: l.at.saturating_duration_since(since),
    })
}

/// Checks code, text and timing of each failure and prints the table rows.
fn check_failures(
    got: &[Failure],
    fault: &str,
    texts: &[&str],
    within: (Duration, Duration),
) -> TestResult {
    for f in got {
        println!(
            "    {fault}: {} {} {}: code {} after {:.2?}: {}",
            f.node, f.dir, f.peer, f.code, f.after, f.text
        );
        ensure(f.code == REMOTE_ERROR.0, || {
            format!("{f:?}: expected ncclRemoteError")
        })?;
        ensure(texts.iter().any(|t| f.text.contains(t)), || {
            format!("{f:?}: expected the text to say one of {texts:?}")
        })?;
        ensure(f.after >= within.0 && f.after <= within.1, || {
            format!("{f:?}: expected within {:?}..={:?}", within.0, within.1)
        })?;
    }
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        println!("    skipped: needs root for network namespaces");
    }
    root
}

const BOTH_WAYS: [(&str, &str, &str); 4] = [
    ("U", "V", "send"),
    ("U", "V", "recv"),
    ("V", "U", "send"),
    ("V", "U", "recv"),
];

/// The window in which a heartbeat timeout fires after the peer vanished:
/// the last heartbeat came at most a quarter of the timeout before.
fn heartbeat_window() -> (Duration, Duration) {
    (TIMEOUT / 2, TIMEOUT + SLACK)
}

fn link_down(at: &str) -> TestResult {
    if !is_root() {
        return Ok(());
    }
    let mut c = Cluster::start()?;
    let ns = if at == "U" {
        c.topology.a.clone()
    } else {
        c.topology.b.clone()
    };
    ip(&["-n", &ns, "link", "set", "fx0", "down"])?;
    let since = Instant::now();
    let got = c.expect_failures(&BOTH_WAYS, since, TIMEOUT + SLACK)?;
    check_failures(
        &got,
        &format!("fx0 down at {at}"),
        &["no heartbeat"],
        heartbeat_window(),
    )?;
    c.bystander_flows(Duration::from_millis(500))?;
    c.stop(&[])
}

/// The survivor's end of the link goes down mid-transfer: both sides of
/// both connections fail by heartbeat; the other link carries on.
pub fn fault_link_down_at_survivor() -> TestResult {
    link_down("U")
}

/// The same with the far end's link down (the host that vanished).
pub fn fault_link_down_at_peer() -> TestResult {
    link_down("V")
}

/// SIGKILL: the kernel closes the sockets, the survivor knows at once.
pub fn fault_peer_killed() -> TestResult {
    if !is_root() {
        return Ok(());
    }
    let mut c = Cluster::start()?;
    c.node("V")?.signal(libc::SIGKILL)?;
    let since = Instant::now();
    let got = c.expect_failures(&BOTH_WAYS[..2], since, TIMEOUT + SLACK)?;
    check_failures(
        &got,
        "V killed",
        &["closed", "reset"],
        (Duration::ZERO, TIMEOUT + SLACK),
    )?;
    c.bystander_flows(Duration::from_millis(500))?;
    c.stop(&["V"])
}

/// SIGSTOP past the timeout: to its peers a stopped process is a dead one
/// (no heartbeats); once resumed, it learns at once that they gave up.
pub fn fault_peer_frozen_past_timeout() -> TestResult {
    if !is_root() {
        return Ok(());
    }
    let mut c = Cluster::start()?;
    c.node("V")?.signal(libc::SIGSTOP)?;
    let since = Instant::now();
    let got = c.expect_failures(&BOTH_WAYS[..2], since, TIMEOUT + SLACK)?;
    check_failures(&got, "V stopped", &["no heartbeat"], heartbeat_window())?;
    c.bystander_flows(Duration::from_millis(500))?;
    c.node("V")?.signal(libc::SIGCONT)?;
    let resumed = Instant::now();
    let got = c.expect_failures(&BOTH_WAYS[2..], resumed, SLACK)?;
    check_failures(
        &got,
        "V resumed",
        &["closed", "reset"],
        (Duration::ZERO, SLACK),
    )?;
    c.stop(&[])
}

/// SIGSTOP shorter than the heartbeat slack, then SIGCONT: nobody fails,
/// and the traffic resumes intact both ways.
pub fn fault_peer_frozen_briefly() -> TestResult {
    if !is_root() {
        return Ok(());
    }
    let mut c = Cluster::start()?;
    let (s0, r0, _) = c.counts("U", "V")?;
    c.node("V")?.signal(libc::SIGSTOP)?;
    c.no_failures_for(TIMEOUT / 3)?;
    c.node("V")?.signal(libc::SIGCONT)?;
    c.no_failures_for(TIMEOUT * 2)?;
    let (s1, r1, _) = c.counts("U", "V")?;
    ensure(s1 > s0 + 5 && r1 > r0 + 5, || {
        format!("U-V traffic did not resume: sent {s0}->{s1}, received {r0}->{r1}")
    })?;
    println!(
        "    V stopped for {:.1?}: no error; U-V carried on ({} sent, {} received, every payload checked)",
        TIMEOUT / 3,
        s1 - s0,
        r1 - r0
    );
    c.stop(&[])
}

/// V posts no receive from U for three timeouts while U keeps sending: the
/// window closes (U's sends wait), and still nobody fails; once V posts
/// again every byte arrives intact.
pub fn fault_slow_receiver_is_never_failed() -> TestResult {
    if !is_root() {
        return Ok(());
    }
    let mut c = Cluster::start()?;
    c.node("V")?.send("pause U");
    c.no_failures_for(TIMEOUT * 3)?;
    let (_, _, stall) = c.counts("U", "V")?;
    ensure(stall >= TIMEOUT.as_millis() as u64, || {
        format!("U's sends waited only {stall} ms: the window never closed")
    })?;
    let (s0, _, _) = c.counts("U", "V")?;
    c.node("V")?.send("resume U");
    c.no_failures_for(TIMEOUT)?;
    let (s1, _, _) = c.counts("U", "V")?;
    ensure(s1 > s0 + 5, || {
        format!("U's sends did not resume: {s0}->{s1}")
    })?;
    println!(
        "    V posted nothing for {:.1?}: U's oldest send waited {stall} ms (zero window), no error; then {} more sent, every payload checked",
        TIMEOUT * 3,
        s1 - s0
    );
    c.bystander_flows(Duration::from_millis(200))?;
    c.stop(&[])
}

// ---------------------------------------------------------------------------
// The node: one process of the cluster
// ---------------------------------------------------------------------------

/// The bytes of message `i` from `from` to `to`: a fixed pattern per size,
/// stamped with `i` and the direction, so a lost, repeated, reordered or
/// misdirected message shows.
fn message(from: &str, to: &str, i: u64) -> Vec<u8> {
    static BASE: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    let base = BASE.get_or_init(|| SIZES.iter().map(|&n| pattern(n as u64, n)).collect());
    let mut b = base[(i % SIZES.len() as u64) as usize].clone();
    let stamp = i ^ (u64::from(from.as_bytes()[0]) << 56) ^ (u64::from(to.as_bytes()[0]) << 48);
    let n = b.len().min(8);
    b[..n].copy_from_slice(&stamp.to_le_bytes()[..n]);
    b
}

struct Link {
    peer: String,
    /// The peer's address, to find the plugin's log lines about it.
    peer_ip: String,
    send: Comm,
    recv: Comm,
    sends: VecDeque<(Vec<u8>, Request, Instant)>,
    recvs: VecDeque<(u64, Vec<u8>, Request)>,
    next_send: u64,
    next_recv: u64,
    sent: u64,
    received: u64,
    send_failed: bool,
    recv_failed: bool,
    paused: bool,
    stall: Duration,
    last_post: Instant,
    /// Messages whose size or bytes were not what the peer sent.
    bad: u64,
}

/// The plugin's own words about the failed connection: its transport line
/// for this direction if it logged one, else the last failed call.
fn failure_text(peer_ip: &str, dir: &str) -> String {
    let log = captured_log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(peer_ip)).collect();
    let own = if dir == "send" {
        "send connection to"
    } else {
        "receive connection from"
    };
    lines
        .iter()
        .find(|l| l.contains(own))
        .or(lines.last())
        .map_or("(nothing logged)".to_string(), |l| l.to_string())
}

impl Link {
    /// Moves this link's traffic along; returns whether anything happened.
    fn step(&mut self, net: &Net, me: &str) -> bool {
        let mut busy = false;
        if !self.send_failed {
            if let Some((_, r, posted)) = self.sends.front() {
                match net.test(*r, 1) {
                    Ok(Some(_)) => {
                        self.stall = self.stall.max(posted.elapsed());
                        self.sends.pop_front();
                        self.sent += 1;
                        busy = true;
                    }
                    Ok(None) => self.stall = self.stall.max(posted.elapsed()),
                    Err(c) => {
                        self.send_failed = true;
                        let text = failure_text(&self.peer_ip, "send");
                        tell_parent(&format!("error {} send {} | {text}", self.peer, c.0));
                    }
                }
            }
            if !self.send_failed
                && self.sends.len() < WINDOW
                && self.last_post.elapsed() >= Duration::from_millis(1)
            {
                let buf = message(me, &self.peer, self.next_send);
                // SAFETY: the buffer moves into `sends` with its request and
                // stays there until the request completes or the comm closes.
                match unsafe { net.isend(self.send, buf.as_ptr(), buf.len(), 7, null()) } {
                    Ok(Some(r)) => {
                        self.sends.push_back((buf, r, Instant::now()));
                        self.next_send += 1;
                        self.last_post = Instant::now();
                        busy = true;
                    }
                    Ok(None) => {}
                    Err(c) => {
                        self.send_failed = true;
                        let text = failure_text(&self.peer_ip, "send");
                        tell_parent(&format!("error {} send {} | {text}", self.peer, c.0));
                    }
                }
            }
        }
        if !self.recv_failed {
            if let Some((i, buf, r)) = self.recvs.front() {
                match net.test(*r, 1) {
                    Ok(Some(sizes)) => {
                        let want = message(&self.peer, me, *i);
                        if sizes[0] as usize != want.len() || buf[..want.len()] != want[..] {
                            self.bad += 1;
                            tell_parent(&format!(
                                "bad {} message {i}: {} bytes",
                                self.peer, sizes[0]
                            ));
                        }
                        self.recvs.pop_front();
                        self.received += 1;
                        busy = true;
                    }
                    Ok(None) => {}
                    Err(c) => {
                        self.recv_failed = true;
                        let text = failure_text(&self.peer_ip, "recv");
                        tell_parent(&format!("error {} recv {} | {text}", self.peer, c.0));
                    }
                }
            }
            if !self.recv_failed && !self.paused && self.recvs.len() < WINDOW {
                let mut buf = vec![0u8; SIZES.iter().copied().max().unwrap_or(0)];
                // SAFETY: as for the send buffer above.
                match unsafe {
                    net.irecv(
                        self.recv,
                        &[(buf.as_mut_ptr(), buf.len(), 7)],
                        &mut [null()],
                    )
                } {
                    Ok(Some(r)) => {
                        self.recvs.push_back((self.next_recv, buf, r));
                        self.next_recv += 1;
                        busy = true;
                    }
                    Ok(None) => {}
                    Err(c) => {
                        self.recv_failed = true;
                        let text = failure_text(&self.peer_ip, "recv");
                        tell_parent(&format!("error {} recv {} | {text}", self.peer, c.0));
                    }
                }
            }
        }
        busy
    }

    fn report(&self, what: &str) -> String {
        format!(
            "{what} {} sent={} recv={} stall_ms={}",
            self.peer,
            self.sent,
            self.received,
            self.stall.as_millis()
        )
    }
}

/// `fault-node ME PEER:DEV...`: listens once per link, swaps handles
/// through the parent, connects and accepts, then keeps traffic flowing on
/// every link until told to stop.
pub fn child_node(args: &[String]) -> TestResult {
    let me = args.first().ok_or("no node name")?.clone();
    let lib = open();
    let net = init(&lib, NetVersion::V12);
    let devices = net.devices().map_err(|e| format!("devices: {e:?}"))?;
    let dev_of = |name: &str| -> Result<i32, String> {
        (0..devices)
            .find(|&d| net.properties(d).is_ok_and(|p| p.name == name))
            .ok_or_else(|| format!("{me}: no device {name}"))
    };
    let mut plan = Vec::new();
    for spec in &args[1..] {
        let (peer, dev) = spec.split_once(':').ok_or("link spec is PEER:DEV")?;
        let dev = dev_of(dev)?;
        let (handle, listen) = net.listen(dev).map_err(|e| format!("listen: {e:?}"))?;
        tell_parent(&format!("handle {peer} {}", hex(&handle)));
        plan.push((peer.to_string(), dev, listen));
    }
    let (cmd_tx, commands) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if cmd_tx.send(line).is_err() {
                return;
            }
        }
        let _ = cmd_tx.send("stop".into());
    });
    let mut links = Vec::new();
    let mut pending: Vec<(String, String)> = Vec::new();
    while pending.len() < plan.len() {
        let line = commands
            .recv_timeout(WAIT_LIMIT)
            .map_err(|_| "no peer handle")?;
        if let Some(rest) = line.strip_prefix("peer ") {
            let (peer, hex) = rest.split_once(' ').ok_or("peer line is PEER HEX")?;
            pending.push((peer.to_string(), hex.to_string()));
        }
    }
    for (peer, dev, listen) in plan {
        let hex = &pending
            .iter()
            .find(|(p, _)| *p == peer)
            .ok_or("missing handle")?
            .1;
        let mut handle = unhex(hex);
        let peer_ip = ListenHandle::decode(&handle)
            .map_err(|e| e.to_string())?
            .addr
            .ip()
            .to_string();
        let send = connect(&net, dev, &mut handle)?;
        let recv = accept(&net, listen)?;
        links.push(Link {
            peer,
            peer_ip,
            send,
            recv,
            sends: VecDeque::new(),
            recvs: VecDeque::new(),
            next_send: 0,
            next_recv: 0,
            sent: 0,
            received: 0,
            send_failed: false,
            recv_failed: false,
            paused: false,
            stall: Duration::ZERO,
            last_post: Instant::now(),
            bad: 0,
        });
    }
    let mut ready = false;
    loop {
        let mut busy = false;
        for l in &mut links {
            busy |= l.step(&net, &me);
        }
        if !ready && links.iter().all(|l| l.sent >= 3 && l.received >= 3) {
            ready = true;
            tell_parent("ready");
        }
        while let Ok(cmd) = commands.try_recv() {
            let mut w = cmd.split_whitespace();
            match (w.next(), w.next()) {
                (Some("pause"), Some(p)) => links
                    .iter_mut()
                    .filter(|l| l.peer == p)
                    .for_each(|l| l.paused = true),
                (Some("resume"), Some(p)) => links
                    .iter_mut()
                    .filter(|l| l.peer == p)
                    .for_each(|l| l.paused = false),
                (Some("mark"), Some(p)) => links
                    .iter()
                    .filter(|l| l.peer == p)
                    .for_each(|l| tell_parent(&l.report("mark"))),
                (Some("stop"), _) => {
                    for l in &links {
                        tell_parent(&l.report("summary"));
                        let _ = net.close_send(l.send);
                        let _ = net.close_recv(l.recv);
                    }
                    tell_parent("bye");
                    let bad: u64 = links.iter().map(|l| l.bad).sum();
                    return ensure(bad == 0, || format!("{me}: {bad} messages arrived wrong"));
                }
                _ => {}
            }
        }
        if !busy {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}
