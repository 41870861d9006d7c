//! Restoring a state machine from arbitrary bytes is refused with an error
//! or yields a state that re-snapshots consistently; it never panics. The
//! check made before raft takes a snapshot agrees with the restore.
#![no_main]

use aoc_core::state::{MemKv, StateMachine};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut kv = MemKv::new();
    for index in [0u64, 1, 7] {
        let checked = kv.check_snapshot(index, data).is_ok();
        let restored = kv.restore(index, data).is_ok();
        assert_eq!(checked, restored, "check and restore disagree at {index}");
        if restored {
            assert_eq!(kv.applied_index(), index);
            let snap = kv.snapshot().expect("a restored state snapshots");
            let mut again = MemKv::new();
            again
                .restore(index, &snap)
                .expect("its own snapshot restores");
        }
    }
});
