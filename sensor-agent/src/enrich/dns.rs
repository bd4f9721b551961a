//! DNS answers bound to addresses: a bounded RFC 1035 parser and the [`DnsBinder`].
//!
//! Flows carry addresses; feeds list pool domain names. The binder learns which names an
//! address was resolved from by pairing each DNS answer with the query the sensor saw go to
//! that resolver (same client and resolver endpoints, same transaction id, same name). An
//! answer nobody asked for is ignored and counted: accepting it would let one spoofed packet
//! label any address. Only the records on the CNAME chain of the question bind.
//!
//! The parser reads the header, the questions and the answer section (A, AAAA and CNAME
//! records; every other type is skipped by its length). Every read is bounds-checked; names
//! are limited to 255 octets on the wire and to [`MAX_POINTER_HOPS`] compression pointers,
//! each pointing strictly before the previous one, so a pointer loop ends in an error.
//!
//! Time is always passed in (ns since the Unix epoch): replayed captures bind with capture
//! time.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

/// Longest name on the wire (RFC 1035 3.1), length octets included.
pub const MAX_NAME_WIRE_LEN: usize = 255;
/// Compression pointers followed in one name at most.
pub const MAX_POINTER_HOPS: usize = 32;
/// Questions accepted in one message (real messages carry one).
pub const MAX_QUESTIONS: usize = 4;
/// Answer records read from one message at most; the rest are ignored.
pub const MAX_ANSWERS: usize = 128;
/// CNAME links followed from the question at most.
pub const MAX_CNAME_CHAIN: usize = 16;

const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;

/// Why a message could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("message truncated")]
    Truncated,
    #[error("name longer than 255 octets")]
    NameTooLong,
    #[error("compression pointer loop or forward pointer")]
    BadPointer,
    #[error("too many compression pointers")]
    TooManyPointers,
    #[error("reserved label type")]
    BadLabel,
    #[error("too many questions")]
    TooManyQuestions,
    #[error("TCP length prefix does not match the payload")]
    BadTcpLength,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    /// Lower case, without the trailing dot; bytes other than letters, digits, `-` and `_`
    /// are written `\DDD`.
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RData {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Cname(String),
}

/// An answer record of class IN and type A, AAAA or CNAME.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Owner name, written like [`Question::name`].
    pub name: String,
    pub ttl: u32,
    pub data: RData,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsMessage {
    pub id: u16,
    pub flags: u16,
    pub questions: Vec<Question>,
    /// A, AAAA and CNAME answers of class IN, in message order.
    pub answers: Vec<Record>,
    /// Answer records of other types or classes, or with a malformed address, skipped.
    pub skipped_answers: usize,
    /// False when the answer section ended early (message cut short, a malformed record, or
    /// more than [`MAX_ANSWERS`] records): the records before that point are still here.
    pub answers_complete: bool,
}

impl DnsMessage {
    /// QR bit: a response.
    pub fn is_response(&self) -> bool {
        self.flags & 0x8000 != 0
    }

    pub fn opcode(&self) -> u8 {
        ((self.flags >> 11) & 0xf) as u8
    }

    /// TC bit: the server truncated the message.
    pub fn is_truncated(&self) -> bool {
        self.flags & 0x0200 != 0
    }

    pub fn rcode(&self) -> u8 {
        (self.flags & 0xf) as u8
    }
}

fn u16_at(msg: &[u8], pos: usize) -> Result<u16, DnsError> {
    match msg.get(pos..pos.checked_add(2).ok_or(DnsError::Truncated)?) {
        Some(b) => Ok(u16::from_be_bytes([b[0], b[1]])),
        None => Err(DnsError::Truncated),
    }
}

fn u32_at(msg: &[u8], pos: usize) -> Result<u32, DnsError> {
    match msg.get(pos..pos.checked_add(4).ok_or(DnsError::Truncated)?) {
        Some(b) => Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        None => Err(DnsError::Truncated),
    }
}

/// Reads the name at `pos`; returns it and the position after it (after the first pointer
/// when compressed).
fn read_name(msg: &[u8], mut pos: usize) -> Result<(String, usize), DnsError> {
    let mut name = String::new();
    let mut wire_len = 0usize;
    let mut hops = 0usize;
    let mut end: Option<usize> = None;
    // Every pointer must point before the start of the segment that holds it: segment starts
    // strictly decrease, so the walk ends even without the hop limit.
    let mut segment_start = pos;
    loop {
        let len = *msg.get(pos).ok_or(DnsError::Truncated)?;
        match len & 0xc0 {
            0xc0 => {
                let lo = *msg.get(pos + 1).ok_or(DnsError::Truncated)?;
                let target = (usize::from(len & 0x3f) << 8) | usize::from(lo);
                hops += 1;
                if hops > MAX_POINTER_HOPS {
                    return Err(DnsError::TooManyPointers);
                }
                if target >= segment_start {
                    return Err(DnsError::BadPointer);
                }
                end.get_or_insert(pos + 2);
                pos = target;
                segment_start = target;
            }
            0x00 => {
                let len = usize::from(len);
                wire_len += len + 1;
                if wire_len > MAX_NAME_WIRE_LEN {
                    return Err(DnsError::NameTooLong);
                }
                if len == 0 {
                    return Ok((name, end.unwrap_or(pos + 1)));
                }
                let label = msg.get(pos + 1..pos + 1 + len).ok_or(DnsError::Truncated)?;
                if !name.is_empty() {
                    name.push('.');
                }
                for &b in label {
                    if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                        name.push(char::from(b.to_ascii_lowercase()));
                    } else {
                        name.push_str(&format!("\\{b:03}"));
                    }
                }
                pos += 1 + len;
            }
            _ => return Err(DnsError::BadLabel),
        }
    }
}

/// A name in presentation form (as DNS logs write them: any case, trailing dot or not,
/// `\\DDD` and `\\X` escapes) written like the wire parser writes names. `None` when it is
/// longer than a name can be or has an empty label.
pub fn name_from_text(text: &str) -> Option<String> {
    let text = text.strip_suffix('.').unwrap_or(text);
    let mut name = String::new();
    let mut wire_len = 1usize;
    let mut label_len = 0usize;
    let mut bytes = text.bytes();
    let push = |name: &mut String, b: u8, label_len: &mut usize| {
        *label_len += 1;
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            name.push(char::from(b.to_ascii_lowercase()));
        } else {
            name.push_str(&format!("\\{b:03}"));
        }
    };
    if text.is_empty() {
        return Some(name);
    }
    while let Some(b) = bytes.next() {
        match b {
            b'.' => {
                if label_len == 0 || label_len > 63 {
                    return None;
                }
                wire_len += label_len + 1;
                label_len = 0;
                name.push('.');
            }
            b'\\' => {
                let c = bytes.next()?;
                let b = if c.is_ascii_digit() {
                    let d = [c, bytes.next()?, bytes.next()?];
                    std::str::from_utf8(&d).ok()?.parse::<u8>().ok()?
                } else {
                    c
                };
                push(&mut name, b, &mut label_len);
            }
            b => push(&mut name, b, &mut label_len),
        }
        if wire_len + label_len + 1 > MAX_NAME_WIRE_LEN {
            return None;
        }
    }
    if label_len == 0 || label_len > 63 {
        return None;
    }
    Some(name)
}

/// Parses a DNS message carried over UDP.
pub fn parse_udp(msg: &[u8]) -> Result<DnsMessage, DnsError> {
    let id = u16_at(msg, 0)?;
    let flags = u16_at(msg, 2)?;
    let qdcount = usize::from(u16_at(msg, 4)?);
    let ancount = usize::from(u16_at(msg, 6)?);
    if msg.len() < 12 {
        return Err(DnsError::Truncated);
    }
    if qdcount > MAX_QUESTIONS {
        return Err(DnsError::TooManyQuestions);
    }
    let mut pos = 12;
    let mut questions = Vec::with_capacity(qdcount);
    for _ in 0..qdcount {
        let (name, next) = read_name(msg, pos)?;
        let qtype = u16_at(msg, next)?;
        let qclass = u16_at(msg, next + 2)?;
        questions.push(Question {
            name,
            qtype,
            qclass,
        });
        pos = next + 4;
    }
    let mut m = DnsMessage {
        id,
        flags,
        questions,
        answers: Vec::new(),
        skipped_answers: 0,
        answers_complete: true,
    };
    for i in 0..ancount {
        if i >= MAX_ANSWERS {
            m.answers_complete = false;
            break;
        }
        match read_record(msg, pos) {
            Ok((rec, next)) => {
                pos = next;
                match rec {
                    Some(r) => m.answers.push(r),
                    None => m.skipped_answers += 1,
                }
            }
            Err(_) => {
                m.answers_complete = false;
                break;
            }
        }
    }
    Ok(m)
}

/// One resource record at `pos`: `Some` for IN A/AAAA/CNAME, `None` for anything else.
fn read_record(msg: &[u8], pos: usize) -> Result<(Option<Record>, usize), DnsError> {
    let (name, p) = read_name(msg, pos)?;
    let rtype = u16_at(msg, p)?;
    let class = u16_at(msg, p + 2)?;
    let ttl = u32_at(msg, p + 4)?;
    let rdlen = usize::from(u16_at(msg, p + 8)?);
    let start = p + 10;
    let end = start + rdlen;
    let rdata = msg.get(start..end).ok_or(DnsError::Truncated)?;
    if class != CLASS_IN {
        return Ok((None, end));
    }
    let data = match (rtype, rdata.len()) {
        (TYPE_A, 4) => RData::A(Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3])),
        (TYPE_AAAA, 16) => {
            let mut o = [0u8; 16];
            o.copy_from_slice(rdata);
            RData::Aaaa(Ipv6Addr::from(o))
        }
        (TYPE_CNAME, _) => match read_name(msg, start) {
            Ok((target, after)) if after <= end => RData::Cname(target),
            _ => return Ok((None, end)),
        },
        _ => return Ok((None, end)),
    };
    Ok((Some(Record { name, ttl, data }), end))
}

/// Parses the first DNS message of a TCP payload (2-byte length prefix, RFC 1035 4.2.2).
pub fn parse_tcp(payload: &[u8]) -> Result<DnsMessage, DnsError> {
    let len = usize::from(u16_at(payload, 0)?);
    let msg = payload.get(2..2 + len).ok_or(DnsError::Truncated)?;
    if len < 12 {
        return Err(DnsError::BadTcpLength);
    }
    parse_udp(msg)
}

// ---------------------------------------------------------------------------------------
// Binder

/// Limits of the [`DnsBinder`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BinderConfig {
    /// TTLs above this are cut to it (seconds).
    pub max_ttl_secs: u32,
    /// TTLs below this are raised to it (seconds); 0 keeps TTLs as answered.
    pub min_ttl_secs: u32,
    /// An answer later than this after its query is not matched to it.
    pub query_timeout_ns: u64,
    /// Outstanding queries remembered at most (the oldest is dropped, and counted).
    pub max_pending: usize,
    /// (address, name) bindings kept at most (the oldest is evicted, and counted).
    pub max_bindings: usize,
    /// Names kept per address at most (that address's oldest is evicted, and counted).
    pub max_names_per_addr: usize,
    /// Expired bindings are pruned only this long after they expired (by the latest time the
    /// binder was given), so a lookup for a flow's start time shortly before still finds them.
    pub keep_expired_ns: u64,
}

impl Default for BinderConfig {
    fn default() -> Self {
        BinderConfig {
            max_ttl_secs: 86_400,
            min_ttl_secs: 0,
            query_timeout_ns: 30_000_000_000,
            max_pending: 65_536,
            max_bindings: 262_144,
            max_names_per_addr: 32,
            keep_expired_ns: 300_000_000_000,
        }
    }
}

/// Counters of the [`DnsBinder`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BinderStats {
    pub queries: u64,
    pub answers_matched: u64,
    /// Answers with no outstanding query from that client to that resolver with that id.
    pub answers_unsolicited: u64,
    /// Answers to an outstanding query whose question differs (name or type) or that carry
    /// no question.
    pub answers_mismatched: u64,
    /// Answers a resolver logged itself (cloud DNS query logs), bound without a query.
    pub answers_logged: u64,
    /// Answer records whose owner is not on the question's CNAME chain (ignored).
    pub records_off_chain: u64,
    pub parse_errors: u64,
    pub pending_expired: u64,
    pub pending_evicted: u64,
    pub bindings_expired: u64,
    pub bindings_evicted: u64,
}

/// What became of an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnswerOutcome {
    /// Matched its query; `bindings` (address, name) pairs were added or refreshed.
    Bound { addresses: usize, bindings: usize },
    /// No outstanding query matches: ignored.
    Unsolicited,
    /// An outstanding query with this id differs in its question: ignored.
    Mismatched,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct QueryKey {
    client: SocketAddr,
    resolver: SocketAddr,
    id: u16,
}

struct Pending {
    qname: String,
    qtype: u16,
    at_ns: u64,
    seq: u64,
}

struct Binding {
    name: Arc<str>,
    expiry_ns: u64,
    seq: u64,
}

/// Binds addresses to the names they were resolved from, from observed query/answer pairs.
pub struct DnsBinder {
    cfg: BinderConfig,
    pending: HashMap<QueryKey, Pending>,
    /// Pending queries by arrival (for expiry and eviction).
    pending_order: BTreeMap<u64, QueryKey>,
    bindings: HashMap<IpAddr, Vec<Binding>>,
    /// Bindings by last (re)bind, oldest first.
    binding_order: BTreeMap<u64, IpAddr>,
    total_bindings: usize,
    seq: u64,
    /// Latest time seen.
    clock_ns: u64,
    last_sweep_ns: u64,
    stats: BinderStats,
}

impl fmt::Debug for DnsBinder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsBinder")
            .field("pending", &self.pending.len())
            .field("bindings", &self.total_bindings)
            .field("stats", &self.stats)
            .finish()
    }
}

/// Full sweeps of expired bindings happen at most this often (binder time).
const SWEEP_INTERVAL_NS: u64 = 60_000_000_000;

impl DnsBinder {
    pub fn new(cfg: BinderConfig) -> Self {
        DnsBinder {
            cfg,
            pending: HashMap::new(),
            pending_order: BTreeMap::new(),
            bindings: HashMap::new(),
            binding_order: BTreeMap::new(),
            total_bindings: 0,
            seq: 0,
            clock_ns: 0,
            last_sweep_ns: 0,
            stats: BinderStats::default(),
        }
    }

    pub fn stats(&self) -> &BinderStats {
        &self.stats
    }

    /// (address, name) bindings held, live or awaiting pruning.
    pub fn len(&self) -> usize {
        self.total_bindings
    }

    pub fn is_empty(&self) -> bool {
        self.total_bindings == 0
    }

    /// Outstanding queries held.
    pub fn pending_queries(&self) -> usize {
        self.pending.len()
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Parses a DNS payload from `src` to `dst` (UDP, or TCP with its length prefix) and
    /// records it as a query or an answer by its QR bit. `None` for a query or a payload that
    /// does not parse (counted).
    pub fn observe_payload(
        &mut self,
        src: SocketAddr,
        dst: SocketAddr,
        payload: &[u8],
        tcp: bool,
        now_ns: u64,
    ) -> Option<AnswerOutcome> {
        let parsed = if tcp {
            parse_tcp(payload)
        } else {
            parse_udp(payload)
        };
        let msg = match parsed {
            Ok(m) => m,
            Err(_) => {
                self.stats.parse_errors += 1;
                return None;
            }
        };
        if msg.is_response() {
            Some(self.observe_answer(src, dst, &msg, now_ns))
        } else {
            self.observe_query(src, dst, &msg, now_ns);
            None
        }
    }

    /// Records a query from `client` to `resolver`. Only standard queries with one question
    /// are recorded; returns whether it was.
    pub fn observe_query(
        &mut self,
        client: SocketAddr,
        resolver: SocketAddr,
        msg: &DnsMessage,
        now_ns: u64,
    ) -> bool {
        self.tick(now_ns);
        if msg.is_response() || msg.opcode() != 0 || msg.questions.len() != 1 {
            return false;
        }
        self.stats.queries += 1;
        let key = QueryKey {
            client,
            resolver,
            id: msg.id,
        };
        let seq = self.next_seq();
        let q = &msg.questions[0];
        if let Some(old) = self.pending.insert(
            key.clone(),
            Pending {
                qname: q.name.clone(),
                qtype: q.qtype,
                at_ns: now_ns,
                seq,
            },
        ) {
            self.pending_order.remove(&old.seq);
        }
        self.pending_order.insert(seq, key);
        while self.pending.len() > self.cfg.max_pending {
            let Some((_, k)) = self.pending_order.pop_first() else {
                break;
            };
            self.pending.remove(&k);
            self.stats.pending_evicted += 1;
        }
        true
    }

    /// Matches an answer from `resolver` to `client` with the query it answers and binds its
    /// addresses. Unsolicited and mismatched answers are ignored and counted.
    pub fn observe_answer(
        &mut self,
        resolver: SocketAddr,
        client: SocketAddr,
        msg: &DnsMessage,
        now_ns: u64,
    ) -> AnswerOutcome {
        self.tick(now_ns);
        let key = QueryKey {
            client,
            resolver,
            id: msg.id,
        };
        let Some(p) = self.pending.get(&key) else {
            self.stats.answers_unsolicited += 1;
            return AnswerOutcome::Unsolicited;
        };
        let same_question = msg.is_response()
            && msg.questions.len() == 1
            && msg.questions[0].name == p.qname
            && msg.questions[0].qtype == p.qtype;
        if !same_question {
            // The outstanding query stays: the real answer may still come.
            self.stats.answers_mismatched += 1;
            return AnswerOutcome::Mismatched;
        }
        let p = self.pending.remove(&key).expect("looked up above");
        self.pending_order.remove(&p.seq);
        self.stats.answers_matched += 1;
        if msg.rcode() != 0 {
            return AnswerOutcome::Bound {
                addresses: 0,
                bindings: 0,
            };
        }
        self.bind_chain(&p.qname, &msg.answers, now_ns)
    }

    /// Binds the answers of a resolution a resolver logged itself (cloud DNS query logs):
    /// `qname` and `answers` written like the wire parser's. The resolver saw the query it
    /// answered, so no query needs matching; only the records on the CNAME chain from the
    /// question bind, with their TTLs, exactly as for a matched answer.
    pub fn observe_logged(
        &mut self,
        qname: &str,
        answers: &[Record],
        now_ns: u64,
    ) -> AnswerOutcome {
        self.tick(now_ns);
        self.stats.answers_logged += 1;
        self.bind_chain(qname, answers, now_ns)
    }

    /// Binds every address on the CNAME chain from `qname` to every name of the chain.
    fn bind_chain(&mut self, qname: &str, answers: &[Record], now_ns: u64) -> AnswerOutcome {
        let mut chain: Vec<Arc<str>> = vec![Arc::from(qname)];
        while chain.len() <= MAX_CNAME_CHAIN {
            let last = chain.last().expect("never empty").clone();
            let next = answers.iter().find_map(|r| match &r.data {
                RData::Cname(t) if *r.name == *last && !chain.iter().any(|c| **c == **t) => {
                    Some(t.as_str())
                }
                _ => None,
            });
            match next {
                Some(t) => chain.push(Arc::from(t)),
                None => break,
            }
        }

        let (mut addresses, mut bindings) = (0, 0);
        for r in answers {
            let on_chain = chain.iter().any(|c| **c == *r.name);
            let addr = match r.data {
                RData::A(a) => IpAddr::V4(a),
                RData::Aaaa(a) => IpAddr::V6(a).to_canonical(),
                RData::Cname(_) => {
                    if !on_chain {
                        self.stats.records_off_chain += 1;
                    }
                    continue;
                }
            };
            if !on_chain {
                self.stats.records_off_chain += 1;
                continue;
            }
            // RFC 2181 8: a TTL with the top bit set means zero.
            let ttl = if r.ttl & 0x8000_0000 != 0 { 0 } else { r.ttl };
            let ttl = ttl.clamp(
                self.cfg.min_ttl_secs,
                self.cfg.max_ttl_secs.max(self.cfg.min_ttl_secs),
            );
            let expiry = now_ns.saturating_add(u64::from(ttl) * 1_000_000_000);
            addresses += 1;
            for name in chain.clone() {
                self.bind(addr, name, expiry);
                bindings += 1;
            }
        }
        AnswerOutcome::Bound {
            addresses,
            bindings,
        }
    }

    /// Live names of `addr` at `at_ns` (bindings whose expiry is not before it), sorted by
    /// name, with their expiry (ns since the Unix epoch).
    pub fn names_for(&self, addr: IpAddr, at_ns: u64) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = self
            .bindings
            .get(&addr.to_canonical())
            .map(|v| {
                v.iter()
                    .filter(|b| b.expiry_ns >= at_ns)
                    .map(|b| (b.name.to_string(), b.expiry_ns))
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Drops pending queries that timed out and bindings expired for longer than
    /// `keep_expired_ns` at `now_ns`. Called by the observe functions as time advances.
    pub fn prune(&mut self, now_ns: u64) {
        self.clock_ns = self.clock_ns.max(now_ns);
        self.expire_pending();
        self.sweep_bindings();
    }

    fn tick(&mut self, now_ns: u64) {
        self.clock_ns = self.clock_ns.max(now_ns);
        self.expire_pending();
        if self.clock_ns.saturating_sub(self.last_sweep_ns) >= SWEEP_INTERVAL_NS {
            self.sweep_bindings();
        }
    }

    fn expire_pending(&mut self) {
        while let Some((&seq, key)) = self.pending_order.first_key_value() {
            let Some(p) = self.pending.get(key) else {
                self.pending_order.remove(&seq);
                continue;
            };
            if p.at_ns.saturating_add(self.cfg.query_timeout_ns) >= self.clock_ns {
                break;
            }
            let key = key.clone();
            self.pending.remove(&key);
            self.pending_order.remove(&seq);
            self.stats.pending_expired += 1;
        }
    }

    fn sweep_bindings(&mut self) {
        self.last_sweep_ns = self.clock_ns;
        let Some(limit) = self.clock_ns.checked_sub(self.cfg.keep_expired_ns) else {
            return;
        };
        let order = &mut self.binding_order;
        let mut removed = 0usize;
        self.bindings.retain(|_, v| {
            v.retain(|b| {
                let keep = b.expiry_ns >= limit;
                if !keep {
                    order.remove(&b.seq);
                    removed += 1;
                }
                keep
            });
            !v.is_empty()
        });
        self.total_bindings -= removed;
        self.stats.bindings_expired += removed as u64;
    }

    fn bind(&mut self, addr: IpAddr, name: Arc<str>, expiry_ns: u64) {
        let seq = self.next_seq();
        let list = self.bindings.entry(addr).or_default();
        if let Some(b) = list.iter_mut().find(|b| b.name == name) {
            self.binding_order.remove(&b.seq);
            b.seq = seq;
            b.expiry_ns = b.expiry_ns.max(expiry_ns);
            self.binding_order.insert(seq, addr);
            return;
        }
        if list.len() >= self.cfg.max_names_per_addr.max(1) {
            if let Some(i) = (0..list.len()).min_by_key(|&i| list[i].seq) {
                let old = list.swap_remove(i);
                self.binding_order.remove(&old.seq);
                self.total_bindings -= 1;
                self.stats.bindings_evicted += 1;
            }
        }
        list.push(Binding {
            name,
            expiry_ns,
            seq,
        });
        self.binding_order.insert(seq, addr);
        self.total_bindings += 1;
        if self.total_bindings > self.cfg.max_bindings {
            // Expired ones go first, then the oldest live ones.
            self.sweep_bindings();
        }
        while self.total_bindings > self.cfg.max_bindings.max(1) {
            let Some((old_seq, old_addr)) = self.binding_order.pop_first() else {
                break;
            };
            if let Some(v) = self.bindings.get_mut(&old_addr) {
                if let Some(i) = v.iter().position(|b| b.seq == old_seq) {
                    v.swap_remove(i);
                    self.total_bindings -= 1;
                    self.stats.bindings_evicted += 1;
                }
                if v.is_empty() {
                    self.bindings.remove(&old_addr);
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;
    const T0: u64 = 1_700_000_000 * SEC;

    fn header(id: u16, flags: u16, qd: u16, an: u16) -> Vec<u8> {
        let mut b = Vec::new();
        for v in [id, flags, qd, an, 0, 0] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b
    }

    fn put_name(b: &mut Vec<u8>, name: &str) {
        for label in name.split('.').filter(|l| !l.is_empty()) {
            b.push(label.len() as u8);
            b.extend_from_slice(label.as_bytes());
        }
        b.push(0);
    }

    fn put_question(b: &mut Vec<u8>, name: &str, qtype: u16) {
        put_name(b, name);
        b.extend_from_slice(&qtype.to_be_bytes());
        b.extend_from_slice(&1u16.to_be_bytes());
    }

    /// A resource record whose owner is the given raw name bytes (labels or a pointer).
    fn put_rr(b: &mut Vec<u8>, owner: &[u8], rtype: u16, ttl: u32, rdata: &[u8]) {
        b.extend_from_slice(owner);
        b.extend_from_slice(&rtype.to_be_bytes());
        b.extend_from_slice(&1u16.to_be_bytes());
        b.extend_from_slice(&ttl.to_be_bytes());
        b.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        b.extend_from_slice(rdata);
    }

    const PTR_QNAME: [u8; 2] = [0xc0, 12];

    pub(crate) fn query(id: u16, name: &str) -> Vec<u8> {
        let mut b = header(id, 0x0100, 1, 0);
        put_question(&mut b, name, TYPE_A);
        b
    }

    pub(crate) fn answer_a(id: u16, name: &str, a: [u8; 4], ttl: u32) -> Vec<u8> {
        let mut b = header(id, 0x8180, 1, 1);
        put_question(&mut b, name, TYPE_A);
        put_rr(&mut b, &PTR_QNAME, TYPE_A, ttl, &a);
        b
    }

    /// www.pool.example CNAME eu.pool.example (target compressed into the question) CNAME
    /// node7.eu.pool.example; node7 A 198.51.100.7 and AAAA 2001:db8::7; plus an MX record
    /// and an A record for a name off the chain.
    fn cname_chain_answer(id: u16) -> Vec<u8> {
        let mut b = header(id, 0x8180, 1, 6);
        put_question(&mut b, "www.pool.example", TYPE_A);
        // "pool.example" starts at 12 + 4 = 16.
        let rd1 = [2, b'e', b'u', 0xc0, 16];
        put_rr(&mut b, &PTR_QNAME, TYPE_CNAME, 300, &rd1);
        let eu_at = (b.len() - rd1.len()) as u8;
        let rd2 = [5, b'n', b'o', b'd', b'e', b'7', 0xc0, eu_at];
        put_rr(&mut b, &[0xc0, eu_at], TYPE_CNAME, 300, &rd2);
        let node_at = (b.len() - rd2.len()) as u8;
        put_rr(&mut b, &[0xc0, node_at], TYPE_A, 60, &[198, 51, 100, 7]);
        let mut v6 = [0u8; 16];
        v6[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        v6[15] = 7;
        put_rr(&mut b, &[0xc0, node_at], TYPE_AAAA, 120, &v6);
        put_rr(&mut b, &PTR_QNAME, 15, 300, &[0, 10, 0xc0, 12]);
        let mut evil = Vec::new();
        put_name(&mut evil, "victim.example");
        put_rr(&mut b, &evil, TYPE_A, 300, &[203, 0, 113, 66]);
        b
    }

    #[test]
    fn intel_dns_parse_a_answer() {
        let m = parse_udp(&answer_a(0x1234, "Pool.Example", [192, 0, 2, 1], 300)).unwrap();
        assert_eq!(m.id, 0x1234);
        assert!(m.is_response());
        assert_eq!(m.rcode(), 0);
        assert_eq!(
            m.questions,
            vec![Question {
                name: "pool.example".into(),
                qtype: TYPE_A,
                qclass: 1
            }]
        );
        assert_eq!(
            m.answers,
            vec![Record {
                name: "pool.example".into(),
                ttl: 300,
                data: RData::A(Ipv4Addr::new(192, 0, 2, 1))
            }]
        );
        assert!(m.answers_complete);
        let q = parse_udp(&query(9, "x.example")).unwrap();
        assert!(!q.is_response());
        assert!(q.answers.is_empty());
    }

    #[test]
    fn intel_dns_parse_cname_chain_aaaa_and_pointers() {
        let m = parse_udp(&cname_chain_answer(7)).unwrap();
        assert_eq!(m.answers.len(), 5);
        assert_eq!(m.skipped_answers, 1);
        assert_eq!(m.answers[0].data, RData::Cname("eu.pool.example".into()));
        assert_eq!(m.answers[1].name, "eu.pool.example");
        assert_eq!(
            m.answers[1].data,
            RData::Cname("node7.eu.pool.example".into())
        );
        assert_eq!(m.answers[2].name, "node7.eu.pool.example");
        assert_eq!(m.answers[2].data, RData::A(Ipv4Addr::new(198, 51, 100, 7)));
        assert_eq!(
            m.answers[3].data,
            RData::Aaaa("2001:db8::7".parse().unwrap())
        );
        assert_eq!(m.answers[3].ttl, 120);
        assert_eq!(m.answers[4].name, "victim.example");
    }

    #[test]
    fn intel_dns_parse_tcp_framing() {
        let msg = answer_a(1, "pool.example", [192, 0, 2, 1], 30);
        let mut tcp = (msg.len() as u16).to_be_bytes().to_vec();
        tcp.extend_from_slice(&msg);
        tcp.extend_from_slice(b"next message");
        assert_eq!(parse_tcp(&tcp).unwrap(), parse_udp(&msg).unwrap());
        assert_eq!(parse_tcp(&tcp[..tcp.len() - 20]), Err(DnsError::Truncated));
        assert_eq!(parse_tcp(&[0, 3, 1, 2, 3]), Err(DnsError::BadTcpLength));
        assert_eq!(parse_tcp(&[0]), Err(DnsError::Truncated));
    }

    #[test]
    fn intel_dns_escapes_odd_bytes_and_skips_other_classes() {
        let mut b = header(1, 0x8180, 1, 2);
        b.extend_from_slice(&[3, b'a', b'.', 0xff, 7]);
        b.extend_from_slice(b"example");
        b.extend_from_slice(&[0, 0, 1, 0, 1]);
        put_rr(&mut b, &PTR_QNAME, TYPE_A, 5, &[1, 2, 3, 4]);
        // Class CH (3): skipped.
        let at = b.len();
        put_rr(&mut b, &PTR_QNAME, TYPE_A, 5, &[1, 2, 3, 5]);
        b[at + 5] = 3;
        let m = parse_udp(&b).unwrap();
        assert_eq!(m.questions[0].name, "a\\046\\255.example");
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.skipped_answers, 1);
    }

    #[test]
    fn intel_dns_malicious_names_are_errors() {
        // Pointer to itself.
        let mut b = header(1, 0x8180, 1, 0);
        b.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(parse_udp(&b), Err(DnsError::BadPointer));
        // Forward pointer.
        let mut b = header(1, 0x8180, 1, 0);
        b.extend_from_slice(&[0xc0, 20, 0, 1, 0, 1, 0, 0, 1, b'a', 0]);
        assert_eq!(parse_udp(&b), Err(DnsError::BadPointer));
        // Two-pointer loop: the answer owner points at a label followed by a pointer back to
        // the answer owner.
        let mut b = header(1, 0x8180, 1, 1);
        put_question(&mut b, "a.example", TYPE_A);
        let at = b.len() as u8;
        b.extend_from_slice(&[1, b'x', 0xc0, at]);
        b.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 1, 2, 3, 4]);
        let m = parse_udp(&b).unwrap();
        assert!(!m.answers_complete);
        assert!(m.answers.is_empty());
        assert_eq!(read_name(&b, at as usize), Err(DnsError::BadPointer));
        // A long backwards chain of pointers.
        let mut b = header(1, 0x8180, 0, 0);
        b.extend_from_slice(&[1, b'a', 0]);
        let mut prev = 12u16;
        for _ in 0..40 {
            let here = b.len() as u16;
            b.extend_from_slice(&(0xc000 | prev).to_be_bytes());
            prev = here;
        }
        assert_eq!(read_name(&b, prev as usize), Err(DnsError::TooManyPointers));
        // Overlong name: 5 labels of 63 octets.
        let mut b = header(1, 0x0100, 1, 0);
        for _ in 0..5 {
            b.push(63);
            b.extend_from_slice(&[b'a'; 63]);
        }
        b.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert_eq!(parse_udp(&b), Err(DnsError::NameTooLong));
        // Reserved label type.
        let mut b = header(1, 0x0100, 1, 0);
        b.extend_from_slice(&[0x40, 0, 0, 1, 0, 1]);
        assert_eq!(parse_udp(&b), Err(DnsError::BadLabel));
        // Too many questions.
        assert_eq!(
            parse_udp(&header(1, 0x0100, 500, 0)),
            Err(DnsError::TooManyQuestions)
        );
    }

    #[test]
    fn intel_dns_truncated_messages() {
        let full = cname_chain_answer(3);
        let question_end = 12 + 18 + 4;
        for len in 0..full.len() {
            let r = parse_udp(&full[..len]);
            if len < question_end {
                assert_eq!(r, Err(DnsError::Truncated), "len {len}");
            } else {
                let m = r.unwrap();
                assert!(!m.answers_complete, "len {len}");
                assert!(m.answers.len() < 5);
            }
        }
    }

    #[test]
    fn intel_dns_random_and_mutated_inputs_never_panic() {
        let mut rng = fastrand::Rng::with_seed(0x2545_f491_4f6c_dd1d);
        let seeds = [
            cname_chain_answer(1),
            answer_a(2, "pool.example", [192, 0, 2, 1], 5),
            query(3, "pool.example"),
        ];
        let mut binder = DnsBinder::new(BinderConfig {
            max_bindings: 64,
            max_pending: 16,
            ..BinderConfig::default()
        });
        let c: SocketAddr = "10.0.0.2:5353".parse().unwrap();
        let r: SocketAddr = "10.0.0.1:53".parse().unwrap();
        let mut parsed = 0;
        for i in 0..100_000u64 {
            let buf: Vec<u8> = if i % 2 == 0 {
                let len = (rng.u64(..) % 600) as usize;
                let mut b: Vec<u8> = (0..len).map(|_| rng.u64(..) as u8).collect();
                // Random bytes rarely make a plausible header: make counts small half the time.
                if b.len() >= 12 && i % 4 == 0 {
                    b[4] = 0;
                    b[5] %= 3;
                    b[6] = 0;
                }
                b
            } else {
                let mut b = seeds[(i % 3) as usize].clone();
                for _ in 0..1 + rng.u64(..) % 4 {
                    let at = (rng.u64(..) as usize) % b.len();
                    b[at] = rng.u64(..) as u8;
                }
                if rng.u64(..).is_multiple_of(4) {
                    let keep = (rng.u64(..) as usize) % (b.len() + 1);
                    b.truncate(keep);
                }
                b
            };
            if parse_udp(&buf).is_ok() {
                parsed += 1;
            }
            let _ = parse_tcp(&buf);
            let (src, dst) = if i % 3 == 0 { (c, r) } else { (r, c) };
            binder.observe_payload(src, dst, &buf, i % 5 == 0, T0 + i * 1000);
        }
        assert!(parsed > 1000, "{parsed}");
        assert!(binder.len() <= 64);
        assert!(binder.pending_queries() <= 16);
    }

    fn endpoints() -> (SocketAddr, SocketAddr) {
        (
            "10.0.0.5:40000".parse().unwrap(),
            "10.0.0.1:53".parse().unwrap(),
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn intel_binder_answer_matched_to_query_binds() {
        let (client, resolver) = endpoints();
        let mut b = DnsBinder::new(BinderConfig::default());
        assert_eq!(
            b.observe_payload(client, resolver, &query(42, "Pool.Example"), false, T0),
            None
        );
        let out = b.observe_payload(
            resolver,
            client,
            &answer_a(42, "pool.example", [192, 0, 2, 9], 300),
            false,
            T0 + SEC / 100,
        );
        assert_eq!(
            out,
            Some(AnswerOutcome::Bound {
                addresses: 1,
                bindings: 1
            })
        );
        let expiry = T0 + SEC / 100 + 300 * SEC;
        assert_eq!(
            b.names_for(ip("192.0.2.9"), T0 + SEC),
            vec![("pool.example".to_string(), expiry)]
        );
        assert_eq!(b.names_for(ip("::ffff:192.0.2.9"), T0 + SEC).len(), 1);
        assert_eq!(b.stats().answers_matched, 1);
        assert_eq!(b.pending_queries(), 0);
        // The same answer again: the query was answered already.
        let again = b.observe_payload(
            resolver,
            client,
            &answer_a(42, "pool.example", [192, 0, 2, 10], 300),
            false,
            T0 + SEC,
        );
        assert_eq!(again, Some(AnswerOutcome::Unsolicited));
        assert!(b.names_for(ip("192.0.2.10"), T0 + SEC).is_empty());
    }

    #[test]
    fn intel_binder_ignores_unsolicited_and_mismatched_answers() {
        let (client, resolver) = endpoints();
        let mut b = DnsBinder::new(BinderConfig::default());
        let spoof = answer_a(7, "pool.example", [203, 0, 113, 1], 300);
        assert_eq!(
            b.observe_payload(resolver, client, &spoof, false, T0),
            Some(AnswerOutcome::Unsolicited)
        );
        b.observe_payload(client, resolver, &query(7, "pool.example"), false, T0);
        // From another resolver, to another client port, with another id.
        let other: SocketAddr = "10.0.0.99:53".parse().unwrap();
        let other_port: SocketAddr = "10.0.0.5:40001".parse().unwrap();
        assert_eq!(
            b.observe_payload(other, client, &spoof, false, T0 + 1),
            Some(AnswerOutcome::Unsolicited)
        );
        assert_eq!(
            b.observe_payload(resolver, other_port, &spoof, false, T0 + 1),
            Some(AnswerOutcome::Unsolicited)
        );
        assert_eq!(
            b.observe_payload(
                resolver,
                client,
                &answer_a(8, "pool.example", [203, 0, 113, 1], 300),
                false,
                T0 + 1
            ),
            Some(AnswerOutcome::Unsolicited)
        );
        // Same id, other name: mismatched, and the real answer still binds afterwards.
        assert_eq!(
            b.observe_payload(
                resolver,
                client,
                &answer_a(7, "other.example", [203, 0, 113, 2], 300),
                false,
                T0 + 2
            ),
            Some(AnswerOutcome::Mismatched)
        );
        assert!(b.is_empty());
        assert_eq!(b.stats().answers_unsolicited, 4);
        assert_eq!(b.stats().answers_mismatched, 1);
        let real = answer_a(7, "pool.example", [192, 0, 2, 1], 300);
        assert!(matches!(
            b.observe_payload(resolver, client, &real, false, T0 + 3),
            Some(AnswerOutcome::Bound { addresses: 1, .. })
        ));
        assert!(b.names_for(ip("203.0.113.1"), T0 + 3).is_empty());
        assert_eq!(b.names_for(ip("192.0.2.1"), T0 + 3).len(), 1);
        // A query that timed out is not answered any more.
        b.observe_payload(
            client,
            resolver,
            &query(9, "late.example"),
            false,
            T0 + 10 * SEC,
        );
        let late = answer_a(9, "late.example", [192, 0, 2, 50], 300);
        assert_eq!(
            b.observe_payload(resolver, client, &late, false, T0 + 41 * SEC),
            Some(AnswerOutcome::Unsolicited)
        );
        assert_eq!(b.stats().pending_expired, 1);
    }

    #[test]
    fn intel_binder_ttl_expiry_cap_and_pruning() {
        let (client, resolver) = endpoints();
        let mut b = DnsBinder::new(BinderConfig::default());
        let exchange = |b: &mut DnsBinder, id: u16, name: &str, a: [u8; 4], ttl: u32, t: u64| {
            b.observe_payload(client, resolver, &query(id, name), false, t);
            b.observe_payload(resolver, client, &answer_a(id, name, a, ttl), false, t);
        };
        exchange(&mut b, 1, "short.example", [192, 0, 2, 1], 60, T0);
        let a = ip("192.0.2.1");
        assert_eq!(b.names_for(a, T0 + 60 * SEC).len(), 1);
        assert!(b.names_for(a, T0 + 60 * SEC + 1).is_empty());
        // Capped at a day; a TTL with the top bit set counts as 0.
        exchange(&mut b, 2, "long.example", [192, 0, 2, 2], u32::MAX >> 1, T0);
        assert_eq!(b.names_for(ip("192.0.2.2"), T0)[0].1, T0 + 86_400 * SEC);
        exchange(&mut b, 3, "neg.example", [192, 0, 2, 3], 0x8000_0010, T0);
        assert_eq!(b.names_for(ip("192.0.2.3"), T0)[0].1, T0);
        // Still held within keep_expired, pruned after it.
        b.prune(T0 + 61 * SEC);
        assert_eq!(b.len(), 3);
        b.prune(T0 + 60 * SEC + 301 * SEC);
        assert_eq!(b.len(), 1);
        assert_eq!(b.stats().bindings_expired, 2);
        // A later answer with a longer TTL extends a binding.
        exchange(
            &mut b,
            4,
            "long.example",
            [192, 0, 2, 2],
            10,
            T0 + 400 * SEC,
        );
        assert_eq!(b.names_for(ip("192.0.2.2"), T0)[0].1, T0 + 86_400 * SEC);
    }

    #[test]
    fn intel_binder_follows_cname_chain() {
        let (client, resolver) = endpoints();
        let mut b = DnsBinder::new(BinderConfig::default());
        b.observe_payload(client, resolver, &query(5, "www.pool.example"), false, T0);
        let out = b.observe_payload(resolver, client, &cname_chain_answer(5), false, T0);
        assert_eq!(
            out,
            Some(AnswerOutcome::Bound {
                addresses: 2,
                bindings: 6
            })
        );
        let names = |a: &str| -> Vec<String> {
            b.names_for(ip(a), T0).into_iter().map(|(n, _)| n).collect()
        };
        let chain = [
            "eu.pool.example",
            "node7.eu.pool.example",
            "www.pool.example",
        ];
        assert_eq!(names("198.51.100.7"), chain);
        assert_eq!(names("2001:db8::7"), chain);
        assert_eq!(b.names_for(ip("2001:db8::7"), T0)[0].1, T0 + 120 * SEC);
        // The record for a name off the chain is not bound.
        assert!(names("203.0.113.66").is_empty());
        assert_eq!(b.stats().records_off_chain, 1);
    }

    #[test]
    fn intel_binder_is_bounded() {
        let (client, resolver) = endpoints();
        let mut b = DnsBinder::new(BinderConfig {
            max_bindings: 10,
            max_names_per_addr: 3,
            max_pending: 5,
            ..BinderConfig::default()
        });
        for i in 0..20u16 {
            let name = format!("n{i}.example");
            b.observe_payload(client, resolver, &query(i, &name), false, T0);
            b.observe_payload(
                resolver,
                client,
                &answer_a(i, &name, [192, 0, 2, i as u8], 300),
                false,
                T0,
            );
        }
        assert_eq!(b.len(), 10);
        assert_eq!(b.stats().bindings_evicted, 10);
        assert!(b.names_for(ip("192.0.2.0"), T0).is_empty());
        assert_eq!(b.names_for(ip("192.0.2.19"), T0).len(), 1);
        // Per address: the oldest name goes.
        for i in 0..5u16 {
            let name = format!("cdn{i}.example");
            b.observe_payload(client, resolver, &query(100 + i, &name), false, T0);
            b.observe_payload(
                resolver,
                client,
                &answer_a(100 + i, &name, [198, 51, 100, 1], 300),
                false,
                T0,
            );
        }
        let names: Vec<String> = b
            .names_for(ip("198.51.100.1"), T0)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["cdn2.example", "cdn3.example", "cdn4.example"]);
        // Pending queries.
        for i in 0..8u16 {
            b.observe_payload(client, resolver, &query(200 + i, "q.example"), false, T0);
        }
        assert_eq!(b.pending_queries(), 5);
        assert_eq!(b.stats().pending_evicted, 3);
    }

    #[test]
    fn logged_answers_bind_their_chain_and_names_read_like_the_wire() {
        assert_eq!(
            name_from_text("EU.Pool.Example."),
            Some("eu.pool.example".into())
        );
        assert_eq!(
            name_from_text("a\\.b.example"),
            Some("a\\046b.example".into())
        );
        assert_eq!(
            name_from_text("x\\032y.example"),
            Some("x\\032y.example".into())
        );
        assert_eq!(name_from_text("a..b"), None);
        assert_eq!(name_from_text(&"a".repeat(64)), None);
        assert_eq!(name_from_text(&["abc"; 70].join(".")), None);
        let mut b = DnsBinder::new(BinderConfig::default());
        let rec = |name: &str, ttl: u32, data: RData| Record {
            name: name.into(),
            ttl,
            data,
        };
        let answers = [
            rec(
                "eu.pool.example",
                60,
                RData::Cname("pool-eu.example".into()),
            ),
            rec(
                "pool-eu.example",
                60,
                RData::A(Ipv4Addr::new(203, 0, 113, 9)),
            ),
            rec(
                "elsewhere.example",
                60,
                RData::A(Ipv4Addr::new(203, 0, 113, 10)),
            ),
        ];
        let out = b.observe_logged("eu.pool.example", &answers, T0);
        assert_eq!(
            out,
            AnswerOutcome::Bound {
                addresses: 1,
                bindings: 2
            }
        );
        let names: Vec<String> = b
            .names_for(ip("203.0.113.9"), T0)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["eu.pool.example", "pool-eu.example"]);
        assert!(
            b.names_for(ip("203.0.113.10"), T0).is_empty(),
            "off the chain"
        );
        assert!(
            b.names_for(ip("203.0.113.9"), T0 + 61_000_000_000)
                .is_empty(),
            "TTL"
        );
        assert_eq!(b.stats().answers_logged, 1);
    }
}
