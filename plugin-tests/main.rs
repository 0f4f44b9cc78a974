//! The ABI harness: loads the built `libairamp.so` with dlopen and drives
//! it as NCCL's proxy does, across processes. Run by `cargo test`.
//!
//! `plugin-tests [FILTER]` runs every scenario whose name contains FILTER;
//! `plugin-tests --child ROLE ...` is how scenarios start their peers.

mod calibration;
mod collnet;
mod doctor;
mod faults;
mod scenarios;
mod support;

use std::time::Instant;

fn main() {
    // Plugin instances serve on loopback and export no metrics unless a
    // scenario's child asks otherwise (children inherit these).
    for (key, value) in [("AIRAMP_SOCKET_IFNAME", "lo"), ("AIRAMP_METRICS", "0")] {
        if std::env::var_os(key).is_none() {
            std::env::set_var(key, value);
        }
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        let code = match scenarios::child(&args[1..]) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("child {:?} failed: {e}", &args[1..]);
                1
            }
        };
        std::process::exit(code);
    }
    let filter: Option<&String> = args.iter().find(|a| !a.starts_with('-'));
    let (mut passed, mut failed) = (0, 0);
    for (name, scenario) in scenarios::ALL {
        if filter.is_some_and(|f| !name.contains(f.as_str())) {
            continue;
        }
        let start = Instant::now();
        let outcome = std::panic::catch_unwind(scenario).unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("panicked: {msg}"))
        });
        match outcome {
            Ok(()) => {
                passed += 1;
                println!("test {name} ... ok ({:.2?})", start.elapsed());
            }
            Err(e) => {
                failed += 1;
                println!("test {name} ... FAILED: {e}");
            }
        }
    }
    println!("\nplugin-tests: {passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
