//! Naming the coin a miner mines from what the miner and the pool say: the wallet address in
//! a login (its format *and* its checksum), the algorithm of a CryptoNote job, the dialect of
//! a stratum subscription, and the rules of a getblocktemplate call.
//!
//! Why: an analyst acts on "this host mines Monero", not on "this host speaks stratum", and
//! the coin decides what to look for next (pools, wallets, daemons). Each name comes with the
//! reason it was given (`coin_reason`), so it can be checked.
//!
//! What it must never do: guess. A format shared by several coins names none of them (a
//! Bitcoin-style P2SH `3...` address is also Litecoin's legacy P2SH and Bitcoin Cash's), a
//! checksum that does not verify names nothing, and a test network is said as such. Every
//! input is attacker-controlled text: it is bounded ([`MAX_LOGIN_CHARS`], [`MAX_TOKENS`]) before
//! any decoding.
//!
//! Formats, from each project's own definitions: Bitcoin base58check version bytes (0 P2PKH;
//! 0x6f testnet) and BIP 173/350 segwit (bech32 for v0, bech32m for v1+; `bc`, `tb`, `bcrt`);
//! Litecoin (48 `L`, 50 `M`, `ltc1`/`tltc1`/`rltc1`); Dogecoin (30 `D`, 22); Ravencoin (60
//! `R`, 122); Dash (76 `X`, 16); Zcash transparent (two-byte versions `1cb8` t1, `1cbd` t3) and
//! Sapling `zs`; Monero (its block base58 with a Keccak-256 checksum; network bytes 18/19/42
//! mainnet, 24/25/36 stagenet, 53/54/63 testnet); Ethereum accounts (`0x` + 40 hex, EIP-55
//! mixed-case checksum verified when mixed case is used; the same format serves Ethereum
//! Classic and other EVM chains, which the reason says).

use sha3::{Digest, Keccak256};

/// Longest login looked at; wallet logins are at most a few hundred characters.
pub const MAX_LOGIN_CHARS: usize = 512;
/// At most this many tokens of one login are tried as addresses.
const MAX_TOKENS: usize = 8;
/// The longest token tried (Zcash unified and Litecoin MWEB addresses are the longest).
const MAX_ADDRESS_CHARS: usize = 256;

/// A coin named, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoinEvidence {
    /// One of [`super::COINS`].
    pub coin: &'static str,
    /// What showed it, in words ("wallet address: Monero standard address, Keccak checksum
    /// valid", "CryptoNote job algorithm rx/0 (RandomX, Monero)").
    pub reason: String,
}

impl CoinEvidence {
    fn new(coin: &'static str, reason: impl Into<String>) -> Self {
        CoinEvidence {
            coin,
            reason: reason.into(),
        }
    }
}

/// The coin of a login (`WALLET`, `WALLET.worker`, `WALLET+difficulty`, `COIN:WALLET.worker`,
/// ...): the first token that is a wallet address with a valid checksum.
pub fn from_login(login: &str) -> Option<CoinEvidence> {
    if login.chars().count() > MAX_LOGIN_CHARS {
        return None;
    }
    login
        .split(['.', '+', '/', ':', '#', ',', ';', ' ', '@', '|'])
        .filter(|t| (26..=MAX_ADDRESS_CHARS).contains(&t.len()))
        .take(MAX_TOKENS)
        .find_map(from_address)
}

/// The coin of one wallet address, when its format is one coin's and its checksum verifies.
pub fn from_address(a: &str) -> Option<CoinEvidence> {
    if a.len() > MAX_ADDRESS_CHARS || !a.is_ascii() {
        return None;
    }
    if let Some(hex) = a.strip_prefix("0x").or_else(|| a.strip_prefix("0X")) {
        return ethereum(hex);
    }
    if a.contains('1') {
        if let Some(e) = bech32_address(a) {
            return Some(e);
        }
    }
    if let Some(e) = monero(a) {
        return Some(e);
    }
    base58check(a)
}

/// Segwit (and Zcash Sapling) addresses: the human-readable part names the coin and network.
fn bech32_address(a: &str) -> Option<CoinEvidence> {
    let lower = a.to_ascii_lowercase();
    let hrp = lower.rsplit_once('1')?.0;
    let segwit = |coin: &'static str, network: &str, name: &str| {
        let (_, version, program) = bech32::segwit::decode(a).ok()?;
        let checksum = if version.to_u8() == 0 {
            "bech32"
        } else {
            "bech32m"
        };
        Some(CoinEvidence::new(
            coin,
            format!(
                "wallet address: {name} segwit v{} ({} bytes), {checksum} checksum valid{network}",
                version.to_u8(),
                program.len()
            ),
        ))
    };
    match hrp {
        "bc" => segwit("bitcoin", "", "Bitcoin"),
        "tb" => segwit("bitcoin", " (testnet)", "Bitcoin"),
        "bcrt" => segwit("bitcoin", " (regtest)", "Bitcoin"),
        "ltc" => segwit("litecoin", "", "Litecoin"),
        "tltc" => segwit("litecoin", " (testnet)", "Litecoin"),
        "rltc" => segwit("litecoin", " (regtest)", "Litecoin"),
        "zs" => {
            let (_, data) = bech32::decode(a).ok()?;
            // A Sapling payment address is 43 bytes: diversifier (11) and pk_d (32).
            (data.len() == 43).then(|| {
                CoinEvidence::new(
                    "zcash",
                    "wallet address: Zcash Sapling, bech32 checksum valid",
                )
            })
        }
        _ => None,
    }
}

/// Base58check addresses of the Bitcoin family, by version byte(s). Versions shared by
/// several coins (Bitcoin's P2SH 5, every coin's testnet 0x6f/0xc4) name none.
fn base58check(a: &str) -> Option<CoinEvidence> {
    let data = bs58::decode(a).with_check(None).into_vec().ok()?;
    let (coin, name, network) = match data.as_slice() {
        [0x1c, 0xb8, rest @ ..] | [0x1c, 0xbd, rest @ ..] if rest.len() == 20 => {
            ("zcash", "Zcash transparent", "")
        }
        [version, rest @ ..] if rest.len() == 20 => match version {
            0x00 => ("bitcoin", "Bitcoin P2PKH", ""),
            0x30 => ("litecoin", "Litecoin P2PKH", ""),
            0x32 => ("litecoin", "Litecoin P2SH", ""),
            0x3a => ("litecoin", "Litecoin P2SH", " (testnet/regtest)"),
            0x1e => ("dogecoin", "Dogecoin P2PKH", ""),
            0x16 => ("dogecoin", "Dogecoin P2SH", ""),
            0x3c => ("ravencoin", "Ravencoin P2PKH", ""),
            0x7a => ("ravencoin", "Ravencoin P2SH", ""),
            0x4c => ("dash", "Dash P2PKH", ""),
            0x10 => ("dash", "Dash P2SH", ""),
            _ => return None,
        },
        _ => return None,
    };
    Some(CoinEvidence::new(
        coin,
        format!("wallet address: {name}, base58check checksum valid{network}"),
    ))
}

/// Monero standard, integrated and subaddresses: block base58 with a Keccak-256 checksum,
/// then the network byte, two 32-byte keys and, for integrated addresses, an 8-byte payment id.
fn monero(a: &str) -> Option<CoinEvidence> {
    if !matches!(a.len(), 95 | 106) {
        return None;
    }
    let data = base58_monero::decode_check(a).ok()?;
    let (kind, network) = match data.first()? {
        18 => ("standard address", ""),
        19 => ("integrated address", ""),
        42 => ("subaddress", ""),
        24 => ("standard address", " (stagenet)"),
        25 => ("integrated address", " (stagenet)"),
        36 => ("subaddress", " (stagenet)"),
        53 => ("standard address", " (testnet)"),
        54 => ("integrated address", " (testnet)"),
        63 => ("subaddress", " (testnet)"),
        _ => return None,
    };
    let expected = if kind == "integrated address" { 73 } else { 65 };
    (data.len() == expected).then(|| {
        CoinEvidence::new(
            "monero",
            format!("wallet address: Monero {kind}, Keccak checksum valid{network}"),
        )
    })
}

/// `0x` + 40 hex digits; with mixed case, the EIP-55 checksum must verify.
fn ethereum(hex: &str) -> Option<CoinEvidence> {
    if hex.len() != 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mixed =
        hex.bytes().any(|b| b.is_ascii_lowercase()) && hex.bytes().any(|b| b.is_ascii_uppercase());
    let checksum = if mixed {
        let hash = Keccak256::digest(hex.to_ascii_lowercase().as_bytes());
        let ok = hex.bytes().enumerate().all(|(i, b)| {
            let nibble = (hash[i / 2] >> if i % 2 == 0 { 4 } else { 0 }) & 0x0f;
            !b.is_ascii_alphabetic() || (b.is_ascii_uppercase() == (nibble >= 8))
        });
        if !ok {
            return None;
        }
        "EIP-55 checksum valid"
    } else {
        "no EIP-55 checksum (single case)"
    };
    Some(CoinEvidence::new(
        "ethereum",
        format!(
            "wallet address: Ethereum-format account, {checksum}; Ethereum Classic and other EVM chains share the format"
        ),
    ))
}

/// The coin of a CryptoNote job's (or a single-algorithm login's) algorithm, as XMRig names
/// them. Algorithms several coins use name none.
pub fn from_algorithm(algo: &str) -> Option<CoinEvidence> {
    let (coin, name) = match algo {
        "rx/0" | "randomx" => ("monero", "RandomX"),
        "rx/wow" => ("wownero", "RandomWOW"),
        "kawpow" => ("ravencoin", "KawPow"),
        "ghostrider" => ("raptoreum", "GhostRider"),
        _ => return None,
    };
    Some(CoinEvidence::new(
        coin,
        format!("algorithm {algo} ({name}, used by {coin})"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base58check_of(version: &[u8], payload: &[u8]) -> String {
        let mut data = version.to_vec();
        data.extend_from_slice(payload);
        bs58::encode(data).with_check().into_string()
    }

    fn segwit_of(hrp: &str, version: u8, program: &[u8]) -> String {
        let hrp = bech32::Hrp::parse(hrp).expect("hrp");
        let v = bech32::Fe32::try_from(version).expect("version");
        bech32::segwit::encode(hrp, v, program).expect("segwit")
    }

    fn monero_of(network: u8, extra: usize) -> String {
        let mut data = vec![network];
        data.extend((0..64 + extra).map(|i| (i * 7 + 3) as u8));
        base58_monero::encode_check(&data).expect("encode")
    }

    /// `a` with the character at `i` replaced by another of the same alphabet.
    fn one_changed(a: &str, i: usize) -> String {
        let mut b: Vec<char> = a.chars().collect();
        b[i] = match b[i] {
            'q' => 'p',
            'a' => 'b',
            '2' => '3',
            c if c.is_ascii_uppercase() && c != 'Z' => ((c as u8) + 1) as char,
            c if c.is_ascii_lowercase() && c != 'z' => ((c as u8) + 1) as char,
            _ => 'x',
        };
        b.into_iter().collect()
    }

    fn coin(a: &str) -> Option<&'static str> {
        from_address(a).map(|e| e.coin)
    }

    #[test]
    fn real_world_addresses_verify() {
        // The address of Bitcoin's genesis block coinbase.
        let genesis = "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa";
        assert_eq!(coin(genesis), Some("bitcoin"));
        assert_eq!(coin(&one_changed(genesis, 10)), None);
        // EIP-55's own examples (all caps, all lower, mixed).
        for a in [
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
            "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
            "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
            "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
        ] {
            let e = from_address(a).unwrap_or_else(|| panic!("{a}"));
            assert_eq!(e.coin, "ethereum");
            assert!(e.reason.contains("EIP-55 checksum valid"), "{}", e.reason);
            // One letter's case flipped breaks the checksum.
            let i = a[2..]
                .find(|c: char| c.is_ascii_alphabetic())
                .expect("letter")
                + 2;
            let mut flipped: Vec<char> = a.chars().collect();
            flipped[i] = if flipped[i].is_ascii_uppercase() {
                flipped[i].to_ascii_lowercase()
            } else {
                flipped[i].to_ascii_uppercase()
            };
            let flipped: String = flipped.into_iter().collect();
            assert_eq!(coin(&flipped), None, "{flipped}");
        }
        let lower = "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed";
        assert!(from_address(lower).is_some_and(|e| e.reason.contains("no EIP-55 checksum")));
        assert_eq!(coin("0x5aaeb6053f3e94c9b9a09f33669435e7ef1bea"), None);
    }

    #[test]
    fn base58check_families_by_version_byte() {
        let payload = [0x5au8; 20];
        let cases: &[(&[u8], Option<&str>)] = &[
            (&[0x00], Some("bitcoin")),
            (&[0x30], Some("litecoin")),
            (&[0x32], Some("litecoin")),
            (&[0x1e], Some("dogecoin")),
            (&[0x3c], Some("ravencoin")),
            (&[0x4c], Some("dash")),
            (&[0x1c, 0xb8], Some("zcash")),
            (&[0x1c, 0xbd], Some("zcash")),
            // Shared by several coins (Bitcoin P2SH, every testnet): no name.
            (&[0x05], None),
            (&[0x6f], None),
            (&[0xc4], None),
        ];
        for (version, expected) in cases {
            let a = base58check_of(version, &payload);
            assert_eq!(coin(&a), *expected, "{version:02x?} {a}");
            // Any one character changed: the checksum fails.
            for i in [0, a.len() / 2, a.len() - 1] {
                assert_eq!(coin(&one_changed(&a, i)), None, "{a} @ {i}");
            }
        }
        // Right version, wrong length: not an address.
        assert_eq!(coin(&base58check_of(&[0x00], &[1u8; 19])), None);
    }

    #[test]
    fn segwit_addresses_name_coin_and_network() {
        let p20 = [0x11u8; 20];
        let p32 = [0x22u8; 32];
        let cases = [
            ("bc", 0, &p20[..], "bitcoin", "bech32", ""),
            ("bc", 1, &p32[..], "bitcoin", "bech32m", ""),
            ("tb", 0, &p20[..], "bitcoin", "bech32", "testnet"),
            ("bcrt", 0, &p32[..], "bitcoin", "bech32", "regtest"),
            ("ltc", 0, &p20[..], "litecoin", "bech32", ""),
            ("rltc", 0, &p20[..], "litecoin", "bech32", "regtest"),
        ];
        for (hrp, v, program, expected, checksum, network) in cases {
            let a = segwit_of(hrp, v, program);
            let e = from_address(&a).unwrap_or_else(|| panic!("{a}"));
            assert_eq!(e.coin, expected, "{a}");
            assert!(e.reason.contains(checksum), "{a}: {}", e.reason);
            assert!(e.reason.contains(network), "{a}: {}", e.reason);
            assert_eq!(coin(&one_changed(&a, a.len() - 3)), None, "{a}");
            // Upper case is the same address (BIP 173).
            assert_eq!(coin(&a.to_ascii_uppercase()), Some(expected), "{a}");
        }
        // A v0 program with a bech32m checksum (BIP 350 forbids it).
        let hrp = bech32::Hrp::parse("bc").expect("hrp");
        let mut data = vec![bech32::Fe32::Q];
        data.extend(bech32::primitives::iter::ByteIterExt::bytes_to_fes(
            p20.iter().copied(),
        ));
        let wrong: String =
            bech32::primitives::iter::Fe32IterExt::with_checksum::<bech32::Bech32m>(
                data.into_iter(),
                &hrp,
            )
            .chars()
            .collect();
        assert_eq!(coin(&wrong), None, "{wrong}");
        // Another chain's prefix is not Bitcoin's.
        assert_eq!(coin(&segwit_of("xyz", 0, &p20)), None);
    }

    #[test]
    fn monero_addresses_by_network_byte_and_checksum() {
        for (network, extra, kind, net) in [
            (18, 0, "standard", ""),
            (19, 8, "integrated", ""),
            (42, 0, "subaddress", ""),
            (24, 0, "standard", "stagenet"),
            (53, 0, "standard", "testnet"),
        ] {
            let a = monero_of(network, extra);
            let e = from_address(&a).unwrap_or_else(|| panic!("{a}"));
            assert_eq!(e.coin, "monero");
            assert!(
                e.reason.contains(kind) && e.reason.contains(net),
                "{}",
                e.reason
            );
            assert_eq!(coin(&one_changed(&a, 40)), None, "{a}");
        }
        // A network byte of another CryptoNote coin: not Monero.
        assert_eq!(coin(&monero_of(0x7f, 0)), None);
    }

    #[test]
    fn logins_are_split_into_candidate_addresses() {
        let monero = monero_of(18, 0);
        let ltc = segwit_of("ltc", 0, &[0x33; 20]);
        assert_eq!(from_login(&monero).map(|e| e.coin), Some("monero"));
        assert_eq!(
            from_login(&format!("{monero}.rig01+50000")).map(|e| e.coin),
            Some("monero")
        );
        assert_eq!(
            from_login(&format!("LTC:{ltc}.worker#ref")).map(|e| e.coin),
            Some("litecoin")
        );
        for login in ["x", "worker1", "alice.rig", "", "emailuser@example.com"] {
            assert_eq!(from_login(login), None, "{login}");
        }
        // Too long to be a login: not looked at.
        assert_eq!(from_login(&format!("{monero}.{}", "a".repeat(600))), None);
    }

    #[test]
    fn algorithms_name_only_single_coin_algorithms() {
        assert_eq!(from_algorithm("rx/0").map(|e| e.coin), Some("monero"));
        assert_eq!(from_algorithm("kawpow").map(|e| e.coin), Some("ravencoin"));
        for shared in ["cn/r", "cn/half", "argon2/chukwa", "ethash", ""] {
            assert_eq!(from_algorithm(shared), None, "{shared}");
        }
    }
}
