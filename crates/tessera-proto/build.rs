//! Compiles the protocol with protox (no system protoc): the current schema,
//! and the frozen 1.0 schema that compatibility tests encode with.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = "../../proto";
    let files = [
        "../../proto/tessera/v1/federation.proto",
        "../../proto/tessera/v1_0/federation.proto",
    ];
    let descriptors = protox::compile(files, [root])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed={root}");
    Ok(())
}
