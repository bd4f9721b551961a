//! `[flow]`: how long flows live and how many the table keeps.

use serde::Deserialize;

use crate::units::{require_positive, HumanDuration, Invalid};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlowConfig {
    /// Idle time after which an established TCP flow ends (Zeek uses 5 min, Suricata 10 min;
    /// real pool sessions go quiet for 195 s).
    pub tcp_idle_timeout: HumanDuration,
    /// Time a TCP flow is kept after FIN from both sides or RST, for late packets.
    pub tcp_closed_grace: HumanDuration,
    /// Idle time after which a TCP flow that never completed its handshake ends.
    pub tcp_unestablished_timeout: HumanDuration,
    pub udp_idle_timeout: HumanDuration,
    /// Idle timeout for ICMP and every other protocol.
    pub other_idle_timeout: HumanDuration,
    /// A new flow continues a conversation (same client, server, server port, transport)
    /// that ended at most this long ago: reconnects do not restart the clock.
    pub conversation_gap: HumanDuration,
    /// Flows tracked at most. Full, a new flow takes the place of the oldest unanswered one
    /// (only one side ever sent); with none left it is refused and counted. Answered flows
    /// are never evicted (`flow::table` admission).
    pub max_flows: usize,
    /// With the table at least 7/8 full, new unanswered flows of a sender that already has
    /// this many unanswered flows in the table are refused, so one source cannot fill it.
    pub unanswered_per_source: u32,
    /// Conversations tracked at most; flows of new conversations beyond it are dropped and
    /// counted.
    pub max_conversations: usize,
}

impl Default for FlowConfig {
    fn default() -> Self {
        FlowConfig {
            tcp_idle_timeout: HumanDuration::secs(15 * 60),
            tcp_closed_grace: HumanDuration::secs(30),
            tcp_unestablished_timeout: HumanDuration::secs(60),
            udp_idle_timeout: HumanDuration::secs(180),
            other_idle_timeout: HumanDuration::secs(180),
            conversation_gap: HumanDuration::secs(10 * 60),
            max_flows: 1_000_000,
            unanswered_per_source: 256,
            max_conversations: 1_000_000,
        }
    }
}

impl FlowConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        require_positive(&[
            ("tcp_idle_timeout", self.tcp_idle_timeout),
            ("udp_idle_timeout", self.udp_idle_timeout),
            ("other_idle_timeout", self.other_idle_timeout),
            ("tcp_unestablished_timeout", self.tcp_unestablished_timeout),
        ])?;
        // The per-source counts saturate at 65535 (`flow::table`'s sketch).
        if !(1..=65_000).contains(&self.unanswered_per_source) {
            return Err(Invalid::new(
                "unanswered_per_source",
                "must be between 1 and 65000",
            ));
        }
        Ok(())
    }
}
