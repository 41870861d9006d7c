//! The conformance suite every [`KvStateMachine`] must pass.
//!
//! Each function takes a factory that makes a FRESH, empty store (a new
//! directory for a store on disk) and panics, like an assertion, on the
//! first violation. [`run_all`] runs them all; [`crash_recovery`] also needs
//! a function that simulates a crash and restart of a store
//! ([`super::MemKv::crash`], or dropping and reopening a store on disk).
//!
//! ```
//! use aoc_core::state::{conformance, MemKv};
//! conformance::run_all(MemKv::new);
//! conformance::crash_recovery(MemKv::new, |mut s: MemKv| {
//!     s.crash();
//!     s
//! });
//! ```

use std::collections::BTreeMap;

use super::{
    ApplyBatch, ApplyCommand, KvCommand, KvResponse, KvStateMachine, Session, SessionStamp,
};
use crate::Error;

/// An [`ApplyBatch`] that owns its command bytes, for tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnedBatch {
    /// The applied index after the batch.
    pub applied_index: u64,
    /// (raft index, command bytes, session stamp) of every command.
    pub commands: Vec<(u64, Vec<u8>, Option<SessionStamp>)>,
    /// Sessions opened by the batch.
    pub new_sessions: Vec<Session>,
    /// Sessions expired by the batch.
    pub expired_sessions: Vec<u64>,
}

impl OwnedBatch {
    /// A batch of `commands` at consecutive indexes from `first_index`, no
    /// sessions; the applied index is the last command's index (or
    /// `first_index` when there is none: one entry without a command).
    pub fn of(first_index: u64, commands: &[KvCommand]) -> Self {
        let last = first_index + commands.len().saturating_sub(1) as u64;
        OwnedBatch {
            applied_index: last,
            commands: commands
                .iter()
                .enumerate()
                .map(|(i, c)| (first_index + i as u64, c.encode(), None))
                .collect(),
            new_sessions: Vec::new(),
            expired_sessions: Vec::new(),
        }
    }

    /// The borrowed [`ApplyBatch`] to hand to a store.
    pub fn as_batch(&self) -> ApplyBatch<'_> {
        ApplyBatch {
            applied_index: self.applied_index,
            commands: self
                .commands
                .iter()
                .map(|(index, command, session)| ApplyCommand {
                    index: *index,
                    command,
                    session: *session,
                })
                .collect(),
            new_sessions: self.new_sessions.clone(),
            expired_sessions: self.expired_sessions.clone(),
        }
    }
}

/// Everything a store exposes: what must agree between two stores holding
/// the same state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    /// [`super::StateMachine::applied_index`].
    pub applied_index: u64,
    /// `scan(&[])`: every pair in key order.
    pub pairs: Vec<(Vec<u8>, Vec<u8>)>,
    /// [`super::StateMachine::sessions`], sorted by client id.
    pub sessions: Vec<Session>,
}

/// Reads everything `store` exposes. Panics if the store fails.
pub fn observe<S: KvStateMachine>(store: &S) -> Observed {
    let mut sessions = store.sessions().expect("sessions() failed");
    sessions.sort_by_key(|s| s.client_id);
    let pairs = store.scan(&[]).expect("scan(&[]) failed");
    for (key, value) in &pairs {
        assert_eq!(
            store.get(key).expect("get() failed").as_ref(),
            Some(value),
            "get() disagrees with scan() on key {key:?}"
        );
    }
    Observed {
        applied_index: store.applied_index(),
        pairs,
        sessions,
    }
}

/// Applies `batch` and decodes the responses. Panics if the store fails or
/// a response does not decode.
pub fn apply<S: KvStateMachine>(store: &mut S, batch: &OwnedBatch) -> Vec<KvResponse> {
    let responses = store.apply(&batch.as_batch()).expect("apply() failed");
    assert_eq!(
        responses.len(),
        batch.commands.len(),
        "one response per command"
    );
    assert_eq!(
        store.applied_index(),
        batch.applied_index,
        "the applied index is the batch's"
    );
    responses
        .iter()
        .map(|r| KvResponse::decode(r).expect("a response does not decode"))
        .collect()
}

fn ok(previous: Option<&[u8]>) -> KvResponse {
    KvResponse {
        ok: true,
        previous: previous.map(<[u8]>::to_vec),
        error: None,
    }
}

fn not_ok(previous: Option<&[u8]>) -> KvResponse {
    KvResponse {
        ok: false,
        previous: previous.map(<[u8]>::to_vec),
        error: None,
    }
}

fn some(v: &[u8]) -> Option<Vec<u8>> {
    Some(v.to_vec())
}

fn session(client_id: u64, last_sequence: u64, last_response: Vec<u8>, ms: u64) -> Session {
    Session {
        client_id,
        last_sequence,
        last_response,
        last_active_ms: ms,
    }
}

/// put, delete and cas: responses, values, `get` and `scan`; commands of
/// one batch see each other's writes; an undecodable command is answered
/// with an error and changes nothing; a batch without commands advances the
/// applied index.
pub fn apply_commands<S: KvStateMachine>(mut make: impl FnMut() -> S) {
    let mut s = make();
    assert_eq!(s.applied_index(), 0, "a fresh store is at index 0");
    assert_eq!(observe(&s), Observed::default(), "a fresh store is empty");

    // put
    let r = apply(&mut s, &OwnedBatch::of(1, &[KvCommand::put(b"a", b"1")]));
    assert_eq!(r, vec![ok(None)], "put of a new key");
    let r = apply(&mut s, &OwnedBatch::of(2, &[KvCommand::put(b"a", b"2")]));
    assert_eq!(r, vec![ok(Some(b"1"))], "put over a value");
    assert_eq!(s.get(b"a").expect("get"), some(b"2"));

    // delete
    let r = apply(
        &mut s,
        &OwnedBatch::of(3, &[KvCommand::delete(b"zz"), KvCommand::delete(b"a")]),
    );
    assert_eq!(
        r,
        vec![not_ok(None), ok(Some(b"2"))],
        "delete of a missing key, then of a present one"
    );
    assert_eq!(s.get(b"a").expect("get"), None);
    assert_eq!(s.applied_index(), 4);

    // cas
    let r = apply(
        &mut s,
        &OwnedBatch::of(
            5,
            &[
                KvCommand::cas(b"c", None, some(b"x")),
                KvCommand::cas(b"c", None, some(b"y")),
                KvCommand::cas(b"c", some(b"wrong"), some(b"y")),
                KvCommand::cas(b"c", some(b"x"), some(b"y")),
                KvCommand::cas(b"c", some(b"y"), None),
                KvCommand::cas(b"c", None, None),
                KvCommand::cas(b"c", some(b""), some(b"z")),
            ],
        ),
    );
    assert_eq!(
        r,
        vec![
            ok(None),
            not_ok(Some(b"x")),
            not_ok(Some(b"x")),
            ok(Some(b"x")),
            ok(Some(b"y")),
            ok(None),
            not_ok(None),
        ],
        "cas responses (commands of one batch see each other's writes)"
    );
    assert_eq!(
        s.get(b"c").expect("get"),
        None,
        "the cas chain ends deleted"
    );
    assert_eq!(s.applied_index(), 11);

    // empty key and empty value are values like any other
    let r = apply(
        &mut s,
        &OwnedBatch::of(
            12,
            &[
                KvCommand::put(b"", b""),
                KvCommand::cas(b"", some(b""), some(b"e")),
            ],
        ),
    );
    assert_eq!(r, vec![ok(None), ok(Some(b""))]);
    assert_eq!(s.get(b"").expect("get"), some(b"e"));

    // undecodable commands: an error response, no change
    let before = observe(&s);
    let mut bad = OwnedBatch::of(14, &[]);
    bad.commands = vec![
        (14, vec![0xff, 0xff, 0xff], None),
        (15, Vec::new(), None),
        (16, KvCommand::put(b"ok", b"1").encode(), None),
    ];
    bad.applied_index = 16;
    let r = apply(&mut s, &bad);
    for bad_response in &r[..2] {
        assert!(!bad_response.ok, "an undecodable command is not ok");
        assert!(
            bad_response.error.is_some(),
            "an undecodable command is answered with an error"
        );
        assert_eq!(bad_response.previous, None);
    }
    assert_eq!(r[2], ok(None), "a good command after bad ones applies");
    let after = observe(&s);
    let mut expected = before.clone();
    expected.applied_index = 16;
    expected.pairs.push((b"ok".to_vec(), b"1".to_vec()));
    expected.pairs.sort();
    assert_eq!(after, expected, "undecodable commands change nothing");

    // a batch of entries without commands
    let r = apply(
        &mut s,
        &OwnedBatch {
            applied_index: 20,
            ..OwnedBatch::default()
        },
    );
    assert!(r.is_empty());
    assert_eq!(s.applied_index(), 20);

    // scan
    let mut s = make();
    let keys: [&[u8]; 8] = [
        b"a",
        b"ab",
        b"abc",
        b"b",
        b"a\xff",
        b"a\xff\xff",
        b"\xff",
        b"",
    ];
    let puts: Vec<KvCommand> = keys.iter().map(|k| KvCommand::put(*k, *k)).collect();
    apply(&mut s, &OwnedBatch::of(1, &puts));
    let scan_keys = |prefix: &[u8]| -> Vec<Vec<u8>> {
        let pairs = s.scan(prefix).expect("scan");
        for (k, v) in &pairs {
            assert_eq!(k, v, "scan returns each key with its value");
        }
        pairs.into_iter().map(|(k, _)| k).collect()
    };
    let mut all: Vec<Vec<u8>> = keys.iter().map(|k| k.to_vec()).collect();
    all.sort();
    assert_eq!(scan_keys(b""), all, "scan of everything, in key order");
    assert_eq!(
        scan_keys(b"a"),
        vec![
            b"a".to_vec(),
            b"ab".to_vec(),
            b"abc".to_vec(),
            b"a\xff".to_vec(),
            b"a\xff\xff".to_vec()
        ]
    );
    assert_eq!(
        scan_keys(b"a\xff"),
        vec![b"a\xff".to_vec(), b"a\xff\xff".to_vec()]
    );
    assert_eq!(scan_keys(b"\xff"), vec![b"\xff".to_vec()]);
    assert_eq!(scan_keys(b"abcd"), Vec::<Vec<u8>>::new());
    assert_eq!(scan_keys(b"c"), Vec::<Vec<u8>>::new());
}

/// The sessions of a batch (new ones, the session of every stamped
/// command with its response, expired ones) are stored with the batch,
/// and read back by `sessions()`.
pub fn sessions_stored_with_batch<S: KvStateMachine>(mut make: impl FnMut() -> S) {
    let mut s = make();
    assert!(s.sessions().expect("sessions").is_empty());

    // Registration of clients 1 and 2 (their entries' indexes).
    let mut b = OwnedBatch {
        applied_index: 2,
        ..OwnedBatch::default()
    };
    b.new_sessions = vec![
        session(1, 0, Vec::new(), 100),
        session(2, 0, Vec::new(), 100),
    ];
    apply(&mut s, &b);
    assert_eq!(
        observe(&s).sessions,
        b.new_sessions,
        "new sessions are stored"
    );

    // Stamped commands: the session takes the sequence, the response and
    // the stamp; an unstamped command leaves sessions alone.
    let mut b = OwnedBatch::of(
        3,
        &[
            KvCommand::put(b"k", b"1"),
            KvCommand::put(b"k", b"2"),
            KvCommand::put(b"k", b"3"),
            KvCommand::delete(b"k"),
        ],
    );
    b.commands[0].2 = Some(SessionStamp {
        client_id: 1,
        sequence: 1,
        stamp_ms: 110,
    });
    b.commands[1].2 = Some(SessionStamp {
        client_id: 2,
        sequence: 1,
        stamp_ms: 120,
    });
    b.commands[2].2 = Some(SessionStamp {
        client_id: 1,
        sequence: 2,
        stamp_ms: 130,
    });
    // A command from a client registered in this very batch.
    b.new_sessions = vec![session(6, 0, Vec::new(), 125)];
    b.commands[3].2 = Some(SessionStamp {
        client_id: 6,
        sequence: 1,
        stamp_ms: 140,
    });
    let raw = s.apply(&b.as_batch()).expect("apply");
    assert_eq!(raw.len(), 4);
    let sessions = observe(&s).sessions;
    assert_eq!(
        sessions,
        vec![
            session(1, 2, raw[2].clone(), 130),
            session(2, 1, raw[1].clone(), 120),
            session(6, 1, raw[3].clone(), 140),
        ],
        "each session holds its last sequence, response and stamp"
    );
    assert_eq!(
        KvResponse::decode(&sessions[0].last_response).expect("decode"),
        ok(Some(b"2"))
    );

    // An undecodable stamped command still records its (error) response.
    let mut b = OwnedBatch {
        applied_index: 7,
        ..OwnedBatch::default()
    };
    b.commands = vec![(
        7,
        vec![0xff],
        Some(SessionStamp {
            client_id: 2,
            sequence: 2,
            stamp_ms: 150,
        }),
    )];
    let raw = s.apply(&b.as_batch()).expect("apply");
    let two = observe(&s)
        .sessions
        .into_iter()
        .find(|x| x.client_id == 2)
        .expect("session 2 is there");
    assert_eq!(two, session(2, 2, raw[0].clone(), 150));
    assert!(KvResponse::decode(&raw[0]).expect("decode").error.is_some());
}

/// Expired sessions are removed by their batch; a session that is both
/// stamped and expired in one batch is gone after it.
pub fn expired_sessions_removed<S: KvStateMachine>(mut make: impl FnMut() -> S) {
    let mut s = make();
    let mut b = OwnedBatch {
        applied_index: 3,
        ..OwnedBatch::default()
    };
    b.new_sessions = (1..=3).map(|id| session(id, 0, Vec::new(), 10)).collect();
    apply(&mut s, &b);

    let mut b = OwnedBatch::of(4, &[KvCommand::put(b"k", b"v")]);
    b.commands[0].2 = Some(SessionStamp {
        client_id: 3,
        sequence: 1,
        stamp_ms: 20,
    });
    b.expired_sessions = vec![1, 3, 99];
    apply(&mut s, &b);
    let ids: Vec<u64> = observe(&s).sessions.iter().map(|x| x.client_id).collect();
    assert_eq!(
        ids,
        vec![2],
        "expired sessions are removed (unknown ids ignored)"
    );
    assert_eq!(s.get(b"k").expect("get"), some(b"v"));
    assert_eq!(s.applied_index(), 4);
}

fn build_state<S: KvStateMachine>(s: &mut S) {
    let mut b = OwnedBatch {
        applied_index: 2,
        ..OwnedBatch::default()
    };
    b.new_sessions = vec![session(1, 0, Vec::new(), 5), session(2, 0, Vec::new(), 5)];
    apply(s, &b);
    let big = vec![0xabu8; 300 * 1024];
    let mut b = OwnedBatch::of(
        3,
        &[
            KvCommand::put(b"a", b"1"),
            KvCommand::put(b"b", b"2"),
            KvCommand::put(b"", b""),
            KvCommand::put(b"big", big),
            KvCommand::put(b"gone", b"x"),
            KvCommand::delete(b"gone"),
        ],
    );
    b.commands[0].2 = Some(SessionStamp {
        client_id: 1,
        sequence: 1,
        stamp_ms: 9,
    });
    apply(s, &b);
}

/// A snapshot restored into a fresh store (and into a store holding other
/// state) gives the same `get`, `scan`, `sessions` and applied index, is
/// synced at once (`sync` returns its index), and snapshots again to the
/// same bytes.
pub fn snapshot_round_trip<S: KvStateMachine>(mut make: impl FnMut() -> S) {
    let mut s = make();
    build_state(&mut s);
    let want = observe(&s);
    let snap = s.snapshot().expect("snapshot");

    let mut fresh = make();
    fresh
        .restore(want.applied_index, &snap)
        .expect("restore into a fresh store");
    assert_eq!(observe(&fresh), want, "restore into a fresh store");
    assert_eq!(fresh.snapshot().expect("snapshot"), snap, "snapshots agree");
    assert_eq!(fresh.sync().expect("sync"), want.applied_index);

    // Into a store that holds other pairs and sessions: all replaced.
    let mut other = make();
    let mut b = OwnedBatch::of(
        1,
        &[KvCommand::put(b"other", b"o"), KvCommand::put(b"a", b"z")],
    );
    b.new_sessions = vec![session(77, 0, Vec::new(), 1)];
    apply(&mut other, &b);
    other
        .restore(want.applied_index, &snap)
        .expect("restore over a state");
    assert_eq!(observe(&other), want, "restore replaces everything");

    // Restoring to an index below the current one is allowed (raft decides).
    let mut ahead = make();
    apply(
        &mut ahead,
        &OwnedBatch {
            applied_index: want.applied_index + 50,
            ..OwnedBatch::default()
        },
    );
    ahead
        .restore(want.applied_index, &snap)
        .expect("restore to a lower index");
    assert_eq!(observe(&ahead), want);

    // The restored store goes on applying.
    let r = apply(
        &mut fresh,
        &OwnedBatch::of(want.applied_index + 1, &[KvCommand::put(b"a", b"3")]),
    );
    assert_eq!(r, vec![ok(Some(b"1"))]);
}

/// `restore` refuses empty data, data that is not a snapshot, and a
/// snapshot taken at another index, with [`Error::Decode`] or
/// [`Error::Storage`], and leaves the store as it was.
pub fn restore_refuses_bad_snapshots<S: KvStateMachine>(mut make: impl FnMut() -> S) {
    let mut s = make();
    build_state(&mut s);
    let before = observe(&s);
    let snap = s.snapshot().expect("snapshot");
    let index = before.applied_index;
    let mut truncated = snap.clone();
    truncated.truncate(snap.len() / 2);
    let cases: Vec<(&str, u64, Vec<u8>)> = vec![
        ("empty data", index, Vec::new()),
        ("empty data at index 0", 0, Vec::new()),
        ("garbage", index, vec![0xff; 16]),
        ("a truncated snapshot", index, truncated),
        ("a snapshot of another index", index + 1, snap.clone()),
        ("a snapshot of a lower index", index - 1, snap.clone()),
    ];
    for (what, at, data) in cases {
        match s.restore(at, &data) {
            Err(Error::Decode { .. }) | Err(Error::Storage { .. }) => {}
            other => panic!("restore of {what} must be refused, got {other:?}"),
        }
        assert_eq!(
            observe(&s),
            before,
            "a refused restore ({what}) changes nothing"
        );
    }
    // A store with no state has nothing to snapshot that restore accepts.
    let empty = make();
    let snap0 = empty.snapshot().expect("snapshot of an empty store");
    let mut t = make();
    assert!(
        t.restore(0, &snap0).is_err(),
        "a snapshot with no state is refused"
    );
}

/// `sync` returns the applied index (0 for a fresh store), and may be
/// called again without new batches.
pub fn sync_returns_applied_index<S: KvStateMachine>(mut make: impl FnMut() -> S) {
    let mut s = make();
    assert_eq!(s.sync().expect("sync"), 0);
    apply(&mut s, &OwnedBatch::of(1, &[KvCommand::put(b"a", b"1")]));
    apply(&mut s, &OwnedBatch::of(2, &[KvCommand::put(b"b", b"1")]));
    assert_eq!(s.sync().expect("sync"), 2);
    assert_eq!(s.sync().expect("sync"), 2);
    apply(
        &mut s,
        &OwnedBatch {
            applied_index: 9,
            ..OwnedBatch::default()
        },
    );
    assert_eq!(s.sync().expect("sync"), 9);
}

/// A snapshot read started with [`super::StateMachine::start_snapshot`]
/// gives the bytes of [`super::StateMachine::snapshot`] at its index,
/// whatever batches are applied while it is read (changed, removed and
/// new pairs and sessions); a restore while a read is in progress leaves
/// it either those bytes or an error.
pub fn snapshot_read_alongside_apply<S: KvStateMachine>(mut make: impl FnMut() -> S) {
    let mut s = make();
    build_state(&mut s);
    let index = s.applied_index();
    let want = s.snapshot().expect("snapshot");
    let mut read = s.start_snapshot().expect("start_snapshot");
    assert_eq!(read.index(), index, "the read is at the applied index");
    let mut next = index + 1;
    for round in 0..50u64 {
        let mut b = OwnedBatch::of(
            next,
            &[
                KvCommand::put(b"a", round.to_be_bytes()),
                KvCommand::delete(b"b"),
                KvCommand::put(format!("new{round}").as_bytes(), b"n"),
                KvCommand::put(b"big", vec![round as u8; 70 * 1024]),
            ],
        );
        b.new_sessions = vec![session(100 + round, 0, Vec::new(), 7)];
        b.expired_sessions = vec![1, 99 + round];
        next = b.applied_index + 1;
        apply(&mut s, &b);
    }
    let got = wait_for(read.as_mut()).expect("the read succeeds");
    assert!(got == want, "the read gives the snapshot at its index");
    assert!(read.poll().is_none(), "a read gives its result once");

    // A restore over a read in progress: the read fails or gives the
    // snapshot at its index, never a mix.
    let mut t = make();
    build_state(&mut t);
    apply(
        &mut t,
        &OwnedBatch::of(index + 1, &[KvCommand::put(b"a", b"t")]),
    );
    let want_t = t.snapshot().expect("snapshot");
    let mut read = t.start_snapshot().expect("start_snapshot");
    t.restore(index, &want).expect("restore");
    match wait_for(read.as_mut()) {
        Ok(got) => assert!(
            got == want_t,
            "a read ended by a restore gives its own snapshot"
        ),
        Err(Error::Storage { .. }) => {}
        Err(other) => panic!("a read ended by a restore fails with a storage error, got {other}"),
    }
    assert_eq!(
        t.snapshot().expect("snapshot"),
        want,
        "the restore took effect"
    );
}

/// Polls `read` until it gives its result (at most a minute).
fn wait_for(read: &mut dyn super::SnapshotRead) -> crate::Result<Vec<u8>> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(result) = read.poll() {
            return result;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the snapshot read gave no result within a minute"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Runs every function of the suite but [`crash_recovery`].
pub fn run_all<S: KvStateMachine>(mut make: impl FnMut() -> S) {
    apply_commands(&mut make);
    sessions_stored_with_batch(&mut make);
    expired_sessions_removed(&mut make);
    snapshot_round_trip(&mut make);
    restore_refuses_bad_snapshots(&mut make);
    sync_returns_applied_index(&mut make);
    snapshot_read_alongside_apply(&mut make);
}

/// Crash consistency. `crash` takes a store and returns it as it is after
/// a crash and restart. After a crash the store must hold exactly the state
/// it held after some batch at or after the last sync (or restore): the
/// applied index, the pairs and the sessions agree, never a mix.
pub fn crash_recovery<S: KvStateMachine>(
    mut make: impl FnMut() -> S,
    mut crash: impl FnMut(S) -> S,
) {
    let mut s = make();
    // The state after each applied index reached.
    let mut history: BTreeMap<u64, Observed> = BTreeMap::new();
    history.insert(0, observe(&s));
    let mut synced = 0;
    let mut next_client = 1000;
    for round in 0..6u64 {
        for i in 0..5u64 {
            let index = s.applied_index() + 1;
            let key = format!("k{}", (round + i) % 4).into_bytes();
            let value = format!("r{round}i{i}").into_bytes();
            let mut b = OwnedBatch::of(
                index,
                &[
                    KvCommand::put(key.clone(), value),
                    KvCommand::cas(
                        format!("c{i}"),
                        None,
                        Some(vec![i as u8; 2000 * i as usize]),
                    ),
                    KvCommand::delete(format!("k{}", (round + i + 2) % 4)),
                ],
            );
            b.new_sessions = vec![session(next_client, 0, Vec::new(), index)];
            b.commands[0].2 = Some(SessionStamp {
                client_id: next_client,
                sequence: 1,
                stamp_ms: index,
            });
            if next_client > 1001 {
                b.expired_sessions = vec![next_client - 2];
            }
            next_client += 1;
            apply(&mut s, &b);
            history.insert(s.applied_index(), observe(&s));
            if round % 2 == 0 && i == 2 {
                synced = s.sync().expect("sync");
                assert_eq!(synced, s.applied_index(), "sync returns the applied index");
            }
        }
        if round == 3 {
            // A restore is durable at once.
            let snap = s.snapshot().expect("snapshot");
            let at = s.applied_index();
            s.restore(at, &snap).expect("restore");
            synced = at;
        }
        s = crash(s);
        let got = observe(&s);
        assert!(
            got.applied_index >= synced,
            "round {round}: after a crash the store is at index {}, before the last sync ({synced})",
            got.applied_index
        );
        let want = history.get(&got.applied_index).unwrap_or_else(|| {
            panic!(
                "round {round}: after a crash the store claims index {}, never reached",
                got.applied_index
            )
        });
        assert_eq!(
            &got, want,
            "round {round}: the state after a crash is the state of its applied index"
        );
        // Forget the history beyond the recovered index: the log replays
        // from there, possibly differently.
        history.retain(|index, _| *index <= got.applied_index);
    }
}
