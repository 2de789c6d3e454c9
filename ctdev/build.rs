//! Embeds the eBPF object when `cargo xtask build` points at it through
//! CTDEV_EBPF_OBJECT; otherwise the binary builds without it (host-only
//! builds need no BPF toolchain) and loads the object from --bpf-object.
//!
//! Generates the NRI protocol (messages + ttrpc stubs) from NRI's own
//! `api.proto`, as a package installs it (Debian:
//! golang-github-containerd-nri-dev; `cargo xtask setup` unpacks it): no
//! protocol file is copied into this repository.

use std::path::{Path, PathBuf};

/// Where NRI's api.proto is looked for when CTDEV_NRI_PROTO is not set.
const NRI_PROTO_PATHS: [&str; 2] = [
    "/usr/share/gocode/src/github.com/containerd/nri/pkg/api/api.proto",
    "/opt/ctdev-deps/nri/usr/share/gocode/src/github.com/containerd/nri/pkg/api/api.proto",
];

fn main() {
    println!("cargo::rustc-check-cfg=cfg(ctdev_embedded_ebpf)");
    println!("cargo::rerun-if-env-changed=CTDEV_EBPF_OBJECT");
    if let Ok(path) = std::env::var("CTDEV_EBPF_OBJECT") {
        let path = std::path::Path::new(&path);
        if path.is_file() {
            println!("cargo::rerun-if-changed={}", path.display());
            println!("cargo::rustc-cfg=ctdev_embedded_ebpf");
            println!("cargo::rustc-env=CTDEV_EMBEDDED_EBPF={}", path.display());
            // Its hash names the shared program's pin directory: computed
            // here, so no process hashes the object to find its pins.
            let bytes = std::fs::read(path).expect("reading CTDEV_EBPF_OBJECT");
            let hash = ctdev_common::object_hash(&bytes);
            println!("cargo::rustc-env=CTDEV_EMBEDDED_EBPF_HASH={hash:016x}");
        } else {
            println!(
                "cargo::warning=CTDEV_EBPF_OBJECT={} is not a file; building without an embedded eBPF object",
                path.display()
            );
        }
    }
    // The plugin (feature `nri`, on by default) needs NRI's protocol; the
    // xtask builds the library without it, before its setup unpacked it.
    if std::env::var_os("CARGO_FEATURE_NRI").is_some() {
        nri_protocol();
    }
}

fn nri_proto() -> PathBuf {
    println!("cargo::rerun-if-env-changed=CTDEV_NRI_PROTO");
    if let Some(p) = std::env::var_os("CTDEV_NRI_PROTO") {
        return PathBuf::from(p);
    }
    for p in NRI_PROTO_PATHS {
        if Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "NRI's api.proto not found (looked in {}): run `cargo xtask setup`, which unpacks \
         Debian's golang-github-containerd-nri-dev, or set CTDEV_NRI_PROTO=/path/to/api.proto",
        NRI_PROTO_PATHS.join(", ")
    );
}

/// Generates `nri_api.rs` and `nri_api_ttrpc.rs` in OUT_DIR. Their inner
/// attributes (`#![...]`) are dropped so that they can be `include!`d.
fn nri_protocol() {
    let proto = nri_proto();
    println!("cargo::rerun-if-changed={}", proto.display());
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR is set for build scripts"));
    let gen = out.join("nri-gen");
    std::fs::create_dir_all(&gen).expect("create OUT_DIR/nri-gen");
    let include = proto.parent().expect("api.proto has a directory");
    ttrpc_codegen::Codegen::new()
        .out_dir(&gen)
        .input(&proto)
        .include(include)
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize {
            async_all: true,
            ..Default::default()
        })
        .run()
        .unwrap_or_else(|e| panic!("generating the NRI protocol from {}: {e}", proto.display()));
    for (from, to) in [
        ("api.rs", "nri_api.rs"),
        ("api_ttrpc.rs", "nri_api_ttrpc.rs"),
    ] {
        let text = std::fs::read_to_string(gen.join(from))
            .unwrap_or_else(|e| panic!("reading generated {from}: {e}"));
        let kept: String = text
            .lines()
            .filter(|l| {
                let l = l.trim_start();
                !l.starts_with("#![") && !l.starts_with("//!")
            })
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(out.join(to), kept).unwrap_or_else(|e| panic!("writing {to}: {e}"));
    }
}
