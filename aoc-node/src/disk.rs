//! Watches the data directory's file system for the NOSPACE alarm: five
//! times a second, the free space and the reserve go to the node
//! ([`aoc_core::Node::report_disk`]), which raises or clears this member's
//! alarm through the leader.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aoc_core::state::StateMachine;
use aoc_core::{DiskReport, Node};
use tracing::warn;

/// How often the disk is measured (a statvfs call; the reserve, which
/// walks the stores' files, every fifty measurements).
pub const EVERY: Duration = Duration::from_millis(200);

/// The default reserve's fixed part: room for compaction and the log's
/// rewrite beyond the stores' sizes.
const DEFAULT_RESERVE_FLOOR: u64 = 256 << 20;

/// The reserve for `data_dir`: `reserve_mb` if configured, else 256 MiB
/// plus the sizes of the state and the log (a snapshot install writes a
/// second copy of the state; the log is rewritten as it is purged).
pub fn reserve_bytes(data_dir: &Path, reserve_mb: Option<u64>) -> u64 {
    match reserve_mb {
        Some(mb) => mb.saturating_mul(1 << 20),
        None => DEFAULT_RESERVE_FLOOR
            .saturating_add(dir_bytes(&data_dir.join("state")))
            .saturating_add(dir_bytes(&data_dir.join("log"))),
    }
}

/// Bytes available to an unprivileged writer on `path`'s file system.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(path)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// The total size of the files under `dir` (0 when it cannot be read).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

/// Starts the thread that measures `data_dir` every [`EVERY`] and tells
/// `node`.
pub fn watch<S: StateMachine>(
    node: Node<S>,
    data_dir: PathBuf,
    reserve_mb: Option<u64>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("aoc-disk".into())
        .spawn(move || {
            let mut reserve = reserve_bytes(&data_dir, reserve_mb);
            let mut warned = false;
            for round in 1u64.. {
                match free_bytes(&data_dir) {
                    Ok(free) => {
                        warned = false;
                        node.report_disk(DiskReport {
                            free_bytes: free,
                            reserve_bytes: reserve,
                        });
                    }
                    Err(e) if !warned => {
                        warned = true;
                        warn!(dir = %data_dir.display(), error = %e, "cannot measure the data directory's free space");
                    }
                    Err(_) => {}
                }
                std::thread::sleep(EVERY);
                if round % 50 == 0 {
                    reserve = reserve_bytes(&data_dir, reserve_mb);
                }
                if node.failure().is_some() {
                    return;
                }
            }
        })
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_the_configured_one_or_the_floor_plus_the_stores() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(reserve_bytes(dir.path(), Some(8)), 8 << 20);
        assert_eq!(reserve_bytes(dir.path(), None), DEFAULT_RESERVE_FLOOR);
        std::fs::create_dir_all(dir.path().join("state/blobs")).expect("dirs");
        std::fs::write(dir.path().join("state/db"), vec![0u8; 1000]).expect("file");
        std::fs::write(dir.path().join("state/blobs/1"), vec![0u8; 500]).expect("file");
        assert_eq!(
            reserve_bytes(dir.path(), None),
            DEFAULT_RESERVE_FLOOR + 1500
        );
        assert!(free_bytes(dir.path()).expect("statvfs") > 0);
    }
}
