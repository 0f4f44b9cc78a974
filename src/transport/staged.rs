//! NCCL's GPU buffers on the point-to-point path, staged through pinned
//! host mirrors.
//!
//! NCCL merges the collective network's device with the net device of the
//! same index into one topology node, so once the collective network offers
//! GPU buffers, NCCL also hands the point-to-point (TCP) path GPU buffers
//! and registers them with `regMr(NCCL_PTR_CUDA)` (a real NIC on the GPU's
//! PCIe switch does the same). TCP cannot read device memory, so every
//! registered device region gets a pinned host mirror and its own
//! non-blocking stream, allocated at registration:
//!
//! * a send copies its range to the mirror (async copy + event); once the
//!   event has completed the bytes are queued on the TCP comm from the
//!   mirror. Sends of one comm are handed to TCP in the order NCCL posted
//!   them (the copies run on one stream, so their events complete in that
//!   order too), whichever request NCCL tests. That includes sends from
//!   host memory (NCCL's LL and LL128 buffers stay on the host): one posted
//!   while a staged send of its comm waits for its copy queues behind it,
//!   because the receiver matches messages in order;
//! * a receive lands in the mirror; once TCP has it, the received bytes
//!   are copied to the device and the request completes when that copy's
//!   event has.
//!
//! Only asynchronous CUDA calls and event queries run on the data path.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::config;
use crate::error::{NetError, NetResult};
use crate::gpu::{DevAddr, Fence, GpuContext, GpuQueue, Mirror};
use crate::sys::RawBuf;
use crate::transport::tcp::{RecvComm, RecvRequest, SendComm, SendRequest};

/// A registered device range, its mirror and its stream.
pub struct DeviceRegion {
    base: usize,
    len: usize,
    mirror: Mirror,
    mirror_addr: DevAddr,
    queue: GpuQueue,
}

impl DeviceRegion {
    fn contains(&self, ptr: usize, len: usize) -> bool {
        ptr >= self.base
            && ptr
                .checked_add(len)
                .is_some_and(|end| end <= self.base + self.len)
    }

    /// The mirror of `ptr..ptr+len` (which lies in this region).
    fn mirror_of(&self, ptr: usize, len: usize) -> RawBuf {
        let offset = ptr - self.base;
        // SAFETY: `offset + len <= self.len` (checked by `find`), the mirror
        // is pinned host memory owned by this region, and every request
        // using it holds an `Arc` of the region until it completes.
        unsafe { RawBuf::new(self.mirror.as_ptr().wrapping_add(offset), len) }
    }

    fn mirror_addr_of(&self, ptr: usize) -> DevAddr {
        self.mirror_addr.offset(ptr - self.base)
    }
}

/// Registered regions and how many registrations each has. NCCL may
/// register the same buffer for several connections: they share one
/// region (and mirror) until the last registration is dropped.
static REGIONS: RwLock<Vec<(Arc<DeviceRegion>, usize)>> = RwLock::new(Vec::new());

/// One more registration of `ptr..ptr+len`, if that range is registered.
fn share(
    all: &mut [(Arc<DeviceRegion>, usize)],
    ptr: usize,
    len: usize,
) -> Option<Arc<DeviceRegion>> {
    let (region, refs) = all
        .iter_mut()
        .find(|(r, _)| r.base == ptr && r.len == len)?;
    *refs += 1;
    Some(Arc::clone(region))
}

/// Registers NCCL's device buffer `ptr..ptr+len` (regMr, on NCCL's setup
/// thread with its device current): allocates the mirror and the stream,
/// or shares those of an earlier registration of the same range.
pub fn register(ptr: usize, len: usize) -> NetResult<Arc<DeviceRegion>> {
    if let Some(r) = share(
        &mut REGIONS.write().unwrap_or_else(|p| p.into_inner()),
        ptr,
        len,
    ) {
        return Ok(r);
    }
    // Allocated without the lock: `find` takes it on the data path.
    let ctx = GpuContext::current()?;
    let mirror = Mirror::new(&ctx, ptr, len, config::global().gpu.mirror_budget)?;
    let mirror_addr = mirror.device_addr(0)?;
    let region = Arc::new(DeviceRegion {
        base: ptr,
        len,
        mirror,
        mirror_addr,
        queue: ctx.queue()?,
    });
    let mut all = REGIONS.write().unwrap_or_else(|p| p.into_inner());
    // A registration of the same range on another thread may have won the
    // race: share its region, and free ours once the lock is released.
    if let Some(r) = share(&mut all, ptr, len) {
        drop(all);
        return Ok(r);
    }
    all.push((Arc::clone(&region), 1));
    Ok(region)
}

/// Drops one registration; the last forgets the region. Requests still
/// using it keep it (and its mirror) alive until they finish.
pub fn deregister(region: &Arc<DeviceRegion>) {
    let mut all = REGIONS.write().unwrap_or_else(|p| p.into_inner());
    let Some(i) = all.iter().position(|(r, _)| Arc::ptr_eq(r, region)) else {
        return;
    };
    all[i].1 -= 1;
    if all[i].1 == 0 {
        // The caller still holds the region: its mirror is not freed here.
        all.swap_remove(i);
    }
}

/// The registered device region holding `ptr..ptr+len`, if any.
pub fn find(ptr: usize, len: usize) -> Option<Arc<DeviceRegion>> {
    REGIONS
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .find(|(r, _)| r.contains(ptr, len))
        .map(|(r, _)| Arc::clone(r))
}

/// A send not yet handed to TCP: a staged one waiting for its copy, or a
/// host one queued behind it.
struct Unposted {
    /// The copy to the mirror (none for host memory).
    fence: Option<Fence>,
    buf: RawBuf,
    tag: i32,
    /// Where the TCP request goes once posted.
    slot: Arc<Mutex<Option<SendRequest>>>,
    /// Keeps the mirror alive.
    _region: Option<Arc<DeviceRegion>>,
}

/// Per send comm (keyed by its address), staged sends in posting order.
static UNPOSTED: Mutex<Vec<(usize, VecDeque<Unposted>)>> = Mutex::new(Vec::new());
/// Entries in [`UNPOSTED`], all comms together (changed under its lock):
/// lets every host-memory `isend` skip the lock while nothing is staged,
/// which is always without GPU buffers.
static WAITING: AtomicUsize = AtomicUsize::new(0);

/// A staged request in flight this long is described in the log, once.
const STUCK_REPORT: Duration = Duration::from_secs(10);

/// A send from device memory.
pub struct StagedSend {
    comm_key: usize,
    size: usize,
    posted: Arc<Mutex<Option<SendRequest>>>,
    started: Instant,
    reported: bool,
}

impl StagedSend {
    /// Copies `ptr..ptr+len` of `region` to its mirror; the TCP send
    /// follows once the copy has completed. `comm` identifies the order.
    pub fn start(
        comm: &SendComm,
        region: Arc<DeviceRegion>,
        ptr: usize,
        len: usize,
        tag: i32,
    ) -> NetResult<StagedSend> {
        if len > 0 {
            region
                .queue
                .copy_async(region.mirror_addr_of(ptr), DevAddr(ptr as u64), len)?;
        }
        let fence = region.queue.record()?;
        let buf = region.mirror_of(ptr, len);
        Ok(Self::queue(comm, Some(fence), buf, tag, Some(region)))
    }

    /// Queues a send from host memory behind `comm`'s staged sends still
    /// waiting for their copies; `Err(buf)` when none waits (send it
    /// directly).
    pub fn behind_staged(comm: &SendComm, buf: RawBuf, tag: i32) -> Result<StagedSend, RawBuf> {
        if WAITING.load(Ordering::Acquire) == 0 {
            return Err(buf);
        }
        let key = comm as *const SendComm as usize;
        let waiting = UNPOSTED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|(k, q)| *k == key && !q.is_empty());
        if waiting {
            Ok(Self::queue(comm, None, buf, tag, None))
        } else {
            Err(buf)
        }
    }

    fn queue(
        comm: &SendComm,
        fence: Option<Fence>,
        buf: RawBuf,
        tag: i32,
        region: Option<Arc<DeviceRegion>>,
    ) -> StagedSend {
        let posted = Arc::new(Mutex::new(None));
        let key = comm as *const SendComm as usize;
        let size = buf.len();
        let entry = Unposted {
            fence,
            buf,
            tag,
            slot: Arc::clone(&posted),
            _region: region,
        };
        let mut all = UNPOSTED.lock().unwrap_or_else(|p| p.into_inner());
        match all.iter_mut().find(|(k, _)| *k == key) {
            Some((_, q)) => q.push_back(entry),
            None => all.push((key, VecDeque::from([entry]))),
        }
        WAITING.fetch_add(1, Ordering::AcqRel);
        StagedSend {
            comm_key: key,
            size,
            posted,
            started: Instant::now(),
            reported: false,
        }
    }

    /// `Some(bytes)` once every byte has left this process. `comm` must be
    /// the comm the send was started on.
    pub fn test(&mut self, comm: &SendComm) -> NetResult<Option<u64>> {
        post_ready(comm, self.comm_key)?;
        let posted = self.posted.lock().unwrap_or_else(|p| p.into_inner());
        let done = match posted.as_ref() {
            Some(r) => r.test()?.map(|_| self.size as u64),
            None => None,
        };
        if done.is_none() && !self.reported && self.started.elapsed() >= STUCK_REPORT {
            self.reported = true;
            crate::warn!(
                "staged send of {} bytes to {} not complete after {} s: {}",
                self.size,
                comm.peer(),
                STUCK_REPORT.as_secs(),
                if posted.is_some() {
                    "its copy completed and TCP has it"
                } else {
                    "still waiting for its copy to the mirror, or for an earlier send"
                }
            );
        }
        Ok(done)
    }
}

/// Hands `comm`'s staged sends whose copies completed to TCP, oldest first;
/// stops at the first copy still running or when TCP's pool is full.
fn post_ready(comm: &SendComm, key: usize) -> NetResult<()> {
    let mut all = UNPOSTED.lock().unwrap_or_else(|p| p.into_inner());
    let Some((_, queue)) = all.iter_mut().find(|(k, _)| *k == key) else {
        return Ok(());
    };
    while let Some(front) = queue.front() {
        if let Some(fence) = &front.fence {
            if !fence.is_complete()? {
                break;
            }
        }
        let Some(request) = comm.isend(front.buf, front.tag)? else {
            break;
        };
        let front = queue.pop_front().expect("front");
        WAITING.fetch_sub(1, Ordering::AcqRel);
        *front.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(request);
    }
    Ok(())
}

/// Forgets a closed comm's queue (NCCL closes a comm only once its
/// requests are done, so it is empty).
pub fn forget_comm(comm: &SendComm) {
    let key = comm as *const SendComm as usize;
    let mut all = UNPOSTED.lock().unwrap_or_else(|p| p.into_inner());
    all.retain(|(k, q)| {
        if *k == key {
            WAITING.fetch_sub(q.len(), Ordering::AcqRel);
        }
        *k != key
    });
}

/// A receive into buffers some of which are device memory.
pub struct StagedRecv {
    started: Instant,
    reported: bool,
    inner: RecvRequest,
    /// Per slot: the device range its mirror is copied to, if any.
    device: Vec<Option<(Arc<DeviceRegion>, usize)>>,
    copies: Option<(Vec<Fence>, Vec<u64>)>,
}

/// Where a receive slot's bytes land first.
pub fn recv_target(ptr: usize, len: usize) -> Option<(Arc<DeviceRegion>, RawBuf)> {
    let region = find(ptr, len)?;
    let buf = region.mirror_of(ptr, len);
    Some((region, buf))
}

impl StagedRecv {
    /// Posts `slots` (mirrors in place of device buffers) on `comm`;
    /// `device[i]` names slot i's device buffer. `None` when TCP's request
    /// pool is full.
    pub fn start(
        comm: &RecvComm,
        slots: &[(RawBuf, i32)],
        device: Vec<Option<(Arc<DeviceRegion>, usize)>>,
    ) -> NetResult<Option<StagedRecv>> {
        Ok(comm.irecv(slots)?.map(|inner| StagedRecv {
            started: Instant::now(),
            reported: false,
            inner,
            device,
            copies: None,
        }))
    }

    /// The received sizes once the bytes are in NCCL's buffers.
    pub fn test(&mut self) -> NetResult<Option<Vec<u64>>> {
        let done = self.poll()?;
        if done.is_none() && !self.reported && self.started.elapsed() >= STUCK_REPORT {
            self.reported = true;
            crate::warn!(
                "staged receive not complete after {} s: {}",
                STUCK_REPORT.as_secs(),
                if self.copies.is_some() {
                    "the message arrived, its copy to the GPU is pending"
                } else {
                    "the message has not arrived"
                }
            );
        }
        Ok(done)
    }

    fn poll(&mut self) -> NetResult<Option<Vec<u64>>> {
        if self.copies.is_none() {
            let Some(sizes) = self.inner.test()? else {
                return Ok(None);
            };
            let sizes = sizes.to_vec();
            let mut fences = Vec::new();
            for (slot, size) in self.device.iter().zip(&sizes) {
                if let Some((region, ptr)) = slot {
                    let len = usize::try_from(*size).map_err(|_| {
                        NetError::Internal(format!("received size {size} does not fit usize"))
                    })?;
                    if len > 0 {
                        region.queue.copy_async(
                            DevAddr(*ptr as u64),
                            region.mirror_addr_of(*ptr),
                            len,
                        )?;
                    }
                    fences.push(region.queue.record()?);
                }
            }
            self.copies = Some((fences, sizes));
        }
        let (fences, sizes) = self.copies.as_mut().expect("set above");
        while let Some(f) = fences.last() {
            if !f.is_complete()? {
                return Ok(None);
            }
            fences.pop();
        }
        Ok(Some(sizes.clone()))
    }
}
