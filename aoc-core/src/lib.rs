//! aoc-core: the high-availability core of AOC.
#![warn(missing_docs)]

mod error;
pub mod proto;
pub mod state;
pub mod storage;

pub use error::{Error, Result};
