//! The storage contracts of aoc-core and their implementations.
//!
//! Two stores hold a member's state:
//! - the [`LogStore`] holds the raft log, the `HardState`, the `ConfState`
//!   and the metadata of the last snapshot or compaction point. Every
//!   [`LogStore::write`] is durable (synced) when it returns: nothing is
//!   acknowledged before the write that covers it has returned. The real
//!   implementation is [`EngineLogStore`] (raft-engine); [`MemLogStore`] is
//!   the in-memory one used by the simulation.
//! - the state machine store (see [`crate::state`]) holds the applied state,
//!   the applied index and the client table.
//!
//! [`conformance`] holds the suites every implementation must pass.

pub mod conformance;
mod engine_log;
mod log;
mod mem_log;

pub use engine_log::{EngineLogOptions, EngineLogStore};
pub use log::{LogStore, LogWrite};
pub use mem_log::MemLogStore;
