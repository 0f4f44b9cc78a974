//! Ranks started by a launcher (srun, mpirun), not by the CLI, meet
//! through files in a directory they all see: each rank publishes lines
//! under its own names and waits, bounded, for the other ranks' names.
//! The directory must be fresh for each run: a name left by an earlier run
//! would be read as this run's.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often a waiting rank looks for a name again.
const POLL: Duration = Duration::from_millis(20);

pub struct Rendezvous {
    dir: PathBuf,
    timeout: Duration,
}

impl Rendezvous {
    /// Creates `dir` if needed (ranks may race to create it).
    pub fn new(dir: &Path, timeout: Duration) -> Result<Rendezvous, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(Rendezvous {
            dir: dir.to_path_buf(),
            timeout,
        })
    }

    /// Publishes `line` as `name`: written to a hidden file, then renamed
    /// over `name`, so a reader never sees part of it.
    pub fn publish(&self, name: &str, line: &str) -> Result<(), String> {
        let tmp = self.dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let path = self.dir.join(name);
        std::fs::write(&tmp, format!("{line}\n"))
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The line published as `name`, once it appears, or an error after the
    /// timeout (a rank that never started or failed before publishing).
    pub fn wait(&self, name: &str) -> Result<String, String> {
        let path = self.dir.join(name);
        let start = Instant::now();
        loop {
            match std::fs::read_to_string(&path) {
                Ok(text) => return Ok(text.trim().to_string()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("{}: {e}", path.display())),
            }
            if start.elapsed() > self.timeout {
                return Err(format!(
                    "{} did not appear within {:?}",
                    path.display(),
                    self.timeout
                ));
            }
            std::thread::sleep(POLL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("airamp-rendezvous-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_line_published_later_is_read_whole() {
        let dir = fresh("later");
        let a = Rendezvous::new(&dir.join("sub"), Duration::from_secs(10)).unwrap();
        let b = Rendezvous::new(&dir.join("sub"), Duration::from_secs(10)).unwrap();
        let line = "ab".repeat(128);
        let writer = {
            let line = line.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                b.publish("handle.1", &line)
            })
        };
        assert_eq!(a.wait("handle.1").unwrap(), line);
        writer.join().unwrap().unwrap();
        // Only the name itself is left: the temporary file was renamed.
        let names: Vec<_> = std::fs::read_dir(dir.join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["handle.1"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_name_fails_after_the_timeout() {
        let dir = fresh("missing");
        let r = Rendezvous::new(&dir, Duration::from_millis(200)).unwrap();
        r.publish("handle.0", "x").unwrap();
        let start = Instant::now();
        let err = r.wait("handle.1").unwrap_err();
        assert!(start.elapsed() >= Duration::from_millis(200));
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(
            err.contains("handle.1") && err.contains("did not appear"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
