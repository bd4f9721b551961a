//! `cargo xtask package`: a Debian package of the agent, built with `dpkg-deb` directly.
//!
//! Why not cargo-deb: it would be one more tool to install (built from crates.io), for what
//! is a handful of files and a control file; `dpkg-deb` is on every Debian system, and
//! `lintian` checks the result. The package holds the binary (stripped), the systemd unit
//! (`packaging/sensor-agent.service`), the example configuration as a conffile
//! (`/etc/sensor-agent/sensor.toml`), the state directory (`/var/lib/sensor-agent`, owned
//! by the `sensor-agent` system user that `postinst` creates) and the docs.
//!
//! It must never package a binary other than the one asked for, nor leave a half-written
//! package behind under the final name.

use std::{
    fs,
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

const NAME: &str = "sensor-agent";
const MAINTAINER: &str =
    "Flow sensor maintainers <maintainers@users.noreply.r-seed-006934ff.example>";
const SUMMARY: &str = "flow sensor finding cryptomining and covert long-lived traffic";
const DESCRIPTION: &str = " An XDP/eBPF datapath counts every flow in the kernel; the agent judges
 flows while they are still open (long, quiet, periodic sessions, mining
 protocols, known mining infrastructure, encrypted mining) and ships
 explainable alarms as JSON (ECS), CEF, LEEF or OCSF to a SIEM. It exposes
 Prometheus metrics and health endpoints on loopback.";

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The crate version of the agent, from its Cargo.toml.
fn version(root: &Path) -> Result<String> {
    let manifest = fs::read_to_string(root.join("sensor-agent/Cargo.toml"))?;
    manifest
        .lines()
        .find_map(|l| {
            let v = l.strip_prefix("version")?.trim().strip_prefix('=')?.trim();
            Some(v.trim_matches('"').to_string())
        })
        .context("sensor-agent/Cargo.toml has no version")
}

/// Depends for the binary: the package of each shared library it needs (`dpkg -S`), libc6 at
/// the newest GLIBC symbol version it uses.
fn depends(binary: &Path) -> Result<String> {
    let dynamic = output(Command::new("readelf").arg("-d").arg(binary))?;
    let mut deps: Vec<String> = Vec::new();
    for line in dynamic.lines().filter(|l| l.contains("(NEEDED)")) {
        let Some(lib) = line.split('[').nth(1).and_then(|s| s.split(']').next()) else {
            continue;
        };
        let found = output(Command::new("dpkg").args(["-S", &format!("*/{lib}")]))?;
        let Some(pkg) = found
            .lines()
            .next()
            .and_then(|l| l.split(':').next())
            .map(str::trim)
        else {
            bail!("no installed package holds {lib}");
        };
        if pkg != "libc6" && !deps.iter().any(|d| d == pkg) {
            deps.push(pkg.to_string());
        }
    }
    let symbols = output(Command::new("objdump").arg("-T").arg(binary))?;
    let glibc = symbols
        .split_whitespace()
        // objdump writes versions as `GLIBC_2.34` or `(GLIBC_2.34)`.
        .filter_map(|w| {
            w.trim_matches(|c| c == '(' || c == ')')
                .strip_prefix("GLIBC_")
        })
        .filter_map(|v| {
            let mut p = v.split('.').map(|n| n.parse::<u32>().ok());
            Some((p.next()??, p.next().flatten().unwrap_or(0)))
        })
        .max()
        .unwrap_or((2, 17));
    deps.insert(0, format!("libc6 (>= {}.{})", glibc.0, glibc.1));
    // postinst creates the service user with it (deb-systemd-invoke in prerm comes from
    // init-system-helpers, which is essential).
    deps.push("adduser".to_string());
    Ok(deps.join(", "))
}

/// Writes `bytes` to `path` (parents made) with `mode`.
fn put(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    put(path, text.as_bytes(), mode)
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    let bytes = fs::read(from).with_context(|| format!("cannot read {}", from.display()))?;
    put(to, &bytes, mode)
}

fn gzip_to(text: &str, to: &Path) -> Result<()> {
    let mut child = Command::new("gzip")
        .args(["-9n", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("cannot run gzip")?;
    child
        .stdin
        .take()
        .context("gzip stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("gzip failed");
    }
    put(to, &out.stdout, 0o644)
}

const POSTINST: &str = r#"#!/bin/sh
set -e
if [ "$1" = configure ]; then
    if ! getent passwd sensor-agent >/dev/null; then
        adduser --system --group --home /var/lib/sensor-agent --no-create-home \
            --gecos "flow sensor" sensor-agent >/dev/null
    fi
    chown sensor-agent:sensor-agent /var/lib/sensor-agent
    chmod 0750 /var/lib/sensor-agent
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null || true
    fi
fi
"#;

/// What lintian reports that does not apply, each with the reason.
const LINTIAN_OVERRIDES: &str = "# Not an upload to Debian: there is no ITP bug to close.
sensor-agent: initial-upload-closes-no-bugs
# `sensor-agent --help` and README.md (in this package's docs) are the reference.
sensor-agent: no-manual-page [usr/bin/sensor-agent]
";

const POSTRM: &str = r#"#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
fi
if [ "$1" = purge ]; then
    rm -rf /var/lib/sensor-agent
fi
"#;

const PRERM: &str = r#"#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
    deb-systemd-invoke stop sensor-agent.service >/dev/null || true
fi
"#;

/// Builds `<out>/sensor-agent_<version>-1_<arch>.deb` from `binary`; returns its path.
pub fn build(root: &Path, binary: &Path, out: &Path) -> Result<PathBuf> {
    if !binary.is_file() {
        bail!("{} is not a file", binary.display());
    }
    let version = format!("{}-1", version(root)?);
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_string();
    fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let stage = out.join(format!("{NAME}_{version}_{arch}.stage"));
    let _ = fs::remove_dir_all(&stage);
    let usr_bin = stage.join("usr/bin").join(NAME);
    copy(binary, &usr_bin, 0o755)?;
    output(
        Command::new("strip")
            .args([
                "--strip-unneeded",
                "--remove-section=.comment",
                "--remove-section=.note",
            ])
            .arg(&usr_bin),
    )?;
    let doc = stage.join("usr/share/doc").join(NAME);
    for (from, to) in [
        (
            "packaging/sensor-agent.service",
            stage.join("usr/lib/systemd/system/sensor-agent.service"),
        ),
        // The conffile: every key with its default, valid as it is.
        (
            "sensor.example.toml",
            stage.join("etc/sensor-agent/sensor.toml"),
        ),
        ("README.md", doc.join("README.md")),
        ("docs/ARCHITECTURE.md", doc.join("ARCHITECTURE.md")),
    ] {
        copy(&root.join(from), &to, 0o644)?;
    }
    write(
        &doc.join("copyright"),
        &format!(
            "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: {NAME}\n\nFiles: *\nCopyright: 2024-2026 the {NAME} authors\nLicense: MIT or Apache-2.0\n On Debian systems the Apache License 2.0 is in\n /usr/share/common-licenses/Apache-2.0.\n"
        ),
        0o644,
    )?;
    // Reproducible: the time of the last commit (or SOURCE_DATE_EPOCH), never the build's.
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .or_else(|| {
            output(
                Command::new("git")
                    .arg("-C")
                    .arg(root)
                    .args(["log", "-1", "--format=%ct"]),
            )
            .ok()
        })
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or_else(|| "0".into());
    let date = output(Command::new("date").args(["-R", "-u", "-d", &format!("@{epoch}")]))?;
    gzip_to(
        &format!(
            "{NAME} ({version}) unstable; urgency=medium\n\n  * Package built by cargo xtask package.\n\n -- {MAINTAINER}  {}\n",
            date.trim()
        ),
        &doc.join("changelog.Debian.gz"),
    )?;
    // 0755 as policy wants in the archive; postinst hands it to the service user as 0750.
    fs::create_dir_all(stage.join("var/lib").join(NAME))?;
    fs::set_permissions(
        stage.join("var/lib").join(NAME),
        fs::Permissions::from_mode(0o755),
    )?;
    write(
        &stage.join("usr/share/lintian/overrides").join(NAME),
        LINTIAN_OVERRIDES,
        0o644,
    )?;
    let installed_kb = output(
        Command::new("du")
            .args(["-sk", "--exclude=DEBIAN"])
            .arg(&stage),
    )?
    .split_whitespace()
    .next()
    .unwrap_or("0")
    .to_string();
    let control = format!(
        "Package: {NAME}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: {MAINTAINER}\nInstalled-Size: {installed_kb}\nDepends: {}\nSection: net\nPriority: optional\nDescription: {SUMMARY}\n{DESCRIPTION}\n",
        depends(&usr_bin)?
    );
    let debian = stage.join("DEBIAN");
    write(&debian.join("control"), &control, 0o644)?;
    write(
        &debian.join("conffiles"),
        "/etc/sensor-agent/sensor.toml\n",
        0o644,
    )?;
    write(&debian.join("postinst"), POSTINST, 0o755)?;
    write(&debian.join("postrm"), POSTRM, 0o755)?;
    write(&debian.join("prerm"), PRERM, 0o755)?;
    let deb = out.join(format!("{NAME}_{version}_{arch}.deb"));
    let partial = out.join(format!("{NAME}_{version}_{arch}.deb.partial"));
    output(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&stage)
            .arg(&partial),
    )?;
    fs::rename(&partial, &deb)?;
    fs::remove_dir_all(&stage)?;
    Ok(deb)
}
