//! The data directory lock: one process per data directory.
//!
//! Two processes on one data directory would corrupt it (two raft logs
//! written at once, two members with the same id). [`DataDirLock::acquire`]
//! takes an exclusive, non-blocking lock on `DIR/LOCK` (an advisory
//! `flock` through std's [`File::try_lock`]) and holds it while the value
//! lives; the operating system releases it when the process exits, however
//! it exits, so a crash leaves no stale lock. The file keeps the holder's
//! process id, which the error for a second process shows.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The name of the lock file inside the data directory.
pub const LOCK_FILE: &str = "LOCK";

/// An exclusive lock on a data directory, held until dropped.
#[derive(Debug)]
pub struct DataDirLock {
    dir: PathBuf,
    // Held for its lock; closing it releases the lock.
    _file: File,
}

impl DataDirLock {
    /// Creates `dir` if missing (owner-only permissions, 0700, on Unix) and
    /// locks it. Fails with a message naming the directory when another
    /// process (or another `DataDirLock` in this process) holds it, or when
    /// it cannot be created or opened.
    pub fn acquire(dir: impl AsRef<Path>) -> Result<DataDirLock, String> {
        const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);
        let dir = dir.as_ref();
        if !dir.exists() {
            create_private_dir(dir)
                .map_err(|e| format!("cannot create the data directory {}: {e}", dir.display()))?;
        } else if !dir.is_dir() {
            return Err(format!(
                "the data directory {} exists but is not a directory",
                dir.display()
            ));
        }
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| format!("cannot open the lock file {}: {e}", path.display()))?;
        // A predecessor that was just killed (a guard restarting its
        // member, a supervisor restarting the process) may still hold the
        // lock while the kernel tears it down: wait a little before
        // calling the directory taken.
        let mut locked = file.try_lock();
        let until = std::time::Instant::now() + LOCK_WAIT;
        while matches!(locked, Err(TryLockError::WouldBlock)) && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(50));
            locked = file.try_lock();
        }
        match locked {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let by = if holder.is_empty() {
                    String::new()
                } else {
                    format!(" (process {holder})")
                };
                return Err(format!(
                    "the data directory {} is in use by another process{by}: {} is locked; \
                     stop that process or use another data_dir",
                    dir.display(),
                    path.display()
                ));
            }
            Err(TryLockError::Error(e)) => {
                return Err(format!("cannot lock {}: {e}", path.display()));
            }
        }
        // Best effort: the pid only helps the message above.
        let _ = file
            .set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "{}", std::process::id()))
            .and_then(|()| file.flush());
        Ok(DataDirLock {
            dir: dir.to_path_buf(),
            _file: file,
        })
    }

    /// The locked directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_acquire_fails_until_the_first_is_dropped() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("data").join("node1");
        let first = DataDirLock::acquire(&dir).expect("first lock");
        assert_eq!(first.dir(), dir.as_path());
        let err = DataDirLock::acquire(&dir).expect_err("second lock must fail");
        assert!(err.contains(&dir.display().to_string()), "{err}");
        assert!(err.contains("in use by another process"), "{err}");
        assert!(
            err.contains(&format!("process {}", std::process::id())),
            "{err}"
        );
        drop(first);
        DataDirLock::acquire(&dir).expect("free again once dropped");
    }

    #[cfg(unix)]
    #[test]
    fn a_new_directory_is_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("fresh");
        let _lock = DataDirLock::acquire(&dir).expect("lock");
        let mode = std::fs::metadata(&dir)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_file_in_the_way_is_reported() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let file = tmp.path().join("not-a-dir");
        std::fs::write(&file, b"x").expect("write");
        let err = DataDirLock::acquire(&file).expect_err("must fail");
        assert!(err.contains("not a directory"), "{err}");
    }
}
