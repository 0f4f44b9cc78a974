//! The C face of the plugin: NCCL's vtables and the shims behind them.
//!
//! Every exported function goes through [`guard`]: panics are caught, typed
//! errors are logged once with their peer and cause and mapped to an NCCL
//! result code here and only here. Objects handed to NCCL are tagged boxes
//! ([`object`]), so a stale or foreign pointer is an error, not UB.

pub mod bindings;
#[cfg(feature = "tools")] // the harness side, for plugin-tests and the CLI only
pub mod client;
mod collnet;
mod logger;
mod net;
mod net_v10;
mod net_v11;
mod net_v12;
mod net_v7;
mod net_v8;
mod net_v9;
mod object;
mod tuner;
mod tuner_v2;
mod tuner_v3;
mod tuner_v4;
mod tuner_v5;
mod tuner_v6;

use std::panic::{catch_unwind, AssertUnwindSafe};

use bindings::ncclResult_t;

use crate::error::{ErrorClass, NetError, NetResult};
use crate::warn;

/// Exported only by a library built with the `tools` feature (test and tool
/// code, e.g. [`client`]): scripts/build-plugin fails if the library it ships
/// has this symbol.
#[cfg(feature = "tools")]
#[no_mangle]
pub static airamp_built_with_tools: u8 = 1;

/// A vtable NCCL looks up with `dlsym`. The wrapper only exists so the
/// static can be `Sync` (the C struct holds raw pointers to 'static data).
#[repr(transparent)]
pub struct Vtable<T>(pub T);

// SAFETY: every vtable holds only function pointers and pointers to 'static
// C strings, never mutated after link time.
unsafe impl<T> Sync for Vtable<T> {}

fn result_code(e: &NetError) -> ncclResult_t {
    match e.class() {
        ErrorClass::InvalidUsage => ncclResult_t::ncclInvalidUsage,
        ErrorClass::InvalidArgument => ncclResult_t::ncclInvalidArgument,
        ErrorClass::Remote => ncclResult_t::ncclRemoteError,
        ErrorClass::System => ncclResult_t::ncclSystemError,
        ErrorClass::Internal => ncclResult_t::ncclInternalError,
    }
}

/// Runs one exported call: no panic crosses into C, every error is logged
/// with the call that failed (a repeat at INFO, see
/// [`NetError::is_repeat`]) and returned as NCCL's code.
pub(crate) fn guard(call: &'static str, f: impl FnOnce() -> NetResult<()>) -> ncclResult_t {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => ncclResult_t::ncclSuccess,
        Ok(Err(e)) => {
            if e.is_repeat() {
                crate::info!(crate::log::SUBSYS_NET, "{call}: {e}");
            } else {
                warn!("{call}: {e}");
            }
            result_code(&e)
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            warn!("{call}: internal error (panic: {what}); returning ncclInternalError");
            ncclResult_t::ncclInternalError
        }
    }
}

/// Writes through an out-pointer NCCL gave us, refusing null.
///
/// # Safety
/// `out` must be null or valid for a write of `T`.
unsafe fn write_out<T>(out: *mut T, value: T, what: &str) -> NetResult<()> {
    if out.is_null() {
        return Err(NetError::InvalidArgument(format!("{what} is NULL")));
    }
    // SAFETY: non-null and, per the caller's contract, valid for writes.
    unsafe { out.write(value) };
    Ok(())
}
