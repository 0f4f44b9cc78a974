//! Shared pieces of the ABI harness: loading the plugin, NCCL-style
//! connect/accept/test loops, payload patterns and child processes.

use std::ffi::{c_char, c_void};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use airamp::abi::bindings::ncclDebugLogger_t;
use airamp::abi::client::{Code, Comm, Library, Net, NetVersion, Request};

extern "C" {
    fn airamp_test_log(out: *mut c_char, cap: usize) -> usize;
}

pub type TestResult = Result<(), String>;

/// The logger NCCL would pass: a C-variadic function from support/logger.c.
pub fn logger() -> ncclDebugLogger_t {
    extern "C" {
        fn airamp_test_logger(
            level: u32,
            flags: u64,
            file: *const c_char,
            line: i32,
            fmt: *const c_char,
            ...
        );
    }
    // SAFETY: the C function has exactly ncclDebugLogger_t's signature (its
    // first parameter is the C enum, an unsigned int on this ABI).
    Some(unsafe {
        std::mem::transmute::<
            unsafe extern "C" fn(u32, u64, *const c_char, i32, *const c_char, ...),
            unsafe extern "C" fn(
                airamp::abi::bindings::ncclDebugLogLevel,
                std::ffi::c_ulong,
                *const c_char,
                std::ffi::c_int,
                *const c_char,
                ...
            ),
        >(airamp_test_logger)
    })
}

/// Everything the plugin logged through NCCL's logger so far.
pub fn captured_log() -> String {
    let mut buf = vec![0 as c_char; 1 << 20];
    // SAFETY: buffer and capacity match; the C side NUL-terminates.
    let n = unsafe { airamp_test_log(buf.as_mut_ptr(), buf.len()) };
    buf[..n].iter().map(|&c| c as u8 as char).collect()
}

/// The built plugin: `libairamp.so` beside the `airamp` binary, or
/// `PLUGIN_TESTS_LIB` if set.
pub fn plugin_path() -> PathBuf {
    if let Some(p) = std::env::var_os("PLUGIN_TESTS_LIB") {
        return p.into();
    }
    PathBuf::from(env!("CARGO_BIN_EXE_airamp")).with_file_name("libairamp.so")
}

pub fn open() -> Library {
    Library::open(&plugin_path()).unwrap_or_else(|e| panic!("cannot load the plugin: {e}"))
}

pub fn init(lib: &Library, v: NetVersion) -> Net<'_> {
    let mut net = lib.net(v).expect("net vtable");
    net.init(logger()).expect("init");
    net
}

pub const DEADLINE: Duration = Duration::from_secs(60);

pub fn connect(net: &Net, dev: i32, handle: &mut [u8; 128]) -> Result<Comm, String> {
    let start = Instant::now();
    loop {
        match net.connect(dev, handle) {
            Ok(Some(c)) => return Ok(c),
            Ok(None) if start.elapsed() < DEADLINE => std::thread::yield_now(),
            Ok(None) => return Err("connect never completed".into()),
            Err(e) => return Err(format!("connect failed: {e:?}")),
        }
    }
}

pub fn accept(net: &Net, listen: Comm) -> Result<Comm, String> {
    let start = Instant::now();
    loop {
        match net.accept(listen) {
            Ok(Some(c)) => return Ok(c),
            Ok(None) if start.elapsed() < DEADLINE => {
                std::thread::sleep(Duration::from_micros(200))
            }
            Ok(None) => return Err("accept never completed".into()),
            Err(e) => return Err(format!("accept failed: {e:?}")),
        }
    }
}

/// Polls like NCCL's proxy: test until done or error, yielding between polls.
pub fn wait(net: &Net, req: Request, slots: usize) -> Result<Vec<i32>, Code> {
    let start = Instant::now();
    loop {
        if let Some(sizes) = net.test(req, slots)? {
            return Ok(sizes);
        }
        assert!(start.elapsed() < DEADLINE, "request never completed");
        std::thread::yield_now();
    }
}

/// Retries a post while the plugin's request pool is full.
pub fn post(mut f: impl FnMut() -> Result<Option<Request>, Code>) -> Result<Request, Code> {
    let start = Instant::now();
    loop {
        if let Some(r) = f()? {
            return Ok(r);
        }
        assert!(start.elapsed() < DEADLINE, "request pool never freed");
        std::thread::yield_now();
    }
}

/// Both ends of a connection inside this process.
pub fn local_pair(net: &Net) -> Result<(Comm, Comm, Comm), String> {
    let (mut handle, listen) = net.listen(0).map_err(|e| format!("listen: {e:?}"))?;
    let start = Instant::now();
    let (mut send, mut recv) = (None, None);
    while send.is_none() || recv.is_none() {
        if start.elapsed() > DEADLINE {
            return Err("local connect/accept never completed".into());
        }
        if send.is_none() {
            send = net
                .connect(0, &mut handle)
                .map_err(|e| format!("connect: {e:?}"))?;
        }
        if recv.is_none() {
            recv = net.accept(listen).map_err(|e| format!("accept: {e:?}"))?;
        }
    }
    Ok((send.unwrap(), recv.unwrap(), listen))
}

/// Deterministic payload: both processes derive the same bytes from a seed.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn unhex(s: &str) -> [u8; 128] {
    let mut out = [0u8; 128];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex handle");
    }
    out
}

pub fn version_name(v: NetVersion) -> &'static str {
    v.symbol().trim_start_matches("ncclNetPlugin_")
}

pub fn parse_version(s: &str) -> NetVersion {
    *NetVersion::ALL
        .iter()
        .find(|v| version_name(**v) == s)
        .expect("known version")
}

/// A child process running one role of a scenario, with a line protocol
/// on stdin/stdout for exchanging handles.
pub struct Peer {
    pub child: Child,
    pub input: ChildStdin,
    pub output: BufReader<ChildStdout>,
}

pub fn spawn(role: &str, args: &[&str], env: &[(&str, &str)]) -> Peer {
    let mut cmd = Command::new(std::env::current_exe().expect("current exe"));
    cmd.arg("--child").arg(role).args(args);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn child");
    Peer {
        input: child.stdin.take().expect("stdin"),
        output: BufReader::new(child.stdout.take().expect("stdout")),
        child,
    }
}

impl Peer {
    pub fn send_line(&mut self, line: &str) {
        writeln!(self.input, "{line}").expect("write to child");
        self.input.flush().expect("flush");
    }

    pub fn read_line(&mut self) -> String {
        let mut s = String::new();
        self.output.read_line(&mut s).expect("read from child");
        s.trim().to_string()
    }

    /// Waits for the child and turns its exit status into a test result.
    pub fn finish(mut self) -> TestResult {
        drop(self.input);
        let status = self.child.wait().map_err(|e| e.to_string())?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("child failed: {status}"))
        }
    }
}

/// Reads a line from the parent (child side).
pub fn read_parent_line() -> String {
    let mut s = String::new();
    std::io::stdin()
        .read_line(&mut s)
        .expect("read from parent");
    s.trim().to_string()
}

/// Writes a line to the parent (child side).
pub fn tell_parent(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").expect("write to parent");
    out.flush().expect("flush");
}

pub fn null() -> *mut c_void {
    std::ptr::null_mut()
}
