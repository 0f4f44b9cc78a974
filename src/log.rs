//! Logging through NCCL's logger, so `NCCL_DEBUG=INFO` shows `NET/airamp` lines.
//!
//! NCCL hands its logger to `init`; until then (or in the CLI) lines go to
//! stderr when `NCCL_DEBUG` asks for them.

use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Warn = 2,
    Info = 3,
    Trace = 5,
}

/// NCCL's subsystem flags for the lines we emit.
pub const SUBSYS_INIT: u64 = 0x1;
pub const SUBSYS_NET: u64 = 0x10;

/// Where lines go once NCCL has handed us its logger (see `abi::logger`).
pub type Sink = fn(Level, u64, &'static str, u32, &str);

static SINK: OnceLock<Sink> = OnceLock::new();

/// Routes every later line to `sink`; the first sink installed wins.
pub fn set_sink(sink: Sink) {
    let _ = SINK.set(sink);
}

fn stderr_level() -> Option<Level> {
    static LEVEL: OnceLock<Option<Level>> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        match std::env::var("NCCL_DEBUG")
            .unwrap_or_default()
            .to_ascii_uppercase()
            .as_str()
        {
            "WARN" => Some(Level::Warn),
            "INFO" => Some(Level::Info),
            "TRACE" => Some(Level::Trace),
            _ => None,
        }
    })
}

pub fn log(level: Level, subsys: u64, file: &'static str, line: u32, msg: &str) {
    let text = format!("NET/airamp {msg}");
    match SINK.get() {
        Some(sink) => sink(level, subsys, file, line, &text),
        None if stderr_level().is_some_and(|l| level <= l) => eprintln!("{text}"),
        None => {}
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
