//! `aoc-witness`: the AOC HA witness member. It stores no service data and
//! serves no client; it votes, keeps the short log tail that makes failover
//! safe, and hands leadership to a data member whenever it has to lead.
//!
//! `aoc-witness run --config FILE`. Exit codes: 0 on a clean stop, 1 on a
//! failure, 2 on a bad configuration or command line, 4 when the node
//! failed while running (a storage error: restart it once fixed).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "aoc-witness", version, about = "AOC HA witness member")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the witness from its configuration file.
    Run {
        /// The witness's TOML configuration (role = "witness").
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    aoc_core::logging::init_logging();
    let Command::Run { config } = Cli::parse().command;
    match aoc_node::config::load(&config) {
        Err(e) => {
            eprintln!("aoc-witness: {e}");
            ExitCode::from(2)
        }
        Ok(cfg) if !cfg.is_witness() => {
            eprintln!(
                "aoc-witness: {}: role: this file is a data member's; run it with aoc-node",
                config.display()
            );
            ExitCode::from(2)
        }
        Ok(cfg) => match aoc_node::run::run(cfg) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("aoc-witness: {}", e.message);
                ExitCode::from(e.code)
            }
        },
    }
}
