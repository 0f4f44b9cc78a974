//! One CUDA context as the GPU layer sees it: the device, and the codec
//! kernels loaded into it (compiled once per architecture, loaded once per
//! context).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::sys::CUdevice_attribute as Attr;

use super::driver;
use super::error::GpuError;
use super::memory::{DeviceBuf, PinnedBuf};
use super::nvrtc;
use super::queue::GpuQueue;
use super::{Elem, KernelOptions};
use crate::codec::{Fp8, WireFormat};

/// Threads per CTA of every kernel (`THREADS` in cuda/codec.cu).
pub(crate) const THREADS: u32 = 256;

/// The three kernels, as indexed in [`Kernels`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Encode,
    Decode,
    ReduceEncode,
}

impl Op {
    const ALL: [Op; 3] = [Op::Encode, Op::Decode, Op::ReduceEncode];

    fn name(self) -> &'static str {
        match self {
            Op::Encode => "encode",
            Op::Decode => "decode",
            Op::ReduceEncode => "reduce_encode",
        }
    }
}

fn fmt_name(f: Fp8) -> &'static str {
    match f {
        Fp8::E4M3 => "e4m3",
        Fp8::E5M2 => "e5m2",
    }
}

/// One loaded kernel and how many of its CTAs fit on one SM.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Kernel {
    pub function: usize,
    pub ctas_per_sm: u32,
}

/// Handles of every kernel, by [op][format][element].
struct Kernels([[[Kernel; 3]; 2]; 3]);

const FORMATS: [Fp8; 2] = [Fp8::E4M3, Fp8::E5M2];

/// A CUDA context with the codec kernels loaded. Shared (`Arc`) by every
/// queue and buffer made from it; cached for the life of the process, so
/// its module is never unloaded.
pub struct GpuContext {
    ctx: usize,
    device: i32,
    name: String,
    capability: (u32, u32),
    sm_count: u32,
    options: KernelOptions,
    image_kind: &'static str,
    kernels: Kernels,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("device", &self.device)
            .field("name", &self.name)
            .field("capability", &self.capability)
            .field("options", &self.options)
            .finish()
    }
}

impl GpuContext {
    /// The context current on this thread, with the kernels loaded
    /// (default [`KernelOptions`]). NCCL's threads have it current (they
    /// called `cudaSetDevice`); this never creates or retains one. The
    /// first call per context compiles (per architecture) and loads the
    /// kernels: call it at connect/regMr time, not on the data path.
    pub fn current() -> Result<Arc<GpuContext>, GpuError> {
        GpuContext::current_with(KernelOptions::default())
    }

    /// As [`GpuContext::current`] with explicit kernel options (tests and
    /// benchmarks); each (context, options) pair is loaded once.
    pub fn current_with(options: KernelOptions) -> Result<Arc<GpuContext>, GpuError> {
        options.validate()?;
        driver::init()?;
        let ctx = driver::current_context()?.ok_or(GpuError::NoContext)?;
        type Registry = Mutex<HashMap<(usize, KernelOptions), Arc<GpuContext>>>;
        static REGISTRY: OnceLock<Registry> = OnceLock::new();
        let mut registry = REGISTRY
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(c) = registry.get(&(ctx, options)) {
            return Ok(c.clone());
        }
        let c = Arc::new(GpuContext::load(ctx, options)?);
        registry.insert((ctx, options), c.clone());
        Ok(c)
    }

    fn load(ctx: usize, options: KernelOptions) -> Result<GpuContext, GpuError> {
        let device = driver::current_device()?;
        let major =
            driver::device_attribute(device, Attr::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?
                as u32;
        let minor =
            driver::device_attribute(device, Attr::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?
                as u32;
        let sm_count = driver::device_attribute(
            device,
            Attr::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
        )?
        .max(1) as u32;
        let name = driver::device_name(device)?;
        let image = nvrtc::compile_for_device(major, minor, options)?;
        let module = driver::module_load(image.bytes())?;
        let mut table = [[[Kernel {
            function: 0,
            ctas_per_sm: 1,
        }; 3]; 2]; 3];
        for op in Op::ALL {
            for fmt in FORMATS {
                for elem in Elem::ALL {
                    let function = driver::module_function(
                        module,
                        &format!("airamp_{}_{}_{}", op.name(), fmt_name(fmt), elem.name()),
                    )?;
                    table[op as usize][fmt as usize][elem as usize] = Kernel {
                        function,
                        ctas_per_sm: driver::ctas_per_sm(function, THREADS)?,
                    };
                }
            }
        }
        crate::info!(
            crate::log::SUBSYS_INIT,
            "gpu: codec kernels loaded on device {device} ({name}, sm_{major}{minor}, {} {} bytes, options {options:?})",
            image.kind(),
            image.bytes().len()
        );
        Ok(GpuContext {
            ctx,
            device,
            name,
            capability: (major, minor),
            sm_count,
            options,
            image_kind: image.kind(),
            kernels: Kernels(table),
        })
    }

    /// CUDA device ordinal.
    pub fn device(&self) -> i32 {
        self.device
    }

    /// Device name, e.g. "NVIDIA H200".
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Compute capability `(major, minor)`.
    pub fn capability(&self) -> (u32, u32) {
        self.capability
    }

    pub fn sm_count(&self) -> u32 {
        self.sm_count
    }

    pub fn options(&self) -> KernelOptions {
        self.options
    }

    /// "cubin" or "ptx": what NVRTC produced for this device.
    pub fn image_kind(&self) -> &'static str {
        self.image_kind
    }

    /// A new queue (its own non-blocking stream and event pool).
    pub fn queue(self: &Arc<Self>) -> Result<GpuQueue, GpuError> {
        self.ensure_current()?;
        GpuQueue::new(self.clone())
    }

    /// `bytes` of pinned host memory mapped into the device's address space.
    pub fn alloc_pinned(self: &Arc<Self>, bytes: usize) -> Result<PinnedBuf, GpuError> {
        self.ensure_current()?;
        PinnedBuf::new(self.clone(), bytes)
    }

    /// `bytes` of device memory.
    pub fn alloc_device(self: &Arc<Self>, bytes: usize) -> Result<DeviceBuf, GpuError> {
        self.ensure_current()?;
        DeviceBuf::new(self.clone(), bytes)
    }

    /// Errors unless this context is current on the calling thread (the
    /// driver would otherwise act on another context).
    pub(crate) fn ensure_current(&self) -> Result<(), GpuError> {
        match driver::current_context()? {
            Some(c) if c == self.ctx => Ok(()),
            _ => Err(GpuError::NoContext),
        }
    }

    /// The kernel of `op` for `fmt` (the FP8 formats: INT8 has no kernels
    /// yet, and is refused).
    pub(crate) fn kernel(&self, op: Op, fmt: WireFormat, elem: Elem) -> Result<Kernel, GpuError> {
        let fp8 = fmt.fp8().ok_or_else(|| {
            GpuError::InvalidArgument(format!("no GPU kernels for the {fmt:?} wire format"))
        })?;
        Ok(self.kernels.0[op as usize][fp8 as usize][elem as usize])
    }
}
