//! `ncclNetPlugin_v7` and `ncclCollNetPlugin_v7` (NCCL 2.19): v8 without
//! `regIsGlobal` in the properties, an `int` size in `regMr`, and a
//! collective network with allreduce only.

use std::ffi::{c_int, c_void};

use super::bindings::{
    ncclCollNet_v7_t, ncclDebugLogger_t, ncclNetDeviceHandle_v7_t, ncclNetProperties_v7_t,
    ncclNet_v7_t, ncclResult_t,
};
use super::collnet;
use super::net::{self, fill_common_properties, shared};
use super::{guard, Vtable};
use crate::error::NetError;

unsafe extern "C" fn init(logger: ncclDebugLogger_t) -> ncclResult_t {
    guard("init", || net::init(logger))
}

unsafe extern "C" fn get_properties(
    dev: c_int,
    props: *mut ncclNetProperties_v7_t,
) -> ncclResult_t {
    guard("getProperties", || {
        let p = net::properties(dev)?;
        // SAFETY: NCCL passes a writable v7 properties struct.
        let out =
            unsafe { props.as_mut() }.ok_or(NetError::InvalidArgument("props is NULL".into()))?;
        fill_common_properties!(v7: &mut *out, &p);
        Ok(())
    })
}

unsafe extern "C" fn listen(
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
    dev: c_int,
    handle: *mut c_void,
    send_comm: *mut *mut c_void,
    _send_dev_comm: *mut *mut ncclNetDeviceHandle_v7_t,
) -> ncclResult_t {
    // SAFETY: NCCL retries with the same handle buffer.
    guard("connect", || unsafe {
        net::connect(dev, handle, send_comm)
    })
}

fn int_size(what: &str, size: c_int) -> Result<usize, NetError> {
    usize::try_from(size).map_err(|_| NetError::InvalidArgument(format!("{what} size {size}")))
}

unsafe extern "C" fn reg_mr(
    _comm: *mut c_void,
    data: *mut c_void,
    size: c_int,
    ptr_type: c_int,
    mhandle: *mut *mut c_void,
) -> ncclResult_t {
    guard("regMr", || {
        let size = int_size("regMr", size)?;
        // SAFETY: NCCL's regMr contract.
        unsafe { net::reg_mr(data, size, ptr_type, mhandle) }
    })
}

unsafe extern "C" fn isend(
    comm: *mut c_void,
    data: *mut c_void,
    size: c_int,
    tag: c_int,
    _mhandle: *mut c_void,
    request: *mut *mut c_void,
) -> ncclResult_t {
    guard("isend", || {
        let size = int_size("isend", size)?;
        // SAFETY: NCCL's isend contract.
        unsafe { net::isend(comm, data, size, tag, request) }
    })
}

unsafe extern "C" fn irecv(
    comm: *mut c_void,
    n: c_int,
    data: *mut *mut c_void,
    sizes: *mut c_int,
    tags: *mut c_int,
    _mhandles: *mut *mut c_void,
    request: *mut *mut c_void,
) -> ncclResult_t {
    guard("irecv", || {
        if sizes.is_null() {
            return Err(NetError::InvalidArgument("irecv sizes is NULL".into()));
        }
        // SAFETY: `sizes` holds `n` ints (NCCL's irecv contract).
        let size_of = |i: usize| usize::try_from(unsafe { *sizes.add(i) }).unwrap_or(0);
        // SAFETY: NCCL's irecv contract.
        unsafe { net::irecv(comm, n, data, size_of, tags, request) }
    })
}

#[no_mangle]
pub static ncclNetPlugin_v7: Vtable<ncclNet_v7_t> = Vtable(ncclNet_v7_t {
    name: net::NAME.as_ptr(),
    init: Some(init),
    devices: Some(shared::devices),
    getProperties: Some(get_properties),
    listen: Some(listen),
    connect: Some(connect),
    accept: Some(shared::accept),
    regMr: Some(reg_mr),
    regMrDmaBuf: Some(shared::reg_mr_dma_buf),
    deregMr: Some(shared::dereg_mr),
    isend: Some(isend),
    irecv: Some(irecv),
    iflush: Some(shared::iflush),
    test: Some(shared::test),
    closeSend: Some(shared::close_send),
    closeRecv: Some(shared::close_recv),
    closeListen: Some(shared::close_listen),
    getDeviceMr: None,
    irecvConsumed: None,
});

collnet::collnet_get_properties!(ncclNetProperties_v7_t);

unsafe extern "C" fn collnet_reg_mr(
    coll_comm: *mut c_void,
    data: *mut c_void,
    size: c_int,
    ptr_type: c_int,
    mhandle: *mut *mut c_void,
) -> ncclResult_t {
    guard("collnet regMr", || {
        let size = int_size("collnet regMr", size)?;
        // SAFETY: NCCL's regMr contract.
        unsafe { collnet::reg_mr(coll_comm, data, size, ptr_type, mhandle) }
    })
}

/// The collective network of NCCL 2.19: allreduce only (NCCL then never
/// runs allgather or reduce-scatter through it).
#[no_mangle]
pub static ncclCollNetPlugin_v7: Vtable<ncclCollNet_v7_t> = Vtable(ncclCollNet_v7_t {
    name: net::NAME.as_ptr(),
    init: Some(collnet::shared::init),
    devices: Some(shared::devices),
    getProperties: Some(collnet_get_properties),
    listen: Some(listen),
    connect: Some(collnet::shared::connect),
    reduceSupport: Some(collnet::shared::reduce_support),
    regMr: Some(collnet_reg_mr),
    regMrDmaBuf: Some(shared::reg_mr_dma_buf),
    deregMr: Some(collnet::shared::dereg_mr),
    iallreduce: Some(collnet::shared::iallreduce_int),
    iflush: Some(collnet::shared::iflush),
    test: Some(collnet::shared::test),
    closeColl: Some(collnet::shared::close_coll),
    closeListen: Some(shared::close_listen),
});
