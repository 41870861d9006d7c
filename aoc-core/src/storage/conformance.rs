//! The conformance suite every [`LogStore`] must pass.
//!
//! Each check takes a factory that makes a FRESH, empty store (a new
//! directory for a store on disk) and panics, like an assertion, naming the
//! contract clause (see [`LogStore`] and [`LogWrite`]) it found broken.
//! [`log_store`] runs them all; [`survives_reopen`] also needs a function
//! that closes a store and opens it again on the same storage.
//!
//! ```
//! use aoc_core::storage::{conformance, MemLogStore};
//! conformance::log_store(MemLogStore::new);
//! // Clones of a MemLogStore share their contents: a clone is a reopen.
//! conformance::survives_reopen(MemLogStore::new, |s: MemLogStore| s.clone());
//! ```

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, SnapshotMetadata};
use raft::StorageError;

use super::{LogStore, LogWrite};

/// Runs every check below on fresh stores from `fresh`.
pub fn log_store<S: LogStore>(mut fresh: impl FnMut() -> S) {
    fresh_store(&mut fresh);
    append_and_read(&mut fresh);
    conflicting_append_truncates(&mut fresh);
    hard_and_conf_state(&mut fresh);
    snapshot_install(&mut fresh);
    compaction(&mut fresh);
    entries_size_limit(&mut fresh);
    merge_equals_two_writes(&mut fresh);
    member_meta(&mut fresh);
}

/// The member's metadata: default on a fresh store, replaced by each write
/// that carries it, kept by writes that do not and by a snapshot install.
pub fn member_meta<S: LogStore>(fresh: &mut impl FnMut() -> S) {
    let s = fresh();
    assert_eq!(
        s.member_meta().expect("member_meta() answers"),
        crate::proto::MemberMeta::default(),
        "a fresh store has default member metadata"
    );
    let mut m = crate::proto::MemberMeta::new();
    m.maintenance = true;
    m.maintenance_allowed = 2;
    m.maintenance_since_ms = 77;
    write(
        &s,
        &LogWrite {
            entries: entries(1..=3, 1),
            member_meta: Some(m.clone()),
            ..Default::default()
        },
        "member_meta",
    );
    assert_eq!(
        s.member_meta().unwrap(),
        m,
        "a write carrying member metadata stores it"
    );
    write(
        &s,
        &LogWrite {
            entries: entries(4..=4, 1),
            ..Default::default()
        },
        "member_meta",
    );
    assert_eq!(
        s.member_meta().unwrap(),
        m,
        "a write without member metadata keeps it"
    );
    let mut meta = SnapshotMetadata {
        index: 10,
        term: 2,
        ..Default::default()
    };
    meta.set_conf_state(conf_state(&[1, 2, 3], &[]));
    write(
        &s,
        &LogWrite {
            snapshot: Some(meta),
            ..Default::default()
        },
        "member_meta",
    );
    assert_eq!(
        s.member_meta().unwrap(),
        m,
        "a snapshot install keeps member metadata"
    );
}

/// Everything a store exposes: what must agree between two stores that
/// hold the same log (and between a store and itself after a reopen).
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// `first_index()`.
    pub first_index: u64,
    /// `last_index()`.
    pub last_index: u64,
    /// `term(i)` for `first_index() - 1 <= i <= last_index()`.
    pub terms: Vec<u64>,
    /// `entries(first_index(), last_index() + 1, None)`.
    pub entries: Vec<Entry>,
    /// `initial_state().hard_state`.
    pub hard_state: HardState,
    /// `initial_state().conf_state`.
    pub conf_state: ConfState,
    /// `snapshot_metadata()`.
    pub snapshot_metadata: SnapshotMetadata,
    /// `member_meta()`.
    pub member_meta: crate::proto::MemberMeta,
}

/// Reads everything `store` exposes; panics if a read the contract
/// promises fails.
pub fn observe<S: LogStore>(store: &S) -> Observed {
    let first_index = store.first_index().expect("first_index() answers");
    let last_index = store.last_index().expect("last_index() answers");
    assert!(
        first_index <= last_index + 1,
        "first_index() <= last_index() + 1 (got {first_index} and {last_index})"
    );
    let terms = (first_index - 1..=last_index)
        .map(|i| {
            store.term(i).unwrap_or_else(|e| {
                panic!(
                    "term(i) answers for first_index() - 1 <= i <= last_index(): term({i}) = {e}"
                )
            })
        })
        .collect();
    let entries = store
        .entries(first_index, last_index + 1, None)
        .expect("entries(first_index(), last_index() + 1, None) answers");
    let state = store.initial_state().expect("initial_state() answers");
    Observed {
        first_index,
        last_index,
        terms,
        entries,
        hard_state: state.hard_state,
        conf_state: state.conf_state,
        snapshot_metadata: metadata(store),
        member_meta: store.member_meta().expect("member_meta() answers"),
    }
}

/// `snapshot_metadata()`, with its conf state always set (an unset and a
/// default conf state mean the same).
fn metadata<S: LogStore>(store: &S) -> SnapshotMetadata {
    let meta = store
        .snapshot_metadata()
        .expect("snapshot_metadata() answers");
    snapshot(meta.index, meta.term, meta.get_conf_state().clone())
}

/// An entry whose data names its index and term (so that an entry
/// overwritten by a later term reads differently).
pub fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: format!("entry {index} of term {term}").into_bytes().into(),
        ..Default::default()
    }
}

/// Entries `indexes`, all of term `term`.
pub fn entries(indexes: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
    indexes.map(|i| entry(i, term)).collect()
}

fn append(entries: Vec<Entry>) -> LogWrite {
    LogWrite {
        entries,
        ..Default::default()
    }
}

fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
    HardState {
        term,
        vote,
        commit,
        ..Default::default()
    }
}

fn conf_state(voters: &[u64], learners: &[u64]) -> ConfState {
    ConfState {
        voters: voters.to_vec(),
        learners: learners.to_vec(),
        ..Default::default()
    }
}

fn snapshot(index: u64, term: u64, cs: ConfState) -> SnapshotMetadata {
    let mut meta = SnapshotMetadata {
        index,
        term,
        ..Default::default()
    };
    meta.set_conf_state(cs);
    meta
}

fn write<S: LogStore>(store: &S, w: &LogWrite, clause: &str) {
    if let Err(e) = store.write(w) {
        panic!("{clause}: write failed: {e}");
    }
}

fn is_compacted<T>(r: &raft::Result<T>) -> bool {
    matches!(r, Err(raft::Error::Store(StorageError::Compacted)))
}

fn is_unavailable<T>(r: &raft::Result<T>) -> bool {
    matches!(r, Err(raft::Error::Store(StorageError::Unavailable)))
}

fn assert_compacted<T: std::fmt::Debug>(r: raft::Result<T>, clause: &str) {
    assert!(is_compacted(&r), "{clause}: expected Compacted, got {r:?}");
}

fn assert_unavailable<T: std::fmt::Debug>(r: raft::Result<T>, clause: &str) {
    assert!(
        is_unavailable(&r),
        "{clause}: expected Unavailable, got {r:?}"
    );
}

fn read<S: LogStore>(store: &S, low: u64, high: u64, max: Option<u64>, clause: &str) -> Vec<Entry> {
    store
        .entries(low, high, max)
        .unwrap_or_else(|e| panic!("{clause}: entries({low}, {high}, {max:?}) failed: {e}"))
}

/// A fresh store has `first_index() == 1`, `last_index() == 0`, default
/// hard state, conf state and snapshot metadata, and `term(0) == 0`; an
/// empty write changes nothing.
pub fn fresh_store<S: LogStore>(mut fresh: impl FnMut() -> S) {
    let s = fresh();
    let clause = "a fresh store";
    assert_eq!(
        s.first_index().ok(),
        Some(1),
        "{clause} has first_index() == 1"
    );
    assert_eq!(
        s.last_index().ok(),
        Some(0),
        "{clause} has last_index() == 0"
    );
    let state = s.initial_state().expect("initial_state() answers");
    assert_eq!(
        state.hard_state,
        HardState::default(),
        "{clause} has the default hard state"
    );
    assert_eq!(
        state.conf_state,
        ConfState::default(),
        "{clause} has the default conf state"
    );
    assert_eq!(s.term(0).ok(), Some(0), "{clause} has term(0) == 0");
    assert_unavailable(s.term(1), "term() above last_index() answers Unavailable");
    assert!(
        read(&s, 1, 1, None, clause).is_empty(),
        "{clause}: entries(1, 1) is empty"
    );
    assert_unavailable(
        s.entries(1, 2, None),
        "entries() above last_index() answer Unavailable",
    );
    assert_eq!(
        metadata(&s),
        snapshot(0, 0, ConfState::default()),
        "{clause} has default snapshot metadata"
    );
    let before = observe(&s);
    write(&s, &LogWrite::default(), "an empty write");
    assert_eq!(observe(&s), before, "an empty write changes nothing");
}

/// Appended entries read back as written: `first_index`, `last_index`,
/// `term` and `entries` over any range; reads below the log answer
/// `Compacted`, above it `Unavailable`.
pub fn append_and_read<S: LogStore>(mut fresh: impl FnMut() -> S) {
    let s = fresh();
    let mut all = entries(1..=5, 1);
    all.extend(entries(6..=8, 2));
    write(&s, &append(all[..5].to_vec()), "append");
    write(&s, &append(all[5..].to_vec()), "append at last_index() + 1");
    let clause = "appended entries read back";
    assert_eq!(
        s.first_index().ok(),
        Some(1),
        "{clause}: first_index() stays 1"
    );
    assert_eq!(
        s.last_index().ok(),
        Some(8),
        "{clause}: last_index() is the last appended"
    );
    for e in &all {
        assert_eq!(
            s.term(e.index).ok(),
            Some(e.term),
            "{clause}: term({})",
            e.index
        );
    }
    assert_eq!(s.term(0).ok(), Some(0), "term(first_index() - 1) answers");
    assert_eq!(read(&s, 1, 9, None, clause), all, "{clause}: entries(1, 9)");
    assert_eq!(
        read(&s, 3, 7, None, clause),
        all[2..6].to_vec(),
        "{clause}: entries(3, 7)"
    );
    assert!(
        read(&s, 9, 9, None, clause).is_empty(),
        "{clause}: entries(9, 9) is empty"
    );
    assert_unavailable(s.term(9), "term() above last_index() answers Unavailable");
    assert_compacted(
        s.entries(0, 2, None),
        "entries() below first_index() answer Compacted",
    );
    assert_unavailable(
        s.entries(5, 10, None),
        "entries() above last_index() answer Unavailable",
    );
}

/// An append whose first index is at or below `last_index()` replaces every
/// stored entry from that index on, including entries beyond the new last.
pub fn conflicting_append_truncates<S: LogStore>(mut fresh: impl FnMut() -> S) {
    let clause = "an append truncates every stored entry at or above its first index";
    let s = fresh();
    write(&s, &append(entries(1..=10, 1)), clause);
    write(&s, &append(entries(6..=7, 2)), clause);
    assert_eq!(
        s.last_index().ok(),
        Some(7),
        "{clause}: last_index() is the new last"
    );
    assert_eq!(s.term(5).ok(), Some(1), "{clause}: entries below stay");
    assert_eq!(
        s.term(6).ok(),
        Some(2),
        "{clause}: term of a replaced entry"
    );
    assert_unavailable(
        s.term(8),
        &format!("{clause}: an entry beyond the new last is gone"),
    );
    assert_unavailable(
        s.entries(6, 9, None),
        &format!("{clause}: entries beyond the new last are gone"),
    );
    let mut expected = entries(1..=5, 1);
    expected.extend(entries(6..=7, 2));
    assert_eq!(
        read(&s, 1, 8, None, clause),
        expected,
        "{clause}: entries(1, 8)"
    );
    write(&s, &append(entries(8..=8, 2)), clause);
    assert_eq!(
        read(&s, 8, 9, None, clause),
        entries(8..=8, 2),
        "{clause}: the log grows again from the new last"
    );
    write(&s, &append(entries(1..=2, 3)), clause);
    assert_eq!(
        s.last_index().ok(),
        Some(2),
        "{clause}: an append at first_index() replaces all"
    );
    assert_eq!(
        read(&s, 1, 3, None, clause),
        entries(1..=2, 3),
        "{clause}: entries(1, 3)"
    );
}

/// Hard state and conf state read back as last written, each independently
/// of the other and of entries written with them.
pub fn hard_and_conf_state<S: LogStore>(mut fresh: impl FnMut() -> S) {
    let clause = "hard state and conf state round trip";
    let s = fresh();
    let hs1 = hard_state(3, 2, 0);
    write(
        &s,
        &LogWrite {
            hard_state: Some(hs1.clone()),
            ..Default::default()
        },
        clause,
    );
    let state = s.initial_state().expect("initial_state() answers");
    assert_eq!(state.hard_state, hs1, "{clause}: hard state");
    assert_eq!(
        state.conf_state,
        ConfState::default(),
        "{clause}: conf state untouched"
    );

    let cs1 = conf_state(&[1, 2, 3], &[4]);
    write(
        &s,
        &LogWrite {
            conf_state: Some(cs1.clone()),
            ..Default::default()
        },
        clause,
    );
    let state = s.initial_state().expect("initial_state() answers");
    assert_eq!(
        state.hard_state, hs1,
        "{clause}: hard state untouched by a conf state write"
    );
    assert_eq!(state.conf_state, cs1, "{clause}: conf state");

    let hs2 = hard_state(3, 2, 2);
    write(
        &s,
        &LogWrite {
            entries: entries(1..=3, 3),
            hard_state: Some(hs2.clone()),
            ..Default::default()
        },
        clause,
    );
    let state = s.initial_state().expect("initial_state() answers");
    assert_eq!(
        state.hard_state, hs2,
        "{clause}: hard state written with entries"
    );
    assert_eq!(
        state.conf_state, cs1,
        "{clause}: conf state untouched by entries"
    );
    assert_eq!(
        s.last_index().ok(),
        Some(3),
        "{clause}: entries written with a hard state"
    );

    let joint = ConfState {
        voters: vec![1, 2, 3],
        voters_outgoing: vec![1, 2, 5],
        learners: vec![4],
        learners_next: vec![5],
        auto_leave: true,
        ..Default::default()
    };
    write(
        &s,
        &LogWrite {
            conf_state: Some(joint.clone()),
            ..Default::default()
        },
        clause,
    );
    let state = s.initial_state().expect("initial_state() answers");
    assert_eq!(state.conf_state, joint, "{clause}: a joint conf state");
    assert_eq!(state.hard_state, hs2, "{clause}: hard state untouched");
}

/// Installing a snapshot empties the log: it restarts after the
/// snapshot's index, `term(index)` is the snapshot's term, the conf state
/// is the snapshot's, and entries written with it follow it.
pub fn snapshot_install<S: LogStore>(mut fresh: impl FnMut() -> S) {
    let clause = "a snapshot empties the log, which restarts after its index";
    let s = fresh();
    let hs = hard_state(2, 1, 25);
    write(
        &s,
        &LogWrite {
            entries: entries(1..=30, 2),
            hard_state: Some(hs.clone()),
            conf_state: Some(conf_state(&[1, 2, 3], &[])),
            ..Default::default()
        },
        clause,
    );
    let cs = conf_state(&[1, 2], &[3]);
    let meta = snapshot(20, 4, cs.clone());
    write(
        &s,
        &LogWrite {
            snapshot: Some(meta.clone()),
            ..Default::default()
        },
        clause,
    );
    assert_eq!(
        s.first_index().ok(),
        Some(21),
        "{clause}: first_index() = index + 1"
    );
    assert_eq!(
        s.last_index().ok(),
        Some(20),
        "{clause}: last_index() = index (entries above it are gone)"
    );
    assert_eq!(
        s.term(20).ok(),
        Some(4),
        "{clause}: term(index) is the snapshot's term"
    );
    assert_compacted(
        s.term(19),
        &format!("{clause}: term() below it answers Compacted"),
    );
    assert_unavailable(
        s.term(21),
        &format!("{clause}: term() above it answers Unavailable"),
    );
    assert!(
        read(&s, 21, 21, None, clause).is_empty(),
        "{clause}: entries(21, 21) is empty"
    );
    assert_compacted(
        s.entries(20, 21, None),
        &format!("{clause}: entries at the snapshot index answer Compacted"),
    );
    assert_unavailable(
        s.entries(21, 22, None),
        &format!("{clause}: old entries above the index are gone"),
    );
    let state = s.initial_state().expect("initial_state() answers");
    assert_eq!(
        state.conf_state, cs,
        "{clause}: the conf state is the snapshot's"
    );
    assert_eq!(
        state.hard_state, hs,
        "{clause}: the hard state is untouched"
    );
    assert_eq!(metadata(&s), meta, "{clause}: snapshot_metadata()");

    write(&s, &append(entries(21..=22, 4)), clause);
    assert_eq!(
        read(&s, 21, 23, None, clause),
        entries(21..=22, 4),
        "{clause}: appends follow it"
    );

    // A snapshot ahead of the whole log, with entries and a hard state in
    // the same write.
    let s = fresh();
    write(&s, &append(entries(1..=3, 1)), clause);
    let hs = hard_state(5, 2, 50);
    let meta = snapshot(50, 5, conf_state(&[1, 2, 3], &[]));
    write(
        &s,
        &LogWrite {
            snapshot: Some(meta.clone()),
            entries: entries(51..=52, 5),
            hard_state: Some(hs.clone()),
            ..Default::default()
        },
        clause,
    );
    assert_eq!(
        s.first_index().ok(),
        Some(51),
        "{clause}: first_index() after a snapshot ahead of the log"
    );
    assert_eq!(
        s.last_index().ok(),
        Some(52),
        "{clause}: entries written with the snapshot follow it"
    );
    assert_eq!(s.term(50).ok(), Some(5), "{clause}: term(index)");
    assert_compacted(s.term(3), &format!("{clause}: old entries are compacted"));
    assert_eq!(
        read(&s, 51, 53, None, clause),
        entries(51..=52, 5),
        "{clause}: entries(51, 53)"
    );
    assert_eq!(
        s.initial_state()
            .expect("initial_state() answers")
            .hard_state,
        hs,
        "{clause}: hard state"
    );
    assert_eq!(metadata(&s), meta, "{clause}: snapshot_metadata()");
}

/// `compact(i)` discards entries up to `i` only, keeps the term of `i` as
/// the compaction point, is a no-op below `first_index()`, and reads below
/// the new first index answer `Compacted`.
pub fn compaction<S: LogStore>(mut fresh: impl FnMut() -> S) {
    let clause = "compaction keeps the term of the compaction point";
    let s = fresh();
    let mut log = entries(1..=3, 1);
    log.extend(entries(4..=6, 2));
    log.extend(entries(7..=10, 3));
    let cs = conf_state(&[1, 2, 3], &[]);
    write(
        &s,
        &LogWrite {
            entries: log.clone(),
            conf_state: Some(cs.clone()),
            ..Default::default()
        },
        clause,
    );
    s.compact(5)
        .unwrap_or_else(|e| panic!("{clause}: compact(5) failed: {e}"));
    assert_eq!(
        s.first_index().ok(),
        Some(6),
        "{clause}: first_index() = i + 1"
    );
    assert_eq!(
        s.last_index().ok(),
        Some(10),
        "compact() never discards an entry above its argument"
    );
    assert_eq!(s.term(5).ok(), Some(2), "{clause}: term(i)");
    assert_compacted(
        s.term(4),
        "term() below the compaction point answers Compacted",
    );
    assert_compacted(
        s.entries(5, 7, None),
        "entries() below first_index() answer Compacted",
    );
    assert_unavailable(s.term(11), "term() above last_index() answers Unavailable");
    assert_eq!(
        read(&s, 6, 11, None, clause),
        log[5..].to_vec(),
        "compact() never discards an entry above its argument"
    );
    let meta = metadata(&s);
    assert_eq!(
        (meta.index, meta.term),
        (5, 2),
        "{clause}: snapshot_metadata() is the compaction point"
    );
    assert_eq!(
        meta.get_conf_state(),
        &cs,
        "{clause}: snapshot_metadata() carries the conf state"
    );

    s.compact(3)
        .unwrap_or_else(|e| panic!("compact() below first_index() is a no-op: {e}"));
    s.compact(5)
        .unwrap_or_else(|e| panic!("compact() below first_index() is a no-op: {e}"));
    assert_eq!(
        s.first_index().ok(),
        Some(6),
        "compact() below first_index() is a no-op"
    );

    s.compact(10)
        .unwrap_or_else(|e| panic!("{clause}: compact(last_index()) failed: {e}"));
    assert_eq!(
        (s.first_index().ok(), s.last_index().ok()),
        (Some(11), Some(10)),
        "{clause}: compacting everything"
    );
    assert_eq!(
        s.term(10).ok(),
        Some(3),
        "{clause}: term(i) when the log is empty"
    );
    assert!(
        read(&s, 11, 11, None, clause).is_empty(),
        "{clause}: entries(11, 11) is empty"
    );
    write(
        &s,
        &append(entries(11..=12, 3)),
        "appending after compaction",
    );
    assert_eq!(
        read(&s, 11, 13, None, clause),
        entries(11..=12, 3),
        "appending after compaction"
    );
    assert_eq!(
        s.term(10).ok(),
        Some(3),
        "{clause}: term(first_index() - 1) after appends"
    );
}

/// `entries(.., max_size)` returns at least one entry, then as many as fit
/// in `max_size` bytes (as raft-rs counts them: `compute_size()`).
pub fn entries_size_limit<S: LogStore>(mut fresh: impl FnMut() -> S) {
    let clause = "entries() returns at least one entry, then at most max_size bytes";
    let s = fresh();
    let log: Vec<Entry> = (1..=5)
        .map(|i| Entry {
            data: vec![i as u8; 100].into(),
            ..entry(i, 1)
        })
        .collect();
    write(&s, &append(log.clone()), clause);
    let size = |n: usize| -> u64 { log[..n].iter().map(|e| u64::from(e.compute_size())).sum() };
    assert_eq!(
        read(&s, 1, 6, Some(0), clause).len(),
        1,
        "{clause}: max_size 0 returns one"
    );
    assert_eq!(
        read(&s, 1, 6, Some(size(2)), clause),
        log[..2].to_vec(),
        "{clause}: exactly two fit"
    );
    assert_eq!(
        read(&s, 1, 6, Some(size(2) - 1), clause).len(),
        1,
        "{clause}: one byte short of two"
    );
    assert_eq!(
        read(&s, 2, 6, Some(size(3)), clause),
        log[1..4].to_vec(),
        "{clause}: from the middle"
    );
    assert_eq!(
        read(&s, 1, 6, Some(u64::MAX), clause),
        log,
        "{clause}: no limit"
    );
    assert_eq!(
        read(&s, 1, 6, None, clause),
        log,
        "{clause}: None means no limit"
    );
}

/// `a.merge(b)` written once leaves the store exactly as writing `a` then
/// `b` does (group commit across readies).
pub fn merge_equals_two_writes<S: LogStore>(mut fresh: impl FnMut() -> S) {
    let base = || append(entries(1..=5, 1));
    let cs_a = conf_state(&[1, 2, 3], &[]);
    let cs_b = conf_state(&[1, 2], &[3]);
    let cases: Vec<(&str, LogWrite, LogWrite, LogWrite)> = vec![
        (
            "overlapping appends with hard states",
            base(),
            LogWrite {
                number: 1,
                entries: entries(6..=8, 1),
                hard_state: Some(hard_state(1, 1, 5)),
                ..Default::default()
            },
            LogWrite {
                number: 2,
                entries: entries(7..=9, 2),
                hard_state: Some(hard_state(2, 2, 6)),
                ..Default::default()
            },
        ),
        (
            "a later append below the earlier one",
            base(),
            LogWrite {
                entries: entries(6..=8, 1),
                ..Default::default()
            },
            LogWrite {
                entries: entries(4..=5, 2),
                ..Default::default()
            },
        ),
        (
            "pure extension",
            base(),
            append(entries(6..=8, 1)),
            append(entries(9..=10, 1)),
        ),
        (
            "a full rewrite of the log",
            LogWrite::default(),
            append(entries(1..=3, 1)),
            append(entries(1..=2, 2)),
        ),
        (
            "hard state then conf state",
            base(),
            LogWrite {
                hard_state: Some(hard_state(1, 1, 3)),
                ..Default::default()
            },
            LogWrite {
                conf_state: Some(cs_a.clone()),
                ..Default::default()
            },
        ),
        (
            "a snapshot with entries, then an overlapping append",
            base(),
            LogWrite {
                snapshot: Some(snapshot(10, 2, cs_a.clone())),
                entries: entries(11..=12, 2),
                ..Default::default()
            },
            LogWrite {
                entries: entries(12..=13, 3),
                conf_state: Some(cs_b.clone()),
                ..Default::default()
            },
        ),
        (
            "an append with a hard state, then a snapshot",
            base(),
            LogWrite {
                entries: entries(6..=7, 1),
                hard_state: Some(hard_state(1, 1, 7)),
                ..Default::default()
            },
            LogWrite {
                snapshot: Some(snapshot(20, 3, cs_b.clone())),
                ..Default::default()
            },
        ),
        (
            "a conf state, then a snapshot with another",
            base(),
            LogWrite {
                entries: entries(6..=7, 1),
                conf_state: Some(cs_a.clone()),
                ..Default::default()
            },
            LogWrite {
                snapshot: Some(snapshot(20, 3, cs_b.clone())),
                ..Default::default()
            },
        ),
        (
            "two snapshots",
            base(),
            LogWrite {
                snapshot: Some(snapshot(10, 2, cs_a.clone())),
                entries: entries(11..=11, 2),
                ..Default::default()
            },
            LogWrite {
                snapshot: Some(snapshot(20, 3, cs_b.clone())),
                ..Default::default()
            },
        ),
    ];
    for (name, base, a, b) in cases {
        let clause = format!("LogWrite::merge equals two writes ({name})");
        let two = fresh();
        write(&two, &base, &clause);
        write(&two, &a, &clause);
        write(&two, &b, &clause);
        let mut merged = a.clone();
        merged.merge(b.clone());
        assert_eq!(
            merged.number,
            a.number.max(b.number),
            "{clause}: number is the later one"
        );
        let one = fresh();
        write(&one, &base, &clause);
        write(&one, &merged, &clause);
        assert_eq!(observe(&one), observe(&two), "{clause}");
    }
}

/// Every step of a history (appends, a truncating append, hard and conf
/// states, compactions, a snapshot) survives closing and reopening the
/// store: `reopen` takes the store, closes it, and opens the same storage.
pub fn survives_reopen<S: LogStore>(mut fresh: impl FnMut() -> S, mut reopen: impl FnMut(S) -> S) {
    let mut s = fresh();
    let mut step = |s: S, name: &str, expected_last: u64| -> S {
        let before = observe(&s);
        assert_eq!(
            before.last_index, expected_last,
            "{name}: last_index() before the reopen"
        );
        let s = reopen(s);
        assert_eq!(
            observe(&s),
            before,
            "everything survives reopen (after {name})"
        );
        s
    };
    s = step(s, "nothing", 0);
    let mut m = crate::proto::MemberMeta::new();
    m.maintenance = true;
    m.maintenance_allowed = 1;
    write(
        &s,
        &LogWrite {
            member_meta: Some(m),
            ..Default::default()
        },
        "reopen",
    );
    s = step(s, "member metadata", 0);
    write(
        &s,
        &LogWrite {
            entries: entries(1..=10, 1),
            hard_state: Some(hard_state(1, 1, 3)),
            ..Default::default()
        },
        "reopen",
    );
    s = step(s, "an append", 10);
    write(
        &s,
        &LogWrite {
            entries: entries(6..=7, 2),
            hard_state: Some(hard_state(2, 0, 5)),
            ..Default::default()
        },
        "reopen",
    );
    s = step(s, "a truncating append", 7);
    write(
        &s,
        &LogWrite {
            conf_state: Some(conf_state(&[1, 2, 3], &[4])),
            ..Default::default()
        },
        "reopen",
    );
    s = step(s, "a conf state", 7);
    s.compact(4)
        .unwrap_or_else(|e| panic!("compact(4) failed: {e}"));
    s = step(s, "a compaction", 7);
    write(
        &s,
        &LogWrite {
            snapshot: Some(snapshot(20, 3, conf_state(&[1, 2], &[]))),
            hard_state: Some(hard_state(3, 2, 20)),
            ..Default::default()
        },
        "reopen",
    );
    s = step(s, "a snapshot", 20);
    write(&s, &append(entries(21..=25, 3)), "reopen");
    s = step(s, "an append after the snapshot", 25);
    s.compact(25)
        .unwrap_or_else(|e| panic!("compact(25) failed: {e}"));
    s = step(s, "compacting everything", 25);
    write(&s, &append(entries(26..=26, 4)), "reopen");
    s = step(s, "an append after compacting everything", 26);
    let end = observe(&s);
    assert_eq!(end.first_index, 26, "after reopens: first_index()");
    assert_eq!(
        end.terms,
        vec![3, 4],
        "after reopens: terms of the compaction point and the entry"
    );
    assert_eq!(
        end.hard_state,
        hard_state(3, 2, 20),
        "after reopens: hard state"
    );
}
