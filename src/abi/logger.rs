//! Forwards our log lines to NCCL's logger.

use std::ffi::{c_int, c_ulong, CString};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::bindings::{ncclDebugLogLevel, ncclDebugLogger_t};
use crate::log::{self, Level};

static NCCL_LOGGER: AtomicUsize = AtomicUsize::new(0);

type RawLogger = unsafe extern "C" fn(
    ncclDebugLogLevel,
    c_ulong,
    *const std::ffi::c_char,
    c_int,
    *const std::ffi::c_char,
    ...
);

/// Remembers NCCL's logger (a null one keeps the stderr fallback).
pub fn install(logger: ncclDebugLogger_t) {
    if let Some(f) = logger {
        NCCL_LOGGER.store(f as usize, Ordering::Release);
        log::set_sink(forward);
    }
}

fn forward(level: Level, subsys: u64, file: &'static str, line: u32, text: &str) {
    let raw = NCCL_LOGGER.load(Ordering::Acquire);
    if raw == 0 {
        return;
    }
    let file = CString::new(file).unwrap_or_default();
    let text = CString::new(text.replace('\0', " ")).unwrap_or_default();
    // SAFETY: `raw` was stored from NCCL's non-null logger in `install`, and
    // NCCL keeps it valid for the life of the process. The "%s" format
    // consumes exactly the one NUL-terminated string we pass.
    unsafe {
        let f = std::mem::transmute::<usize, RawLogger>(raw);
        f(
            ncclDebugLogLevel(level as u32),
            subsys as c_ulong,
            file.as_ptr(),
            line as c_int,
            c"%s".as_ptr(),
            text.as_ptr(),
        );
    }
}
