//! The page: one HTML document with its style inline and its charts as inline SVG, so it
//! opens offline and travels as one ticket attachment. It must never reference anything
//! outside itself (no script, stylesheet, font, image or link but `#` anchors), and never
//! put a string from the input into the document unescaped: the template is `maud`, which
//! escapes every interpolated value; the only raw insertions are the SVG documents plotters
//! wrote (which escape their own text) and the constant style sheet.

use std::collections::HashMap;

use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde_json::Value;

use super::{
    chart::Chart,
    input::{Alarm, Inputs},
    words, Entry,
};

/// Strings from the input are shown at most this long.
const MAX_TEXT: usize = 400;
/// Nesting shown of a JSON value; deeper parts are summarised.
const MAX_DEPTH: usize = 4;
/// Rows and columns of a table made from an array of objects.
const MAX_ROWS: usize = 100;
const MAX_COLUMNS: usize = 12;
/// Rows of the alarm index.
const MAX_INDEX: usize = 1000;

const STYLE: &str = r#"
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0 auto;max-width:1100px;padding:1em 1.5em;color:#1d2430;background:#fff}
h1{font-size:1.6em;margin:.2em 0}h2{border-bottom:2px solid #d0d7de;padding-bottom:.2em;margin-top:1.6em}
h3{margin:.2em 0}h4{margin:.6em 0 .2em}
table{border-collapse:collapse;margin:.4em 0;font-size:.92em}th,td{border:1px solid #d0d7de;padding:.2em .5em;text-align:left;vertical-align:top}
th{background:#f3f5f8}td.n{text-align:right;font-variant-numeric:tabular-nums}
code,.mono{font-family:"DejaVu Sans Mono",ui-monospace,monospace;font-size:.9em;word-break:break-all}
article{border:1px solid #d0d7de;border-radius:6px;padding:.6em 1em;margin:1em 0}
.sev{display:inline-block;border-radius:4px;padding:0 .5em;color:#fff;background:#57606a;font-size:.85em}
.sev-hi{background:#cf222e}.sev-mid{background:#bc4c00}.sev-lo{background:#0969da}
.warn{background:#fff8c5;border:1px solid #d4a72c;padding:.4em .8em;border-radius:4px}
figure{margin:.6em 0}figcaption{font-size:.85em;color:#57606a}
svg{max-width:100%;height:auto;display:block}
dl{display:grid;grid-template-columns:max-content auto;gap:.1em 1em;margin:.4em 0}dt{font-weight:600}dd{margin:0}
.muted{color:#57606a}
"#;

fn clip(s: &str) -> String {
    if s.chars().count() <= MAX_TEXT {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(MAX_TEXT).collect();
        t.push_str(" …");
        t
    }
}

fn sev_class(sev: u64) -> &'static str {
    match sev {
        7.. => "sev sev-hi",
        4..=6 => "sev sev-mid",
        _ => "sev sev-lo",
    }
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

/// `client:port -> server:port/transport`.
pub fn endpoints(a: &Alarm) -> String {
    let v = &a.latest;
    let side = |s: &str| {
        let ip = v[s]["ip"].as_str().unwrap_or("?");
        let port = v[s]["port"].as_u64();
        match (ip.contains(':'), port) {
            (true, Some(p)) => format!("[{ip}]:{p}"),
            (false, Some(p)) => format!("{ip}:{p}"),
            (_, None) => ip.to_string(),
        }
    };
    let transport = v["network"]["transport"].as_str().unwrap_or("");
    let mut s = format!("{} -> {}", side("source"), side("destination"));
    if !transport.is_empty() {
        s.push('/');
        s.push_str(transport);
    }
    s
}

/// A JSON value as HTML: objects as key/value tables, arrays of objects as tables, strings
/// that are ids of alarms on this page as links to them.
fn value(v: &Value, links: &HashMap<&str, String>, depth: usize) -> Markup {
    match v {
        Value::String(s) => match links.get(s.as_str()) {
            Some(anchor) => html! { a href=(anchor) { code { (clip(s)) } } },
            None => html! { (clip(s)) },
        },
        Value::Null => html! { span.muted { "null" } },
        Value::Bool(_) | Value::Number(_) => html! { (v.to_string()) },
        _ if depth >= MAX_DEPTH => html! { code { (clip(&v.to_string())) } },
        Value::Object(m) => html! {
            table {
                @for (k, x) in m.iter().take(MAX_ROWS) {
                    tr { th { (clip(k)) } td { (value(x, links, depth + 1)) } }
                }
            }
            @if m.len() > MAX_ROWS { p.muted { (m.len() - MAX_ROWS) " more fields not shown" } }
        },
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_object) => {
            let mut cols: Vec<&str> = Vec::new();
            for it in items.iter().take(MAX_ROWS) {
                for k in it.as_object().into_iter().flat_map(|o| o.keys()) {
                    if cols.len() < MAX_COLUMNS && !cols.contains(&k.as_str()) {
                        cols.push(k);
                    }
                }
            }
            html! {
                table {
                    tr { @for c in &cols { th { (clip(c)) } } }
                    @for it in items.iter().take(MAX_ROWS) {
                        tr { @for c in &cols { td { @if let Some(x) = it.get(*c) { (value(x, links, depth + 1)) } } } }
                    }
                }
                @if items.len() > MAX_ROWS { p.muted { (items.len() - MAX_ROWS) " more rows not shown" } }
            }
        }
        Value::Array(items) => html! {
            @for (i, x) in items.iter().take(MAX_ROWS).enumerate() {
                @if i > 0 { ", " }
                (value(x, links, depth + 1))
            }
            @if items.len() > MAX_ROWS { " … (" (items.len()) " in all)" }
        },
    }
}

fn chart(c: &Chart) -> Markup {
    html! {
        figure.chart {
            h4 { (c.title) }
            @match &c.svg {
                Ok(svg) => (PreEscaped(svg.as_str())),
                Err(e) => p.warn { "The chart could not be drawn: " (e) },
            }
            figcaption { "Data: " (c.source) "." }
        }
    }
}

fn alarm(i: usize, e: &Entry, links: &HashMap<&str, String>) -> Markup {
    let a = &e.alarm;
    let v = &a.latest;
    let sev = a.severity();
    let duration_s = v["event"]["duration"].as_f64().map(|ns| ns / 1e9);
    let evidence = a.evidence();
    let sentences = evidence.map_or_else(Vec::new, |ev| words::sentences(&a.rule, ev));
    html! {
        article id=(format!("alarm-{i}")) {
            h3 {
                (clip(str_at(v, &["rule", "name"]).unwrap_or(&a.rule)))
                " " code { (clip(&a.rule)) } " "
                span class=(sev_class(sev)) { "severity " (sev) }
            }
            dl {
                dt { "Endpoints" } dd.mono { (clip(&endpoints(a))) }
                dt { "Alarm id" } dd.mono { (clip(&a.id)) }
                dt { "State" } dd {
                    (clip(a.action()))
                    @if let Some(r) = str_at(v, &["event", "reason"]) { " (" (clip(r)) ")" }
                    " — " (a.history.len() + a.history_dropped) " event(s)"
                }
                dt { "Start" } dd { (clip(str_at(v, &["event", "start"]).unwrap_or("?"))) }
                dt { "End" } dd { (clip(str_at(v, &["event", "end"]).unwrap_or("?"))) }
                dt { "Duration" } dd { (duration_s.map_or("?".to_string(), words::duration)) }
                dt { "Bytes" } dd {
                    "client sent " (words::bytes(v["source"]["bytes"].as_f64().unwrap_or(0.0)))
                    ", server sent " (words::bytes(v["destination"]["bytes"].as_f64().unwrap_or(0.0)))
                }
                @if let Some(t) = str_at(v, &["sensor", "telemetry"]) {
                    dt { "Telemetry" } dd { (clip(t)) }
                }
            }
            h4 { "Evidence" }
            @if sentences.is_empty() {
                p.muted { "No sentence for this rule; the fields are below." }
            } @else {
                ul { @for s in &sentences { li { (clip(s)) } } }
            }
            @for c in &e.charts { (chart(c)) }
            details {
                summary { "Evidence fields" }
                @match evidence {
                    Some(_) => (value(&v["sensor"]["evidence"], links, 0)),
                    None => p.muted { "none" },
                }
            }
            details {
                summary { "History" }
                table {
                    tr { th { "action" } th { "@timestamp" } th { "severity" } th { "client bytes" } th { "server bytes" } th { "reason" } }
                    @for s in &a.history {
                        tr {
                            td { (clip(&s.action)) } td { (clip(&s.at_text)) }
                            td.n { (s.severity.map_or(String::new(), |x| x.to_string())) }
                            td.n { (s.client_bytes.map_or(String::new(), |x| x.to_string())) }
                            td.n { (s.server_bytes.map_or(String::new(), |x| x.to_string())) }
                            td { (clip(s.reason.as_deref().unwrap_or(""))) }
                        }
                    }
                }
                @if a.history_dropped > 0 {
                    p.muted { (a.history_dropped) " earlier update(s) not kept (the first event and the latest ones are)." }
                }
            }
        }
    }
}

/// The host a `mining_host` alarm is about.
fn host_of(a: &Alarm) -> String {
    let v = &a.latest;
    match &v["host"]["ip"] {
        Value::String(s) => s.clone(),
        Value::Array(ips) => ips
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(", "),
        _ => v["source"]["ip"].as_str().unwrap_or("?").to_string(),
    }
}

fn hosts(entries: &[Entry], links: &HashMap<&str, String>) -> Markup {
    let hosts: Vec<(usize, &Entry)> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.alarm.rule == "mining_host")
        .collect();
    // Clients of the other alarms, busiest first: who to look at even without host alarms.
    let mut clients: HashMap<&str, (usize, u64)> = HashMap::new();
    for e in entries.iter().filter(|e| e.alarm.rule != "mining_host") {
        if let Some(c) = e.alarm.latest["source"]["ip"].as_str() {
            let slot = clients.entry(c).or_default();
            slot.0 += 1;
            slot.1 = slot.1.max(e.alarm.severity());
        }
    }
    let mut clients: Vec<(&str, (usize, u64))> = clients.into_iter().collect();
    clients.sort_by(|a, b| {
        b.1 .1
            .cmp(&a.1 .1)
            .then(b.1 .0.cmp(&a.1 .0))
            .then(a.0.cmp(b.0))
    });
    html! {
        section #hosts {
            h2 { "Hosts" }
            @if hosts.is_empty() {
                p { "None: the input holds no " code { "mining_host" } " alarm." }
            }
            @for (i, e) in &hosts {
                article id=(format!("alarm-{i}")) {
                    h3 {
                        "Mining host " span.mono { (clip(&host_of(&e.alarm))) } " "
                        span class=(sev_class(e.alarm.severity())) { "severity " (e.alarm.severity()) }
                    }
                    p.muted { "Alarm id " code { (clip(&e.alarm.id)) } ", " (clip(e.alarm.action())) ". Ids of alarms on this page link to them." }
                    @for c in &e.charts { (chart(c)) }
                    @match e.alarm.evidence() {
                        Some(_) => (value(&e.alarm.latest["sensor"]["evidence"], links, 0)),
                        None => p.muted { "No evidence fields." },
                    }
                }
            }
            @if !clients.is_empty() {
                h4 { "Clients with alarms" }
                table {
                    tr { th { "client" } th { "alarms" } th { "highest severity" } }
                    @for (c, (n, sev)) in clients.iter().take(MAX_ROWS) {
                        tr { td.mono { (clip(c)) } td.n { (n) } td.n { (sev) } }
                    }
                }
                @if clients.len() > MAX_ROWS { p.muted { (clients.len() - MAX_ROWS) " more clients not shown" } }
            }
        }
    }
}

/// The whole document.
pub fn render(inputs: &Inputs, entries: &[Entry], generated: &str) -> String {
    // Ids link to the alarm's article, or to its index row when it is not shown in full.
    let links: HashMap<&str, String> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let anchor = if e.detailed {
                format!("#alarm-{i}")
            } else {
                format!("#row-{i}")
            };
            (e.alarm.id.as_str(), anchor)
        })
        .collect();
    let listed = entries
        .iter()
        .filter(|e| e.alarm.rule != "mining_host")
        .count();
    let shown = entries
        .iter()
        .filter(|e| e.detailed && e.alarm.rule != "mining_host")
        .count();
    let mut by_rule: std::collections::BTreeMap<&str, usize> = Default::default();
    for e in entries {
        *by_rule.entry(e.alarm.rule.as_str()).or_default() += 1;
    }
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Sensor alarm report" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    h1 { "Sensor alarm report" }
                    p {
                        "Alarms: " code { (clip(&inputs.alarms_file)) } " (" (inputs.alarm_lines) " lines)"
                        @if let Some(f) = &inputs.flows_file { "; flows: " code { (clip(f)) } " (" (inputs.flow_lines) " lines)" }
                        ". Generated " (generated) "."
                    }
                    @if inputs.skipped > 0 {
                        div.warn {
                            p { (inputs.skipped) " malformed line(s) skipped; the rest is shown." }
                            ul { @for n in &inputs.notes { li.mono { (clip(&n.to_string())) } } }
                            @if inputs.skipped > inputs.notes.len() { p { "(first " (inputs.notes.len()) " listed)" } }
                        }
                    }
                    @let flows_cut: usize = inputs.flows_left_out.values().sum();
                    @if flows_cut > 0 {
                        p.warn { (flows_cut) " flow record(s) of busy conversations were not drawn: each conversation's charts use at most its first records (see the chart captions)." }
                    }
                    @if inputs.alarms_left_out > 0 {
                        p.warn { (inputs.alarms_left_out) " further alarm id(s) left out: the report shows the first " (entries.len()) "." }
                    }
                    table {
                        tr { th { "rule" } th { "alarms" } }
                        @for (r, n) in &by_rule { tr { td { code { (clip(r)) } } td.n { (n) } } }
                        tr { th { "all" } th.n { (entries.len()) } }
                    }
                }
                (hosts(entries, &links))
                section #alarms {
                    h2 { "Alarms (" (listed) ")" }
                    @if listed == 0 { p { "No alarm in the input." } }
                    @if shown < listed {
                        p.warn {
                            "The " (shown) " most severe alarms are shown in full below; the other "
                            (listed - shown) " are rows of this index only. A report of fewer alarms (for example one host's lines of the alarm file) shows each in full."
                        }
                    }
                    table {
                        tr { th { "#" } th { "rule" } th { "endpoints" } th { "severity" } th { "state" } }
                        @for (i, e) in entries.iter().enumerate().filter(|(_, e)| e.alarm.rule != "mining_host").take(MAX_INDEX) {
                            tr id=(format!("row-{i}")) {
                                td.n {
                                    @if e.detailed { a href=(format!("#alarm-{i}")) { (i + 1) } }
                                    @else { (i + 1) }
                                }
                                td { code { (clip(&e.alarm.rule)) } }
                                td.mono { (clip(&endpoints(&e.alarm))) }
                                td.n { (e.alarm.severity()) }
                                td { (clip(e.alarm.action())) }
                            }
                        }
                    }
                    @if listed > MAX_INDEX { p.muted { (listed - MAX_INDEX) " more alarms not listed." } }
                    @for (i, e) in entries.iter().enumerate().filter(|(_, e)| e.detailed && e.alarm.rule != "mining_host") {
                        (alarm(i, e, &links))
                    }
                }
            }
        }
    };
    page.into_string()
}
