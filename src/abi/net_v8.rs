//! `ncclNetPlugin_v8` (NCCL 2.20+): int sizes, no per-comm context.

use std::ffi::{c_int, c_void};

use super::bindings::{ncclCollNet_v8_t, ncclNetSGE_v8_t};
use super::bindings::{
    ncclDebugLogger_t, ncclNetDeviceHandle_v8_t, ncclNetProperties_v8_t, ncclNet_v8_t, ncclResult_t,
};
use super::collnet;
use super::net::{self, fill_common_properties, shared};
use super::{guard, Vtable};

pub(super) unsafe extern "C" fn init(logger: ncclDebugLogger_t) -> ncclResult_t {
    guard("init", || net::init(logger))
}

unsafe extern "C" fn get_properties(
    dev: c_int,
    props: *mut ncclNetProperties_v8_t,
) -> ncclResult_t {
    guard("getProperties", || {
        let p = net::properties(dev)?;
        // SAFETY: NCCL passes a writable v8 properties struct.
        let out = unsafe { props.as_mut() }.ok_or(crate::error::NetError::InvalidArgument(
            "props is NULL".into(),
        ))?;
        fill_common_properties!(&mut *out, &p);
        Ok(())
    })
}

pub(super) unsafe extern "C" fn listen(
    dev: c_int,
    handle: *mut c_void,
    listen_comm: *mut *mut c_void,
) -> ncclResult_t {
    // SAFETY: NCCL passes a 128-byte handle buffer and an out-pointer.
    guard("listen", || unsafe {
        net::listen(dev, handle, listen_comm)
    })
}

pub(super) unsafe extern "C" fn connect(
    dev: c_int,
    handle: *mut c_void,
    send_comm: *mut *mut c_void,
    _send_dev_comm: *mut *mut ncclNetDeviceHandle_v8_t,
) -> ncclResult_t {
    // SAFETY: NCCL retries with the same handle buffer.
    guard("connect", || unsafe {
        net::connect(dev, handle, send_comm)
    })
}

pub(super) unsafe extern "C" fn isend(
    comm: *mut c_void,
    data: *mut c_void,
    size: c_int,
    tag: c_int,
    _mhandle: *mut c_void,
    request: *mut *mut c_void,
) -> ncclResult_t {
    guard("isend", || {
        let size = usize::try_from(size)
            .map_err(|_| crate::error::NetError::InvalidArgument(format!("isend size {size}")))?;
        // SAFETY: NCCL's isend contract.
        unsafe { net::isend(comm, data, size, tag, request) }
    })
}

pub(super) unsafe extern "C" fn irecv(
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
            return Err(crate::error::NetError::InvalidArgument(
                "irecv sizes is NULL".into(),
            ));
        }
        // SAFETY: `sizes` holds `n` ints (NCCL's irecv contract).
        let size_of = |i: usize| usize::try_from(unsafe { *sizes.add(i) }).unwrap_or(0);
        // SAFETY: NCCL's irecv contract.
        unsafe { net::irecv(comm, n, data, size_of, tags, request) }
    })
}

#[no_mangle]
pub static ncclNetPlugin_v8: Vtable<ncclNet_v8_t> = Vtable(ncclNet_v8_t {
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

collnet::collnet_get_properties!(ncclNetProperties_v8_t);

/// The collective network of the same ABI version: devices and listen are
/// the net plugin's; properties add GPU buffers when offered, and memory
/// registration accepts them.
#[no_mangle]
pub static ncclCollNetPlugin_v8: Vtable<ncclCollNet_v8_t> = Vtable(ncclCollNet_v8_t {
    name: net::NAME.as_ptr(),
    init: Some(collnet::shared::init),
    devices: Some(shared::devices),
    getProperties: Some(collnet_get_properties),
    listen: Some(listen),
    connect: Some(collnet::shared::connect),
    reduceSupport: Some(collnet::shared::reduce_support),
    regMr: Some(collnet::shared::reg_mr),
    regMrDmaBuf: Some(shared::reg_mr_dma_buf),
    deregMr: Some(collnet::shared::dereg_mr),
    iallreduce: Some(collnet::shared::iallreduce_int),
    iallgather: Some(collnet::shared::iallgather::<ncclNetSGE_v8_t>),
    ireducescatter: Some(collnet::shared::ireducescatter::<ncclNetSGE_v8_t>),
    iflush: Some(collnet::shared::iflush),
    test: Some(collnet::shared::test),
    closeColl: Some(collnet::shared::close_coll),
    closeListen: Some(shared::close_listen),
});
