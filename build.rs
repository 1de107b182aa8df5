//! Compiles `proto/parley.proto` with the protoc shipped by
//! `protoc-bin-vendored`, so a fresh machine needs no system protoc.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        // Reflection serves this descriptor set to generic gRPC clients.
        .file_descriptor_set_path(out_dir.join("parley_descriptor.bin"))
        .compile_with_config(config, &["proto/parley.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/parley.proto");
    Ok(())
}
