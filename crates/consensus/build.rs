//! Generates the member-to-member protocol from `proto/peer` with a vendored `protoc`. The protos
//! live inside the crate so that its published package builds.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build finds protoc through PROTOC; the vendored binary keeps builds self-contained.
    std::env::set_var("PROTOC", protoc);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    let peer = root.join("peer/peer.proto");
    println!("cargo:rerun-if-changed={}", root.join("peer").display());
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&[peer], &[root])?;
    Ok(())
}
