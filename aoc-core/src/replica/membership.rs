//! Membership changes: the member directory, the rules a change must pass
//! before it reaches the log, and the header that carries the directory in
//! a raft snapshot.
//!
//! A change is one raft single-member change (`ConfChange`): add a
//! learner, promote a learner to voter, or remove a member. raft-rs allows
//! one change in flight and none before a new leader has applied its own
//! term's first entry, which is what makes single-member changes safe (any
//! two successive voter sets share a majority). Growing a standalone member
//! to HA is four of them: add the data member as a learner, promote it, add
//! the witness as a learner, promote it.
//!
//! The directory records each added member's role and address. It travels
//! in the change's entry context, and in every raft snapshot's header, so a
//! member that joins by snapshot learns it too. Each member writes it with
//! the conf state, in the same log write (`MemberMeta`), with the index of
//! the last change the stored conf state holds: a restart replays only the
//! later changes (raft-rs refuses some changes applied twice).

use protobuf::Message as _;

use crate::proto::{MemberRecord, MembershipContext, SnapshotHeader};
use crate::{Error, Result};

/// A learner is promoted only once it holds the log up to this many
/// entries from its end: promoting a member far behind would stall commits
/// until it caught up.
pub const CATCH_UP_MARGIN_ENTRIES: u64 = 64;

/// Phrases of refusals that a caller retries on or takes as done.
pub(crate) mod reasons {
    /// A learner to promote has not caught up: retry.
    pub(crate) const NOT_CAUGHT_UP: &str = "has not caught up yet";
    /// The member to add or promote is a voter already: done.
    pub(crate) const ALREADY_VOTER: &str = "is already a voter";
    /// A standalone member's learner waits for the second new member, to
    /// be promoted with it.
    pub(crate) const AWAITS_PAIR: &str = "waits for a second new member";
    /// The member to remove is not a member (any more): done.
    pub(crate) const NOT_A_MEMBER: &str = "is not a member";

    /// Whether a refusal says the change is in effect already.
    pub(crate) fn is_done(reason: &str) -> bool {
        reason.contains(ALREADY_VOTER) || reason.contains(NOT_A_MEMBER)
    }
}
use reasons::{ALREADY_VOTER, AWAITS_PAIR, NOT_A_MEMBER, NOT_CAUGHT_UP};

/// What a member stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberRole {
    /// Holds the service data (a state machine): the active or the passive.
    Data,
    /// Stores no service data; votes and acknowledges entries (see
    /// `Replica::new_witness`).
    Witness,
}

impl std::fmt::Display for MemberRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MemberRole::Data => "data",
            MemberRole::Witness => "witness",
        })
    }
}

/// A member as the directory records it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Member {
    /// Its id (non-zero).
    pub id: u64,
    /// Whether it holds data.
    pub role: MemberRole,
    /// The address of its member listener (`host:port`).
    pub ha_addr: String,
}

/// One membership change (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipChange {
    /// Adds a member as a learner: it receives the log (by snapshot first)
    /// but neither votes nor counts for commits.
    AddLearner(Member),
    /// Makes a learner a voter; refused until it has caught up (within
    /// [`CATCH_UP_MARGIN_ENTRIES`] of the log's end). A standalone member
    /// promotes its two learners (the new passive and the witness) together,
    /// in one joint-consensus change, never one alone: with two voters,
    /// either one failing would stop every write, and no change could then
    /// be committed to undo it. So the first promotion waits (refused with
    /// "waits for a second new member") until the second learner is added
    /// and caught up.
    Promote(u64),
    /// Removes a member (not the leader: switch over first). Its messages
    /// are dropped from then on.
    Remove(u64),
    /// Removes every member but the leader at once (joint consensus),
    /// leaving it standalone: the way back from HA to one member.
    Shrink,
}

/// What a leader knows when it checks a change.
pub(crate) struct ConfView<'a> {
    pub(crate) leader: u64,
    pub(crate) voters: &'a [u64],
    pub(crate) learners: &'a [u64],
    /// The witness among the members, if any.
    pub(crate) witness: Option<u64>,
    /// The leader's last log index.
    pub(crate) last_index: u64,
    /// What each learner holds (raft-rs's matched index).
    pub(crate) matched: &'a dyn Fn(u64) -> u64,
}

/// One raft-level step of a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    AddLearner(u64),
    AddVoter(u64),
    Remove(u64),
}

/// Checks a change against the configuration and returns its raft steps
/// (more than one: a joint-consensus change); the error says why it is
/// refused and what to do.
pub(crate) fn check(change: &MembershipChange, v: &ConfView<'_>) -> Result<Vec<Step>> {
    match change {
        MembershipChange::AddLearner(m) => check_add_learner(m, v),
        MembershipChange::Promote(id) => check_promote(*id, v),
        MembershipChange::Remove(id) => check_remove(*id, v),
        MembershipChange::Shrink => check_shrink(v),
    }
}

/// A member that holds the log up to the margin (see `check`).
fn caught_up(v: &ConfView<'_>, id: u64) -> Result<()> {
    let matched = (v.matched)(id);
    // Nothing matched: it has not installed its first snapshot yet (a
    // short log would otherwise pass the margin).
    if matched == 0 || matched + CATCH_UP_MARGIN_ENTRIES < v.last_index {
        return Err(Error::membership(format!(
            "member {id} {NOT_CAUGHT_UP}: it holds the log up to index {matched}, \
             which ends at {}; try again",
            v.last_index
        )));
    }
    Ok(())
}

/// Adding a learner: a new id with an address, within one witness and two
/// data members.
fn check_add_learner(m: &Member, v: &ConfView<'_>) -> Result<Vec<Step>> {
    if m.id == 0 {
        return Err(Error::membership("member ids must be non-zero"));
    }
    if m.ha_addr.trim().is_empty() {
        return Err(Error::membership(format!(
            "member {}: its ha_addr (host:port) is required",
            m.id
        )));
    }
    if v.voters.contains(&m.id) {
        return Err(Error::membership(format!(
            "member {} {ALREADY_VOTER}",
            m.id
        )));
    }
    let others = v
        .voters
        .iter()
        .chain(v.learners)
        .copied()
        .filter(|id| *id != m.id);
    let (mut data, mut witness) = (0, None);
    for id in others {
        if Some(id) == v.witness {
            witness = Some(id);
        } else {
            data += 1;
        }
    }
    match m.role {
        MemberRole::Witness if witness.is_some() => Err(Error::membership(format!(
            "the cluster already has a witness (member {}): remove it first",
            witness.unwrap_or_default()
        ))),
        MemberRole::Data if data >= 2 => Err(Error::membership(
            "the cluster already has two data members: remove one first",
        )),
        _ => Ok(vec![Step::AddLearner(m.id)]),
    }
}

/// Promoting a caught-up learner (both learners at once on a standalone
/// leader).
fn check_promote(id: u64, v: &ConfView<'_>) -> Result<Vec<Step>> {
    if v.voters.contains(&id) {
        return Err(Error::membership(format!("member {id} {ALREADY_VOTER}")));
    }
    if !v.learners.contains(&id) {
        return Err(Error::membership(format!(
            "member {id} is not a learner: add it first"
        )));
    }
    caught_up(v, id)?;
    if v.voters != [v.leader] {
        return Ok(vec![Step::AddVoter(id)]);
    }
    // A standalone leader: both learners at once (see
    // `MembershipChange::Promote`).
    let others: Vec<u64> = v.learners.iter().copied().filter(|l| *l != id).collect();
    if others.is_empty() {
        return Err(Error::membership(format!(
            "member {id} is caught up and {AWAITS_PAIR}: a standalone member becomes HA \
             with its passive and its witness promoted together (with one alone, \
             either failing would stop every write). Add the other member; both are \
             then promoted"
        )));
    }
    let mut steps = vec![Step::AddVoter(id)];
    for o in others {
        caught_up(v, o)?;
        steps.push(Step::AddVoter(o));
    }
    Ok(steps)
}

/// Removing a member other than the leader.
fn check_remove(id: u64, v: &ConfView<'_>) -> Result<Vec<Step>> {
    if !(v.voters.contains(&id) || v.learners.contains(&id)) {
        return Err(Error::membership(format!(
            "member {id} {NOT_A_MEMBER} (voters {:?}, learners {:?})",
            v.voters, v.learners
        )));
    }
    if id == v.leader {
        return Err(Error::membership(format!(
            "member {id} is the leader: switch over to another member first"
        )));
    }
    Ok(vec![Step::Remove(id)])
}

/// Shrinking to the leader alone.
fn check_shrink(v: &ConfView<'_>) -> Result<Vec<Step>> {
    let steps: Vec<Step> = v
        .voters
        .iter()
        .chain(v.learners)
        .copied()
        .filter(|id| *id != v.leader)
        .map(Step::Remove)
        .collect();
    if steps.is_empty() {
        return Err(Error::membership("the leader is standalone already"));
    }
    Ok(steps)
}

pub(crate) fn to_record(m: &Member) -> MemberRecord {
    let mut r = MemberRecord::new();
    r.id = m.id;
    r.witness = m.role == MemberRole::Witness;
    r.ha_addr = m.ha_addr.clone();
    r
}

pub(crate) fn from_record(r: &MemberRecord) -> Member {
    Member {
        id: r.id,
        role: if r.witness {
            MemberRole::Witness
        } else {
            MemberRole::Data
        },
        ha_addr: r.ha_addr.clone(),
    }
}

/// The context of a change's entry.
pub(crate) fn encode_context(proposer: u64, token: u64, change: &MembershipChange) -> Vec<u8> {
    let mut c = MembershipContext::new();
    c.proposer = proposer;
    c.token = token;
    if let MembershipChange::AddLearner(m) = change {
        c.set_member(to_record(m));
    }
    // Writing a message into a Vec cannot fail.
    c.write_to_bytes().unwrap_or_default()
}

/// Decodes a change's context: (proposer, token, the added member).
pub(crate) fn decode_context(ctx: &[u8]) -> Result<(u64, u64, Option<Member>)> {
    let c = MembershipContext::parse_from_bytes(ctx)
        .map_err(|e| Error::decode("membership change context", e))?;
    let member = c.has_member().then(|| from_record(c.get_member()));
    Ok((c.proposer, c.token, member))
}

/// The first bytes of a snapshot's data: a header follows.
const SNAPSHOT_MAGIC: &[u8; 4] = b"AOCM";

/// A raft snapshot's data: the header (the directory) then the state.
pub(crate) fn wrap_snapshot(members: &[Member], mut state: Vec<u8>) -> Vec<u8> {
    let mut h = SnapshotHeader::new();
    h.members = members.iter().map(to_record).collect();
    let header = h.write_to_bytes().unwrap_or_default();
    let mut prefix = Vec::with_capacity(8 + header.len());
    prefix.extend_from_slice(SNAPSHOT_MAGIC);
    prefix.extend_from_slice(&(header.len() as u32).to_le_bytes());
    prefix.extend_from_slice(&header);
    // In the state's own buffer: the state (the whole store) moves up by
    // the header's length instead of being copied into fresh memory, which
    // cost 60 ms for 64 MiB.
    state.splice(0..0, prefix);
    state
}

/// Splits a raft snapshot's data into the directory and the state. Data
/// without the header (from a member of the previous version) is all state,
/// with no directory.
pub(crate) fn unwrap_snapshot(data: &[u8]) -> Result<(Option<Vec<Member>>, &[u8])> {
    if data.len() < 8 || &data[..4] != SNAPSHOT_MAGIC {
        return Ok((None, data));
    }
    let len = u32::from_le_bytes([data[4], data[5], data[6], data[7]]) as usize;
    let Some(header) = data.get(8..8 + len) else {
        return Err(Error::decode(
            "snapshot header",
            format!("it claims {len} bytes, the snapshot has {}", data.len() - 8),
        ));
    };
    let h = SnapshotHeader::parse_from_bytes(header)
        .map_err(|e| Error::decode("snapshot header", e))?;
    let members = h.members.iter().map(from_record).collect();
    Ok((Some(members), &data[8 + len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: u64, role: MemberRole) -> Member {
        Member {
            id,
            role,
            ha_addr: format!("10.0.0.{id}:7400"),
        }
    }

    fn view<'a>(
        voters: &'a [u64],
        learners: &'a [u64],
        witness: Option<u64>,
        matched: &'a dyn Fn(u64) -> u64,
    ) -> ConfView<'a> {
        ConfView {
            leader: 1,
            voters,
            learners,
            witness,
            last_index: 1000,
            matched,
        }
    }

    #[test]
    fn growth_from_standalone_passes_each_step() {
        let caught_up = |_| 990;
        let add2 = MembershipChange::AddLearner(m(2, MemberRole::Data));
        let steps = check(&add2, &view(&[1], &[], None, &caught_up)).unwrap();
        assert_eq!(steps, vec![Step::AddLearner(2)]);
        // Alone, the first learner waits for the second.
        let alone = check(
            &MembershipChange::Promote(2),
            &view(&[1], &[2], None, &caught_up),
        )
        .unwrap_err()
        .to_string();
        assert!(alone.contains(AWAITS_PAIR), "{alone}");
        let add3 = MembershipChange::AddLearner(m(3, MemberRole::Witness));
        let steps = check(&add3, &view(&[1], &[2], None, &caught_up)).unwrap();
        assert_eq!(steps, vec![Step::AddLearner(3)]);
        // Both together, in one joint change.
        let both = view(&[1], &[2, 3], Some(3), &caught_up);
        let steps = check(&MembershipChange::Promote(3), &both).unwrap();
        assert_eq!(steps, vec![Step::AddVoter(3), Step::AddVoter(2)]);
        // Past standalone, one at a time (a replacement).
        let replacing = view(&[1, 3], &[4], Some(3), &caught_up);
        let steps = check(&MembershipChange::Promote(4), &replacing).unwrap();
        assert_eq!(steps, vec![Step::AddVoter(4)]);
        // And back: every other member at once.
        let ha = view(&[1, 2, 3], &[], Some(3), &caught_up);
        let steps = check(&MembershipChange::Shrink, &ha).unwrap();
        assert_eq!(steps, vec![Step::Remove(2), Step::Remove(3)]);
        let alone = view(&[1], &[], None, &caught_up);
        assert!(check(&MembershipChange::Shrink, &alone).is_err());
    }

    #[test]
    fn refusals_name_the_problem() {
        let behind = |id| if id == 3 { 10 } else { 990 };
        let err = |c: MembershipChange, v: ConfView<'_>| check(&c, &v).unwrap_err().to_string();
        let lagging = view(&[1, 2], &[3], None, &behind);
        assert!(err(MembershipChange::Promote(3), lagging)
            .contains("has not caught up yet: it holds the log up to index 10"));
        // A paired promotion waits for both.
        let pair = view(&[1], &[2, 3], None, &behind);
        assert!(err(MembershipChange::Promote(2), pair).contains("member 3 has not caught up"));
        let nothing = |_| 0;
        let mut short = view(&[1, 2], &[4], None, &nothing);
        short.last_index = 5;
        assert!(err(MembershipChange::Promote(4), short).contains("not caught up"));
        assert!(err(
            MembershipChange::Remove(1),
            view(&[1, 2], &[], None, &behind)
        )
        .contains("is the leader: switch over"));
        assert!(err(
            MembershipChange::Remove(5),
            view(&[1, 2], &[], None, &behind)
        )
        .contains("member 5 is not a member"));
        assert!(err(
            MembershipChange::AddLearner(m(4, MemberRole::Witness)),
            view(&[1, 2, 3], &[], Some(3), &behind)
        )
        .contains("already has a witness (member 3)"));
        assert!(err(
            MembershipChange::AddLearner(m(4, MemberRole::Data)),
            view(&[1, 2, 3], &[], Some(3), &behind)
        )
        .contains("already has two data members"));
        assert!(err(
            MembershipChange::AddLearner(m(2, MemberRole::Data)),
            view(&[1, 2], &[], None, &behind)
        )
        .contains("already a voter"));
        assert!(
            err(MembershipChange::Promote(4), view(&[1], &[], None, &behind))
                .contains("not a learner")
        );
        let mut no_addr = m(2, MemberRole::Data);
        no_addr.ha_addr.clear();
        assert!(err(
            MembershipChange::AddLearner(no_addr),
            view(&[1], &[], None, &behind)
        )
        .contains("ha_addr"));
    }

    #[test]
    fn a_replacement_fits_once_the_dead_member_is_removed() {
        let any = |_| 0;
        // A dead passive 2: removing it leaves room for member 4.
        let add4 = MembershipChange::AddLearner(m(4, MemberRole::Data));
        assert!(check(&add4, &view(&[1, 2, 3], &[], Some(3), &any)).is_err());
        assert!(check(&add4, &view(&[1, 3], &[], Some(3), &any)).is_ok());
    }

    #[test]
    fn snapshot_header_round_trips_and_old_data_is_all_state() {
        let dir = vec![m(2, MemberRole::Data), m(3, MemberRole::Witness)];
        let data = wrap_snapshot(&dir, b"state bytes".to_vec());
        let (members, state) = unwrap_snapshot(&data).unwrap();
        assert_eq!(members, Some(dir));
        assert_eq!(state, b"state bytes");
        let (members, state) = unwrap_snapshot(b"plain state").unwrap();
        assert_eq!(members, None);
        assert_eq!(state, b"plain state");
        let mut cut = data.clone();
        cut[4] = 0xff;
        assert!(unwrap_snapshot(&cut).is_err());
    }

    #[test]
    fn context_round_trips() {
        let c = MembershipChange::AddLearner(m(2, MemberRole::Witness));
        let (p, t, member) = decode_context(&encode_context(1, 7, &c)).unwrap();
        assert_eq!((p, t), (1, 7));
        assert_eq!(member, Some(m(2, MemberRole::Witness)));
        let (_, _, none) =
            decode_context(&encode_context(1, 8, &MembershipChange::Remove(2))).unwrap();
        assert_eq!(none, None);
        assert!(decode_context(&[0xff, 0xff]).is_err());
    }
}
