//! Generated protobuf types of `proto/aoc.proto` (wire and disk formats).
#![allow(
    missing_docs,
    clippy::all,
    unused_qualifications,
    renamed_and_removed_lints
)]
#![allow(
    unknown_lints,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals
)]
#![allow(trivial_casts, unused_results, unused_mut, dead_code, unused_parens)]
#![allow(mismatched_lifetime_syntaxes)]

include!(concat!(env!("OUT_DIR"), "/aoc.rs"));
