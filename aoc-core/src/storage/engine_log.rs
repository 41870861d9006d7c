//! The raft log on raft-engine 0.4 (TiKV's log store): [`EngineLogStore`].
//!
//! # Layout
//! One raft group (region id 1). One [`LogWrite`] is ONE raft-engine
//! `LogBatch` written with `sync = true` (one `fdatasync`): the entries, and
//! the hard state, the conf state and the compaction point (a
//! `SnapshotMetadata`) as key/values of the same batch, so a write is atomic
//! and durable when [`LogStore::write`] returns.
//! - Installing a snapshot starts the batch with `Command::Clean`, which
//!   drops the group's entries AND key/values when the batch is applied (in
//!   memory and on replay), then puts the three key/values again. This is how
//!   TiKV re-creates a region; raft-engine's purge keeps it correct
//!   ("tombstones before entries" in `purge.rs`).
//! - Compaction writes the new compaction point and `Command::Compact` in one
//!   synced batch, then lets raft-engine delete files it no longer needs.
//! - raft-engine 0.4.2's `Engine::sync()` writes an empty batch, which
//!   returns before syncing: it syncs nothing, so it is never used here.
//!
//! # Recovery
//! raft-engine's `TolerateTailCorruption` silently truncates the newest file
//! at its first bad byte (losing everything after it, acknowledged or not),
//! and only checks the checksum of entry payloads for the last batch of each
//! file; `AbsoluteConsistency` refuses even the harmless preallocated zeros
//! that every unclean shutdown leaves at the end of the newest file. So
//! before raft-engine sees the directory, [`EngineLogStore::open`] checks
//! every file itself (names, sequence, and every checksum of every batch,
//! entries included) and accepts only what a crash leaves after the last
//! complete write of the newest file of a queue:
//! - zeros (space raft-engine preallocated): dropped, logged at info level;
//! - a header cut short (a file being created): dropped and reported;
//! - in the append queue only, bytes that contain no complete write and
//!   nothing but zeros beyond the announced extent of the broken write: a
//!   write torn by the crash, never acknowledged. Dropped and reported with
//!   `tracing::warn!` and [`EngineLogStore::recovery_note`]. (A torn-looking
//!   last write of the rewrite queue is refused: raft-engine deletes the
//!   originals once it is synced, so it may be the only copy of live data.)
//!
//! raft-engine then opens in `TolerateTailCorruption` mode (which truncates
//! those tails), and the length it leaves of every newest file is checked
//! against ours. Anything else is an [`Error::Storage`] naming the file and
//! what is wrong with it, and nothing is changed. A damaged last write that
//! HAD been acknowledged cannot be told from a torn one: it is dropped too,
//! with the same warning.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use parking_lot::{Mutex, RwLock};
use raft::eraftpb::{ConfState, Entry, HardState, SnapshotMetadata};
use raft::{RaftState, StorageError};
use raft_engine::{
    Command, Config, Engine, LogBatch, MessageExt, ReadableSize, RecoveryMode, Version,
};

use super::{LogStore, LogWrite};
use crate::{Error, Result};

/// The one raft group stored in the engine.
const REGION: u64 = 1;
const KEY_HARD_STATE: &[u8] = b"hard_state";
const KEY_CONF_STATE: &[u8] = b"conf_state";
const KEY_COMPACTION_POINT: &[u8] = b"compaction_point";
const KEY_MEMBER_META: &[u8] = b"member_meta";
/// Bytes of entries read per call when rebuilding the term index at open.
const OPEN_READ_CHUNK: usize = 4 << 20;

/// Tells raft-engine where the index of a raft `Entry` is.
struct EntryExt;

impl MessageExt for EntryExt {
    type Entry = Entry;

    fn index(e: &Entry) -> u64 {
        e.index
    }
}

/// Tuning of an [`EngineLogStore`].
///
/// Disk use stays below about `purge_threshold_bytes` plus one file once the
/// log is compacted regularly: raft-engine deletes old files only when the
/// total exceeds the threshold (so the threshold is also the floor of disk
/// use), and only files that hold no live entry (a member that lags keeps
/// its entries, and the files that hold them, alive). Opening reads every
/// file once to check it, and holds the largest file in memory meanwhile.
///
/// Measured (see `measured.md`): a witness-like load stays at 1.8 MiB on
/// disk with 256 KiB files and a 1 MiB threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineLogOptions {
    /// Size at which raft-engine starts a new log file. Default 8 MiB.
    pub target_file_size_bytes: u64,
    /// Total size of the log files above which [`LogStore::compact`] asks
    /// raft-engine to delete (or rewrite) old files. Must be at least
    /// `target_file_size_bytes`. Default 64 MiB.
    pub purge_threshold_bytes: u64,
}

impl Default for EngineLogOptions {
    fn default() -> Self {
        EngineLogOptions {
            target_file_size_bytes: 8 << 20,
            purge_threshold_bytes: 64 << 20,
        }
    }
}

impl EngineLogOptions {
    /// The witness's tuning: 64 KiB files, old files purged once the log
    /// passes 256 KiB. The witness keeps only the entries one data member
    /// still lacks (a few hundred at most in sync mode) and compacts in
    /// small steps, so small files let raft-engine delete them soon: its
    /// directory stays below 1 MB (docs/benchmarks.md).
    ///
    /// ```
    /// use aoc_core::storage::EngineLogOptions;
    /// let w = EngineLogOptions::witness();
    /// assert!(w.purge_threshold_bytes < EngineLogOptions::default().target_file_size_bytes);
    /// ```
    pub fn witness() -> Self {
        EngineLogOptions {
            target_file_size_bytes: 64 << 10,
            purge_threshold_bytes: 256 << 10,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.target_file_size_bytes == 0 {
            return Err(Error::config(
                "target_file_size_bytes",
                "must be greater than zero",
            ));
        }
        if self.purge_threshold_bytes < self.target_file_size_bytes {
            return Err(Error::config(
                "purge_threshold_bytes",
                format!(
                    "{} is below target_file_size_bytes ({}); raft-engine requires it to be at least that",
                    self.purge_threshold_bytes, self.target_file_size_bytes
                ),
            ));
        }
        Ok(())
    }
}

/// What the store knows without reading the disk. Kept in memory so that
/// `term`, `first_index` and `last_index` (called by raft on every step)
/// never do I/O.
#[derive(Debug, Clone, Default)]
struct State {
    /// The compaction point (index, term; the conf state at the time).
    meta: SnapshotMetadata,
    hard_state: HardState,
    conf_state: ConfState,
    member_meta: crate::proto::MemberMeta,
    /// Last stored index (`meta.index` when no entry is stored).
    last: u64,
    /// `(first index, term)` of each run of equal terms among the stored
    /// entries, ascending: a few runs for the whole log, as terms change
    /// rarely.
    terms: Vec<(u64, u64)>,
}

impl State {
    fn first(&self) -> u64 {
        self.meta.index + 1
    }

    /// The term of a stored entry (not of the compaction point).
    fn term_of(&self, index: u64) -> Option<u64> {
        if index <= self.meta.index || index > self.last {
            return None;
        }
        let runs_starting_at_or_before = self.terms.partition_point(|&(start, _)| start <= index);
        let run = runs_starting_at_or_before.checked_sub(1)?;
        self.terms.get(run).map(|&(_, term)| term)
    }

    /// Forgets stored entries at and above `index`.
    fn truncate_from(&mut self, index: u64) {
        self.terms.retain(|&(start, _)| start < index);
        self.last = self.last.min(index.saturating_sub(1));
    }

    /// Records entry `index` (which must be `last + 1`) of term `term`.
    fn push(&mut self, index: u64, term: u64) {
        if self.terms.last().map(|&(_, t)| t) != Some(term) {
            self.terms.push((index, term));
        }
        self.last = index;
    }

    /// Discards entries up to and including `index`, of term `term`.
    fn compact_to(&mut self, index: u64, term: u64) {
        let keep_from = index + 1;
        if keep_from > self.last {
            self.terms.clear();
        } else {
            let starting_at_or_before = self.terms.partition_point(|&(s, _)| s <= keep_from);
            if starting_at_or_before > 0 {
                self.terms.drain(..starting_at_or_before - 1);
                if let Some(first) = self.terms.first_mut() {
                    first.0 = keep_from;
                }
            }
        }
        self.last = self.last.max(index);
        self.meta.index = index;
        self.meta.term = term;
        self.meta.set_conf_state(self.conf_state.clone());
    }

    /// Applies `w` as [`LogWrite`] documents it; refuses an append that
    /// would leave a gap, rewrite the compaction point or is not contiguous
    /// (raft-engine would panic AFTER making such a batch durable, and again
    /// on every later open).
    fn apply(&mut self, w: &LogWrite) -> std::result::Result<(), String> {
        if let Some(snapshot) = &w.snapshot {
            self.meta = snapshot.clone();
            self.conf_state = snapshot.get_conf_state().clone();
            self.terms.clear();
            self.last = snapshot.index;
        }
        if let Some(first) = w.entries.first() {
            let first_index = first.index;
            if first_index <= self.meta.index || first_index > self.last + 1 {
                return Err(format!(
                    "an append at index {first_index} would leave a gap or rewrite the compaction point (the log holds {}..={})",
                    self.first(),
                    self.last
                ));
            }
            for pair in w.entries.windows(2) {
                if pair[1].index != pair[0].index + 1 {
                    return Err(format!(
                        "appended entries are not contiguous: index {} is followed by {}",
                        pair[0].index, pair[1].index
                    ));
                }
            }
            self.truncate_from(first_index);
            for e in &w.entries {
                self.push(e.index, e.term);
            }
        }
        if let Some(hs) = &w.hard_state {
            self.hard_state = hs.clone();
        }
        if let Some(m) = &w.member_meta {
            self.member_meta = m.clone();
        }
        if let Some(cs) = &w.conf_state {
            self.conf_state = cs.clone();
        }
        Ok(())
    }
}

/// The [`LogStore`] on raft-engine (see the module docs for the layout and
/// the recovery rules).
pub struct EngineLogStore {
    dir: PathBuf,
    engine: Engine,
    state: RwLock<State>,
    /// Serialises engine writes, so that raft-engine never groups two of
    /// our batches under one `fdatasync`: a crash can then tear only the
    /// last batch of the newest file, which is what recovery relies on to
    /// tell a torn write from damage. Holds the reason raft-engine panicked
    /// in a write, if it did: the store then refuses further writes (after a
    /// failed `fdatasync` the file's contents are unknown).
    writer: Mutex<Option<String>>,
    recovery_note: Option<String>,
}

impl fmt::Debug for EngineLogStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.read();
        f.debug_struct("EngineLogStore")
            .field("dir", &self.dir)
            .field("first_index", &state.first())
            .field("last_index", &state.last)
            .field("recovery_note", &self.recovery_note)
            .finish_non_exhaustive()
    }
}

impl EngineLogStore {
    /// Opens (creating it if needed) the log store in `dir`, which must hold
    /// nothing but the store's own files.
    ///
    /// Every file is checked first (see the module docs): a write torn by a
    /// crash at the end of the newest file is dropped and reported (a
    /// `tracing::warn!` and [`Self::recovery_note`]); any other damage, an
    /// unexpected or missing file, or a directory another process holds is
    /// an [`Error::Storage`] naming the path, found before any file is
    /// changed. (The consistency of the recovered state, checked last, is
    /// the exception: by then raft-engine has dropped the torn tail, if any.)
    pub fn open(dir: &Path, opts: EngineLogOptions) -> Result<Self> {
        opts.validate()?;
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::storage(dir, format!("cannot create the log directory: {e}")))?;
        // raft-engine takes its directory as a String.
        let dir_str = dir.to_str().ok_or_else(|| {
            Error::storage(
                dir,
                "the path is not valid UTF-8, which raft-engine requires",
            )
        })?;

        let files = recovery::list(dir)?;
        let newest = recovery::check(&files)?;
        // Only the newest file of each queue can be truncated by this mode,
        // and `check` has verified that everything it would drop is a torn
        // write or empty space; without such a tail, the strict mode turns
        // any disagreement between `check` and raft-engine into an error.
        let recovery_mode = if newest.iter().all(|n| n.tail.is_none()) {
            RecoveryMode::AbsoluteConsistency
        } else {
            RecoveryMode::TolerateTailCorruption
        };
        let cfg = Config {
            dir: dir_str.to_owned(),
            recovery_mode,
            target_file_size: ReadableSize(opts.target_file_size_bytes),
            purge_threshold: ReadableSize(opts.purge_threshold_bytes),
            format_version: Version::V2,
            // Recycled files keep their old bytes after the new writes and
            // leave purged files behind a gap in the sequence after a crash:
            // without recycling, everything after the last write of the
            // newest file is zeros and the sequence never has a gap, which
            // makes both rules of `recovery::check` exact.
            enable_log_recycle: false,
            prefill_for_recycle: false,
            ..Config::default()
        };
        let engine = open_engine(dir, cfg)?;
        let recovery_note = recovery::confirm(&newest)?;
        let state = load_state(&engine, dir)?;
        Ok(EngineLogStore {
            dir: dir.to_path_buf(),
            engine,
            state: RwLock::new(state),
            writer: Mutex::new(None),
            recovery_note,
        })
    }

    /// The directory of the store.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What opening had to drop, if anything: a write torn by a crash at the
    /// end of the newest log file (never acknowledged, as it never finished).
    /// `None` after a clean shutdown or a crash between writes.
    pub fn recovery_note(&self) -> Option<&str> {
        self.recovery_note.as_deref()
    }

    fn error(&self, reason: impl fmt::Display) -> Error {
        Error::storage(&self.dir, reason)
    }

    fn read_error(&self, reason: impl fmt::Display) -> raft::Error {
        raft::Error::Store(StorageError::Other(Box::new(self.error(reason))))
    }

    /// Writes `batch` durably. `failed` is the guard of `self.writer`.
    fn write_batch(
        &self,
        failed: &mut Option<String>,
        batch: &mut LogBatch,
        what: &str,
    ) -> Result<()> {
        if let Some(reason) = failed.as_ref() {
            return Err(self.error(format!(
                "{what} refused: an earlier write failed inside raft-engine ({reason}); reopen the store"
            )));
        }
        // raft-engine panics when `fdatasync` fails ("pipe::sync()"): catch
        // it, so the caller gets an error, and refuse every later write.
        match catch_unwind(AssertUnwindSafe(|| self.engine.write(batch, true))) {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.error(format!("{what} failed: {e}"))),
            Err(panic) => {
                let text = panic_text(panic.as_ref());
                *failed = Some(text.clone());
                Err(self.error(format!(
                    "{what} failed: raft-engine panicked ({text}); the store refuses writes until reopened"
                )))
            }
        }
    }

    fn put<M: protobuf::Message>(&self, batch: &mut LogBatch, key: &[u8], value: &M) -> Result<()> {
        batch.put_message(REGION, key.to_vec(), value).map_err(|e| {
            self.error(format!(
                "cannot encode {}: {e}",
                String::from_utf8_lossy(key)
            ))
        })
    }
}

impl LogStore for EngineLogStore {
    fn initial_state(&self) -> Result<RaftState> {
        let s = self.state.read();
        Ok(RaftState::new(s.hard_state.clone(), s.conf_state.clone()))
    }

    fn first_index(&self) -> Result<u64> {
        Ok(self.state.read().first())
    }

    fn last_index(&self) -> Result<u64> {
        Ok(self.state.read().last)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        let s = self.state.read();
        if index == s.meta.index {
            return Ok(s.meta.term);
        }
        if index < s.meta.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        s.term_of(index)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn entries(&self, low: u64, high: u64, max_size: Option<u64>) -> raft::Result<Vec<Entry>> {
        {
            let s = self.state.read();
            if low < s.first() {
                return Err(raft::Error::Store(StorageError::Compacted));
            }
            if high > s.last + 1 || low > high {
                return Err(raft::Error::Store(StorageError::Unavailable));
            }
        }
        if low == high {
            return Ok(Vec::new());
        }
        // The state lock is not held while reading the files, so that a
        // write (and its fdatasync) never waits for a read; a write that
        // compacts or truncates meanwhile shows up as the engine's own
        // "compacted" / "not found", mapped to raft's errors below.
        let limit = max_size.map(|m| usize::try_from(m).unwrap_or(usize::MAX));
        let mut out = Vec::new();
        let fetch = |out: &mut Vec<Entry>| {
            catch_unwind(AssertUnwindSafe(|| {
                self.engine
                    .fetch_entries_to::<EntryExt>(REGION, low, high, limit, out)
            }))
        };
        let mut fetched = fetch(&mut out);
        // A purge running meanwhile may rewrite live entries into the
        // rewrite queue and delete the file a read had just located them in
        // ("file seqno out of range"): the memtable already points to the
        // new place, so reading again finds them.
        for _ in 0..3 {
            if !matches!(fetched, Ok(Err(raft_engine::Error::Corruption(_)))) {
                break;
            }
            out.clear();
            fetched = fetch(&mut out);
        }
        match fetched {
            Ok(Ok(_)) => {}
            Ok(Err(raft_engine::Error::EntryCompacted)) => {
                return Err(raft::Error::Store(StorageError::Compacted))
            }
            Ok(Err(raft_engine::Error::EntryNotFound)) => {
                return Err(raft::Error::Store(StorageError::Unavailable))
            }
            // A compaction and purge running meanwhile can delete the file
            // an entry was being read from ("file seqno out of range"):
            // that is a compacted entry, not damage.
            Ok(Err(_)) if low < self.state.read().first() => {
                return Err(raft::Error::Store(StorageError::Compacted))
            }
            Ok(Err(e)) => {
                return Err(self.read_error(format!("cannot read entries [{low}, {high}): {e}")))
            }
            Err(panic) => {
                return Err(self.read_error(format!(
                    "raft-engine panicked reading entries [{low}, {high}): {}",
                    panic_text(panic.as_ref())
                )))
            }
        }
        if out.is_empty() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        // raft-engine stops on the same rule (at least one entry, then up to
        // `max_size` encoded bytes); raft's own function makes it exact.
        raft::util::limit_size(&mut out, max_size);
        Ok(out)
    }

    fn snapshot_metadata(&self) -> Result<SnapshotMetadata> {
        let s = self.state.read();
        let mut meta = s.meta.clone();
        meta.set_conf_state(s.conf_state.clone());
        Ok(meta)
    }

    fn member_meta(&self) -> Result<crate::proto::MemberMeta> {
        Ok(self.state.read().member_meta.clone())
    }

    fn write(&self, w: &LogWrite) -> Result<()> {
        if w.is_empty() {
            return Ok(());
        }
        let mut failed = self.writer.lock();
        let mut next = self.state.read().clone();
        next.apply(w)
            .map_err(|reason| self.error(format!("write refused: {reason}")))?;
        let mut batch = LogBatch::default();
        if w.snapshot.is_some() {
            // `Clean` removes the group (entries and key/values) when the
            // batch is applied, atomically with what follows it in the same
            // batch: the three key/values are written again after it.
            batch.add_command(REGION, Command::Clean);
            self.put(&mut batch, KEY_COMPACTION_POINT, &next.meta)?;
            self.put(&mut batch, KEY_HARD_STATE, &next.hard_state)?;
            self.put(&mut batch, KEY_CONF_STATE, &next.conf_state)?;
            self.put(&mut batch, KEY_MEMBER_META, &next.member_meta)?;
        } else {
            if let Some(hs) = &w.hard_state {
                self.put(&mut batch, KEY_HARD_STATE, hs)?;
            }
            if let Some(cs) = &w.conf_state {
                self.put(&mut batch, KEY_CONF_STATE, cs)?;
            }
            if let Some(m) = &w.member_meta {
                self.put(&mut batch, KEY_MEMBER_META, m)?;
            }
        }
        // raft-engine drops stored entries at and above the first index
        // appended (tested by `conflicting_append_truncates`).
        batch
            .add_entries::<EntryExt>(REGION, &w.entries)
            .map_err(|e| self.error(format!("cannot encode entries: {e}")))?;
        self.write_batch(&mut failed, &mut batch, "log write")?;
        *self.state.write() = next;
        Ok(())
    }

    fn compact(&self, index: u64) -> Result<()> {
        let mut failed = self.writer.lock();
        let mut next = self.state.read().clone();
        if index < next.first() {
            return Ok(());
        }
        if index > next.last {
            return Err(self.error(format!(
                "cannot compact to {index}: beyond the last index {}",
                next.last
            )));
        }
        let term = next
            .term_of(index)
            .ok_or_else(|| self.error(format!("no term known for index {index}")))?;
        next.compact_to(index, term);
        let mut batch = LogBatch::default();
        self.put(&mut batch, KEY_COMPACTION_POINT, &next.meta)?;
        // `Engine::compact_to` would write this command in a batch of its
        // own, NOT synced; here the new compaction point and the discarding
        // of the entries are one synced, atomic write.
        batch.add_command(REGION, Command::Compact { index: index + 1 });
        self.write_batch(&mut failed, &mut batch, "compaction")?;
        *self.state.write() = next;
        // Deleting (or rewriting) files no longer needed. A panic here
        // happens during a rewrite's fdatasync: same treatment as a write.
        match catch_unwind(AssertUnwindSafe(|| self.engine.purge_expired_files())) {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.error(format!(
                "compaction to {index} is recorded, but deleting old log files failed: {e}"
            ))),
            Err(panic) => {
                let text = panic_text(panic.as_ref());
                *failed = Some(text.clone());
                Err(self.error(format!(
                    "compaction to {index} is recorded, but raft-engine panicked deleting old log files ({text}); the store refuses writes until reopened"
                )))
            }
        }
    }

    fn size_bytes(&self) -> u64 {
        // raft-engine's own figure counts whole files (number of files x
        // target size); the bytes on disk are what an operator compares
        // with a budget.
        std::fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.metadata().ok())
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }
}

/// The text of a panic payload.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

fn open_engine(dir: &Path, cfg: Config) -> Result<Engine> {
    // raft-engine 0.4.2 panics on some inputs instead of returning an error
    // (a file name that is not UTF-8 or has a multi-byte character in its
    // first 16 bytes, a key/value or a "hole" in replayed data that passed
    // its checksum, a failed thread-pool creation). `recovery::list` rules
    // out the names; the rest must still be an error, not a crash.
    match catch_unwind(AssertUnwindSafe(|| Engine::open(cfg))) {
        Ok(Ok(engine)) => Ok(engine),
        Ok(Err(e)) => Err(Error::storage(
            dir,
            format!("raft-engine cannot open the log: {e}"),
        )),
        Err(panic) => Err(Error::storage(
            dir,
            format!(
                "raft-engine panicked recovering the log: {}",
                panic_text(panic.as_ref())
            ),
        )),
    }
}

fn get_message<M: protobuf::Message>(engine: &Engine, dir: &Path, key: &[u8]) -> Result<Option<M>> {
    engine.get_message::<M>(REGION, key).map_err(|e| {
        Error::storage(
            dir,
            format!(
                "cannot decode the stored {}: {e}",
                String::from_utf8_lossy(key)
            ),
        )
    })
}

/// Reads the state back from a freshly opened engine and checks that it
/// hangs together.
fn load_state(engine: &Engine, dir: &Path) -> Result<State> {
    if let Some(other) = engine.raft_groups().into_iter().find(|&g| g != REGION) {
        return Err(Error::storage(
            dir,
            format!("the log holds raft group {other}, which this store never writes: the directory belongs to something else"),
        ));
    }
    let mut state = State {
        meta: get_message(engine, dir, KEY_COMPACTION_POINT)?.unwrap_or_default(),
        hard_state: get_message(engine, dir, KEY_HARD_STATE)?.unwrap_or_default(),
        conf_state: get_message(engine, dir, KEY_CONF_STATE)?.unwrap_or_default(),
        member_meta: get_message(engine, dir, KEY_MEMBER_META)?.unwrap_or_default(),
        ..State::default()
    };
    // Index arithmetic (`index + 1`) must not overflow on what was read.
    if state.meta.index == u64::MAX {
        return Err(Error::storage(
            dir,
            "the stored compaction point has an impossible index",
        ));
    }
    state.last = state.meta.index;
    let (first, last) = match (engine.first_index(REGION), engine.last_index(REGION)) {
        (None, None) => return Ok(state),
        (Some(first), Some(last)) if first <= last && last < u64::MAX => (first, last),
        (first, last) => {
            return Err(Error::storage(
                dir,
                format!(
                    "raft-engine reports an inconsistent log span: first {first:?}, last {last:?}"
                ),
            ))
        }
    };
    if first != state.first() {
        return Err(Error::storage(
            dir,
            format!(
                "the stored entries start at index {first}, but the compaction point is {}: entries are missing or were not discarded",
                state.meta.index
            ),
        ));
    }
    // Reading every entry rebuilds the term index and makes raft-engine
    // verify the checksum of every live entry block (it checks only the
    // last block of each file when it recovers).
    let mut next = first;
    while next <= last {
        let mut chunk = Vec::new();
        let fetched = catch_unwind(AssertUnwindSafe(|| {
            engine.fetch_entries_to::<EntryExt>(
                REGION,
                next,
                last + 1,
                Some(OPEN_READ_CHUNK),
                &mut chunk,
            )
        }));
        let reason = match fetched {
            Ok(Ok(_)) if !chunk.is_empty() => None,
            Ok(Ok(_)) => Some("no entry returned".to_owned()),
            Ok(Err(e)) => Some(e.to_string()),
            Err(panic) => Some(format!(
                "raft-engine panicked: {}",
                panic_text(panic.as_ref())
            )),
        };
        if let Some(reason) = reason {
            return Err(Error::storage(
                dir,
                format!("cannot read the stored entries from index {next}: {reason}"),
            ));
        }
        for e in chunk {
            if e.index != next {
                return Err(Error::storage(
                    dir,
                    format!(
                        "the entry stored at index {next} says it is index {}",
                        e.index
                    ),
                ));
            }
            state.push(e.index, e.term);
            next += 1;
        }
    }
    Ok(state)
}

/// The checks made before raft-engine opens a directory: which files are
/// there, and whether their bytes are intact. It mirrors raft-engine 0.4.2's
/// file format (`file_pipe_log/format.rs`, `log_batch.rs`, `reader.rs`):
///
/// - file `{seq:016}.raftlog` (append queue) or `{seq:016}.rewrite`
///   (rewrite queue): a header (magic, u64 BE version, V2: u64 BE alignment)
///   then batches back to back;
/// - batch: u64 BE `len << 8 | compression`, u64 BE footer offset (both
///   relative to the batch start; `len` counts the whole batch), the entries
///   block (payload + CRC-32 LE) when the footer offset is past the 16-byte
///   header, then the footer (items + CRC-32 LE, XOR-ed in V2 with the low
///   32 bits of the file's sequence number, so that a batch copied into
///   another file does not verify).
mod recovery {
    use std::path::{Path, PathBuf};

    use crate::{Error, Result};

    const MAGIC: &[u8] = b"RAFT-LOG-FILE-HEADER-9986AB3E47F320B394C8E84916EB0ED5";
    const BATCH_HEADER_LEN: usize = 16;
    const CHECKSUM_LEN: usize = 4;
    const SEQ_WIDTH: usize = 16;
    const APPEND_SUFFIX: &str = ".raftlog";
    const REWRITE_SUFFIX: &str = ".rewrite";
    const RESERVED_SUFFIX: &str = ".raftlog.reserved";

    /// One log file.
    #[derive(Debug, Clone)]
    pub(super) struct LogFile {
        pub seq: u64,
        pub path: PathBuf,
    }

    /// The log files of the two queues, each in sequence order.
    #[derive(Debug, Default)]
    pub(super) struct LogFiles {
        pub append: Vec<LogFile>,
        pub rewrite: Vec<LogFile>,
    }

    /// What follows the last complete write of the newest file of a queue.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(super) enum TailKind {
        /// Zeros only: space raft-engine preallocated and never wrote (every
        /// unclean shutdown leaves some). Nothing is lost.
        Preallocated,
        /// A write torn by the crash: `bytes` bytes of it reached the disk.
        TornWrite { bytes: usize, reason: String },
        /// The file was being created: its header is incomplete.
        TornHeader,
    }

    /// What the check found in the newest file of a queue, and so what
    /// raft-engine must leave of it.
    #[derive(Debug, Clone)]
    pub(super) struct Newest {
        pub path: PathBuf,
        /// Where the tail starts (the file's length when there is none):
        /// the length raft-engine must leave.
        pub offset: usize,
        /// What raft-engine must drop, if anything.
        pub tail: Option<TailKind>,
    }

    /// Lists the directory: only raft-engine's own file names may appear,
    /// and the sequence of each queue must have no gap (raft-engine would
    /// silently ignore every file before a gap).
    pub(super) fn list(dir: &Path) -> Result<LogFiles> {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| Error::storage(dir, format!("cannot list the log directory: {e}")))?;
        let mut files = LogFiles::default();
        for entry in entries {
            let entry = entry
                .map_err(|e| Error::storage(dir, format!("cannot list the log directory: {e}")))?;
            let path = entry.path();
            // raft-engine ignores what is not a file (`lost+found` on a
            // dedicated file system, say); so do we.
            if path.is_dir() {
                continue;
            }
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                return Err(Error::storage(
                    &path,
                    "unexpected file in the log directory (its name is not UTF-8): remove it",
                ));
            };
            if name == "LOCK" || parse_name(&name, RESERVED_SUFFIX).is_some() {
                continue;
            }
            if let Some(seq) = parse_name(&name, APPEND_SUFFIX) {
                files.append.push(LogFile { seq, path });
            } else if let Some(seq) = parse_name(&name, REWRITE_SUFFIX) {
                files.rewrite.push(LogFile { seq, path });
            } else {
                return Err(Error::storage(
                    &path,
                    "unexpected file in the log directory: only raft-engine's files (LOCK, NNNNNNNNNNNNNNNN.raftlog, NNNNNNNNNNNNNNNN.rewrite) belong there",
                ));
            }
        }
        for queue in [&mut files.append, &mut files.rewrite] {
            queue.sort_by_key(|f| f.seq);
            for pair in queue.windows(2) {
                if pair[1].seq != pair[0].seq + 1 {
                    return Err(Error::storage(
                        &pair[1].path,
                        format!(
                            "log files are not contiguous: file {} is followed by file {}; a file is missing, or this one does not belong here",
                            pair[0].seq, pair[1].seq
                        ),
                    ));
                }
            }
        }
        Ok(files)
    }

    /// The sequence number of a canonical `{seq:016}{suffix}` name.
    fn parse_name(name: &str, suffix: &str) -> Option<u64> {
        let digits = name.strip_suffix(suffix)?;
        if digits.len() != SEQ_WIDTH || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }

    /// Checks every byte of every file (see the module docs). Returns what
    /// it found in the newest file of each queue.
    pub(super) fn check(files: &LogFiles) -> Result<Vec<Newest>> {
        let mut verdicts = Vec::new();
        for (queue, rewrite) in [(&files.append, false), (&files.rewrite, true)] {
            for (i, file) in queue.iter().enumerate() {
                let newest = i + 1 == queue.len();
                let verdict = check_file(file, newest, rewrite)?;
                if newest {
                    verdicts.push(verdict);
                }
            }
        }
        Ok(verdicts)
    }

    fn check_file(file: &LogFile, newest: bool, rewrite: bool) -> Result<Newest> {
        let path = &file.path;
        let bytes = std::fs::read(path)
            .map_err(|e| Error::storage(path, format!("cannot read the log file: {e}")))?;
        let len = bytes.len();
        let (header_len, version) = match parse_header(&bytes) {
            Ok(header) => header,
            Err(reason) => {
                if newest && is_torn_header(&bytes) {
                    return Ok(Newest {
                        path: path.clone(),
                        offset: 0,
                        tail: Some(TailKind::TornHeader),
                    });
                }
                return Err(Error::storage(
                    path,
                    format!("not a readable raft-engine log file: {reason}"),
                ));
            }
        };
        // raft-engine signs batches with the low 32 bits of the sequence
        // number from format V2 on.
        let signature = (version >= 2).then_some(file.seq as u32);
        let mut offset = header_len;
        while offset < len {
            match check_batch(&bytes[offset..], signature) {
                Ok(batch_len) => offset += batch_len,
                Err(reason) => return damaged(file, &bytes, offset, reason, newest, rewrite),
            }
        }
        Ok(Newest {
            path: path.clone(),
            offset: len,
            tail: None,
        })
    }

    /// The verdict on a file whose bytes from `offset` on are not a valid
    /// batch: a droppable tail, or an error.
    fn damaged(
        file: &LogFile,
        bytes: &[u8],
        offset: usize,
        reason: String,
        newest: bool,
        rewrite: bool,
    ) -> Result<Newest> {
        let path = &file.path;
        let len = bytes.len();
        let what = format!("damaged at byte {offset} of {len}: {reason}");
        if !newest {
            return Err(Error::storage(
                path,
                format!(
                    "{what}; a newer log file follows, so this is not a write torn by a crash (every file but the newest was completed and synced)"
                ),
            ));
        }
        if let Some(next) = find_batch(bytes, offset + 1, file.seq) {
            return Err(Error::storage(
                path,
                format!(
                    "{what}; a complete, checksummed write follows at byte {next}, so this is damage inside the log, not a write torn by a crash"
                ),
            ));
        }
        // A torn write can only have left bytes within its own extent:
        // beyond it there is preallocated (zero) space or the end of file.
        if let Some((batch_len, _)) = batch_header(&bytes[offset..]) {
            if let Some(after) = bytes.get(offset + batch_len..) {
                if let Some(p) = after.iter().position(|&b| b != 0) {
                    return Err(Error::storage(
                        path,
                        format!(
                            "{what}; non-zero bytes follow the damaged write at byte {}, so this is not a write torn by a crash",
                            offset + batch_len + p
                        ),
                    ));
                }
            }
        }
        let written = bytes[offset..]
            .iter()
            .rposition(|&b| b != 0)
            .map_or(0, |p| p + 1);
        if written == 0 {
            return Ok(Newest {
                path: path.clone(),
                offset,
                tail: Some(TailKind::Preallocated),
            });
        }
        // raft-engine copies live entries and key/values from old append
        // files into the rewrite queue, syncs, THEN deletes the old files:
        // the last write of the newest rewrite file may be the only copy of
        // live data (the conf state, say), so dropping it is not safe even
        // when it looks torn.
        if rewrite {
            return Err(Error::storage(
                path,
                format!(
                    "{what}; the rewrite queue can hold the only copy of live entries and key/values, so this cannot be dropped as a torn write (if a power loss interrupted a purge, this is its torn copy; otherwise the file is damaged): rebuild this member from its peers"
                ),
            ));
        }
        let kind = TailKind::TornWrite {
            bytes: written,
            reason,
        };
        Ok(Newest {
            path: path.clone(),
            offset,
            tail: Some(kind),
        })
    }

    /// Checks what raft-engine left of the newest files (exactly what the
    /// check expected: in `TolerateTailCorruption` mode it would otherwise
    /// cut a file silently), reports the dropped tails, and returns the note
    /// for the caller.
    pub(super) fn confirm(verdicts: &[Newest]) -> Result<Option<String>> {
        let mut notes = Vec::new();
        for verdict in verdicts {
            let path = &verdict.path;
            let bytes = std::fs::read(path)
                .map_err(|e| Error::storage(path, format!("cannot read the log file: {e}")))?;
            let len = bytes.len();
            // A file with a torn header is emptied, then raft-engine writes
            // a fresh header into it (in format V1: it resets the file's
            // format to the default, V1, and keeps writing V1 batches there,
            // which it reads back fine).
            let expected = match verdict.tail {
                Some(TailKind::TornHeader) => {
                    parse_header(&bytes).map_or(0, |(header_len, _)| header_len)
                }
                _ => verdict.offset,
            };
            if len != expected || expected == 0 {
                return Err(Error::storage(
                    path,
                    format!(
                        "raft-engine cut this file to {len} bytes while the check expected {expected}: refusing to continue"
                    ),
                ));
            }
            match &verdict.tail {
                None => {}
                Some(TailKind::Preallocated) => tracing::info!(
                    path = %path.display(),
                    offset = verdict.offset,
                    "the previous run did not shut down cleanly; preallocated, never written space after the last complete write was discarded (nothing lost)"
                ),
                Some(TailKind::TornWrite { bytes, reason }) => {
                    let note = format!(
                        "{}: dropped an incomplete last write ({bytes} bytes from byte {}: {reason}); it was being written when the previous run stopped, so it was never acknowledged",
                        path.display(),
                        verdict.offset
                    );
                    tracing::warn!("{note}");
                    notes.push(note);
                }
                Some(TailKind::TornHeader) => {
                    let note = format!(
                        "{}: the newest log file was being created when the previous run stopped; its incomplete header was discarded (it held no write)",
                        path.display()
                    );
                    tracing::warn!("{note}");
                    notes.push(note);
                }
            }
        }
        Ok((!notes.is_empty()).then(|| notes.join("; ")))
    }

    /// The header raft-engine writes (format V2, no alignment).
    fn v2_header() -> Vec<u8> {
        let mut h = MAGIC.to_vec();
        h.extend_from_slice(&2u64.to_be_bytes());
        h.extend_from_slice(&0u64.to_be_bytes());
        h
    }

    /// Parses a file header; returns its length and the format version.
    fn parse_header(bytes: &[u8]) -> std::result::Result<(usize, u64), String> {
        if !bytes.starts_with(MAGIC) {
            return Err("the file does not start with raft-engine's magic header".to_owned());
        }
        let version = read_u64_be(bytes, MAGIC.len()).ok_or("the file header is cut short")?;
        match version {
            1 => Ok((MAGIC.len() + 8, 1)),
            2 => {
                let alignment =
                    read_u64_be(bytes, MAGIC.len() + 8).ok_or("the file header is cut short")?;
                if alignment != 0 {
                    return Err(format!(
                        "the file uses block alignment {alignment}, which this store never writes"
                    ));
                }
                Ok((MAGIC.len() + 16, 2))
            }
            other => Err(format!("unknown log file version {other}")),
        }
    }

    /// True when `bytes` is what a crash while creating the file can leave:
    /// a prefix of the header, then zeros (or nothing).
    fn is_torn_header(bytes: &[u8]) -> bool {
        let header = v2_header();
        let written = bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
        written < header.len() && bytes[..written] == header[..written]
    }

    fn read_u64_be(bytes: &[u8], at: usize) -> Option<u64> {
        let raw: [u8; 8] = bytes.get(at..at + 8)?.try_into().ok()?;
        Some(u64::from_be_bytes(raw))
    }

    /// The (length, footer offset) a plausible batch header at the start of
    /// `rest` announces, if it fits in `rest`.
    fn batch_header(rest: &[u8]) -> Option<(usize, usize)> {
        let len_and_type = read_u64_be(rest, 0)?;
        let footer = usize::try_from(read_u64_be(rest, 8)?).ok()?;
        let len = usize::try_from(len_and_type >> 8).ok()?;
        let compression = len_and_type & 0xff;
        let plausible = compression <= 1
            && footer >= BATCH_HEADER_LEN
            && footer
                .checked_add(CHECKSUM_LEN)
                .is_some_and(|end| end < len)
            && len <= rest.len();
        plausible.then_some((len, footer))
    }

    /// Checks the batch at the start of `rest`; returns its length.
    fn check_batch(rest: &[u8], signature: Option<u32>) -> std::result::Result<usize, String> {
        let Some((len, footer)) = batch_header(rest) else {
            return Err(describe_bad_header(rest));
        };
        let entries = &rest[BATCH_HEADER_LEN..footer];
        if !entries.is_empty() && !checksum_ok(entries, None) {
            return Err("the checksum of the entries block does not match".to_owned());
        }
        if !checksum_ok(&rest[footer..len], signature) {
            return Err("the checksum of the batch footer does not match".to_owned());
        }
        Ok(len)
    }

    fn describe_bad_header(rest: &[u8]) -> String {
        match (read_u64_be(rest, 0), read_u64_be(rest, 8)) {
            (Some(len_and_type), Some(footer)) => {
                let len = len_and_type >> 8;
                if len_and_type & 0xff > 1 {
                    format!(
                        "unknown compression type {} in a batch header",
                        len_and_type & 0xff
                    )
                } else if len > rest.len() as u64 {
                    format!(
                        "a batch header announces {len} bytes but only {} remain in the file",
                        rest.len()
                    )
                } else {
                    format!("an invalid batch header (length {len}, footer at {footer})")
                }
            }
            _ => format!("a batch header cut short ({} bytes)", rest.len()),
        }
    }

    /// The first offset at or after `from` where a complete batch (for this
    /// file, or for a V1 file that has no signature) starts.
    fn find_batch(bytes: &[u8], from: usize, seq: u64) -> Option<usize> {
        // A batch header's first 8 bytes hold its non-zero length: no batch
        // starts after the last non-zero byte (preallocated space can be
        // megabytes of zeros).
        let end = bytes.iter().rposition(|&b| b != 0)? + 1;
        (from..end).find(|&p| {
            let rest = &bytes[p..];
            check_batch(rest, Some(seq as u32)).is_ok() || check_batch(rest, None).is_ok()
        })
    }

    fn checksum_ok(block: &[u8], signature: Option<u32>) -> bool {
        let Some(split) = block.len().checked_sub(CHECKSUM_LEN) else {
            return false;
        };
        if split == 0 {
            return false;
        }
        let (data, stored) = block.split_at(split);
        let Ok(stored) = <[u8; 4]>::try_from(stored) else {
            return false;
        };
        crc32(data) ^ signature.unwrap_or(0) == u32::from_le_bytes(stored)
    }

    /// CRC-32 (IEEE, as `crc32fast` computes it for raft-engine).
    pub(super) fn crc32(data: &[u8]) -> u32 {
        const TABLE: [u32; 256] = {
            let mut table = [0u32; 256];
            let mut i = 0;
            while i < 256 {
                let mut c = i as u32;
                let mut k = 0;
                while k < 8 {
                    c = if c & 1 != 0 {
                        0xEDB8_8320 ^ (c >> 1)
                    } else {
                        c >> 1
                    };
                    k += 1;
                }
                table[i] = c;
                i += 1;
            }
            table
        };
        let mut c = !0u32;
        for &b in data {
            c = TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
        }
        !c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(recovery::crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn term_runs_follow_appends_truncations_and_compactions() {
        let mut s = State::default();
        for (i, t) in [(1, 1), (2, 1), (3, 2), (4, 2), (5, 3)] {
            s.push(i, t);
        }
        assert_eq!(s.terms, vec![(1, 1), (3, 2), (5, 3)]);
        assert_eq!(s.term_of(4), Some(2));
        s.truncate_from(4);
        assert_eq!((s.last, s.terms.clone()), (3, vec![(1, 1), (3, 2)]));
        s.compact_to(2, 1);
        assert_eq!(s.terms, vec![(3, 2)]);
        assert_eq!((s.term_of(2), s.term_of(3)), (None, Some(2)));
        s.compact_to(3, 2);
        assert!(s.terms.is_empty());
        assert_eq!((s.first(), s.last), (4, 3));
    }
}
