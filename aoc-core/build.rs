//! Generates the Rust types for `proto/aoc.proto` with the pure-Rust protobuf
//! code generator, so building needs no `protoc` on the machine.

use std::fs;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=proto/aoc.proto");
    let out_dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR for build scripts");
    protobuf_codegen_pure::Codegen::new()
        .out_dir(&out_dir)
        .inputs(["proto/aoc.proto"])
        .include("proto")
        .run()
        .expect("proto/aoc.proto must compile: it is part of this crate");
    // The generated file starts with inner attributes, which `include!`
    // cannot take; the including module sets its own allows instead.
    let path = Path::new(&out_dir).join("aoc.rs");
    let text = fs::read_to_string(&path).expect("the generator wrote aoc.rs");
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("#![") && !l.starts_with("//!"))
        .collect();
    fs::write(&path, kept.join("\n")).expect("OUT_DIR is writable");
}
