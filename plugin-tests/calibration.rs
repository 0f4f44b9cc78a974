//! Calibration inside the collective network's `connect`, across
//! processes, through the exported ABI: "head" processes join a group
//! with `ncclCollNetPlugin_v12` (init with the communicator id, listen in
//! that context, connect: the calibration rounds run there), each with a
//! different executor (worker count), so their local measurements differ;
//! then they and "non-head" processes, which never touch the collective
//! network, initialise `ncclTunerPlugin_v6` with the same communicator id
//! and make the same `getCollInfo` calls. Every process must report the
//! same profile and bit-identical decisions (edited cost tables, and the
//! tuner's own decision digest logged at finalize).

use std::time::{SystemTime, UNIX_EPOCH};

use airamp::abi::client::{CostTable, Library};

use crate::collnet::join_comm;
use crate::scenarios::ensure;
use crate::support::*;

const HEADS: usize = 3;
const NON_HEADS: usize = 2;
const ALLREDUCE: u32 = 4;

/// NCCL-like cost table for an allreduce of `bytes`: ring and tree on a
/// NIC NCCL believes runs at 10 Gbit/s, CollNet as in-network reduction
/// (cheaper), every LL128 entry ignored.
fn table(bytes: usize) -> CostTable {
    let b = bytes as f32;
    let mut t = [[-1.0f32; 3]; 7];
    t[0] = [12.0 + b / 600.0, -1.0, 30.0 + b / 1100.0];
    t[1] = [10.0 + b / 650.0, -1.0, 25.0 + b / 1250.0];
    t[2][2] = 20.0 + b / 2500.0;
    t[3][2] = 22.0 + b / 2400.0;
    t
}

fn fnv(h: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(h, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// Runs the tuner of communicator `comm` as one rank would, and reports
/// what it used and decided.
fn decide(lib: &Library, comm: u64) -> TestResult {
    let mut tuner = lib.tuner()?;
    tuner
        .init(comm, HEADS + NON_HEADS, HEADS, logger())
        .map_err(|c| format!("tuner init: {c:?}"))?;
    let mut tables = 0xcbf2_9ce4_8422_2325u64;
    let mut bytes = 4usize << 10;
    while bytes <= 1 << 30 {
        let mut t = table(bytes);
        tuner
            .coll_info(ALLREDUCE, bytes, &mut t)
            .map_err(|c| format!("getCollInfo: {c:?}"))?;
        for cell in t.iter().flatten() {
            tables = fnv(tables, &cell.to_bits().to_le_bytes());
        }
        bytes *= 2;
    }
    tuner
        .finalize()
        .map_err(|c| format!("tuner finalize: {c:?}"))?;
    let log = captured_log();
    let line = |needle: &str| {
        log.lines()
            .find(|l| l.contains(needle))
            .map(str::to_string)
            .ok_or_else(|| format!("no log line with {needle:?} in:\n{log}"))
    };
    let init = line("tuner v6:")?;
    let profile = init
        .split_once("; calibration ")
        .map(|(_, p)| p.to_string())
        .ok_or_else(|| format!("init line without calibration: {init}"))?;
    let digest = line("decisions, digest")?;
    let digest = digest
        .split("digest ")
        .nth(1)
        .and_then(|d| d.split_whitespace().next())
        .unwrap_or("?");
    tell_parent(&format!("PROFILE {profile}"));
    tell_parent(&format!("TABLES {tables:016x}"));
    tell_parent(&format!("DIGEST {digest}"));
    Ok(())
}

/// A head: joins the group (calibrating), then decides, then keeps the
/// group (and so its record) until the parent says CLOSE.
pub fn child_head(rank: usize, comm: u64, workers: &str, calibrate: &str) -> TestResult {
    std::env::set_var("AIRAMP_COLLNET_WORKERS", workers);
    std::env::set_var("AIRAMP_TUNER_CALIBRATE", calibrate);
    let lib = open();
    let g = join_comm(&lib, rank, HEADS, 12, comm)?;
    tell_parent("JOINED");
    ensure(read_parent_line() == "DECIDE", || "expected DECIDE".into())?;
    decide(&lib, comm)?;
    ensure(read_parent_line() == "CLOSE", || "expected CLOSE".into())?;
    g.close()?;
    tell_parent("END");
    Ok(())
}

/// A rank that is not a collective-network member: only its tuner.
pub fn child_rank(comm: u64) -> TestResult {
    let lib = open();
    ensure(read_parent_line() == "DECIDE", || "expected DECIDE".into())?;
    decide(&lib, comm)?;
    tell_parent("END");
    Ok(())
}

/// One job: heads join and calibrate, then every rank decides. Returns
/// each process's (PROFILE, TABLES, DIGEST) lines.
fn job(comm: u64, calibrate_of_head: [&str; HEADS]) -> Result<Vec<Vec<String>>, String> {
    let env = [("AIRAMP_ENABLE_FP8_ALLREDUCE", "1")];
    let comm_arg = format!("{comm:x}");
    let mut heads: Vec<Peer> = (0..HEADS)
        .map(|r| {
            let (rs, ws) = (r.to_string(), (r % 3).to_string());
            spawn(
                "calib-head",
                &[&rs, &comm_arg, &ws, calibrate_of_head[r]],
                &env,
            )
        })
        .collect();
    let handles: Vec<String> = heads.iter_mut().map(Peer::read_line).collect();
    let line = format!("HANDLES {}", handles.join(" "));
    for h in &mut heads {
        h.send_line(&line);
    }
    for (r, h) in heads.iter_mut().enumerate() {
        let l = h.read_line();
        ensure(l == "JOINED", || format!("head {r}: {l}"))?;
    }
    // As in NCCL: every rank's tuner starts after the heads' connect.
    let mut others: Vec<Peer> = (0..NON_HEADS)
        .map(|_| spawn("calib-rank", &[&comm_arg], &env))
        .collect();
    let mut results = Vec::new();
    for p in heads.iter_mut().chain(others.iter_mut()) {
        p.send_line("DECIDE");
    }
    for p in heads.iter_mut().chain(others.iter_mut()) {
        results.push((0..3).map(|_| p.read_line()).collect::<Vec<_>>());
    }
    for h in &mut heads {
        h.send_line("CLOSE");
    }
    for p in heads.iter_mut().chain(others.iter_mut()) {
        let l = p.read_line();
        ensure(l == "END", || format!("expected END, got {l}"))?;
    }
    for (i, p) in heads.into_iter().chain(others).enumerate() {
        p.finish().map_err(|e| format!("process {i}: {e}"))?;
    }
    Ok(results)
}

fn fresh_comm_id() -> u64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    fnv(
        0xcbf2_9ce4_8422_2325,
        &(t ^ u64::from(std::process::id())).to_le_bytes(),
    )
}

fn all_identical(results: &[Vec<String>]) -> TestResult {
    for (i, r) in results.iter().enumerate() {
        ensure(r == &results[0], || {
            format!(
                "process {i} differs from process 0:\n{r:?}\nvs\n{:?}",
                results[0]
            )
        })?;
    }
    Ok(())
}

pub fn calibration_agreed_by_every_rank() -> TestResult {
    // Every head calibrates: one agreed profile, on heads and non-heads.
    let results = job(fresh_comm_id(), ["1", "1", "1"])?;
    all_identical(&results)?;
    println!("    {}", results[0][0]);
    ensure(results[0][0].contains("agreed in connect by 1"), || {
        format!("not the agreed profile: {}", results[0][0])
    })?;
    ensure(
        results[0][0].contains("(agreed by the collective network"),
        || format!("profile source is not the agreement: {}", results[0][0]),
    )?;
    // One head has calibration off: the whole group falls back, every
    // rank alike, to the configured (here built-in) profile.
    let results = job(fresh_comm_id(), ["1", "0", "1"])?;
    all_identical(&results)?;
    ensure(results[0][0].contains("not run in connect"), || {
        format!("expected the not-run fallback: {}", results[0][0])
    })?;
    ensure(results[0][0].contains("built-in defaults"), || {
        format!("expected the built-in profile: {}", results[0][0])
    })
}
