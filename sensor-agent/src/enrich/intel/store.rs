//! The feeds in force and how they are reloaded: every source is read and parsed completely
//! first, then a new [`IntelSnapshot`] is built and swapped in whole; a source that fails
//! keeps the feed version of the previous snapshot.
//!
//! # Why it exists
//! Feeds change under the sensor (files rewritten, URLs down, publishers broken) while flows
//! are being matched; this module is the one place that decides which version of each feed
//! is in force and makes the change atomic for readers.
//!
//! # What it must never do
//! - Never let a feed that failed to load take away the version that was working (unreachable,
//!   over its cap, unreadable, deleted, or its directory gone).
//! - Never block readers for a reload: they clone an `Arc` of the snapshot and keep it.
//! - Never read the clock: the time of a reload is its caller's, so a replay reloads on
//!   capture time.

use std::{
    fmt,
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use super::{
    allowlist::Allowlist,
    fetch::{fetch_capped, http_agent, list_dir, read_file_capped, refuse_entry},
    format::{parse_feed, FeedFormat, Parsed},
    report::{FeedReport, FeedStatus, ReloadReport},
    snapshot::{IntelSnapshot, LoadedFeed, Match, SourceKey},
    IntelConfig,
};

/// The feeds in force and how to reload them. Shareable between threads: readers take
/// [`IntelStore::snapshot`] (an `Arc` clone) and keep using it while a reload runs.
pub struct IntelStore {
    config: IntelConfig,
    allow: Arc<Allowlist>,
    http: ureq::Agent,
    current: Mutex<Arc<IntelSnapshot>>,
    /// Time of the last reload attempt; also serialises reloads.
    last_reload: Mutex<Option<u64>>,
}

impl fmt::Debug for IntelStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntelStore")
            .field("config", &self.config)
            .field(
                "current",
                &*self.current.lock().unwrap_or_else(PoisonError::into_inner),
            )
            .finish()
    }
}

/// One source's attempt in a reload, settled into the new snapshot by [`IntelStore::settle`].
struct Outcome<'a> {
    key: SourceKey,
    name: String,
    source: String,
    result: Result<Parsed, String>,
    prev: &'a IntelSnapshot,
}

impl IntelStore {
    /// A store with an empty snapshot; nothing is loaded until [`reload`](Self::reload) or
    /// [`maybe_refresh`](Self::maybe_refresh). Fails when the configuration does not validate.
    pub fn new(config: IntelConfig) -> Result<IntelStore, String> {
        config.validate().map_err(|e| e.join("\n"))?;
        let allow = Arc::new(Allowlist::parse(&config.allow).map_err(|e| e.join("\n"))?);
        let http = http_agent(config.fetch_timeout.0);
        let empty = IntelSnapshot::build(Vec::new(), allow.clone(), 0);
        Ok(IntelStore {
            config,
            allow,
            http,
            current: Mutex::new(Arc::new(empty)),
            last_reload: Mutex::new(None),
        })
    }

    pub fn config(&self) -> &IntelConfig {
        &self.config
    }

    /// The snapshot in force (cheap: an `Arc` clone).
    pub fn snapshot(&self) -> Arc<IntelSnapshot> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn match_ip(&self, ip: IpAddr) -> Option<Match> {
        self.snapshot().match_ip(ip)
    }

    pub fn match_domain(&self, name: &str) -> Option<Match> {
        self.snapshot().match_domain(name)
    }

    /// Reloads when `refresh` has passed since the last attempt (or nothing was ever loaded).
    /// Call it from the poll loop; it blocks for as long as the reload takes (URL feeds are
    /// bounded by `fetch_timeout` each).
    pub fn maybe_refresh(&self, now_ns: u64) -> Option<ReloadReport> {
        let guard = self
            .last_reload
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let due = match *guard {
            None => true,
            Some(last) => now_ns.saturating_sub(last) >= self.config.refresh.as_nanos(),
        };
        due.then(|| self.reload_locked(guard, now_ns))
    }

    /// Loads every source, builds a new snapshot and swaps it in. Sources that fail keep their
    /// previous version; every failure and malformed line is in the report (and logged).
    pub fn reload(&self, now_ns: u64) -> ReloadReport {
        let guard = self
            .last_reload
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.reload_locked(guard, now_ns)
    }

    fn reload_locked(&self, mut guard: MutexGuard<'_, Option<u64>>, now_ns: u64) -> ReloadReport {
        *guard = Some(now_ns);
        let prev = self.snapshot();
        let cap = self.config.max_feed_bytes;
        let max_entries = self.config.max_entries_per_feed;
        let mut report = ReloadReport {
            at_ns: now_ns,
            ..ReloadReport::default()
        };
        let mut feeds: Vec<Arc<LoadedFeed>> = Vec::new();

        if let Some(dir) = &self.config.directory {
            let listed = list_dir(dir);
            let names: Vec<String> = match &listed {
                Ok(files) => files.iter().map(|(n, _)| n.clone()).collect(),
                Err(_) => Vec::new(),
            };
            for (name, path) in listed.as_ref().map(|v| v.as_slice()).unwrap_or(&[]) {
                let source = path.display().to_string();
                let csv_name = name.to_ascii_lowercase().ends_with(".csv");
                let refused = refuse_entry(dir, path, self.config.follow_symlinks);
                let result = refused
                    .map_or(Ok(()), Err)
                    .and_then(|()| read_file_capped(path, cap))
                    .and_then(|data| {
                        parse_feed(&source, &data, FeedFormat::Auto, csv_name, max_entries)
                    })
                    .map(|p| self.refuse_broad(p, &source));
                self.settle(
                    Outcome {
                        key: SourceKey::File(name.clone()),
                        name: name.clone(),
                        source,
                        result,
                        prev: &prev,
                    },
                    now_ns,
                    &mut feeds,
                    &mut report,
                );
            }
            // Files of the previous snapshot that are gone (deleted, or the directory cannot
            // be listed) keep their previous version.
            let dir_error = listed.as_ref().err();
            for old in prev.feeds() {
                let SourceKey::File(n) = &old.key else {
                    continue;
                };
                if names.contains(n) {
                    continue;
                }
                let error = match dir_error {
                    Some(e) => e.clone(),
                    None => format!("{} is no longer in {}", old.source, dir.display()),
                };
                self.settle(
                    Outcome {
                        key: old.key.clone(),
                        name: n.clone(),
                        source: old.source.clone(),
                        result: Err(error),
                        prev: &prev,
                    },
                    now_ns,
                    &mut feeds,
                    &mut report,
                );
            }
            if let Err(e) = &listed {
                if !prev
                    .feeds()
                    .iter()
                    .any(|f| matches!(f.key, SourceKey::File(_)))
                {
                    let line = format!("intel directory: {e}");
                    log::warn!("{line}");
                    report.failures.push(line);
                }
            }
            // Only file feeds so far: kept ones go back to file-name order, which decides
            // which feed reports an indicator listed by several.
            feeds.sort_by(|a, b| a.name.cmp(&b.name));
            report.feeds.sort_by(|a, b| a.name.cmp(&b.name));
        }

        for u in &self.config.urls {
            let result = fetch_capped(&self.http, &u.url, cap)
                .and_then(|data| parse_feed(&u.url, &data, u.format, false, max_entries))
                .map(|p| self.refuse_broad(p, &u.url));
            self.settle(
                Outcome {
                    key: SourceKey::Url(u.name.clone()),
                    name: u.name.clone(),
                    source: u.url.clone(),
                    result,
                    prev: &prev,
                },
                now_ns,
                &mut feeds,
                &mut report,
            );
        }

        let snap = IntelSnapshot::build(feeds, self.allow.clone(), now_ns);
        report.indicators = snap.len();
        report.duplicates = snap.duplicates();
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(snap);
        log::info!("{}", report.to_string().lines().last().unwrap_or_default());
        report
    }

    /// The feed without its networks broader than `intel.min_prefix_v4` / `_v6`.
    fn refuse_broad(&self, mut p: Parsed, origin: &str) -> Parsed {
        p.refuse_broad(origin, self.config.min_prefix_v4, self.config.min_prefix_v6);
        p
    }

    /// Puts the new version of a source into `feeds`, or its previous version when it failed
    /// (and reports either way).
    fn settle(
        &self,
        o: Outcome<'_>,
        now_ns: u64,
        feeds: &mut Vec<Arc<LoadedFeed>>,
        report: &mut ReloadReport,
    ) {
        match o.result {
            Ok(p) => {
                report.problems.extend(p.problems);
                report.feeds.push(FeedReport {
                    name: o.name.clone(),
                    source: o.source.clone(),
                    format: p.format,
                    status: FeedStatus::Loaded,
                    entries: p.entries.len(),
                    malformed: p.malformed,
                    skipped: p.skipped,
                    too_broad: p.too_broad,
                });
                feeds.push(Arc::new(LoadedFeed {
                    name: o.name,
                    source: o.source,
                    format: p.format,
                    loaded_at_ns: now_ns,
                    entries: p.entries,
                    malformed: p.malformed,
                    skipped: p.skipped,
                    key: o.key,
                }));
            }
            Err(error) => match o.prev.feed_by_key(&o.key) {
                Some(old) => {
                    let line = format!(
                        "feed {}: kept the version loaded at {}: {error}",
                        o.name,
                        crate::clock::rfc3339_seconds(old.loaded_at_ns)
                    );
                    log::warn!("{line}");
                    report.failures.push(line);
                    report.feeds.push(FeedReport {
                        name: o.name,
                        source: o.source,
                        format: old.format,
                        status: FeedStatus::Kept {
                            loaded_at_ns: old.loaded_at_ns,
                            error,
                        },
                        entries: old.entries.len(),
                        malformed: old.malformed,
                        skipped: old.skipped,
                        too_broad: 0,
                    });
                    feeds.push(old.clone());
                }
                None => {
                    let line = format!("feed {}: not loaded: {error}", o.name);
                    log::warn!("{line}");
                    report.failures.push(line);
                    report.feeds.push(FeedReport {
                        name: o.name,
                        source: o.source,
                        format: FeedFormat::Auto,
                        status: FeedStatus::Failed { error },
                        entries: 0,
                        malformed: 0,
                        skipped: 0,
                        too_broad: 0,
                    });
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::intel::{
        format::MAX_PROBLEMS_PER_FEED,
        testutil::{ip, store_for, TempDir, T1, T2},
    };
    use crate::units::HumanDuration;
    use std::{fs, thread, time::Duration};

    /// A FIFO that appears after the configuration was checked (a reload an hour later):
    /// refused without blocking, the other feeds load. Without O_NONBLOCK `reload` would
    /// wait forever for a writer.
    #[test]
    fn intel_fifo_appearing_later_is_refused_without_blocking() {
        let dir = TempDir::new("fifo");
        dir.write("pools.txt", "pool.example\n");
        // Created after the store (which validates the directory): the store must hold on
        // its own.
        let store = store_for(&dir, |_| {});
        let fifo = dir.path().join("late.txt");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || tx.send(store.reload(T1)).unwrap());
        let r = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("reload blocked on the FIFO");
        assert_eq!(r.failures.len(), 1, "{r}");
        assert!(
            r.failures[0].contains("late.txt")
                && r.failures[0].contains("a FIFO, not a regular file"),
            "{r}"
        );
        assert_eq!(r.indicators, 1, "{r}");
    }

    #[test]
    fn intel_malformed_lines_reported_with_file_and_line_and_skipped() {
        let dir = TempDir::new("malformed");
        let path = dir.write(
            "pools.txt",
            "pool.example\nnot a domain at all\n300.1.2.3/8\n10.0.0.0/33\nsingle\n192.0.2.5\n",
        );
        let store = store_for(&dir, |_| {});
        let r = store.reload(T1);
        let p = path.display();
        assert_eq!(
            r.problems,
            vec![
                format!("{p}:2: expected one IP address, CIDR or domain name, found 5 fields"),
                format!("{p}:3: \"300.1.2.3/8\" is not a CIDR (address/prefix length)"),
                format!("{p}:4: \"10.0.0.0/33\": prefix length must be 0..=32"),
                format!("{p}:5: \"single\" is not an IP address, CIDR or domain name"),
            ]
        );
        assert!(r.failures.is_empty());
        assert_eq!(r.feeds[0].malformed, 4);
        assert_eq!(r.feeds[0].entries, 2);
        assert!(store.match_ip(ip("192.0.2.5")).is_some());
        assert!(store.match_domain("pool.example").is_some());

        // Listing stops after MAX_PROBLEMS_PER_FEED; the rest is counted.
        let many = "bad line here\n".repeat(MAX_PROBLEMS_PER_FEED + 5);
        dir.write("pools.txt", &many);
        let r = store.reload(T2);
        assert_eq!(r.feeds[0].malformed, MAX_PROBLEMS_PER_FEED + 5);
        assert_eq!(r.problems.len(), MAX_PROBLEMS_PER_FEED + 1);
        assert_eq!(
            r.problems.last().unwrap(),
            &format!("{p}: 5 more malformed lines not listed")
        );
    }

    #[test]
    fn intel_oversize_feed_refused_naming_the_cap() {
        let dir = TempDir::new("oversize");
        dir.write("big.txt", &"pool.example\n".repeat(10));
        dir.write("small.txt", "192.0.2.1\n");
        let store = store_for(&dir, |c| c.max_feed_bytes = 64);
        let r = store.reload(T1);
        assert_eq!(r.failures.len(), 1, "{r}");
        let f = &r.failures[0];
        assert!(f.starts_with("feed big.txt: not loaded: "), "{f}");
        assert!(f.contains("max_feed_bytes = 64 bytes"), "{f}");
        assert!(matches!(r.feeds[0].status, FeedStatus::Failed { .. }));
        assert_eq!(r.feeds[1].status, FeedStatus::Loaded);
        assert!(store.match_domain("pool.example").is_none());
        assert!(store.match_ip(ip("192.0.2.1")).is_some());
    }

    #[test]
    fn intel_entry_cap_refuses_feed() {
        let dir = TempDir::new("entrycap");
        dir.write("a.txt", "192.0.2.1\n192.0.2.2\n192.0.2.3\n192.0.2.4\n");
        let store = store_for(&dir, |c| c.max_entries_per_feed = 3);
        let r = store.reload(T1);
        assert!(
            r.failures[0].contains("more than max_entries_per_feed = 3 entries"),
            "{r}"
        );
        assert!(store.snapshot().is_empty());
    }

    #[test]
    fn intel_failed_feed_keeps_previous_version() {
        let dir = TempDir::new("keep");
        dir.write("a.txt", "pool-a.example\n");
        let b = dir.write("b.txt", "192.0.2.0/24\n");
        let c = dir.write("c.txt", "198.51.100.1\n");
        let store = store_for(&dir, |c| c.max_feed_bytes = 1000);
        let r = store.reload(T1);
        assert!(r.is_clean(), "{r}");
        assert_eq!(r.indicators, 3);

        // a deleted, b a dangling link (unreadable), c over the cap; d new.
        fs::remove_file(dir.path().join("a.txt")).unwrap();
        fs::remove_file(&b).unwrap();
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &b).unwrap();
        fs::write(&c, "198.51.100.2\n".repeat(200)).unwrap();
        dir.write("d.txt", "203.0.113.9\n");
        let r = store.reload(T2);
        let t1 = "2023-11-14T22:13:20Z";
        assert_eq!(r.failures.len(), 3, "{r}");
        assert!(r.failures.iter().any(|f| f
            .starts_with(&format!("feed a.txt: kept the version loaded at {t1}: "))
            && f.contains("no longer in")));
        assert!(r.failures.iter().any(|f| f.starts_with(&format!(
            "feed b.txt: kept the version loaded at {t1}: cannot read"
        ))));
        assert!(r.failures.iter().any(|f| f
            .starts_with(&format!("feed c.txt: kept the version loaded at {t1}: "))
            && f.contains("max_feed_bytes = 1000")));
        let names: Vec<&str> = r.feeds.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["a.txt", "b.txt", "c.txt", "d.txt"]);
        assert_eq!(
            r.feeds[0].status,
            FeedStatus::Kept {
                loaded_at_ns: T1,
                error: format!(
                    "{} is no longer in {}",
                    dir.path().join("a.txt").display(),
                    dir.path().display()
                )
            }
        );
        let m = store.match_domain("x.pool-a.example").unwrap();
        assert_eq!(m.loaded_at_ns, T1);
        assert_eq!(m.age(T2), Duration::from_secs(3600));
        assert!(store.match_ip(ip("192.0.2.77")).is_some());
        assert!(store.match_ip(ip("198.51.100.1")).is_some());
        assert!(store.match_ip(ip("198.51.100.2")).is_none());
        assert_eq!(store.match_ip(ip("203.0.113.9")).unwrap().loaded_at_ns, T2);

        // Fixed: new versions replace the kept ones.
        dir.write("a.txt", "pool-a2.example\n");
        fs::write(&c, "198.51.100.2\n").unwrap();
        let r = store.reload(T2 + 1);
        assert_eq!(r.failures.len(), 1, "{r}");
        assert!(store.match_domain("pool-a.example").is_none());
        assert!(store.match_domain("pool-a2.example").is_some());
        assert!(store.match_ip(ip("198.51.100.2")).is_some());

        // A directory that cannot be listed keeps every file feed.
        let store2 = IntelStore::new(IntelConfig {
            directory: Some(dir.path().join("missing")),
            ..IntelConfig::default()
        })
        .unwrap();
        let r = store2.reload(T1);
        assert_eq!(r.failures.len(), 1);
        assert!(
            r.failures[0].starts_with("intel directory: cannot list"),
            "{r}"
        );
    }

    #[test]
    fn intel_atomic_swap_readers_keep_old_snapshot() {
        let dir = TempDir::new("swap");
        dir.write("a.txt", "192.0.2.1\n");
        let store = store_for(&dir, |_| {});
        store.reload(T1);
        let old = store.snapshot();
        dir.write("a.txt", "192.0.2.2\n");
        store.reload(T2);
        let new = store.snapshot();
        assert!(old.match_ip(ip("192.0.2.1")).is_some());
        assert!(old.match_ip(ip("192.0.2.2")).is_none());
        assert!(new.match_ip(ip("192.0.2.1")).is_none());
        assert!(new.match_ip(ip("192.0.2.2")).is_some());
        assert!(!Arc::ptr_eq(&old, &new));
        // Readers on other threads clone cheaply while a reload runs.
        let store = Arc::new(store);
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let s = store.clone();
                thread::spawn(move || {
                    (0..2000)
                        .filter(|_| {
                            s.snapshot()
                                .match_ip("192.0.2.2".parse().unwrap())
                                .is_some()
                        })
                        .count()
                })
            })
            .collect();
        for t in 0..20 {
            store.reload(T2 + t);
        }
        for r in readers {
            assert_eq!(r.join().unwrap(), 2000);
        }
    }

    #[test]
    fn intel_directory_sorted_non_recursive_hidden_skipped() {
        let dir = TempDir::new("listing");
        dir.write("b.list", "pool.example # from b\n");
        dir.write("a.list", "pool.example # from a\n");
        dir.write(".hidden", "hidden.example\n");
        fs::create_dir(dir.path().join("sub")).unwrap();
        dir.write("sub/x.txt", "sub.example\n");
        let store = store_for(&dir, |_| {});
        let r = store.reload(T1);
        let names: Vec<&str> = r.feeds.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["a.list", "b.list"]);
        assert_eq!(
            store
                .match_domain("pool.example")
                .unwrap()
                .description
                .as_deref(),
            Some("from a")
        );
        assert!(store.match_domain("hidden.example").is_none());
        assert!(store.match_domain("sub.example").is_none());
    }

    #[test]
    fn intel_maybe_refresh_follows_interval() {
        let dir = TempDir::new("refresh");
        dir.write("a.txt", "192.0.2.1\n");
        let store = store_for(&dir, |c| c.refresh = HumanDuration::secs(60));
        assert!(store.maybe_refresh(T1).is_some());
        dir.write("a.txt", "192.0.2.2\n");
        assert!(store.maybe_refresh(T1 + 30_000_000_000).is_none());
        assert!(store.match_ip(ip("192.0.2.1")).is_some());
        assert!(store.maybe_refresh(T1 + 60_000_000_000).is_some());
        assert!(store.match_ip(ip("192.0.2.2")).is_some());
        // Time going backwards (a replay) does not reload.
        assert!(store.maybe_refresh(T1).is_none());
    }
}
