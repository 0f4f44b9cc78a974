//! Socket setup shared by both ends of a connection.

use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, TcpKeepalive, Type};

use super::TcpSettings;

pub fn new_stream(addr: &SocketAddr) -> std::io::Result<Socket> {
    // socket2 opens sockets with SOCK_CLOEXEC: a forked child inherits none.
    Socket::new(
        Domain::for_address(*addr),
        Type::STREAM,
        Some(Protocol::TCP),
    )
}

/// Options of a data stream: no Nagle delay for small messages; keepalive
/// and TCP_USER_TIMEOUT so a dead host turns into an error instead of a hang.
pub fn tune(sock: &Socket, s: &TcpSettings) -> std::io::Result<()> {
    sock.set_tcp_nodelay(true)?;
    let probe = (s.peer_timeout / 4).max(Duration::from_secs(1));
    sock.set_tcp_keepalive(
        &TcpKeepalive::new()
            .with_time(probe)
            .with_interval(probe)
            .with_retries(3),
    )?;
    sock.set_tcp_user_timeout(Some(s.peer_timeout))?;
    if s.socket_buffer > 0 {
        sock.set_send_buffer_size(s.socket_buffer)?;
        sock.set_recv_buffer_size(s.socket_buffer)?;
    }
    Ok(())
}
