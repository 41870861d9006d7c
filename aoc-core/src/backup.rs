//! Backups of a data member's state: the backup file format, and the
//! stores of a new standalone member built from a backup.
//!
//! A backup is the state machine's snapshot ([`StateMachine::snapshot`])
//! at one applied index, read on the active after a linearizable read
//! barrier (the client API's `backup` request, see
//! [`crate::client::Client::backup`]). It therefore holds every write
//! acknowledged before the backup was asked for, and nothing that was not
//! committed, while the cluster goes on serving.
//!
//! # The file format (version 1)
//!
//! Integers are big-endian.
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | magic: `AOCBACKP` |
//! | 8..12 | format version (`u32`): 1 |
//! | 12..20 | cluster id (0: unknown) |
//! | 20..28 | the member that served the backup |
//! | 28..36 | the applied index of the state |
//! | 36..44 | the term of the entry at that index (0: unknown) |
//! | 44..52 | when the backup was taken (ms since the Unix epoch) |
//! | 52..60 | N, the length of the state in bytes |
//! | 60..60+N | the state: the state machine's snapshot bytes |
//! | 60+N..64+N | CRC-32 (IEEE) of bytes 0..60+N (`u32`) |
//!
//! [`Backup::decode`] checks, in this order and before anything else
//! looks at the content: the magic, the version, the length (truncated, or
//! bytes after the checksum) and the checksum. Each refusal is an
//! [`Error::Backup`] whose [`BackupProblem`] names the values expected and
//! found.
//!
//! The checksum is CRC-32 (the `crc32fast` crate, which aoc-core already
//! uses): it catches accidental damage (a bad disk, an interrupted copy)
//! with certainty for any damaged run of up to 32 bits, hence for any
//! single damaged byte, and otherwise with probability 1 - 2^-32. It is
//! no protection against deliberate changes: keep backups where the data
//! directory would be kept.
//!
//! # Restoring
//!
//! [`restore`] fills a blank log store and a blank state machine so that
//! a member started on them is a standalone member (one voter) serving the
//! backup's state:
//!
//! ```
//! use aoc_core::backup::{self, Backup, BackupMeta};
//! use aoc_core::state::{KvCommand, KvStateMachine, MemKv};
//! use aoc_core::storage::MemLogStore;
//! use aoc_core::{Node, ReplicaConfig};
//!
//! # fn main() -> aoc_core::Result<()> {
//! // A member with some state.
//! let node = Node::builder(ReplicaConfig::new(1))
//!     .voters(vec![1])
//!     .start(MemLogStore::new(), MemKv::new())?;
//! node.propose(KvCommand::put("cluster/7", "healthy").encode())?;
//!
//! // Its state at one applied index (read off the raft thread), as a
//! // backup file's bytes.
//! let snapshot = node.read_snapshot()?;
//! node.shutdown();
//! let meta = BackupMeta {
//!     cluster_id: 7,
//!     member_id: 1,
//!     index: snapshot.index,
//!     term: snapshot.term,
//!     created_unix_ms: 0,
//! };
//! let bytes = Backup { meta, data: snapshot.state.to_vec() }.encode();
//!
//! // Checked before use; then a new standalone member (id 4) on fresh stores.
//! let backup = Backup::decode(&bytes)?;
//! let (log, mut kv) = (MemLogStore::new(), MemKv::new());
//! backup::restore(&backup, 4, &log, &mut kv)?;
//! let restored = Node::builder(ReplicaConfig::new(4)).voters(vec![4]).start(log, kv)?;
//! let value = restored.read(|kv| kv.get(b"cluster/7"))??;
//! assert_eq!(value.as_deref(), Some(&b"healthy"[..]));
//! restored.shutdown();
//!
//! // One damaged byte is refused, naming the checksum.
//! let mut damaged = bytes.clone();
//! damaged[bytes.len() / 2] ^= 0x10;
//! let err = Backup::decode(&damaged).unwrap_err();
//! assert!(err.to_string().contains("checksum mismatch"), "{err}");
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::Path;

use raft::eraftpb::{ConfState, HardState, SnapshotMetadata};

use crate::state::{SnapshotData, StateMachine};
use crate::storage::{LogStore, LogWrite};
use crate::{Error, Result};

/// The first bytes of every backup file.
pub const MAGIC: [u8; 8] = *b"AOCBACKP";

/// The version of the format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// The length of the header (everything before the state).
pub const HEADER_BYTES: usize = 60;

/// The length of the checksum that ends the file.
pub const CHECKSUM_BYTES: usize = 4;

/// What a backup's header records about its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BackupMeta {
    /// The cluster the state comes from (0: unknown).
    pub cluster_id: u64,
    /// The member that served the backup.
    pub member_id: u64,
    /// The applied index the state is at.
    pub index: u64,
    /// The term of the entry at `index` (0: unknown).
    pub term: u64,
    /// When the backup was taken, in ms since the Unix epoch.
    pub created_unix_ms: u64,
}

/// A backup: its metadata and the state machine's snapshot bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Backup {
    /// What the header records.
    pub meta: BackupMeta,
    /// The state: [`StateMachine::snapshot`] at `meta.index`.
    pub data: Vec<u8>,
}

impl fmt::Debug for Backup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backup")
            .field("meta", &self.meta)
            .field("data_bytes", &self.data.len())
            .finish()
    }
}

/// Why bytes are not a valid backup (inside [`Error::Backup`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackupProblem {
    /// The bytes do not start with [`MAGIC`]: not a backup file.
    #[error(
        "bad magic: expected \"{}\" (an AOC backup file), found \"{}\"",
        MAGIC.escape_ascii(),
        found.escape_ascii()
    )]
    BadMagic {
        /// The first bytes found (up to 8).
        found: Vec<u8>,
    },
    /// The format version is not one this build reads.
    #[error("unsupported format version {found} (this build reads version {supported})")]
    UnsupportedVersion {
        /// The version in the file.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// Fewer bytes than the header and checksum alone take.
    #[error(
        "truncated: {found} bytes, fewer than the {} bytes of the header and checksum alone",
        HEADER_BYTES + CHECKSUM_BYTES
    )]
    TruncatedHeader {
        /// The number of bytes found.
        found: u64,
    },
    /// Fewer bytes than the header announces.
    #[error(
        "truncated: {found} bytes, but the header announces {expected} \
         (header, {data} bytes of state, checksum)"
    )]
    Truncated {
        /// The length the header announces.
        expected: u64,
        /// The number of bytes found.
        found: u64,
        /// The state's length in the header.
        data: u64,
    },
    /// More bytes than the header announces.
    #[error(
        "{found} bytes, but the header announces {expected} \
         (header, {data} bytes of state, checksum): bytes follow the checksum"
    )]
    TooLong {
        /// The length the header announces.
        expected: u64,
        /// The number of bytes found.
        found: u64,
        /// The state's length in the header.
        data: u64,
    },
    /// The content does not match its checksum: damaged.
    #[error(
        "checksum mismatch: the file records CRC-32 {expected:#010x}, its content gives \
         {found:#010x} (the file is damaged)"
    )]
    ChecksumMismatch {
        /// The checksum recorded.
        expected: u32,
        /// The checksum of the content.
        found: u32,
    },
}

fn refuse(what: &str, problem: BackupProblem) -> Error {
    Error::Backup {
        what: what.to_string(),
        problem,
    }
}

/// Reads the big-endian `u64` at `at`; the caller checked the length.
fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(b)
}

/// Reads the big-endian `u32` at `at`; the caller checked the length.
fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_be_bytes(b)
}

impl BackupMeta {
    /// The header for a state of `data_len` bytes.
    fn header(&self, data_len: usize) -> [u8; HEADER_BYTES] {
        let mut h = [0u8; HEADER_BYTES];
        h[0..8].copy_from_slice(&MAGIC);
        h[8..12].copy_from_slice(&FORMAT_VERSION.to_be_bytes());
        let words = [
            self.cluster_id,
            self.member_id,
            self.index,
            self.term,
            self.created_unix_ms,
            data_len as u64,
        ];
        for (i, w) in words.iter().enumerate() {
            let at = 12 + 8 * i;
            h[at..at + 8].copy_from_slice(&w.to_be_bytes());
        }
        h
    }
}

/// Checks `bytes` as a whole backup file; returns the metadata and the
/// state's length. `what` names the bytes in errors.
fn verify(bytes: &[u8], what: &str) -> Result<(BackupMeta, usize)> {
    let found = bytes.len() as u64;
    let head = &bytes[..bytes.len().min(MAGIC.len())];
    if head != &MAGIC[..head.len()] {
        return Err(refuse(
            what,
            BackupProblem::BadMagic {
                found: head.to_vec(),
            },
        ));
    }
    if bytes.len() >= 12 {
        let version = u32_at(bytes, 8);
        if version != FORMAT_VERSION {
            return Err(refuse(
                what,
                BackupProblem::UnsupportedVersion {
                    found: version,
                    supported: FORMAT_VERSION,
                },
            ));
        }
    }
    if bytes.len() < HEADER_BYTES + CHECKSUM_BYTES {
        return Err(refuse(what, BackupProblem::TruncatedHeader { found }));
    }
    let data = u64_at(bytes, 52);
    // In u128: a damaged length near u64::MAX must not wrap around.
    let expected = HEADER_BYTES as u128 + data as u128 + CHECKSUM_BYTES as u128;
    let expected_u64 = u64::try_from(expected).unwrap_or(u64::MAX);
    if (found as u128) < expected {
        return Err(refuse(
            what,
            BackupProblem::Truncated {
                expected: expected_u64,
                found,
                data,
            },
        ));
    }
    if (found as u128) > expected {
        return Err(refuse(
            what,
            BackupProblem::TooLong {
                expected: expected_u64,
                found,
                data,
            },
        ));
    }
    // The length now equals HEADER_BYTES + data + CHECKSUM_BYTES, so the
    // state's length fits in usize.
    let data_len = bytes.len() - HEADER_BYTES - CHECKSUM_BYTES;
    let body = &bytes[..HEADER_BYTES + data_len];
    let recorded = u32_at(bytes, HEADER_BYTES + data_len);
    let actual = crc32fast::hash(body);
    if recorded != actual {
        return Err(refuse(
            what,
            BackupProblem::ChecksumMismatch {
                expected: recorded,
                found: actual,
            },
        ));
    }
    let meta = BackupMeta {
        cluster_id: u64_at(bytes, 12),
        member_id: u64_at(bytes, 20),
        index: u64_at(bytes, 28),
        term: u64_at(bytes, 36),
        created_unix_ms: u64_at(bytes, 44),
    };
    Ok((meta, data_len))
}

impl Backup {
    /// The backup's file form (see the module documentation).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + self.data.len() + CHECKSUM_BYTES);
        out.extend_from_slice(&self.meta.header(self.data.len()));
        out.extend_from_slice(&self.data);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// Decodes a backup file's bytes, checking the magic, the version, the
    /// length and the checksum first; a refusal is an [`Error::Backup`].
    /// The state itself is not interpreted here (the state machine checks
    /// it when it restores it).
    pub fn decode(bytes: &[u8]) -> Result<Backup> {
        let (meta, len) = verify(bytes, "bytes")?;
        Ok(Backup {
            meta,
            data: bytes[HEADER_BYTES..HEADER_BYTES + len].to_vec(),
        })
    }

    /// Reads and decodes the backup file at `path` (see
    /// [`Backup::decode`]). An unreadable file is an [`Error::Storage`]
    /// naming it; a damaged one an [`Error::Backup`] naming it.
    pub fn read_file(path: &Path) -> Result<Backup> {
        let mut bytes = Vec::new();
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| Error::storage(path, format!("cannot read the backup file: {e}")))?;
        let (meta, len) = verify(&bytes, &path.display().to_string())?;
        // Reuse the buffer: drop the checksum, then the header.
        bytes.truncate(HEADER_BYTES + len);
        bytes.drain(..HEADER_BYTES);
        Ok(Backup { meta, data: bytes })
    }

    /// Writes the backup to `path` so that a crash never leaves a partial
    /// file there: it is written to a temporary file in the same directory
    /// (owner-only on Unix: a backup holds every value), synced, renamed
    /// over `path` (replacing a file already there), and the directory is
    /// synced. Returns the number of bytes written.
    pub fn write_file(&self, path: &Path) -> Result<u64> {
        let name = path
            .file_name()
            .ok_or_else(|| Error::storage(path, "the backup file's path has no file name"))?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => Path::new(".").to_path_buf(),
        };
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp.{}", std::process::id()));
        let tmp = dir.join(tmp_name);
        let size = (HEADER_BYTES + self.data.len() + CHECKSUM_BYTES) as u64;
        let written = self
            .write_synced(&tmp)
            .and_then(|()| fs::rename(&tmp, path));
        if let Err(e) = written {
            // Best effort: the temporary file is ours and incomplete.
            let _ = fs::remove_file(&tmp);
            return Err(Error::storage(
                path,
                format!(
                    "cannot write the backup file (through {}): {e}",
                    tmp.display()
                ),
            ));
        }
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::storage(&dir, format!("cannot fsync the directory: {e}")))?;
        Ok(size)
    }

    /// Writes the file form to a new file at `tmp` and syncs it, without
    /// building a second copy of the state in memory.
    fn write_synced(&self, tmp: &Path) -> std::io::Result<()> {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut out = BufWriter::new(options.open(tmp)?);
        let header = self.meta.header(self.data.len());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header);
        crc.update(&self.data);
        out.write_all(&header)?;
        out.write_all(&self.data)?;
        out.write_all(&crc.finalize().to_be_bytes())?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    }
}

/// What the state of a key-value backup holds (see [`kv_summary`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KvSummary {
    /// The number of keys.
    pub keys: usize,
    /// The number of client sessions.
    pub sessions: usize,
}

/// Decodes the state of a backup of the ready-made key-value state machine
/// ([`crate::state::SledKv`], [`crate::state::MemKv`]) and counts it.
/// [`Error::Decode`] when the state is not such a snapshot at the
/// backup's index.
pub fn kv_summary(backup: &Backup) -> Result<KvSummary> {
    let snapshot = SnapshotData::decode(backup.meta.index, &backup.data)?;
    Ok(KvSummary {
        keys: snapshot.pairs.len(),
        sessions: snapshot.sessions.len(),
    })
}

/// Fills a blank log store and a blank state machine from `backup`, so that
/// a member started on them is member `member_id`, the one voter of its own
/// group, holding the backup's state at the backup's index.
///
/// In order:
/// 1. checks, changing nothing: `member_id` is not 0, the log store holds
///    no configuration and no entry, the state machine has applied
///    nothing, and the state machine accepts the state at the backup's
///    index ([`StateMachine::check_snapshot`]);
/// 2. restores the state machine (durable when it returns, as
///    [`StateMachine::restore`] promises);
/// 3. writes, in one synced log write, a compaction point at the backup's
///    index and term whose configuration is `member_id` alone, that
///    configuration, and a hard state whose term is that term and whose
///    commit is that index: what raft requires at start (commit at least
///    the compaction point, term at least its term).
///
/// The state is written before the log, as when a member installs a
/// snapshot: a crash in between leaves a restored state machine and a
/// blank log, which step 1 refuses on a second attempt (start again from
/// empty stores).
///
/// A backup of unknown term (0) is restored at term 1: the new member
/// starts a history of its own, whose terms only order its own entries.
pub fn restore<L: LogStore, S: StateMachine>(
    backup: &Backup,
    member_id: u64,
    log: &L,
    sm: &mut S,
) -> Result<()> {
    if member_id == 0 {
        return Err(Error::config("member_id", "0 is not a member id"));
    }
    let state = log.initial_state()?;
    let last = log.last_index()?;
    if state.initialized() || last != 0 {
        return Err(Error::storage(
            "log store",
            format!(
                "not blank (voters {:?}, last index {last}): a backup is restored into empty stores only",
                state.conf_state.voters
            ),
        ));
    }
    if sm.applied_index() != 0 {
        return Err(Error::storage(
            "state machine",
            format!(
                "not blank (applied index {}): a backup is restored into empty stores only",
                sm.applied_index()
            ),
        ));
    }
    let index = backup.meta.index;
    if index == 0 {
        return Err(Error::decode(
            "backup",
            "the backup is at applied index 0: it holds no state",
        ));
    }
    sm.check_snapshot(index, &backup.data)?;
    sm.restore(index, &backup.data)?;
    let term = backup.meta.term.max(1);
    let conf = ConfState {
        voters: vec![member_id],
        ..Default::default()
    };
    let mut meta = SnapshotMetadata {
        index,
        term,
        ..Default::default()
    };
    meta.set_conf_state(conf.clone());
    let hard_state = HardState {
        term,
        commit: index,
        ..Default::default()
    };
    log.write(&LogWrite {
        snapshot: Some(meta),
        hard_state: Some(hard_state),
        conf_state: Some(conf),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{KvCommand, KvStateMachine, MemKv, SledKv};
    use crate::storage::{EngineLogOptions, EngineLogStore, MemLogStore};
    use crate::{Node, ReplicaConfig};

    fn sample() -> Backup {
        Backup {
            meta: BackupMeta {
                cluster_id: 7,
                member_id: 2,
                index: 41,
                term: 3,
                created_unix_ms: 1_700_000_000_000,
            },
            data: b"some state bytes".to_vec(),
        }
    }

    fn problem(bytes: &[u8]) -> BackupProblem {
        match Backup::decode(bytes) {
            Err(Error::Backup { problem, .. }) => problem,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn round_trip() {
        for data in [Vec::new(), b"x".to_vec(), vec![0xAB; 10_000]] {
            let b = Backup { data, ..sample() };
            let bytes = b.encode();
            assert_eq!(bytes.len(), HEADER_BYTES + b.data.len() + CHECKSUM_BYTES);
            assert_eq!(&bytes[..8], b"AOCBACKP");
            assert_eq!(Backup::decode(&bytes), Ok(b));
        }
    }

    #[test]
    fn a_file_round_trips_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("b.aocbackup");
        let b = sample();
        let size = b.write_file(&path).expect("written");
        assert_eq!(size, std::fs::metadata(&path).expect("exists").len());
        assert_eq!(Backup::read_file(&path), Ok(b.clone()));
        // Written again over the old one.
        b.write_file(&path).expect("replaced");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("listed")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("b.aocbackup")]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .expect("exists")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let err = Backup::read_file(&dir.path().join("missing")).expect_err("missing");
        assert!(matches!(err, Error::Storage { .. }), "{err}");
    }

    #[test]
    fn every_single_byte_change_is_refused() {
        let bytes = sample().encode();
        for at in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xFF] {
                let mut damaged = bytes.clone();
                damaged[at] ^= flip;
                let p = problem(&damaged);
                // Which check catches it depends on the field: the magic,
                // the version, the length, else the checksum.
                let expected_kind = match at {
                    0..=7 => matches!(p, BackupProblem::BadMagic { .. }),
                    8..=11 => matches!(p, BackupProblem::UnsupportedVersion { .. }),
                    52..=59 => matches!(
                        p,
                        BackupProblem::Truncated { .. } | BackupProblem::TooLong { .. }
                    ),
                    _ => matches!(p, BackupProblem::ChecksumMismatch { .. }),
                };
                assert!(expected_kind, "byte {at} ^ {flip:#x}: {p}");
            }
        }
    }

    #[test]
    fn every_truncation_and_extension_is_refused() {
        let bytes = sample().encode();
        for len in 0..bytes.len() {
            let p = problem(&bytes[..len]);
            let text = p.to_string();
            assert!(text.starts_with("truncated"), "length {len}: {text}");
            if len >= HEADER_BYTES + CHECKSUM_BYTES {
                assert!(
                    text.contains(&format!("{len} bytes"))
                        && text.contains(&format!("announces {}", bytes.len())),
                    "length {len}: {text}"
                );
            }
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            problem(&longer),
            BackupProblem::TooLong { expected, found, .. }
                if expected == bytes.len() as u64 && found == expected + 1
        ));
    }

    #[test]
    fn wrong_magic_and_version_are_named() {
        let mut bytes = sample().encode();
        bytes[..8].copy_from_slice(b"NOTABACK");
        let err = Backup::decode(&bytes).expect_err("bad magic").to_string();
        assert!(
            err.contains("bad magic") && err.contains("AOCBACKP") && err.contains("NOTABACK"),
            "{err}"
        );
        let mut bytes = sample().encode();
        bytes[8..12].copy_from_slice(&2u32.to_be_bytes());
        let err = Backup::decode(&bytes).expect_err("version 2").to_string();
        assert!(
            err.contains("unsupported format version 2") && err.contains("reads version 1"),
            "{err}"
        );
        // A text file is no backup, whatever its length.
        let err = Backup::decode(b"cluster_id = 1\n").expect_err("text");
        assert!(err.to_string().contains("bad magic"), "{err}");
    }

    #[test]
    fn a_checksum_mismatch_names_both_values() {
        let mut bytes = sample().encode();
        let at = HEADER_BYTES + 3;
        bytes[at] ^= 0x04;
        match problem(&bytes) {
            BackupProblem::ChecksumMismatch { expected, found } => {
                assert_ne!(expected, found);
                let text = BackupProblem::ChecksumMismatch { expected, found }.to_string();
                assert!(
                    text.contains(&format!("{expected:#010x}"))
                        && text.contains(&format!("{found:#010x}")),
                    "{text}"
                );
            }
            other => panic!("{other}"),
        }
    }

    /// A member's state, as a backup (standalone member on MemKv).
    fn backup_of(puts: &[(&str, &str)]) -> Backup {
        let node = Node::builder(ReplicaConfig::new(1))
            .voters(vec![1])
            .start(MemLogStore::new(), MemKv::new())
            .expect("started");
        for (k, v) in puts {
            node.propose(KvCommand::put(*k, *v).encode())
                .expect("written");
        }
        let snapshot = node.read_snapshot().expect("snapshot read");
        node.shutdown();
        Backup {
            meta: BackupMeta {
                cluster_id: 1,
                member_id: 1,
                index: snapshot.index,
                term: snapshot.term,
                created_unix_ms: 0,
            },
            data: snapshot.state.to_vec(),
        }
    }

    #[test]
    fn restore_builds_a_standalone_member_on_real_stores() {
        let backup = backup_of(&[("a", "1"), ("b", "2")]);
        assert!(backup.meta.term >= 1);
        assert_eq!(
            kv_summary(&backup),
            Ok(KvSummary {
                keys: 2,
                sessions: 0
            })
        );
        let dir = tempfile::tempdir().expect("a temporary directory");
        {
            let log = EngineLogStore::open(&dir.path().join("log"), EngineLogOptions::default())
                .expect("log");
            let mut kv = SledKv::open(&dir.path().join("state")).expect("state");
            restore(&backup, 3, &log, &mut kv).expect("restored");
            let meta = log.snapshot_metadata().expect("meta");
            assert_eq!(
                (meta.index, meta.term),
                (backup.meta.index, backup.meta.term)
            );
            assert_eq!(meta.get_conf_state().voters, vec![3]);
            let hs = log.initial_state().expect("state").hard_state;
            assert_eq!((hs.term, hs.commit), (backup.meta.term, backup.meta.index));
            // A second restore into the same stores is refused.
            let err = restore(&backup, 3, &log, &mut kv).expect_err("not blank");
            assert!(err.to_string().contains("not blank"), "{err}");
        }
        // Reopened from disk, it starts, serves the state and takes writes.
        let log = EngineLogStore::open(&dir.path().join("log"), EngineLogOptions::default())
            .expect("log");
        let kv = SledKv::open(&dir.path().join("state")).expect("state");
        assert_eq!(kv.applied_index(), backup.meta.index);
        let node = Node::builder(ReplicaConfig::new(3))
            .voters(vec![3])
            .start(log, kv)
            .expect("started");
        let wrote = node
            .propose(KvCommand::put("c", "3").encode())
            .expect("a write after the restore");
        assert!(wrote.index > backup.meta.index);
        let pairs = node.read(|kv| kv.scan(b"")).expect("read").expect("scan");
        let pairs: Vec<(String, String)> = pairs
            .into_iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(&k).into_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect();
        let want: Vec<(String, String)> = [("a", "1"), ("b", "2"), ("c", "3")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(pairs, want);
        node.shutdown();
    }

    #[test]
    fn restore_refuses_before_writing_anything() {
        let backup = backup_of(&[("a", "1")]);
        // Not the state machine's snapshot format.
        let foreign = Backup {
            data: b"not a snapshot".to_vec(),
            ..backup.clone()
        };
        let (log, mut kv) = (MemLogStore::new(), MemKv::new());
        assert!(restore(&foreign, 1, &log, &mut kv).is_err());
        assert_eq!(kv.applied_index(), 0);
        assert!(!log.initial_state().expect("state").initialized());
        // Member 0, and a backup at index 0.
        assert!(restore(&backup, 0, &log, &mut kv).is_err());
        let empty = Backup {
            meta: BackupMeta {
                index: 0,
                ..backup.meta
            },
            ..backup.clone()
        };
        assert!(restore(&empty, 1, &log, &mut kv).is_err());
        assert_eq!(kv.applied_index(), 0);
        // A log store that already holds a configuration.
        let used = MemLogStore::new();
        crate::Replica::<MemLogStore, MemKv>::bootstrap(&used, &[1]).expect("bootstrapped");
        let err = restore(&backup, 1, &used, &mut kv).expect_err("not blank");
        assert!(err.to_string().contains("not blank"), "{err}");
        assert_eq!(kv.applied_index(), 0);
    }
}
