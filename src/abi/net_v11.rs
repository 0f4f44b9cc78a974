//! `ncclNetPlugin_v11` (NCCL 2.28+): one context per NCCL communicator, created by
//! `init` and released by `finalize`.

use std::ffi::{c_int, c_void};

use super::bindings::{ncclCollNet_v11_t, ncclNetSGE_v11_t};
use super::bindings::{
    ncclDebugLogger_t, ncclNetCommConfig_v11_t, ncclNetDeviceHandle_v11_t, ncclNetProperties_v11_t,
    ncclNet_v11_t, ncclProfilerCallback_t, ncclResult_t,
};
use super::collnet;
use super::net::{self, fill_common_properties, fill_v9_properties, shared};
use super::{guard, Vtable};
use crate::error::NetError;

unsafe extern "C" fn init(
    ctx: *mut *mut c_void,
    comm_id: u64,
    config: *mut ncclNetCommConfig_v11_t,
    logger: ncclDebugLogger_t,
    _profiler: ncclProfilerCallback_t,
) -> ncclResult_t {
    guard("init", || {
        net::init(logger)?;
        // SAFETY: NCCL passes its config or NULL.
        let traffic_class = unsafe { config.as_ref() }.map_or(-1, |c| c.trafficClass);
        // SAFETY: NCCL passes a writable context pointer.
        unsafe { net::init_context(ctx, comm_id, traffic_class) }
    })
}

unsafe extern "C" fn get_properties(
    dev: c_int,
    props: *mut ncclNetProperties_v11_t,
) -> ncclResult_t {
    guard("getProperties", || {
        let p = net::properties(dev)?;
        // SAFETY: NCCL passes a writable v11 properties struct.
        let out =
            unsafe { props.as_mut() }.ok_or(NetError::InvalidArgument("props is NULL".into()))?;
        fill_v9_properties!(&mut *out, &p, dev);
        out.maxMultiRequestSize = 1;
        Ok(())
    })
}

unsafe extern "C" fn listen(
    _ctx: *mut c_void,
    dev: c_int,
    handle: *mut c_void,
    listen_comm: *mut *mut c_void,
) -> ncclResult_t {
    // SAFETY: NCCL passes a 128-byte handle buffer and an out-pointer.
    guard("listen", || unsafe {
        net::listen(dev, handle, listen_comm)
    })
}

unsafe extern "C" fn connect(
    _ctx: *mut c_void,
    dev: c_int,
    handle: *mut c_void,
    send_comm: *mut *mut c_void,
    _send_dev_comm: *mut *mut ncclNetDeviceHandle_v11_t,
) -> ncclResult_t {
    // SAFETY: NCCL retries with the same handle buffer.
    guard("connect", || unsafe {
        net::connect(dev, handle, send_comm)
    })
}

#[no_mangle]
pub static ncclNetPlugin_v11: Vtable<ncclNet_v11_t> = Vtable(ncclNet_v11_t {
    name: net::NAME.as_ptr(),
    init: Some(init),
    devices: Some(shared::devices),
    getProperties: Some(get_properties),
    listen: Some(listen),
    connect: Some(connect),
    accept: Some(shared::accept),
    regMr: Some(shared::reg_mr),
    regMrDmaBuf: Some(shared::reg_mr_dma_buf),
    deregMr: Some(shared::dereg_mr),
    isend: Some(shared::isend_profiled),
    irecv: Some(shared::irecv_profiled),
    iflush: Some(shared::iflush),
    test: Some(shared::test),
    closeSend: Some(shared::close_send),
    closeRecv: Some(shared::close_recv),
    closeListen: Some(shared::close_listen),
    getDeviceMr: None,
    irecvConsumed: None,
    makeVDevice: None,
    finalize: Some(shared::finalize),
    setNetAttr: None,
});

collnet::collnet_get_properties!(ncclNetProperties_v11_t);

/// The collective network of the same ABI version: devices and listen are
/// the net plugin's; properties add GPU buffers when offered, and memory
/// registration accepts them.
#[no_mangle]
pub static ncclCollNetPlugin_v11: Vtable<ncclCollNet_v11_t> = Vtable(ncclCollNet_v11_t {
    name: net::NAME.as_ptr(),
    init: Some(collnet::shared::init_context),
    devices: Some(shared::devices),
    getProperties: Some(collnet_get_properties),
    listen: Some(collnet::shared::listen_in_context),
    connect: Some(collnet::shared::connect),
    reduceSupport: Some(collnet::shared::reduce_support),
    regMr: Some(collnet::shared::reg_mr),
    regMrDmaBuf: Some(shared::reg_mr_dma_buf),
    deregMr: Some(collnet::shared::dereg_mr),
    iallreduce: Some(collnet::shared::iallreduce_sized),
    iallgather: Some(collnet::shared::iallgather::<ncclNetSGE_v11_t>),
    ireducescatter: Some(collnet::shared::ireducescatter::<ncclNetSGE_v11_t>),
    iflush: Some(collnet::shared::iflush),
    test: Some(collnet::shared::test),
    closeColl: Some(collnet::shared::close_coll),
    closeListen: Some(collnet::shared::close_listen),
    makeVDevice: None,
    finalize: Some(shared::finalize),
});
