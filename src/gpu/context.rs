//! airamp's own CUDA context on a device, and the kernels loaded into it
//! (compiled once per architecture, loaded once per context).
//!
//! Why a context of its own: inside NCCL every data-path call comes from
//! NCCL's proxy thread, and in the application's (primary) context a
//! kernel launch or event record there waits on a driver lock that an
//! application thread holds while its pageable copy (`.item()`) waits for
//! NCCL's kernel, which waits for the proxy: a deadlock. In a context
//! created with `cuCtxCreate`, launches, event records and event queries
//! do not wait on that lock (copies through `cuMemcpy*` still do, so the
//! GPU layer copies with a kernel), the application's
//! `cudaDeviceSynchronize`/`cudaFree` do not wait for airamp's work, and
//! its kernels read and write the application's `cudaMalloc` and VMM
//! memory (measured on the H200: examples/gpu-residency).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::sys::CUdevice_attribute as Attr;

use super::driver::{self, NewContext, SmLimit};
use super::error::GpuError;
use super::memory::{DeviceBuf, PinnedBuf};
use super::nvrtc;
use super::queue::GpuQueue;
use super::{Elem, KernelOptions};
use crate::codec::WireFormat;
use crate::metrics;

/// Threads per CTA of every kernel (`THREADS` in cuda/codec.cu).
pub(crate) const THREADS: u32 = 256;

/// The three codec kernels, as indexed in [`Kernels`].
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

/// One loaded kernel and how many of its CTAs fit on one SM.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Kernel {
    pub function: usize,
    pub ctas_per_sm: u32,
}

/// Handles of every codec kernel, by [op][format][element]: formats in
/// [`WireFormat::ALL`] order (E4M3, E5M2, INT8), kernels named
/// `airamp_{op}_{format}_{element}` (`airamp_encode_int8_bf16`).
struct Kernels([[[Kernel; 3]; 3]; 3]);

/// airamp's own context on one device, with the codec kernels loaded.
/// Shared (`Arc`) by every queue and buffer made from it; cached for the
/// life of the process, so neither the context nor its module is ever
/// destroyed.
pub struct GpuContext {
    ctx: usize,
    copy: Kernel,
    /// The exact path's fold, by element type.
    sum_exact: [Kernel; 3],
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
    /// airamp's context on the device of the context current on this
    /// thread, with the kernels loaded (default [`KernelOptions`]). NCCL's
    /// threads have the application's context current (they called
    /// `cudaSetDevice`). The first call per device creates the context, the
    /// first per (device, options) compiles (per architecture) and loads the
    /// kernels: call it at connect/regMr time, not on the data path.
    pub fn current() -> Result<Arc<GpuContext>, GpuError> {
        GpuContext::current_with(KernelOptions::default())
    }

    /// As [`GpuContext::current`] with explicit kernel options (tests and
    /// benchmarks); each (device, options) pair is loaded once.
    pub fn current_with(options: KernelOptions) -> Result<Arc<GpuContext>, GpuError> {
        options.validate()?;
        driver::init()?;
        driver::current_context()?.ok_or(GpuError::NoContext)?;
        let device = driver::current_device()?;
        type Registry = Mutex<HashMap<(i32, KernelOptions), Arc<GpuContext>>>;
        static REGISTRY: OnceLock<Registry> = OnceLock::new();
        let mut registry = REGISTRY
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(c) = registry.get(&(device, options)) {
            return Ok(c.clone());
        }
        let own = own_context(device)?;
        let sms = match own.sms {
            SmLimit::Granted(n) => Some(n),
            _ => None,
        };
        let c = Arc::new(GpuContext::load(own.handle, sms, device, options)?);
        registry.insert((device, options), c.clone());
        Ok(c)
    }

    /// Loads the kernels into `ctx`, which runs on `sms` SMs where limited
    /// (otherwise on the device's count, which under MPS is what the
    /// client's CUDA_MPS_ACTIVE_THREAD_PERCENTAGE leaves it).
    fn load(
        ctx: usize,
        sms: Option<u32>,
        device: i32,
        options: KernelOptions,
    ) -> Result<GpuContext, GpuError> {
        let _bound = bind_context(ctx)?;
        let major =
            driver::device_attribute(device, Attr::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?
                as u32;
        let minor =
            driver::device_attribute(device, Attr::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?
                as u32;
        let sm_count = match sms {
            Some(n) => n,
            None => {
                driver::device_attribute(device, Attr::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?
                    as u32
            }
        }
        .max(1);
        let name = driver::device_name(device)?;
        let image = nvrtc::compile_for_device(major, minor, options)?;
        let module = driver::module_load(image.bytes())?;
        let kernel = |name: &str| -> Result<Kernel, GpuError> {
            let function = driver::module_function(module, name)?;
            Ok(Kernel {
                function,
                ctas_per_sm: driver::ctas_per_sm(function, THREADS)?,
            })
        };
        let mut table = [[[Kernel {
            function: 0,
            ctas_per_sm: 1,
        }; 3]; 3]; 3];
        for op in Op::ALL {
            for fmt in WireFormat::ALL {
                for elem in Elem::ALL {
                    table[op as usize][format_index(fmt)][elem as usize] =
                        kernel(&kernel_name(op, fmt, elem))?;
                }
            }
        }
        let copy = kernel("airamp_copy")?;
        let sum_exact = [
            kernel("airamp_sum_exact_f32")?,
            kernel("airamp_sum_exact_f16")?,
            kernel("airamp_sum_exact_bf16")?,
        ];
        crate::info!(
            crate::log::SUBSYS_INIT,
            "gpu: codec kernels loaded in airamp's own context on device {device} ({name}, sm_{major}{minor}, {} {} bytes, options {options:?})",
            image.kind(),
            image.bytes().len()
        );
        Ok(GpuContext {
            ctx,
            copy,
            sum_exact,
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

    /// The SMs the kernels run on: the device's, or the context's limit.
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
        let _bound = self.bind()?;
        GpuQueue::new(self.clone())
    }

    /// `bytes` of pinned host memory mapped into the device's address space.
    pub fn alloc_pinned(self: &Arc<Self>, bytes: usize) -> Result<PinnedBuf, GpuError> {
        let _bound = self.bind()?;
        PinnedBuf::new(self.clone(), bytes)
    }

    /// `bytes` of device memory.
    pub fn alloc_device(self: &Arc<Self>, bytes: usize) -> Result<DeviceBuf, GpuError> {
        let _bound = self.bind()?;
        DeviceBuf::new(self.clone(), bytes)
    }

    /// Makes this context current on the calling thread until the guard
    /// drops. Every driver call of the GPU layer runs bound, so callers
    /// (NCCL's threads) keep their own context current around it.
    pub(crate) fn bind(&self) -> Result<Bound, GpuError> {
        bind_context(self.ctx)
    }

    /// The byte-copy kernel (`airamp_copy`).
    pub(crate) fn copy_kernel(&self) -> Kernel {
        self.copy
    }

    /// The exact fold of `elem` (`airamp_sum_exact_*`).
    pub(crate) fn sum_exact_kernel(&self, elem: Elem) -> Kernel {
        self.sum_exact[elem as usize]
    }

    /// The codec kernel of `op` for `fmt` and `elem` (every wire format
    /// has its kernels).
    pub(crate) fn kernel(&self, op: Op, fmt: WireFormat, elem: Elem) -> Kernel {
        self.kernels.0[op as usize][format_index(fmt)][elem as usize]
    }
}

/// Index of `fmt` in [`Kernels`].
fn format_index(fmt: WireFormat) -> usize {
    match fmt {
        WireFormat::E4M3 => 0,
        WireFormat::E5M2 => 1,
        WireFormat::Int8 => 2,
    }
}

/// The exported name of a codec kernel in cuda/codec.cu.
fn kernel_name(op: Op, fmt: WireFormat, elem: Elem) -> String {
    format!("airamp_{}_{}_{}", op.name(), fmt.name(), elem.name())
}

/// airamp's context on `device`, with the SMs it is limited to: one per
/// device and process, created on first use with `gpu.sms` from the
/// configuration.
fn own_context(device: i32) -> Result<NewContext, GpuError> {
    static OWN: OnceLock<Mutex<HashMap<i32, NewContext>>> = OnceLock::new();
    let mut own = OWN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(&c) = own.get(&device) {
        return Ok(c);
    }
    let asked = crate::config::global().gpu.sms;
    let made = driver::create_context(device, (asked > 0).then_some(asked))?;
    let sms = match made.sms {
        SmLimit::Granted(n) => format!("limited to {n} SMs"),
        SmLimit::Unsupported => format!(
            "on every SM: gpu.sms = {asked} needs MPS (SM-count execution affinity), which this device does not offer"
        ),
        SmLimit::Refused => {
            format!("on every SM this process has: the driver refused gpu.sms = {asked}")
        }
        SmLimit::NotAsked => "on every SM (gpu.sms = 0)".to_string(),
    };
    match made.took {
        Some(bytes) => {
            crate::info!(
                crate::log::SUBSYS_INIT,
                "gpu: airamp's own context on device {device}, {sms}, took {} MiB of device memory (free memory before and after; an estimate)",
                bytes >> 20
            );
            metrics::collnet().gpu_context(bytes as u64);
        }
        None => crate::info!(
            crate::log::SUBSYS_INIT,
            "gpu: airamp's own context on device {device}, {sms}"
        ),
    }
    own.insert(device, made);
    Ok(made)
}

/// A context made current on this thread; the previous one (or none) is
/// current again when this drops.
#[must_use = "the context is unbound when the guard drops"]
pub(crate) struct Bound {
    /// `Some(previous)` when binding changed the current context.
    restore: Option<Option<usize>>,
}

fn bind_context(ctx: usize) -> Result<Bound, GpuError> {
    let previous = driver::current_context()?;
    if previous == Some(ctx) {
        return Ok(Bound { restore: None });
    }
    driver::set_current_context(Some(ctx))?;
    Ok(Bound {
        restore: Some(previous),
    })
}

impl Drop for Bound {
    fn drop(&mut self) {
        if let Some(previous) = self.restore {
            if let Err(e) = driver::set_current_context(previous) {
                crate::warn!("gpu: could not make the caller's CUDA context current again: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every codec kernel the table loads is built by cuda/codec.cu (INT8
    /// included) under the name the table asks for.
    #[test]
    fn every_kernel_in_the_table_is_instantiated_by_the_source() {
        let source = super::nvrtc::SOURCE;
        for op in Op::ALL {
            assert!(
                source.contains(&format!(
                    "AIRAMP_KERNEL airamp_{}_##fmt##_##elem(",
                    op.name()
                )),
                "AIRAMP_INSTANTIATE exports no {} kernel",
                op.name()
            );
        }
        for fmt in WireFormat::ALL {
            let format_type = ["E4M3", "E5M2", "Int8"][format_index(fmt)];
            for elem in Elem::ALL {
                let elem_type = ["ElemF32", "ElemF16", "ElemBf16"][elem as usize];
                let line = format!(
                    "AIRAMP_INSTANTIATE({format_type}, {}, {elem_type}, {})",
                    fmt.name(),
                    elem.name()
                );
                assert!(source.contains(&line), "no `{line}` in cuda/codec.cu");
            }
        }
        assert_eq!(
            kernel_name(Op::ReduceEncode, WireFormat::Int8, Elem::Bf16),
            "airamp_reduce_encode_int8_bf16"
        );
    }
}
