//! Child processes of the CLI: `airamp` re-runs itself with a hidden role
//! flag, and parent and child exchange listen handles as hex lines over the
//! child's stdin/stdout.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};

pub const ROLE_FLAG: &str = "--role";

pub struct Peer {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

pub fn spawn(role: &str, args: &[String]) -> Result<Peer, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .arg(ROLE_FLAG)
        .arg(role)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawn {role}: {e}"))?;
    Ok(Peer {
        input: child.stdin.take().ok_or("no stdin")?,
        output: BufReader::new(child.stdout.take().ok_or("no stdout")?),
        child,
    })
}

impl Peer {
    pub fn send(&mut self, line: &str) -> Result<(), String> {
        writeln!(self.input, "{line}")
            .and_then(|_| self.input.flush())
            .map_err(|e| e.to_string())
    }

    pub fn recv(&mut self) -> Result<String, String> {
        let mut s = String::new();
        match self.output.read_line(&mut s) {
            Ok(0) => Err("peer exited early".into()),
            Ok(_) => Ok(s.trim().to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    pub fn finish(mut self) -> Result<(), String> {
        drop(self.input);
        let status = self.child.wait().map_err(|e| e.to_string())?;
        status
            .success()
            .then_some(())
            .ok_or(format!("peer failed: {status}"))
    }
}

/// Child side of the line protocol.
pub fn from_parent() -> Result<String, String> {
    let mut s = String::new();
    std::io::stdin()
        .read_line(&mut s)
        .map_err(|e| e.to_string())?;
    Ok(s.trim().to_string())
}

pub fn to_parent(line: &str) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|_| out.flush())
        .map_err(|e| e.to_string())
}

pub fn run_role(args: &[&str]) -> Result<ExitCode, String> {
    let opts = crate::Opts::parse(args.get(1..).unwrap_or(&[]));
    match args.first().copied() {
        Some("net-send") => crate::bench::net_sender(&opts),
        Some("latency-echo") => crate::bench::latency_echo(&opts),
        Some("demo-rank") => crate::demo::rank_process(&opts),
        Some("collnet-member") => crate::collbench::member(&opts),
        Some("doctor-load") => crate::doctor::load_role(&opts),
        other => Err(format!("unknown role {other:?}")),
    }
    .map(|()| ExitCode::SUCCESS)
}
