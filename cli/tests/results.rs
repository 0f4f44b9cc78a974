//! `--json` on every bench parses and holds the figures; `bench collnet
//! --plot` writes an SVG with every path. Each run is kept short (a few
//! seconds in all); the plugin is the libairamp.so beside the binary, as
//! `cargo test` builds it.

use std::process::{Command, Output};

fn airamp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_airamp"))
        .args(args)
        .env("AIRAMP_METRICS", "0")
        .env("AIRAMP_SOCKET_IFNAME", "lo")
        .output()
        .expect("run airamp")
}

fn json(args: &[&str]) -> serde_json::Value {
    let out = airamp(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{args:?} printed no single JSON object ({e}):\n{stdout}"));
    assert_eq!(v["bench"], args[1], "{v}");
    v
}

fn positive(v: &serde_json::Value) -> bool {
    v.as_f64().is_some_and(|x| x > 0.0 && x.is_finite())
}

#[test]
fn codec_json() {
    let v = json(&["bench", "codec", "4096", "--json"]);
    let rows = v["rows"].as_array().expect("rows");
    assert!(!rows.is_empty());
    assert!(rows.iter().all(|r| positive(&r["gvalues_per_s"])), "{v}");
    assert!(positive(&v["memcpy_gbytes_per_s"]));
}

#[test]
fn idle_json() {
    let v = json(&["bench", "idle", "--seconds", "1", "--json"]);
    assert!(v["threads"].as_u64().is_some_and(|t| t > 0), "{v}");
    assert!(v["idle_s"].as_f64().is_some_and(|s| s >= 1.0), "{v}");
}

#[test]
fn wake_json() {
    let v = json(&[
        "bench", "wake", "--gaps", "100,300", "--wakes", "50", "--json",
    ]);
    let rows = v["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 2, "{v}");
    assert_eq!(rows[1]["gap_us"], 300);
    assert!(rows.iter().all(|r| positive(&r["p50_us"])), "{v}");
    assert_eq!(
        rows[0]["p50_vs_shortest_gap"], 1.0,
        "the shortest gap is the reference"
    );
}

#[test]
fn wake_refuses_a_bad_gap() {
    let out = airamp(&["bench", "wake", "--gaps", "100,x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--gaps"));
}

#[test]
fn latency_json() {
    let v = json(&["bench", "latency", "--iters", "100", "--json"]);
    let (p50, p99) = (&v["round_trip_us"]["p50"], &v["round_trip_us"]["p99"]);
    assert!(positive(p50) && p50.as_f64() <= p99.as_f64(), "{v}");
    // The raw TCP reference, before and after, in both layouts.
    for layout in ["connection_per_direction", "one_connection"] {
        let runs = v["raw_tcp_p50_us"][layout].as_array().expect("two runs");
        assert!(
            runs.len() == 2 && runs.iter().all(positive),
            "{layout}: {v}"
        );
    }
    assert!(positive(&v["airamp_over_raw_tcp"]), "{v}");
}

#[test]
fn net_json() {
    let v = json(&["bench", "net", "--no-iperf", "--total", "16M", "--json"]);
    assert!(positive(&v["airamp_gbit_per_s"]), "{v}");
    assert_eq!(v["message_bytes"], 1 << 20);
    assert!(v["airamp_over_best_iperf3"].is_null(), "no iperf3 run: {v}");
}

#[test]
fn collnet_json_and_plot() {
    let svg = std::env::temp_dir().join(format!("airamp-results-{}.svg", std::process::id()));
    let v = json(&[
        "bench",
        "collnet",
        "--min",
        "4K",
        "--max",
        "4K",
        "--rounds",
        "1",
        "--json",
        "--plot",
        &svg.to_string_lossy(),
    ]);
    let sizes = v["sizes"].as_array().expect("sizes");
    assert_eq!(sizes.len(), 1, "{v}");
    for path in ["raw", "exact", "compressed"] {
        assert!(positive(&sizes[0]["busbw_gbit_per_s"][path]), "{path}: {v}");
    }
    let text = std::fs::read_to_string(&svg).expect("the plot file");
    std::fs::remove_file(&svg).expect("remove");
    assert!(text.trim_start().starts_with("<svg") && text.trim_end().ends_with("</svg>"));
    for name in [
        "raw ring (reference)",
        "exact collnet",
        "compressed collnet",
    ] {
        assert!(text.contains(name), "{name} missing from the plot");
    }
}

#[test]
fn plot_into_a_missing_directory_fails_cleanly() {
    let out = airamp(&[
        "bench",
        "collnet",
        "--min",
        "4K",
        "--max",
        "4K",
        "--rounds",
        "1",
        "--plot",
        "/nonexistent-dir/plot.svg",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent-dir/plot.svg"));
}

#[test]
fn plot_draws_results_files_and_a_socket_reference() {
    let dir = std::env::temp_dir().join(format!("airamp-plot-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    // What examples/pytorch/allreduce_bench.py writes for NCCL Socket.
    let socket = dir.join("socket.json");
    std::fs::write(
        &socket,
        r#"{"world": 2, "results": [{"dtype": "float32", "bytes": 4096, "busbw_GBps": 0.1},
            {"dtype": "float32", "bytes": 1048576, "busbw_GBps": 2.0}]}"#,
    )
    .expect("write");
    let svg = dir.join("plot.svg");
    let out = airamp(&[
        "plot",
        &svg.to_string_lossy(),
        &format!("NCCL Socket={}", socket.display()),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&svg).expect("plot");
    assert!(text.trim_end().ends_with("</svg>") && text.contains("NCCL Socket"));

    // The same file as the reference of a bench collnet plot.
    let svg2 = dir.join("collnet.svg");
    let v = json(&[
        "bench",
        "collnet",
        "--min",
        "4K",
        "--max",
        "4K",
        "--rounds",
        "1",
        "--json",
        "--plot",
        &svg2.to_string_lossy(),
        "--reference",
        &format!("NCCL Socket={}", socket.display()),
    ]);
    assert_eq!(v["sizes"].as_array().map(Vec::len), Some(1));
    let text = std::fs::read_to_string(&svg2).expect("plot");
    for name in ["raw ring (reference)", "compressed collnet", "NCCL Socket"] {
        assert!(text.contains(name), "{name} missing");
    }

    // A bad reference fails before the run, naming the file.
    let bad = dir.join("bad.csv");
    std::fs::write(&bad, "1024,1\nnot,a number\n").expect("write");
    let out = airamp(&[
        "bench",
        "collnet",
        "--plot",
        &svg2.to_string_lossy(),
        "--reference",
        &format!("x={}", bad.display()),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.csv"));
    std::fs::remove_dir_all(&dir).expect("clean");
}
