//! Typed errors of the internal API.
//!
//! Everything below the ABI edge returns [`NetError`]; `src/abi/` maps it to
//! an NCCL result code exactly once (see [`NetError::nccl_class`]) and logs it.

use std::fmt;
use std::io;

use crate::gpu::GpuError;

/// How NCCL should see a failure: the ABI edge turns this into `ncclResult_t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// The caller broke the API contract (bad argument, truncation).
    InvalidUsage,
    /// Bad argument value (unknown device, null pointer).
    InvalidArgument,
    /// The peer or the network failed (reset, EOF, timeout, protocol breach).
    Remote,
    /// A local system call failed.
    System,
    /// A bug or unsupported request inside the plugin.
    Internal,
}

/// One failure, with enough context for a log line that names peer and cause.
#[derive(Clone, Debug)]
pub enum NetError {
    InvalidArgument(String),
    InvalidUsage(String),
    Unsupported(&'static str),
    /// A bug caught inside the plugin (a panic on a worker thread).
    Internal(String),
    /// A system call failed locally.
    Io {
        what: &'static str,
        kind: io::ErrorKind,
        errno: Option<i32>,
    },
    /// The connection to `peer` failed.
    Peer {
        peer: String,
        cause: PeerFailure,
    },
    /// The CUDA layer failed (driver call, NVRTC, no context).
    Gpu(GpuError),
}

/// Why a connection to a peer is no longer usable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerFailure {
    /// Orderly EOF while the connection was in use.
    Closed,
    /// RST, EPIPE or another socket error.
    Reset(String),
    /// The kernel gave up on the connection (`ETIMEDOUT`: its
    /// retransmission limit).
    TimedOut(String),
    /// Nothing at all, not even a heartbeat, arrived for longer than the
    /// peer timeout: the peer host, its link or its process is gone or
    /// stopped.
    NoHeartbeat { waited_ms: u64, timeout_ms: u64 },
    /// TCP connect or handshake did not complete.
    ConnectFailed(String),
    /// The peer sent bytes that break the protocol.
    Protocol(String),
    /// The sender's message is larger than the posted receive buffer.
    Truncated { message: u64, posted: u64 },
    /// The peer's airamp would decide collectives differently (its
    /// agreement digest differs): refused at connect.
    Disagrees { ours: u64, theirs: u64 },
}

impl NetError {
    pub fn io(what: &'static str, err: io::Error) -> Self {
        NetError::Io {
            what,
            kind: err.kind(),
            errno: err.raw_os_error(),
        }
    }

    pub fn peer(peer: impl fmt::Display, cause: PeerFailure) -> Self {
        NetError::Peer {
            peer: peer.to_string(),
            cause,
        }
    }

    /// Whether this error repeats one already logged as a warning, so the
    /// ABI edge logs it at INFO: NCCL asks again to register an application
    /// buffer at every collective that uses it, and a refused one would
    /// otherwise warn each time.
    pub fn is_repeat(&self) -> bool {
        matches!(
            self,
            NetError::Gpu(GpuError::OverMirrorBudget { repeat: true, .. })
        )
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            NetError::InvalidArgument(_) => ErrorClass::InvalidArgument,
            NetError::InvalidUsage(_) => ErrorClass::InvalidUsage,
            NetError::Unsupported(_) | NetError::Internal(_) => ErrorClass::Internal,
            NetError::Io { .. } => ErrorClass::System,
            NetError::Peer {
                cause: PeerFailure::Truncated { .. } | PeerFailure::Disagrees { .. },
                ..
            } => ErrorClass::InvalidUsage,
            NetError::Peer { .. } => ErrorClass::Remote,
            // Our own bad launch arguments are a plugin bug; everything else
            // (driver, NVRTC, context) is a local system failure.
            NetError::Gpu(GpuError::InvalidArgument(_)) => ErrorClass::Internal,
            NetError::Gpu(_) => ErrorClass::System,
        }
    }
}

impl fmt::Display for PeerFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerFailure::Closed => write!(f, "connection closed by peer"),
            PeerFailure::Reset(e) => write!(f, "connection reset: {e}"),
            PeerFailure::TimedOut(e) => write!(f, "connection timed out in the kernel: {e}"),
            PeerFailure::NoHeartbeat {
                waited_ms,
                timeout_ms,
            } => write!(
                f,
                "no heartbeat from peer for {waited_ms} ms (peer timeout {timeout_ms} ms): host, link or process gone or stopped"
            ),
            PeerFailure::ConnectFailed(e) => write!(f, "connect failed: {e}"),
            PeerFailure::Protocol(e) => write!(f, "protocol violation: {e}"),
            PeerFailure::Truncated { message, posted } => write!(
                f,
                "message of {message} bytes does not fit the posted receive of {posted} bytes"
            ),
            PeerFailure::Disagrees { ours, theirs } => write!(
                f,
                "its airamp would run collectives differently (agreement digest {theirs:#018x}, ours {ours:#018x}): every host of a job needs the same airamp build and the same {}, or ranks pick different NCCL channel counts or algorithms and the job hangs; compare `airamp config check` on both hosts",
                crate::config::AGREED_KEYS.join(", ")
            ),
        }
    }
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetError::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
            NetError::InvalidUsage(m) => write!(f, "invalid usage: {m}"),
            NetError::Unsupported(m) => write!(f, "unsupported: {m}"),
            NetError::Internal(m) => write!(f, "internal error: {m}"),
            NetError::Io { what, kind, errno } => match errno {
                Some(e) => write!(
                    f,
                    "{what}: {} (errno {e})",
                    io::Error::from_raw_os_error(*e)
                ),
                None => write!(f, "{what}: {kind}"),
            },
            NetError::Peer { peer, cause } => write!(f, "peer {peer}: {cause}"),
            NetError::Gpu(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for NetError {}

impl From<GpuError> for NetError {
    fn from(e: GpuError) -> Self {
        NetError::Gpu(e)
    }
}

pub type NetResult<T> = Result<T, NetError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_failures_are_system_errors_except_our_own_bad_arguments() {
        let driver = NetError::from(GpuError::Driver {
            call: "cuLaunchKernel",
            code: 2,
            name: "CUDA_ERROR_OUT_OF_MEMORY".into(),
        });
        assert_eq!(driver.class(), ErrorClass::System);
        assert_eq!(
            driver.to_string(),
            "gpu: cuLaunchKernel failed: CUDA_ERROR_OUT_OF_MEMORY (2)"
        );
        assert_eq!(
            NetError::from(GpuError::NoContext).class(),
            ErrorClass::System
        );
        let bad = NetError::from(GpuError::InvalidArgument("src is a null address".into()));
        assert_eq!(bad.class(), ErrorClass::Internal);
    }

    /// A refused mirror is a system error that names the budget; only its
    /// repeats are logged quietly.
    #[test]
    fn a_refused_mirror_names_the_budget_and_only_repeats_are_quiet() {
        let refusal = |repeat| {
            NetError::from(GpuError::OverMirrorBudget {
                wanted: 1 << 30,
                held: (7 << 30) + (512 << 20),
                budget: 8 << 30,
                repeat,
            })
        };
        let first = refusal(false);
        assert_eq!(first.class(), ErrorClass::System);
        assert!(!first.is_repeat());
        let text = first.to_string();
        assert!(text.contains("of 1024.0 MiB"), "{text}");
        assert!(text.contains("to 8704.0 MiB"), "{text}");
        assert!(text.contains("(8192.0 MiB"), "{text}");
        let overflowing = NetError::from(GpuError::OverMirrorBudget {
            wanted: usize::MAX,
            held: 1 << 20,
            budget: 8 << 30,
            repeat: false,
        });
        assert!(overflowing.to_string().contains("MiB"));
        assert!(text.contains("AIRAMP_GPU_MIRROR_BUDGET"), "{text}");
        assert!(refusal(true).is_repeat());
        assert!(refusal(true).to_string().contains("refused again"));
    }
}
