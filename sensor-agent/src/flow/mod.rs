//! Flows as the agent sees them: keyed counters with wall-clock times, rendered as records.

pub mod record;
