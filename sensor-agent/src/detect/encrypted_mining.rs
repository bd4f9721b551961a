//! Encrypted mining: a pool session the payload classifiers cannot read (TLS, or a protocol
//! they do not know) betrays itself by what is left in clear and by its shape. Each piece of
//! evidence is weak alone; this rule fuses them into one score and lists every contribution
//! in the alarm, so an analyst sees why it fired (or how close it came).
//!
//! # Gates (all must hold, else the rule says nothing)
//! - **Not already identified.** A conversation whose payload (or, cached, an earlier
//!   conversation between the same two hosts) was identified as a mining protocol is
//!   `mining_protocol`'s (observed or cached, that rule alarms either way), and one identified
//!   as a blockchain peer protocol is `blockchain_p2p`'s: the payload is then known, not
//!   encrypted or unknown.
//! - **Encrypted or unknown payload.** A TLS ClientHello was seen (`labels.tls`), or the
//!   conversation's watched flow carried payload messages that nothing identified.
//! - **Long or quiet.** It lasted `min_duration` (30m), or it lasted `quiet_min_duration`
//!   (10m) at an average of at most `quiet_max_bytes_per_sec` (200 B/s, both directions). A
//!   rate measured over less than 10 minutes is mostly the handshake, so quietness needs that
//!   much time before it can stand in for length.
//!
//! # Contributions: `points = weight * strength`, strength in `[0, 1]`
//! Default weights in brackets (`weights.*`). Identity evidence weighs most; everything else
//! together reaches 0.70 at most.
//! - `sni_keyword` [0.30]: a configured keyword (`sni_keywords`) in an SNI label. Strength 1
//!   when it is a whole label or a whole `-`/`_`-separated part of one, trailing and leading
//!   digits ignored (`pool` in `eu1.pool.x.net`, `xmr` in `xmr-eu1.nanopool.org`, `pool` in
//!   `pool2.x`); 0.6 when it is only inside a longer word (`pool` in `liverpoolfc.com`,
//!   `mine` in `minecraft.net`).
//! - `miner_ja4` [0.30]: the ClientHello's JA4 is on `miner_ja4` (whole, or a prefix ending at
//!   an `_`). Empty by default: no verified public list of miner JA4s exists.
//! - `no_alpn` [0.05]: the ClientHello offered no ALPN (JA4 ALPN code `00`), which is what
//!   miners' TLS clients send; browsers always offer `h2`/`http/1.1`. Weak: so do many
//!   scripts and IoT clients.
//! - `tls_on_non_web_port` [0.10]: TLS to a server port not on `web_ports` (443, 8443).
//! - `long` [0.10]: `duration / min_duration`, capped at 1.
//! - `quiet` [0.10]: 1 at or under `quiet_max_bytes_per_sec`, falling linearly to 0 at twice
//!   that rate.
//! - `client_size_regularity`, `server_size_regularity` [0.10 each]: with at least
//!   `min_messages` messages of that side in the watched flow, the mean of the size MAD score
//!   (`1 - MAD/median`) and the share of the most common size (see `periodicity`). Constant
//!   TLS record sizes give 1; uniformly random sizes about 0.3. The Bowley skew score that
//!   `periodicity`'s `size_score` also averages is left out: symmetric noise scores 1 on it.
//! - `miner_cadence` [0.15]: XMRig's habits, each within 5% of its period: the client's
//!   messages every 60 s (keepalive), the server's every 55 s (job rebroadcast), or the
//!   conversation's connections every 100 min (the 1% donation: one minute to the same
//!   destination every 100 minutes; chaining those connections into one conversation needs
//!   `flow.conversation_gap` above 100 minutes). Strength: the timing regularity
//!   (`ts_score`) of the best match, 0 when none matches.
//!
//! `score = min(1, sum of points)`. It fires when `score >= min_score` (0.6) **and** at least
//! one contribution named in `min_evidence` (`sni_keyword`, `miner_ja4`) has a strength of at
//! least `min_evidence_strength` (0.5). Behaviour alone is not enough by default: a long,
//! quiet TLS session with constant record sizes and a 60 s beat is also every MQTT-over-TLS
//! device and every push-notification channel. Add `client_size_regularity`,
//! `server_size_regularity` or `miner_cadence` to `min_evidence` to hunt SNI-less pools (ECH,
//! IP-only, unknown protocols), accepting those.
//!
//! Evidence: `score`, `min_score`, `min_evidence`, `min_evidence_met`, `basis` (`tls` or
//! `unknown_payload`), `duration_s`, `bytes_per_sec`, `sni`, `ja4`, `alpn`, and
//! `contributions`: every contribution considered, in a fixed order, with `name`, `weight`,
//! `strength`, `points` and a `detail` sentence, including those that gave 0 points.
//!
//! # What it must never do
//! - fire on a conversation whose payload was identified (that is another rule's alarm);
//! - fire on behaviour alone unless configured to;
//! - panic, or put a non-finite number in the evidence, on any input: every ratio is guarded,
//!   every strength clamped to `[0, 1]`, weights are validated to `[0, 1]`;
//! - cost more than a constant amount per evaluation: the message rings are bounded (64 per
//!   direction), the keyword and JA4 lists are the configuration's.

use serde_json::{json, Map, Value};

use super::{secs, Detector, Finding};
use serde::Deserialize;

use crate::{
    enrich::labels::{ConvLabels, MessageSeries, TlsInfo},
    flow::table::Conversation,
    scoring::periodicity::{finite, unit, Periodicity, SampleRing, MIN_SAMPLES},
    units::{
        require_positive, require_rate, require_severity, require_unit, HumanDuration, Invalid,
    },
};

/// Every contribution's name, in the order the evidence lists them (also the names
/// `min_evidence` accepts). Derived from [`Contribution::ALL`] so the list that validation
/// checks against can never drift from the list that is scored.
pub const CONTRIBUTIONS: &[&str] = &{
    let mut names = [""; Contribution::ALL.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = Contribution::ALL[i].name();
        i += 1;
    }
    names
};

/// XMRig's keepalive: a client message every 60 s when it has nothing else to send.
pub const KEEPALIVE_S: f64 = 60.0;
/// Pools re-broadcast the current job about every 55 s.
pub const JOB_REBROADCAST_S: f64 = 55.0;
/// XMRig's default 1% donation: one minute every 100 minutes, to the same destination.
pub const DONATION_S: f64 = 6000.0;
/// Relative tolerance of the cadence periods (5%: 57-63 s, 52.25-57.75 s, 95-105 min).
pub const CADENCE_TOLERANCE: f64 = 0.05;
/// Strength of an SNI keyword found only inside a longer word of a label.
pub const SNI_SUBSTRING_STRENGTH: f64 = 0.6;

pub struct EncryptedMining {
    cfg: EncryptedMiningConfig,
    /// `sni_keywords`, lowercased, empty ones left out (an empty keyword matches everything).
    keywords: Vec<String>,
    /// `miner_ja4`, lowercased and trimmed, empty ones left out.
    ja4s: Vec<String>,
}

impl EncryptedMining {
    pub fn new(cfg: &EncryptedMiningConfig) -> Self {
        let clean = |list: &[String]| -> Vec<String> {
            list.iter()
                .map(|k| k.trim().to_ascii_lowercase())
                .filter(|k| !k.is_empty())
                .collect()
        };
        EncryptedMining {
            keywords: clean(&cfg.sni_keywords),
            ja4s: clean(&cfg.miner_ja4),
            cfg: cfg.clone(),
        }
    }
}

/// One piece of evidence the score fuses. Each knows its name (in the evidence and in
/// `min_evidence`), its weight and how it is measured, so adding one is one variant and its
/// arms, never a change to the scoring loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Contribution {
    SniKeyword,
    MinerJa4,
    NoAlpn,
    TlsOnNonWebPort,
    Long,
    Quiet,
    ClientSizeRegularity,
    ServerSizeRegularity,
    MinerCadence,
}

impl Contribution {
    /// Every contribution, in the order the evidence lists them: analysts and tests read the
    /// list by position, so the order is part of the output.
    const ALL: [Contribution; 9] = [
        Contribution::SniKeyword,
        Contribution::MinerJa4,
        Contribution::NoAlpn,
        Contribution::TlsOnNonWebPort,
        Contribution::Long,
        Contribution::Quiet,
        Contribution::ClientSizeRegularity,
        Contribution::ServerSizeRegularity,
        Contribution::MinerCadence,
    ];

    /// The name in the evidence, in `min_evidence` and in `weights.*`.
    const fn name(self) -> &'static str {
        match self {
            Contribution::SniKeyword => "sni_keyword",
            Contribution::MinerJa4 => "miner_ja4",
            Contribution::NoAlpn => "no_alpn",
            Contribution::TlsOnNonWebPort => "tls_on_non_web_port",
            Contribution::Long => "long",
            Contribution::Quiet => "quiet",
            Contribution::ClientSizeRegularity => "client_size_regularity",
            Contribution::ServerSizeRegularity => "server_size_regularity",
            Contribution::MinerCadence => "miner_cadence",
        }
    }

    fn weight(self, w: &EncryptedMiningWeights) -> f64 {
        match self {
            Contribution::SniKeyword => w.sni_keyword,
            Contribution::MinerJa4 => w.miner_ja4,
            Contribution::NoAlpn => w.no_alpn,
            Contribution::TlsOnNonWebPort => w.tls_on_non_web_port,
            Contribution::Long => w.long,
            Contribution::Quiet => w.quiet,
            Contribution::ClientSizeRegularity => w.client_size_regularity,
            Contribution::ServerSizeRegularity => w.server_size_regularity,
            Contribution::MinerCadence => w.miner_cadence,
        }
    }

    /// Strength in `[0, 1]` and the sentence that explains it.
    fn measure(self, i: &Inputs) -> (f64, String) {
        match self {
            Contribution::SniKeyword => i.sni_keyword(),
            Contribution::MinerJa4 => i.miner_ja4(),
            Contribution::NoAlpn => i.no_alpn(),
            Contribution::TlsOnNonWebPort => i.tls_on_non_web_port(),
            Contribution::Long => i.long(),
            Contribution::Quiet => i.quiet(),
            Contribution::ClientSizeRegularity => {
                i.size_regularity("client", i.series.map(|s| &s.client), i.client.as_ref())
            }
            Contribution::ServerSizeRegularity => {
                i.size_regularity("server", i.series.map(|s| &s.server), i.server.as_ref())
            }
            Contribution::MinerCadence => i.miner_cadence(),
        }
    }
}

/// One line of the score: a contribution as measured on one conversation.
struct Line {
    contribution: Contribution,
    weight: f64,
    strength: f64,
    detail: String,
}

impl Line {
    fn name(&self) -> &'static str {
        self.contribution.name()
    }

    fn points(&self) -> f64 {
        unit(self.weight * self.strength)
    }

    fn to_json(&self) -> Value {
        json!({
            "name": self.name(),
            "weight": round3(self.weight),
            "strength": round3(self.strength),
            "points": round3(self.points()),
            "detail": self.detail,
        })
    }
}

/// What the contributions are measured on: one evaluation's conversation and labels, with the
/// message and connection timing scored once for all the contributions that read it.
struct Inputs<'a> {
    rule: &'a EncryptedMining,
    conv: &'a Conversation,
    tls: Option<&'a TlsInfo>,
    series: Option<&'a MessageSeries>,
    /// Average bytes per second, both directions (finite).
    rate: f64,
    duration: u64,
    min_messages: usize,
    client: Option<Periodicity>,
    server: Option<Periodicity>,
    connections: Option<Periodicity>,
}

const NO_TLS: &str = "no TLS ClientHello seen";

impl<'a> Inputs<'a> {
    fn new(
        rule: &'a EncryptedMining,
        conv: &'a Conversation,
        tls: Option<&'a TlsInfo>,
        series: Option<&'a MessageSeries>,
        rate: f64,
        duration: u64,
        now: u64,
    ) -> Self {
        let window = series.map_or(0, |s| now.saturating_sub(s.since_ns));
        let min_messages = rule.cfg.min_messages.max(MIN_SAMPLES);
        let score_of = |ring: Option<&SampleRing>| ring?.score(window, min_messages);
        let connections = conv
            .connections
            .as_deref()
            .and_then(|r| r.score(now.saturating_sub(conv.start_ns), MIN_SAMPLES));
        Inputs {
            rule,
            conv,
            tls,
            series,
            rate,
            duration,
            min_messages,
            client: score_of(series.map(|s| &s.client)),
            server: score_of(series.map(|s| &s.server)),
            connections,
        }
    }

    fn sni_keyword(&self) -> (f64, String) {
        match self.tls {
            None => (0.0, NO_TLS.into()),
            Some(TlsInfo { sni: None, .. }) => (0.0, "the ClientHello named no server".into()),
            Some(TlsInfo { sni: Some(sni), .. }) => match sni_match(sni, &self.rule.keywords) {
                Some(m) if m.whole => (
                    1.0,
                    format!(
                        "keyword {:?} is {} label {:?} of SNI {sni:?}",
                        m.keyword,
                        if m.label == m.keyword {
                            "the"
                        } else {
                            "a part of the"
                        },
                        m.label
                    ),
                ),
                Some(m) => (
                    SNI_SUBSTRING_STRENGTH,
                    format!(
                        "keyword {:?} is inside label {:?} of SNI {sni:?}",
                        m.keyword, m.label
                    ),
                ),
                None => (0.0, format!("no pool keyword in SNI {sni:?}")),
            },
        }
    }

    fn miner_ja4(&self) -> (f64, String) {
        let ja4s = &self.rule.ja4s;
        match self.tls {
            None => (0.0, NO_TLS.into()),
            Some(t) => match ja4s.iter().find(|e| ja4_matches(&t.ja4, e)) {
                Some(entry) => (
                    1.0,
                    format!("JA4 {} matches miner_ja4 entry {entry}", t.ja4),
                ),
                None if ja4s.is_empty() => (0.0, format!("JA4 {}; miner_ja4 is empty", t.ja4)),
                None => (0.0, format!("JA4 {} is not on miner_ja4", t.ja4)),
            },
        }
    }

    fn no_alpn(&self) -> (f64, String) {
        match self.tls {
            None => (0.0, NO_TLS.into()),
            Some(t) if t.alpn.is_empty() => (
                1.0,
                "the ClientHello offered no ALPN (JA4 ALPN code 00), as miners' TLS clients do"
                    .to_string(),
            ),
            Some(t) => (0.0, format!("ALPN offered: {}", t.alpn.join(", "))),
        }
    }

    fn tls_on_non_web_port(&self) -> (f64, String) {
        let port = self.conv.key.server_port;
        let web_ports = &self.rule.cfg.web_ports;
        match self.tls {
            None => (0.0, NO_TLS.into()),
            Some(_) if web_ports.contains(&port) => (0.0, format!("TLS to web port {port}")),
            Some(_) => (
                1.0,
                format!(
                    "TLS to port {port}, not a web port ({})",
                    web_ports
                        .iter()
                        .map(u16::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
        }
    }

    fn long(&self) -> (f64, String) {
        let min_duration = self.rule.cfg.min_duration.as_nanos();
        // Validation forbids a zero min_duration; were it zero anyway, everything is long
        // rather than a division by zero.
        let strength = if min_duration == 0 {
            1.0
        } else {
            unit(self.duration as f64 / min_duration as f64)
        };
        (
            strength,
            format!(
                "lasted {:.0} s of the {:.0} s that count as long",
                secs(self.duration),
                secs(min_duration)
            ),
        )
    }

    fn quiet(&self) -> (f64, String) {
        let (rate, q) = (self.rate, self.rule.cfg.quiet_max_bytes_per_sec);
        let strength = if rate <= q {
            1.0
        } else if q > 0.0 {
            unit(2.0 - rate / q)
        } else {
            0.0
        };
        (
            strength,
            format!("{rate:.2} B/s on average, quiet up to {q} B/s"),
        )
    }

    fn size_regularity(
        &self,
        side: &str,
        ring: Option<&SampleRing>,
        p: Option<&Periodicity>,
    ) -> (f64, String) {
        if self.series.is_none() {
            return (
                0.0,
                "no messages timed (the flow is not watched)".to_string(),
            );
        }
        size_regularity(side, ring, p, self.min_messages)
    }

    fn miner_cadence(&self) -> (f64, String) {
        let (client, server, connections) = (
            self.client.as_ref(),
            self.server.as_ref(),
            self.connections.as_ref(),
        );
        let candidates = [
            (
                cadence(client, KEEPALIVE_S),
                format!("client messages every {KEEPALIVE_S} s (keepalive)"),
            ),
            (
                cadence(server, JOB_REBROADCAST_S),
                format!("server messages every {JOB_REBROADCAST_S} s (job rebroadcast)"),
            ),
            (
                cadence(connections, DONATION_S),
                format!("connections every {} min (donation)", DONATION_S / 60.0),
            ),
        ];
        let best = candidates
            .iter()
            .filter_map(|(s, what)| s.map(|s| (s, what)))
            .max_by(|a, b| a.0.total_cmp(&b.0));
        let measured = format!(
            "{}; {}; {}",
            describe_period("client messages", client),
            describe_period("server messages", server),
            describe_period("connections", connections),
        );
        match best {
            Some((s, what)) => (
                unit(s),
                format!(
                    "matches {what} within {:.0}%: {measured}",
                    CADENCE_TOLERANCE * 100.0
                ),
            ),
            None => (0.0, format!("no miner cadence: {measured}")),
        }
    }
}

/// How a keyword matched an SNI.
#[derive(Clone, Debug, PartialEq)]
struct SniMatch {
    keyword: String,
    label: String,
    whole: bool,
}

/// The best keyword match in `sni`: a whole label or label part first, else a substring; the
/// first keyword of the list wins a tie.
fn sni_match(sni: &str, keywords: &[String]) -> Option<SniMatch> {
    let sni = sni.trim_end_matches('.').to_ascii_lowercase();
    let mut substring: Option<SniMatch> = None;
    for kw in keywords {
        for label in sni.split('.').filter(|l| !l.is_empty()) {
            let whole = label
                .split(['-', '_'])
                .any(|part| part == kw || part.trim_matches(|c: char| c.is_ascii_digit()) == kw);
            if whole {
                return Some(SniMatch {
                    keyword: kw.clone(),
                    label: label.to_string(),
                    whole: true,
                });
            }
            if substring.is_none() && label.contains(kw.as_str()) {
                substring = Some(SniMatch {
                    keyword: kw.clone(),
                    label: label.to_string(),
                    whole: false,
                });
            }
        }
    }
    substring
}

/// Whether `ja4` is `entry`, or starts with `entry` followed by `_`.
fn ja4_matches(ja4: &str, entry: &str) -> bool {
    let ja4 = ja4.to_ascii_lowercase();
    ja4 == entry
        || ja4
            .strip_prefix(entry)
            .is_some_and(|rest| rest.starts_with('_'))
}

/// Size regularity of one side's messages: mean of the size MAD score and the share of the
/// most common size.
fn size_regularity(
    side: &str,
    ring: Option<&SampleRing>,
    p: Option<&Periodicity>,
    min_messages: usize,
) -> (f64, String) {
    let n = ring.map_or(0, SampleRing::len);
    let Some(p) = p else {
        return (
            0.0,
            format!("{n} {side} messages timed in the watched flow; {min_messages} needed"),
        );
    };
    let strength = unit((p.size_mad_score + p.size_mode_fraction) / 2.0);
    let mode = ring.and_then(mode_size).unwrap_or(0);
    (
        strength,
        format!(
            "{} {side} messages: most common size {mode} B in {:.0}% of them, size MAD score {:.2}",
            p.samples,
            p.size_mode_fraction * 100.0,
            p.size_mad_score
        ),
    )
}

/// The most common size in a ring (the smallest on a tie).
fn mode_size(ring: &SampleRing) -> Option<u64> {
    let mut sizes: Vec<u64> = ring.iter().map(|(_, s)| s).collect();
    sizes.sort_unstable();
    sizes
        .chunk_by(|a, b| a == b)
        .max_by(|a, b| a.len().cmp(&b.len()).then(b[0].cmp(&a[0])))
        .map(|c| c[0])
}

/// One cadence candidate: `Some(ts_score)` when the period is within tolerance of `target_s`.
fn cadence(p: Option<&Periodicity>, target_s: f64) -> Option<f64> {
    let p = p?;
    ((p.period_s - target_s).abs() <= target_s * CADENCE_TOLERANCE).then_some(unit(p.ts_score))
}

fn describe_period(what: &str, p: Option<&Periodicity>) -> String {
    match p {
        Some(p) => format!(
            "{what} every {:.1} s (timing score {:.2})",
            p.period_s, p.ts_score
        ),
        None => format!("{what}: too few to time"),
    }
}

impl Detector for EncryptedMining {
    fn rule_id(&self) -> &'static str {
        "encrypted_mining"
    }

    fn rule_name(&self) -> &'static str {
        "Suspect Encrypted Mining"
    }

    fn evaluate(
        &self,
        conv: &Conversation,
        labels: Option<&ConvLabels>,
        now: u64,
    ) -> Option<Finding> {
        let labels = labels?;
        // Gate 1: the payload was identified: another rule's alarm.
        if labels.identification.is_some() {
            return None;
        }
        // Gate 2: TLS, or payload that nothing identified.
        let tls = labels.tls.as_ref();
        let series = labels.messages.as_deref();
        let has_messages = series.is_some_and(|s| !s.client.is_empty() || !s.server.is_empty());
        let basis = match (tls, has_messages) {
            (Some(_), _) => "tls",
            (None, true) => "unknown_payload",
            (None, false) => return None,
        };
        // Gate 3: long, or quiet for long enough to tell.
        let cfg = &self.cfg;
        let duration = conv.duration_ns();
        if duration == 0 {
            return None;
        }
        let rate = finite(conv.total_bytes() as f64 / secs(duration));
        let min_duration = cfg.min_duration.as_nanos();
        let long = duration >= min_duration;
        let quiet = rate <= cfg.quiet_max_bytes_per_sec;
        let looked_at = long || (quiet && duration >= cfg.quiet_min_duration.as_nanos());
        if !looked_at {
            return None;
        }

        let contributions = self.contributions(conv, tls, series, rate, duration, now);
        let score = unit(contributions.iter().map(Line::points).sum());
        let met: Vec<&str> = contributions
            .iter()
            .filter(|c| {
                c.strength >= cfg.min_evidence_strength
                    && cfg.min_evidence.iter().any(|n| n == c.name())
            })
            .map(Line::name)
            .collect();
        if score < cfg.min_score || (!cfg.min_evidence.is_empty() && met.is_empty()) {
            return None;
        }

        let mut e = Map::new();
        e.insert("score".into(), json!(round3(score)));
        e.insert("min_score".into(), json!(round3(cfg.min_score)));
        e.insert("min_evidence".into(), json!(cfg.min_evidence));
        e.insert("min_evidence_met".into(), json!(met));
        e.insert("basis".into(), json!(basis));
        e.insert("duration_s".into(), json!(secs(duration).round()));
        e.insert(
            "bytes_per_sec".into(),
            json!((rate * 100.0).round() / 100.0),
        );
        if let Some(tls) = tls {
            if let Some(sni) = &tls.sni {
                e.insert("sni".into(), json!(sni));
            }
            e.insert("ja4".into(), json!(tls.ja4));
            e.insert("alpn".into(), json!(tls.alpn));
        }
        e.insert(
            "contributions".into(),
            Value::Array(contributions.iter().map(Line::to_json).collect()),
        );
        Some(Finding {
            severity: cfg.severity,
            evidence: e,
        })
    }
}

impl EncryptedMining {
    /// Every contribution, in [`Contribution::ALL`] order, measured and weighed.
    fn contributions(
        &self,
        conv: &Conversation,
        tls: Option<&TlsInfo>,
        series: Option<&MessageSeries>,
        rate: f64,
        duration: u64,
        now: u64,
    ) -> Vec<Line> {
        let inputs = Inputs::new(self, conv, tls, series, rate, duration, now);
        Contribution::ALL
            .iter()
            .map(|&c| {
                let (strength, detail) = c.measure(&inputs);
                Line {
                    contribution: c,
                    weight: c.weight(&self.cfg.weights),
                    strength,
                    detail,
                }
            })
            .collect()
    }
}

/// Three decimals, for the evidence; non-finite as 0.
fn round3(x: f64) -> f64 {
    finite((finite(x) * 1000.0).round() / 1000.0)
}

/// Encrypted (or unrecognised) pool sessions: TLS or unknown payload, long or quiet, regular
/// message sizes, SNI keywords or a miner's JA4, fused into one score with every contribution
/// in the evidence (`detect/encrypted_mining.rs` explains the score).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncryptedMiningConfig {
    pub enabled: bool,
    pub severity: u8,
    /// Fused score (0-1) from which the rule fires.
    pub min_score: f64,
    /// A conversation counts as long from this duration (pool sessions last hours; web
    /// sessions seldom last 30 minutes at a low rate).
    pub min_duration: HumanDuration,
    /// A conversation that is quiet (see `quiet_max_bytes_per_sec`) is looked at from this
    /// duration, before it is long: a rate measured over less says nothing.
    pub quiet_min_duration: HumanDuration,
    /// Average rate (bytes/s, both directions) up to which a conversation counts as quiet (real
    /// pool sessions: 5-140 B/s).
    pub quiet_max_bytes_per_sec: f64,
    /// Messages per direction needed before size regularity and cadence count (4-64).
    pub min_messages: usize,
    /// SNI labels containing one of these count as a pool name (case-insensitive).
    pub sni_keywords: Vec<String>,
    /// JA4 fingerprints of known mining clients (whole `a_b_c`, or an `a_b` prefix); none by
    /// default: no verified public list exists, add the ones of your own captures.
    pub miner_ja4: Vec<String>,
    /// Server ports where TLS is ordinary web traffic; TLS on any other port contributes.
    pub web_ports: Vec<u16>,
    /// Minimum evidence: the rule fires only when at least one of these contributions reached
    /// `min_evidence_strength`. Identity evidence by default: long, quiet, size-regular TLS with
    /// a 60 s beat is also every MQTT-over-TLS device and push channel.
    pub min_evidence: Vec<String>,
    /// Strength (0-1) from which a contribution listed in `min_evidence` counts as present.
    pub min_evidence_strength: f64,
    /// Weight (0-1) of each contribution in the fused score.
    pub weights: EncryptedMiningWeights,
}

impl Default for EncryptedMiningConfig {
    fn default() -> Self {
        EncryptedMiningConfig {
            enabled: true,
            severity: 7,
            min_score: 0.6,
            min_duration: HumanDuration::secs(30 * 60),
            quiet_min_duration: HumanDuration::secs(10 * 60),
            quiet_max_bytes_per_sec: 200.0,
            min_messages: 8,
            sni_keywords: [
                "pool",
                "mine",
                "mining",
                "miner",
                "stratum",
                "xmr",
                "monero",
                "nicehash",
                "hashvault",
                "nanopool",
                "2miners",
                "f2pool",
                "ethermine",
                "herominers",
                "supportxmr",
                "moneroocean",
                "minexmr",
                "c3pool",
                "unmineable",
                "zpool",
            ]
            .map(String::from)
            .to_vec(),
            miner_ja4: Vec::new(),
            web_ports: vec![443, 8443],
            min_evidence: vec!["sni_keyword".into(), "miner_ja4".into()],
            min_evidence_strength: 0.5,
            weights: EncryptedMiningWeights::default(),
        }
    }
}

/// Weights of the `encrypted_mining` contributions. Identity evidence weighs most; behaviour
/// alone (everything but `sni_keyword` and `miner_ja4`) adds up to at most 0.70.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EncryptedMiningWeights {
    /// A pool keyword in an SNI label.
    pub sni_keyword: f64,
    /// The client's JA4 is on `miner_ja4`.
    pub miner_ja4: f64,
    /// The ClientHello offered no ALPN (miners' TLS clients; browsers always send one): weak.
    pub no_alpn: f64,
    /// TLS to a port not on `web_ports`.
    pub tls_on_non_web_port: f64,
    /// Duration relative to `min_duration`.
    pub long: f64,
    /// Average rate at or under `quiet_max_bytes_per_sec`.
    pub quiet: f64,
    /// The client's messages have (nearly) constant sizes.
    pub client_size_regularity: f64,
    /// The server's messages have (nearly) constant sizes.
    pub server_size_regularity: f64,
    /// XMRig habits: 60 s client keepalive, ~55 s server job rebroadcast, ~100 min donation.
    pub miner_cadence: f64,
}

impl Default for EncryptedMiningWeights {
    fn default() -> Self {
        EncryptedMiningWeights {
            sni_keyword: 0.30,
            miner_ja4: 0.30,
            no_alpn: 0.05,
            tls_on_non_web_port: 0.10,
            long: 0.10,
            quiet: 0.10,
            client_size_regularity: 0.10,
            server_size_regularity: 0.10,
            miner_cadence: 0.15,
        }
    }
}

impl EncryptedMiningConfig {
    /// The keys that types alone cannot check.
    pub fn validate(&self) -> Result<(), Invalid> {
        let e = self;
        require_severity(&[("severity", e.severity)])?;
        require_positive(&[
            ("min_duration", e.min_duration),
            ("quiet_min_duration", e.quiet_min_duration),
        ])?;
        require_rate(&[("quiet_max_bytes_per_sec", e.quiet_max_bytes_per_sec)])?;
        require_unit(&[("min_score", e.min_score)])?;
        let max = crate::enrich::labels::MESSAGE_SAMPLES;
        if !(4..=max).contains(&e.min_messages) {
            return Err(Invalid::new(
                "min_messages",
                format!(
                    "{} is out of range: 4-{max} (messages kept per direction)",
                    e.min_messages
                ),
            ));
        }
        require_unit(&[("min_evidence_strength", e.min_evidence_strength)])?;
        // Every weight, through the enum so a new contribution's weight is validated too.
        for c in Contribution::ALL {
            require_unit(&[(&format!("weights.{}", c.name()), c.weight(&e.weights))])?;
        }
        for n in &e.min_evidence {
            if !CONTRIBUTIONS.contains(&n.as_str()) {
                return Err(Invalid::new(
                    "min_evidence",
                    format!(
                        "unknown contribution {n:?}; accepted: {}",
                        CONTRIBUTIONS.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        enrich::classify::{Direction, Identification, Kind},
        enrich::labels::{Confidence, MessageSeries, MESSAGE_SAMPLES},
        flow::settings::FlowConfig,
        flow::table::FlowTable,
    };
    use fastrand::Rng;
    use sensor_common::{ipv4_mapped, FlowKey};

    const S: u64 = 1_000_000_000;
    const T0: u64 = 1_700_000_000 * S;

    fn flow_key(port: u16) -> FlowKey {
        FlowKey::canonical(
            &ipv4_mapped([192, 0, 2, 10]),
            40000,
            &ipv4_mapped([203, 0, 113, 80]),
            port,
            6,
        )
        .0
    }

    /// A conversation to `port` from T0 lasting `secs` and carrying `bytes` in all.
    fn conversation(port: u16, secs: u64, bytes: u64) -> Conversation {
        let (key, dir) = FlowKey::canonical(
            &ipv4_mapped([192, 0, 2, 10]),
            40000,
            &ipv4_mapped([203, 0, 113, 80]),
            port,
            6,
        );
        let mut t = FlowTable::new(FlowConfig::default());
        t.add_packet(&key, dir, 60, 0x02, T0);
        t.add_packet(&key, 1 - dir, 60, 0x12, T0 + 1);
        let mut c = t.conversations().next().expect("a conversation").clone();
        c.last_ns = T0 + secs * S;
        c.client_bytes = bytes / 2;
        c.server_bytes = bytes - bytes / 2;
        c
    }

    fn tls(sni: &str, alpn: &[&str]) -> TlsInfo {
        let code = if alpn.is_empty() { "00" } else { "h2" };
        TlsInfo {
            sni: Some(sni.to_string()),
            ja4: format!("t13d1715{code}_5b57614c22b0_3d5424432f57"),
            alpn: alpn.iter().map(|a| a.to_string()).collect(),
        }
    }

    /// Messages from `from` to `to` seconds: client every `client_every` s (+- jitter), server
    /// every `server_every` s, sizes from the closures.
    fn series(
        port: u16,
        from: u64,
        to: u64,
        (client_every, server_every): (u64, u64),
        rng: &mut Rng,
        mut client_size: impl FnMut(&mut Rng) -> u64,
        mut server_size: impl FnMut(&mut Rng) -> u64,
    ) -> Box<MessageSeries> {
        let mut s = MessageSeries {
            flow: flow_key(port),
            since_ns: T0 + from * S,
            client: SampleRing::new(MESSAGE_SAMPLES),
            server: SampleRing::new(MESSAGE_SAMPLES),
        };
        let jitter = |rng: &mut Rng| rng.u64(..2000) * 1_000_000;
        let mut t = T0 + from * S;
        while t < T0 + to * S {
            let size = client_size(rng);
            s.client.push(t, size);
            t += client_every * S - S + jitter(rng);
        }
        let mut t = T0 + from * S + 7 * S;
        while t < T0 + to * S {
            let size = server_size(rng);
            s.server.push(t, size);
            t += server_every * S - S + jitter(rng);
        }
        Box::new(s)
    }

    fn labels(tls: Option<TlsInfo>, messages: Option<Box<MessageSeries>>) -> ConvLabels {
        let mut l = ConvLabels::default();
        l.tls = tls;
        l.messages = messages;
        l
    }

    fn rule() -> EncryptedMining {
        EncryptedMining::new(&EncryptedMiningConfig::default())
    }

    /// Every contribution is listed, in order, with finite numbers and points = weight x
    /// strength; returns them by name.
    fn check_contributions(f: &Finding) -> Vec<(String, f64, f64, f64)> {
        let list = f.evidence["contributions"]
            .as_array()
            .expect("contributions array");
        let names: Vec<&str> = list.iter().filter_map(|c| c["name"].as_str()).collect();
        assert_eq!(names, CONTRIBUTIONS, "{f:?}");
        let mut sum = 0.0;
        let out: Vec<(String, f64, f64, f64)> = list
            .iter()
            .map(|c| {
                let (w, s, p) = (
                    c["weight"].as_f64().expect("weight"),
                    c["strength"].as_f64().expect("strength"),
                    c["points"].as_f64().expect("points"),
                );
                assert!(w.is_finite() && (0.0..=1.0).contains(&s), "{c}");
                assert!((p - w * s).abs() < 0.002, "{c}");
                assert!(c["detail"].as_str().is_some_and(|d| !d.is_empty()), "{c}");
                sum += p;
                (c["name"].as_str().unwrap_or("").to_string(), w, s, p)
            })
            .collect();
        let score = f.evidence["score"].as_f64().expect("score");
        assert!((score - sum.min(1.0)).abs() < 0.01, "{score} vs {sum}");
        out
    }

    fn strength(list: &[(String, f64, f64, f64)], name: &str) -> f64 {
        list.iter()
            .find(|c| c.0 == name)
            .map(|c| c.2)
            .unwrap_or(f64::NAN)
    }

    /// A pool session: 2 h, ~50 B/s, TLS without ALPN to eu1.pool.example-xmr.net:14433,
    /// client 181-byte records every ~60 s, server 251-byte records every ~55 s.
    fn pool_session(port: u16) -> (Conversation, ConvLabels) {
        let mut rng = Rng::with_seed(42);
        let conv = conversation(port, 7200, 7200 * 50);
        let msgs = series(port, 300, 7200, (60, 55), &mut rng, |_| 181, |_| 251);
        (
            conv,
            labels(Some(tls("eu1.pool.example-xmr.net", &[])), Some(msgs)),
        )
    }

    #[test]
    fn encrypted_pool_sni_constant_sizes_quiet_long_fires_listing_every_contribution() {
        let (conv, l) = pool_session(14433);
        let f = rule()
            .evaluate(&conv, Some(&l), conv.last_ns)
            .expect("fires");
        println!(
            "{}",
            serde_json::to_string_pretty(&f.evidence).unwrap_or_default()
        );
        assert_eq!(f.severity, 7);
        let list = check_contributions(&f);
        for name in [
            "sni_keyword",
            "no_alpn",
            "tls_on_non_web_port",
            "long",
            "quiet",
            "client_size_regularity",
            "server_size_regularity",
        ] {
            assert_eq!(strength(&list, name), 1.0, "{name}: {list:?}");
        }
        assert_eq!(strength(&list, "miner_ja4"), 0.0);
        assert!(strength(&list, "miner_cadence") > 0.5, "{list:?}");
        let score = f.evidence["score"].as_f64().expect("score");
        assert!(score >= 0.6, "{score}");
        assert_eq!(f.evidence["sni"], "eu1.pool.example-xmr.net");
        assert_eq!(f.evidence["basis"], "tls");
        assert_eq!(f.evidence["min_evidence_met"], json!(["sni_keyword"]));
        let detail = f.evidence["contributions"][0]["detail"]
            .as_str()
            .unwrap_or("");
        assert!(detail.contains("\"pool\""), "{detail}");
        // On port 443 it still fires, one contribution short.
        let (conv, l) = pool_session(443);
        let f = rule()
            .evaluate(&conv, Some(&l), conv.last_ns)
            .expect("fires on 443");
        let list = check_contributions(&f);
        assert_eq!(strength(&list, "tls_on_non_web_port"), 0.0);
    }

    #[test]
    fn encrypted_web_sni_irregular_sizes_does_not_fire() {
        let mut rng = Rng::with_seed(7);
        let conv = conversation(443, 7200, 7200 * 60);
        let msgs = series(
            443,
            300,
            7200,
            (47, 61),
            &mut rng,
            |r| 60 + r.u64(..1341),
            |r| 60 + r.u64(..1341),
        );
        let l = labels(
            Some(tls("www.example.com", &["h2", "http/1.1"])),
            Some(msgs),
        );
        assert_eq!(rule().evaluate(&conv, Some(&l), conv.last_ns), None);
        // Even counting behaviour as minimum evidence, the score stays far below 0.6.
        let cfg = EncryptedMiningConfig {
            min_evidence: Vec::new(),
            min_score: 0.0,
            ..EncryptedMiningConfig::default()
        };
        let f = EncryptedMining::new(&cfg)
            .evaluate(&conv, Some(&l), conv.last_ns)
            .expect("a score");
        let list = check_contributions(&f);
        assert!(strength(&list, "client_size_regularity") < 0.5, "{list:?}");
        assert!(strength(&list, "server_size_regularity") < 0.5, "{list:?}");
        let score = f.evidence["score"].as_f64().expect("score");
        assert!(score < 0.4, "{score}: {list:?}");
    }

    #[test]
    fn encrypted_short_conversation_does_not_fire() {
        let (mut conv, l) = pool_session(14433);
        // 5 minutes: neither long (30m) nor quiet long enough to tell (10m).
        conv.last_ns = conv.start_ns + 300 * S;
        assert_eq!(rule().evaluate(&conv, Some(&l), conv.last_ns), None);
        // Quiet and 15 minutes: looked at (the full pool session labels score well).
        conv.last_ns = conv.start_ns + 900 * S;
        conv.client_bytes = 1000;
        conv.server_bytes = 1000;
        assert!(rule().evaluate(&conv, Some(&l), conv.last_ns).is_some());
        // Loud and 15 minutes: not yet.
        conv.server_bytes = 10_000_000;
        assert_eq!(rule().evaluate(&conv, Some(&l), conv.last_ns), None);
        // Zero duration, no labels.
        conv.last_ns = conv.start_ns;
        assert_eq!(rule().evaluate(&conv, Some(&l), conv.start_ns), None);
        assert_eq!(rule().evaluate(&conv, None, conv.start_ns), None);
    }

    #[test]
    fn encrypted_identified_conversations_are_another_rules() {
        let (conv, mut l) = pool_session(14433);
        for (kind, confidence) in [
            (Kind::MiningProtocol, Confidence::Observed),
            (Kind::MiningProtocol, Confidence::Cached),
            (Kind::BlockchainP2p, Confidence::Observed),
        ] {
            l.identification = Some((
                Identification {
                    kind,
                    protocol: "stratum",
                    signature: "mining.subscribe".into(),
                    role: Direction::ClientToServer,
                    coin: None,
                    coin_reason: None,
                    agent: None,
                    login_sha256: None,
                    confirmed_by_server: true,
                },
                confidence,
            ));
            assert_eq!(rule().evaluate(&conv, Some(&l), conv.last_ns), None);
        }
    }

    #[test]
    fn encrypted_behaviour_alone_needs_configuring() {
        // MQTT over TLS: long, quiet, no ALPN, port 8883, constant 60 s pings both ways.
        let mut rng = Rng::with_seed(9);
        let conv = conversation(8883, 7200, 7200 * 5);
        let msgs = series(8883, 300, 7200, (60, 60), &mut rng, |_| 31, |_| 31);
        let l = labels(Some(tls("broker.example-iot.com", &[])), Some(msgs.clone()));
        assert_eq!(rule().evaluate(&conv, Some(&l), conv.last_ns), None);
        // Unknown clear payload with the same shape: nothing by default either...
        let unknown = labels(None, Some(msgs));
        assert_eq!(rule().evaluate(&conv, Some(&unknown), conv.last_ns), None);
        // ...but an operator hunting SNI-less pools can count regularity as evidence.
        let cfg = EncryptedMiningConfig {
            min_evidence: vec!["client_size_regularity".into()],
            min_score: 0.4,
            ..EncryptedMiningConfig::default()
        };
        let f = EncryptedMining::new(&cfg)
            .evaluate(&conv, Some(&unknown), conv.last_ns)
            .expect("fires when configured");
        assert_eq!(f.evidence["basis"], "unknown_payload");
        let list = check_contributions(&f);
        assert_eq!(strength(&list, "sni_keyword"), 0.0);
        assert!(f.evidence.get("sni").is_none());
    }

    #[test]
    fn encrypted_miner_ja4_counts_as_identity() {
        let mut rng = Rng::with_seed(3);
        let conv = conversation(443, 7200, 7200 * 40);
        let msgs = series(443, 300, 7200, (30, 90), &mut rng, |_| 245, |_| 251);
        let info = tls("cdn.example.net", &[]);
        let cfg = EncryptedMiningConfig {
            // An a_b prefix entry, in upper case.
            miner_ja4: vec![info.ja4[..23].to_ascii_uppercase(), String::new()],
            ..EncryptedMiningConfig::default()
        };
        let l = labels(Some(info), Some(msgs));
        assert_eq!(rule().evaluate(&conv, Some(&l), conv.last_ns), None);
        let f = EncryptedMining::new(&cfg)
            .evaluate(&conv, Some(&l), conv.last_ns)
            .expect("fires");
        let list = check_contributions(&f);
        assert_eq!(strength(&list, "miner_ja4"), 1.0);
        assert_eq!(strength(&list, "miner_cadence"), 0.0, "{list:?}");
        assert_eq!(f.evidence["min_evidence_met"], json!(["miner_ja4"]));
    }

    #[test]
    fn encrypted_sni_keywords_whole_labels_beat_substrings() {
        let kws: Vec<String> = EncryptedMiningConfig::default()
            .sni_keywords
            .iter()
            .map(|k| k.to_ascii_lowercase())
            .collect();
        let m = |s: &str| sni_match(s, &kws).map(|m| (m.keyword, m.label, m.whole));
        let own = |k: &str, l: &str, w: bool| Some((k.to_string(), l.to_string(), w));
        assert_eq!(m("eu1.pool.example-xmr.net"), own("pool", "pool", true));
        assert_eq!(m("XMR-EU1.NanoPool.org."), own("xmr", "xmr-eu1", true));
        assert_eq!(m("pool2.example.com"), own("pool", "pool2", true));
        assert_eq!(
            m("gulf.moneroocean.stream"),
            own("moneroocean", "moneroocean", true)
        );
        assert_eq!(m("www.liverpoolfc.com"), own("pool", "liverpoolfc", false));
        assert_eq!(m("www.example.com"), None);
        assert_eq!(m(""), None);
        assert_eq!(sni_match("anything", &[]), None);
        assert!(ja4_matches("t13d1715h2_aaa_bbb", "t13d1715h2_aaa"));
        assert!(ja4_matches("T13D1715H2_AAA_BBB", "t13d1715h2_aaa_bbb"));
        assert!(!ja4_matches("t13d1715h2_aaab_bbb", "t13d1715h2_aaa"));
    }

    #[test]
    fn encrypted_example_file_shows_the_defaults_and_validation_names_keys() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sensor.example.toml");
        let c = crate::config::load(Some(&path), &[]).unwrap_or_else(|e| panic!("{e}"));
        let (e, d) = (&c.detect.encrypted_mining, EncryptedMiningConfig::default());
        assert_eq!(
            (e.enabled, e.severity, e.min_score, e.min_duration),
            (d.enabled, d.severity, d.min_score, d.min_duration)
        );
        assert_eq!(
            (
                e.quiet_min_duration,
                e.quiet_max_bytes_per_sec,
                e.min_messages
            ),
            (
                d.quiet_min_duration,
                d.quiet_max_bytes_per_sec,
                d.min_messages
            )
        );
        assert_eq!(
            (&e.sni_keywords, &e.miner_ja4, &e.web_ports),
            (&d.sni_keywords, &d.miner_ja4, &d.web_ports)
        );
        assert_eq!(
            (&e.min_evidence, e.min_evidence_strength, &e.weights),
            (&d.min_evidence, d.min_evidence_strength, &d.weights)
        );
        for (set, key) in [
            (
                "detect.encrypted_mining.min_evidence=[\"sni\"]",
                "detect.encrypted_mining.min_evidence",
            ),
            (
                "detect.encrypted_mining.min_messages=65",
                "detect.encrypted_mining.min_messages",
            ),
            (
                "detect.encrypted_mining.weights.quiet=1.5",
                "detect.encrypted_mining.weights.quiet",
            ),
            (
                "detect.encrypted_mining.quiet_min_duration=0s",
                "detect.encrypted_mining.quiet_min_duration",
            ),
            (
                "detect.encrypted_mining.severity=11",
                "detect.encrypted_mining.severity",
            ),
        ] {
            let err = crate::config::load(None, &[set.to_string()])
                .expect_err(set)
                .to_string();
            assert!(err.contains(key), "{set}: {err}");
        }
        let ok = crate::config::load(
            None,
            &["detect.encrypted_mining.min_evidence=[\"miner_cadence\"]".into()],
        )
        .expect("a known contribution");
        assert_eq!(ok.detect.encrypted_mining.min_evidence, ["miner_cadence"]);
    }

    #[test]
    fn encrypted_random_inputs_never_panic_and_stay_finite() {
        let mut rng = Rng::with_seed(0xC0FF_EE00_1234_5678);
        let mut fired = 0;
        for i in 0..3000u64 {
            let port = [443, 14433, 0, u16::MAX][rng.usize(..4)];
            let secs = [0, 1, 600, 3600, 86_400 * 365][rng.usize(..5)];
            let mut conv = conversation(port, secs, rng.u64(..) >> rng.u64(..64));
            if rng.u64(..3) == 0 {
                conv.start_ns = rng.u64(..);
                conv.last_ns = rng.u64(..);
            }
            let mut cfg = EncryptedMiningConfig {
                min_evidence: Vec::new(),
                min_score: [0.0, 0.5, 1.0][rng.usize(..3)],
                quiet_max_bytes_per_sec: [0.0, 200.0, 1e300][rng.usize(..3)],
                ..EncryptedMiningConfig::default()
            };
            cfg.sni_keywords.push(String::new());
            let tls_info = match rng.u64(..3) {
                0 => None,
                1 => Some(TlsInfo {
                    sni: None,
                    ja4: String::new(),
                    alpn: vec![],
                }),
                _ => Some(tls(
                    &String::from_utf8_lossy(&rng.u64(..).to_le_bytes()),
                    &["x"],
                )),
            };
            let mut s = MessageSeries {
                flow: flow_key(port),
                since_ns: rng.u64(..),
                client: SampleRing::new(MESSAGE_SAMPLES),
                server: SampleRing::new(MESSAGE_SAMPLES),
            };
            for _ in 0..rng.u64(..100) {
                s.client.push(rng.u64(..), rng.u64(..) >> rng.u64(..64));
                s.server.push(rng.u64(..) >> rng.u64(..64), rng.u64(..3));
            }
            let mut conns = SampleRing::new(16);
            for _ in 0..rng.u64(..16) {
                conns.push(rng.u64(..), rng.u64(..));
            }
            conv.connections = Some(Box::new(conns));
            let l = labels(tls_info, (i % 5 != 0).then(|| Box::new(s)));
            if let Some(f) = EncryptedMining::new(&cfg).evaluate(&conv, Some(&l), rng.u64(..)) {
                fired += 1;
                check_contributions(&f);
                let text = serde_json::to_string(&f.evidence).expect("serializes");
                assert!(!text.contains("null"), "{text}");
            }
        }
        assert!(fired > 100, "the fuzz exercised the scoring: {fired}");
    }
}
