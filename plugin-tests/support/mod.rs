//! Shared pieces of the ABI harness: loading the plugin, NCCL-style
//! connect/accept/test loops, payload patterns and child processes.

use std::ffi::{c_char, c_void};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use airamp::abi::bindings::ncclDebugLogger_t;
use airamp::abi::client::{self, Code, Comm, Library, Net, NetVersion, Request};

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
    net.connect_wait(dev, handle, DEADLINE)
}

pub fn accept(net: &Net, listen: Comm) -> Result<Comm, String> {
    net.accept_wait(listen, DEADLINE)
}

/// Polls like NCCL's proxy: test until done or error.
pub fn wait(net: &Net, req: Request, slots: usize) -> Result<Vec<i32>, Code> {
    net.wait(req, slots, DEADLINE)
}

/// Retries a post while the plugin's request pool is full.
pub fn post(f: impl FnMut() -> Result<Option<Request>, Code>) -> Result<Request, Code> {
    client::post(DEADLINE, f)
}

/// Both ends of a connection inside this process.
pub fn local_pair(net: &Net) -> Result<(Comm, Comm, Comm), String> {
    net.local_pair(0, DEADLINE)
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

pub fn hex(b: &[u8; 128]) -> String {
    client::handle_to_hex(b)
}

pub fn unhex(s: &str) -> [u8; 128] {
    client::handle_from_hex(s).expect("hex handle")
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
