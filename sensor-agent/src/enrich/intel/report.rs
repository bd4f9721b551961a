//! What a reload did: per feed whether a new version was loaded or the previous one kept, the
//! malformed lines, and one summary line.
//!
//! # Why it exists
//! A reload never fails as a whole (every feed keeps its previous version instead), so the
//! operator learns of a broken feed only from this report and the log lines it becomes.
//!
//! # What it must never do
//! - Never hide a failure: every feed that was not loaded has a line in `failures`.
//! - Never grow with a feed's size: malformed lines are listed up to
//!   [`MAX_PROBLEMS_PER_FEED`](super::MAX_PROBLEMS_PER_FEED) per feed, the rest only counted.

use std::fmt;

use super::format::FeedFormat;

/// What became of one feed in a reload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedStatus {
    /// A new version was loaded.
    Loaded,
    /// Loading failed; the version loaded at `loaded_at_ns` stays in force.
    Kept { loaded_at_ns: u64, error: String },
    /// Loading failed and there was no previous version.
    Failed { error: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedReport {
    pub name: String,
    pub source: String,
    /// Format parsed (or of the kept version); `Auto` when nothing was parsed.
    pub format: FeedFormat,
    pub status: FeedStatus,
    /// Entries of the version in force (0 when failed).
    pub entries: usize,
    pub malformed: usize,
    pub skipped: usize,
    /// Networks of this load refused as broader than `intel.min_prefix_v4` / `_v6` (0 for a
    /// kept or failed feed).
    pub too_broad: usize,
}

/// The outcome of one reload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadReport {
    pub at_ns: u64,
    pub feeds: Vec<FeedReport>,
    /// `FILE:LINE: problem`, one per malformed line (at most
    /// [`MAX_PROBLEMS_PER_FEED`](super::MAX_PROBLEMS_PER_FEED) per feed, then one line with the
    /// count of the others).
    pub problems: Vec<String>,
    /// One line per failure: `feed X: kept the version loaded at T: <error>`,
    /// `feed X: not loaded: <error>`, or a directory that cannot be listed.
    pub failures: Vec<String>,
    /// Distinct indicators in the new snapshot.
    pub indicators: usize,
    pub duplicates: usize,
}

impl ReloadReport {
    /// No failures and no malformed lines.
    pub fn is_clean(&self) -> bool {
        self.failures.is_empty() && self.problems.is_empty()
    }
}

impl fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for l in self.failures.iter().chain(&self.problems) {
            writeln!(f, "{l}")?;
        }
        let loaded = self
            .feeds
            .iter()
            .filter(|r| r.status == FeedStatus::Loaded)
            .count();
        write!(
            f,
            "intel: {} feeds ({} loaded, {} failed), {} indicators, {} duplicates, {} malformed lines",
            self.feeds.len(),
            loaded,
            self.feeds.len() - loaded,
            self.indicators,
            self.duplicates,
            self.feeds.iter().map(|r| r.malformed).sum::<usize>()
        )?;
        let broad: usize = self.feeds.iter().map(|r| r.too_broad).sum();
        if broad > 0 {
            write!(
                f,
                ", {broad} networks broader than intel.min_prefix_v4 / _v6 refused"
            )?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
