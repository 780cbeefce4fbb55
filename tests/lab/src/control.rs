//! The supervisor's control protocol: one JSON request and one JSON response per line over
//! the unix socket `DIR/supervisor.sock`, used by `lab status|fault|down`, the node shims
//! (systemctl, reboot) and the Rust API.

use crate::error::LabError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Services the supervisor runs per node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    Sshd,
    Etcd,
    Kubelet,
    /// The static-pod stand-ins of a master (apiserver); restarted with the kubelet.
    Apiserver,
}

impl Unit {
    /// Units `systemctl` may name (sshd stays under the lab's control, as on AKS Engine nodes
    /// where the tool never touches it).
    pub fn parse_systemd(name: &str) -> Option<Unit> {
        match name.trim_end_matches(".service") {
            "kubelet" => Some(Unit::Kubelet),
            "etcd" => Some(Unit::Etcd),
            "ssh" | "sshd" => Some(Unit::Sshd),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SystemctlAction {
    Start,
    Stop,
    Restart,
    IsActive,
}

/// Faults a test or a demo can inject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "fault")]
pub enum Fault {
    /// Power the node off (all services and sshd down) until `StartNode`.
    StopNode { node: String },
    StartNode { node: String },
    /// Reboot: down for the reboot delay, then back up reading certs from disk.
    RebootNode { node: String },
    /// Take the node off the network (its veth goes down) until `RestoreNetwork`.
    CutNetwork { node: String },
    RestoreNetwork { node: String },
    /// Make reboots take this long (all nodes when `node` is None).
    RebootDelay { node: Option<String>, millis: u64 },
    /// Make `systemctl restart` keep the unit down this long before it starts again (all
    /// nodes when `node` is None), as real etcd, kubelet and static pods take seconds to tens
    /// of seconds to come back; the default 0 restarts at once.
    RestartDelay { node: Option<String>, millis: u64 },
    StopEtcd { node: String },
    StartEtcd { node: String },
    /// New SSH host key for the node (known_hosts is left stale on purpose).
    ReplaceHostKey { node: String },
    /// Remount the node's /etc/kubernetes read-only (or writable again).
    ReadOnlyKubernetes { node: String },
    WritableKubernetes { node: String },
    /// Make the ARM stand-in answer matching requests with an error (429, 500...).
    ArmError { rule: crate::arm::FaultRule },
    /// Remove every injected ARM error.
    ClearArmErrors,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "op")]
pub enum Request {
    Status,
    Down,
    Systemctl { node: String, action: SystemctlAction, unit: String },
    Reboot { node: String },
    Fault(Fault),
    /// Every call the ARM stand-in answered so far.
    ArmCalls,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Power {
    Running,
    Stopped,
    Rebooting,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub ip: String,
    pub role: crate::spec::Role,
    pub power: Power,
    pub network_up: bool,
    /// Whether each unit is meant to run and whether its process is alive.
    pub units: BTreeMap<Unit, UnitStatus>,
    /// sshd answered on port 22 from the operator side.
    pub ssh_reachable: bool,
    /// etcd answered its health endpoint with the cluster's client cert (masters only).
    pub etcd_healthy: Option<bool>,
    /// The apiserver at the master's own address answered `/readyz` ok (masters only).
    #[serde(default)]
    pub apiserver_ready: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitStatus {
    pub wanted: bool,
    pub active: bool,
    pub restarts: u32,
    /// The unit has nothing to run yet (its stand-in is not wired); only its state is kept.
    pub placeholder: bool,
}

/// One phase of bringing a lab up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseTiming {
    pub phase: String,
    pub millis: u64,
    /// Summed resident memory of the lab's processes when the phase ended (for the `up`
    /// process itself: its peak so far), KiB.
    pub rss_kib: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabStatus {
    /// `starting`, `running`, `stopping` or `failed: <why>`.
    pub phase: String,
    pub healthy: bool,
    /// What is not yet healthy, in words.
    pub problems: Vec<String>,
    pub nodes: Vec<NodeStatus>,
    /// How long each setup phase took inside the supervisor, and the memory after it.
    pub timings: Vec<PhaseTiming>,
    /// Sum of the resident memory of the supervisor and every node process, KiB.
    pub rss_kib: u64,
    pub process_count: usize,
    /// The ARM stand-in's endpoint while it serves.
    pub arm_endpoint: Option<String>,
    /// Nodes the apiserver reports Ready (None: not asked, or it did not answer).
    pub kube_ready_nodes: Option<Vec<String>>,
    /// Every master's state in every load balancer, from HAProxy's `show stat` (empty when
    /// HAProxy does not answer).
    #[serde(default)]
    pub load_balancers: Vec<crate::lb::BackendState>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    pub message: String,
    pub status: Option<LabStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arm_calls: Option<Vec<crate::arm::CallRecord>>,
}

impl Response {
    pub fn ok(message: impl Into<String>) -> Response {
        Response { ok: true, message: message.into(), status: None, arm_calls: None }
    }
    pub fn refused(message: impl Into<String>) -> Response {
        Response { ok: false, message: message.into(), status: None, arm_calls: None }
    }
}

/// Send one request and read its response.
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> Result<Response, LabError> {
    let fail = |detail: String| LabError::Supervisor { socket: socket.to_path_buf(), detail };
    let mut stream = UnixStream::connect(socket).map_err(|e| fail(format!("connect: {e}")))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| fail(e.to_string()))?;
    stream.set_write_timeout(Some(timeout)).map_err(|e| fail(e.to_string()))?;
    let mut line = serde_json::to_string(request).expect("requests serialise");
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(|e| fail(format!("send: {e}")))?;
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    reader.read_line(&mut answer).map_err(|e| fail(format!("receive: {e}")))?;
    if answer.is_empty() {
        return Err(fail("closed the connection without answering".into()));
    }
    serde_json::from_str(&answer).map_err(|e| fail(format!("unreadable answer: {e}")))
}

/// Like `call`, but a refusal (`ok: false`) becomes an error.
pub fn call_ok(socket: &Path, request: &Request, timeout: Duration) -> Result<Response, LabError> {
    let response = call(socket, request, timeout)?;
    if response.ok {
        Ok(response)
    } else {
        Err(LabError::Refused(response.message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_tagged_json() {
        let request = Request::Fault(Fault::CutNetwork { node: "k8s-master-1-0".into() });
        let text = serde_json::to_string(&request).unwrap();
        assert!(text.contains("\"op\":\"fault\"") && text.contains("\"fault\":\"cut-network\""), "{text}");
        let back: Request = serde_json::from_str(&text).unwrap();
        assert!(matches!(back, Request::Fault(Fault::CutNetwork { node }) if node == "k8s-master-1-0"));
    }

    #[test]
    fn systemd_unit_names_are_understood() {
        assert_eq!(Unit::parse_systemd("kubelet.service"), Some(Unit::Kubelet));
        assert_eq!(Unit::parse_systemd("etcd"), Some(Unit::Etcd));
        assert_eq!(Unit::parse_systemd("docker"), None);
    }
}
