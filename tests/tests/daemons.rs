//! Real node software as the mining peers: Debian's `litecoind` and `monerod`, in regtest, in
//! one network namespace, answering a client's mining RPCs from another while the live sensor
//! watches (XDP + TC egress on the client's side). The alarms must name the right coin, from
//! what the traffic says: Litecoin's `mweb` getblocktemplate rule and its nodes' user agent on
//! the regtest magic it shares with Bitcoin, and the Monero wallet address (its checksum) in
//! monerod's `get_block_template`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use sensor_tests::{
    agent::{agent_bin, TempDir},
    kernel::require_bpf,
    netns::NetnsPair,
    wait::wait_until,
};
use serde_json::Value;

/// Monero's general fund donation address (a real mainnet address; monerod's regtest takes
/// mainnet addresses).
const MONERO_WALLET: &str = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A";

fn require(program: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()));
    assert!(
        found,
        "{program} is not installed: `cargo xtask setup` installs it (Debian package {})",
        match program {
            "litecoind" | "litecoin-cli" => "litecoind",
            "monerod" => "monero",
            other => other,
        }
    );
}

/// The sensor on the client's side of `pair`, writing alarms to `dir/alarms.json`.
fn start_sensor(pair: &mut NetnsPair, dir: &Path) -> u32 {
    let log = dir.join("agent.log");
    let args: Vec<String> = vec![
        "run".into(),
        "--iface".into(),
        pair.veth_a.clone(),
        "--egress".into(),
        "--alarms".into(),
        dir.join("alarms.json").display().to_string(),
        "--set".into(),
        format!("state.path={}", dir.join("state.bin").display()),
        "--set".into(),
        "sensor.pin_path=".into(),
        "--set".into(),
        "sensor.poll_interval=500ms".into(),
    ];
    let a = pair.a.clone();
    let pid = pair
        .spawn_net_only(
            &a,
            &agent_bin(),
            &args,
            Stdio::null(),
            Stdio::from(fs::File::create(&log).expect("agent log")),
        )
        .unwrap_or_else(|e| panic!("kernel test cannot run: {e}"));
    wait_until(Duration::from_secs(30), "the sensor to attach", || {
        fs::read_to_string(&log).is_ok_and(|t| t.contains("watching"))
    })
    .unwrap_or_else(|e| panic!("{e}: {}", fs::read_to_string(&log).unwrap_or_default()));
    pid
}

/// Stops the sensor (it polls once more) and reads its alarms.
fn stop_sensor(pair: &mut NetnsPair, pid: u32, dir: &Path) -> Vec<Value> {
    pair.stop(pid);
    fs::read_to_string(dir.join("alarms.json"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("alarm {l}: {e}")))
        .collect()
}

/// `program args` inside namespace `ns`, to completion.
fn run_in(ns: &str, program: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns, program])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} in {ns}: {e}"))
}

/// A JSON-RPC call over HTTP with curl from namespace `ns`; the parsed reply.
fn json_rpc(ns: &str, url: &str, user: Option<&str>, body: &str) -> Option<Value> {
    let mut args = vec![
        "-s",
        "--max-time",
        "10",
        "-H",
        "content-type: application/json",
    ];
    if let Some(u) = user {
        args.extend(["--user", u]);
    }
    args.extend(["--data-binary", body, url]);
    let out = run_in(ns, "curl", &args);
    serde_json::from_slice(&out.stdout).ok()
}

fn opened<'a>(alarms: &'a [Value], rule: &str, port: u16) -> Vec<&'a Value> {
    alarms
        .iter()
        .filter(|a| {
            a["rule"]["id"] == rule
                && a["event"]["action"] == "opened"
                && a["destination"]["port"] == port
        })
        .collect()
}

struct Node {
    datadir: PathBuf,
}

impl Node {
    fn new(dir: &Path, name: &str) -> Node {
        let datadir = dir.join(name);
        fs::create_dir_all(&datadir).expect("data dir");
        Node { datadir }
    }
}

#[test]
fn kernel_litecoind_mining_rpc_and_p2p_name_litecoin() {
    require_bpf();
    for p in ["litecoind", "litecoin-cli", "curl"] {
        require(p);
    }
    let dir = TempDir::new("ltcd");
    let mut pair =
        NetnsPair::create("ltc").unwrap_or_else(|e| panic!("kernel test cannot run: {e}"));
    let (server, client) = (pair.addr_b_str(), pair.addr_a_str());
    let sensor = start_sensor(&mut pair, dir.path());

    let (rpc_port, p2p_port) = ("19443", "19444");
    let pool = Node::new(dir.path(), "pool-node");
    let b = pair.b.clone();
    let pool_args = [
        "-regtest".to_string(),
        format!("-datadir={}", pool.datadir.display()),
        "-server".into(),
        "-listen".into(),
        format!("-bind={server}:{p2p_port}"),
        format!("-rpcbind={server}:{rpc_port}"),
        format!("-rpcallowip={client}/32"),
        "-rpcuser=miner".into(),
        "-rpcpassword=regtest".into(),
        "-disablewallet".into(),
        "-printtoconsole=0".into(),
    ];
    let pool_args: Vec<&str> = pool_args.iter().map(String::as_str).collect();
    pair.spawn_in(&b, "litecoind", &pool_args, Stdio::null(), Stdio::null())
        .expect("start litecoind");
    let url = format!("http://{server}:{rpc_port}/");
    let a = pair.a.clone();
    wait_until(Duration::from_secs(60), "litecoind's RPC", || {
        json_rpc(
            &a,
            &url,
            Some("miner:regtest"),
            r#"{"jsonrpc":"1.0","id":"up","method":"getblockchaininfo","params":[]}"#,
        )
        .is_some_and(|v| v["result"]["chain"] == "regtest")
    })
    .unwrap_or_else(|e| panic!("{e}"));

    // The miner's template request, with the rules Litecoin requires.
    // litecoind serves templates only out of initial sync (a block of recent time) and with a
    // peer: one block mined to an anyone-can-spend script, and a second node peering.
    let mined = json_rpc(
        &a,
        &url,
        Some("miner:regtest"),
        r#"{"jsonrpc":"1.0","id":"gen","method":"generatetodescriptor","params":[1,"raw(51)"]}"#,
    );
    assert!(
        mined.as_ref().is_some_and(|m| m["result"].is_array()),
        "litecoind mined no block: {mined:?}"
    );
    let peer = Node::new(dir.path(), "peer-node");
    let peer_args = [
        "-regtest".to_string(),
        format!("-datadir={}", peer.datadir.display()),
        format!("-connect={server}:{p2p_port}"),
        "-listen=0".into(),
        "-server=0".into(),
        "-disablewallet".into(),
        "-printtoconsole=0".into(),
    ];
    let peer_args: Vec<&str> = peer_args.iter().map(String::as_str).collect();
    pair.spawn_in(&a, "litecoind", &peer_args, Stdio::null(), Stdio::null())
        .expect("start the peer litecoind");
    wait_until(Duration::from_secs(60), "the nodes to peer", || {
        json_rpc(
            &a,
            &url,
            Some("miner:regtest"),
            r#"{"jsonrpc":"1.0","id":"p","method":"getconnectioncount","params":[]}"#,
        )
        .is_some_and(|v| v["result"].as_u64().is_some_and(|n| n >= 1))
    })
    .unwrap_or_else(|e| panic!("{e}"));

    // The miner's template request, with the rules Litecoin requires.
    let template = json_rpc(
        &a,
        &url,
        Some("miner:regtest"),
        r#"{"jsonrpc":"1.0","id":"gbt","method":"getblocktemplate","params":[{"rules":["mweb","segwit"]}]}"#,
    )
    .expect("a getblocktemplate reply");
    assert!(
        template["result"]["previousblockhash"].is_string(),
        "litecoind answered no template: {template}"
    );

    let alarms = stop_sensor(&mut pair, sensor, dir.path());
    let log = fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    let mining = opened(&alarms, "mining_protocol", 19443);
    assert_eq!(mining.len(), 1, "{log}\n{alarms:#?}");
    let ev = &mining[0]["sensor"]["evidence"];
    assert_eq!(ev["protocol"], "getblocktemplate", "{}", mining[0]);
    assert_eq!(ev["coin"], "litecoin", "{}", mining[0]);
    assert_eq!(mining[0]["source"]["ip"], client, "{}", mining[0]);
    let p2p = opened(&alarms, "blockchain_p2p", 19444);
    assert_eq!(p2p.len(), 1, "{log}\n{alarms:#?}");
    let ev = &p2p[0]["sensor"]["evidence"];
    assert_eq!(ev["coin"], "litecoin", "{}", p2p[0]);
    assert!(
        ev["coin_reason"]
            .as_str()
            .is_some_and(|r| r.contains("/LitecoinCore:")),
        "{}",
        p2p[0]
    );
}

#[test]
fn kernel_monerod_block_template_for_a_wallet_names_monero() {
    require_bpf();
    for p in ["monerod", "curl"] {
        require(p);
    }
    let dir = TempDir::new("xmrd");
    let mut pair =
        NetnsPair::create("xmr").unwrap_or_else(|e| panic!("kernel test cannot run: {e}"));
    let (server, client) = (pair.addr_b_str(), pair.addr_a_str());
    let sensor = start_sensor(&mut pair, dir.path());

    let node = Node::new(dir.path(), "monerod");
    let b = pair.b.clone();
    let args = [
        "--regtest".to_string(),
        "--offline".into(),
        "--fixed-difficulty=1".into(),
        format!("--data-dir={}", node.datadir.display()),
        format!("--rpc-bind-ip={server}"),
        "--rpc-bind-port=18081".into(),
        "--confirm-external-bind".into(),
        "--non-interactive".into(),
        "--no-igd".into(),
        "--log-level=0".into(),
        format!("--log-file={}", dir.path().join("monerod.log").display()),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    pair.spawn_in(&b, "monerod", &args, Stdio::null(), Stdio::null())
        .expect("start monerod");
    let url = format!("http://{server}:18081/json_rpc");
    let a = pair.a.clone();
    wait_until(Duration::from_secs(120), "monerod's RPC", || {
        json_rpc(
            &a,
            &url,
            None,
            r#"{"jsonrpc":"2.0","id":"0","method":"get_info"}"#,
        )
        .is_some_and(|v| v["result"]["status"] == "OK")
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {}",
            fs::read_to_string(dir.path().join("monerod.log")).unwrap_or_default()
        )
    });
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":"0","method":"get_block_template","params":{{"wallet_address":"{MONERO_WALLET}","reserve_size":60}}}}"#
    );
    let template = json_rpc(&a, &url, None, &body).expect("a get_block_template reply");
    assert!(
        template["result"]["blocktemplate_blob"].is_string(),
        "monerod answered no template: {template}"
    );

    let alarms = stop_sensor(&mut pair, sensor, dir.path());
    let log = fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    let mining = opened(&alarms, "mining_protocol", 18081);
    assert_eq!(mining.len(), 1, "{log}\n{alarms:#?}");
    let a = mining[0];
    let ev = &a["sensor"]["evidence"];
    assert_eq!(ev["protocol"], "cryptonote-daemon", "{a}");
    assert_eq!(ev["coin"], "monero", "{a}");
    assert!(
        ev["coin_reason"]
            .as_str()
            .is_some_and(|r| r.contains("Keccak checksum valid")),
        "{a}"
    );
    assert_eq!(ev["confirmed_by_server"], true, "{a}");
    assert_eq!(a["source"]["ip"], client, "{a}");
}
