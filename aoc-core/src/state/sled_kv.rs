//! [`SledKv`]: the key-value state machine on sled 0.34.
//!
//! Directory layout (`dir` is the argument of [`SledKv::open`]):
//! - `dir/sled/`: sled's own directory (`conf`, `db`, `blobs/`, `snap.*`);
//! - `dir/synced_index`: the applied index of the last [`StateMachine::sync`]
//!   (see below).
//!
//! sled layout: one tree (the default one), three key prefixes:
//! - `d` + key: the value of a pair;
//! - `s` + client id (8 bytes, big endian): a session (the proto `Session`);
//! - `m` + name: metadata: `m/applied_index` and `m/format` (8 bytes each,
//!   big endian).
//!
//! Applied batches are gathered in memory and written to sled together,
//! as ONE `sled::Batch` with the applied index, once they hold
//! [`WRITE_AFTER_ROWS`] rows or [`WRITE_AFTER_BYTES`] bytes, and before a
//! sync, a snapshot read, a restore, or closing the store. So the data, the
//! sessions and the applied index in sled change together or not at all,
//! and sled sees one batch where raft applied many. Reads look at the
//! gathered rows first. Why: sled 0.34 writes its log buffer to the device
//! at every batch (twice a `pwrite` and a `sync_file_range` that waits),
//! which competes with the log's syncs on the disk: in the `commit` bench,
//! one write took 1.06-1.09 ms with a sled batch per raft batch, 0.57-0.63
//! ms gathered. The row bound keeps each write to sled short (sled costs
//! about 12 us per row), since it runs on the thread that applies.
//!
//! Durability: sled's own `flush()` is not a real sync (it uses
//! `sync_file_range`, which flushes neither the drive's cache nor the
//! file's metadata, and sled never syncs the blob files it writes large
//! pages to). [`StateMachine::sync`] therefore flushes and then fsyncs
//! every file and directory under sled's directory itself.
//!
//! Why `synced_index`: sled 0.34 recovers a damaged log by truncating it at
//! the first bad record, silently. Measured: garbage written over `db`
//! opens as an EMPTY store (applied index 0); garbage in a blob file or in
//! the middle of `db` opens as an older state (applied index 9 or 15 of a
//! store synced at 50). The raft log may already be compacted past such a
//! state, so opening it would lose acknowledged writes. The index recorded
//! at each sync lets [`SledKv::open`] refuse a store that went back in time.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::ops::Bound;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::kv::{decode_session, encode_session, plan_batch, SnapshotEncoder, SnapshotView};
use super::sled_read::{self, Capture, Reader, Row};
use super::{ApplyBatch, KvStateMachine, Session, SnapshotRead, StateMachine};
use crate::{Error, Result};

const DATA_PREFIX: u8 = b'd';
const SESSION_PREFIX: u8 = b's';
const META_PREFIX: u8 = b'm';
const META_APPLIED_INDEX: &[u8] = b"m/applied_index";
const META_FORMAT: &[u8] = b"m/format";
/// The version of the layout above.
const FORMAT_VERSION: u64 = 1;
/// Applied rows gathered in memory before they are written to sled.
const WRITE_AFTER_ROWS: usize = 256;
/// Bytes of keys and values gathered in memory before they are written to
/// sled.
const WRITE_AFTER_BYTES: usize = 1 << 20;

/// The key-value state machine stored in a sled database.
///
/// Applied batches are atomic but not synced; [`StateMachine::sync`] makes
/// them durable for real. After a crash the store holds the state of some
/// batch at or after the last sync, never a mix of two batches; a store
/// that holds less than the last sync (damaged files) is refused by
/// [`SledKv::open`].
pub struct SledKv {
    db: sled::Db,
    /// The directory given to [`SledKv::open`].
    dir: PathBuf,
    /// sled's directory, `dir/sled`.
    sled_path: PathBuf,
    applied_index: u64,
    /// The index recorded in `dir/synced_index` (0 when there is no file).
    recorded_sync: u64,
    /// Whether `dir` and its entry in its parent have been synced.
    dirs_synced: bool,
    /// The snapshot being read on another thread, if any: every write to
    /// the tree records what it changes there first (see `sled_read`).
    reading: Option<Arc<Capture>>,
    /// Rows applied and not yet written to the tree (`None`: removed),
    /// by sled key. The tree plus these rows is the state at
    /// `applied_index`.
    unwritten: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Bytes of keys and values put in `unwritten` since the last write
    /// (rows written twice count twice).
    unwritten_bytes: usize,
    /// The applied index the tree holds: `applied_index` once `unwritten`
    /// is written.
    written_index: u64,
    /// [`WRITE_AFTER_ROWS`] (tests lower it).
    write_after_rows: usize,
}

impl fmt::Debug for SledKv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledKv")
            .field("dir", &self.dir)
            .field("applied_index", &self.applied_index)
            .finish()
    }
}

impl SledKv {
    /// Opens (or creates) the store in `dir` (see the module documentation
    /// for the layout).
    ///
    /// Refused with [`Error::Storage`] naming the file or directory and the
    /// problem: a sled directory sled cannot open (sled errors and sled
    /// panics alike), content that is not a store of this layout (a
    /// metadata row of the wrong size, rows without an applied index, an
    /// unknown format), a damaged `synced_index` file, and a store whose
    /// applied index is below the last synced one (sled dropped synced
    /// batches while recovering damaged files).
    pub fn open(dir: &Path) -> Result<Self> {
        let path = Self::sled_dir(dir);
        fs::create_dir_all(&path)
            .map_err(|e| Error::storage(&path, format!("cannot create the directory: {e}")))?;
        let recorded_sync = read_marker(&marker_path(dir))?.unwrap_or(0);
        let config = sled::Config::new().path(&path);
        let db = open_waiting_for_lock(&path, &config)?;
        let mut store = SledKv {
            db,
            dir: dir.to_path_buf(),
            sled_path: path,
            applied_index: 0,
            recorded_sync,
            dirs_synced: false,
            reading: None,
            unwritten: BTreeMap::new(),
            unwritten_bytes: 0,
            written_index: 0,
            write_after_rows: WRITE_AFTER_ROWS,
        };
        store.applied_index = store.read_meta()?;
        store.written_index = store.applied_index;
        if store.applied_index < recorded_sync {
            return Err(Error::storage(
                &store.sled_path,
                format!(
                    "sled holds applied index {} but index {} was synced (recorded in {}): \
                     sled dropped synced batches while recovering damaged files",
                    store.applied_index,
                    recorded_sync,
                    marker_path(dir).display()
                ),
            ));
        }
        Ok(store)
    }

    /// The directory given to [`SledKv::open`].
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// sled's own directory inside the store's directory `dir`.
    pub fn sled_dir(dir: &Path) -> PathBuf {
        dir.join("sled")
    }

    /// Reads and checks the metadata rows; returns the applied index.
    fn read_meta(&self) -> Result<u64> {
        let format = self.read_u64(META_FORMAT)?;
        let applied = self.read_u64(META_APPLIED_INDEX)?;
        match (format, applied) {
            (Some(FORMAT_VERSION), Some(applied)) => Ok(applied),
            (Some(other), Some(_)) => Err(Error::storage(
                &self.sled_path,
                format!("unknown store format {other} (this build reads format {FORMAT_VERSION})"),
            )),
            (None, None) => {
                // A new store, unless it already holds rows.
                let first = self.call("cannot read the store", || self.db.first())?;
                match first {
                    None => Ok(0),
                    Some((key, _)) => Err(Error::storage(
                        &self.sled_path,
                        format!(
                            "the store holds rows (first key {:?}) but no applied index: \
                             it was not written by this program or is damaged",
                            String::from_utf8_lossy(&key)
                        ),
                    )),
                }
            }
            (format, applied) => Err(Error::storage(
                &self.sled_path,
                format!(
                    "incomplete metadata: format {}, applied index {}",
                    describe(format),
                    describe(applied)
                ),
            )),
        }
    }

    /// Reads an 8-byte big-endian metadata row; a row of another size is a
    /// storage error.
    fn read_u64(&self, key: &'static [u8]) -> Result<Option<u64>> {
        let Some(value) = self.call("cannot read the metadata", || self.db.get(key))? else {
            return Ok(None);
        };
        let bytes: [u8; 8] = value.as_ref().try_into().map_err(|_| {
            Error::storage(
                &self.sled_path,
                format!(
                    "metadata row {:?} is {} bytes long, expected 8",
                    String::from_utf8_lossy(key),
                    value.len()
                ),
            )
        })?;
        Ok(Some(u64::from_be_bytes(bytes)))
    }

    /// Runs a sled operation, turning its errors and panics into
    /// [`Error::Storage`] for this store.
    fn call<T>(&self, what: &str, f: impl FnOnce() -> sled::Result<T>) -> Result<T> {
        guarded(&self.sled_path, what, f)
    }

    /// Every session row, checked.
    fn read_sessions(&self) -> Result<Vec<Session>> {
        let mut sessions = Vec::new();
        self.scan_rows(
            "cannot read the sessions",
            &[SESSION_PREFIX],
            |key, value| {
                sessions.push(session_row(&self.sled_path, key, value)?);
                Ok(())
            },
        )?;
        Ok(sessions)
    }

    /// Calls `each` with every row whose key starts with `prefix`, in key
    /// order, as the store holds it: the tree's rows with the unwritten
    /// ones over them.
    fn scan_rows(
        &self,
        what: &str,
        prefix: &[u8],
        mut each: impl FnMut(&[u8], &[u8]) -> Result<()>,
    ) -> Result<()> {
        let mut over = self
            .unwritten
            .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(prefix))
            .peekable();
        // The tree's errors end the scan inside sled's guard; `each`'s
        // errors are carried out as the inner result.
        self.call(what, || {
            for row in self.db.scan_prefix(prefix) {
                let (key, value) = row?;
                while let Some((k, v)) = over.next_if(|(k, _)| k.as_slice() < &*key) {
                    if let Some(v) = v {
                        if let Err(e) = each(k, v) {
                            return Ok(Err(e));
                        }
                    }
                }
                let result = match over.next_if(|(k, _)| k.as_slice() == &*key) {
                    Some((_, Some(v))) => each(&key, v),
                    Some((_, None)) => Ok(()),
                    None => each(&key, &value),
                };
                if let Err(e) = result {
                    return Ok(Err(e));
                }
            }
            Ok(Ok(()))
        })??;
        for (key, value) in over {
            if let Some(value) = value {
                each(key, value)?;
            }
        }
        Ok(())
    }

    /// The current value of the row `key` (a sled key).
    fn row(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(value) = self.unwritten.get(key) {
            return Ok(value.clone());
        }
        let value = self.call("cannot read a key", || self.db.get(key))?;
        Ok(value.map(|v| v.to_vec()))
    }

    /// Writes the unwritten rows and the applied index to the tree as one
    /// sled batch. On an error nothing is forgotten: the rows stay
    /// unwritten.
    fn write_unwritten(&mut self) -> Result<()> {
        if self.written_index == self.applied_index && self.unwritten.is_empty() {
            return Ok(());
        }
        if let Some(capture) = &self.reading {
            // The snapshot being read must get these rows' values as they
            // are in the tree now, before the batch changes them.
            let (db, path) = (&self.db, &self.sled_path);
            let live = capture.record(self.unwritten.keys().map(Vec::as_slice), |key| {
                guarded(path, "cannot read a key", || db.get(key))
            })?;
            if !live {
                self.reading = None;
            }
        }
        let mut writes = sled::Batch::default();
        for (key, value) in &self.unwritten {
            match value {
                Some(value) => writes.insert(key.as_slice(), value.as_slice()),
                None => writes.remove(key.as_slice()),
            }
        }
        writes.insert(META_FORMAT, &FORMAT_VERSION.to_be_bytes()[..]);
        writes.insert(META_APPLIED_INDEX, &self.applied_index.to_be_bytes()[..]);
        self.call("cannot apply a batch", || self.db.apply_batch(writes))?;
        self.unwritten.clear();
        self.unwritten_bytes = 0;
        self.written_index = self.applied_index;
        Ok(())
    }

    /// Ends the snapshot read in progress, if any.
    fn end_reading(&mut self) {
        if let Some(capture) = self.reading.take() {
            capture.end();
        }
    }

    /// Every pair whose key starts with `prefix`.
    fn read_pairs(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut pairs = Vec::new();
        self.scan_rows("cannot read the data", &data_key(prefix), |key, value| {
            // The prefix byte is there: the scan matched it.
            pairs.push((key.get(1..).unwrap_or_default().to_vec(), value.to_vec()));
            Ok(())
        })?;
        Ok(pairs)
    }

    /// Records `index` as synced in `dir/synced_index` (write a temporary
    /// file, fsync it, rename it over the old one, fsync `dir`), unless it
    /// is recorded already.
    fn record_sync(&mut self, index: u64) -> Result<()> {
        if index == self.recorded_sync && self.dirs_synced {
            return Ok(());
        }
        let target = marker_path(&self.dir);
        let temporary = self.dir.join("synced_index.tmp");
        let mut bytes = Vec::with_capacity(MARKER_LEN);
        bytes.extend_from_slice(MARKER_MAGIC);
        bytes.extend_from_slice(&index.to_be_bytes());
        bytes.extend_from_slice(&(!index).to_be_bytes());
        fs::write(&temporary, &bytes)
            .and_then(|()| File::open(&temporary)?.sync_all())
            .map_err(|e| Error::storage(&temporary, format!("cannot write: {e}")))?;
        fs::rename(&temporary, &target)
            .map_err(|e| Error::storage(&target, format!("cannot replace: {e}")))?;
        sync_dir(&self.dir)?;
        self.recorded_sync = index;
        if !self.dirs_synced {
            // Once: the store's directory's own entry in its parent.
            let absolute = if self.dir.is_absolute() {
                self.dir.clone()
            } else {
                std::env::current_dir()
                    .map_err(|e| {
                        Error::storage(&self.dir, format!("cannot resolve the path: {e}"))
                    })?
                    .join(&self.dir)
            };
            if let Some(parent) = absolute.parent() {
                sync_dir(parent)?;
            }
            self.dirs_synced = true;
        }
        Ok(())
    }
}

impl StateMachine for SledKv {
    fn applied_index(&self) -> u64 {
        self.applied_index
    }

    fn apply(&mut self, batch: &ApplyBatch<'_>) -> Result<Vec<Vec<u8>>> {
        let effect = plan_batch(batch, |key| self.row(&data_key(key)))?;
        let mut add = |key: Vec<u8>, value: Option<Vec<u8>>| {
            self.unwritten_bytes += key.len() + value.as_ref().map_or(0, Vec::len);
            self.unwritten.insert(key, value);
        };
        for (key, value) in effect.writes {
            add(data_key(&key), value);
        }
        for (client_id, row) in effect.sessions {
            add(session_key(client_id), row.map(|s| encode_session(&s)));
        }
        self.applied_index = effect.applied_index;
        if self.unwritten.len() >= self.write_after_rows
            || self.unwritten_bytes >= WRITE_AFTER_BYTES
        {
            self.write_unwritten()?;
        }
        Ok(effect.responses)
    }

    fn sessions(&self) -> Result<Vec<Session>> {
        self.read_sessions()
    }

    fn snapshot(&self) -> Result<Vec<u8>> {
        // `&self`: no batch is applied while the snapshot is read, so the
        // pairs, the sessions and the applied index agree. The rows go
        // straight from sled's iterator into the snapshot's bytes.
        let mut out = SnapshotEncoder::new(self.applied_index);
        self.scan_rows("cannot read the data", &[DATA_PREFIX], |key, value| {
            // The prefix byte is there: the scan matched it.
            out.pair(key.get(1..).unwrap_or_default(), value);
            Ok(())
        })?;
        Ok(out.finish(&self.read_sessions()?))
    }

    fn start_snapshot(&mut self) -> Result<Box<dyn SnapshotRead>> {
        // One read at a time: a new one ends the one before.
        self.end_reading();
        // The reader walks the tree: it must hold the applied state.
        self.write_unwritten()?;
        let index = self.applied_index;
        let (reader, capture) = self.reader();
        let read = sled_read::spawn(reader, index, capture.clone())?;
        self.reading = Some(capture);
        Ok(Box::new(read))
    }

    fn check_snapshot(&self, index: u64, data: &[u8]) -> Result<()> {
        SnapshotView::decode(index, data).map(|_| ())
    }

    fn restore(&mut self, index: u64, data: &[u8]) -> Result<()> {
        let snapshot = SnapshotView::decode(index, data)?;
        // Every row changes: a read in progress ends rather than record
        // the whole state.
        self.end_reading();
        if index < self.recorded_sync {
            // Going back to a lower index (raft does not, but the contract
            // allows it): lower the record first, or a crash after the batch
            // below would leave a store that open() refuses.
            self.record_sync(index)?;
        }
        // One sled batch removes every row and writes the snapshot's rows
        // and the applied index: a crash leaves either the old state or the
        // new one, never a mix claiming the new index. (A `sled::Batch` is
        // a map: an insert replaces the removal of the same key.)
        let mut writes = sled::Batch::default();
        let keys = self.call("cannot read the store", || {
            self.db.iter().keys().collect::<sled::Result<Vec<_>>>()
        })?;
        for key in keys {
            writes.remove(key);
        }
        for (key, value) in snapshot.pairs {
            writes.insert(data_key(key), value);
        }
        for session in &snapshot.sessions {
            writes.insert(session_key(session.client_id), encode_session(session));
        }
        writes.insert(META_FORMAT, &FORMAT_VERSION.to_be_bytes()[..]);
        writes.insert(
            META_APPLIED_INDEX,
            &snapshot.applied_index.to_be_bytes()[..],
        );
        self.call("cannot write the restored state", || {
            self.db.apply_batch(writes)
        })?;
        // The batch replaced every row of the tree: the unwritten rows are
        // part of the state it replaced.
        self.unwritten.clear();
        self.unwritten_bytes = 0;
        self.applied_index = snapshot.applied_index;
        self.written_index = snapshot.applied_index;
        self.sync()?;
        Ok(())
    }

    fn frees_space(&self, command: &[u8]) -> bool {
        super::KvCommand::frees_space(command)
    }

    fn sync(&mut self) -> Result<u64> {
        // `&mut self`: no batch is applied meanwhile, so everything up to
        // this index is covered by the flush and the fsyncs below.
        let index = self.applied_index;
        self.write_unwritten()?;
        self.call("cannot flush", || self.db.flush())?;
        sync_tree(&self.sled_path)?;
        self.record_sync(index)?;
        Ok(index)
    }
}

impl SledKv {
    /// A reader of the state at the applied index; the caller keeps the
    /// capture in `reading` (tests step the reader themselves).
    fn reader(&self) -> (Reader, Arc<Capture>) {
        Reader::new(&self.db, self.applied_index, self.sled_path.clone())
    }
}

impl Drop for SledKv {
    fn drop(&mut self) {
        // The reader thread holds the database open until it stops.
        self.end_reading();
        // Not needed for durability (the log still holds every entry after
        // the last sync), but it spares the next start replaying them.
        if let Err(e) = self.write_unwritten() {
            tracing::warn!(error = %e, "the state's last applied batches were not written: the log replays them at the next start");
        }
    }
}

impl KvStateMachine for SledKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.row(&data_key(key))
    }

    fn scan(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.read_pairs(prefix)
    }
}

const MARKER_MAGIC: &[u8; 8] = b"AOCSYNC1";
const MARKER_LEN: usize = 24;

fn marker_path(dir: &Path) -> PathBuf {
    dir.join("synced_index")
}

/// Reads `dir/synced_index`: the magic, the index, and the index's
/// complement (a torn or damaged file does not pass for an index).
fn read_marker(path: &Path) -> Result<Option<u64>> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::storage(path, format!("cannot read: {e}"))),
    };
    if bytes.len() != MARKER_LEN {
        return Err(Error::storage(
            path,
            format!(
                "the file is {} bytes long, expected {MARKER_LEN}",
                bytes.len()
            ),
        ));
    }
    let word = |at: usize| -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        u64::from_be_bytes(b)
    };
    if &bytes[..8] != MARKER_MAGIC || word(8) != !word(16) {
        return Err(Error::storage(
            path,
            "the file is damaged (bad magic or check)",
        ));
    }
    Ok(Some(word(8)))
}

fn data_key(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 1);
    out.push(DATA_PREFIX);
    out.extend_from_slice(key);
    out
}

fn session_key(client_id: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(9);
    out.push(SESSION_PREFIX);
    out.extend_from_slice(&client_id.to_be_bytes());
    out
}

/// What a row is to a snapshot, by its prefix.
pub(super) fn classify(key: &[u8]) -> Row {
    match key.first() {
        Some(&DATA_PREFIX) => Row::Pair,
        Some(&SESSION_PREFIX) => Row::Session,
        _ => Row::Skip,
    }
}

/// A session row, checked: a 9-byte key naming the client the session
/// holds.
pub(super) fn session_row(path: &Path, key: &[u8], value: &[u8]) -> Result<Session> {
    let id_bytes: [u8; 8] = key.get(1..).unwrap_or_default().try_into().map_err(|_| {
        Error::storage(
            path,
            format!("a session row has a key of {} bytes, expected 9", key.len()),
        )
    })?;
    let client_id = u64::from_be_bytes(id_bytes);
    let session = decode_session(value)
        .map_err(|e| Error::storage(path, format!("session {client_id} is damaged: {e}")))?;
    if session.client_id != client_id {
        return Err(Error::storage(
            path,
            format!(
                "the session row of client {client_id} holds client {}",
                session.client_id
            ),
        ));
    }
    Ok(session)
}

fn describe(value: Option<u64>) -> String {
    value.map_or_else(|| "missing".to_string(), |v| v.to_string())
}

// The metadata prefix is only named through the full keys; keep the three
// prefixes distinct.
const _: () = assert!(
    META_PREFIX != DATA_PREFIX && META_PREFIX != SESSION_PREFIX && DATA_PREFIX != SESSION_PREFIX
);

/// Runs a sled call, turning an error or a panic into [`Error::Storage`]
/// for `path`.
///
/// sled 0.34 panics instead of returning an error on some damaged files
/// (failed assertions or out-of-bounds slicing while recovering its log or
/// reading a page), so every call into sled goes through `catch_unwind`.
/// sled's state after such a panic is not trusted: the error tells the
/// member to stop.
pub(super) fn guarded<T>(
    path: &Path,
    what: &str,
    f: impl FnOnce() -> sled::Result<T>,
) -> Result<T> {
    match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(Error::storage(path, format!("{what}: {e}"))),
        Err(payload) => Err(Error::storage(
            path,
            format!(
                "{what}: sled panicked (its files are probably damaged): {}",
                panic_message(payload.as_ref())
            ),
        )),
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

/// Fsyncs every file under `dir` (recursively) and every directory,
/// `dir` included: sled's `flush` syncs neither the drive's cache nor its
/// blob files. A file that disappears meanwhile (sled removes old
/// snapshots and blobs) needs no sync.
///
/// The files are synced by up to [`SYNC_THREADS`] threads at once: sled
/// writes a value too large for its log buffer (64 KiB values and up) to
/// a blob file of its own, so a restored snapshot can mean a thousand new
/// files, and one fsync after another waits for the device each time
/// while concurrent ones share the file system's journal commits (1,028
/// new files of 64 KiB: 0.36 s one by one, about 0.22 s at once, which is
/// close to the disk's bandwidth).
fn sync_tree(dir: &Path) -> Result<()> {
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    list_tree(dir, &mut files, &mut dirs)?;
    let per_thread = files
        .len()
        .div_ceil(SYNC_THREADS)
        .max(FILES_PER_SYNC_THREAD);
    std::thread::scope(|scope| {
        let workers: Vec<_> = files
            .chunks(per_thread)
            .map(|chunk| scope.spawn(move || chunk.iter().try_for_each(|path| sync_file(path))))
            .collect();
        // A worker only returns: fsync errors are values, and a panic in
        // `std::fs` is not expected; one is reported as an error too.
        workers.into_iter().try_for_each(|w| {
            w.join()
                .unwrap_or_else(|_| Err(Error::storage(dir, "a sync thread panicked")))
        })
    })?;
    // Children before parents: each directory's entries are then durable
    // before the directory holding it is.
    dirs.iter().rev().try_for_each(|d| sync_dir(d))
}

/// At most this many threads sync the files of one [`sync_tree`].
const SYNC_THREADS: usize = 16;
/// A thread is worth starting for at least this many files.
const FILES_PER_SYNC_THREAD: usize = 16;

/// Lists the regular files and the directories (`dir` first, parents
/// before children) under `dir`.
fn list_tree(dir: &Path, files: &mut Vec<PathBuf>, dirs: &mut Vec<PathBuf>) -> Result<()> {
    dirs.push(dir.to_path_buf());
    let entries =
        fs::read_dir(dir).map_err(|e| Error::storage(dir, format!("cannot list: {e}")))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::storage(dir, format!("cannot list: {e}")))?;
        let path = entry.path();
        let file_type = match entry.file_type() {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::storage(&path, format!("cannot stat: {e}"))),
        };
        if file_type.is_dir() {
            list_tree(&path, files, dirs)?;
        } else if file_type.is_file() {
            files.push(path);
        }
    }
    Ok(())
}

/// Fsyncs one file; a file removed since it was listed needs no sync.
fn sync_file(path: &Path) -> Result<()> {
    match File::open(path).and_then(|f| f.sync_all()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::storage(path, format!("cannot fsync: {e}"))),
    }
}

/// Fsyncs a directory (its entries: created, renamed, removed files).
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::storage(dir, format!("cannot fsync the directory: {e}")))
}

/// How long [`SledKv::open`] waits for a lock held by a store that is
/// closing in this process.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens sled, waiting a bounded time while its lock file is held. A
/// dropped `sled::Db` releases the lock only when its background flusher
/// thread next wakes (up to its flush interval later), so a store closed and
/// reopened in one process (a node restart, a test) would otherwise fail
/// with `WouldBlock`. Another process holding the directory still gets the
/// error, after the wait.
fn open_waiting_for_lock(path: &Path, config: &sled::Config) -> Result<sled::Db> {
    let start = std::time::Instant::now();
    loop {
        match guarded(path, "sled cannot open the store", || config.open()) {
            Err(Error::Storage { reason, .. })
                if reason.contains("could not acquire lock") && start.elapsed() < LOCK_WAIT =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod read_tests {
    //! The snapshot read of `sled_read`, stepped row by row between
    //! batches: every interleaving must give the snapshot at the read's
    //! index.

    use proptest::prelude::*;

    use super::*;
    use crate::state::conformance::{apply, OwnedBatch};
    use crate::state::KvCommand;

    #[derive(Debug, Clone)]
    enum Op {
        /// The reader takes this many rows.
        Step(u8),
        Put(u8, u8),
        Delete(u8),
        NewSession(u8),
        ExpireSession(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1..4u8).prop_map(Op::Step),
            (0..24u8, any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
            (0..24u8).prop_map(Op::Delete),
            (0..6u8).prop_map(Op::NewSession),
            (0..6u8).prop_map(Op::ExpireSession),
        ]
    }

    fn key(k: u8) -> Vec<u8> {
        format!("key{k:02}").into_bytes()
    }

    fn session(id: u8) -> Session {
        Session {
            client_id: u64::from(id),
            last_sequence: 0,
            last_response: Vec::new(),
            last_active_ms: 1,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn snapshot_read_agrees_with_the_snapshot_at_its_index(
            initial in proptest::collection::vec((0..24u8, any::<u8>()), 0..20),
            sessions in proptest::collection::btree_set(0..6u8, 0..4),
            ops in proptest::collection::vec(op(), 0..60),
            write_after_rows in 1..5usize,
        ) {
            let dir = tempfile::tempdir().expect("temporary directory");
            let mut kv = SledKv::open(dir.path()).expect("open");
            // Batches reach the tree (and the records) every few rows.
            kv.write_after_rows = write_after_rows;
            let mut first = OwnedBatch::of(
                1,
                &initial
                    .iter()
                    .map(|&(k, v)| KvCommand::put(key(k), [v]))
                    .collect::<Vec<_>>(),
            );
            first.new_sessions = sessions.iter().map(|&id| session(id)).collect();
            apply(&mut kv, &first);
            let want = kv.snapshot().expect("snapshot");
            // As start_snapshot does: the tree holds the state it reads.
            kv.write_unwritten().expect("write");
            let (mut reader, capture) = kv.reader();
            kv.reading = Some(capture);
            let mut next = kv.applied_index() + 1;
            let mut walked = false;
            for op in ops {
                let mut batch = OwnedBatch {
                    applied_index: next,
                    ..OwnedBatch::default()
                };
                match op {
                    Op::Step(n) => {
                        for _ in 0..n {
                            if !walked && !reader.step().expect("step") {
                                walked = true;
                            }
                        }
                        continue;
                    }
                    Op::Put(k, v) => batch = OwnedBatch::of(next, &[KvCommand::put(key(k), [v, 1])]),
                    Op::Delete(k) => batch = OwnedBatch::of(next, &[KvCommand::delete(key(k))]),
                    Op::NewSession(id) => batch.new_sessions = vec![Session {
                        last_active_ms: next,
                        ..session(id)
                    }],
                    Op::ExpireSession(id) => batch.expired_sessions = vec![u64::from(id)],
                }
                next += 1;
                apply(&mut kv, &batch);
            }
            while !walked && reader.step().expect("step") {}
            let got = reader.finish().expect("finish");
            prop_assert!(got == want, "the read differs from the snapshot at its index");
        }
    }
}

#[cfg(test)]
mod unwritten_tests {
    //! Applied batches gathered in memory and written to sled together.

    use super::*;
    use crate::state::conformance::{self, apply, OwnedBatch};
    use crate::state::KvCommand;

    /// Fresh stores writing to sled every `rows` rows, each in its own
    /// temporary directory (kept until the factory is dropped).
    fn factory(rows: usize) -> impl FnMut() -> SledKv {
        let mut dirs = Vec::new();
        move || {
            let dir = tempfile::tempdir().expect("temporary directory");
            let mut kv = SledKv::open(dir.path()).expect("open");
            kv.write_after_rows = rows;
            dirs.push(dir);
            kv
        }
    }

    /// A crash: the rows not yet written to sled are lost, then the store
    /// is closed and opened again.
    fn crash(mut kv: SledKv) -> SledKv {
        let rows = kv.write_after_rows;
        kv.unwritten.clear();
        kv.applied_index = kv.written_index;
        let dir = kv.path().to_path_buf();
        drop(kv);
        let mut kv = SledKv::open(&dir).expect("reopen");
        kv.write_after_rows = rows;
        kv
    }

    #[test]
    fn conformance_with_batches_written_every_few_rows() {
        for rows in [1, 3] {
            conformance::run_all(factory(rows));
        }
    }

    #[test]
    fn a_crash_keeps_the_state_of_a_written_batch() {
        for rows in [1, 3, 7] {
            conformance::crash_recovery(factory(rows), crash);
        }
    }

    #[test]
    fn batches_reach_sled_together() {
        let mut make = factory(3);
        let mut kv = make();
        let tree_index = |kv: &SledKv| kv.read_u64(META_APPLIED_INDEX).expect("meta");
        apply(&mut kv, &OwnedBatch::of(1, &[KvCommand::put("a", "1")]));
        apply(&mut kv, &OwnedBatch::of(2, &[KvCommand::put("b", "2")]));
        // Two rows: still in memory, and read from there.
        assert_eq!(tree_index(&kv), None);
        assert_eq!(kv.get(b"b").expect("get"), Some(b"2".to_vec()));
        apply(&mut kv, &OwnedBatch::of(3, &[KvCommand::put("c", "3")]));
        // The third row: the three batches reach sled as one.
        assert_eq!(tree_index(&kv), Some(3));
        assert_eq!(kv.db.get(data_key(b"b")).expect("tree"), Some("2".into()));
        apply(&mut kv, &OwnedBatch::of(4, &[KvCommand::delete("a")]));
        // A removal in memory hides the tree's row.
        assert_eq!(kv.get(b"a").expect("get"), None);
        assert_eq!(kv.db.get(data_key(b"a")).expect("tree"), Some("1".into()));
        // A sync writes what is gathered before it syncs.
        assert_eq!(kv.sync().expect("sync"), 4);
        assert_eq!(tree_index(&kv), Some(4));
        assert_eq!(kv.db.get(data_key(b"a")).expect("tree"), None);
        let kv = crash(kv);
        assert_eq!(kv.applied_index(), 4);
        assert_eq!(kv.get(b"a").expect("get"), None);
        assert_eq!(kv.get(b"c").expect("get"), Some(b"3".to_vec()));
    }

    /// Key `k` of the model test: even keys under prefix `x`, odd under `y`.
    fn model_key(k: u8) -> Vec<u8> {
        format!("{}{k:02}", ["x", "y"][usize::from(k % 2)]).into_bytes()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Reads see the tree and the gathered rows merged: every key once,
        /// in order, the gathered value over the tree's, removals hiding
        /// the tree's row.
        #[test]
        fn reads_merge_the_tree_and_the_gathered_rows(
            ops in proptest::collection::vec((0..12u8, proptest::option::of(0..4u8)), 1..40),
            write_after_rows in 1..6usize,
        ) {
            let mut kv = factory(write_after_rows)();
            let mut model = BTreeMap::new();
            for (i, (k, v)) in ops.into_iter().enumerate() {
                let key = model_key(k);
                let command = match v {
                    Some(v) => {
                        model.insert(key.clone(), vec![v]);
                        KvCommand::put(key, [v])
                    }
                    None => {
                        model.remove(&key);
                        KvCommand::delete(key)
                    }
                };
                apply(&mut kv, &OwnedBatch::of(i as u64 + 1, &[command]));
                let all: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                proptest::prop_assert_eq!(kv.scan(b"").expect("scan"), all.clone());
                let xs: Vec<_> = all.iter().filter(|(k, _)| k[0] == b'x').cloned().collect();
                proptest::prop_assert_eq!(kv.scan(b"x").expect("scan"), xs);
                for k in 0..12u8 {
                    let key = model_key(k);
                    proptest::prop_assert_eq!(kv.get(&key).expect("get"), model.get(&key).cloned());
                }
            }
        }
    }
}
