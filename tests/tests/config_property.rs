//! One rule for configuration: what `validate` accepts, every command accepts, and what it
//! refuses, every command refuses with the same line (issue 17). Checked as a property: random
//! configurations are produced from the documented keys (every key of `sensor.example.toml`,
//! with valid and invalid values of the key's own kind, plus sinks, outputs and misspelt
//! keys), and `validate` and `replay` must agree on each.
//!
//! The seed is printed; `CONFIG_PROPERTY_SEED=N` replays one run, `CONFIG_PROPERTY_CASES=N`
//! runs more cases.

use std::path::Path;

use fastrand::Rng;
use sensor_tests::{
    agent::{self, TempDir},
    frames::{TcpConn, TCP_ACK, TCP_PSH, TCP_SYN},
    pcap::{self, Record, LINKTYPE_ETHERNET},
};
use toml::{Table, Value};

/// Every scalar key of the documented example, as (dotted key, documented value).
fn documented_keys() -> Vec<(String, Value)> {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sensor.example.toml");
    let text = std::fs::read_to_string(&example)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", example.display()));
    let table: Table = text
        .parse()
        .unwrap_or_else(|e| panic!("{} is not TOML: {e}", example.display()));
    let mut keys = Vec::new();
    fn walk(prefix: &str, t: &Table, out: &mut Vec<(String, Value)>) {
        for (k, v) in t {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                Value::Table(inner) => walk(&key, inner, out),
                other => out.push((key, other.clone())),
            }
        }
    }
    walk("", &table, &mut keys);
    keys
}

fn is_duration(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| humantime::parse_duration(s).is_ok())
}

/// A value for a key documented with `doc`: of the same kind, valid or not.
fn mutate(rng: &mut Rng, doc: &Value) -> Value {
    let pick = |rng: &mut Rng, options: &[Value]| options[rng.usize(..options.len())].clone();
    match doc {
        v if is_duration(v) => pick(
            rng,
            &[
                Value::from("1s"),
                Value::from("90s"),
                Value::from("15m"),
                Value::from("2h"),
                Value::from("3d"),
                Value::from("0s"),
                Value::from(30),
                Value::from("-5s"),
                Value::from("200years"),
                Value::from("soon"),
                Value::from(""),
            ],
        ),
        Value::Integer(n) => pick(
            rng,
            &[
                Value::from(*n),
                Value::from((*n / 2).max(1)),
                Value::from(n.saturating_add(1)),
                Value::from(0),
                Value::from(-1),
                Value::from(4),
                Value::from(i64::MAX),
                Value::from(n.to_string()),
                Value::from(1.5),
            ],
        ),
        Value::Float(f) => pick(
            rng,
            &[
                Value::from(*f),
                Value::from(0.0),
                Value::from(0.5),
                Value::from(1.0),
                Value::from(-1.0),
                Value::from(2.5),
                Value::from(f64::NAN),
                Value::from("high"),
            ],
        ),
        Value::Boolean(_) => pick(
            rng,
            &[
                Value::from(true),
                Value::from(false),
                Value::from("yes"),
                Value::from(1),
            ],
        ),
        Value::Array(items) => pick(
            rng,
            &[
                Value::Array(items.clone()),
                Value::Array(Vec::new()),
                Value::Array(items.iter().rev().cloned().collect()),
                Value::Array(vec![Value::from("")]),
                Value::from("not a list"),
            ],
        ),
        Value::String(s) => pick(
            rng,
            &[
                Value::from(s.clone()),
                Value::from(""),
                Value::from("\u{202e}odd"),
            ],
        ),
        other => other.clone(),
    }
}

fn set(table: &mut Table, dotted: &str, value: Value) {
    let parts: Vec<&str> = dotted.split('.').collect();
    let mut t = table;
    for part in &parts[..parts.len() - 1] {
        t = t
            .entry(part.to_string())
            .or_insert_with(|| Value::Table(Table::new()))
            .as_table_mut()
            .expect("documented sections are tables");
    }
    t.insert(parts[parts.len() - 1].to_string(), value);
}

/// A sink entry, valid or slipped (no path, the name of another, an unknown kind).
fn sink(rng: &mut Rng, dir: &Path, i: usize) -> Value {
    let mut t = Table::new();
    match rng.u8(..5) {
        0 => {
            t.insert("kind".into(), Value::from("stdout"));
        }
        1 => {
            t.insert("kind".into(), Value::from("file"));
        }
        2 => {
            t.insert("kind".into(), Value::from("carrier-pigeon"));
        }
        _ => {
            t.insert("kind".into(), Value::from("file"));
            t.insert(
                "path".into(),
                Value::from(dir.join(format!("alarms-{i}.json")).display().to_string()),
            );
        }
    }
    if rng.bool() {
        t.insert("name".into(), Value::from(format!("s{}", rng.u8(..2))));
    }
    Value::Table(t)
}

/// One random configuration, written under `dir`.
fn random_config(rng: &mut Rng, keys: &[(String, Value)], dir: &Path) -> String {
    let mut table = Table::new();
    // The spool, state and outputs of a test stay in its directory.
    set(
        &mut table,
        "spool.dir",
        Value::from(dir.join("spool").display().to_string()),
    );
    set(
        &mut table,
        "state.path",
        Value::from(dir.join("state.bin").display().to_string()),
    );
    for _ in 0..rng.usize(1..=3) {
        let (key, doc) = &keys[rng.usize(..keys.len())];
        set(&mut table, key, mutate(rng, doc));
    }
    match rng.u8(..8) {
        0 => set(&mut table, "spool.dir", Value::from("")),
        1 => set(&mut table, "output.alarms", Value::from("")),
        2 => set(
            &mut table,
            "output.alarms",
            Value::from(dir.join("out.json").display().to_string()),
        ),
        3 => {
            // A misspelt key.
            let (key, _) = &keys[rng.usize(..keys.len())];
            set(&mut table, &format!("{key}x"), Value::from(1));
        }
        _ => {}
    }
    if rng.u8(..3) == 0 {
        let sinks: Vec<Value> = (0..rng.usize(1..=2)).map(|i| sink(rng, dir, i)).collect();
        table.insert("sinks".into(), Value::Array(sinks));
    }
    toml::to_string(&table).expect("a table serialises")
}

/// A short capture of one TCP conversation (nothing to alarm on).
fn capture() -> Vec<u8> {
    let conv = TcpConn::new([10, 0, 0, 1], 40000, [10, 0, 0, 2], 443);
    let records: Vec<Record> = (0..4)
        .map(|i| {
            let flags = if i == 0 { TCP_SYN } else { TCP_PSH | TCP_ACK };
            Record::new(
                1_600_000_000_000_000_000 + i as u64 * 1_000_000_000,
                conv.frame(i % 2 == 0, flags, b"hello"),
            )
        })
        .collect();
    pcap::pcap(LINKTYPE_ETHERNET, &records)
}

#[test]
fn validate_and_replay_agree_on_random_configs() {
    let keys = documented_keys();
    assert!(keys.len() > 50, "only {} documented keys", keys.len());
    let seed = std::env::var("CONFIG_PROPERTY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let cases: usize = std::env::var("CONFIG_PROPERTY_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    eprintln!("config property: seed {seed}, {cases} cases (CONFIG_PROPERTY_SEED={seed})");
    let mut rng = Rng::with_seed(seed);
    let (mut accepted, mut refused) = (0, 0);
    for case in 0..cases {
        let dir = TempDir::new("cfgprop");
        let cap = dir.write("c.pcap", &capture());
        let text = random_config(&mut rng, &keys, dir.path());
        let config = dir.write("sensor.toml", text.as_bytes());
        let config = config.to_str().expect("utf-8");
        let validate = agent::run(&["validate", "--config", config]);
        let replay = agent::run(&[
            "replay",
            "--no-progress",
            "--config",
            config,
            cap.to_str().expect("utf-8"),
        ]);
        let context = || {
            format!(
                "case {case} (seed {seed}):\n{text}\nvalidate: {validate:?}\nreplay: {replay:?}"
            )
        };
        assert!(
            validate.code.is_some_and(|c| c <= 1) && replay.code.is_some_and(|c| c <= 1),
            "a panic or a signal: {}",
            context()
        );
        assert_eq!(
            validate.success,
            replay.success,
            "validate and replay disagree: {}",
            context()
        );
        if validate.success {
            accepted += 1;
        } else {
            refused += 1;
            // Refused the same way: the one error line of each names the same key and cause.
            assert_eq!(
                validate.error_lines(),
                replay.error_lines(),
                "different errors: {}",
                context()
            );
            assert_eq!(validate.error_lines().len(), 1, "{}", context());
        }
    }
    eprintln!("config property: {accepted} accepted, {refused} refused by both");
    // Both kinds of case were produced: a generator that only makes one proves little.
    assert!(
        accepted > 0 && refused > 0,
        "{accepted} accepted, {refused} refused"
    );
}
