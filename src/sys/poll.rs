//! Readiness polling over many sockets (the metrics exporter): `poll(2)`
//! and one socket option.

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

pub use libc::{POLLIN, POLLOUT};

/// One descriptor to watch, as `poll(2)` takes it.
pub type PollFd = libc::pollfd;

/// A `PollFd` waiting for `events` on `fd`.
pub fn poll_fd(fd: RawFd, events: i16) -> PollFd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// Waits until one of `fds` is ready or `timeout` has passed (rounded up to
/// a whole millisecond, so a short timeout never degenerates into a busy
/// loop of zero-length waits). Fills each `revents`; returns how many are
/// non-zero. An empty slice just sleeps.
pub fn poll(fds: &mut [PollFd], timeout: Duration) -> io::Result<usize> {
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    let nfds = libc::nfds_t::try_from(fds.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many descriptors"))?;
    // SAFETY: `fds` is an exclusively borrowed, initialised slice of `nfds`
    // pollfd structs that outlives the call; poll(2) reads `fd`/`events` and
    // writes only `revents` within it. An empty slice passes a dangling but
    // non-null pointer with nfds = 0, which poll never dereferences.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), nfds, ms) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Sets `TCP_DEFER_ACCEPT`: the kernel hands a connection to `accept` only
/// once its first data has arrived (or after about `secs`), so an accepted
/// client has normally sent its request already.
pub fn defer_accept(listener: &TcpListener, secs: i32) -> io::Result<()> {
    // SAFETY: setsockopt reads exactly `size_of::<c_int>()` bytes from a
    // live local; the fd is a socket owned by `listener` for the call.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&secs as *const i32).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    use std::time::Instant;

    #[test]
    fn reports_readiness_and_times_out() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        let mut fds = [
            poll_fd(s.as_raw_fd(), POLLIN),
            poll_fd(c.as_raw_fd(), POLLOUT),
        ];
        // Nothing to read yet, but the client can write.
        assert_eq!(poll(&mut fds, Duration::from_millis(1)).unwrap(), 1);
        assert_eq!(fds[0].revents, 0);
        assert_ne!(fds[1].revents & POLLOUT, 0);
        c.write_all(b"x").unwrap();
        let mut fds = [poll_fd(s.as_raw_fd(), POLLIN)];
        // Only a guard against a hung test: the byte is already on its way.
        assert_eq!(poll(&mut fds, Duration::from_secs(30)).unwrap(), 1);
        assert_ne!(fds[0].revents & POLLIN, 0);
    }

    #[test]
    fn deferred_accept_waits_for_data() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        defer_accept(&l, 1).unwrap();
        let addr = l.local_addr().unwrap();
        let _silent = TcpStream::connect(addr).unwrap();
        // The kernel holds the silent connection back for about a second.
        let mut fds = [poll_fd(l.as_raw_fd(), POLLIN)];
        assert_eq!(poll(&mut fds, Duration::from_millis(100)).unwrap(), 0);
        let mut speaker = TcpStream::connect(addr).unwrap();
        speaker.write_all(b"GET").unwrap();
        assert_eq!(poll(&mut fds, Duration::from_secs(30)).unwrap(), 1);
        let (_, peer) = l.accept().unwrap();
        assert_eq!(peer, speaker.local_addr().unwrap());
    }

    #[test]
    fn empty_set_sleeps_at_least_the_timeout() {
        let t = Instant::now();
        assert_eq!(poll(&mut [], Duration::from_micros(1500)).unwrap(), 0);
        // Rounded up to 2 ms, never down to 1 ms.
        assert!(t.elapsed() >= Duration::from_micros(1500));
    }
}
