//! A stream of asynchronous GPU work: codec kernels, copies, and fences to
//! poll. Nothing here blocks or synchronizes, except the benchmark helper
//! [`TimingMark::elapsed_ms`].

use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use super::context::{GpuContext, Kernel, Op, THREADS};
use super::driver;
use super::error::GpuError;
use super::{DevAddr, Elem};
use crate::codec::WireFormat;

/// Events made when the queue is created; more are made on demand.
const INITIAL_EVENTS: usize = 64;
/// Most members [`GpuQueue::reduce_encode`] folds (the collective network's
/// largest group).
pub const MAX_MEMBERS: usize = 256;

/// Events ready for reuse, shared with the fences that hold the others.
type EventPool = Arc<Mutex<Vec<usize>>>;

/// Its own non-blocking stream (never waits on the default stream, never
/// makes NCCL's streams wait) and a pool of events without timing.
#[derive(Debug)]
pub struct GpuQueue {
    ctx: Arc<GpuContext>,
    stream: usize,
    events: EventPool,
}

/// The owner's fold of one shard (see [`GpuQueue::reduce_encode`]).
#[derive(Clone, Copy, Debug)]
pub struct Fold {
    /// Members contributing, 1..=256.
    pub members: usize,
    /// Which member is this owner (its element at `own_src` is folded
    /// natively, never quantized).
    pub own_index: usize,
    /// The owner's own `n` elements.
    pub own_src: DevAddr,
    /// `members` u64 device addresses, entry `m` pointing at member `m`'s
    /// wire bytes for the shard (the `own_index` entry is not read). Must be
    /// device-readable: device memory or mapped pinned memory.
    pub wire_table: DevAddr,
    /// Values in the shard.
    pub n: usize,
    /// Where the reduced shard's wire bytes go (`encoded_len(n)` bytes).
    pub wire_out: DevAddr,
    /// Where the owner's own output goes (`n` elements), decoded from
    /// `wire_out` exactly as receivers decode it.
    pub dst: DevAddr,
}

impl GpuQueue {
    pub(crate) fn new(ctx: Arc<GpuContext>) -> Result<GpuQueue, GpuError> {
        let stream = driver::stream_create()?;
        let queue = GpuQueue {
            ctx,
            stream,
            events: Arc::new(Mutex::new(Vec::with_capacity(INITIAL_EVENTS))),
        };
        queue.reserve_events(INITIAL_EVENTS)?;
        Ok(queue)
    }

    /// Makes sure `count` events are ready for fences, creating the missing
    /// ones now. Call it at setup with the most fences the caller holds at
    /// once: `record` creates one only when the pool is empty, and event
    /// creation is a driver call the data path should not make.
    pub fn reserve_events(&self, count: usize) -> Result<(), GpuError> {
        let _bound = self.ctx.bind()?;
        let mut pool = self.events.lock().unwrap_or_else(|p| p.into_inner());
        while pool.len() < count {
            // Into the pool one by one: on an error the queue's drop
            // destroys the ones made so far.
            pool.push(driver::event_create(false)?);
        }
        Ok(())
    }

    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    /// Queues `wire = encode(src[..n])` (`encoded_len(n)` bytes).
    pub fn encode(
        &self,
        fmt: WireFormat,
        elem: Elem,
        src: DevAddr,
        n: usize,
        wire: DevAddr,
    ) -> Result<(), GpuError> {
        if n == 0 {
            return Ok(());
        }
        non_null(&[("src", src), ("wire", wire)])?;
        let k = self.ctx.kernel(Op::Encode, fmt, elem);
        let (mut src, mut n64, mut wire) = (src.0, n as u64, wire.0);
        self.launch(k, self.warp_grid(k, n), |stride| {
            [
                (&mut src as *mut u64).cast(),
                (&mut n64 as *mut u64).cast(),
                (&mut wire as *mut u64).cast(),
                (stride as *mut u64).cast(),
            ]
        })
    }

    /// Queues `dst[..n] = decode(wire)`, narrowed to `elem` with
    /// round-to-nearest-even (as `Codec::decode_into`).
    pub fn decode(
        &self,
        fmt: WireFormat,
        elem: Elem,
        wire: DevAddr,
        n: usize,
        dst: DevAddr,
    ) -> Result<(), GpuError> {
        if n == 0 {
            return Ok(());
        }
        non_null(&[("wire", wire), ("dst", dst)])?;
        let k = self.ctx.kernel(Op::Decode, fmt, elem);
        let (mut wire, mut n64, mut dst) = (wire.0, n as u64, dst.0);
        self.launch(k, self.warp_grid(k, n), |stride| {
            [
                (&mut wire as *mut u64).cast(),
                (&mut n64 as *mut u64).cast(),
                (&mut dst as *mut u64).cast(),
                (stride as *mut u64).cast(),
            ]
        })
    }

    /// Queues the owner's fold of one shard, exactly as
    /// `collnet::algo::Reducer` does on the compressed path (FP8 or INT8):
    /// `acc = 0` in f32; for each member in order `acc += x_m` (the owner's
    /// own element widened, or member `m`'s wire decoded); then
    /// `wire_out = encode(acc)` and `dst = decode(wire_out)`.
    pub fn reduce_encode(&self, fmt: WireFormat, elem: Elem, fold: &Fold) -> Result<(), GpuError> {
        check_fold(fold)?;
        if fold.n == 0 {
            return Ok(());
        }
        let k = self.ctx.kernel(Op::ReduceEncode, fmt, elem);
        self.launch_fold(k, self.warp_grid(k, fold.n), fold)
    }

    /// Queues the owner's exact fold of one shard, as
    /// `collnet::algo::Reducer` does on the exact path for a sum: member
    /// 0's elements as they are (f32) or widened (f16/bf16), then `+ x_m`
    /// for every further member in order, in f32, narrowed once with
    /// round-to-nearest-even. `fold.wire_table` points at each member's raw
    /// elements (not wire bytes); the result goes to `fold.wire_out` (raw
    /// elements, for the other members) and to `fold.dst`.
    pub fn reduce_exact(&self, elem: Elem, fold: &Fold) -> Result<(), GpuError> {
        check_fold(fold)?;
        if fold.n == 0 {
            return Ok(());
        }
        let k = self.ctx.sum_exact_kernel(elem);
        self.launch_fold(
            k,
            thread_grid(fold.n, self.ctx.sm_count(), k.ctas_per_sm),
            fold,
        )
    }

    /// Queues a copy of `bytes` between any two addresses the device can
    /// reach (device memory, mapped pinned host memory), with the copy
    /// kernel: a driver copy (`cuMemcpyAsync`) waits on a lock that
    /// application threads hold while they wait for the GPU.
    pub fn copy_async(&self, dst: DevAddr, src: DevAddr, bytes: usize) -> Result<(), GpuError> {
        if bytes == 0 {
            return Ok(());
        }
        non_null(&[("dst", dst), ("src", src)])?;
        let k = self.ctx.copy_kernel();
        let grid = thread_grid(bytes.div_ceil(16), self.ctx.sm_count(), k.ctas_per_sm);
        let (mut src, mut dst, mut bytes) = (src.0, dst.0, bytes as u64);
        self.launch(k, grid, |stride| {
            [
                (&mut src as *mut u64).cast(),
                (&mut dst as *mut u64).cast(),
                (&mut bytes as *mut u64).cast(),
                (stride as *mut u64).cast(),
            ]
        })
    }

    /// Blocks until everything queued so far has completed. For close time
    /// only (freeing memory kernels may still use), never the data path.
    pub fn synchronize(&self) -> Result<(), GpuError> {
        let fence = self.record()?;
        let _bound = self.ctx.bind()?;
        driver::event_synchronize(fence.event)
    }

    /// A fence after everything queued so far.
    pub fn record(&self) -> Result<Fence, GpuError> {
        let _bound = self.ctx.bind()?;
        let pooled = self.events.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let event = match pooled {
            Some(e) => e,
            None => driver::event_create(false)?,
        };
        let fence = Fence {
            event,
            pool: self.events.clone(),
            ctx: self.ctx.clone(),
        };
        driver::event_record(event, self.stream)?;
        Ok(fence)
    }

    /// A timing event after everything queued so far (benchmarks).
    pub fn record_timing(&self) -> Result<TimingMark, GpuError> {
        let _bound = self.ctx.bind()?;
        let mark = TimingMark {
            event: driver::event_create(true)?,
            ctx: self.ctx.clone(),
        };
        driver::event_record(mark.event, self.stream)?;
        Ok(mark)
    }

    /// The grid of a codec kernel over `n` values: tiles, one per warp.
    fn warp_grid(&self, k: Kernel, n: usize) -> (u32, u64) {
        grid(
            n,
            self.ctx.options().tile_blocks,
            self.ctx.sm_count(),
            k.ctas_per_sm,
        )
    }

    /// Launches a fold kernel (`reduce_encode` or `sum_exact`: the same
    /// parameters) on `grid`.
    fn launch_fold(&self, k: Kernel, grid: (u32, u64), fold: &Fold) -> Result<(), GpuError> {
        let (mut own_src, mut table) = (fold.own_src.0, fold.wire_table.0);
        let (mut members, mut own) = (fold.members as u32, fold.own_index as u32);
        let (mut n64, mut wire_out, mut dst) = (fold.n as u64, fold.wire_out.0, fold.dst.0);
        self.launch(k, grid, |stride| {
            [
                (&mut own_src as *mut u64).cast(),
                (&mut table as *mut u64).cast(),
                (&mut members as *mut u32).cast(),
                (&mut own as *mut u32).cast(),
                (&mut n64 as *mut u64).cast(),
                (&mut wire_out as *mut u64).cast(),
                (&mut dst as *mut u64).cast(),
                (stride as *mut u64).cast(),
            ]
        })
    }

    /// Launches `k` on `grid` = (CTAs, grid-wide stride). `params(stride)`
    /// returns pointers to the kernel's arguments in order, the last being
    /// `stride` (an array: nothing is allocated per launch).
    fn launch<const N: usize>(
        &self,
        k: Kernel,
        grid: (u32, u64),
        params: impl FnOnce(&mut u64) -> [*mut c_void; N],
    ) -> Result<(), GpuError> {
        let _bound = self.ctx.bind()?;
        let (ctas, mut stride) = grid;
        let mut p = params(&mut stride);
        // SAFETY: `p` points at locals of the calling method that live across
        // this call, one per kernel parameter of exactly its type: u64 for
        // every address, count and stride, u32 for member count and own
        // index (the signatures in cuda/codec.cu). Addresses were checked
        // non-null; the caller keeps the memory alive until the work's fence
        // completes.
        unsafe { driver::launch(k.function, ctas, THREADS, self.stream, &mut p) }
    }
}

impl Drop for GpuQueue {
    fn drop(&mut self) {
        let _bound = self.ctx.bind();
        driver::stream_destroy(self.stream);
        for e in self
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            driver::event_destroy(e);
        }
    }
}

/// CTAs to launch for `n` values and the grid-wide stride in logical warps.
/// Tiles of `tile_blocks` blocks, one per warp; at most as many CTAs as fit
/// on the device at once (the kernels loop over the rest).
fn grid(n: usize, tile_blocks: u32, sm_count: u32, ctas_per_sm: u32) -> (u32, u64) {
    let warps_per_cta = (THREADS / 32) as usize;
    let tiles = crate::codec::num_blocks(n).div_ceil(tile_blocks as usize);
    let resident = (sm_count as usize) * (ctas_per_sm as usize);
    let ctas = tiles.div_ceil(warps_per_cta).clamp(1, resident.max(1));
    (ctas as u32, (ctas * warps_per_cta) as u64)
}

/// CTAs for `items` one-per-thread work items (at most as many CTAs as are
/// resident; the kernel loops over the rest) and the grid-wide stride in
/// threads. A copy's item is 16 bytes, an exact fold's one element.
fn thread_grid(items: usize, sm_count: u32, ctas_per_sm: u32) -> (u32, u64) {
    let resident = (sm_count as usize) * (ctas_per_sm as usize);
    let ctas = items.div_ceil(THREADS as usize).clamp(1, resident.max(1));
    (ctas as u32, (ctas * THREADS as usize) as u64)
}

fn check_fold(fold: &Fold) -> Result<(), GpuError> {
    if fold.members == 0 || fold.members > MAX_MEMBERS || fold.own_index >= fold.members {
        return Err(GpuError::InvalidArgument(format!(
            "fold: member {} of {} (1..={MAX_MEMBERS} members)",
            fold.own_index, fold.members
        )));
    }
    if fold.n == 0 {
        return Ok(());
    }
    non_null(&[
        ("own_src", fold.own_src),
        ("wire_table", fold.wire_table),
        ("wire_out", fold.wire_out),
        ("dst", fold.dst),
    ])
}

fn non_null(addrs: &[(&str, DevAddr)]) -> Result<(), GpuError> {
    match addrs.iter().find(|(_, a)| a.0 == 0) {
        Some((name, _)) => Err(GpuError::InvalidArgument(format!(
            "{name} is a null address"
        ))),
        None => Ok(()),
    }
}

/// Completion of the work queued before it. Polled with
/// [`Fence::is_complete`]; its event returns to the queue's pool on drop.
#[derive(Debug)]
pub struct Fence {
    event: usize,
    pool: EventPool,
    ctx: Arc<GpuContext>,
}

impl Fence {
    /// Whether the work is done (`cuEventQuery`; never blocks).
    pub fn is_complete(&self) -> Result<bool, GpuError> {
        let _bound = self.ctx.bind()?;
        driver::event_query(self.event)
    }
}

impl Drop for Fence {
    fn drop(&mut self) {
        self.pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(self.event);
    }
}

/// A timing event for benchmarks ([`GpuQueue::record_timing`]).
#[derive(Debug)]
pub struct TimingMark {
    event: usize,
    ctx: Arc<GpuContext>,
}

impl TimingMark {
    /// Milliseconds from `self` to `later`, blocking until `later` is done.
    pub fn elapsed_ms(&self, later: &TimingMark) -> Result<f32, GpuError> {
        let _bound = self.ctx.bind()?;
        driver::event_synchronize(later.event)?;
        driver::event_elapsed_ms(self.event, later.event)
    }
}

impl Drop for TimingMark {
    fn drop(&mut self) {
        let _bound = self.ctx.bind();
        driver::event_destroy(self.event);
    }
}

#[cfg(test)]
mod tests {
    use super::{grid, thread_grid};

    #[test]
    fn thread_grid_covers_every_item_resident_at_most() {
        assert_eq!(thread_grid(1, 132, 8), (1, 256));
        assert_eq!(thread_grid(256, 132, 8), (1, 256));
        assert_eq!(thread_grid(257, 132, 8), (2, 512));
        assert_eq!(thread_grid(1 << 30, 132, 8), (1056, 1056 * 256));
        assert_eq!(thread_grid(1 << 30, 1, 0), (1, 256));
    }

    #[test]
    fn grid_covers_every_tile_once_resident_at_most() {
        // 1 value: one tile, one CTA of 8 warps.
        assert_eq!(grid(1, 16, 132, 4), (1, 8));
        // Exactly 8 tiles of 16 blocks: one CTA.
        assert_eq!(grid(8 * 16 * 32, 16, 132, 4), (1, 8));
        // One more value: a ninth tile, a second CTA.
        assert_eq!(grid(8 * 16 * 32 + 1, 16, 132, 4), (2, 16));
        // Huge: capped at what is resident; the kernel strides over the rest.
        assert_eq!(grid(1 << 30, 16, 132, 4), (528, 528 * 8));
        // The occupancy query never yields 0 CTAs.
        assert_eq!(grid(1 << 30, 16, 1, 0), (1, 8));
    }
}
