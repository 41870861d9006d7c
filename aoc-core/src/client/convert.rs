//! Conversions between the crate's types and the client API's messages.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::proto::client as pb;
use crate::state::KvResponse;
use crate::{
    Alarm, DiskReport, Error, Member, MemberRole, MembershipChange, Mode, PeerProgress, Role,
    Status,
};

/// The API error for `e`; a `NotLeader` hint carries the leader's client
/// address when `peers_api` knows it.
pub(crate) fn error_to_proto(e: &Error, peers_api: &BTreeMap<u64, SocketAddr>) -> pb::ApiError {
    let mut out = pb::ApiError::new();
    out.set_message(e.to_string());
    match e {
        Error::NotLeader { leader_hint } => {
            out.set_kind(pb::ErrorKind::NOT_LEADER);
            if let Some(id) = leader_hint {
                out.set_leader_id(*id);
                if let Some(addr) = peers_api.get(id) {
                    out.set_leader_addr(addr.to_string());
                }
            }
        }
        Error::Timeout { what } => {
            out.set_kind(pb::ErrorKind::TIMEOUT);
            out.set_what(what.clone());
        }
        Error::Stopped => out.set_kind(pb::ErrorKind::STOPPED),
        Error::Storage { path, reason } => {
            out.set_kind(pb::ErrorKind::STORAGE);
            out.set_what(path.display().to_string());
            out.set_message(reason.clone());
        }
        Error::InvalidConfig { field, reason } => {
            out.set_kind(pb::ErrorKind::INVALID);
            out.set_what(field.clone());
            out.set_message(reason.clone());
        }
        Error::TooLarge { what, size, limit } => {
            out.set_kind(pb::ErrorKind::TOO_LARGE);
            out.set_what(what.clone());
            out.set_size(*size as u64);
            out.set_limit(*limit as u64);
        }
        Error::Decode { what, reason } => {
            out.set_kind(pb::ErrorKind::INVALID);
            out.set_what(what.clone());
            out.set_message(reason.clone());
        }
        Error::SessionExpired { client_id } => {
            out.set_kind(pb::ErrorKind::SESSION_EXPIRED);
            out.set_client_id(*client_id);
        }
        Error::StaleSequence {
            client_id,
            sequence,
            last,
        } => {
            out.set_kind(pb::ErrorKind::STALE_SEQUENCE);
            out.set_client_id(*client_id);
            out.set_sequence(*sequence);
            out.set_last_sequence(*last);
        }
        Error::Backup { what, problem } => {
            out.set_kind(pb::ErrorKind::INVALID);
            out.set_what(what.clone());
            out.set_message(problem.to_string());
        }
        Error::Busy { reason } => {
            out.set_kind(pb::ErrorKind::BUSY);
            out.set_message(reason.clone());
        }
        Error::Membership { reason } => {
            out.set_kind(pb::ErrorKind::MEMBERSHIP);
            out.set_message(reason.clone());
        }
        Error::NoSpace {
            member,
            free_bytes,
            reserve_bytes,
        } => {
            out.set_kind(pb::ErrorKind::NO_SPACE);
            out.set_leader_id(*member);
            out.set_size(*free_bytes);
            out.set_limit(*reserve_bytes);
        }
        Error::Raft(reason) => {
            out.set_kind(pb::ErrorKind::OTHER);
            out.set_message(reason.clone());
        }
    }
    out
}

/// The crate error an API error stands for.
pub(crate) fn error_from_proto(e: &pb::ApiError) -> Error {
    let message = e.get_message().to_string();
    match e.get_kind() {
        pb::ErrorKind::NOT_LEADER => Error::NotLeader {
            leader_hint: (e.get_leader_id() != 0).then_some(e.get_leader_id()),
        },
        pb::ErrorKind::BUSY => Error::Busy { reason: message },
        pb::ErrorKind::TIMEOUT => Error::Timeout {
            what: e.get_what().to_string(),
        },
        pb::ErrorKind::SESSION_EXPIRED => Error::SessionExpired {
            client_id: e.get_client_id(),
        },
        pb::ErrorKind::TOO_LARGE => Error::TooLarge {
            what: e.get_what().to_string(),
            size: usize::try_from(e.get_size()).unwrap_or(usize::MAX),
            limit: usize::try_from(e.get_limit()).unwrap_or(usize::MAX),
        },
        pb::ErrorKind::INVALID => Error::Decode {
            what: e.get_what().to_string(),
            reason: message,
        },
        pb::ErrorKind::STOPPED => Error::Stopped,
        pb::ErrorKind::STALE_SEQUENCE => Error::StaleSequence {
            client_id: e.get_client_id(),
            sequence: e.get_sequence(),
            last: e.get_last_sequence(),
        },
        pb::ErrorKind::STORAGE => Error::Storage {
            path: e.get_what().into(),
            reason: message,
        },
        pb::ErrorKind::MEMBERSHIP => Error::Membership { reason: message },
        pb::ErrorKind::NO_SPACE => Error::NoSpace {
            member: e.get_leader_id(),
            free_bytes: e.get_size(),
            reserve_bytes: e.get_limit(),
        },
        pb::ErrorKind::OTHER => Error::Raft(message),
    }
}

/// The API error for a request that breaks a rule of the protocol.
pub(crate) fn invalid(what: &str, reason: impl std::fmt::Display) -> pb::ApiError {
    let mut out = pb::ApiError::new();
    out.set_kind(pb::ErrorKind::INVALID);
    out.set_what(what.to_string());
    out.set_message(reason.to_string());
    out
}

/// The API error for a limit on things held at once (`what`), reached:
/// retry later.
pub(crate) fn busy(what: &str, limit: usize, message: String) -> pb::ApiError {
    let mut out = pb::ApiError::new();
    out.set_kind(pb::ErrorKind::BUSY);
    out.set_what(what.to_string());
    out.set_limit(limit as u64);
    out.set_message(message);
    out
}

/// The API error for something over a limit.
pub(crate) fn too_large(what: String, size: u64, limit: usize) -> pb::ApiError {
    let mut out = pb::ApiError::new();
    out.set_kind(pb::ErrorKind::TOO_LARGE);
    out.set_message(format!(
        "{what} is too large: {size} bytes, limit {limit} bytes"
    ));
    out.set_what(what);
    out.set_size(size);
    out.set_limit(limit as u64);
    out
}

pub(crate) fn role_to_proto(r: Role) -> pb::Role {
    match r {
        Role::Leader => pb::Role::LEADER,
        Role::Follower => pb::Role::FOLLOWER,
        Role::Candidate => pb::Role::CANDIDATE,
        Role::PreCandidate => pb::Role::PRE_CANDIDATE,
    }
}

pub(crate) fn role_from_proto(r: pb::Role) -> Role {
    match r {
        pb::Role::LEADER => Role::Leader,
        pb::Role::FOLLOWER => Role::Follower,
        pb::Role::CANDIDATE => Role::Candidate,
        pb::Role::PRE_CANDIDATE => Role::PreCandidate,
    }
}

pub(crate) fn mode_to_proto(m: Mode) -> pb::Mode {
    match m {
        Mode::Standalone => pb::Mode::STANDALONE,
        Mode::Majority => pb::Mode::MAJORITY,
        Mode::Sync => pb::Mode::SYNC,
        Mode::Degraded => pb::Mode::DEGRADED,
    }
}

pub(crate) fn mode_from_proto(m: pb::Mode) -> Mode {
    match m {
        pb::Mode::STANDALONE => Mode::Standalone,
        pb::Mode::MAJORITY => Mode::Majority,
        pb::Mode::SYNC => Mode::Sync,
        pb::Mode::DEGRADED => Mode::Degraded,
    }
}

/// A member's status as the API sends it.
pub(crate) fn status_to_proto(
    s: &Status,
    peers_api: &BTreeMap<u64, SocketAddr>,
) -> pb::MemberStatus {
    let mut out = pb::MemberStatus::new();
    out.set_member_id(s.id);
    out.set_role(role_to_proto(s.role));
    out.set_term(s.term);
    if let Some(leader) = s.leader {
        out.set_leader(leader);
        if let Some(addr) = peers_api.get(&leader) {
            out.set_leader_addr(addr.to_string());
        }
    }
    out.set_commit(s.commit);
    out.set_applied(s.applied);
    out.set_first_index(s.first_index);
    out.set_last_index(s.last_index);
    out.set_voters(s.voters.clone());
    out.set_sessions(s.sessions as u64);
    out.set_active(s.active);
    out.set_fencing_token(s.fencing_token.unwrap_or(0));
    out.set_mode(mode_to_proto(s.mode));
    out.set_witness(s.witness);
    if let Some(id) = s.witness_id {
        out.set_has_witness_id(true);
        out.set_witness_id(id);
    }
    if let Some(lag) = s.passive_lag_entries {
        out.set_has_passive_lag_entries(true);
        out.set_passive_lag_entries(lag);
    }
    if let Some(lag) = s.passive_lag_bytes {
        out.set_has_passive_lag_bytes(true);
        out.set_passive_lag_bytes(lag);
    }
    out.set_log_bytes(s.log_bytes);
    if let Some((allowed, since_ms)) = s.maintenance {
        out.set_maintenance(true);
        out.set_maintenance_allowed(allowed);
        out.set_maintenance_since_ms(since_ms);
    }
    if let Some(w) = &s.waiting_for {
        out.set_waiting_for(w.clone());
    }
    if let Some((bytes, entries)) = s.witness_log {
        out.set_has_witness_log(true);
        out.set_witness_log_bytes(bytes);
        out.set_witness_log_entries(entries);
    }
    if let Some((at, took)) = s.last_failover_ms {
        out.set_has_last_failover(true);
        out.set_last_failover_at_ms(at);
        out.set_last_failover_took_ms(took);
    }
    out.set_learners(s.learners.clone());
    for m in &s.members {
        let mut i = pb::MemberInfo::new();
        i.set_id(m.id);
        i.set_witness(m.role == MemberRole::Witness);
        i.set_ha_addr(m.ha_addr.clone());
        out.mut_members().push(i);
    }
    for a in &s.alarms {
        let mut i = pb::AlarmInfo::new();
        i.set_member(a.member);
        i.set_free_bytes(a.free_bytes);
        i.set_reserve_bytes(a.reserve_bytes);
        i.set_since_ms(a.since_ms);
        out.mut_alarms().push(i);
    }
    if let Some((d, low)) = s.disk {
        out.set_has_disk(true);
        out.set_disk_free_bytes(d.free_bytes);
        out.set_disk_reserve_bytes(d.reserve_bytes);
        out.set_disk_low(low);
    }
    for p in &s.progress {
        let mut q = pb::PeerProgress::new();
        q.set_id(p.id);
        q.set_matched(p.matched);
        q.set_next(p.next);
        q.set_state(p.state.clone());
        out.mut_progress().push(q);
    }
    out
}

/// The status an API message describes.
pub(crate) fn status_from_proto(m: &pb::MemberStatus) -> Status {
    let mut s = Status::blank(m.get_member_id(), String::new());
    s.role = role_from_proto(m.get_role());
    s.term = m.get_term();
    s.leader = (m.get_leader() != 0).then_some(m.get_leader());
    s.commit = m.get_commit();
    s.applied = m.get_applied();
    s.first_index = m.get_first_index();
    s.last_index = m.get_last_index();
    s.voters = m.get_voters().to_vec();
    s.learners = m.get_learners().to_vec();
    s.members = m
        .get_members()
        .iter()
        .map(|i| Member {
            id: i.get_id(),
            role: if i.get_witness() {
                MemberRole::Witness
            } else {
                MemberRole::Data
            },
            ha_addr: i.get_ha_addr().to_string(),
        })
        .collect();
    s.sessions = usize::try_from(m.get_sessions()).unwrap_or(usize::MAX);
    s.active = m.get_active();
    s.fencing_token = (m.get_fencing_token() != 0).then_some(m.get_fencing_token());
    s.mode = mode_from_proto(m.get_mode());
    s.witness = m.get_witness();
    s.witness_id = m.get_has_witness_id().then_some(m.get_witness_id());
    s.passive_lag_entries = m
        .get_has_passive_lag_entries()
        .then_some(m.get_passive_lag_entries());
    s.passive_lag_bytes = m
        .get_has_passive_lag_bytes()
        .then_some(m.get_passive_lag_bytes());
    s.log_bytes = m.get_log_bytes();
    s.maintenance = m
        .get_maintenance()
        .then_some((m.get_maintenance_allowed(), m.get_maintenance_since_ms()));
    s.waiting_for = (!m.get_waiting_for().is_empty()).then(|| m.get_waiting_for().to_string());
    s.witness_log = m
        .get_has_witness_log()
        .then_some((m.get_witness_log_bytes(), m.get_witness_log_entries()));
    s.last_failover_ms = m
        .get_has_last_failover()
        .then_some((m.get_last_failover_at_ms(), m.get_last_failover_took_ms()));
    s.alarms = m
        .get_alarms()
        .iter()
        .map(|a| Alarm {
            member: a.get_member(),
            free_bytes: a.get_free_bytes(),
            reserve_bytes: a.get_reserve_bytes(),
            since_ms: a.get_since_ms(),
        })
        .collect();
    s.disk = m.get_has_disk().then(|| {
        (
            DiskReport {
                free_bytes: m.get_disk_free_bytes(),
                reserve_bytes: m.get_disk_reserve_bytes(),
            },
            m.get_disk_low(),
        )
    });
    s.progress = m
        .get_progress()
        .iter()
        .map(|p| PeerProgress {
            id: p.get_id(),
            matched: p.get_matched(),
            next: p.get_next(),
            state: p.get_state().to_string(),
        })
        .collect();
    s
}

/// A write's answer as the API sends it.
pub(crate) fn write_to_proto(index: u64, r: KvResponse) -> pb::WriteResult {
    let mut out = pb::WriteResult::new();
    out.set_index(index);
    out.set_ok(r.ok);
    if let Some(previous) = r.previous {
        out.set_had_previous(true);
        out.set_previous(previous);
    }
    if let Some(error) = r.error {
        out.set_error(error);
    }
    out
}

/// The state machine's answer an API write result carries.
pub(crate) fn write_from_proto(mut w: pb::WriteResult) -> KvResponse {
    KvResponse {
        ok: w.get_ok(),
        previous: w.get_had_previous().then(|| w.take_previous()),
        error: (!w.get_error().is_empty()).then(|| w.take_error()),
    }
}

/// A membership change as the API sends it.
pub(crate) fn membership_to_proto(c: &MembershipChange) -> pb::MembershipRequest {
    let mut r = pb::MembershipRequest::new();
    match c {
        MembershipChange::AddLearner(m) => {
            r.set_kind(pb::MembershipRequest_Kind::ADD_LEARNER);
            r.set_id(m.id);
            r.set_witness(m.role == MemberRole::Witness);
            r.set_ha_addr(m.ha_addr.clone());
        }
        MembershipChange::Promote(id) => {
            r.set_kind(pb::MembershipRequest_Kind::PROMOTE);
            r.set_id(*id);
        }
        MembershipChange::Remove(id) => {
            r.set_kind(pb::MembershipRequest_Kind::REMOVE);
            r.set_id(*id);
        }
        MembershipChange::Shrink => r.set_kind(pb::MembershipRequest_Kind::SHRINK),
    }
    r
}

/// The membership change an API request asks for.
pub(crate) fn membership_from_proto(r: &pb::MembershipRequest) -> MembershipChange {
    match r.get_kind() {
        pb::MembershipRequest_Kind::ADD_LEARNER => MembershipChange::AddLearner(Member {
            id: r.get_id(),
            role: if r.get_witness() {
                MemberRole::Witness
            } else {
                MemberRole::Data
            },
            ha_addr: r.get_ha_addr().to_string(),
        }),
        pb::MembershipRequest_Kind::PROMOTE => MembershipChange::Promote(r.get_id()),
        pb::MembershipRequest_Kind::REMOVE => MembershipChange::Remove(r.get_id()),
        pb::MembershipRequest_Kind::SHRINK => MembershipChange::Shrink,
    }
}
