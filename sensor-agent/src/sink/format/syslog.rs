//! The RFC 5424 wrapper: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD] MSG`.
//!
//! - PRI = facility * 8 + syslog severity (module doc: alarm 0 → 6 Informational, 1-3 → 5
//!   Notice, 4-6 → 4 Warning, 7-8 → 3 Error, 9-10 → 2 Critical, absent → 5 Notice).
//! - TIMESTAMP = the alarm's `@timestamp`, UTC with microseconds (`-` if it has none).
//! - HOSTNAME = the configured name, else `observer.hostname`, else this machine's name;
//!   APP-NAME from the options; PROCID = this process's id; MSGID = `rule.id` (or `-`).
//!   Header fields keep only PRINTUSASCII (33..=126; anything else becomes `_`), are cut to
//!   255/48/128/32 characters and are `-` when empty.
//! - STRUCTURED-DATA: one element `[sensor@32473 id="…" rule="…" action="…" severity="…"]`
//!   (each parameter only when the alarm has the field). 32473 is the private enterprise number
//!   IANA reserves for documentation (RFC 5612); replace [`SD_ID`] if the project registers its
//!   own. Values escape `"`, `\` and `]` with a backslash (RFC 5424 6.3.3); control characters
//!   become U+FFFD, as PARAM-VALUE has no escape for them.
//! - MSG = the rendered payload, UTF-8 without a BOM (module doc).

use std::fmt::Write;

use serde_json::Value;

use super::{
    is_unsafe_char, severity, str_at, syslog_severity, SyslogOptions, UtcTime, MAX_FACILITY,
};

/// SD-ID of the structured-data element.
pub const SD_ID: &str = "sensor@32473";

const HOSTNAME_MAX: usize = 255;
const APP_NAME_MAX: usize = 48;
const PROCID_MAX: usize = 128;
const MSGID_MAX: usize = 32;

/// The parts of the RFC 5424 header that do not depend on the alarm, prepared once.
#[derive(Clone, Debug)]
pub struct SyslogHeader {
    facility: u8,
    app_name: String,
    procid: String,
    /// The configured HOSTNAME, already made valid.
    hostname: Option<String>,
    /// This machine's name, for alarms without `observer.hostname`.
    local_hostname: String,
    msgid_from_rule: bool,
}

impl SyslogHeader {
    pub(super) fn new(options: SyslogOptions) -> Self {
        // Looked up once; only needed when no HOSTNAME is configured.
        let local = match options.hostname {
            Some(_) => String::new(),
            None => crate::alarm::Observer::local(None).hostname,
        };
        SyslogHeader {
            facility: options.facility.min(MAX_FACILITY),
            app_name: header_field(&options.app_name, APP_NAME_MAX),
            procid: header_field(&std::process::id().to_string(), PROCID_MAX),
            hostname: options
                .hostname
                .as_deref()
                .map(|h| header_field(h, HOSTNAME_MAX)),
            local_hostname: header_field(&local, HOSTNAME_MAX),
            msgid_from_rule: options.msgid_from_rule,
        }
    }

    pub(super) fn wrap(&self, alarm: &Value, payload: &str) -> String {
        let sev = severity(alarm);
        let pri = u16::from(self.facility) * 8 + u16::from(syslog_severity(sev));
        let timestamp = str_at(alarm, &["@timestamp"])
            .and_then(UtcTime::parse)
            .and_then(UtcTime::rfc3339_micros)
            .unwrap_or_else(|| "-".to_string());
        let hostname = match &self.hostname {
            Some(h) => h.clone(),
            None => match str_at(alarm, &["observer", "hostname"]) {
                Some(h) if !h.is_empty() => header_field(h, HOSTNAME_MAX),
                _ => self.local_hostname.clone(),
            },
        };
        let msgid = match str_at(alarm, &["rule", "id"]) {
            Some(id) if self.msgid_from_rule => header_field(id, MSGID_MAX),
            _ => "-".to_string(),
        };
        let mut out = String::with_capacity(payload.len() + 160);
        let _ = write!(
            out,
            "<{pri}>1 {timestamp} {hostname} {} {} {msgid} [{SD_ID}",
            self.app_name, self.procid
        );
        for (name, path) in [
            ("id", &["event", "id"][..]),
            ("rule", &["rule", "id"]),
            ("action", &["event", "action"]),
        ] {
            if let Some(v) = str_at(alarm, path) {
                sd_param(&mut out, name, v);
            }
        }
        if let Some(s) = sev {
            sd_param(&mut out, "severity", &s.to_string());
        }
        out.push_str("] ");
        out.push_str(payload);
        out
    }
}

/// A header field: PRINTUSASCII only, at most `max` characters, `-` (NILVALUE) when empty.
fn header_field(s: &str, max: usize) -> String {
    let out: String = s
        .chars()
        .map(|c| if ('!'..='~').contains(&c) { c } else { '_' })
        .take(max)
        .collect();
    if out.is_empty() {
        "-".to_string()
    } else {
        out
    }
}

fn sd_param(out: &mut String, name: &str, value: &str) {
    out.push(' ');
    out.push_str(name);
    out.push_str("=\"");
    for c in value.chars() {
        match c {
            '"' | '\\' | ']' => {
                out.push('\\');
                out.push(c);
            }
            c if is_unsafe_char(c) => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    //! The parser here is written from the RFC 5424 ABNF, independently of the renderer: header
    //! fields are SP-separated PRINTUSASCII tokens with their length limits, SD-PARAM values end
    //! at the first `"` not preceded by a backslash escape, and a `]` inside a value must be
    //! escaped.

    use super::super::{testkit::*, Format, Renderer, SyslogOptions};
    use fastrand::Rng;
    use serde_json::Value;

    #[derive(Debug, PartialEq)]
    struct Syslog {
        pri: u16,
        timestamp: String,
        hostname: String,
        app_name: String,
        procid: String,
        msgid: String,
        sd: Vec<(String, Vec<(String, String)>)>,
        msg: Option<Vec<u8>>,
    }

    fn parse(msg: &[u8]) -> Result<Syslog, String> {
        let mut pos = 0;
        let mut token = |max: usize, what: &str| -> Result<String, String> {
            let start = pos;
            while pos < msg.len() && msg[pos] != b' ' {
                if !(33..=126).contains(&msg[pos]) {
                    return Err(format!("{what}: byte {:#04x}", msg[pos]));
                }
                pos += 1;
            }
            let len = pos - start;
            if len == 0 || len > max {
                return Err(format!("{what}: length {len}"));
            }
            let t = String::from_utf8(msg[start..pos].to_vec()).unwrap();
            if pos >= msg.len() {
                return Err(format!("{what}: message ends"));
            }
            pos += 1; // SP
            Ok(t)
        };
        let head = token(usize::MAX, "PRI/VERSION")?;
        let pri_version = head
            .strip_prefix('<')
            .and_then(|r| r.split_once('>'))
            .ok_or("no PRI")?;
        let pri: u16 = pri_version.0.parse().map_err(|_| "PRI not a number")?;
        if pri_version.0.len() > 3 || pri > 191 || pri_version.1 != "1" {
            return Err(format!("bad PRI/VERSION {head}"));
        }
        let timestamp = token(usize::MAX, "TIMESTAMP")?;
        let hostname = token(255, "HOSTNAME")?;
        let app_name = token(48, "APP-NAME")?;
        let procid = token(128, "PROCID")?;
        let msgid = token(32, "MSGID")?;
        let text = std::str::from_utf8(&msg[pos..]).map_err(|e| e.to_string())?;
        let chars: Vec<char> = text.chars().collect();
        let mut i = 0;
        let mut sd = Vec::new();
        if chars.first() == Some(&'-') {
            i = 1;
        } else {
            while chars.get(i) == Some(&'[') {
                i += 1;
                let name_end = |c: &char| *c == ' ' || *c == ']';
                let start = i;
                while i < chars.len() && !name_end(&chars[i]) {
                    i += 1;
                }
                let id: String = chars[start..i].iter().collect();
                check_sd_name(&id, true)?;
                let mut params = Vec::new();
                while chars.get(i) == Some(&' ') {
                    i += 1;
                    let start = i;
                    while i < chars.len() && chars[i] != '=' {
                        i += 1;
                    }
                    let name: String = chars[start..i].iter().collect();
                    check_sd_name(&name, false)?;
                    if chars.get(i + 1) != Some(&'"') {
                        return Err("PARAM-VALUE not quoted".into());
                    }
                    i += 2;
                    let mut value = String::new();
                    loop {
                        match chars.get(i) {
                            None => return Err("unterminated PARAM-VALUE".into()),
                            Some('"') => break,
                            Some(']') => return Err("unescaped ] in PARAM-VALUE".into()),
                            Some('\\') => match chars.get(i + 1) {
                                Some(&c @ ('"' | '\\' | ']')) => {
                                    value.push(c);
                                    i += 2;
                                }
                                _ => return Err("backslash without an escapable char".into()),
                            },
                            Some(&c) => {
                                value.push(c);
                                i += 1;
                            }
                        }
                    }
                    i += 1; // closing quote
                    params.push((name, value));
                }
                if chars.get(i) != Some(&']') {
                    return Err(format!("SD-ELEMENT not closed at {i}"));
                }
                i += 1;
                sd.push((id, params));
            }
            if sd.is_empty() {
                return Err("no STRUCTURED-DATA".into());
            }
        }
        let rest: String = chars[i..].iter().collect();
        let msg = match rest.strip_prefix(' ') {
            Some(m) => Some(m.as_bytes().to_vec()),
            None if rest.is_empty() => None,
            None => return Err("no SP before MSG".into()),
        };
        Ok(Syslog {
            pri,
            timestamp,
            hostname,
            app_name,
            procid,
            msgid,
            sd,
            msg,
        })
    }

    fn check_sd_name(name: &str, is_id: bool) -> Result<(), String> {
        let ok = !name.is_empty()
            && name.len() <= if is_id { 64 } else { 32 }
            && name
                .bytes()
                .all(|b| (33..=126).contains(&b) && !b"= ]\"".contains(&b));
        ok.then_some(()).ok_or(format!("bad SD-NAME {name:?}"))
    }

    /// RFC 5424 TIMESTAMP as written here: `YYYY-MM-DDThh:mm:ss.ffffffZ`.
    fn is_micro_timestamp(t: &str) -> bool {
        let b = t.as_bytes();
        let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
        b.len() == 27
            && digits(0..4)
            && b[4] == b'-'
            && digits(5..7)
            && b[7] == b'-'
            && digits(8..10)
            && b[10] == b'T'
            && digits(11..13)
            && b[13] == b':'
            && digits(14..16)
            && b[16] == b':'
            && digits(17..19)
            && b[19] == b'.'
            && digits(20..26)
            && b[26] == b'Z'
    }

    fn options() -> SyslogOptions {
        SyslogOptions::default()
    }

    #[test]
    fn golden_example_alarm_in_every_format() {
        let alarm = example_alarm();
        let pid = std::process::id();
        for format in [Format::Json, Format::Cef, Format::Leef, Format::Ocsf] {
            let bare = Renderer::new(format, None).render(&alarm);
            let wrapped = Renderer::new(format, Some(options())).render(&alarm);
            let mut expected = format!(
                "<37>1 2021-06-10T15:41:22.384993Z vm sensor-agent {pid} long_flow \
                 [sensor@32473 id=\"f3e9fd46e62da2488ae3f085098922f7\" rule=\"long_flow\" \
                 action=\"opened\" severity=\"3\"] "
            )
            .into_bytes();
            expected.extend_from_slice(&bare);
            assert_eq!(
                String::from_utf8(wrapped).unwrap(),
                String::from_utf8(expected).unwrap(),
                "{format:?}"
            );
        }
    }

    #[test]
    fn options_change_the_header() {
        let alarm = example_alarm();
        let custom = SyslogOptions {
            facility: 13,
            app_name: "flow sensor\u{e9}".into(),
            hostname: Some("gw-1.example".into()),
            msgid_from_rule: false,
        };
        let out = Renderer::new(Format::Json, Some(custom)).render(&alarm);
        let s = parse(&out).unwrap();
        assert_eq!(s.pri, 13 * 8 + 5);
        assert_eq!(s.hostname, "gw-1.example");
        assert_eq!(s.app_name, "flow_sensor_");
        assert_eq!(s.msgid, "-");
        // Facility above 23 is clamped; no @timestamp gives NILVALUE; severity 10 → Critical.
        let mut odd = alarm.clone();
        odd.as_object_mut().unwrap().remove("@timestamp");
        odd["event"]["severity"] = 10.into();
        odd["observer"]["hostname"] = "".into();
        let big = SyslogOptions {
            facility: 200,
            ..options()
        };
        let s = parse(&Renderer::new(Format::Cef, Some(big)).render(&odd)).unwrap();
        assert_eq!(s.pri, 23 * 8 + 2);
        assert_eq!(s.timestamp, "-");
        assert!(!s.hostname.is_empty());
    }

    #[test]
    fn header_fields_are_cut_to_their_limits() {
        let mut alarm = example_alarm();
        alarm["observer"]["hostname"] = "h".repeat(300).into();
        alarm["rule"]["id"] = "r".repeat(40).into();
        let long = SyslogOptions {
            app_name: "a".repeat(60),
            ..options()
        };
        let s = parse(&Renderer::new(Format::Leef, Some(long)).render(&alarm)).unwrap();
        assert_eq!(s.hostname.len(), 255);
        assert_eq!(s.app_name.len(), 48);
        assert_eq!(s.msgid.len(), 32);
    }

    #[test]
    fn hostile_strings_never_add_params_or_lines() {
        let mut rng = Rng::with_seed(0x5424_2021);
        let formats = [Format::Json, Format::Cef, Format::Leef, Format::Ocsf];
        for case in 0..CASES {
            let h = Hostile::generate(&mut rng);
            let alarm = h.alarm();
            let format = formats[case % formats.len()];
            let opts = SyslogOptions {
                app_name: h.app_name.clone(),
                ..options()
            };
            let bytes = Renderer::new(format, Some(opts)).render(&alarm);
            assert_no_line_breaks(&bytes, case);
            let s = parse(&bytes).unwrap_or_else(|e| {
                panic!("case {case}: {e}\n{:?}", String::from_utf8_lossy(&bytes))
            });
            assert_eq!(s.pri, 4 * 8 + 5, "case {case}");
            assert!(is_micro_timestamp(&s.timestamp), "case {case}");
            // Header fields: PRINTUSASCII kept, every other character one `_`, cut, `-` if empty.
            let token = |orig: &str, max: usize| -> String {
                let t: String = orig
                    .chars()
                    .map(|c| if c.is_ascii_graphic() { c } else { '_' })
                    .take(max)
                    .collect();
                if t.is_empty() {
                    "-".into()
                } else {
                    t
                }
            };
            if !h.hostname.is_empty() {
                assert_eq!(s.hostname, token(&h.hostname, 255), "case {case}");
            }
            assert_eq!(s.app_name, token(&h.app_name, 48), "case {case}");
            assert_eq!(s.msgid, token(&h.rule_id, 32), "case {case}");
            assert_eq!(s.procid, std::process::id().to_string());
            // Exactly one SD element with exactly the intended parameters, values intact.
            let want = |v: &str| -> String {
                v.chars()
                    .map(|c| {
                        if crate::sink::format::is_unsafe_char(c) {
                            '\u{FFFD}'
                        } else {
                            c
                        }
                    })
                    .collect()
            };
            assert_eq!(s.sd.len(), 1, "case {case}");
            assert_eq!(s.sd[0].0, "sensor@32473");
            let params: Vec<(&str, &str)> = s.sd[0]
                .1
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            assert_eq!(
                params,
                [
                    ("id", want(&h.id).as_str()),
                    ("rule", want(&h.rule_id).as_str()),
                    ("action", want(&h.action).as_str()),
                    ("severity", "3"),
                ],
                "case {case}"
            );
            // MSG is exactly the bare payload.
            let bare = Renderer::new(format, None).render(&alarm);
            assert_eq!(s.msg.as_deref(), Some(&bare[..]), "case {case}");
        }
    }

    #[test]
    fn json_payload_parses_back_inside_syslog() {
        let alarm = example_alarm();
        let out = Renderer::new(Format::Json, Some(options())).render(&alarm);
        let s = parse(&out).unwrap();
        let back: Value = serde_json::from_slice(&s.msg.unwrap()).unwrap();
        assert_eq!(back, alarm);
    }
}
