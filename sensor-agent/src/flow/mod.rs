//! Flows as the agent sees them: the flow table with conversations, and flow records.

pub mod record;
pub mod settings;
pub mod table;
