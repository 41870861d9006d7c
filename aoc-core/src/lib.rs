//! aoc-core: the high-availability core of AOC.
#![warn(missing_docs)]

mod config;
mod error;
pub mod logging;
mod node;
mod payload;
pub mod proto;
mod replica;
pub mod sim;
pub mod state;
pub mod storage;
pub mod transport;

pub use config::ReplicaConfig;
pub use error::{Error, Result};
pub use node::{Applied, Node, NodeBuilder};
pub use replica::{Completion, Event, PeerProgress, ProposalResult, Ready, Replica, Role, Status};
