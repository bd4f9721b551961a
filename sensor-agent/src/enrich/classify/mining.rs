//! Miner protocols: JSON-RPC lines (stratum v1, CryptoNote/XMRig, getwork, getblocktemplate,
//! ethproxy) and the getwork-era HTTP headers.
//!
//! JSON is parsed, never grepped: a payload is split into JSON texts (newline-delimited as
//! stratum sends them, or one object per HTTP body, pretty-printed or not), each parsed by
//! serde_json from at most [`MAX_JSON`] bytes, and only the top-level `method` member or the
//! shape of a server reply is looked at. A text cut at the end of the payload (or at the
//! [`MAX_JSON`] cap) is *repaired*: cut back to the last complete member and closed, then parsed
//! the same way, so a cut object is judged only by members that arrived whole and a method name
//! inside a string value is never mistaken for a method.
//!
//! Sources for the formats: the stratum v1 method list (slush pool / Braiins documentation,
//! `mining.*` and `client.*`), XMRig's pool protocol (`login` with `login`/`pass`/`agent`,
//! `job` with `blob`/`target`/`job_id`, `submit` with `job_id`/`nonce`/`result`, `keepalived`),
//! Bitcoin's getwork (BIP-less, bitcoind < 0.10) and getblocktemplate (BIP 22/23), and the
//! ethproxy dialect (`eth_submitLogin`, `eth_getWork`, `eth_submitWork`, `eth_submitHashrate`).

use base64::Engine as _;
use serde_json::{Map, Value};

use super::{
    clean_text, coin, login_hash, Direction, Identification, Kind, MAX_AGENT_CHARS, MAX_JSON,
};

/// At most this many JSON texts are looked at per payload.
const MAX_MESSAGES: usize = 64;
/// At most this many bytes of JSON are handed to the parser per payload.
const PARSE_BUDGET: usize = 64 * 1024;
/// HTTP heads are read from at most this many bytes.
const MAX_HTTP_HEAD: usize = 8 * 1024;
/// Nesting deeper than this is not repaired (serde_json itself stops at 128).
const MAX_REPAIR_DEPTH: usize = 64;

/// Stratum v1 methods a miner sends.
const STRATUM_CLIENT: &[&str] = &[
    "mining.subscribe",
    "mining.authorize",
    "mining.submit",
    "mining.extranonce.subscribe",
    "mining.get_transactions",
    "mining.configure",
    "mining.suggest_difficulty",
    "mining.suggest_target",
];

/// Stratum v1 methods a pool sends.
const STRATUM_SERVER: &[&str] = &[
    "mining.notify",
    "mining.set_difficulty",
    "mining.set_extranonce",
    "mining.set_version_mask",
    "client.reconnect",
    "client.show_message",
    "client.get_version",
];

/// HTTP header names that only mining software sends (case-insensitive): `X-Stratum` (a pool
/// announcing its stratum URL), `X-Mining-Extensions` and `X-Mining-Hashrate` (getwork miners),
/// `X-Long-Polling` and `X-Roll-NTime` (getwork pools).
const MINING_HEADERS: &[&str] = &[
    "X-Stratum",
    "X-Mining-Extensions",
    "X-Mining-Hashrate",
    "X-Long-Polling",
    "X-Roll-NTime",
];

pub(super) const HTTP_METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"DELETE ",
];

/// Classifies a TCP payload as a miner protocol message.
///
/// `known` is the protocol already identified in the flow: replies that are ambiguous on their
/// own (an ethproxy work package is just an array of hashes) only count after it.
pub(super) fn classify(
    payload: &[u8],
    dir: Direction,
    known: Option<&'static str>,
) -> Option<Identification> {
    if is_http(payload) {
        return http(payload, dir, known);
    }
    json_messages(payload, dir, known)
}

fn is_http(p: &[u8]) -> bool {
    p.starts_with(b"HTTP/1.") || HTTP_METHODS.iter().any(|m| p.starts_with(m))
}

/// An HTTP request or response: mining headers, and the JSON body when it is in this payload.
fn http(payload: &[u8], dir: Direction, known: Option<&'static str>) -> Option<Identification> {
    let is_response = payload.starts_with(b"HTTP/");
    let window = &payload[..payload.len().min(MAX_HTTP_HEAD)];
    let (head, body) = match find(window, b"\r\n\r\n") {
        Some(at) => (&window[..at], payload.get(at + 4..)),
        // The head goes on past this payload (or past the cap): read the lines that are here.
        None => (window, None),
    };
    let mut header = None;
    let mut agent = None;
    let mut login = None;
    for line in head.split(|&b| b == b'\n').skip(1) {
        let line = trim(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = trim(&line[..colon]);
        let value = trim(&line[colon + 1..]);
        if let Some(h) = MINING_HEADERS
            .iter()
            .find(|h| h.as_bytes().eq_ignore_ascii_case(name))
        {
            header.get_or_insert(*h);
        } else if name.eq_ignore_ascii_case(b"User-Agent") && !is_response {
            agent = Some(clean_text(
                &String::from_utf8_lossy(&value[..value.len().min(4 * MAX_AGENT_CHARS)]),
                MAX_AGENT_CHARS,
            ));
        } else if name.eq_ignore_ascii_case(b"Authorization") && !is_response {
            login = basic_auth_user(value).map(|u| login_hash(&u));
        }
    }
    let from_body = body.and_then(|b| json_messages(b, dir, known));
    let mut id = match (from_body, header) {
        (Some(id), _) => id,
        (None, Some(h)) => {
            let mut id = Identification::new(
                Kind::MiningProtocol,
                "http-stratum",
                format!("http header {h}"),
                dir,
            );
            // A pool answering with these headers says it is a pool.
            id.confirmed_by_server = is_response;
            id
        }
        (None, None) => return None,
    };
    if header.is_some() && is_response {
        id.confirmed_by_server = true;
    }
    if id.agent.is_none() {
        id.agent = agent;
    }
    if id.login_sha256.is_none() {
        id.login_sha256 = login;
    }
    Some(id)
}

/// The user name of an `Authorization: Basic` value (getwork miners put the worker there).
fn basic_auth_user(value: &[u8]) -> Option<String> {
    let v = value.get(..6)?;
    if !v.eq_ignore_ascii_case(b"basic ") || value.len() > 1024 {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(trim(&value[6..]))
        .ok()?;
    let user = decoded.split(|&b| b == b':').next()?;
    if user.is_empty() {
        return None;
    }
    Some(String::from_utf8_lossy(user).into_owned())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn trim(mut b: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = b {
        if first.is_ascii_whitespace() {
            b = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = b {
        if last.is_ascii_whitespace() {
            b = rest;
        } else {
            break;
        }
    }
    b
}

/// Index just past the next newline at or after `from` (or the end).
fn next_line(data: &[u8], from: usize) -> usize {
    match data
        .get(from..)
        .and_then(|d| d.iter().position(|&b| b == b'\n'))
    {
        Some(i) => from + i + 1,
        None => data.len(),
    }
}

/// Parses the JSON texts of a payload and returns the best identification among them, with what
/// the others add (a server payload often carries a subscription result, then set_difficulty
/// and notify).
pub(super) fn json_messages(
    data: &[u8],
    dir: Direction,
    known: Option<&'static str>,
) -> Option<Identification> {
    let mut best: Option<(u8, Identification)> = None;
    let mut pos = 0;
    let mut budget = PARSE_BUDGET;
    let mut count = 0;
    while pos < data.len() && count < MAX_MESSAGES && budget > 0 {
        if data[pos].is_ascii_whitespace() {
            pos += 1;
            continue;
        }
        if data[pos] != b'{' {
            // Not the start of a JSON object (a line cut by the packet boundary, or not JSON).
            pos = next_line(data, pos);
            continue;
        }
        count += 1;
        let end = data.len().min(pos + MAX_JSON);
        let window = &data[pos..end];
        let mut stream = serde_json::Deserializer::from_slice(window).into_iter::<Value>();
        let (value, next) = match stream.next() {
            Some(Ok(v)) => {
                let used = stream.byte_offset().max(1);
                budget = budget.saturating_sub(used);
                (Some(v), pos + used)
            }
            Some(Err(e)) if e.is_eof() => {
                // Cut by the end of the payload or by the cap: judge the members that are whole.
                budget = budget.saturating_sub(window.len());
                (repair(window), next_line(data, end))
            }
            _ => {
                budget = budget.saturating_sub(window.len());
                (None, next_line(data, pos))
            }
        };
        pos = next;
        let Some(Value::Object(obj)) = value else {
            continue;
        };
        let Some((rank, id)) = rules(&obj, dir, known) else {
            continue;
        };
        match &mut best {
            None => best = Some((rank, id)),
            Some((best_rank, best_id)) => {
                if rank > *best_rank {
                    let mut id = id;
                    id.absorb(best_id);
                    *best_rank = rank;
                    *best_id = id;
                } else {
                    best_id.absorb(&id);
                }
            }
        }
    }
    best.map(|(_, id)| id)
}

/// The unfinished JSON line at the end of `data`, if it is worth keeping for the next packet:
/// it starts an object, is incomplete (not a complete text, not a syntax error) and fits `cap`.
pub(super) fn partial_tail(data: &[u8], cap: usize) -> Option<&[u8]> {
    let start = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let tail = data.get(start..)?;
    let first = tail.iter().position(|b| !b.is_ascii_whitespace())?;
    let tail = &tail[first..];
    if tail.first() != Some(&b'{') || tail.len() > cap {
        return None;
    }
    match serde_json::from_slice::<serde::de::IgnoredAny>(tail) {
        Err(e) if e.is_eof() => Some(tail),
        _ => None,
    }
}

/// Closes a JSON object cut short: keeps the prefix up to the last point where every open
/// member is complete (just after `{`, `[`, a closing bracket, or just before a `,`), appends
/// the missing closing brackets and parses that. A cut string, number or key is dropped with
/// everything after the last such point. Returns `None` for a complete text (the caller parses
/// those), for nesting deeper than [`MAX_REPAIR_DEPTH`] or for what is not JSON.
///
/// Every change of nesting is itself such a point, so the open brackets at the end of the input
/// are exactly the ones open at the last point.
fn repair(text: &[u8]) -> Option<Value> {
    let mut closers: Vec<u8> = Vec::new();
    let mut in_string = false;
    let mut escaped = false;
    let mut safe = 0;
    for (i, &b) in text.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                if closers.len() >= MAX_REPAIR_DEPTH {
                    return None;
                }
                closers.push(if b == b'{' { b'}' } else { b']' });
                safe = i + 1;
            }
            b'}' | b']' => {
                if closers.pop() != Some(b) || closers.is_empty() {
                    return None;
                }
                safe = i + 1;
            }
            b',' => safe = i,
            _ => {}
        }
    }
    if closers.is_empty() {
        return None;
    }
    let mut fixed = Vec::with_capacity(safe + closers.len());
    fixed.extend_from_slice(text.get(..safe)?);
    fixed.extend(closers.iter().rev());
    serde_json::from_slice(&fixed).ok()
}

/// Rank 2: a mining method; rank 1: a server reply recognised by its shape.
fn rules(
    obj: &Map<String, Value>,
    dir: Direction,
    known: Option<&'static str>,
) -> Option<(u8, Identification)> {
    match obj.get("method") {
        Some(Value::String(method)) => method_rule(method, obj, dir).map(|id| (2, id)),
        // A method that is not a string is not a mining method; neither is a reply then.
        Some(_) => None,
        None => reply_rule(obj, dir, known).map(|id| (1, id)),
    }
}

fn mining(protocol: &'static str, signature: &str, dir: Direction) -> Identification {
    Identification::new(Kind::MiningProtocol, protocol, signature, dir)
}

fn str_of(v: Option<&Value>) -> Option<&str> {
    v.and_then(Value::as_str)
}

fn agent_of(v: Option<&Value>) -> Option<String> {
    str_of(v)
        .map(|s| clean_text(s, MAX_AGENT_CHARS))
        .filter(|s| !s.is_empty())
}

fn login_of(v: Option<&Value>) -> Option<String> {
    str_of(v).filter(|s| !s.is_empty()).map(login_hash)
}

fn has_str(obj: &Map<String, Value>, key: &str) -> bool {
    obj.get(key).is_some_and(Value::is_string)
}

fn method_rule(method: &str, obj: &Map<String, Value>, dir: Direction) -> Option<Identification> {
    let params = obj.get("params");
    let first = params.and_then(Value::as_array).and_then(|a| a.first());
    let pobj = params.and_then(Value::as_object);
    if let Some(m) = STRATUM_CLIENT.iter().find(|m| **m == method) {
        let mut id = mining("stratum", m, dir);
        match method {
            "mining.subscribe" => {
                id.agent = agent_of(first);
                // EthereumStratum/1.0.0 (NiceHash's dialect) is spoken by Ethash-family miners.
                let dialect = params
                    .and_then(Value::as_array)
                    .and_then(|a| a.get(1))
                    .and_then(Value::as_str);
                if dialect.is_some_and(|d| d.starts_with("EthereumStratum/")) {
                    id.name_coin(
                        "ethash-family",
                        "stratum dialect EthereumStratum/1.0.0 (Ethash-family miners)",
                    );
                }
            }
            "mining.authorize" | "mining.submit" => {
                id.login_sha256 = login_of(first);
                id = id.with_coin(str_of(first).and_then(coin::from_login));
            }
            _ => {}
        }
        return Some(id);
    }
    if let Some(m) = STRATUM_SERVER.iter().find(|m| **m == method) {
        let mut id = mining("stratum", m, dir);
        id.confirmed_by_server = true;
        return Some(id);
    }
    let id = match method {
        // XMRig: {"method":"login","params":{"login":..,"pass":..,"agent":..,"algo":[..]}};
        // "pass" optional. CryptoNote is spoken for several coins: the wallet or a single
        // algorithm names one, the protocol does not.
        "login" => {
            let p = pobj?;
            let login = p.get("login").and_then(Value::as_str)?;
            let mut id = mining("cryptonote", "login", dir);
            id.login_sha256 = (!login.is_empty()).then(|| login_hash(login));
            id.agent = agent_of(p.get("agent"));
            id.with_coin(coin::from_login(login).or_else(|| single_algorithm(p.get("algo"))))
        }
        "submit" => {
            let p = pobj?;
            if !(has_str(p, "job_id") && has_str(p, "nonce")) {
                return None;
            }
            mining("cryptonote", "submit", dir)
        }
        "keepalived" => mining("cryptonote", "keepalived", dir),
        "getjob" => {
            pobj?;
            mining("cryptonote", "getjob", dir)
        }
        "job" => {
            let p = pobj?;
            if !(has_str(p, "blob") && has_str(p, "target")) {
                return None;
            }
            let mut id = mining("cryptonote", "job", dir).with_coin(job_algorithm(p));
            id.confirmed_by_server = true;
            id
        }
        "getwork" => mining("getwork", "getwork", dir),
        // monerod's mining RPCs (XMRig --daemon, p2pool): a template for a wallet address.
        // The wallet may be cut off by the payload copy; monerod's own method names are
        // enough with an object of parameters (bitcoind's getblocktemplate takes an array).
        "get_block_template" | "get_block_template_blob" if pobj.is_some() => {
            let wallet = pobj.and_then(|p| str_of(p.get("wallet_address")));
            let mut id = mining("cryptonote-daemon", method, dir);
            id.login_sha256 = wallet.filter(|w| !w.is_empty()).map(login_hash);
            id.with_coin(wallet.and_then(coin::from_address))
        }
        "getblocktemplate" if pobj.is_some_and(|p| has_str(p, "wallet_address")) => {
            let wallet = pobj.and_then(|p| str_of(p.get("wallet_address")));
            let mut id = mining("cryptonote-daemon", method, dir);
            id.login_sha256 = wallet.filter(|w| !w.is_empty()).map(login_hash);
            id.with_coin(wallet.and_then(coin::from_address))
        }
        "submit_block" | "get_miner_data" | "calc_pow" => mining("cryptonote-daemon", method, dir),
        // bitcoind-family (BIP 22/23); a coin's own rule names it (Litecoin's "mweb").
        "getblocktemplate" | "submitblock" => {
            mining("getblocktemplate", method, dir).with_coin(rules_coin(first))
        }
        "eth_submitLogin" | "eth_getWork" | "eth_submitWork" | "eth_submitHashrate" => {
            let mut id = mining("ethproxy", method, dir);
            if method == "eth_submitLogin" {
                id.login_sha256 = login_of(first);
                id = id.with_coin(str_of(first).and_then(coin::from_login));
            }
            if id.coin.is_none() {
                id.name_coin(
                    "ethash-family",
                    "ethproxy dialect (eth_getWork/eth_submitWork: Ethash-family miners)",
                );
            }
            id
        }
        _ => return None,
    };
    Some(id)
}

/// The coin of a login's `algo` list when it holds exactly one algorithm (XMRig lists every
/// algorithm it supports unless told one).
fn single_algorithm(algo: Option<&Value>) -> Option<coin::CoinEvidence> {
    match algo? {
        Value::String(a) => coin::from_algorithm(a),
        Value::Array(list) if list.len() == 1 => coin::from_algorithm(list[0].as_str()?),
        _ => None,
    }
    .map(|mut e| {
        e.reason = format!("login {}", e.reason);
        e
    })
}

/// The coin of a CryptoNote job's `algo` (the algorithm the pool wants hashed now).
fn job_algorithm(job: &Map<String, Value>) -> Option<coin::CoinEvidence> {
    str_of(job.get("algo"))
        .and_then(coin::from_algorithm)
        .map(|mut e| {
            e.reason = format!("job {}", e.reason);
            e
        })
}

/// Litecoin's getblocktemplate rule `mweb` (its MimbleWimble extension block), in a request's
/// `rules` or a result's.
fn rules_coin(holder: Option<&Value>) -> Option<coin::CoinEvidence> {
    let rules = holder?.as_object()?.get("rules")?.as_array()?;
    rules
        .iter()
        .take(64)
        .filter_map(Value::as_str)
        .any(|r| r.trim_start_matches('!') == "mweb")
        .then(|| coin::CoinEvidence {
            coin: "litecoin",
            reason: "getblocktemplate rule mweb (Litecoin's MimbleWimble extension block)".into(),
        })
}

/// Server replies recognised by their shape alone (no `method` member).
fn reply_rule(
    obj: &Map<String, Value>,
    dir: Direction,
    known: Option<&'static str>,
) -> Option<Identification> {
    let confirmed = |mut id: Identification| {
        id.confirmed_by_server = true;
        Some(id)
    };
    match obj.get("result")? {
        Value::Object(r) => {
            // CryptoNote login result: {"id":..,"job":{"blob":..,"job_id":..,"target":..},..}
            if let Some(job) = r.get("job").and_then(Value::as_object) {
                if has_str(job, "blob") && has_str(job, "target") {
                    return confirmed(
                        mining("cryptonote", "login result job", dir).with_coin(job_algorithm(job)),
                    );
                }
            }
            // monerod's get_block_template result; its hashing blob comes first (members are
            // sorted) and the template blob after it is often cut by the payload copy.
            if has_str(r, "blockhashing_blob")
                || (has_str(r, "blocktemplate_blob") && r.contains_key("difficulty"))
            {
                return confirmed(mining(
                    "cryptonote-daemon",
                    "get_block_template result",
                    dir,
                ));
            }
            // getwork result: {"data":..,"target":..,"midstate":..,"hash1":..}
            if has_str(r, "data")
                && has_str(r, "target")
                && (r.contains_key("midstate") || r.contains_key("hash1"))
            {
                return confirmed(mining("getwork", "getwork result", dir));
            }
            // getblocktemplate result (BIP 22).
            if r.contains_key("previousblockhash")
                && r.contains_key("bits")
                && (r.contains_key("coinbasevalue") || r.contains_key("coinbasetxn"))
            {
                return confirmed(
                    mining("getblocktemplate", "getblocktemplate result", dir)
                        .with_coin(rules_coin(obj.get("result"))),
                );
            }
            None
        }
        Value::Array(a) => {
            if is_subscribe_result(a) {
                return confirmed(mining("stratum", "mining.subscribe result", dir));
            }
            if known == Some("ethproxy") && is_eth_work(a) {
                let mut id = mining("ethproxy", "eth_getWork result", dir);
                id.name_coin(
                    "ethash-family",
                    "ethproxy dialect (eth_getWork result: Ethash-family work)",
                );
                return confirmed(id);
            }
            None
        }
        _ => None,
    }
}

/// Stratum subscription result: `[[["mining.notify", id], ["mining.set_difficulty", id]],
/// extranonce1, extranonce2_size]`, or `[["mining.notify", id, version], extranonce]`
/// (EthereumStratum/1.0.0).
fn is_subscribe_result(a: &[Value]) -> bool {
    let is_subscription = |v: &Value| {
        v.as_array()
            .and_then(|t| t.first())
            .and_then(Value::as_str)
            .is_some_and(|m| m == "mining.notify" || m == "mining.set_difficulty")
    };
    if !(2..=3).contains(&a.len()) || !a[1].is_string() {
        return false;
    }
    match &a[0] {
        Value::Array(subs) => {
            is_subscription(&a[0]) || (!subs.is_empty() && subs.iter().take(8).any(is_subscription))
        }
        _ => false,
    }
}

/// An ethproxy work package: `["0x<header hash>", "0x<seed hash>", "0x<target>"(, block)]`.
fn is_eth_work(a: &[Value]) -> bool {
    let hash = |v: &Value, exact: bool| {
        v.as_str().is_some_and(|s| {
            s.len() <= 66
                && (!exact || s.len() == 66)
                && s.len() > 2
                && s.starts_with("0x")
                && s[2..].bytes().all(|b| b.is_ascii_hexdigit())
        })
    };
    (3..=4).contains(&a.len()) && hash(&a[0], true) && hash(&a[1], true) && hash(&a[2], false)
}

#[cfg(test)]
mod tests {
    use super::super::{classify, login_hash, Direction, Identification, Kind, Transport};
    use super::*;
    use Direction::{ClientToServer as C2S, ServerToClient as S2C};

    fn tcp(p: &[u8], dir: Direction) -> Option<Identification> {
        classify(p, dir, Transport::Tcp)
    }

    fn expect(p: &[u8], dir: Direction, protocol: &str, signature: &str) -> Identification {
        let id = tcp(p, dir).unwrap_or_else(|| {
            panic!("not identified: {}", String::from_utf8_lossy(p));
        });
        assert_eq!(id.kind, Kind::MiningProtocol);
        assert_eq!(id.protocol, protocol, "{}", String::from_utf8_lossy(p));
        assert_eq!(id.signature, signature, "{}", String::from_utf8_lossy(p));
        assert_eq!(id.role, dir);
        id
    }

    fn none(p: &[u8]) {
        for dir in [C2S, S2C] {
            assert_eq!(tcp(p, dir), None, "{}", String::from_utf8_lossy(p));
        }
    }

    #[test]
    fn stratum_subscribe_extracts_agent() {
        let p =
            b"{\"id\": 1, \"method\": \"mining.subscribe\", \"params\": [\"cgminer/4.10.0\"]}\n";
        let id = expect(p, C2S, "stratum", "mining.subscribe");
        assert_eq!(id.agent.as_deref(), Some("cgminer/4.10.0"));
        assert_eq!(id.coin, None);
        assert!(!id.confirmed_by_server);
        assert_eq!(id.login_sha256, None);
    }

    #[test]
    fn stratum_authorize_hashes_worker() {
        let p = b"{\"params\": [\"bc1qworker.rig7\", \"x\"], \"id\": 2, \"method\": \"mining.authorize\"}\n";
        let id = expect(p, C2S, "stratum", "mining.authorize");
        assert_eq!(id.login_sha256, Some(login_hash("bc1qworker.rig7")));
        // The clear worker name appears nowhere in the identification.
        assert!(!format!("{id:?}").contains("bc1qworker"));
    }

    #[test]
    fn every_stratum_method_is_recognised() {
        for m in STRATUM_CLIENT {
            let p = format!("{{\"id\":3,\"method\":\"{m}\",\"params\":[]}}\n");
            let id = expect(p.as_bytes(), C2S, "stratum", m);
            assert!(!id.confirmed_by_server);
        }
        for m in STRATUM_SERVER {
            let p = format!("{{\"id\":null,\"method\":\"{m}\",\"params\":[]}}\n");
            let id = expect(p.as_bytes(), S2C, "stratum", m);
            assert!(id.confirmed_by_server, "{m}");
        }
    }

    #[test]
    fn stratum_joined_mid_stream_server_only() {
        // The flow is joined in the middle of a notify line: the first segment is the tail of
        // a line, then whole server lines follow.
        let p = b"0000000000000000\",true],\"id\":null}\n\
{\"id\":null,\"method\":\"mining.set_difficulty\",\"params\":[65536]}\n\
{\"id\":null,\"method\":\"mining.notify\",\"params\":[\"1f2e\",\"4d16b6f85af6e2198f44ae2a6de67f78487ae5611b77c6c0440b921e00000000\",\"01000000010000\",\"0a2f\",[],\"20000000\",\"1705ae3a\",\"65b1d2e0\",false]}\n";
        let id = expect(p, S2C, "stratum", "mining.set_difficulty");
        assert!(id.confirmed_by_server);
    }

    #[test]
    fn stratum_subscription_result_confirms() {
        let p = b"{\"result\":[[[\"mining.notify\",\"1\"],[\"mining.set_difficulty\",\"2\"]],\"00b61738\",4],\"error\":null,\"id\":0}\n";
        let id = expect(p, S2C, "stratum", "mining.subscribe result");
        assert!(id.confirmed_by_server);
        // EthereumStratum/1.0.0 shape.
        let p = b"{\"id\":1,\"result\":[[\"mining.notify\",\"ae6812eb4cd7735a302a8a9dd95cf71f\",\"EthereumStratum/1.0.0\"],\"080c\"],\"error\":null}\n";
        expect(p, S2C, "stratum", "mining.subscribe result");
        // A method line outranks the reply in the same payload, and keeps the confirmation.
        let p = b"{\"result\":[[[\"mining.notify\",\"1\"]],\"00\",4],\"id\":0}\n{\"method\":\"mining.notify\",\"params\":[\"a\"]}\n";
        let id = expect(p, S2C, "stratum", "mining.notify");
        assert!(id.confirmed_by_server);
    }

    const WALLET: &str = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A";

    #[test]
    fn xmrig_login_with_pass_hashes_login_and_keeps_agent() {
        let p = format!(
            "{{\"id\":1,\"jsonrpc\":\"2.0\",\"method\":\"login\",\"params\":{{\"login\":\"{WALLET}\",\"pass\":\"x\",\"agent\":\"XMRig/6.21.0 (Linux x86_64) libuv/1.44.2 gcc/12.2.0\",\"algo\":[\"rx/0\",\"cn/r\"]}}}}\n"
        );
        let id = expect(p.as_bytes(), C2S, "cryptonote", "login");
        assert_eq!(id.coin, Some("monero"));
        assert_eq!(id.login_sha256, Some(login_hash(WALLET)));
        assert_eq!(
            id.agent.as_deref(),
            Some("XMRig/6.21.0 (Linux x86_64) libuv/1.44.2 gcc/12.2.0")
        );
        assert!(!format!("{id:?}").contains(WALLET));
    }

    #[test]
    fn xmrig_login_without_pass() {
        let p = format!(
            "{{\"id\":1,\"jsonrpc\":\"2.0\",\"method\":\"login\",\"params\":{{\"login\":\"{WALLET}\",\"agent\":\"XMRig/6.21.0\"}}}}\n"
        );
        let id = expect(p.as_bytes(), C2S, "cryptonote", "login");
        assert_eq!(id.login_sha256, Some(login_hash(WALLET)));
        assert_eq!(id.agent.as_deref(), Some("XMRig/6.21.0"));
        // Without an agent either.
        let p = format!("{{\"id\":1,\"method\":\"login\",\"params\":{{\"login\":\"{WALLET}\"}}}}");
        let id = expect(p.as_bytes(), C2S, "cryptonote", "login");
        assert_eq!(id.agent, None);
    }

    #[test]
    fn the_coin_comes_from_the_wallet_or_a_single_algorithm_never_the_protocol() {
        // XMRig told one algorithm, with a login that is no wallet (a pool account name).
        let p = b"{\"id\":1,\"method\":\"login\",\"params\":{\"login\":\"rig-account\",\"pass\":\"x\",\"algo\":[\"rx/0\"]}}\n";
        let id = expect(p, C2S, "cryptonote", "login");
        assert_eq!(id.coin, Some("monero"));
        assert!(id
            .coin_reason
            .as_deref()
            .is_some_and(|r| r.starts_with("login algorithm rx/0")));
        // Many algorithms offered, no wallet: unknown.
        let p = b"{\"id\":1,\"method\":\"login\",\"params\":{\"login\":\"rig-account\",\"algo\":[\"rx/0\",\"cn/r\",\"kawpow\"]}}\n";
        assert_eq!(expect(p, C2S, "cryptonote", "login").coin, None);
        // The Monero wallet decides, whatever the algorithm list.
        let p = format!(
            "{{\"id\":1,\"method\":\"login\",\"params\":{{\"login\":\"{WALLET}.rig1\"}}}}\n"
        );
        let id = expect(p.as_bytes(), C2S, "cryptonote", "login");
        assert_eq!(id.coin, Some("monero"));
        assert!(id
            .coin_reason
            .as_deref()
            .is_some_and(|r| r.contains("Monero standard address, Keccak checksum valid")));
        // A Litecoin stratum login (bech32 wallet, worker suffix).
        let ltc = {
            let hrp = bech32::Hrp::parse("ltc").expect("hrp");
            bech32::segwit::encode(hrp, bech32::Fe32::Q, &[0x42; 20]).expect("address")
        };
        let p = format!(
            "{{\"params\":[\"{ltc}.worker1\",\"x\"],\"id\":2,\"method\":\"mining.authorize\"}}\n"
        );
        let id = expect(p.as_bytes(), C2S, "stratum", "mining.authorize");
        assert_eq!(id.coin, Some("litecoin"));
        // The same login with one character changed: the checksum fails, nothing is named.
        let bad = format!("{}x", &ltc[..ltc.len() - 1]);
        let p = format!(
            "{{\"params\":[\"{bad}.worker1\",\"x\"],\"id\":2,\"method\":\"mining.authorize\"}}\n"
        );
        assert_eq!(
            expect(p.as_bytes(), C2S, "stratum", "mining.authorize").coin,
            None
        );
        // A plain worker name: unknown.
        let p = b"{\"params\":[\"alice.rig\",\"x\"],\"id\":2,\"method\":\"mining.authorize\"}\n";
        assert_eq!(expect(p, C2S, "stratum", "mining.authorize").coin, None);
        // EthereumStratum/1.0.0 names the family, not a coin.
        let p = b"{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[\"lolMiner/1.88\",\"EthereumStratum/1.0.0\"]}\n";
        assert_eq!(
            expect(p, C2S, "stratum", "mining.subscribe").coin,
            Some("ethash-family")
        );
    }

    #[test]
    fn daemon_mining_rpcs_and_their_rules() {
        // monerod's get_block_template (XMRig --daemon, p2pool) and its result.
        let p = format!("{{\"jsonrpc\":\"2.0\",\"id\":\"0\",\"method\":\"get_block_template\",\"params\":{{\"wallet_address\":\"{WALLET}\",\"reserve_size\":60}}}}");
        let id = expect(p.as_bytes(), C2S, "cryptonote-daemon", "get_block_template");
        assert_eq!(id.coin, Some("monero"));
        assert_eq!(id.login_sha256, Some(login_hash(WALLET)));
        let p = b"{\"id\":\"0\",\"jsonrpc\":\"2.0\",\"result\":{\"blockhashing_blob\":\"1010\",\"blocktemplate_blob\":\"1010f4\",\"difficulty\":1,\"expected_reward\":600000000000,\"height\":5,\"prev_hash\":\"ab\",\"reserved_offset\":130,\"status\":\"OK\"}}";
        let id = expect(p, S2C, "cryptonote-daemon", "get_block_template result");
        assert!(id.confirmed_by_server);
        // A getblocktemplate with Litecoin's mweb rule, and a result carrying it.
        let p = b"{\"id\":1,\"method\":\"getblocktemplate\",\"params\":[{\"rules\":[\"mweb\",\"segwit\"]}]}";
        let id = expect(p, C2S, "getblocktemplate", "getblocktemplate");
        assert_eq!(id.coin, Some("litecoin"));
        let p = b"{\"result\":{\"version\":536870912,\"rules\":[\"csv\",\"!segwit\",\"taproot\",\"!mweb\"],\"previousblockhash\":\"00\",\"transactions\":[],\"coinbasevalue\":625000000,\"bits\":\"207fffff\",\"height\":101},\"error\":null,\"id\":1}";
        let id = expect(p, S2C, "getblocktemplate", "getblocktemplate result");
        assert_eq!(id.coin, Some("litecoin"));
        // Bitcoin's rules name no coin of their own (other forks share them).
        let p = b"{\"id\":1,\"method\":\"getblocktemplate\",\"params\":[{\"rules\":[\"segwit\"]}]}";
        assert_eq!(
            expect(p, C2S, "getblocktemplate", "getblocktemplate").coin,
            None
        );
    }

    #[test]
    fn agent_is_cleaned_and_capped() {
        let long = "A".repeat(300);
        let p = format!(
            "{{\"method\":\"login\",\"params\":{{\"login\":\"w\",\"agent\":\"XM\\u001b[31mRig\\n/{long}\"}}}}\n"
        );
        let id = expect(p.as_bytes(), C2S, "cryptonote", "login");
        let agent = id.agent.unwrap();
        assert!(agent.starts_with("XM[31mRig/AAA"), "{agent}");
        assert_eq!(agent.chars().count(), MAX_AGENT_CHARS);
        assert!(!agent.chars().any(char::is_control));
    }

    #[test]
    fn cryptonote_submit_keepalive_and_server_messages() {
        let p = b"{\"id\":4,\"jsonrpc\":\"2.0\",\"method\":\"submit\",\"params\":{\"id\":\"3dce749b\",\"job_id\":\"x9pNUIWA\",\"nonce\":\"8d1e0000\",\"result\":\"a1b2c3\"}}\n";
        expect(p, C2S, "cryptonote", "submit");
        let p = b"{\"id\":5,\"jsonrpc\":\"2.0\",\"method\":\"keepalived\",\"params\":{\"id\":\"3dce749b\"}}\n";
        expect(p, C2S, "cryptonote", "keepalived");
        let p = b"{\"jsonrpc\":\"2.0\",\"method\":\"job\",\"params\":{\"blob\":\"0707c5e0dfdc05\",\"job_id\":\"RBcj\",\"target\":\"91fd0600\",\"id\":\"95fefd7e\"}}\n";
        let id = expect(p, S2C, "cryptonote", "job");
        assert!(id.confirmed_by_server);
        // CryptoNote is spoken for many coins: a job without its algorithm names none.
        assert_eq!(id.coin, None);
        let p = b"{\"jsonrpc\":\"2.0\",\"method\":\"job\",\"params\":{\"blob\":\"0707c5\",\"job_id\":\"RBcj\",\"target\":\"91fd0600\",\"algo\":\"rx/0\",\"height\":3000000}}\n";
        let id = expect(p, S2C, "cryptonote", "job");
        assert_eq!(id.coin, Some("monero"));
        assert_eq!(
            id.coin_reason.as_deref(),
            Some("job algorithm rx/0 (RandomX, used by monero)")
        );
        let p = b"{\"id\":1,\"jsonrpc\":\"2.0\",\"error\":null,\"result\":{\"id\":\"3dce\",\"job\":{\"blob\":\"0707\",\"job_id\":\"x9pN\",\"target\":\"711b0d00\"},\"status\":\"OK\"}}\n";
        let id = expect(p, S2C, "cryptonote", "login result job");
        assert!(id.confirmed_by_server);
    }

    #[test]
    fn cryptonote_words_without_their_shape_are_not_mining() {
        // "login", "submit", "job" are common method names elsewhere.
        none(b"{\"jsonrpc\":\"2.0\",\"method\":\"login\",\"params\":[\"alice\",\"secret\"],\"id\":1}\n");
        none(b"{\"jsonrpc\":\"2.0\",\"method\":\"login\",\"params\":{\"user\":\"alice\"},\"id\":1}\n");
        none(b"{\"method\":\"submit\",\"params\":{\"form\":\"contact\"},\"id\":2}\n");
        none(b"{\"method\":\"job\",\"params\":{\"name\":\"backup\",\"target\":\"/srv\"}}\n");
        none(b"{\"id\":1,\"result\":{\"job\":{\"name\":\"backup\"}}}\n");
    }

    #[test]
    fn getwork_and_getblocktemplate() {
        let p = b"POST / HTTP/1.1\r\nHost: pool.example:8332\r\nAuthorization: Basic d29ya2VyMTpwYXNz\r\nUser-Agent: cgminer/2.7.4\r\nContent-Type: application/json\r\nContent-Length: 44\r\n\r\n{\"method\": \"getwork\", \"params\": [], \"id\": 0}";
        let id = expect(p, C2S, "getwork", "getwork");
        // getwork served every bitcoind-family coin: it names none.
        assert_eq!(id.coin, None);
        assert_eq!(id.agent.as_deref(), Some("cgminer/2.7.4"));
        // d29ya2VyMTpwYXNz = "worker1:pass"
        assert_eq!(id.login_sha256, Some(login_hash("worker1")));
        // The body alone, as its own segment.
        expect(
            b"{\"method\": \"getwork\", \"params\": [], \"id\":0}\n",
            C2S,
            "getwork",
            "getwork",
        );
        expect(
            b"{\"id\": 0, \"method\": \"getblocktemplate\", \"params\": [{\"capabilities\": [\"coinbasetxn\", \"workid\"]}]}",
            C2S,
            "getblocktemplate",
            "getblocktemplate",
        );
        expect(
            b"{\"id\": 1, \"method\": \"submitblock\", \"params\": [\"0000002001\"]}\n",
            C2S,
            "getblocktemplate",
            "submitblock",
        );
        let p = b"{\"result\":{\"midstate\":\"aa\",\"data\":\"0000\",\"hash1\":\"00\",\"target\":\"ffff\"},\"error\":null,\"id\":0}\n";
        let id = expect(p, S2C, "getwork", "getwork result");
        assert!(id.confirmed_by_server);
        let p = b"{\"result\":{\"version\":536870912,\"previousblockhash\":\"00\",\"transactions\":[],\"coinbasevalue\":625000000,\"bits\":\"17034219\",\"height\":840000},\"error\":null,\"id\":1}\n";
        expect(p, S2C, "getblocktemplate", "getblocktemplate result");
    }

    #[test]
    fn pretty_printed_body_is_parsed() {
        let p = b"POST / HTTP/1.1\r\nContent-Type: application/json\r\n\r\n{\n  \"id\": 0,\n  \"method\": \"getwork\",\n  \"params\": []\n}\n";
        expect(p, C2S, "getwork", "getwork");
    }

    #[test]
    fn ethproxy() {
        let p = b"{\"worker\": \"rig1\", \"jsonrpc\": \"2.0\", \"params\": [\"0x5a0b54d5dc17e0aadc383d2db43b0a0d3e029c4c\", \"x\"], \"id\": 2, \"method\": \"eth_submitLogin\"}\n";
        let id = expect(p, C2S, "ethproxy", "eth_submitLogin");
        assert_eq!(id.coin, Some("ethereum"));
        assert_eq!(
            id.login_sha256,
            Some(login_hash("0x5a0b54d5dc17e0aadc383d2db43b0a0d3e029c4c"))
        );
        for m in ["eth_getWork", "eth_submitWork", "eth_submitHashrate"] {
            let p = format!("{{\"id\":5,\"jsonrpc\":\"2.0\",\"method\":\"{m}\",\"params\":[]}}\n");
            expect(p.as_bytes(), C2S, "ethproxy", m);
        }
        // A work package is only a work package after an ethproxy client was seen.
        let h = format!("0x{}", "ab".repeat(32));
        let p = format!(
            "{{\"id\":0,\"jsonrpc\":\"2.0\",\"result\":[\"{h}\",\"{h}\",\"0x00000000ffff\"]}}\n"
        );
        none(p.as_bytes());
        let id = classify_in(p.as_bytes(), S2C, Some("ethproxy")).unwrap();
        assert_eq!(id.signature, "eth_getWork result");
        assert!(id.confirmed_by_server);
    }

    fn classify_in(
        p: &[u8],
        dir: Direction,
        known: Option<&'static str>,
    ) -> Option<Identification> {
        super::classify(p, dir, known)
    }

    #[test]
    fn http_mining_headers() {
        let p = b"POST / HTTP/1.1\r\nHost: us1.bitminter.com:3333\r\nAuthorization: Basic Qmlnc2t5OjEyMw==\r\nx-mining-extensions: longpoll midstate rollntime submitold\r\nContent-Length: 235\r\nUser-Agent: bfgminer/5.2.0\r\n\r\n";
        let id = expect(p, C2S, "http-stratum", "http header X-Mining-Extensions");
        assert_eq!(id.agent.as_deref(), Some("bfgminer/5.2.0"));
        assert_eq!(id.login_sha256, Some(login_hash("Bigsky")));
        assert!(!id.confirmed_by_server);
        let p = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Stratum: stratum+tcp://pool.example:3333\r\nX-Long-Polling: /LP\r\nContent-Length: 10\r\n\r\n";
        let id = expect(p, S2C, "http-stratum", "http header X-Stratum");
        assert!(id.confirmed_by_server);
        // The head cut by the packet boundary: the lines that are here count.
        let p = b"GET / HTTP/1.1\r\nHost: x\r\nX-STRATUM: 1\r\nAcc";
        expect(p, C2S, "http-stratum", "http header X-Stratum");
    }

    #[test]
    fn plain_http_is_not_mining() {
        none(
            b"GET / HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n",
        );
        none(b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/html\r\nX-Strat: no\r\n\r\n<html></html>");
        // A header value that mentions stratum is not the header.
        none(b"GET /X-Stratum HTTP/1.1\r\nReferer: http://x/X-Stratum:\r\n\r\n");
        // JSON-RPC over HTTP with a generic method.
        none(b"POST / HTTP/1.1\r\nContent-Type: application/json\r\n\r\n{\"jsonrpc\":\"1.0\",\"id\":\"c\",\"method\":\"getblockchaininfo\",\"params\":[]}");
    }

    #[test]
    fn generic_json_rpc_is_not_mining() {
        none(b"{\"jsonrpc\":\"2.0\",\"method\":\"eth_blockNumber\",\"params\":[],\"id\":83}\n");
        none(b"{\"jsonrpc\":\"2.0\",\"id\":83,\"result\":\"0x4b7\"}\n");
        none(b"{\"method\":\"getinfo\",\"params\":[],\"id\":1}\n");
        none(b"{\"jsonrpc\":\"1.0\",\"id\":\"curltest\",\"method\":\"getblockchaininfo\",\"params\":[]}\n");
        none(b"{\"id\":0,\"result\":null,\"error\":[20,\"Parse error\",null]}\n");
        none(b"{\"result\":true,\"error\":null,\"id\":2}\n");
        none(b"{\"jsonrpc\":\"2.0\",\"method\":\"textDocument/didOpen\",\"params\":{\"textDocument\":{}}}\n");
        // An array of hashes (eth_getFilterChanges) is not a work package on its own.
        let h = format!("0x{}", "cd".repeat(32));
        none(format!("{{\"id\":1,\"result\":[\"{h}\",\"{h}\",\"{h}\"]}}\n").as_bytes());
    }

    #[test]
    fn method_names_inside_values_are_not_methods() {
        none(b"{\"jsonrpc\":\"2.0\",\"method\":\"log\",\"params\":[\"mining.subscribe\"],\"id\":1}\n");
        none(b"{\"msg\":\"{\\\"method\\\":\\\"mining.subscribe\\\"}\",\"id\":1}\n");
        none(b"{\"data\":{\"method\":\"mining.subscribe\",\"params\":[]}}\n");
        none(b"{\"doc\":\"send \\\"method\\\": \\\"login\\\" with params.login\",\"method\":\"help\"}\n");
        none(b"[{\"method\":\"mining.subscribe\"}]\n");
        none(b"{\"method\":[\"mining.subscribe\"]}\n");
        none(b"{\"method\":\"Mining.Subscribe\"}\n");
        // A method name in a cut string value.
        none(b"{\"id\":1,\"note\":\"\\\"method\\\":\\\"mining.subscribe\\\", \\\"params\\\": [");
        // Not JSON at all.
        none(b"say \"method\":\"mining.subscribe\" to the pool\n");
    }

    #[test]
    fn truncated_objects_are_judged_on_their_whole_members() {
        let id = expect(
            b"{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[\"cgminer/4.",
            C2S,
            "stratum",
            "mining.subscribe",
        );
        assert_eq!(id.agent, None);
        let id = expect(
            b"{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[\"cgminer/4.10.0\",\"dead",
            C2S,
            "stratum",
            "mining.subscribe",
        );
        assert_eq!(id.agent.as_deref(), Some("cgminer/4.10.0"));
        let p = format!(
            "{{\"id\":1,\"jsonrpc\":\"2.0\",\"method\":\"login\",\"params\":{{\"login\":\"{WALLET}\",\"pass\":\"x\",\"agent\":\"XMRig/6.2"
        );
        let id = expect(p.as_bytes(), C2S, "cryptonote", "login");
        assert_eq!(id.login_sha256, Some(login_hash(WALLET)));
        assert_eq!(id.agent, None);
        // The method value itself cut: nothing to judge.
        none(b"{\"id\":1,\"method\":\"mining.subscr");
        none(b"{\"id\":1,\"method\":");
        none(b"{\"id\":1,\"meth");
        // A login cut before its "login" member is complete is not a CryptoNote login.
        none(b"{\"id\":1,\"method\":\"login\",\"params\":{\"login\":\"44AFF");
        // A long notify line cut at the payload end still counts (its method is whole).
        let p = format!(
            "{{\"id\":null,\"method\":\"mining.notify\",\"params\":[\"1f2e\",\"{}",
            "0".repeat(30_000)
        );
        expect(p.as_bytes(), S2C, "stratum", "mining.notify");
    }

    #[test]
    fn repair_closes_at_whole_members() {
        let r = |s: &str| repair(s.as_bytes()).map(|v| v.to_string());
        assert_eq!(r("{\"a\":1,\"b\":[1,2"), Some("{\"a\":1,\"b\":[1]}".into()));
        assert_eq!(r("{\"a\":{\"b\":\"x,y"), Some("{\"a\":{}}".into()));
        assert_eq!(
            r("{\"a\":{\"b\":1},\"c\""),
            Some("{\"a\":{\"b\":1}}".into())
        );
        assert_eq!(
            r("{\"a\":\"q\\\"}\",\"b\""),
            Some("{\"a\":\"q\\\"}\"}".into())
        );
        assert_eq!(r("{\"a\":tru"), Some("{}".into()));
        assert_eq!(r("{\"a\":1}"), None);
        assert_eq!(r("{\"a\":1]}"), None);
        assert_eq!(r(&"[".repeat(100)), None);
    }

    #[test]
    fn partial_tail_keeps_only_unfinished_objects() {
        assert_eq!(
            partial_tail(b"{\"a\":1}\n{\"b\":", 64),
            Some(&b"{\"b\":"[..])
        );
        assert_eq!(partial_tail(b"{\"a\":1}\n", 64), None);
        assert_eq!(partial_tail(b"{\"a\":1}", 64), None);
        assert_eq!(partial_tail(b"{\"a\":1]", 64), None);
        assert_eq!(partial_tail(b"garbage", 64), None);
        assert_eq!(partial_tail(b"{\"b\":\"xxxxxxxx", 8), None);
    }

    #[test]
    fn hostile_json_is_bounded() {
        // Many deep, failing objects: the parse budget stops the work.
        let line = format!("{}\n", "{\"a\":".repeat(200));
        let p = line.repeat(400);
        let t = std::time::Instant::now();
        none(p.as_bytes());
        assert!(t.elapsed() < std::time::Duration::from_secs(2));
        // Many small valid objects: only MAX_MESSAGES are looked at; the 65th is not.
        let mut p = "{\"method\":\"x\"}\n".repeat(MAX_MESSAGES);
        p.push_str("{\"method\":\"mining.subscribe\"}\n");
        none(p.as_bytes());
    }
}
