//! Threads that are running when the call that made them returns.

use std::io;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{Builder, JoinHandle};
use std::time::Duration;

/// Longest wait for a new thread to start running.
const START: Duration = Duration::from_secs(2);

/// Spawns `f` on a thread made by `builder` and returns once that thread
/// runs (or after [`START`]): a thread allocates as it starts (its name,
/// its signal stack), which belongs to the setup that made it (connect,
/// init), not to the first messages after it.
pub fn spawn_running<T, F>(builder: Builder, f: F) -> io::Result<JoinHandle<T>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let running = Arc::new((Mutex::new(false), Condvar::new()));
    let signal = Arc::clone(&running);
    let handle = builder.spawn(move || {
        *signal.0.lock().unwrap_or_else(PoisonError::into_inner) = true;
        signal.1.notify_one();
        drop(signal);
        f()
    })?;
    let started = running.0.lock().unwrap_or_else(PoisonError::into_inner);
    drop(
        running
            .1
            .wait_timeout_while(started, START, |started| !*started)
            .unwrap_or_else(PoisonError::into_inner),
    );
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[test]
    fn returns_once_the_thread_runs() {
        let ran = Arc::new(AtomicBool::new(false));
        let seen = Arc::clone(&ran);
        let handle = spawn_running(Builder::new().name("t".into()), move || {
            seen.store(true, Ordering::SeqCst);
            7
        })
        .unwrap();
        assert_eq!(handle.join().unwrap(), 7);
        assert!(ran.load(Ordering::SeqCst));
    }
}
