//! Generates the guest agent's ttrpc API (`protos/agent.proto`) into OUT_DIR, pure Rust.

use std::{fs, path::PathBuf};

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("agent");
    fs::create_dir_all(&out).expect("create OUT_DIR/agent");
    println!("cargo:rerun-if-changed=protos/agent.proto");
    Codegen::new()
        .input("protos/agent.proto")
        .include("protos")
        .rust_protobuf()
        .rust_protobuf_customize(ProtobufCustomize::default().generate_accessors(true))
        .customize(Customize {
            async_all: true,
            ..Default::default()
        })
        .out_dir(&out)
        .run()
        .expect("generate the agent API from protos/agent.proto");
    // `include!` takes no inner attributes or inner doc comments.
    for name in ["agent.rs", "agent_ttrpc.rs"] {
        let path = out.join(name);
        let text = fs::read_to_string(&path).expect("read generated code");
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("#!") && !l.starts_with("//!"))
            .collect();
        fs::write(&path, kept.join("\n")).expect("write generated code");
    }
}
