//! Replica configuration: raft timing, message limits, sessions, compaction.

use crate::{Error, Result};

/// Configuration of one [`crate::Replica`]. Times are in ticks (the driver
/// decides how long a tick is; the threaded node defaults to 100 ms) or in
/// milliseconds where the name says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaConfig {
    /// This member's id (non-zero).
    pub id: u64,
    /// Ticks without hearing from a leader after which a follower's lease
    /// ends; also CheckQuorum's period.
    pub election_tick: usize,
    /// Ticks between a leader's heartbeats.
    pub heartbeat_tick: usize,
    /// The randomized election timeout is drawn from
    /// `[min_election_tick, max_election_tick)`.
    pub min_election_tick: usize,
    /// See `min_election_tick`.
    pub max_election_tick: usize,
    /// Largest append message in bytes (raft-rs's default sends one entry per
    /// message).
    pub max_size_per_msg_bytes: u64,
    /// Append messages in flight per follower.
    pub max_inflight_msgs: usize,
    /// A session idle for this long (by the leaders' stamps) expires.
    pub session_ttl_ms: u64,
    /// At most this many client sessions; registering one more expires the
    /// least recently active.
    pub max_sessions: usize,
    /// Sync the state machine and compact the log once this many entries
    /// were applied since the last time.
    pub compact_every_entries: u64,
    /// Entries kept in the log below the durable applied index after a
    /// compaction, so a briefly lagging follower catches up from the log.
    pub compact_keep_entries: u64,
    /// Sync the state machine and compact the log once this many bytes of
    /// entries were written since the last time.
    pub compact_log_bytes: u64,
    /// A snapshot stream not acknowledged in this many ticks is reported
    /// failed, so raft sends a new one.
    pub snapshot_timeout_ticks: usize,
    /// A ReadIndex request not answered in this many ticks is sent again
    /// (raft-rs drops them silently while a new leader has not committed in
    /// its term).
    pub read_retry_ticks: usize,
    /// Proposals larger than this are refused with [`Error::TooLarge`].
    pub max_proposal_bytes: usize,
    /// The voter that is the witness (stores no service data), if any.
    /// With a witness and two data members the HA rules apply: sync and
    /// degraded modes, the witness's hand-over.
    pub witness: Option<u64>,
    /// In sync mode, an entry that waited this long for the passive alone
    /// is committed on the active and the witness (degraded mode). Also how
    /// long an active's own log write may stay pending before it hands over.
    pub sync_timeout_ticks: usize,
    /// A planned switchover whose target has not caught up in this many
    /// ticks is abandoned; the active resumes.
    pub switchover_timeout_ticks: usize,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        ReplicaConfig {
            id: 1,
            election_tick: 10,
            heartbeat_tick: 2,
            min_election_tick: 11,
            max_election_tick: 14,
            max_size_per_msg_bytes: 1024 * 1024,
            max_inflight_msgs: 256,
            session_ttl_ms: 3_600_000,
            max_sessions: 10_000,
            compact_every_entries: 10_000,
            compact_keep_entries: 1_000,
            compact_log_bytes: 64 * 1024 * 1024,
            snapshot_timeout_ticks: 100,
            read_retry_ticks: 4,
            max_proposal_bytes: 1024 * 1024,
            witness: None,
            sync_timeout_ticks: 10,
            switchover_timeout_ticks: 30,
        }
    }
}

impl ReplicaConfig {
    /// The default configuration for member `id`.
    pub fn new(id: u64) -> Self {
        ReplicaConfig {
            id,
            ..Default::default()
        }
    }

    /// The configuration of member `id` in an HA cluster whose witness is
    /// `witness`: elections prefer data members by timing, never by raft
    /// priority. Every member keeps `election_tick` 10 (its lease); data
    /// members draw their timeout from [11, 14) ticks and the witness from
    /// [16, 21), so the witness's lease has ended when the passive stands,
    /// and the witness stands only when no data member did.
    pub fn ha(id: u64, witness: u64) -> Self {
        let (min, max) = if id == witness { (16, 21) } else { (11, 14) };
        ReplicaConfig {
            id,
            witness: Some(witness),
            min_election_tick: min,
            max_election_tick: max,
            ..Default::default()
        }
    }

    /// Checks the values; the error names the first bad field.
    pub fn validate(&self) -> Result<()> {
        if self.id == 0 {
            return Err(Error::config("id", "must be non-zero"));
        }
        if self.heartbeat_tick == 0 {
            return Err(Error::config("heartbeat_tick", "must be at least 1"));
        }
        if self.election_tick <= self.heartbeat_tick {
            return Err(Error::config(
                "election_tick",
                format!(
                    "must be greater than heartbeat_tick ({})",
                    self.heartbeat_tick
                ),
            ));
        }
        if self.min_election_tick < self.election_tick {
            return Err(Error::config(
                "min_election_tick",
                format!(
                    "must be at least election_tick ({}): raft-rs requires it",
                    self.election_tick
                ),
            ));
        }
        if self.max_election_tick <= self.min_election_tick {
            return Err(Error::config(
                "max_election_tick",
                format!(
                    "must be greater than min_election_tick ({})",
                    self.min_election_tick
                ),
            ));
        }
        if self.sync_timeout_ticks == 0 {
            return Err(Error::config("sync_timeout_ticks", "must be at least 1"));
        }
        if self.max_inflight_msgs == 0 {
            return Err(Error::config("max_inflight_msgs", "must be at least 1"));
        }
        if self.max_sessions == 0 {
            return Err(Error::config("max_sessions", "must be at least 1"));
        }
        if self.compact_every_entries == 0 {
            return Err(Error::config("compact_every_entries", "must be at least 1"));
        }
        if self.read_retry_ticks == 0 || self.snapshot_timeout_ticks == 0 {
            return Err(Error::config(
                "read_retry_ticks/snapshot_timeout_ticks",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    pub(crate) fn raft_config(&self, applied: u64) -> raft::Config {
        raft::Config {
            id: self.id,
            election_tick: self.election_tick,
            heartbeat_tick: self.heartbeat_tick,
            min_election_tick: self.min_election_tick,
            // The replica draws every timeout itself (from its seeded
            // generator), above this range's usual half when this member
            // gives way for its disk (`Replica::defers_for_disk`); raft-rs
            // asserts that a timeout lies within its configured range.
            max_election_tick: 2 * self.max_election_tick - self.min_election_tick,
            applied,
            max_size_per_msg: self.max_size_per_msg_bytes,
            max_inflight_msgs: self.max_inflight_msgs,
            check_quorum: true,
            pre_vote: true,
            // A follower learns a new commit index from the next append
            // or heartbeat, not from an empty append sent for it alone:
            // that saved two messages and their answers per write (each a
            // few thread hand-offs). Durability does not depend on it: an
            // entry is acknowledged once it is in the passive's synced
            // log (docs/design.md, "Commit index on the followers").
            skip_bcast_commit: true,
            // The appends of one ready to one follower go as one message.
            batch_append: true,
            ..Default::default()
        }
    }
}
