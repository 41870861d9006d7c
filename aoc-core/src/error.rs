//! The one error type of aoc-core. Each variant says what a caller can do
//! about it: retry elsewhere, retry later, fix a path or a setting.

use std::path::PathBuf;

/// Errors returned by aoc-core.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// This member is not the leader. Retry on `leader_hint` when it is known.
    /// A write that was in flight when leadership changed may or may not have
    /// been applied: retry it with the same (client id, sequence) and it is
    /// applied at most once.
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader {
        /// The member this member believes is the leader, if any.
        leader_hint: Option<u64>,
    },
    /// The operation did not complete in time. Its outcome is unknown; retry
    /// with the same (client id, sequence).
    #[error("timed out: {what}")]
    Timeout {
        /// What was being waited for.
        what: String,
    },
    /// The node was shut down.
    #[error("the node is stopped")]
    Stopped,
    /// The data directory (or a file in it) cannot be read, written or
    /// trusted. Nothing was changed; the path says where to look.
    #[error("storage error at {}: {reason}", path.display())]
    Storage {
        /// The file or directory concerned.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A configuration value is invalid.
    #[error("invalid configuration: {field}: {reason}")]
    InvalidConfig {
        /// The offending field.
        field: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A request or message is larger than a configured limit.
    #[error("{what} is too large: {size} bytes, limit {limit} bytes")]
    TooLarge {
        /// What was too large.
        what: String,
        /// Its size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// Bytes that should hold an aoc-core structure could not be decoded.
    #[error("cannot decode {what}: {reason}")]
    Decode {
        /// What was being decoded.
        what: String,
        /// Why it failed.
        reason: String,
    },
    /// The client session is unknown (never registered, or expired). The
    /// write was NOT applied; register a new session and retry.
    #[error("client session {client_id} is unknown or expired")]
    SessionExpired {
        /// The session's client id.
        client_id: u64,
    },
    /// The sequence number is older than the session's last applied write,
    /// whose response is the only one kept. The write was not applied again.
    #[error("client {client_id}: sequence {sequence} is older than the last applied {last}")]
    StaleSequence {
        /// The session's client id.
        client_id: u64,
        /// The sequence received.
        sequence: u64,
        /// The last sequence applied for this client.
        last: u64,
    },
    /// Too many requests are in flight; retry later.
    #[error("busy: {reason}")]
    Busy {
        /// Which limit was reached.
        reason: String,
    },
    /// Bytes that should hold a backup (see [`crate::backup`]) are not a
    /// whole, undamaged backup of a format this build reads. Nothing was
    /// restored; `problem` says what is wrong, with the values expected and
    /// found.
    #[error("backup {what} refused: {problem}")]
    Backup {
        /// Where the bytes came from (a file's path, or what was being
        /// transferred).
        what: String,
        /// What is wrong with them.
        problem: crate::backup::BackupProblem,
    },
    /// A membership change was refused before it reached the log; `reason`
    /// says why and what to do (for example: wait for the new member to
    /// catch up, or switch over before removing the active).
    #[error("membership change refused: {reason}")]
    Membership {
        /// Why, and what to do.
        reason: String,
    },
    /// A write refused while a data member's disk is below its reserve
    /// (the NOSPACE alarm): nothing was applied. Reads, deletes and
    /// backups are still served; the alarm clears once the member has
    /// space again (or by `alarm disarm`).
    #[error(
        "database space exceeded: member {member} has {free_bytes} bytes free, below its \
         reserve of {reserve_bytes} bytes; delete data or grow its file system (reads and \
         deletes are still served)"
    )]
    NoSpace {
        /// The member whose disk is low.
        member: u64,
        /// Its free bytes when it raised the alarm.
        free_bytes: u64,
        /// Its reserve.
        reserve_bytes: u64,
    },
    /// raft-rs refused an operation (for example a proposal while a leader
    /// transfer is in progress). Retry later.
    #[error("raft: {0}")]
    Raft(String),
}

/// Result alias for aoc-core.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A storage error for `path`.
    pub fn storage(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        Error::Storage {
            path: path.into(),
            reason: reason.to_string(),
        }
    }

    /// A refused membership change.
    pub fn membership(reason: impl std::fmt::Display) -> Self {
        Error::Membership {
            reason: reason.to_string(),
        }
    }

    /// A decoding error for `what`.
    pub fn decode(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Error::Decode {
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    /// An invalid configuration field.
    pub fn config(field: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Error::InvalidConfig {
            field: field.into(),
            reason: reason.to_string(),
        }
    }
}

impl From<raft::Error> for Error {
    fn from(e: raft::Error) -> Self {
        match e {
            raft::Error::ProposalDropped => Error::NotLeader { leader_hint: None },
            other => Error::Raft(other.to_string()),
        }
    }
}
