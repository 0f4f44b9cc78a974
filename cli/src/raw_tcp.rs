//! The reference of `bench latency`: round trips over plain TCP on
//! loopback, polled the way the bench polls the plugin (a non-blocking read,
//! a yield between tries), so the ratio shows what airamp adds to TCP.
//!
//! Three layouts: one connection per direction, as NCCL's send and receive
//! comms are (airamp's and Socket's alike); the same with each message
//! peeked and dropped from the socket only at the next read, as airamp
//! receives small messages, so the receive that delivers it sends no ACK;
//! and one connection both ways, where each reply carries the
//! acknowledgement of the request instead of a bare ACK of its own.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

/// How the two directions of the ping-pong travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// One connection each way (NCCL's send and receive comms).
    PerDirection,
    /// One connection each way, every message peeked and dropped at the
    /// next read.
    PerDirectionPeeked,
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
        Layout::PerDirection | Layout::PerDirectionPeeked => {
            ((there, back), connected_pair(&listener)?)
        }
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

/// Messages up to this size are peeked in the peeked layout (as airamp
/// does): a larger one might not fit in the socket's queue all at once.
const PEEK_BYTES: usize = 4096;

/// A receiving end: with `peek`, the last small message's bytes stay queued
/// until the next receive drops them.
struct Receiver {
    sock: TcpStream,
    peek: bool,
    owed: usize,
}

impl Receiver {
    fn recv_all(&mut self, buf: &mut [u8], deadline: Instant) -> io::Result<()> {
        let len = buf.len();
        let mut sink = std::mem::take(&mut self.owed);
        while sink > 0 {
            let mut scratch = [0u8; PEEK_BYTES];
            let n = scratch.len().min(sink);
            spin(n, deadline, |at| self.sock.read(&mut scratch[at..n]))?;
            sink -= n;
        }
        if !self.peek || len > PEEK_BYTES {
            return spin(len, deadline, |at| self.sock.read(&mut buf[at..]));
        }
        // A peek always starts at the front: wait until all of it is there.
        spin(len, deadline, |_| match self.sock.peek(buf)? {
            0 => Ok(0),
            n if n < len => Err(ErrorKind::WouldBlock.into()),
            n => Ok(n),
        })?;
        self.owed = len;
        Ok(())
    }
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
    let ((mut send, recv), (mut echo_send, echo_recv)) =
        ends(layout).map_err(|e| format!("raw TCP setup: {e}"))?;
    let peek = layout == Layout::PerDirectionPeeked;
    let receiver = |sock| Receiver {
        sock,
        peek,
        owed: 0,
    };
    let (mut recv, mut echo_recv) = (receiver(recv), receiver(echo_recv));
    let echo = thread::spawn(move || -> io::Result<()> {
        let mut buf = vec![0u8; size];
        for _ in 0..warmup + iters {
            echo_recv.recv_all(&mut buf, deadline)?;
            send_all(&mut echo_send, &buf, deadline)?;
        }
        Ok(())
    });
    let mut out = vec![42u8; size];
    let mut back = vec![0u8; size];
    let mut times = Vec::with_capacity(iters);
    let mut run = || -> io::Result<()> {
        for i in 0..warmup + iters {
            // Each request differs from the last, so a reply read twice
            // (or not at all) shows.
            if let Some(first) = out.first_mut() {
                *first = i as u8;
            }
            let start = Instant::now();
            send_all(&mut send, &out, deadline)?;
            recv.recv_all(&mut back, deadline)?;
            if i >= warmup {
                times.push(start.elapsed());
            }
            if back != out {
                return Err(io::Error::new(ErrorKind::InvalidData, "a reply differs"));
            }
        }
        Ok(())
    };
    let ours = run();
    // A failed side leaves the other waiting for its deadline at most.
    drop((send, recv.sock));
    let theirs = echo.join().map_err(|_| "raw TCP echo thread panicked")?;
    ours.and(theirs)
        .map_err(|e| format!("raw TCP ({layout:?}): {e}"))?;
    times.sort();
    Ok(times)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every layout delivers every reply intact and once (the echo returns
    /// the request's bytes, and each request differs from the last, so a
    /// lost, short or repeated message would time out or fail).
    #[test]
    fn every_layout_completes_its_round_trips() {
        for layout in [
            Layout::PerDirection,
            Layout::PerDirectionPeeked,
            Layout::Shared,
        ] {
            for size in [8, 300_000] {
                let times = round_trips(layout, size, 5, 50, Duration::from_secs(30))
                    .unwrap_or_else(|e| panic!("{layout:?} {size}: {e}"));
                assert_eq!(times.len(), 50);
                assert!(times.windows(2).all(|w| w[0] <= w[1]), "sorted");
            }
        }
    }
}
