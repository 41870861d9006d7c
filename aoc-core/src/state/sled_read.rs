//! Reading a [`super::SledKv`] snapshot on a thread of its own while
//! batches go on being applied ([`super::StateMachine::start_snapshot`]).
//!
//! sled 0.34 has no point-in-time view of a tree. So the reader walks the
//! tree in key order, and the store, before it writes applied rows to the
//! tree (`SledKv` gathers them and writes them together; a read starts
//! once they are written, so the tree is then at the snapshot's index),
//! records the value each row the reader has not passed yet had at the
//! snapshot's index (at its first change only; `None` for a row that did
//! not exist). The reader takes a recorded value instead of what it finds
//! in the tree, and also gives the recorded rows it does not find
//! (removed since). Below, "apply" is that write to the tree.
//!
//! Why each row comes out as it was at the snapshot's index, exactly once:
//! - apply records a row before it writes it, under the lock, while the
//!   row is past the reader's cursor; the reader reads a row, then looks
//!   for a record under the same lock and moves its cursor past the row.
//!   If it finds no record, no write of that row had started when it
//!   looked, so what it read is the row at the snapshot's index. If it
//!   finds one, the record is that value. Rows at or before the cursor
//!   are done with: apply no longer records them.
//! - sled's iterator gives keys in increasing order, each once, and every
//!   row that stays unchanged while it passes. A row the iterator skipped
//!   between two keys it gave was therefore changed (removed) since the
//!   snapshot's index, before the cursor passed it: it has a record, and
//!   the reader gives the recorded value (if there was one) when it moves
//!   its cursor past that range.
//! - The cursor only moves forward and each range between two cursors is
//!   looked at once, so no row comes out twice.
//!
//! `snapshot_read_agrees_with_the_snapshot_at_its_index` (sled_kv.rs)
//! interleaves reads and batches at random and compares the result with
//! the snapshot taken at the read's index.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::Arc;

use crossbeam::channel::{self, Receiver, TryRecvError};
use parking_lot::Mutex;
use tracing::debug;

use super::kv::SnapshotEncoder;
use super::sled_kv::{classify, guarded, session_row};
use super::{Session, SnapshotRead};
use crate::{Error, Result};

/// What apply and the reader share while a snapshot is read.
#[derive(Debug, Default)]
pub(super) struct Capture {
    shared: Mutex<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    /// The last row the reader is done with (`None`: none yet).
    cursor: Option<Vec<u8>>,
    /// The value at the snapshot's index of every row changed since and
    /// not passed by the reader when it changed.
    before: BTreeMap<Vec<u8>, Option<sled::IVec>>,
    /// The read is over (finished, ended by the store, or dropped): apply
    /// records nothing more.
    over: bool,
}

impl Capture {
    /// Records, before a batch writes `keys`, the values they hold now:
    /// `get` reads a row's current value. Returns `false` when the read is
    /// over (the caller may forget the capture).
    pub(super) fn record<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k [u8]>,
        mut get: impl FnMut(&[u8]) -> Result<Option<sled::IVec>>,
    ) -> Result<bool> {
        let mut shared = self.shared.lock();
        if shared.over {
            return Ok(false);
        }
        for key in keys {
            let passed = shared.cursor.as_deref().is_some_and(|c| key <= c);
            if passed || shared.before.contains_key(key) {
                continue;
            }
            // The first change of this row since the snapshot's index: the
            // row still holds its value at that index.
            let value = get(key)?;
            shared.before.insert(key.to_vec(), value);
        }
        Ok(true)
    }

    /// Ends the read: the reader stops with an error at its next row.
    pub(super) fn end(&self) {
        self.shared.lock().over = true;
    }
}

/// How the reader turns a row into snapshot content.
pub(super) enum Row {
    /// A pair: the key without its prefix.
    Pair,
    /// A session row.
    Session,
    /// Not part of a snapshot (metadata).
    Skip,
}

/// Walks the tree and writes the snapshot; [`spawn`] runs it on a thread,
/// tests call [`Reader::step`] between batches.
pub(super) struct Reader {
    capture: Arc<Capture>,
    rows: sled::Iter,
    out: Option<SnapshotEncoder>,
    sessions: Vec<Session>,
    path: PathBuf,
    /// The rows one step gives (kept to reuse its allocation).
    found: Vec<(sled::IVec, sled::IVec)>,
}

impl Reader {
    /// A reader of `tree` at `index`. Batches applied after this call must
    /// go through `capture`'s [`Capture::record`] first.
    pub(super) fn new(tree: &sled::Tree, index: u64, path: PathBuf) -> (Self, Arc<Capture>) {
        let capture = Arc::new(Capture::default());
        let reader = Reader {
            capture: capture.clone(),
            rows: tree.iter(),
            out: Some(SnapshotEncoder::new(index)),
            sessions: Vec::new(),
            path,
            found: Vec::new(),
        };
        (reader, capture)
    }

    /// Takes the next row from the tree, with the recorded rows before it.
    /// Returns `false` once the tree is walked to its end.
    pub(super) fn step(&mut self) -> Result<bool> {
        let row = guarded(&self.path, "cannot read the data", || {
            self.rows.next().transpose()
        })?;
        let more = row.is_some();
        let mut found = std::mem::take(&mut self.found);
        {
            let mut shared = self.capture.shared.lock();
            if shared.over {
                return Err(Error::storage(
                    &self.path,
                    "the snapshot read was ended (a restore, a newer read, or the store closing)",
                ));
            }
            let lower = match &shared.cursor {
                Some(cursor) => Bound::Excluded(cursor.as_slice()),
                None => Bound::Unbounded,
            };
            let upper = match &row {
                Some((key, _)) => Bound::Excluded(key.as_ref()),
                None => Bound::Unbounded,
            };
            // Rows the iterator did not give: removed since the snapshot's
            // index (see the module documentation).
            for (key, value) in shared.before.range::<[u8], _>((lower, upper)) {
                if let Some(value) = value {
                    found.push((sled::IVec::from(key.as_slice()), value.clone()));
                }
            }
            match row {
                Some((key, value)) => {
                    match shared.before.get(key.as_ref()) {
                        Some(Some(before)) => found.push((key.clone(), before.clone())),
                        Some(None) => {} // created since the snapshot's index
                        None => found.push((key.clone(), value)),
                    }
                    match &mut shared.cursor {
                        Some(cursor) => {
                            cursor.clear();
                            cursor.extend_from_slice(&key);
                        }
                        None => shared.cursor = Some(key.to_vec()),
                    }
                }
                None => shared.over = true,
            }
        }
        for (key, value) in found.drain(..) {
            self.take(&key, &value)?;
        }
        self.found = found;
        Ok(more)
    }

    fn take(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        match classify(key) {
            Row::Pair => {
                if let Some(out) = self.out.as_mut() {
                    // The prefix byte is there: `classify` looked at it.
                    out.pair(key.get(1..).unwrap_or_default(), value);
                }
            }
            Row::Session => self.sessions.push(session_row(&self.path, key, value)?),
            Row::Skip => {}
        }
        Ok(())
    }

    /// Reads every remaining row and returns the snapshot's bytes.
    pub(super) fn run(mut self) -> Result<Vec<u8>> {
        while self.step()? {}
        self.finish()
    }

    /// The snapshot's bytes, once [`Reader::step`] returned `false`.
    pub(super) fn finish(mut self) -> Result<Vec<u8>> {
        assert!(
            self.capture.shared.lock().over,
            "sled_read: finish called before the tree was walked to its end"
        );
        let out = self
            .out
            .take()
            .ok_or_else(|| Error::storage(&self.path, "the snapshot was already finished"))?;
        Ok(out.finish(&self.sessions))
    }
}

/// A [`Reader`] running on a thread of its own.
pub(super) struct SledRead {
    index: u64,
    result: Receiver<Result<Vec<u8>>>,
    capture: Arc<Capture>,
    done: bool,
}

/// Starts `reader` on a new thread.
pub(super) fn spawn(reader: Reader, index: u64, capture: Arc<Capture>) -> Result<SledRead> {
    let (tx, rx) = channel::bounded(1);
    let path = reader.path.clone();
    std::thread::Builder::new()
        .name("aoc-snapshot-read".into())
        .spawn(move || {
            let started = std::time::Instant::now();
            let result = reader.run();
            debug!(
                index,
                elapsed_ms = started.elapsed().as_millis() as u64,
                ok = result.is_ok(),
                "snapshot read"
            );
            // The receiver is gone when the read was dropped: nothing to do.
            let _ = tx.send(result);
        })
        .map_err(|e| Error::storage(&path, format!("cannot start the snapshot reader: {e}")))?;
    Ok(SledRead {
        index,
        result: rx,
        capture,
        done: false,
    })
}

impl SnapshotRead for SledRead {
    fn index(&self) -> u64 {
        self.index
    }

    fn poll(&mut self) -> Option<Result<Vec<u8>>> {
        if self.done {
            return None;
        }
        match self.result.try_recv() {
            Ok(result) => {
                self.done = true;
                Some(result)
            }
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => {
                self.done = true;
                Some(Err(Error::storage(
                    "snapshot reader",
                    "the reader thread stopped without a result",
                )))
            }
        }
    }
}

impl Drop for SledRead {
    fn drop(&mut self) {
        // The reader stops at its next row; apply stops recording.
        self.capture.end();
    }
}
