//! The service files: the systemd unit passes `systemd-analyze verify` (systemd's own
//! parser: every key known, every path and binary in place), and `cargo xtask package`
//! builds a .deb that `dpkg-deb` reads and `lintian` accepts.

use std::{fs, path::Path, process::Command};

use sensor_tests::agent::{agent_bin, workspace_bin, TempDir};

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn run(cmd: &mut Command, what: &str) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what} ({e}); `cargo xtask setup` installs it"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_systemd_unit_verifies() {
    // A root with the unit where the package installs it, the binary it starts, and the
    // host's targets it is ordered against: verify checks all of them.
    let root = TempDir::new("unit");
    let units = root.path().join("usr/lib/systemd/system");
    fs::create_dir_all(&units).expect("units dir");
    fs::create_dir_all(root.path().join("usr/bin")).expect("bin dir");
    fs::copy(agent_bin(), root.path().join("usr/bin/sensor-agent")).expect("copy binary");
    fs::copy(
        repo().join("packaging/sensor-agent.service"),
        units.join("sensor-agent.service"),
    )
    .expect("copy unit");
    for entry in fs::read_dir("/usr/lib/systemd/system").expect("the host's systemd units") {
        let p = entry.expect("entry").path();
        if p.extension().is_some_and(|e| e == "target") {
            fs::copy(&p, units.join(p.file_name().expect("name"))).expect("copy target");
        }
    }
    let (ok, said) = run(
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(format!("--root={}", root.path().display()))
            .arg("sensor-agent.service"),
        "systemd-analyze (Debian package systemd)",
    );
    // Unknown keys are only warnings to systemd; here any word from it is a failure.
    assert!(
        ok && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
}

#[test]
fn the_debian_package_builds_and_lintian_accepts_it() {
    let out = TempDir::new("deb");
    let (ok, said) = run(
        Command::new(workspace_bin("xtask"))
            .args(["package", "--binary"])
            .arg(agent_bin())
            .arg("--out")
            .arg(out.path()),
        "xtask",
    );
    assert!(ok, "xtask package: {said}");
    let deb = Path::new(said.lines().last().expect("the .deb's path").trim()).to_path_buf();
    assert!(deb.is_file(), "{said}");

    let (ok, info) = run(Command::new("dpkg-deb").arg("--info").arg(&deb), "dpkg-deb");
    assert!(ok, "{info}");
    for field in [
        "Package: sensor-agent",
        "Architecture: ",
        "Depends: libc6 (>= 2.",
        "adduser",
        "postinst",
        "conffiles",
    ] {
        assert!(
            info.contains(field),
            "dpkg-deb --info lacks {field:?}:\n{info}"
        );
    }
    let (ok, contents) = run(
        Command::new("dpkg-deb").arg("--contents").arg(&deb),
        "dpkg-deb",
    );
    assert!(ok, "{contents}");
    for (path, mode) in [
        ("./usr/bin/sensor-agent", "-rwxr-xr-x root/root"),
        (
            "./usr/lib/systemd/system/sensor-agent.service",
            "-rw-r--r-- root/root",
        ),
        ("./etc/sensor-agent/sensor.toml", "-rw-r--r-- root/root"),
        ("./var/lib/sensor-agent/", "drwxr-xr-x root/root"),
        (
            "./usr/share/doc/sensor-agent/copyright",
            "-rw-r--r-- root/root",
        ),
    ] {
        assert!(
            contents
                .lines()
                .any(|l| l.starts_with(mode) && l.ends_with(path)),
            "dpkg-deb --contents lacks {path} ({mode}):\n{contents}"
        );
    }
    // The packaged example configuration is one the packaged binary accepts.
    let extracted = TempDir::new("deb-x");
    let (ok, said) = run(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(extracted.path()),
        "dpkg-deb",
    );
    assert!(ok, "{said}");
    let (ok, said) = run(
        Command::new(extracted.path().join("usr/bin/sensor-agent"))
            .args(["validate", "--config"])
            .arg(extracted.path().join("etc/sensor-agent/sensor.toml")),
        "the packaged sensor-agent",
    );
    assert!(ok, "{said}");

    let (ok, said) = run(
        Command::new("lintian")
            .args(["--fail-on", "error,warning", "--tag-display-limit", "0"])
            .arg(&deb),
        "lintian (Debian package lintian)",
    );
    println!("lintian: {said}");
    assert!(ok, "lintian: {said}");
}
