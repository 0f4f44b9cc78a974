//! `ncclTunerPlugin_v5` (NCCL 2.28 .. 2.29): init takes the communicator id,
//! the NVLink domain shape and NCCL's model constants (read for the init log
//! line only; never changed), `destroy` becomes `finalize`.

use std::ffi::{c_int, c_void};

use super::bindings::{
    ncclDebugLogger_t, ncclFunc_t, ncclNvlDomainInfo_v5_t, ncclResult_t, ncclTunerConstants_v5_t,
    ncclTuner_v5_t,
};
use super::tuner;
use super::Vtable;

/// The init log's view of v5/v6 init arguments.
pub(super) fn describe(
    comm_id: u64,
    nvl: Option<&ncclNvlDomainInfo_v5_t>,
    constants: Option<&ncclTunerConstants_v5_t>,
) -> String {
    let mut s = format!(", comm {comm_id:#x}");
    if let Some(d) = nvl {
        s.push_str(&format!(
            ", {} NVLink domain(s) of {}..{} ranks",
            d.nNvlDomains, d.minRanksPerNvlDomain, d.maxRanksPerNvlDomain
        ));
    }
    if let Some(c) = constants {
        let finite = c.baseLatencies.iter().flatten().all(|x| x.is_finite())
            && c.hwLatencies
                .iter()
                .flatten()
                .flatten()
                .all(|x| x.is_finite());
        if !finite {
            s.push_str(", NCCL's latency constants are not finite (ignored)");
        }
    }
    s
}

/// `init` of v5 and, as `init::<6>`, of v6 (v6's arguments are v5's);
/// `VERSION` is what the init line logs.
pub(super) unsafe extern "C" fn init<const VERSION: u32>(
    context: *mut *mut c_void,
    comm_id: u64,
    n_ranks: usize,
    n_nodes: usize,
    logger: ncclDebugLogger_t,
    nvl_domain_info: *mut ncclNvlDomainInfo_v5_t,
    constants: *mut ncclTunerConstants_v5_t,
) -> ncclResult_t {
    // SAFETY: NCCL passes its structs or NULL; we only read them.
    let (nvl, constants) = unsafe { (nvl_domain_info.as_ref(), constants.as_ref()) };
    let extra = describe(comm_id, nvl, constants);
    let max_ranks_per_domain = nvl.and_then(|d| usize::try_from(d.maxRanksPerNvlDomain).ok());
    // SAFETY: NCCL passes a writable context pointer.
    unsafe {
        tuner::init_guarded(
            VERSION,
            context,
            Some(comm_id),
            n_ranks,
            n_nodes,
            max_ranks_per_domain,
            logger,
            &extra,
        )
    }
}

/// Shared with v6 (same signature).
#[allow(clippy::too_many_arguments)]
pub(super) unsafe extern "C" fn get_coll_info(
    context: *mut c_void,
    coll_type: ncclFunc_t,
    n_bytes: usize,
    num_pipe_ops: c_int,
    coll_cost_table: *mut *mut f32,
    num_algo: c_int,
    num_proto: c_int,
    _reg_buff: c_int,
    n_channels: *mut c_int,
) -> ncclResult_t {
    // SAFETY: NCCL passes our context, its float[numAlgo][numProto] table and
    // its writable nChannels (or NULL).
    unsafe {
        tuner::coll_info_table(
            context,
            coll_type.0 as i32,
            n_bytes,
            num_pipe_ops,
            coll_cost_table,
            num_algo,
            num_proto,
            n_channels,
        )
    }
}

/// Shared with v6.
pub(super) unsafe extern "C" fn finalize(context: *mut c_void) -> ncclResult_t {
    // SAFETY: NCCL passes the context our init wrote.
    unsafe { tuner::finalize_guarded(context) }
}

#[no_mangle]
pub static ncclTunerPlugin_v5: Vtable<ncclTuner_v5_t> = Vtable(ncclTuner_v5_t {
    name: tuner::NAME.as_ptr(),
    init: Some(init::<5>),
    getCollInfo: Some(get_coll_info),
    finalize: Some(finalize),
});
