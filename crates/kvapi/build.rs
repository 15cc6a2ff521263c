//! Generates the etcd v3 API from `proto/etcd` with a vendored `protoc`: no system install. The
//! protos live inside the crate so that its published package builds.
//!
//! Besides the prost types and tonic stubs, it generates serde implementations in the proto3
//! JSON mapping (pbjson) for the HTTP/JSON gateway: etcd 3.4's grpc-gateway writes the protos'
//! original field names, 64-bit integers as strings, bytes as base64, enums by name, and omits
//! default values, and reads either field name form.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build finds protoc through PROTOC; the vendored binary keeps builds self-contained.
    std::env::set_var("PROTOC", protoc);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    let rpc = root.join("etcd/rpc.proto");
    let lock = root.join("etcd/v3lock.proto");
    let election = root.join("etcd/v3election.proto");
    println!("cargo:rerun-if-changed={}", root.join("etcd").display());
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = out.join("etcd_descriptors.bin");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .file_descriptor_set_path(&descriptors)
        .compile_protos(&[rpc, lock, election], &[root])?;
    let set = std::fs::read(&descriptors)?;
    pbjson_build::Builder::new()
        .register_descriptors(&set)?
        .preserve_proto_field_names()
        // grpc-gateway's decoder skips fields it does not know.
        .ignore_unknown_fields()
        .build(&[
            ".etcdserverpb",
            ".mvccpb",
            ".authpb",
            ".v3lockpb",
            ".v3electionpb",
        ])?;
    Ok(())
}
