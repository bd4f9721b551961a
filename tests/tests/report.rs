//! `sensor-agent report` end to end: real captures (a stratum login, a six-hour quiet TCP
//! session) and a synthetic TLS pool session are replayed into alarms of five rules
//! (long_flow, quiet_long_flow, periodic_flow, mining_protocol, encrypted_mining) and their
//! flow records; hostile and malformed lines and a `mining_host` alarm are appended as an
//! attacker or a newer agent could write them; the page is rendered by Debian's headless
//! Chromium (DOM and screenshot). Every alarm must be in the rendered page with its endpoints
//! and at least one SVG chart, the hosts section must link the host's member alarms, the
//! hostile strings must arrive as text, and the page must reference nothing outside itself.

use std::{collections::BTreeMap, fs, path::Path};

use sensor_tests::{
    agent::{self, TempDir},
    browser, showcase,
};
use serde_json::{json, Value};

/// The alarms of `path` by id: the latest line of each.
fn alarms_by_id(path: &Path) -> BTreeMap<String, Value> {
    let text = fs::read_to_string(path).expect("alarm file");
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).expect("alarm JSON");
        out.insert(v["event"]["id"].as_str().expect("id").to_string(), v);
    }
    out
}

/// `client:port -> server:port/transport` as the page writes it, HTML-escaped as a DOM
/// serializer writes text.
fn endpoints(a: &Value) -> String {
    let side = |s: &str| {
        let ip = a[s]["ip"].as_str().expect("ip");
        let port = a[s]["port"].as_u64().expect("port");
        if ip.contains(':') {
            format!("[{ip}]:{port}")
        } else {
            format!("{ip}:{port}")
        }
    };
    format!(
        "{} -&gt; {}/{}",
        side("source"),
        side("destination"),
        a["network"]["transport"].as_str().expect("transport")
    )
}

/// The `<article id="alarm-N">` elements of the DOM, with their inner HTML.
fn articles(dom: &str) -> Vec<&str> {
    dom.split("<article ")
        .skip(1)
        .map(|a| a.split("</article>").next().unwrap_or(a))
        .collect()
}

#[test]
fn the_report_of_five_rules_renders_in_chromium_self_contained_with_a_chart_per_alarm() {
    let dir = TempDir::new("report");
    let (alarms, flows) = showcase::five_rule_replay(&dir).unwrap_or_else(|e| panic!("{e}"));
    let replayed = alarms_by_id(&alarms);
    let rules: std::collections::BTreeSet<&str> = replayed
        .values()
        .filter_map(|a| a["rule"]["id"].as_str())
        .collect();
    for rule in [
        "long_flow",
        "quiet_long_flow",
        "periodic_flow",
        "mining_protocol",
        "encrypted_mining",
    ] {
        assert!(
            rules.contains(rule),
            "the replay raised no {rule}: {rules:?}"
        );
    }

    // What else an alarm file may hold: an alarm whose strings are markup (a tampered file or
    // a hostile SNI), malformed lines, and a mining_host alarm naming its member alarms.
    let members: Vec<&String> = replayed
        .iter()
        .filter(|(_, a)| a["source"]["ip"] == "10.0.2.15" || a["rule"]["id"] == "encrypted_mining")
        .map(|(id, _)| id)
        .collect();
    assert!(!members.is_empty());
    let mut hostile = replayed
        .values()
        .find(|a| a["rule"]["id"] == "encrypted_mining")
        .cloned()
        .expect("an encrypted_mining alarm");
    hostile["event"]["id"] = json!("hostile-1\"><script>alert(1)</script>");
    hostile["rule"]["name"] = json!("<script>alert('rule')</script>");
    hostile["sensor"]["evidence"]["sni"] =
        json!("<img src=http://198.51.100.7/x.png onerror=alert(2)>");
    hostile["source"]["ip"] = json!("192.0.2.66");
    let host = json!({
        "@timestamp": "2023-11-14T23:00:00Z",
        "event": {"kind": "alert", "id": "host-192.0.2.10", "action": "opened", "severity": 8,
                  "start": "2023-11-14T22:13:20Z", "end": "2023-11-14T23:00:00Z", "duration": 2_800_000_000_000u64},
        "rule": {"id": "mining_host", "name": "Mining Host"},
        "host": {"ip": "192.0.2.10"},
        "source": {"ip": "192.0.2.10"},
        "sensor": {"evidence": {
            "coins": ["monero"],
            "pools": [{"ip": "203.0.113.80", "port": 14433, "domain": "eu1.pool.example-xmr.net", "coin": "monero"}],
            "member_alarm_ids": members,
        }},
    });
    let mut text = fs::read_to_string(&alarms).expect("alarms");
    text.push_str("{\"not\": \"closed\"\n");
    text.push_str(&format!("{hostile}\n"));
    text.push_str("plain text, not JSON\n");
    text.push_str(&format!("{host}\n"));
    fs::write(&alarms, text).expect("write alarms");

    let page = dir.path().join("report.html");
    let run = agent::run(&[
        "report".as_ref(),
        "--alarms".as_ref(),
        alarms.as_os_str(),
        "--flows".as_ref(),
        flows.as_os_str(),
        "-o".as_ref(),
        page.as_os_str(),
    ]);
    assert!(run.success, "report failed: {}", run.stderr);
    println!("{}", run.stderr.trim());
    let warnings: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    assert_eq!(
        warnings.len(),
        2,
        "one warning per malformed line: {warnings:?}"
    );
    let alarm_lines = fs::read_to_string(&alarms).expect("alarms").lines().count();
    assert!(
        warnings[0].contains(&format!("alarms.json:{}: not JSON", alarm_lines - 3)),
        "the warning names the file and the line: {}",
        warnings[0]
    );

    let (dom, took) = browser::dump_dom(&page).unwrap_or_else(|e| panic!("{e}"));
    println!("chromium rendered {} bytes of DOM in {took:?}", dom.len());
    let png = dir.path().join("report.png");
    browser::screenshot(&page, &png, 1280, 4000).unwrap_or_else(|e| panic!("{e}"));

    // Every alarm id, once, in an article with its endpoints and an SVG chart.
    let arts = articles(&dom);
    for (id, a) in &replayed {
        if a["rule"]["id"] == "mining_host" {
            // A host is drawn in the hosts section: its address, its id and its pools' chart.
            let ip = a["source"]["ip"].as_str().expect("the host's address");
            let art = arts
                .iter()
                .find(|art| {
                    art.contains("Mining host") && art.contains(&format!("<code>{id}</code>"))
                })
                .unwrap_or_else(|| panic!("host alarm {id} ({ip}) is not on the page"));
            assert!(art.contains(ip), "host alarm {id}: {ip} missing");
            assert!(
                art.matches("<svg").count() >= 1 && art.contains("Pools of this host"),
                "host alarm {id} has no chart of its pools"
            );
            continue;
        }
        let art = arts
            .iter()
            .find(|art| art.contains(&format!("<dd class=\"mono\">{id}</dd>")))
            .unwrap_or_else(|| panic!("alarm {id} ({}) is not on the page", a["rule"]["id"]));
        let ends = endpoints(a);
        assert!(art.contains(&ends), "alarm {id}: endpoints {ends} missing");
        assert!(
            art.matches("<svg").count() >= 1,
            "alarm {id} has no SVG chart"
        );
        if a["rule"]["id"] == "periodic_flow" {
            assert!(
                art.contains("Intervals histogram"),
                "periodic alarm {id} lacks its histogram"
            );
        }
        if a["rule"]["id"] == "encrypted_mining" {
            assert!(
                art.contains("Encrypted-mining contributions"),
                "{id} lacks its bars"
            );
        }
    }
    // The hosts section comes first and links every member alarm.
    let hosts_at = dom.find("id=\"hosts\"").expect("hosts section");
    let alarms_at = dom.find("id=\"alarms\"").expect("alarms section");
    assert!(hosts_at < alarms_at, "hosts come first");
    let hosts = &dom[hosts_at..alarms_at];
    assert!(hosts.contains("192.0.2.10") && hosts.contains("eu1.pool.example-xmr.net"));
    for id in &members {
        assert!(
            hosts.contains(&format!("<code>{id}</code></a>")),
            "member {id} is not linked from the host"
        );
    }
    // Hostile strings are text; the skipped lines are said.
    assert!(
        dom.contains("&lt;script&gt;alert('rule')&lt;/script&gt;"),
        "escaped rule name"
    );
    assert!(
        dom.contains("&lt;img src=http://198.51.100.7/x.png"),
        "escaped SNI"
    );
    assert!(
        !dom.contains("<script"),
        "a script element reached the page"
    );
    assert!(dom.contains("2 malformed line(s) skipped"));
    let external = browser::external_references(&dom);
    assert!(
        external.is_empty(),
        "the page reaches outside itself: {external:?}"
    );
    let raw = fs::read_to_string(&page).expect("page");
    let external = browser::external_references(&raw);
    assert!(
        external.is_empty(),
        "the file reaches outside itself: {external:?}"
    );
}

#[test]
fn a_missing_alarm_file_is_one_line_naming_it() {
    let dir = TempDir::new("report-missing");
    let missing = dir.path().join("nope.json");
    let run = agent::run(&[
        "report".as_ref(),
        "--alarms".as_ref(),
        missing.as_os_str(),
        "-o".as_ref(),
        dir.path().join("r.html").as_os_str(),
    ]);
    assert!(!run.success);
    let errors = run.error_lines();
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    assert!(errors[0].contains("nope.json"), "{}", errors[0]);
}
