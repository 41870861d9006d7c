//! Benchmarks of aoc-core: criterion benches in `benches/`.
