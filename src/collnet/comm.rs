//! The collective network's internal API, below its C face
//! (`abi/collnet.rs`, which checks and converts NCCL's arguments): a
//! collective comm joins its group, runs the calibration rounds and files
//! their record for this node's ranks; NCCL's calls reach the group
//! through it.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::calibrate::probe::{Calibrated, RecordKey, Setup};
use super::calibrate::store::RecordFile;
use super::calibrate::{self, Agreed, ExecutorRates};
use super::group::Group;
use crate::codec::WireFormat;
use crate::config;
use crate::error::NetResult;
use crate::net;
use crate::transport::tcp::Listener;
use crate::transport::wire::{ListenHandle, HANDLE_BYTES};

/// A group shared by its comm and the requests in flight on it (NCCL
/// calls it from its proxy thread).
pub type SharedGroup = Arc<Mutex<Group>>;

/// The group behind a shared handle.
pub fn lock(g: &SharedGroup) -> MutexGuard<'_, Group> {
    // A panic while holding the lock already failed that call; the group's
    // own failure state is what matters afterwards.
    g.lock().unwrap_or_else(|p| p.into_inner())
}

/// A collective comm: the group, and the calibration record it filed for
/// this node's ranks (removed when NCCL closes the comm).
pub struct CollComm {
    group: SharedGroup,
    _record: Option<RecordFile>,
}

impl CollComm {
    /// Joins the group of `handles` (every member's listen handle, as
    /// decoded and as NCCL passed them) as member `rank`, accepting on
    /// `listener`. Blocks for at most the larger of the peer and handshake
    /// timeouts: NCCL's CollNet connect is a blocking call. `comm_id` is
    /// the communicator NCCL named (v11+), under which the calibration
    /// record is filed for every local rank's tuner.
    pub fn connect(
        listener: &mut Listener,
        handles: &[ListenHandle],
        raw_handles: &[[u8; HANDLE_BYTES]],
        rank: usize,
        comm_id: Option<u64>,
    ) -> NetResult<CollComm> {
        let group_key = calibrate::group_key(raw_handles.iter().map(|h| &h[..]));
        let settings = &net::plugin()?.settings;
        let timeout = settings.peer_timeout.max(settings.handshake_timeout);
        let workers = config::global().collnet.workers();
        let proxy_assist = config::global().collnet.proxy_assist;
        let fp8 = configured_fp8();
        let codec_timing = Instant::now();
        let setup = calibration_setup(comm_id, group_key, fp8.is_some(), workers);
        let codec_timing = codec_timing.elapsed();
        let (group, calibrated) = Group::join(
            listener,
            handles,
            rank,
            settings,
            fp8,
            timeout,
            workers,
            proxy_assist,
            !super::device::offers_gpu_buffers(),
            setup,
        )?;
        log_calibration(rank, handles.len(), comm_id, &calibrated, codec_timing);
        Ok(CollComm {
            group: Arc::new(Mutex::new(group)),
            _record: calibrated.record,
        })
    }

    pub fn group(&self) -> &SharedGroup {
        &self.group
    }
}

/// The wire format this member proposes (the group agrees at connect).
fn configured_fp8() -> Option<WireFormat> {
    let c = &config::global().compression;
    c.fp8_allreduce.then_some(c.format)
}

/// What this member brings to the calibration rounds. It asks for them when
/// they can change a decision: the tuner is on, FP8 allreduce is on, the
/// configuration does not already give every figure, and NCCL named the
/// communicator (v11+), so every local rank's tuner can find the result.
fn calibration_setup(comm_id: Option<u64>, group_key: u64, fp8: bool, workers: usize) -> Setup {
    let t = &config::global().tuner;
    let configured_all = t.link_gbps.is_some()
        && t.link_latency_us.is_some()
        && t.encode_gvps.is_some()
        && t.decode_gvps.is_some();
    let ask = t.enabled && t.calibrate && fp8 && !configured_all && comm_id.is_some();
    Setup {
        ask,
        // The host executor's codec; a GPU executor plugs its kernels'
        // rates in here once the group runs its codec on the GPU.
        rates: if ask {
            Ok(ExecutorRates::cpu(workers))
        } else {
            Err("calibration not asked for".into())
        },
        record: comm_id.map(|comm_id| RecordKey { comm_id, group_key }),
        call_overhead_us: t.call_overhead_us,
        probe_values: calibrate::probe::PROBE_VALUES,
    }
}

/// One INFO line per joined group: what was agreed and how long it took
/// (`codec_timing`: timing this process's codec, the first time only).
fn log_calibration(
    rank: usize,
    n: usize,
    comm_id: Option<u64>,
    c: &Calibrated,
    codec_timing: Duration,
) {
    let comm = comm_id.map_or("no communicator id (collnet < v11)".to_string(), |id| {
        format!("comm {id:#x}")
    });
    let what = match c.agreed {
        Agreed::Measured(f) => format!(
            "agreed link {:.3} Gbit/s, {:.1} us; codec encode {:.3} / decode+acc {:.3} G values/s",
            f.gbps, f.latency_us, f.encode_gvps, f.decode_gvps
        ),
        Agreed::Fallback(calibrate::Fallback::NotRun) => {
            "not run (some member did not ask: tuner or FP8 off, full profile configured, or no communicator id); tuners use the configured profile".to_string()
        }
        Agreed::Fallback(calibrate::Fallback::Failed { member }) => format!(
            "member {member}'s measurement failed; every rank's tuner uses the configured profile"
        ),
    };
    let local = c.local.map_or(String::new(), |f| {
        format!(
            " (this member: {:.3} Gbit/s, {:.1} us, codec {:.3} / {:.3}{})",
            f.gbps,
            f.latency_us,
            f.encode_gvps,
            f.decode_gvps,
            c.probe.map_or(String::new(), |p| {
                let streamed =
                    p.streamed
                        .map_or("no streamed round".to_string(), |(calls, took)| {
                            format!("{:.2} ms for {calls} streamed", took.as_secs_f64() * 1e3)
                        });
                format!(
                    ", probing FP8 allreduce {:.2} ms alone, {streamed}",
                    p.one_call.as_secs_f64() * 1e3
                )
            })
        )
    });
    crate::info!(
        crate::log::SUBSYS_NET,
        "collnet calibration, member {rank} of {n}, {comm}: {what}{local}; {:.1} ms in connect (links {:.1}, lone calls {:.1}, streamed {:.1}, agreement {:.1}; +{:.1} ms timing the codec)",
        c.took.as_secs_f64() * 1e3,
        ms(c.phases.links),
        ms(c.phases.lone),
        ms(c.phases.streamed),
        ms(c.phases.agree),
        codec_timing.as_secs_f64() * 1e3
    );
    if let (Some(id), Agreed::Measured(_)) = (comm_id, c.agreed) {
        crate::metrics::calibration().connect_took(id, c.took);
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
