//! The operating system calls that need raw pointers: interface
//! enumeration, readiness polling, and I/O straight into NCCL's buffers.
//! Kept out of `abi/` (the C face) so the transport below it can use them.

pub mod poll;
pub mod thread;

use std::ffi::CStr;
use std::io::{self, IoSlice};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use socket2::Socket;

/// One address of one network interface, as `getifaddrs(3)` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceAddr {
    pub name: String,
    pub addr: IpAddr,
    pub scope_id: u32,
    pub up: bool,
    pub loopback: bool,
}

/// All IPv4/IPv6 interface addresses of this host, in the kernel's order.
pub fn interface_addrs() -> io::Result<Vec<InterfaceAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we own and free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: ifa_addr is non-null and points at a sockaddr whose family
        // field tells which concrete type it is.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        let (addr, scope_id) = match family {
            libc::AF_INET => {
                // SAFETY: family AF_INET means the sockaddr is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                (
                    IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))),
                    0,
                )
            }
            libc::AF_INET6 => {
                // SAFETY: family AF_INET6 means the sockaddr is a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                (
                    IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)),
                    sin6.sin6_scope_id,
                )
            }
            _ => continue,
        };
        let flags = ifa.ifa_flags;
        out.push(InterfaceAddr {
            name,
            addr,
            scope_id,
            up: flags & libc::IFF_UP as u32 != 0 && flags & libc::IFF_RUNNING as u32 != 0,
            loopback: flags & libc::IFF_LOOPBACK as u32 != 0,
        });
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// A buffer NCCL lent us for the life of one request.
///
/// Invariant (established by [`RawBuf::new`]'s caller at the ABI edge): the
/// memory stays valid until the request is reported done, and the transport
/// never hands the same byte range to two streams at once (the scheduler and
/// the matcher give every chunk its own range, checked against `len`).
#[derive(Clone, Copy, Debug)]
pub struct RawBuf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the buffer is plain host memory that NCCL does not touch while the
// request is in flight; disjoint ranges may be filled from different threads.
unsafe impl Send for RawBuf {}
// SAFETY: as above; all access goes through range-checked methods.
unsafe impl Sync for RawBuf {}

/// The empty buffer (no bytes, so nothing to keep valid).
impl Default for RawBuf {
    fn default() -> Self {
        RawBuf {
            ptr: std::ptr::null_mut(),
            len: 0,
        }
    }
}

impl RawBuf {
    /// # Safety
    /// `ptr..ptr+len` must be valid host memory (or `len == 0`) until the
    /// request using it completes, and not accessed by anyone else meanwhile.
    pub unsafe fn new(ptr: *mut u8, len: usize) -> Self {
        RawBuf { ptr, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn checked(&self, offset: u64, len: usize) -> io::Result<(usize, usize)> {
        let off = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        match off.checked_add(len) {
            Some(end) if end <= self.len => Ok((off, len)),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "range outside the request buffer",
            )),
        }
    }

    /// Bytes `offset..offset+len`, if they lie inside this buffer.
    pub fn slice(&self, offset: usize, len: usize) -> Option<RawBuf> {
        let end = offset.checked_add(len)?;
        (end <= self.len).then(|| RawBuf {
            ptr: self.ptr.wrapping_add(offset),
            len,
        })
    }

    /// Whether the two buffers share any byte (an in-place call's input
    /// and output).
    pub fn overlaps(&self, other: &RawBuf) -> bool {
        let (a, b) = (self.ptr as usize, other.ptr as usize);
        self.len > 0 && other.len > 0 && a < b + other.len && b < a + self.len
    }

    /// The first `len` bytes (all of them if `len` is larger).
    pub fn prefix(&self, len: usize) -> RawBuf {
        RawBuf {
            ptr: self.ptr,
            len: len.min(self.len),
        }
    }

    /// Runs `f` on bytes `offset..offset+len` of a buffer this plugin only
    /// reads (a send buffer: NCCL does not write it while the call is in
    /// flight, and the transport only reads send buffers).
    pub fn with_bytes<R>(
        &self,
        offset: usize,
        len: usize,
        f: impl FnOnce(&[u8]) -> R,
    ) -> io::Result<R> {
        let (off, len) = self.checked(offset as u64, len)?;
        if len == 0 {
            return Ok(f(&[]));
        }
        // SAFETY: range checked against the buffer NCCL lent us; per the
        // type's invariant nobody writes it while the request is in flight.
        Ok(f(unsafe {
            std::slice::from_raw_parts(self.ptr.add(off), len)
        }))
    }

    /// Runs `f` on bytes `offset..offset+len` to fill them in place (an
    /// output range that only the caller's step writes, as
    /// [`RawBuf::write_at`] does).
    pub fn with_bytes_mut<R>(
        &self,
        offset: usize,
        len: usize,
        f: impl FnOnce(&mut [u8]) -> R,
    ) -> io::Result<R> {
        let (off, len) = self.checked(offset as u64, len)?;
        if len == 0 {
            return Ok(f(&mut []));
        }
        // SAFETY: range checked; the buffer is ours to fill until the
        // request completes (the type's invariant), and callers own
        // disjoint ranges of it, so this is the only reference to them.
        Ok(f(unsafe {
            std::slice::from_raw_parts_mut(self.ptr.add(off), len)
        }))
    }

    /// Copies bytes `offset..offset+dst.len()` out of the buffer.
    pub fn read_at(&self, offset: usize, dst: &mut [u8]) -> io::Result<()> {
        let (off, len) = self.checked(offset as u64, dst.len())?;
        if len > 0 {
            // SAFETY: range checked against the buffer NCCL lent us (see the
            // type's invariant); we only read it.
            let src = unsafe { std::slice::from_raw_parts(self.ptr.add(off), len) };
            dst.copy_from_slice(src);
        }
        Ok(())
    }

    /// Copies `src` into the buffer at `offset`.
    pub fn write_at(&self, offset: usize, src: &[u8]) -> io::Result<()> {
        self.with_bytes_mut(offset, src.len(), |dst| dst.copy_from_slice(src))
    }

    /// Sends what it can without blocking of `header` followed by bytes
    /// `offset..offset+len`, skipping the first `done` bytes of that
    /// sequence (already sent). Returns how many more bytes went out.
    pub fn try_send(
        &self,
        header: &[u8],
        offset: u64,
        len: usize,
        done: usize,
        sock: &Socket,
    ) -> io::Result<usize> {
        let (off, len) = self.checked(offset, len)?;
        let payload: &[u8] = if len == 0 {
            &[]
        } else {
            // SAFETY: range checked against the buffer NCCL lent us (see the
            // type's invariant); we only read it.
            unsafe { std::slice::from_raw_parts(self.ptr.add(off), len) }
        };
        let head = header.get(done..).unwrap_or(&[]);
        let body = &payload[done.saturating_sub(header.len()).min(len)..];
        sock.send_vectored_with_flags(
            &[IoSlice::new(head), IoSlice::new(body)],
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    }

    /// Reads what is available without blocking into bytes
    /// `offset..offset+len`; `Ok(0)` means the peer closed.
    pub fn try_recv(&self, offset: u64, len: usize, sock: &Socket) -> io::Result<usize> {
        let (off, len) = self.checked(offset, len)?;
        if len == 0 {
            return Ok(0);
        }
        // SAFETY: range checked against the buffer; this chunk's range is
        // ours alone until the matcher is told it is done.
        let dst = unsafe { std::slice::from_raw_parts_mut(self.ptr.add(off), len) };
        try_recv_into(sock, dst)
    }
}

/// A non-blocking read into initialized memory; `Ok(0)` means EOF.
pub fn try_recv_into(sock: &Socket, buf: &mut [u8]) -> io::Result<usize> {
    recv_flags(sock, buf, libc::MSG_DONTWAIT)
}

/// A non-blocking copy of the front of the receive queue that leaves it
/// queued (`MSG_PEEK`); `Ok(0)` means EOF.
pub fn try_peek_into(sock: &Socket, buf: &mut [u8]) -> io::Result<usize> {
    recv_flags(sock, buf, libc::MSG_PEEK | libc::MSG_DONTWAIT)
}

/// Drops up to `len` bytes (at most 4 KiB a call) from the front of a TCP
/// socket's receive queue without copying them (`MSG_TRUNC`, tcp(7)).
pub fn try_discard(sock: &Socket, len: usize) -> io::Result<usize> {
    let mut scratch = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
    let len = len.min(scratch.len());
    sock.recv_with_flags(&mut scratch[..len], libc::MSG_TRUNC | libc::MSG_DONTWAIT)
}

/// The bytes waiting in a socket's receive queue (`FIONREAD`), for tests
/// that look at what the kernel holds.
#[cfg(test)]
pub fn queued_bytes(fd: &impl std::os::fd::AsRawFd) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer we pass.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

fn recv_flags(sock: &Socket, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: initialized bytes are valid MaybeUninit<u8>; recv only writes.
    let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [std::mem::MaybeUninit<u8>]) };
    sock.recv_with_flags(uninit, flags)
}

/// CPUs online on this host, whatever this process may run on; 1 if the
/// system cannot say.
pub fn online_cpus() -> usize {
    // SAFETY: sysconf reads a system value and touches no memory of ours.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

/// Blocks until `sock` is readable (or writable), hung up, `timeout`, or a
/// signal; the caller checks which.
pub fn wait_ready(sock: &Socket, writable: bool, timeout: std::time::Duration) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: if writable {
            libc::POLLOUT
        } else {
            libc::POLLIN
        },
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd for the duration of the call.
    match unsafe { libc::poll(&mut pfd, 1, ms) } {
        // A signal cut the wait short: the caller looks again, as after
        // any other wake-up.
        -1 if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => Ok(()),
        -1 => Err(io::Error::last_os_error()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_loopback() {
        let addrs = interface_addrs().unwrap();
        assert!(addrs.iter().any(|a| a.loopback && a.addr.is_loopback()));
    }

    extern "C" fn ignore_signal(_: libc::c_int) {}

    /// A signal that lands on a stream thread ends its wait early; it must
    /// not read as a failed socket (that failed the whole connection).
    #[test]
    fn a_signal_ends_a_wait_without_an_error() {
        use std::sync::mpsc;
        use std::time::{Duration, Instant};
        // SAFETY: a handler that does nothing, installed for SIGUSR1 (which
        // nothing else in the tests uses) without SA_RESTART, so the signal
        // interrupts poll(2) with EINTR.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = ignore_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            assert_eq!(
                libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut()),
                0
            );
        }
        let (a, _b) = Socket::pair(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
        let (thread_tx, thread_rx) = mpsc::channel();
        let (result_tx, result_rx) = mpsc::channel();
        let (exit_tx, exit_rx) = mpsc::channel::<()>();
        let waiter = std::thread::spawn(move || {
            // SAFETY: pthread_self has no preconditions.
            thread_tx.send(unsafe { libc::pthread_self() }).unwrap();
            let started = Instant::now();
            let result = wait_ready(&a, false, Duration::from_secs(20));
            result_tx
                .send((result.map_err(|e| e.kind()), started.elapsed()))
                .unwrap();
            // Alive until told, so the signals below never reach a thread
            // that has exited.
            let _ = exit_rx.recv();
        });
        let thread = thread_rx.recv().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        // A signal sent before the thread is in poll(2) is lost: repeat it.
        let (result, waited) = loop {
            // SAFETY: the thread is alive until `exit_tx` speaks.
            assert_eq!(unsafe { libc::pthread_kill(thread, libc::SIGUSR1) }, 0);
            match result_rx.recv_timeout(Duration::from_millis(50)) {
                Ok(r) => break r,
                Err(_) => assert!(Instant::now() < deadline, "no signal ended the wait"),
            }
        };
        exit_tx.send(()).unwrap();
        waiter.join().unwrap();
        assert_eq!(result, Ok(()));
        assert!(
            waited < Duration::from_secs(10),
            "the wait ran to its timeout"
        );
    }

    #[test]
    fn raw_buf_rejects_out_of_range() {
        let mut v = vec![0u8; 8];
        // SAFETY: `v` outlives `b` and nothing else touches it.
        let b = unsafe { RawBuf::new(v.as_mut_ptr(), v.len()) };
        assert!(b.checked(4, 4).is_ok());
        assert!(b.checked(5, 4).is_err());
        assert!(b.checked(u64::MAX, 1).is_err());
    }
}
