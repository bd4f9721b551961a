//! Cloud flow logs through the same detectors: `sensor-agent ingest` of flow logs generated
//! from real captures' packets (60 s windows, each cloud's published layout) raises the
//! alarms `sensor-agent replay` of the same capture raises, with durations within one
//! window; intel feeds name pools by address and, through Route 53 Resolver query logs, by
//! domain; bad input is reported, never fatal, and a file that is no log is one error.

use std::{net::IpAddr, path::Path};

use sensor_tests::{
    agent::{self, TempDir},
    flowlogs::{self, opened, Aggregated},
};
use serde_json::Value;

const WINDOW_NS: u64 = 60_000_000_000;
const THRESHOLDS: [&str; 4] = [
    "--set",
    "detect.long_flow.after=1h",
    "--set",
    "detect.quiet_long_flow.after=1h",
];

fn alarms_of(run: &agent::Run) -> Vec<Value> {
    assert!(run.success, "agent failed: {}", run.stderr);
    run.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("alarm JSON ({e}): {l}")))
        .collect()
}

fn ingest(inputs: &[&Path], extra: &[&str]) -> (Vec<Value>, String) {
    let mut args: Vec<std::ffi::OsString> = vec!["ingest".into()];
    args.extend(extra.iter().map(|s| s.into()));
    args.extend(inputs.iter().map(|p| p.as_os_str().to_owned()));
    let run = agent::run(&args);
    (alarms_of(&run), run.stderr)
}

fn replay(capture: &Path, extra: &[&str]) -> Vec<Value> {
    let mut args: Vec<std::ffi::OsString> = vec!["replay".into(), "--no-progress".into()];
    args.extend(extra.iter().map(|s| s.into()));
    args.push(capture.as_os_str().to_owned());
    alarms_of(&agent::run(&args))
}

/// Every format generated from `agg`, written into `dir`: (telemetry name, path). AWS v2 in
/// the S3 export layout (the directory is the input), gzip with its header line.
fn every_format(agg: &Aggregated, dir: &TempDir) -> Vec<(&'static str, std::path::PathBuf)> {
    let s3 = dir
        .path()
        .join("s3/AWSLogs/123456789012/vpcflowlogs/eu-west-1/2021/06/10");
    std::fs::create_dir_all(&s3).expect("S3 layout");
    std::fs::write(
        s3.join("123456789012_vpcflowlogs_eu-west-1_fl-0a1b2c3d_20210610T1340Z_5f3a.log.gz"),
        agg.aws_v2_gzip(),
    )
    .expect("write");
    // An S3 listing also holds files that are no log: skipped by name.
    std::fs::write(dir.path().join("s3/AWSLogs/README.md"), "exported").expect("write");
    vec![
        ("aws-vpc", dir.path().join("s3")),
        (
            "aws-vpc",
            dir.write("custom-v5.log", agg.aws_custom_v5().as_bytes()),
        ),
        (
            "azure-vnet",
            dir.write("PT1H.json", agg.azure_vnet_v4().as_bytes()),
        ),
        (
            "gcp-vpc",
            dir.write("vpc_flows.json", agg.gcp_json_lines().as_bytes()),
        ),
    ]
}

#[test]
fn every_format_raises_the_captures_long_and_quiet_long_alarms() {
    let capture = agent::repo_pcap("quiet-long-tcp.pcap");
    let rules = ["long_flow", "quiet_long_flow"];
    let want_alarms = replay(&capture, &THRESHOLDS);
    let want = opened(&want_alarms, &rules);
    assert_eq!(want.len(), 2, "the capture's replay: {want_alarms:#?}");
    let dir = TempDir::new("ingest-long");
    let agg = flowlogs::aggregate(&capture, WINDOW_NS);
    for (name, input) in every_format(&agg, &dir) {
        let (alarms, stderr) = ingest(&[&input], &THRESHOLDS);
        flowlogs::assert_like_replay(name, &alarms, &want_alarms, &rules, WINDOW_NS, &stderr);
        assert!(
            stderr.contains("payload rules: not applicable"),
            "{name}: payload rules must say they did not run: {stderr}"
        );
        if name == "aws-vpc" && input.is_dir() {
            assert!(stderr.contains("1 files skipped"), "{stderr}");
        }
    }
}

/// A feed directory listing `entries`, and the `--set` that configures it.
fn feed(dir: &TempDir, entries: &str) -> String {
    let feeds = dir.path().join("feeds");
    std::fs::create_dir_all(&feeds).expect("feed dir");
    std::fs::write(feeds.join("pools.txt"), entries).expect("feed");
    format!("intel.directory={:?}", feeds.display().to_string())
}

const POOL: &str = "74.84.128.158";

fn infra(alarms: &[Value]) -> Vec<&Value> {
    alarms
        .iter()
        .filter(|a| a["rule"]["id"] == "mining_infrastructure" && a["event"]["action"] == "opened")
        .collect()
}

#[test]
fn a_stratum_pool_address_in_a_feed_raises_mining_infrastructure_from_every_format() {
    let capture = agent::repo_pcap("stratum-getwork-gbt.pcap");
    let dir = TempDir::new("ingest-intel");
    let set = feed(&dir, &format!("# pools\n{POOL}\n"));
    let agg = flowlogs::aggregate(&capture, WINDOW_NS);
    for (name, input) in every_format(&agg, &dir) {
        let (alarms, stderr) = ingest(&[&input], &["--set", &set]);
        let hits = infra(&alarms);
        assert!(!hits.is_empty(), "{name}: {stderr}\n{alarms:#?}");
        for a in hits {
            assert_eq!(a["destination"]["ip"], POOL, "{name}: {a}");
            assert_eq!(a["destination"]["port"], 3333, "{name}: {a}");
            assert_eq!(a["sensor"]["evidence"]["matched_by"], "address", "{a}");
            assert_eq!(a["sensor"]["telemetry"], name, "{a}");
        }
    }
}

#[test]
fn a_route53_answer_for_a_listed_pool_domain_names_it_on_the_flows_to_that_address() {
    let capture = agent::repo_pcap("stratum-getwork-gbt.pcap");
    let dir = TempDir::new("ingest-r53");
    let set = feed(&dir, "# pools\nstratum-pool.example\n");
    let agg = flowlogs::aggregate(&capture, WINDOW_NS);
    let flows = dir.write("flows.log.gz", &agg.aws_v2_gzip());
    let pool: IpAddr = POOL.parse().expect("ip");
    let client: IpAddr = "10.0.2.15".parse().expect("ip");
    let r53 = flowlogs::route53_answer(
        "eu.stratum-pool.example",
        pool,
        client,
        agg.first_ns.saturating_sub(2_000_000_000),
    );
    let dns = dir.write("resolver-query.log", format!("{r53}\n").as_bytes());

    // Without the query log the address alone is not listed: nothing.
    let (alarms, stderr) = ingest(&[&flows], &["--set", &set]);
    assert!(infra(&alarms).is_empty(), "{stderr}\n{alarms:#?}");

    let (alarms, stderr) = ingest(&[&dns, &flows], &["--set", &set]);
    let hits = infra(&alarms);
    assert!(!hits.is_empty(), "{stderr}\n{alarms:#?}");
    for a in hits {
        assert_eq!(a["destination"]["ip"], POOL, "{a}");
        let ev = &a["sensor"]["evidence"];
        assert_eq!(ev["domain"], "eu.stratum-pool.example", "{a}");
        assert_eq!(ev["entry"], "stratum-pool.example", "{a}");
        assert_eq!(ev["matched_by"], "dns_answer", "{a}");
    }
    assert!(stderr.contains("1 DNS log entries"), "{stderr}");
}

#[test]
fn malformed_records_are_reported_once_per_file_and_a_non_log_is_one_error() {
    let dir = TempDir::new("ingest-bad");
    let good = "2 123456789012 eni-1 10.0.0.5 203.0.113.7 50000 3333 6 10 800 1700000000 1700000060 ACCEPT OK";
    let text = format!(
        "{}\n{good}\n2 123456789012 eni-1 10.0.0.5 203.0.113.7 50000 3333 6 ten 800 1700000060 1700000120 ACCEPT OK\n{good}\n2 123 eni-1 10.0.0.5\n",
        flowlogs_header()
    );
    let f = dir.write("bad.log", text.as_bytes());
    let run = agent::run(&[std::ffi::OsStr::new("ingest"), f.as_os_str()]);
    assert!(
        run.success,
        "malformed records are not fatal: {}",
        run.stderr
    );
    let warnings: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", run.stderr);
    assert!(
        warnings[0].contains(&format!("{}:3:", f.display()))
            && warnings[0].contains("2 malformed aws-vpc records"),
        "{}",
        warnings[0]
    );
    assert!(
        run.stderr.contains("2 malformed records skipped"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("2 flow records"), "{}", run.stderr);

    let not_log = dir.write("notes.txt", b"Dear diary,\ntoday I mined nothing.\n");
    let run = agent::run(&[
        std::ffi::OsStr::new("ingest"),
        f.as_os_str(),
        not_log.as_os_str(),
    ]);
    assert!(!run.success);
    assert_eq!(run.error_lines().len(), 1, "{}", run.stderr);
    assert!(
        run.error_lines()[0].contains("notes.txt: not a flow log or DNS query log"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.lines().count(), 1, "one line: {}", run.stderr);
}

fn flowlogs_header() -> &'static str {
    "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status"
}

/// The published-layout samples of `tests/data/flowlogs` (sources in its README).
fn sample(name: &str) -> std::path::PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/flowlogs")
        .join(name);
    assert!(p.is_file(), "sample {} is missing", p.display());
    p
}

#[test]
fn the_published_samples_ingest_cleanly() {
    let dns = [
        sample("route53-resolver-query.log"),
        sample("gcp-cloud-dns.json"),
    ];
    // (file, flow records, flows, what the summary must also say)
    let cases = [
        (
            "aws-vpc-default.log",
            2,
            2,
            "1 NODATA records; 1 SKIPDATA records",
        ),
        ("aws-vpc-custom-v5.log", 2, 1, "aws-vpc"),
        ("azure-vnet-v4.json", 4, 2, "azure-vnet"),
        ("azure-nsg-v2.json", 4, 3, "2 records of denied traffic"),
        ("gcp-vpc-flows.json", 2, 1, "gcp-vpc"),
    ];
    for (file, records, flows, note) in cases {
        let f = sample(file);
        let run = agent::run(&[
            std::ffi::OsStr::new("ingest"),
            dns[0].as_os_str(),
            dns[1].as_os_str(),
            f.as_os_str(),
        ]);
        assert!(run.success, "{file}: {}", run.stderr);
        assert!(!run.stderr.contains("warning"), "{file}: {}", run.stderr);
        let want = format!("{records} flow records stitched into {flows} flows");
        assert!(
            run.stderr.contains(&want),
            "{file}: want {want}: {}",
            run.stderr
        );
        assert!(
            run.stderr.contains(note),
            "{file}: want {note}: {}",
            run.stderr
        );
        assert!(
            run.stderr
                .contains("3 DNS log entries (1 without an address)"),
            "{file}: {}",
            run.stderr
        );
    }
}

/// One TCP connection as AWS v2 records (one per direction, in one 60 s window): `client`
/// port `cport` to `server:port` at `t` seconds.
fn aws_connection(client: &str, cport: u16, server: &str, port: u16, t: u64) -> String {
    format!(
        "2 123456789012 eni-0a1b2c3d {client} {server} {cport} {port} 6 12 1480 {t} {end} ACCEPT OK\n\
         2 123456789012 eni-0a1b2c3d {server} {client} {port} {cport} 6 10 2210 {t} {end} ACCEPT OK\n",
        end = t + 60
    )
}

fn opened_of<'a>(alarms: &'a [Value], rule: &str) -> Vec<&'a Value> {
    alarms
        .iter()
        .filter(|a| a["rule"]["id"] == rule && a["event"]["action"] == "opened")
        .collect()
}

/// Flow logs carry no payload, so a node's peer protocol cannot be identified: a flow to a
/// node's own peer port (8333, Bitcoin) whose server is on an intel feed raises
/// `blockchain_p2p`, saying it matched by port and intel; the same port to an unlisted server
/// raises nothing, and a listed server on another port only `mining_infrastructure`.
#[test]
fn blockchain_p2p_from_flow_logs_needs_the_peer_port_and_an_intel_listing() {
    let dir = TempDir::new("ingest-p2p");
    let set = feed(&dir, "# nodes\n198.51.100.20\n");
    let t0 = 1_700_000_000;
    let mut log = format!("{}\n", flowlogs_header());
    log.push_str(&aws_connection(
        "10.0.2.15",
        50000,
        "198.51.100.20",
        8333,
        t0,
    ));
    log.push_str(&aws_connection(
        "10.0.2.15",
        50001,
        "198.51.100.21",
        8333,
        t0,
    ));
    log.push_str(&aws_connection(
        "10.0.2.16",
        50002,
        "198.51.100.20",
        443,
        t0,
    ));
    let input = dir.write("p2p.log", log.as_bytes());
    let (alarms, stderr) = ingest(&[&input], &["--set", &set]);
    let p2p = opened_of(&alarms, "blockchain_p2p");
    assert_eq!(p2p.len(), 1, "{stderr}\n{alarms:#?}");
    let a = p2p[0];
    assert_eq!(a["destination"]["ip"], "198.51.100.20", "{a}");
    assert_eq!(a["destination"]["port"], 8333, "{a}");
    assert_eq!(a["source"]["ip"], "10.0.2.15", "{a}");
    let ev = &a["sensor"]["evidence"];
    assert_eq!(ev["matched_by"], "port_and_intel", "{a}");
    assert_eq!(ev["network"], "bitcoin", "{a}");
    assert_eq!(ev["entry"], "198.51.100.20", "{a}");
    assert_eq!(a["sensor"]["telemetry"], "aws-vpc", "{a}");
    // Both flows to the listed server are known infrastructure, whatever the port.
    assert_eq!(
        opened_of(&alarms, "mining_infrastructure").len(),
        2,
        "{alarms:#?}"
    );
}

/// Periodicity across connections works on records as on packets: a host reconnecting to
/// the same server every 5 minutes (a new client port each time, each connection its own
/// pair of records) raises `periodic_flow`; the same number of connections at irregular
/// times does not.
#[test]
fn periodic_reconnects_are_found_in_flow_logs() {
    let dir = TempDir::new("ingest-periodic");
    let t0 = 1_700_000_000;
    let mut regular = format!("{}\n", flowlogs_header());
    let mut irregular = regular.clone();
    let mut rng = fastrand::Rng::with_seed(7);
    let mut t_irregular = t0;
    for i in 0..24u16 {
        regular.push_str(&aws_connection(
            "10.0.2.15",
            41000 + i,
            "203.0.113.9",
            8080,
            t0 + u64::from(i) * 300,
        ));
        t_irregular += rng.u64(60..1800);
        irregular.push_str(&aws_connection(
            "10.0.2.15",
            42000 + i,
            "203.0.113.9",
            8080,
            t_irregular,
        ));
    }
    let (alarms, stderr) = ingest(&[&dir.write("regular.log", regular.as_bytes())], &[]);
    let hits = opened_of(&alarms, "periodic_flow");
    assert_eq!(hits.len(), 1, "{stderr}\n{alarms:#?}");
    assert_eq!(hits[0]["destination"]["ip"], "203.0.113.9", "{}", hits[0]);
    assert_eq!(hits[0]["source"]["ip"], "10.0.2.15", "{}", hits[0]);
    let (alarms, stderr) = ingest(&[&dir.write("irregular.log", irregular.as_bytes())], &[]);
    assert!(
        opened_of(&alarms, "periodic_flow").is_empty(),
        "{stderr}\n{alarms:#?}"
    );
}
