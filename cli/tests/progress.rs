//! Progress bars stay off the streams of scripts: with stdout and stderr
//! piped (not a terminal), the long runs print no escape code (ESC, 0x1b)
//! on either stream, and their normal output keeps its shape.
//!
//! `calibrate` is left out here for time (its codec pass takes seconds in a
//! debug build); it draws through the same `progress` module.
//!
//! The runs that load the plugin use `libairamp.so` beside the `airamp`
//! binary, which a workspace `cargo test` / `cargo build` puts there.

use std::path::PathBuf;
use std::process::{Command, Output};

const ESC: u8 = 0x1b;

fn plugin() -> String {
    let p = PathBuf::from(env!("CARGO_BIN_EXE_airamp")).with_file_name("libairamp.so");
    assert!(
        p.exists(),
        "{} is missing: build the workspace (cargo build / cargo test at the root)",
        p.display()
    );
    p.display().to_string()
}

/// Runs `airamp args` with stdout and stderr piped; checks it succeeded and
/// printed no ESC byte anywhere; returns stdout.
fn piped(args: &[&str]) -> String {
    let out: Output = Command::new(env!("CARGO_BIN_EXE_airamp"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running airamp {args:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "airamp {args:?}: {:?}\n{stdout}{stderr}",
        out.status
    );
    assert!(
        !out.stdout.contains(&ESC),
        "airamp {args:?}: ESC on stdout: {stdout:?}"
    );
    assert!(
        !out.stderr.contains(&ESC),
        "airamp {args:?}: ESC on stderr: {stderr:?}"
    );
    stdout
}

#[test]
fn bench_codec_piped_has_no_escape_codes() {
    let out = piped(&["bench", "codec", "4096"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("codec bench: 4096 values"), "{out}");
    assert!(lines[1].starts_with("op "), "{out}");
    assert!(out.contains("encode f32->e4m3"), "{out}");
}

#[test]
fn bench_idle_piped_has_no_escape_codes() {
    let so = plugin();
    let out = piped(&["bench", "idle", "--seconds", "1", "--plugin", &so]);
    // One line, as before: the sleep runs in one-second steps now.
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.starts_with("airamp bench idle: "), "{out}");
    assert!(out.contains(" s idle: "), "{out}");
    assert!(out.contains("% of one core"), "{out}");
}

#[test]
fn bench_net_piped_has_no_escape_codes() {
    let so = plugin();
    let out = piped(&[
        "bench",
        "net",
        "--no-iperf",
        "--total",
        "32M",
        "--plugin",
        &so,
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("airamp bench net: "), "{out}");
    assert!(lines[0].ends_with(", 32 MiB total"), "{out}");
    assert!(
        lines[1].starts_with("  airamp through the C ABI (") && lines[1].ends_with(" Gbit/s"),
        "{out}"
    );
}

#[test]
fn bench_latency_piped_has_no_escape_codes() {
    let so = plugin();
    let out = piped(&["bench", "latency", "--iters", "200", "--plugin", &so]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with(
            "airamp bench latency: 8-byte round trip through the C ABI over 200 iterations: p50 "
        ),
        "{out}"
    );
    assert!(
        lines[1].starts_with("  raw TCP in the same run, p50 before / after: "),
        "{out}"
    );
    assert!(
        lines[2].starts_with("  airamp / raw TCP with a connection per direction: ")
            && lines[2].ends_with("x)"),
        "{out}"
    );
}

#[test]
fn demo_piped_has_no_escape_codes() {
    let so = plugin();
    let out = piped(&[
        "demo", "--ranks", "2", "--count", "4096", "--iters", "2", "--plugin", &so,
    ]);
    assert!(
        out.starts_with("airamp demo: ring allreduce of 4096 fp32 values"),
        "{out}"
    );
}

/// The other side: on a terminal (a pty from util-linux `script`) the bar
/// is drawn on stderr, labelled with what runs and how far, and the result
/// line still follows it.
#[test]
fn bench_idle_on_a_terminal_draws_a_bar() {
    let so = plugin();
    let cmd = format!(
        "'{}' bench idle --seconds 2 --plugin '{so}'",
        env!("CARGO_BIN_EXE_airamp")
    );
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .unwrap_or_else(|e| panic!("script (util-linux) is needed for this test: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{:?}\n{text}", out.status);
    assert!(text.contains("bench idle ["), "no bar in {text:?}");
    assert!(text.contains("/2 s"), "no progress count in {text:?}");
    assert!(out.stdout.contains(&ESC), "bar never cleared: {text:?}");
    assert!(text.contains("airamp bench idle: "), "{text:?}");
}

#[test]
fn json_on_a_terminal_draws_no_bar() {
    let so = plugin();
    let cmd = format!(
        "'{}' bench idle --seconds 2 --json --plugin '{so}'",
        env!("CARGO_BIN_EXE_airamp")
    );
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .unwrap_or_else(|e| panic!("script (util-linux) is needed for this test: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{:?}\n{text}", out.status);
    assert!(
        !out.stdout.contains(&ESC),
        "escape codes with --json: {text:?}"
    );
    assert!(text.trim().starts_with("{\"bench\":\"idle\""), "{text:?}");
}
