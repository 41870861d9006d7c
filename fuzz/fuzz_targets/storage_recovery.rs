//! Damages the files of a data directory and opens it again: the raft log
//! (`EngineLogStore` on raft-engine) and the state machine (`SledKv` on
//! sled).
//!
//! Once per process a small valid directory is made (several log files, a
//! compaction, member metadata; sled batches with sessions, a real sync
//! and a batch after it). Each input picks one of the two stores and
//! flips, overwrites, zeroes, truncates, extends, removes, replaces or
//! copies over its files, or adds files with the names the store uses, in
//! a fresh copy on tmpfs.
//!
//! Asserts: `EngineLogStore::open` and `SledKv::open` return `Ok` or an
//! `Error::Storage` naming a path, never panic (raft-engine and sled panic
//! on some damage: the stores catch it, and no panic may escape or happen
//! on another thread while a store reports success). A store that opens
//! reads back consistently (every entry and term of its span, its state,
//! snapshot and sessions; a sled snapshot above index 0 restores into a
//! `MemKv`), takes
//! one more write, and opens again with that write in it.
#![no_main]

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use aoc_core::state::{
    ApplyBatch, ApplyCommand, KvCommand, KvStateMachine, MemKv, Session, SessionStamp, SledKv,
    StateMachine,
};
use aoc_core::storage::{EngineLogOptions, EngineLogStore, LogStore, LogWrite};
use aoc_core::Error;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use raft::eraftpb::{ConfState, Entry, HardState};

/// Small files, so that the log spans several of them.
const OPTS: EngineLogOptions = EngineLogOptions {
    target_file_size_bytes: 1024,
    purge_threshold_bytes: 4096,
};

#[derive(Arbitrary, Debug)]
struct Input {
    /// Which store the input damages and opens: the state machine (`true`)
    /// or the log.
    state: bool,
    damage: Vec<Damage>,
}

/// One change to the files (`file` picks one of the store's files).
#[derive(Arbitrary, Debug)]
enum Damage {
    Flip {
        file: u8,
        at: u32,
        mask: u8,
    },
    Overwrite {
        file: u8,
        at: u32,
        bytes: Vec<u8>,
    },
    Zero {
        file: u8,
        at: u32,
        len: u16,
    },
    Truncate {
        file: u8,
        len: u32,
    },
    Append {
        file: u8,
        bytes: Vec<u8>,
    },
    Remove {
        file: u8,
    },
    Replace {
        file: u8,
        bytes: Vec<u8>,
    },
    /// Copies one file over another.
    Copy {
        from: u8,
        to: u8,
    },
    /// A new file with a name the stores use.
    Create {
        name: u8,
        bytes: Vec<u8>,
    },
}

/// Names a store might find in its directory (relative to the data dir).
const NEW_LOG_NAMES: [&str; 5] = [
    "0000000000000099.raftlog",
    "0000000000000001.rewrite",
    "0000000000000002.rewrite",
    "0000000000000001.raftlog.tmp",
    "LOCK",
];
const NEW_STATE_NAMES: [&str; 4] = [
    "synced_index",
    "sled/blobs/1",
    "sled/snap.0000000000000000",
    "sled/conf",
];

/// The template directory's files: relative path and contents.
type Files = BTreeMap<PathBuf, Vec<u8>>;

fn entry(index: u64, term: u64) -> Entry {
    let mut e = Entry::new();
    e.index = index;
    e.term = term;
    e.data = format!("entry {index} of term {term}").into_bytes().into();
    e
}

fn read_tree(root: &Path, dir: &Path, out: &mut Files) {
    for e in std::fs::read_dir(dir).expect("the template is readable") {
        let e = e.expect("a directory entry");
        let path = e.path();
        if path.is_dir() {
            read_tree(root, &path, out);
        } else {
            let rel = path
                .strip_prefix(root)
                .expect("under the root")
                .to_path_buf();
            out.insert(rel, std::fs::read(&path).expect("a readable file"));
        }
    }
}

/// Makes the valid directory every input starts from.
fn template() -> Files {
    let dir = tempfile::tempdir_in(scratch()).expect("a temporary directory");
    {
        let log = EngineLogStore::open(&dir.path().join("log"), OPTS).expect("a new log");
        let mut cs = ConfState::new();
        cs.voters = vec![1, 2, 3];
        log.write(&LogWrite {
            conf_state: Some(cs),
            hard_state: Some(HardState::new()),
            ..Default::default()
        })
        .expect("bootstrap");
        for (first, term) in [(1u64, 1u64), (11, 2), (21, 2), (31, 3)] {
            let mut hs = HardState::new();
            hs.term = term;
            hs.vote = 1;
            hs.commit = first + 5;
            log.write(&LogWrite {
                entries: (first..first + 10).map(|i| entry(i, term)).collect(),
                hard_state: Some(hs),
                ..Default::default()
            })
            .expect("entries");
        }
        log.compact(8).expect("compaction");
        let mut meta = aoc_core::proto::MemberMeta::new();
        meta.maintenance = true;
        meta.maintenance_allowed = 2;
        log.write(&LogWrite {
            member_meta: Some(meta),
            ..Default::default()
        })
        .expect("member meta");
    }
    {
        let mut kv = SledKv::open(&dir.path().join("state")).expect("a new state machine");
        let put = KvCommand::put("cluster/7", "healthy").encode();
        let cas = KvCommand::cas("leader", None, Some(b"a".to_vec())).encode();
        kv.apply(&ApplyBatch {
            applied_index: 3,
            commands: vec![],
            new_sessions: vec![Session {
                client_id: 3,
                last_sequence: 0,
                last_response: vec![],
                last_active_ms: 10,
            }],
            expired_sessions: vec![],
        })
        .expect("a batch");
        kv.apply(&ApplyBatch {
            applied_index: 5,
            commands: vec![
                ApplyCommand {
                    index: 4,
                    command: &put,
                    session: None,
                },
                ApplyCommand {
                    index: 5,
                    command: &cas,
                    session: Some(SessionStamp {
                        client_id: 3,
                        sequence: 1,
                        stamp_ms: 20,
                    }),
                },
            ],
            new_sessions: vec![],
            expired_sessions: vec![],
        })
        .expect("a batch");
        kv.sync().expect("a sync");
        let big = KvCommand::put("big", vec![7u8; 3000]).encode();
        kv.apply(&ApplyBatch {
            applied_index: 6,
            commands: vec![ApplyCommand {
                index: 6,
                command: &big,
                session: None,
            }],
            new_sessions: vec![],
            expired_sessions: vec![],
        })
        .expect("a batch");
    }
    let mut files = Files::new();
    read_tree(dir.path(), dir.path(), &mut files);
    files
}

/// tmpfs when there is one: the stores sync on every write.
fn scratch() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

fn pick(files: &Files, i: u8) -> Option<PathBuf> {
    if files.is_empty() {
        return None;
    }
    files.keys().nth(usize::from(i) % files.len()).cloned()
}

fn damage(files: &mut Files, d: &Damage, new_names: &[&str]) {
    match d {
        Damage::Flip { file, at, mask } => {
            if let Some(f) = pick(files, *file).and_then(|p| files.get_mut(&p)) {
                if !f.is_empty() {
                    let at = *at as usize % f.len();
                    f[at] ^= (*mask).max(1);
                }
            }
        }
        Damage::Overwrite { file, at, bytes } => {
            if let Some(f) = pick(files, *file).and_then(|p| files.get_mut(&p)) {
                let at = *at as usize % (f.len() + 1);
                let end = (at + bytes.len()).min(f.len());
                f[at..end].copy_from_slice(&bytes[..end - at]);
            }
        }
        Damage::Zero { file, at, len } => {
            if let Some(f) = pick(files, *file).and_then(|p| files.get_mut(&p)) {
                let at = *at as usize % (f.len() + 1);
                let end = (at + usize::from(*len)).min(f.len());
                f[at..end].fill(0);
            }
        }
        Damage::Truncate { file, len } => {
            if let Some(f) = pick(files, *file).and_then(|p| files.get_mut(&p)) {
                let len = *len as usize % (f.len() + 1);
                f.truncate(len);
            }
        }
        Damage::Append { file, bytes } => {
            if let Some(f) = pick(files, *file).and_then(|p| files.get_mut(&p)) {
                f.extend_from_slice(bytes);
            }
        }
        Damage::Remove { file } => {
            if let Some(p) = pick(files, *file) {
                files.remove(&p);
            }
        }
        Damage::Replace { file, bytes } => {
            if let Some(f) = pick(files, *file).and_then(|p| files.get_mut(&p)) {
                *f = bytes.clone();
            }
        }
        Damage::Copy { from, to } => {
            if let (Some(from), Some(to)) = (pick(files, *from), pick(files, *to)) {
                let bytes = files[&from].clone();
                files.insert(to, bytes);
            }
        }
        Damage::Create { name, bytes } => {
            let name = new_names[usize::from(*name) % new_names.len()];
            files.insert(PathBuf::from(name), bytes.clone());
        }
    }
}

fn write_tree(root: &Path, files: &Files) {
    std::fs::create_dir_all(root).expect("a directory");
    for (rel, bytes) in files {
        let path = root.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("a directory");
        }
        std::fs::write(&path, bytes).expect("a file");
    }
}

thread_local! {
    /// Whether this is the thread that runs the fuzz target.
    static FUZZ_THREAD: Cell<bool> = const { Cell::new(false) };
    /// The last panic on the fuzz thread (the stores catch some).
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Panics on other threads (raft-engine's and sled's own) since the last
/// look.
static OTHER_PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The stores catch the panics of raft-engine and sled, which libFuzzer's
/// hook would turn into aborts: record them instead. A panic that escapes
/// the fuzz target still aborts (see the target below).
fn install_panic_hook() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        panic::set_hook(Box::new(|info| {
            let thread = std::thread::current();
            let text = format!("{info} (thread {:?})", thread.name().unwrap_or("unnamed"));
            if FUZZ_THREAD.with(Cell::get) {
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(text));
            } else {
                OTHER_PANICS
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(text);
            }
        }));
    });
    FUZZ_THREAD.with(|f| f.set(true));
}

fn other_panics() -> Vec<String> {
    std::mem::take(&mut *OTHER_PANICS.lock().unwrap_or_else(|e| e.into_inner()))
}

fn storage_error(e: &Error, root: &Path) {
    match e {
        Error::Storage { path, reason } => {
            assert!(
                path.starts_with(root),
                "the error names a path outside the store: {e}"
            );
            assert!(!reason.is_empty());
        }
        other => panic!("opening damaged storage gives a storage error, not {other:?}"),
    }
}

fn check_log(dir: &Path, root: &Path) {
    let log = match EngineLogStore::open(dir, OPTS) {
        Ok(log) => log,
        Err(e) => return storage_error(&e, root),
    };
    let panics = other_panics();
    assert!(panics.is_empty(), "the log opened after panics: {panics:?}");
    let state = log.initial_state().expect("the state of an open log");
    let first = log.first_index().expect("first index");
    let last = log.last_index().expect("last index");
    assert!(first <= last + 1, "first {first}, last {last}");
    let meta = log.snapshot_metadata().expect("the compaction point");
    assert_eq!(
        meta.index + 1,
        first,
        "the compaction point precedes the log"
    );
    log.member_meta().expect("member metadata");
    let mut last_term = log.term(first - 1).expect("the compaction point's term");
    if last >= first {
        let entries = log.entries(first, last + 1, None).expect("every entry");
        assert_eq!(entries.len() as u64, last + 1 - first);
        for (e, i) in entries.iter().zip(first..) {
            assert_eq!(e.index, i);
            assert_eq!(log.term(i).expect("a term"), e.term);
        }
        last_term = entries.last().map_or(last_term, |e| e.term);
    }
    let _ = log.size_bytes();
    // One more write, then it opens again with it.
    let term = last_term.max(state.hard_state.term);
    let mut hs = state.hard_state.clone();
    hs.term = term;
    log.write(&LogWrite {
        entries: vec![entry(last + 1, term)],
        hard_state: Some(hs),
        ..Default::default()
    })
    .expect("an opened log takes a write");
    drop(log);
    let log = EngineLogStore::open(dir, OPTS).expect("a log that took a write opens again");
    assert_eq!(log.last_index().expect("last index"), last + 1);
    assert_eq!(log.term(last + 1).expect("the new entry's term"), term);
}

fn check_state(dir: &Path, root: &Path) {
    let mut kv = match SledKv::open(dir) {
        Ok(kv) => kv,
        Err(e) => return storage_error(&e, root),
    };
    let applied = kv.applied_index();
    let sessions = kv.sessions().expect("the sessions of an open store");
    let pairs = kv.scan(b"").expect("a scan of an open store");
    for (k, v) in &pairs {
        assert_eq!(kv.get(k).expect("a read").as_ref(), Some(v));
    }
    let snapshot = kv.snapshot().expect("a snapshot of an open store");
    // A store at index 0 (its files removed) holds no state to restore.
    if applied > 0 {
        let mut copy = MemKv::new();
        copy.restore(applied, &snapshot)
            .expect("the snapshot of an open store restores");
        assert_eq!(copy.scan(b"").expect("a scan"), pairs);
        assert_eq!(copy.sessions().expect("sessions").len(), sessions.len());
    }
    let panics = other_panics();
    assert!(panics.is_empty(), "sled panicked meanwhile: {panics:?}");
    // One more batch, synced, then it opens again with it.
    let put = KvCommand::put("after", "damage").encode();
    let next = applied + 1;
    kv.apply(&ApplyBatch {
        applied_index: next,
        commands: vec![ApplyCommand {
            index: next,
            command: &put,
            session: None,
        }],
        new_sessions: vec![],
        expired_sessions: vec![],
    })
    .expect("an opened store takes a batch");
    assert_eq!(kv.sync().expect("an opened store syncs"), next);
    drop(kv);
    let kv = SledKv::open(dir).expect("a store that took a batch opens again");
    assert_eq!(kv.applied_index(), next);
    assert_eq!(
        kv.get(b"after").expect("a read").as_deref(),
        Some(&b"damage"[..])
    );
}

fn run(input: &Input) {
    static TEMPLATE: OnceLock<Files> = OnceLock::new();
    let (store, new_names): (&str, &[&str]) = if input.state {
        ("state", &NEW_STATE_NAMES)
    } else {
        ("log", &NEW_LOG_NAMES)
    };
    let mut files: Files = TEMPLATE
        .get_or_init(template)
        .iter()
        .filter_map(|(p, b)| Some((p.strip_prefix(store).ok()?.to_path_buf(), b.clone())))
        .collect();
    for d in input.damage.iter().take(16) {
        damage(&mut files, d, new_names);
    }
    let dir = tempfile::tempdir_in(scratch()).expect("a temporary directory");
    let root = dir.path().join(store);
    write_tree(&root, &files);
    other_panics();
    if input.state {
        check_state(&root, dir.path());
    } else {
        check_log(&root, dir.path());
    }
}

fuzz_target!(|input: Input| {
    install_panic_hook();
    if panic::catch_unwind(AssertUnwindSafe(|| run(&input))).is_err() {
        let last = LAST_PANIC.with(|p| p.borrow_mut().take());
        eprintln!("panic: {}", last.as_deref().unwrap_or("(no message)"));
        eprintln!("panics on other threads: {:?}", other_panics());
        std::process::abort();
    }
    LAST_PANIC.with(|p| p.borrow_mut().take());
});
