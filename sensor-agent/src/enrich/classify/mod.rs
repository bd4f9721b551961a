//! Payload classification: what the first bytes of a flow say about mining and blockchain peers.
//!
//! # Why it exists
//! The `mining_protocol` and `blockchain_p2p` rules (docs/ARCHITECTURE.md, "Detection semantics") decide
//! from what a flow *says*, not from where it goes: stratum v1, CryptoNote (XMRig) login/job,
//! getwork, getblocktemplate and ethproxy JSON-RPC, the getwork-era HTTP headers
//! (`X-Stratum`, `X-Mining-Extensions`), Bitcoin P2P message headers, Monero Levin headers,
//! Ethereum discv4 packets and the RLPx ECIES handshake. The `encrypted_mining` rule needs the
//! SNI, ALPN and JA4 fingerprint of TLS ClientHellos, which [`parse_client_hello`] extracts.
//! This module is the one place that reads payload bytes for those rules; it is pure (no I/O, no
//! clock, no global state), so every rule is tested on bytes built here and on real captures.
//!
//! # What it must never do
//! Every byte it reads comes from the network and may be written by an adversary who knows this
//! code. So it must
//! - **never panic**: all reads go through bounds-checked slice access (`get`, checked
//!   arithmetic); a random-input test feeds ~250k hostile buffers through every entry point;
//! - **bound every parse**: one JSON message is parsed from at most [`MAX_JSON`] bytes, at most
//!   64 messages and 64 KiB of JSON are looked at per payload, HTTP heads are read from the first
//!   8 KiB, a ClientHello is gathered from at most 16 KiB of records, nesting is bounded by
//!   serde_json's recursion limit and the truncation repair's depth cap;
//! - **never allocate in proportion to a length the sender wrote** beyond those small caps:
//!   length fields (Bitcoin payload length, Levin body size, TLS record and handshake lengths)
//!   are checked against sane bounds and against the bytes actually present, never used to size
//!   a buffer; [`FlowClassifier`] keeps at most [`FLOW_BUFFER_CAP`] bytes per direction;
//! - **never decide from a port alone**: no function here takes a port. A port may make a caller
//!   look harder; only content identifies;
//! - **never keep a wallet or login in clear**: logins are reported as SHA-256 hex only, agent
//!   strings are cut to [`MAX_AGENT_CHARS`] characters with control characters removed.
//!
//! Generic JSON-RPC (`eth_blockNumber`, `getinfo`, `getblockchaininfo`, ...) is not mining
//! (nDPI issue 2216): only the `method` member of a top-level JSON object, or the structure of a
//! server reply (a CryptoNote job, a stratum subscription), counts. A method name quoted inside
//! some other string or nested object counts for nothing.
//!
//! # Entry points
//! - [`classify`]: one payload, one direction, stateless. One packet is often enough.
//! - [`FlowClassifier`]: feed the payloads of one flow in order; it joins JSON lines split across
//!   packets and marks an identification `confirmed_by_server` when the server's reply arrives.
//! - [`parse_client_hello`]: SNI, ALPN and JA4 of a TLS ClientHello (the `encrypted_mining` rule
//!   uses these; `classify` itself returns `None` for TLS).
//! - [`speaker`]: which side sent a payload (client or server), when only one side sends such a
//!   message: role evidence for flows joined mid-stream.

pub mod coin;
mod mining;
mod p2p;
mod speaker;
mod tls;

pub use speaker::{speaker, Speaker};
pub use tls::{parse_client_hello, parse_client_hello_message, ClientHello};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Largest JSON text parsed as one message; longer ones are treated as truncated there.
pub const MAX_JSON: usize = 16 * 1024;
/// Largest partial line [`FlowClassifier`] keeps per direction between packets.
pub const FLOW_BUFFER_CAP: usize = 2048;
/// Agent strings are cut to this many characters.
pub const MAX_AGENT_CHARS: usize = 128;

/// Who sent a payload, as the caller knows it (the SYN sender is the client).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    ClientToServer,
    ServerToClient,
}

impl Direction {
    pub fn opposite(self) -> Direction {
        match self {
            Direction::ClientToServer => Direction::ServerToClient,
            Direction::ServerToClient => Direction::ClientToServer,
        }
    }

    fn index(self) -> usize {
        match self {
            Direction::ClientToServer => 0,
            Direction::ServerToClient => 1,
        }
    }
}

/// The transport the payload travelled on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    Tcp,
    Udp,
}

/// Which detection rule an identification feeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A miner talking to a pool (or to a node's mining RPC).
    MiningProtocol,
    /// A blockchain node talking to its peers.
    BlockchainP2p,
}

impl Kind {
    /// The alarm `rule.id` this kind feeds (docs/ARCHITECTURE.md, alarm contract).
    pub fn rule_id(self) -> &'static str {
        match self {
            Kind::MiningProtocol => "mining_protocol",
            Kind::BlockchainP2p => "blockchain_p2p",
        }
    }
}

/// What the payload said. One packet may be enough; the caller may feed several payloads of a
/// flow in order through [`FlowClassifier`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Identification {
    pub kind: Kind,
    /// One of "stratum", "cryptonote", "getwork", "getblocktemplate", "cryptonote-daemon", "ethproxy",
    /// "http-stratum", "bitcoin", "ethereum-discv4", "ethereum-rlpx", "monero-levin".
    pub protocol: &'static str,
    /// The matched method or signature, e.g. "mining.subscribe", "login",
    /// "magic f9beb4d9 version", "http header X-Mining-Extensions".
    pub signature: String,
    /// Who sent the matching message: the direction the caller gave with the payload.
    pub role: Direction,
    /// The coin when the messages name it (a network magic, a wallet address with a valid
    /// checksum, a single-coin algorithm, a coin's own getblocktemplate rule); never guessed
    /// from the protocol alone (see [`coin`]).
    pub coin: Option<&'static str>,
    /// Why the coin was named, in words (a short text of ours, never a quote of the payload).
    pub coin_reason: Option<String>,
    /// The miner's agent string (stratum subscribe, CryptoNote login `agent`, HTTP
    /// `User-Agent` of a mining request), control characters removed, at most
    /// [`MAX_AGENT_CHARS`] characters.
    pub agent: Option<String>,
    /// SHA-256 hex of the wallet/login/worker name when the message carries one (never the
    /// clear login).
    pub login_sha256: Option<String>,
    /// A server message that only a pool (or peer) sends was seen: mining.notify /
    /// set_difficulty, a CryptoNote job, a login result carrying a job, a subscription result,
    /// a getwork/getblocktemplate result, an `X-Stratum`-style header in an HTTP response. For
    /// peer protocols: the matching message came from the server side.
    pub confirmed_by_server: bool,
}

/// Every protocol name an [`Identification`] carries.
pub const PROTOCOLS: &[&str] = &[
    "stratum",
    "cryptonote",
    "getwork",
    "getblocktemplate",
    "cryptonote-daemon",
    "ethproxy",
    "http-stratum",
    "bitcoin",
    "ethereum-discv4",
    "ethereum-rlpx",
    "monero-levin",
];
/// Every coin name an [`Identification`] carries.
pub const COINS: &[&str] = &[
    "bitcoin",
    "litecoin",
    "dogecoin",
    "monero",
    "ethereum",
    "ethash-family",
    "zcash",
    "ravencoin",
    "dash",
    "wownero",
    "raptoreum",
];
/// Longest coin reason read back from a state file (ours are under 200 characters).
const MAX_COIN_REASON_CHARS: usize = 256;

/// An [`Identification`] in the state file: its names as text, checked against
/// [`PROTOCOLS`] and [`COINS`] when read back (a state file is input too).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentificationSnapshot {
    pub kind: Kind,
    pub protocol: String,
    pub signature: String,
    pub role: Direction,
    pub coin: Option<String>,
    pub coin_reason: Option<String>,
    pub agent: Option<String>,
    pub login_sha256: Option<String>,
    pub confirmed_by_server: bool,
}

/// Longest signature read back from a state file (they are method names and magics).
const MAX_SIGNATURE_CHARS: usize = 256;

impl From<&Identification> for IdentificationSnapshot {
    fn from(i: &Identification) -> Self {
        IdentificationSnapshot {
            kind: i.kind,
            protocol: i.protocol.to_string(),
            signature: i.signature.clone(),
            role: i.role,
            coin: i.coin.map(str::to_string),
            coin_reason: i.coin_reason.clone(),
            agent: i.agent.clone(),
            login_sha256: i.login_sha256.clone(),
            confirmed_by_server: i.confirmed_by_server,
        }
    }
}

impl IdentificationSnapshot {
    /// The identification, when every name is one this agent knows and every string within
    /// the bounds the classifiers keep.
    pub fn identification(&self) -> Option<Identification> {
        let known = |names: &[&'static str], name: &str| names.iter().copied().find(|n| *n == name);
        let protocol = known(PROTOCOLS, &self.protocol)?;
        let coin = match &self.coin {
            Some(c) => Some(known(COINS, c)?),
            None => None,
        };
        let bounded = self.signature.chars().count() <= MAX_SIGNATURE_CHARS
            && self
                .agent
                .as_ref()
                .is_none_or(|a| a.chars().count() <= MAX_AGENT_CHARS)
            && self
                .coin_reason
                .as_ref()
                .is_none_or(|r| r.chars().count() <= MAX_COIN_REASON_CHARS)
            && self
                .login_sha256
                .as_ref()
                .is_none_or(|l| l.len() == 64 && l.bytes().all(|b| b.is_ascii_hexdigit()));
        bounded.then(|| Identification {
            kind: self.kind,
            protocol,
            signature: self.signature.clone(),
            role: self.role,
            coin,
            coin_reason: self.coin.as_ref().and(self.coin_reason.clone()),
            agent: self.agent.clone(),
            login_sha256: self.login_sha256.clone(),
            confirmed_by_server: self.confirmed_by_server,
        })
    }
}

impl Identification {
    /// Names the coin, with the reason in words.
    fn name_coin(&mut self, coin: &'static str, reason: impl Into<String>) {
        self.coin = Some(coin);
        self.coin_reason = Some(reason.into());
    }

    fn with_coin(mut self, evidence: Option<coin::CoinEvidence>) -> Self {
        if let Some(e) = evidence {
            self.name_coin(e.coin, e.reason);
        }
        self
    }

    fn new(
        kind: Kind,
        protocol: &'static str,
        signature: impl Into<String>,
        role: Direction,
    ) -> Identification {
        Identification {
            kind,
            protocol,
            signature: signature.into(),
            role,
            coin: None,
            coin_reason: None,
            agent: None,
            login_sha256: None,
            confirmed_by_server: false,
        }
    }

    /// Takes what `other` adds (confirmation, agent, login, coin); a JSON-RPC method is more
    /// specific than an HTTP header, so it replaces an "http-stratum" identification. Returns
    /// whether anything changed.
    fn absorb(&mut self, other: &Identification) -> bool {
        if other.kind != self.kind {
            return false;
        }
        let mut changed = false;
        if self.protocol == "http-stratum" && other.protocol != "http-stratum" {
            self.protocol = other.protocol;
            self.signature.clone_from(&other.signature);
            self.role = other.role;
            changed = true;
        }
        if other.confirmed_by_server && !self.confirmed_by_server {
            self.confirmed_by_server = true;
            changed = true;
        }
        if self.coin.is_none() && other.coin.is_some() {
            self.coin = other.coin;
            self.coin_reason.clone_from(&other.coin_reason);
            changed = true;
        }
        if self.agent.is_none() && other.agent.is_some() {
            self.agent.clone_from(&other.agent);
            changed = true;
        }
        if self.login_sha256.is_none() && other.login_sha256.is_some() {
            self.login_sha256.clone_from(&other.login_sha256);
            changed = true;
        }
        changed
    }
}

/// Classifies one payload of a flow.
///
/// `dir` is who sent it; `transport` selects the rules (discv4 is UDP, everything else TCP).
/// Returns `None` for anything that is not positively a mining protocol or a blockchain peer
/// protocol, including TLS, SSH, DNS and plain HTTP or JSON-RPC.
pub fn classify(payload: &[u8], dir: Direction, transport: Transport) -> Option<Identification> {
    classify_in_flow(payload, dir, transport, None)
}

/// `known`: the protocol already identified in this flow, which unlocks replies that are only
/// meaningful as answers (an ethproxy work package is an array of hashes).
fn classify_in_flow(
    payload: &[u8],
    dir: Direction,
    transport: Transport,
    known: Option<&'static str>,
) -> Option<Identification> {
    if payload.is_empty() {
        return None;
    }
    match transport {
        Transport::Udp => p2p::discv4(payload, dir),
        Transport::Tcp => {
            if tls::looks_like_tls_record(payload) || payload.starts_with(b"SSH-") {
                return None;
            }
            p2p::bitcoin(payload, dir)
                .or_else(|| p2p::levin(payload, dir))
                .or_else(|| mining::classify(payload, dir, known))
                .or_else(|| p2p::rlpx(payload, dir))
        }
    }
}

/// Payloads still looked at after a confirmation, for the login or agent that may follow
/// (stratum sends `mining.authorize` after the pool has answered `mining.subscribe`).
const PAYLOADS_AFTER_CONFIRMATION: u32 = 16;

/// Per-flow state for [`FlowClassifier::feed`]: a partial JSON line per direction (at most
/// [`FLOW_BUFFER_CAP`] bytes each) and what was identified so far.
///
/// The flow is settled once its identification is confirmed by the server and either carries a
/// login or 16 more payloads went by; later payloads are ignored (the caller may stop feeding,
/// see [`FlowClassifier::is_settled`]).
#[derive(Clone, Debug)]
pub struct FlowClassifier {
    transport: Transport,
    pending: [Vec<u8>; 2],
    found: Option<Identification>,
    after_confirmation: u32,
}

impl FlowClassifier {
    pub fn new(transport: Transport) -> FlowClassifier {
        FlowClassifier {
            transport,
            pending: [Vec::new(), Vec::new()],
            found: None,
            after_confirmation: 0,
        }
    }

    /// Feeds the next payload of the flow in direction `dir`. Returns the flow's identification
    /// when this payload created or improved it (first identification, server confirmation, a
    /// newly seen agent or login), else `None`.
    pub fn feed(&mut self, payload: &[u8], dir: Direction) -> Option<Identification> {
        if payload.is_empty() || self.is_settled() {
            return None;
        }
        if self.found.as_ref().is_some_and(|f| f.confirmed_by_server) {
            self.after_confirmation += 1;
        }
        let slot = dir.index();
        let joined;
        let data: &[u8] = if self.pending[slot].is_empty() {
            payload
        } else {
            let mut j = std::mem::take(&mut self.pending[slot]);
            j.extend_from_slice(payload);
            joined = j;
            &joined
        };
        let known = self.found.as_ref().map(|f| f.protocol);
        let result = classify_in_flow(data, dir, self.transport, known);
        if self.transport == Transport::Tcp {
            self.pending[slot] = mining::partial_tail(data, FLOW_BUFFER_CAP)
                .or_else(|| p2p::version_awaiting_payload(data))
                .map(<[u8]>::to_vec)
                .unwrap_or_default();
        }
        let new = result?;
        match &mut self.found {
            None => {
                self.found = Some(new.clone());
                Some(new)
            }
            Some(found) => found.absorb(&new).then(|| found.clone()),
        }
    }

    /// What was identified so far.
    pub fn identification(&self) -> Option<&Identification> {
        self.found.as_ref()
    }

    /// True once there is nothing more to learn: the identification is confirmed by the server
    /// and carries a login, or enough payloads went by since the confirmation.
    pub fn is_settled(&self) -> bool {
        self.found.as_ref().is_some_and(|f| {
            f.confirmed_by_server
                && (f.login_sha256.is_some()
                    || self.after_confirmation >= PAYLOADS_AFTER_CONFIRMATION)
        })
    }
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0x0f) as usize] as char);
    }
    s
}

/// SHA-256 hex of a login, wallet or worker name.
fn login_hash(login: &str) -> String {
    hex(&Sha256::digest(login.as_bytes()))
}

/// Text safe to put in an alarm: control characters removed, at most `max_chars` characters.
fn clean_text(s: &str, max_chars: usize) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(max_chars)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::source::{capture::CaptureReader, packet::parse_frame};
    use fastrand::Rng;
    use Direction::{ClientToServer as C2S, ServerToClient as S2C};

    /// A DNS query for example.com, A record.
    fn dns_query() -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(b"\x07example\x03com\x00\x00\x01\x00\x01");
        q
    }

    #[test]
    fn other_protocols_are_not_classified() {
        let mut dns_tcp = (dns_query().len() as u16).to_be_bytes().to_vec();
        dns_tcp.extend(dns_query());
        let samples: Vec<Vec<u8>> = vec![
            b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n".to_vec(),
            b"GET / HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n"
                .to_vec(),
            b"HTTP/1.1 301 Moved Permanently\r\nLocation: https://example.com/\r\n\r\n".to_vec(),
            tls::tests::chrome_like("pool.minexmr.com"),
            vec![0x17, 0x03, 0x03, 0x00, 0x20, 0x7b, 0x22, 0x6d],
            dns_tcp,
            b"220 mail.example.com ESMTP Postfix\r\n".to_vec(),
            b"{\"jsonrpc\":\"2.0\",\"method\":\"eth_blockNumber\",\"params\":[],\"id\":1}\n".to_vec(),
            Vec::new(),
        ];
        for s in &samples {
            for dir in [C2S, S2C] {
                for t in [Transport::Tcp, Transport::Udp] {
                    assert_eq!(
                        classify(s, dir, t),
                        None,
                        "{:?}",
                        String::from_utf8_lossy(s)
                    );
                }
            }
        }
        assert_eq!(classify(&dns_query(), C2S, Transport::Udp), None);
        // Stratum over UDP is not a thing.
        let line = b"{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[]}\n";
        assert_eq!(classify(line, C2S, Transport::Udp), None);
        assert!(classify(line, C2S, Transport::Tcp).is_some());
    }

    #[test]
    fn kind_rule_ids_match_the_alarm_contract() {
        assert_eq!(Kind::MiningProtocol.rule_id(), "mining_protocol");
        assert_eq!(Kind::BlockchainP2p.rule_id(), "blockchain_p2p");
        assert_eq!(C2S.opposite(), S2C);
        let id = classify(
            b"{\"method\":\"mining.notify\",\"params\":[]}\n",
            S2C,
            Transport::Tcp,
        )
        .unwrap();
        let json = serde_json::to_value(&id).unwrap();
        assert_eq!(json["kind"], "mining_protocol");
        assert_eq!(json["role"], "server_to_client");
        assert_eq!(json["confirmed_by_server"], true);
    }

    #[test]
    fn flow_joins_a_line_split_across_packets() {
        let mut f = FlowClassifier::new(Transport::Tcp);
        assert_eq!(f.feed(b"{\"id\":1,\"method\":\"mining.sub", C2S), None);
        let id = f
            .feed(b"scribe\",\"params\":[\"cgminer/4.10.0\"]}\n", C2S)
            .unwrap();
        assert_eq!(id.signature, "mining.subscribe");
        assert_eq!(id.agent.as_deref(), Some("cgminer/4.10.0"));
        assert!(f.pending[0].is_empty());
        // The server's subscription result confirms; authorize then adds the login.
        let id = f
            .feed(b"{\"result\":[[[\"mining.notify\",\"ae\"]],\"08000002\",4],\"id\":1,\"error\":null}\n", S2C)
            .unwrap();
        assert!(id.confirmed_by_server);
        assert_eq!(id.signature, "mining.subscribe");
        assert!(!f.is_settled());
        let id = f
            .feed(
                b"{\"id\":2,\"method\":\"mining.authorize\",\"params\":[\"w.1\",\"x\"]}\n",
                C2S,
            )
            .unwrap();
        assert_eq!(id.login_sha256, Some(login_hash("w.1")));
        assert!(f.is_settled());
        assert_eq!(
            f.feed(b"{\"method\":\"mining.notify\",\"params\":[]}\n", S2C),
            None
        );
    }

    #[test]
    fn flow_confirms_a_cryptonote_login() {
        let mut f = FlowClassifier::new(Transport::Tcp);
        let login = b"{\"id\":1,\"jsonrpc\":\"2.0\",\"method\":\"login\",\"params\":{\"login\":\"4A\",\"pass\":\"x\",\"agent\":\"XMRig/6.21.0\"}}\n";
        // Split in three.
        assert_eq!(f.feed(&login[..20], C2S), None);
        assert_eq!(f.feed(&login[20..50], C2S), None);
        let id = f.feed(&login[50..], C2S).unwrap();
        assert_eq!((id.protocol, id.confirmed_by_server), ("cryptonote", false));
        // Nothing new from the same message again.
        assert_eq!(f.feed(login, C2S), None);
        let reply = b"{\"id\":1,\"jsonrpc\":\"2.0\",\"error\":null,\"result\":{\"id\":\"a\",\"job\":{\"blob\":\"07\",\"job_id\":\"j\",\"target\":\"711b0d00\"},\"status\":\"OK\"}}\n";
        let id = f.feed(reply, S2C).unwrap();
        assert!(id.confirmed_by_server);
        assert_eq!(id.signature, "login");
        assert_eq!(id.agent.as_deref(), Some("XMRig/6.21.0"));
        assert!(f.is_settled());
        assert_eq!(f.identification().unwrap().protocol, "cryptonote");
    }

    #[test]
    fn flow_joined_mid_stream() {
        let mut f = FlowClassifier::new(Transport::Tcp);
        // First the tail of a line, then a notify cut at the packet boundary.
        assert_eq!(
            f.feed(b"00000\",true]}\n{\"id\":null,\"method\":\"mining.no", S2C),
            None
        );
        let id = f.feed(b"tify\",\"params\":[\"1\",\"ab\"]}\n", S2C).unwrap();
        assert_eq!((id.role, id.confirmed_by_server), (S2C, true));
        assert_eq!(id.signature, "mining.notify");
    }

    #[test]
    fn flow_upgrades_http_headers_to_the_body_method_and_unlocks_work_replies() {
        let mut f = FlowClassifier::new(Transport::Tcp);
        let head = b"POST / HTTP/1.1\r\nX-Mining-Extensions: midstate\r\nUser-Agent: bfgminer/5.2.0\r\nContent-Length: 44\r\n\r\n";
        assert_eq!(f.feed(head, C2S).unwrap().protocol, "http-stratum");
        let id = f
            .feed(b"{\"method\": \"getwork\", \"params\": [], \"id\":0}", C2S)
            .unwrap();
        assert_eq!((id.protocol, id.signature.as_str()), ("getwork", "getwork"));
        assert_eq!(id.agent.as_deref(), Some("bfgminer/5.2.0"));
        // A complete object without a newline is not kept as a partial line.
        assert!(f.pending[0].is_empty());

        let mut f = FlowClassifier::new(Transport::Tcp);
        f.feed(
            b"{\"id\":1,\"method\":\"eth_submitLogin\",\"params\":[\"0xabc\"]}\n",
            C2S,
        )
        .unwrap();
        let h = format!("0x{}", "12".repeat(32));
        let work = format!("{{\"id\":0,\"result\":[\"{h}\",\"{h}\",\"0x0000ffff\"]}}\n");
        assert!(f.feed(work.as_bytes(), S2C).unwrap().confirmed_by_server);
    }

    #[test]
    fn flow_buffers_are_capped() {
        let mut f = FlowClassifier::new(Transport::Tcp);
        f.feed(b"{\"id\":1,\"params\":[\"", C2S);
        for _ in 0..100 {
            assert_eq!(f.feed(&[b'a'; 100], C2S), None);
            assert!(f.pending[0].len() <= FLOW_BUFFER_CAP);
        }
        assert!(f.pending[0].is_empty());
        // After the oversized line ends, the next line is read normally.
        let id = f.feed(b"\"]}\n{\"id\":2,\"method\":\"mining.subscribe\"}\n", C2S);
        assert_eq!(id.unwrap().signature, "mining.subscribe");
        // Binary flows keep nothing.
        let mut f = FlowClassifier::new(Transport::Tcp);
        assert_eq!(f.feed(&tls::tests::chrome_like("a.example"), C2S), None);
        assert!(f.pending.iter().all(Vec::is_empty));
        // Peer protocols go through the flow classifier too.
        let mut f = FlowClassifier::new(Transport::Udp);
        let ping = p2p::tests::discv4_packet(1, &[0xc1, 0x04]);
        assert_eq!(f.feed(&ping, C2S).unwrap().protocol, "ethereum-discv4");
    }

    /// Random bytes; fastrand fills a slice rather than returning a vector.
    fn random_bytes(rng: &mut Rng, n: usize) -> Vec<u8> {
        let mut b = vec![0; n];
        rng.fill(&mut b);
        b
    }

    /// Every entry point on one buffer; the only assertion is that none panics (and that the
    /// flow buffers stay within their cap).
    fn run_all(b: &[u8], flow: &mut FlowClassifier) {
        for dir in [C2S, S2C] {
            let _ = classify(b, dir, Transport::Tcp);
            let _ = classify(b, dir, Transport::Udp);
        }
        let _ = parse_client_hello(b);
        let _ = parse_client_hello_message(b, true);
        let _ = flow.feed(b, C2S);
        assert!(flow.pending.iter().all(|p| p.len() <= FLOW_BUFFER_CAP));
    }

    /// Prefixes that lead random bytes past the first checks of each parser.
    const PREFIXES: &[&[u8]] = &[
        b"",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"\xf9\xbe\xb4\xd9version\0\0\0\0\0",
        b"\x01\x21\x01\x01\x01\x01\x01\x01",
        b"{\"id\":1,\"method\":\"",
        b"{\"method\":\"login\",\"params\":{\"login\":",
        b"{\"result\":{\"job\":{",
        b"{\"result\":[[[\"mining.notify\"",
        b"POST / HTTP/1.1\r\nX-Stratum: ",
        b"HTTP/1.1 200 OK\r\nAuthorization: Basic ",
        b"\x01\xc4\x04",
    ];

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Rng::with_seed(0x9e37_79b9_7f4a_7c15);
        let mut flow = FlowClassifier::new(Transport::Tcp);
        for i in 0..200_000 {
            let len = rng.usize(..601);
            let mut b = random_bytes(&mut rng, len);
            if i % 4 == 0 {
                let prefix = PREFIXES[rng.usize(..PREFIXES.len())];
                let mut p = prefix.to_vec();
                p.extend(b);
                b = p;
            }
            run_all(&b, &mut flow);
            if i % 1000 == 0 {
                flow = FlowClassifier::new(if i % 2000 == 0 {
                    Transport::Tcp
                } else {
                    Transport::Udp
                });
            }
        }
    }

    fn positive_samples() -> Vec<Vec<u8>> {
        let mut s: Vec<Vec<u8>> = [
            &b"{\"id\": 1, \"method\": \"mining.subscribe\", \"params\": [\"bfgminer/5.2.0\", \"1\"]}\n"[..],
            b"{\"id\": \"auth\", \"method\": \"mining.authorize\", \"params\": [\"broatcast\", \"123\"]}\n",
            b"{\"result\":[[[\"mining.notify\",\"1\"],[\"mining.set_difficulty\",\"2\"]],\"00b61738\",4],\"error\":null,\"id\":0}\n{\"method\":\"mining.set_difficulty\",\"params\":[4096],\"id\":1}\n",
            b"{\"id\":1,\"jsonrpc\":\"2.0\",\"method\":\"login\",\"params\":{\"login\":\"46WN\",\"pass\":\"x\",\"agent\":\"XMRig/6.21.0 (Linux x86_64)\"}}\n",
            b"{\"id\":1,\"jsonrpc\":\"2.0\",\"error\":null,\"result\":{\"id\":\"3d\",\"job\":{\"blob\":\"0707\",\"job_id\":\"x9\",\"target\":\"711b0d00\"},\"status\":\"OK\"}}\n",
            b"{\"jsonrpc\":\"2.0\",\"method\":\"job\",\"params\":{\"blob\":\"0707\",\"job_id\":\"RB\",\"target\":\"91fd0600\"}}\n",
            b"POST / HTTP/1.1\r\nAuthorization: Basic Qmlnc2t5OjEyMw==\r\nX-Mining-Extensions: longpoll\r\nUser-Agent: bfgminer/5.2.0\r\n\r\n{\"method\": \"getwork\", \"params\": [], \"id\":0}\n",
            b"{\"worker\":\"r\",\"params\":[\"0xabc\",\"x\"],\"id\":2,\"method\":\"eth_submitLogin\"}\n",
        ]
        .iter()
        .map(|b| b.to_vec())
        .collect();
        s.push(p2p::tests::bitcoin_message(
            [0xf9, 0xbe, 0xb4, 0xd9],
            "version",
            &p2p::tests::version_payload(),
        ));
        s.push(p2p::tests::levin_header(1001, 230, 1));
        s.push(p2p::tests::discv4_packet(1, &[0xc3, 0x04, 0x01, 0x02]));
        let mut key = vec![0x04];
        key.extend(p2p::tests::unhex(p2p::tests::GX));
        key.extend(p2p::tests::unhex(p2p::tests::GY));
        s.push(p2p::tests::rlpx_auth(&key, 400));
        s.push(tls::tests::chrome_like("pool.supportxmr.com"));
        s
    }

    #[test]
    fn mutated_samples_never_panic() {
        let samples = positive_samples();
        // Every sample is positive before mutation.
        for (i, s) in samples.iter().enumerate() {
            let hit = [C2S, S2C].iter().any(|&d| {
                classify(s, d, Transport::Tcp).is_some() || classify(s, d, Transport::Udp).is_some()
            }) || parse_client_hello(s).is_some();
            assert!(hit, "sample {i}");
        }
        let mut rng = Rng::with_seed(0x1234_5678_9abc_def1);
        let mut flow = FlowClassifier::new(Transport::Tcp);
        for i in 0..60_000 {
            let mut b = samples[rng.usize(..samples.len())].clone();
            for _ in 0..1 + rng.usize(..4) {
                if b.is_empty() {
                    break;
                }
                let at = rng.usize(..b.len());
                match rng.usize(..6) {
                    0 => b[at] ^= 1 << rng.usize(..8),
                    1 => b[at] = rng.u8(..),
                    2 => b.truncate(at),
                    3 => {
                        let n = rng.usize(..16);
                        let ins = random_bytes(&mut rng, n);
                        b.splice(at..at, ins);
                    }
                    4 => {
                        let end = (at + rng.usize(..32)).min(b.len());
                        b.drain(at..end);
                    }
                    _ => {
                        let end = (at + rng.usize(..64)).min(b.len());
                        let dup = b[at..end].to_vec();
                        b.splice(at..at, dup);
                    }
                }
            }
            run_all(&b, &mut flow);
            if i % 500 == 0 {
                flow = FlowClassifier::new(Transport::Tcp);
            }
        }
    }

    // ---- Real captures ------------------------------------------------------------------

    type Endpoint = ([u8; 4], u16);

    struct Segment {
        src: Endpoint,
        dst: Endpoint,
        tcp: bool,
        syn_only: bool,
        payload: Vec<u8>,
    }

    fn be16(b: &[u8], at: usize) -> Option<u16> {
        Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
    }

    /// The transport payload of an IPv4 TCP or UDP frame, by the header offsets (Ethernet 14,
    /// +4 per VLAN tag, IPv4 IHL and total length, TCP data offset). The agent's own parser
    /// must accept the frame first.
    fn segment(frame: &[u8]) -> Option<Segment> {
        parse_frame(frame).ok()?;
        let mut ethertype = be16(frame, 12)?;
        let mut off = 14;
        while ethertype == 0x8100 || ethertype == 0x88a8 {
            ethertype = be16(frame, off + 2)?;
            off += 4;
        }
        if ethertype != 0x0800 {
            return None;
        }
        let ip = frame.get(off..)?;
        let ihl = usize::from(ip.first()? & 0x0f) * 4;
        // The IP total length cuts off Ethernet padding.
        let ip = ip.get(..usize::from(be16(ip, 2)?))?;
        let proto = *ip.get(9)?;
        let src_ip: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
        let dst_ip: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
        let l4 = ip.get(ihl..)?;
        let (sport, dport) = (be16(l4, 0)?, be16(l4, 2)?);
        let (payload, flags) = match proto {
            6 => (l4.get(usize::from(l4.get(12)? >> 4) * 4..)?, *l4.get(13)?),
            17 => (l4.get(8..)?, 0),
            _ => return None,
        };
        Some(Segment {
            src: (src_ip, sport),
            dst: (dst_ip, dport),
            tcp: proto == 6,
            syn_only: flags & 0x12 == 0x02,
            payload: payload.to_vec(),
        })
    }

    struct FlowReport {
        client: Endpoint,
        server: Endpoint,
        tcp: bool,
        payloads: usize,
        flow: FlowClassifier,
        per_packet: Vec<String>,
        hello: Option<ClientHello>,
    }

    fn ep(e: Endpoint) -> String {
        let [a, b, c, d] = e.0;
        format!("{a}.{b}.{c}.{d}:{}", e.1)
    }

    /// Walks a capture and classifies every payload, per flow: the SYN sender is the client;
    /// for a flow joined without its SYN, the endpoint with the higher (ephemeral) port.
    fn classify_capture(path: &Path) -> Vec<FlowReport> {
        let mut flows: BTreeMap<(Endpoint, Endpoint, bool), FlowReport> = BTreeMap::new();
        for frame in CaptureReader::open(path).unwrap() {
            let frame = frame.unwrap();
            let Some(s) = segment(&frame.data) else {
                continue;
            };
            let key = (s.src.min(s.dst), s.src.max(s.dst), s.tcp);
            let f = flows.entry(key).or_insert_with(|| {
                let (client, server) = if s.syn_only || s.src.1 > s.dst.1 {
                    (s.src, s.dst)
                } else {
                    (s.dst, s.src)
                };
                FlowReport {
                    client,
                    server,
                    tcp: s.tcp,
                    payloads: 0,
                    flow: FlowClassifier::new(if s.tcp {
                        Transport::Tcp
                    } else {
                        Transport::Udp
                    }),
                    per_packet: Vec::new(),
                    hello: None,
                }
            });
            if s.syn_only {
                f.client = s.src;
                f.server = s.dst;
            }
            if s.payload.is_empty() {
                continue;
            }
            f.payloads += 1;
            let dir = if s.src == f.client { C2S } else { S2C };
            let transport = if s.tcp {
                Transport::Tcp
            } else {
                Transport::Udp
            };
            if let Some(id) = classify(&s.payload, dir, transport) {
                let hit = format!(
                    "{}{} {}",
                    if dir == C2S { ">" } else { "<" },
                    id.protocol,
                    id.signature
                );
                if !f.per_packet.contains(&hit) {
                    f.per_packet.push(hit);
                }
            }
            f.flow.feed(&s.payload, dir);
            if dir == C2S && s.tcp && f.hello.is_none() {
                f.hello = parse_client_hello(&s.payload);
            }
        }
        let reports: Vec<FlowReport> = flows.into_values().collect();
        println!("\n{}", path.display());
        println!(
            "{:<22} {:<21} {:>4} | {:<41} | {:<5} {:<8} {:<15} {:<8} | per packet (>: client, <: server) | TLS",
            "client", "server", "pay", "flow: protocol signature", "conf", "coin", "agent", "login"
        );
        for r in &reports {
            let id = r.flow.identification();
            println!(
                "{:<22} {:<21} {:>4} | {:<41} | {:<5} {:<8} {:<15} {:<8} | {} | {}",
                ep(r.client),
                format!("{}{}", ep(r.server), if r.tcp { "" } else { "/udp" }),
                r.payloads,
                id.map_or("-".into(), |i| format!("{} {}", i.protocol, i.signature)),
                id.map_or("-".into(), |i| i.confirmed_by_server.to_string()),
                id.and_then(|i| i.coin).unwrap_or("-"),
                id.and_then(|i| i.agent.clone()).unwrap_or("-".into()),
                id.and_then(|i| i.login_sha256.as_ref())
                    .map_or("-".into(), |h| format!("{}..", &h[..6])),
                if r.per_packet.is_empty() {
                    "-".into()
                } else {
                    r.per_packet.join(", ")
                },
                r.hello.as_ref().map_or("-".into(), |h| format!(
                    "sni={} alpn={:?} ja4={}",
                    h.sni.as_deref().unwrap_or("-"),
                    h.alpn,
                    h.ja4
                )),
            );
        }
        reports
    }

    fn pcaps() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/pcaps")
    }

    /// (client port) -> (protocol, signature, confirmed) expected from the flow classifier.
    type Expected = &'static [(u16, &'static str, &'static str, bool)];

    fn check(reports: &[FlowReport], expected: Expected) {
        for r in reports {
            let got = r
                .flow
                .identification()
                .map(|i| (i.protocol, i.signature.as_str(), i.confirmed_by_server));
            let want = expected
                .iter()
                .find(|e| e.0 == r.client.1)
                .map(|e| (e.1, e.2, e.3));
            assert_eq!(got, want, "{} -> {}", ep(r.client), ep(r.server));
            // The stateless classifier agrees on which flows are mining.
            assert_eq!(r.per_packet.is_empty(), want.is_none(), "{}", ep(r.client));
        }
        for e in expected {
            assert!(
                reports.iter().any(|r| r.client.1 == e.0),
                "flow {} missing",
                e.0
            );
        }
    }

    #[test]
    fn real_capture_stratum_getwork_gbt() {
        let reports = classify_capture(&pcaps().join("stratum-getwork-gbt.pcap"));
        const POOL_FLOWS: Expected = &[
            (50496, "getblocktemplate", "getblocktemplate", false),
            (50498, "getwork", "getwork", false),
            (53294, "getblocktemplate", "getblocktemplate", false),
            (53300, "getblocktemplate", "getblocktemplate", false),
            (53302, "getwork", "getwork", false),
            (53288, "stratum", "mining.subscribe", true),
            (50520, "stratum", "mining.subscribe", true),
            (53310, "stratum", "mining.subscribe", true),
        ];
        check(&reports, POOL_FLOWS);
        let bfgminer_ja4 = "t12d5410h1_a499d9840d02_7448b1316cd7";
        for r in &reports {
            let pool = matches!(
                r.server,
                ([74, 84, 128, 158], 3333) | ([113, 21, 199, 11], 3333)
            );
            assert!(pool || !r.tcp, "unexpected flow {}", ep(r.server));
            let id = r.flow.identification();
            if let Some(id) = id {
                assert_eq!(id.role, C2S);
                assert_eq!(id.agent.as_deref(), Some("bfgminer/5.2.0"));
                assert_eq!(id.kind, Kind::MiningProtocol);
            }
            // The other pool flows are bfgminer trying TLS on the stratum port (or nothing).
            if id.is_none() && r.payloads > 0 {
                let h = r.hello.as_ref().expect("a ClientHello");
                assert_eq!(h.sni.as_deref(), Some("us1.bitminter.com"));
                assert_eq!(h.alpn, ["http/1.1"]);
                assert_eq!(h.ja4, bfgminer_ja4);
                assert!(h.complete);
            }
        }
        let by_port = |p: u16| reports.iter().find(|r| r.client.1 == p).unwrap();
        // Basic auth "Bigsky:123" on the HTTP flows, worker "broatcast" on stratum.
        let login = |p: u16| {
            by_port(p)
                .flow
                .identification()
                .unwrap()
                .login_sha256
                .clone()
        };
        assert_eq!(login(50496), Some(login_hash("Bigsky")));
        assert_eq!(login(53300), Some(login_hash("broatcast")));
        assert_eq!(login(53310), Some(login_hash("broatcast")));
        // getwork names no coin (every bitcoind-family coin served it).
        assert_eq!(by_port(50496).flow.identification().unwrap().coin, None);
        // The stateless classifier saw the header packet and the body separately.
        assert_eq!(
            by_port(50496).per_packet,
            [
                ">http-stratum http header X-Mining-Extensions",
                ">getblocktemplate getblocktemplate"
            ]
        );
        assert!(by_port(53310)
            .per_packet
            .contains(&"<stratum mining.notify".to_string()));
    }

    #[test]
    fn real_capture_cryptonote_login() {
        let reports = classify_capture(&pcaps().join("cryptonote-login-stratum.pcap"));
        const POOL_FLOWS: Expected = &[
            (46080, "cryptonote", "login", true),
            (46082, "cryptonote", "login", true),
            (46084, "cryptonote", "login", true),
        ];
        check(&reports, POOL_FLOWS);
        for r in &reports {
            if let Some(id) = r.flow.identification() {
                assert_eq!(r.server, ([192, 110, 160, 114], 3333));
                assert_eq!(id.coin, Some("monero"));
                assert!(id.login_sha256.is_some());
            }
        }
        let by_port = |p: u16| reports.iter().find(|r| r.client.1 == p).unwrap();
        assert_eq!(
            by_port(46084).flow.identification().unwrap().login_sha256,
            Some(login_hash(
                "46BeWrHpwXmHDpDEUmZBWZfoQpdc6HaERCNmx1pEYL2rAcuwufPN9rXHHtyUA4QVy66qeFQkn6sfK8aHYjA3jk3o1Bv16em"
            ))
        );
        // The server's job pushes are recognised packet by packet as well.
        assert!(by_port(46080)
            .per_packet
            .contains(&"<cryptonote job".to_string()));
        // The port 8081 flow (joined mid-stream, binary) and the TLS flows are not mining.
        let f8081 = reports.iter().find(|r| r.server.1 == 8081).unwrap();
        assert!(f8081.flow.identification().is_none() && f8081.payloads > 40);
        let tls = by_port(48118);
        assert_eq!(tls.server.1, 443);
        // Cross-checked with ja4plus 1.4.0 (PyPI) on the same capture.
        assert_eq!(
            tls.hello.as_ref().unwrap().ja4,
            "t12d1311h2_8b80da21ef18_eb7c9aabf852"
        );
    }

    #[test]
    fn real_capture_quiet_long_flow_is_not_mining() {
        let reports = classify_capture(&pcaps().join("quiet-long-tcp.pcap"));
        assert!(!reports.is_empty());
        assert!(reports
            .iter()
            .all(|r| r.flow.identification().is_none() && r.per_packet.is_empty()));
    }
}
