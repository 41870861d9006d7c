//! Decoding arbitrary bytes as a key-value command or response returns a
//! value or an error, never panics; a decoded command re-encodes to bytes
//! that decode to the same command.
#![no_main]

use aoc_core::state::{KvCommand, KvResponse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(cmd) = KvCommand::decode(data) {
        let again = KvCommand::decode(&cmd.encode()).expect("a re-encoded command decodes");
        assert_eq!(cmd, again);
    }
    let _ = KvResponse::decode(data);
});
