//! aoc-core: the high-availability core of AOC.
//!
//! AOC manages many clusters from one place, so it must neither go down
//! nor lose what it was told. This crate is its replication core: a
//! replicated state machine on raft-rs whose acknowledged writes survive
//! any single failure.
//!
//! # A guided tour
//!
//! **The replica is sans-I/O.** [`Replica`] wraps raft-rs's `RawNode`, the
//! client table and a [`state::StateMachine`]. It takes inputs
//! ([`Replica::tick`], [`Replica::step`], [`Replica::propose`],
//! [`Replica::read`], [`Replica::on_persisted`]) and returns [`Ready`]
//! work: messages to send, a [`storage::LogWrite`] to sync, completed
//! proposals and reads, and [`Event`]s. It holds no thread, clock, socket
//! or file of its own, so the same code runs under the threaded [`Node`]
//! and under the deterministic simulation (the `sim` feature).
//!
//! **Storage is two contracts.** [`storage::LogStore`] holds the raft log
//! (real: [`storage::EngineLogStore`] on raft-engine; simulated:
//! [`storage::MemLogStore`]). [`state::StateMachine`] holds the applied
//! state, the applied index and the client table (ready-made:
//! [`state::SledKv`] on sled, [`state::MemKv`] in memory with crash
//! semantics). Both ship conformance suites ([`storage::conformance`],
//! [`state::conformance`]) that every implementation must pass.
//!
//! **Writes are durable before they are acknowledged.** A proposal
//! completes once its entry is applied, which raft-rs allows only once the
//! entry is committed (synced by a quorum) and synced locally; messages
//! that depend on a write (votes, append acknowledgements) wait for it.
//! `docs/design.md` gives the whole scheme and why it holds.
//!
//! **A standalone member is a one-voter group** with the same API:
//!
//! ```
//! use aoc_core::{Node, ReplicaConfig};
//! use aoc_core::state::{KvCommand, KvStateMachine, SledKv};
//! use aoc_core::storage::{EngineLogOptions, EngineLogStore};
//!
//! # fn main() -> aoc_core::Result<()> {
//! let dir = tempfile::tempdir().expect("a temporary directory");
//! let log = EngineLogStore::open(&dir.path().join("log"), EngineLogOptions::default())?;
//! let kv = SledKv::open(&dir.path().join("state"))?;
//! let node = Node::builder(ReplicaConfig::new(1)).voters(vec![1]).start(log, kv)?;
//!
//! let written = node.propose(KvCommand::put("cluster/7", "healthy").encode())?;
//! assert!(written.index > 0);
//! let value = node.read(|kv| kv.get(b"cluster/7"))??;
//! assert_eq!(value.as_deref(), Some(&b"healthy"[..]));
//!
//! // Exactly-once: a retried (client, sequence) is applied once.
//! let client = node.register_client()?;
//! let cas = KvCommand::cas("leader", None, Some(b"a".to_vec())).encode();
//! let first = node.propose_session(client, 1, cas.clone())?;
//! let retry = node.propose_session(client, 1, cas)?;
//! assert_eq!(first.response, retry.response);
//! node.shutdown();
//! # Ok(())
//! # }
//! ```
//!
//! **A cluster** is the same with three voters and a [`transport::Transport`];
//! [`transport::LocalNetwork`] connects nodes in one process.
//!
//! **The simulation** (module `sim`, built with the `sim` feature, which
//! the binaries leave off) runs members in one thread from one seed, with
//! a simulated clock, a faulty network and disks that lose unsynced writes
//! on a crash; the same seed replays the same run.
#![warn(missing_docs)]

pub mod backup;
pub mod bootstrap;
pub mod client;
mod config;
mod error;
pub mod fencing;
pub mod logging;
mod node;
mod payload;
pub mod proto;
pub mod recovery;
mod replica;
#[cfg(feature = "sim")]
pub mod sim;
pub mod state;
pub mod storage;
pub mod transport;

pub use config::ReplicaConfig;
pub use error::{Error, Result};
pub use node::{Applied, Node, NodeBuilder, SNAPSHOT_READ_TIMEOUT};
pub use replica::{
    Alarm, Completion, DiskReport, Event, Member, MemberRole, MembershipChange, Mode, PeerProgress,
    ProposalResult, Ready, Replica, Role, StateSnapshot, Status, CATCH_UP_MARGIN_ENTRIES,
};
