//! `aoc-witness`: the AOC HA witness member. It stores no service data;
//! it votes and keeps the short log tail that makes failover safe. The
//! witness role and its networking are built on aoc-core's witness
//! arbitration; until then this binary only reports its version.

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(name = "aoc-witness", version, about = "AOC HA witness member")]
struct Cli {}

fn main() -> ExitCode {
    let _ = Cli::parse();
    eprintln!("aoc-witness: the witness role is not available in this build yet");
    ExitCode::from(2)
}
