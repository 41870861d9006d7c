//! The key-value state machines: the conformance suite on [`MemKv`] and
//! [`SledKv`], damaged sled directories, a real process kill of a sled
//! store, and a property test of both stores against a `BTreeMap` model.

// `u64::is_multiple_of` needs Rust 1.87; the workspace declares 1.80.
#![allow(unknown_lints, clippy::manual_is_multiple_of)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use aoc_core::state::conformance::{self, apply, observe, Observed, OwnedBatch};
use aoc_core::state::{
    KvCommand, KvResponse, KvStateMachine, MemKv, Session, SessionStamp, SledKv, StateMachine,
};
use aoc_core::Error;
use proptest::prelude::*;
use tempfile::TempDir;

fn mem_crash(mut s: MemKv) -> MemKv {
    s.crash();
    s
}

/// A factory of fresh sled stores, each in its own temporary directory
/// (kept until the factory is dropped).
fn sled_factory() -> impl FnMut() -> SledKv {
    let mut dirs: Vec<TempDir> = Vec::new();
    move || {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledKv::open(&dir.path().join("sm")).expect("open a fresh sled store");
        dirs.push(dir);
        store
    }
}

/// Closes and reopens a sled store (a clean restart: sled may or may not
/// have written the unsynced batches).
fn sled_reopen(s: SledKv) -> SledKv {
    let dir = s.path().to_path_buf();
    drop(s);
    SledKv::open(&dir).expect("reopen the sled store")
}

/// Opens a store's sled directory directly, waiting while a store closed
/// just before still holds sled's lock (its flusher thread lets go later).
fn raw_sled(dir: &std::path::Path) -> sled::Db {
    let start = std::time::Instant::now();
    loop {
        match sled::open(SledKv::sled_dir(dir)) {
            Ok(db) => return db,
            Err(e) if start.elapsed() < std::time::Duration::from_secs(5) => {
                let _ = e;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("raw sled: {e}"),
        }
    }
}

#[test]
fn mem_kv_conformance() {
    conformance::run_all(MemKv::new);
}

#[test]
fn mem_kv_crash_recovery() {
    conformance::crash_recovery(MemKv::new, mem_crash);
}

#[test]
fn mem_kv_crash_loses_exactly_the_unsynced_batches() {
    let mut s = MemKv::new();
    apply(&mut s, &OwnedBatch::of(1, &[KvCommand::put(b"a", b"1")]));
    assert_eq!(s.sync().expect("sync"), 1);
    apply(&mut s, &OwnedBatch::of(2, &[KvCommand::put(b"a", b"2")]));
    apply(&mut s, &OwnedBatch::of(3, &[KvCommand::put(b"b", b"2")]));
    assert_eq!(s.durable_index(), 1);
    assert!(s.has_unsynced());
    let forked = s.clone();
    s.crash();
    assert_eq!(s.applied_index(), 1);
    assert_eq!(s.get(b"a").expect("get"), Some(b"1".to_vec()));
    assert_eq!(s.get(b"b").expect("get"), None);
    assert!(!s.has_unsynced());
    // The clone kept its own volatile part.
    assert_eq!(forked.applied_index(), 3);
}

#[test]
fn sled_kv_conformance() {
    conformance::run_all(sled_factory());
}

#[test]
fn sled_kv_reopen_recovery() {
    conformance::crash_recovery(sled_factory(), sled_reopen);
}

#[test]
fn sled_kv_layout() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("sm");
    let mut s = SledKv::open(&dir).expect("open");
    assert_eq!(s.path(), dir.as_path());
    apply(
        &mut s,
        &OwnedBatch::of(1, &[KvCommand::put(b"a", vec![1u8; 400_000])]),
    );
    assert_eq!(s.sync().expect("sync"), 1);
    let mut files = Vec::new();
    list_files(&dir, &mut files);
    let names: Vec<String> = files
        .iter()
        .filter_map(|f| f.strip_prefix(&dir).ok())
        .map(|f| f.display().to_string())
        .collect();
    assert!(names.contains(&"synced_index".to_string()), "{names:?}");
    assert!(names.contains(&"sled/db".to_string()), "{names:?}");
    assert!(names.contains(&"sled/conf".to_string()), "{names:?}");
    assert!(
        names.iter().any(|n| n.starts_with("sled/blobs/")),
        "a 400 KB value goes to a blob file: {names:?}"
    );
}

fn list_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            list_files(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create_dir_all");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file_type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// A synced sled store at index 50 with small and large (blob) values and
/// a few sessions.
fn build_sled_store(dir: &Path) -> Observed {
    let mut s = SledKv::open(dir).expect("open");
    for i in 1..=50u64 {
        let value = if i % 10 == 0 {
            vec![i as u8; 300_000]
        } else {
            vec![i as u8; 100]
        };
        let mut b = OwnedBatch::of(i, &[KvCommand::put(format!("k{i}"), value)]);
        if i % 7 == 0 {
            b.new_sessions = vec![Session {
                client_id: i,
                last_sequence: 0,
                last_response: Vec::new(),
                last_active_ms: i,
            }];
        }
        apply(&mut s, &b);
    }
    assert_eq!(s.sync().expect("sync"), 50);
    observe(&s)
}

fn expect_storage_error(result: Result<SledKv, Error>, dir: &Path, what: &str) -> String {
    match result {
        Err(Error::Storage { path, reason }) => {
            assert!(
                path.starts_with(dir),
                "{what}: the error names {path:?}, not a path in {dir:?}"
            );
            assert!(!reason.is_empty());
            format!("{}: {reason}", path.display())
        }
        Err(other) => panic!("{what}: expected Error::Storage, got {other:?}"),
        Ok(s) => panic!(
            "{what}: the damaged store opened (applied index {}, {} pairs)",
            s.applied_index(),
            s.scan(&[]).map(|p| p.len()).unwrap_or(0)
        ),
    }
}

#[test]
fn sled_garbage_db_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("sm");
    let want = build_sled_store(&dir);
    let db = SledKv::sled_dir(&dir).join("db");
    let len = std::fs::metadata(&db).expect("db").len() as usize;
    // Unreadable garbage over the whole log: sled alone opens this as an
    // EMPTY store (applied index 0).
    std::fs::write(
        &db,
        (0..len)
            .map(|i| (i * 7919 % 251) as u8)
            .collect::<Vec<u8>>(),
    )
    .expect("write garbage");
    let msg = expect_storage_error(SledKv::open(&dir), &dir, "garbage db");
    assert!(msg.contains("synced"), "{msg}");
    // The same bytes again: still refused (nothing was "repaired").
    expect_storage_error(SledKv::open(&dir), &dir, "garbage db, again");
    assert_eq!(want.applied_index, 50);
}

#[test]
fn sled_garbage_conf_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("sm");
    build_sled_store(&dir);
    let conf = SledKv::sled_dir(&dir).join("conf");
    std::fs::write(&conf, b"\x00garbage\xff\xfe not a sled conf").expect("write garbage");
    expect_storage_error(SledKv::open(&dir), &dir, "garbage conf");
}

#[test]
fn sled_damaged_blobs_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("sm");
    build_sled_store(&dir);
    let mut files = Vec::new();
    list_files(&SledKv::sled_dir(&dir).join("blobs"), &mut files);
    assert!(!files.is_empty(), "300 KB values are written to blob files");
    for file in &files {
        let len = std::fs::metadata(file).expect("blob").len() as usize;
        std::fs::write(file, vec![0x5a; len]).expect("write garbage");
    }
    expect_storage_error(SledKv::open(&dir), &dir, "garbage blobs");
}

#[test]
fn sled_missing_store_with_a_sync_record_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("sm");
    build_sled_store(&dir);
    std::fs::remove_dir_all(SledKv::sled_dir(&dir)).expect("remove sled's directory");
    let msg = expect_storage_error(SledKv::open(&dir), &dir, "sled directory removed");
    assert!(msg.contains("50"), "{msg}");
}

#[test]
fn sled_damaged_sync_record_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("sm");
    build_sled_store(&dir);
    let record = dir.join("synced_index");
    let mut bytes = std::fs::read(&record).expect("read the record");
    bytes[12] ^= 1;
    std::fs::write(&record, &bytes).expect("write");
    expect_storage_error(SledKv::open(&dir), &dir, "damaged record");
    std::fs::write(&record, b"short").expect("write");
    expect_storage_error(SledKv::open(&dir), &dir, "short record");
}

#[test]
fn sled_bad_meta_rows_are_refused() {
    // A metadata row of the wrong length.
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("sm");
    let mut s = SledKv::open(&dir).expect("open");
    apply(&mut s, &OwnedBatch::of(1, &[KvCommand::put(b"a", b"1")]));
    drop(s);
    {
        let db = raw_sled(&dir);
        db.insert(b"m/applied_index", &b"\x01\x02\x03"[..])
            .expect("insert");
        db.flush().expect("flush");
    }
    let msg = expect_storage_error(SledKv::open(&dir), &dir, "3-byte applied index");
    assert!(msg.contains("3 bytes"), "{msg}");

    // Rows but no metadata at all.
    let dir2 = tmp.path().join("sm2");
    {
        let db = raw_sled(&dir2);
        db.insert(b"dkey", &b"value"[..]).expect("insert");
        db.flush().expect("flush");
    }
    expect_storage_error(SledKv::open(&dir2), &dir2, "rows without metadata");

    // A damaged session row: open works, sessions() says what is wrong.
    let dir3 = tmp.path().join("sm3");
    let mut s = SledKv::open(&dir3).expect("open");
    apply(&mut s, &OwnedBatch::of(1, &[KvCommand::put(b"a", b"1")]));
    drop(s);
    {
        let db = raw_sled(&dir3);
        db.insert(b"s\x00\x00\x00\x00\x00\x00\x00\x07", &b"\xff\xff"[..])
            .expect("insert");
        db.flush().expect("flush");
    }
    let s = SledKv::open(&dir3).expect("open");
    match s.sessions() {
        Err(Error::Storage { path, reason }) => {
            assert!(path.starts_with(&dir3));
            assert!(reason.contains("session 7"), "{reason}");
        }
        other => panic!("a damaged session row must be a storage error, got {other:?}"),
    }
}

/// Every file of a synced store, damaged in several ways: opening and
/// reading never panic, and the store either is refused or reads exactly
/// as before the damage (damage to a stale file sled no longer reads).
/// Deleting a file is also tried and reported, but not judged: sled can
/// then serve a store missing a pair (see the printed report).
#[test]
fn sled_damage_sweep_never_panics() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("sm");
    let want = build_sled_store(&dir);
    let mut files = Vec::new();
    list_files(&SledKv::sled_dir(&dir), &mut files);
    let mut case = 0;
    let mut report = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&dir).expect("under dir").to_path_buf();
        for mode in ["zero", "garbage", "flip", "truncate", "delete"] {
            case += 1;
            let copy = tmp.path().join(format!("case{case}"));
            copy_dir(&dir, &copy);
            let target = copy.join(&rel);
            let bytes = std::fs::read(&target).expect("read");
            let n = bytes.len();
            match mode {
                "zero" => std::fs::write(&target, vec![0u8; n]).expect("write"),
                "garbage" => std::fs::write(
                    &target,
                    (0..n).map(|i| (i * 7919 % 251) as u8).collect::<Vec<u8>>(),
                )
                .expect("write"),
                "flip" => {
                    let mut b = bytes.clone();
                    let end = (n / 3 + 64).min(n);
                    for x in &mut b[n / 3..end] {
                        *x ^= 0x5a;
                    }
                    std::fs::write(&target, b).expect("write")
                }
                "truncate" => std::fs::write(&target, &bytes[..n / 2]).expect("write"),
                _ => std::fs::remove_file(&target).expect("remove"),
            }
            let outcome = panic::catch_unwind(AssertUnwindSafe(|| match SledKv::open(&copy) {
                Err(e) => format!("refused: {e}"),
                Ok(s) => {
                    let pairs = s.scan(&[]);
                    let sessions = s.sessions();
                    match (pairs, sessions) {
                        (Ok(pairs), Ok(mut sessions)) => {
                            sessions.sort_by_key(|x| x.client_id);
                            let got = Observed {
                                applied_index: s.applied_index(),
                                pairs,
                                sessions,
                            };
                            if got == want {
                                "opened, intact".to_string()
                            } else {
                                format!(
                                    "opened, DIFFERENT: at {}, {} pairs, {} sessions",
                                    got.applied_index,
                                    got.pairs.len(),
                                    got.sessions.len()
                                )
                            }
                        }
                        (Err(e), _) | (_, Err(e)) => format!("opened, read error: {e}"),
                    }
                }
            }));
            let outcome = match outcome {
                Ok(text) => text,
                Err(_) => panic!("{} {mode}: SledKv panicked", rel.display()),
            };
            if mode != "delete" {
                assert!(
                    outcome.starts_with("refused") || outcome == "opened, intact",
                    "{} {mode}: damage not detected: {outcome}",
                    rel.display()
                );
            }
            report.push(format!("{} {mode}: {outcome}", rel.display()));
            let _ = std::fs::remove_dir_all(&copy);
        }
    }
    // Shown with --nocapture: what sled does with each damage.
    for line in report {
        println!("{line}");
    }
}

// ---------------------------------------------------------------------------
// A real crash: a child process applies batches to a sled store and is
// killed (SIGKILL) at a random moment; the parent reopens the store.

const CRASH_DIR_VAR: &str = "AOC_TEST_SLED_CRASH_DIR";

/// Batch number `i` (from 1) of the crash test (deterministic): three
/// entries, indexes `3i - 2 ..= 3i`.
fn crash_batch(i: u64) -> OwnedBatch {
    let value = if i % 25 == 0 {
        vec![i as u8; 200_000]
    } else {
        format!("v{i}").into_bytes()
    };
    let counter = |n: u64| Some(n.to_be_bytes().to_vec());
    let mut b = OwnedBatch::of(
        3 * i - 2,
        &[
            KvCommand::put(format!("k{}", i % 13), value),
            KvCommand::delete(format!("k{}", (i + 5) % 13)),
            KvCommand::cas(
                b"counter",
                if i == 1 { None } else { counter(i - 1) },
                counter(i),
            ),
        ],
    );
    if i % 4 == 0 {
        b.new_sessions = vec![Session {
            client_id: i,
            last_sequence: 0,
            last_response: Vec::new(),
            last_active_ms: i,
        }];
    }
    if i % 4 == 1 && i > 1 {
        b.commands[0].2 = Some(SessionStamp {
            client_id: i - 1,
            sequence: 1,
            stamp_ms: i,
        });
    }
    if i % 4 == 2 && i > 20 {
        b.expired_sessions = vec![i - 18];
    }
    b
}

/// The child: applies batches from the store's applied index on, syncs
/// every 5 batches and prints the synced index, until it is killed.
#[test]
fn sled_crash_child() {
    let Ok(dir) = std::env::var(CRASH_DIR_VAR) else {
        return; // Only runs as the child of `sled_survives_kill`.
    };
    let mut s = SledKv::open(Path::new(&dir)).expect("child: open");
    let mut out = std::io::stdout();
    let mut i = s.applied_index() / 3;
    loop {
        i += 1;
        s.apply(&crash_batch(i).as_batch()).expect("child: apply");
        if i % 5 == 0 {
            let synced = s.sync().expect("child: sync");
            writeln!(out, "SYNCED {synced}").expect("child: stdout");
            out.flush().expect("child: stdout");
        }
    }
}

#[test]
fn sled_survives_kill() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("sm");
    let exe = std::env::current_exe().expect("current_exe");
    let mut model = MemKv::new();
    let mut history: BTreeMap<u64, Observed> = BTreeMap::new();
    history.insert(0, observe(&model));
    let mut synced = 0;
    for round in 0..4u64 {
        let mut child = Command::new(&exe)
            .args([
                "sled_crash_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_DIR_VAR, &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the child");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut seen = 0;
        // Kill after a few syncs (a different number each round), while the
        // child is applying more.
        while seen < 3 + round {
            let line = lines
                .next()
                .expect("the child stopped early")
                .expect("child stdout");
            if let Some(n) = line.strip_prefix("SYNCED ") {
                synced = n.trim().parse().expect("synced index");
                seen += 1;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(3 * round));
        child.kill().expect("kill the child");
        // Lines printed before the kill may still be in the pipe.
        for line in lines.map_while(|l| l.ok()) {
            if let Some(n) = line.strip_prefix("SYNCED ") {
                synced = n.trim().parse().expect("synced index");
            }
        }
        child.wait().expect("wait for the child");

        let s = SledKv::open(&dir).expect("reopen after the kill");
        let got = observe(&s);
        assert!(
            got.applied_index >= synced,
            "round {round}: recovered index {} < synced {synced}",
            got.applied_index
        );
        assert_eq!(got.applied_index % 3, 0, "batches are atomic");
        while model.applied_index() < got.applied_index {
            let i = model.applied_index() / 3 + 1;
            model.apply(&crash_batch(i).as_batch()).expect("model");
            history.insert(model.applied_index(), observe(&model));
        }
        assert_eq!(
            Some(&got),
            history.get(&got.applied_index),
            "round {round}: the recovered state is the state of its applied index"
        );
        // The model must follow the store from its recovered index.
        model = MemKv::new();
        model
            .restore(got.applied_index, &s.snapshot().expect("snapshot"))
            .expect("model restore");
        history.retain(|i, _| *i <= got.applied_index);
    }
}

// ---------------------------------------------------------------------------
// Property test: random operations against a BTreeMap model.

#[derive(Debug, Clone)]
enum Cmd {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    Cas(Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>),
    Garbage(Vec<u8>),
}

#[derive(Debug, Clone)]
enum Op {
    Apply(Vec<Cmd>),
    Scan(Vec<u8>),
    SnapshotRestore,
    Sync,
    Crash,
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop_oneof![Just(b'a'), Just(b'b'), Just(0xffu8)], 0..3)
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop_oneof![Just(b'x'), Just(b'y')], 0..2)
}

fn cmd() -> impl Strategy<Value = Cmd> {
    prop_oneof![
        4 => (key(), value()).prop_map(|(k, v)| Cmd::Put(k, v)),
        2 => key().prop_map(Cmd::Delete),
        4 => (key(), prop::option::of(value()), prop::option::of(value()))
            .prop_map(|(k, e, n)| Cmd::Cas(k, e, n)),
        1 => prop::collection::vec(any::<u8>(), 0..6).prop_map(Cmd::Garbage),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => prop::collection::vec(cmd(), 0..4).prop_map(Op::Apply),
        2 => key().prop_map(Op::Scan),
        1 => Just(Op::SnapshotRestore),
        2 => Just(Op::Sync),
        2 => Just(Op::Crash),
    ]
}

/// The model: the pairs and the applied index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Model {
    data: BTreeMap<Vec<u8>, Vec<u8>>,
    applied: u64,
}

impl Model {
    /// Applies one command; returns the expected response, or `None` for
    /// a command that is garbage to the decoder (any error response).
    fn apply(&mut self, cmd: &Cmd) -> Option<KvResponse> {
        let resp = |ok: bool, previous: Option<Vec<u8>>| KvResponse {
            ok,
            previous,
            error: None,
        };
        Some(match cmd {
            Cmd::Put(k, v) => resp(true, self.data.insert(k.clone(), v.clone())),
            Cmd::Delete(k) => {
                let previous = self.data.remove(k);
                resp(previous.is_some(), previous)
            }
            Cmd::Cas(k, expected, new) => {
                let current = self.data.get(k).cloned();
                let swap = current == *expected;
                if swap {
                    match new {
                        Some(v) => self.data.insert(k.clone(), v.clone()),
                        None => self.data.remove(k),
                    };
                }
                resp(swap, current)
            }
            Cmd::Garbage(bytes) => match KvCommand::decode(bytes) {
                // Random bytes can be a valid command: apply it as such.
                Ok(KvCommand::Put { key, value }) => return self.apply(&Cmd::Put(key, value)),
                Ok(KvCommand::Delete { key }) => return self.apply(&Cmd::Delete(key)),
                Ok(KvCommand::Cas { key, expected, new }) => {
                    return self.apply(&Cmd::Cas(key, expected, new))
                }
                Err(_) => return None,
            },
        })
    }
}

fn encode(cmd: &Cmd) -> Vec<u8> {
    match cmd {
        Cmd::Put(k, v) => KvCommand::put(k.clone(), v.clone()).encode(),
        Cmd::Delete(k) => KvCommand::delete(k.clone()).encode(),
        Cmd::Cas(k, e, n) => KvCommand::cas(k.clone(), e.clone(), n.clone()).encode(),
        Cmd::Garbage(bytes) => bytes.clone(),
    }
}

fn check_same<S: KvStateMachine>(store: &S, model: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(store.applied_index(), model.applied);
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = model
        .data
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    prop_assert_eq!(store.scan(&[]).expect("scan"), pairs);
    Ok(())
}

/// Runs `ops` on `store`. `fresh` makes an empty store; `crash` crashes and
/// restarts one. After a crash the store must be at some index between the
/// last sync and the last applied batch, with that index's state.
fn run_ops<S: KvStateMachine>(
    mut store: S,
    ops: &[Op],
    mut fresh: impl FnMut() -> S,
    mut crash: impl FnMut(S) -> S,
) -> Result<(), TestCaseError> {
    let mut model = Model::default();
    let mut history: BTreeMap<u64, Model> = BTreeMap::new();
    history.insert(0, model.clone());
    let mut durable = 0u64;
    for op in ops {
        match op {
            Op::Apply(cmds) => {
                let first = model.applied + 1;
                let batch = OwnedBatch {
                    applied_index: first + cmds.len().max(1) as u64 - 1,
                    commands: cmds
                        .iter()
                        .enumerate()
                        .map(|(i, c)| (first + i as u64, encode(c), None))
                        .collect(),
                    ..OwnedBatch::default()
                };
                let responses = apply(&mut store, &batch);
                for (cmd, got) in cmds.iter().zip(responses) {
                    match model.apply(cmd) {
                        Some(want) => prop_assert_eq!(got, want, "{:?}", cmd),
                        None => {
                            prop_assert!(got.error.is_some(), "{:?} -> {:?}", cmd, got);
                            prop_assert!(!got.ok);
                        }
                    }
                }
                model.applied = batch.applied_index;
                history.insert(model.applied, model.clone());
            }
            Op::Scan(prefix) => {
                let want: Vec<(Vec<u8>, Vec<u8>)> = model
                    .data
                    .iter()
                    .filter(|(k, _)| k.starts_with(prefix))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                prop_assert_eq!(store.scan(prefix).expect("scan"), want);
                for k in model.data.keys() {
                    prop_assert_eq!(store.get(k).expect("get"), model.data.get(k).cloned());
                }
            }
            Op::SnapshotRestore => {
                let snap = store.snapshot().expect("snapshot");
                let mut other = fresh();
                if model.applied == 0 {
                    prop_assert!(other.restore(0, &snap).is_err());
                } else {
                    other.restore(model.applied, &snap).expect("restore");
                    prop_assert_eq!(observe(&other), observe(&store));
                    store = other;
                    durable = model.applied;
                }
            }
            Op::Sync => {
                prop_assert_eq!(store.sync().expect("sync"), model.applied);
                durable = model.applied;
            }
            Op::Crash => {
                store = crash(store);
                let at = store.applied_index();
                prop_assert!(at >= durable, "recovered {} < durable {}", at, durable);
                let Some(state) = history.get(&at) else {
                    return Err(TestCaseError::fail(format!(
                        "recovered to {at}, never reached"
                    )));
                };
                model = state.clone();
                history.retain(|i, _| *i <= at);
            }
        }
        check_same(&store, &model)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn mem_kv_matches_the_model(ops in prop::collection::vec(op(), 0..60)) {
        run_ops(MemKv::new(), &ops, MemKv::new, |s: MemKv| {
            let durable = s.durable_index();
            let s = mem_crash(s);
            assert_eq!(s.applied_index(), durable, "MemKv reverts to exactly its last sync");
            s
        })?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn sled_kv_matches_the_model(ops in prop::collection::vec(op(), 0..40)) {
        let mut make = sled_factory();
        let first = make();
        run_ops(first, &ops, make, sled_reopen)?;
    }
}
