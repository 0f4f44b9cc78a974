//! Progress bars for long runs (`bench net/latency/collnet/idle`, `demo`,
//! `calibrate`): on stderr, and only for a person at a terminal. When stderr
//! is not a terminal (pipes, CI logs, scripts), with `--json`, or in a child
//! process (`--role ...`), the bar is `ProgressBar::hidden()`: it draws
//! nothing at all, so no escape code reaches any stream.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressFinish, ProgressStyle};

use crate::peer::ROLE_FLAG;
use crate::Opts;

/// Whether this process may draw: a terminal on stderr, no `--json`, not a
/// child process of the CLI.
pub fn visible(o: &Opts) -> bool {
    !o.flag("json")
        && std::env::args().nth(1).as_deref() != Some(ROLE_FLAG)
        && std::io::stderr().is_terminal()
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

fn stderr_bar(len: Option<u64>, what: &str, template: &str) -> ProgressBar {
    ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr())
        .with_style(style(template))
        .with_prefix(what.to_string())
        // An early return (an error) clears the line instead of leaving a
        // half-drawn bar above the message.
        .with_finish(ProgressFinish::AndClear)
}

/// A bar of `len` steps (`unit` names them: "messages", "iterations", ...),
/// labelled `what`. Hidden unless [`visible`].
pub fn bar(o: &Opts, len: u64, what: &str, unit: &str) -> ProgressBar {
    if !visible(o) {
        return ProgressBar::hidden();
    }
    stderr_bar(
        Some(len),
        what,
        &format!("{{prefix}} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {unit} {{msg}}"),
    )
}

/// A ticking spinner labelled `what`, for a phase whose length is not
/// counted here (iperf3, child processes). Hidden unless [`visible`].
pub fn spinner(o: &Opts, what: &str) -> ProgressBar {
    if !visible(o) {
        return ProgressBar::hidden();
    }
    let pb = stderr_bar(None, what, "{spinner} {prefix} [{elapsed_precise}] {msg}");
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}
