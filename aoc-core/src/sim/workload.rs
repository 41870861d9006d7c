//! The client workload of a simulation run: a few clients, each with a
//! session, issuing puts, deletes, compare-and-swaps, linearizable reads
//! and lease reads on a handful of keys, one operation at a time, retrying
//! writes (same session sequence, so a write takes effect at most once)
//! until they are answered.
//!
//! Every operation is recorded in a history on one logical clock: a call
//! when the client issues it, a return when the client sees the answer.
//! A write whose answer the client never learned is recorded without a
//! return; a read that failed is dropped (it changed nothing).

use std::collections::BTreeMap;

use rand::rngs::SmallRng;
use rand::Rng;

use super::check::{HistoryOp, KvOp, KvOutput};
use super::{Cluster, Outcome};
use crate::state::{KvCommand, KvResponse};
use crate::Error;

/// A write not answered in this long is sent again.
const ATTEMPT_TIMEOUT_US: u64 = 1_000_000;
/// Wait after a refusal before the next attempt.
const BACKOFF_US: u64 = 20_000;
/// A read not answered in this long is abandoned.
const READ_TIMEOUT_US: u64 = 1_000_000;
/// Pause between a client's operations (drawn up to this).
const MAX_THINK_US: u64 = 10_000;

/// An acknowledged write: the session and sequence that identify it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AckedWrite {
    pub(crate) client_id: u64,
    pub(crate) sequence: u64,
    pub(crate) at_us: u64,
}

#[derive(Debug)]
struct Attempts {
    tokens: Vec<u64>,
    next_attempt_us: u64,
}

impl Attempts {
    fn new(now_us: u64) -> Self {
        Attempts {
            tokens: Vec::new(),
            next_attempt_us: now_us,
        }
    }

    /// The first successful answer among the attempts.
    fn answered(&self, c: &Cluster) -> Option<Vec<u8>> {
        self.tokens.iter().find_map(|t| match c.outcome(*t) {
            Some(Outcome::Proposal { result: Ok(r), .. }) => Some(r.clone()),
            _ => None,
        })
    }

    /// The last attempt's refusal, if it was refused.
    fn refused<'a>(&self, c: &'a Cluster) -> Option<&'a Error> {
        match self.tokens.last().and_then(|t| c.outcome(*t)) {
            Some(Outcome::Proposal { result: Err(e), .. }) => Some(e),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct PendingWrite {
    key: Vec<u8>,
    op: KvOp,
    command: Vec<u8>,
    invoke: u64,
    sequence: u64,
    attempts: Attempts,
}

#[derive(Debug)]
enum Phase {
    Idle {
        until_us: u64,
    },
    Registering(Attempts),
    Writing(PendingWrite),
    Reading {
        key: Vec<u8>,
        invoke: u64,
        token: u64,
        give_up_us: u64,
    },
}

#[derive(Debug)]
struct Client {
    number: u64,
    session: Option<u64>,
    sequence: u64,
    phase: Phase,
    /// The last value this client saw per key (the compare-and-swap's
    /// expectation).
    seen: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

/// Counters of a run's workload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadStats {
    /// Writes acknowledged.
    pub writes_acked: u64,
    /// Writes whose outcome stayed unknown.
    pub writes_unknown: u64,
    /// Reads answered (linearizable and lease).
    pub reads_ok: u64,
    /// Reads refused or abandoned.
    pub reads_failed: u64,
    /// Attempts beyond the first, writes and registrations.
    pub retries: u64,
}

/// The clients and their history.
#[derive(Debug)]
pub(crate) struct Workload {
    clients: Vec<Client>,
    keys: Vec<Vec<u8>>,
    clock: u64,
    history: Vec<HistoryOp>,
    acked: Vec<AckedWrite>,
    /// Set once the run stops issuing new operations.
    draining: bool,
    stats: WorkloadStats,
}

impl Workload {
    pub(crate) fn new(clients: u64, keys: u64) -> Self {
        Workload {
            clients: (1..=clients)
                .map(|number| Client {
                    number,
                    session: None,
                    sequence: 0,
                    phase: Phase::Idle { until_us: 0 },
                    seen: BTreeMap::new(),
                })
                .collect(),
            keys: (0..keys).map(|k| format!("k{k}").into_bytes()).collect(),
            clock: 0,
            history: Vec::new(),
            acked: Vec::new(),
            draining: false,
            stats: WorkloadStats::default(),
        }
    }

    pub(crate) fn history(&self) -> &[HistoryOp] {
        &self.history
    }

    pub(crate) fn acked(&self) -> &[AckedWrite] {
        &self.acked
    }

    pub(crate) fn stats(&self) -> &WorkloadStats {
        &self.stats
    }

    pub(crate) fn keys(&self) -> &[Vec<u8>] {
        &self.keys
    }

    fn tick_clock(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Stops issuing new operations; pending ones go on until answered.
    pub(crate) fn drain(&mut self) {
        self.draining = true;
    }

    /// Whether every client is idle.
    pub(crate) fn idle(&self) -> bool {
        self.clients
            .iter()
            .all(|c| matches!(c.phase, Phase::Idle { .. }))
    }

    /// Where a client sends a request: the active, or (none known) any
    /// voter, which refuses and makes the client back off.
    fn target(c: &Cluster, rng: &mut SmallRng) -> u64 {
        c.active().unwrap_or_else(|| {
            let voters = &c.configuration().voters;
            if voters.is_empty() {
                return 1;
            }
            voters[rng.gen_range(0..voters.len())]
        })
    }

    /// Lets every client observe its answers and act on them.
    pub(crate) fn step(&mut self, c: &mut Cluster, rng: &mut SmallRng) {
        for i in 0..self.clients.len() {
            self.step_client(i, c, rng);
        }
    }

    fn step_client(&mut self, i: usize, c: &mut Cluster, rng: &mut SmallRng) {
        let now = c.now_us();
        let phase = std::mem::replace(&mut self.clients[i].phase, Phase::Idle { until_us: now });
        let next = match phase {
            Phase::Idle { until_us } if now < until_us || self.draining => Phase::Idle { until_us },
            Phase::Idle { .. } => self.start_op(i, c, rng),
            Phase::Registering(mut a) => {
                if let Some(r) = a.answered(c) {
                    let mut id = [0u8; 8];
                    if r.len() == 8 {
                        id.copy_from_slice(&r);
                    }
                    let client = &mut self.clients[i];
                    client.session = Some(u64::from_le_bytes(id));
                    client.sequence = 0;
                    c.note(format!(
                        "client {} session {}",
                        client.number,
                        u64::from_le_bytes(id)
                    ));
                    Phase::Idle { until_us: now }
                } else {
                    self.attempt(&mut a, c, rng, |c, m| c.register_client(m));
                    Phase::Registering(a)
                }
            }
            Phase::Writing(w) => self.step_write(i, w, c, rng),
            Phase::Reading {
                key,
                invoke,
                token,
                give_up_us,
            } => match c.outcome(token) {
                Some(Outcome::Read(Ok(v))) => {
                    let v = v.clone();
                    let ret = self.tick_clock();
                    let number = self.clients[i].number;
                    self.clients[i].seen.insert(key.clone(), v.clone());
                    self.history.push(HistoryOp::done(
                        number,
                        key,
                        KvOp::Read,
                        invoke,
                        ret,
                        KvOutput::Read(v),
                    ));
                    self.stats.reads_ok += 1;
                    Phase::Idle {
                        until_us: now + rng.gen_range(0..MAX_THINK_US),
                    }
                }
                Some(_) => {
                    self.stats.reads_failed += 1;
                    Phase::Idle {
                        until_us: now + BACKOFF_US,
                    }
                }
                None if now >= give_up_us => {
                    self.stats.reads_failed += 1;
                    Phase::Idle { until_us: now }
                }
                None => Phase::Reading {
                    key,
                    invoke,
                    token,
                    give_up_us,
                },
            },
        };
        self.clients[i].phase = next;
    }

    /// Sends a new attempt when it is due, backing off after a refusal.
    fn attempt(
        &mut self,
        a: &mut Attempts,
        c: &mut Cluster,
        rng: &mut SmallRng,
        send: impl FnOnce(&mut Cluster, u64) -> u64,
    ) {
        let now = c.now_us();
        if a.refused(c).is_some() {
            a.next_attempt_us = a.next_attempt_us.min(now + BACKOFF_US);
        }
        if now < a.next_attempt_us {
            return;
        }
        if !a.tokens.is_empty() {
            self.stats.retries += 1;
        }
        let member = Self::target(c, rng);
        let token = send(c, member);
        a.tokens.push(token);
        a.next_attempt_us = now + ATTEMPT_TIMEOUT_US;
    }

    fn step_write(
        &mut self,
        i: usize,
        mut w: PendingWrite,
        c: &mut Cluster,
        rng: &mut SmallRng,
    ) -> Phase {
        let now = c.now_us();
        let number = self.clients[i].number;
        if let Some(r) = w.attempts.answered(c) {
            let ret = self.tick_clock();
            let output = match KvResponse::decode(&r) {
                Ok(resp) => KvOutput::Write {
                    ok: resp.ok,
                    previous: resp.previous,
                },
                Err(_) => {
                    // Recorded as unknown: the checker then accepts any
                    // effect, and the run reports the undecodable answer.
                    c.note(format!("client {number}: undecodable response {r:?}"));
                    self.history
                        .push(HistoryOp::unknown(number, w.key, w.op, w.invoke));
                    self.stats.writes_unknown += 1;
                    return Phase::Idle { until_us: now };
                }
            };
            let seen = match (&w.op, &output) {
                (KvOp::Put(v), _) => Some(v.clone()),
                (KvOp::Delete, _) => None,
                (KvOp::Cas { new, .. }, KvOutput::Write { ok: true, .. }) => new.clone(),
                (_, KvOutput::Write { previous, .. }) => previous.clone(),
                (_, KvOutput::Read(v)) => v.clone(),
            };
            let client = &mut self.clients[i];
            client.seen.insert(w.key.clone(), seen);
            if let Some(client_id) = client.session {
                self.acked.push(AckedWrite {
                    client_id,
                    sequence: w.sequence,
                    at_us: now,
                });
            }
            self.history
                .push(HistoryOp::done(number, w.key, w.op, w.invoke, ret, output));
            self.stats.writes_acked += 1;
            return Phase::Idle {
                until_us: now + rng.gen_range(0..MAX_THINK_US),
            };
        }
        if let Some(e @ (Error::SessionExpired { .. } | Error::StaleSequence { .. })) =
            w.attempts.refused(c)
        {
            // The write may or may not have taken effect before the session
            // went; a new session starts afresh.
            c.note(format!("client {number}: write refused: {e}"));
            self.history
                .push(HistoryOp::unknown(number, w.key, w.op, w.invoke));
            self.stats.writes_unknown += 1;
            self.clients[i].session = None;
            return Phase::Idle { until_us: now };
        }
        let session = self.clients[i].session.map(|s| (s, w.sequence));
        let command = w.command.clone();
        self.attempt(&mut w.attempts, c, rng, |c, m| {
            c.propose(m, command, session)
        });
        Phase::Writing(w)
    }

    fn start_op(&mut self, i: usize, c: &mut Cluster, rng: &mut SmallRng) -> Phase {
        let now = c.now_us();
        if self.clients[i].session.is_none() {
            let mut a = Attempts::new(now);
            self.attempt(&mut a, c, rng, |c, m| c.register_client(m));
            return Phase::Registering(a);
        }
        let key = self.keys[rng.gen_range(0..self.keys.len())].clone();
        let roll = rng.gen_range(0..100);
        let invoke = self.tick_clock();
        let client = &mut self.clients[i];
        if roll < 35 {
            let lease = roll < 10;
            let member = Self::target(c, rng);
            let token = if lease {
                c.read_lease(member, &key)
            } else {
                c.read(member, &key)
            };
            return Phase::Reading {
                key,
                invoke,
                token,
                give_up_us: now + READ_TIMEOUT_US,
            };
        }
        client.sequence += 1;
        let value = format!("c{}s{}", client.number, client.sequence).into_bytes();
        let (op, command) = if roll < 65 {
            (KvOp::Put(value.clone()), KvCommand::put(key.clone(), value))
        } else if roll < 75 {
            (KvOp::Delete, KvCommand::delete(key.clone()))
        } else {
            let expected = client.seen.get(&key).cloned().flatten();
            let new = (roll < 95).then_some(value);
            (
                KvOp::Cas {
                    expected: expected.clone(),
                    new: new.clone(),
                },
                KvCommand::cas(key.clone(), expected, new),
            )
        };
        let mut w = PendingWrite {
            key,
            op,
            command: command.encode(),
            invoke,
            sequence: client.sequence,
            attempts: Attempts::new(now),
        };
        let session = client.session.map(|s| (s, w.sequence));
        let cmd = w.command.clone();
        self.attempt(&mut w.attempts, c, rng, |c, m| c.propose(m, cmd, session));
        Phase::Writing(w)
    }

    /// Records every write still pending as unknown (the run is over).
    pub(crate) fn abandon_pending(&mut self) {
        for i in 0..self.clients.len() {
            let phase = std::mem::replace(&mut self.clients[i].phase, Phase::Idle { until_us: 0 });
            if let Phase::Writing(w) = phase {
                let number = self.clients[i].number;
                self.history
                    .push(HistoryOp::unknown(number, w.key, w.op, w.invoke));
                self.stats.writes_unknown += 1;
            }
        }
    }

    /// Records a final read of `key` (client 0), taken after every other
    /// operation returned.
    pub(crate) fn record_final_read(&mut self, key: &[u8], value: Option<Vec<u8>>) {
        let invoke = self.tick_clock();
        let ret = self.tick_clock();
        self.history.push(HistoryOp::done(
            0,
            key.to_vec(),
            KvOp::Read,
            invoke,
            ret,
            KvOutput::Read(value),
        ));
    }
}
