//! Shared test material: the example alarm, a generator of hostile strings (from a seeded
//! fastrand, so a failing case number reproduces), and an alarm built from them. Nothing here
//! knows how any format escapes.

use fastrand::Rng;
use serde_json::{json, Value};

/// Property cases per format.
pub(super) const CASES: usize = 20_000;

/// The example alarm of the issue, verbatim.
pub(super) fn example_alarm() -> Value {
    serde_json::from_str(
        r#"{"@timestamp":"2021-06-10T15:41:22.384993Z","event":{"kind":"alert","category":["network","intrusion_detection"],"type":["connection","indicator"],"id":"f3e9fd46e62da2488ae3f085098922f7","action":"opened","start":"2021-06-10T13:47:56.609725Z","end":"2021-06-10T15:41:22.384993Z","duration":6805775268000,"severity":3},"rule":{"id":"long_flow","name":"Suspect Long Flow"},"source":{"ip":"192.168.2.186","port":53798,"bytes":15192,"packets":230},"destination":{"ip":"192.168.2.21","port":1234,"bytes":22418,"packets":229},"network":{"transport":"tcp","iana_number":"6","bytes":37610,"packets":459,"community_id":"1:y2XkHe1REW6ho/NuoGcEnbnKND0="},"observer":{"hostname":"vm","ingress":{"interface":{"name":"eth0"}}},"threat":{"framework":"MITRE ATT&CK","technique":{"id":["T1496"],"name":["Resource Hijacking"]}},"sensor":{"evidence":{"duration_s":6806.0,"sni":"pool.example|x=1\\\r\n","signature":"mining.subscribe"},"hits":1,"conversation":{"flows":1,"open_flows":1}}}"#,
    )
    .unwrap()
}

/// Pieces hostile strings are made of: every separator of every format, escape look-alikes,
/// whole injected fields and headers, control characters and multibyte UTF-8.
const FRAGMENTS: &[&str] = &[
    "\u{2028}",
    "\u{2029}",
    "\u{202E}",
    "\u{2067}",
    "|",
    "=",
    "\\",
    "]",
    "[",
    "\"",
    "\r",
    "\n",
    "\r\n",
    "\t",
    "\0",
    " ",
    "  ",
    "^",
    "'",
    "-",
    "_",
    ".",
    ":",
    "@",
    "<",
    ">",
    "{",
    "}",
    "a",
    "Z",
    "9",
    "key",
    "é",
    "€",
    "𝄞",
    "\u{7f}",
    "\u{85}",
    "\u{9f}",
    "\u{2028}",
    "\u{feff}",
    "\u{fffd}",
    "\\|",
    "\\=",
    "\\\\",
    "\\n",
    "\\r",
    "\\]",
    "\\\"",
    " src=6.6.6.6",
    " cs1=evil",
    " cs2Label=x",
    "cnt=9",
    "\tsev=10",
    "\tsrc=6.6.6.6\t",
    "|x09|",
    "x09",
    "CEF:0|",
    "LEEF:2.0|",
    "<13>1 ",
    "\n<13>1 2021-01-01T00:00:00Z h a - - - injected",
    "[x@1 a=\"b\"]",
    "\" evil=\"1",
    "\"]",
    "-",
];

pub(super) fn hostile_string(rng: &mut Rng) -> String {
    let mut s = String::new();
    for _ in 0..rng.usize(..13) {
        s.push_str(FRAGMENTS[rng.usize(..FRAGMENTS.len())]);
    }
    s
}

/// Every string an alarm carries, hostile.
#[derive(Debug)]
pub(super) struct Hostile {
    pub rule_id: String,
    pub rule_name: String,
    pub action: String,
    pub id: String,
    pub reason: String,
    pub hostname: String,
    pub interface: String,
    pub protocol: String,
    pub sni: String,
    pub signature: String,
    pub domain: String,
    pub agent: String,
    pub nested: String,
    pub app_name: String,
}

impl Hostile {
    pub(super) fn generate(rng: &mut Rng) -> Self {
        let mut g = || hostile_string(rng);
        Hostile {
            rule_id: g(),
            rule_name: g(),
            action: g(),
            id: g(),
            reason: g(),
            hostname: g(),
            interface: g(),
            protocol: g(),
            sni: g(),
            signature: g(),
            domain: g(),
            agent: g(),
            nested: g(),
            app_name: g(),
        }
    }

    /// The example alarm with every string replaced by a hostile one, plus `event.reason` and
    /// evidence of every JSON type.
    pub(super) fn alarm(&self) -> Value {
        let mut a = example_alarm();
        a["rule"] = json!({ "id": self.rule_id, "name": self.rule_name });
        a["event"]["action"] = json!(self.action);
        a["event"]["id"] = json!(self.id);
        a["event"]["reason"] = json!(self.reason);
        a["observer"] = json!({
            "hostname": self.hostname,
            "ingress": { "interface": { "name": self.interface } },
        });
        a["sensor"]["evidence"] = json!({
            "protocol": self.protocol,
            "sni": self.sni,
            "signature": self.signature,
            "domain": self.domain,
            "agent": self.agent,
            "duration_s": 6806.0,
            "confirmed_by_server": true,
            "line": 17,
            "nested": { "value": self.nested, "list": [self.nested, 1] },
        });
        a
    }
}

impl Hostile {
    /// [`Hostile::alarm`] with the host's process (`flow::host::render`'s fields): name,
    /// executable, user and cgroup made of hostile strings (comms, paths and container names
    /// are chosen by whoever runs the process).
    pub(super) fn process_alarm(&self) -> Value {
        let mut a = self.alarm();
        a["network"]["forwarded"] = json!(false);
        a["process"] = json!({
            "pid": 4242,
            "name": self.agent,
            "executable": self.nested,
            "thread": { "id": 4243, "name": self.agent },
            "cgroup": { "id": 77, "path": self.domain },
        });
        a["user"] = json!({ "id": "1000", "name": self.app_name });
        a["group"] = json!({ "id": "1000" });
        a["container"] = json!({ "id": self.signature, "runtime": "docker" });
        a["sensor"]["process_from"] = json!("connect");
        a
    }
}

/// The evidence keys of [`Hostile::alarm`], in the order serde_json iterates them.
pub(super) const HOSTILE_EVIDENCE_KEYS: &[&str] = &[
    "agent",
    "confirmed_by_server",
    "domain",
    "duration_s",
    "line",
    "nested",
    "protocol",
    "signature",
    "sni",
];

pub(super) fn assert_no_line_breaks(msg: &[u8], case: usize) {
    for (i, b) in msg.iter().enumerate() {
        assert!(
            !matches!(b, b'\r' | b'\n' | 0),
            "case {case}: raw byte {b:#04x} at {i} in {:?}",
            String::from_utf8_lossy(msg)
        );
    }
}
