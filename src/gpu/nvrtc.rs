//! Finding NVRTC and compiling `cuda/codec.cu` with it.
//!
//! NVRTC is opened at run time through cudarc (no link-time dependency).
//! Search order, first hit wins:
//! 1. `AIRAMP_NVRTC_LIB`: the library file, or a directory holding it;
//! 2. `libnvrtc.so` / `libnvrtc.so.13` (and older majors) on the loader
//!    path, or already loaded into the process;
//! 3. `$CUDA_HOME/lib64`, `$CUDA_PATH/lib64`, `/usr/local/cuda/lib64`,
//!    `/usr/local/cuda-13.0/lib64`.
//!
//! For 1 and 3 the library and its `libnvrtc-builtins` companion are
//! `dlopen`ed by path with `RTLD_GLOBAL | RTLD_NODELETE` first; NVRTC's own
//! `dlopen` of the builtins by soname, and cudarc's by library name, then
//! find those already-loaded copies (glibc matches loaded objects by
//! soname). Missing NVRTC is an error the caller reports once and treats
//! as "no GPU path".
//!
//! Compiles are cached in-process per (architecture, options): every
//! context of one device kind shares one compile. CUBINs are also kept on
//! disk ([`disk_cache_dir`]), keyed by a hash of the source, the options,
//! the target and the NVRTC version, so only a job's first process on a
//! host pays for the compile (~20 s for every kernel variant on an H200
//! host).

use std::collections::HashMap;
use std::ffi::{c_char, CStr, CString};
use std::panic::catch_unwind;
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::nvrtc::sys;

use super::error::GpuError;
use super::KernelOptions;

/// The kernel source and its portability header, built into the binary.
pub const SOURCE: &str = include_str!("../../cuda/codec.cu");
pub const HEADER: &str = include_str!("../../cuda/airamp_gpu.h");
const SOURCE_NAME: &CStr = c"codec.cu";
const HEADER_NAME: &CStr = c"airamp_gpu.h";

/// Environment variable naming the NVRTC library (file or directory).
pub const NVRTC_ENV: &str = "AIRAMP_NVRTC_LIB";

/// What NVRTC produced for one architecture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Image {
    /// Machine code for exactly this `sm_XY`.
    Cubin(Vec<u8>),
    /// PTX text, NUL-terminated, JIT-compiled by the driver at load.
    Ptx(Vec<u8>),
}

impl Image {
    /// Bytes to hand to `cuModuleLoadData`.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Image::Cubin(b) | Image::Ptx(b) => b,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Image::Cubin(_) => "cubin",
            Image::Ptx(_) => "ptx",
        }
    }
}

/// Loads NVRTC once; returns its version `(major, minor)`.
pub fn load() -> Result<(u32, u32), GpuError> {
    static LOADED: OnceLock<Result<(u32, u32), GpuError>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            catch_unwind(load_uncached)
                .unwrap_or_else(|_| Err(GpuError::NvrtcMissing("loading NVRTC panicked".into())))
        })
        .clone()
}

fn load_uncached() -> Result<(u32, u32), GpuError> {
    if let Some(explicit) = std::env::var_os(NVRTC_ENV) {
        let p = PathBuf::from(explicit);
        preload(&p)
            .map_err(|e| GpuError::NvrtcMissing(format!("{NVRTC_ENV}={}: {e}", p.display())))?;
    } else if !present() {
        for dir in fallback_dirs() {
            if preload(&dir).is_ok() {
                break;
            }
        }
    }
    if !present() {
        return Err(GpuError::NvrtcMissing(format!(
            "no libnvrtc.so on the loader path, in $CUDA_HOME/lib64 or /usr/local/cuda/lib64; set {NVRTC_ENV}"
        )));
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC is loadable (checked above), so cudarc resolves the
    // symbol instead of panicking; writes two ints.
    nv_check("nvrtcVersion", unsafe {
        sys::nvrtcVersion(&mut major, &mut minor)
    })?;
    Ok((major as u32, minor as u32))
}

/// Whether cudarc's library-name search finds NVRTC (loader path, or a
/// copy already in the process).
fn present() -> bool {
    // SAFETY: only dlopen()s candidate names and closes them again.
    unsafe { sys::is_culib_present() }
}

fn fallback_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = ["CUDA_HOME", "CUDA_PATH"]
        .iter()
        .filter_map(std::env::var_os)
        .map(|root| PathBuf::from(root).join("lib64"))
        .collect();
    dirs.push("/usr/local/cuda/lib64".into());
    dirs.push("/usr/local/cuda-13.0/lib64".into());
    dirs
}

/// `dlopen`s NVRTC's builtins and NVRTC itself from `path` (the library
/// file or its directory), globally and for the life of the process.
fn preload(path: &Path) -> Result<(), String> {
    let (dir, lib) = if path.is_dir() {
        let lib = ["libnvrtc.so.13", "libnvrtc.so"]
            .iter()
            .map(|n| path.join(n))
            .find(|p| p.exists())
            .ok_or("no libnvrtc.so.13 or libnvrtc.so in it")?;
        (path.to_path_buf(), lib)
    } else if path.exists() {
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        (dir, path.to_path_buf())
    } else {
        return Err("does not exist".into());
    };
    // The builtins first: NVRTC opens them by soname at its first compile.
    if let Some(builtins) = builtins_in(&dir) {
        dlopen_global(&builtins)?;
    }
    dlopen_global(&lib)
}

/// `libnvrtc-builtins.so.X.Y` in `dir` (the shortest such name: the soname
/// itself rather than a fully versioned file or the `.alt` variant).
fn builtins_in(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("libnvrtc-builtins.so."))
        .min_by_key(|n| n.len())
        .map(|n| dir.join(n))
}

fn dlopen_global(path: &Path) -> Result<(), String> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: dlopen of a path; NODELETE keeps it mapped for good, so the
    // handle can be dropped and nothing ever dangles.
    let h = unsafe {
        libc::dlopen(
            c.as_ptr(),
            libc::RTLD_NOW | libc::RTLD_GLOBAL | libc::RTLD_NODELETE,
        )
    };
    if h.is_null() {
        // SAFETY: dlerror returns a NUL-terminated string or null.
        let why = unsafe { libc::dlerror() };
        let why = if why.is_null() {
            "dlopen failed".to_string()
        } else {
            // SAFETY: non-null, NUL-terminated (dlerror contract).
            unsafe { CStr::from_ptr(why) }
                .to_string_lossy()
                .into_owned()
        };
        return Err(why);
    }
    Ok(())
}

fn nv_check(call: &str, r: sys::nvrtcResult) -> Result<(), GpuError> {
    if r == sys::nvrtcResult::NVRTC_SUCCESS {
        Ok(())
    } else {
        Err(GpuError::NvrtcMissing(format!("{call}: {r:?}")))
    }
}

/// The options passed to NVRTC for `arch` (`sm_XY` → CUBIN, `compute_XY`
/// → PTX). No contraction into FMA, no flush-to-zero, IEEE division.
pub fn compile_options(arch: &str, opts: KernelOptions) -> Vec<String> {
    let mut o = vec![
        format!("-arch={arch}"),
        "--fmad=false".into(),
        "--ftz=false".into(),
        "--prec-div=true".into(),
        "--prec-sqrt=true".into(),
        "-std=c++17".into(),
        format!("-DAIRAMP_TILE_BLOCKS={}", opts.tile_blocks),
    ];
    if opts.soft_fp8 {
        o.push("-DAIRAMP_SOFT_FP8".into());
    }
    if opts.vector {
        o.push("-DAIRAMP_VECTOR".into());
    }
    o
}

/// Compiles the kernels for compute capability `major.minor`: CUBIN for
/// `sm_XY`, falling back to PTX for `compute_XY` when NVRTC cannot emit
/// that CUBIN. Cached in-process per (capability, options).
pub fn compile_for_device(
    major: u32,
    minor: u32,
    opts: KernelOptions,
) -> Result<Arc<Image>, GpuError> {
    type Cache = Mutex<HashMap<(u32, u32, KernelOptions), Result<Arc<Image>, GpuError>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    cache
        .entry((major, minor, opts))
        .or_insert_with(|| {
            let sm = format!("sm_{major}{minor}");
            compile_cached(&sm, opts)
                .or_else(|_| compile(&format!("compute_{major}{minor}"), opts))
                .map(Arc::new)
        })
        .clone()
}

/// Environment variable naming the on-disk kernel cache directory (`off`
/// disables it).
pub const CACHE_ENV: &str = "AIRAMP_KERNEL_CACHE";

/// Where compiled CUBINs are kept: `AIRAMP_KERNEL_CACHE`, else
/// `$XDG_CACHE_HOME/airamp`, else `$HOME/.cache/airamp`; `None` when set to
/// `off` or no location is known.
pub fn disk_cache_dir() -> Option<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(dir) = var(CACHE_ENV) {
        return (dir != "off").then(|| PathBuf::from(dir));
    }
    var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("airamp"))
}

/// The cache file of one compile: everything that changes the CUBIN is in
/// its name (64-bit FNV-1a, stable across builds and hosts).
fn cache_file(dir: &Path, arch: &str, opts: KernelOptions, nvrtc: (i32, i32)) -> PathBuf {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let key = format!("{nvrtc:?}\0{:?}\0", compile_options(arch, opts));
    for b in key.bytes().chain(SOURCE.bytes()).chain(HEADER.bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    dir.join(format!("codec-{arch}-{h:016x}.cubin"))
}

fn nvrtc_version() -> Option<(i32, i32)> {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC is loaded (`load` succeeded); writes two ints.
    let r = unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
    (r == sys::nvrtcResult::NVRTC_SUCCESS).then_some((major, minor))
}

/// [`compile`] for an `sm_XY` target, through the on-disk cache. A cache
/// that cannot be read or written is skipped, never an error: the compile
/// result is the same.
fn compile_cached(arch: &str, opts: KernelOptions) -> Result<Image, GpuError> {
    load()?;
    let file = match (disk_cache_dir(), nvrtc_version()) {
        (Some(dir), Some(v)) => Some(cache_file(&dir, arch, opts, v)),
        _ => None,
    };
    if let Some(bytes) = file.as_deref().and_then(|f| std::fs::read(f).ok()) {
        if bytes.starts_with(b"\x7fELF") {
            return Ok(Image::Cubin(bytes));
        }
    }
    let image = compile(arch, opts)?;
    if let (Some(file), Image::Cubin(bytes)) = (&file, &image) {
        if let Err(e) = store(file, bytes) {
            crate::warn!("kernel cache {}: {e}", file.display());
        }
    }
    Ok(image)
}

/// Writes `bytes` to `file` atomically (a private temporary, then rename),
/// creating the directory owner-only.
fn store(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = file.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let tmp = dir.join(format!(".tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, file)
}

/// Compiles the kernels for one target (`sm_XY` or `compute_XY`); uncached.
pub fn compile(arch: &str, opts: KernelOptions) -> Result<Image, GpuError> {
    load()?;
    let src = CString::new(SOURCE)
        .map_err(|_| GpuError::InvalidArgument("NUL in kernel source".into()))?;
    let hdr = CString::new(HEADER)
        .map_err(|_| GpuError::InvalidArgument("NUL in kernel header".into()))?;
    let headers = [hdr.as_ptr()];
    let names = [HEADER_NAME.as_ptr()];
    let mut prog: sys::nvrtcProgram = ptr::null_mut();
    // SAFETY: all strings are NUL-terminated and outlive the call; NVRTC
    // copies them. The program is destroyed below on every path.
    nv_check("nvrtcCreateProgram", unsafe {
        sys::nvrtcCreateProgram(
            &mut prog,
            src.as_ptr(),
            SOURCE_NAME.as_ptr(),
            1,
            headers.as_ptr(),
            names.as_ptr(),
        )
    })?;
    let result = compile_program(prog, arch, opts);
    // SAFETY: `prog` was created above and is destroyed exactly once.
    let _ = unsafe { sys::nvrtcDestroyProgram(&mut prog) };
    result
}

fn compile_program(
    prog: sys::nvrtcProgram,
    arch: &str,
    opts: KernelOptions,
) -> Result<Image, GpuError> {
    let options: Vec<CString> = compile_options(arch, opts)
        .into_iter()
        .map(|o| CString::new(o).expect("options have no NUL"))
        .collect();
    let ptrs: Vec<*const c_char> = options.iter().map(|o| o.as_ptr()).collect();
    // SAFETY: `prog` is live; `ptrs` holds NUL-terminated options that
    // outlive the call.
    let r = unsafe { sys::nvrtcCompileProgram(prog, ptrs.len() as i32, ptrs.as_ptr()) };
    if r != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(GpuError::Compile {
            arch: arch.to_string(),
            log: program_log(prog).unwrap_or_else(|| format!("{r:?}")),
        });
    }
    if arch.starts_with("sm_") {
        let mut size = 0usize;
        // SAFETY: `prog` compiled successfully; writes one size.
        nv_check("nvrtcGetCUBINSize", unsafe {
            sys::nvrtcGetCUBINSize(prog, &mut size)
        })?;
        let mut buf = vec![0u8; size];
        // SAFETY: `buf` has exactly the size NVRTC reported.
        nv_check("nvrtcGetCUBIN", unsafe {
            sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr().cast())
        })?;
        return Ok(Image::Cubin(buf));
    }
    let mut size = 0usize;
    // SAFETY: as above, for the PTX text (size includes the final NUL).
    nv_check("nvrtcGetPTXSize", unsafe {
        sys::nvrtcGetPTXSize(prog, &mut size)
    })?;
    let mut buf = vec![0u8; size];
    // SAFETY: `buf` has exactly the size NVRTC reported.
    nv_check("nvrtcGetPTX", unsafe {
        sys::nvrtcGetPTX(prog, buf.as_mut_ptr().cast())
    })?;
    if buf.last() != Some(&0) {
        buf.push(0);
    }
    Ok(Image::Ptx(buf))
}

fn program_log(prog: sys::nvrtcProgram) -> Option<String> {
    let mut size = 0usize;
    // SAFETY: `prog` is live; writes one size.
    if unsafe { sys::nvrtcGetProgramLogSize(prog, &mut size) } != sys::nvrtcResult::NVRTC_SUCCESS {
        return None;
    }
    let mut buf = vec![0u8; size.max(1)];
    // SAFETY: `buf` has at least the size NVRTC reported.
    if unsafe { sys::nvrtcGetProgramLog(prog, buf.as_mut_ptr().cast()) }
        != sys::nvrtcResult::NVRTC_SUCCESS
    {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("airamp-nvrtc-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn builtins_are_found_by_their_soname() {
        let d = scratch_dir("builtins");
        for f in [
            "libnvrtc-builtins.so.13.0.88",
            "libnvrtc-builtins.alt.so.13.0",
            "libnvrtc-builtins.so.13.0",
            "libnvrtc.so.13",
        ] {
            std::fs::write(d.join(f), b"").unwrap();
        }
        assert_eq!(builtins_in(&d), Some(d.join("libnvrtc-builtins.so.13.0")));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn preload_reports_why_a_location_is_unusable() {
        let d = scratch_dir("empty");
        assert!(preload(&d).unwrap_err().contains("no libnvrtc"));
        assert!(preload(&d.join("missing.so"))
            .unwrap_err()
            .contains("does not exist"));
        // A file that is not a shared object: dlopen's own message.
        std::fs::write(d.join("libnvrtc.so.13"), b"not an ELF file").unwrap();
        assert!(!preload(&d).unwrap_err().is_empty());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn cache_files_differ_by_everything_that_changes_the_cubin() {
        let d = Path::new("/cache");
        let base = cache_file(d, "sm_90", KernelOptions::default(), (13, 0));
        assert!(base.starts_with(d));
        assert!(base.to_string_lossy().ends_with(".cubin"));
        assert_eq!(
            base,
            cache_file(d, "sm_90", KernelOptions::default(), (13, 0))
        );
        let soft = KernelOptions {
            soft_fp8: true,
            ..KernelOptions::default()
        };
        for other in [
            cache_file(d, "sm_80", KernelOptions::default(), (13, 0)),
            cache_file(d, "sm_90", soft, (13, 0)),
            cache_file(d, "sm_90", KernelOptions::default(), (13, 1)),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn the_cache_is_written_atomically_and_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let d = scratch_dir("cache").join("nested");
        let f = d.join("codec-sm_90-0.cubin");
        store(&f, b"\x7fELF cubin").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"\x7fELF cubin");
        let mode = std::fs::metadata(&d).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "cache dir mode {mode:o}");
        assert_eq!(
            std::fs::read_dir(&d).unwrap().count(),
            1,
            "no temporary left"
        );
        std::fs::remove_dir_all(d.parent().unwrap()).unwrap();
    }

    #[test]
    fn options_keep_ieee_arithmetic_and_carry_the_variant() {
        let o = compile_options("sm_90", KernelOptions::default());
        for want in [
            "-arch=sm_90",
            "--fmad=false",
            "--ftz=false",
            "-DAIRAMP_VECTOR",
            "-DAIRAMP_TILE_BLOCKS=16",
        ] {
            assert!(o.iter().any(|x| x == want), "{want} missing from {o:?}");
        }
        assert!(!o.iter().any(|x| x == "-DAIRAMP_SOFT_FP8"));
        let soft = KernelOptions {
            soft_fp8: true,
            vector: false,
            ..KernelOptions::default()
        };
        let o = compile_options("compute_80", soft);
        assert!(o.iter().any(|x| x == "-DAIRAMP_SOFT_FP8"));
        assert!(!o.iter().any(|x| x == "-DAIRAMP_VECTOR"));
    }
}
