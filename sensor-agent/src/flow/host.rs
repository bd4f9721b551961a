//! The host's side of a flow: whether the sensor's host forwarded it or is one of its
//! endpoints, and which process owns the socket (live only, when process attribution runs).
//!
//! Kept on flows and conversations like their tunnel, rendered into flow records and alarms
//! by [`render`]. Every string here came from the kernel or /proc of a process that may be
//! hostile (a comm, an executable path, a cgroup path made of container names): they are put
//! into JSON only as serde_json string values (escaped), and bounded where they were read
//! (`enrich::process`).

use std::sync::Arc;

use serde_json::{json, Value};

/// A socket's owner with the names the enrichment found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Process id (the thread group id).
    pub pid: u32,
    /// The thread that created or connected the socket.
    pub tid: u32,
    /// The process name (`/proc/PID/comm` of the process, else the thread's comm).
    pub name: String,
    /// The thread's comm as the kernel recorded it.
    pub thread_name: String,
    /// `/proc/PID/exe`, when the agent may read it and the process still ran.
    pub executable: Option<String>,
    pub uid: u32,
    pub gid: u32,
    /// The user name of `uid` in this host's user database.
    pub user_name: Option<String>,
    /// The cgroup v2 id (the inode of the cgroup's directory).
    pub cgroup_id: u64,
    /// The cgroup path below the hierarchy's root (`/system.slice/nginx.service`).
    pub cgroup: Option<String>,
    /// The container id parsed from the cgroup path (Docker, containerd, CRI-O, Podman).
    pub container_id: Option<String>,
    /// `docker`, `containerd`, `cri-o` or `podman`, with `container_id`.
    pub container_runtime: Option<&'static str>,
    /// The systemd unit the cgroup belongs to (`nginx.service`), when not a container.
    pub service: Option<String>,
    /// Which hook recorded the owner: `connect` (TCP client, established), `accept` (TCP
    /// server, established), `udp_connect`, `udp_sendmsg`, or `proc` (a socket older than the
    /// agent, found in /proc).
    pub from: &'static str,
}

/// What the host knows of one flow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostSide {
    /// Neither endpoint is an address of the sensor's network namespace: the host routed or
    /// bridged the flow, no socket of it is the host's.
    pub forwarded: bool,
    pub process: Option<Arc<ProcessInfo>>,
}

/// Adds the host fields to a flow record or alarm `out` (an object with `network` and
/// `sensor` objects): `network.forwarded`, and when the owner is known `process.*`
/// (`pid`, `name`, `executable`, `thread.id`, `thread.name`, `cgroup.id`, `cgroup.path`),
/// `user.id`, `user.name`, `group.id`, `container.id`, `container.runtime`, `service.name`,
/// and `sensor.process_from`.
pub fn render(out: &mut Value, host: &HostSide) {
    out["network"]["forwarded"] = json!(host.forwarded);
    let Some(p) = &host.process else { return };
    let mut process = json!({
        "pid": p.pid,
        "name": p.name,
        "thread": { "id": p.tid, "name": p.thread_name },
        "cgroup": { "id": p.cgroup_id },
    });
    if let Some(exe) = &p.executable {
        process["executable"] = json!(exe);
    }
    if let Some(path) = &p.cgroup {
        process["cgroup"]["path"] = json!(path);
    }
    out["process"] = process;
    let mut user = json!({ "id": p.uid.to_string() });
    if let Some(name) = &p.user_name {
        user["name"] = json!(name);
    }
    out["user"] = user;
    out["group"] = json!({ "id": p.gid.to_string() });
    if let Some(id) = &p.container_id {
        let mut c = json!({ "id": id });
        if let Some(rt) = p.container_runtime {
            c["runtime"] = json!(rt);
        }
        out["container"] = c;
    }
    if let Some(unit) = &p.service {
        out["service"] = json!({ "name": unit });
    }
    out["sensor"]["process_from"] = json!(p.from);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_strings_stay_json_values() {
        let p = ProcessInfo {
            pid: 7,
            name: "x\"}\n{\"evil\":1".into(),
            executable: Some("/tmp/a\u{7}\\b".into()),
            cgroup: Some("/docker/\"x".into()),
            from: "connect",
            ..ProcessInfo::default()
        };
        let mut out = json!({ "network": {}, "sensor": {} });
        render(
            &mut out,
            &HostSide {
                forwarded: false,
                process: Some(Arc::new(p)),
            },
        );
        let line = serde_json::to_string(&out).expect("json");
        assert!(!line.contains('\n'));
        let back: Value = serde_json::from_str(&line).expect("parse");
        assert_eq!(back["process"]["name"], "x\"}\n{\"evil\":1");
        assert_eq!(back["process"]["executable"], "/tmp/a\u{7}\\b");
        assert!(back.get("evil").is_none());
        assert_eq!(back["network"]["forwarded"], false);
        assert_eq!(back["user"]["id"], "0");
    }

    #[test]
    fn forwarded_flows_carry_no_process() {
        let mut out = json!({ "network": {}, "sensor": {} });
        render(
            &mut out,
            &HostSide {
                forwarded: true,
                process: None,
            },
        );
        assert_eq!(out["network"]["forwarded"], true);
        assert!(out.get("process").is_none() && out.get("user").is_none());
    }
}
