//! Builds the kernel programs (`ebpf/programs`) with aya-build for `bpfel-unknown-none`, using the pinned
//! nightly toolchain and bpf-linker that `scripts/install-ebpf-toolchain.sh` installs. The object lands in
//! `OUT_DIR/switchyard-ebpf-programs` and is embedded by `src/loader.rs`.

use std::path::{Path, PathBuf};

/// The nightly the kernel programs are built with. Keep in step with `scripts/install-ebpf-toolchain.sh`.
const EBPF_TOOLCHAIN: &str = "nightly-2026-05-19";
const PROGRAMS: &str = "switchyard-ebpf-programs";

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest.join("../..");
    let programs = canonical(&root.join("ebpf/programs"));
    let common = canonical(&root.join("ebpf/common"));
    // aya-build watches the directory it is given; watch only the sources, not a stray `target/` there.
    for p in [
        programs.join("src"),
        programs.join("Cargo.toml"),
        programs.join("Cargo.lock"),
        common.join("src"),
        common.join("Cargo.toml"),
    ] {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    if !on_path("bpf-linker") {
        panic!(
            "bpf-linker is not on PATH: the eBPF programs cannot be linked. \
             Run `bash scripts/install-ebpf-toolchain.sh` (LLVM 22, {EBPF_TOOLCHAIN} with rust-src, bpf-linker)."
        );
    }
    // aya-build runs `cargo build --package` in the current directory. The programs crate is excluded from
    // the workspace (it is built for the BPF target only), so run it from there: it is its own workspace.
    std::env::set_current_dir(&programs).unwrap_or_else(|e| panic!("cd {}: {e}", programs.display()));
    let src = programs.join("src");
    let package =
        aya_build::Package { name: PROGRAMS, root_dir: src.to_str().expect("a UTF-8 path"), ..Default::default() };
    if let Err(e) = aya_build::build_ebpf([package], aya_build::Toolchain::Custom(EBPF_TOOLCHAIN)) {
        panic!(
            "building the eBPF programs failed: {e:#}\n\
             (they need {EBPF_TOOLCHAIN} with rust-src and bpf-linker: run `bash scripts/install-ebpf-toolchain.sh`)"
        );
    }
}

fn canonical(p: &Path) -> PathBuf {
    p.canonicalize().unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}
