//! `aoc-node members`: adding, removing and replacing members of a running
//! cluster through the active (the changes themselves are aoc-core's:
//! [`aoc_core::MembershipChange`], [`aoc_core::client::Client::add_member`]).
//!
//! Each command prints what it does and waits for; a command interrupted
//! (or timed out) can be run again: it resumes where it stopped.

use std::time::Duration;

use aoc_core::client::{Added, Client, Removed};
use aoc_core::{Error, Member, MemberRole, MembershipChange};

use crate::config::{check_addr, MemberRole as FileRole};

/// How often a member being added is checked.
const POLL: Duration = Duration::from_secs(1);

/// The member a command describes; the error names the bad argument.
pub fn member(id: u64, role: FileRole, ha_addr: &str) -> Result<Member, String> {
    if id == 0 {
        return Err("--id: 0 is not allowed".into());
    }
    check_addr(ha_addr, false).map_err(|e| format!("--ha-addr: {e}"))?;
    Ok(Member {
        id,
        role: match role {
            FileRole::Data => MemberRole::Data,
            FileRole::Witness => MemberRole::Witness,
        },
        ha_addr: ha_addr.to_string(),
    })
}

/// Adds `m`: as a learner, then as a voter once it has caught up.
pub fn add(client: &mut Client, m: &Member, timeout: Duration) -> Result<(), String> {
    println!(
        "adding member {} ({}, {}): start it blank, with a configuration listing the \
         cluster's members, if it is not running yet",
        m.id, m.role, m.ha_addr
    );
    let mut last = String::new();
    client
        .add_member(m, timeout, POLL, |what| {
            // One line per distinct step (the wait repeats itself).
            if what != last {
                println!("  {what}");
                last = what.to_string();
            }
        })
        .map_err(|e| format!("adding member {}: {e}", m.id))
        .map(|added| match added {
            Added::Voter => println!(
                "member {} is a voter. Update every member's configuration file: list \
                 member {} ({}, ha_addr {}) in [[peers]]",
                m.id, m.id, m.role, m.ha_addr
            ),
            Added::LearnerAwaitingPair => println!(
                "member {} is a caught-up learner. Now add the second member (a standalone \
                 member becomes HA with both promoted at once)",
                m.id
            ),
        })
}

/// Removes every member but the active: back to standalone.
pub fn shrink(client: &mut Client) -> Result<(), String> {
    client
        .change_membership(&MembershipChange::Shrink)
        .map_err(|e| format!("shrinking to standalone: {e}"))?;
    println!(
        "the active is standalone: the others drop out now. Remove the [[peers]] entries \
         from its configuration file; wipe the others' data directories before reusing them"
    );
    Ok(())
}

/// Removes member `id` (not the active: switch over first).
pub fn remove(client: &mut Client, id: u64) -> Result<(), String> {
    match client.remove_member(id) {
        Ok(Removed::Already) => {
            println!("member {id} is not a member (any more): nothing to remove");
            Ok(())
        }
        Ok(Removed::Now) => {
            println!(
                "member {id} removed: the others drop its messages from now on. Remove it \
                 from every member's configuration file; wipe its data directory before \
                 reusing its machine"
            );
            Ok(())
        }
        Err(e @ Error::Membership { .. }) => Err(e.to_string()),
        Err(e) => Err(format!("removing member {id}: {e}")),
    }
}

/// Removes member `old`, then adds `new` in its place.
pub fn replace(
    client: &mut Client,
    old: u64,
    new: &Member,
    timeout: Duration,
) -> Result<(), String> {
    if old == new.id {
        return Err(format!(
            "--id: the new member needs a new id (member {old} is the one replaced)"
        ));
    }
    match client.remove_member(old) {
        Ok(Removed::Now) => println!("member {old} removed"),
        // Resumed after the removal.
        Ok(Removed::Already) => println!("member {old} is no longer a member"),
        Err(e) => return Err(format!("removing member {old}: {e}")),
    }
    add(client, new, timeout)
}

/// The membership as the active sees it, one line per member.
pub fn list(client: &mut Client) -> Result<String, String> {
    let mut active = None;
    for (addr, st) in client.status_all() {
        if let Ok(st) = st {
            if st.status.active {
                active = Some((addr, st.status));
                break;
            }
        }
    }
    let Some((addr, st)) = active else {
        return Err("no member is active: membership is read from the active".into());
    };
    let mut out = format!("as seen by the active, member {} ({addr}):\n", st.id);
    let mut ids: Vec<(u64, &str)> = st.voters.iter().map(|v| (*v, "voter")).collect();
    ids.extend(st.learners.iter().map(|l| (*l, "learner")));
    ids.sort_unstable();
    for (id, kind) in ids {
        let dir = st.members.iter().find(|m| m.id == id);
        // Members of the first configuration are not in the directory:
        // their role follows from the witness the active names, their
        // address is in the configuration files. (An active that names no
        // witness, standalone or of an older version: no role is guessed.)
        let role = match (dir, st.witness_id) {
            (Some(m), _) => format!("{} {}", m.role, m.ha_addr),
            (None, Some(witness)) => {
                let role = if witness == id { "witness" } else { "data" };
                format!("{role} (address in the configuration files)")
            }
            (None, None) => "(from the configuration files)".to_string(),
        };
        let matched = st
            .progress
            .iter()
            .find(|p| p.id == id)
            .map(|p| format!(", holds up to {} of {}", p.matched, st.last_index))
            .unwrap_or_default();
        out.push_str(&format!("  member {id}: {kind}, {role}{matched}\n"));
    }
    Ok(out)
}
