//! NCCL's GPU buffers on the collective network.
//!
//! With GPUDirect, NCCL registers each half of its collective-network
//! buffer (`regMr(NCCL_PTR_CUDA)`) and passes pointers into them to every
//! call. The group gets one non-blocking stream and a pinned staging arena
//! for the codec kernels' slots ([`SlotPool`]) at its first registration,
//! and every registered region a pinned host *mirror* of the same size, all
//! allocated at registration (never on the data path). A call that the
//! kernels do not run and whose buffers are device memory is *staged*: its
//! input range is copied to the mirror asynchronously, the host steps run
//! on the mirror, and its output range is copied back; the call completes
//! only once the copy back's event has completed. Nothing here blocks:
//! copies are queued, completion is an event query.
//!
//! Memory is identified by pointer (the registered ranges), not by the
//! handle NCCL passes along, which may come from the other side's view.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use crate::error::NetResult;
use crate::gpu::{self, DevAddr, Fence, GpuContext, GpuQueue, Mirror, PinnedBuf};
use crate::sys::RawBuf;
use crate::{config, metrics};

/// Whether the collective network offers NCCL GPU buffers: configured on,
/// and a CUDA driver and the kernels' compiler load in this process (a GPU
/// buffer could not be registered without them). Logged once either way.
pub fn offers_gpu_buffers() -> bool {
    static OFFERS: OnceLock<bool> = OnceLock::new();
    *OFFERS.get_or_init(|| {
        if !config::global().gpu.collnet {
            return false;
        }
        let why_not = if gpu::available() {
            gpu::nvrtc::load().err().map(|e| e.to_string())
        } else {
            Some(gpu::unavailable_reason().map_or("no CUDA driver".into(), |e| e.to_string()))
        };
        match why_not {
            None => {
                crate::info!(
                    crate::log::SUBSYS_INIT,
                    "collnet: offering NCCL GPU buffers (gpu.collnet): compressed allreduce (FP8, INT8) and exact float sums run as CUDA kernels in a CUDA context of airamp's own (GPU memory per process: about 63 MiB under MPS with gpu.sms = 16, about 270 MiB without MPS; docs/gpu.md)"
                );
                warn_without_mps();
                true
            }
            Some(why) => {
                crate::warn!(
                    "collnet: gpu.collnet is on, but the GPU path cannot run here ({why}): NCCL gets host buffers"
                );
                false
            }
        }
    })
}

/// Without MPS the GPU takes turns between airamp's context and the
/// application's, whose NCCL kernel stays resident for the whole
/// collective: airamp's kernels then wait for a time slice. Measured on
/// two H200s, one rank per GPU: FP8 on GPU kernels at 0.34-0.49x Ring on
/// loopback, against 1.6-1.8x with MPS (docs/results/multigpu-h200x2.md).
fn warn_without_mps() {
    let devices = gpu::devices_without_mps().unwrap_or_default();
    if !devices.is_empty() {
        crate::warn!(
            "collnet: MPS is not enabled on GPU(s) {devices:?}: airamp's kernels and NCCL's take turns on the GPU, and the GPU path runs at a fraction of its speed (measured 0.34-0.49x Ring unshaped); start the MPS daemon (nvidia-cuda-mps-control -d) on GPU hosts that use gpu.collnet (docs/gpu.md)"
        );
    }
}

/// One registered device range and its host mirror.
pub struct DeviceRegion {
    base: usize,
    len: usize,
    mirror: Mirror,
    /// The mirror's device-visible address.
    mirror_addr: DevAddr,
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

    pub fn device(&self) -> DevAddr {
        DevAddr(self.region.base as u64 + self.offset as u64)
    }

    fn mirror_addr(&self) -> DevAddr {
        self.region.mirror_addr.offset(self.offset)
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

/// A fixed-size piece of the group's pinned staging arena: where GPU
/// kernels write compressed bytes for the wire and read received ones.
/// Clones share the slot (a reduced shard goes to every other member); it
/// goes back to the pool when the last of them is dropped. Neither a clone
/// nor a drop allocates: the slot's holders are counted in the arena.
pub struct PinnedSlot {
    arena: Arc<Arena>,
    offset: usize,
    len: usize,
}

/// The pinned staging arena behind a [`SlotPool`] and its slots.
struct Arena {
    buf: PinnedBuf,
    /// The arena's device-visible address.
    addr: DevAddr,
    slot_bytes: usize,
    /// Offsets of the free slots (room for every slot, allocated once).
    free: Mutex<Vec<usize>>,
    /// Handles alive per slot.
    holders: Box<[AtomicUsize]>,
}

impl Arena {
    fn holders(&self, offset: usize) -> &AtomicUsize {
        &self.holders[offset / self.slot_bytes]
    }
}

impl PinnedSlot {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.arena.buf.as_ptr().wrapping_add(self.offset)
    }

    /// The address kernels use for this slot.
    pub fn device_addr(&self) -> DevAddr {
        self.arena.addr.offset(self.offset)
    }

    /// Shortens the slot to its first `len` bytes.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Writes `values` at the start of the slot (a kernel's pointer table);
    /// no kernel may be using the slot, and it is not shared yet.
    pub fn write_u64s(&mut self, values: impl ExactSizeIterator<Item = u64>) {
        assert!(
            values.len() * 8 <= self.len,
            "pointer table larger than its slot"
        );
        assert_eq!(
            self.arena.holders(self.offset).load(Ordering::Acquire),
            1,
            "a shared slot is only read"
        );
        for (i, v) in values.enumerate() {
            // SAFETY: in bounds (asserted), pinned host memory owned by this
            // slot, which no kernel uses until the caller launches one.
            unsafe { self.as_ptr().add(i * 8).cast::<u64>().write_unaligned(v) };
        }
    }
}

impl Clone for PinnedSlot {
    fn clone(&self) -> Self {
        self.arena
            .holders(self.offset)
            .fetch_add(1, Ordering::Relaxed);
        PinnedSlot {
            arena: Arc::clone(&self.arena),
            offset: self.offset,
            len: self.len,
        }
    }
}

impl fmt::Debug for PinnedSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PinnedSlot(+{}, {} bytes)", self.offset, self.len)
    }
}

impl Drop for PinnedSlot {
    fn drop(&mut self) {
        // The last handle frees the slot (AcqRel: every other handle's use
        // happens before the slot is handed out again).
        if self
            .arena
            .holders(self.offset)
            .fetch_sub(1, Ordering::AcqRel)
            == 1
        {
            let mut free = self
                .arena
                .free
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            debug_assert!(free.len() < self.arena.holders.len(), "a slot freed twice");
            free.push(self.offset);
        }
    }
}

/// The group's pinned staging arena, cut into equal slots. Allocated once
/// (at the first GPU registration), so the data path never allocates or
/// registers memory.
pub struct SlotPool {
    arena: Arc<Arena>,
}

impl SlotPool {
    fn new(ctx: &Arc<GpuContext>, slot_bytes: usize, slots: usize) -> NetResult<SlotPool> {
        let buf = ctx.alloc_pinned(slot_bytes * slots)?;
        let addr = buf.device_addr(0)?;
        Ok(SlotPool {
            arena: Arc::new(Arena {
                buf,
                addr,
                slot_bytes,
                free: Mutex::new((0..slots).rev().map(|i| i * slot_bytes).collect()),
                holders: (0..slots).map(|_| AtomicUsize::new(0)).collect(),
            }),
        })
    }

    fn arena_len(&self) -> usize {
        self.arena.buf.len()
    }

    /// Free slots now.
    pub fn available(&self) -> usize {
        self.arena.free.lock().map_or(0, |f| f.len())
    }

    /// A slot of `len` bytes (`len <= slot_bytes`), if one is free.
    pub fn take(&self, len: usize) -> Option<PinnedSlot> {
        if len > self.arena.slot_bytes {
            return None;
        }
        let offset = self.arena.free.lock().ok()?.pop()?;
        // Free, so nobody else holds it.
        self.arena.holders(offset).store(1, Ordering::Relaxed);
        Some(PinnedSlot {
            arena: Arc::clone(&self.arena),
            offset,
            len,
        })
    }
}

/// The GPU side of one collective group: its context, stream, regions and
/// pinned staging slots.
pub struct DeviceMemory {
    ctx: Arc<GpuContext>,
    queue: GpuQueue,
    /// Registered regions and how many registrations each has: NCCL
    /// registers the same buffer once per connection, and they share one
    /// mirror.
    regions: Vec<(Arc<DeviceRegion>, usize)>,
    slots: SlotPool,
}

impl DeviceMemory {
    /// Takes airamp's CUDA context on the calling thread's device (NCCL has
    /// made its device current), creates this group's stream with `fences`
    /// events ready and its staging slots: `slots` of `slot_bytes` each.
    pub fn new(slot_bytes: usize, slots: usize, fences: usize) -> NetResult<DeviceMemory> {
        let ctx = GpuContext::current()?;
        let queue = ctx.queue()?;
        queue.reserve_events(fences)?;
        let slots = SlotPool::new(&ctx, slot_bytes, slots)?;
        metrics::collnet().gpu_pinned(slots.arena_len() as i64);
        Ok(DeviceMemory {
            ctx,
            queue,
            regions: Vec::new(),
            slots,
        })
    }

    pub fn queue(&self) -> &GpuQueue {
        &self.queue
    }

    pub fn slots(&self) -> &SlotPool {
        &self.slots
    }

    /// Pinned host bytes this group holds: mirrors and staging slots.
    pub fn pinned_bytes(&self) -> usize {
        self.regions.iter().map(|(r, _)| r.len).sum::<usize>() + self.slots.arena_len()
    }

    /// Registers `len` bytes of device memory at `ptr` and allocates its
    /// mirror (or counts one more registration of the same range). Returns
    /// the region's base, which identifies it.
    pub fn register(&mut self, ptr: usize, len: usize) -> NetResult<usize> {
        if let Some((_, refs)) = self
            .regions
            .iter_mut()
            .find(|(r, _)| r.base == ptr && r.len == len)
        {
            *refs += 1;
            return Ok(ptr);
        }
        let mirror = Mirror::new(&self.ctx, ptr, len, config::global().gpu.mirror_budget)?;
        let mirror_addr = mirror.device_addr(0)?;
        metrics::collnet().gpu_pinned(len as i64);
        let region = Arc::new(DeviceRegion {
            base: ptr,
            len,
            mirror,
            mirror_addr,
        });
        self.regions.push((region, 1));
        Ok(ptr)
    }

    /// Drops one registration of a region; the last forgets it (calls
    /// still using it keep its mirror alive).
    pub fn deregister(&mut self, base: usize) {
        let Some(i) = self.regions.iter().position(|(r, _)| r.base == base) else {
            return;
        };
        self.regions[i].1 -= 1;
        if self.regions[i].1 == 0 {
            let (r, _) = self.regions.swap_remove(i);
            metrics::collnet().gpu_pinned(-(r.len as i64));
        }
    }

    /// The registered device range holding `ptr..ptr+len`, if any.
    pub fn find(&self, ptr: usize, len: usize) -> Option<DeviceRange> {
        let (region, _) = self.regions.iter().find(|(r, _)| r.contains(ptr, len))?;
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

impl Drop for DeviceMemory {
    /// At close (never on the data path): waits for this group's stream, so
    /// no kernel or copy still uses a slot or mirror when they are freed
    /// (the group drops its steps and calls after this).
    fn drop(&mut self) {
        if let Err(e) = self.queue.synchronize() {
            crate::warn!("collnet: waiting for the GPU stream at close: {e}");
        }
        metrics::collnet().gpu_pinned(-(self.pinned_bytes() as i64));
    }
}
