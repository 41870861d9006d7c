//! The sans-I/O replica: raft-rs, the client table and the state machine,
//! driven by inputs and answering with outputs.
//!
//! A driver (the threaded [`crate::Node`], or the simulation in the `sim`
//! module) owns the clock, the network and the disk. It feeds the
//! replica [`Replica::tick`], [`Replica::step`], [`Replica::propose`],
//! [`Replica::read`] and [`Replica::on_persisted`], and after each input
//! takes a [`Ready`] and carries it out:
//!
//! 1. send `messages`;
//! 2. persist `write` with [`crate::storage::LogStore::write`] (synced), then
//!    call [`Replica::on_persisted`] with its number: only then are the
//!    messages that depend on it (votes, append responses) released, in a
//!    later `Ready`;
//! 3. after the write (if any), compact the log to `compact_to`;
//! 4. send `notices` ([`crate::transport::Transport::send_notice`]);
//! 5. complete `completions`, `reads` and `switchovers`, and publish
//!    `events`.
//!
//! Writes may be persisted later and merged (group commit), but in order.
//! Acknowledgements are sound because a proposal completes only when its
//! entry is applied, and raft-rs hands out entries to apply only once they
//! are committed (persisted by a quorum) and persisted locally.

mod alarm;
mod apply;
mod breaks;
mod client;
mod commit_rule;
mod compact;
mod confirm;
mod filter;
mod ha;
mod lost;
mod machine;
mod maintenance;
mod membership;
mod meta;
mod notices;
mod output;
mod pending;
mod planned;
mod reconfig;
mod roles;
mod sessions;
mod snapshot_source;
mod standing;
mod status;
mod view;
mod votes;
mod writes;

use std::collections::BTreeMap;

use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Message, MessageType};
use raft::{RawNode, SnapshotStatus, StateRole};
use tracing::{debug, info, warn};

use crate::config::ReplicaConfig;
use crate::proto::{FollowerReport, MemberMeta};
use crate::state::{Session, StateMachine};
use crate::storage::{LogStore, LogWrite};
use crate::{Error, Result};
pub use alarm::{Alarm, DiskReport};
#[cfg(feature = "sim")]
pub(crate) use breaks::Breaks;
#[cfg(feature = "sim")]
pub(crate) use compact::WITNESS_COMPACT_BATCH;
pub use ha::Mode;
use machine::Machine;
pub(crate) use membership::reasons as membership_reasons;
pub use membership::{Member, MemberRole, MembershipChange, CATCH_UP_MARGIN_ENTRIES};
use meta::Meta;
pub use output::{Completion, Event, ProposalResult, Ready, Role};
use pending::Pending;
use planned::Planned;
use roles::Roles;
use sessions::ClientTable;
use snapshot_source::SnapshotSource;
pub use snapshot_source::StateSnapshot;
pub use status::{PeerProgress, Status};
use view::LogView;
use votes::{is_vote_request, Votes};
use writes::{Held, Writes, WrittenBytes};

/// The sans-I/O replica (see the module docs).
pub struct Replica<L: LogStore, S: StateMachine> {
    cfg: ReplicaConfig,
    /// raft-rs, over the log store and the writes not yet persisted.
    raw: RawNode<LogView<L>>,
    /// What committed entries are applied to.
    sm: Machine<S>,
    /// The client table (exactly-once sessions), as applied.
    sessions: ClientTable,
    /// The driver's clock as of the last input (ms), and the ticks so far.
    now_ms: u64,
    ticks: u64,
    /// Messages and completions produced outside `ready`.
    out: Ready,
    /// The HA layer: the commit rule's knobs, the lease, the witness's
    /// hand-over, members known to have lost data.
    ha: ha::Ha,
    /// The role as last seen, the failover history, the election timer.
    roles: Roles,
    /// When this member withholds its vote, and when the witness stands.
    votes: Votes,
    /// The planned operations in progress (see `planned`).
    planned: Planned,
    /// Proposals and reads in flight on this member.
    pending: Pending,
    /// The writes in flight and what waits for them.
    writes: Writes,
    /// Entry bytes written, for the passive's lag, and the log's size.
    written: WrittenBytes,
    /// The state snapshot being read, the one ready to send, and the
    /// streams in flight.
    snapshot_source: SnapshotSource,
    /// This member's persisted metadata, and the maintenance settings
    /// appended above it.
    meta: Meta,
    /// The member directory (see `membership`), as of the applied index.
    directory: Vec<Member>,
    /// Who holds the configuration; membership changes answered once
    /// every voter does (see `confirm`).
    confirm: confirm::Confirmations,
    /// This member's disk, and on the leader the members' reports (see
    /// `alarm`).
    disks: alarm::Disks,
    /// The tick each peer was last heard from.
    last_heard: BTreeMap<u64, u64>,
    /// The last report sent to a leader, and to which (see
    /// `report_to_leader`).
    last_report: Option<(u64, FollowerReport)>,
}

impl<L: LogStore, S: StateMachine> Replica<L, S> {
    /// Writes the initial configuration (`voters`) into a blank log store.
    /// Idempotent when the store already holds exactly these voters; an
    /// error when it holds another configuration.
    pub fn bootstrap(log: &L, voters: &[u64]) -> Result<()> {
        if voters.is_empty() || voters.contains(&0) {
            return Err(Error::config("voters", "must be non-empty and non-zero"));
        }
        let state = log.initial_state()?;
        let mut wanted: Vec<u64> = voters.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        if state.initialized() {
            let mut have = state.conf_state.voters.clone();
            have.sort_unstable();
            if have == wanted {
                return Ok(());
            }
            return Err(Error::config(
                "voters",
                format!("the log store already holds voters {have:?}, not {wanted:?}"),
            ));
        }
        let cs = ConfState {
            voters: wanted,
            ..Default::default()
        };
        log.write(&LogWrite {
            conf_state: Some(cs),
            hard_state: Some(HardState::default()),
            ..Default::default()
        })
    }

    /// Opens a replica on a bootstrapped log store and a state machine.
    /// `seed` drives the randomized election timeouts (the simulation passes
    /// its own, for reproducible runs).
    pub fn new(cfg: ReplicaConfig, log: L, sm: S, seed: u64) -> Result<Self> {
        Self::open_data(cfg, log, sm, seed, false)
    }

    /// Opens a data member that joins a running cluster: its log store is
    /// blank (not bootstrapped), it has no configuration, and it waits for
    /// the leader to add it as a learner ([`MembershipChange::AddLearner`])
    /// and send it a snapshot. It never stands for election before that.
    /// A store that is not blank opens as [`Replica::new`] does.
    pub fn join(cfg: ReplicaConfig, log: L, sm: S, seed: u64) -> Result<Self> {
        Self::open_data(cfg, log, sm, seed, true)
    }

    /// Opens a witness that joins a running cluster (see [`Replica::join`]
    /// and [`Replica::new_witness`]).
    pub fn join_witness(cfg: ReplicaConfig, log: L, seed: u64) -> Result<Self> {
        Self::open_witness(cfg, log, seed, true)
    }

    /// Opens the witness: a voter that stores no service data and runs no
    /// state machine (`cfg.witness` must name this member).
    pub fn new_witness(cfg: ReplicaConfig, log: L, seed: u64) -> Result<Self> {
        Self::open_witness(cfg, log, seed, false)
    }

    fn open_data(cfg: ReplicaConfig, log: L, sm: S, seed: u64, joining: bool) -> Result<Self> {
        if cfg.witness == Some(cfg.id) {
            return Err(Error::config(
                "witness",
                format!(
                    "member {} is the witness: open it with Replica::new_witness (or \
                     join_witness)",
                    cfg.id
                ),
            ));
        }
        Self::open(cfg, log, Machine::Data(sm), seed, joining)
    }

    fn open_witness(cfg: ReplicaConfig, log: L, seed: u64, joining: bool) -> Result<Self> {
        if cfg.witness != Some(cfg.id) {
            return Err(Error::config(
                "witness",
                format!(
                    "member {} is not the configured witness {:?}",
                    cfg.id, cfg.witness
                ),
            ));
        }
        let applied = log.first_index()?.saturating_sub(1);
        Self::open(cfg, log, Machine::Witness { applied }, seed, joining)
    }

    fn open(cfg: ReplicaConfig, log: L, sm: Machine<S>, seed: u64, joining: bool) -> Result<Self> {
        cfg.validate()?;
        let state = log.initial_state()?;
        let (view, applied) = Self::open_view(log, &sm, &state, joining)?;
        let (first, last) = (view.store().first_index()?, view.store().last_index()?);
        // A membership change the state machine applied may be missing from
        // the stored conf state (a crash between the state machine's write
        // and the log's): raft-rs hands out entries again from before the
        // first such change, and `apply_entries` skips what is applied.
        let replay_from =
            first_unstored_change(view.store(), &view.store().member_meta()?, first, applied)?;
        let raft_applied = replay_from.map_or(applied, |c| c - 1);
        let logger = crate::logging::raft_logger(cfg.id);
        let raw = RawNode::new(&cfg.raft_config(raft_applied), view, &logger)?;
        let roles = Roles::new(raw.raft.term, raw.raft.state, raw.raft.leader_id, seed);
        let mut sessions = ClientTable::new(cfg.session_ttl_ms, cfg.max_sessions);
        sessions.load(sm.sessions()?);
        let persisted_commit = raw.raft.raft_log.committed;
        let ha = ha::Ha::new(&cfg);
        let mut r = Replica {
            ha,
            cfg,
            raw,
            sm,
            sessions,
            now_ms: 0,
            ticks: 0,
            pending: Pending::default(),
            roles,
            votes: Votes::default(),
            planned: Planned::default(),
            writes: Writes::new(
                persisted_commit,
                (state.hard_state.term, state.hard_state.vote),
            ),
            snapshot_source: SnapshotSource::default(),
            out: Ready::default(),
            written: WrittenBytes::default(),
            last_heard: BTreeMap::new(),
            meta: Meta::default(),
            directory: Vec::new(),
            confirm: confirm::Confirmations::default(),
            disks: alarm::Disks::default(),
            last_report: None,
        };
        r.written.set_log_bytes(r.raw.store().store().size_bytes());
        r.load_meta()?;
        r.confirm = confirm::Confirmations::new(r.meta.conf_index);
        r.directory = r.meta.members.iter().map(membership::from_record).collect();
        r.ha.witness = r.witness_id();
        r.raw.mut_store().header_only_to = r.ha.witness;
        if r.raw.raft.term > 0 {
            r.votes.hold_after_restart(r.cfg.election_tick as u64);
        }
        r.after_input();
        info!(member = r.cfg.id, applied, first, last, "replica opened");
        Ok(r)
    }

    /// The log view a replica starts on, once the stores are checked to
    /// agree: (the view, the applied index raft-rs starts from before any
    /// replay).
    fn open_view(
        log: L,
        sm: &Machine<S>,
        state: &raft::RaftState,
        joining: bool,
    ) -> Result<(LogView<L>, u64)> {
        if !state.initialized() && !joining {
            return Err(Error::config(
                "voters",
                "the log store holds no configuration: bootstrap the member first",
            ));
        }
        let first = log.first_index()?;
        let last = log.last_index()?;
        let sm_applied = sm.applied_index();
        if sm_applied + 1 < first {
            return Err(Error::storage(
                "state machine",
                format!(
                    "the state machine is at index {sm_applied} but the log was compacted up \
                     to {}: the state machine lost synced data",
                    first - 1
                ),
            ));
        }
        // raft-rs requires applied <= min(commit, last persisted index).
        // The state machine can be ahead of the local log only after a
        // snapshot install whose log write was lost in a crash: raft then
        // re-sends those entries and the replica skips what it has applied.
        let applied = sm_applied.min(last);
        let mut view = LogView::new(log);
        // The witness has no state to send: raft-rs must never get a
        // snapshot from it (and panics on every error but this one).
        view.snapshots_unavailable = sm.is_witness();
        view.applied = applied;
        view.applied_term = view.store().term(applied).map_err(|e| {
            Error::storage(
                "log",
                format!("no term for the applied index {applied}: {e}"),
            )
        })?;
        view.applied_conf = state.conf_state.clone();
        // Entries the state machine applied were committed; raft-rs requires
        // applied <= commit at start. The raised commit reaches the log with
        // the next hard state raft-rs writes.
        view.min_commit = applied;
        Ok((view, applied))
    }

    /// This member's id.
    pub fn id(&self) -> u64 {
        self.cfg.id
    }

    /// The state machine (for reads after [`Ready::reads`] completes one);
    /// `None` on the witness, which has none.
    pub fn state_machine(&self) -> Option<&S> {
        match &self.sm {
            Machine::Data(s) => Some(s),
            Machine::Witness { .. } => None,
        }
    }

    /// The term of the entry at the state machine's applied index, when
    /// this replica knows it: always, except on a member whose state machine
    /// was found ahead of its log at start (a snapshot install whose log
    /// write a crash lost), until the next entry is applied.
    pub fn applied_term(&self) -> Option<u64> {
        let view = self.raw.store();
        (view.applied == self.sm.applied_index()).then_some(view.applied_term)
    }

    /// Whether this member is the witness.
    pub fn is_witness(&self) -> bool {
        self.sm.is_witness()
    }

    /// Consumes the replica and returns its state machine (a simulated
    /// crash keeps the "disk" state this way).
    pub fn into_state_machine(self) -> Option<S> {
        match self.sm {
            Machine::Data(s) => Some(s),
            Machine::Witness { .. } => None,
        }
    }

    /// The log store.
    pub fn log_store(&self) -> &L {
        self.raw.store().store()
    }

    /// Whether this member is the leader.
    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// The leader this member knows of.
    pub fn leader(&self) -> Option<u64> {
        let l = self.raw.raft.leader_id;
        (l != 0).then_some(l)
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// Advances logical time by one tick; `now_ms` is the driver's clock,
    /// used only to stamp proposals (session expiry).
    pub fn tick(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
        self.ticks += 1;
        self.check_own_disk();
        self.step_down_after_abandoned_hand_over();
        self.break_priority();
        if !self.ha.silenced {
            self.hold_election_timer();
            self.hold_during_snapshot_install();
            self.raw.tick();
        }
        self.witness_stands_for_data();
        self.ha.witness_hand_over(&mut self.raw);
        self.drive_planned();
        self.tell_witness();
        self.report_to_leader(self.ticks.is_multiple_of(self.cfg.election_tick as u64));
        self.expire_lost_marks();
        self.drive_alarms();
        self.snapshot_for_new_learners();
        if self.ticks.is_multiple_of(self.cfg.election_tick as u64) {
            let bytes = self.raw.store().store().size_bytes();
            self.written.set_log_bytes(bytes);
        }
        self.retry_reads();
        self.check_snapshot_streams();
        self.poll_snapshot_read();
        self.writes.on_tick(self.ticks);
        self.after_input();
    }

    /// Steps a message from a peer. Invalid messages are dropped and logged.
    pub fn step(&mut self, msg: Message) {
        let refused = self.refusal(&msg);
        if let Some(why) = refused {
            warn!(
                member = self.cfg.id,
                from = msg.from,
                kind = ?msg.get_msg_type(),
                why,
                "dropped a message no correct peer sends"
            );
            return;
        }
        if msg.get_msg_type() == MessageType::MsgSnapshot && !self.snapshot_restorable(&msg) {
            return;
        }
        if self.votes.held_after_restart(self.ticks) && is_vote_request(&msg) {
            debug!(
                member = self.cfg.id,
                from = msg.from,
                "no vote yet after a restart"
            );
            return;
        }
        if msg.to != self.cfg.id {
            warn!(
                member = self.cfg.id,
                to = msg.to,
                "dropped a message for another member"
            );
            return;
        }
        if self.heartbeat_shows_lost_data(&msg) {
            return;
        }
        if self.votes.lost_data().is_some() && is_vote_request(&msg) {
            return;
        }
        self.last_heard.insert(msg.from, self.ticks);
        if msg.from == self.raw.raft.leader_id && msg.from != self.cfg.id {
            self.roles.heard_from_leader(self.now_ms);
        }
        self.note_vote_request(msg.from, msg.get_msg_type(), msg.log_term, msg.index);
        let vote_request = (msg.from, msg.get_msg_type(), self.raw.raft.msgs.len());
        if let Err(e) = self.raw.step(msg) {
            debug!(member = self.cfg.id, error = %e, "message not stepped");
        }
        self.note_data_vote_refused(vote_request);
        self.witness_stands_for_data();
        // A witness elected this way hands over as soon as the member
        // answers, not at the next tick.
        self.ha.witness_hand_over(&mut self.raw);
        self.after_input();
        self.drive_planned();
    }

    /// Why `msg` is dropped unstepped: a message no correct peer sends
    /// here (see `filter`), a transfer this member cannot take now, a
    /// sender outside the configuration, or one known to have lost its
    /// data.
    fn refusal(&self, msg: &Message) -> Option<&'static str> {
        filter::refuse(msg)
            .or_else(|| {
                // A leader transfer to this member while it persists a snapshot
                // install would campaign as above (a correct leader waits for
                // the install's answer, which waits for the write).
                // A leader never gets one from a correct peer (a transfer's
                // target has acknowledged the transferring leader's term); taking
                // it, a leader with an unpersisted entry could be elected on an
                // unsolicited grant with its log unpersisted (a raft-rs assertion).
                (msg.get_msg_type() == MessageType::MsgTimeoutNow && self.may_campaign().is_err())
                    .then_some("a leader transfer during a snapshot install, or to a leader")
            })
            .or_else(|| {
                // Only members of the configuration take part. A member left out
                // by a forced recovery (`crate::recovery`) that comes back must
                // not make the recovered member step down or vote for it.
                // A joining member has no configuration yet: it takes the
                // leader's messages, but no entry before the snapshot that
                // gives it the configuration (entries alone would build one
                // without the bootstrap voters).
                let conf = self.raw.raft.prs().conf();
                let joining = conf.voters().ids().is_empty() && conf.learners().is_empty();
                if joining {
                    (msg.get_msg_type() == MessageType::MsgAppend && !msg.entries.is_empty())
                        .then_some("entries before the snapshot a joining member needs first")
                } else {
                    (!conf.voters().contains(msg.from) && !conf.learners().contains(&msg.from))
                        .then_some("a sender that is not a member of the configuration")
                }
            })
            .or_else(|| {
                // Anything a member that lost its data sent predates the
                // loss: its acknowledgements are void (`Ha::member_lost`).
                self.ha
                    .is_lost(msg.from)
                    .then_some("a sender known to have lost its data")
            })
    }

    /// Whether the snapshot `msg` carries can be restored here: restoring
    /// is fatal when it fails, so it is checked first and refused here.
    fn snapshot_restorable(&self, msg: &Message) -> bool {
        let snap = msg.get_snapshot();
        let checked = membership::unwrap_snapshot(snap.get_data()).and_then(|(_, state)| {
            if state.is_empty() && !self.is_witness() {
                return Err(Error::storage("snapshot", "a data member needs state"));
            }
            self.sm.check_snapshot(snap.get_metadata().index, state)
        });
        if let Err(e) = checked {
            warn!(
                member = self.cfg.id,
                from = msg.from,
                index = snap.get_metadata().index,
                error = %e,
                "refused a snapshot that cannot be restored"
            );
            return false;
        }
        true
    }

    /// The replication mode this member runs (meaningful on the leader).
    pub fn mode(&self) -> Mode {
        self.ha.mode()
    }

    /// The active role: leader inside the fenced lease, and, during
    /// maintenance, the member allowed to stand (as the leader knows once
    /// it has applied what was committed before its term).
    fn active_now(&self) -> bool {
        self.ha.is_active(&self.raw, self.ticks) && self.applied_own_term() && !self.suppressed()
    }

    /// Whether the state this member applied reaches into its current
    /// term: on a leader, every entry committed before the term is applied,
    /// so its maintenance view is the cluster's. (A follower may learn a
    /// commit index a heartbeat late, so a new leader can hold entries it
    /// has not applied yet: a maintenance off, say.)
    fn applied_own_term(&self) -> bool {
        let log = &self.raw.raft.raft_log;
        log.term(log.applied)
            .is_ok_and(|term| term == self.raw.raft.term)
    }

    /// Whether this member holds the active role now.
    pub fn is_active(&self) -> bool {
        self.active_now()
    }

    /// While this member is the active: its fencing token, the term it
    /// leads in (see [`crate::fencing`]). Strictly greater for every later
    /// active, and held by no other active.
    pub fn fencing_token(&self) -> Option<u64> {
        self.active_now().then_some(self.raw.raft.term)
    }

    /// Where a client should go instead: the leader, or the member a
    /// witness leader is handing over to.
    fn active_hint(&self) -> Option<u64> {
        if self.is_witness() && self.is_leader() {
            return self.raw.raft.lead_transferee;
        }
        self.leader().filter(|l| *l != self.cfg.id)
    }

    /// Records the entries written, for the passive's lag in bytes.
    fn record_written(&mut self, entries: &[Entry]) {
        let passive_matched = self
            .ha
            .passive(&self.raw)
            .and_then(|p| self.raw.raft.prs().get(p))
            .map(|p| p.matched)
            .unwrap_or(0);
        self.written.record(entries, passive_matched);
    }

    /// Reports that a message to `to` could not be delivered.
    pub fn report_unreachable(&mut self, to: u64) {
        self.raw.report_unreachable(to);
    }

    /// Reports that `to` can be reached again (a transport reconnected to
    /// it). A leader sends its heartbeats at once: the answer tells it how
    /// far behind `to` is, and the entries or the snapshot `to` lacks
    /// follow without waiting for the next heartbeat tick (up to
    /// `heartbeat_tick` ticks: 100 ms with the defaults).
    pub fn report_reachable(&mut self, to: u64) {
        if self.is_leader() && self.raw.raft.prs().get(to).is_some() {
            self.raw.ping();
        }
    }

    /// Whether [`Replica::ready`] has work.
    pub fn has_ready(&self) -> bool {
        !self.out.is_empty()
            || self.meta.is_dirty()
            || self.raw.has_ready()
            || self.reads_releasable()
            || self.writes.flush_ready()
            || self.snapshot_work()
    }

    /// The voters of the configuration raft-rs runs now, sorted.
    pub(crate) fn voters(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.raw.raft.prs().conf().voters().ids().iter().collect();
        v.sort_unstable();
        v
    }

    /// Switches deliberate breaks on (the simulation's checker proofs).
    #[cfg(feature = "sim")]
    pub(crate) fn set_breaks(&mut self, breaks: breaks::Breaks) {
        self.ha.breaks = breaks;
        if self.raw.raft.state == raft::StateRole::Leader {
            self.ha.apply_policy(&mut self.raw);
        }
    }

    /// The stored session of `client`, if open.
    pub fn session(&self, client: u64) -> Option<Session> {
        self.sessions.session(client)
    }

    /// Runs after every input: keeps the randomized election timeout drawn
    /// from the replica's own seeded generator (raft-rs draws from a
    /// thread-local one, which would make simulations irreproducible), and
    /// reacts to role changes.
    fn after_input(&mut self) {
        let (lo, hi) = self.election_range();
        self.roles.draw_timeout(&mut self.raw.raft, lo, hi);
        let r = &self.raw.raft;
        let (term, role, leader) = (r.term, r.state, r.leader_id);
        let moved = self.roles.compare(term, role);
        if moved.stepped_down {
            self.on_step_down(leader);
        }
        if moved.role_changed {
            info!(member = self.cfg.id, term, role = ?role, "role changed");
            self.out.events.push(Event::RoleChanged {
                role: role.into(),
                term,
            });
        }
        if moved.became_leader {
            let sync = self.take_switchover_election();
            self.ha.on_become_leader(&mut self.raw, sync);
            self.out.events.push(Event::ModeChanged {
                mode: self.ha.mode(),
            });
        }
        self.release_confirmed_changes();
        if let Some(mode) = self.ha.update_mode(&mut self.raw, self.ticks) {
            info!(member = self.cfg.id, mode = ?mode, "replication mode changed");
            self.out.events.push(Event::ModeChanged { mode });
        }
        self.ha.maybe_probe(&mut self.raw, self.ticks);
        let active = self.active_now();
        if let Some((active, took)) = self.roles.record_active(active, self.now_ms) {
            if let Some(took_ms) = took {
                info!(member = self.cfg.id, took_ms, "took over the active role");
            }
            info!(member = self.cfg.id, active, "active role changed");
            self.out.events.push(Event::ActiveChanged { active });
        }
        if self.roles.record(term, role, leader, self.ticks) {
            self.out.events.push(Event::LeaderChanged {
                leader: (leader != 0).then_some(leader),
                term,
            });
        }
    }

    /// The range raft draws election timeouts from. A data member whose
    /// disk is below its reserve stands after the others
    /// (`defers_for_disk`), so a data member with room wins first when
    /// both can.
    fn election_range(&self) -> (usize, usize) {
        let (lo, hi) = (self.cfg.min_election_tick, self.cfg.max_election_tick);
        if self.defers_for_disk() {
            (hi, 2 * hi - lo)
        } else {
            (lo, hi)
        }
    }

    /// This member led and leads no more: what it had in flight is refused
    /// with a hint of the new leader (`leader`, 0: none known).
    fn on_step_down(&mut self, leader: u64) {
        self.fail_pending(leader);
        self.disks.reports.clear();
        for mut c in self.confirm.on_step_down() {
            // Applied, not confirmed: the caller asks the next leader,
            // which answers once every voter holds it.
            c.result = Err(Error::NotLeader {
                leader_hint: (leader != 0).then_some(leader),
            });
            self.out.completions.push(c);
        }
        self.ha.on_step_down();
        self.finish_switchover(leader);
    }

    /// Takes the work produced since the last call. Errors are fatal for
    /// this member (its state machine or log could not be updated).
    pub fn ready(&mut self) -> Result<Ready> {
        // First: a finished read asks raft to send, and that goes out now.
        self.drive_snapshot_reads()?;
        let mut out = std::mem::take(&mut self.out);
        if self.raw.has_ready() {
            self.handle_raft_ready(&mut out)?;
        }
        self.release_reads(&mut out);
        self.maybe_compact(&mut out)?;
        if let Some(w) = self.writes.flush(out.write.is_some(), self.ticks) {
            out.write = Some(w);
        }
        out.events.append(&mut self.out.events);
        out.completions.append(&mut self.out.completions);
        out.reads.append(&mut self.out.reads);
        out.messages.append(&mut self.out.messages);
        out.notices.append(&mut self.out.notices);
        out.switchovers.append(&mut self.out.switchovers);
        out.snapshots.append(&mut self.out.snapshots);
        if let Some(meta) = self.meta.take_dirty() {
            // Persisted with the next write (atomically with it), or alone.
            match &mut out.write {
                Some(w) => w.member_meta = Some(meta),
                None => {
                    out.write = Some(LogWrite {
                        member_meta: Some(meta),
                        ..Default::default()
                    })
                }
            }
        }
        Ok(out)
    }

    fn handle_raft_ready(&mut self, out: &mut Ready) -> Result<()> {
        let mut rd = self.raw.ready();
        let number = rd.number();
        self.writes.on_ready(number);
        let mut messages = rd.take_messages();
        if messages
            .iter()
            .any(|m| m.get_msg_type() == MessageType::MsgTimeoutNow)
        {
            // Handing over: the lease ends before the transferee can stand,
            // for the rest of this term.
            self.ha.end_lease(self.raw.raft.term);
        }
        let failed_snapshots = self.fill_snapshots(&mut messages, &mut out.events)?;
        out.messages.extend(messages);

        let mut write = LogWrite {
            number,
            ..Default::default()
        };
        if !rd.snapshot().is_empty() {
            let meta = self.install_snapshot(rd.snapshot(), out)?;
            write.conf_state = Some(meta.get_conf_state().clone());
            write.snapshot = Some(meta);
        }
        write.entries = rd.take_entries();
        self.meta.tail.appended(&write.entries);
        write.hard_state = rd.hs().cloned();
        self.writes.defer_commit_only(&mut write, self.ticks);
        let hard_state_commit = write.hard_state.as_ref().map(|h| h.commit);
        let committed = rd.take_committed_entries();
        let persisted_messages = rd.take_persisted_messages();
        self.on_read_states(rd.take_read_states());
        let conf_changed = self.apply_entries(committed, out)?;
        if let Some(cs) = conf_changed {
            write.conf_state = Some(cs);
        }

        let needs_write = !write.is_empty();
        if needs_write {
            self.stage_write(&write);
        }
        self.raw.advance_append_async(rd);
        self.advance_raft_applied();
        if write.snapshot.is_some() {
            // raft-rs wipes commit groups on a snapshot restore.
            self.ha.apply_policy(&mut self.raw);
        }
        for peer in failed_snapshots {
            self.raw.report_snapshot(peer, SnapshotStatus::Failure);
        }
        if !needs_write && self.writes.idle() {
            self.raw.on_persist_ready(number);
            out.messages.extend(persisted_messages);
        } else {
            // A ready without a write still waits behind earlier writes.
            let held = Held {
                number,
                needs_write,
                messages: persisted_messages,
                hard_state_commit,
                conf_index: write.conf_state.is_some().then_some(self.meta.conf_index),
            };
            self.writes.hold(held, self.ticks);
            if needs_write {
                out.write = Some(write);
            }
        }
        self.after_input();
        Ok(())
    }

    /// raft's ReadIndex answers: lease probes renew the lease, client reads
    /// wait for their index to be applied.
    fn on_read_states(&mut self, states: Vec<raft::ReadState>) {
        for rs in states {
            if self.ha.on_read_state(&rs.request_ctx) {
                continue;
            }
            let Ok(bytes) = <[u8; 8]>::try_from(rs.request_ctx.as_slice()) else {
                continue;
            };
            let token = u64::from_le_bytes(bytes);
            self.pending.read_answered(token, rs.index);
        }
    }

    /// A write is handed out: counted for compaction and the passive's lag,
    /// and overlaid on the log view (raft-rs reads its own unpersisted
    /// entries from it).
    fn stage_write(&mut self, write: &LogWrite) {
        self.writes.on_written(write.entry_bytes() as u64);
        self.record_written(&write.entries);
        self.raw.mut_store().push(write);
    }

    /// Reports that every write up to `number` is durable. Releases the
    /// messages that waited for it (in the next [`Replica::ready`]).
    pub fn on_persisted(&mut self, number: u64) {
        let store = self.raw.store();
        let released = self
            .writes
            .release(number, |n| store.has_pending_after(n), self.ticks);
        for i in released.conf_indexes {
            self.confirm.on_persisted(i);
        }
        self.out.messages.extend(released.messages);
        if released.number > 0 {
            self.raw.mut_store().persisted(released.number);
            self.raw.on_persist_ready(released.number);
            self.advance_raft_applied();
            self.report_to_leader(false);
            self.after_input();
        }
    }

    /// Tells raft-rs how far the state machine has applied, within what
    /// raft-rs allows (applied <= min(commit, persisted); after a snapshot
    /// install that holds only once the snapshot's write is persisted).
    fn advance_raft_applied(&mut self) {
        let applied = self.raw.store().applied;
        let log = &self.raw.raft.raft_log;
        if applied > log.applied && applied <= log.committed.min(log.persisted) {
            self.raw.advance_apply_to(applied);
        }
    }
}

/// The first membership change in the log above what the stored conf state
/// holds (`meta.conf_index`) and at most `applied`: the state machine has
/// applied it, but the conf state written with it may have been lost.
fn first_unstored_change<L: LogStore>(
    log: &L,
    meta: &MemberMeta,
    first: u64,
    applied: u64,
) -> Result<Option<u64>> {
    let from = (meta.conf_index + 1).max(first);
    if from > applied {
        return Ok(None);
    }
    let entries = log.entries(from, applied + 1, None).map_err(|e| {
        Error::storage(
            "log",
            format!("cannot read entries {from}..={applied}: {e}"),
        )
    })?;
    Ok(entries
        .iter()
        .find(|e| e.get_entry_type() != EntryType::EntryNormal)
        .map(|e| e.index))
}
