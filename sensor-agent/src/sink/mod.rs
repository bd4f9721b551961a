//! Sinks: where alarms and flow records go. For now JSON lines to stdout or a file, flushed
//! per event so a reader (or a test) sees each alarm as soon as it is raised.

pub mod delivery;
pub mod format;
pub mod spool;
pub mod transport;

use std::path::PathBuf;

use std::{
    fs::OpenOptions,
    io::{self, BufWriter, Write},
    path::Path,
};

use serde::Deserialize;
use serde_json::Value;

pub struct JsonLines {
    out: Box<dyn Write + Send>,
}

impl JsonLines {
    pub fn stdout() -> Self {
        JsonLines {
            out: Box::new(io::stdout()),
        }
    }

    /// Appends to `path` (created if missing); "-" means stdout.
    pub fn open(path: &Path) -> io::Result<Self> {
        if path.as_os_str() == "-" {
            return Ok(Self::stdout());
        }
        let f = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(JsonLines {
            out: Box::new(BufWriter::new(f)),
        })
    }

    pub fn emit(&mut self, v: &Value) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, v)?;
        self.out.write_all(b"\n")?;
        self.out.flush()
    }
}

/// `[output]`: where alarms go when no `[[sinks]]` are configured.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// Where alarms go as JSON lines: a file path, or stdout when unset or "-".
    pub alarms: Option<PathBuf>,
}
