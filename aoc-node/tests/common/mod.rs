//! Helpers shared by the tests that run the real binaries.
#![allow(dead_code)]

use std::net::TcpListener;
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

/// A TCP port on 127.0.0.1 free at the time of the call.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
