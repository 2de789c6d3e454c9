//! Embeds the eBPF object when `cargo xtask build` points at it through
//! CTDEV_EBPF_OBJECT; otherwise the binary builds without it (host-only
//! builds need no BPF toolchain) and loads the object from --bpf-object.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(ctdev_embedded_ebpf)");
    println!("cargo::rerun-if-env-changed=CTDEV_EBPF_OBJECT");
    if let Ok(path) = std::env::var("CTDEV_EBPF_OBJECT") {
        let path = std::path::Path::new(&path);
        if path.is_file() {
            println!("cargo::rerun-if-changed={}", path.display());
            println!("cargo::rustc-cfg=ctdev_embedded_ebpf");
            println!("cargo::rustc-env=CTDEV_EMBEDDED_EBPF={}", path.display());
        } else {
            println!(
                "cargo::warning=CTDEV_EBPF_OBJECT={} is not a file; building without an embedded eBPF object",
                path.display()
            );
        }
    }
}
