//! NCCL's GPU buffers on the collective network.
//!
//! With GPUDirect, NCCL registers each half of its collective-network
//! buffer (`regMr(NCCL_PTR_CUDA)`) and passes pointers into them to every
//! call. Every registered region gets a pinned host *mirror* of the same
//! size, allocated at registration (never on the data path), and its own
//! non-blocking stream. A call whose buffers are device memory is *staged*:
//! its input range is copied to the mirror asynchronously, the host steps
//! run on the mirror, and its output range is copied back; the call
//! completes only once the copy back's event has completed. Nothing here
//! blocks: copies are queued, completion is an event query.
//!
//! Memory is identified by pointer (the registered ranges), not by the
//! handle NCCL passes along, which may come from the other side's view.

use std::sync::Arc;

use crate::error::NetResult;
use crate::gpu::{DevAddr, Fence, GpuContext, GpuQueue, PinnedBuf};
use crate::sys::RawBuf;

/// One registered device range and its host mirror.
pub struct DeviceRegion {
    base: usize,
    len: usize,
    mirror: PinnedBuf,
}

impl DeviceRegion {
    fn contains(&self, ptr: usize, len: usize) -> bool {
        ptr >= self.base
            && ptr
                .checked_add(len)
                .is_some_and(|end| end <= self.base + self.len)
    }
}

/// A call's buffer that lies in a registered device region.
#[derive(Clone)]
pub struct DeviceRange {
    region: Arc<DeviceRegion>,
    offset: usize,
    len: usize,
}

impl DeviceRange {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn device(&self) -> DevAddr {
        DevAddr(self.region.base as u64 + self.offset as u64)
    }

    fn mirror_addr(&self) -> DevAddr {
        self.region.mirror.device_addr(self.offset)
    }

    /// The mirror of this range, as a buffer host code can use. It stays
    /// valid while `self` (which holds the region) lives.
    pub fn mirror(&self) -> RawBuf {
        let ptr = self.region.mirror.as_ptr().wrapping_add(self.offset);
        // SAFETY: `offset + len` lies inside the mirror (checked when the
        // range was made), the mirror is pinned host memory owned by the
        // region, and the calls using it hold the region until they finish.
        unsafe { RawBuf::new(ptr, self.len) }
    }
}

/// The GPU side of one collective group: its context, stream and regions.
pub struct DeviceMemory {
    ctx: Arc<GpuContext>,
    queue: GpuQueue,
    regions: Vec<Arc<DeviceRegion>>,
}

impl DeviceMemory {
    /// Captures the calling thread's current CUDA context (NCCL has made
    /// its device current) and creates this group's stream.
    pub fn new() -> NetResult<DeviceMemory> {
        let ctx = GpuContext::current()?;
        let queue = ctx.queue()?;
        Ok(DeviceMemory {
            ctx,
            queue,
            regions: Vec::new(),
        })
    }

    /// Registers `len` bytes of device memory at `ptr` and allocates its
    /// mirror. Returns the region's base, which identifies it.
    pub fn register(&mut self, ptr: usize, len: usize) -> NetResult<usize> {
        let mirror = self.ctx.alloc_pinned(len)?;
        self.regions.push(Arc::new(DeviceRegion {
            base: ptr,
            len,
            mirror,
        }));
        Ok(ptr)
    }

    /// Forgets a region; calls still using it keep its mirror alive.
    pub fn deregister(&mut self, base: usize) {
        if let Some(i) = self.regions.iter().position(|r| r.base == base) {
            self.regions.swap_remove(i);
        }
    }

    /// The registered device range holding `ptr..ptr+len`, if any.
    pub fn find(&self, ptr: usize, len: usize) -> Option<DeviceRange> {
        let region = self.regions.iter().find(|r| r.contains(ptr, len))?;
        Some(DeviceRange {
            region: Arc::clone(region),
            offset: ptr - region.base,
            len,
        })
    }

    /// Queues the copy of `range` to its mirror; the fence completes when
    /// the mirror holds the bytes.
    pub fn stage_in(&self, range: &DeviceRange) -> NetResult<Fence> {
        self.copy(range.mirror_addr(), range.device(), range.len)
    }

    /// Queues the copy of `range`'s mirror back to the device.
    pub fn stage_out(&self, range: &DeviceRange) -> NetResult<Fence> {
        self.copy(range.device(), range.mirror_addr(), range.len)
    }

    fn copy(&self, dst: DevAddr, src: DevAddr, len: usize) -> NetResult<Fence> {
        if len > 0 {
            self.queue.copy_async(dst, src, len)?;
        }
        Ok(self.queue.record()?)
    }
}

/// Where one of a call's buffers lies.
#[derive(Clone)]
pub enum Place {
    Host(RawBuf),
    Device(DeviceRange),
}

impl Place {
    /// The memory host code works on: the buffer itself, or its mirror.
    pub fn host_view(&self) -> RawBuf {
        match self {
            Place::Host(b) => *b,
            Place::Device(r) => r.mirror(),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Place::Host(b) => b.len(),
            Place::Device(r) => r.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first `len` bytes (all of them if `len` is larger).
    pub fn prefix(&self, len: usize) -> Place {
        match self {
            Place::Host(b) => Place::Host(b.prefix(len)),
            Place::Device(r) => Place::Device(DeviceRange {
                len: len.min(r.len),
                ..r.clone()
            }),
        }
    }
}
