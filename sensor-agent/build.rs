//! Builds the eBPF programs (crate `sensor-ebpf`) and hands their paths to the agent, which
//! embeds them. The object is rebuilt whenever its sources change, so the agent can never run
//! a stale datapath.
//!
//! The eBPF crate needs Debian's rustc (its sysroot has `core` for `bpfel-unknown-none`) and
//! `bpf-linker` built against the same LLVM: `cargo xtask setup` installs both (docs/TOOLCHAIN.md).

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const EBPF_TARGET: &str = "bpfel-unknown-none";

fn main() {
    let manifest =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest
        .parent()
        .expect("sensor-agent sits in the workspace root")
        .to_path_buf();
    let ebpf_dir = root.join("sensor-ebpf");
    for watched in [
        "sensor-ebpf/src",
        "sensor-ebpf/Cargo.toml",
        "sensor-ebpf/Cargo.lock",
        "sensor-common/src",
        "sensor-common/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=SENSOR_EBPF_RUSTC");

    let rustc = env::var_os("SENSOR_EBPF_RUSTC")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/rustc"));
    if !rustc.exists() {
        fail(&format!(
            "the eBPF compiler {} is missing: run `cargo xtask setup` (installs Debian's rustc-web and libstd-rust-web-dev-bpf)",
            rustc.display()
        ));
    }
    let linker_on_path = env::var_os("PATH")
        .map(|p| env::split_paths(&p).any(|d| d.join("bpf-linker").is_file()))
        .unwrap_or(false);
    if !linker_on_path {
        fail("bpf-linker is not on PATH: run `cargo xtask setup` (builds bpf-linker 0.13.0 against LLVM 22)");
    }

    let target_dir = root.join("target").join("ebpf");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&ebpf_dir)
        .args(["build", "--release", "--target", EBPF_TARGET, "--bins"])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("RUSTC", &rustc)
        // The BPF target is tier 3 and the programs use inline BPF assembly for atomics.
        .env("RUSTC_BOOTSTRAP", "1")
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-Cdebuginfo=2\x1f-Clink-arg=--btf",
        );
    // Nothing of the host build may leak into the eBPF build.
    for var in [
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTDOCFLAGS",
    ] {
        cmd.env_remove(var);
    }
    for (key, _) in env::vars_os() {
        if let Some(k) = key.to_str() {
            if k.starts_with("CARGO_FEATURE_")
                || k.starts_with("CARGO_CFG_")
                || k.starts_with("CARGO_PROFILE_")
            {
                cmd.env_remove(k);
            }
        }
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| fail(&format!("cannot run cargo for the eBPF build: {e}")));
    if !status.success() {
        fail(&format!(
            "the eBPF build failed ({status}); see the compiler output above"
        ));
    }

    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    for (bin, var) in [
        ("sensor", "SENSOR_EBPF_OBJECT"),
        ("bench-ref", "SENSOR_EBPF_BENCH_OBJECT"),
        ("process", "SENSOR_PROCESS_OBJECT"),
    ] {
        let built = target_dir.join(EBPF_TARGET).join("release").join(bin);
        let copy = out.join(format!("{bin}.bpf.o"));
        copy_file(&built, &copy);
        println!("cargo:rustc-env={var}={}", copy.display());
    }
    println!(
        "cargo:rustc-env=SENSOR_ABI_HASH={:016x}",
        abi_hash(
            &root.join("sensor-common/src/lib.rs"),
            &ebpf_dir.join("src/main.rs")
        )
    );
}

/// A fingerprint of the kernel ABI: the code of `sensor-common` (the layout of every map key
/// and value) and the map declarations of the eBPF program. Comments and blank lines are left
/// out, so documenting the ABI does not discard the kernel's pinned state; any change to a
/// type, constant or map declaration does (the agent pins its maps under this version).
fn abi_hash(common: &Path, ebpf: &Path) -> u64 {
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", p.display())))
    };
    let code = |text: &str| -> Vec<String> {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("//"))
            .map(str::to_owned)
            .collect()
    };
    let mut lines = code(&read(common));
    // The map declarations: the line after each `#[map]` attribute.
    let ebpf = code(&read(ebpf));
    lines.extend(
        ebpf.windows(2)
            .filter(|w| w[0] == "#[map]")
            .map(|w| w[1].clone()),
    );
    // FNV-1a: stable across Rust releases, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for line in &lines {
        for b in line.bytes().chain(std::iter::once(b'\n')) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

fn copy_file(from: &Path, to: &Path) {
    if let Err(e) = std::fs::copy(from, to) {
        fail(&format!(
            "cannot copy {} to {}: {e}",
            from.display(),
            to.display()
        ));
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    println!("cargo:warning={msg}");
    std::process::exit(1);
}
