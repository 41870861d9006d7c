//! The fault schedule of a run, drawn from its seed: episodes that each
//! start a fault and later end it, sometimes overlapping.
//!
//! Fair to a correct build: every fault ends by the heal; at most one
//! directory is wiped per run, and only the witness's (a wiped data member
//! needs a membership change to be replaced), and none in a run that loses
//! a member for good (`replace.rs`: two lost disks are more than the
//! design survives). Maintenance windows are opened and closed by the
//! operator (`operator.rs`), as the runbook says and no further.
//!
//! Faults name the initial members; once a member is lost and replaced,
//! a fault aimed at it hits its replacement (`Cluster::current_id`).

use rand::rngs::SmallRng;
use rand::Rng;

use super::operator::Operator;
use super::swarm::{kind, Knobs};
use super::{Cluster, NetFaults};

/// Whom a fault hits: a member, or whoever holds a role when the fault
/// begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    Member(u64),
    Active,
    Passive,
}

impl Target {
    /// The member hit, resolved when the fault begins.
    fn resolve(self, c: &Cluster) -> Option<u64> {
        match self {
            Target::Member(id) => Some(c.current_id(id)),
            Target::Active => c.active(),
            Target::Passive => {
                let a = c.active()?;
                c.data_members().into_iter().find(|v| *v != a)
            }
        }
    }
}

/// One fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Kill the member (losing what it had not synced); restart it at the
    /// end.
    Crash(Target),
    /// Its disk completes nothing; its network stays up.
    StallDisk(Target),
    /// Kill the witness, wipe its directory and restart it blank.
    WipeWitness,
    /// Cut the member off from every other member, both ways.
    Isolate(Target),
    /// Cut one direction of one link.
    OneWay(u64, u64),
    /// Ask the active for a planned switchover.
    Switchover,
    /// The operator turns maintenance mode on (off at the end).
    Maintenance,
    /// The operator turns maintenance on, and off at the end; the active
    /// is killed `after_us` after `maintenance off` is answered (0: at
    /// once, before the others can have learned that it committed), and
    /// restarted `down_us` later.
    MaintenanceOffThenCrash { after_us: u64, down_us: u64 },
    /// Ask the active for a planned switchover and kill it `after_us`
    /// later, whether or not the switchover finished; restart it at the
    /// end.
    SwitchoverThenCrash { after_us: u64 },
    /// Heavier message loss, duplication and delay.
    Lossy(NetFaults),
    /// The member's disk is full: writes fail (ENOSPC), so it fails at its
    /// next write and stays down; it starts again at the end.
    FullDisk(Target),
    /// The member's free space is below its reserve: its NOSPACE alarm
    /// refuses the writes that take space until the end.
    LowDisk(Target),
    /// Kill the next member to become active (other than the one active
    /// when this begins) the moment it does; restart it at the end.
    CrashNextActive,
}

/// A fault and when it starts and ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Episode {
    pub(crate) start_us: u64,
    pub(crate) end_us: u64,
    pub(crate) fault: Fault,
}

/// The network conditions of a whole run (faults add to them).
pub(crate) fn base_net(rng: &mut SmallRng, knobs: &Knobs) -> NetFaults {
    NetFaults {
        drop_per_mille: rng.gen_range(0..=knobs.base_drop_per_mille),
        duplicate_per_mille: rng.gen_range(0..=knobs.base_duplicate_per_mille),
        min_delay_us: 50,
        max_delay_us: rng.gen_range(knobs.base_max_delay_us.0..=knobs.base_max_delay_us.1),
    }
}

/// Draws the episodes of a run lasting `duration_us` on members
/// `voters`, whose witness is `witness`, with `knobs`; `wipes`: whether
/// the witness's directory may be wiped.
pub(crate) fn draw(
    rng: &mut SmallRng,
    knobs: &Knobs,
    duration_us: u64,
    voters: &[u64],
    witness: Option<u64>,
    wipes: bool,
) -> Vec<Episode> {
    let mut out = Vec::new();
    // No wipe allowed: as if it had happened.
    let mut wiped = !wipes;
    let mut t = rng.gen_range(500_000..2_000_000);
    let pick = |rng: &mut SmallRng| voters[rng.gen_range(0..voters.len())];
    let member = |rng: &mut SmallRng| Target::Member(pick(rng));
    while t < duration_us {
        if rng.gen_range(0..100) < knobs.combination_per_cent {
            // A known-dangerous combination of the same faults.
            let (episodes, end) = combination(rng, t, &mut wiped, witness.is_some());
            out.extend(
                episodes
                    .into_iter()
                    .filter(|e| e.start_us < duration_us)
                    .map(|mut e| {
                        e.end_us = e.end_us.min(duration_us);
                        e
                    }),
            );
            t = end + rng.gen_range(500_000..2_000_000);
            continue;
        }
        let length = rng.gen_range(knobs.length_us.0..knobs.length_us.1);
        let fault = match knobs.pick(rng) {
            kind::STALL_DISK => Fault::StallDisk(member(rng)),
            kind::WIPE_WITNESS if !wiped && witness.is_some() => {
                wiped = true;
                Fault::WipeWitness
            }
            kind::ISOLATE => Fault::Isolate(member(rng)),
            kind::ONE_WAY => {
                let from = pick(rng);
                let mut to = pick(rng);
                while to == from {
                    to = pick(rng);
                }
                Fault::OneWay(from, to)
            }
            kind::SWITCHOVER => Fault::Switchover,
            kind::MAINTENANCE => Fault::Maintenance,
            kind::FULL_DISK => Fault::FullDisk(member(rng)),
            kind::LOW_DISK => Fault::LowDisk(member(rng)),
            kind::LOSSY => Fault::Lossy(NetFaults {
                drop_per_mille: rng.gen_range(50..=300),
                duplicate_per_mille: rng.gen_range(0..=100),
                min_delay_us: 100,
                max_delay_us: rng.gen_range(5_000..=200_000),
            }),
            // A crash, or a wipe that is not allowed (any more).
            _ => Fault::Crash(member(rng)),
        };
        out.push(Episode {
            start_us: t,
            end_us: (t + length).min(duration_us),
            fault,
        });
        // Sometimes the next fault starts before this one ends.
        let gap = if rng.gen_range(0..100) < knobs.overlap_per_cent {
            rng.gen_range(0..length)
        } else {
            length + rng.gen_range(knobs.gap_us.0..knobs.gap_us.1)
        };
        t += gap;
    }
    out
}

/// Combinations that reach the protocol's hardest paths, starting at `t`:
/// (episodes, when the last one ends).
fn combination(
    rng: &mut SmallRng,
    t: u64,
    wiped: &mut bool,
    has_witness: bool,
) -> (Vec<Episode>, u64) {
    let d1 = rng.gen_range(1_000_000..4_000_000);
    let d2 = rng.gen_range(1_000_000..5_000_000);
    let mut out = Vec::new();
    let kind = rng.gen_range(0..100);
    if kind >= 70 {
        // A planned operation right before a crash of the active.
        let after_us = if rng.gen_bool(0.5) {
            0
        } else {
            rng.gen_range(0..300_000)
        };
        let fault = if kind >= 85 {
            // Down longer than the availability bound (`liveness.rs`):
            // the others must fail over without it.
            Fault::MaintenanceOffThenCrash {
                after_us,
                down_us: rng.gen_range(11_000_000..16_000_000),
            }
        } else {
            Fault::SwitchoverThenCrash { after_us }
        };
        out.push(Episode {
            start_us: t,
            end_us: t + d1,
            fault,
        });
    } else if kind < 35 {
        // Failover to a lagging passive: the passive misses writes (the
        // active runs degraded with the witness), returns, and the active
        // dies as it does; sometimes the witness is wiped then too. Only
        // the witness's copy can complete the passive.
        out.push(Episode {
            start_us: t,
            end_us: t + d1,
            fault: Fault::Crash(Target::Passive),
        });
        out.push(Episode {
            start_us: t + d1,
            end_us: t + d1 + d2,
            fault: Fault::Crash(Target::Active),
        });
        if has_witness && !*wiped && rng.gen_bool(0.3) {
            *wiped = true;
            out.push(Episode {
                start_us: t + d1 + 1,
                end_us: t + d1 + 2,
                fault: Fault::WipeWitness,
            });
        }
    } else {
        // A stale tail: the active is cut off while clients still write to
        // it inside its lease; the others elect and write; the new active
        // dies just before the old one reconnects.
        let isolated = rng.gen_range(2_000_000..5_000_000);
        let before = rng.gen_range(0..500_000);
        out.push(Episode {
            start_us: t,
            end_us: t + isolated,
            fault: Fault::Isolate(Target::Active),
        });
        // Either whoever is active just before the reconnection, or the
        // new active the moment it is elected (its log then barely passes
        // the old active's: the longest stale tail).
        out.push(Episode {
            start_us: t + isolated - before,
            end_us: t + isolated + rng.gen_range(5_000_000..20_000_000),
            fault: if rng.gen_bool(0.5) {
                Fault::Crash(Target::Active)
            } else {
                Fault::CrashNextActive
            },
        });
    }
    let end = out.iter().map(|e| e.end_us).max().unwrap_or(t);
    (out, end)
}

/// A fault as it began: the member a role named, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Begun {
    fault: Fault,
    /// `CrashNextActive`: the active when it began, and whom it killed.
    armed: Option<(Option<u64>, Option<u64>)>,
    /// `SwitchoverThenCrash`: when to kill whom, and whom it killed.
    crash_at: Option<(u64, u64)>,
    crashed: Option<u64>,
}

impl Begun {
    /// Acts on what happened since it began (`CrashNextActive`,
    /// `SwitchoverThenCrash`).
    pub(crate) fn poll(&mut self, c: &mut Cluster) {
        if let Some((at, id)) = self.crash_at {
            if c.now_us() >= at {
                c.note(format!("fault: the switching active {id} is killed"));
                c.crash(id);
                self.crash_at = None;
                self.crashed = Some(id);
            }
        }
        let Some((first, None)) = self.armed else {
            return;
        };
        if let Some(a) = c.active().filter(|a| Some(*a) != first) {
            c.note(format!("fault: the new active {a} is killed"));
            c.crash(a);
            self.armed = Some((first, Some(a)));
        }
    }

    /// Whether the cluster must stay available while this runs (see
    /// `liveness.rs`): not during heavy loss or a switchover (maintenance
    /// windows are the operator's: `Operator::window_open`).
    pub(crate) fn is_calm(&self) -> bool {
        !matches!(
            self.fault,
            Fault::Lossy(_) | Fault::Switchover | Fault::SwitchoverThenCrash { .. }
        )
    }
}

/// Starts an episode's fault; what it hit is needed to end it.
pub(crate) fn begin(c: &mut Cluster, op: &mut Operator, fault: &Fault) -> Begun {
    let fault = match fault {
        Fault::Crash(t) => Fault::Crash(t.resolve(c).map_or(*t, Target::Member)),
        Fault::StallDisk(t) => Fault::StallDisk(t.resolve(c).map_or(*t, Target::Member)),
        Fault::Isolate(t) => Fault::Isolate(t.resolve(c).map_or(*t, Target::Member)),
        Fault::FullDisk(t) => Fault::FullDisk(t.resolve(c).map_or(*t, Target::Member)),
        Fault::LowDisk(t) => Fault::LowDisk(t.resolve(c).map_or(*t, Target::Member)),
        Fault::OneWay(from, to) => Fault::OneWay(c.current_id(*from), c.current_id(*to)),
        f => f.clone(),
    };
    c.note(format!("fault begins: {fault:?}"));
    let armed = (fault == Fault::CrashNextActive).then_some((c.active(), None));
    let mut crash_at = None;
    match &fault {
        Fault::Crash(Target::Member(id)) => c.crash(*id),
        Fault::StallDisk(Target::Member(id)) => c.stall_disk(*id, true),
        Fault::WipeWitness => {
            if let Some(w) = c.witness() {
                c.wipe(w);
                c.restart(w);
            }
        }
        Fault::Isolate(Target::Member(id)) => c.isolate(*id),
        Fault::OneWay(from, to) => c.set_link(*from, *to, false),
        Fault::Switchover => {
            if let Some(a) = c.active() {
                c.switchover(a);
            }
        }
        Fault::FullDisk(Target::Member(id)) => c.fill_disk(*id, true),
        Fault::LowDisk(Target::Member(id)) => c.set_disk_low(*id, true),
        Fault::Maintenance | Fault::MaintenanceOffThenCrash { .. } => op.turn_on(c),
        Fault::SwitchoverThenCrash { after_us } => {
            if let Some(a) = c.active() {
                c.switchover(a);
                crash_at = Some((c.now_us() + after_us, a));
            }
        }
        Fault::Lossy(net) => c.set_net(net.clone()),
        // A role nobody held: nothing was hit.
        Fault::Crash(_)
        | Fault::StallDisk(_)
        | Fault::Isolate(_)
        | Fault::FullDisk(_)
        | Fault::LowDisk(_)
        | Fault::CrashNextActive => {}
    }
    Begun {
        fault,
        armed,
        crash_at,
        crashed: None,
    }
}

/// Ends an episode's fault (`base` is the run's network).
pub(crate) fn end(c: &mut Cluster, op: &mut Operator, begun: &Begun, base: &NetFaults) {
    let fault = &begun.fault;
    if let Some((_, Some(killed))) = begun.armed {
        c.restart(killed);
    }
    if let Some(killed) = begun.crashed {
        c.restart(killed);
    }
    c.note(format!("fault ends: {fault:?}"));
    match fault {
        Fault::Crash(Target::Member(id)) => c.restart(*id),
        Fault::StallDisk(Target::Member(id)) => c.stall_disk(*id, false),
        Fault::WipeWitness | Fault::Switchover => {}
        Fault::Isolate(Target::Member(id)) => {
            for other in c.member_ids() {
                if other != *id {
                    c.set_link(*id, other, true);
                    c.set_link(other, *id, true);
                }
            }
        }
        Fault::OneWay(from, to) => c.set_link(*from, *to, true),
        Fault::FullDisk(Target::Member(id)) => c.fill_disk(*id, false),
        Fault::LowDisk(Target::Member(id)) => c.set_disk_low(*id, false),
        Fault::Maintenance => op.turn_off(c, None),
        Fault::MaintenanceOffThenCrash { after_us, down_us } => {
            op.turn_off(c, Some((*after_us, *down_us)))
        }
        Fault::Lossy(_) => c.set_net(base.clone()),
        Fault::Crash(_)
        | Fault::StallDisk(_)
        | Fault::Isolate(_)
        | Fault::FullDisk(_)
        | Fault::LowDisk(_)
        | Fault::CrashNextActive
        | Fault::SwitchoverThenCrash { .. } => {}
    }
}
