//! Sources: where frames and flows come from. Each source hands the rest of the agent frames or
//! flow records with explicit timestamps and never decides anything about them.

pub mod capture;
pub mod live;
pub mod packet;
