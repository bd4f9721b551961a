//! Cloud DNS query logs: the resolver's own record of a query and its answers, so domain
//! intelligence works where there are no packets to read DNS from.
//!
//! - Route 53 Resolver query logs (JSON lines), field definitions:
//!   <https://docs.aws.amazon.com/Route53/latest/DeveloperGuide/resolver-query-logs-format.html>:
//!   `query_timestamp`, `query_name`, `query_type`, `rcode`, `answers[]` (`Rdata`, `Type`,
//!   `Class`), `srcaddr`, `srcids.instance`. Answers are logged in order without owner names
//!   or TTLs: each record's owner is the next name on the CNAME chain from the question, and
//!   its TTL is `ingest.dns_ttl`.
//! - Cloud DNS query logs as Cloud Logging exports them (JSON lines), field definitions:
//!   <https://cloud.google.com/dns/docs/monitoring#dns-log-record-format>: `jsonPayload` with
//!   `queryName`, `queryType`, `responseCode`, `sourceIP`, and `rdata`, the answers in zone
//!   file form (`name TTL class type data`, one per line), TTLs included.
//!
//! A logged answer was seen by the resolver that answered it, so unlike an answer on the wire
//! it needs no matching query: it binds as the binder binds a matched answer
//! ([`crate::enrich::dns`]). Entries that answer no address (errors, other types) are counted.

use std::net::IpAddr;

use serde::Deserialize;

use crate::source::{
    records::{gcp::json_entries, rfc3339_ns, shown, FileCounts},
    Answer, AnswerData, Resolution,
};

/// Answer records read from one entry at most (as many as the wire parser reads).
pub const MAX_ANSWERS: usize = 128;

/// Which DNS log a file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsLog {
    Route53,
    CloudDns,
}

impl DnsLog {
    pub fn name(self) -> &'static str {
        match self {
            DnsLog::Route53 => "route53-resolver",
            DnsLog::CloudDns => "gcp-cloud-dns",
        }
    }
}

#[derive(Deserialize)]
struct Route53 {
    query_timestamp: String,
    query_name: String,
    rcode: Option<String>,
    #[serde(default)]
    answers: Vec<Route53Answer>,
    srcaddr: Option<String>,
}

#[derive(Deserialize)]
struct Route53Answer {
    #[serde(rename = "Rdata")]
    rdata: String,
    #[serde(rename = "Type")]
    rtype: String,
}

#[derive(Deserialize)]
struct CloudDns {
    #[serde(rename = "jsonPayload")]
    payload: CloudDnsPayload,
    timestamp: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CloudDnsPayload {
    query_name: String,
    response_code: Option<String>,
    #[serde(rename = "sourceIP")]
    source_ip: Option<String>,
    rdata: Option<String>,
}

/// Which DNS log the first entry of a JSON-lines text is, if any.
pub fn detect(first: &serde_json::Value) -> Option<DnsLog> {
    if first.get("query_name").is_some() && first.get("query_timestamp").is_some() {
        Some(DnsLog::Route53)
    } else if first
        .get("jsonPayload")
        .is_some_and(|p| p.get("queryName").is_some())
    {
        Some(DnsLog::CloudDns)
    } else {
        None
    }
}

/// An answer's data by its type; `None` for types that bind nothing.
fn answer_data(rtype: &str, data: &str) -> Result<Option<AnswerData>, String> {
    match rtype.to_ascii_uppercase().as_str() {
        "A" | "AAAA" => data
            .parse::<IpAddr>()
            .map(|ip| Some(AnswerData::Addr(ip)))
            .map_err(|_| format!("{rtype} record with data {}", shown(data))),
        "CNAME" => Ok(Some(AnswerData::Alias(data.to_string()))),
        _ => Ok(None),
    }
}

fn push(r: Resolution, rcode: Option<&str>, counts: &mut FileCounts, out: &mut Vec<Resolution>) {
    counts.records += 1;
    let ok = rcode.is_none_or(|c| c == "NOERROR");
    if ok
        && r.answers
            .iter()
            .any(|a| matches!(a.data, AnswerData::Addr(_)))
    {
        out.push(r);
    } else {
        counts.dns_unbound += 1;
    }
}

/// Parses a whole file of `kind`; `default_ttl` for answers logged without one.
pub fn parse(
    kind: DnsLog,
    text: &str,
    default_ttl: u32,
    counts: &mut FileCounts,
    out: &mut Vec<Resolution>,
) -> Option<()> {
    match kind {
        DnsLog::Route53 => json_entries::<Route53>(text, counts, |e, counts| {
            let mut answers = Vec::new();
            for a in e.answers.iter().take(MAX_ANSWERS) {
                if let Some(data) = answer_data(&a.rtype, &a.rdata)? {
                    answers.push(Answer {
                        owner: None,
                        ttl: default_ttl,
                        data,
                    });
                }
            }
            let r = Resolution {
                ts_ns: rfc3339_ns(&e.query_timestamp)?,
                client: e.srcaddr.as_deref().and_then(|s| s.parse().ok()),
                name: e.query_name,
                answers,
            };
            push(r, e.rcode.as_deref(), counts, out);
            Ok(())
        }),
        DnsLog::CloudDns => json_entries::<CloudDns>(text, counts, |e, counts| {
            let p = e.payload;
            let mut answers = Vec::new();
            for line in p.rdata.as_deref().unwrap_or("").lines().take(MAX_ANSWERS) {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.is_empty() {
                    continue;
                }
                if f.len() < 5 {
                    return Err(format!("rdata line {}", shown(line)));
                }
                let ttl: u32 = f[1]
                    .parse()
                    .map_err(|_| format!("rdata TTL {}", shown(f[1])))?;
                if let Some(data) = answer_data(f[3], f[4])? {
                    answers.push(Answer {
                        owner: Some(f[0].to_string()),
                        ttl,
                        data,
                    });
                }
            }
            let r = Resolution {
                ts_ns: rfc3339_ns(e.timestamp.as_deref().ok_or("no timestamp")?)?,
                client: p.source_ip.as_deref().and_then(|s| s.parse().ok()),
                name: p.query_name,
                answers,
            };
            push(r, p.response_code.as_deref(), counts, out);
            Ok(())
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shaped like the published example (resolver-query-logs-example-json), answering A.
    const ROUTE53: &str = r#"{"version":"1.100000","account_id":"111122223333","region":"us-east-1","vpc_id":"vpc-7example","query_timestamp":"2021-02-04T17:51:55Z","query_name":"eu.pool.example.","query_type":"A","query_class":"IN","rcode":"NOERROR","answers":[{"Rdata":"pool-eu.example.","Type":"CNAME","Class":"IN"},{"Rdata":"203.0.113.9","Type":"A","Class":"IN"}],"srcaddr":"10.0.0.5","srcport":"56067","transport":"UDP","srcids":{"instance":"i-0d15cd0d3example"}}"#;

    const CLOUD_DNS: &str = r#"{"jsonPayload":{"@type":"type.googleapis.com/cloud.dns.logging.v1.LogEntry","authAnswer":false,"destinationIP":"169.254.169.254","protocol":"UDP","queryName":"eu.pool.example.","queryType":"A","rdata":"eu.pool.example.\t300\tIN\ta\t203.0.113.9","responseCode":"NOERROR","sourceIP":"10.128.0.5"},"timestamp":"2024-03-01T10:00:00Z"}"#;

    #[test]
    fn route53_answers_keep_their_order_and_take_the_default_ttl() {
        let v: serde_json::Value = serde_json::from_str(ROUTE53).expect("json");
        assert_eq!(detect(&v), Some(DnsLog::Route53));
        let (mut c, mut out) = (FileCounts::default(), Vec::new());
        let nx = ROUTE53.replace("NOERROR", "NXDOMAIN");
        let text = format!("{ROUTE53}\n{nx}\n");
        parse(DnsLog::Route53, &text, 120, &mut c, &mut out).expect("entries");
        assert_eq!(out.len(), 1);
        assert_eq!((c.records, c.dns_unbound), (2, 1));
        let r = &out[0];
        assert_eq!(r.name, "eu.pool.example.");
        assert_eq!(r.client, Some("10.0.0.5".parse().expect("ip")));
        assert_eq!(
            r.answers[1],
            Answer {
                owner: None,
                ttl: 120,
                data: AnswerData::Addr("203.0.113.9".parse().expect("ip"))
            }
        );
    }

    #[test]
    fn cloud_dns_rdata_gives_owners_and_ttls() {
        let v: serde_json::Value = serde_json::from_str(CLOUD_DNS).expect("json");
        assert_eq!(detect(&v), Some(DnsLog::CloudDns));
        let (mut c, mut out) = (FileCounts::default(), Vec::new());
        parse(DnsLog::CloudDns, CLOUD_DNS, 120, &mut c, &mut out).expect("entries");
        assert_eq!(out[0].answers[0].ttl, 300);
        assert_eq!(out[0].answers[0].owner.as_deref(), Some("eu.pool.example."));
        let bad = CLOUD_DNS.replace("\\t300", "\\tlots");
        parse(DnsLog::CloudDns, &bad, 120, &mut c, &mut out).expect("entries");
        assert_eq!(c.malformed, 1);
    }
}
