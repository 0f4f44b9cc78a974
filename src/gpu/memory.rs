//! Memory the GPU layer allocates: pinned mapped host staging and device
//! buffers. Both are freed on drop (close time, never the data path).

use std::collections::HashSet;
use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::context::GpuContext;
use super::driver;
use super::error::GpuError;
use super::DevAddr;
use crate::metrics;

/// Page-locked host memory, mapped into the device's address space
/// (`cuMemHostAlloc(PORTABLE | DEVICEMAP)`). Kernels read and write it
/// directly over PCIe through [`PinnedBuf::device_addr`]; the TCP transport
/// sends and receives from [`PinnedBuf::as_ptr`].
#[derive(Debug)]
pub struct PinnedBuf {
    ctx: Arc<GpuContext>,
    host: usize,
    dev: u64,
    len: usize,
}

impl PinnedBuf {
    pub(crate) fn new(ctx: Arc<GpuContext>, len: usize) -> Result<PinnedBuf, GpuError> {
        // A zero-byte request still gets a real allocation (one byte), so
        // the pointers are valid.
        let (host, dev) = driver::mem_host_alloc(len.max(1))?;
        Ok(PinnedBuf {
            ctx,
            host,
            dev,
            len,
        })
    }

    /// Host address of the first byte. Reading or writing bytes that GPU
    /// work still in flight touches gives unspecified contents: wait for
    /// that work's [`super::Fence`] first.
    pub fn as_ptr(&self) -> *mut u8 {
        self.host as *mut u8
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Device address of byte `offset` (`offset <= len`).
    pub fn device_addr(&self, offset: usize) -> Result<DevAddr, GpuError> {
        if offset > self.len {
            return Err(GpuError::InvalidArgument(format!(
                "offset {offset} beyond pinned buffer of {} bytes",
                self.len
            )));
        }
        Ok(DevAddr(self.dev + offset as u64))
    }

    /// Copies `src` into the buffer at `offset` (host side). No GPU work
    /// touching those bytes may be in flight.
    pub fn write(&mut self, offset: usize, src: &[u8]) -> Result<(), GpuError> {
        self.check_range(offset, src.len())?;
        // SAFETY: the range is inside the allocation (checked); `&mut self`
        // excludes other host access through this buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.as_ptr().add(offset), src.len())
        };
        Ok(())
    }

    /// Copies bytes at `offset` out of the buffer (host side). No GPU work
    /// writing those bytes may be in flight.
    pub fn read(&self, offset: usize, dst: &mut [u8]) -> Result<(), GpuError> {
        self.check_range(offset, dst.len())?;
        // SAFETY: the range is inside the allocation (checked); `dst` is a
        // distinct Rust buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(self.as_ptr().add(offset), dst.as_mut_ptr(), dst.len())
        };
        Ok(())
    }

    fn check_range(&self, offset: usize, len: usize) -> Result<(), GpuError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(GpuError::InvalidArgument(format!(
                "range {offset}+{len} beyond pinned buffer of {} bytes",
                self.len
            ))),
        }
    }
}

impl Drop for PinnedBuf {
    fn drop(&mut self) {
        let _bound = self.ctx.bind();
        driver::mem_free_host(self.host);
    }
}

/// Device memory (`cuMemAlloc`).
#[derive(Debug)]
pub struct DeviceBuf {
    ctx: Arc<GpuContext>,
    addr: u64,
    len: usize,
}

impl DeviceBuf {
    pub(crate) fn new(ctx: Arc<GpuContext>, len: usize) -> Result<DeviceBuf, GpuError> {
        let addr = driver::mem_alloc(len.max(1))?;
        Ok(DeviceBuf { ctx, addr, len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Device address of byte `offset` (`offset <= len`).
    pub fn device_addr(&self, offset: usize) -> Result<DevAddr, GpuError> {
        if offset > self.len {
            return Err(GpuError::InvalidArgument(format!(
                "offset {offset} beyond device buffer of {} bytes",
                self.len
            )));
        }
        Ok(DevAddr(self.addr + offset as u64))
    }
}

impl Drop for DeviceBuf {
    fn drop(&mut self) {
        let _bound = self.ctx.bind();
        driver::mem_free(self.addr);
    }
}

/// Pinned host memory held as mirrors, against a limit: a mirror reserves
/// its size before it is allocated and gives it back when it is freed, so
/// concurrent registrations never pass the limit together.
#[derive(Debug, Default)]
pub(crate) struct MirrorBudget {
    held: AtomicUsize,
    /// Ranges refused since they last fitted (address, length): NCCL asks
    /// again for a user buffer at every collective that uses it, and only
    /// the first refusal of each is worth a warning. At most
    /// [`MAX_REFUSED`] are remembered.
    refused: Mutex<HashSet<(usize, usize)>>,
}

/// Refused ranges remembered; past that the memory starts over (and the
/// next refusal of each warns again).
const MAX_REFUSED: usize = 4096;

impl MirrorBudget {
    /// Reserves `len` bytes for the mirror of `range` if the total stays
    /// within `limit`.
    pub(crate) fn reserve(
        &self,
        range: (usize, usize),
        limit: usize,
    ) -> Result<MirrorReservation<'_>, GpuError> {
        let len = range.1;
        let reserved = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(len).filter(|&total| total <= limit)
            });
        let mut refused = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
        match reserved {
            Ok(_) => {
                refused.remove(&range);
                Ok(MirrorReservation { budget: self, len })
            }
            Err(held) => {
                if refused.len() >= MAX_REFUSED {
                    refused.clear();
                }
                Err(GpuError::OverMirrorBudget {
                    wanted: len,
                    held,
                    budget: limit,
                    repeat: !refused.insert(range),
                })
            }
        }
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

/// Bytes reserved in a [`MirrorBudget`], given back on drop.
#[derive(Debug)]
pub(crate) struct MirrorReservation<'a> {
    budget: &'a MirrorBudget,
    len: usize,
}

impl Drop for MirrorReservation<'_> {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.len, Ordering::AcqRel);
    }
}

/// The process's mirrors of registered GPU buffers (`gpu.mirror_budget`).
static MIRRORS: std::sync::LazyLock<MirrorBudget> = std::sync::LazyLock::new(MirrorBudget::default);

/// A pinned host mirror of a registered GPU buffer, counted in the
/// process's mirror budget until it is freed.
#[derive(Debug)]
pub struct Mirror {
    buf: PinnedBuf,
    _reserved: MirrorReservation<'static>,
}

impl Mirror {
    pub(crate) fn new(
        ctx: &Arc<GpuContext>,
        base: usize,
        len: usize,
        budget: usize,
    ) -> Result<Mirror, GpuError> {
        let reserved = MIRRORS.reserve((base, len), budget).inspect_err(|_| {
            metrics::collnet().gpu_mirror_refused();
        })?;
        let buf = ctx.alloc_pinned(len)?;
        metrics::collnet().gpu_mirrors(len as i64);
        Ok(Mirror {
            buf,
            _reserved: reserved,
        })
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        metrics::collnet().gpu_mirrors(-(self.buf.len() as i64));
    }
}

impl Deref for Mirror {
    type Target = PinnedBuf;

    fn deref(&self) -> &PinnedBuf {
        &self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stay_within_the_limit_and_come_back_on_drop() {
        let budget = MirrorBudget::default();
        let a = budget.reserve((0x1000, 600), 1000).expect("fits");
        let refused = budget.reserve((0x9000, 500), 1000).unwrap_err();
        assert_eq!(
            refused,
            GpuError::OverMirrorBudget {
                wanted: 500,
                held: 600,
                budget: 1000,
                repeat: false
            }
        );
        // The same range again is a repeat; another range is not.
        assert!(matches!(
            budget.reserve((0x9000, 500), 1000),
            Err(GpuError::OverMirrorBudget { repeat: true, .. })
        ));
        assert!(matches!(
            budget.reserve((0xa000, 500), 1000),
            Err(GpuError::OverMirrorBudget { repeat: false, .. })
        ));
        let b = budget
            .reserve((0xb000, 400), 1000)
            .expect("exactly at the limit");
        assert_eq!(budget.held(), 1000);
        drop(a);
        assert_eq!(budget.held(), 400);
        let c = budget
            .reserve((0x9000, 500), 1000)
            .expect("fits once a mirror is freed");
        // Once it fitted, a later refusal of that range warns again.
        assert!(matches!(
            budget.reserve((0x9000, 500), 1000),
            Err(GpuError::OverMirrorBudget { repeat: false, .. })
        ));
        drop((b, c));
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn a_zero_budget_refuses_every_mirror_and_sizes_never_overflow() {
        let budget = MirrorBudget::default();
        assert!(budget.reserve((1, 1), 0).is_err());
        let _full = budget
            .reserve((2, usize::MAX - 1), usize::MAX)
            .expect("fits");
        assert!(budget.reserve((3, 2), usize::MAX).is_err());
    }

    #[test]
    fn concurrent_reservations_never_pass_the_limit() {
        let budget = MirrorBudget::default();
        let granted = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for t in 0..8 {
                let (budget, granted) = (&budget, &granted);
                s.spawn(move || {
                    for i in 0..1000 {
                        if let Ok(r) = budget.reserve((t * 10_000 + i, 300), 1000) {
                            granted.fetch_add(1, Ordering::Relaxed);
                            assert!(budget.held() <= 1000);
                            drop(r);
                        }
                    }
                });
            }
        });
        assert!(granted.load(Ordering::Relaxed) > 0);
        assert_eq!(budget.held(), 0);
    }
}
