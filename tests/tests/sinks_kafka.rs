//! The Kafka sink end to end: a real Kafka-protocol broker (Tansu, SQLite storage) on a free
//! loopback port, the agent replaying a capture through the durable spool, and
//! `tools/kafka-read.py` (kafka-python: no code shared with the sink's librdkafka) reading the
//! topic back as an independent consumer.
//!
//! - every alarm of the replay arrives at least once, none missing, keyed by its client
//!   address, one host's alarms on one partition in the order they were raised; in JSON and
//!   CEF from one spool;
//! - the broker killed and started again in the middle of a delivery loses nothing, and the
//!   duplicates the restart caused are counted and bounded;
//! - the flow-record stream of a replay carries exactly the records `--flows` writes.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use sensor_tests::{
    agent::{self, TempDir},
    captures,
    kafka::{self, Broker},
    pcap,
};
use serde_json::Value;

/// A topic name no other test (or earlier run) uses.
fn topic(tag: &str) -> String {
    format!(
        "sensor-{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    )
}

fn start_broker(dir: &TempDir) -> Broker {
    Broker::start(dir.path()).unwrap_or_else(|e| panic!("kafka test cannot run: {e}"))
}

fn mining_capture(dir: &TempDir, conversations: u16) -> PathBuf {
    dir.write(
        "mining.pcap",
        &pcap::pcap(
            pcap::LINKTYPE_ETHERNET,
            &captures::stratum_sessions(conversations),
        ),
    )
}

/// `[spool]` in the test's directory plus the given sinks.
fn config(dir: &TempDir, sinks: &str) -> PathBuf {
    let text = format!(
        "[spool]\ndir = \"{}\"\ndrain_timeout = \"60s\"\n\n{sinks}",
        dir.path().join("spool").display()
    );
    dir.write("sensor.toml", text.as_bytes())
}

fn kafka_sink(broker: &Broker, topic: &str, extra: &str) -> String {
    format!(
        "[[sinks]]\nkind = \"kafka\"\nbrokers = \"{}\"\ntopic = \"{topic}\"\n{extra}\n",
        broker.address()
    )
}

/// The alarms the replay raises, written by the agent itself to a file (no sinks): what the
/// topic must hold.
fn expected_alarms(dir: &TempDir, capture: &Path) -> Vec<Value> {
    let out = dir.path().join("expected-alarms.json");
    let run = agent::run(&[
        "replay".as_ref(),
        "--no-progress".as_ref(),
        "--alarms".as_ref(),
        out.as_os_str(),
        capture.as_os_str(),
    ]);
    assert!(run.success, "{}", run.stderr);
    let alarms = agent::read_flows(&out);
    assert!(!alarms.is_empty(), "the capture raises alarms");
    alarms
}

/// (event.id, event.action) of an alarm: what identifies one alarm event.
fn event_of(alarm: &Value) -> (String, String) {
    (
        alarm["event"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        alarm["event"]["action"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

fn replay(cfg: &Path, capture: &Path) -> std::process::Child {
    agent::command()
        .args([
            "replay".as_ref(),
            "--no-progress".as_ref(),
            "--config".as_ref(),
            cfg.as_os_str(),
            capture.as_os_str(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the agent")
}

fn finish(child: std::process::Child) -> String {
    let out = child.wait_with_output().expect("agent output");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    stderr
}

/// The partitions one key's messages went to, and (offset, event.id) of each.
type KeyedMessages = (BTreeSet<i64>, Vec<(i64, String)>);

#[test]
fn alarms_of_a_replay_reach_kafka_through_the_spool_keyed_by_client() {
    let dir = TempDir::new("kafka-alarms");
    let broker = start_broker(&dir);
    let (json_topic, cef_topic) = (topic("json"), topic("cef"));
    for t in [&json_topic, &cef_topic] {
        broker
            .create_topic(t, 3)
            .unwrap_or_else(|e| panic!("kafka test cannot run: {e}"));
    }
    let cap = mining_capture(&dir, 200);
    let expected = expected_alarms(&dir, &cap);
    let cfg = config(
        &dir,
        &(kafka_sink(
            &broker,
            &json_topic,
            "format = \"json\"\ncompression = \"zstd\"",
        ) + &kafka_sink(&broker, &cef_topic, "format = \"cef\"")),
    );
    let stderr = finish(replay(&cfg, &cap));
    assert!(
        stderr.contains(&format!(
            "sink kafka:{json_topic}@{}: {} sent, 0 errors",
            broker.address(),
            expected.len()
        )),
        "{stderr}"
    );

    let got = kafka::wait_for(
        &broker.address(),
        &json_topic,
        expected.len(),
        Duration::from_secs(30),
    );
    let want: BTreeSet<(String, String)> = expected.iter().map(event_of).collect();
    let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    // Per key: the partition it went to and the alarms in offset order.
    let mut by_key: BTreeMap<String, KeyedMessages> = BTreeMap::new();
    for m in &got {
        let alarm: Value = serde_json::from_str(&m.payload)
            .unwrap_or_else(|e| panic!("payload is not JSON ({e}): {}", m.payload));
        let client = alarm["source"]["ip"].as_str().unwrap_or_default();
        assert_eq!(
            m.key.as_deref(),
            Some(client),
            "keyed by the client address: {}",
            m.payload
        );
        *seen.entry(event_of(&alarm)).or_default() += 1;
        let entry = by_key.entry(client.to_string()).or_default();
        entry.0.insert(m.partition);
        entry.1.push((m.offset, event_of(&alarm).0));
    }
    let missing: Vec<_> = want.iter().filter(|e| !seen.contains_key(*e)).collect();
    assert!(missing.is_empty(), "missing from the topic: {missing:?}");
    assert_eq!(
        seen.keys().cloned().collect::<BTreeSet<_>>(),
        want,
        "nothing but the alarms"
    );
    for (key, (partitions, mut offsets)) in by_key {
        assert_eq!(partitions.len(), 1, "{key}: one partition per client");
        // In offset order, the alarms come in the order the agent raised them.
        offsets.sort();
        let order: Vec<&String> = offsets.iter().map(|(_, id)| id).collect();
        let raised: Vec<&str> = expected
            .iter()
            .filter(|a| a["source"]["ip"] == key.as_str())
            .filter_map(|a| a["event"]["id"].as_str())
            .collect();
        let order: Vec<&str> = order.iter().map(|s| s.as_str()).collect();
        assert_eq!(order, raised, "{key}: in the order raised");
    }

    let cef = kafka::wait_for(
        &broker.address(),
        &cef_topic,
        expected.len(),
        Duration::from_secs(30),
    );
    assert_eq!(cef.len(), expected.len(), "every alarm in CEF too");
    for m in &cef {
        assert!(m.payload.starts_with("CEF:0|"), "{}", m.payload);
        assert!(
            want.iter().any(|(id, _)| m.payload.contains(id.as_str())),
            "a known alarm id in {}",
            m.payload
        );
    }
}

/// Alarms in one replay: enough that delivering them takes the broker a while, so it can be
/// killed while the sink is sending.
const MANY: u16 = 20000;

#[test]
fn a_broker_killed_and_restarted_mid_delivery_loses_nothing() {
    let dir = TempDir::new("kafka-restart");
    let mut broker = start_broker(&dir);
    let t = topic("restart");
    broker
        .create_topic(&t, 3)
        .unwrap_or_else(|e| panic!("kafka test cannot run: {e}"));
    let cap = mining_capture(&dir, MANY);
    let expected = expected_alarms(&dir, &cap);
    let cfg = config(&dir, &kafka_sink(&broker, &t, "timeout = \"2s\""));
    let child = replay(&cfg, &cap);

    // Delivery has begun: some alarms are in the topic, not all.
    let first = kafka::wait_for(&broker.address(), &t, 1, Duration::from_secs(60));
    let before = first.len();
    broker.kill();
    assert!(
        before > 0 && before < expected.len(),
        "the broker is killed in the middle of the delivery ({before} of {} in the topic)",
        expected.len()
    );
    broker
        .resume()
        .unwrap_or_else(|e| panic!("the broker does not start again: {e}"));
    let stderr = finish(child);

    let got = kafka::wait_for(
        &broker.address(),
        &t,
        expected.len(),
        Duration::from_secs(60),
    );
    let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    for m in &got {
        let alarm: Value = serde_json::from_str(&m.payload)
            .unwrap_or_else(|e| panic!("payload is not JSON ({e}): {}", m.payload));
        *seen.entry(event_of(&alarm)).or_default() += 1;
    }
    let missing: Vec<_> = expected
        .iter()
        .map(event_of)
        .filter(|e| !seen.contains_key(e))
        .collect();
    assert!(
        missing.is_empty(),
        "{} alarms lost across the restart: {:?}\n{stderr}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let duplicates = got.len() - seen.len();
    println!(
        "{} alarms, {} messages in the topic ({before} before the kill), {duplicates} duplicates",
        expected.len(),
        got.len()
    );
    // At-least-once: what was in flight when the broker died may be sent again, at most the
    // sink's batch (1024 records) per failed send that reached the broker.
    assert!(
        duplicates <= sensor_agent::sink::transport::kafka::MAX_BATCH,
        "{duplicates} duplicates: more than one batch in flight was sent twice\n{stderr}"
    );
}

#[test]
fn the_flow_stream_of_a_replay_equals_the_flows_output() {
    let dir = TempDir::new("kafka-flows");
    let broker = start_broker(&dir);
    let t = topic("flows");
    broker
        .create_topic(&t, 3)
        .unwrap_or_else(|e| panic!("kafka test cannot run: {e}"));
    let cap = agent::repo_pcap("cryptonote-login-stratum.pcap");
    let flows_file = dir.path().join("flows.json");
    let cfg = config(&dir, &kafka_sink(&broker, &t, "stream = \"flows\""));
    let run = agent::run(&[
        "replay".as_ref(),
        "--no-progress".as_ref(),
        "--config".as_ref(),
        cfg.as_os_str(),
        "--flows".as_ref(),
        flows_file.as_os_str(),
        cap.as_os_str(),
    ]);
    assert!(run.success, "{}", run.stderr);
    let want = agent::read_flows(&flows_file);
    assert!(!want.is_empty(), "the capture has flows");
    let got = kafka::wait_for(&broker.address(), &t, want.len(), Duration::from_secs(30));
    let got: Vec<Value> = got
        .iter()
        .map(|m| {
            let v: Value = serde_json::from_str(&m.payload)
                .unwrap_or_else(|e| panic!("flow record is not JSON ({e}): {}", m.payload));
            assert_eq!(
                m.key.as_deref(),
                v["source"]["ip"].as_str(),
                "keyed by client"
            );
            v
        })
        .collect();
    let canon = |v: &[Value]| {
        let mut s: Vec<String> = v.iter().map(Value::to_string).collect();
        s.sort();
        s
    };
    assert_eq!(
        canon(&got),
        canon(&want),
        "the stream holds the --flows records"
    );
    // No alarm went to the flow topic.
    assert!(got.iter().all(|v| v["event"]["kind"] == "event"));
}
