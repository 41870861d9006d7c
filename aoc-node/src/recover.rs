//! `aoc-node recover`: forced recovery of a stopped data member when the
//! active and the witness are lost (see `aoc_core::recovery` for when it is
//! needed and what it loses). This module only opens the directories,
//! checks that they are the ones meant, and prints; the survey and the
//! promotion are the library's.

use std::path::Path;

use aoc_core::recovery::{promote_standalone, survey, Survey};
use aoc_core::storage::{EngineLogOptions, EngineLogStore};

use crate::config::{Config, MemberRole};
use crate::identity::{self, Identity};
use crate::lock::DataDirLock;

/// What `recover` did.
#[derive(Debug)]
pub struct Outcome {
    /// The comparison of the logs (printable).
    pub survey: Survey,
    /// Whether the member was promoted (with `accept_data_loss`).
    pub promoted: bool,
}

/// Surveys the member of `cfg` (stopped) and, with `witness_dir`, the
/// witness's data directory (stopped too); with `accept_data_loss`, then
/// promotes the member to standalone. `promote` must name the member of
/// `cfg` (a guard against running it with the wrong file).
pub fn recover(
    cfg: &Config,
    promote: u64,
    witness_dir: Option<&Path>,
    accept_data_loss: bool,
) -> Result<Outcome, String> {
    if cfg.role != MemberRole::Data {
        return Err("role: only a data member can be promoted; this file is a witness's".into());
    }
    if promote != cfg.member_id {
        return Err(format!(
            "--promote {promote}: the configuration is member {}'s; give its own id (run \
             recover on the member to promote, with its configuration)",
            cfg.member_id
        ));
    }
    let _lock = DataDirLock::acquire(&cfg.data_dir)
        .map_err(|e| format!("{e} (stop the member before recovering it)"))?;
    identity::check(
        &cfg.data_dir,
        Identity {
            cluster_id: cfg.cluster_id,
            member_id: cfg.member_id,
        },
    )?;
    let log = EngineLogStore::open(&cfg.data_dir.join("log"), EngineLogOptions::default())
        .map_err(|e| e.to_string())?;
    let witness = match witness_dir {
        None => None,
        Some(dir) => {
            let witness_id = cfg
                .peers
                .iter()
                .find(|p| p.role == MemberRole::Witness)
                .map(|p| p.id)
                .ok_or(
                    "--witness-data-dir: the configuration lists no witness peer to check \
                     the directory against",
                )?;
            let lock = DataDirLock::acquire(dir)
                .map_err(|e| format!("--witness-data-dir: {e} (stop the witness first)"))?;
            identity::check(
                dir,
                Identity {
                    cluster_id: cfg.cluster_id,
                    member_id: witness_id,
                },
            )
            .map_err(|e| format!("--witness-data-dir: {e}"))?;
            let store = EngineLogStore::open(&dir.join("log"), EngineLogOptions::witness())
                .map_err(|e| format!("--witness-data-dir: {e}"))?;
            Some((store, lock))
        }
    };
    let survey = survey(&log, witness.as_ref().map(|(w, _)| w)).map_err(|e| e.to_string())?;
    if survey.member.voters == vec![cfg.member_id] {
        return Err(format!(
            "member {} is already standalone (its stored configuration is itself alone); \
             run it with a configuration that lists no peers",
            cfg.member_id
        ));
    }
    if !accept_data_loss {
        return Ok(Outcome {
            survey,
            promoted: false,
        });
    }
    promote_standalone(&log, cfg.member_id).map_err(|e| e.to_string())?;
    Ok(Outcome {
        survey,
        promoted: true,
    })
}
