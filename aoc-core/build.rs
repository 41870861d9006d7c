//! Generates the Rust types for the `.proto` files in `proto/` with the
//! pure-Rust protobuf code generator, so building needs no `protoc` on the
//! machine. Each file becomes a module of `crate::proto`.

use std::fs;
use std::path::Path;

fn main() {
    const FILES: [&str; 3] = ["aoc", "wire", "client"];
    let out_dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR for build scripts");
    for name in FILES {
        println!("cargo:rerun-if-changed=proto/{name}.proto");
    }
    protobuf_codegen_pure::Codegen::new()
        .out_dir(&out_dir)
        .inputs(FILES.map(|n| format!("proto/{n}.proto")))
        .include("proto")
        .run()
        .expect("the .proto files must compile: they are part of this crate");
    for name in FILES {
        // The generated file starts with inner attributes, which `include!`
        // cannot take; the including module sets its own allows instead.
        let path = Path::new(&out_dir).join(format!("{name}.rs"));
        let text = fs::read_to_string(&path).expect("the generator wrote every file");
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("#![") && !l.starts_with("//!"))
            .collect();
        fs::write(&path, kept.join("\n")).expect("OUT_DIR is writable");
    }
}
