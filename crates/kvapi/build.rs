//! Generates the etcd v3 API from `proto/etcd` with a vendored `protoc`: no system install.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build finds protoc through PROTOC; the vendored binary keeps builds self-contained.
    std::env::set_var("PROTOC", protoc);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let rpc = root.join("etcd/rpc.proto");
    let lock = root.join("etcd/v3lock.proto");
    let election = root.join("etcd/v3election.proto");
    println!("cargo:rerun-if-changed={}", root.join("etcd").display());
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&[rpc, lock, election], &[root])?;
    Ok(())
}
