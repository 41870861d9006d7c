//! Forced recovery: promote a data member to a standalone member when no
//! quorum is left, and say exactly which writes that loses.
//!
//! # When it is needed
//! Every acknowledged write is on the passive (sync mode) or on the
//! witness (degraded mode: active + witness), so when the active is lost
//! the passive and the witness together hold all of them and elect a new
//! active on their own. Forced recovery is for the double failure: the
//! active AND the witness are gone (or the witness was wiped), so the
//! surviving data member can never gather a quorum. Automatic failover
//! rightly refuses then: the missing members may hold acknowledged writes
//! it lacks.
//!
//! # What is lost, exactly
//! The writes acknowledged in degraded mode after the survivor last heard
//! from the active are on the old active and the witness only. The
//! survivor cannot know them; the witness's log can. Given the witness's
//! data directory (a stopped witness, or its disk recovered from a dead
//! machine), [`survey`] compares the two logs and reports the entries the
//! witness holds past the survivor's log (or where the survivor's log
//! diverged from it): their index range, how many are client writes, and
//! how many of those the witness knew committed (acknowledged for sure).
//! Without the witness's log, the report says the loss cannot be counted:
//! nothing, if the active stayed in sync mode until it died; otherwise the
//! writes of its last degraded period.
//!
//! # The promotion
//! [`promote_standalone`] rewrites the survivor's stored configuration to
//! itself alone. Restarted with a standalone configuration, it elects
//! itself, commits its own log (what it held but did not know committed
//! becomes committed: those writes were proposed by clients, and sessions
//! keep a retried write from applying twice) and serves. Messages from the
//! old members are dropped (they are no longer in the configuration), so an
//! old active that comes back cannot take the role back.
//!
//! ```
//! use aoc_core::recovery::{promote_standalone, survey};
//! use aoc_core::storage::{LogStore, MemLogStore};
//! use aoc_core::Replica;
//! use aoc_core::state::MemKv;
//!
//! # fn main() -> aoc_core::Result<()> {
//! let passive = MemLogStore::new();
//! Replica::<MemLogStore, MemKv>::bootstrap(&passive, &[1, 2, 3])?;
//! let report = survey(&passive, None::<&MemLogStore>)?;
//! assert!(report.lost.is_none()); // no witness log: not countable
//! promote_standalone(&passive, 2)?;
//! assert_eq!(passive.initial_state()?.conf_state.voters, vec![2]);
//! # Ok(())
//! # }
//! ```

use std::fmt;

use raft::eraftpb::{ConfState, EntryType};

use crate::payload::Payload;
use crate::storage::{LogStore, LogWrite};
use crate::{Error, Result};

/// What one member's log holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSummary {
    /// The first index still in the log (after compaction).
    pub first_index: u64,
    /// The last index in the log.
    pub last_index: u64,
    /// The term of the last entry.
    pub last_term: u64,
    /// The commit index the member last wrote down.
    pub commit: u64,
    /// The voters of its stored configuration.
    pub voters: Vec<u64>,
}

/// The entries the witness holds that the survivor lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostEntries {
    /// The first lost index.
    pub first_index: u64,
    /// The last lost index.
    pub last_index: u64,
    /// Client writes among them (commands; session registrations, no-ops
    /// and maintenance switches are not counted).
    pub writes: u64,
    /// Of those writes, how many the witness knew committed: acknowledged
    /// to their clients for sure. The others may or may not have been.
    pub committed_writes: u64,
}

/// What [`survey`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Survey {
    /// The surviving data member's log.
    pub member: LogSummary,
    /// The witness's log, when given.
    pub witness: Option<LogSummary>,
    /// The entries lost by promoting the member: `None` when no witness
    /// log was given (the loss cannot be counted); `Some` with zero writes
    /// when the member holds everything the witness does.
    pub lost: Option<LostEntries>,
}

fn summary(log: &impl LogStore) -> Result<LogSummary> {
    let state = log.initial_state()?;
    let last_index = log.last_index()?;
    let last_term = log.term(last_index).map_err(|e| {
        Error::storage(
            "log",
            format!("no term for the last index {last_index}: {e}"),
        )
    })?;
    Ok(LogSummary {
        first_index: log.first_index()?,
        last_index,
        last_term,
        commit: state.hard_state.commit,
        voters: state.conf_state.voters,
    })
}

/// Compares the surviving data member's log with the witness's (when
/// given) and reports what promoting the member would lose. Reads only.
pub fn survey<M: LogStore, W: LogStore>(member: &M, witness: Option<&W>) -> Result<Survey> {
    let m = summary(member)?;
    let Some(witness) = witness else {
        return Ok(Survey {
            member: m,
            witness: None,
            lost: None,
        });
    };
    let w = summary(witness)?;
    // The first witness entry the member lacks: past the member's log, or
    // where the member's log holds another term (a tail the witness's
    // leader overwrote).
    let mut first_lost = None;
    // Below the member's first index, its log was compacted: those entries
    // are applied in its state, so it holds them.
    for index in w.first_index.max(m.first_index)..=w.last_index {
        let theirs = witness
            .term(index)
            .map_err(|e| Error::storage("witness log", format!("index {index}: {e}")))?;
        if index > m.last_index || member.term(index).ok() != Some(theirs) {
            first_lost = Some(index);
            break;
        }
    }
    let Some(first) = first_lost else {
        return Ok(Survey {
            member: m,
            lost: Some(LostEntries {
                first_index: w.last_index + 1,
                last_index: w.last_index,
                writes: 0,
                committed_writes: 0,
            }),
            witness: Some(w),
        });
    };
    let (mut writes, mut committed) = (0, 0);
    let entries = witness
        .entries(first, w.last_index + 1, None)
        .map_err(|e| Error::storage("witness log", format!("reading {first}..: {e}")))?;
    for e in &entries {
        if e.get_entry_type() != EntryType::EntryNormal {
            continue;
        }
        if let Ok(Payload::Command { .. }) = Payload::decode(&e.data) {
            writes += 1;
            if e.index <= w.commit {
                committed += 1;
            }
        }
    }
    Ok(Survey {
        member: m,
        lost: Some(LostEntries {
            first_index: first,
            last_index: w.last_index,
            writes,
            committed_writes: committed,
        }),
        witness: Some(w),
    })
}

/// Rewrites `log`'s stored configuration to member `id` alone (a
/// standalone member), in one synced write. Refused when `id` is not a
/// voter of the stored configuration. Run it on a stopped member only.
pub fn promote_standalone(log: &impl LogStore, id: u64) -> Result<()> {
    let state = log.initial_state()?;
    if !state.conf_state.voters.contains(&id) {
        return Err(Error::config(
            "promote",
            format!(
                "member {id} is not a voter of this log's configuration (voters {:?})",
                state.conf_state.voters
            ),
        ));
    }
    let mut hs = state.hard_state.clone();
    // The member elects itself at once; a vote cast for another member in
    // this term must not stand in the way.
    hs.vote = 0;
    log.write(&LogWrite {
        conf_state: Some(ConfState {
            voters: vec![id],
            ..Default::default()
        }),
        hard_state: Some(hs),
        ..Default::default()
    })
}

impl fmt::Display for Survey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.member;
        writeln!(
            f,
            "this member: log {}..={} (last term {}), commit {}, voters {:?}",
            m.first_index, m.last_index, m.last_term, m.commit, m.voters
        )?;
        if let Some(w) = &self.witness {
            writeln!(
                f,
                "witness: log {}..={} (last term {}), commit {}",
                w.first_index, w.last_index, w.last_term, w.commit
            )?;
        }
        match &self.lost {
            None => write!(
                f,
                "lost: cannot be counted without the witness's log. Nothing, if the old \
                 active stayed in sync mode until it died; otherwise the writes it \
                 acknowledged in degraded mode after index {} (give --witness-data-dir \
                 to count them)",
                m.last_index
            ),
            Some(l) if l.writes == 0 && l.first_index > l.last_index => {
                write!(
                    f,
                    "lost: nothing (this member holds every entry the witness holds)"
                )
            }
            Some(l) => write!(
                f,
                "lost: indexes {}..={} ({} entries), {} client writes, {} of them known \
                 committed (acknowledged); the other {} may or may not have been acknowledged",
                l.first_index,
                l.last_index,
                l.last_index + 1 - l.first_index,
                l.writes,
                l.committed_writes,
                l.writes - l.committed_writes
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use raft::eraftpb::{Entry, HardState};

    use super::*;
    use crate::storage::MemLogStore;

    fn write_entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: Payload::Command {
                session: Some((7, index)),
                stamp_ms: 0,
                command: b"put".to_vec(),
            }
            .encode()
            .into(),
            ..Default::default()
        }
    }

    /// A log of voters 1, 2, 3 holding `entries` (index, term), every one a
    /// client write except index 1 (a no-op), with `commit`.
    fn log(entries: &[(u64, u64)], commit: u64) -> MemLogStore {
        let log = MemLogStore::new();
        log.write(&LogWrite {
            conf_state: Some(ConfState {
                voters: vec![1, 2, 3],
                ..Default::default()
            }),
            entries: entries
                .iter()
                .map(|&(i, t)| {
                    if i == 1 {
                        Entry {
                            index: 1,
                            term: t,
                            ..Default::default()
                        }
                    } else {
                        write_entry(i, t)
                    }
                })
                .collect(),
            hard_state: Some(HardState {
                term: entries.last().map_or(1, |e| e.1),
                vote: 1,
                commit,
                ..Default::default()
            }),
            ..Default::default()
        })
        .expect("an in-memory write");
        log
    }

    fn range(from: u64, to: u64, term: u64) -> Vec<(u64, u64)> {
        (from..=to).map(|i| (i, term)).collect()
    }

    #[test]
    fn the_writes_only_the_witness_holds_are_counted() {
        let member = log(&range(1, 10, 1), 10);
        let witness = log(&range(1, 15, 1), 13);
        let s = survey(&member, Some(&witness)).expect("survey");
        assert_eq!(
            s.lost,
            Some(LostEntries {
                first_index: 11,
                last_index: 15,
                writes: 5,
                committed_writes: 3,
            })
        );
        assert!(s.to_string().contains("indexes 11..=15"), "{s}");
    }

    #[test]
    fn a_tail_the_witness_overwrote_counts_from_where_the_logs_part() {
        let mut entries = range(1, 10, 1);
        entries.extend(range(11, 12, 1));
        let member = log(&entries, 10);
        let mut theirs = range(1, 10, 1);
        theirs.extend(range(11, 14, 2));
        let witness = log(&theirs, 14);
        let lost = survey(&member, Some(&witness))
            .expect("survey")
            .lost
            .expect("counted");
        assert_eq!((lost.first_index, lost.last_index), (11, 14));
        assert_eq!((lost.writes, lost.committed_writes), (4, 4));
    }

    #[test]
    fn entries_the_member_compacted_are_held_and_nothing_is_lost_in_sync() {
        let member = log(&range(1, 20, 1), 20);
        member.compact(12).expect("compaction");
        let witness = log(&range(1, 20, 1), 20);
        witness.compact(4).expect("compaction");
        let s = survey(&member, Some(&witness)).expect("survey");
        let lost = s.lost.clone().expect("counted");
        assert_eq!(lost.writes, 0);
        assert!(s.to_string().contains("lost: nothing"), "{s}");
        // Without the witness's log the loss is not counted.
        let blind = survey(&member, None::<&MemLogStore>).expect("survey");
        assert_eq!(blind.lost, None);
        assert!(blind.to_string().contains("cannot be counted"), "{blind}");
    }

    #[test]
    fn promotion_keeps_the_log_and_makes_the_member_alone() {
        let member = log(&range(1, 10, 3), 8);
        assert!(promote_standalone(&member, 9)
            .expect_err("9 is no voter")
            .to_string()
            .contains("not a voter"));
        promote_standalone(&member, 2).expect("promotion");
        let state = member.initial_state().expect("state");
        assert_eq!(state.conf_state.voters, vec![2]);
        assert_eq!(
            (
                state.hard_state.term,
                state.hard_state.vote,
                state.hard_state.commit
            ),
            (3, 0, 8)
        );
        assert_eq!(member.last_index().expect("last"), 10);
    }
}
