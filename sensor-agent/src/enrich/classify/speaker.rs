//! Which side sent a payload, from the payload alone: role evidence for flows whose start the
//! sensor did not see (no SYN), see `flow::roles`.
//!
//! Only messages that one side alone sends count: a stratum notification, a subscription
//! result or a CryptoNote job come from a pool, `mining.subscribe`/`submit`/`login` from a
//! miner; a JSON-RPC result from a server, a JSON-RPC request with an id from a client; a TLS
//! ServerHello from a server, a ClientHello from a client; an HTTP response from a server, a
//! request from a client; a DNS response (QR bit) from a server, a query from a client.
//! Symmetric protocols (SSH banners, Bitcoin `version`, anything unrecognised) say nothing.
//!
//! The same rules as the rest of `classify`: bytes from the network, every read
//! bounds-checked, JSON parsed only within the caller's byte cap and the mining parser's own
//! budget, nothing allocated from a length the sender wrote. It never names a protocol: that
//! stays [`super::classify`]'s job.

use serde_json::Value;

use super::{mining, tls, Direction, Kind, Transport, MAX_JSON};

/// Who sent a payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Speaker {
    Client,
    Server,
}

/// The side that sent `payload`, when the payload says. `dns`: the source marked it a DNS
/// message (port 53); over TCP it starts with the 2-byte length prefix.
pub fn speaker(payload: &[u8], transport: Transport, dns: bool) -> Option<Speaker> {
    if dns {
        let at = if transport == Transport::Tcp { 4 } else { 2 };
        // A DNS header is 12 bytes; read the QR bit only from one that is whole.
        if payload.len() < at - 2 + 12 {
            return None;
        }
        return Some(if payload[at] & 0x80 != 0 {
            Speaker::Server
        } else {
            Speaker::Client
        });
    }
    if transport != Transport::Tcp {
        return None;
    }
    if tls::looks_like_tls_record(payload) {
        // A handshake record: its first message's type is byte 5.
        return match (payload.first(), payload.get(5)) {
            (Some(0x16), Some(1)) => Some(Speaker::Client),
            (Some(0x16), Some(2)) => Some(Speaker::Server),
            _ => None,
        };
    }
    if payload.starts_with(b"HTTP/1.") || payload.starts_with(b"HTTP/2") {
        return Some(Speaker::Server);
    }
    if mining::HTTP_METHODS.iter().any(|m| payload.starts_with(m)) {
        return Some(Speaker::Client);
    }
    let start = payload.iter().position(|b| !b.is_ascii_whitespace())?;
    if payload[start] != b'{' {
        return None;
    }
    // The direction given does not matter for these rules, only `confirmed_by_server`.
    if let Some(id) = mining::json_messages(payload, Direction::ClientToServer, None) {
        if id.kind == Kind::MiningProtocol {
            return Some(if id.confirmed_by_server {
                Speaker::Server
            } else {
                Speaker::Client
            });
        }
    }
    json_rpc(&payload[start..])
}

/// A generic JSON-RPC message: a result or error answers a request (server); a request with an
/// id asks (client), unless its method is a server-to-client call (`client.*`, stratum's
/// `client.reconnect`, `client.show_message`, ...).
fn json_rpc(text: &[u8]) -> Option<Speaker> {
    let window = &text[..text.len().min(MAX_JSON)];
    let mut stream = serde_json::Deserializer::from_slice(window).into_iter::<Value>();
    let Some(Ok(Value::Object(obj))) = stream.next() else {
        return None;
    };
    let id = obj.get("id")?;
    match obj.get("method") {
        Some(Value::String(m)) if m.starts_with("client.") => Some(Speaker::Server),
        Some(Value::String(_)) if !id.is_null() => Some(Speaker::Client),
        Some(_) => None,
        None if obj.contains_key("result") || obj.contains_key("error") => Some(Speaker::Server),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Speaker::{Client, Server};

    fn tcp(p: &[u8]) -> Option<Speaker> {
        speaker(p, Transport::Tcp, false)
    }

    #[test]
    fn stratum_notifications_and_results_come_from_the_pool() {
        let notify =
            br#"{"id":null,"method":"mining.notify","params":["1","a","b","c",[],"2","3","4",true]}
"#;
        assert_eq!(tcp(notify), Some(Server));
        let diff = br#"{"id":null,"method":"mining.set_difficulty","params":[8]}"#;
        assert_eq!(tcp(diff), Some(Server));
        let subscribed =
            br#"{"id":1,"result":[[["mining.notify","ae6812eb"]],"08000002",4],"error":null}"#;
        assert_eq!(tcp(subscribed), Some(Server));
        let job = br#"{"jsonrpc":"2.0","method":"job","params":{"blob":"0707","job_id":"1","target":"b88d0600"}}"#;
        assert_eq!(tcp(job), Some(Server));
    }

    #[test]
    fn miner_requests_come_from_the_client() {
        let subscribe = br#"{"id":1,"method":"mining.subscribe","params":["cgminer/4.9"]}"#;
        assert_eq!(tcp(subscribe), Some(Client));
        let submit = br#"{"id":4,"method":"mining.submit","params":["w","j","00","5c","1e"]}"#;
        assert_eq!(tcp(submit), Some(Client));
        let login = br#"{"id":1,"jsonrpc":"2.0","method":"login","params":{"login":"w","pass":"x","agent":"XMRig/6"}}"#;
        assert_eq!(tcp(login), Some(Client));
    }

    #[test]
    fn generic_json_rpc_results_are_the_servers_and_requests_the_clients() {
        assert_eq!(
            tcp(br#"{"id":7,"result":"0x10","jsonrpc":"2.0"}"#),
            Some(Server)
        );
        assert_eq!(tcp(br#"{"id":7,"error":{"code":-1}}"#), Some(Server));
        assert_eq!(
            tcp(br#"{"id":7,"method":"eth_blockNumber","params":[]}"#),
            Some(Client)
        );
        assert_eq!(
            tcp(br#"{"id":3,"method":"client.reconnect","params":[]}"#),
            Some(Server)
        );
        assert_eq!(
            tcp(br#"{"method":"ping"}"#),
            None,
            "a notification says nothing"
        );
        assert_eq!(tcp(br#"{"id":7}"#), None);
        assert_eq!(tcp(b"{not json"), None);
    }

    #[test]
    fn tls_http_and_dns_say_who_spoke() {
        assert_eq!(tcp(&[0x16, 3, 1, 0, 0x40, 1, 0, 0, 0x3c]), Some(Client));
        assert_eq!(tcp(&[0x16, 3, 3, 0, 0x40, 2, 0, 0, 0x3c]), Some(Server));
        assert_eq!(tcp(&[0x17, 3, 3, 0, 0x40, 9]), None, "application data");
        assert_eq!(tcp(&[0x16, 3, 3, 0]), None, "cut before the type");
        assert_eq!(tcp(b"HTTP/1.1 200 OK\r\n"), Some(Server));
        assert_eq!(tcp(b"POST / HTTP/1.1\r\n"), Some(Client));
        let mut query = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        assert_eq!(speaker(&query, Transport::Udp, true), Some(Client));
        query[2] |= 0x80;
        assert_eq!(speaker(&query, Transport::Udp, true), Some(Server));
        let mut tcp_dns = vec![0, 12];
        tcp_dns.extend_from_slice(&query);
        assert_eq!(speaker(&tcp_dns, Transport::Tcp, true), Some(Server));
        assert_eq!(
            speaker(&query[..5], Transport::Udp, true),
            None,
            "cut header"
        );
    }

    #[test]
    fn symmetric_or_unknown_payloads_say_nothing() {
        assert_eq!(tcp(b"SSH-2.0-OpenSSH_9.6\r\n"), None);
        assert_eq!(tcp(&[0xf9, 0xbe, 0xb4, 0xd9, b'v', b'e', b'r']), None);
        assert_eq!(tcp(b""), None);
        assert_eq!(
            speaker(b"{\"id\":1,\"result\":1}", Transport::Udp, false),
            None
        );
    }

    #[test]
    fn hostile_bytes_never_panic() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let n = rng.usize(0..64);
            let mut b: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
            if rng.bool() && !b.is_empty() {
                b[0] = b'{';
            }
            for t in [Transport::Tcp, Transport::Udp] {
                let _ = speaker(&b, t, rng.bool());
            }
        }
    }
}
