//! Snapshot messages streamed in chunks.
//!
//! A raft snapshot message carries the whole state machine. Sent as one
//! frame it would hold up every other message to that peer and need the
//! whole state in one buffer at both ends. [`split`] cuts it into
//! [`SnapshotChunk`]s of bounded size; a [`Reassembler`] on the receiving
//! side puts them back together, in order, and checks the data's CRC32.
//! A stream that breaks (a chunk lost, out of order, or damaged) is
//! dropped: the leader's replica reports the snapshot failed after its
//! timeout and sends a new one.

use std::collections::HashMap;

use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};

use crate::proto::SnapshotChunk;
use crate::{Error, Result};

/// Splits a snapshot message into chunks of at most `chunk_bytes` of data.
/// Returns `None` for any other message.
///
/// The chunks are made one at a time, as the iterator is read: a sender
/// holds one chunk's copy of the data at a time, not a second copy of the
/// whole state (64 MiB cut up front cost 67 ms of fresh memory).
pub fn split(msg: &Message, chunk_bytes: usize) -> Option<SnapshotChunks> {
    if msg.get_msg_type() != MessageType::MsgSnapshot {
        return None;
    }
    // `Bytes`: a reference to the message's data, not a copy.
    let data = msg.get_snapshot().data.clone();
    let mut header = msg.clone();
    header.mut_snapshot().clear_data();
    // Encoding into a Vec cannot fail.
    let header = header.write_to_bytes().unwrap_or_default();
    let meta = msg.get_snapshot().get_metadata();
    Some(SnapshotChunks {
        from: msg.from,
        to: msg.to,
        term: meta.term,
        index: meta.index,
        crc32: crc32fast::hash(&data),
        header,
        data,
        chunk_bytes: chunk_bytes.max(1),
        offset: 0,
        done: false,
    })
}

/// The chunks of one snapshot message, in order ([`split`]). The first
/// carries the message without its data; the last, the data's CRC32.
#[derive(Debug)]
pub struct SnapshotChunks {
    from: u64,
    to: u64,
    term: u64,
    index: u64,
    crc32: u32,
    header: Vec<u8>,
    data: bytes::Bytes,
    chunk_bytes: usize,
    offset: usize,
    done: bool,
}

impl Iterator for SnapshotChunks {
    type Item = SnapshotChunk;

    fn next(&mut self) -> Option<SnapshotChunk> {
        if self.done {
            return None;
        }
        let end = self
            .offset
            .saturating_add(self.chunk_bytes)
            .min(self.data.len());
        let mut c = SnapshotChunk::new();
        c.from = self.from;
        c.to = self.to;
        c.term = self.term;
        c.index = self.index;
        c.offset = self.offset as u64;
        c.total = self.data.len() as u64;
        if self.offset == 0 {
            c.header = std::mem::take(&mut self.header);
        }
        c.data = self.data[self.offset..end].to_vec();
        // An empty snapshot is one chunk; otherwise the last chunk ends
        // the data.
        if end == self.data.len() {
            c.crc32 = self.crc32;
            self.done = true;
        }
        self.offset = end;
        Some(c)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = if self.done {
            0
        } else {
            (self.data.len() - self.offset)
                .div_ceil(self.chunk_bytes)
                .max(1)
        };
        (left, Some(left))
    }
}

impl ExactSizeIterator for SnapshotChunks {}

#[derive(Debug)]
struct Partial {
    term: u64,
    index: u64,
    header: Message,
    data: Vec<u8>,
    total: u64,
}

/// Reassembles snapshot streams, one per sending member.
#[derive(Debug)]
pub struct Reassembler {
    partial: HashMap<u64, Partial>,
    max_total_bytes: u64,
}

impl Reassembler {
    /// A reassembler that refuses snapshots larger than `max_total_bytes`.
    pub fn new(max_total_bytes: u64) -> Self {
        Reassembler {
            partial: HashMap::new(),
            max_total_bytes,
        }
    }

    /// Takes one chunk. Returns the whole message when this chunk completes
    /// it, `Ok(None)` while more are expected, and an error (naming what is
    /// wrong) when the stream is broken; a broken stream is discarded.
    pub fn push(&mut self, chunk: SnapshotChunk) -> Result<Option<Message>> {
        let from = chunk.from;
        if chunk.offset == 0 {
            if chunk.total > self.max_total_bytes {
                self.partial.remove(&from);
                return Err(Error::TooLarge {
                    what: "snapshot".into(),
                    size: usize::try_from(chunk.total).unwrap_or(usize::MAX),
                    limit: usize::try_from(self.max_total_bytes).unwrap_or(usize::MAX),
                });
            }
            let header = Message::parse_from_bytes(&chunk.header).map_err(|e| {
                self.partial.remove(&from);
                Error::decode("snapshot header", e)
            })?;
            let meta = header.get_snapshot().get_metadata();
            if header.get_msg_type() != MessageType::MsgSnapshot
                || header.from != from
                || meta.index != chunk.index
                || meta.term != chunk.term
            {
                self.partial.remove(&from);
                return Err(Error::decode(
                    "snapshot header",
                    "does not describe the stream it opens",
                ));
            }
            // The whole stream at once (`total` is within the limit,
            // checked above): reserving costs address space only, pages
            // are touched as bytes arrive, while growing would copy
            // everything received at each doubling. A reservation the
            // allocator refuses (an announced size no memory can hold)
            // leaves the buffer to grow as bytes arrive, never an abort.
            let mut data = Vec::new();
            if let Ok(total) = usize::try_from(chunk.total) {
                let _ = data.try_reserve_exact(total);
            }
            // A new stream from this member replaces any broken one.
            self.partial.insert(
                from,
                Partial {
                    term: chunk.term,
                    index: chunk.index,
                    header,
                    data,
                    total: chunk.total,
                },
            );
        }
        let Some(p) = self.partial.get_mut(&from) else {
            return Err(Error::decode(
                "snapshot chunk",
                format!("offset {} without the start of its stream", chunk.offset),
            ));
        };
        if p.term != chunk.term
            || p.index != chunk.index
            || p.total != chunk.total
            || p.data.len() as u64 != chunk.offset
            || chunk.offset + chunk.data.len() as u64 > p.total
        {
            self.partial.remove(&from);
            return Err(Error::decode(
                "snapshot chunk",
                format!(
                    "offset {} of snapshot {}/{} does not follow the bytes received",
                    chunk.offset, chunk.term, chunk.index
                ),
            ));
        }
        p.data.extend_from_slice(&chunk.data);
        if (p.data.len() as u64) < p.total {
            return Ok(None);
        }
        let Some(mut p) = self.partial.remove(&from) else {
            return Ok(None);
        };
        if crc32fast::hash(&p.data) != chunk.crc32 {
            return Err(Error::decode(
                "snapshot",
                format!("checksum mismatch for snapshot {}/{}", p.term, p.index),
            ));
        }
        p.header.mut_snapshot().set_data(p.data.into());
        Ok(Some(p.header))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot_msg(len: usize) -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgSnapshot);
        m.from = 1;
        m.to = 2;
        m.term = 3;
        let s = m.mut_snapshot();
        s.mut_metadata().index = 40;
        s.mut_metadata().term = 3;
        s.set_data((0..len).map(|i| i as u8).collect::<Vec<u8>>().into());
        m
    }

    #[test]
    fn split_and_reassemble_round_trip() {
        for len in [0, 1, 999, 1000, 1001, 5000] {
            let m = snapshot_msg(len);
            let iter = split(&m, 1000).unwrap();
            let announced = iter.len();
            let chunks: Vec<_> = iter.collect();
            assert_eq!(chunks.len(), len.div_ceil(1000).max(1), "{len} bytes");
            assert_eq!(announced, chunks.len(), "{len} bytes");
            let mut r = Reassembler::new(1 << 20);
            let mut out = None;
            for c in chunks {
                out = r.push(c).unwrap();
            }
            assert_eq!(out, Some(m));
        }
    }

    #[test]
    fn a_stream_is_gathered_in_place_without_regrowing() {
        // Past 64 MiB: the size at which the buffer used to be regrown.
        let len = (64 << 20) + 3000;
        let m = snapshot_msg(len);
        let mut r = Reassembler::new(1 << 30);
        let mut chunks = split(&m, 1 << 20).unwrap();
        assert_eq!(r.push(chunks.next().unwrap()).unwrap(), None);
        let start = r.partial[&1].data.as_ptr();
        assert!(r.partial[&1].data.capacity() >= len);
        let mut out = None;
        for c in chunks {
            if let Some(p) = r.partial.get(&1) {
                assert_eq!(p.data.as_ptr(), start, "the buffer moved");
            }
            out = r.push(c).unwrap();
        }
        assert_eq!(out, Some(m));
    }

    #[test]
    fn an_announced_size_no_memory_holds_is_taken_without_reserving_it() {
        let m = snapshot_msg(3000);
        let mut first = split(&m, 1000).unwrap().next().unwrap();
        first.total = 1 << 62;
        let mut r = Reassembler::new(u64::MAX);
        assert_eq!(r.push(first).unwrap(), None);
        assert!(r.partial[&1].data.capacity() < 1 << 40);
    }

    #[test]
    fn a_gap_breaks_the_stream_and_a_new_stream_completes() {
        let m = snapshot_msg(3500);
        let chunks: Vec<_> = split(&m, 1000).unwrap().collect();
        let mut r = Reassembler::new(1 << 20);
        assert_eq!(r.push(chunks[0].clone()).unwrap(), None);
        assert!(
            r.push(chunks[2].clone()).is_err(),
            "a missing chunk is detected"
        );
        assert!(
            r.push(chunks[3].clone()).is_err(),
            "the broken stream was dropped"
        );
        let mut out = None;
        for c in chunks {
            out = r.push(c).unwrap();
        }
        assert_eq!(out, Some(m));
    }

    #[test]
    fn damaged_data_and_oversized_streams_are_refused() {
        let m = snapshot_msg(2500);
        let mut chunks: Vec<_> = split(&m, 1000).unwrap().collect();
        chunks[1].data[5] ^= 0xff;
        let mut r = Reassembler::new(1 << 20);
        let results: Vec<_> = chunks.into_iter().map(|c| r.push(c)).collect();
        assert!(
            results.last().unwrap().is_err(),
            "checksum mismatch is reported"
        );
        let mut small = Reassembler::new(100);
        let first = split(&m, 1000).unwrap().next().unwrap();
        assert!(matches!(small.push(first), Err(Error::TooLarge { .. })));
        assert!(split(&Message::default(), 10).is_none());
    }
}
