//! The sensor agent: what the kernel datapath counted, judged while flows are still open.
//!
//! ```text
//!  datapath (XDP/TC, sensor-ebpf) ─► kernel maps + rings ─► source::{live, replay}
//!        ▲ WATCH map                                            │ SourceEvent (timestamped)
//!        └──────────── Feedback (watch set, ended flows) ◄──┐   ▼
//!  pipeline::run: one loop ─► engine: flow ─► enrich ─► detect ─► alarm ─► sink
//! ```
//!
//! Detectors never know which source fed them: every source turns what it reads (the kernel
//! maps and rings, a capture file) into the same events with explicit timestamps, and the
//! engine never reads a clock, so a replay is deterministic. Modules are layered bottom-up
//! (`units`, `clock`, `privilege`, `state`, `scoring`, `flow`, `source`, `enrich`, `detect`,
//! `alarm`, `sink`, `metrics`, `config`, `engine`, `pipeline`); `cargo xtask test` fails on an
//! import cycle between them.
//! `docs/ARCHITECTURE.md` draws the whole design.

pub mod alarm;
pub mod clock;
pub mod config;
pub mod detect;
pub mod engine;
pub mod enrich;
pub mod flow;
pub mod metrics;
pub mod pipeline;
pub mod privilege;
pub mod scoring;
pub mod sink;
pub mod source;
pub mod state;
pub mod units;
