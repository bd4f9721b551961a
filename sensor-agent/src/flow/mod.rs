//! Flows as the agent sees them: the flow table with conversations, flow records, and the
//! evidence that names a flow's client.

pub mod host;
pub mod record;
pub mod roles;
pub mod settings;
pub mod table;
