//! Benchmarks of aoc-core: criterion benches in `benches/`, and the
//! library behind the `aoc-bench` tool: a local three-process cluster
//! ([`cluster`]) and the measurements made on it ([`ha`]).

pub mod cluster;
pub mod ha;
