//! Sinks: where alarms and flow records go, and the one path every alarm takes to get there.
//!
//! [`AlarmOutput`] is that path. With `[[sinks]]` configured, alarms go through the durable
//! spool to every sink ([`delivery`]), each running as its own task; otherwise (or with
//! `--alarms FILE`) they are rendered as JSON and written by the same `stdout` and `file`
//! transports the configured sinks use, flushed per alarm so a reader sees each one as soon
//! as it is raised. Either way the detection loop only hands alarms over: it never renders
//! for a remote receiver, retries or waits on a network.
//!
//! Flow records (`--flows`) are JSON lines through the same transports ([`JsonLines`]), and
//! IPFIX to the `[[exporters]]` ([`ipfix`]).

pub mod delivery;
pub mod format;
pub mod ipfix;
pub mod spool;
pub mod transport;

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use self::{
    delivery::{Delivery, DeliveryError, SinkStatus, SpoolSection},
    format::{Format, Renderer},
    spool::SpoolCounters,
    transport::{FileConfig, SinkConfig, StdoutConfig, Stream, Transport, TransportError},
};

fn of_stream(sinks: &[SinkConfig], stream: Stream) -> Vec<SinkConfig> {
    sinks
        .iter()
        .filter(|s| s.stream() == stream)
        .cloned()
        .collect()
}

/// The flow-record stream: `[[sinks]]` with `stream = "flows"` (Kafka), fed the flow table's
/// records as they end, through a spool of its own (`<spool.dir>/flows`) with the same
/// at-least-once delivery as alarms. Flow records never reach the alarm sinks, nor alarms
/// the flow sinks.
pub struct FlowStream {
    delivery: Delivery,
    checkpoint: std::time::Duration,
}

impl FlowStream {
    /// `None` when no sink takes flow records.
    pub fn open(sinks: &[SinkConfig], spool: &SpoolSection) -> Result<Option<Self>, OutputError> {
        let sinks = of_stream(sinks, Stream::Flows);
        let section = SpoolSection {
            dir: spool.dir.join("flows"),
            ..spool.clone()
        };
        // One stream feeds every flow sink: the shortest checkpoint interval asked for.
        let checkpoint = sinks
            .iter()
            .filter_map(|s| match s {
                SinkConfig::Kafka(k) => Some(
                    k.checkpoint
                        .map_or(transport::kafka::DEFAULT_CHECKPOINT, |c| c.0),
                ),
                _ => None,
            })
            .min()
            .unwrap_or(transport::kafka::DEFAULT_CHECKPOINT);
        Ok(
            Delivery::start(&sinks, &section)?.map(|delivery| FlowStream {
                delivery,
                checkpoint,
            }),
        )
    }

    /// How often long flows still open are recorded (`checkpoint`).
    pub fn checkpoint_interval(&self) -> std::time::Duration {
        self.checkpoint
    }

    /// Spools one flow record (the JSON `--flows` writes).
    pub fn emit(&mut self, record: &Value) -> Result<(), OutputError> {
        Ok(self.delivery.submit(record)?)
    }

    pub fn limit_blocking(&mut self, limit: std::time::Duration) {
        self.delivery.limit_blocking(limit);
    }

    pub fn flush(&mut self) -> Result<(), OutputError> {
        Ok(self.delivery.flush()?)
    }

    /// Waits up to `timeout` for the sinks to take what is spooled; whether they did.
    pub async fn drain(&self, timeout: std::time::Duration) -> bool {
        self.delivery.drain(timeout).await
    }

    pub fn status(&self) -> (Vec<SinkStatus>, SpoolCounters) {
        (self.delivery.status(), self.delivery.spool_counters())
    }

    pub async fn shutdown(self) {
        self.delivery.shutdown().await;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
    #[error("{0}")]
    Transport(#[from] TransportError),
    #[error("cannot render a record: {0}")]
    Render(#[from] serde_json::Error),
    #[error("output {output} is the input {input}: refusing to write over what is being read")]
    OverwritesInput { output: PathBuf, input: PathBuf },
}

/// The files alarms would be written to: `--alarms FILE`, else every `kind = "file"` sink
/// (with its rotated names), else `output.alarms`. Stdout ("-") is no file.
pub fn alarm_files(
    cli: Option<&Path>,
    sinks: &[SinkConfig],
    output: &OutputConfig,
) -> Vec<PathBuf> {
    let mut out = Vec::new();
    match cli {
        Some(p) => out.push(p.to_path_buf()),
        None if !sinks.is_empty() => {
            for s in sinks {
                if let SinkConfig::File(f) = s {
                    out.push(f.path.clone());
                    for k in 1..=f.keep {
                        let mut rotated = f.path.clone().into_os_string();
                        rotated.push(format!(".{k}"));
                        out.push(rotated.into());
                    }
                }
            }
        }
        None => out.extend(output.alarms.clone()),
    }
    out.retain(|p| p.as_os_str() != "-");
    out
}

/// Refuses any output that is one of the inputs, compared by device and inode (so a symlink
/// or hard link to an input is caught too), before anything is opened for writing: a slip
/// such as `replay --flows X X` must never truncate or append to the capture being read.
/// An output that does not exist yet (or a dangling link) cannot be an input.
pub fn refuse_inputs_as_outputs(
    outputs: &[PathBuf],
    inputs: &[PathBuf],
) -> Result<(), OutputError> {
    use std::os::unix::fs::MetadataExt;
    let ids: Vec<((u64, u64), &PathBuf)> = inputs
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok().map(|m| ((m.dev(), m.ino()), p)))
        .collect();
    for output in outputs {
        let Ok(m) = std::fs::metadata(output) else {
            continue;
        };
        if let Some((_, input)) = ids.iter().find(|(id, _)| *id == (m.dev(), m.ino())) {
            return Err(OutputError::OverwritesInput {
                output: output.clone(),
                input: (*input).clone(),
            });
        }
    }
    Ok(())
}

/// JSON lines on standard output (`None` or "-") or appended to a file, one record per
/// line, flushed per record.
pub struct JsonLines {
    transport: Box<dyn Transport>,
}

impl JsonLines {
    /// `what` names the output in errors ("alarm output", "flow output").
    pub fn open(path: Option<&Path>, what: &str) -> Result<Self, OutputError> {
        let cfg = match path {
            None => SinkConfig::Stdout(StdoutConfig {
                name: Some(what.to_string()),
                format: None,
            }),
            Some(p) if p.as_os_str() == "-" => SinkConfig::Stdout(StdoutConfig {
                name: Some(what.to_string()),
                format: None,
            }),
            Some(p) => SinkConfig::File(FileConfig {
                name: Some(format!("{what} {}", p.display())),
                path: p.to_path_buf(),
                format: None,
                max_bytes: None,
                keep: 0,
            }),
        };
        Ok(JsonLines {
            transport: transport::build(&cfg)?,
        })
    }

    pub fn emit(&mut self, v: &Value) -> Result<(), OutputError> {
        self.emit_rendered(serde_json::to_vec(v)?)
    }

    fn emit_rendered(&mut self, line: Vec<u8>) -> Result<(), OutputError> {
        let taken = self.transport.send(std::slice::from_ref(&line))?;
        if taken == 1 {
            Ok(())
        } else {
            Err(OutputError::Transport(TransportError::Io(format!(
                "{}: the record was not written",
                self.transport.name()
            ))))
        }
    }
}

/// Where alarms go: the configured `[[sinks]]` through the spool, or JSON lines.
pub enum AlarmOutput {
    Direct { renderer: Renderer, out: JsonLines },
    Delivered(Delivery),
}

impl AlarmOutput {
    /// `cli` (`--alarms FILE`) wins; else `[[sinks]]` when configured; else `output.alarms`
    /// or stdout.
    pub fn open(
        cli: Option<&Path>,
        sinks: &[SinkConfig],
        spool: &SpoolSection,
        output: &OutputConfig,
    ) -> Result<Self, OutputError> {
        if cli.is_none() {
            let sinks = of_stream(sinks, Stream::Alarms);
            if let Some(d) = Delivery::start(&sinks, spool)? {
                return Ok(AlarmOutput::Delivered(d));
            }
        }
        Ok(AlarmOutput::Direct {
            renderer: Renderer::new(Format::Json, None),
            out: JsonLines::open(cli.or(output.alarms.as_deref()), "alarm output")?,
        })
    }

    /// Hands one alarm over. With the spool's `when_full = "block"` this waits for room: the
    /// back-pressure reaches the detection loop on purpose, so nothing is lost.
    pub fn emit(&mut self, alarm: &Value) -> Result<(), OutputError> {
        match self {
            AlarmOutput::Direct { renderer, out } => out.emit_rendered(renderer.render(alarm)),
            AlarmOutput::Delivered(d) => Ok(d.submit(alarm)?),
        }
    }

    /// With sinks: a handle that ends a wait for room in a full `block` spool (at a signal).
    pub fn interrupter(&self) -> Option<delivery::Interrupter> {
        match self {
            AlarmOutput::Direct { .. } => None,
            AlarmOutput::Delivered(d) => Some(d.interrupter()),
        }
    }

    /// For bounded inputs (`replay`, `ingest`): a full `block` spool makes the producer wait
    /// at most `limit` for room, then fail, instead of hanging while the receiver is down.
    pub fn limit_blocking(&mut self, limit: std::time::Duration) {
        if let AlarmOutput::Delivered(d) = self {
            d.limit_blocking(limit);
        }
    }

    /// Once per tick: makes spooled alarms durable per the fsync policy.
    pub fn flush(&mut self) -> Result<(), OutputError> {
        if let AlarmOutput::Delivered(d) = self {
            d.flush()?;
        }
        Ok(())
    }

    /// At the end of a bounded input: waits up to `timeout` for the sinks to take what is
    /// spooled; whether they did (always true without sinks).
    pub async fn drain(&self, timeout: std::time::Duration) -> bool {
        match self {
            AlarmOutput::Direct { .. } => true,
            AlarmOutput::Delivered(d) => d.drain(timeout).await,
        }
    }

    /// Each sink's delivery state and the spool's counters (none without sinks).
    pub fn status(&self) -> Option<(Vec<SinkStatus>, SpoolCounters)> {
        match self {
            AlarmOutput::Direct { .. } => None,
            AlarmOutput::Delivered(d) => Some((d.status(), d.spool_counters())),
        }
    }

    /// A handle reading [`AlarmOutput::status`] from another task (none without sinks).
    pub fn status_handle(&self) -> Option<delivery::StatusHandle> {
        match self {
            AlarmOutput::Direct { .. } => None,
            AlarmOutput::Delivered(d) => Some(d.status_handle()),
        }
    }

    /// Alarms dropped by a full spool not yet reported (0 without sinks): for the state file.
    pub fn unreported_drops(&self) -> u64 {
        match self {
            AlarmOutput::Direct { .. } => 0,
            AlarmOutput::Delivered(d) => d.unreported_drops(),
        }
    }

    /// Drops counted before a restart, to be reported by `sensor_degraded`. Without sinks
    /// nothing is ever dropped, and there is no spool to report through: the count is logged.
    pub fn restore_drops(&self, dropped: u64) {
        match self {
            AlarmOutput::Delivered(d) => d.restore_drops(dropped),
            AlarmOutput::Direct { .. } if dropped > 0 => log::warn!(
                "{dropped} alarms were dropped by a full spool before the restart; no sink is configured now to report it"
            ),
            AlarmOutput::Direct { .. } => {}
        }
    }

    /// Stops the sink tasks after they finish what they are sending; spooled alarms stay for
    /// the next start.
    pub async fn shutdown(self) {
        if let AlarmOutput::Delivered(d) = self {
            d.shutdown().await;
        }
    }
}

/// `[output]`: where alarms go when no `[[sinks]]` are configured.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// Where alarms go as JSON lines: a file path, or stdout when unset or "-".
    pub alarms: Option<PathBuf>,
}
