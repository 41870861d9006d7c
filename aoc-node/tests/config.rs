//! The configuration file: the examples load, and every validation error
//! is one line naming its field.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aoc_core::ReplicaConfig;
use aoc_node::config::{self, Config, ConfigError, MemberRole};

const FILE: &str = "/etc/aoc/node1.toml";

/// A valid HA data member (member 1 of 1, 2 and witness 3).
const HA: &str = r#"
cluster_id = 1
member_id = 1
role = "data"
data_dir = "/var/lib/aoc"
ha_addr = "10.0.0.1:7101"
api_addr = "10.0.0.1:7201"
http_addr = "10.0.0.1:7301"

[[peers]]
id = 2
role = "data"
ha_addr = "10.0.0.2:7101"
api_addr = "10.0.0.2:7201"

[[peers]]
id = 3
role = "witness"
ha_addr = "10.0.0.3:7101"
"#;

/// A valid witness (member 3 of data members 1 and 2).
const WITNESS: &str = r#"
cluster_id = 1
member_id = 3
role = "witness"
data_dir = "/var/lib/aoc"
ha_addr = "10.0.0.3:7101"
http_addr = "10.0.0.3:7301"

[[peers]]
id = 1
role = "data"
ha_addr = "10.0.0.1:7101"
api_addr = "10.0.0.1:7201"

[[peers]]
id = 2
role = "data"
ha_addr = "10.0.0.2:7101"
api_addr = "10.0.0.2:7201"
"#;

const STANDALONE: &str = r#"
cluster_id = 9
member_id = 4
role = "data"
data_dir = "data"
ha_addr = "127.0.0.1:7101"
api_addr = "127.0.0.1:7201"
http_addr = "127.0.0.1:7301"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new(FILE))
}

/// `text` must fail on `field`; returns the one-line message.
#[track_caller]
fn fails(text: &str, field: &str) -> String {
    let e = match parse(text) {
        Ok(c) => panic!("expected an error on {field}, got {c:?}"),
        Err(e) => e,
    };
    let line = e.to_string();
    eprintln!("{line}");
    assert_eq!(e.field.as_deref(), Some(field), "{line}");
    assert!(!line.contains('\n'), "not one line: {line:?}");
    assert!(line.starts_with(FILE), "{line}");
    assert!(line.contains(&format!(": {field}: ")), "{line}");
    line
}

/// `HA` with `from` replaced by `to` (which must occur).
#[track_caller]
fn ha_with(from: &str, to: &str) -> String {
    assert!(HA.contains(from), "{from:?} not in the base file");
    HA.replacen(from, to, 1)
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/local")
}

#[test]
fn the_base_files_are_valid() {
    let c = parse(HA).expect("HA");
    assert_eq!(c.member_id, 1);
    assert_eq!(c.role, MemberRole::Data);
    assert_eq!(c.voters(), vec![1, 2, 3]);
    assert_eq!(c.witness_id(), Some(3));
    assert!(!c.is_standalone());
    assert!(!c.allow_plain_tcp);
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/aoc"));
    assert_eq!(c.tick(), Duration::from_millis(100));
    assert_eq!(
        c.peer(2).and_then(|p| p.api_addr.as_deref()),
        Some("10.0.0.2:7201")
    );

    let s = parse(STANDALONE).expect("standalone");
    assert!(s.is_standalone());
    assert_eq!(s.voters(), vec![4]);
    assert_eq!(s.witness_id(), None);
    // A relative data_dir is taken relative to the file's directory.
    assert_eq!(s.data_dir, PathBuf::from("/etc/aoc/data"));
}

#[test]
fn the_examples_load() {
    let dir = examples();
    let n1 = config::load(&dir.join("node1.toml")).unwrap_or_else(|e| panic!("{e}"));
    let n2 = config::load(&dir.join("node2.toml")).unwrap_or_else(|e| panic!("{e}"));
    let w = config::load(&dir.join("witness.toml")).unwrap_or_else(|e| panic!("{e}"));
    for c in [&n1, &n2, &w] {
        assert_eq!(c.cluster_id, 1);
        assert_eq!(c.voters(), vec![1, 2, 3]);
        assert_eq!(c.witness_id(), Some(3));
        assert!(c.management_ip.is_none());
        assert!(c.data_dir.starts_with(&dir), "{}", c.data_dir.display());
    }
    assert_eq!(n1.data_dir, dir.join("data/node1"));
    assert_eq!(n2.data_dir, dir.join("data/node2"));
    assert_eq!(w.data_dir, dir.join("data/witness"));
    assert_eq!((n1.member_id, n1.ha_addr.as_str()), (1, "127.0.0.1:7101"));
    assert_eq!(n1.api_addr.as_deref(), Some("127.0.0.1:7201"));
    assert_eq!(n1.http_addr, "127.0.0.1:7301");
    assert_eq!((n2.member_id, n2.ha_addr.as_str()), (2, "127.0.0.1:7102"));
    assert_eq!(n2.api_addr.as_deref(), Some("127.0.0.1:7202"));
    assert_eq!(n2.http_addr, "127.0.0.1:7302");
    assert_eq!((w.member_id, w.ha_addr.as_str()), (3, "127.0.0.1:7103"));
    assert_eq!(w.role, MemberRole::Witness);
    assert_eq!(w.api_addr, None);
    assert_eq!(w.http_addr, "127.0.0.1:7303");
    // The three files describe the same cluster.
    assert_eq!(
        n1.peer(2).map(|p| p.ha_addr.as_str()),
        Some(n2.ha_addr.as_str())
    );
    assert_eq!(
        n2.peer(1).map(|p| p.ha_addr.as_str()),
        Some(n1.ha_addr.as_str())
    );
    assert_eq!(
        n1.peer(3).map(|p| p.ha_addr.as_str()),
        Some(w.ha_addr.as_str())
    );
    assert_eq!(w.peer(1).and_then(|p| p.api_addr.clone()), n1.api_addr);
}

#[test]
fn replica_config_matches_aoc_core_with_default_timeouts() {
    let c = parse(HA).expect("HA");
    assert_eq!(c.replica_config(), ReplicaConfig::ha(1, 3));
    let w = parse(WITNESS).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(w.replica_config(), ReplicaConfig::ha(3, 3));
    assert_eq!(w.witness_id(), Some(3));
    let s = parse(STANDALONE).expect("standalone");
    assert_eq!(s.replica_config(), ReplicaConfig::new(4));
}

#[test]
fn timeouts_reach_the_replica_config() {
    let text = format!(
        "{HA}\n[timeouts]\ntick_ms = 20\nelection_tick = 20\nheartbeat_tick = 4\n\
         sync_timeout_ms = 500\nswitchover_timeout_ms = 2000\n[guard]\nreaction_ms = 40\n"
    );
    let c = parse(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.tick(), Duration::from_millis(20));
    let rc = c.replica_config();
    assert_eq!(rc.election_tick, 20);
    assert_eq!(rc.heartbeat_tick, 4);
    assert_eq!(rc.sync_timeout_ticks, 25);
    assert_eq!(rc.switchover_timeout_ticks, 100);
    assert_eq!(rc.witness, Some(3));
    assert_eq!((rc.min_election_tick, rc.max_election_tick), (22, 28));
    rc.validate().expect("valid for aoc-core");
    // The witness draws from a range above the data members'.
    let mut w = c.clone();
    w.role = MemberRole::Witness;
    w.member_id = 3;
    w.peers[1].id = 1;
    w.peers[1].role = MemberRole::Data;
    let wrc = w.replica_config();
    assert!(wrc.min_election_tick > rc.max_election_tick, "{wrc:?}");
    wrc.validate().expect("valid for aoc-core");
    // Small values stay valid too.
    let tiny = format!("{HA}\n[timeouts]\nelection_tick = 2\nheartbeat_tick = 1\n");
    let t = parse(&tiny).unwrap_or_else(|e| panic!("{e}"));
    t.replica_config().validate().expect("valid");
}

#[test]
fn management_ip_parses() {
    let text = format!(
        "{HA}\n[management_ip]\naddress = \"10.0.0.10/24\"\ninterface = \"eth0\"\n\
         promote_hook = \"echo up\"\ndemote_hook = \"echo down\"\narping = true\n"
    );
    let c = parse(&text).unwrap_or_else(|e| panic!("{e}"));
    let m = c.management_ip.expect("management_ip");
    assert_eq!(m.address.as_deref(), Some("10.0.0.10/24"));
    assert_eq!(m.interface.as_deref(), Some("eth0"));
    assert!(m.arping);
    assert_eq!(m.netns, None);
}

// --- one test per validation error ------------------------------------

#[test]
fn syntax_error_gives_the_line() {
    let e = parse(&ha_with("member_id = 1", "member_id = = 1")).expect_err("syntax");
    let line = e.to_string();
    eprintln!("{line}");
    assert!(line.contains("line 3"), "{line}");
    assert!(!line.contains('\n'), "{line:?}");
}

#[test]
fn unreadable_file() {
    let e = config::load(Path::new("/nonexistent/aoc.toml")).expect_err("missing file");
    assert!(
        e.to_string().contains("/nonexistent/aoc.toml: cannot read"),
        "{e}"
    );
}

#[test]
fn unknown_field_at_top_level() {
    let line = fails(&ha_with("data_dir", "dta_dir = \"x\"\ndata_dir"), "dta_dir");
    assert!(line.contains("unknown field"), "{line}");
}

#[test]
fn unknown_field_in_a_peer() {
    let line = fails(&ha_with("id = 2", "id = 2\nweight = 5"), "peers[0].weight");
    assert!(line.contains("unknown field"), "{line}");
}

#[test]
fn unknown_field_in_timeouts() {
    let line = fails(&format!("{HA}\n[timeouts]\ntick = 100\n"), "timeouts.tick");
    assert!(
        line.contains("tick_ms"),
        "the known names are listed: {line}"
    );
}

#[test]
fn unknown_field_in_management_ip() {
    fails(
        &format!("{HA}\n[management_ip]\naddr = \"10.0.0.10/24\"\n"),
        "management_ip.addr",
    );
}

#[test]
fn missing_field() {
    let line = fails(&ha_with("cluster_id = 1\n", ""), "cluster_id");
    assert!(line.contains("is missing"), "{line}");
}

#[test]
fn missing_field_in_a_peer() {
    fails(
        &ha_with("ha_addr = \"10.0.0.3:7101\"", ""),
        "peers[1].ha_addr",
    );
}

#[test]
fn wrong_type() {
    let line = fails(
        &ha_with("member_id = 1", "member_id = \"one\""),
        "member_id",
    );
    assert!(line.contains("invalid type"), "{line}");
}

#[test]
fn negative_id() {
    fails(&ha_with("id = 2", "id = -2"), "peers[0].id");
}

#[test]
fn cluster_id_zero() {
    let line = fails(&ha_with("cluster_id = 1", "cluster_id = 0"), "cluster_id");
    assert!(line.ends_with("cluster_id: 0 is not allowed"), "{line}");
}

#[test]
fn member_id_zero() {
    let line = fails(&ha_with("member_id = 1", "member_id = 0"), "member_id");
    assert!(line.ends_with("member_id: 0 is not allowed"), "{line}");
}

#[test]
fn bad_role() {
    let line = fails(&ha_with("role = \"data\"", "role = \"dta\""), "role");
    assert!(
        line.contains(r#"role: must be "data" or "witness", got "dta""#),
        "{line}"
    );
}

#[test]
fn bad_peer_role() {
    let line = fails(
        &ha_with("role = \"witness\"", "role = \"arbiter\""),
        "peers[1].role",
    );
    assert!(line.contains(r#"got "arbiter""#), "{line}");
}

#[test]
fn empty_data_dir() {
    fails(
        &ha_with("data_dir = \"/var/lib/aoc\"", "data_dir = \"\""),
        "data_dir",
    );
}

#[test]
fn bad_ha_addr() {
    let line = fails(
        &ha_with("ha_addr = \"10.0.0.1:7101\"", "ha_addr = \"10.0.0.1\""),
        "ha_addr",
    );
    assert!(line.contains(r#""10.0.0.1" is not host:port"#), "{line}");
}

#[test]
fn bad_peer_ha_addr() {
    let line = fails(
        &ha_with("ha_addr = \"10.0.0.3:7101\"", "ha_addr = \"x:y\""),
        "peers[1].ha_addr",
    );
    assert!(
        line.contains(r#"peers[1].ha_addr: "x:y" is not host:port"#),
        "{line}"
    );
}

#[test]
fn port_out_of_range_and_zero() {
    fails(
        &ha_with("10.0.0.2:7101", "10.0.0.2:70000"),
        "peers[0].ha_addr",
    );
    fails(&ha_with("10.0.0.2:7101", "10.0.0.2:0"), "peers[0].ha_addr");
}

#[test]
fn bad_hosts() {
    fails(&ha_with("10.0.0.1:7201", "10.0.0.256:7201"), "api_addr");
    fails(&ha_with("10.0.0.1:7201", "::1:7201"), "api_addr");
    fails(&ha_with("10.0.0.1:7201", "bad_host:7201"), "api_addr");
    fails(&ha_with("10.0.0.1:7201", ":7201"), "api_addr");
    // Names and bracketed IPv6 are fine.
    parse(&ha_with("10.0.0.1:7201", "node-1.example.com:7201")).expect("host name");
    parse(&ha_with("10.0.0.1:7201", "[::1]:7201")).expect("IPv6");
}

#[test]
fn bad_http_addr() {
    fails(
        &ha_with("http_addr = \"10.0.0.1:7301\"", "http_addr = \"7301\""),
        "http_addr",
    );
    // Port 0 (any free port) is allowed for the local listener only.
    parse(&ha_with("10.0.0.1:7301", "10.0.0.1:0")).expect("http port 0");
}

#[test]
fn api_addr_required_for_data() {
    let line = fails(&ha_with("api_addr = \"10.0.0.1:7201\"\n", ""), "api_addr");
    assert!(line.contains("required for a data member"), "{line}");
}

#[test]
fn api_addr_forbidden_for_witness() {
    let text = WITNESS.replacen("http_addr", "api_addr = \"10.0.0.3:7201\"\nhttp_addr", 1);
    let line = fails(&text, "api_addr");
    assert!(line.contains("not allowed for a witness"), "{line}");
}

#[test]
fn peer_api_addr_required_for_data() {
    fails(
        &ha_with("api_addr = \"10.0.0.2:7201\"\n", ""),
        "peers[0].api_addr",
    );
}

#[test]
fn peer_api_addr_forbidden_for_witness() {
    let line = fails(
        &ha_with(
            "ha_addr = \"10.0.0.3:7101\"",
            "ha_addr = \"10.0.0.3:7101\"\napi_addr = \"10.0.0.3:7201\"",
        ),
        "peers[1].api_addr",
    );
    assert!(line.contains("not allowed for a witness"), "{line}");
}

#[test]
fn own_listeners_differ() {
    let line = fails(&ha_with("10.0.0.1:7301", "10.0.0.1:7201"), "http_addr");
    assert!(line.contains("is also api_addr"), "{line}");
}

#[test]
fn members_ha_addrs_differ() {
    let line = fails(
        &ha_with("10.0.0.3:7101", "10.0.0.2:7101"),
        "peers[1].ha_addr",
    );
    assert!(line.contains("is also peers[0].ha_addr"), "{line}");
}

#[test]
fn members_api_addrs_differ() {
    let line = fails(
        &ha_with("10.0.0.2:7201", "10.0.0.1:7201"),
        "peers[0].api_addr",
    );
    assert!(line.contains("is also api_addr"), "{line}");
}

#[test]
fn peer_id_zero() {
    fails(&ha_with("id = 2", "id = 0"), "peers[0].id");
}

#[test]
fn peer_ids_unique() {
    let line = fails(&ha_with("id = 3", "id = 2"), "peers[1].id");
    assert!(line.contains("listed twice"), "{line}");
}

#[test]
fn this_member_not_in_peers() {
    let line = fails(&ha_with("id = 2", "id = 1"), "peers[0].id");
    assert!(line.contains("this member"), "{line}");
}

#[test]
fn ha_needs_one_witness() {
    let line = fails(
        &ha_with(
            "role = \"witness\"",
            "role = \"data\"\napi_addr = \"10.0.0.3:7201\"",
        ),
        "peers",
    );
    assert!(line.contains("3 data members and 0 witnesses"), "{line}");
}

#[test]
fn ha_needs_two_data_members() {
    let two_witnesses = ha_with("id = 2\nrole = \"data\"", "id = 2\nrole = \"witness\"").replacen(
        "api_addr = \"10.0.0.2:7201\"\n",
        "",
        1,
    );
    let line = fails(&two_witnesses, "peers");
    assert!(line.contains("1 data member and 2 witnesses"), "{line}");
}

#[test]
fn shapes_between_standalone_and_ha_load_and_larger_ones_are_refused() {
    // One data member and the witness: a passive was removed, its
    // replacement is not added yet.
    let only_witness = ha_with(
        "[[peers]]\nid = 2\nrole = \"data\"\nha_addr = \"10.0.0.2:7101\"\napi_addr = \"10.0.0.2:7201\"\n",
        "",
    );
    let cfg = parse(&only_witness).expect("data member and witness");
    assert_eq!(cfg.voters(), vec![1, 3]);
    let four = format!(
        "{HA}\n[[peers]]\nid = 4\nrole = \"data\"\nha_addr = \"10.0.0.4:7101\"\napi_addr = \"10.0.0.4:7201\"\n"
    );
    fails(&four, "peers");
}

#[test]
fn a_standalone_witness_is_refused() {
    let text = STANDALONE
        .replacen("role = \"data\"", "role = \"witness\"", 1)
        .replacen("api_addr = \"127.0.0.1:7201\"\n", "", 1);
    let line = fails(&text, "peers");
    assert!(line.contains("witness needs"), "{line}");
}

#[test]
fn tick_ms_zero() {
    fails(
        &format!("{HA}\n[timeouts]\ntick_ms = 0\n"),
        "timeouts.tick_ms",
    );
}

#[test]
fn tick_ms_too_long() {
    fails(&format!("{HA}\n[timeouts]\ntick_ms = 60000\nsync_timeout_ms = 60000\nswitchover_timeout_ms = 60000\n"), "timeouts.tick_ms");
}

#[test]
fn heartbeat_tick_zero() {
    fails(
        &format!("{HA}\n[timeouts]\nheartbeat_tick = 0\n"),
        "timeouts.heartbeat_tick",
    );
}

#[test]
fn election_tick_not_above_heartbeat() {
    let line = fails(
        &format!("{HA}\n[timeouts]\nelection_tick = 2\nheartbeat_tick = 2\n"),
        "timeouts.election_tick",
    );
    assert!(line.contains("greater than heartbeat_tick (2)"), "{line}");
}

#[test]
fn election_tick_too_large() {
    fails(
        &format!("{HA}\n[timeouts]\nelection_tick = 5000\n"),
        "timeouts.election_tick",
    );
}

#[test]
fn sync_timeout_not_a_multiple_of_the_tick() {
    let line = fails(
        &format!("{HA}\n[timeouts]\nsync_timeout_ms = 1050\n"),
        "timeouts.sync_timeout_ms",
    );
    assert!(
        line.contains("1050 is not a multiple of tick_ms (100)"),
        "{line}"
    );
}

#[test]
fn sync_timeout_zero() {
    fails(
        &format!("{HA}\n[timeouts]\nsync_timeout_ms = 0\n"),
        "timeouts.sync_timeout_ms",
    );
}

#[test]
fn switchover_timeout_not_a_multiple_of_the_tick() {
    fails(
        &format!("{HA}\n[timeouts]\nswitchover_timeout_ms = 3050\n"),
        "timeouts.switchover_timeout_ms",
    );
}

#[test]
fn management_ip_address_needs_interface() {
    fails(
        &format!("{HA}\n[management_ip]\naddress = \"10.0.0.10/24\"\n"),
        "management_ip.interface",
    );
    fails(
        &format!("{HA}\n[management_ip]\ninterface = \"eth0\"\n"),
        "management_ip.address",
    );
}

#[test]
fn management_ip_address_is_cidr() {
    for bad in [
        "10.0.0.10",
        "10.0.0.10/33",
        "10.0.0/24",
        "0.0.0.0/0",
        "fe80::1/129",
    ] {
        let line = fails(
            &format!("{HA}\n[management_ip]\naddress = \"{bad}\"\ninterface = \"eth0\"\n"),
            "management_ip.address",
        );
        assert!(line.contains(bad), "{line}");
    }
}

#[test]
fn management_ip_interface_name() {
    fails(
        &format!("{HA}\n[management_ip]\naddress = \"10.0.0.10/24\"\ninterface = \"eth 0\"\n"),
        "management_ip.interface",
    );
    fails(
        &format!("{HA}\n[management_ip]\naddress = \"10.0.0.10/24\"\ninterface = \"a-very-long-interface\"\n"),
        "management_ip.interface",
    );
}

#[test]
fn management_ip_arping_is_ipv4_only() {
    fails(
        &format!("{HA}\n[management_ip]\naddress = \"fd00::10/64\"\ninterface = \"eth0\"\narping = true\n"),
        "management_ip.arping",
    );
    fails(
        &format!("{HA}\n[management_ip]\narping = true\n"),
        "management_ip.arping",
    );
}

#[test]
fn management_ip_empty_hook() {
    fails(
        &format!("{HA}\n[management_ip]\npromote_hook = \"  \"\n"),
        "management_ip.promote_hook",
    );
}

#[test]
fn management_ip_bad_netns() {
    fails(
        &format!("{HA}\n[management_ip]\nnetns = \"a/b\"\n"),
        "management_ip.netns",
    );
}

#[test]
fn management_ip_forbidden_for_witness() {
    fails(
        &format!("{WITNESS}\n[management_ip]\npromote_hook = \"true\"\n"),
        "management_ip",
    );
}

#[test]
fn allow_plain_tcp_is_a_bool() {
    let c = parse(&format!("allow_plain_tcp = true\n{HA}")).expect("true");
    assert!(c.allow_plain_tcp);
    fails(
        &format!("allow_plain_tcp = \"yes\"\n{HA}"),
        "allow_plain_tcp",
    );
}

#[test]
fn storage_reserve_of_zero_and_unknown_keys() {
    let line = fails(
        &format!("{HA}\n[storage]\nreserve_mb = 0\n"),
        "storage.reserve_mb",
    );
    assert!(line.contains("at least 1"), "{line}");
    fails(
        &format!("{HA}\n[storage]\nreserve = 5\n"),
        "storage.reserve",
    );
    fails(
        &format!("{HA}\n[storage]\nnospace_alarm = \"yes\"\n"),
        "storage.nospace_alarm",
    );
}
