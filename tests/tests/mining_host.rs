//! The host view of mining (`mining_host`), end to end through `sensor-agent replay` on the
//! real miner captures: one host (10.0.2.15) mining to two pools in `stratum-getwork-gbt.pcap`
//! is one `mining_host` alarm naming both; with `--state FILE`, a second replay of more
//! traffic from the same host (`cryptonote-login-stratum.pcap`, five weeks later, a third
//! pool) continues that alarm under the same id, or, once the host was quiet for longer than
//! `detect.mining_host.quiet_for`, closes it and opens a new episode.
//!
//! Every number the host alarm states is checked against the member alarms of the same run
//! (their ids, coins, conversations and bytes), never against numbers written here.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use sensor_tests::{
    agent::{self, TempDir},
    alarms::{read_alarms, ts_ns},
};
use serde_json::Value;

const HOST: &str = "10.0.2.15";
const CONFIRMING: [&str; 4] = [
    "mining_protocol",
    "mining_infrastructure",
    "encrypted_mining",
    "blockchain_p2p",
];

/// `replay --state STATE --alarms ALARMS [--set K=V]... CAPTURE`: the alarms and stderr.
fn replay(state: &Path, alarms: &Path, sets: &[&str], capture: &str) -> (Vec<Value>, String) {
    let mut args: Vec<std::ffi::OsString> = vec![
        "replay".into(),
        "--no-progress".into(),
        "--state".into(),
        state.into(),
        "--alarms".into(),
        alarms.into(),
    ];
    for s in sets {
        args.push("--set".into());
        args.push((*s).into());
    }
    args.push(agent::repo_pcap(capture).into());
    let run = agent::run(&args);
    assert!(run.success, "replay of {capture} failed: {}", run.stderr);
    (read_alarms(alarms), run.stderr)
}

fn rule(a: &Value) -> &str {
    a["rule"]["id"].as_str().unwrap_or("")
}

fn action(a: &Value) -> &str {
    a["event"]["action"].as_str().unwrap_or("")
}

fn hosts(alarms: &[Value]) -> Vec<&Value> {
    alarms.iter().filter(|a| rule(a) == "mining_host").collect()
}

/// "ip:port" of every pool a host alarm lists.
fn pools(a: &Value) -> BTreeSet<String> {
    a["sensor"]["evidence"]["pools"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| format!("{}:{}", p["ip"].as_str().unwrap_or("?"), p["port"]))
                .collect()
        })
        .unwrap_or_default()
}

/// The last event of each member alarm of `HOST` (by id) whose conversation was active
/// during the host alarm's episode: what its conversation came to.
fn members<'a>(alarms: &'a [Value], host: &Value) -> BTreeMap<String, &'a Value> {
    let since = ts_ns(host["event"]["start"].as_str().expect("start"));
    let mut last = BTreeMap::new();
    for a in alarms {
        if CONFIRMING.contains(&rule(a))
            && a["source"]["ip"] == HOST
            && ts_ns(a["event"]["end"].as_str().unwrap_or("")) >= since
        {
            last.insert(a["event"]["id"].as_str().unwrap_or("").to_string(), a);
        }
    }
    last
}

/// The host alarm's pools, coins, ids and totals against the member alarms of the run:
/// each pool a server of a confirmed member, the coins those members named, and (when the
/// members are all of the episode, `whole`) conversations and bytes summed once per
/// conversation.
fn check_against_members(host: &Value, alarms: &[Value], whole: bool) {
    let ev = &host["sensor"]["evidence"];
    let m = members(alarms, host);
    let servers: BTreeSet<String> = m
        .values()
        .map(|a| {
            format!(
                "{}:{}",
                a["destination"]["ip"].as_str().unwrap_or("?"),
                a["destination"]["port"]
            )
        })
        .collect();
    assert!(servers.is_subset(&pools(host)), "{servers:?} in {host}");
    let named: BTreeSet<&str> = m
        .values()
        .filter_map(|a| a["sensor"]["evidence"]["coin"].as_str())
        .collect();
    let coins: BTreeSet<&str> = ev["coins"]
        .as_array()
        .expect("coins")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        named.is_subset(&coins),
        "coins {named:?} of the members in {host}"
    );
    for id in ev["member_alarm_ids"].as_array().expect("ids") {
        let id = id.as_str().unwrap_or("");
        assert!(
            alarms.iter().any(|a| a["event"]["id"] == id) || !whole,
            "member id {id} is an alarm of the run"
        );
    }
    if whole {
        // One conversation per member alarm here: each conversation spoke the protocol.
        let convs: BTreeSet<(String, String)> = m
            .values()
            .map(|a| {
                (
                    a["destination"]["ip"].to_string(),
                    a["event"]["start"].to_string(),
                )
            })
            .collect();
        assert_eq!(ev["conversations"], convs.len() as u64, "{host}");
        let out: u64 = m
            .values()
            .filter_map(|a| a["source"]["bytes"].as_u64())
            .sum();
        let back: u64 = m
            .values()
            .filter_map(|a| a["destination"]["bytes"].as_u64())
            .sum();
        assert_eq!(
            (ev["bytes_out"].as_u64(), ev["bytes_in"].as_u64()),
            (Some(out), Some(back))
        );
        assert_eq!(host["source"]["bytes"], out);
        let connected: f64 = m
            .values()
            .filter_map(|a| a["event"]["duration"].as_u64())
            .map(|ns| ns as f64 / 1e9)
            .sum();
        let said = ev["connected_s"].as_f64().expect("connected_s");
        assert!((said - connected).abs() < 1e-6, "{said} vs {connected}");
        assert_eq!(ev["member_alarms"], m.len() as u64);
    }
}

#[test]
fn one_miner_with_two_pools_is_one_host_alarm_continued_by_the_state_file() {
    let dir = TempDir::new("mining-host");
    let state = dir.path().join("state.bin");
    // The second capture is five weeks after the first: the episode spans it only when the
    // host may be quiet that long.
    let sets = ["detect.mining_host.quiet_for=60d"];
    let (first, log) = replay(
        &state,
        &dir.path().join("a1.json"),
        &sets,
        "stratum-getwork-gbt.pcap",
    );
    assert!(
        log.contains("not found; starting without saved state"),
        "{log}"
    );
    assert!(log.contains("saved ("), "{log}");
    let h = hosts(&first);
    let opened: Vec<&&Value> = h.iter().filter(|a| action(a) == "opened").collect();
    assert_eq!(opened.len(), 1, "one host, one episode: {h:#?}");
    let id = opened[0]["event"]["id"].as_str().expect("id").to_string();
    assert!(h.iter().all(|a| a["event"]["id"] == id.as_str()));
    assert_eq!(opened[0]["host"]["ip"][0], HOST);
    assert_eq!(opened[0]["source"]["ip"], HOST);
    let last = h.last().expect("host alarm");
    assert_eq!(
        pools(last),
        BTreeSet::from([
            "113.21.199.11:3333".to_string(),
            "74.84.128.158:3333".to_string()
        ]),
        "{last}"
    );
    check_against_members(last, &first, true);
    assert_eq!(last["sensor"]["evidence"]["days"], 1);
    // Neither pool's messages name the coin; the pool's name does (bitminter.com mines
    // Bitcoin only), on each pool.
    for pool in last["sensor"]["evidence"]["pools"]
        .as_array()
        .expect("pools")
    {
        assert_eq!(pool["coins"][0]["coin"], "bitcoin", "{pool}");
        assert!(
            pool["coins"][0]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("bitminter.com")),
            "{pool}"
        );
    }

    // More traffic from the same host, later, with the state file: the same alarm goes on.
    let (second, log) = replay(
        &state,
        &dir.path().join("a2.json"),
        &sets,
        "cryptonote-login-stratum.pcap",
    );
    assert!(
        log.contains("restored") && log.contains("1 mining hosts"),
        "{log}"
    );
    let h = hosts(&second);
    assert!(
        h.iter()
            .all(|a| action(a) != "opened" && a["event"]["id"] == id.as_str()),
        "continued, never opened again: {h:#?}"
    );
    let updated = h
        .iter()
        .rev()
        .find(|a| action(a) == "updated")
        .expect("updated");
    let p = pools(updated);
    assert!(
        p.contains("192.110.160.114:3333") && p.contains("74.84.128.158:3333"),
        "{updated}"
    );
    assert_eq!(
        updated["sensor"]["evidence"]["days"], 2,
        "a new day: {updated}"
    );
    assert_eq!(updated["event"]["start"], opened[0]["event"]["start"]);
    check_against_members(updated, &second, false);
    let before = last["sensor"]["evidence"]["conversations"]
        .as_u64()
        .expect("n");
    let now = updated["sensor"]["evidence"]["conversations"]
        .as_u64()
        .expect("n");
    assert!(now > before, "{before} -> {now}");
}

#[test]
fn a_host_quiet_longer_than_quiet_for_starts_a_new_episode() {
    let dir = TempDir::new("mining-host-quiet");
    let state = dir.path().join("state.bin");
    let (first, _) = replay(
        &state,
        &dir.path().join("a1.json"),
        &[],
        "stratum-getwork-gbt.pcap",
    );
    let old = hosts(&first)[0]["event"]["id"].clone();
    // Five weeks later, with the default quiet_for (3d): the old episode closes, a new opens.
    let (second, _) = replay(
        &state,
        &dir.path().join("a2.json"),
        &[],
        "cryptonote-login-stratum.pcap",
    );
    let h = hosts(&second);
    let closed: Vec<&&Value> = h.iter().filter(|a| action(a) == "closed").collect();
    assert_eq!(closed.len(), 1, "{h:#?}");
    assert_eq!(closed[0]["event"]["id"], old);
    let opened: Vec<&&Value> = h.iter().filter(|a| action(a) == "opened").collect();
    assert_eq!(opened.len(), 1, "{h:#?}");
    assert_ne!(opened[0]["event"]["id"], old);
    assert_eq!(
        pools(h.last().expect("host")),
        BTreeSet::from(["192.110.160.114:3333".to_string()])
    );
    check_against_members(h.last().expect("host"), &second, false);
}

#[test]
fn a_damaged_state_file_is_one_line_and_the_replay_runs_on() {
    let dir = TempDir::new("mining-host-bad");
    let state = dir.write("state.bin", b"SNSTATE\0garbage");
    let (alarms, log) = replay(
        &state,
        &dir.path().join("a.json"),
        &[],
        "stratum-getwork-gbt.pcap",
    );
    let line = log
        .lines()
        .find(|l| l.contains("state file"))
        .expect("a line about the state file");
    assert!(line.ends_with("starting without saved state"), "{log}");
    assert_eq!(
        hosts(&alarms)
            .iter()
            .filter(|a| action(a) == "opened")
            .count(),
        1
    );
}

#[test]
fn a_state_file_another_agent_holds_is_refused_in_one_line_and_left_as_it_was() {
    let dir = TempDir::new("mining-host-locked");
    let state = dir.path().join("state.bin");
    let alarms = dir.path().join("a.json");
    // A first replay writes the state file.
    let (first, _) = replay(&state, &alarms, &[], "stratum-getwork-gbt.pcap");
    assert!(!hosts(&first).is_empty(), "the first replay's host alarm");
    let before = std::fs::read(&state).expect("the first replay's state file");
    // Another agent holds it (the lock an agent takes, taken here by this process).
    let held = sensor_agent::state::lock(&state).expect("lock the state file");
    let run = agent::run(&[
        "replay".into(),
        "--no-progress".into(),
        "--state".into(),
        state.clone().into_os_string(),
        "--alarms".into(),
        dir.path().join("b.json").into_os_string(),
        agent::repo_pcap("cryptonote-login-stratum.pcap").into(),
    ]);
    assert!(!run.success, "a replay sharing a held state file ran");
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("in use by another process"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    assert!(
        errors[0].contains(&state.display().to_string())
            && errors[0].contains("give each agent its own [state] path"),
        "{}",
        run.stderr
    );
    assert_eq!(
        std::fs::read(&state).expect("the state file"),
        before,
        "the refused replay changed the state file"
    );
    // Released (the holder ended): the next replay continues the first one's host alarm.
    drop(held);
    let (second, _) = replay(&state, &alarms, &[], "cryptonote-login-stratum.pcap");
    assert!(
        !hosts(&second).is_empty(),
        "the replay after the release has the host alarm"
    );
}
