//! Generates Rust bindings for NCCL's plugin ABI from our own headers in
//! `nccl-headers/` (see `src/abi/bindings.rs`).

use std::env;
use std::path::PathBuf;

const HEADER_DIR: &str = "nccl-headers";
const UMBRELLA: &str = "nccl-headers/airamp_nccl.h";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // NCCL may dlclose the plugin while our stream and exporter threads are
    // still winding down: never unmap this library's code.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
    if let Some(sha) = git_sha() {
        println!("cargo:rustc-env=AIRAMP_GIT_SHA={sha}");
    }
    println!("cargo:rerun-if-changed={HEADER_DIR}");
    for sub in ["", "net", "tuner"] {
        let dir = PathBuf::from(HEADER_DIR).join(sub);
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "h"))
            .collect();
        entries.sort();
        for p in entries {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }

    let bindings = bindgen::Builder::default()
        .header(UMBRELLA)
        .clang_args(["-x", "c", "-std=c11"])
        .allowlist_type("nccl.*")
        .allowlist_var("NCCL_.*|MAX_NET_SIZE|MAX_COLLNET_SIZE")
        // C enums become #[repr(transparent)] newtypes over the C integer:
        // any value NCCL hands us is a valid Rust value (no UB on unknown
        // enumerators, e.g. user-created ncclRedOp_t or newer ncclFunc_t).
        .default_enum_style(bindgen::EnumVariation::NewType {
            is_bitfield: false,
            is_global: false,
        })
        .bitfield_enum("ncclDebugLogSubSys")
        .prepend_enum_name(false)
        // Macros are C `int`s (ptrSupport, algo/proto indices, ...): emit i32.
        .default_macro_constant_type(bindgen::MacroTypeVariation::Signed)
        .use_core()
        .ctypes_prefix("::core::ffi")
        .layout_tests(false) // src/abi/bindings.rs has gcc-measured layout tests
        .derive_default(true)
        .derive_debug(true)
        .derive_copy(true)
        // No PartialEq/Hash on structs: comparing fn pointers is meaningless.
        // (Enum newtypes still get Eq/Hash from bindgen.)
        .derive_partialeq(false)
        .derive_hash(false)
        .generate_comments(false)
        .formatter(bindgen::Formatter::None)
        .generate()
        .expect("bindgen failed on nccl-headers/airamp_nccl.h");

    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR")).join("nccl_bindings.rs");
    bindings
        .write_to_file(&out)
        .unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
}

/// The commit being built, for `airamp_info{git_sha}`; none outside a checkout.
fn git_sha() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()?;
    let sha = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !sha.is_empty()).then_some(sha)
}
