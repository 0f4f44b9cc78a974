//! The CLI's build script: the git sha for `airamp --version`, and the
//! C-variadic logger plugin-tests pass to the plugin like NCCL does.

use std::env;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // Always set: `airamp --version` names it ("unknown" outside a git checkout).
    let sha = git_sha().unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=CLI_GIT_SHA={sha}");
    // A new commit rebuilds the version string.
    for path in ["HEAD", "refs/heads", "packed-refs"] {
        if let Some(p) = git(&["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    build_test_logger();
}

fn git_sha() -> Option<String> {
    git(&["rev-parse", "--short=12", "HEAD"])
}

fn git(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
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
