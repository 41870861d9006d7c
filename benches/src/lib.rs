//! Benchmarks of aoc-core.
