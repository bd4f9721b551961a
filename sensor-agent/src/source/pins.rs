//! Kernel state that outlives the agent: where the datapath's maps, programs and links are
//! pinned in bpffs, and when what is pinned there may be used again.
//!
//! An agent restarted after an upgrade, a crash, an OOM kill or `systemctl restart` must not
//! reset every flow's clock: a sensor restarted every few hours would never see a 9-hour flow.
//! So the live source pins what it attaches, and the next agent finds it:
//!
//! ```text
//! <pin root>/                      sensor.pin_path (default /sys/fs/bpf/sensor-agent)
//!   <interfaces>/                  the run's interfaces, joined by '+': "eth0", "eth0+eth1"
//!     <layout>/                    kernel ABI fingerprint + map sizes (see layout_version)
//!       FLOWS COUNTERS SETTINGS PAYLOADS WATCH TRACES CLOCK     the maps
//!       prog_sensor_xdp prog_sensor_tc_egress                   the attached programs
//!       link_xdp_<if> link_tc_<if>                              one link per hook and interface
//! ```
//!
//! While the agent is down the links keep the programs attached, so counting goes on and the
//! flows keep their first-seen times; the next agent loads its programs on the same maps and
//! swaps them into the same links atomically (no packet goes uncounted). Maps are used again
//! only from the directory of the same layout, and only if each one has the shape the current
//! object expects; anything else is stale: it is removed (links first, so the hooks are free)
//! with one log line, and the agent starts on fresh maps. A directory of another interface set
//! holding a link on one of this run's interfaces is stale too (two sets of links cannot share
//! a hook).
//!
//! This module never loads or attaches anything itself and never removes a pin outside the
//! pin root it is given.

use std::{
    ffi::CString,
    fs, io,
    path::{Path, PathBuf},
};

use crate::source::datapath::{map_specs, LoadOptions, MapSpec, PINNED_MAPS};

/// Where pins go unless `sensor.pin_path` says otherwise.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/sensor-agent";
/// Where the kernel's bpffs is mounted by convention (and where the agent mounts it if no one
/// has).
const BPFFS_MOUNT: &str = "/sys/fs/bpf";
/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("pin path {path}: {problem}")]
    NotBpffs { path: PathBuf, problem: String },
    #[error("cannot mount bpffs on {BPFFS_MOUNT}: {0}")]
    Mount(io::Error),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> PinError + 'p {
    move |source| PinError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The layout version maps are pinned under: the kernel ABI's fingerprint (computed by the
/// build from `sensor-common` and the map declarations) and the map sizes the settings ask
/// for, since a map cannot be resized in place.
pub fn layout_version(opts: &LoadOptions) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, spec) in map_specs(opts) {
        for b in name
            .bytes()
            .chain(spec.key_size.to_le_bytes())
            .chain(spec.value_size.to_le_bytes())
            .chain(spec.max_entries.to_le_bytes())
        {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{}-{:08x}", env!("SENSOR_ABI_HASH"), h as u32)
}

/// One run's pin directory and the names inside it.
#[derive(Clone, Debug)]
pub struct PinDir {
    path: PathBuf,
}

impl PinDir {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn xdp_link(&self, iface: &str) -> PathBuf {
        self.path.join(format!("link_xdp_{iface}"))
    }

    pub fn tc_link(&self, iface: &str) -> PathBuf {
        self.path.join(format!("link_tc_{iface}"))
    }

    /// Removes everything pinned here: the programs stop when this process lets go of them.
    pub fn remove(&self) -> Result<(), PinError> {
        remove_layout_dir(&self.path)?;
        if let Some(set_dir) = self.path.parent() {
            remove_if_empty(set_dir);
        }
        Ok(())
    }
}

/// What [`prepare`] found.
#[derive(Debug)]
pub struct Prepared {
    pub dir: PinDir,
    /// Maps of an earlier agent are there to be used again.
    pub resumed: bool,
}

/// Makes sure `root` is on a bpffs (mounting bpffs on /sys/fs/bpf if `root` is under it and
/// nothing is mounted there), removes what is stale for `ifaces` under the current layout, and
/// returns the directory to pin in. Stale pins are reported in one log line each.
pub fn prepare(root: &Path, ifaces: &[String], opts: &LoadOptions) -> Result<Prepared, PinError> {
    ensure_bpffs(root)?;
    let set = ifaces.join("+");
    let layout = layout_version(opts);
    let ours = root.join(&set);
    // Another interface set with a link on one of ours: its links hold our hooks.
    for (set_dir, layout_dir) in layout_dirs(root)? {
        if set_dir == ours {
            continue;
        }
        if let Some(iface) = ifaces.iter().find(|i| has_link(&layout_dir, i)) {
            log::warn!(
                "kernel state in {} holds interface {iface} for another set of interfaces; removed it, {set} starts afresh",
                layout_dir.display()
            );
            remove_layout_dir(&layout_dir)?;
            remove_if_empty(&set_dir);
        }
    }
    let path = ours.join(&layout);
    for (_, layout_dir) in layout_dirs(root)?
        .into_iter()
        .filter(|(s, l)| *s == ours && *l != path)
    {
        log::warn!(
            "kernel state in {} was made for another layout (kernel ABI or map sizes changed; now {layout}); removed it, counting starts afresh",
            layout_dir.display()
        );
        remove_layout_dir(&layout_dir)?;
    }
    let mut resumed = false;
    if path.is_dir() {
        match mismatched_map(&path, opts) {
            Some(problem) => {
                log::warn!(
                    "kernel state in {} is not usable ({problem}); removed it, counting starts afresh",
                    path.display()
                );
                remove_layout_dir(&path)?;
            }
            None => resumed = has_any_map(&path),
        }
    }
    fs::create_dir_all(&path).map_err(io_err("create", &path))?;
    Ok(Prepared {
        dir: PinDir { path },
        resumed,
    })
}

/// The first pinned map that does not have the shape `opts` gives it, described.
fn mismatched_map(dir: &Path, opts: &LoadOptions) -> Option<String> {
    for (name, want) in map_specs(opts) {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = match aya::maps::MapInfo::from_pin(&path) {
            Ok(info) => info,
            Err(e) => return Some(format!("map {name} cannot be opened: {e}")),
        };
        let have = MapSpec {
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
        };
        if have != want {
            return Some(format!("map {name} is {have:?}, expected {want:?}"));
        }
    }
    None
}

fn has_any_map(dir: &Path) -> bool {
    PINNED_MAPS.iter().any(|name| dir.join(name).exists())
}

fn has_link(layout_dir: &Path, iface: &str) -> bool {
    ["link_xdp_", "link_tc_"]
        .iter()
        .any(|p| layout_dir.join(format!("{p}{iface}")).exists())
}

/// Every `<set>/<layout>` directory under `root`.
fn layout_dirs(root: &Path) -> Result<Vec<(PathBuf, PathBuf)>, PinError> {
    let mut out = Vec::new();
    let sets = match fs::read_dir(root) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err("read", root)(e)),
    };
    for set in sets.flatten() {
        let set_path = set.path();
        if !set_path.is_dir() {
            continue;
        }
        for layout in fs::read_dir(&set_path)
            .map_err(io_err("read", &set_path))?
            .flatten()
        {
            if layout.path().is_dir() {
                out.push((set_path.clone(), layout.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Removes a layout directory: links first (that detaches the programs from the hooks), then
/// programs and maps, then the directory.
fn remove_layout_dir(dir: &Path) -> Result<(), PinError> {
    let mut entries: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(d) => d.flatten().map(|e| e.path()).collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("read", dir)(e)),
    };
    entries.sort_by_key(|p| !is_link_pin(p));
    for entry in entries {
        fs::remove_file(&entry).map_err(io_err("unpin", &entry))?;
    }
    fs::remove_dir(dir).map_err(io_err("remove", dir))
}

fn is_link_pin(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("link_"))
}

fn remove_if_empty(dir: &Path) {
    // Not empty (another layout, or a file someone else put there): leave it.
    let _ = fs::remove_dir(dir);
}

/// What [`detach`] removed.
#[derive(Debug, Default)]
pub struct Detached {
    /// Link pins removed (each detached a program from a hook).
    pub links: Vec<PathBuf>,
    /// Layout directories removed whole (maps, programs and links).
    pub dirs: Vec<PathBuf>,
}

/// Detaches the pinned datapath from `iface` (every interface when `None`): its links go, and
/// a layout directory left without links goes whole with its maps and programs.
pub fn detach(root: &Path, iface: Option<&str>) -> Result<Detached, PinError> {
    let mut done = Detached::default();
    for (set_dir, layout_dir) in layout_dirs(root)? {
        match iface {
            None => {
                remove_layout_dir(&layout_dir)?;
                done.dirs.push(layout_dir);
            }
            Some(iface) => {
                if !has_link(&layout_dir, iface) {
                    continue;
                }
                for prefix in ["link_xdp_", "link_tc_"] {
                    let link = layout_dir.join(format!("{prefix}{iface}"));
                    if link.exists() {
                        fs::remove_file(&link).map_err(io_err("unpin", &link))?;
                        done.links.push(link);
                    }
                }
                let links_left = fs::read_dir(&layout_dir)
                    .map_err(io_err("read", &layout_dir))?
                    .flatten()
                    .any(|e| is_link_pin(&e.path()));
                if !links_left {
                    remove_layout_dir(&layout_dir)?;
                    done.dirs.push(layout_dir);
                }
            }
        }
        remove_if_empty(&set_dir);
    }
    Ok(done)
}

/// Makes sure `root` (or the directory it will be created in) is on a bpffs.
fn ensure_bpffs(root: &Path) -> Result<(), PinError> {
    let mut existing = root;
    while !existing.exists() {
        existing = existing.parent().unwrap_or(Path::new("/"));
    }
    if is_bpffs(existing)? {
        return fs::create_dir_all(root).map_err(io_err("create", root));
    }
    let mount = Path::new(BPFFS_MOUNT);
    if root.starts_with(mount) && (existing == mount || mount.starts_with(existing)) {
        fs::create_dir_all(mount).map_err(io_err("create", mount))?;
        mount_bpffs(mount)?;
        log::info!("mounted bpffs on {BPFFS_MOUNT}");
        return fs::create_dir_all(root).map_err(io_err("create", root));
    }
    Err(PinError::NotBpffs {
        path: root.to_path_buf(),
        problem: format!(
            "{} is not on a bpffs (mount one with `mount -t bpf bpf DIR`, or set sensor.pin_path = \"\" to pin nothing)",
            existing.display()
        ),
    })
}

fn is_bpffs(path: &Path) -> Result<bool, PinError> {
    let c = c_path(path)?;
    // SAFETY: statfs writes only into the zeroed struct it is given.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io_err("statfs", path)(io::Error::last_os_error()));
    }
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

fn mount_bpffs(at: &Path) -> Result<(), PinError> {
    let target = c_path(at)?;
    let (source, fstype, data) = (c"bpf", c"bpf", c"mode=0700");
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(PinError::Mount(io::Error::last_os_error()));
    }
    Ok(())
}

fn c_path(path: &Path) -> Result<CString, PinError> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes()).map_err(|_| PinError::NotBpffs {
        path: path.to_path_buf(),
        problem: "contains a NUL byte".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_changes_with_map_sizes_and_not_otherwise() {
        let a = LoadOptions::default();
        let mut b = LoadOptions::default();
        b.settings.payload_bytes = 7;
        assert_eq!(layout_version(&a), layout_version(&b));
        b.max_flows += 1;
        assert_ne!(layout_version(&a), layout_version(&b));
        assert!(layout_version(&a).starts_with(env!("SENSOR_ABI_HASH")));
    }

    #[test]
    fn link_pins_sort_first() {
        let mut v = [
            PathBuf::from("/x/FLOWS"),
            PathBuf::from("/x/link_xdp_eth0"),
            PathBuf::from("/x/prog_sensor_xdp"),
            PathBuf::from("/x/link_tc_eth0"),
        ];
        v.sort_by_key(|p| !is_link_pin(p));
        assert!(is_link_pin(&v[0]) && is_link_pin(&v[1]));
        assert!(!is_link_pin(&v[2]) && !is_link_pin(&v[3]));
    }
}
