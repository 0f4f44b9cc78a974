//! The command line as a user meets it: runs the built `airamp` binary.
//! `--help` on every subcommand, `--version`, and bad flags or values
//! (exit code 2, the message names the flag).

use std::process::{Command, Output};

fn airamp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_airamp"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running airamp {args:?}: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Every subcommand, as the words a user types.
const SUBCOMMANDS: &[&[&str]] = &[
    &["config"],
    &["config", "check"],
    &["devices"],
    &["doctor"],
    &["bench"],
    &["bench", "net"],
    &["bench", "latency"],
    &["bench", "codec"],
    &["bench", "collnet"],
    &["bench", "idle"],
    &["bench", "wake"],
    &["demo"],
    &["calibrate"],
    &["tuner"],
    &["tuner", "show"],
    &["plot"],
    &["gpu"],
    &["gpu", "selftest"],
    &["gpu", "bench"],
    &["gpu", "compile-check"],
];

#[test]
fn help_on_every_subcommand() {
    for words in SUBCOMMANDS {
        let mut args = words.to_vec();
        args.push("--help");
        let out = airamp(&args);
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "airamp {args:?}: {:?}\n{stdout}{}",
            out.status,
            text(&out.stderr)
        );
        // The usage line names the full subcommand, so this help is the
        // subcommand's own and not the top-level one (or a run).
        let usage = format!("Usage: airamp {}", words.join(" "));
        assert!(
            stdout.contains(&usage),
            "airamp {args:?}: no {usage:?} in\n{stdout}"
        );
    }
}

#[test]
fn top_level_help_lists_every_command() {
    let out = airamp(&["--help"]);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    for cmd in [
        "config",
        "devices",
        "doctor",
        "bench",
        "demo",
        "calibrate",
        "tuner",
        "plot",
        "gpu",
    ] {
        assert!(
            stdout.lines().any(|l| l.trim_start().starts_with(cmd)),
            "{cmd} missing from\n{stdout}"
        );
    }
}

#[test]
fn flags_in_help_with_defaults() {
    let out = airamp(&["demo", "--help"]);
    let stdout = text(&out.stdout);
    for flag in [
        "--plugin",
        "--ranks",
        "--count",
        "--iters",
        "--rank ",
        "--rendezvous",
        "--check-metrics",
    ] {
        assert!(stdout.contains(flag), "{flag} missing from\n{stdout}");
    }
    assert!(stdout.contains("[default: 4]"), "{stdout}");
}

#[test]
fn version_names_version_and_commit() {
    let want = concat!("airamp ", env!("CARGO_PKG_VERSION"), " (git ");
    for args in [&["--version"][..], &["-V"], &["bench", "net", "--version"]] {
        let out = airamp(args);
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{args:?}: {:?}", out.status);
        // Subcommands print their own name: "airamp-bench-net 0.1.0 (git ...)".
        let line = stdout.trim_end();
        assert!(
            line.starts_with("airamp") && line.contains(&want["airamp".len()..]),
            "{args:?}: {stdout}"
        );
        let sha = line
            .rsplit_once("(git ")
            .map(|(_, s)| s.trim_end_matches(')'));
        assert!(sha.is_some_and(|s| !s.is_empty()), "{args:?}: {stdout}");
    }
    assert!(text(&airamp(&["--version"]).stdout).starts_with(want));
}

/// Exit code 2, and stderr names the offending argument.
fn assert_usage_error(args: &[&str], named: &str) {
    let out = airamp(args);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "airamp {args:?}: {stderr}");
    assert!(
        stderr.contains(named),
        "airamp {args:?}: {named:?} not in\n{stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "airamp {args:?} printed {:?}",
        text(&out.stdout)
    );
}

#[test]
fn bad_flags_exit_2_naming_the_flag() {
    assert_usage_error(&["bench", "collnet", "--bogus"], "--bogus");
    assert_usage_error(&["config", "check", "--strict"], "--strict");
    assert_usage_error(&["demo", "--rank"], "--rank");
    assert_usage_error(&["--frobnicate"], "--frobnicate");
    // A typo gets a suggestion.
    assert_usage_error(&["bench", "net", "--sise", "1M"], "--size");
    // Bad values name the flag too.
    assert_usage_error(&["bench", "net", "--size", "1Q"], "--size");
    assert_usage_error(&["demo", "--ranks", "four"], "--ranks");
    assert_usage_error(&["bench", "frob"], "frob");
}

#[test]
fn no_subcommand_is_a_usage_error() {
    let out = airamp(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("Usage: airamp"));
}

#[test]
fn config_check_still_runs() {
    // The behaviour behind the parser: an explicit, valid file passes and
    // prints the effective config.
    let dir = std::env::temp_dir().join(format!("airamp-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("airamp.conf");
    std::fs::write(&file, "").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_airamp"))
        .args(["config", "check"])
        .arg(&file)
        .env_remove("AIRAMP_CONF")
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!out.stdout.is_empty());
}
