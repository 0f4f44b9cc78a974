//! The CUDA driver API, through cudarc's dynamically loaded `sys` bindings.
//!
//! Every call into libcuda lives here, each behind a small safe function
//! that returns [`GpuError`] naming the call. Handles are kept as plain
//! integers (`usize`/`u64`), so the types that hold them are `Send + Sync`
//! without `unsafe impl`: CUDA driver handles may be used from any thread.
//!
//! cudarc panics when libcuda or one of its symbols is missing; [`init`]
//! checks both once (under `catch_unwind`) before any other call is made,
//! and every public entry point of `gpu` calls it first.

use std::ffi::{c_void, CStr, CString};
use std::panic::catch_unwind;
use std::ptr;
use std::sync::OnceLock;

use cudarc::driver::sys;

use super::error::GpuError;

/// Every driver entry point this module calls (cudarc resolves them by
/// these names); checked once by [`init`] so no later call can panic.
const SYMBOLS: &[&str] = &[
    "cuInit",
    "cuDriverGetVersion",
    "cuDeviceGetCount",
    "cuDeviceGet",
    "cuDeviceGetAttribute",
    "cuDeviceGetName",
    "cuDevicePrimaryCtxRetain",
    "cuDevicePrimaryCtxRelease_v2",
    "cuCtxCreate_v4",
    "cuDeviceGetExecAffinitySupport",
    "cuCtxGetExecAffinity",
    "cuCtxPopCurrent_v2",
    "cuCtxSetLimit",
    "cuCtxGetCurrent",
    "cuCtxSetCurrent",
    "cuCtxGetDevice",
    "cuPointerGetAttribute",
    "cuModuleLoadData",
    "cuModuleGetFunction",
    "cuOccupancyMaxActiveBlocksPerMultiprocessor",
    "cuStreamCreate",
    "cuStreamDestroy_v2",
    "cuEventCreate",
    "cuEventDestroy_v2",
    "cuEventRecord",
    "cuEventQuery",
    "cuEventSynchronize",
    "cuEventElapsedTime_v2",
    "cuMemHostAlloc",
    "cuMemHostGetDevicePointer_v2",
    "cuMemFreeHost",
    "cuMemAlloc_v2",
    "cuMemFree_v2",
    "cuMemGetInfo_v2",
    "cuLaunchKernel",
    "cuGetErrorName",
];

/// Loads libcuda, checks its symbols and runs `cuInit` (once per process).
pub fn init() -> Result<(), GpuError> {
    static INIT: OnceLock<Result<(), GpuError>> = OnceLock::new();
    INIT.get_or_init(|| {
        catch_unwind(load_driver)
            .unwrap_or_else(|_| Err(GpuError::Unavailable("loading libcuda panicked".into())))
    })
    .clone()
}

fn load_driver() -> Result<(), GpuError> {
    // SAFETY: only dlopen()s candidate library names and closes them again.
    if !unsafe { sys::is_culib_present() } {
        return Err(GpuError::Unavailable("libcuda.so not found".into()));
    }
    // SAFETY: the library is present (checked above), so culib() loads it
    // instead of panicking; get() only looks a symbol up.
    let lib = unsafe { sys::culib() };
    for name in SYMBOLS {
        // SAFETY: looking a symbol up does not call it; the pointer type is
        // never used.
        if unsafe { lib.get::<*const c_void>(name.as_bytes()) }.is_err() {
            return Err(GpuError::Unavailable(format!("libcuda lacks {name}")));
        }
    }
    // SAFETY: plain driver call with a zero flag.
    check("cuInit", unsafe { sys::cuInit(0) })?;
    if device_count()? == 0 {
        return Err(GpuError::Unavailable("no CUDA device".into()));
    }
    Ok(())
}

fn check(call: &'static str, r: sys::CUresult) -> Result<(), GpuError> {
    if r == sys::CUresult::CUDA_SUCCESS {
        return Ok(());
    }
    let mut s: *const std::ffi::c_char = ptr::null();
    // SAFETY: cuGetErrorName writes a pointer to a static string (or
    // leaves it null for an unknown code).
    let named = unsafe { sys::cuGetErrorName(r, &mut s) } == sys::CUresult::CUDA_SUCCESS;
    let name = if named && !s.is_null() {
        // SAFETY: the driver returned a NUL-terminated static string.
        unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
    } else {
        format!("{r:?}")
    };
    Err(GpuError::Driver {
        call,
        code: r as u32,
        name,
    })
}

pub fn driver_version() -> Result<i32, GpuError> {
    let mut v = 0;
    // SAFETY: writes one int.
    check("cuDriverGetVersion", unsafe {
        sys::cuDriverGetVersion(&mut v)
    })?;
    Ok(v)
}

pub fn device_count() -> Result<i32, GpuError> {
    let mut n = 0;
    // SAFETY: writes one int.
    check("cuDeviceGetCount", unsafe { sys::cuDeviceGetCount(&mut n) })?;
    Ok(n)
}

/// The current context of this thread, if any (`cuCtxGetCurrent`).
pub fn current_context() -> Result<Option<usize>, GpuError> {
    let mut c: sys::CUcontext = ptr::null_mut();
    // SAFETY: writes one handle.
    check("cuCtxGetCurrent", unsafe { sys::cuCtxGetCurrent(&mut c) })?;
    Ok((!c.is_null()).then_some(c as usize))
}

/// Makes `ctx` (or no context, for `None`) current on this thread. Never
/// waits for the GPU: a thread-local switch.
pub fn set_current_context(ctx: Option<usize>) -> Result<(), GpuError> {
    let c = ctx.map_or(ptr::null_mut(), |c| c as sys::CUcontext);
    // SAFETY: `c` is null (unbind) or a live context handle owned by the
    // GPU layer or the application.
    check("cuCtxSetCurrent", unsafe { sys::cuCtxSetCurrent(c) })
}

/// Free memory of the current context's device, in bytes.
fn free_device_memory() -> Result<usize, GpuError> {
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: writes two sizes; a context is current (the caller's).
    check("cuMemGetInfo_v2", unsafe {
        sys::cuMemGetInfo_v2(&mut free, &mut total)
    })?;
    Ok(free)
}

/// A context [`create_context`] made.
#[derive(Clone, Copy, Debug)]
pub struct NewContext {
    pub handle: usize,
    /// The device memory it took, when the driver could tell: the device's
    /// free memory before it minus after its limits are set, which is where
    /// a context's memory is settled (its first launch reserves nothing
    /// more, measured on the H200). Memory the application allocates at
    /// that moment counts too, so it is an estimate.
    pub took: Option<usize>,
    pub sms: SmLimit,
}

/// Whether a new context was limited to a number of SMs, and why not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmLimit {
    /// No limit was asked for: every SM.
    NotAsked,
    /// The driver cannot limit a context on this device (no MPS): every SM.
    Unsupported,
    /// The driver refused the count asked for (an MPS client limited to
    /// fewer SMs): every SM it gives the process.
    Refused,
    /// Limited to this many SMs (the driver's count, rounded up from the
    /// one asked for).
    Granted(u32),
}

/// A new context on device `ordinal`, for airamp alone, limited to `sms`
/// SMs where that is asked (`Some`) and the driver supports SM-count
/// execution affinity (under MPS); the driver rounds the count up to its
/// granularity (8 on an H200).
/// `cuCtxCreate` pushes the context on this thread's stack; it is popped
/// again here, so the caller's current context is unchanged. Never
/// destroyed: it lives as long as the process, like the modules loaded
/// into it.
pub fn create_context(ordinal: i32, sms: Option<u32>) -> Result<NewContext, GpuError> {
    let free_before = free_device_memory().ok();
    let mut dev = 0;
    // SAFETY: writes one int.
    check("cuDeviceGet", unsafe {
        sys::cuDeviceGet(&mut dev, ordinal)
    })?;
    let (sm_limit, mut outcome) = match sms {
        None => (None, SmLimit::NotAsked),
        Some(_) if !sm_affinity_supported(dev) => (None, SmLimit::Unsupported),
        Some(n) => (Some(n), SmLimit::Granted(n)),
    };
    let c = match (new_context(dev, sm_limit), sm_limit) {
        // A limit the driver refuses (e.g. more SMs than an MPS client's
        // CUDA_MPS_ACTIVE_THREAD_PERCENTAGE leaves it) must not cost the
        // GPU path: a context on every SM instead.
        (Err(e), Some(n)) => {
            crate::warn!(
                "gpu: the driver refused airamp's context on {n} SMs (gpu.sms) of device {ordinal} ({e}); it runs on every SM"
            );
            outcome = SmLimit::Refused;
            new_context(dev, None)?
        }
        (made, _) => made?,
    };
    // A context reserves local memory for every thread the device can hold
    // at its stack limit (1 KiB by default: hundreds of MiB on an H200),
    // plus a printf FIFO and a device heap. The kernels need at most 40
    // bytes of stack (ptxas) and neither printf nor malloc; the driver
    // grows the stack on its own if a kernel ever needs more.
    for (limit, value) in [
        (sys::CUlimit::CU_LIMIT_STACK_SIZE, 64),
        (sys::CUlimit::CU_LIMIT_PRINTF_FIFO_SIZE, 4096),
        (sys::CUlimit::CU_LIMIT_MALLOC_HEAP_SIZE, 0),
    ] {
        // SAFETY: the new context is current (cuCtxCreate pushed it).
        let set = check("cuCtxSetLimit", unsafe { sys::cuCtxSetLimit(limit, value) });
        if let Err(e) = set {
            crate::warn!("gpu: could not set {limit:?} of airamp's context to {value}: {e}");
        }
    }
    if matches!(outcome, SmLimit::Granted(_)) {
        if let Ok(n) = granted_sms() {
            outcome = SmLimit::Granted(n);
        }
    }
    let took = free_before
        .zip(free_device_memory().ok())
        .map(|(before, after)| before.saturating_sub(after));
    let mut popped: sys::CUcontext = ptr::null_mut();
    // SAFETY: pops the context cuCtxCreate just pushed; writes one handle.
    check("cuCtxPopCurrent_v2", unsafe {
        sys::cuCtxPopCurrent_v2(&mut popped)
    })?;
    Ok(NewContext {
        handle: c as usize,
        took,
        sms: outcome,
    })
}

/// `cuCtxCreate` on `dev`, limited to `sms` SMs when asked; the context is
/// pushed on this thread's stack.
fn new_context(dev: sys::CUdevice, sms: Option<u32>) -> Result<sys::CUcontext, GpuError> {
    let mut affinity = sm_count_affinity(sms.unwrap_or(0));
    let mut params = sys::CUctxCreateParams {
        execAffinityParams: if sms.is_some() {
            &mut affinity
        } else {
            ptr::null_mut()
        },
        numExecAffinityParams: i32::from(sms.is_some()),
        cigParams: ptr::null_mut(),
    };
    let mut c: sys::CUcontext = ptr::null_mut();
    // SAFETY: writes one handle; `params` points at `affinity`, which
    // outlives the call, or asks for nothing (no CIG either); flags 0 is
    // CU_CTX_SCHED_AUTO.
    check("cuCtxCreate_v4", unsafe {
        sys::cuCtxCreate_v4(&mut c, &mut params, 0, dev)
    })?;
    Ok(c)
}

/// Whether a context on `dev` can be limited to a number of SMs: under MPS.
fn sm_affinity_supported(dev: sys::CUdevice) -> bool {
    let mut supported = 0;
    // SAFETY: writes one int.
    let asked = check("cuDeviceGetExecAffinitySupport", unsafe {
        sys::cuDeviceGetExecAffinitySupport(
            &mut supported,
            sys::CUexecAffinityType::CU_EXEC_AFFINITY_TYPE_SM_COUNT,
            dev,
        )
    });
    asked.is_ok() && supported != 0
}

/// An SM-count execution affinity of `sms`: what `cuCtxCreate` is asked
/// for, and a valid value for `cuCtxGetExecAffinity` to overwrite.
fn sm_count_affinity(sms: u32) -> sys::CUexecAffinityParam {
    sys::CUexecAffinityParam {
        type_: sys::CUexecAffinityType::CU_EXEC_AFFINITY_TYPE_SM_COUNT,
        param: sys::CUexecAffinityParam_st__bindgen_ty_1 {
            smCount: sys::CUexecAffinitySmCount { val: sms },
        },
    }
}

/// The SM count the current context may run on.
fn granted_sms() -> Result<u32, GpuError> {
    let mut got = sm_count_affinity(0);
    // SAFETY: writes one CUexecAffinityParam of the current context.
    check("cuCtxGetExecAffinity", unsafe {
        sys::cuCtxGetExecAffinity(
            &mut got,
            sys::CUexecAffinityType::CU_EXEC_AFFINITY_TYPE_SM_COUNT,
        )
    })?;
    // SAFETY: the SM-count member is the one the driver fills for this type.
    Ok(unsafe { got.param.smCount.val })
}

/// The device of the current context.
pub fn current_device() -> Result<i32, GpuError> {
    let mut d = 0;
    // SAFETY: writes one int; fails cleanly without a current context.
    check("cuCtxGetDevice", unsafe { sys::cuCtxGetDevice(&mut d) })?;
    Ok(d)
}

pub fn device_attribute(dev: i32, attr: sys::CUdevice_attribute) -> Result<i32, GpuError> {
    let mut v = 0;
    // SAFETY: writes one int; an invalid device is an error code.
    check("cuDeviceGetAttribute", unsafe {
        sys::cuDeviceGetAttribute(&mut v, attr, dev)
    })?;
    Ok(v)
}

pub fn device_name(dev: i32) -> Result<String, GpuError> {
    let mut buf = [0 as std::ffi::c_char; 256];
    // SAFETY: the driver writes at most `len` bytes, NUL-terminated.
    check("cuDeviceGetName", unsafe {
        sys::cuDeviceGetName(buf.as_mut_ptr(), buf.len() as i32, dev)
    })?;
    // SAFETY: NUL-terminated within the buffer (zeroed beforehand).
    Ok(unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned())
}

/// Retains device `ordinal`'s primary context and makes it current; for
/// tools and tests only (inside NCCL the context is already current).
pub fn retain_primary_context(ordinal: i32) -> Result<(usize, i32), GpuError> {
    let mut dev = 0;
    // SAFETY: writes one int.
    check("cuDeviceGet", unsafe {
        sys::cuDeviceGet(&mut dev, ordinal)
    })?;
    let mut c: sys::CUcontext = ptr::null_mut();
    // SAFETY: writes one handle, released by release_primary_context.
    check("cuDevicePrimaryCtxRetain", unsafe {
        sys::cuDevicePrimaryCtxRetain(&mut c, dev)
    })?;
    // SAFETY: `c` is a live context handle.
    check("cuCtxSetCurrent", unsafe { sys::cuCtxSetCurrent(c) })?;
    Ok((c as usize, dev))
}

pub fn release_primary_context(dev: i32) -> Result<(), GpuError> {
    // SAFETY: balances one cuDevicePrimaryCtxRetain on `dev`.
    check("cuDevicePrimaryCtxRelease_v2", unsafe {
        sys::cuDevicePrimaryCtxRelease_v2(dev)
    })
}

/// `CU_POINTER_ATTRIBUTE_MEMORY_TYPE` of `addr`; `None` when the driver
/// does not know the address (plain host memory).
pub fn memory_type(addr: u64) -> Option<u32> {
    let mut t: u32 = 0;
    // SAFETY: the attribute is an unsigned int written to `t`; unknown
    // addresses are reported as an error code, never dereferenced.
    let r = unsafe {
        sys::cuPointerGetAttribute(
            (&mut t as *mut u32).cast(),
            sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_MEMORY_TYPE,
            addr,
        )
    };
    (r == sys::CUresult::CUDA_SUCCESS).then_some(t)
}

pub const MEMORY_TYPE_DEVICE: u32 = sys::CUmemorytype::CU_MEMORYTYPE_DEVICE as u32;

/// Loads a CUBIN or NUL-terminated PTX image into the current context.
pub fn module_load(image: &[u8]) -> Result<usize, GpuError> {
    let mut m: sys::CUmodule = ptr::null_mut();
    // SAFETY: `image` is a complete CUBIN/fatbin, or PTX ending in NUL
    // (nvrtc.rs guarantees it); the driver copies it.
    check("cuModuleLoadData", unsafe {
        sys::cuModuleLoadData(&mut m, image.as_ptr().cast())
    })?;
    Ok(m as usize)
}

pub fn module_function(module: usize, name: &str) -> Result<usize, GpuError> {
    let cname = CString::new(name).map_err(|_| GpuError::InvalidArgument(name.into()))?;
    let mut f: sys::CUfunction = ptr::null_mut();
    // SAFETY: `module` is a loaded module that is never unloaded;
    // `cname` is NUL-terminated.
    check("cuModuleGetFunction", unsafe {
        sys::cuModuleGetFunction(&mut f, module as sys::CUmodule, cname.as_ptr())
    })?;
    Ok(f as usize)
}

/// How many CTAs of `threads` threads of `function` fit on one SM.
pub fn ctas_per_sm(function: usize, threads: u32) -> Result<u32, GpuError> {
    let mut n = 0;
    // SAFETY: `function` is a live kernel handle; writes one int.
    check("cuOccupancyMaxActiveBlocksPerMultiprocessor", unsafe {
        sys::cuOccupancyMaxActiveBlocksPerMultiprocessor(
            &mut n,
            function as sys::CUfunction,
            threads as i32,
            0,
        )
    })?;
    Ok(n.max(1) as u32)
}

/// A stream that never synchronizes with the legacy default stream.
pub fn stream_create() -> Result<usize, GpuError> {
    let mut s: sys::CUstream = ptr::null_mut();
    // SAFETY: writes one handle; destroyed by stream_destroy.
    check("cuStreamCreate", unsafe {
        sys::cuStreamCreate(&mut s, sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32)
    })?;
    Ok(s as usize)
}

pub fn stream_destroy(stream: usize) {
    // SAFETY: `stream` came from stream_create and is destroyed once (Drop).
    // Work still queued completes first (driver semantics).
    let _ = unsafe { sys::cuStreamDestroy_v2(stream as sys::CUstream) };
}

/// An event; `timing` events can measure elapsed time (benchmarks), the
/// others are cheaper to record and query.
pub fn event_create(timing: bool) -> Result<usize, GpuError> {
    let flags = if timing {
        sys::CUevent_flags::CU_EVENT_DEFAULT
    } else {
        sys::CUevent_flags::CU_EVENT_DISABLE_TIMING
    };
    let mut e: sys::CUevent = ptr::null_mut();
    // SAFETY: writes one handle; destroyed by event_destroy.
    check("cuEventCreate", unsafe {
        sys::cuEventCreate(&mut e, flags as u32)
    })?;
    Ok(e as usize)
}

pub fn event_destroy(event: usize) {
    // SAFETY: `event` came from event_create and is destroyed once.
    let _ = unsafe { sys::cuEventDestroy_v2(event as sys::CUevent) };
}

pub fn event_record(event: usize, stream: usize) -> Result<(), GpuError> {
    // SAFETY: both handles are live (owned by the caller's objects).
    check("cuEventRecord", unsafe {
        sys::cuEventRecord(event as sys::CUevent, stream as sys::CUstream)
    })
}

/// Whether all work captured by `event` is done (`cuEventQuery`, never
/// blocks).
pub fn event_query(event: usize) -> Result<bool, GpuError> {
    // SAFETY: `event` is a live handle.
    let r = unsafe { sys::cuEventQuery(event as sys::CUevent) };
    if r == sys::CUresult::CUDA_ERROR_NOT_READY {
        return Ok(false);
    }
    check("cuEventQuery", r).map(|()| true)
}

/// Blocks until `event` completes. Tools and tests only.
pub fn event_synchronize(event: usize) -> Result<(), GpuError> {
    // SAFETY: `event` is a live handle.
    check("cuEventSynchronize", unsafe {
        sys::cuEventSynchronize(event as sys::CUevent)
    })
}

pub fn event_elapsed_ms(start: usize, end: usize) -> Result<f32, GpuError> {
    let mut ms = 0f32;
    // SAFETY: both are live timing events; writes one float.
    check("cuEventElapsedTime_v2", unsafe {
        sys::cuEventElapsedTime_v2(&mut ms, start as sys::CUevent, end as sys::CUevent)
    })?;
    Ok(ms)
}

/// Page-locked host memory, portable across contexts and mapped into the
/// device address space: `(host pointer, device address)`.
pub fn mem_host_alloc(bytes: usize) -> Result<(usize, u64), GpuError> {
    let mut p: *mut c_void = ptr::null_mut();
    // SAFETY: writes one pointer to `bytes` bytes, freed by mem_free_host.
    check("cuMemHostAlloc", unsafe {
        sys::cuMemHostAlloc(
            &mut p,
            bytes,
            sys::CU_MEMHOSTALLOC_PORTABLE | sys::CU_MEMHOSTALLOC_DEVICEMAP,
        )
    })?;
    let mut d: sys::CUdeviceptr = 0;
    // SAFETY: `p` is a live mapped allocation; writes one address.
    let mapped = check("cuMemHostGetDevicePointer_v2", unsafe {
        sys::cuMemHostGetDevicePointer_v2(&mut d, p, 0)
    });
    if let Err(e) = mapped {
        mem_free_host(p as usize);
        return Err(e);
    }
    Ok((p as usize, d))
}

pub fn mem_free_host(host: usize) {
    // SAFETY: `host` came from cuMemHostAlloc and is freed once (Drop).
    let _ = unsafe { sys::cuMemFreeHost(host as *mut c_void) };
}

pub fn mem_alloc(bytes: usize) -> Result<u64, GpuError> {
    let mut d: sys::CUdeviceptr = 0;
    // SAFETY: writes one address, freed by mem_free.
    check("cuMemAlloc_v2", unsafe {
        sys::cuMemAlloc_v2(&mut d, bytes)
    })?;
    Ok(d)
}

pub fn mem_free(addr: u64) {
    // SAFETY: `addr` came from cuMemAlloc and is freed once (Drop).
    let _ = unsafe { sys::cuMemFree_v2(addr) };
}

/// Launches `function` on a 1-D grid.
///
/// # Safety
/// `params` must point to one value per kernel parameter, each of exactly
/// the parameter's type, and every address passed must stay valid until
/// the kernel completes.
pub unsafe fn launch(
    function: usize,
    ctas: u32,
    threads: u32,
    stream: usize,
    params: &mut [*mut c_void],
) -> Result<(), GpuError> {
    // SAFETY: the caller upholds the parameter contract above.
    check("cuLaunchKernel", unsafe {
        sys::cuLaunchKernel(
            function as sys::CUfunction,
            ctas,
            1,
            1,
            threads,
            1,
            1,
            0,
            stream as sys::CUstream,
            params.as_mut_ptr(),
            ptr::null_mut(),
        )
    })
}
