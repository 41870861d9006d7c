//! Feeds arbitrary text to the configuration parser of `aoc-node` and
//! `aoc-witness` (`aoc_node::Config::parse`, the TOML file of a member).
//!
//! Asserts: parsing returns a configuration or a `ConfigError`, never
//! panics; an error is one line that starts with the file's path; an
//! accepted configuration is one the binaries can use: its derived replica
//! configuration validates, its voters are distinct and non-zero and
//! include this member, its tick is positive, it is standalone or has one
//! or two data members and at most one witness, every peer can be looked up,
//! and a relative data directory and TLS files were joined to the file's
//! directory.
#![no_main]

use std::path::Path;

use aoc_node::config::MemberRole;
use aoc_node::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let path = Path::new("/etc/aoc/node.toml");
    let cfg = match Config::parse(&text, path) {
        Ok(cfg) => cfg,
        Err(e) => {
            let line = e.to_string();
            assert!(
                !line.contains('\n'),
                "an error on more than one line: {line:?}"
            );
            assert!(line.starts_with("/etc/aoc/node.toml: "), "{line:?}");
            assert!(!e.problem.is_empty());
            return;
        }
    };
    cfg.replica_config()
        .validate()
        .expect("an accepted configuration gives a valid replica configuration");
    assert_eq!(cfg.replica_config().id, cfg.member_id);
    assert!(!cfg.tick().is_zero());
    let voters = cfg.voters();
    assert!(voters.contains(&cfg.member_id));
    assert!(voters.windows(2).all(|w| w[0] < w[1]), "{voters:?}");
    assert!(!voters.contains(&0));
    for p in &cfg.peers {
        assert_eq!(cfg.peer(p.id), Some(p));
    }
    if cfg.is_standalone() {
        assert!(!cfg.is_witness());
        assert_eq!(cfg.witness_id(), None);
    } else {
        // HA, or a shape between standalone and HA (membership changes):
        // one or two data members, at most one witness.
        let roles = || std::iter::once(cfg.role).chain(cfg.peers.iter().map(|p| p.role));
        let witnesses = roles().filter(|r| *r == MemberRole::Witness).count();
        let data = roles().filter(|r| *r == MemberRole::Data).count();
        assert!(witnesses <= 1 && (1..=2).contains(&data), "{data} data, {witnesses} witnesses");
        assert_eq!(cfg.replica_config().witness, cfg.witness_id());
        assert_eq!(cfg.witness_id().is_some(), witnesses == 1);
        if cfg.is_witness() {
            assert!(cfg.api_addr.is_none() && cfg.management_ip.is_none());
        }
    }
    assert!(cfg.data_dir.is_absolute(), "{:?}", cfg.data_dir);
    if let Some(tls) = &cfg.tls {
        for p in [&tls.ca, &tls.cert, &tls.key] {
            assert!(p.is_absolute(), "{p:?}");
        }
    }
});
