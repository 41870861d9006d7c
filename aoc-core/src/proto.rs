//! Generated protobuf types, one module per file in `proto/`: `aoc` (disk
//! formats and the replica's messages, also re-exported at this level),
//! `wire` (the TCP transport's frames) and `client` (the client API).

/// Declares a module holding one generated file (the generator's code
/// gets its lints relaxed here, not in the crate).
macro_rules! generated {
    ($(#[$doc:meta])* $name:ident, $file:literal) => {
        $(#[$doc])*
        #[allow(missing_docs, clippy::all, unused_qualifications, renamed_and_removed_lints)]
        #[allow(unknown_lints, non_camel_case_types, non_snake_case, non_upper_case_globals)]
        #[allow(trivial_casts, unused_results, unused_mut, dead_code, unused_parens)]
        #[allow(mismatched_lifetime_syntaxes)]
        pub mod $name {
            include!(concat!(env!("OUT_DIR"), "/", $file));
        }
    };
}

generated!(
    /// `proto/aoc.proto` (the name other generated files import it by).
    aoc,
    "aoc.rs"
);
generated!(
    /// `proto/wire.proto`: frames of the TCP transport.
    wire,
    "wire.rs"
);
generated!(
    /// `proto/client.proto`: the client API.
    client,
    "client.rs"
);

pub use aoc::*;
