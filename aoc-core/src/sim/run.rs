//! One verification run: an HA cluster (data members 1 and 2, witness 3),
//! a client workload, a fault schedule drawn from the seed, then a heal and
//! every check. The same seed gives the same trace, byte for byte. With
//! [`RunOptions::replace`], a member is also lost for good and replaced by
//! membership changes during the run (see `replace.rs`).
//!
//! ```
//! use aoc_core::sim::{run_seed, RunOptions};
//!
//! let report = run_seed(&RunOptions { seconds: 5, ..RunOptions::new(1) });
//! assert!(report.passed(), "{:#?}", report.violations);
//! assert!(report.stats.writes_acked > 0);
//! ```

use std::collections::{BTreeMap, BTreeSet};

use rand::rngs::SmallRng;
use rand::SeedableRng;

use super::check::{check_history, liveness, rpo, settled, Property, Verdict};
use super::operator::Operator;
use super::replace::{ReplaceReport, Replacement};
use super::schedule::{self, Episode};
use super::swarm::Knobs;
use super::workload::{Workload, WorkloadStats};
use super::{Break, Cluster, NetFaults, Outcome, SimOptions};

/// How long the cluster has to serve again after the heal.
const LIVENESS_BOUND_US: u64 = 30_000_000;
/// How long the pending writes have to complete after the heal.
const DRAIN_BOUND_US: u64 = 30_000_000;
/// How long the cluster has to settle (see `settled.rs`).
const SETTLE_BOUND_US: u64 = 30_000_000;
/// How long an unfinished replacement has to complete once the cluster
/// serves again after the heal.
const REPLACE_BOUND_US: u64 = 30_000_000;
/// The workload acts every this many microseconds.
const STEP_US: u64 = 2_000;

/// What a run does.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The seed of everything: schedule, workload, network, disks.
    pub seed: u64,
    /// Length of the faulty phase in simulated seconds.
    pub seconds: u64,
    /// Clients of the workload.
    pub clients: u64,
    /// Keys the workload uses.
    pub keys: u64,
    /// Draw and apply faults (off: the workload alone).
    pub faults: bool,
    /// Deliberate protocol breaks (proving the checkers).
    pub breaks: BTreeSet<Break>,
    /// Search steps the linearizability checker may spend per key.
    pub budget_steps: u64,
    /// Clock skew between members, per mille (within the fence's margin).
    pub tick_skew_per_mille: u64,
    /// Lose a member (the witness or a data member) for good during the
    /// faulty phase and replace it by membership changes: remove it, add a
    /// fresh member of its role under a new id as a learner, promote it
    /// (see `replace.rs`). Off by default: a seed's run is then the same
    /// as without the option.
    pub replace: bool,
    /// Swarm mode: the seed also draws the schedule's knobs (which faults
    /// and how often, their lengths and overlaps, the network, the clock
    /// skew: see `swarm.rs`) instead of the defaults.
    pub swarm: bool,
}

impl RunOptions {
    /// The defaults for `seed`: 30 simulated seconds of faults, 3 clients
    /// on 4 keys, clocks within 2% of each other.
    pub fn new(seed: u64) -> Self {
        RunOptions {
            seed,
            seconds: 30,
            clients: 3,
            keys: 4,
            faults: true,
            breaks: BTreeSet::new(),
            budget_steps: 2_000_000,
            tick_skew_per_mille: 20,
            replace: false,
            swarm: false,
        }
    }
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The seed.
    pub seed: u64,
    /// Violations, each `[property] what happened`; empty when it passed.
    pub violations: Vec<String>,
    /// The faults applied, in order.
    pub faults: Vec<String>,
    /// The workload's counters.
    pub stats: WorkloadStats,
    /// Operations in the checked history.
    pub history_ops: usize,
    /// Simulated time at the end, in microseconds.
    pub sim_us: u64,
    /// Time from the heal to an active serving writes, in microseconds.
    pub recovery_us: Option<u64>,
    /// What the replacements did, in order (with [`RunOptions::replace`];
    /// empty without).
    pub replacements: Vec<ReplaceReport>,
    /// The full trace.
    pub trace: Vec<String>,
}

impl RunReport {
    /// Whether every check held.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The properties violated.
    pub fn properties(&self) -> BTreeSet<Property> {
        self.violations
            .iter()
            .filter_map(|v| Property::of(v))
            .collect()
    }
}

/// Runs one seed (see the module docs).
pub fn run_seed(opts: &RunOptions) -> RunReport {
    let mut rng = SmallRng::seed_from_u64(opts.seed ^ 0x5EED_A0C0);
    let knobs = if opts.swarm {
        Knobs::draw(&mut SmallRng::seed_from_u64(opts.seed ^ 0x5A4A_4D00))
    } else {
        Knobs::default()
    };
    let base = if opts.faults {
        schedule::base_net(&mut rng, &knobs)
    } else {
        NetFaults::default()
    };
    let mut sim = SimOptions::ha(opts.seed);
    sim.net = base.clone();
    sim.breaks = opts.breaks.clone();
    sim.tick_skew_per_mille = if opts.swarm {
        knobs.tick_skew_per_mille
    } else {
        opts.tick_skew_per_mille
    };
    let mut c = Cluster::new(sim);
    if opts.swarm {
        c.note(format!("swarm knobs {knobs:?}"));
    }
    let duration_us = opts.seconds * 1_000_000;
    let episodes = if opts.faults {
        let voters = c.options().voters.clone();
        let witness = c.options().witness;
        schedule::draw(
            &mut rng,
            &knobs,
            duration_us,
            &voters,
            witness,
            !opts.replace,
        )
    } else {
        Vec::new()
    };
    let mut replacement = opts
        .replace
        .then(|| Replacement::draw(&mut rng, duration_us));
    let mut w = Workload::new(opts.clients, opts.keys);
    let mut violations = Vec::new();

    // The faulty phase: the workload runs throughout; episodes start and
    // end on time.
    let mut actions: Vec<(u64, bool, usize)> = episodes
        .iter()
        .enumerate()
        .flat_map(|(i, e)| [(e.start_us, true, i), (e.end_us, false, i)])
        .collect();
    actions.sort();
    let mut next_action = 0;
    let mut begun = BTreeMap::new();
    let mut op = Operator::default();
    let mut availability = liveness::Availability::default();
    while c.now_us() < duration_us {
        while let Some(&(at, starts, i)) = actions.get(next_action) {
            if at > c.now_us() {
                break;
            }
            let Episode { fault, .. } = &episodes[i];
            if starts {
                begun.insert(i, schedule::begin(&mut c, &mut op, fault));
            } else if let Some(b) = begun.remove(&i) {
                schedule::end(&mut c, &mut op, &b, &base);
            }
            next_action += 1;
        }
        for b in begun.values_mut() {
            b.poll(&mut c);
        }
        op.poll(&mut c);
        if let Some(v) = replacement.as_mut().and_then(|r| r.poll(&mut c)) {
            violations.push(v);
        }
        let calm = begun.values().all(|b| b.is_calm()) && !op.window_open();
        if let Some(v) = availability.observe(&c, calm) {
            violations.push(v);
        }
        w.step(&mut c, &mut rng);
        c.run_for(STEP_US);
    }

    // The heal: every fault ends; the operator ends a maintenance window
    // still open, as the runbook says (through the cluster, or locally
    // when no member is active), and does nothing more.
    c.note("heal");
    c.set_net(NetFaults::default());
    c.heal();
    for id in c.member_ids() {
        c.stall_disk(id, false);
        c.fill_disk(id, false);
        c.set_disk_low(id, false);
        c.restart(id);
    }
    let heal_us = c.now_us();
    op.turn_off(&mut c, None);
    while op.window_open() && c.now_us() < heal_us + LIVENESS_BOUND_US {
        c.run_for(STEP_US);
        op.poll(&mut c);
    }
    let left_us = (heal_us + LIVENESS_BOUND_US).saturating_sub(c.now_us());
    let recovery_us = match liveness::await_service(&mut c, left_us) {
        Ok(us) => Some(us),
        Err(v) => {
            violations.push(v);
            None
        }
    };

    // An unfinished replacement completes, the workload still running.
    if let Some(r) = replacement.as_mut().filter(|_| recovery_us.is_some()) {
        let end = c.now_us() + REPLACE_BOUND_US;
        while !r.done() && c.now_us() < end {
            if let Some(v) = r.poll(&mut c) {
                violations.push(v);
            }
            w.step(&mut c, &mut rng);
            c.run_for(STEP_US);
        }
        if !r.done() {
            violations.push(Property::Membership.report(format!(
                "the replacement did not complete {} ms after the cluster served again: {}",
                REPLACE_BOUND_US / 1000,
                r.describe()
            )));
        }
    }

    // Pending writes complete (or stay unknown); no new operations.
    w.drain();
    let drain_end = c.now_us() + DRAIN_BOUND_US;
    while !w.idle() && c.now_us() < drain_end {
        w.step(&mut c, &mut rng);
        c.run_for(STEP_US);
    }
    if !w.idle() && recovery_us.is_some() {
        violations.push(Property::Liveness.report(format!(
            "writes still pending {} ms after the heal",
            (c.now_us() - heal_us) / 1000
        )));
    }
    w.abandon_pending();
    if let Some(v) = settled::settle(&mut c, SETTLE_BOUND_US) {
        violations.push(v);
    }

    // A final linearizable read of every key joins the history.
    for key in w.keys().to_vec() {
        match final_read(&mut c, &key) {
            Some(v) => w.record_final_read(&key, v),
            None => violations.push(Property::Liveness.report(format!(
                "the final read of {} was not answered",
                String::from_utf8_lossy(&key)
            ))),
        }
    }

    violations.extend(rpo::check(&c, w.acked()));
    match check_history(w.history(), opts.budget_steps) {
        Verdict::Linearizable => {}
        Verdict::Violation { key, detail } => violations.push(
            Property::Linearizable
                .report(format!("key {}: {detail}", String::from_utf8_lossy(&key))),
        ),
        Verdict::Undecided { key, steps } => {
            violations.push(Property::Linearizable.report(format!(
                "key {}: undecided after {steps} search steps (counted as a failure)",
                String::from_utf8_lossy(&key)
            )))
        }
    }
    // The cluster's own checks come first: they name the earliest break.
    let mut all = c.violations();
    all.extend(violations);
    RunReport {
        seed: opts.seed,
        violations: all,
        faults: episodes.iter().map(|e| format!("{e:?}")).collect(),
        stats: w.stats().clone(),
        history_ops: w.history().len(),
        sim_us: c.now_us(),
        recovery_us,
        replacements: replacement.map(|r| r.reports()).unwrap_or_default(),
        trace: c.trace().to_vec(),
    }
}

/// A linearizable read on the active, retried until answered (at most 20
/// tries of one second).
fn final_read(c: &mut Cluster, key: &[u8]) -> Option<Option<Vec<u8>>> {
    for _ in 0..20 {
        let Some(a) = c.active() else {
            c.run_for(100_000);
            continue;
        };
        let t = c.read(a, key);
        c.run_until(1_000_000, |c| c.outcome(t).is_some());
        if let Some(Outcome::Read(Ok(v))) = c.outcome(t) {
            return Some(v.clone());
        }
        c.run_for(50_000);
    }
    None
}
