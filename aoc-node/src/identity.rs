//! The data directory's identity: the cluster and the member it belongs
//! to, in `DIR/IDENTITY`.
//!
//! A data directory holds one member's log and state. Started with another
//! cluster's configuration, or as another member, a process would mix two
//! histories: raft would see a log it never wrote. [`check_or_stamp`]
//! writes the identity on the first start (synced, owner-only) and refuses
//! every later start whose configuration names another cluster or member,
//! with an error that names both. A damaged identity file is refused, never
//! rewritten.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

/// The identity file inside the data directory.
pub const IDENTITY_FILE: &str = "IDENTITY";

/// A data directory's owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// The cluster id.
    pub cluster_id: u64,
    /// The member id.
    pub member_id: u64,
}

impl Identity {
    fn render(&self) -> String {
        format!(
            "cluster_id = {}\nmember_id = {}\n",
            self.cluster_id, self.member_id
        )
    }

    fn parse(text: &str) -> Result<Identity, String> {
        let mut cluster_id = None;
        let mut member_id = None;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| format!("line {line:?} is not `key = value`"))?;
            let value: u64 = value
                .trim()
                .parse()
                .map_err(|_| format!("{}: {:?} is not a number", key.trim(), value.trim()))?;
            match key.trim() {
                "cluster_id" => cluster_id = Some(value),
                "member_id" => member_id = Some(value),
                other => return Err(format!("unknown key {other:?}")),
            }
        }
        match (cluster_id, member_id) {
            (Some(cluster_id), Some(member_id)) => Ok(Identity {
                cluster_id,
                member_id,
            }),
            _ => Err("cluster_id and member_id are both required".into()),
        }
    }
}

/// Checks that `dir` is stamped with `want`, writing nothing: a directory
/// without a stamp is an error too (tools that read another member's data
/// directory use this).
pub fn check(dir: &Path, want: Identity) -> Result<(), String> {
    let path = dir.join(IDENTITY_FILE);
    if !path.exists() {
        return Err(format!(
            "{} has no identity file ({IDENTITY_FILE}): it is not the data directory of a \
             member that ever started",
            dir.display()
        ));
    }
    check_or_stamp(dir, want)
}

/// Stamps `dir` with `want` on the first start; afterwards checks that the
/// stamp matches. The directory must exist (see
/// [`crate::lock::DataDirLock::acquire`]).
pub fn check_or_stamp(dir: &Path, want: Identity) -> Result<(), String> {
    let path = dir.join(IDENTITY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let have = Identity::parse(&text).map_err(|e| {
                format!(
                    "the identity file {} is damaged ({e}); it names the cluster and member \
                     this data directory belongs to: restore it, or start from an empty \
                     data directory",
                    path.display()
                )
            })?;
            if have == want {
                return Ok(());
            }
            Err(format!(
                "the data directory {} belongs to cluster {} member {}, but the configuration \
                 says cluster {} member {}: point data_dir at this member's own directory",
                dir.display(),
                have.cluster_id,
                have.member_id,
                want.cluster_id,
                want.member_id
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            stamp(dir, &path, want).map_err(|e| format!("cannot write {}: {e}", path.display()))
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Writes the identity through a synced temporary file renamed into place,
/// then syncs the directory: a crash leaves either no stamp or a whole one.
fn stamp(dir: &Path, path: &Path, want: Identity) -> std::io::Result<()> {
    let tmp = dir.join(format!("{IDENTITY_FILE}.tmp"));
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(&tmp)?;
    f.write_all(want.render().as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Identity = Identity {
        cluster_id: 7,
        member_id: 1,
    };

    #[test]
    fn the_first_start_stamps_and_later_starts_check() {
        let tmp = tempfile::tempdir().expect("temp dir");
        check_or_stamp(tmp.path(), ME).expect("first start");
        let text = std::fs::read_to_string(tmp.path().join(IDENTITY_FILE)).expect("stamped");
        assert_eq!(text, "cluster_id = 7\nmember_id = 1\n");
        check_or_stamp(tmp.path(), ME).expect("same identity");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(tmp.path().join(IDENTITY_FILE))
                .expect("metadata")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn another_cluster_or_member_is_refused_with_both_named() {
        let tmp = tempfile::tempdir().expect("temp dir");
        check_or_stamp(tmp.path(), ME).expect("first start");
        let err = check_or_stamp(
            tmp.path(),
            Identity {
                cluster_id: 8,
                member_id: 1,
            },
        )
        .expect_err("another cluster");
        assert!(
            err.contains("belongs to cluster 7 member 1") && err.contains("cluster 8 member 1"),
            "{err}"
        );
        let err = check_or_stamp(
            tmp.path(),
            Identity {
                cluster_id: 7,
                member_id: 2,
            },
        )
        .expect_err("another member");
        assert!(err.contains("cluster 7 member 2"), "{err}");
        // Nothing was rewritten.
        check_or_stamp(tmp.path(), ME).expect("still ours");
    }

    #[test]
    fn a_damaged_identity_is_refused_and_kept() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let path = tmp.path().join(IDENTITY_FILE);
        for bad in [
            "cluster_id = x\nmember_id = 1\n",
            "garbage",
            "cluster_id = 7\n",
            "\u{0}\u{1}",
        ] {
            std::fs::write(&path, bad).expect("write");
            let err = check_or_stamp(tmp.path(), ME).expect_err("damaged");
            assert!(err.contains("is damaged"), "{bad:?}: {err}");
            assert_eq!(std::fs::read_to_string(&path).expect("kept"), bad);
        }
    }
}
