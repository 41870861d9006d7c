//! Property: **linearizability** of the key-value client history.
//!
//! Wing and Gong's search with Lowe's memoization (the algorithm Porcupine
//! runs): repeatedly take the earliest pending call that can take effect
//! now, backtrack when a return is reached whose call was not linearized,
//! and never revisit a (set of linearized operations, state) pair.
//! Linearizability is local (Herlihy and Wing), so each key is checked on
//! its own, which keeps every search small.
//!
//! An operation whose outcome the client never learned has no return: it
//! may take effect at any point after its call, or never (placed last, its
//! effect is seen by nobody). A search that exceeds its step budget is
//! [`Verdict::Undecided`], which a run counts as a failure, never a pass.
//!
//! ```
//! use aoc_core::sim::check::{check_history, HistoryOp, KvOp, KvOutput, Verdict};
//!
//! // Client 1 writes "a"; afterwards client 2 reads nothing: not linearizable.
//! let history = vec![
//!     HistoryOp::done(1, "k", KvOp::Put(b"a".to_vec()), 0, 1,
//!         KvOutput::Write { ok: true, previous: None }),
//!     HistoryOp::done(2, "k", KvOp::Read, 2, 3, KvOutput::Read(None)),
//! ];
//! assert!(matches!(check_history(&history, 10_000), Verdict::Violation { .. }));
//! ```

use std::collections::{BTreeMap, HashSet};
use std::fmt;

/// A key-value operation, as the client issued it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KvOp {
    /// Sets the key.
    Put(Vec<u8>),
    /// Removes the key.
    Delete,
    /// Compare-and-swap (`None`: absent).
    Cas {
        /// The value the key must have.
        expected: Option<Vec<u8>>,
        /// The value to set.
        new: Option<Vec<u8>>,
    },
    /// Reads the key.
    Read,
}

/// What the client was told.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KvOutput {
    /// A write's response (see `KvResponse`).
    Write {
        /// put: true; delete: the key existed; cas: it swapped.
        ok: bool,
        /// The value before the write.
        previous: Option<Vec<u8>>,
    },
    /// A read's value.
    Read(Option<Vec<u8>>),
}

/// One operation of a history. `invoke` and `ret` are positions on one
/// logical clock shared by all clients (the order in which the clients saw
/// their calls and answers); `ret` is `None` when the outcome is unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryOp {
    /// The client that issued it.
    pub client: u64,
    /// The key.
    pub key: Vec<u8>,
    /// The operation.
    pub op: KvOp,
    /// When it was called.
    pub invoke: u64,
    /// When it returned (`None`: never learned).
    pub ret: Option<u64>,
    /// What it returned (`None` with `ret`).
    pub output: Option<KvOutput>,
}

impl HistoryOp {
    /// A completed operation.
    pub fn done(
        client: u64,
        key: impl Into<Vec<u8>>,
        op: KvOp,
        invoke: u64,
        ret: u64,
        output: KvOutput,
    ) -> Self {
        HistoryOp {
            client,
            key: key.into(),
            op,
            invoke,
            ret: Some(ret),
            output: Some(output),
        }
    }

    /// An operation whose outcome the client never learned.
    pub fn unknown(client: u64, key: impl Into<Vec<u8>>, op: KvOp, invoke: u64) -> Self {
        HistoryOp {
            client,
            key: key.into(),
            op,
            invoke,
            ret: None,
            output: None,
        }
    }
}

impl fmt::Display for HistoryOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<Vec<u8>>| match v {
            Some(v) => String::from_utf8_lossy(v).into_owned(),
            None => "-".to_string(),
        };
        let op = match &self.op {
            KvOp::Put(v) => format!("put({})", String::from_utf8_lossy(v)),
            KvOp::Delete => "delete".to_string(),
            KvOp::Cas { expected, new } => format!("cas({} -> {})", show(expected), show(new)),
            KvOp::Read => "read".to_string(),
        };
        let out = match &self.output {
            Some(KvOutput::Write { ok, previous }) => {
                format!("ok={ok} previous={}", show(previous))
            }
            Some(KvOutput::Read(v)) => format!("value={}", show(v)),
            None => "unknown".to_string(),
        };
        let ret = self.ret.map_or("?".to_string(), |r| r.to_string());
        write!(
            f,
            "client {} {} {op} [{}..{ret}] -> {out}",
            self.client,
            String::from_utf8_lossy(&self.key),
            self.invoke
        )
    }
}

/// The checker's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every key's history has a linearization.
    Linearizable,
    /// A key's history has none.
    Violation {
        /// The key.
        key: Vec<u8>,
        /// What the search could not place.
        detail: String,
    },
    /// The search ran out of its step budget on a key: not decided, and a
    /// run must count it as failed.
    Undecided {
        /// The key.
        key: Vec<u8>,
        /// The budget spent.
        steps: u64,
    },
}

/// The state after `op` (with `output`, if known) from `state`, or `None`
/// when the output contradicts the state.
fn step(state: &Option<Vec<u8>>, op: &KvOp, output: Option<&KvOutput>) -> Option<Option<Vec<u8>>> {
    let (expected_output, next) = match op {
        KvOp::Put(v) => (
            KvOutput::Write {
                ok: true,
                previous: state.clone(),
            },
            Some(v.clone()),
        ),
        KvOp::Delete => (
            KvOutput::Write {
                ok: state.is_some(),
                previous: state.clone(),
            },
            None,
        ),
        KvOp::Cas { expected, new } => {
            let ok = state == expected;
            (
                KvOutput::Write {
                    ok,
                    previous: state.clone(),
                },
                if ok { new.clone() } else { state.clone() },
            )
        }
        KvOp::Read => (KvOutput::Read(state.clone()), state.clone()),
    };
    match output {
        Some(o) if *o != expected_output => None,
        _ => Some(next),
    }
}

/// Checks a whole history, key by key, spending at most `budget_steps`
/// search steps on each key.
pub fn check_history(history: &[HistoryOp], budget_steps: u64) -> Verdict {
    let mut by_key: BTreeMap<&[u8], Vec<&HistoryOp>> = BTreeMap::new();
    for op in history {
        by_key.entry(&op.key).or_default().push(op);
    }
    for (key, ops) in by_key {
        match check_key(&ops, budget_steps) {
            Ok(()) => {}
            Err(KeyFailure::Violation(detail)) => {
                return Verdict::Violation {
                    key: key.to_vec(),
                    detail,
                }
            }
            Err(KeyFailure::Undecided(steps)) => {
                return Verdict::Undecided {
                    key: key.to_vec(),
                    steps,
                }
            }
        }
    }
    Verdict::Linearizable
}

enum KeyFailure {
    Violation(String),
    Undecided(u64),
}

const NONE: usize = usize::MAX;

/// The event list of one key: calls and returns in clock order, as a
/// doubly linked list so that linearized operations can be lifted out and
/// put back in O(1).
struct Events {
    /// (operation, is a call)
    kind: Vec<(usize, bool)>,
    prev: Vec<usize>,
    next: Vec<usize>,
    /// Per operation: (its call's event, its return's event).
    of_op: Vec<(usize, usize)>,
    head: usize,
}

impl Events {
    fn new(ops: &[&HistoryOp]) -> Self {
        // (time, is a return, op): a call and a return at the same clock
        // position cannot happen (one clock); unknown returns go last.
        let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            order.push((op.invoke, false, i));
            order.push((op.ret.unwrap_or(u64::MAX), true, i));
        }
        order.sort_unstable();
        let n = order.len();
        // Event 0 is the head sentinel.
        let mut kind = vec![(NONE, false)];
        let mut of_op = vec![(NONE, NONE); ops.len()];
        for (pos, (_, is_ret, op)) in order.into_iter().enumerate() {
            kind.push((op, !is_ret));
            if is_ret {
                of_op[op].1 = pos + 1;
            } else {
                of_op[op].0 = pos + 1;
            }
        }
        let prev = (0..=n).map(|i| if i == 0 { NONE } else { i - 1 }).collect();
        let next = (0..=n).map(|i| if i == n { NONE } else { i + 1 }).collect();
        Events {
            kind,
            prev,
            next,
            of_op,
            head: 0,
        }
    }

    fn unlink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = n;
        if n != NONE {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        if n != NONE {
            self.prev[n] = e;
        }
    }

    /// Takes operation `op` (call and return) out of the list.
    fn lift(&mut self, op: usize) {
        let (call, ret) = self.of_op[op];
        self.unlink(call);
        self.unlink(ret);
    }

    /// Puts operation `op` back (the reverse of `lift`).
    fn unlift(&mut self, op: usize) {
        let (call, ret) = self.of_op[op];
        self.relink(ret);
        self.relink(call);
    }
}

fn check_key(ops: &[&HistoryOp], budget_steps: u64) -> Result<(), KeyFailure> {
    let mut ev = Events::new(ops);
    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, Option<Vec<u8>>)> = HashSet::new();
    let mut state: Option<Vec<u8>> = None;
    let mut stack: Vec<(usize, Option<Vec<u8>>)> = Vec::new();
    let mut deepest = 0usize;
    let mut stuck_at = NONE;
    let mut steps = 0u64;
    let mut entry = ev.next[ev.head];
    while ev.next[ev.head] != NONE {
        steps += 1;
        if steps > budget_steps {
            return Err(KeyFailure::Undecided(steps));
        }
        debug_assert!(entry != NONE, "a non-empty list always has a return left");
        let (op, is_call) = ev.kind[entry];
        if is_call {
            let h = ops[op];
            if let Some(next) = step(&state, &h.op, h.output.as_ref()) {
                let mut with = linearized.clone();
                with[op / 64] |= 1 << (op % 64);
                if seen.insert((with.clone(), next.clone())) {
                    stack.push((op, std::mem::replace(&mut state, next)));
                    linearized = with;
                    ev.lift(op);
                    entry = ev.next[ev.head];
                    continue;
                }
            }
            entry = ev.next[entry];
        } else {
            // A return whose call was not linearized: undo the last choice.
            if stack.len() >= deepest {
                deepest = stack.len();
                stuck_at = op;
            }
            let Some((undo, before)) = stack.pop() else {
                let what = ops.get(stuck_at).map(|o| o.to_string()).unwrap_or_default();
                return Err(KeyFailure::Violation(format!(
                    "{} operations; at most {deepest} linearize, then none fits: {what}",
                    ops.len()
                )));
            };
            state = before;
            linearized[undo / 64] &= !(1 << (undo % 64));
            ev.unlift(undo);
            entry = ev.next[ev.of_op[undo].0];
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(c: u64, v: &str, i: u64, r: u64, prev: Option<&str>) -> HistoryOp {
        HistoryOp::done(
            c,
            "k",
            KvOp::Put(v.into()),
            i,
            r,
            KvOutput::Write {
                ok: true,
                previous: prev.map(Into::into),
            },
        )
    }

    fn read(c: u64, v: Option<&str>, i: u64, r: u64) -> HistoryOp {
        HistoryOp::done(c, "k", KvOp::Read, i, r, KvOutput::Read(v.map(Into::into)))
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = vec![
            put(1, "a", 0, 1, None),
            read(2, Some("a"), 2, 3),
            put(2, "b", 4, 5, Some("a")),
            read(1, Some("b"), 6, 7),
        ];
        assert_eq!(check_history(&h, 1000), Verdict::Linearizable);
    }

    #[test]
    fn a_stale_read_after_a_write_returned_is_a_violation() {
        let h = vec![
            put(1, "a", 0, 1, None),
            put(1, "b", 2, 3, Some("a")),
            read(2, Some("a"), 4, 5),
        ];
        match check_history(&h, 1000) {
            Verdict::Violation { key, detail } => {
                assert_eq!(key, b"k");
                assert!(detail.contains("read"), "{detail}");
            }
            v => panic!("expected a violation, got {v:?}"),
        }
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        // The read overlaps both writes and sees the first one: the second
        // write took effect after it.
        let h = vec![
            put(1, "a", 0, 5, None),
            put(2, "b", 1, 6, Some("a")),
            read(3, Some("a"), 2, 3),
        ];
        assert_eq!(check_history(&h, 1000), Verdict::Linearizable);
        // Each write saw the other as previous: impossible.
        let h = vec![put(1, "a", 0, 5, Some("b")), put(2, "b", 1, 6, Some("a"))];
        assert!(matches!(check_history(&h, 1000), Verdict::Violation { .. }));
    }

    #[test]
    fn an_unknown_write_may_take_effect_late_or_never() {
        let unknown = HistoryOp::unknown(1, "k", KvOp::Put(b"x".to_vec()), 0);
        // Seen by a read much later.
        let h = vec![
            unknown.clone(),
            read(2, None, 1, 2),
            read(2, Some("x"), 9, 10),
        ];
        assert_eq!(check_history(&h, 1000), Verdict::Linearizable);
        // Never seen.
        let h = vec![unknown.clone(), read(2, None, 9, 10)];
        assert_eq!(check_history(&h, 1000), Verdict::Linearizable);
        // But not before it was called.
        let h = vec![
            read(2, Some("x"), 0, 1),
            HistoryOp::unknown(1, "k", KvOp::Put(b"x".to_vec()), 2),
        ];
        assert!(matches!(check_history(&h, 1000), Verdict::Violation { .. }));
    }

    #[test]
    fn cas_and_delete_outputs_are_checked() {
        let cas = |c, exp: Option<&str>, new: Option<&str>, i, r, ok, prev: Option<&str>| {
            HistoryOp::done(
                c,
                "k",
                KvOp::Cas {
                    expected: exp.map(Into::into),
                    new: new.map(Into::into),
                },
                i,
                r,
                KvOutput::Write {
                    ok,
                    previous: prev.map(Into::into),
                },
            )
        };
        let del = HistoryOp::done(
            1,
            "k",
            KvOp::Delete,
            4,
            5,
            KvOutput::Write {
                ok: true,
                previous: Some(b"b".to_vec()),
            },
        );
        let h = vec![
            cas(1, None, Some("a"), 0, 1, true, None),
            cas(2, Some("a"), Some("b"), 2, 3, true, Some("a")),
            del.clone(),
            read(2, None, 6, 7),
        ];
        assert_eq!(check_history(&h, 1000), Verdict::Linearizable);
        // A cas that claims success against a value it did not find.
        let h = vec![
            cas(1, None, Some("a"), 0, 1, true, None),
            cas(2, None, Some("b"), 2, 3, true, None),
        ];
        assert!(matches!(check_history(&h, 1000), Verdict::Violation { .. }));
    }

    #[test]
    fn keys_are_checked_separately_and_the_budget_is_enforced() {
        let mut h = vec![put(1, "a", 0, 1, None)];
        let mut other = read(2, Some("zzz"), 2, 3);
        other.key = b"other".to_vec();
        h.push(other);
        match check_history(&h, 1000) {
            Verdict::Violation { key, .. } => assert_eq!(key, b"other"),
            v => panic!("expected a violation on key other, got {v:?}"),
        }
        // Many concurrent unknown writes and a budget of a few steps.
        let mut h: Vec<HistoryOp> = (0..12)
            .map(|i| HistoryOp::unknown(i, "k", KvOp::Put(vec![i as u8]), i))
            .collect();
        h.push(read(99, Some("never"), 100, 101));
        assert!(matches!(check_history(&h, 50), Verdict::Undecided { .. }));
    }
}
