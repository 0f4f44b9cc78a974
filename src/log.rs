//! Logging through NCCL's logger, so `NCCL_DEBUG=INFO` shows `NET/airamp` lines.
//!
//! NCCL hands its logger to `init`; until then (or in the CLI) lines go to
//! stderr when `NCCL_DEBUG` asks for them.

use std::ffi::{c_char, c_int, c_ulong, CString};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// NCCL's `ncclDebugLogger_t`: `(level, flags, file, line, fmt, ...)`.
pub type RawLogger = unsafe extern "C" fn(c_int, c_ulong, *const c_char, c_int, *const c_char, ...);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Warn = 2,
    Info = 3,
    Trace = 5,
}

/// NCCL's subsystem flags for the lines we emit.
pub const SUBSYS_INIT: u64 = 0x1;
pub const SUBSYS_NET: u64 = 0x10;
pub const SUBSYS_TUNING: u64 = 0x40;

static LOGGER: AtomicUsize = AtomicUsize::new(0);

/// Installs NCCL's logger; a null pointer keeps the stderr fallback.
pub fn set_logger(logger: Option<RawLogger>) {
    if let Some(f) = logger {
        LOGGER.store(f as usize, Ordering::Release);
    }
}

fn stderr_level() -> Option<Level> {
    static LEVEL: OnceLock<Option<Level>> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let v = std::env::var("NCCL_DEBUG")
            .unwrap_or_default()
            .to_ascii_uppercase();
        match v.as_str() {
            "WARN" => Some(Level::Warn),
            "INFO" => Some(Level::Info),
            "TRACE" => Some(Level::Trace),
            _ => None,
        }
    })
}

pub fn log(level: Level, subsys: u64, file: &'static str, line: u32, msg: &str) {
    let text = format!("NET/airamp {msg}");
    let raw = LOGGER.load(Ordering::Acquire);
    if raw != 0 {
        // SAFETY: `raw` was stored from a valid `RawLogger` in `set_logger` and
        // NCCL keeps its logger alive for the life of the process. We pass a
        // "%s" format with one NUL-terminated string, matching the varargs.
        unsafe {
            let f: RawLogger = std::mem::transmute::<usize, RawLogger>(raw);
            let file = CString::new(file).unwrap_or_default();
            let text = CString::new(text.replace('\0', " ")).unwrap_or_default();
            f(
                level as c_int,
                subsys as c_ulong,
                file.as_ptr(),
                line as c_int,
                c"%s".as_ptr(),
                text.as_ptr(),
            );
        }
    } else if stderr_level().is_some_and(|l| level <= l) {
        eprintln!("{text}");
    }
}

#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => {
        $crate::log::log($crate::log::Level::Warn, $crate::log::SUBSYS_NET, file!(), line!(), &format!($($arg)*))
    };
}

#[macro_export]
macro_rules! info {
    ($subsys:expr, $($arg:tt)*) => {
        $crate::log::log($crate::log::Level::Info, $subsys, file!(), line!(), &format!($($arg)*))
    };
}

#[macro_export]
macro_rules! trace {
    ($($arg:tt)*) => {
        $crate::log::log($crate::log::Level::Trace, $crate::log::SUBSYS_NET, file!(), line!(), &format!($($arg)*))
    };
}
