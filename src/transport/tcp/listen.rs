//! The accepting side: a non-blocking listener that sorts incoming streams
//! into connections by their hello, and drops anything that cannot present
//! the listen token before a single byte of ours is exposed to it.

use std::io::{self, Read};
use std::net::SocketAddr;
use std::time::Instant;

use socket2::{SockAddr, Socket};

use super::socket::{new_stream, tune};
use super::{disagreement, RecvComm, TcpSettings};
use crate::error::{NetError, NetResult};
use crate::metrics::{self, ConnError, TransportKind};
use crate::transport::iface::NetDevice;
use crate::transport::liveness::Liveness;
use crate::transport::wire::{Hello, ListenHandle, Token, HELLO_BYTES};
use crate::warn;

/// Streams still owing us their hello, at most this many at once.
const MAX_PENDING: usize = 256;

struct Pending {
    sock: Socket,
    peer: SocketAddr,
    hello: [u8; HELLO_BYTES],
    got: usize,
    since: Instant,
}

struct Group {
    connection: u64,
    peer: SocketAddr,
    /// The most frequent heartbeat any of its hellos asked for.
    heartbeat_ms: u32,
    streams: Vec<Option<Socket>>,
    since: Instant,
}

pub struct Listener {
    sock: Socket,
    token: Token,
    streams: usize,
    settings: TcpSettings,
    pending: Vec<Pending>,
    groups: Vec<Group>,
    /// A peer with the right token whose airamp would decide otherwise:
    /// the next `accept` fails with this.
    refused: Option<NetError>,
}

fn random_token() -> io::Result<Token> {
    let mut t = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut t)?;
    Ok(t)
}

pub fn random_u64() -> io::Result<u64> {
    let t = random_token()?;
    Ok(u64::from_le_bytes(t[..8].try_into().expect("8 bytes")))
}

/// Compares tokens without leaking the position of the first difference.
fn token_eq(a: &Token, b: &Token) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Listener {
    pub fn bind(dev: &NetDevice, settings: &TcpSettings) -> NetResult<(Listener, ListenHandle)> {
        let addr = match dev.addr {
            std::net::IpAddr::V6(ip) => {
                SocketAddr::V6(std::net::SocketAddrV6::new(ip, 0, 0, dev.scope_id))
            }
            ip => SocketAddr::new(ip, 0),
        };
        let sock = new_stream(&addr).map_err(|e| NetError::io("socket", e))?;
        sock.set_reuse_address(true)
            .map_err(|e| NetError::io("setsockopt SO_REUSEADDR", e))?;
        sock.bind(&SockAddr::from(addr))
            .map_err(|e| NetError::io("bind", e))?;
        sock.listen(1024).map_err(|e| NetError::io("listen", e))?;
        sock.set_nonblocking(true)
            .map_err(|e| NetError::io("fcntl O_NONBLOCK", e))?;
        let bound = sock
            .local_addr()
            .map_err(|e| NetError::io("getsockname", e))?
            .as_socket()
            .ok_or(NetError::Unsupported("listen address family"))?;
        let token = random_token().map_err(|e| NetError::io("read /dev/urandom", e))?;
        let handle = ListenHandle {
            addr: bound,
            streams: settings.streams as u8,
            token,
            heartbeat_ms: Liveness::interval_for(settings.peer_timeout.as_millis() as u64),
            agreement: settings.agreement,
        };
        let listener = Listener {
            sock,
            token,
            streams: settings.streams,
            settings: settings.clone(),
            pending: Vec::new(),
            groups: Vec::new(),
            refused: None,
        };
        Ok((listener, handle))
    }

    /// Makes progress without blocking; returns the connection once all its
    /// streams have arrived and shown the token.
    pub fn accept(&mut self) -> NetResult<Option<RecvComm>> {
        self.accept_new()?;
        self.read_hellos();
        if let Some(e) = self.refused.take() {
            return Err(e);
        }
        self.expire();
        let Some(i) = self
            .groups
            .iter()
            .position(|g| g.streams.iter().all(Option::is_some))
        else {
            return Ok(None);
        };
        let group = self.groups.swap_remove(i);
        let mut socks = Vec::with_capacity(group.streams.len());
        for s in group.streams.into_iter().flatten() {
            s.set_nonblocking(false)
                .map_err(|e| NetError::io("fcntl blocking", e))?;
            tune(&s, &self.settings).map_err(|e| NetError::io("setsockopt", e))?;
            socks.push(s);
        }
        RecvComm::start(socks, group.peer, &self.settings, group.heartbeat_ms).map(Some)
    }

    fn accept_new(&mut self) -> NetResult<()> {
        loop {
            match self.sock.accept() {
                Ok((sock, peer)) => {
                    let peer = peer
                        .as_socket()
                        .unwrap_or_else(|| crate::transport::wire::v4([0; 4], 0));
                    if sock.set_nonblocking(true).is_err() {
                        continue;
                    }
                    if self.pending.len() >= MAX_PENDING {
                        let oldest = self.pending.remove(0);
                        self.reject(
                            oldest.peer,
                            ConnError::Handshake,
                            "too many pending connections",
                        );
                    }
                    self.pending.push(Pending {
                        sock,
                        peer,
                        hello: [0; HELLO_BYTES],
                        got: 0,
                        since: Instant::now(),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => return Err(NetError::io("accept", e)),
            }
        }
    }

    fn read_hellos(&mut self) {
        let mut i = 0;
        while i < self.pending.len() {
            let p = &mut self.pending[i];
            let mut reader = &p.sock;
            match reader.read(&mut p.hello[p.got..]) {
                Ok(0) => {
                    let p = self.pending.swap_remove(i);
                    self.reject(p.peer, ConnError::Handshake, "closed before its hello");
                    continue;
                }
                Ok(n) => p.got += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    let p = self.pending.swap_remove(i);
                    self.reject(p.peer, ConnError::Handshake, "failed before its hello");
                    continue;
                }
            }
            if self.pending[i].got < HELLO_BYTES {
                i += 1;
                continue;
            }
            let p = self.pending.swap_remove(i);
            self.admit(p);
        }
    }

    fn admit(&mut self, p: Pending) {
        let hello = match Hello::decode(&p.hello) {
            Ok(h) => h,
            Err(e) => return self.reject(p.peer, ConnError::Handshake, &format!("bad hello: {e}")),
        };
        if !token_eq(&hello.token, &self.token) {
            return self.reject(p.peer, ConnError::BadToken, "wrong token");
        }
        if hello.agreement != self.settings.agreement {
            // The right token: our job's peer, which would decide otherwise.
            // Fail this accept rather than let NCCL wait on a collective
            // the ranks run differently.
            metrics::transport(TransportKind::Tcp).connection_failed(ConnError::Handshake);
            self.refused = Some(disagreement(
                p.peer,
                hello.agreement,
                self.settings.agreement,
            ));
            return;
        }
        if usize::from(hello.streams) != self.streams {
            return self.reject(
                p.peer,
                ConnError::Handshake,
                &format!(
                    "{} streams announced, {} expected",
                    hello.streams, self.streams
                ),
            );
        }
        let gi = match self
            .groups
            .iter()
            .position(|g| g.connection == hello.connection)
        {
            Some(gi) => gi,
            None => {
                self.groups.push(Group {
                    connection: hello.connection,
                    peer: p.peer,
                    heartbeat_ms: hello.heartbeat_ms,
                    streams: (0..self.streams).map(|_| None).collect(),
                    since: p.since,
                });
                self.groups.len() - 1
            }
        };
        let group = &mut self.groups[gi];
        let slot = &mut group.streams[usize::from(hello.stream)];
        if slot.is_some() {
            return self.reject(p.peer, ConnError::Handshake, "duplicate stream index");
        }
        *slot = Some(p.sock);
        group.heartbeat_ms = group.heartbeat_ms.min(hello.heartbeat_ms);
    }

    fn expire(&mut self) {
        let limit = self.settings.handshake_timeout;
        let (late, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.since.elapsed() > limit);
        self.pending = keep;
        for p in late {
            self.reject(
                p.peer,
                ConnError::Timeout,
                "no hello within the handshake timeout",
            );
        }
        let (late, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.groups)
            .into_iter()
            .partition(|g| g.since.elapsed() > limit);
        self.groups = keep;
        for g in late {
            self.reject(
                g.peer,
                ConnError::Timeout,
                "not all streams arrived within the handshake timeout",
            );
        }
    }

    fn reject(&self, peer: SocketAddr, cause: ConnError, why: &str) {
        metrics::transport(TransportKind::Tcp).connection_failed(cause);
        warn!("dropped incoming connection from {peer}: {why}");
    }
}
