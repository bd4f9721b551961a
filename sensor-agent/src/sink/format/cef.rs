//! ArcSight Common Event Format, version 0 ("Implementing ArcSight CEF", revision 25):
//! `CEF:0|Vendor|Product|Version|SignatureID|Name|Severity|Extension`.
//!
//! Header: Signature ID = `rule.id`, Name = `rule.name`, Severity = `event.severity` (0-10,
//! `Unknown` when absent). Header fields escape backslash and pipe; control characters become
//! spaces (a header is a single display line).
//!
//! Extension, in this order, each only when the alarm has the field:
//! `rt` (`@timestamp`, ms since the epoch), `start`, `end` (`event.start`/`event.end`, ms),
//! `src`/`dst` for IPv4 or `c6a2`/`c6a3` (labelled "Source IPv6 Address" / "Destination IPv6
//! Address", the usual CEF convention) for IPv6, `spt`, `dpt`, `proto` (`TCP`, `UDP`),
//! `in` = `source.bytes` and `out` = `destination.bytes` (CEF: `in` is data flowing from source
//! to destination), `cnt` = `sensor.hits`, `act` = `event.action`, `externalId` = `event.id`,
//! `reason` = `event.reason`, `dvchost` = `observer.hostname`, `deviceInboundInterface`,
//! `app` = `sensor.evidence.protocol`, `cn1` duration in seconds (rounded), `cn2` total packets,
//! `cs1` rule id, `cs2` the evidence object as compact JSON (lossless), `cs3` community id,
//! `cs4` ATT&CK technique ids (comma separated), `cs5` server name (`sensor.evidence.sni`, else
//! `sensor.evidence.domain`), `cs6` matched signature (`sensor.evidence.signature`).
//! The host's process (alarms of flows this host opened or accepted, `process.*`): `spid`,
//! `sproc`, `suser`, `suid` (the client's process), or `dpid`, `dproc`, `duser`, `duid` when it
//! accepted the connection (`sensor.process_from = accept`), `flexString1` the executable,
//! `flexString2` the container id (else the cgroup path); `cn3` = 1 when the flow was only
//! forwarded by the host (`network.forwarded`), 0 when it is the host's.
//! Custom fields carry their `…Label` key right before them; all keys are fixed ASCII.
//!
//! Values escape backslash, `=`, CR (`\r`) and LF (`\n`) as CEF requires; other control
//! characters become U+FFFD. Pipes need no escape in the extension. Length limits (for example
//! 4000 characters for `cs*`) are left to the receiver, which truncates; cutting here could split
//! an escape sequence.

use std::{fmt::Display, net::IpAddr};

use serde_json::Value;

use super::{
    compact_json, field, is_unsafe_char, joined_at, millis_at, severity, str_at, u64_at, PRODUCT,
    VENDOR, VERSION,
};

pub(super) fn render(alarm: &Value) -> String {
    let mut out = String::with_capacity(768);
    out.push_str("CEF:0");
    let rule_id = str_at(alarm, &["rule", "id"]);
    let sev = severity(alarm).map_or_else(|| "Unknown".to_string(), |s| s.to_string());
    for part in [
        VENDOR,
        PRODUCT,
        VERSION,
        rule_id.unwrap_or("unknown"),
        str_at(alarm, &["rule", "name"])
            .or(rule_id)
            .unwrap_or("unknown"),
        &sev,
    ] {
        out.push('|');
        push_header(&mut out, part);
    }
    out.push('|');

    let mut ext = Extension {
        out: &mut out,
        first: true,
    };
    let evidence = field(alarm, &["sensor", "evidence"]);
    let ev_str = |key: &str| evidence.and_then(|e| e.get(key)).and_then(Value::as_str);

    for (key, path) in [
        ("rt", &["@timestamp"][..]),
        ("start", &["event", "start"]),
        ("end", &["event", "end"]),
    ] {
        if let Some(ms) = millis_at(alarm, path) {
            ext.num(key, ms);
        }
    }
    for (side, addr_key, v6_key, v6_label, port_key) in [
        ("source", "src", "c6a2", "Source IPv6 Address", "spt"),
        (
            "destination",
            "dst",
            "c6a3",
            "Destination IPv6 Address",
            "dpt",
        ),
    ] {
        match str_at(alarm, &[side, "ip"]).and_then(|s| s.parse::<IpAddr>().ok()) {
            Some(IpAddr::V4(v4)) => ext.num(addr_key, v4),
            Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => ext.num(addr_key, v4),
                None => {
                    ext.num(v6_key, v6);
                    ext.put(&format!("{v6_key}Label"), v6_label);
                }
            },
            None => {}
        }
        if let Some(port) = u64_at(alarm, &[side, "port"]) {
            ext.num(port_key, port);
        }
    }
    if let Some(t) = str_at(alarm, &["network", "transport"]) {
        ext.put("proto", &t.to_ascii_uppercase());
    }
    for (key, path) in [
        ("in", &["source", "bytes"][..]),
        ("out", &["destination", "bytes"]),
        ("cnt", &["sensor", "hits"]),
    ] {
        if let Some(n) = u64_at(alarm, path) {
            ext.num(key, n);
        }
    }
    for (key, path) in [
        ("act", &["event", "action"][..]),
        ("externalId", &["event", "id"]),
        ("reason", &["event", "reason"]),
        ("dvchost", &["observer", "hostname"]),
        (
            "deviceInboundInterface",
            &["observer", "ingress", "interface", "name"],
        ),
    ] {
        if let Some(s) = str_at(alarm, path) {
            ext.put(key, s);
        }
    }
    if let Some(app) = ev_str("protocol") {
        ext.put("app", app);
    }
    if let Some(ns) = u64_at(alarm, &["event", "duration"]) {
        ext.put("cn1Label", "durationSeconds");
        ext.num("cn1", ns.saturating_add(500_000_000) / 1_000_000_000);
    }
    if let Some(p) = u64_at(alarm, &["network", "packets"]) {
        ext.put("cn2Label", "totalPackets");
        ext.num("cn2", p);
    }
    let custom = [
        ("cs1", "ruleId", rule_id.map(str::to_string)),
        ("cs2", "evidence", evidence.map(compact_json)),
        (
            "cs3",
            "communityId",
            str_at(alarm, &["network", "community_id"]).map(str::to_string),
        ),
        (
            "cs4",
            "mitreTechnique",
            joined_at(alarm, &["threat", "technique", "id"]),
        ),
        (
            "cs5",
            "serverName",
            ev_str("sni")
                .or_else(|| ev_str("domain"))
                .map(str::to_string),
        ),
        ("cs6", "signature", ev_str("signature").map(str::to_string)),
    ];
    for (key, label, value) in custom {
        if let Some(v) = value {
            ext.put(&format!("{key}Label"), label);
            ext.put(key, &v);
        }
    }
    process(&mut ext, alarm);
    out
}

/// The host's process and the forwarded mark (see the module docs).
fn process(ext: &mut Extension<'_>, alarm: &Value) {
    if let Some(pid) = u64_at(alarm, &["process", "pid"]) {
        let accepted = str_at(alarm, &["sensor", "process_from"]) == Some("accept");
        let keys = if accepted {
            ["dpid", "dproc", "duser", "duid"]
        } else {
            ["spid", "sproc", "suser", "suid"]
        };
        ext.num(keys[0], pid);
        for (key, path) in [
            (keys[1], &["process", "name"][..]),
            (keys[2], &["user", "name"]),
            (keys[3], &["user", "id"]),
        ] {
            if let Some(s) = str_at(alarm, path) {
                ext.put(key, s);
            }
        }
    }
    let container = str_at(alarm, &["container", "id"]).map(|id| ("containerId", id));
    let cgroup = str_at(alarm, &["process", "cgroup", "path"]).map(|p| ("cgroup", p));
    for (key, labelled) in [
        (
            "flexString1",
            str_at(alarm, &["process", "executable"]).map(|e| ("processExecutable", e)),
        ),
        ("flexString2", container.or(cgroup)),
    ] {
        if let Some((label, value)) = labelled {
            ext.put(&format!("{key}Label"), label);
            ext.put(key, value);
        }
    }
    if let Some(fwd) = field(alarm, &["network", "forwarded"]).and_then(Value::as_bool) {
        ext.put("cn3Label", "forwarded");
        ext.num("cn3", u8::from(fwd));
    }
}

/// Header field: backslash and pipe escaped, control characters to spaces.
fn push_header(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            c if is_unsafe_char(c) => out.push(' '),
            c => out.push(c),
        }
    }
}

struct Extension<'a> {
    out: &'a mut String,
    first: bool,
}

impl Extension<'_> {
    fn key(&mut self, key: &str) {
        if !self.first {
            self.out.push(' ');
        }
        self.first = false;
        self.out.push_str(key);
        self.out.push('=');
    }

    /// A value whose text needs no escaping (numbers, addresses).
    fn num(&mut self, key: &str, n: impl Display) {
        self.key(key);
        self.out.push_str(&n.to_string());
    }

    /// A string value, escaped for the extension.
    fn put(&mut self, key: &str, value: &str) {
        self.key(key);
        for c in value.chars() {
            match c {
                '\\' => self.out.push_str("\\\\"),
                '=' => self.out.push_str("\\="),
                '\r' => self.out.push_str("\\r"),
                '\n' => self.out.push_str("\\n"),
                c if is_unsafe_char(c) => self.out.push('\u{FFFD}'),
                c => self.out.push(c),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The parser here is written from the CEF rules, independently of the renderer's escaping:
    //! the header is split on unescaped pipes, the extension on unescaped `=` where a key is
    //! `[A-Za-z0-9_]+` right before it and a single space before the key ends the previous value.

    use super::super::{testkit::*, Format, Renderer};
    use fastrand::Rng;
    use serde_json::{json, Value};

    #[derive(Debug)]
    struct Cef {
        header: Vec<String>,
        ext: Vec<(String, String)>,
    }

    impl Cef {
        fn get(&self, key: &str) -> Option<&str> {
            self.ext
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        }
    }

    fn unescape(raw: &[char], allowed: &[(char, char)]) -> Result<String, String> {
        let mut out = String::new();
        let mut it = raw.iter();
        while let Some(&c) = it.next() {
            if c == '\\' {
                let &next = it.next().ok_or("dangling backslash")?;
                let (_, plain) = allowed
                    .iter()
                    .find(|(esc, _)| *esc == next)
                    .ok_or_else(|| format!("unknown escape \\{next}"))?;
                out.push(*plain);
            } else {
                out.push(c);
            }
        }
        Ok(out)
    }

    fn parse(msg: &str) -> Result<Cef, String> {
        let chars: Vec<char> = msg.chars().collect();
        // Header: seven unescaped pipes.
        let mut header = Vec::new();
        let mut start = 0;
        let mut i = 0;
        while header.len() < 7 {
            match chars.get(i) {
                None => return Err(format!("only {} header fields", header.len())),
                Some('\\') => i += 2,
                Some('|') => {
                    header.push(unescape(&chars[start..i], &[('\\', '\\'), ('|', '|')])?);
                    i += 1;
                    start = i;
                }
                Some(_) => i += 1,
            }
        }
        let ext_chars = &chars[start..];
        // Every unescaped '=' ends a key.
        let mut eqs = Vec::new();
        let mut j = 0;
        while j < ext_chars.len() {
            match ext_chars[j] {
                '\\' => j += 2,
                '=' => {
                    eqs.push(j);
                    j += 1;
                }
                _ => j += 1,
            }
        }
        let is_key_char = |c: char| c.is_ascii_alphanumeric() || c == '_';
        let mut keys = Vec::new(); // (key start, '=' position)
        for &eq in &eqs {
            let mut k = eq;
            while k > 0 && is_key_char(ext_chars[k - 1]) {
                k -= 1;
            }
            if k == eq {
                return Err(format!("'=' without a key at {eq}"));
            }
            if k > 0 && ext_chars[k - 1] != ' ' {
                return Err(format!("key at {k} not preceded by a space"));
            }
            keys.push((k, eq));
        }
        if keys.first().is_some_and(|&(k, _)| k != 0) {
            return Err("extension does not start with a key".into());
        }
        let value_esc = [('\\', '\\'), ('=', '='), ('r', '\r'), ('n', '\n')];
        let mut ext = Vec::new();
        for (n, &(k, eq)) in keys.iter().enumerate() {
            let end = keys
                .get(n + 1)
                .map_or(ext_chars.len(), |&(next, _)| next - 1);
            let key: String = ext_chars[k..eq].iter().collect();
            ext.push((key, unescape(&ext_chars[eq + 1..end], &value_esc)?));
        }
        Ok(Cef { header, ext })
    }

    /// What a carried-verbatim string looks like after a round trip: CEF values keep everything
    /// except control characters other than CR and LF, which become U+FFFD.
    fn expect_value(s: &str) -> String {
        s.chars()
            .map(|c| {
                if crate::sink::format::is_unsafe_char(c) && c != '\r' && c != '\n' {
                    '\u{FFFD}'
                } else {
                    c
                }
            })
            .collect()
    }

    fn expect_header(s: &str) -> String {
        s.chars()
            .map(|c| {
                if crate::sink::format::is_unsafe_char(c) {
                    ' '
                } else {
                    c
                }
            })
            .collect()
    }

    const EXPECTED_KEYS: &[&str] = &[
        "rt",
        "start",
        "end",
        "src",
        "spt",
        "dst",
        "dpt",
        "proto",
        "in",
        "out",
        "cnt",
        "act",
        "externalId",
        "reason",
        "dvchost",
        "deviceInboundInterface",
        "app",
        "cn1Label",
        "cn1",
        "cn2Label",
        "cn2",
        "cs1Label",
        "cs1",
        "cs2Label",
        "cs2",
        "cs3Label",
        "cs3",
        "cs4Label",
        "cs4",
        "cs5Label",
        "cs5",
        "cs6Label",
        "cs6",
    ];

    #[test]
    fn golden_example_alarm() {
        let out = Renderer::new(Format::Cef, None).render(&example_alarm());
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text, GOLDEN_CEF);
        let cef = parse(&text).unwrap();
        assert_eq!(
            cef.header,
            [
                "CEF:0",
                "FlowSensor",
                "sensor-agent",
                env!("CARGO_PKG_VERSION"),
                "long_flow",
                "Suspect Long Flow",
                "3"
            ]
        );
        assert_eq!(cef.get("cs5"), Some("pool.example|x=1\\\r\n"));
        let keys: Vec<&str> = cef.ext.iter().map(|(k, _)| k.as_str()).collect();
        let mut expected = EXPECTED_KEYS.to_vec();
        expected.retain(|k| *k != "reason" && *k != "app");
        assert_eq!(keys, expected);
    }

    pub(super) const GOLDEN_CEF: &str = concat!(
        "CEF:0|FlowSensor|sensor-agent|",
        env!("CARGO_PKG_VERSION"),
        "|long_flow|Suspect Long Flow|3|",
        "rt=1623339682384 start=1623332876609 end=1623339682384 ",
        "src=192.168.2.186 spt=53798 dst=192.168.2.21 dpt=1234 proto=TCP in=15192 out=22418 cnt=1 ",
        "act=opened externalId=f3e9fd46e62da2488ae3f085098922f7 dvchost=vm ",
        "deviceInboundInterface=eth0 cn1Label=durationSeconds cn1=6806 cn2Label=totalPackets cn2=459 ",
        "cs1Label=ruleId cs1=long_flow cs2Label=evidence ",
        r#"cs2={"duration_s":6806.0,"signature":"mining.subscribe","sni":"pool.example|x\=1\\\\\\r\\n"} "#,
        "cs3Label=communityId cs3=1:y2XkHe1REW6ho/NuoGcEnbnKND0\\= ",
        "cs4Label=mitreTechnique cs4=T1496 cs5Label=serverName cs5=pool.example|x\\=1\\\\\\r\\n ",
        "cs6Label=signature cs6=mining.subscribe"
    );

    #[test]
    fn ipv6_goes_to_c6a_fields_and_mapped_v4_to_src() {
        let mut alarm = example_alarm();
        alarm["source"]["ip"] = "2001:db8::1".into();
        alarm["destination"]["ip"] = "::ffff:192.0.2.9".into();
        let text = String::from_utf8(Renderer::new(Format::Cef, None).render(&alarm)).unwrap();
        let cef = parse(&text).unwrap();
        assert_eq!(cef.get("c6a2"), Some("2001:db8::1"));
        assert_eq!(cef.get("c6a2Label"), Some("Source IPv6 Address"));
        assert_eq!(cef.get("src"), None);
        assert_eq!(cef.get("dst"), Some("192.0.2.9"));
    }

    #[test]
    fn missing_fields_are_left_out_and_header_stays_whole() {
        let text =
            String::from_utf8(Renderer::new(Format::Cef, None).render(&serde_json::json!({})))
                .unwrap();
        assert_eq!(
            text,
            format!(
                "CEF:0|FlowSensor|sensor-agent|{}|unknown|unknown|Unknown|",
                env!("CARGO_PKG_VERSION")
            )
        );
        assert!(parse(&text).unwrap().ext.is_empty());
    }

    #[test]
    fn hostile_strings_never_add_fields_or_lines() {
        let renderer = Renderer::new(Format::Cef, None);
        let mut rng = Rng::with_seed(0xCEF0_2021);
        for case in 0..CASES {
            let h = Hostile::generate(&mut rng);
            let alarm = h.alarm();
            let bytes = renderer.render(&alarm);
            assert_no_line_breaks(&bytes, case);
            let text = String::from_utf8(bytes).unwrap();
            let cef = parse(&text).unwrap_or_else(|e| panic!("case {case}: {e}\n{text:?}"));
            assert_eq!(cef.header.len(), 7, "case {case}");
            assert_eq!(cef.header[4], expect_header(&h.rule_id), "case {case}");
            assert_eq!(cef.header[5], expect_header(&h.rule_name), "case {case}");
            let keys: Vec<&str> = cef.ext.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(keys, EXPECTED_KEYS, "case {case}: {text:?}");
            let want = [
                ("act", &h.action),
                ("externalId", &h.id),
                ("reason", &h.reason),
                ("dvchost", &h.hostname),
                ("deviceInboundInterface", &h.interface),
                ("app", &h.protocol),
                ("cs1", &h.rule_id),
                ("cs5", &h.sni),
                ("cs6", &h.signature),
            ];
            for (key, original) in want {
                assert_eq!(
                    cef.get(key),
                    Some(expect_value(original).as_str()),
                    "case {case} key {key}"
                );
            }
            // The evidence JSON survives byte for byte, control characters included.
            let evidence: Value = serde_json::from_str(cef.get("cs2").unwrap()).unwrap();
            assert_eq!(evidence, alarm["sensor"]["evidence"], "case {case}");
        }
    }

    #[test]
    fn process_fields_are_escaped_values() {
        let renderer = Renderer::new(Format::Cef, None);
        let mut rng = Rng::with_seed(0xCEF0_0015);
        let mut expected = EXPECTED_KEYS.to_vec();
        expected.extend([
            "spid",
            "sproc",
            "suser",
            "suid",
            "flexString1Label",
            "flexString1",
            "flexString2Label",
            "flexString2",
            "cn3Label",
            "cn3",
        ]);
        for case in 0..CASES / 10 {
            let h = Hostile::generate(&mut rng);
            let bytes = renderer.render(&h.process_alarm());
            assert_no_line_breaks(&bytes, case);
            let text = String::from_utf8(bytes).unwrap();
            let cef = parse(&text).unwrap_or_else(|e| panic!("case {case}: {e}\n{text:?}"));
            let keys: Vec<&str> = cef.ext.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(keys, expected, "case {case}: {text:?}");
            for (key, original) in [
                ("sproc", &h.agent),
                ("suser", &h.app_name),
                ("flexString1", &h.nested),
                ("flexString2", &h.signature),
            ] {
                assert_eq!(
                    cef.get(key),
                    Some(expect_value(original).as_str()),
                    "case {case} key {key}"
                );
            }
            assert_eq!(cef.get("spid"), Some("4242"));
            assert_eq!(cef.get("flexString2Label"), Some("containerId"));
            assert_eq!(cef.get("cn3"), Some("0"));
        }
        // The server's side: the process accepted the connection.
        let mut a = example_alarm();
        a["process"] = json!({ "pid": 7, "name": "nginx", "cgroup": { "path": "/system.slice/nginx.service" } });
        a["sensor"]["process_from"] = json!("accept");
        a["network"]["forwarded"] = json!(false);
        let text = String::from_utf8(renderer.render(&a)).unwrap();
        let cef = parse(&text).unwrap();
        assert_eq!(
            (cef.get("dpid"), cef.get("dproc")),
            (Some("7"), Some("nginx"))
        );
        assert_eq!(cef.get("spid"), None);
        assert_eq!(cef.get("flexString2Label"), Some("cgroup"));
        assert_eq!(cef.get("flexString2"), Some("/system.slice/nginx.service"));
    }
}
