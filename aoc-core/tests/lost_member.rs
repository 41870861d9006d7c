//! A member known to have lost synced state counts for no commit while the
//! evidence lasts (`replica/lost.rs`), and for as long as the evidence
//! lasts only: a stale blank probe (a member that joined probed while
//! blank, and the probe arrived after its first acknowledgement) must not
//! shut a healthy member out for good. Found by the verification runner
//! with `--replace` (seed 109 while the rule was being built): a new
//! witness was marked lost by its own delayed probe and its promotion
//! never came.

#[path = "common/trio.rs"]
mod trio;
use trio::{Trio, WITNESS};

use aoc_core::proto::{BlankProbe, Notice};
use aoc_core::state::KvCommand;
use aoc_core::{Mode, ReplicaConfig};

fn blank_probe(from: u64, to: u64) -> Notice {
    let mut n = Notice::new();
    n.from = from;
    n.to = to;
    n.set_blank_probe(BlankProbe::new());
    n
}

#[test]
fn a_stale_blank_probe_marks_a_member_lost_only_while_probes_come() {
    let mut c = Trio::with_leader();
    let election = ReplicaConfig::ha(1, WITNESS).election_tick as u64;
    assert!(c.member(1).is_active());
    c.member(1).on_notice(blank_probe(WITNESS, 1));
    c.pump();
    let why = c.member(1).status().waiting_for.unwrap_or_default();
    assert!(why.contains("the witness lost its data"), "{why}");
    assert_eq!(c.member(1).mode(), Mode::Sync);

    // While it is marked, the witness's acknowledgements count for
    // nothing: with the passive down, a write does not commit, past the
    // sync timeout too.
    c.down.push(2);
    c.member(1)
        .propose(1, KvCommand::put("k", "v").encode(), None);
    c.pump();
    let index = c.member(1).status().last_index;
    for _ in 0..election {
        c.tick();
    }
    assert!(
        c.member(1).status().commit < index,
        "committed on the marked witness's word"
    );

    // No further probe: the mark lifts two election timeouts after the
    // last one, and the witness's next acknowledgement counts again.
    for _ in 0..2 * election {
        c.tick();
    }
    let st = c.member(1).status();
    assert!(
        !st.waiting_for
            .as_deref()
            .unwrap_or_default()
            .contains("lost its data"),
        "the mark lifted"
    );
    assert!(
        st.commit >= index,
        "the write commits on the witness: {st:?}"
    );
    assert_eq!(c.member(1).mode(), Mode::Degraded);
}

#[test]
fn a_wiped_member_that_keeps_probing_stays_marked() {
    let mut c = Trio::with_leader();
    let election = ReplicaConfig::ha(1, WITNESS).election_tick as u64;
    c.down.push(WITNESS);
    c.member(1).on_notice(blank_probe(WITNESS, 1));
    for _ in 0..4 * election {
        c.tick();
        c.member(1).on_notice(blank_probe(WITNESS, 1));
    }
    let why = c.member(1).status().waiting_for.unwrap_or_default();
    assert!(why.contains("the witness lost its data"), "{why}");
}
