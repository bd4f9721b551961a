//! IBM QRadar Log Event Extended Format 2.0:
//! `LEEF:2.0|Vendor|Product|Version|EventID|x09|key=value<TAB>key=value...`
//!
//! The attribute delimiter is TAB, declared in the header as `x09` (LEEF 2.0 accepts one
//! character or its hex code prefixed by `x` or `0x`). EventID = `rule.id`; QRadar maps the pair
//! (EventID, `cat`) to a QID, and `cat` = `event.action`, so opened, updated and closed alarms
//! of a rule can be mapped separately.
//!
//! LEEF defines no escape sequences. So that no string can add an attribute or end the message,
//! every control character in a value (TAB, the delimiter, CR, LF, NUL, ...) becomes U+FFFD, and
//! the header fields are reduced to `[A-Za-z0-9_.:-]` (anything else becomes `_`). `=` and `|`
//! in values are harmless: the header ends at its sixth pipe and a receiver splits each
//! attribute at its first `=`; every key is fixed ASCII.
//!
//! Attributes, in this order, each only when the alarm has the field. Predefined LEEF keys:
//! `devTime` (`@timestamp`, ms precision) with `devTimeFormat=yyyy-MM-dd'T'HH:mm:ss.SSSZ`,
//! `cat`, `sev` (1-10: LEEF has no 0, so max(1, severity)), `proto` (`TCP`, `UDP`), `src`,
//! `srcPort`, `dst`, `dstPort`, `srcBytes`, `dstBytes`, `srcPackets`, `dstPackets` (source = the
//! client, as in ECS). Custom keys: `alarmId` (`event.id`), `ruleName`, `reason`, `hits`,
//! `durationSeconds` (rounded), `start`, `end` (RFC 3339, as in the alarm), `communityId`,
//! `technique` (ATT&CK ids, comma separated), `observerHostname`, `observerInterface`; the
//! host's side of the flow: `forwarded` (`network.forwarded`), and when the host's process is
//! known `processId`, `processName`, `processExecutable`, `processFrom`, `usrName` (predefined),
//! `userId`, `cgroup`, `containerId`, `containerRuntime`, `serviceName`; and one
//! `evidence_<key>` per evidence entry whose key is `[A-Za-z0-9_]+` (strings as text, other
//! values as compact JSON with every control character escaped, so nested evidence arrives
//! exactly; other keys are left out, and no detector makes such keys).

use serde_json::Value;

use super::{
    compact_json, field, joined_at, push_replacing_controls, severity, str_at, u64_at, UtcTime,
    PRODUCT, VENDOR, VERSION,
};

/// The Java date pattern of `devTime`.
const DEV_TIME_FORMAT: &str = "yyyy-MM-dd'T'HH:mm:ss.SSSZ";

pub(super) fn render(alarm: &Value) -> String {
    let mut out = String::with_capacity(768);
    out.push_str("LEEF:2.0");
    for part in [
        VENDOR,
        PRODUCT,
        VERSION,
        str_at(alarm, &["rule", "id"]).unwrap_or("unknown"),
    ] {
        out.push('|');
        out.extend(part.chars().map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-') {
                c
            } else {
                '_'
            }
        }));
    }
    out.push_str("|x09|");

    let mut attrs = Attributes {
        out: &mut out,
        first: true,
    };
    if let Some(t) = str_at(alarm, &["@timestamp"])
        .and_then(UtcTime::parse)
        .and_then(UtcTime::leef_millis)
    {
        attrs.put("devTime", &t);
        attrs.put("devTimeFormat", DEV_TIME_FORMAT);
    }
    if let Some(action) = str_at(alarm, &["event", "action"]) {
        attrs.put("cat", action);
    }
    if let Some(sev) = severity(alarm) {
        attrs.put("sev", &sev.max(1).to_string());
    }
    if let Some(t) = str_at(alarm, &["network", "transport"]) {
        attrs.put("proto", &t.to_ascii_uppercase());
    }
    for (key, path) in [
        ("src", &["source", "ip"][..]),
        ("srcPort", &["source", "port"]),
        ("dst", &["destination", "ip"]),
        ("dstPort", &["destination", "port"]),
        ("srcBytes", &["source", "bytes"]),
        ("dstBytes", &["destination", "bytes"]),
        ("srcPackets", &["source", "packets"]),
        ("dstPackets", &["destination", "packets"]),
        ("alarmId", &["event", "id"]),
        ("ruleName", &["rule", "name"]),
        ("reason", &["event", "reason"]),
        ("hits", &["sensor", "hits"]),
    ] {
        attrs.scalar(key, field(alarm, path));
    }
    if let Some(ns) = u64_at(alarm, &["event", "duration"]) {
        let secs = ns.saturating_add(500_000_000) / 1_000_000_000;
        attrs.put("durationSeconds", &secs.to_string());
    }
    for (key, path) in [
        ("start", &["event", "start"][..]),
        ("end", &["event", "end"]),
        ("communityId", &["network", "community_id"]),
    ] {
        attrs.scalar(key, field(alarm, path));
    }
    if let Some(t) = joined_at(alarm, &["threat", "technique", "id"]) {
        attrs.put("technique", &t);
    }
    attrs.scalar("observerHostname", field(alarm, &["observer", "hostname"]));
    attrs.scalar(
        "observerInterface",
        field(alarm, &["observer", "ingress", "interface", "name"]),
    );
    // The host's process (flows this host opened or accepted) and the forwarded mark.
    for (key, path) in [
        ("forwarded", &["network", "forwarded"][..]),
        ("processId", &["process", "pid"]),
        ("processName", &["process", "name"]),
        ("processExecutable", &["process", "executable"]),
        ("processFrom", &["sensor", "process_from"]),
        ("usrName", &["user", "name"]),
        ("userId", &["user", "id"]),
        ("cgroup", &["process", "cgroup", "path"]),
        ("containerId", &["container", "id"]),
        ("containerRuntime", &["container", "runtime"]),
        ("serviceName", &["service", "name"]),
    ] {
        attrs.scalar(key, field(alarm, path));
    }
    if let Some(Value::Object(evidence)) = field(alarm, &["sensor", "evidence"]) {
        for (key, value) in evidence {
            let plain_key =
                !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if plain_key {
                attrs.scalar(&format!("evidence_{key}"), Some(value));
            }
        }
    }
    out
}

struct Attributes<'a> {
    out: &'a mut String,
    first: bool,
}

impl Attributes<'_> {
    fn put(&mut self, key: &str, value: &str) {
        if !self.first {
            self.out.push('\t');
        }
        self.first = false;
        self.out.push_str(key);
        self.out.push('=');
        push_replacing_controls(self.out, value, '\u{FFFD}');
    }

    /// Strings as text, other JSON values (numbers, bools, objects) as compact JSON; `null` and
    /// absent fields are left out.
    fn scalar(&mut self, key: &str, value: Option<&Value>) {
        match value {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => self.put(key, s),
            Some(v) => self.put(key, &compact_json(v)),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The parser here follows the LEEF 2.0 layout on its own: six pipes end the header, the
    //! sixth field names the delimiter (a character, or its hex code after `x`/`0x`), attributes
    //! are split on the delimiter and each at its first `=`.

    use super::super::{testkit::*, Format, Renderer};
    use fastrand::Rng;
    use serde_json::Value;

    #[derive(Debug)]
    struct Leef {
        header: Vec<String>,
        delimiter: char,
        attrs: Vec<(String, String)>,
    }

    impl Leef {
        fn get(&self, key: &str) -> Option<&str> {
            self.attrs
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        }
    }

    fn parse(msg: &str) -> Result<Leef, String> {
        let parts: Vec<&str> = msg.splitn(7, '|').collect();
        if parts.len() != 7 {
            return Err(format!("{} header fields", parts.len()));
        }
        if parts[0] != "LEEF:2.0" {
            return Err(format!("version {:?}", parts[0]));
        }
        let d = parts[5];
        let hex = d.strip_prefix("0x").or_else(|| d.strip_prefix('x'));
        let delimiter = match hex {
            Some(h) if (1..=4).contains(&h.len()) => u32::from_str_radix(h, 16)
                .ok()
                .and_then(char::from_u32)
                .ok_or("bad hex delimiter")?,
            _ if d.chars().count() == 1 => d.chars().next().unwrap(),
            _ => return Err(format!("delimiter {d:?}")),
        };
        let mut attrs = Vec::new();
        if !parts[6].is_empty() {
            for attr in parts[6].split(delimiter) {
                let (k, v) = attr.split_once('=').ok_or(format!("no '=' in {attr:?}"))?;
                attrs.push((k.to_string(), v.to_string()));
            }
        }
        Ok(Leef {
            header: parts[..5].iter().map(|s| s.to_string()).collect(),
            delimiter,
            attrs,
        })
    }

    /// A LEEF value keeps everything but control characters, which become U+FFFD.
    fn expect_value(s: &str) -> String {
        s.chars()
            .map(|c| {
                if crate::sink::format::is_unsafe_char(c) {
                    '\u{FFFD}'
                } else {
                    c
                }
            })
            .collect()
    }

    #[test]
    fn golden_example_alarm() {
        let out = Renderer::new(Format::Leef, None).render(&example_alarm());
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text, GOLDEN_LEEF);
        let leef = parse(&text).unwrap();
        assert_eq!(leef.delimiter, '\t');
        assert_eq!(
            leef.header,
            [
                "LEEF:2.0",
                "FlowSensor",
                "sensor-agent",
                env!("CARGO_PKG_VERSION"),
                "long_flow"
            ]
        );
        assert_eq!(
            leef.get("evidence_sni"),
            Some("pool.example|x=1\\\u{FFFD}\u{FFFD}")
        );
        assert_eq!(leef.get("sev"), Some("3"));
    }

    pub(super) const GOLDEN_LEEF: &str = concat!(
        "LEEF:2.0|FlowSensor|sensor-agent|",
        env!("CARGO_PKG_VERSION"),
        "|long_flow|x09|",
        "devTime=2021-06-10T15:41:22.384+0000\tdevTimeFormat=yyyy-MM-dd'T'HH:mm:ss.SSSZ\t",
        "cat=opened\tsev=3\tproto=TCP\tsrc=192.168.2.186\tsrcPort=53798\tdst=192.168.2.21\t",
        "dstPort=1234\tsrcBytes=15192\tdstBytes=22418\tsrcPackets=230\tdstPackets=229\t",
        "alarmId=f3e9fd46e62da2488ae3f085098922f7\truleName=Suspect Long Flow\thits=1\t",
        "durationSeconds=6806\tstart=2021-06-10T13:47:56.609725Z\tend=2021-06-10T15:41:22.384993Z\t",
        "communityId=1:y2XkHe1REW6ho/NuoGcEnbnKND0=\ttechnique=T1496\tobserverHostname=vm\t",
        "observerInterface=eth0\tevidence_duration_s=6806.0\tevidence_signature=mining.subscribe\t",
        "evidence_sni=pool.example|x=1\\\u{FFFD}\u{FFFD}"
    );

    #[test]
    fn zero_severity_becomes_one_and_odd_evidence_keys_are_skipped() {
        let mut alarm = example_alarm();
        alarm["event"]["severity"] = 0.into();
        alarm["sensor"]["evidence"]["bad\tkey"] = "x".into();
        alarm["sensor"]["evidence"][""] = "x".into();
        alarm["rule"]["id"] = "a|b\tc".into();
        let text = String::from_utf8(Renderer::new(Format::Leef, None).render(&alarm)).unwrap();
        let leef = parse(&text).unwrap();
        assert_eq!(leef.get("sev"), Some("1"));
        assert_eq!(leef.header[4], "a_b_c");
        let evidence = leef
            .attrs
            .iter()
            .filter(|(k, _)| k.starts_with("evidence_"));
        assert_eq!(evidence.count(), 3);
    }

    const FIXED_KEYS: &[&str] = &[
        "devTime",
        "devTimeFormat",
        "cat",
        "sev",
        "proto",
        "src",
        "srcPort",
        "dst",
        "dstPort",
        "srcBytes",
        "dstBytes",
        "srcPackets",
        "dstPackets",
        "alarmId",
        "ruleName",
        "reason",
        "hits",
        "durationSeconds",
        "start",
        "end",
        "communityId",
        "technique",
        "observerHostname",
        "observerInterface",
    ];

    #[test]
    fn hostile_strings_never_add_attributes_or_lines() {
        let renderer = Renderer::new(Format::Leef, None);
        let mut expected_keys: Vec<String> = FIXED_KEYS.iter().map(|k| k.to_string()).collect();
        expected_keys.extend(
            HOSTILE_EVIDENCE_KEYS
                .iter()
                .map(|k| format!("evidence_{k}")),
        );
        let mut rng = Rng::with_seed(0x1EEF_2021);
        for case in 0..CASES {
            let h = Hostile::generate(&mut rng);
            let alarm = h.alarm();
            let bytes = renderer.render(&alarm);
            assert_no_line_breaks(&bytes, case);
            let text = String::from_utf8(bytes).unwrap();
            let leef = parse(&text).unwrap_or_else(|e| panic!("case {case}: {e}\n{text:?}"));
            assert_eq!(leef.delimiter, '\t');
            let event_id = &leef.header[4];
            let plain = |c: char| c.is_ascii_alphanumeric() || "_.:-".contains(c);
            assert!(event_id.chars().all(plain), "case {case}: {event_id:?}");
            assert_eq!(
                event_id.chars().count(),
                h.rule_id.chars().count(),
                "case {case}"
            );
            let keys: Vec<&str> = leef.attrs.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(keys, expected_keys, "case {case}: {text:?}");
            for (key, original) in [
                ("cat", &h.action),
                ("alarmId", &h.id),
                ("ruleName", &h.rule_name),
                ("reason", &h.reason),
                ("observerHostname", &h.hostname),
                ("observerInterface", &h.interface),
                ("evidence_protocol", &h.protocol),
                ("evidence_sni", &h.sni),
                ("evidence_signature", &h.signature),
                ("evidence_domain", &h.domain),
                ("evidence_agent", &h.agent),
            ] {
                assert_eq!(
                    leef.get(key),
                    Some(expect_value(original).as_str()),
                    "case {case} key {key}"
                );
            }
            // Nested evidence is compact JSON with every control character escaped: lossless.
            let nested: Value = serde_json::from_str(leef.get("evidence_nested").unwrap())
                .unwrap_or_else(|e| panic!("case {case}: {e}"));
            assert_eq!(nested, alarm["sensor"]["evidence"]["nested"], "case {case}");
        }
    }

    #[test]
    fn process_fields_are_escaped_values() {
        let renderer = Renderer::new(Format::Leef, None);
        let mut expected_keys: Vec<String> = FIXED_KEYS.iter().map(|k| k.to_string()).collect();
        expected_keys.extend(
            [
                "forwarded",
                "processId",
                "processName",
                "processExecutable",
                "processFrom",
                "usrName",
                "userId",
                "cgroup",
                "containerId",
                "containerRuntime",
            ]
            .map(String::from),
        );
        expected_keys.extend(
            HOSTILE_EVIDENCE_KEYS
                .iter()
                .map(|k| format!("evidence_{k}")),
        );
        let mut rng = Rng::with_seed(0x1EEF_0015);
        for case in 0..CASES / 10 {
            let h = Hostile::generate(&mut rng);
            let bytes = renderer.render(&h.process_alarm());
            assert_no_line_breaks(&bytes, case);
            let text = String::from_utf8(bytes).unwrap();
            let leef = parse(&text).unwrap_or_else(|e| panic!("case {case}: {e}\n{text:?}"));
            let keys: Vec<&str> = leef.attrs.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(keys, expected_keys, "case {case}: {text:?}");
            for (key, original) in [
                ("processName", &h.agent),
                ("processExecutable", &h.nested),
                ("usrName", &h.app_name),
                ("cgroup", &h.domain),
                ("containerId", &h.signature),
            ] {
                assert_eq!(
                    leef.get(key),
                    Some(expect_value(original).as_str()),
                    "case {case} key {key}"
                );
            }
            assert_eq!(leef.get("processId"), Some("4242"));
            assert_eq!(leef.get("forwarded"), Some("false"));
        }
    }
}
