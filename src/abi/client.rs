//! The other side of the C face: load a built plugin with `dlopen` and call
//! its vtables exactly as NCCL's proxy does. Used by `plugin-tests/` and
//! `airamp bench`, so both exercise the real exported ABI, not Rust calls.

use std::ffi::{c_int, c_void, CStr, CString};
use std::path::Path;
use std::time::{Duration, Instant};

use super::bindings::*;

/// An NCCL result code other than success, as the plugin returned it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Code(pub u32);

pub const INVALID_ARGUMENT: Code = Code(4);
pub const INVALID_USAGE: Code = Code(5);
pub const REMOTE_ERROR: Code = Code(6);

fn check(r: ncclResult_t) -> Result<(), Code> {
    if r == ncclResult_t::ncclSuccess {
        Ok(())
    } else {
        Err(Code(r.0))
    }
}

/// A `dlopen`ed plugin library.
pub struct Library {
    handle: *mut c_void,
}

impl Library {
    pub fn open(path: &Path) -> Result<Library, String> {
        let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
        // SAFETY: dlopen with a valid C string; the handle is closed in Drop.
        let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            // SAFETY: dlerror returns a thread-local C string or null.
            let err = unsafe { libc::dlerror() };
            let msg = if err.is_null() {
                "dlopen failed".to_string()
            } else {
                // SAFETY: non-null dlerror result is a valid C string.
                unsafe { CStr::from_ptr(err) }
                    .to_string_lossy()
                    .into_owned()
            };
            return Err(format!("{}: {msg}", path.display()));
        }
        Ok(Library { handle })
    }

    pub fn symbol(&self, name: &str) -> Option<*mut c_void> {
        let c = CString::new(name).ok()?;
        // SAFETY: handle is a live dlopen handle.
        let p = unsafe { libc::dlsym(self.handle, c.as_ptr()) };
        (!p.is_null()).then_some(p)
    }

    /// The net vtable of `version`.
    pub fn net(&self, version: NetVersion) -> Result<Net<'_>, String> {
        let sym = self
            .symbol(version.symbol())
            .ok_or_else(|| format!("{} not exported", version.symbol()))?;
        // SAFETY: the symbol is the plugin's vtable of exactly this version's
        // type; it lives as long as the library (which `Net` borrows).
        let vt = unsafe {
            match version {
                NetVersion::V7 => Vt::V7(&*sym.cast()),
                NetVersion::V8 => Vt::V8(&*sym.cast()),
                NetVersion::V9 => Vt::V9(&*sym.cast()),
                NetVersion::V10 => Vt::V10(&*sym.cast()),
                NetVersion::V11 => Vt::V11(&*sym.cast()),
                NetVersion::V12 => Vt::V12(&*sym.cast()),
            }
        };
        Ok(Net {
            vt,
            ctx: std::ptr::null_mut(),
            _lib: std::marker::PhantomData,
        })
    }
}

impl Drop for Library {
    fn drop(&mut self) {
        // SAFETY: handle came from dlopen and is closed once.
        unsafe { libc::dlclose(self.handle) };
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetVersion {
    V7,
    V8,
    V9,
    V10,
    V11,
    V12,
}

impl NetVersion {
    pub const ALL: [NetVersion; 6] = [
        Self::V7,
        Self::V8,
        Self::V9,
        Self::V10,
        Self::V11,
        Self::V12,
    ];

    pub fn symbol(self) -> &'static str {
        match self {
            Self::V7 => "ncclNetPlugin_v7",
            Self::V8 => "ncclNetPlugin_v8",
            Self::V9 => "ncclNetPlugin_v9",
            Self::V10 => "ncclNetPlugin_v10",
            Self::V11 => "ncclNetPlugin_v11",
            Self::V12 => "ncclNetPlugin_v12",
        }
    }
}

enum Vt<'a> {
    V7(&'a ncclNet_v7_t),
    V8(&'a ncclNet_v8_t),
    V9(&'a ncclNet_v9_t),
    V10(&'a ncclNet_v10_t),
    V11(&'a ncclNet_v11_t),
    V12(&'a ncclNet_v12_t),
}

/// Opaque pointers the plugin hands out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Comm(pub *mut c_void);
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request(pub *mut c_void);

// SAFETY: plugin objects may be used from any thread (NCCL's proxy does).
unsafe impl Send for Comm {}
// SAFETY: as above.
unsafe impl Send for Request {}

/// What `getProperties` said, in the fields every version shares.
#[derive(Clone, Debug)]
pub struct Props {
    pub name: String,
    pub pci_path: Option<String>,
    pub ptr_support: i32,
    pub speed: i32,
    pub max_comms: i32,
    pub max_recvs: i32,
    pub max_p2p_bytes: Option<usize>,
}

pub struct Net<'a> {
    vt: Vt<'a>,
    ctx: *mut c_void,
    _lib: std::marker::PhantomData<&'a Library>,
}

/// Calls one vtable member; a missing one is an error, not a crash.
macro_rules! call {
    ($vt:expr, $f:ident ( $($arg:expr),* )) => {
        match $vt.$f {
            // SAFETY: calling the plugin's exported function with arguments
            // that follow NCCL's contract for it.
            Some(f) => check(unsafe { f($($arg),*) }),
            None => Err(Code(ncclResult_t::ncclInternalError.0)),
        }
    };
}

/// Same call on every version whose signature matches.
macro_rules! each {
    ($self:expr, $f:ident ( $($arg:expr),* )) => {
        match &$self.vt {
            Vt::V7(v) => call!(v, $f($($arg),*)),
            Vt::V8(v) => call!(v, $f($($arg),*)),
            Vt::V9(v) => call!(v, $f($($arg),*)),
            Vt::V10(v) => call!(v, $f($($arg),*)),
            Vt::V11(v) => call!(v, $f($($arg),*)),
            Vt::V12(v) => call!(v, $f($($arg),*)),
        }
    };
}

fn cstr(p: *const std::ffi::c_char) -> Option<String> {
    // SAFETY: the plugin returns NUL-terminated strings that live as long as it.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

impl Net<'_> {
    pub fn name(&self) -> String {
        let p = match &self.vt {
            Vt::V7(v) => v.name,
            Vt::V8(v) => v.name,
            Vt::V9(v) => v.name,
            Vt::V10(v) => v.name,
            Vt::V11(v) => v.name,
            Vt::V12(v) => v.name,
        };
        cstr(p).unwrap_or_default()
    }

    pub fn init(&mut self, logger: ncclDebugLogger_t) -> Result<(), Code> {
        let mut ctx = std::ptr::null_mut();
        let mut config = ncclNetCommConfig_v12_t { trafficClass: -1 };
        let r = match &self.vt {
            Vt::V7(v) => call!(v, init(logger)),
            Vt::V8(v) => call!(v, init(logger)),
            Vt::V9(v) => call!(v, init(logger)),
            Vt::V10(v) => call!(v, init(logger, None)),
            Vt::V11(v) => call!(
                v,
                init(
                    &mut ctx,
                    42,
                    (&mut config as *mut ncclNetCommConfig_v12_t).cast(),
                    logger,
                    None
                )
            ),
            Vt::V12(v) => call!(v, init(&mut ctx, 42, &mut config, logger, None)),
        };
        self.ctx = ctx;
        r
    }

    pub fn finalize(&mut self) -> Result<(), Code> {
        match &self.vt {
            Vt::V11(v) => call!(v, finalize(self.ctx)),
            Vt::V12(v) => call!(v, finalize(self.ctx)),
            _ => Ok(()),
        }
    }

    pub fn devices(&self) -> Result<i32, Code> {
        let mut n: c_int = 0;
        each!(self, devices(&mut n))?;
        Ok(n)
    }

    pub fn properties(&self, dev: i32) -> Result<Props, Code> {
        macro_rules! props {
            ($v:expr, $t:ty, $p2p:expr) => {{
                let mut p = <$t>::default();
                call!($v, getProperties(dev, &mut p))?;
                Props {
                    name: cstr(p.name).unwrap_or_default(),
                    pci_path: cstr(p.pciPath),
                    ptr_support: p.ptrSupport,
                    speed: p.speed,
                    max_comms: p.maxComms,
                    max_recvs: p.maxRecvs,
                    max_p2p_bytes: $p2p(&p),
                }
            }};
        }
        Ok(match &self.vt {
            Vt::V7(v) => props!(v, ncclNetProperties_v7_t, |_: &ncclNetProperties_v7_t| None),
            Vt::V8(v) => props!(v, ncclNetProperties_v8_t, |_: &ncclNetProperties_v8_t| None),
            Vt::V9(v) => props!(
                v,
                ncclNetProperties_v9_t,
                |p: &ncclNetProperties_v9_t| Some(p.maxP2pBytes)
            ),
            Vt::V10(v) => props!(v, ncclNetProperties_v10_t, |p: &ncclNetProperties_v10_t| {
                Some(p.maxP2pBytes)
            }),
            Vt::V11(v) => props!(v, ncclNetProperties_v11_t, |p: &ncclNetProperties_v11_t| {
                Some(p.maxP2pBytes)
            }),
            Vt::V12(v) => props!(v, ncclNetProperties_v12_t, |p: &ncclNetProperties_v12_t| {
                Some(p.maxP2pBytes)
            }),
        })
    }

    pub fn listen(&self, dev: i32) -> Result<([u8; 128], Comm), Code> {
        let mut handle = [0u8; 128];
        let h = handle.as_mut_ptr().cast::<c_void>();
        let mut comm = std::ptr::null_mut();
        match &self.vt {
            Vt::V7(v) => call!(v, listen(dev, h, &mut comm)),
            Vt::V8(v) => call!(v, listen(dev, h, &mut comm)),
            Vt::V9(v) => call!(v, listen(dev, h, &mut comm)),
            Vt::V10(v) => call!(v, listen(dev, h, &mut comm)),
            Vt::V11(v) => call!(v, listen(self.ctx, dev, h, &mut comm)),
            Vt::V12(v) => call!(v, listen(self.ctx, dev, h, &mut comm)),
        }?;
        Ok((handle, Comm(comm)))
    }

    /// One non-blocking connect attempt; call again with the same handle.
    pub fn connect(&self, dev: i32, handle: &mut [u8; 128]) -> Result<Option<Comm>, Code> {
        let h = handle.as_mut_ptr().cast::<c_void>();
        let mut comm = std::ptr::null_mut();
        let mut dev_comm = std::ptr::null_mut();
        let mut config = ncclNetCommConfig_v10_t { trafficClass: -1 };
        match &self.vt {
            Vt::V7(v) => call!(v, connect(dev, h, &mut comm, &mut dev_comm)),
            Vt::V8(v) => call!(v, connect(dev, h, &mut comm, &mut dev_comm)),
            Vt::V9(v) => call!(v, connect(dev, h, &mut comm, &mut dev_comm)),
            Vt::V10(v) => call!(v, connect(dev, &mut config, h, &mut comm, &mut dev_comm)),
            Vt::V11(v) => call!(v, connect(self.ctx, dev, h, &mut comm, &mut dev_comm)),
            Vt::V12(v) => call!(v, connect(self.ctx, dev, h, &mut comm, &mut dev_comm)),
        }?;
        Ok((!comm.is_null()).then_some(Comm(comm)))
    }

    pub fn accept(&self, listen: Comm) -> Result<Option<Comm>, Code> {
        let mut comm = std::ptr::null_mut();
        let mut dev_comm = std::ptr::null_mut();
        each!(self, accept(listen.0, &mut comm, &mut dev_comm))?;
        Ok((!comm.is_null()).then_some(Comm(comm)))
    }

    /// # Safety
    /// `data..data+size` must stay valid until `dereg_mr`.
    pub unsafe fn reg_mr(
        &self,
        comm: Comm,
        data: *mut u8,
        size: usize,
        ptr_type: i32,
    ) -> Result<*mut c_void, Code> {
        let mut mh = std::ptr::null_mut();
        let d = data.cast();
        match &self.vt {
            Vt::V7(v) => {
                let size = c_int::try_from(size).map_err(|_| INVALID_ARGUMENT)?;
                call!(v, regMr(comm.0, d, size, ptr_type, &mut mh))
            }
            Vt::V8(v) => call!(v, regMr(comm.0, d, size, ptr_type, &mut mh)),
            Vt::V9(v) => call!(v, regMr(comm.0, d, size, ptr_type, &mut mh)),
            Vt::V10(v) => call!(v, regMr(comm.0, d, size, ptr_type, &mut mh)),
            Vt::V11(v) => call!(v, regMr(comm.0, d, size, ptr_type, &mut mh)),
            Vt::V12(v) => call!(v, regMr(comm.0, d, size, ptr_type, &mut mh)),
        }?;
        Ok(mh)
    }

    /// # Safety
    /// `mh` must be a handle from `reg_mr` on this plugin, not yet deregistered
    /// (or a pointer the plugin is expected to reject).
    pub unsafe fn dereg_mr(&self, comm: Comm, mh: *mut c_void) -> Result<(), Code> {
        each!(self, deregMr(comm.0, mh))
    }

    /// `Ok(None)`: the plugin has no free request right now.
    ///
    /// # Safety
    /// `data..data+size` must stay valid and unchanged until the request completes.
    pub unsafe fn isend(
        &self,
        comm: Comm,
        data: *const u8,
        size: usize,
        tag: i32,
        mh: *mut c_void,
    ) -> Result<Option<Request>, Code> {
        let mut req = std::ptr::null_mut();
        let d = data.cast_mut().cast::<c_void>();
        let null = std::ptr::null_mut();
        match &self.vt {
            Vt::V7(v) => {
                let size = c_int::try_from(size).map_err(|_| INVALID_ARGUMENT)?;
                call!(v, isend(comm.0, d, size, tag, mh, &mut req))
            }
            Vt::V8(v) => {
                let size = c_int::try_from(size).map_err(|_| INVALID_ARGUMENT)?;
                call!(v, isend(comm.0, d, size, tag, mh, &mut req))
            }
            Vt::V9(v) => call!(v, isend(comm.0, d, size, tag, mh, &mut req)),
            Vt::V10(v) => call!(v, isend(comm.0, d, size, tag, mh, null, &mut req)),
            Vt::V11(v) => call!(v, isend(comm.0, d, size, tag, mh, null, &mut req)),
            Vt::V12(v) => call!(v, isend(comm.0, d, size, tag, mh, null, &mut req)),
        }?;
        Ok((!req.is_null()).then_some(Request(req)))
    }

    /// A grouped receive of `(buffer, capacity, tag)` slots.
    ///
    /// # Safety
    /// Every buffer must stay valid, and untouched by anyone else, until the
    /// request completes.
    pub unsafe fn irecv(
        &self,
        comm: Comm,
        slots: &[(*mut u8, usize, i32)],
        mhs: &mut [*mut c_void],
    ) -> Result<Option<Request>, Code> {
        let mut req = std::ptr::null_mut();
        let mut data: Vec<*mut c_void> = slots.iter().map(|s| s.0.cast()).collect();
        let mut tags: Vec<c_int> = slots.iter().map(|s| s.2).collect();
        let mut sizes: Vec<usize> = slots.iter().map(|s| s.1).collect();
        let mut int_sizes: Vec<c_int> = sizes.iter().map(|&s| s as c_int).collect();
        let mut phandles: Vec<*mut c_void> = vec![std::ptr::null_mut(); slots.len()];
        let n = slots.len() as c_int;
        let (d, t, m, p) = (
            data.as_mut_ptr(),
            tags.as_mut_ptr(),
            mhs.as_mut_ptr(),
            phandles.as_mut_ptr(),
        );
        match &self.vt {
            Vt::V7(v) => call!(
                v,
                irecv(comm.0, n, d, int_sizes.as_mut_ptr(), t, m, &mut req)
            ),
            Vt::V8(v) => call!(
                v,
                irecv(comm.0, n, d, int_sizes.as_mut_ptr(), t, m, &mut req)
            ),
            Vt::V9(v) => call!(v, irecv(comm.0, n, d, sizes.as_mut_ptr(), t, m, &mut req)),
            Vt::V10(v) => call!(
                v,
                irecv(comm.0, n, d, sizes.as_mut_ptr(), t, m, p, &mut req)
            ),
            Vt::V11(v) => call!(
                v,
                irecv(comm.0, n, d, sizes.as_mut_ptr(), t, m, p, &mut req)
            ),
            Vt::V12(v) => call!(
                v,
                irecv(comm.0, n, d, sizes.as_mut_ptr(), t, m, p, &mut req)
            ),
        }?;
        Ok((!req.is_null()).then_some(Request(req)))
    }

    /// `Ok(Some(sizes))` once done (`slots` entries; 1 for a send).
    pub fn test(&self, req: Request, slots: usize) -> Result<Option<Vec<i32>>, Code> {
        let mut done: c_int = 0;
        let mut sizes = vec![-1 as c_int; slots.max(1)];
        each!(self, test(req.0, &mut done, sizes.as_mut_ptr()))?;
        Ok((done != 0).then_some(sizes))
    }

    pub fn close_send(&self, comm: Comm) -> Result<(), Code> {
        each!(self, closeSend(comm.0))
    }

    pub fn close_recv(&self, comm: Comm) -> Result<(), Code> {
        each!(self, closeRecv(comm.0))
    }

    pub fn close_listen(&self, comm: Comm) -> Result<(), Code> {
        each!(self, closeListen(comm.0))
    }
}

/// Blocking helpers that poll like NCCL's proxy thread: call, and yield
/// the CPU between attempts, until done or `timeout`.
impl Net<'_> {
    pub fn connect_wait(
        &self,
        dev: i32,
        handle: &mut [u8; 128],
        timeout: Duration,
    ) -> Result<Comm, String> {
        poll(timeout, "connect", || {
            self.connect(dev, handle)
                .map_err(|e| format!("connect: {e:?}"))
        })
    }

    pub fn accept_wait(&self, listen: Comm, timeout: Duration) -> Result<Comm, String> {
        poll(timeout, "accept", || {
            self.accept(listen).map_err(|e| format!("accept: {e:?}"))
        })
    }

    /// Tests until the request completes; the sizes, or the plugin's error.
    pub fn wait(&self, req: Request, slots: usize, timeout: Duration) -> Result<Vec<i32>, Code> {
        let start = Instant::now();
        loop {
            if let Some(sizes) = self.test(req, slots)? {
                return Ok(sizes);
            }
            if start.elapsed() > timeout {
                return Err(Code(ncclResult_t::ncclInternalError.0));
            }
            std::thread::yield_now();
        }
    }

    /// Both ends of one connection inside this process.
    pub fn local_pair(&self, dev: i32, timeout: Duration) -> Result<(Comm, Comm, Comm), String> {
        let (mut handle, listen) = self.listen(dev).map_err(|e| format!("listen: {e:?}"))?;
        let start = Instant::now();
        let (mut send, mut recv) = (None, None);
        while send.is_none() || recv.is_none() {
            if start.elapsed() > timeout {
                return Err("connect/accept did not complete".into());
            }
            if send.is_none() {
                send = self
                    .connect(dev, &mut handle)
                    .map_err(|e| format!("connect: {e:?}"))?;
            }
            if recv.is_none() {
                recv = self.accept(listen).map_err(|e| format!("accept: {e:?}"))?;
            }
        }
        Ok((send.expect("set"), recv.expect("set"), listen))
    }
}

/// Retries `f` while it reports "not yet" (`Ok(None)`), like NCCL does for
/// connect and accept.
pub fn poll<T>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Result<Option<T>, String>,
) -> Result<T, String> {
    let start = Instant::now();
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            return Err(format!("{what} did not complete within {timeout:?}"));
        }
        std::thread::yield_now();
    }
}

/// Posts a request, retrying while the plugin's request pool is full.
pub fn post(
    timeout: Duration,
    mut f: impl FnMut() -> Result<Option<Request>, Code>,
) -> Result<Request, Code> {
    let start = Instant::now();
    loop {
        if let Some(r) = f()? {
            return Ok(r);
        }
        if start.elapsed() > timeout {
            return Err(Code(ncclResult_t::ncclInternalError.0));
        }
        std::thread::yield_now();
    }
}

/// A listen handle as one line of hex, for handing it to another process.
pub fn handle_to_hex(handle: &[u8; 128]) -> String {
    handle.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn handle_from_hex(s: &str) -> Result<[u8; 128], String> {
    let mut out = [0u8; 128];
    if s.len() != 256 {
        return Err(format!("bad handle line ({} chars)", s.len()));
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// The collective-network vtable of one version, driven as NCCL's proxy
/// drives it.
pub struct CollNet<'a> {
    vt: CollVt<'a>,
    ctx: *mut c_void,
    _lib: std::marker::PhantomData<&'a Library>,
}

enum CollVt<'a> {
    V7(&'a ncclCollNet_v7_t),
    V8(&'a ncclCollNet_v8_t),
    V9(&'a ncclCollNet_v9_t),
    V10(&'a ncclCollNet_v10_t),
    V11(&'a ncclCollNet_v11_t),
    V12(&'a ncclCollNet_v12_t),
}

impl NetVersion {
    pub fn collnet_symbol(self) -> &'static str {
        match self {
            Self::V7 => "ncclCollNetPlugin_v7",
            Self::V8 => "ncclCollNetPlugin_v8",
            Self::V9 => "ncclCollNetPlugin_v9",
            Self::V10 => "ncclCollNetPlugin_v10",
            Self::V11 => "ncclCollNetPlugin_v11",
            Self::V12 => "ncclCollNetPlugin_v12",
        }
    }

    pub fn from_number(v: u32) -> Option<NetVersion> {
        Some(match v {
            7 => Self::V7,
            8 => Self::V8,
            9 => Self::V9,
            10 => Self::V10,
            11 => Self::V11,
            12 => Self::V12,
            _ => return None,
        })
    }
}

impl Library {
    /// The collective-network vtable of `version`.
    pub fn collnet(&self, version: NetVersion) -> Result<CollNet<'_>, String> {
        let name = version.collnet_symbol();
        let sym = self
            .symbol(name)
            .ok_or_else(|| format!("{name} not exported"))?;
        // SAFETY: the symbol is the plugin's vtable of exactly this version's
        // type; it lives as long as the library (which `CollNet` borrows).
        let vt = unsafe {
            match version {
                NetVersion::V7 => CollVt::V7(&*sym.cast()),
                NetVersion::V8 => CollVt::V8(&*sym.cast()),
                NetVersion::V9 => CollVt::V9(&*sym.cast()),
                NetVersion::V10 => CollVt::V10(&*sym.cast()),
                NetVersion::V11 => CollVt::V11(&*sym.cast()),
                NetVersion::V12 => CollVt::V12(&*sym.cast()),
            }
        };
        Ok(CollNet {
            vt,
            ctx: std::ptr::null_mut(),
            _lib: std::marker::PhantomData,
        })
    }
}

macro_rules! each_coll {
    ($self:expr, $f:ident ( $($arg:expr),* )) => {
        match &$self.vt {
            CollVt::V7(v) => call!(v, $f($($arg),*)),
            CollVt::V8(v) => call!(v, $f($($arg),*)),
            CollVt::V9(v) => call!(v, $f($($arg),*)),
            CollVt::V10(v) => call!(v, $f($($arg),*)),
            CollVt::V11(v) => call!(v, $f($($arg),*)),
            CollVt::V12(v) => call!(v, $f($($arg),*)),
        }
    };
}

/// `parts` as NCCL's scatter-gather elements of one ABI version.
macro_rules! sges {
    ($parts:expr, $mh:expr, $t:ident, $sz:ty) => {
        $parts
            .iter()
            .map(|p| $t {
                mhandle: $mh,
                address: p.address,
                size: p.size as $sz,
            })
            .collect::<Vec<$t>>()
    };
}

/// A buffer part for iallgather / ireducescatter.
#[derive(Clone, Copy, Debug)]
pub struct Part {
    pub address: *mut c_void,
    pub size: usize,
}

impl CollNet<'_> {
    /// `init`; v11+ get communicator id 7.
    pub fn init(&mut self, logger: ncclDebugLogger_t) -> Result<(), Code> {
        self.init_comm(logger, 7)
    }

    /// `init` of communicator `comm_id` (v11+ pass it, as NCCL passes its
    /// `commHash`; earlier versions have no id).
    pub fn init_comm(&mut self, logger: ncclDebugLogger_t, comm_id: u64) -> Result<(), Code> {
        let mut ctx = std::ptr::null_mut();
        let r = match &self.vt {
            CollVt::V7(v) => call!(v, init(logger)),
            CollVt::V8(v) => call!(v, init(logger)),
            CollVt::V9(v) => call!(v, init(logger)),
            CollVt::V10(v) => call!(v, init(logger)),
            CollVt::V11(v) => call!(v, init(&mut ctx, comm_id, logger)),
            CollVt::V12(v) => call!(v, init(&mut ctx, comm_id, logger)),
        };
        self.ctx = ctx;
        r
    }

    pub fn finalize(&mut self) -> Result<(), Code> {
        match &self.vt {
            CollVt::V11(v) => call!(v, finalize(self.ctx)),
            CollVt::V12(v) => call!(v, finalize(self.ctx)),
            _ => Ok(()),
        }
    }

    pub fn devices(&self) -> Result<i32, Code> {
        let mut n: c_int = 0;
        each_coll!(self, devices(&mut n))?;
        Ok(n)
    }

    pub fn listen(&self, dev: i32) -> Result<([u8; 128], Comm), Code> {
        let mut handle = [0u8; 128];
        let h = handle.as_mut_ptr().cast::<c_void>();
        let mut comm = std::ptr::null_mut();
        match &self.vt {
            CollVt::V7(v) => call!(v, listen(dev, h, &mut comm)),
            CollVt::V8(v) => call!(v, listen(dev, h, &mut comm)),
            CollVt::V9(v) => call!(v, listen(dev, h, &mut comm)),
            CollVt::V10(v) => call!(v, listen(dev, h, &mut comm)),
            CollVt::V11(v) => call!(v, listen(self.ctx, dev, h, &mut comm)),
            CollVt::V12(v) => call!(v, listen(self.ctx, dev, h, &mut comm)),
        }?;
        Ok((handle, Comm(comm)))
    }

    /// Joins the group (blocking, as NCCL calls it).
    pub fn connect(
        &self,
        handles: &mut [[u8; 128]],
        rank: i32,
        listen: Comm,
    ) -> Result<Comm, Code> {
        let mut ptrs: Vec<*mut c_void> =
            handles.iter_mut().map(|h| h.as_mut_ptr().cast()).collect();
        let n = ptrs.len() as c_int;
        let mut comm = std::ptr::null_mut();
        each_coll!(
            self,
            connect(ptrs.as_mut_ptr(), n, rank, listen.0, &mut comm)
        )?;
        Ok(Comm(comm))
    }

    pub fn reduce_support(&self, dtype: u32, op: u32) -> Result<bool, Code> {
        let mut s: c_int = 0;
        each_coll!(
            self,
            reduceSupport(ncclDataType_t(dtype), ncclRedOp_t(op), &mut s)
        )?;
        Ok(s != 0)
    }

    /// # Safety
    /// `data` must be valid for `size` bytes while registered.
    pub unsafe fn reg_mr(
        &self,
        comm: Comm,
        data: *mut c_void,
        size: usize,
    ) -> Result<*mut c_void, Code> {
        let mut mh = std::ptr::null_mut();
        match &self.vt {
            CollVt::V7(v) => {
                let size = c_int::try_from(size).map_err(|_| INVALID_ARGUMENT)?;
                call!(v, regMr(comm.0, data, size, 1, &mut mh))
            }
            CollVt::V8(v) => call!(v, regMr(comm.0, data, size, 1, &mut mh)),
            CollVt::V9(v) => call!(v, regMr(comm.0, data, size, 1, &mut mh)),
            CollVt::V10(v) => call!(v, regMr(comm.0, data, size, 1, &mut mh)),
            CollVt::V11(v) => call!(v, regMr(comm.0, data, size, 1, &mut mh)),
            CollVt::V12(v) => call!(v, regMr(comm.0, data, size, 1, &mut mh)),
        }?;
        Ok(mh)
    }

    /// # Safety
    /// Buffers must hold `count` elements of `dtype` until the request
    /// completes.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn iallreduce(
        &self,
        comm: Comm,
        send: *mut c_void,
        recv: *mut c_void,
        count: usize,
        dtype: u32,
        op: u32,
        mh: *mut c_void,
    ) -> Result<Option<Request>, Code> {
        let mut req = std::ptr::null_mut();
        let (d, o) = (ncclDataType_t(dtype), ncclRedOp_t(op));
        match &self.vt {
            CollVt::V7(v) => call!(
                v,
                iallreduce(comm.0, send, recv, count as c_int, d, o, mh, mh, &mut req)
            ),
            CollVt::V8(v) => call!(
                v,
                iallreduce(comm.0, send, recv, count as c_int, d, o, mh, mh, &mut req)
            ),
            CollVt::V9(v) => call!(
                v,
                iallreduce(comm.0, send, recv, count, d, o, mh, mh, &mut req)
            ),
            CollVt::V10(v) => call!(
                v,
                iallreduce(comm.0, send, recv, count, d, o, mh, mh, &mut req)
            ),
            CollVt::V11(v) => call!(
                v,
                iallreduce(comm.0, send, recv, count, d, o, mh, mh, &mut req)
            ),
            CollVt::V12(v) => call!(
                v,
                iallreduce(comm.0, send, recv, count, d, o, mh, mh, &mut req)
            ),
        }?;
        Ok((!req.is_null()).then_some(Request(req)))
    }

    /// # Safety
    /// `send` valid for this member's piece, `parts` for the window, until
    /// the request completes.
    pub unsafe fn iallgather(
        &self,
        comm: Comm,
        send: *mut c_void,
        parts: &[Part],
        bytes_per_rank: usize,
        window_offset: usize,
        window_bytes: usize,
    ) -> Result<Option<Request>, Code> {
        let mut req = std::ptr::null_mut();
        let mh = std::ptr::null_mut();
        let n = parts.len() as c_int;
        macro_rules! go {
            ($v:expr, $t:ident, $sz:ty) => {{
                let mut sg = sges!(parts, mh, $t, $sz);
                call!(
                    $v,
                    iallgather(
                        comm.0,
                        send,
                        n,
                        sg.as_mut_ptr(),
                        bytes_per_rank,
                        window_offset,
                        window_bytes,
                        mh,
                        &mut req
                    )
                )
            }};
        }
        match &self.vt {
            // v7 has no allgather / reduce-scatter.
            CollVt::V7(_) => Err(Code(ncclResult_t::ncclInternalError.0)),
            CollVt::V8(v) => go!(v, ncclNetSGE_v8_t, u32),
            CollVt::V9(v) => go!(v, ncclNetSGE_v9_t, usize),
            CollVt::V10(v) => go!(v, ncclNetSGE_v10_t, usize),
            CollVt::V11(v) => go!(v, ncclNetSGE_v11_t, usize),
            CollVt::V12(v) => go!(v, ncclNetSGE_v12_t, usize),
        }?;
        Ok((!req.is_null()).then_some(Request(req)))
    }

    /// # Safety
    /// `parts` valid for the window, `recv` for this member's piece, until
    /// the request completes.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn ireducescatter(
        &self,
        comm: Comm,
        parts: &[Part],
        recv: *mut c_void,
        bytes_per_rank: usize,
        window_offset: usize,
        window_bytes: usize,
        dtype: u32,
        op: u32,
    ) -> Result<Option<Request>, Code> {
        let mut req = std::ptr::null_mut();
        let mh = std::ptr::null_mut();
        let n = parts.len() as c_int;
        let (d, o) = (ncclDataType_t(dtype), ncclRedOp_t(op));
        macro_rules! go {
            ($v:expr, $t:ident, $sz:ty) => {{
                let mut sg = sges!(parts, mh, $t, $sz);
                call!(
                    $v,
                    ireducescatter(
                        comm.0,
                        n,
                        sg.as_mut_ptr(),
                        recv,
                        bytes_per_rank,
                        window_offset,
                        window_bytes,
                        d,
                        o,
                        mh,
                        &mut req
                    )
                )
            }};
        }
        match &self.vt {
            // v7 has no allgather / reduce-scatter.
            CollVt::V7(_) => Err(Code(ncclResult_t::ncclInternalError.0)),
            CollVt::V8(v) => go!(v, ncclNetSGE_v8_t, u32),
            CollVt::V9(v) => go!(v, ncclNetSGE_v9_t, usize),
            CollVt::V10(v) => go!(v, ncclNetSGE_v10_t, usize),
            CollVt::V11(v) => go!(v, ncclNetSGE_v11_t, usize),
            CollVt::V12(v) => go!(v, ncclNetSGE_v12_t, usize),
        }?;
        Ok((!req.is_null()).then_some(Request(req)))
    }

    pub fn iflush(&self, comm: Comm) -> Result<Option<Request>, Code> {
        let mut req = std::ptr::null_mut();
        each_coll!(
            self,
            iflush(
                comm.0,
                std::ptr::null_mut(),
                0,
                std::ptr::null_mut(),
                &mut req
            )
        )?;
        Ok((!req.is_null()).then_some(Request(req)))
    }

    /// `Some(size)` once done.
    pub fn test(&self, req: Request) -> Result<Option<i32>, Code> {
        let mut done: c_int = 0;
        let mut size: c_int = 0;
        each_coll!(self, test(req.0, &mut done, &mut size))?;
        Ok((done != 0).then_some(size))
    }

    /// Polls until done or `timeout`: spins briefly (latency), then naps
    /// between polls so that on a small machine the poller does not starve
    /// the stream threads that move the bytes.
    pub fn wait(&self, req: Request, timeout: Duration) -> Result<i32, Code> {
        let start = Instant::now();
        for spins in 0u32.. {
            if let Some(s) = self.test(req)? {
                return Ok(s);
            }
            if start.elapsed() > timeout {
                return Err(Code(ncclResult_t::ncclInternalError.0));
            }
            if spins < 200 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(20));
            }
        }
        unreachable!("the loop returns")
    }

    pub fn close_coll(&self, comm: Comm) -> Result<(), Code> {
        each_coll!(self, closeColl(comm.0))
    }

    pub fn close_listen(&self, comm: Comm) -> Result<(), Code> {
        each_coll!(self, closeListen(comm.0))
    }
}

/// The tuner, `ncclTunerPlugin_v6` (v5's calls have the same signatures).
pub struct Tuner<'a> {
    vt: &'a ncclTuner_v6_t,
    ctx: *mut c_void,
}

/// NCCL's cost table: `float[7 algorithms][3 protocols]`, microseconds.
pub type CostTable = [[f32; 3]; 7];

impl Library {
    pub fn tuner(&self) -> Result<Tuner<'_>, String> {
        let sym = self
            .symbol("ncclTunerPlugin_v6")
            .ok_or("ncclTunerPlugin_v6 not exported")?;
        // SAFETY: the symbol is the plugin's v6 tuner vtable; it lives as
        // long as the library (which `Tuner` borrows).
        let vt = unsafe { &*sym.cast::<ncclTuner_v6_t>() };
        Ok(Tuner {
            vt,
            ctx: std::ptr::null_mut(),
        })
    }
}

impl Tuner<'_> {
    /// `init` for communicator `comm_id` of `ranks` ranks on `nodes` nodes
    /// (no NVLink domain info, no constants).
    pub fn init(
        &mut self,
        comm_id: u64,
        ranks: usize,
        nodes: usize,
        logger: ncclDebugLogger_t,
    ) -> Result<(), Code> {
        let mut ctx = std::ptr::null_mut();
        call!(
            self.vt,
            init(
                &mut ctx,
                comm_id,
                ranks,
                nodes,
                logger,
                std::ptr::null_mut(),
                std::ptr::null_mut()
            )
        )?;
        self.ctx = ctx;
        Ok(())
    }

    /// `getCollInfo` of `func` (`ncclFunc_t`) on `bytes`: the tuner edits
    /// `table` in place.
    pub fn coll_info(&self, func: u32, bytes: usize, table: &mut CostTable) -> Result<(), Code> {
        let mut n_channels: c_int = 0;
        let t: *mut CostTable = table;
        call!(
            self.vt,
            getCollInfo(
                self.ctx,
                ncclFunc_t(func),
                bytes,
                1,
                t.cast(),
                7,
                3,
                0,
                &mut n_channels
            )
        )
    }

    pub fn finalize(&mut self) -> Result<(), Code> {
        call!(self.vt, finalize(self.ctx))
    }
}
