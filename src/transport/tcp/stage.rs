//! A receiving stream's read-ahead buffer, and small messages received
//! without the acknowledgement in their way.
//!
//! A read that empties a socket's queue makes the kernel acknowledge the
//! data there (`tcp_cleanup_rbuf`) and, on loopback, process that ACK on the
//! peer's socket, all inside the call: about 3 of a small message's 4 µs
//! `recv` on both test hosts. A reply on the same connection would have
//! carried the ACK for free, but NCCL's send and receive comms are separate
//! connections, so the reply never does. So the caller (NCCL's proxy)
//! *peeks* small messages: it copies them and leaves them queued, delivers
//! them, and drops them from the socket at the stream's next read
//! ([`Stage::settle`]), which is when the ACK goes out. Every read drops
//! the peeked bytes first, so nothing is read twice.

use std::io;

use socket2::Socket;

use crate::sys;

/// Bytes read ahead of the current frame on each stream: room for a small
/// message and the next header in one `recv`.
pub(super) const STAGE_BYTES: usize = 8192;

/// Messages up to this size (frame header included) are peeked by the
/// caller.
pub(super) const PEEK_BYTES: usize = 4096;

/// Bytes read from the socket and not consumed yet.
pub(super) struct Stage {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// How many bytes the last fill peeked: they are in `buf` (or consumed
    /// from it) and still at the front of the socket's queue.
    peeked: usize,
}

impl Stage {
    pub(super) fn new() -> Self {
        Stage {
            buf: vec![0; STAGE_BYTES].into_boxed_slice(),
            start: 0,
            end: 0,
            peeked: 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.end - self.start
    }

    pub(super) fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub(super) fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads what the socket has into the free space. Returns how many
    /// bytes came and whether they filled the space (so more may wait).
    /// With `peek` (at most [`PEEK_BYTES`]) the bytes stay queued in the
    /// kernel (see the module's text).
    pub(super) fn fill(&mut self, sock: &Socket, peek: bool) -> io::Result<(usize, bool)> {
        self.settle(sock)?;
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let free = &mut self.buf[self.end..];
        let (n, space) = if peek {
            let space = free.len().min(PEEK_BYTES);
            let n = sys::try_peek_into(sock, &mut free[..space])?;
            self.peeked = n;
            (n, space)
        } else {
            (sys::try_recv_into(sock, free)?, free.len())
        };
        self.end += n;
        Ok((n, n == space))
    }

    /// Drops the peeked bytes from the socket's queue (they are staged
    /// already). Every read comes after this.
    pub(super) fn settle(&mut self, sock: &Socket) -> io::Result<()> {
        while self.peeked > 0 {
            match sys::try_discard(sock, self.peeked)? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => self.peeked -= n,
            }
        }
        Ok(())
    }

    /// Whether the peer sent anything not read yet, without taking it:
    /// `Ok(0)` means it closed. Peeked bytes are dropped first, so they
    /// cannot pass for new ones.
    pub(super) fn probe(&mut self, sock: &Socket) -> io::Result<usize> {
        self.settle(sock)?;
        sys::try_peek_into(sock, &mut [0u8])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    /// A connected pair: the writer, and the reader as a non-blocking socket.
    fn pair() -> (TcpStream, Socket) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let w = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        w.set_nodelay(true).unwrap();
        let (r, _) = l.accept().unwrap();
        r.set_nonblocking(true).unwrap();
        (w, Socket::from(r))
    }

    fn queued(sock: &Socket) -> usize {
        sys::queued_bytes(sock).unwrap()
    }

    /// Writes `msg` and peeks until its bytes are staged.
    fn arrive(w: &mut TcpStream, sock: &Socket, stage: &mut Stage, msg: &[u8]) {
        w.write_all(msg).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = 0;
        while got < msg.len() {
            assert!(Instant::now() < deadline, "no bytes came");
            match stage.fill(sock, true) {
                Ok((n, _)) => got += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// A peeked message is staged and stays queued in the kernel until the
    /// next read, which drops it first; nothing is staged twice, and a read
    /// that is not a peek drops what is queued too.
    #[test]
    fn peeked_bytes_stay_queued_until_the_next_read_and_are_staged_once() {
        let (mut w, sock) = pair();
        let mut stage = Stage::new();
        let msgs: Vec<Vec<u8>> = (1..=6u8).map(|i| vec![i; 10 * i as usize]).collect();
        for (i, m) in msgs.iter().enumerate() {
            arrive(&mut w, &sock, &mut stage, m);
            // What the last peek staged is all that stays queued: were a
            // write split in two, the peek of its second part would have
            // dropped the first from the queue (it stays staged).
            assert!(stage.peeked > 0, "after message {i}");
            assert_eq!(queued(&sock), stage.peeked, "after message {i}");
        }
        w.write_all(b"tail").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while stage.len() < msgs.iter().map(Vec::len).sum::<usize>() + 4 {
            assert!(Instant::now() < deadline, "the tail never came");
            let _ = stage.fill(&sock, false);
        }
        assert_eq!(queued(&sock), 0, "a read drops what was peeked");
        let want: Vec<u8> = msgs.concat().into_iter().chain(*b"tail").collect();
        assert_eq!(stage.bytes(), &want[..]);
        assert_eq!(stage.peeked, 0);
    }

    /// `settle` drops exactly the peeked bytes and keeps later ones queued.
    #[test]
    fn settling_drops_only_what_was_peeked() {
        let (mut w, sock) = pair();
        let mut stage = Stage::new();
        arrive(&mut w, &sock, &mut stage, b"first message");
        w.write_all(b"second").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while queued(&sock) < 19 {
            assert!(Instant::now() < deadline, "the second message never came");
            std::thread::yield_now();
        }
        stage.settle(&sock).unwrap();
        assert_eq!(queued(&sock), 6);
        assert_eq!(stage.bytes(), b"first message");
    }

    /// A probe for a silent peer sees only bytes not peeked yet and takes
    /// none: peeked bytes do not pass for the peer speaking, a byte it saw
    /// is staged exactly once, and a close shows.
    #[test]
    fn a_probe_sees_only_new_bytes_and_keeps_the_peek_in_place() {
        let (mut w, sock) = pair();
        let mut stage = Stage::new();
        arrive(&mut w, &sock, &mut stage, b"hello");
        let silent = stage.probe(&sock).unwrap_err();
        assert_eq!(silent.kind(), io::ErrorKind::WouldBlock);
        w.write_all(b"!").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while stage.probe(&sock).unwrap_or(0) == 0 {
            assert!(Instant::now() < deadline, "the byte never came");
            std::thread::yield_now();
        }
        w.write_all(b"?").unwrap();
        while stage.len() < 7 {
            assert!(Instant::now() < deadline, "the last byte never came");
            let _ = stage.fill(&sock, true);
        }
        assert_eq!(stage.bytes(), b"hello!?");
        drop(w);
        stage.settle(&sock).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match stage.probe(&sock) {
                Ok(0) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => panic!("{other:?} after the peer closed"),
            }
            assert!(Instant::now() < deadline, "the close never showed");
            std::thread::yield_now();
        }
    }
}
