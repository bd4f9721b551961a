//! Blockchain peer protocols: Bitcoin P2P message headers, Monero Levin headers, Ethereum discv4
//! packets (UDP) and the Ethereum RLPx ECIES handshake (TCP).
//!
//! Each rule checks several independent fields of a published header format, so that one
//! matching constant (a network magic, a signature) is never enough:
//! - Bitcoin (developer reference, "Message headers"): 4-byte network magic, a 12-byte command
//!   that must be a known command in lower-case ASCII padded with NULs only, a payload length
//!   <= 32 MiB (`MAX_SIZE`), and the checksum (first 4 bytes of SHA-256(SHA-256(payload)))
//!   verified whenever the whole payload is in the packet.
//! - Monero Levin (epee `levin_base.h`): signature `0x0101010101012101` LE, body size <= 100 MB
//!   (epee's default maximum packet size), `have_to_return` 0 or 1, a known P2P (1001-1007) or
//!   notification (2001-2010) command, flags request (1) or response (2), protocol version 1.
//! - Ethereum discv4 (devp2p `discv4.md`): `hash || signature || type || rlp`, with the hash
//!   checked: keccak256(signature || type || rlp) must equal the first 32 bytes, so random data
//!   passes with probability 2^-256. Type 1-6 and the data must open an RLP list that fits.
//! - Ethereum RLPx (devp2p `rlpx.md`, EIP-8): the auth message is ECIES ciphertext whose first
//!   65 bytes are the initiator's ephemeral public key in uncompressed SEC1 form `04 || X || Y`,
//!   after a 2-byte big-endian size prefix. Everything else is ciphertext, so the rule is: size
//!   prefix plausible (300..=2000) and consistent with the TCP payload, byte 2 == 0x04, and
//!   (X, Y) a point on secp256k1 (y^2 = x^3 + 7 mod p). The curve check makes the rule
//!   conservative: 64 random bytes are a curve point with probability ~2^-256, so TLS, SSH,
//!   HTTP, DNS-over-TCP or any other protocol that happens to start with a 2-byte length and a
//!   0x04 byte does not pass. What remains is any protocol that opens with a length prefix and
//!   a valid uncompressed secp256k1 key, i.e. ECIES in the Ethereum style; that is the residual
//!   false-positive risk. The pre-EIP-8 handshake (a bare 307-byte auth or 210-byte ack starting
//!   with the key) is recognised the same way.

use sha2::{Digest, Sha256};
use sha3::Keccak256;

use super::{hex, Direction, Identification, Kind};

/// Bitcoin's `MAX_SIZE`: no message payload is larger.
const BITCOIN_MAX_PAYLOAD: u32 = 32 * 1024 * 1024;

/// Network magics (message start bytes) of Bitcoin and of chains that share its message
/// format, with the coin when the magic is one coin's (`None`: several coins' test networks
/// use it, and only the node's user agent can tell).
const BITCOIN_MAGICS: &[([u8; 4], Option<&str>)] = &[
    ([0xf9, 0xbe, 0xb4, 0xd9], Some("bitcoin")),  // mainnet
    ([0x0b, 0x11, 0x09, 0x07], Some("bitcoin")),  // testnet3
    ([0x1c, 0x16, 0x3f, 0x28], Some("bitcoin")),  // testnet4 (BIP 94)
    ([0xfa, 0xbf, 0xb5, 0xda], None),             // regtest: Bitcoin's, and Litecoin's too
    ([0x0a, 0x03, 0xcf, 0x40], Some("bitcoin")),  // default signet
    ([0xfb, 0xc0, 0xb6, 0xdb], Some("litecoin")), // Litecoin mainnet
    ([0xfd, 0xd2, 0xc8, 0xf1], Some("litecoin")), // Litecoin testnet4
    ([0xc0, 0xc0, 0xc0, 0xc0], Some("dogecoin")), // Dogecoin mainnet
];

/// User agents (BIP 14) of node software, by prefix, and the coin each one runs.
const NODE_AGENTS: &[(&str, &str)] = &[
    ("/Satoshi:", "bitcoin"),
    ("/btcwire:", "bitcoin"),
    ("/LitecoinCore:", "litecoin"),
    ("/Shibetoshi:", "dogecoin"),
];

/// Longest user agent kept (Bitcoin Core's own limit, MAX_SUBVERSION_LENGTH).
const MAX_USER_AGENT: usize = 256;

/// The user agent of a `version` message payload: after version (4), services (8), time (8),
/// two network addresses (26 each) and a nonce (8), a compact-size length and the string.
fn version_user_agent(payload: &[u8]) -> Option<String> {
    let len = *payload.get(80)?;
    // Lengths of 0xfd and more are longer than any user agent may be.
    if len >= 0xfd {
        return None;
    }
    let ua = payload.get(81..81 + len as usize)?;
    let ua = std::str::from_utf8(ua).ok()?;
    (!ua.is_empty()).then(|| super::clean_text(ua, MAX_USER_AGENT))
}

const BITCOIN_COMMANDS: &[&str] = &[
    "version",
    "verack",
    "addr",
    "inv",
    "getdata",
    "getheaders",
    "getblocks",
    "headers",
    "ping",
    "pong",
    "sendcmpct",
    "feefilter",
    "sendheaders",
    "tx",
    "block",
    "getaddr",
    "addrv2",
    "sendaddrv2",
    "wtxidrelay",
    "mempool",
    "notfound",
    "reject",
    "merkleblock",
    "cmpctblock",
    "getblocktxn",
    "blocktxn",
    "filterload",
    "filteradd",
    "filterclear",
    "getcfilters",
    "cfilter",
    "getcfheaders",
    "cfheaders",
    "getcfcheckpt",
    "cfcheckpt",
];

/// The longest `version` payload waited for across segments (Bitcoin Core's are ~110 bytes).
const MAX_VERSION_PAYLOAD: usize = 1024;

/// A `version` message header whose payload has not arrived yet: nodes write the header and
/// the payload separately, so the user agent (which can name the coin) is in the next segment.
/// The bytes to keep and join with it.
pub(super) fn version_awaiting_payload(p: &[u8]) -> Option<&[u8]> {
    let header = p.get(..24)?;
    let magic: [u8; 4] = header[..4].try_into().ok()?;
    BITCOIN_MAGICS.iter().find(|(m, _)| *m == magic)?;
    if &header[4..16] != b"version\0\0\0\0\0" {
        return None;
    }
    let length = u32::from_le_bytes(header[16..20].try_into().ok()?) as usize;
    (length <= MAX_VERSION_PAYLOAD && p.len() < 24 + length).then_some(p)
}

/// A Bitcoin P2P message header at the start of a TCP payload.
pub(super) fn bitcoin(p: &[u8], dir: Direction) -> Option<Identification> {
    let header = p.get(..24)?;
    let magic: [u8; 4] = header[..4].try_into().ok()?;
    let &(_, magic_coin) = BITCOIN_MAGICS.iter().find(|(m, _)| *m == magic)?;
    let command = &header[4..16];
    let name_len = command.iter().position(|&b| b == 0).unwrap_or(12);
    let (name, padding) = command.split_at(name_len);
    if name.is_empty()
        || !name
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        || padding.iter().any(|&b| b != 0)
    {
        return None;
    }
    let name = std::str::from_utf8(name).ok()?;
    let name = *BITCOIN_COMMANDS.iter().find(|c| **c == name)?;
    let length = u32::from_le_bytes(header[16..20].try_into().ok()?);
    if length > BITCOIN_MAX_PAYLOAD {
        return None;
    }
    // The checksum is checked when the payload is all here; a payload that goes on in later
    // segments cannot be checked and is accepted on the header alone.
    let end = 24usize.checked_add(length as usize)?;
    let payload = p.get(24..end);
    if let Some(payload) = payload {
        let digest = Sha256::digest(Sha256::digest(payload));
        if digest[..4] != header[20..24] {
            return None;
        }
    }
    let mut id = Identification::new(
        Kind::BlockchainP2p,
        "bitcoin",
        format!("magic {} {name}", hex(&magic)),
        dir,
    );
    let agent = payload
        .filter(|_| name == "version")
        .and_then(version_user_agent);
    let agent_coin = agent.as_deref().and_then(|ua| {
        NODE_AGENTS
            .iter()
            .find(|(prefix, _)| ua.starts_with(prefix))
            .map(|&(_, coin)| coin)
    });
    match (magic_coin, agent_coin) {
        (Some(coin), _) => id.name_coin(coin, format!("network magic {} ({coin})", hex(&magic))),
        (None, Some(coin)) => id.name_coin(
            coin,
            format!(
                "node user agent {} on the shared test-network magic {}",
                agent.as_deref().unwrap_or_default(),
                hex(&magic)
            ),
        ),
        (None, None) => {}
    }
    id.agent = agent;
    id.confirmed_by_server = dir == Direction::ServerToClient;
    Some(id)
}

/// Levin signature `0x0101010101012101` as it appears on the wire (little-endian).
const LEVIN_SIGNATURE: [u8; 8] = [0x01, 0x21, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01];
/// epee's default maximum packet size.
const LEVIN_MAX_BODY: u64 = 100_000_000;

fn levin_command(command: u32) -> Option<&'static str> {
    Some(match command {
        1001 => "handshake",
        1002 => "timed sync",
        1003 => "ping",
        1004 => "stat info",
        1005 => "network state",
        1006 => "peer id",
        1007 => "support flags",
        2001 => "new block",
        2002 => "new transactions",
        2003 => "request get objects",
        2004 => "response get objects",
        2005 => "reserved",
        2006 => "request chain",
        2007 => "response chain entry",
        2008 => "new fluffy block",
        2009 => "request fluffy missing tx",
        2010 => "get txpool complement",
        _ => return None,
    })
}

/// A Monero Levin header (33 bytes) at the start of a TCP payload.
pub(super) fn levin(p: &[u8], dir: Direction) -> Option<Identification> {
    let h = p.get(..33)?;
    if h[..8] != LEVIN_SIGNATURE {
        return None;
    }
    let le32 = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(h.get(at..at + 4)?.try_into().ok()?))
    };
    let body = u64::from_le_bytes(h[8..16].try_into().ok()?);
    let have_to_return = h[16];
    let command = le32(17)?;
    let flags = le32(25)?;
    let version = le32(29)?;
    if body > LEVIN_MAX_BODY || have_to_return > 1 || !(flags == 1 || flags == 2) || version != 1 {
        return None;
    }
    let name = levin_command(command)?;
    let mut id = Identification::new(
        Kind::BlockchainP2p,
        "monero-levin",
        format!("levin command {command} ({name})"),
        dir,
    );
    id.name_coin(
        "monero",
        "Levin peer protocol (Monero's; CryptoNote forks of Monero share it)",
    );
    id.confirmed_by_server = dir == Direction::ServerToClient;
    Some(id)
}

/// Largest discv4 packet (the spec's 1280-byte limit).
const DISCV4_MAX: usize = 1280;

/// An Ethereum discv4 packet (one UDP payload).
pub(super) fn discv4(p: &[u8], dir: Direction) -> Option<Identification> {
    if p.len() < 99 || p.len() > DISCV4_MAX {
        return None;
    }
    let name = match p[97] {
        1 => "ping",
        2 => "pong",
        3 => "findnode",
        4 => "neighbors",
        5 => "enrrequest",
        6 => "enrresponse",
        _ => return None,
    };
    let data = &p[98..];
    let (header, len) = rlp_list_header(data)?;
    if header.checked_add(len)? > data.len() {
        return None;
    }
    if Keccak256::digest(&p[32..])[..] != p[..32] {
        return None;
    }
    let mut id = Identification::new(
        Kind::BlockchainP2p,
        "ethereum-discv4",
        format!("discv4 {name}"),
        dir,
    );
    id.name_coin(
        "ethereum",
        "discv4 node discovery (Ethereum's; other EVM chains' clients share it)",
    );
    id.confirmed_by_server = dir == Direction::ServerToClient;
    Some(id)
}

/// The header size and payload length of an RLP list at the start of `b`.
fn rlp_list_header(b: &[u8]) -> Option<(usize, usize)> {
    let first = *b.first()?;
    match first {
        0xc0..=0xf7 => Some((1, (first - 0xc0) as usize)),
        0xf8..=0xff => {
            let n = (first - 0xf7) as usize;
            let bytes = b.get(1..1 + n)?;
            if bytes[0] == 0 || n > 4 {
                return None;
            }
            let len = bytes.iter().fold(0usize, |acc, &x| (acc << 8) | x as usize);
            if len < 56 {
                return None;
            }
            Some((1 + n, len))
        }
        _ => None,
    }
}

/// The first message of an Ethereum RLPx connection (auth from the client, ack from the server).
pub(super) fn rlpx(p: &[u8], dir: Direction) -> Option<Identification> {
    let signature = rlpx_eip8(p, dir).or_else(|| rlpx_legacy(p, dir))?;
    let mut id = Identification::new(Kind::BlockchainP2p, "ethereum-rlpx", signature, dir);
    id.name_coin(
        "ethereum",
        "RLPx handshake (Ethereum's; other EVM chains' clients share it)",
    );
    id.confirmed_by_server = dir == Direction::ServerToClient;
    Some(id)
}

fn rlpx_eip8(p: &[u8], dir: Direction) -> Option<&'static str> {
    let size = u16::from_be_bytes(p.get(..2)?.try_into().ok()?) as usize;
    if !(300..=2000).contains(&size) || p.len() < 2 + 65 {
        return None;
    }
    let total = size + 2;
    let consistent = match dir {
        // The initiator sends auth alone and waits for ack; a long auth may be segmented.
        Direction::ClientToServer => total == p.len() || (total > p.len() && p.len() >= 512),
        // The recipient may send its first frame right behind ack.
        Direction::ServerToClient => total <= p.len() || p.len() >= 512,
    };
    if !consistent || !is_secp256k1_point(&p[2..67]) {
        return None;
    }
    Some(match dir {
        Direction::ClientToServer => "rlpx-auth-eip8",
        Direction::ServerToClient => "rlpx-ack-eip8",
    })
}

fn rlpx_legacy(p: &[u8], dir: Direction) -> Option<&'static str> {
    let (len, sig) = match dir {
        Direction::ClientToServer => (307, "rlpx-auth-legacy"),
        Direction::ServerToClient => (210, "rlpx-ack-legacy"),
    };
    (p.len() == len && is_secp256k1_point(&p[..65])).then_some(sig)
}

/// True for `04 || X || Y` (65 bytes) where (X, Y) lies on secp256k1.
fn is_secp256k1_point(key: &[u8]) -> bool {
    let (Some(&0x04), Some(x), Some(y)) = (key.first(), key.get(1..33), key.get(33..65)) else {
        return false;
    };
    let (Some(x), Some(y)) = (field::from_be(x), field::from_be(y)) else {
        return false;
    };
    let y2 = field::mul(&y, &y);
    let x3 = field::mul(&field::mul(&x, &x), &x);
    y2 == field::add(&x3, &[7, 0, 0, 0])
}

/// Arithmetic modulo p = 2^256 - 2^32 - 977, on four little-endian 64-bit limbs; only what the
/// curve equation needs. Inputs are always fully reduced (< p).
mod field {
    pub type Fe = [u64; 4];

    const P: Fe = [
        0xFFFF_FFFE_FFFF_FC2F,
        0xFFFF_FFFF_FFFF_FFFF,
        0xFFFF_FFFF_FFFF_FFFF,
        0xFFFF_FFFF_FFFF_FFFF,
    ];
    /// 2^256 mod p.
    const C: u64 = 0x1_0000_03D1;

    /// Big-endian 32 bytes to a field element; `None` unless < p.
    pub fn from_be(b: &[u8]) -> Option<Fe> {
        if b.len() != 32 {
            return None;
        }
        let mut f = [0u64; 4];
        for (i, limb) in f.iter_mut().enumerate() {
            let at = 32 - 8 * (i + 1);
            *limb = u64::from_be_bytes(b[at..at + 8].try_into().ok()?);
        }
        (!ge_p(&f)).then_some(f)
    }

    fn ge_p(a: &Fe) -> bool {
        for i in (0..4).rev() {
            if a[i] != P[i] {
                return a[i] > P[i];
            }
        }
        true
    }

    fn sub_p(a: &mut Fe) {
        let mut borrow = 0u64;
        for i in 0..4 {
            let (d1, b1) = a[i].overflowing_sub(P[i]);
            let (d2, b2) = d1.overflowing_sub(borrow);
            a[i] = d2;
            borrow = u64::from(b1 || b2);
        }
    }

    /// Adds `k * 2^256 ≡ k * C` to `r` until nothing carries out, then reduces below p.
    fn finish(mut r: Fe, mut carry: u128) -> Fe {
        while carry != 0 {
            let mut c = carry * C as u128;
            for limb in r.iter_mut() {
                let v = *limb as u128 + c;
                *limb = v as u64;
                c = v >> 64;
            }
            carry = c;
        }
        while ge_p(&r) {
            sub_p(&mut r);
        }
        r
    }

    pub fn add(a: &Fe, b: &Fe) -> Fe {
        let mut r = [0u64; 4];
        let mut carry = 0u128;
        for i in 0..4 {
            let v = a[i] as u128 + b[i] as u128 + carry;
            r[i] = v as u64;
            carry = v >> 64;
        }
        finish(r, carry)
    }

    pub fn mul(a: &Fe, b: &Fe) -> Fe {
        let mut t = [0u64; 8];
        for i in 0..4 {
            let mut carry = 0u128;
            for j in 0..4 {
                let v = t[i + j] as u128 + a[i] as u128 * b[j] as u128 + carry;
                t[i + j] = v as u64;
                carry = v >> 64;
            }
            t[i + 4] = carry as u64;
        }
        // t = hi * 2^256 + lo ≡ lo + hi * C.
        let mut r = [0u64; 4];
        let mut carry = 0u128;
        for i in 0..4 {
            let v = t[i] as u128 + t[i + 4] as u128 * C as u128 + carry;
            r[i] = v as u64;
            carry = v >> 64;
        }
        finish(r, carry)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::{classify, Transport};
    use super::*;
    use Direction::{ClientToServer as C2S, ServerToClient as S2C};

    pub const GX: &str = "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798";
    pub const GY: &str = "483ada7726a3c4655da4fbfc0e1108a8fd17b448a68554199c47d08ffb10d4b8";
    // 2G, for a second independent point.
    const G2X: &str = "c6047f9441ed7d6d3045406e95c07cd85c778e4b8cef3ca7abac09b95c709ee5";
    const G2Y: &str = "1ae168fea63dc339a3c58419466ceaeef7f632653266d0e1236431a950cfe52a";

    /// A restored identification names its coin from `COINS`: every coin named here must be
    /// there, or identifications of it would be dropped at a restart.
    #[test]
    fn every_coin_of_the_magic_table_is_known_to_restores() {
        for coin in BITCOIN_MAGICS
            .iter()
            .filter_map(|(_, c)| *c)
            .chain(NODE_AGENTS.iter().map(|(_, c)| *c))
        {
            assert!(super::super::COINS.contains(&coin), "{coin}");
        }
    }

    pub fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn point(x: &str, y: &str) -> Vec<u8> {
        let mut k = vec![0x04];
        k.extend(unhex(x));
        k.extend(unhex(y));
        k
    }

    pub fn bitcoin_message(magic: [u8; 4], command: &str, payload: &[u8]) -> Vec<u8> {
        let mut m = magic.to_vec();
        let mut cmd = [0u8; 12];
        cmd[..command.len()].copy_from_slice(command.as_bytes());
        m.extend_from_slice(&cmd);
        m.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        m.extend_from_slice(&Sha256::digest(Sha256::digest(payload))[..4]);
        m.extend_from_slice(payload);
        m
    }

    /// A `version` payload (protocol 70016) as Bitcoin Core sends it.
    pub fn version_payload() -> Vec<u8> {
        version_payload_of(b"/Satoshi:27.0.0/")
    }

    /// A `version` payload with the user agent `ua`.
    pub fn version_payload_of(ua: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&70016i32.to_le_bytes());
        v.extend_from_slice(&0x409u64.to_le_bytes()); // NODE_NETWORK | WITNESS | NETWORK_LIMITED
        v.extend_from_slice(&1_700_000_000i64.to_le_bytes());
        for _ in 0..2 {
            v.extend_from_slice(&0u64.to_le_bytes());
            v.extend_from_slice(&[0; 10]);
            v.extend_from_slice(&[0xff, 0xff, 192, 0, 2, 1]);
            v.extend_from_slice(&8333u16.to_be_bytes());
        }
        v.extend_from_slice(&0x1122334455667788u64.to_le_bytes());
        v.push(ua.len() as u8);
        v.extend_from_slice(ua);
        v.extend_from_slice(&840_000i32.to_le_bytes());
        v.push(1);
        v
    }

    #[test]
    fn bitcoin_messages_on_every_network() {
        for (magic, coin) in BITCOIN_MAGICS {
            let m = bitcoin_message(*magic, "version", &version_payload());
            let id = classify(&m, C2S, Transport::Tcp).unwrap();
            assert_eq!(id.kind, Kind::BlockchainP2p);
            assert_eq!(id.protocol, "bitcoin");
            // The Satoshi user agent names Bitcoin where the magic is shared.
            assert_eq!(id.coin, Some(coin.unwrap_or("bitcoin")));
            assert_eq!(id.agent.as_deref(), Some("/Satoshi:27.0.0/"));
            assert_eq!(id.signature, format!("magic {} version", hex(magic)));
            assert!(!id.confirmed_by_server);
        }
        // The regtest magic that Bitcoin and Litecoin share: the user agent decides, and
        // without one (a verack) nothing is named.
        let regtest = [0xfa, 0xbf, 0xb5, 0xda];
        let m = bitcoin_message(
            regtest,
            "version",
            &version_payload_of(b"/LitecoinCore:0.21.2.1/"),
        );
        let id = classify(&m, C2S, Transport::Tcp).unwrap();
        assert_eq!(id.coin, Some("litecoin"));
        assert!(id
            .coin_reason
            .as_deref()
            .is_some_and(|r| r.contains("/LitecoinCore:0.21.2.1/")));
        let m = bitcoin_message(regtest, "version", &version_payload_of(b"/SomeNode:1.0/"));
        assert_eq!(classify(&m, C2S, Transport::Tcp).unwrap().coin, None);
        let m = bitcoin_message(regtest, "verack", &[]);
        assert_eq!(classify(&m, C2S, Transport::Tcp).unwrap().coin, None);
        // As nodes send it: the header in one segment, the payload in the next. The flow
        // classifier joins them, so the user agent still names the coin.
        let m = bitcoin_message(
            regtest,
            "version",
            &version_payload_of(b"/LitecoinCore:0.21.2.1/"),
        );
        let mut flow = super::super::FlowClassifier::new(Transport::Tcp);
        let first = flow
            .feed(&m[..24], C2S)
            .expect("the header alone identifies");
        assert_eq!(first.coin, None);
        let joined = flow.feed(&m[24..], C2S).expect("the payload improves it");
        assert_eq!(joined.coin, Some("litecoin"));
        assert_eq!(joined.agent.as_deref(), Some("/LitecoinCore:0.21.2.1/"));
        let m = bitcoin_message([0xf9, 0xbe, 0xb4, 0xd9], "verack", &[]);
        // verack's checksum is that of the empty payload: 5df6e0e2.
        assert_eq!(m[20..24], [0x5d, 0xf6, 0xe0, 0xe2]);
        let id = classify(&m, S2C, Transport::Tcp).unwrap();
        assert_eq!(id.signature, "magic f9beb4d9 verack");
        assert!(id.confirmed_by_server);
        // Two messages in one segment: the first header decides.
        let mut two = m.clone();
        two.extend(bitcoin_message(
            [0xf9, 0xbe, 0xb4, 0xd9],
            "sendcmpct",
            &[0; 9],
        ));
        assert!(classify(&two, S2C, Transport::Tcp).is_some());
    }

    #[test]
    fn bitcoin_header_alone_and_cut_payload() {
        let m = bitcoin_message([0xf9, 0xbe, 0xb4, 0xd9], "block", &[7; 2000]);
        // The payload goes on in later segments: the header is judged alone.
        assert!(classify(&m[..24], C2S, Transport::Tcp).is_some());
        assert!(classify(&m[..600], C2S, Transport::Tcp).is_some());
        // Less than a header.
        assert!(classify(&m[..23], C2S, Transport::Tcp).is_none());
    }

    #[test]
    fn bitcoin_needs_more_than_the_magic() {
        let good = bitcoin_message([0xf9, 0xbe, 0xb4, 0xd9], "version", &version_payload());
        let bad = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut m = good.clone();
            f(&mut m);
            assert!(classify(&m, C2S, Transport::Tcp).is_none(), "{m:02x?}");
        };
        bad(&|m| m[4..16].copy_from_slice(b"hello\0\0\0\0\0\0\0")); // unknown command
        bad(&|m| m[4..16].copy_from_slice(b"version\0\0x\0\0")); // junk in padding
        bad(&|m| m[4..16].copy_from_slice(b"VERSION\0\0\0\0\0")); // wrong case
        bad(&|m| m[4..16].copy_from_slice(&[0; 12])); // empty command
        bad(&|m| m[20] ^= 1); // checksum
        bad(&|m| m[16..20].copy_from_slice(&(33u32 << 20).to_le_bytes())); // > 32 MiB
        bad(&|m| m[0] = 0xf8); // unknown magic
                               // Magic alone, followed by text.
        let mut m = vec![0xf9, 0xbe, 0xb4, 0xd9];
        m.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert!(classify(&m, C2S, Transport::Tcp).is_none());
        // Not on UDP.
        assert!(classify(&good, C2S, Transport::Udp).is_none());
    }

    pub fn levin_header(command: u32, body: u64, flags: u32) -> Vec<u8> {
        let mut h = LEVIN_SIGNATURE.to_vec();
        assert_eq!(
            u64::from_le_bytes(h[..8].try_into().unwrap()),
            0x0101010101012101
        );
        h.extend_from_slice(&body.to_le_bytes());
        h.push(u8::from(flags == 1));
        h.extend_from_slice(&command.to_le_bytes());
        h.extend_from_slice(&0i32.to_le_bytes());
        h.extend_from_slice(&flags.to_le_bytes());
        h.extend_from_slice(&1u32.to_le_bytes());
        assert_eq!(h.len(), 33);
        h
    }

    #[test]
    fn monero_levin() {
        let mut m = levin_header(1001, 230, 1);
        // Portable storage signature starts the body.
        m.extend_from_slice(&[0x01, 0x11, 0x01, 0x01, 0x01, 0x01, 0x02, 0x01, 0x01]);
        let id = classify(&m, C2S, Transport::Tcp).unwrap();
        assert_eq!(id.protocol, "monero-levin");
        assert_eq!(id.signature, "levin command 1001 (handshake)");
        assert_eq!(id.coin, Some("monero"));
        let id = classify(&levin_header(2002, 4000, 1), S2C, Transport::Tcp).unwrap();
        assert_eq!(id.signature, "levin command 2002 (new transactions)");
        assert!(id.confirmed_by_server);
        assert!(classify(&levin_header(1002, 100, 2), C2S, Transport::Tcp).is_some());
        // Negative: each field on its own.
        assert!(classify(&levin_header(1001, 230, 1)[..32], C2S, Transport::Tcp).is_none());
        assert!(classify(&levin_header(999, 230, 1), C2S, Transport::Tcp).is_none());
        assert!(classify(&levin_header(2011, 230, 1), C2S, Transport::Tcp).is_none());
        assert!(classify(&levin_header(1001, 1 << 40, 1), C2S, Transport::Tcp).is_none());
        assert!(classify(&levin_header(1001, 230, 3), C2S, Transport::Tcp).is_none());
        let mut m = levin_header(1001, 230, 1);
        m[29] = 2; // protocol version
        assert!(classify(&m, C2S, Transport::Tcp).is_none());
        let mut m = levin_header(1001, 230, 1);
        m[16] = 2; // have_to_return is a bool
        assert!(classify(&m, C2S, Transport::Tcp).is_none());
        let mut m = levin_header(1001, 230, 1);
        m[1] = 0x22; // signature
        assert!(classify(&m, C2S, Transport::Tcp).is_none());
    }

    /// RLP of a discv4 ping: [version, from, to, expiration].
    fn ping_rlp() -> Vec<u8> {
        let endpoint = |ip: [u8; 4], port: u16| {
            let mut e = vec![0x84];
            e.extend_from_slice(&ip);
            e.push(0x82);
            e.extend_from_slice(&port.to_be_bytes());
            e.push(0x82);
            e.extend_from_slice(&port.to_be_bytes());
            let mut l = vec![0xc0 + e.len() as u8];
            l.extend(e);
            l
        };
        let mut items = vec![0x04]; // version 4
        items.extend(endpoint([192, 0, 2, 1], 30303));
        items.extend(endpoint([198, 51, 100, 7], 30303));
        items.push(0x84);
        items.extend_from_slice(&1_700_000_060u32.to_be_bytes());
        let mut l = vec![0xc0 + items.len() as u8];
        l.extend(items);
        l
    }

    pub fn discv4_packet(ptype: u8, data: &[u8]) -> Vec<u8> {
        let mut body: Vec<u8> = (0..65u8)
            .map(|i| i.wrapping_mul(37).wrapping_add(11))
            .collect();
        body.push(ptype);
        body.extend_from_slice(data);
        let mut p = Keccak256::digest(&body).to_vec();
        p.extend(body);
        p
    }

    #[test]
    fn keccak_is_keccak256_not_sha3() {
        // keccak256("") as used by Ethereum (not FIPS SHA3-256, which is a7ffc6f8...).
        assert_eq!(
            hex(&Keccak256::digest(b"")),
            "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
        );
    }

    #[test]
    fn ethereum_discv4() {
        let names = [
            "ping",
            "pong",
            "findnode",
            "neighbors",
            "enrrequest",
            "enrresponse",
        ];
        for (t, name) in (1u8..=6).zip(names) {
            let p = discv4_packet(t, &ping_rlp());
            let id = classify(&p, C2S, Transport::Udp).unwrap();
            assert_eq!(id.protocol, "ethereum-discv4");
            assert_eq!(id.signature, format!("discv4 {name}"));
            assert_eq!(id.coin, Some("ethereum"));
            // Never on TCP.
            assert!(classify(&p, C2S, Transport::Tcp).is_none());
        }
        // A long list (0xf8 form) with trailing bytes after the list.
        let mut long = vec![0xf8, 60];
        long.extend_from_slice(&[0x80; 60]);
        long.extend_from_slice(b"extra");
        assert!(classify(&discv4_packet(3, &long), C2S, Transport::Udp).is_some());

        let good = discv4_packet(1, &ping_rlp());
        let mut p = good.clone();
        p[0] ^= 1; // hash
        assert!(classify(&p, C2S, Transport::Udp).is_none());
        let mut p = good.clone();
        p[120] ^= 1; // data changed after hashing
        assert!(classify(&p, C2S, Transport::Udp).is_none());
        assert!(classify(&discv4_packet(7, &ping_rlp()), C2S, Transport::Udp).is_none());
        assert!(classify(&discv4_packet(0, &ping_rlp()), C2S, Transport::Udp).is_none());
        // Not an RLP list (a string), an empty body, a list longer than the packet.
        assert!(classify(&discv4_packet(1, &[0x83, 1, 2, 3]), C2S, Transport::Udp).is_none());
        assert!(classify(&discv4_packet(1, &[]), C2S, Transport::Udp).is_none());
        assert!(classify(&discv4_packet(1, &[0xc5, 1, 2]), C2S, Transport::Udp).is_none());
        assert!(classify(&discv4_packet(1, &[0xf8, 10]), C2S, Transport::Udp).is_none());
        // Too large for discv4.
        let mut big = vec![0xf9, 0x05, 0x00];
        big.extend_from_slice(&[0x80; 0x500]);
        assert!(classify(&discv4_packet(4, &big), C2S, Transport::Udp).is_none());
    }

    #[test]
    fn secp256k1_curve_check() {
        assert!(is_secp256k1_point(&point(GX, GY)));
        assert!(is_secp256k1_point(&point(G2X, G2Y)));
        // -G = (x, p - y) is on the curve too.
        let p = field::from_be(&unhex(
            "fffffffffffffffffffffffffffffffffffffffffffffffffffffffefffffc2e",
        ))
        .unwrap(); // p - 1
        let y = field::from_be(&unhex(GY)).unwrap();
        let mut neg = [0u64; 4];
        let mut borrow = 0u64;
        for i in 0..4 {
            let (d1, b1) = p[i].overflowing_sub(y[i]);
            let (d2, b2) = d1.overflowing_sub(borrow);
            neg[i] = d2;
            borrow = u64::from(b1 || b2);
        }
        // neg = (p - 1) - y; one more makes p - y.
        let neg = field::add(&neg, &[1, 0, 0, 0]);
        let mut key = vec![0x04];
        key.extend(unhex(GX));
        for limb in neg.iter().rev() {
            key.extend_from_slice(&limb.to_be_bytes());
        }
        assert!(is_secp256k1_point(&key));
        // Off the curve: one bit changed, swapped coordinates, compressed form, x >= p.
        let mut k = point(GX, GY);
        k[64] ^= 1;
        assert!(!is_secp256k1_point(&k));
        assert!(!is_secp256k1_point(&point(GY, GX)));
        let mut k = point(GX, GY);
        k[0] = 0x02;
        assert!(!is_secp256k1_point(&k));
        assert!(!is_secp256k1_point(&point(&"ff".repeat(32), GY)));
        assert!(!is_secp256k1_point(&[0x04; 65]));
        assert!(!is_secp256k1_point(&[0x04; 10]));
        // (0, 0): 0 != 0^3 + 7.
        assert!(!is_secp256k1_point(&point(
            &"00".repeat(32),
            &"00".repeat(32)
        )));
    }

    #[test]
    fn field_arithmetic_reduces() {
        let pm1 = field::from_be(&unhex(
            "fffffffffffffffffffffffffffffffffffffffffffffffffffffffefffffc2e",
        ))
        .unwrap();
        // (p-1)^2 = 1, (p-1) + 1 = 0, (p-1) + (p-1) = p - 2.
        assert_eq!(field::mul(&pm1, &pm1), [1, 0, 0, 0]);
        assert_eq!(field::add(&pm1, &[1, 0, 0, 0]), [0, 0, 0, 0]);
        let mut pm2 = pm1;
        pm2[0] -= 1;
        assert_eq!(field::add(&pm1, &pm1), pm2);
    }

    pub fn rlpx_auth(key: &[u8], body_len: usize) -> Vec<u8> {
        let mut m = ((key.len() + body_len) as u16).to_be_bytes().to_vec();
        m.extend_from_slice(key);
        m.extend((0..body_len).map(|i| (i * 131 % 251) as u8));
        m
    }

    #[test]
    fn ethereum_rlpx_handshake() {
        let auth = rlpx_auth(&point(GX, GY), 400);
        let id = classify(&auth, C2S, Transport::Tcp).unwrap();
        assert_eq!(id.protocol, "ethereum-rlpx");
        assert_eq!(id.signature, "rlpx-auth-eip8");
        assert_eq!(id.coin, Some("ethereum"));
        let ack = rlpx_auth(&point(G2X, G2Y), 300);
        let id = classify(&ack, S2C, Transport::Tcp).unwrap();
        assert_eq!(id.signature, "rlpx-ack-eip8");
        assert!(id.confirmed_by_server);
        // ack followed by the first frame in the same segment.
        let mut ack_frame = ack.clone();
        ack_frame.extend_from_slice(&[0x55; 64]);
        assert!(classify(&ack_frame, S2C, Transport::Tcp).is_some());
        // A long auth segmented after 1400 bytes.
        let long = rlpx_auth(&point(GX, GY), 1800);
        assert!(classify(&long[..1400], C2S, Transport::Tcp).is_some());
        // Legacy handshake.
        let mut legacy = point(GX, GY);
        legacy.resize(307, 0xaa);
        assert_eq!(
            classify(&legacy, C2S, Transport::Tcp).unwrap().signature,
            "rlpx-auth-legacy"
        );

        // Negative: not a curve point, size inconsistent, size out of range, wrong form byte.
        let mut off = auth.clone();
        off[40] ^= 1;
        assert!(classify(&off, C2S, Transport::Tcp).is_none());
        assert!(classify(&auth[..auth.len() - 1], C2S, Transport::Tcp).is_none());
        let mut extra = auth.clone();
        extra.push(0);
        assert!(classify(&extra, C2S, Transport::Tcp).is_none());
        assert!(classify(&rlpx_auth(&point(GX, GY), 100), C2S, Transport::Tcp).is_none());
        assert!(classify(&rlpx_auth(&point(GX, GY), 2000), C2S, Transport::Tcp).is_none());
        let mut k = point(GX, GY);
        k[0] = 0x03;
        assert!(classify(&rlpx_auth(&k, 400), C2S, Transport::Tcp).is_none());
        // A length-prefixed message that starts with 0x04 but carries no key (DNS over TCP
        // with a query id of 0x04xx, 400 bytes long).
        let mut dns = vec![0x01, 0x90, 0x04, 0xd2, 0x81, 0x80, 0x00, 0x01, 0x00, 0x05];
        dns.resize(402, 0);
        assert!(classify(&dns, S2C, Transport::Tcp).is_none());
        assert!(classify(&dns, C2S, Transport::Tcp).is_none());
    }
}
