//! One alarm, rendered in every format a SIEM reads: JSON (ECS), ArcSight CEF, IBM QRadar
//! LEEF 2.0 and OCSF 1.1 Detection Finding, optionally inside an RFC 5424 syslog header.
//!
//! # Why this module exists
//! The alarm model is one `serde_json::Value` in ECS field names (docs/ARCHITECTURE.md, "Alarm contract").
//! SIEMs want it in their own shapes, and every shape is a *text* format with its own
//! separators: `|` and `=` in CEF, the declared delimiter in LEEF, `"`, `\` and `]` in syslog
//! structured data, and LF (or NUL, RFC 6587) between syslog messages. Many of the strings in an
//! alarm come from hostile traffic (a TLS SNI, a stratum method, a miner's user agent, a threat
//! feed's description) and may contain any of those characters. The single rule of this module:
//! **no string taken from an alarm can ever add a field, change a field's name, or end or split
//! the message.** Every value goes through the escaping of the format it is written into; where
//! the format has no escape for a character, the character is replaced (never dropped silently,
//! never passed raw). Keys and header constants are fixed ASCII chosen here, never taken from the
//! alarm (LEEF evidence keys are the one exception and are admitted only when they are
//! `[A-Za-z0-9_]+`).
//!
//! The renderers never fail: a missing field is left out (or, in a positional header, replaced
//! by a neutral value), so a malformed alarm still reaches the SIEM.
//!
//! # What happens to each character
//! - CEF header field: backslash and pipe are escaped with a backslash; every control
//!   character (CR, LF, NUL, TAB, ...) becomes a space.
//! - CEF extension value: backslash → `\\`, `=` → `\=`, CR → `\r`, LF → `\n`; other control
//!   characters become U+FFFD.
//! - LEEF header field (only the event id comes from the alarm): LEEF defines no escapes, so
//!   anything outside `[A-Za-z0-9_.:-]` becomes `_`.
//! - LEEF attribute value: LEEF defines no escapes; every control character, the TAB delimiter
//!   included, becomes U+FFFD. `=` needs nothing: a LEEF attribute is split at its first `=`
//!   and every key is fixed ASCII.
//! - Syslog HOSTNAME, APP-NAME, PROCID, MSGID: anything outside ASCII 33..=126 becomes `_`, then
//!   the field is cut to its RFC 5424 length (255, 48, 128, 32); empty becomes `-`.
//! - Syslog SD-PARAM value: `"`, backslash and `]` are escaped with a backslash (RFC 5424
//!   6.3.3); every control character becomes U+FFFD.
//! - JSON and OCSF: serde_json escapes `"`, backslash and all of U+0000..U+001F; the other
//!   unsafe characters below are escaped as `\uXXXX` (the same JSON value).
//!
//! "Control character" is Unicode general category Cc: U+0000..U+001F, U+007F..U+009F. Every
//! rule above for control characters also covers U+2028, U+2029 (line breaks to JavaScript
//! and many viewers) and the bidirectional controls U+202A..U+202E and U+2066..U+2069 (they
//! reorder the text an analyst reads): [`is_unsafe_char`]. Strings
//! in a `serde_json::Value` are always valid UTF-8 (invalid bytes were replaced by U+FFFD when the
//! alarm was built), so no format ever sees invalid UTF-8. No raw CR, LF or NUL ever leaves this
//! module, so nothing can end or split a syslog message, whatever the framing (LF or NUL
//! trailer, RFC 6587). The evidence object is carried losslessly as compact JSON in CEF (`cs2`)
//! and OCSF (`evidences[0].data`), and nested evidence values as compact JSON in LEEF; that JSON
//! escapes DEL and C1 controls as `\uXXXX` too, so a value neutralised for display is still
//! available exactly.
//!
//! # Mapping choices
//! - **Severity** (alarm 0-10): CEF header = the alarm severity (CEF uses the same 0-10 scale;
//!   absent → `Unknown`). LEEF `sev` (1-10) = max(1, severity). Syslog and OCSF follow CEF's own
//!   bands (0-3 Low, 4-6 Medium, 7-8 High, 9-10 Very-High): syslog 0 → 6 Informational,
//!   1-3 → 5 Notice, 4-6 → 4 Warning, 7-8 → 3 Error, 9-10 → 2 Critical (never Alert or Emergency:
//!   many syslog daemons broadcast `*.emerg` to every terminal; absent → 5 Notice); OCSF
//!   `severity_id` 0 → 1 Informational, 1-3 → 2 Low, 4-6 → 3 Medium, 7-8 → 4 High,
//!   9-10 → 5 Critical (absent → 0 Unknown).
//! - **Bytes**: ECS `source.bytes` is what the client sent. CEF defines `in` (bytesIn) as "data
//!   flowing from source to destination" and `out` as the reverse, so `in = source.bytes` and
//!   `out = destination.bytes`. LEEF `srcBytes`/`dstBytes` and OCSF keep the ECS sides.
//! - **Syslog facility**: default 4 (`auth`, "security/authorization messages" in RFC 5424).
//!   Facility 13 ("log audit") has no name in glibc's `<syslog.h>`, so many tools and relay
//!   configurations cannot select it by name; `auth` every syslog implementation knows.
//! - **BOM**: the syslog MSG is UTF-8 **without** a BOM (RFC 5424 `MSG-ANY`). A BOM in front of
//!   `CEF:0|` or `LEEF:2.0|` breaks the prefix match of the receivers that detect those
//!   formats, and RFC 8259 forbids a BOM in front of JSON; rsyslog and syslog-ng take either.
//!
//! Vendor, product and version in every format: [`VENDOR`], [`PRODUCT`], [`VERSION`].

mod cef;
mod json;
mod leef;
mod ocsf;
mod syslog;
#[cfg(test)]
mod testkit;

use serde_json::Value;
use time::{
    format_description::{well_known::Rfc3339, BorrowedFormatItem},
    macros::format_description,
    OffsetDateTime,
};

/// Device vendor written into the CEF and LEEF headers and OCSF `metadata.product`.
pub const VENDOR: &str = "FlowSensor";
/// Product name written into the CEF and LEEF headers and OCSF `metadata.product`.
pub const PRODUCT: &str = "sensor-agent";
/// Product version: the agent's crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The payload format (`sink.format` in the configuration: `json`, `cef`, `leef`, `ocsf`).
/// The configuration deserialises straight into it, so an unknown name is a load error that
/// lists these names (serde's "unknown variant ..., expected one of ...") rather than a silent
/// fall-back to JSON that would send a SIEM a format it does not parse. Names are exact and
/// lowercase: `CEF` is not accepted (it never was).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The ECS alarm itself, compact JSON.
    Json,
    /// ArcSight Common Event Format, version 0 ("Implementing ArcSight CEF", revision 25).
    Cef,
    /// IBM QRadar Log Event Extended Format 2.0, tab-delimited.
    Leef,
    /// OCSF 1.1.0 Detection Finding (class 2004), compact JSON.
    Ocsf,
}

impl Format {
    /// Every format, in the order error messages and `FORMATS` list them (the declaration
    /// order, which serde's "expected one of" also follows).
    pub const ALL: [Format; 4] = [Format::Json, Format::Cef, Format::Leef, Format::Ocsf];

    /// The configuration name; `const` so the list of names can be derived at compile time.
    pub const fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Cef => "cef",
            Format::Leef => "leef",
            Format::Ocsf => "ocsf",
        }
    }
}

/// The largest syslog facility code (`local7`); PRI = facility * 8 + severity <= 191.
pub const MAX_FACILITY: u8 = 23;

/// How to build the RFC 5424 header around each payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyslogOptions {
    /// Facility code 0..=23 (values above 23 are treated as 23). Default 4 (`auth`): see the
    /// module doc for why not 13.
    pub facility: u8,
    /// APP-NAME; default `sensor-agent`. Cut to 48 characters of ASCII 33..=126.
    pub app_name: String,
    /// HOSTNAME. `None`: the alarm's `observer.hostname`, else this machine's hostname.
    pub hostname: Option<String>,
    /// MSGID = the alarm's `rule.id` (cut to 32 characters) when true, `-` when false.
    pub msgid_from_rule: bool,
}

impl Default for SyslogOptions {
    fn default() -> Self {
        SyslogOptions {
            facility: 4,
            app_name: PRODUCT.to_string(),
            hostname: None,
            msgid_from_rule: true,
        }
    }
}

/// Renders alarms in one format, optionally wrapped in an RFC 5424 header.
#[derive(Clone, Debug)]
pub struct Renderer {
    format: Format,
    syslog: Option<syslog::SyslogHeader>,
}

impl Renderer {
    /// `syslog: None` renders the bare payload (for files, HTTP, Kafka); `Some` prefixes each
    /// payload with an RFC 5424 header and structured data.
    pub fn new(format: Format, syslog: Option<SyslogOptions>) -> Self {
        Renderer {
            format,
            syslog: syslog.map(syslog::SyslogHeader::new),
        }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// One message for one alarm: no trailing newline (framing is the transport's job) and never
    /// a raw CR, LF or NUL inside.
    pub fn render(&self, alarm: &Value) -> Vec<u8> {
        let payload = self.payload(alarm);
        match &self.syslog {
            None => payload.into_bytes(),
            Some(header) => header.wrap(alarm, &payload).into_bytes(),
        }
    }

    fn payload(&self, alarm: &Value) -> String {
        match self.format {
            Format::Json => json::render(alarm),
            Format::Cef => cef::render(alarm),
            Format::Leef => leef::render(alarm),
            Format::Ocsf => ocsf::render(alarm),
        }
    }
}

// ---- reading the alarm -------------------------------------------------------------------

fn field<'a>(alarm: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(alarm, |v, k| v.get(k))
}

fn str_at<'a>(alarm: &'a Value, path: &[&str]) -> Option<&'a str> {
    field(alarm, path).and_then(Value::as_str)
}

fn u64_at(alarm: &Value, path: &[&str]) -> Option<u64> {
    field(alarm, path).and_then(Value::as_u64)
}

/// A field holding one string or an array of strings (ECS `threat.technique.id`), joined by `,`.
fn joined_at(alarm: &Value, path: &[&str]) -> Option<String> {
    match field(alarm, path)? {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => {
            let parts: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
            (!parts.is_empty()).then(|| parts.join(","))
        }
        _ => None,
    }
}

/// `event.severity` clamped to 0..=10 (numbers only; a float is rounded).
fn severity(alarm: &Value) -> Option<u8> {
    let v = field(alarm, &["event", "severity"])?;
    let n = if let Some(u) = v.as_u64() {
        u.min(10)
    } else if v.as_i64().is_some() {
        0
    } else {
        v.as_f64()?.round().clamp(0.0, 10.0) as u64
    };
    Some(n as u8)
}

/// RFC 5424 severity for an alarm severity (module doc, "Mapping choices").
fn syslog_severity(sev: Option<u8>) -> u8 {
    match sev {
        None => 5,
        Some(0) => 6,
        Some(1..=3) => 5,
        Some(4..=6) => 4,
        Some(7..=8) => 3,
        Some(_) => 2,
    }
}

/// `@timestamp`, `event.start`, `event.end` as milliseconds since the epoch.
fn millis_at(alarm: &Value, path: &[&str]) -> Option<i64> {
    str_at(alarm, path)
        .and_then(UtcTime::parse)
        .map(UtcTime::unix_millis)
}

// ---- neutralising ------------------------------------------------------------------------

/// A character no format may carry raw: a control character (Cc), the Unicode line and
/// paragraph separators U+2028/U+2029 (line breaks to JavaScript and many log viewers), and
/// the bidirectional embedding, override and isolate controls U+202A..U+202E, U+2066..U+2069
/// (they reorder what an analyst sees: "Trojan Source").
pub(crate) fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Appends `s` with every unsafe character ([`is_unsafe_char`]) replaced by `with`.
fn push_replacing_controls(out: &mut String, s: &str, with: char) {
    out.extend(s.chars().map(|c| if is_unsafe_char(c) { with } else { c }));
}

/// Compact JSON with no unsafe character ([`is_unsafe_char`]) left raw: serde_json escapes
/// U+0000..U+001F, and DEL, U+0080..U+009F, the line/paragraph separators and the bidi
/// controls (which it leaves raw, and which can only occur inside strings) are escaped here
/// as `\uXXXX`. The text is still exactly the same JSON value, and it survives any
/// of the text formats unchanged.
fn compact_json(v: &Value) -> String {
    let raw = v.to_string();
    if !raw.chars().any(is_unsafe_char) {
        return raw;
    }
    let mut out = String::with_capacity(raw.len() + 16);
    for c in raw.chars() {
        if is_unsafe_char(c) {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

// ---- time --------------------------------------------------------------------------------

/// Java `yyyy-MM-dd'T'HH:mm:ss.SSSZ` (LEEF `devTime`): milliseconds and a `+0000` offset.
const LEEF_MILLIS: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]+0000");

/// A UTC instant read from an RFC 3339 timestamp (the alarm's own format).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct UtcTime {
    secs: i64,
    nanos: u32,
}

impl UtcTime {
    /// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)`; `t`/`z` accepted in lower case.
    /// Fractions beyond nanoseconds are truncated.
    fn parse(s: &str) -> Option<UtcTime> {
        // `time` takes any character between date and time (RFC 3339 5.6 lets applications
        // use a space); alarms are written with `T` and nothing else was ever read as one.
        if !s
            .as_bytes()
            .get(10)
            .is_some_and(|c| matches!(c, b'T' | b't'))
        {
            return None;
        }
        // A leap second (`:60`) has always been read as the second after `:59`, wherever it
        // falls; `time` only takes one at the end of a UTC month and folds it into
        // `:59.999999999`. It is read as `:59` here and the second added back.
        let leap = s.get(17..19) == Some("60");
        let t = if leap {
            let s = format!("{}59{}", &s[..17], &s[19..]);
            OffsetDateTime::parse(&s, &Rfc3339)
        } else {
            OffsetDateTime::parse(s, &Rfc3339)
        }
        .ok()?;
        Some(UtcTime {
            secs: t.unix_timestamp() + i64::from(leap),
            nanos: t.nanosecond(),
        })
    }

    fn unix_millis(self) -> i64 {
        self.secs * 1000 + i64::from(self.nanos / 1_000_000)
    }

    /// The instant in UTC, if its year has four digits: RFC 5424 and LEEF dates have four, so
    /// a time read with an offset that moves it to year -1 or 10000 is not written.
    fn four_digit_year(self) -> Option<OffsetDateTime> {
        let t = OffsetDateTime::from_unix_timestamp(self.secs)
            .ok()?
            .replace_nanosecond(self.nanos)
            .ok()?;
        (0..=9999).contains(&t.year()).then_some(t)
    }

    /// `2021-06-10T15:41:22.384993Z`: RFC 5424 TIMESTAMP with microseconds, always UTC.
    /// `None` outside years 0000..=9999 (RFC 5424 dates have four digits).
    fn rfc3339_micros(self) -> Option<String> {
        self.four_digit_year()
            .map(|t| crate::clock::format_utc(t, crate::clock::RFC3339_MICROS))
    }

    /// `2021-06-10T15:41:22.384+0000`: Java `yyyy-MM-dd'T'HH:mm:ss.SSSZ` (LEEF `devTime`).
    fn leef_millis(self) -> Option<String> {
        self.four_digit_year()
            .map(|t| crate::clock::format_utc(t, LEEF_MILLIS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The flow table's `sensor_degraded` (no endpoints, counts in the evidence) goes out in
    /// every format with its rule, action, times and counts.
    #[test]
    fn the_flow_tables_sensor_degraded_renders_in_every_format() {
        use crate::alarm::{degraded::Pressure, AlarmManager, Observer};
        let mut m = AlarmManager::new(Default::default(), Observer::default());
        let s = 1_000_000_000u64;
        let p = Pressure {
            refused: 17,
            evicted: 40_961,
            recreated: 2,
            first_ns: Some(1_700_000_000 * s),
            last_ns: Some(1_700_000_030 * s),
        };
        let alarm = m
            .table_pressure(&p, 1_700_000_031 * s)
            .0
            .expect("opened")
            .json;
        for format in [Format::Json, Format::Cef, Format::Leef, Format::Ocsf] {
            for syslog in [None, Some(SyslogOptions::default())] {
                let text = String::from_utf8(Renderer::new(format, syslog).render(&alarm)).unwrap();
                assert!(text.contains("sensor_degraded"), "{format:?}: {text}");
                for n in ["17", "40961"] {
                    assert!(text.contains(n), "{format:?} lacks {n}: {text}");
                }
                assert!(
                    text.contains("refused_flows") && text.contains("evicted_flows"),
                    "{format:?}: {text}"
                );
                assert!(!text.contains('\n'), "{format:?}: one line");
            }
        }
    }

    #[test]
    fn time_parses_and_formats() {
        let t = UtcTime::parse("2021-06-10T15:41:22.384993Z").unwrap();
        assert_eq!(t.unix_millis(), 1_623_339_682_384);
        assert_eq!(t.rfc3339_micros().unwrap(), "2021-06-10T15:41:22.384993Z");
        assert_eq!(t.leef_millis().unwrap(), "2021-06-10T15:41:22.384+0000");
        let o = UtcTime::parse("2021-06-10T17:41:22.384993+02:00").unwrap();
        assert_eq!(o, t);
        assert_eq!(
            UtcTime::parse("1970-01-01T00:00:00Z")
                .unwrap()
                .unix_millis(),
            0
        );
        assert_eq!(
            UtcTime::parse("1969-12-31T23:59:59.5Z")
                .unwrap()
                .unix_millis(),
            -500
        );
        assert_eq!(
            UtcTime::parse("2024-02-29T00:00:00Z")
                .unwrap()
                .rfc3339_micros()
                .unwrap(),
            "2024-02-29T00:00:00.000000Z"
        );
        for bad in [
            "",
            "2021-06-10",
            "2021-06-10 15:41:22Z",
            "2021-13-10T15:41:22Z",
            "2023-02-29T00:00:00Z",
            "2021-06-10T15:41:22.Z",
            "2021-06-10T15:41:22",
            "2021-06-10T15:41:22Zjunk",
            "2021-06-10T15:41:22+0200",
        ] {
            assert_eq!(UtcTime::parse(bad), None, "{bad}");
        }
    }

    /// Formatting and parsing agree on every fourth-century day from year 0000 to 9999 (the
    /// calendar is the `time` crate's; this guards the glue around it).
    #[test]
    fn rfc3339_round_trips_over_the_four_digit_years() {
        for days in (-719_528..2_932_897).step_by(17) {
            let t = UtcTime {
                secs: days * 86_400 + 86_399,
                nanos: 123_456_000,
            };
            let s = t.rfc3339_micros().unwrap();
            assert_eq!(UtcTime::parse(&s), Some(t), "{s}");
        }
        let before = UtcTime {
            secs: -719_528 * 86_400 - 1,
            nanos: 0,
        };
        assert_eq!(before.rfc3339_micros(), None);
        assert_eq!(before.leef_millis(), None);
    }

    #[test]
    fn time_edge_cases_read_as_before() {
        let secs = |s: &str| UtcTime::parse(s).map(|t| (t.secs, t.nanos));
        // Leap second: the second after :59, anywhere.
        assert_eq!(secs("2021-06-10T15:41:60Z"), secs("2021-06-10T15:42:00Z"));
        assert_eq!(
            secs("2016-12-31T23:59:60.5Z"),
            Some((1_483_228_800, 500_000_000))
        );
        // Lower-case separators, digits past nanoseconds truncated, offsets to the minute.
        assert_eq!(
            secs("2021-06-10t15:41:22.1234567899z"),
            Some((1_623_339_682, 123_456_789))
        );
        assert_eq!(
            secs("2021-06-10T15:41:22-00:30"),
            Some((1_623_339_682 + 1800, 0))
        );
        assert_eq!(secs("2021-06-10T15:41:22+24:00"), None);
        assert_eq!(secs("2021-06-10T24:00:00Z"), None);
        assert_eq!(secs("2021-06-10T15:60:00Z"), None);
        // Year 0000 with a positive offset lands in year -1: read, but never written.
        let t = UtcTime::parse("0000-01-01T00:00:00+01:00").unwrap();
        assert_eq!(t.rfc3339_micros(), None);
        assert_eq!(
            UtcTime::parse("9999-12-31T23:59:59.999999Z")
                .unwrap()
                .rfc3339_micros()
                .as_deref(),
            Some("9999-12-31T23:59:59.999999Z")
        );
        assert_eq!(
            UtcTime::parse("9999-12-31T23:59:59-01:00").map(UtcTime::unix_millis),
            Some(253_402_304_399_000)
        );
    }

    #[test]
    fn severity_bands() {
        let sev = |v: Value| severity(&json!({ "event": { "severity": v } }));
        assert_eq!(sev(json!(3)), Some(3));
        assert_eq!(sev(json!(42)), Some(10));
        assert_eq!(sev(json!(-1)), Some(0));
        assert_eq!(sev(json!(6.6)), Some(7));
        assert_eq!(sev(json!("high")), None);
        let bands: Vec<u8> = (0..=10).map(|s| syslog_severity(Some(s))).collect();
        assert_eq!(bands, [6, 5, 5, 5, 4, 4, 4, 3, 3, 2, 2]);
        assert_eq!(syslog_severity(None), 5);
    }

    #[test]
    fn format_names_deserialize() {
        for f in Format::ALL {
            let parsed: Format = serde_json::from_value(json!(f.as_str())).unwrap();
            assert_eq!(parsed, f);
        }
        assert!(serde_json::from_value::<Format>(json!("CEF")).is_err());
    }
}
