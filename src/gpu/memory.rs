//! Memory the GPU layer allocates: pinned mapped host staging and device
//! buffers. Both are freed on drop (close time, never the data path).

use std::sync::Arc;

use super::context::GpuContext;
use super::driver;
use super::error::GpuError;
use super::DevAddr;

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
