//! The reference of `bench latency`: round trips over plain TCP on
//! loopback, polled the way the bench polls the plugin (a non-blocking read,
//! a yield between tries), so the ratio shows what airamp adds to TCP.
//!
//! Two layouts: one connection per direction, as NCCL's send and receive
//! comms are (airamp's and Socket's alike), and one connection both ways,
//! where each reply carries the acknowledgement of the request instead of a
//! bare ACK of its own: the floor a shared connection could reach.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

/// How the two directions of the ping-pong travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// One connection each way (NCCL's send and receive comms).
    PerDirection,
    /// One connection carrying both the request and the reply.
    Shared,
}

/// The two ends' streams: `(send, receive)` of each.
type Ends = ((TcpStream, TcpStream), (TcpStream, TcpStream));

fn connected_pair(listener: &TcpListener) -> io::Result<(TcpStream, TcpStream)> {
    let dialed = TcpStream::connect(listener.local_addr()?)?;
    let (accepted, _) = listener.accept()?;
    Ok((dialed, accepted))
}

fn ends(layout: Layout) -> io::Result<Ends> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let (there, back) = connected_pair(&listener)?;
    let ((a_send, b_recv), (b_send, a_recv)) = match layout {
        Layout::Shared => ((there.try_clone()?, back.try_clone()?), (back, there)),
        Layout::PerDirection => ((there, back), connected_pair(&listener)?),
    };
    for s in [&a_send, &a_recv, &b_send, &b_recv] {
        s.set_nodelay(true)?;
        s.set_nonblocking(true)?;
    }
    Ok(((a_send, a_recv), (b_send, b_recv)))
}

/// Moves all of `buf` with non-blocking calls, yielding while the socket
/// is not ready; fails past `deadline`.
fn spin(
    buf_len: usize,
    deadline: Instant,
    mut step: impl FnMut(usize) -> io::Result<usize>,
) -> io::Result<()> {
    let mut done = 0;
    while done < buf_len {
        match step(done) {
            Ok(0) => return Err(io::Error::new(ErrorKind::UnexpectedEof, "peer closed")),
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return Err(io::Error::new(ErrorKind::TimedOut, "no progress"));
                }
                thread::yield_now();
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn send_all(s: &mut TcpStream, buf: &[u8], deadline: Instant) -> io::Result<()> {
    spin(buf.len(), deadline, |at| s.write(&buf[at..]))
}

fn recv_all(s: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> io::Result<()> {
    let len = buf.len();
    spin(len, deadline, |at| s.read(&mut buf[at..]))
}

/// Times `iters` round trips of `size`-byte messages after `warmup`
/// untimed ones; an echo thread answers each. Every wait ends at
/// `timeout`.
pub fn round_trips(
    layout: Layout,
    size: usize,
    warmup: usize,
    iters: usize,
    timeout: Duration,
) -> Result<Vec<Duration>, String> {
    let deadline = Instant::now() + timeout;
    let ((mut send, mut recv), (mut echo_send, mut echo_recv)) =
        ends(layout).map_err(|e| format!("raw TCP setup: {e}"))?;
    let echo = thread::spawn(move || -> io::Result<()> {
        let mut buf = vec![0u8; size];
        for _ in 0..warmup + iters {
            recv_all(&mut echo_recv, &mut buf, deadline)?;
            send_all(&mut echo_send, &buf, deadline)?;
        }
        Ok(())
    });
    let out = vec![42u8; size];
    let mut back = vec![0u8; size];
    let mut times = Vec::with_capacity(iters);
    let mut run = || -> io::Result<()> {
        for i in 0..warmup + iters {
            let start = Instant::now();
            send_all(&mut send, &out, deadline)?;
            recv_all(&mut recv, &mut back, deadline)?;
            if i >= warmup {
                times.push(start.elapsed());
            }
        }
        Ok(())
    };
    let ours = run();
    // A failed side leaves the other waiting for its deadline at most.
    drop((send, recv));
    let theirs = echo.join().map_err(|_| "raw TCP echo thread panicked")?;
    ours.and(theirs)
        .map_err(|e| format!("raw TCP ({layout:?}): {e}"))?;
    times.sort();
    Ok(times)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both layouts deliver every reply (the echo returns the request's
    /// bytes, so a lost or short message would time out or fail).
    #[test]
    fn both_layouts_complete_their_round_trips() {
        for layout in [Layout::PerDirection, Layout::Shared] {
            for size in [8, 300_000] {
                let times = round_trips(layout, size, 5, 50, Duration::from_secs(30))
                    .unwrap_or_else(|e| panic!("{layout:?} {size}: {e}"));
                assert_eq!(times.len(), 50);
                assert!(times.windows(2).all(|w| w[0] <= w[1]), "sorted");
            }
        }
    }
}
