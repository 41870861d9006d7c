//! Runs `aoc-core/testdata/commit_rule.txt` (its header gives the format):
//! the commit rule's functions case by case, with raft-rs's own commit
//! computation (`ProgressTracker::maximal_committed_index`) on the policy
//! they give.

use std::collections::BTreeMap;

use raft::eraftpb::{ConfChangeSingle, ConfChangeType};
use raft::{Changer, ProgressTracker};

use super::{holds_active, policy, runs_modes, Conf, Mode, ModeClock, Policy, Progress};

const TABLE: &str = include_str!("../../../testdata/commit_rule.txt");

/// `key=value` words of one line.
fn words(line: &str) -> BTreeMap<&str, &str> {
    line.split_whitespace()
        .map(|w| {
            w.split_once('=')
                .unwrap_or_else(|| panic!("{w:?} is not key=value in {line:?}"))
        })
        .collect()
}

fn ids(s: &str) -> Vec<u64> {
    s.split(',')
        .map(|v| v.parse().expect("a member id"))
        .collect()
}

fn pairs(s: &str) -> Vec<(u64, u64)> {
    if s == "-" {
        return Vec::new();
    }
    s.split(',')
        .map(|p| {
            let (a, b) = p.split_once(':').expect("member:value");
            (a.parse().expect("a number"), b.parse().expect("a number"))
        })
        .collect()
}

fn yes(s: &str) -> bool {
    match s {
        "yes" | "on" => true,
        "no" | "off" => false,
        _ => panic!("{s:?} is neither yes/on nor no/off"),
    }
}

fn mode(s: &str) -> Mode {
    match s {
        "sync" => Mode::Sync,
        "degraded" => Mode::Degraded,
        "standalone" => Mode::Standalone,
        "majority" => Mode::Majority,
        _ => panic!("unknown mode {s:?}"),
    }
}

fn single(id: u64, ty: ConfChangeType) -> ConfChangeSingle {
    let mut cc = ConfChangeSingle {
        node_id: id,
        ..Default::default()
    };
    cc.set_change_type(ty);
    cc
}

/// A raft-rs tracker holding `voters`, or the joint configuration from
/// `outgoing` to `voters`.
fn tracker(voters: &[u64], outgoing: Option<&[u64]>) -> ProgressTracker {
    let mut t = ProgressTracker::new(256);
    for v in outgoing.unwrap_or(voters) {
        let (conf, changes) = Changer::new(&t)
            .simple(&[single(*v, ConfChangeType::AddNode)])
            .expect("add a voter");
        t.apply_conf(conf, changes, 1);
    }
    if let Some(old) = outgoing {
        let mut ccs: Vec<ConfChangeSingle> = voters
            .iter()
            .filter(|v| !old.contains(v))
            .map(|v| single(*v, ConfChangeType::AddNode))
            .collect();
        ccs.extend(
            old.iter()
                .filter(|v| !voters.contains(v))
                .map(|v| single(*v, ConfChangeType::RemoveNode)),
        );
        let (conf, changes) = Changer::new(&t)
            .enter_joint(false, &ccs)
            .expect("enter the joint configuration");
        t.apply_conf(conf, changes, 1);
    }
    t
}

/// One case as it runs: the rule's state and raft-rs's tracker.
struct Case {
    title: String,
    conf: Conf,
    leader: u64,
    lost: Vec<u64>,
    sync_timeout_ticks: u64,
    clock: ModeClock,
    policy: Policy,
    tracker: ProgressTracker,
    /// The last `at` line's results: (commits, active).
    last: Option<(u64, Option<bool>)>,
}

impl Case {
    fn open(title: &str, line: &str) -> Case {
        let w = words(line);
        let voters = ids(w["voters"]);
        let outgoing = w.get("outgoing").map(|o| ids(o));
        let conf = Conf {
            voters: voters.clone(),
            joint: outgoing.is_some(),
            witness: match w["witness"] {
                "none" => None,
                id => Some(id.parse().expect("a witness id")),
            },
        };
        let lost = w.get("lost").map(|l| ids(l)).unwrap_or_default();
        let mut case = Case {
            title: title.to_string(),
            leader: w["leader"].parse().expect("a leader id"),
            sync_timeout_ticks: w
                .get("sync_timeout")
                .map_or(10, |t| t.parse().expect("ticks")),
            clock: ModeClock::new(mode(w["mode"])),
            policy: Policy {
                mode: Mode::Majority,
                groups: Vec::new(),
                group_commit: false,
                clear_waiting: false,
            },
            tracker: tracker(&voters, outgoing.as_deref()),
            last: None,
            conf,
            lost,
        };
        case.apply_policy();
        case
    }

    fn witness_lost(&self) -> bool {
        self.conf.witness.is_some_and(|w| self.lost.contains(&w))
    }

    /// What `Ha::apply_policy` does: ask the rule, turn raft-rs's knobs.
    fn apply_policy(&mut self) {
        self.policy = policy(&self.conf, self.clock.mode, self.witness_lost(), false);
        self.clock.mode = self.policy.mode;
        if self.policy.clear_waiting {
            self.clock.waiting.clear();
        }
        for (id, group) in &self.policy.groups {
            self.tracker.get_mut(*id).expect("a voter").commit_group_id = *group;
        }
        self.tracker.enable_group_commit(self.policy.group_commit);
    }

    fn commits(&mut self) -> u64 {
        self.tracker.maximal_committed_index().0
    }

    /// One `at` line: the leader's view at a tick, then the mode rule.
    fn at(&mut self, line: &str) {
        let w = words(line);
        let tick: u64 = w["tick"].parse().expect("a tick");
        let mut persisted: BTreeMap<u64, u64> = pairs(w["persisted"]).into_iter().collect();
        for id in &self.lost {
            // The leader voids a lost member's acknowledgements.
            persisted.insert(*id, 0);
        }
        for (id, index) in &persisted {
            if let Some(pr) = self.tracker.get_mut(*id) {
                pr.matched = *index;
            }
        }
        let commit = self.commits();
        let term_commit = w.get("term_commit").is_none_or(|v| yes(v));
        let progress = Progress::of(
            &self.conf,
            self.leader,
            |id| persisted.get(&id).copied(),
            commit,
            term_commit,
        );
        if runs_modes(&self.conf, true, self.leader)
            && self
                .clock
                .step(progress, tick, self.sync_timeout_ticks)
                .is_some()
        {
            self.apply_policy();
        }
        let active = w.get("lease_until").map(|until| {
            holds_active(
                true,
                Some(self.leader) == self.conf.witness,
                w.get("transferring").is_some_and(|v| yes(v)),
                tick,
                until.parse().expect("a tick"),
                false,
            )
        });
        let commits = self.commits();
        self.last = Some((commits, active));
    }

    /// One `=>` line: every key given must match.
    fn expect(&self, line: &str, number: usize) {
        let (commits, active) = self.last.expect("a `=>` line follows an `at` line");
        let at = format!("line {number}, case {:?}", self.title);
        for (key, want) in words(line) {
            match key {
                "mode" => assert_eq!(self.clock.mode, mode(want), "{at}: mode"),
                "groups" => assert_eq!(self.policy.groups, pairs(want), "{at}: commit groups"),
                "group_commit" => {
                    assert_eq!(self.policy.group_commit, yes(want), "{at}: group commit")
                }
                "commits" => {
                    assert_eq!(
                        commits,
                        want.parse::<u64>().expect("an index"),
                        "{at}: commits"
                    )
                }
                "active" => {
                    assert_eq!(active, Some(yes(want)), "{at}: active (lease_until given?)")
                }
                _ => panic!("{at}: unknown key {key:?}"),
            }
        }
    }
}

#[test]
fn table() {
    let mut case: Option<Case> = None;
    let mut title = String::new();
    let mut cases = 0;
    let mut checks = 0;
    for (i, raw) in TABLE.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(t) = line.strip_prefix("case:") {
            title = t.trim().to_string();
            cases += 1;
        } else if let Some(rest) = line.strip_prefix("conf ") {
            case = Some(Case::open(&title, rest));
        } else if let Some(rest) = line.strip_prefix("at ") {
            case.as_mut().expect("`conf` before `at`").at(rest);
        } else if let Some(rest) = line.strip_prefix("=> ") {
            case.as_ref()
                .expect("`conf` before `=>`")
                .expect(rest, i + 1);
            checks += 1;
        } else {
            panic!("line {}: cannot read {line:?}", i + 1);
        }
    }
    assert!(
        cases >= 15 && checks >= 30,
        "{cases} cases, {checks} checks: the table was cut"
    );
}
