//! A proptest state-machine test of the replication-mode logic (sync,
//! degraded, back to sync) against a small model.
//!
//! The system under test is the HA cluster of the simulation (data members
//! 1 and 2, witness 3) under a steady writer; proptest draws sequences of
//! transitions that only touch the passive (crash, restart, cut off, stall
//! its disk, and their repairs) and of waits. The model knows only whether
//! the passive can keep up ("available": up, its disk running, connected
//! both ways) and since when. After every transition the real cluster must
//! agree with the model:
//! - sync mode commits nothing the passive has not synced (the cluster's
//!   durability check, after every acknowledgement);
//! - the active enters degraded mode only once the passive has been
//!   unavailable, or behind since it was, for `sync_timeout` (less a tick
//!   of slack);
//! - a passive unavailable for longer than `sync_timeout` (plus slack) with
//!   writes flowing leaves the active in degraded mode: writes do not stall;
//! - a passive available for long enough to catch up brings sync mode back;
//! - the active never changes (the faults touch only the passive).

use aoc_core::sim::{Cluster, SimOptions};
use aoc_core::state::KvCommand;
use aoc_core::{Event, Mode};
use proptest::prelude::*;

const MS: u64 = 1_000;
/// `sync_timeout_ticks` (10) of 100 ms.
const SYNC_TIMEOUT_US: u64 = 1_000 * MS;
/// Room for a tick's phase, disk latency and message delays.
const SLACK_US: u64 = 400 * MS;
/// Time a returning passive gets to catch up before sync mode must be back.
const CATCH_UP_US: u64 = 3_000 * MS;
/// A tick and a little: the mode logic runs on ticks.
const TICK_SLACK_US: u64 = 150 * MS;

#[derive(Debug, Clone, Copy)]
enum Step {
    Crash,
    Restart,
    Cut,
    Reconnect,
    StallDisk,
    ResumeDisk,
    Wait(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        Just(Step::Crash),
        Just(Step::Restart),
        Just(Step::Cut),
        Just(Step::Reconnect),
        Just(Step::StallDisk),
        Just(Step::ResumeDisk),
        (50u64..3_000).prop_map(|ms| Step::Wait(ms * MS)),
        (50u64..3_000).prop_map(|ms| Step::Wait(ms * MS)),
    ]
}

/// What the model knows about the passive.
#[derive(Debug)]
struct Model {
    up: bool,
    connected: bool,
    disk: bool,
    /// Since when the passive has been available (None: it is not).
    available_since: Option<u64>,
    /// When it was last unavailable (None: never).
    last_unavailable: Option<u64>,
    /// Since when it has been unavailable (None: it is available).
    unavailable_since: Option<u64>,
    /// Since when it has not kept up: its first unavailability after it
    /// was last seen caught up in sync mode.
    behind_since: Option<u64>,
    /// The active's mode at the last look.
    last_mode: Option<Mode>,
    /// What the model saw the system do wrong.
    wrong: Vec<String>,
}

impl Model {
    fn new() -> Self {
        Model {
            up: true,
            connected: true,
            disk: true,
            available_since: Some(0),
            last_unavailable: None,
            unavailable_since: None,
            behind_since: None,
            last_mode: Some(Mode::Sync),
            wrong: Vec::new(),
        }
    }

    /// Looks at the active's mode (every 10 ms).
    fn look(&mut self, c: &Cluster, active: u64, passive: u64) {
        let now = c.now_us();
        let Some(st) = c.status(active) else { return };
        let caught_up = c
            .state_of(passive)
            .is_some_and(|(applied, _)| applied >= st.commit);
        if st.mode == Mode::Sync && self.available() && caught_up {
            self.behind_since = None;
        }
        if !self.available() {
            self.behind_since.get_or_insert(now);
        }
        if st.mode == Mode::Degraded && self.last_mode == Some(Mode::Sync) {
            let waited = self.behind_since.map(|t| now - t);
            if waited.is_none_or(|w| w + TICK_SLACK_US < SYNC_TIMEOUT_US) {
                self.wrong.push(format!(
                    "degraded at {now} us after the passive was behind for {waited:?} us"
                ));
            }
        }
        self.last_mode = Some(st.mode);
    }

    fn available(&self) -> bool {
        self.up && self.connected && self.disk
    }

    /// Records the passive's availability after a transition at `now`.
    fn update(&mut self, now: u64) {
        if self.available() {
            if self.available_since.is_none() {
                self.available_since = Some(now);
                self.last_unavailable = Some(now);
            }
            self.unavailable_since = None;
        } else {
            self.available_since = None;
            self.unavailable_since.get_or_insert(now);
            self.last_unavailable = Some(now);
        }
    }
}

/// Writes on the active every 10 ms for `us`, checking the model after
/// every write.
fn write_for(
    c: &mut Cluster,
    model: &mut Model,
    (active, passive): (u64, u64),
    us: u64,
    next: &mut u64,
) {
    let end = c.now_us() + us;
    while c.now_us() < end {
        *next += 1;
        c.propose(
            active,
            KvCommand::put(format!("k{next}"), "v").encode(),
            None,
        );
        c.run_for(10 * MS);
        if !model.available() {
            model.last_unavailable = Some(c.now_us());
        }
        model.look(c, active, passive);
    }
}

fn mode_of(c: &Cluster, active: u64) -> Option<Mode> {
    c.status(active).map(|s| s.mode)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn the_mode_follows_the_passive(seed in 0u64..1_000, steps in prop::collection::vec(step(), 1..12)) {
        let mut c = Cluster::new(SimOptions::ha(seed));
        let ready = c.run_until(20_000 * MS, |c| {
            c.active().is_some_and(|a| c.status(a).is_some_and(|s| s.mode == Mode::Sync))
        });
        prop_assert!(ready, "seed {seed}: no active in sync mode");
        let active = c.active().expect("an active");
        let passive = if active == 1 { 2 } else { 1 };
        let mut model = Model::new();
        let mut next = 0;
        write_for(&mut c, &mut model, (active, passive), 500 * MS, &mut next);
        for s in steps {
            match s {
                Step::Crash => { c.crash(passive); model.up = false; }
                Step::Restart => { c.restart(passive); model.up = true; }
                Step::Cut => { c.isolate(passive); model.connected = false; }
                Step::Reconnect => { c.heal(); model.connected = true; }
                Step::StallDisk => { c.stall_disk(passive, true); model.disk = false; }
                Step::ResumeDisk => { c.stall_disk(passive, false); model.disk = true; }
                Step::Wait(_) => {}
            }
            model.update(c.now_us());
            let events_before = c.events().len();
            let wait = if let Step::Wait(us) = s { us } else { 100 * MS };
            write_for(&mut c, &mut model, (active, passive), wait, &mut next);
            let now = c.now_us();

            let v = c.violations();
            prop_assert!(v.is_empty(), "seed {seed}: {v:?}");
            prop_assert!(model.wrong.is_empty(), "seed {seed}: {:?}", model.wrong);
            prop_assert_eq!(c.active(), Some(active), "seed {}: the active never changes", seed);
            // Degraded mode only after the passive was unavailable recently.
            let entered_degraded = c.events()[events_before..]
                .iter()
                .any(|(m, e)| *m == active && *e == Event::ModeChanged { mode: Mode::Degraded });
            if entered_degraded {
                prop_assert!(
                    model.last_unavailable.is_some_and(|t| now - t <= wait + SYNC_TIMEOUT_US + SLACK_US),
                    "seed {seed}: degraded although the passive was available ({model:?})"
                );
            }
            let mode = mode_of(&c, active);
            // An unavailable passive does not stall writes beyond sync_timeout.
            if model.unavailable_since.is_some_and(|t| now - t > SYNC_TIMEOUT_US + SLACK_US) {
                prop_assert_eq!(mode, Some(Mode::Degraded), "seed {}: {:?}", seed, model);
            }
            // A passive available long enough brings sync mode back.
            if model.available_since.is_some_and(|t| now - t > CATCH_UP_US) {
                prop_assert_eq!(mode, Some(Mode::Sync), "seed {}: {:?}", seed, model);
            }
        }
    }
}
