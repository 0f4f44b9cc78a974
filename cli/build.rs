//! The CLI's build script: the C-variadic logger plugin-tests pass to the
//! plugin like NCCL does.

use std::env;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    build_test_logger();
}

/// plugin-tests need a C-variadic logger like NCCL's; it is linked into test
/// binaries only, never into the plugin or the CLI.
fn build_test_logger() {
    const SRC: &str = "../plugin-tests/support/logger.c";
    println!("cargo:rerun-if-changed={SRC}");
    cc::Build::new()
        .file(SRC)
        .cargo_metadata(false)
        .compile("airamp_test_logger");
    let out = env::var("OUT_DIR").expect("OUT_DIR");
    println!("cargo:rustc-link-arg-tests={out}/libairamp_test_logger.a");
}
