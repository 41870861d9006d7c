//! A deterministic test cluster: members in one thread, driven by one
//! seeded random number generator, with a simulated clock, network and
//! disks.
//!
//! The replicas are the very [`Replica`] the threaded node drives; only the
//! I/O is simulated:
//! - time is a counter in microseconds; each member ticks every `tick_us`
//!   (with its own phase);
//! - the network delays every message by a random time (which reorders
//!   them), and can drop, duplicate, partition (one-way or both ways);
//! - each disk completes one write at a time after a random latency and
//!   merges the writes queued behind it into the next one (group commit);
//!   a crash loses every queued write, and the write in progress either
//!   reached the disk whole or not at all; a stalled disk completes nothing;
//! - the state machine ([`MemKv`]) loses what was not synced on a crash.
//!
//! Members can be replaced while it runs: [`Cluster::lose`] crashes one for
//! good, [`Cluster::add_member`] starts a blank member that joins through
//! the bootstrap handshake ([`Decision::Join`]), and
//! [`Cluster::change_membership`] proposes a change on a member. The checks
//! follow the configuration the members applied ([`Cluster::configuration`]),
//! not the initial voters.
//!
//! The same seed gives the same run: [`Cluster::trace`] records every
//! event, and a test can run a seed twice and compare. Checks run all the
//! time and are collected in [`Cluster::violations`]:
//! - when a write is acknowledged, its entry is on a majority of the
//!   members' durable logs (sync before acknowledgement);
//! - no state machine applies an entry twice or out of order.
//!
//! ```
//! use aoc_core::sim::{Cluster, SimOptions};
//! use aoc_core::state::KvCommand;
//!
//! let mut c = Cluster::new(SimOptions::new(7));
//! let leader = c.wait_for_leader(10_000_000).expect("a leader within 10 s");
//! let t = c.propose(leader, KvCommand::put("k", "v").encode(), None);
//! assert!(c.run_until(5_000_000, |c| c.outcome(t).is_some()));
//! assert!(c.violations().is_empty());
//! ```

mod audit;
mod breaks;
pub mod check;
mod operator;
mod replace;
mod run;
mod schedule;
mod swarm;
mod workload;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use raft::eraftpb::Message;

use crate::proto::SnapshotChunk;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::bootstrap::{Bootstrap, Decision};
use crate::proto::{Notice, Notice_oneof_body};
use crate::state::{KvStateMachine, MemKv, StateMachine};
use crate::storage::{LogStore, LogWrite, MemLogStore};
use crate::transport::{split_snapshot, Reassembler};
use crate::{
    Error, Event, MemberRole, MembershipChange, ProposalResult, Ready, Replica, ReplicaConfig,
    Result,
};
use audit::{AuditKv, Violations};
pub use breaks::Break;
use check::{Property, WitnessLead};
pub use replace::ReplaceReport;
pub use run::{run_seed, RunOptions, RunReport};
pub use workload::WorkloadStats;

/// Key-value pairs in key order.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Network fault rates and delays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetFaults {
    /// Per mille of messages dropped.
    pub drop_per_mille: u32,
    /// Per mille of messages delivered twice.
    pub duplicate_per_mille: u32,
    /// Delivery delay range in microseconds.
    pub min_delay_us: u64,
    /// See `min_delay_us`.
    pub max_delay_us: u64,
}

impl Default for NetFaults {
    fn default() -> Self {
        NetFaults {
            drop_per_mille: 0,
            duplicate_per_mille: 0,
            min_delay_us: 50,
            max_delay_us: 500,
        }
    }
}

/// Options of a simulated cluster.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// The seed: the same seed gives the same run.
    pub seed: u64,
    /// The initial members (all voters); more can join later
    /// ([`Cluster::add_member`]).
    pub voters: Vec<u64>,
    /// The initial voter that is the witness, if any (it runs no state
    /// machine; election ranges follow [`ReplicaConfig::ha`]).
    pub witness: Option<u64>,
    /// Length of a tick in microseconds.
    pub tick_us: u64,
    /// Replica configuration template (the id is set per member).
    pub replica: ReplicaConfig,
    /// Network faults.
    pub net: NetFaults,
    /// Disk write latency range in microseconds.
    pub min_disk_us: u64,
    /// See `min_disk_us`.
    pub max_disk_us: u64,
    /// Snapshot messages travel in chunks of this many bytes.
    pub snapshot_chunk_bytes: usize,
    /// Fault switch for checking the checks: every disk reports a write
    /// persisted as soon as it is queued (it is readable at once, like a
    /// write sitting in a volatile cache) and makes it durable only after
    /// the latency. A correct sync-before-acknowledgement check must report
    /// violations.
    pub lying_disk: bool,
    /// Deliberate protocol breaks (see [`Break`]); empty for a correct
    /// build.
    pub breaks: BTreeSet<Break>,
    /// Each member's tick is `tick_us` plus or minus up to this many per
    /// mille (drawn per member from the seed): clocks that run at slightly
    /// different rates. Keep it within the fence's margin (the lease is
    /// `election_tick - heartbeat_tick` ticks of the leader's clock, a
    /// follower's promise `election_tick` ticks of its own: 25% with the
    /// defaults).
    pub tick_skew_per_mille: u64,
}

impl SimOptions {
    /// An HA cluster: data members 1 and 2, witness 3, HA timing.
    pub fn ha(seed: u64) -> Self {
        SimOptions {
            witness: Some(3),
            ..SimOptions::new(seed)
        }
    }

    /// Three voters (1, 2, 3), 100 ms ticks, a healthy network and disks.
    pub fn new(seed: u64) -> Self {
        SimOptions {
            seed,
            voters: vec![1, 2, 3],
            witness: None,
            tick_us: 100_000,
            replica: ReplicaConfig::default(),
            net: NetFaults::default(),
            min_disk_us: 80,
            max_disk_us: 300,
            lying_disk: false,
            snapshot_chunk_bytes: 1024,
            breaks: BTreeSet::new(),
            tick_skew_per_mille: 0,
        }
    }
}

/// A member's durable state at one moment (see [`Cluster::disk_image`]).
#[derive(Debug, Clone)]
pub struct DiskImage {
    log: MemLogStore,
    state: Option<MemKv>,
}

/// What became of a request made through the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A proposal's outcome, with the index of its entry (0 if refused).
    Proposal {
        /// The entry's index.
        index: u64,
        /// The response.
        result: ProposalResult,
    },
    /// A linearizable read of one key.
    Read(Result<Option<Vec<u8>>>),
    /// A switchover: the write pause in ticks, or why there was none.
    Switchover(Result<u64>),
}

/// An acknowledged write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acked {
    /// The request token.
    pub token: u64,
    /// The member that acknowledged it.
    pub member: u64,
    /// The entry's index.
    pub index: u64,
    /// Simulated time of the acknowledgement.
    pub at_us: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum EventKind {
    Tick {
        member: u64,
        incarnation: u64,
    },
    Deliver {
        to: u64,
        msg: Vec<u8>,
    },
    DeliverChunk {
        to: u64,
        chunk: Vec<u8>,
    },
    DeliverNotice {
        to: u64,
        notice: Vec<u8>,
    },
    DiskDone {
        member: u64,
        incarnation: u64,
    },
    /// The sender learns how its snapshot stream went, as the TCP
    /// transport reports it: delivered when every chunk went out, failed
    /// when one was lost (the connection broke).
    SnapshotOutcome {
        from: u64,
        incarnation: u64,
        to: u64,
        delivered: bool,
    },
}

pub(crate) struct Member {
    /// What the replica reads.
    log: MemLogStore,
    /// What survives a crash: the same store as `log`, except with a lying
    /// disk.
    durable: MemLogStore,
    replica: Option<Replica<MemLogStore, AuditKv>>,
    /// The state machine while the member is down.
    parked: Option<MemKv>,
    incarnation: u64,
    /// Writes waiting for the disk.
    queue: VecDeque<LogWrite>,
    /// The write the disk is doing.
    in_progress: Option<LogWrite>,
    disk_stalled: bool,
    /// Writes and syncs fail (ENOSPC), reads work: the member fails at
    /// its next write and does not start again until there is room.
    disk_full: bool,
    /// Free space below the reserve: the member reports it (the NOSPACE
    /// alarm) from its start on.
    disk_low: bool,
    /// Pending reads: token -> key.
    reads: BTreeMap<u64, Vec<u8>>,
    /// Snapshot streams being received.
    chunks: Reassembler,
    /// The bootstrap handshake, while the member's store is blank.
    blank: Option<Bootstrap>,
    /// This member's tick length (see `SimOptions::tick_skew_per_mille`).
    tick_us: u64,
    /// The durable log this member had when it was last wiped, and the
    /// members that have since heard it probe as blank: until a member
    /// hears that, the acknowledgements it holds from before the wipe are
    /// all it can know (see `durable_at_ack.rs`).
    wiped: Option<(MemLogStore, BTreeSet<u64>)>,
    /// Whether it is a witness (runs no state machine).
    witness: bool,
    /// The witness its configuration names (`ReplicaConfig::witness`).
    cfg_witness: Option<u64>,
    /// The voters its configuration lists: whom its bootstrap handshake
    /// asks while its store is blank.
    configured: Vec<u64>,
    /// Added at runtime: a blank store joins the running cluster
    /// ([`Decision::Join`]) instead of bootstrapping.
    joiner: bool,
    /// Lost for good ([`Cluster::lose`]): never restarted.
    lost: bool,
}

impl Member {
    /// A member with a blank store.
    fn blank_store(
        witness: bool,
        cfg_witness: Option<u64>,
        configured: Vec<u64>,
        tick_us: u64,
        lying_disk: bool,
    ) -> Self {
        let log = MemLogStore::new();
        Member {
            durable: if lying_disk {
                log.deep_clone()
            } else {
                log.clone()
            },
            log,
            replica: None,
            parked: (!witness).then(MemKv::new),
            incarnation: 0,
            queue: VecDeque::new(),
            in_progress: None,
            disk_stalled: false,
            disk_full: false,
            disk_low: false,
            reads: BTreeMap::new(),
            chunks: Reassembler::new(u64::MAX),
            blank: None,
            tick_us,
            wiped: None,
            witness,
            cfg_witness,
            configured,
            joiner: false,
            lost: false,
        }
    }
}

/// A configuration the members applied: the voters and learners, from the
/// log index of the change that set it (see [`Cluster::configuration`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Configuration {
    /// The index of the change (or of the snapshot that carried it, if no
    /// member applied the change itself); 0 for the initial one.
    pub index: u64,
    /// The voters, sorted.
    pub voters: Vec<u64>,
    /// The learners, sorted.
    pub learners: Vec<u64>,
}

/// The deterministic cluster (see the module docs).
pub struct Cluster {
    opts: SimOptions,
    rng: SmallRng,
    now_us: u64,
    seq: u64,
    events: BinaryHeap<Reverse<(u64, u64, EventKind)>>,
    members: BTreeMap<u64, Member>,
    /// Links that drop everything: (from, to).
    cut: BTreeSet<(u64, u64)>,
    /// Cut every snapshot stream in the middle while set.
    drop_snapshots: bool,
    /// Per sender and receiver, when the last chunk of a stream arrives:
    /// chunks of one stream arrive in order, as on a TCP connection.
    stream_clock: BTreeMap<(u64, u64), u64>,
    next_token: u64,
    outcomes: BTreeMap<u64, Outcome>,
    acked: Vec<Acked>,
    trace: Vec<String>,
    violations: Violations,
    events_seen: Vec<(u64, Event)>,
    /// The members seen active at once (one report per overlap).
    overlap: Option<Vec<u64>>,
    /// The fencing tokens of the actives so far.
    tokens: check::one_active::Tokens,
    witness_lead: WitnessLead,
    /// Every configuration a member applied, by index (one entry per
    /// distinct configuration, at the lowest index seen).
    confs: Vec<Configuration>,
    /// A lost member -> the member that took its place (fault targets
    /// follow it: see `schedule.rs`).
    successors: BTreeMap<u64, u64>,
}

impl Cluster {
    /// Builds and starts a cluster.
    pub fn new(opts: SimOptions) -> Self {
        let mut c = Cluster {
            rng: SmallRng::seed_from_u64(opts.seed),
            opts,
            now_us: 0,
            seq: 0,
            events: BinaryHeap::new(),
            members: BTreeMap::new(),
            cut: BTreeSet::new(),
            drop_snapshots: false,
            stream_clock: BTreeMap::new(),
            next_token: 1,
            outcomes: BTreeMap::new(),
            acked: Vec::new(),
            trace: Vec::new(),
            violations: Arc::new(Mutex::new(Vec::new())),
            events_seen: Vec::new(),
            overlap: None,
            tokens: Default::default(),
            witness_lead: WitnessLead::default(),
            confs: Vec::new(),
            successors: BTreeMap::new(),
        };
        let mut initial = c.opts.voters.clone();
        initial.sort_unstable();
        initial.dedup();
        c.confs.push(Configuration {
            index: 0,
            voters: initial,
            learners: Vec::new(),
        });
        if c.opts.breaks.contains(&Break::LyingDisk) {
            c.opts.lying_disk = true;
        }
        if !c.opts.breaks.is_empty() {
            c.trace.push(format!("0 breaks {:?}", c.opts.breaks));
        }
        for id in c.opts.voters.clone() {
            let tick_us = c.draw_tick_us();
            // The simulation's own logic: a fresh in-memory store takes the
            // configuration.
            let m = Member::blank_store(
                c.opts.witness == Some(id),
                c.opts.witness,
                c.opts.voters.clone(),
                tick_us,
                c.opts.lying_disk,
            );
            c.members.insert(id, m);
            c.start(id);
        }
        c
    }

    /// A member's tick length (see `SimOptions::tick_skew_per_mille`).
    fn draw_tick_us(&mut self) -> u64 {
        let skew = self.opts.tick_skew_per_mille.min(500);
        let per_mille = if skew == 0 {
            1000
        } else {
            self.rng.gen_range(1000 - skew..=1000 + skew)
        };
        (self.opts.tick_us * per_mille / 1000).max(1)
    }

    /// Starts member `id`, which no configuration lists yet, with a blank
    /// store: its handshake asks the members of the current configuration,
    /// learns that they hold data without listing it, and it opens with
    /// `Replica::join` (or `join_witness`) to wait for the leader's
    /// snapshot. Add it with [`Cluster::change_membership`]. `replacing`
    /// names the lost member it takes the place of: faults aimed at that
    /// one hit this one from now on. Does nothing if `id` is taken.
    pub fn add_member(&mut self, id: u64, role: MemberRole, replacing: Option<u64>) {
        if id == 0 || self.members.contains_key(&id) {
            return;
        }
        let tick_us = self.draw_tick_us();
        let witness = role == MemberRole::Witness;
        let mut configured = self.configuration().voters.clone();
        configured.push(id);
        let cfg_witness = if witness {
            Some(id)
        } else {
            self.witness().or(self.opts.witness)
        };
        let mut m = Member::blank_store(
            witness,
            cfg_witness,
            configured,
            tick_us,
            self.opts.lying_disk,
        );
        m.joiner = true;
        self.members.insert(id, m);
        if let Some(old) = replacing {
            self.successors.insert(old, id);
        }
        self.trace
            .push(format!("{} add member {id} ({role})", self.now_us));
        self.start(id);
    }

    /// Crashes member `id` for good: it is never restarted (a dead disk);
    /// only a membership change removes it from the configuration.
    pub fn lose(&mut self, id: u64) {
        self.crash(id);
        if let Some(m) = self.members.get_mut(&id) {
            m.lost = true;
            self.trace.push(format!("{} lost {id}", self.now_us));
        }
    }

    /// Whether member `id` was lost for good.
    pub fn is_lost(&self, id: u64) -> bool {
        self.members.get(&id).is_some_and(|m| m.lost)
    }

    /// The member that now stands for `id`: `id` itself, or the member that
    /// replaced it (following replacements of replacements).
    pub fn current_id(&self, id: u64) -> u64 {
        let mut id = id;
        // Each step goes to a member added later: the chain ends.
        while let Some(next) = self.successors.get(&id) {
            id = *next;
        }
        id
    }

    /// Every member the simulation has, lost ones included, by id.
    pub fn member_ids(&self) -> Vec<u64> {
        self.members.keys().copied().collect()
    }

    /// Whether member `id` is a witness.
    pub fn is_witness(&self, id: u64) -> bool {
        self.members.get(&id).is_some_and(|m| m.witness)
    }

    /// The newest configuration a member applied: the one the cluster
    /// runs (a change is applied only once committed).
    pub fn configuration(&self) -> &Configuration {
        static NONE: Configuration = Configuration {
            index: 0,
            voters: Vec::new(),
            learners: Vec::new(),
        };
        // `new` puts the initial configuration first; the list never
        // shrinks.
        self.confs.last().unwrap_or(&NONE)
    }

    /// The data members among the voters of [`Cluster::configuration`].
    pub fn data_members(&self) -> Vec<u64> {
        self.configuration()
            .voters
            .iter()
            .copied()
            .filter(|v| !self.is_witness(*v))
            .collect()
    }

    /// The witness among the voters of [`Cluster::configuration`].
    pub fn witness(&self) -> Option<u64> {
        self.configuration()
            .voters
            .iter()
            .copied()
            .find(|v| self.is_witness(*v))
    }

    /// The configurations under which entry `index` can have been
    /// committed: the one set by the last change before it, and the one
    /// before that (a leader commits with the configuration it applied,
    /// and it may not yet have applied the last change before the entry;
    /// it cannot lag by two, since raft-rs proposes a change only once the
    /// previous one is applied and campaigns only once every committed
    /// change is).
    pub(crate) fn commit_configurations(&self, index: u64) -> &[Configuration] {
        let end = self
            .confs
            .partition_point(|c| c.index < index)
            .max(1)
            .min(self.confs.len());
        &self.confs[end.saturating_sub(2)..end]
    }

    /// Records the configuration in member `id`'s write, if it carries
    /// one: the replica applied it (a change, or a snapshot) and runs it
    /// from now on, before the write is persisted (raft-rs counts a quorum
    /// with the configuration it applied).
    fn record_configuration(&mut self, id: u64, w: &LogWrite) {
        let (Some(cs), Some(meta)) = (&w.conf_state, &w.member_meta) else {
            return;
        };
        let mut voters = cs.voters.clone();
        voters.sort_unstable();
        let mut learners = cs.learners.clone();
        learners.sort_unstable();
        if voters.is_empty() {
            return;
        }
        let conf = Configuration {
            index: meta.conf_index,
            voters,
            learners,
        };
        if let Some(pos) = self
            .confs
            .iter()
            .position(|c| c.voters == conf.voters && c.learners == conf.learners)
        {
            if self.confs[pos].index <= conf.index {
                return;
            }
            self.confs.remove(pos);
        }
        let at = self.confs.partition_point(|c| c.index <= conf.index);
        self.trace.push(format!(
            "{} configuration i{} voters {:?} learners {:?} (from {id})",
            self.now_us, conf.index, conf.voters, conf.learners
        ));
        self.confs.insert(at, conf);
    }

    /// The seed this cluster runs.
    pub fn seed(&self) -> u64 {
        self.opts.seed
    }

    /// Simulated time in microseconds.
    pub fn now_us(&self) -> u64 {
        self.now_us
    }

    fn schedule(&mut self, at_us: u64, kind: EventKind) {
        self.seq += 1;
        self.events.push(Reverse((at_us, self.seq, kind)));
    }

    fn start(&mut self, id: u64) {
        let phase = self.rng.gen_range(0..self.opts.tick_us);
        let Some(m) = self.members.get_mut(&id) else {
            return;
        };
        if m.replica.is_some() || m.blank.is_some() || m.lost {
            return;
        }
        m.incarnation += 1;
        let incarnation = m.incarnation;
        let blank = !m.log.initial_state().is_ok_and(|s| s.initialized());
        if blank {
            m.blank = Some(Bootstrap::new(id, &m.configured, 1));
            self.trace.push(format!("{} start {id} blank", self.now_us));
        } else {
            self.open(id, false);
        }
        self.schedule(
            self.now_us + phase,
            EventKind::Tick {
                member: id,
                incarnation,
            },
        );
    }

    /// Opens member `id`'s replica on its store: an initialized one, or
    /// (`join`) a blank one that waits for the leader's snapshot.
    fn open(&mut self, id: u64, join: bool) {
        let seed = self.rng.gen::<u64>();
        let violations = self.violations.clone();
        let Some(m) = self.members.get_mut(&id) else {
            return;
        };
        let mut cfg = self.opts.replica.clone();
        cfg.id = id;
        if let Some(w) = m.cfg_witness {
            let ha = ReplicaConfig::ha(id, w);
            cfg.witness = ha.witness;
            cfg.min_election_tick = ha.min_election_tick;
            cfg.max_election_tick = ha.max_election_tick;
        }
        let opened = match (m.witness, join) {
            (true, false) => Replica::new_witness(cfg, m.log.clone(), seed),
            (true, true) => Replica::join_witness(cfg, m.log.clone(), seed),
            (false, _) => {
                let Some(sm) = m.parked.take() else {
                    return;
                };
                let sm = AuditKv::new(sm, id, violations);
                if join {
                    Replica::join(cfg, m.log.clone(), sm, seed)
                } else {
                    Replica::new(cfg, m.log.clone(), sm, seed)
                }
            }
        };
        let breaks = crate::replica::Breaks {
            ack_before_sync: self.opts.breaks.contains(&Break::AckBeforeSync),
            witness_stays_leader: self.opts.breaks.contains(&Break::WitnessStaysLeader),
            skip_fence: self.opts.breaks.contains(&Break::SkipFence),
            low_priority_witness: self.opts.breaks.contains(&Break::WitnessLowPriority),
            maintenance_applied_only: self.opts.breaks.contains(&Break::MaintenanceAppliedOnly),
        };
        match opened {
            Ok(mut r) => {
                r.set_breaks(breaks);
                if m.disk_low {
                    r.report_disk(crate::DiskReport {
                        free_bytes: 16 << 20,
                        reserve_bytes: 64 << 20,
                    });
                }
                m.replica = Some(r);
            }
            Err(e) => {
                self.violations.lock().push(
                    Property::MemberFailed.report(format!("member {id} failed to start: {e}")),
                );
                return;
            }
        }
        self.trace.push(format!("{} start {id}", self.now_us));
    }

    /// A blank member bootstraps once its handshake says so.
    fn check_blank(&mut self, id: u64) {
        let Some(m) = self.members.get_mut(&id) else {
            return;
        };
        let Some(b) = m.blank.as_ref() else { return };
        if m.joiner && matches!(b.decision(), Decision::Join { .. }) {
            m.blank = None;
            self.trace.push(format!("{} join {id}", self.now_us));
            self.open(id, true);
            return;
        }
        // The wiped-member-votes break: bootstrap a fresh log at once.
        if b.decision() != Decision::Bootstrap
            && !self.opts.breaks.contains(&Break::WipedMemberVotes)
        {
            return;
        }
        let voters = b.voters().to_vec();
        m.blank = None;
        // In-memory writes cannot fail.
        let _ = Replica::<MemLogStore, AuditKv>::bootstrap(&m.log, &voters);
        if self.opts.lying_disk {
            let _ = Replica::<MemLogStore, AuditKv>::bootstrap(&m.durable, &voters);
        }
        self.trace.push(format!("{} bootstrap {id}", self.now_us));
        self.open(id, false);
    }

    /// A copy of member `id`'s durable state (log and state machine), to
    /// roll its disk back later with [`Cluster::restore_image`] (a disk
    /// restored from an old backup). The member must be down.
    pub fn disk_image(&self, id: u64) -> Option<DiskImage> {
        let m = self.members.get(&id)?;
        if m.replica.is_some() {
            return None;
        }
        Some(DiskImage {
            log: m.durable.deep_clone(),
            state: m.parked.clone(),
        })
    }

    /// Rolls member `id`'s disk back to `image` (the member must be down).
    pub fn restore_image(&mut self, id: u64, image: &DiskImage) {
        let lying = self.opts.lying_disk;
        if let Some(m) = self.members.get_mut(&id) {
            if m.replica.is_some() {
                return;
            }
            m.durable = image.log.deep_clone();
            m.log = if lying {
                image.log.deep_clone()
            } else {
                m.durable.clone()
            };
            m.parked = image.state.clone();
            self.trace.push(format!("{} rollback {id}", self.now_us));
        }
    }

    /// Wipes member `id`'s directory: it crashes and comes back blank.
    pub fn wipe(&mut self, id: u64) {
        self.crash(id);
        let lying = self.opts.lying_disk;
        if let Some(m) = self.members.get_mut(&id) {
            let is_witness = m.witness;
            m.blank = None;
            m.wiped = Some((m.durable.deep_clone(), BTreeSet::new()));
            m.log = MemLogStore::new();
            m.durable = if lying {
                MemLogStore::new()
            } else {
                m.log.clone()
            };
            m.parked = (!is_witness).then(MemKv::new);
        }
        self.trace.push(format!("{} wipe {id}", self.now_us));
    }

    /// Crashes member `id`: queued writes are lost, the write in progress
    /// is kept or lost at random, and the state machine loses what it had
    /// not synced.
    pub fn crash(&mut self, id: u64) {
        let keep_in_progress = self.rng.gen_bool(0.5);
        let Some(m) = self.members.get_mut(&id) else {
            return;
        };
        if m.blank.take().is_some() {
            m.incarnation += 1;
            self.trace
                .push(format!("{} crash {id} (blank)", self.now_us));
            return;
        }
        let Some(r) = m.replica.take() else {
            return;
        };
        if let Some(w) = m.in_progress.take() {
            if keep_in_progress && !m.disk_stalled && !m.disk_full {
                // In-memory writes cannot fail.
                let _ = m.durable.write(&w);
            }
        }
        m.queue.clear();
        if self.opts.lying_disk {
            m.log = m.durable.deep_clone();
        }
        if let Some(audit) = r.into_state_machine() {
            let mut sm = audit.inner;
            sm.crash();
            m.parked = Some(sm);
        }
        m.reads.clear();
        self.trace.push(format!("{} crash {id}", self.now_us));
    }

    /// Restarts a crashed member on its disk (not one lost for good, nor
    /// one whose disk is full: its supervisor's restarts fail at the first
    /// write until there is room).
    pub fn restart(&mut self, id: u64) {
        if self
            .members
            .get(&id)
            .is_some_and(|m| m.replica.is_none() && m.blank.is_none() && !m.disk_full)
        {
            self.start(id);
        }
    }

    /// Fills member `id`'s disk (writes fail: it fails at its next write
    /// and stays down), or makes room again (it starts).
    pub fn fill_disk(&mut self, id: u64, full: bool) {
        if let Some(m) = self.members.get_mut(&id) {
            m.disk_full = full;
        }
        self.trace.push(format!(
            "{} disk of {id} {}",
            self.now_us,
            if full { "full" } else { "has room again" }
        ));
        if full {
            self.kick_disk(id);
        } else {
            self.restart(id);
        }
    }

    /// Makes member `id`'s free space fall below its reserve (it raises
    /// its NOSPACE alarm), or rise above it again.
    pub fn set_disk_low(&mut self, id: u64, low: bool) {
        if let Some(m) = self.members.get_mut(&id) {
            m.disk_low = low;
        }
        self.trace
            .push(format!("{} disk of {id} low {low}", self.now_us));
        self.report_disk(id);
    }

    /// Member `id`'s driver measures its disk.
    fn report_disk(&mut self, id: u64) {
        let Some(m) = self.members.get_mut(&id) else {
            return;
        };
        let reserve_bytes = 64 << 20;
        let free_bytes = if m.disk_low { 16 << 20 } else { 1 << 30 };
        if let Some(r) = m.replica.as_mut() {
            r.report_disk(crate::DiskReport {
                free_bytes,
                reserve_bytes,
            });
        }
        self.drain(id);
    }

    /// Whether member `id` is running.
    pub fn is_up(&self, id: u64) -> bool {
        self.members
            .get(&id)
            .is_some_and(|m| m.replica.is_some() || m.blank.is_some())
    }

    /// Cuts (or restores) the link from `from` to `to` only.
    pub fn set_link(&mut self, from: u64, to: u64, up: bool) {
        if up {
            self.cut.remove(&(from, to));
        } else {
            self.cut.insert((from, to));
        }
        self.trace.push(format!(
            "{} link {from}->{to} {}",
            self.now_us,
            if up { "up" } else { "down" }
        ));
    }

    /// Cuts member `id` off from every other member, both ways.
    pub fn isolate(&mut self, id: u64) {
        for other in self.member_ids() {
            if other != id {
                self.set_link(id, other, false);
                self.set_link(other, id, false);
            }
        }
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cut.clear();
        self.trace.push(format!("{} heal", self.now_us));
    }

    /// Sets the network faults.
    pub fn set_net(&mut self, net: NetFaults) {
        self.opts.net = net;
    }

    /// Cuts every snapshot stream in the middle while `drop` is set.
    pub fn drop_snapshots(&mut self, drop: bool) {
        self.drop_snapshots = drop;
    }

    /// Stalls (or resumes) member `id`'s disk: no write completes while
    /// stalled; the network stays up.
    pub fn stall_disk(&mut self, id: u64, stalled: bool) {
        if let Some(m) = self.members.get_mut(&id) {
            m.disk_stalled = stalled;
        }
        if !stalled {
            self.kick_disk(id);
        }
    }

    /// The replica of member `id`, when it is up.
    pub fn replica(&self, id: u64) -> Option<&Replica<MemLogStore, impl KvStateMachine>> {
        self.members.get(&id).and_then(|m| m.replica.as_ref())
    }

    /// The durable log store ("disk") of member `id`.
    pub fn log_store(&self, id: u64) -> Option<&MemLogStore> {
        self.members.get(&id).map(|m| &m.durable)
    }

    /// The running leader with the highest term, if any.
    pub fn leader(&self) -> Option<u64> {
        self.members
            .values()
            .filter_map(|m| m.replica.as_ref())
            .filter(|r| r.is_leader())
            .max_by_key(|r| r.term())
            .map(|r| r.id())
    }

    /// Runs until a leader exists, at most `max_us`.
    pub fn wait_for_leader(&mut self, max_us: u64) -> Option<u64> {
        self.run_until(max_us, |c| c.leader().is_some());
        self.leader()
    }

    fn token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    /// Hands a request to member `id`'s replica under a new token; a
    /// member that is down answers `down` at once.
    fn request(
        &mut self,
        id: u64,
        down: Outcome,
        ask: impl FnOnce(&mut Replica<MemLogStore, AuditKv>, u64),
    ) -> u64 {
        let token = self.token();
        match self.members.get_mut(&id).and_then(|m| m.replica.as_mut()) {
            Some(r) => ask(r, token),
            None => {
                self.outcomes.insert(token, down);
            }
        }
        self.drain(id);
        token
    }

    fn stopped_proposal() -> Outcome {
        Outcome::Proposal {
            index: 0,
            result: Err(Error::Stopped),
        }
    }

    /// Proposes a command on member `id`; the outcome appears under the
    /// returned token.
    pub fn propose(&mut self, id: u64, command: Vec<u8>, session: Option<(u64, u64)>) -> u64 {
        self.request(id, Self::stopped_proposal(), |r, t| {
            r.propose(t, command, session)
        })
    }

    /// Opens a client session on member `id`; the outcome's response is the
    /// client id (8 bytes, little-endian).
    pub fn register_client(&mut self, id: u64) -> u64 {
        self.request(id, Self::stopped_proposal(), |r, t| r.register_client(t))
    }

    /// A linearizable read of `key` on member `id`.
    pub fn read(&mut self, id: u64, key: &[u8]) -> u64 {
        self.start_read(id, key, false)
    }

    /// A lease read of `key` on member `id`: served by the active inside
    /// its fenced lease without a round trip; elsewhere refused.
    pub fn read_lease(&mut self, id: u64, key: &[u8]) -> u64 {
        self.start_read(id, key, true)
    }

    fn start_read(&mut self, id: u64, key: &[u8], lease: bool) -> u64 {
        let token = self.token();
        match self.members.get_mut(&id) {
            Some(m) if m.replica.is_some() => {
                m.reads.insert(token, key.to_vec());
                if let Some(r) = m.replica.as_mut() {
                    if lease {
                        r.read_lease(token);
                    } else {
                        r.read(token);
                    }
                }
            }
            _ => {
                self.outcomes
                    .insert(token, Outcome::Read(Err(Error::Stopped)));
            }
        }
        self.drain(id);
        token
    }

    /// Proposes a membership change on member `id` (the leader); the
    /// outcome appears under the returned token, as a proposal's does
    /// (index 0 when refused at once: not the leader, another change in
    /// flight, a learner not caught up yet).
    pub fn change_membership(&mut self, id: u64, change: MembershipChange) -> u64 {
        self.trace
            .push(format!("{} change on {id}: {change:?}", self.now_us));
        self.request(id, Self::stopped_proposal(), |r, t| {
            r.change_membership(t, change)
        })
    }

    /// Asks member `id` for a planned switchover.
    pub fn switchover(&mut self, id: u64) -> u64 {
        self.request(id, Outcome::Switchover(Err(Error::Stopped)), |r, t| {
            r.switchover(t)
        })
    }

    /// Asks member `id` (the active) to turn maintenance mode on or off.
    pub fn set_maintenance(&mut self, id: u64, on: bool) -> u64 {
        self.request(id, Self::stopped_proposal(), |r, t| {
            r.set_maintenance(t, on)
        })
    }

    /// Turns maintenance off on member `id` alone (the local form).
    pub fn maintenance_off_local(&mut self, id: u64) {
        if let Some(r) = self.members.get_mut(&id).and_then(|m| m.replica.as_mut()) {
            r.maintenance_off_local();
        }
        self.drain(id);
    }

    /// The outcome of a request, once known.
    pub fn outcome(&self, token: u64) -> Option<&Outcome> {
        self.outcomes.get(&token)
    }

    /// Every acknowledged write, in order.
    pub fn acked(&self) -> &[Acked] {
        &self.acked
    }

    /// The run's trace (one line per event).
    pub fn trace(&self) -> &[String] {
        &self.trace
    }

    /// Events published by the replicas: (member, event).
    pub fn events(&self) -> &[(u64, Event)] {
        &self.events_seen
    }

    /// Invariant violations seen so far (empty in a correct run).
    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().clone()
    }

    /// Runs for `us` microseconds of simulated time.
    pub fn run_for(&mut self, us: u64) {
        let end = self.now_us + us;
        self.run_until(us, |c| c.now_us >= end);
        self.now_us = self.now_us.max(end);
    }

    /// Runs until `done` holds (checked after every event) or `max_us`
    /// passed; returns whether `done` held.
    pub fn run_until(&mut self, max_us: u64, mut done: impl FnMut(&Cluster) -> bool) -> bool {
        let end = self.now_us + max_us;
        loop {
            if done(self) {
                return true;
            }
            let Some(Reverse((at, _, _))) = self.events.peek() else {
                return false;
            };
            if *at > end {
                self.now_us = end;
                return done(self);
            }
            let Some(Reverse((at, _, kind))) = self.events.pop() else {
                return false;
            };
            self.now_us = at;
            self.handle(kind);
            self.check_one_active();
            self.check_witness_lead();
        }
    }

    fn handle(&mut self, kind: EventKind) {
        match kind {
            EventKind::Tick {
                member,
                incarnation,
            } => {
                let now_ms = self.now_us / 1000;
                let Some(m) = self.members.get_mut(&member) else {
                    return;
                };
                if m.incarnation != incarnation || (m.replica.is_none() && m.blank.is_none()) {
                    return;
                }
                let mut probes = Vec::new();
                if let Some(r) = m.replica.as_mut() {
                    r.tick(now_ms);
                } else if let Some(b) = m.blank.as_mut() {
                    probes = b.tick();
                }
                let next = self.now_us + m.tick_us;
                self.schedule(
                    next,
                    EventKind::Tick {
                        member,
                        incarnation,
                    },
                );
                for n in probes {
                    self.send_notice(n);
                }
                self.check_blank(member);
                self.drain(member);
            }
            EventKind::DeliverNotice { to, notice } => {
                let Ok(n) = <Notice as protobuf::Message>::parse_from_bytes(&notice) else {
                    return;
                };
                self.trace.push(format!(
                    "{} notice {}->{} {:?}",
                    self.now_us, n.from, n.to, n.body
                ));
                // Only a blank probe tells the receiver of a wipe: a notice
                // the member sent before it was wiped may arrive after.
                let probe = matches!(n.body, Some(Notice_oneof_body::blank_probe(_)));
                if let Some((_, known_by)) = self
                    .members
                    .get_mut(&n.from)
                    .filter(|m| probe && m.blank.is_some())
                    .and_then(|m| m.wiped.as_mut())
                {
                    known_by.insert(to);
                }
                let Some(m) = self.members.get_mut(&to) else {
                    return;
                };
                let mut answer = None;
                if let Some(r) = m.replica.as_mut() {
                    r.on_notice(n);
                } else if let Some(b) = m.blank.as_mut() {
                    answer = b.on_notice(n);
                }
                if let Some(a) = answer {
                    self.send_notice(a);
                }
                self.check_blank(to);
                self.drain(to);
            }
            EventKind::Deliver { to, msg } => {
                let Ok(msg) = <Message as protobuf::Message>::parse_from_bytes(&msg) else {
                    return;
                };
                let Some(r) = self.members.get_mut(&to).and_then(|m| m.replica.as_mut()) else {
                    return;
                };
                self.trace.push(format!(
                    "{} deliver {}->{} {:?} t{} i{} c{}",
                    self.now_us,
                    msg.from,
                    msg.to,
                    msg.get_msg_type(),
                    msg.term,
                    msg.index,
                    msg.commit
                ));
                r.step(msg);
                self.drain(to);
            }
            EventKind::DeliverChunk { to, chunk } => {
                let Ok(chunk) = <SnapshotChunk as protobuf::Message>::parse_from_bytes(&chunk)
                else {
                    return;
                };
                let Some(m) = self.members.get_mut(&to) else {
                    return;
                };
                if m.replica.is_none() {
                    return;
                }
                match m.chunks.push(chunk) {
                    Ok(Some(msg)) => {
                        self.trace.push(format!(
                            "{} deliver {}->{} snapshot i{}",
                            self.now_us,
                            msg.from,
                            msg.to,
                            msg.get_snapshot().get_metadata().index
                        ));
                        if let Some(r) = m.replica.as_mut() {
                            r.step(msg);
                        }
                        self.drain(to);
                    }
                    Ok(None) => {}
                    Err(e) => self
                        .trace
                        .push(format!("{} stream to {to} broken: {e}", self.now_us)),
                }
            }
            EventKind::SnapshotOutcome {
                from,
                incarnation,
                to,
                delivered,
            } => {
                let Some(m) = self.members.get_mut(&from) else {
                    return;
                };
                if m.incarnation != incarnation {
                    return;
                }
                let Some(r) = m.replica.as_mut() else {
                    return;
                };
                r.report_snapshot(to, delivered);
                self.trace.push(format!(
                    "{} snapshot {from}->{to} reported {}",
                    self.now_us,
                    if delivered { "delivered" } else { "failed" }
                ));
                self.drain(from);
            }
            EventKind::DiskDone {
                member,
                incarnation,
            } => {
                let Some(m) = self.members.get_mut(&member) else {
                    return;
                };
                if m.incarnation != incarnation {
                    return;
                }
                if m.disk_stalled {
                    // The write stays in progress until the disk resumes.
                    return;
                }
                let Some(w) = m.in_progress.take() else {
                    return;
                };
                // In-memory writes cannot fail.
                let _ = m.durable.write(&w);
                if !self.opts.lying_disk {
                    if let Some(r) = m.replica.as_mut() {
                        r.on_persisted(w.number);
                    }
                }
                self.trace
                    .push(format!("{} persisted {member} #{}", self.now_us, w.number));
                self.kick_disk(member);
                self.drain(member);
            }
        }
    }

    /// Starts the next disk write if the disk is idle: everything queued
    /// is merged into one synced write.
    fn kick_disk(&mut self, id: u64) {
        let latency = self
            .rng
            .gen_range(self.opts.min_disk_us..=self.opts.max_disk_us);
        let Some(m) = self.members.get_mut(&id) else {
            return;
        };
        if m.disk_stalled || m.replica.is_none() {
            return;
        }
        if m.disk_full && (m.in_progress.is_some() || !m.queue.is_empty()) {
            // The write fails with ENOSPC: the node stops and its process
            // exits (what aoc-node does), losing what was not synced.
            self.trace
                .push(format!("{} disk full: member {id} fails", self.now_us));
            self.crash(id);
            return;
        }
        if m.in_progress.is_some() {
            // A write resumed after a stall completes now.
            let incarnation = m.incarnation;
            self.schedule(
                self.now_us + latency,
                EventKind::DiskDone {
                    member: id,
                    incarnation,
                },
            );
            return;
        }
        let Some(mut w) = m.queue.pop_front() else {
            return;
        };
        while let Some(next) = m.queue.pop_front() {
            w.merge(next);
        }
        m.in_progress = Some(w);
        let incarnation = m.incarnation;
        self.schedule(
            self.now_us + latency,
            EventKind::DiskDone {
                member: id,
                incarnation,
            },
        );
    }

    /// Carries out member `id`'s ready work until it has none.
    fn drain(&mut self, id: u64) {
        for _ in 0..64 {
            let Some(m) = self.members.get_mut(&id) else {
                return;
            };
            let Some(r) = m.replica.as_mut() else {
                return;
            };
            if !r.has_ready() {
                return;
            }
            match r.ready() {
                Ok(rd) => self.carry_out(id, rd),
                Err(e) => {
                    self.violations
                        .lock()
                        .push(Property::MemberFailed.report(format!("member {id} failed: {e}")));
                    self.crash(id);
                    return;
                }
            }
        }
    }

    fn carry_out(&mut self, id: u64, rd: Ready) {
        let Ready {
            messages,
            write,
            compact_to,
            completions,
            reads,
            events,
            notices,
            switchovers,
            snapshots,
        } = rd;
        assert!(
            snapshots.is_empty(),
            "sim: no one asks a replica for a snapshot read"
        );
        for (token, outcome) in switchovers {
            self.trace.push(format!(
                "{} switchover {id} token {token}: {outcome:?}",
                self.now_us
            ));
            self.outcomes.insert(token, Outcome::Switchover(outcome));
        }
        for msg in messages {
            self.send(msg);
        }
        for n in notices {
            self.send_notice(n);
        }
        if let Some(w) = &write {
            self.record_configuration(id, w);
        }
        let lying_disk = self.opts.lying_disk;
        if let Some(m) = self.members.get_mut(&id) {
            if let Some(w) = write {
                if lying_disk {
                    let _ = m.log.write(&w);
                    if let Some(r) = m.replica.as_mut() {
                        r.on_persisted(w.number);
                    }
                }
                m.queue.push_back(w);
            }
            if let Some(to) = compact_to {
                if lying_disk {
                    let _ = m.log.compact(to);
                }
                // A lying disk may not hold the entries it claimed yet.
                let durable_to = if lying_disk {
                    to.min(m.durable.last_index().unwrap_or(0))
                } else {
                    to
                };
                if let Err(e) = m.durable.compact(durable_to) {
                    self.violations.lock().push(
                        Property::MemberFailed
                            .report(format!("member {id}: compaction failed: {e}")),
                    );
                }
            }
        }
        self.kick_disk(id);
        let sync_mode = self
            .members
            .get(&id)
            .and_then(|m| m.replica.as_ref())
            .is_some_and(|r| r.mode() == crate::Mode::Sync);
        for c in completions {
            if c.result.is_ok() {
                self.check_durable(id, c.index, c.token, sync_mode);
                self.acked.push(Acked {
                    token: c.token,
                    member: id,
                    index: c.index,
                    at_us: self.now_us,
                });
            }
            self.trace.push(format!(
                "{} complete {id} token {} index {} ok {}",
                self.now_us,
                c.token,
                c.index,
                c.result.is_ok()
            ));
            self.outcomes.insert(
                c.token,
                Outcome::Proposal {
                    index: c.index,
                    result: c.result,
                },
            );
        }
        for (token, result) in reads {
            let Some(m) = self.members.get_mut(&id) else {
                continue;
            };
            let key = m.reads.remove(&token).unwrap_or_default();
            let value = match (result, m.replica.as_ref()) {
                (Ok(()), Some(r)) => match r.state_machine() {
                    Some(sm) => sm.get(&key),
                    None => Err(Error::NotLeader { leader_hint: None }),
                },
                (Ok(()), None) => Err(Error::Stopped),
                (Err(e), _) => Err(e),
            };
            self.outcomes.insert(token, Outcome::Read(value));
        }
        for e in events {
            self.trace.push(format!("{} event {id} {e:?}", self.now_us));
            self.events_seen.push((id, e));
        }
    }

    /// The member holding the active role, if any.
    pub fn active(&self) -> Option<u64> {
        self.members
            .iter()
            .find(|(_, m)| m.replica.as_ref().is_some_and(|r| r.is_active()))
            .map(|(id, _)| *id)
    }

    /// The status of member `id`, when it is up.
    pub fn status(&self, id: u64) -> Option<crate::Status> {
        let m = self.members.get(&id)?;
        if let Some(b) = &m.blank {
            return Some(crate::Status::blank(id, format!("{:?}", b.decision())));
        }
        m.replica.as_ref().map(|r| r.status())
    }

    fn send(&mut self, msg: Message) {
        let (from, to) = (msg.from, msg.to);
        if self.cut.contains(&(from, to)) {
            return;
        }
        if let Some(chunks) = split_snapshot(&msg, self.opts.snapshot_chunk_bytes) {
            self.send_stream(from, to, chunks.collect());
            return;
        }
        let net = self.opts.net.clone();
        if self.rng.gen_range(0..1000) < net.drop_per_mille {
            return;
        }
        let copies = if self.rng.gen_range(0..1000) < net.duplicate_per_mille {
            2
        } else {
            1
        };
        let bytes = match protobuf::Message::write_to_bytes(&msg) {
            Ok(b) => b,
            Err(_) => return,
        };
        for _ in 0..copies {
            let delay = self.rng.gen_range(net.min_delay_us..=net.max_delay_us);
            self.schedule(
                self.now_us + delay,
                EventKind::Deliver {
                    to,
                    msg: bytes.clone(),
                },
            );
        }
    }

    /// Sends a notice through the faulty network (dropped, delayed, cut
    /// like raft messages).
    fn send_notice(&mut self, n: Notice) {
        let (from, to) = (n.from, n.to);
        if self.cut.contains(&(from, to)) {
            return;
        }
        let net = self.opts.net.clone();
        if self.rng.gen_range(0..1000) < net.drop_per_mille {
            return;
        }
        let Ok(bytes) = protobuf::Message::write_to_bytes(&n) else {
            return;
        };
        let delay = self.rng.gen_range(net.min_delay_us..=net.max_delay_us);
        self.schedule(
            self.now_us + delay,
            EventKind::DeliverNotice { to, notice: bytes },
        );
    }

    /// Sends a snapshot stream: chunks arrive in order, each can be lost;
    /// a lost chunk breaks the stream.
    fn send_stream(&mut self, from: u64, to: u64, chunks: Vec<SnapshotChunk>) {
        let net = self.opts.net.clone();
        let cut_at = (self.drop_snapshots).then_some(chunks.len() / 2);
        let mut at = self
            .now_us
            .max(self.stream_clock.get(&(from, to)).copied().unwrap_or(0));
        let mut delivered = true;
        for (i, chunk) in chunks.into_iter().enumerate() {
            at += self.rng.gen_range(net.min_delay_us..=net.max_delay_us) / 4 + 1;
            if Some(i) == cut_at || self.rng.gen_range(0..1000) < net.drop_per_mille {
                delivered = false;
                continue;
            }
            let Ok(bytes) = protobuf::Message::write_to_bytes(&chunk) else {
                continue;
            };
            self.schedule(at, EventKind::DeliverChunk { to, chunk: bytes });
        }
        self.stream_clock.insert((from, to), at);
        if let Some(m) = self.members.get(&from) {
            let incarnation = m.incarnation;
            self.schedule(
                at,
                EventKind::SnapshotOutcome {
                    from,
                    incarnation,
                    to,
                    delivered,
                },
            );
        }
    }

    /// The key-value pairs and applied index of member `id`'s state machine.
    pub fn state_of(&self, id: u64) -> Option<(u64, Pairs)> {
        let r = self.members.get(&id)?.replica.as_ref()?;
        let sm = r.state_machine()?;
        Some((sm.applied_index(), sm.scan(b"").ok()?))
    }

    /// Adds a line to the trace (the workload and the fault schedule note
    /// what they do).
    pub fn note(&mut self, line: impl std::fmt::Display) {
        self.trace.push(format!("{} {line}", self.now_us));
    }

    /// The options the cluster runs with.
    pub fn options(&self) -> &SimOptions {
        &self.opts
    }

    /// Whether member `id` is up with a blank store (waiting to join).
    pub fn is_blank(&self, id: u64) -> bool {
        self.members.get(&id).is_some_and(|m| m.blank.is_some())
    }

    /// Replay hint for a failing test.
    pub fn replay_hint(&self) -> String {
        format!(
            "seed {} (replay: set the same seed in SimOptions::new)",
            self.opts.seed
        )
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("seed", &self.opts.seed)
            .field("now_us", &self.now_us)
            .finish()
    }
}
