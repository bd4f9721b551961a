//! HEC and webhook tests against a small HTTP server thread on 127.0.0.1: headers and body
//! format, indexer acknowledgement, batch splitting, HTTPS verification, error paths.
//!
//! What must never happen: a test that reaches anything but the server it started, or an error
//! text that carries the token.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::Receiver,
        Arc, Mutex,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use serde_json::{json, Value};

use super::{
    build,
    test_util::{http_server, server_config, Req, TempDir, TestCa},
    SinkConfig, Transport, TransportError,
};

const TOKEN: &str = "11111111-2222-3333-4444-555555555555";

fn sink(toml: &str) -> Box<dyn Transport> {
    let cfg: SinkConfig = toml::from_str(toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    build(&cfg).unwrap_or_else(|e| panic!("{e}"))
}

fn hec(url: &str, extra: &str) -> Box<dyn Transport> {
    sink(&format!(
        "kind = \"hec\"\nurl = \"{url}\"\ntoken = \"{TOKEN}\"\n{extra}\n"
    ))
}

fn requests(rx: &Receiver<Req>) -> Vec<Req> {
    rx.try_iter().collect()
}

/// Parses a HEC body: concatenated JSON objects.
fn hec_events(body: &[u8]) -> Vec<Value> {
    serde_json::Deserializer::from_slice(body)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn alarm(i: usize) -> Vec<u8> {
    json!({"rule": "mining_protocol", "seq": i, "pad": "x".repeat(200)})
        .to_string()
        .into_bytes()
}

#[test]
fn hec_posts_events_with_token_and_channel() {
    let (addr, rx) = http_server(None, |_| (200, r#"{"text":"Success","code":0}"#.into()));
    let mut t = hec(
        &format!("http://{addr}/services/collector/event"),
        "sourcetype = \"sensor:alarm\"",
    );
    assert_eq!(t.name(), format!("hec:http://{addr}"));
    let batch = vec![alarm(1), b"CEF:0|not json".to_vec(), alarm(2)];
    assert_eq!(t.send(&batch).unwrap(), 3);
    let reqs = requests(&rx);
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/services/collector/event")
    );
    assert_eq!(r.header("authorization"), Some(&*format!("Splunk {TOKEN}")));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let channel = r.header("x-splunk-request-channel").unwrap();
    assert_eq!(channel.len(), 36);
    let events = hec_events(&r.body);
    assert_eq!(events.len(), 3);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for (e, m) in events.iter().zip(&batch) {
        let obj = e.as_object().unwrap();
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["event", "sourcetype", "time"]);
        assert_eq!(e["sourcetype"], "sensor:alarm");
        let time = e["time"].as_f64().unwrap();
        assert!((now - time).abs() < 60.0, "time {time} vs {now}");
        match serde_json::from_slice::<Value>(m) {
            Ok(v) => assert_eq!(e["event"], v),
            Err(_) => assert_eq!(e["event"], String::from_utf8_lossy(m).as_ref()),
        }
    }
}

/// A HEC endpoint with indexer acknowledgement: every ackId is reported pending once, then
/// acknowledged.
fn ack_server() -> (std::net::SocketAddr, Receiver<Req>) {
    let next = AtomicU64::new(0);
    let polls: Mutex<HashMap<u64, u32>> = Mutex::new(HashMap::new());
    http_server(None, move |req| {
        if req.path == "/services/collector/event" {
            if req.header("x-splunk-request-channel").is_none() {
                return (
                    400,
                    r#"{"text":"Data channel is missing","code":10}"#.into(),
                );
            }
            let id = next.fetch_add(1, Ordering::SeqCst);
            (
                200,
                format!(r#"{{"text":"Success","code":0,"ackId":{id}}}"#),
            )
        } else if req.path == "/services/collector/ack" {
            let asked: Value = serde_json::from_slice(&req.body).unwrap();
            let mut polls = polls.lock().unwrap();
            let mut acks = serde_json::Map::new();
            for id in asked["acks"].as_array().unwrap() {
                let id = id.as_u64().unwrap();
                let n = polls.entry(id).or_default();
                *n += 1;
                acks.insert(id.to_string(), Value::Bool(*n > 1));
            }
            (200, json!({ "acks": acks }).to_string())
        } else {
            (
                404,
                r#"{"text":"The requested URL was not found","code":404}"#.into(),
            )
        }
    })
}

#[test]
fn hec_with_ack_waits_for_acknowledgement_and_splits_big_batches() {
    let (addr, rx) = ack_server();
    let mut t = hec(
        &format!("http://{addr}/services/collector/event"),
        "ack = true\nmax_body_bytes = 1024",
    );
    // ~300 bytes per event: three fit in 1024 bytes, so 7 events take 3 requests.
    let batch: Vec<Vec<u8>> = (0..7).map(alarm).collect();
    assert_eq!(t.send(&batch).unwrap(), 7);
    let reqs = requests(&rx);
    let posts: Vec<&Req> = reqs
        .iter()
        .filter(|r| r.path == "/services/collector/event")
        .collect();
    assert_eq!(posts.len(), 3);
    let mut seqs = Vec::new();
    for p in &posts {
        assert!(p.body.len() <= 1024, "{}", p.body.len());
        seqs.extend(
            hec_events(&p.body)
                .iter()
                .map(|e| e["event"]["seq"].as_u64().unwrap()),
        );
    }
    assert_eq!(seqs, (0..7).collect::<Vec<u64>>());
    let acks: Vec<&Req> = reqs
        .iter()
        .filter(|r| r.path == "/services/collector/ack")
        .collect();
    assert!(acks.len() >= 2, "pending once, then acknowledged");
    let first: Value = serde_json::from_slice(&acks[0].body).unwrap();
    assert_eq!(first, json!({"acks": [0, 1, 2]}));
    let channel = posts[0].header("x-splunk-request-channel");
    assert!(reqs
        .iter()
        .all(|r| r.header("x-splunk-request-channel") == channel));
    assert!(reqs
        .iter()
        .all(|r| r.header("authorization") == Some(&*format!("Splunk {TOKEN}"))));
}

#[test]
fn hec_ack_timeout_is_an_error() {
    let (addr, _rx) = http_server(None, |req| {
        if req.path.ends_with("/ack") {
            (200, r#"{"acks":{"0":false}}"#.into())
        } else {
            (200, r#"{"text":"Success","code":0,"ackId":0}"#.into())
        }
    });
    let mut t = hec(
        &format!("http://{addr}/services/collector"),
        "ack = true\nack_timeout = \"300ms\"",
    );
    let e = t.send(&[alarm(0)]).unwrap_err();
    assert!(
        matches!(e, TransportError::Rejected { status: None, .. }),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        format!("hec:http://{addr}: ackId 0 not acknowledged within 300ms")
    );
}

#[test]
fn hec_non_2xx_is_an_error_with_status_and_excerpt() {
    let (addr, _rx) = http_server(None, |_| {
        (403, r#"{"text":"Invalid token","code":4}"#.into())
    });
    let mut t = hec(&format!("http://{addr}/services/collector/event"), "");
    let e = t.send(&[alarm(0)]).unwrap_err();
    assert_eq!(
        e,
        TransportError::Rejected {
            status: Some(403),
            msg: format!(r#"hec:http://{addr}: HTTP 403: {{"text":"Invalid token","code":4}}"#),
        }
    );
    assert!(!e.to_string().contains(TOKEN));

    // A 2xx answer with a HEC error code is refused too.
    let (addr, _rx) = http_server(None, |_| {
        (200, r#"{"text":"Server is busy","code":9}"#.into())
    });
    let mut t = hec(&format!("http://{addr}/services/collector/event"), "");
    let e = t.send(&[alarm(0)]).unwrap_err();
    assert!(e.to_string().ends_with("HEC code 9: Server is busy"), "{e}");

    // Nobody listening: a connection-level error.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut t = hec(
        &format!("http://127.0.0.1:{port}/services/collector/event"),
        "",
    );
    let e = t.send(&[alarm(0)]).unwrap_err();
    assert!(matches!(e, TransportError::Connect(_)), "{e:?}");
    assert!(
        e.to_string()
            .starts_with(&format!("hec:http://127.0.0.1:{port}: ")),
        "{e}"
    );
}

#[test]
fn hec_over_https_verifies_the_server() {
    let dir = TempDir::new("hec-tls");
    let ca = TestCa::new("Test HEC CA");
    let leaf = ca.leaf(&["127.0.0.1"], false);
    let ca_file = dir.write("ca.pem", &ca.pem).display().to_string();
    let (addr, rx) = http_server(Some(server_config(&leaf, None)), |_| {
        (200, r#"{"text":"Success","code":0}"#.into())
    });
    let url = format!("https://{addr}/services/collector/event");
    let mut t = hec(&url, &format!("ca_file = {ca_file:?}"));
    assert_eq!(t.send(&[alarm(0), alarm(1)]).unwrap(), 2);
    assert_eq!(hec_events(&requests(&rx)[0].body).len(), 2);

    // Signed by a CA the client does not trust: refused, nothing delivered.
    let rogue = TestCa::new("Rogue CA");
    let (addr, rx) = http_server(
        Some(server_config(&rogue.leaf(&["127.0.0.1"], false), None)),
        |_| (200, r#"{"text":"Success","code":0}"#.into()),
    );
    let mut t = hec(
        &format!("https://{addr}/services/collector/event"),
        &format!("ca_file = {ca_file:?}"),
    );
    let e = t.send(&[alarm(0)]).unwrap_err();
    assert!(
        e.to_string()
            .contains("certificate verify failed: UnknownIssuer"),
        "{e}"
    );
    assert!(requests(&rx).is_empty());
}

#[test]
fn webhook_posts_json_arrays_split_by_size() {
    let (addr, rx) = http_server(None, |_| (204, String::new()));
    let mut t = sink(&format!(
        "kind = \"webhook\"\nurl = \"http://{addr}/hooks/T0/secret?key=abc\"\n\
         max_body_bytes = 1024\nheaders = {{ Authorization = \"Bearer xyz\", X-Source = \"sensor\" }}\n"
    ));
    assert_eq!(t.name(), format!("webhook:http://{addr}"));
    let batch: Vec<Vec<u8>> = (0..7).map(alarm).collect();
    let mut with_text = batch.clone();
    with_text.push(b"plain text".to_vec());
    // ~245 bytes per alarm: four fit in 1024 bytes with the brackets and commas.
    assert_eq!(t.send(&with_text).unwrap(), 8);
    let reqs = requests(&rx);
    assert_eq!(reqs.len(), 2);
    let mut all = Vec::new();
    for r in &reqs {
        assert_eq!(r.path, "/hooks/T0/secret?key=abc");
        assert_eq!(r.header("authorization"), Some("Bearer xyz"));
        assert_eq!(r.header("x-source"), Some("sensor"));
        assert!(r.body.len() <= 1024);
        let arr: Vec<Value> = serde_json::from_slice(&r.body).unwrap();
        all.extend(arr);
    }
    let mut want: Vec<Value> = batch
        .iter()
        .map(|m| serde_json::from_slice(m).unwrap())
        .collect();
    want.push(json!("plain text"));
    assert_eq!(all, want);
}

#[test]
fn webhook_errors_and_partial_success() {
    let long = format!("<html>\n<body>{}</body></html>", "oops ".repeat(100));
    let (addr, _rx) = http_server(None, move |_| (500, long.clone()));
    let mut t = sink(&format!(
        "kind = \"webhook\"\nurl = \"http://{addr}/secret-path\"\n"
    ));
    let e = t.send(&[alarm(0)]).unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with(&format!(
            "webhook:http://{addr}: HTTP 500: <html> <body>oops oops"
        )),
        "{text}"
    );
    assert!(
        text.ends_with('…') && !text.contains('\n') && text.len() < 400,
        "{text}"
    );
    assert!(!text.contains("secret-path"));

    // The second request fails: the first one's messages count as taken.
    let calls = Arc::new(AtomicU64::new(0));
    let c = calls.clone();
    let (addr, _rx) = http_server(None, move |_| {
        if c.fetch_add(1, Ordering::SeqCst) == 0 {
            (200, "{}".into())
        } else {
            (503, "busy".into())
        }
    });
    let mut t = sink(&format!(
        "kind = \"webhook\"\nurl = \"http://{addr}/\"\nmax_body_bytes = 1024\ntimeout = \"5s\"\n"
    ));
    let batch: Vec<Vec<u8>> = (0..7).map(alarm).collect();
    assert_eq!(t.send(&batch).unwrap(), 4);
    let e = t.send(&batch[4..]).unwrap_err();
    assert_eq!(
        e,
        TransportError::Rejected {
            status: Some(503),
            msg: format!("webhook:http://{addr}: HTTP 503: busy"),
        }
    );
}
