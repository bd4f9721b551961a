//! OCSF 1.1.0 Detection Finding (class_uid 2004, category 2 Findings) as compact JSON.
//!
//! - `activity_id` from `event.action`: opened → 1 Create, updated → 2 Update, closed → 3 Close,
//!   anything else → 99 Other (with the action as `activity_name`), absent → 0 Unknown;
//!   `type_uid` = 2004 * 100 + `activity_id`.
//! - `severity_id` from `event.severity` (0-10) in CEF's bands: 0 → 1 Informational,
//!   1-3 → 2 Low, 4-6 → 3 Medium, 7-8 → 4 High, 9-10 → 5 Critical; absent → 0 Unknown.
//! - `time` = `@timestamp` (ms), `start_time`/`end_time` = `event.start`/`event.end`,
//!   `duration` (ms) = `event.duration` (ns), `count` = `sensor.hits`, `message` = rule name
//!   (and `event.reason`).
//! - `finding_info`: `uid` = `event.id` (the stable alarm id, the same across open, update and
//!   close), `title` = rule name, `analytic` {uid = rule id, name = rule name, type Rule},
//!   `attacks` (ATT&CK technique ids and names), `first_seen_time`/`last_seen_time`.
//! - `evidences[0]`: `src_endpoint` (the client) and `dst_endpoint` with ip and port,
//!   `connection_info` (protocol name and number, community id, direction 0 Unknown: the sensor
//!   does not know which side is inside), `data` = `sensor.evidence` exactly.
//!   The host's process, when the alarm names it: `process` {pid, name, file {path, name},
//!   user {name, uid}} and `container` {uid, runtime}.
//! - `observables`: the two IP addresses (type 2).
//! - `metadata`: `version` 1.1.0, `product` {name, vendor_name, version}, `original_time`.
//! - `unmapped`: the whole ECS alarm, so nothing is lost (byte counts, observer, conversation).
//!
//! Attributes added after 1.1.0 (`is_alert`, for example) are not written, so a 1.1.0 validator
//! accepts the event. serde_json escapes every string, so hostile values stay values.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use super::{field, millis_at, severity, str_at, u64_at, PRODUCT, VENDOR, VERSION};

const CLASS_UID: u64 = 2004;
/// The OCSF schema version the events follow.
const OCSF_VERSION: &str = "1.1.0";

pub(super) fn render(alarm: &Value) -> String {
    super::compact_json(&finding(alarm))
}

fn finding(alarm: &Value) -> Value {
    let (activity_id, activity_name) = match str_at(alarm, &["event", "action"]) {
        Some("opened") => (1, "Create"),
        Some("updated") => (2, "Update"),
        Some("closed") => (3, "Close"),
        Some(other) => (99, other),
        None => (0, "Unknown"),
    };
    let (severity_id, severity_name) = match severity(alarm) {
        None => (0, "Unknown"),
        Some(0) => (1, "Informational"),
        Some(1..=3) => (2, "Low"),
        Some(4..=6) => (3, "Medium"),
        Some(7..=8) => (4, "High"),
        Some(_) => (5, "Critical"),
    };
    let rule_id = str_at(alarm, &["rule", "id"]);
    let rule_name = str_at(alarm, &["rule", "name"]);
    let time = millis_at(alarm, &["@timestamp"]).unwrap_or_else(now_millis);

    let mut out = Map::new();
    let mut put = |key: &str, value: Value| {
        out.insert(key.to_string(), value);
    };
    put("activity_id", json!(activity_id));
    put("activity_name", json!(activity_name));
    put("category_uid", json!(2));
    put("category_name", json!("Findings"));
    put("class_uid", json!(CLASS_UID));
    put("class_name", json!("Detection Finding"));
    put("type_uid", json!(CLASS_UID * 100 + activity_id));
    put(
        "type_name",
        json!(format!("Detection Finding: {activity_name}")),
    );
    put("severity_id", json!(severity_id));
    put("severity", json!(severity_name));
    put("time", json!(time));
    let start = millis_at(alarm, &["event", "start"]);
    let end = millis_at(alarm, &["event", "end"]);
    if let Some(ms) = start {
        put("start_time", json!(ms));
    }
    if let Some(ms) = end {
        put("end_time", json!(ms));
    }
    if let Some(ns) = u64_at(alarm, &["event", "duration"]) {
        put("duration", json!(ns / 1_000_000));
    }
    if let Some(hits) = u64_at(alarm, &["sensor", "hits"]) {
        put("count", json!(hits));
    }
    let reason = str_at(alarm, &["event", "reason"]);
    let message = match (rule_name.or(rule_id), reason) {
        (Some(n), Some(r)) => Some(format!("{n}: {r}")),
        (Some(n), None) => Some(n.to_string()),
        (None, r) => r.map(str::to_string),
    };
    if let Some(m) = message {
        put("message", json!(m));
    }

    let mut metadata = json!({
        "version": OCSF_VERSION,
        "product": { "name": PRODUCT, "vendor_name": VENDOR, "version": VERSION },
    });
    if let Some(t) = str_at(alarm, &["@timestamp"]) {
        metadata["original_time"] = json!(t);
    }
    put("metadata", metadata);

    let mut info = Map::new();
    info.insert(
        "uid".into(),
        json!(str_at(alarm, &["event", "id"]).unwrap_or_default()),
    );
    if let Some(title) = rule_name.or(rule_id) {
        info.insert("title".into(), json!(title));
    }
    let mut analytic = json!({ "type_id": 1, "type": "Rule" });
    if let Some(uid) = rule_id {
        analytic["uid"] = json!(uid);
    }
    if let Some(name) = rule_name {
        analytic["name"] = json!(name);
    }
    info.insert("analytic".into(), analytic);
    let attacks = attacks(alarm);
    if !attacks.is_empty() {
        info.insert("attacks".into(), Value::Array(attacks));
    }
    if let Some(ms) = start {
        info.insert("first_seen_time".into(), json!(ms));
    }
    if let Some(ms) = end {
        info.insert("last_seen_time".into(), json!(ms));
    }
    put("finding_info", Value::Object(info));

    let mut evidence = Map::new();
    let mut observables = Vec::new();
    for (side, key) in [("source", "src_endpoint"), ("destination", "dst_endpoint")] {
        let mut endpoint = Map::new();
        if let Some(ip) = str_at(alarm, &[side, "ip"]) {
            endpoint.insert("ip".into(), json!(ip));
            observables.push(json!({
                "name": format!("evidences.{key}.ip"),
                "type_id": 2,
                "type": "IP Address",
                "value": ip,
            }));
        }
        if let Some(port) = u64_at(alarm, &[side, "port"]) {
            endpoint.insert("port".into(), json!(port));
        }
        if !endpoint.is_empty() {
            evidence.insert(key.into(), Value::Object(endpoint));
        }
    }
    let mut connection = json!({ "direction_id": 0, "direction": "Unknown" });
    if let Some(t) = str_at(alarm, &["network", "transport"]) {
        connection["protocol_name"] = json!(t);
    }
    if let Some(n) = str_at(alarm, &["network", "iana_number"]).and_then(|s| s.parse::<u8>().ok()) {
        connection["protocol_num"] = json!(n);
    }
    if let Some(id) = str_at(alarm, &["network", "community_id"]) {
        connection["community_uid"] = json!(id);
    }
    evidence.insert("connection_info".into(), connection);
    if let Some(data) = field(alarm, &["sensor", "evidence"]) {
        evidence.insert("data".into(), data.clone());
    }
    if let Some(p) = process(alarm) {
        evidence.insert("process".into(), p);
    }
    if let Some(id) = str_at(alarm, &["container", "id"]) {
        let mut c = json!({ "uid": id });
        if let Some(rt) = str_at(alarm, &["container", "runtime"]) {
            c["runtime"] = json!(rt);
        }
        evidence.insert("container".into(), c);
    }
    put("evidences", json!([evidence]));
    if !observables.is_empty() {
        put("observables", Value::Array(observables));
    }
    put("unmapped", alarm.clone());
    Value::Object(out)
}

/// The host's process as an OCSF Process object: `pid`, `name`, `file` (the executable's
/// path and name), `user` (`name`, `uid`).
fn process(alarm: &Value) -> Option<Value> {
    let pid = u64_at(alarm, &["process", "pid"])?;
    let mut p = json!({ "pid": pid });
    if let Some(name) = str_at(alarm, &["process", "name"]) {
        p["name"] = json!(name);
    }
    if let Some(exe) = str_at(alarm, &["process", "executable"]) {
        let name = exe.rsplit('/').next().unwrap_or(exe);
        p["file"] = json!({ "path": exe, "name": name, "type_id": 1, "type": "Regular File" });
    }
    let mut user = Map::new();
    if let Some(n) = str_at(alarm, &["user", "name"]) {
        user.insert("name".into(), json!(n));
    }
    if let Some(uid) = str_at(alarm, &["user", "id"]) {
        user.insert("uid".into(), json!(uid));
    }
    if !user.is_empty() {
        p["user"] = Value::Object(user);
    }
    Some(p)
}

/// ATT&CK techniques from the parallel ECS arrays `threat.technique.id` and `.name`.
fn attacks(alarm: &Value) -> Vec<Value> {
    let as_list = |path: &[&str]| -> Vec<String> {
        match field(alarm, path) {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        }
    };
    let ids = as_list(&["threat", "technique", "id"]);
    let names = as_list(&["threat", "technique", "name"]);
    ids.iter()
        .enumerate()
        .map(|(i, uid)| {
            let mut technique = json!({ "uid": uid });
            if let Some(name) = names.get(i) {
                technique["name"] = json!(name);
            }
            json!({ "technique": technique })
        })
        .collect()
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::super::{testkit::*, Format, Renderer};
    use fastrand::Rng;
    use serde_json::{json, Value};

    #[test]
    fn golden_example_alarm() {
        let alarm = example_alarm();
        let out = Renderer::new(Format::Ocsf, None).render(&alarm);
        let text = String::from_utf8(out).unwrap();
        let expected = GOLDEN_OCSF
            .replace("@VERSION@", env!("CARGO_PKG_VERSION"))
            .replace("@ALARM@", &alarm.to_string());
        assert_eq!(text, expected);
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["type_uid"], 200401);
        assert_eq!(v["unmapped"], alarm);
    }

    /// serde_json without `preserve_order` writes object keys sorted; `@ALARM@` is the ECS alarm
    /// (the JSON format's golden output).
    const GOLDEN_OCSF: &str = concat!(
        r#"{"activity_id":1,"activity_name":"Create","category_name":"Findings","category_uid":2,"#,
        r#""class_name":"Detection Finding","class_uid":2004,"count":1,"duration":6805775,"#,
        r#""end_time":1623339682384,"#,
        r#""evidences":[{"connection_info":{"community_uid":"1:y2XkHe1REW6ho/NuoGcEnbnKND0=","direction":"Unknown","direction_id":0,"protocol_name":"tcp","protocol_num":6},"#,
        r#""data":{"duration_s":6806.0,"signature":"mining.subscribe","sni":"pool.example|x=1\\\r\n"},"#,
        r#""dst_endpoint":{"ip":"192.168.2.21","port":1234},"src_endpoint":{"ip":"192.168.2.186","port":53798}}],"#,
        r#""finding_info":{"analytic":{"name":"Suspect Long Flow","type":"Rule","type_id":1,"uid":"long_flow"},"#,
        r#""attacks":[{"technique":{"name":"Resource Hijacking","uid":"T1496"}}],"#,
        r#""first_seen_time":1623332876609,"last_seen_time":1623339682384,"#,
        r#""title":"Suspect Long Flow","uid":"f3e9fd46e62da2488ae3f085098922f7"},"#,
        r#""message":"Suspect Long Flow","#,
        r#""metadata":{"original_time":"2021-06-10T15:41:22.384993Z","product":{"name":"sensor-agent","vendor_name":"FlowSensor","version":"@VERSION@"},"version":"1.1.0"},"#,
        r#""observables":[{"name":"evidences.src_endpoint.ip","type":"IP Address","type_id":2,"value":"192.168.2.186"},"#,
        r#"{"name":"evidences.dst_endpoint.ip","type":"IP Address","type_id":2,"value":"192.168.2.21"}],"#,
        r#""severity":"Low","severity_id":2,"start_time":1623332876609,"time":1623339682384,"#,
        r#""type_name":"Detection Finding: Create","type_uid":200401,"unmapped":@ALARM@}"#
    );

    #[test]
    fn activity_and_severity_mapping() {
        let cases = [
            ("opened", 0, 1, 1),
            ("updated", 3, 2, 2),
            ("closed", 5, 3, 3),
            ("closed", 8, 3, 4),
            ("opened", 10, 1, 5),
        ];
        for (action, sev, activity, sev_id) in cases {
            let mut alarm = example_alarm();
            alarm["event"]["action"] = json!(action);
            alarm["event"]["severity"] = json!(sev);
            let v: Value =
                serde_json::from_slice(&Renderer::new(Format::Ocsf, None).render(&alarm)).unwrap();
            assert_eq!(v["activity_id"], activity, "{action}");
            assert_eq!(v["type_uid"], 200400 + activity, "{action}");
            assert_eq!(v["severity_id"], sev_id, "{sev}");
        }
        let mut alarm = example_alarm();
        alarm["event"]["action"] = json!("snoozed");
        let v: Value =
            serde_json::from_slice(&Renderer::new(Format::Ocsf, None).render(&alarm)).unwrap();
        assert_eq!(v["activity_id"], 99);
        assert_eq!(v["activity_name"], "snoozed");
    }

    #[test]
    fn hostile_strings_stay_values() {
        let renderer = Renderer::new(Format::Ocsf, None);
        let mut rng = Rng::with_seed(0x0C5F_2021);
        for case in 0..CASES {
            let h = Hostile::generate(&mut rng);
            let alarm = h.alarm();
            let bytes = renderer.render(&alarm);
            assert_no_line_breaks(&bytes, case);
            let v: Value = serde_json::from_slice(&bytes).unwrap();
            let top: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
            assert_eq!(
                top,
                [
                    "activity_id",
                    "activity_name",
                    "category_name",
                    "category_uid",
                    "class_name",
                    "class_uid",
                    "count",
                    "duration",
                    "end_time",
                    "evidences",
                    "finding_info",
                    "message",
                    "metadata",
                    "observables",
                    "severity",
                    "severity_id",
                    "start_time",
                    "time",
                    "type_name",
                    "type_uid",
                    "unmapped"
                ],
                "case {case}"
            );
            assert_eq!(v["unmapped"], alarm, "case {case}");
            assert_eq!(v["evidences"][0]["data"], alarm["sensor"]["evidence"]);
            assert_eq!(v["finding_info"]["uid"], h.id.as_str());
            assert_eq!(v["finding_info"]["title"], h.rule_name.as_str());
            assert_eq!(v["finding_info"]["analytic"]["uid"], h.rule_id.as_str());
            assert_eq!(
                v["message"],
                format!("{}: {}", h.rule_name, h.reason).as_str()
            );
        }
    }

    #[test]
    fn process_goes_to_the_evidence_as_values() {
        let renderer = Renderer::new(Format::Ocsf, None);
        let mut rng = Rng::with_seed(0x0C5F_0015);
        for case in 0..CASES / 10 {
            let h = Hostile::generate(&mut rng);
            let alarm = h.process_alarm();
            let bytes = renderer.render(&alarm);
            assert_no_line_breaks(&bytes, case);
            let v: Value = serde_json::from_slice(&bytes).unwrap();
            let ev = &v["evidences"][0];
            assert_eq!(ev["process"]["pid"], 4242, "case {case}");
            assert_eq!(ev["process"]["name"], json!(h.agent), "case {case}");
            assert_eq!(
                ev["process"]["file"]["path"],
                json!(h.nested),
                "case {case}"
            );
            assert_eq!(
                ev["process"]["user"]["name"],
                json!(h.app_name),
                "case {case}"
            );
            assert_eq!(ev["container"]["uid"], json!(h.signature), "case {case}");
            assert_eq!(v["unmapped"], alarm, "case {case}");
        }
        // No process, no process object.
        let v: Value = serde_json::from_slice(&renderer.render(&example_alarm())).unwrap();
        assert!(v["evidences"][0].get("process").is_none());
    }
}
