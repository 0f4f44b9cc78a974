//! The CUDA layer (placeholder until the driver bindings land): reports no
//! GPU, so the collective network offers host buffers only.

use std::fmt;
use std::sync::Arc;

/// A CUDA failure.
#[derive(Clone, Debug)]
pub struct GpuError(pub String);

impl fmt::Display for GpuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<GpuError> for crate::error::NetError {
    fn from(e: GpuError) -> Self {
        crate::error::NetError::Internal(format!("CUDA: {e}"))
    }
}

/// A device (or UVA) address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DevAddr(pub u64);

impl DevAddr {
    /// `self + bytes`.
    pub fn offset(self, bytes: usize) -> DevAddr {
        DevAddr(self.0 + bytes as u64)
    }
}

pub fn available() -> bool {
    false
}

pub struct GpuContext;
pub struct GpuQueue;
pub struct PinnedBuf;
pub struct Fence;

fn none() -> GpuError {
    GpuError("no CUDA driver in this build".into())
}

impl GpuContext {
    pub fn current() -> Result<Arc<GpuContext>, GpuError> {
        Err(none())
    }
    pub fn queue(&self) -> Result<GpuQueue, GpuError> {
        Err(none())
    }
    pub fn alloc_pinned(&self, _bytes: usize) -> Result<PinnedBuf, GpuError> {
        Err(none())
    }
}

/// Element type of a kernel's native side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elem {
    F32,
    F16,
    Bf16,
}

impl GpuQueue {
    pub fn encode(
        &self,
        _fmt: crate::codec::WireFormat,
        _elem: Elem,
        _src: DevAddr,
        _n: usize,
        _wire: DevAddr,
    ) -> Result<(), GpuError> {
        Err(none())
    }
    pub fn decode(
        &self,
        _fmt: crate::codec::WireFormat,
        _elem: Elem,
        _wire: DevAddr,
        _n: usize,
        _dst: DevAddr,
    ) -> Result<(), GpuError> {
        Err(none())
    }
    #[allow(clippy::too_many_arguments)]
    pub fn reduce_encode(
        &self,
        _fmt: crate::codec::WireFormat,
        _elem: Elem,
        _members: usize,
        _own_index: usize,
        _own_src: DevAddr,
        _wire_table: DevAddr,
        _n: usize,
        _wire_out: DevAddr,
        _dst: DevAddr,
    ) -> Result<(), GpuError> {
        Err(none())
    }
    pub fn copy_async(&self, _dst: DevAddr, _src: DevAddr, _bytes: usize) -> Result<(), GpuError> {
        Err(none())
    }
    pub fn record(&self) -> Result<Fence, GpuError> {
        Err(none())
    }
}

impl PinnedBuf {
    pub fn len(&self) -> usize {
        0
    }
    pub fn is_empty(&self) -> bool {
        true
    }
    pub fn as_ptr(&self) -> *mut u8 {
        std::ptr::null_mut()
    }
    pub fn device_addr(&self, _offset: usize) -> DevAddr {
        DevAddr(0)
    }
}

impl Fence {
    pub fn is_complete(&self) -> Result<bool, GpuError> {
        Err(none())
    }
    pub fn wait_blocking(&self) -> Result<(), GpuError> {
        Err(none())
    }
}

pub fn is_device_pointer(_ptr: usize) -> bool {
    false
}
