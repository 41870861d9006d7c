//! Generated protobuf types: `proto/aoc.proto` (disk formats and the
//! replica's messages) at this level; `wire` (the TCP transport's frames)
//! and `client` (the client API) as modules.
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

/// `proto/aoc.proto`, under the name other generated files import it by.
pub mod aoc {
    pub use super::*;
}

/// `proto/wire.proto`: frames of the TCP transport.
pub mod wire {
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
    include!(concat!(env!("OUT_DIR"), "/wire.rs"));
}

/// `proto/client.proto`: the client API.
pub mod client {
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
    include!(concat!(env!("OUT_DIR"), "/client.rs"));
}
