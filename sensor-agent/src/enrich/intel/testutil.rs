//! Test material shared by the intel modules' tests: a temporary feed directory, a store over
//! it, and the reload times the tests use. Test-only; it never reaches the agent.

use std::{
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
};

use super::{IntelConfig, IntelStore};

/// A directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "sensor-intel-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    pub(crate) fn write(&self, name: &str, content: &str) -> PathBuf {
        let p = self.0.join(name);
        fs::write(&p, content).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub(crate) const T1: u64 = 1_700_000_000_000_000_000;
pub(crate) const T2: u64 = T1 + 3_600_000_000_000;

/// A store reading `dir`, with the configuration tweaked.
pub(crate) fn store_for(dir: &TempDir, tweak: impl FnOnce(&mut IntelConfig)) -> IntelStore {
    let mut c = IntelConfig {
        directory: Some(dir.path().to_path_buf()),
        ..IntelConfig::default()
    };
    tweak(&mut c);
    IntelStore::new(c).unwrap()
}

pub(crate) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
