//! Socket setup shared by both ends of a connection.

use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, TcpKeepalive, Type};

use super::TcpSettings;

pub fn new_stream(addr: &SocketAddr) -> std::io::Result<Socket> {
    // socket2 opens sockets with SOCK_CLOEXEC, so an exec'd child keeps none.
    Socket::new(
        Domain::for_address(*addr),
        Type::STREAM,
        Some(Protocol::TCP),
    )
}

/// Options of a data stream: no Nagle delay for small messages, and
/// keepalive so a host that died while the connection was idle turns into
/// an error instead of a hang.
///
/// Deliberately no TCP_USER_TIMEOUT: since Linux 5.11 it also aborts a
/// connection whose receiver keeps a zero window, i.e. a healthy rank that is
/// busy (checkpointing, a long forward pass) and not reading. Killing a
/// healthy job is worse than detecting a dead one late; the receiving side
/// still times out a peer that goes silent mid-message.
pub fn tune(sock: &Socket, s: &TcpSettings) -> std::io::Result<()> {
    sock.set_tcp_nodelay(true)?;
    let probe = (s.peer_timeout / 4).max(Duration::from_secs(1));
    sock.set_tcp_keepalive(
        &TcpKeepalive::new()
            .with_time(probe)
            .with_interval(probe)
            .with_retries(3),
    )?;
    if s.socket_buffer > 0 {
        sock.set_send_buffer_size(s.socket_buffer)?;
        sock.set_recv_buffer_size(s.socket_buffer)?;
    }
    Ok(())
}
