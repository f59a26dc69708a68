//! Compiles `proto/` with protox (no system `protoc`) into prost types, plus pbjson serde impls so
//! that JSON records decode through protobuf's canonical JSON mapping of the same message.

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/opscom/permits/v1/events.proto",
        "proto/permit_stats/checkpoint/v1/checkpoint.proto",
    ];
    println!("cargo:rerun-if-changed=proto");

    let descriptors = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let descriptor_path = out.join("descriptors.bin");
    fs::write(
        &descriptor_path,
        prost::Message::encode_to_vec(&descriptors),
    )?;

    prost_build::Config::new()
        .compile_well_known_types()
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_fds(descriptors)?;

    pbjson_build::Builder::new()
        .register_descriptors(&fs::read(&descriptor_path)?)?
        // Producers may add fields (the contract only ever adds): JSON ignores the unknown ones,
        // as protobuf decoding does, instead of rejecting the record.
        .ignore_unknown_fields()
        .build(&[".opscom.permits.v1"])?;
    Ok(())
}
