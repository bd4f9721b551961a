//! The evidence of an alarm in words: one or more sentences per rule, built from the fields
//! each detector writes (see the rule's module in `detect/`). A rule this module does not know
//! (a newer agent's) gets no sentence; its evidence still shows as a table on the page.
//!
//! The sentences are plain text: the page template escapes them like every other string.

use serde_json::{Map, Value};

fn num(e: &Map<String, Value>, k: &str) -> Option<f64> {
    e.get(k)?.as_f64()
}

fn text(e: &Map<String, Value>, k: &str) -> Option<String> {
    match e.get(k)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `3725 s` as `1 h 2 min 5 s`.
pub fn duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "?".into();
    }
    let s = secs.round() as u64;
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    let mut parts = Vec::new();
    if d > 0 {
        parts.push(format!("{d} d"));
    }
    if h > 0 {
        parts.push(format!("{h} h"));
    }
    if m > 0 {
        parts.push(format!("{m} min"));
    }
    if s > 0 || parts.is_empty() {
        parts.push(format!("{s} s"));
    }
    parts.join(" ")
}

/// Bytes with a binary unit.
pub fn bytes(b: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

/// Sentences saying what the evidence shows, for `rule`.
pub fn sentences(rule: &str, e: &Map<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    let dur = num(e, "duration_s").map(duration);
    let threshold = num(e, "threshold_s").map(duration);
    match rule {
        "long_flow" => {
            if let (Some(d), Some(t)) = (&dur, &threshold) {
                out.push(format!(
                    "The conversation has lasted {d}, past the long-flow threshold of {t}{}.",
                    num(e, "rung").map_or(String::new(), |r| format!(" (ladder rung {r})"))
                ));
            }
            if let Some(f) = num(e, "flows") {
                let open = match e.get("still_open").and_then(Value::as_bool) {
                    Some(true) => ", still open",
                    Some(false) => ", all closed",
                    None => "",
                };
                out.push(format!("It is made of {f} connection(s){open}."));
            }
        }
        "quiet_long_flow" => {
            if let (Some(d), Some(t)) = (&dur, &threshold) {
                out.push(format!(
                    "The conversation has lasted {d} (threshold {t}) while moving little data."
                ));
            }
            if let (Some(b), Some(max)) = (num(e, "bytes"), num(e, "max_bytes_per_sec")) {
                let rate = num(e, "bytes_per_sec")
                    .map_or(String::new(), |r| format!(", {r:.1} B/s on average"));
                out.push(format!(
                    "{} in total{rate}, at or under the quiet limit of {max} B/s.",
                    bytes(b)
                ));
            }
        }
        "periodic_flow" => {
            let kind = match text(e, "kind").as_deref() {
                Some("across_connections") => "New connections start".to_string(),
                Some("in_flow") => format!(
                    "Inside one connection, the {} sends messages",
                    text(e, "direction").unwrap_or_else(|| "peer".into())
                ),
                _ => "Events recur".to_string(),
            };
            if let (Some(p), Some(j)) = (num(e, "period_s"), num(e, "jitter_s")) {
                out.push(format!(
                    "{kind} every {p:.1} s (median absolute deviation {j:.2} s) over {} samples.",
                    text(e, "samples").unwrap_or_else(|| "?".into())
                ));
            }
            if let Some(s) = num(e, "score") {
                out.push(format!(
                    "Periodicity score {s:.2} (timing {:.2}, sizes {:.2}); 1 is a perfect beacon.",
                    num(e, "ts_score").unwrap_or(0.0),
                    num(e, "size_score").unwrap_or(0.0)
                ));
            }
        }
        "encrypted_mining" => {
            if let (Some(s), Some(min)) = (num(e, "score"), num(e, "min_score")) {
                out.push(format!(
                    "Encrypted-mining score {s:.2} reached the alarm level {min:.2} on {} evidence.",
                    text(e, "basis").unwrap_or_else(|| "?".into())
                ));
            }
            if let Some(sni) = text(e, "sni") {
                out.push(format!("The TLS ClientHello named the server {sni}."));
            }
            if let Some(c) = e.get("contributions").and_then(Value::as_array) {
                for line in c.iter().filter(|c| c["points"].as_f64() > Some(0.0)) {
                    if let Some(d) = line["detail"].as_str() {
                        out.push(format!(
                            "{} (+{:.2}): {d}",
                            line["name"].as_str().unwrap_or("?"),
                            line["points"].as_f64().unwrap_or(0.0)
                        ));
                    }
                }
            }
        }
        "mining_protocol" | "blockchain_p2p" => {
            if let Some(p) = text(e, "protocol") {
                out.push(format!(
                    "The payload speaks {p}{}.",
                    text(e, "signature").map_or(String::new(), |s| format!(" (matched {s})"))
                ));
            }
            if let Some(c) = text(e, "coin") {
                out.push(format!(
                    "Coin: {c}{}.",
                    text(e, "coin_reason").map_or(String::new(), |r| format!(", because {r}"))
                ));
            }
            if let Some(a) = text(e, "agent") {
                out.push(format!("Miner agent: {a}."));
            }
            if let Some(true) = e.get("confirmed_by_server").and_then(Value::as_bool) {
                out.push("The server answered as a pool does.".into());
            }
        }
        "mining_infrastructure" => {
            if let Some(entry) = text(e, "entry") {
                out.push(format!(
                    "The server matches {entry} in the feed {}{}.",
                    text(e, "feed").unwrap_or_else(|| "?".into()),
                    text(e, "domain").map_or(String::new(), |d| format!(" (through DNS: {d})"))
                ));
            }
        }
        "sensor_degraded" => {
            out.push(format!(
                "The sensor lost visibility: {} flows refused, {} evicted.",
                text(e, "refused_flows").unwrap_or_else(|| "0".into()),
                text(e, "evicted_flows").unwrap_or_else(|| "0".into())
            ));
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations_and_sizes_read_as_people_write_them() {
        assert_eq!(duration(3725.0), "1 h 2 min 5 s");
        assert_eq!(duration(0.2), "0 s");
        assert_eq!(duration(f64::NAN), "?");
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(1536.0), "1.5 KiB");
    }

    #[test]
    fn each_known_rule_says_something_and_unknown_fields_are_ignored() {
        let e = json!({"duration_s": 7200, "threshold_s": 3600, "rung": 1, "flows": 2, "still_open": true});
        let s = sentences("long_flow", e.as_object().unwrap());
        assert!(s[0].contains("2 h") && s[0].contains("1 h"), "{s:?}");
        let e = json!({"kind": "in_flow", "direction": "server", "period_s": 30.0, "jitter_s": 0.01, "samples": 20, "score": 0.95});
        let s = sentences("periodic_flow", e.as_object().unwrap());
        assert!(s[0].contains("server") && s[0].contains("30.0 s"), "{s:?}");
        assert!(sentences("no_such_rule", e.as_object().unwrap()).is_empty());
    }
}
