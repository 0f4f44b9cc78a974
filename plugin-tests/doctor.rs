//! `airamp doctor` end to end: the built CLI on the built plugin (the real
//! loader child, the real exports), and `--peer` through the plugin
//! against `airamp calibrate --serve`.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::{plugin_path, TestResult};

fn airamp() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_airamp"));
    // A fixed environment: no tuner elsewhere, no config file, no metrics.
    c.env_remove("NCCL_TUNER_PLUGIN")
        .env_remove("NCCL_SOCKET_IFNAME")
        .env_remove("LD_LIBRARY_PATH")
        .env("AIRAMP_CONF", "")
        .env("AIRAMP_METRICS", "0")
        .env("AIRAMP_SOCKET_IFNAME", "lo");
    c
}

fn doctor(plugin: &Path, net: &str, extra: &[&str]) -> Result<(Output, String), String> {
    let out = airamp()
        .arg("doctor")
        .args(extra)
        .env("NCCL_NET_PLUGIN", plugin)
        .env("NCCL_NET", net)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("airamp doctor: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok((out, text))
}

fn expect_line(text: &str, start: &str) -> TestResult {
    text.lines()
        .any(|l| l.starts_with(start))
        .then_some(())
        .ok_or_else(|| format!("no line starting {start:?} in:\n{text}"))
}

pub fn doctor_on_the_built_plugin() -> TestResult {
    let lib = plugin_path();
    let (out, text) = doctor(&lib, "airamp", &[])?;
    if out.status.code() != Some(0) {
        return Err(format!("exit {:?}:\n{text}", out.status.code()));
    }
    expect_line(&text, "OK    plugin load ")?;
    expect_line(
        &text,
        "OK    plugin exports    net v7 v8 v9 v10 v11 v12; collnet v7 v8 v9 v10 v11 v12; tuner v2 v3 v4 v5 v6 (from dlsym)",
    )?;
    expect_line(&text, "OK    plugin glibc      needs at most GLIBC_2.")?;
    expect_line(&text, "WARN  interfaces        lo 127.0.0.1 (up)")?;
    expect_line(&text, "OK    config ")?;

    // Another network selected: exit 1.
    let (out, text) = doctor(&lib, "Socket", &[])?;
    if out.status.code() != Some(1) {
        return Err(format!(
            "NCCL_NET=Socket: exit {:?}:\n{text}",
            out.status.code()
        ));
    }
    expect_line(&text, "FAIL  NCCL_NET ")?;

    // Not a library: the loader child reports dlopen's error, exit 1.
    let dir = std::env::temp_dir().join(format!("airamp-doctor-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let bogus = dir.join("libnccl-net-airamp.so");
    std::fs::write(&bogus, "not a library\n").map_err(|e| e.to_string())?;
    let result = doctor(&bogus, "airamp", &["--json"]);
    let _ = std::fs::remove_dir_all(&dir);
    let (out, text) = result?;
    if out.status.code() != Some(1) {
        return Err(format!(
            "bogus library: exit {:?}:\n{text}",
            out.status.code()
        ));
    }
    if !text.contains("{\"check\":\"plugin load\",\"status\":\"FAIL\",\"message\":\"dlopen fails: ")
    {
        return Err(format!("bogus library: no dlopen failure in:\n{text}"));
    }
    Ok(())
}

pub fn doctor_peer_through_the_plugin() -> TestResult {
    let lib = plugin_path();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())?;
    let mut serve = airamp()
        .args(["calibrate", "--serve", &port.to_string(), "--plugin"])
        .arg(&lib)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("calibrate --serve: {e}"))?;
    // Ready once its control port is taken (probing by connecting would use
    // up its one accept).
    let start = Instant::now();
    while std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
        if start.elapsed() > Duration::from_secs(30) || serve.try_wait().ok().flatten().is_some() {
            let _ = serve.kill();
            let _ = serve.wait();
            return Err("calibrate --serve did not bind its port in 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let result = doctor(&lib, "airamp", &["--peer", &format!("127.0.0.1:{port}")]);
    let served = wait_exit(&mut serve, Duration::from_secs(30));
    let (out, text) = result?;
    if out.status.code() != Some(0) {
        return Err(format!("exit {:?}:\n{text}", out.status.code()));
    }
    expect_line(
        &text,
        &format!("OK    peer              127.0.0.1:{port}: plugin connections both ways, 20 round trips"),
    )?;
    if served != Some(true) {
        return Err(format!(
            "calibrate --serve did not finish cleanly: {served:?}"
        ));
    }
    Ok(())
}

/// `Some(success)` once `child` exits within `limit`; killed and `None` otherwise.
fn wait_exit(child: &mut std::process::Child, limit: Duration) -> Option<bool> {
    let start = Instant::now();
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s.success());
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
