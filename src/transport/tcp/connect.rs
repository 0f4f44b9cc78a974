//! The connecting side: non-blocking connects of every stream plus the
//! hello, driven by NCCL calling `connect` again until it returns a comm.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::Instant;

use socket2::{SockAddr, Socket};

use super::listen::random_u64;
use super::socket::{new_stream, tune};
use super::{disagreement, SendComm, TcpSettings};
use crate::error::{NetError, NetResult, PeerFailure};
use crate::metrics::{self, ConnError, TransportKind};
use crate::transport::liveness::Liveness;
use crate::transport::wire::{Hello, ListenHandle, HELLO_BYTES};

enum Stream {
    Connecting(Socket),
    Hello(Socket, usize),
    Ready(Socket),
}

pub struct Connecting {
    peer: SocketAddr,
    hello: Hello,
    /// The heartbeat interval the listener asked for in its handle.
    peer_heartbeat_ms: u32,
    /// The listener's agreement digest, from its handle.
    peer_agreement: u64,
    settings: TcpSettings,
    streams: Vec<Option<Stream>>,
    since: Instant,
}

fn open(peer: &SocketAddr, settings: &TcpSettings) -> io::Result<Socket> {
    let s = new_stream(peer)?;
    tune(&s, settings)?;
    s.set_nonblocking(true)?;
    match s.connect(&SockAddr::from(*peer)) {
        Ok(()) => Ok(s),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(s),
        Err(e) => Err(e),
    }
}

impl Connecting {
    pub fn start(handle: &ListenHandle, settings: &TcpSettings) -> NetResult<Self> {
        let peer = handle.addr;
        let fail = |e: io::Error| {
            metrics::transport(TransportKind::Tcp).connection_failed(ConnError::Refused);
            NetError::peer(peer, PeerFailure::ConnectFailed(e.to_string()))
        };
        let streams = (0..handle.streams)
            .map(|_| open(&peer, settings).map(|s| Some(Stream::Connecting(s))))
            .collect::<io::Result<Vec<_>>>()
            .map_err(fail)?;
        let mut settings = settings.clone();
        settings.streams = usize::from(handle.streams);
        Ok(Connecting {
            peer,
            hello: Hello {
                token: handle.token,
                connection: random_u64().map_err(|e| NetError::io("read /dev/urandom", e))?,
                stream: 0,
                streams: u16::from(handle.streams),
                heartbeat_ms: Liveness::interval_for(settings.peer_timeout.as_millis() as u64),
                agreement: settings.agreement,
            },
            peer_heartbeat_ms: handle.heartbeat_ms,
            peer_agreement: handle.agreement,
            settings,
            streams,
            since: Instant::now(),
        })
    }

    /// Advances every stream as far as it goes without blocking.
    pub fn progress(&mut self) -> NetResult<Option<SendComm>> {
        for index in 0..self.streams.len() {
            let stream = self.streams[index].take().expect("every slot is refilled");
            self.streams[index] = Some(self.advance(index, stream)?);
        }
        if !self
            .streams
            .iter()
            .all(|s| matches!(s, Some(Stream::Ready(_))))
        {
            if self.since.elapsed() > self.settings.handshake_timeout {
                return Err(self.failed(
                    ConnError::Timeout,
                    format!("not connected after {:?}", self.settings.handshake_timeout),
                ));
            }
            return Ok(None);
        }
        if self.peer_agreement != self.settings.agreement {
            // Our hellos are out, so the listener refuses us too: both ends
            // fail instead of one of them waiting for the other.
            metrics::transport(TransportKind::Tcp).connection_failed(ConnError::Handshake);
            return Err(disagreement(
                self.peer,
                self.peer_agreement,
                self.settings.agreement,
            ));
        }
        let mut socks = Vec::with_capacity(self.streams.len());
        for s in self.streams.drain(..) {
            let Some(Stream::Ready(s)) = s else {
                unreachable!("checked above")
            };
            s.set_nonblocking(false)
                .map_err(|e| NetError::io("fcntl blocking", e))?;
            socks.push(s);
        }
        SendComm::start(socks, self.peer, &self.settings, self.peer_heartbeat_ms).map(Some)
    }

    fn failed(&self, cause: ConnError, why: String) -> NetError {
        metrics::transport(TransportKind::Tcp).connection_failed(cause);
        NetError::peer(self.peer, PeerFailure::ConnectFailed(why))
    }

    fn advance(&self, index: usize, stream: Stream) -> NetResult<Stream> {
        let stream = match stream {
            Stream::Connecting(s) => match s.take_error() {
                Ok(Some(e)) | Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    // Refused before the peer's accept queue took us: retry
                    // with a fresh socket until the handshake deadline.
                    open(&self.peer, &self.settings)
                        .map(Stream::Connecting)
                        .map_err(|e| self.failed(ConnError::Refused, e.to_string()))?
                }
                Ok(Some(e)) | Err(e) => return Err(self.failed(ConnError::Refused, e.to_string())),
                Ok(None) if s.peer_addr().is_ok() => Stream::Hello(s, 0),
                Ok(None) => Stream::Connecting(s),
            },
            other => other,
        };
        let Stream::Hello(s, mut written) = stream else {
            return Ok(stream);
        };
        let bytes = Hello {
            stream: index as u16,
            ..self.hello
        }
        .encode();
        match (&s).write(&bytes[written..]) {
            Ok(n) => written += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(self.failed(ConnError::Handshake, e.to_string())),
        }
        Ok(if written == HELLO_BYTES {
            Stream::Ready(s)
        } else {
            Stream::Hello(s, written)
        })
    }
}
