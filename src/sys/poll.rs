//! Readiness polling over many sockets: `poll(2)` (the metrics exporter),
//! an `epoll(7)` set that answers "which of these are readable" in one
//! system call however many sockets it holds (a connection's streams), and
//! one socket option.

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
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

/// A fixed set of descriptors, each known by its index, asked without
/// waiting which of them are readable (level-triggered: a descriptor stays
/// reported while bytes, an error or the peer's close wait on it).
pub struct ReadableSet {
    epoll: OwnedFd,
    len: usize,
}

impl ReadableSet {
    /// Watches `fds`; index `i` in `readable` means `fds[i]`. The set keeps
    /// no borrow: a descriptor closed later simply leaves it.
    pub fn new(fds: &[BorrowedFd<'_>]) -> io::Result<Self> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative return is a
        // new descriptor that nothing else owns.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by epoll_create1 and is owned here only.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        for (index, watched) in fds.iter().enumerate() {
            let mut event = libc::epoll_event {
                events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
                u64: index as u64,
            };
            // SAFETY: `event` is a live, initialised epoll_event that the
            // kernel only reads during the call; both descriptors are open
            // (one owned here, one borrowed for the call).
            let rc = unsafe {
                libc::epoll_ctl(
                    epoll.as_raw_fd(),
                    libc::EPOLL_CTL_ADD,
                    watched.as_raw_fd(),
                    &mut event,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(ReadableSet {
            epoll,
            len: fds.len(),
        })
    }

    /// Calls `each` with the index of every descriptor readable now (or in
    /// error, or closed by the peer); never waits.
    pub fn readable(&self, mut each: impl FnMut(usize)) -> io::Result<()> {
        const MAX_EVENTS: usize = 16;
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS];
        let max = self.len.clamp(1, MAX_EVENTS) as i32;
        // SAFETY: `events` is an exclusively borrowed array of at least `max`
        // epoll_event structs that outlives the call; epoll_wait writes at
        // most `max` of them and returns how many.
        let n = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), max, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        for event in &events[..n as usize] {
            each(event.u64 as usize);
        }
        Ok(())
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
    use std::os::fd::{AsFd, AsRawFd};
    use std::time::Instant;

    #[test]
    fn readable_set_names_exactly_the_sockets_with_bytes() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let (mut clients, servers): (Vec<_>, Vec<_>) = (0..3)
            .map(|_| {
                let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
                (Some(c), l.accept().unwrap().0)
            })
            .unzip();
        let fds: Vec<BorrowedFd<'_>> = servers.iter().map(AsFd::as_fd).collect();
        let set = ReadableSet::new(&fds).unwrap();
        let ready = || {
            let mut got = Vec::new();
            set.readable(|i| got.push(i)).unwrap();
            got.sort_unstable();
            got
        };
        assert_eq!(ready(), Vec::<usize>::new());
        let client = |i: usize| clients[i].as_ref().unwrap();
        client(2).write_all(b"x").unwrap();
        client(0).write_all(b"y").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while ready() != [0, 2] {
            assert!(
                Instant::now() < deadline,
                "readiness never reported: {:?}",
                ready()
            );
        }
        // Level-triggered: still reported until read.
        assert_eq!(ready(), [0, 2]);
        let mut byte = [0u8; 1];
        std::io::Read::read_exact(&mut &servers[0], &mut byte).unwrap();
        assert_eq!(ready(), [2]);
        // A peer's close is reported too.
        clients[1] = None;
        while !ready().contains(&1) {
            assert!(Instant::now() < deadline, "close never reported");
        }
    }

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
