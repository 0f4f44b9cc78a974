//! Typed failures of the GPU layer; `src/error.rs` maps them to `NetError`.

use std::fmt;

/// One failure of the GPU layer, naming the call that failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GpuError {
    /// No usable CUDA driver: libcuda missing, `cuInit` failed, no device,
    /// or a driver entry point we need is absent.
    Unavailable(String),
    /// The calling thread has no current CUDA context (or another one than
    /// the object it uses was made for).
    NoContext,
    /// A CUDA driver call returned an error.
    Driver {
        call: &'static str,
        /// `CUresult` value.
        code: u32,
        /// `CUresult` name, e.g. `CUDA_ERROR_OUT_OF_MEMORY`.
        name: String,
    },
    /// NVRTC could not be loaded (see docs/gpu.md for the search order).
    NvrtcMissing(String),
    /// NVRTC failed to compile the kernels for `arch`.
    Compile { arch: String, log: String },
    /// A caller bug: bad length, member count, null address.
    InvalidArgument(String),
    /// A mirror of `wanted` bytes would take the process's mirrors past
    /// `gpu.mirror_budget` (`budget`; `held` now). `repeat`: this range was
    /// refused before.
    OverMirrorBudget {
        wanted: usize,
        held: usize,
        budget: usize,
        repeat: bool,
    },
}

impl fmt::Display for GpuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpuError::Unavailable(why) => write!(f, "gpu: CUDA unavailable: {why}"),
            GpuError::NoContext => {
                write!(f, "gpu: no matching CUDA context current on this thread")
            }
            GpuError::Driver { call, code, name } => {
                write!(f, "gpu: {call} failed: {name} ({code})")
            }
            GpuError::NvrtcMissing(why) => write!(f, "gpu: NVRTC unavailable: {why}"),
            GpuError::Compile { arch, log } => {
                write!(f, "gpu: NVRTC compile for {arch} failed: {}", log.trim())
            }
            GpuError::InvalidArgument(what) => write!(f, "gpu: invalid argument: {what}"),
            GpuError::OverMirrorBudget {
                wanted,
                held,
                budget,
                repeat,
            } => write!(
                f,
                "gpu: registration refused{}: its pinned host mirror of {} would take mirrors to {}, past gpu.mirror_budget ({}; AIRAMP_GPU_MIRROR_BUDGET). NCCL moves an application buffer through its own buffers instead; for NCCL's own buffers, raise the budget",
                if *repeat { " again" } else { "" },
                mib(*wanted),
                mib(held.saturating_add(*wanted)),
                mib(*budget)
            ),
        }
    }
}

impl std::error::Error for GpuError {}

/// `bytes` in MiB, to a tenth.
fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}
