//! Deliberate protocol breaks, to prove that the simulation's checkers can
//! fail. Only the simulation can switch them on ([`super::SimOptions`]);
//! a replica opened anywhere else runs the protocol as designed.

use std::fmt;
use std::str::FromStr;

use super::check::Property;

/// One deliberate break of the protocol, and the checker that must catch
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Break {
    /// Group commit stays off in sync mode: writes are acknowledged on
    /// the active and the witness before the passive synced them.
    /// Caught by: durability at acknowledgement.
    AckBeforeSync,
    /// Every disk reports a write persisted as soon as it is queued.
    /// Caught by: durability at acknowledgement.
    LyingDisk,
    /// The witness never hands leadership over. Caught by: witness lead
    /// bound.
    WitnessStaysLeader,
    /// The witness gets a lower raft `priority` than the data members (the
    /// trap recorded in the storage and election notes: a stale data
    /// member and the witness can refuse each other's votes forever).
    /// Caught by: liveness, or the witness lead bound.
    WitnessLowPriority,
    /// A wiped member bootstraps a fresh log at once instead of asking the
    /// others, so it votes with no memory of what it had promised.
    /// Caught by: RPO / linearizability.
    WipedMemberVotes,
    /// A leader holds the active role without its fenced lease. Caught by:
    /// one active (and lease reads: linearizability).
    SkipFence,
    /// A member decides whether it may stand from the maintenance setting
    /// it applied only, not the newest one in its log: an active that dies
    /// right after `maintenance off` was answered leaves followers that
    /// still hold "only the dead member may stand". Caught by: liveness.
    MaintenanceAppliedOnly,
}

impl Break {
    /// Every break, in a fixed order.
    pub const ALL: [Break; 7] = [
        Break::AckBeforeSync,
        Break::LyingDisk,
        Break::WitnessStaysLeader,
        Break::WitnessLowPriority,
        Break::WipedMemberVotes,
        Break::SkipFence,
        Break::MaintenanceAppliedOnly,
    ];

    /// The properties whose checkers must catch this break (any one of
    /// them).
    pub fn caught_by(self) -> &'static [Property] {
        match self {
            Break::AckBeforeSync | Break::LyingDisk => &[Property::DurableAtAck],
            Break::WitnessStaysLeader => &[Property::WitnessLead],
            Break::WitnessLowPriority => &[Property::Liveness, Property::WitnessLead],
            Break::WipedMemberVotes => &[Property::Rpo, Property::Linearizable],
            Break::SkipFence => &[Property::OneActive, Property::Linearizable],
            Break::MaintenanceAppliedOnly => &[Property::Liveness],
        }
    }

    /// The break's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Break::AckBeforeSync => "ack-before-sync",
            Break::LyingDisk => "lying-disk",
            Break::WitnessStaysLeader => "witness-stays-leader",
            Break::WitnessLowPriority => "witness-low-priority",
            Break::WipedMemberVotes => "wiped-member-votes",
            Break::SkipFence => "skip-fence",
            Break::MaintenanceAppliedOnly => "maintenance-applied-only",
        }
    }
}

impl fmt::Display for Break {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Break {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Break::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Break::ALL.iter().map(|b| b.name()).collect();
                format!("unknown break {s:?}: one of {}", names.join(", "))
            })
    }
}
