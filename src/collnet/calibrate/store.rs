//! Node-local calibration records: one small file per (communicator,
//! group), written by the group's member on this node during `connect` and
//! read by the tuner of every rank of the communicator on the node,
//! whichever process it lives in.
//!
//! Files live in `/dev/shm` (the node-local shared memory NCCL's own
//! intra-node transports already require the local ranks to share), else in
//! the temporary directory. The name carries the owner's uid, the
//! communicator id and the group key; a record is written to a hidden
//! temporary name and `rename(2)`d into place, so a reader sees all of it
//! or nothing. Readers only trust regular files owned by their own uid.

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{Record, RECORD_BYTES};

/// The directory records live in.
pub fn dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// This process's effective uid (the owner of `/proc/self`).
fn uid() -> io::Result<u32> {
    fs::metadata("/proc/self").map(|m| m.uid())
}

fn prefix(uid: u32, comm_id: u64) -> String {
    format!("airamp-calib-{uid}-{comm_id:016x}-")
}

/// A filed record; the file is removed when this is dropped.
#[derive(Debug)]
pub struct RecordFile {
    path: PathBuf,
}

impl RecordFile {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RecordFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Files `record` in [`dir`].
pub fn write(record: &Record) -> io::Result<RecordFile> {
    write_in(&dir(), record)
}

/// Files `record` in `dir`.
pub fn write_in(dir: &Path, record: &Record) -> io::Result<RecordFile> {
    let name = format!(
        "{}{:016x}",
        prefix(uid()?, record.comm_id),
        record.group_key
    );
    let path = dir.join(&name);
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(&record.encode()))
        .and_then(|()| fs::rename(&tmp, &path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| RecordFile { path })
}

/// Every record filed for `comm_id` in [`dir`]: `Ok(records)`, or `Err`
/// naming a file that is ours by name but not a valid record.
pub fn read(comm_id: u64) -> io::Result<Vec<Record>> {
    read_in(&dir(), comm_id)
}

/// Every record filed for `comm_id` in `dir`.
pub fn read_in(dir: &Path, comm_id: u64) -> io::Result<Vec<Record>> {
    let uid = uid()?;
    let prefix = prefix(uid, comm_id);
    let mut records = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(&prefix) {
            continue;
        }
        let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{name}: {why}"));
        let meta = entry.path().symlink_metadata()?;
        if !meta.file_type().is_file() || meta.uid() != uid {
            return Err(bad("not a regular file of this user"));
        }
        if meta.len() != RECORD_BYTES as u64 {
            return Err(bad("wrong size"));
        }
        let bytes = fs::read(entry.path())?;
        let record = Record::decode(&bytes).ok_or_else(|| bad("not a valid record"))?;
        if record.comm_id != comm_id {
            return Err(bad("record of another communicator"));
        }
        records.push(record);
    }
    Ok(records)
}
