//! `aoc-node backup` and `aoc-node restore`: the files, directories and
//! messages around [`aoc_core::backup`], which holds the format and the
//! restore of the stores.
//!
//! - [`take`] asks the active for a consistent snapshot (the client API's
//!   backup request), checks that it decodes as key-value state, and writes
//!   the backup file through a synced temporary file renamed into place;
//! - [`restore`] checks the whole file first, then builds the new member's
//!   data directory in a staging directory next to it (`.NAME.restoring`),
//!   synced, and renames it into place: an interrupted restore never
//!   leaves a half-built data directory under the configured name.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aoc_core::backup::{self, Backup};
use aoc_core::client::{Client, ClientOptions};
use aoc_core::state::SledKv;
use aoc_core::storage::{EngineLogOptions, EngineLogStore};

use crate::config::Config;
use crate::identity::{self, Identity};
use crate::lock::DataDirLock;

/// How often progress is printed during a long transfer.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Takes a backup through `endpoints` into the new file `out`; returns the
/// one-line summary. Progress goes to stderr, once a second, when the
/// transfer takes longer than that.
pub fn take(out: &Path, endpoints: Vec<SocketAddr>, opts: ClientOptions) -> Result<String, String> {
    // Checked before any transfer: a backup is never written over a file
    // (possibly an older backup) by mistake.
    if out.exists() {
        return Err(format!(
            "--out: {} already exists; remove it or choose another name",
            out.display()
        ));
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            return Err(format!(
                "--out: the directory {} does not exist",
                dir.display()
            ));
        }
    }
    let mut client = Client::connect(endpoints, opts).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut last_report = started;
    let b = client
        .backup(|got, total| {
            if last_report.elapsed() >= PROGRESS_EVERY && got < total {
                last_report = Instant::now();
                eprintln!(
                    "backup: {} of {} received ({}%)",
                    mib(got),
                    mib(total),
                    got.saturating_mul(100) / total.max(1)
                );
            }
        })
        .map_err(|e| format!("backup: {e}"))?;
    let summary = backup::kv_summary(&b).map_err(|e| {
        format!("backup: the state received is not key-value state ({e}); nothing was written")
    })?;
    let size = b.write_file(out).map_err(|e| e.to_string())?;
    Ok(format!(
        "backup of cluster {} member {} at index {} (term {}): {} keys, {} sessions, {} bytes \
         of state; wrote {} ({size} bytes) in {:.1} s",
        b.meta.cluster_id,
        b.meta.member_id,
        b.meta.index,
        b.meta.term,
        summary.keys,
        summary.sessions,
        b.data.len(),
        out.display(),
        started.elapsed().as_secs_f64()
    ))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// What a successful restore tells the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// Things to notice (for stderr), such as a backup of another cluster.
    pub notes: Vec<String>,
    /// The one-line summary (for stdout).
    pub summary: String,
}

/// Builds the data directory of `cfg` (a standalone data member, read
/// from the file `config`) from the backup file `from`.
///
/// Nothing is written before the backup file and the target have been
/// checked: a damaged file or a data directory that holds anything is
/// refused with the directory untouched.
pub fn restore(from: &Path, cfg: &Config, config: &Path) -> Result<Restored, String> {
    let b = Backup::read_file(from).map_err(|e| e.to_string())?;
    let summary = backup::kv_summary(&b).map_err(|e| {
        format!(
            "{}: the backup is intact but its state is not key-value state: {e}",
            from.display()
        )
    })?;
    let target = &cfg.data_dir;
    check_empty(target)?;
    let staging = staging_dir(target)?;
    if staging.exists() {
        return Err(format!(
            "{} exists: an earlier restore into {} was interrupted; remove it and run the \
             restore again",
            staging.display(),
            target.display()
        ));
    }
    let built = build(&staging, target, cfg, &b);
    if let Err(e) = built {
        // Ours and incomplete (it did not exist before): do not leave it
        // in the way of the next attempt.
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    let mut notes = Vec::new();
    if b.meta.cluster_id != 0 && b.meta.cluster_id != cfg.cluster_id {
        notes.push(format!(
            "note: the backup comes from cluster {}; the restored member belongs to cluster {} \
             (its configuration)",
            b.meta.cluster_id, cfg.cluster_id
        ));
    }
    let summary = format!(
        "restored {} keys, {} sessions at index {} (term {}) from {} into {}: member {} of \
         cluster {}, standalone; start it with `aoc-node run --config {}`",
        summary.keys,
        summary.sessions,
        b.meta.index,
        b.meta.term,
        from.display(),
        target.display(),
        cfg.member_id,
        cfg.cluster_id,
        config.display()
    );
    Ok(Restored { notes, summary })
}

/// Refuses a data directory that holds anything.
fn check_empty(dir: &Path) -> Result<(), String> {
    if !dir.exists() {
        return Ok(());
    }
    if !dir.is_dir() {
        return Err(format!(
            "the data directory {} exists and is not a directory",
            dir.display()
        ));
    }
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot list the data directory {}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    names.sort();
    Err(format!(
        "the data directory {} already holds data ({}): a restore builds a new member's \
         directory; point data_dir at a new or empty directory",
        dir.display(),
        names.join(", ")
    ))
}

/// `PARENT/.NAME.restoring` for the data directory `PARENT/NAME`.
fn staging_dir(target: &Path) -> Result<PathBuf, String> {
    let name = target.file_name().ok_or_else(|| {
        format!(
            "data_dir: {} does not end in a directory name",
            target.display()
        )
    })?;
    let mut staged = std::ffi::OsString::from(".");
    staged.push(name);
    staged.push(".restoring");
    Ok(target.with_file_name(staged))
}

/// Builds the member's stores in `staging`, then renames it to `target`.
fn build(staging: &Path, target: &Path, cfg: &Config, b: &Backup) -> Result<(), String> {
    // The lock keeps a member from starting on the directory meanwhile;
    // it also creates it, owner-only.
    let lock = DataDirLock::acquire(staging)?;
    identity::check_or_stamp(
        staging,
        Identity {
            cluster_id: cfg.cluster_id,
            member_id: cfg.member_id,
        },
    )?;
    {
        // The same layout as `aoc-node run`.
        let log = EngineLogStore::open(&staging.join("log"), EngineLogOptions::default())
            .map_err(|e| e.to_string())?;
        let mut kv = SledKv::open(&staging.join("state")).map_err(|e| e.to_string())?;
        backup::restore(b, cfg.member_id, &log, &mut kv).map_err(|e| e.to_string())?;
    }
    // Both stores synced what they wrote; the directory's own entries
    // (log, state, IDENTITY) must be durable before it takes its name.
    sync_dir(staging)?;
    // rename(2) replaces an empty directory, and fails on one that is not
    // empty (a member started there since the check).
    std::fs::rename(staging, target).map_err(|e| {
        format!(
            "cannot rename {} to {}: {e}",
            staging.display(),
            target.display()
        )
    })?;
    drop(lock);
    match target.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => sync_dir(parent),
        None => sync_dir(Path::new(".")),
    }
}

fn sync_dir(dir: &Path) -> Result<(), String> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("cannot fsync the directory {}: {e}", dir.display()))
}
