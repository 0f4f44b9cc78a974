//! Socket setup shared by both ends of a connection.

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

use super::TcpSettings;

pub fn new_stream(addr: &SocketAddr) -> std::io::Result<Socket> {
    // socket2 opens sockets with SOCK_CLOEXEC, so an exec'd child keeps none.
    Socket::new(
        Domain::for_address(*addr),
        Type::STREAM,
        Some(Protocol::TCP),
    )
}

/// Options of a data stream: no Nagle delay for small messages.
///
/// No TCP keepalive: the heartbeats (`transport::liveness`) find a dead
/// peer in both directions, idle or not. And deliberately no
/// TCP_USER_TIMEOUT: since Linux 5.11 it also aborts a connection whose
/// receiver keeps a zero window, i.e. a healthy rank that is busy
/// (checkpointing, a long forward pass) and not posting receives
/// (docs/transport.md has the measurement).
pub fn tune(sock: &Socket, s: &TcpSettings) -> std::io::Result<()> {
    sock.set_tcp_nodelay(true)?;
    if s.socket_buffer > 0 {
        sock.set_send_buffer_size(s.socket_buffer)?;
        sock.set_recv_buffer_size(s.socket_buffer)?;
    }
    Ok(())
}
