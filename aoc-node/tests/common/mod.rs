//! Helpers shared by the tests that run the real binaries.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// The `aoc-node` binary cargo built for these tests.
pub fn node_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_aoc-node"))
}

/// The witness binary lives in its own package: built (or brought up to
/// date) once per test process, next to aoc-node, since cargo builds only
/// this package's binaries for its tests.
pub fn witness_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-q", "-p", "aoc-witness"])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building aoc-witness");
    });
    node_bin().with_file_name("aoc-witness")
}

// Ports for the members' configuration files: each is given once per test
// process, and the kernel hands none of them to outgoing connections, so it
// is still free when a member starts seconds later.
#[path = "../../../aoc-core/tests/common/ports.rs"]
mod ports;
#[allow(unused_imports)]
pub use ports::free_port;
