//! `airamp bench wake`: how long a sleeping thread takes to run once it is
//! signalled, by how long it slept.
//!
//! Every hand-off between airamp's threads (NCCL's proxy to a stream thread,
//! the collective network's scheduler to a worker) pays this. On bare metal
//! it is a few microseconds whatever the gap. On a virtual machine a vCPU
//! with nothing to run halts, and waking it is the hypervisor's work: on the
//! H200 host, a VM, a thread asleep for a millisecond took 24–31 µs at the
//! median and about 150 at the 90th percentile, against 6 µs after a
//! 100 µs sleep (docs/collnet.md). The shortest gap is the reference each
//! row is compared with. A gap is the sleep asked for; the idle column is
//! how long the waiter really sat idle (the timer adds its slack).

use std::process::ExitCode;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Idle gaps measured by default, µs.
pub const DEFAULT_GAPS_US: [u64; 6] = [50, 100, 200, 300, 1000, 2000];

/// Most a gap may be, µs, and most wake-ups per gap: a run stays minutes
/// at worst.
pub const MAX_GAP_US: u64 = 1_000_000;
pub const MAX_WAKES: usize = 100_000;

/// Wake-up latencies after one idle gap.
#[derive(Debug)]
pub struct Row {
    /// The sleep asked for between the waiter going idle and the signal.
    pub gap_us: u64,
    /// How long the waiter really sat idle (median): the sleep plus the
    /// timer's slack.
    pub idle_us: f64,
    pub wakes: usize,
    pub mean_us: f64,
    pub p10_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
}

/// One round of the ping-pong between the signalling thread and the waiter.
struct Round {
    /// Signals sent so far.
    sent: u64,
    /// When the last one was sent.
    sent_at: Instant,
    /// Signals the waiter has woken for (it then waits again).
    seen: u64,
    /// Whether the waiter has started: the first gap begins only then, so
    /// no sample times the thread's start.
    ready: bool,
    /// When the waiter last went back to waiting.
    idle_since: Instant,
}

/// Signals a waiting thread `wakes` times, each once it has sat idle for
/// `gap`, and returns how long after each signal it ran. The signaller
/// waits for the waiter to be back on its condition variable before each
/// gap, so every signal is one wake-up, however slow.
pub fn measure(gap: Duration, wakes: usize) -> Row {
    let now = Instant::now();
    let shared = Arc::new((
        Mutex::new(Round {
            sent: 0,
            sent_at: now,
            seen: 0,
            ready: false,
            idle_since: now,
        }),
        Condvar::new(),
        Condvar::new(),
    ));
    let waiter = {
        let shared = Arc::clone(&shared);
        std::thread::spawn(move || {
            let (lock, signal, back) = &*shared;
            let mut samples = Vec::with_capacity(wakes);
            let mut round = lock.lock().expect("round lock");
            round.ready = true;
            round.idle_since = Instant::now();
            back.notify_one();
            while samples.len() < wakes {
                round = signal
                    .wait_while(round, |r| r.sent == r.seen)
                    .expect("round lock");
                let ran = Instant::now();
                samples.push((
                    ran.duration_since(round.sent_at),
                    round.sent_at.duration_since(round.idle_since),
                ));
                round.seen = round.sent;
                round.idle_since = Instant::now();
                back.notify_one();
            }
            samples
        })
    };
    let (lock, signal, back) = &*shared;
    for sent in 1..=wakes as u64 {
        {
            let round = lock.lock().expect("round lock");
            // The waiter is idle (it has woken for every signal so far)
            // from here on.
            drop(
                back.wait_while(round, |r| !r.ready || r.seen + 1 != sent)
                    .expect("round lock"),
            );
        }
        std::thread::sleep(gap);
        let mut round = lock.lock().expect("round lock");
        round.sent = sent;
        round.sent_at = Instant::now();
        signal.notify_one();
    }
    let samples = waiter.join().expect("waiter thread");
    let mut latencies: Vec<Duration> = samples.iter().map(|s| s.0).collect();
    let mut idle: Vec<Duration> = samples.iter().map(|s| s.1).collect();
    latencies.sort_unstable();
    idle.sort_unstable();
    let mut row = summarize(gap, &latencies);
    row.idle_us = percentile(&idle, 0.5);
    row
}

/// The `q` quantile of sorted durations, µs (0 when there are none).
fn percentile(sorted: &[Duration], q: f64) -> f64 {
    let Some(last) = sorted.len().checked_sub(1) else {
        return 0.0;
    };
    sorted[(last as f64 * q) as usize].as_secs_f64() * 1e6
}

fn summarize(gap: Duration, sorted: &[Duration]) -> Row {
    let mean = if sorted.is_empty() {
        0.0
    } else {
        sorted.iter().map(Duration::as_secs_f64).sum::<f64>() * 1e6 / sorted.len() as f64
    };
    Row {
        gap_us: gap.as_micros() as u64,
        idle_us: 0.0,
        wakes: sorted.len(),
        mean_us: mean,
        p10_us: percentile(sorted, 0.10),
        p50_us: percentile(sorted, 0.50),
        p90_us: percentile(sorted, 0.90),
        p99_us: percentile(sorted, 0.99),
    }
}

pub fn run(gaps_us: &[u64], wakes: usize, json: bool) -> Result<ExitCode, String> {
    if gaps_us.is_empty() {
        return Err("--gaps: at least one gap".into());
    }
    if let Some(g) = gaps_us.iter().find(|g| !(1..=MAX_GAP_US).contains(g)) {
        return Err(format!("--gaps: {g} µs is outside 1..={MAX_GAP_US}"));
    }
    if !(1..=MAX_WAKES).contains(&wakes) {
        return Err(format!("--wakes: {wakes} is outside 1..={MAX_WAKES}"));
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
                    "idle_us": r.idle_us,
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
        "{:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}  p50 / shortest gap's",
        "gap", "idle", "mean", "p10", "p50", "p90", "p99"
    );
    for r in &rows {
        println!(
            "{:>8} {:>8.0} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1}  {:.2}x",
            r.gap_us,
            r.idle_us,
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
    fn every_signal_is_one_timed_wake_up_after_at_least_the_gap() {
        let row = measure(Duration::from_micros(200), 50);
        assert_eq!((row.gap_us, row.wakes), (200, 50), "{row:?}");
        assert!(row.idle_us >= 200.0, "idle {} µs", row.idle_us);
        assert!(row.p10_us <= row.p50_us && row.p50_us <= row.p90_us && row.p90_us <= row.p99_us);
        assert!(row.p10_us > 0.0, "{row:?}");
    }

    #[test]
    fn a_gap_shorter_than_the_wake_up_still_times_every_one() {
        let row = measure(Duration::from_micros(1), 200);
        assert_eq!(row.wakes, 200, "{row:?}");
    }

    #[test]
    fn percentiles_come_from_the_sorted_samples() {
        let sorted: Vec<Duration> = (1..=101).map(Duration::from_micros).collect();
        let row = summarize(Duration::from_micros(7), &sorted);
        assert_eq!(row.wakes, 101);
        assert_eq!(row.p10_us, 11.0);
        assert_eq!(row.p50_us, 51.0);
        assert_eq!(row.p99_us, 100.0);
        assert!((row.mean_us - 51.0).abs() < 1e-9);
        let empty = summarize(Duration::from_micros(7), &[]);
        assert_eq!((empty.wakes, empty.p50_us), (0, 0.0));
    }

    #[test]
    fn out_of_range_arguments_are_refused() {
        assert!(run(&[], 10, true).unwrap_err().contains("--gaps"));
        assert!(run(&[0], 10, true).unwrap_err().contains("--gaps"));
        assert!(run(&[MAX_GAP_US + 1], 10, true)
            .unwrap_err()
            .contains("--gaps"));
        assert!(run(&[100], 0, true).unwrap_err().contains("--wakes"));
        assert!(run(&[100], MAX_WAKES + 1, true)
            .unwrap_err()
            .contains("--wakes"));
    }
}
