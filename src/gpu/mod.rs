//! The CUDA layer of the collective network: block-scaled codec kernels
//! (FP8 E4M3/E5M2 and INT8, `cuda/codec.cu`) compiled with NVRTC and
//! launched through the CUDA driver API, both loaded at run time through
//! cudarc (no link-time CUDA: the plugin loads on hosts without a GPU, and
//! [`available`] is then `false`).
//!
//! # API
//! ```text
//! gpu::available() -> bool                      libcuda loads, cuInit works, >= 1 device (cached)
//! gpu::is_device_pointer(addr) -> bool          CU_POINTER_ATTRIBUTE_MEMORY_TYPE == DEVICE
//! gpu::devices_without_mps() -> Vec<i32>        devices whose contexts take turns (no MPS)
//! GpuContext::current() -> Arc<GpuContext>      airamp's own context on this device + kernels
//!   .queue() -> GpuQueue                        own non-blocking stream + event pool
//!   .alloc_pinned(bytes) -> PinnedBuf           mapped pinned host memory (host ptr + device addr)
//!   .alloc_device(bytes) -> DeviceBuf           device memory
//! GpuQueue (all asynchronous, nothing synchronizes)
//!   .encode(fmt, elem, src, n, wire)            wire = ceil(n/32) scales (1 byte FP8, 2 INT8), n codes
//!   .decode(fmt, elem, wire, n, dst)            narrowed with round-to-nearest-even
//!   .reduce_encode(fmt, elem, &Fold)            the owner's fold (collnet Reducer, compressed)
//!   .reduce_exact(elem, &Fold)                  the exact path's fold (sums of floats)
//!   .copy_async(dst, src, bytes)                copy kernel, any direction
//!   .record() -> Fence                          Fence::is_complete() polls cuEventQuery
//! ```
//! Results are bit-identical to the CPU codec and reducer
//! ([`reference`]); `airamp gpu selftest` checks it on a GPU host.
//!
//! # Threads and contexts
//! [`GpuContext::current`] returns airamp's own CUDA context on the device
//! of the calling thread's current context (created once per device with
//! `cuCtxCreate`; NCCL's threads have the application's context current).
//! In a context of its own, kernel launches and event records never wait
//! on the driver lock an application thread holds during a pageable copy
//! (the GPU path's old deadlock), and the application's synchronize/free
//! never wait for airamp's work. Driver copies do wait on that lock in any
//! context, so the layer copies with a kernel. Every method binds that
//! context on the calling thread and restores the caller's afterwards.
//! The first call per device and options compiles the kernels (cached per
//! architecture) and loads them: make it at connect/regMr time.
//!
//! On NCCL's progress thread use only queue methods and
//! [`Fence::is_complete`]: they enqueue work or query an event and return.
//! Allocation, queue creation and drop belong to setup and close.
//!
//! # Failing soft
//! No libcuda, no device, no NVRTC or a failed compile are all
//! [`GpuError`]s: the caller logs one warning and keeps the host path.

mod context;
mod driver;
mod error;
#[cfg(any(test, feature = "tools"))]
pub mod inputs;
mod memory;
pub mod nvrtc;
mod queue;
pub mod reference;

use std::sync::OnceLock;

pub use context::GpuContext;
pub use error::GpuError;
pub use memory::{DeviceBuf, Mirror, PinnedBuf};
pub use queue::{Fence, Fold, GpuQueue, TimingMark, MAX_MEMBERS};

/// A device-visible address (device memory, or mapped pinned host memory:
/// with unified addressing both are plain 64-bit addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DevAddr(pub u64);

impl DevAddr {
    /// `self + bytes`.
    pub fn offset(self, bytes: usize) -> DevAddr {
        DevAddr(self.0 + bytes as u64)
    }
}

/// Element types of the kernels (the compressed path's and the exact
/// sum's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Elem {
    F32,
    F16,
    Bf16,
}

impl Elem {
    pub const ALL: [Elem; 3] = [Elem::F32, Elem::F16, Elem::Bf16];

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Elem::F32 => 4,
            Elem::F16 | Elem::Bf16 => 2,
        }
    }

    /// Name used in kernel names and output.
    pub fn name(self) -> &'static str {
        match self {
            Elem::F32 => "f32",
            Elem::F16 => "f16",
            Elem::Bf16 => "bf16",
        }
    }
}

/// Compile-time choices for the kernels (NVRTC defines). The default is
/// what the plugin uses; the others exist for the selftest and benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KernelOptions {
    /// Never use the sm_89+ FP8 conversion instruction (the sm_80 path).
    pub soft_fp8: bool,
    /// 32-value blocks per warp per loop step (even, 2..=32; a multiple of
    /// 8 with `vector`): more blocks keep more loads in flight, fewer use
    /// fewer registers.
    pub tile_blocks: u32,
    /// Eight consecutive values per lane with 16-byte element loads/stores
    /// and aligned 8-byte code words, when the element buffers are 16-byte
    /// aligned (otherwise, and for message tails, one value per lane per
    /// block, which works at any alignment).
    pub vector: bool,
}

impl Default for KernelOptions {
    fn default() -> Self {
        KernelOptions {
            soft_fp8: false,
            tile_blocks: 16,
            vector: true,
        }
    }
}

impl KernelOptions {
    fn validate(&self) -> Result<(), GpuError> {
        let step = if self.vector { 8 } else { 2 };
        if self.tile_blocks.is_multiple_of(step) && (2..=32).contains(&self.tile_blocks) {
            Ok(())
        } else {
            Err(GpuError::InvalidArgument(format!(
                "tile_blocks {} (a multiple of {step} in 2..=32)",
                self.tile_blocks
            )))
        }
    }
}

/// Whether a CUDA driver with at least one device is usable (cached; never
/// panics, also without libcuda).
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| driver::init().is_ok())
}

/// Why [`available`] is false (`None` when it is true).
pub fn unavailable_reason() -> Option<GpuError> {
    driver::init().err()
}

/// Whether `addr` is CUDA device memory. Plain host memory (unknown to the
/// driver) and pinned host memory are not. NCCL may hand a host pointer
/// with a GPU memory handle, so classify by pointer.
pub fn is_device_pointer(addr: usize) -> bool {
    available() && driver::memory_type(addr as u64) == Some(driver::MEMORY_TYPE_DEVICE)
}

/// Devices on which contexts are not shared through MPS
/// (`CU_DEVICE_ATTRIBUTE_MPS_ENABLED` = 0). Without MPS, kernels of two
/// contexts never run at the same time on one GPU (CUDA programming guide),
/// so airamp's context takes turns with the application's. A device whose
/// driver cannot say is not listed.
pub fn devices_without_mps() -> Result<Vec<i32>, GpuError> {
    driver::init()?;
    let mut without = Vec::new();
    for device in 0..driver::device_count()? {
        if driver::device_attribute(
            device,
            cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MPS_ENABLED,
        ) == Ok(0)
        {
            without.push(device);
        }
    }
    Ok(without)
}

/// CUDA driver version (e.g. 13000), when available.
pub fn driver_version() -> Result<i32, GpuError> {
    driver::init()?;
    driver::driver_version()
}

/// Device `ordinal`'s primary context, retained and made current on this
/// thread until the guard drops. For tools and tests (the `airamp gpu`
/// commands); inside NCCL the context is already current.
#[derive(Debug)]
pub struct PrimaryContext {
    device: i32,
}

impl PrimaryContext {
    pub fn bind(ordinal: i32) -> Result<PrimaryContext, GpuError> {
        driver::init()?;
        let (_, device) = driver::retain_primary_context(ordinal)?;
        Ok(PrimaryContext { device })
    }
}

impl Drop for PrimaryContext {
    fn drop(&mut self) {
        let _ = driver::release_primary_context(self.device);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a host without CUDA (CI) the probe fails soft, and repeatedly.
    /// On a GPU host it is simply true; both are valid outcomes here, the
    /// point is that neither call panics and the two agree.
    #[test]
    fn availability_probe_never_panics_and_is_consistent() {
        let a = available();
        assert_eq!(a, unavailable_reason().is_none());
        assert_eq!(a, available());
        if !a {
            assert!(!is_device_pointer(&a as *const bool as usize));
            assert!(matches!(
                GpuContext::current(),
                Err(GpuError::Unavailable(_))
            ));
        }
    }

    #[test]
    fn kernel_options_validate_tile_size() {
        assert!(KernelOptions::default().validate().is_ok());
        for bad in [0, 1, 3, 34] {
            let o = KernelOptions {
                tile_blocks: bad,
                ..KernelOptions::default()
            };
            assert!(o.validate().is_err(), "{bad}");
        }
        let strided = |tile_blocks| KernelOptions {
            tile_blocks,
            vector: false,
            ..KernelOptions::default()
        };
        assert!(strided(6).validate().is_ok());
        assert!(KernelOptions {
            vector: true,
            ..strided(6)
        }
        .validate()
        .is_err());
    }
}
