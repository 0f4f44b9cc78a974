//! `airamp bench wake`: how long a sleeping thread takes to run once it is
//! signalled, by how long it slept.
//!
//! Every hand-off between airamp's threads (NCCL's proxy to a stream thread,
//! the collective network's scheduler to a worker) pays this. On bare metal
//! it is a few microseconds whatever the gap. On a virtual machine a vCPU
//! with nothing to run halts, and waking it is the hypervisor's work: on the
//! H200 host, a VM, a thread asleep for a millisecond took 24–31 µs at the
//! median and about 150 at the 90th percentile, against 6 µs after 100 µs
//! (docs/collnet.md). The shortest gap is the reference each row is
//! compared with.

use std::process::ExitCode;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Idle gaps measured by default, µs.
pub const DEFAULT_GAPS_US: [u64; 6] = [50, 100, 200, 300, 1000, 2000];

/// Wake-up latencies after one idle gap.
#[derive(Debug)]
pub struct Row {
    pub gap_us: u64,
    /// Wake-ups measured (a signal that found the waiter still running
    /// the previous one is not a wake-up and is left out).
    pub wakes: usize,
    pub mean_us: f64,
    pub p10_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
}

/// The signalling side's last signal: its number and when it was sent.
struct Signal {
    seq: u64,
    at: Instant,
}

/// Signals a waiting thread `wakes` times, `gap` apart, and returns how
/// long after each signal the waiter ran.
pub fn measure(gap: Duration, wakes: usize) -> Row {
    let shared = Arc::new((
        Mutex::new(Signal {
            seq: 0,
            at: Instant::now(),
        }),
        Condvar::new(),
    ));
    let waiter = {
        let shared = Arc::clone(&shared);
        std::thread::spawn(move || {
            let (lock, cv) = &*shared;
            let mut seen = 0;
            let mut latencies = Vec::with_capacity(wakes);
            let mut signal = lock.lock().expect("signal lock");
            while seen < wakes as u64 {
                signal = cv
                    .wait_while(signal, |s| s.seq == seen)
                    .expect("signal lock");
                let ran = Instant::now();
                if signal.seq == seen + 1 {
                    latencies.push(ran.duration_since(signal.at));
                }
                seen = signal.seq;
            }
            latencies
        })
    };
    let (lock, cv) = &*shared;
    for _ in 0..wakes {
        std::thread::sleep(gap);
        let mut signal = lock.lock().expect("signal lock");
        signal.seq += 1;
        signal.at = Instant::now();
        cv.notify_one();
    }
    let mut latencies = waiter.join().expect("waiter thread");
    latencies.sort_unstable();
    summarize(gap, &latencies)
}

fn summarize(gap: Duration, sorted: &[Duration]) -> Row {
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let at = |q: f64| {
        let i = ((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1));
        sorted.get(i).map_or(0.0, |&d| us(d))
    };
    let mean = if sorted.is_empty() {
        0.0
    } else {
        sorted.iter().map(|&d| us(d)).sum::<f64>() / sorted.len() as f64
    };
    Row {
        gap_us: gap.as_micros() as u64,
        wakes: sorted.len(),
        mean_us: mean,
        p10_us: at(0.10),
        p50_us: at(0.50),
        p90_us: at(0.90),
        p99_us: at(0.99),
    }
}

pub fn run(gaps_us: &[u64], wakes: usize, json: bool) -> Result<ExitCode, String> {
    if gaps_us.is_empty() || wakes == 0 {
        return Err("bench wake needs at least one gap and one wake-up".into());
    }
    let rows: Vec<Row> = gaps_us
        .iter()
        .map(|&g| measure(Duration::from_micros(g), wakes))
        .collect();
    let reference = rows
        .iter()
        .min_by_key(|r| r.gap_us)
        .map_or(0.0, |r| r.p50_us);
    let ratio = |r: &Row| {
        if reference > 0.0 {
            r.p50_us / reference
        } else {
            0.0
        }
    };
    if json {
        let rows: Vec<_> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "gap_us": r.gap_us,
                    "wakes": r.wakes,
                    "mean_us": r.mean_us,
                    "p10_us": r.p10_us,
                    "p50_us": r.p50_us,
                    "p90_us": r.p90_us,
                    "p99_us": r.p99_us,
                    "p50_vs_shortest_gap": ratio(r),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({ "bench": "wake", "wakes_per_gap": wakes, "rows": rows })
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("thread wake-up after an idle gap, {wakes} wake-ups per gap (µs)");
    println!(
        "{:>8} {:>8} {:>8} {:>8} {:>8} {:>8}  p50 / shortest gap's",
        "gap", "mean", "p10", "p50", "p90", "p99"
    );
    for r in &rows {
        println!(
            "{:>8} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1}  {:.2}x",
            r.gap_us,
            r.mean_us,
            r.p10_us,
            r.p50_us,
            r.p90_us,
            r.p99_us,
            ratio(r)
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_signal_is_counted_once_and_the_percentiles_are_ordered() {
        let row = measure(Duration::from_micros(200), 50);
        assert_eq!(row.gap_us, 200);
        assert!(
            row.wakes > 0 && row.wakes <= 50,
            "{} wake-ups of 50",
            row.wakes
        );
        assert!(row.p10_us <= row.p50_us && row.p50_us <= row.p90_us && row.p90_us <= row.p99_us);
        assert!(row.mean_us >= row.p10_us, "{row:?}");
    }

    #[test]
    fn percentiles_come_from_the_sorted_samples() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        let row = summarize(Duration::from_micros(7), &sorted);
        assert_eq!(row.wakes, 100);
        assert_eq!(row.p10_us, 11.0);
        assert_eq!(row.p50_us, 51.0);
        assert_eq!(row.p99_us, 100.0);
        assert!((row.mean_us - 50.5).abs() < 1e-9);
        let empty = summarize(Duration::from_micros(7), &[]);
        assert_eq!((empty.wakes, empty.p50_us), (0, 0.0));
    }
}
