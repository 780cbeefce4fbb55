//! The load balancers in front of the masters, as AKS Engine deploys them, run by the real
//! HAProxy (Debian's package) in a network namespace of their own. What they must do comes
//! from aks-engine-azurestack's pkg/engine/loadbalancers.go:
//! - the public one (`CreateMasterLoadBalancer`, rule `LBRuleHTTPS`): frontend 443 to
//!   backend 443 on every master;
//! - the internal one (`CreateMasterInternalLoadBalancer`, rule `InternalLBRuleHTTPS`, only
//!   with more than one master): frontend at the first master's address + 10, port 443, to
//!   backend 4443, which each master redirects to 443 with iptables
//!   (parts/k8s/cloud-init/masternodecustomdata.yml);
//! - both: probe `tcpHTTPSProbe`, TCP on the backend port every 5 s, 2 failed probes mark a
//!   master down and one good probe brings it back; idle timeout 5 minutes; default load
//!   distribution, a hash of the 5-tuple.
//!
//! This module writes HAProxy's configuration, reads backend states from its runtime API
//! (`show stat`) and sends it runtime commands. The runtime API is also how a backend can be
//! taken out and put back later (`set server <lb>/<master> state maint|ready`), which is how
//! the ARM stand-in can make a Network API backend-pool change take effect.

use crate::error::LabError;
use crate::spec::Layout;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Debian's haproxy.
pub const HAPROXY: &str = "/usr/sbin/haproxy";

/// AKS Engine's probe: every 5 s, down after 2 failures, up after 1 success.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);
pub const PROBE_FALL: u32 = 2;
pub const PROBE_RISE: u32 = 1;
/// `IdleTimeoutInMinutes: 5` on both rules.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// One load balancer of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Balancer {
    /// AKS Engine's resource name: `k8s-master-lb-<suffix>` or `k8s-master-internal-lb-<suffix>`.
    pub name: String,
    pub frontend: std::net::SocketAddrV4,
    pub backend_port: u16,
}

/// The load balancers AKS Engine deploys for this layout.
pub fn balancers(layout: &Layout) -> Vec<Balancer> {
    let mut out = vec![Balancer {
        name: format!("k8s-master-lb-{}", layout.name_suffix),
        frontend: std::net::SocketAddrV4::new(layout.public_lb_ip(), 443),
        backend_port: 443,
    }];
    if layout.has_ilb() {
        out.push(Balancer {
            name: format!("k8s-master-internal-lb-{}", layout.name_suffix),
            frontend: std::net::SocketAddrV4::new(layout.ilb_ip(), 443),
            backend_port: 4443,
        });
    }
    out
}

pub fn config_path(layout: &Layout) -> PathBuf {
    layout.lb_dir().join("haproxy.cfg")
}
pub fn socket_path(layout: &Layout) -> PathBuf {
    layout.lb_dir().join("haproxy.sock")
}
pub fn log_path(layout: &Layout) -> PathBuf {
    layout.lb_dir().join("haproxy.log")
}

/// HAProxy's configuration for the cluster's load balancers.
///
/// Choices, each for a property of the Azure load balancer:
/// - `mode tcp`: a layer-4 balancer; TLS passes through to the masters untouched.
/// - `balance hash` over source address, source port, destination address and port (the
///   protocol is always TCP here), with `hash-type consistent`: Azure's default distribution
///   hashes the 5-tuple, so two connections from one client may land on different masters.
///   `balance source` hashes the source address only (Azure's `SourceIP` mode), which would
///   send every connection from the operator machine to the same master.
/// - `check inter 5s fall 2 rise 1` with `timeout check 5s`: a plain TCP connect probe on the
///   backend port, as `tcpHTTPSProbe`; a listening apiserver counts as up whether ready or not.
/// - `retries 0`, no `option redispatch`: a flow sent to a master that refuses it fails, as
///   on Azure, where the balancer forwards the client's SYN and does not try another backend.
/// - `timeout client/server 5m`: the rules' idle timeout.
pub fn haproxy_config(layout: &Layout) -> String {
    let mut text = format!(
        "# Written by the lab (lab::lb): AKS Engine's master load balancers.\n\
         global\n    log stderr format raw local0 info\n    stats socket {socket} mode 600 level admin\n    stats timeout 2m\n\n\
         defaults\n    mode tcp\n    log global\n    option tcplog\n    retries 0\n    timeout connect 5s\n    timeout client {idle}s\n    timeout server {idle}s\n    timeout check {inter}s\n\n",
        socket = socket_path(layout).display(),
        idle = IDLE_TIMEOUT.as_secs(),
        inter = PROBE_INTERVAL.as_secs(),
    );
    for lb in balancers(layout) {
        text.push_str(&format!(
            "listen {name}\n    bind {frontend}\n    tcp-request connection set-var-fmt(sess.flow) \"%[src]:%[src_port]:%[dst]:%[dst_port]:tcp\"\n    balance hash var(sess.flow)\n    hash-type consistent\n",
            name = lb.name,
            frontend = lb.frontend,
        ));
        for master in layout.masters() {
            text.push_str(&format!(
                "    server {name} {ip}:{port} check inter {inter}s fall {fall} rise {rise}\n",
                name = master.name,
                ip = master.ip,
                port = lb.backend_port,
                inter = PROBE_INTERVAL.as_secs(),
                fall = PROBE_FALL,
                rise = PROBE_RISE,
            ));
        }
        text.push('\n');
    }
    text
}

/// One master as one load balancer sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendState {
    /// The load balancer (HAProxy proxy name).
    pub balancer: String,
    /// The master (server name).
    pub master: String,
    /// HAProxy's status: `UP`, `DOWN`, `MAINT`, `UP 1/2` (going down), `DOWN 1/1`...
    pub status: String,
    /// The last probe's result (`L4OK`, `L4CON` refused, `L4TOUT` timed out...).
    pub check: String,
    /// Connections it has been sent since the balancer started.
    pub sessions_total: u64,
    /// Seconds since the status last changed.
    pub last_change_secs: u64,
}

impl BackendState {
    /// Whether new flows may be sent to it (HAProxy's `UP`, also while going down).
    pub fn up(&self) -> bool {
        self.status.starts_with("UP")
    }
}

/// Parses `show stat` (CSV with a `# pxname,svname,...` header) into the servers' states.
pub fn parse_show_stat(csv: &str) -> Result<Vec<BackendState>, LabError> {
    let mut lines = csv.lines();
    let header = lines
        .next()
        .and_then(|h| h.strip_prefix("# "))
        .ok_or_else(|| LabError::Refused(format!("HAProxy's show stat has no header: {:?}", csv.lines().next())))?;
    let columns: Vec<&str> = header.split(',').collect();
    let column = |name: &str| {
        columns
            .iter()
            .position(|c| *c == name)
            .ok_or_else(|| LabError::Refused(format!("HAProxy's show stat has no column {name}")))
    };
    let (px, sv, status, check, stot, lastchg) =
        (column("pxname")?, column("svname")?, column("status")?, column("check_status")?, column("stot")?, column("lastchg")?);
    let mut states = Vec::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split(',').collect();
        let get = |i: usize| fields.get(i).copied().unwrap_or("");
        if matches!(get(sv), "FRONTEND" | "BACKEND") {
            continue;
        }
        states.push(BackendState {
            balancer: get(px).to_string(),
            master: get(sv).to_string(),
            status: get(status).to_string(),
            check: get(check).trim_start_matches(['*', ' ']).to_string(),
            sessions_total: get(stot).parse().unwrap_or(0),
            last_change_secs: get(lastchg).parse().unwrap_or(0),
        });
    }
    Ok(states)
}

/// Sends one command to HAProxy's runtime API and returns its answer.
pub async fn runtime_command(socket: &Path, command: &str) -> Result<String, LabError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let talk = async {
        let mut stream = tokio::net::UnixStream::connect(socket).await?;
        stream.write_all(format!("{command}\n").as_bytes()).await?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    match tokio::time::timeout(Duration::from_secs(5), talk).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err(LabError::Refused(format!("HAProxy's runtime API at {}: {e}", socket.display()))),
        Err(_) => Err(LabError::Refused(format!("HAProxy's runtime API at {} did not answer within 5 s", socket.display()))),
    }
}

/// Every master's state in every load balancer.
pub async fn backend_states(layout: &Layout) -> Result<Vec<BackendState>, LabError> {
    parse_show_stat(&runtime_command(&socket_path(layout), "show stat").await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::LabSpec;

    fn layout(masters: u8) -> Layout {
        let spec = LabSpec { masters, agents: 1, dns_prefix: Some("mycluster".into()), ..Default::default() };
        Layout::derive(Path::new("/tmp/lb-lab"), spec, |_| false).unwrap()
    }

    #[test]
    fn balancers_follow_aks_engine() {
        let three = layout(3);
        let lbs = balancers(&three);
        assert_eq!(lbs.len(), 2);
        assert_eq!(lbs[0].name, "k8s-master-lb-11161905");
        assert_eq!((lbs[0].frontend.port(), lbs[0].backend_port), (443, 443));
        assert_eq!(lbs[1].name, "k8s-master-internal-lb-11161905");
        assert_eq!(*lbs[1].frontend.ip(), three.ilb_ip());
        assert_eq!((lbs[1].frontend.port(), lbs[1].backend_port), (443, 4443));
        // One master: no internal load balancer; agents reach the master itself.
        let one = layout(1);
        assert_eq!(balancers(&one).len(), 1);
        assert_eq!(one.kubernetes_api_server_ip(), one.first_master().ip);
        assert_eq!(three.kubernetes_api_server_ip(), three.ilb_ip());
    }

    #[test]
    fn config_has_the_probe_and_distribution() {
        let three = layout(3);
        let cfg = haproxy_config(&three);
        assert_eq!(cfg.matches("check inter 5s fall 2 rise 1").count(), 6, "{cfg}");
        assert!(cfg.contains(&format!("server k8s-master-11161905-1 {}:4443 check", three.nodes[1].ip)), "{cfg}");
        assert!(cfg.contains("timeout client 300s") && cfg.contains("timeout server 300s"));
        assert!(cfg.contains("balance hash var(sess.flow)") && cfg.contains("%[src_port]"));
        assert!(cfg.contains("retries 0") && !cfg.contains("redispatch"));
    }

    #[test]
    fn show_stat_parses_servers_only() {
        let csv = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,\n\
            k8s-master-lb-1,FRONTEND,,,0,1,262124,4,0,0,0,0,0,,,,,OPEN,,,,,,,,,1,2,0,,,,0,0,0,1,,\n\
            k8s-master-lb-1,k8s-master-1-0,0,0,0,1,,3,0,0,,0,,0,0,0,0,UP,1,1,0,0,0,12,0,,1,2,1,,3,,2,0,,1,L4OK,\n\
            k8s-master-lb-1,k8s-master-1-1,0,0,0,0,,0,0,0,,0,,0,0,0,0,DOWN,1,1,0,2,1,3,3,,1,2,2,,0,,2,0,,0,* L4CON,\n\
            k8s-master-lb-1,BACKEND,0,0,0,1,26213,4,0,0,0,0,,0,0,0,0,UP,1,1,0,,0,12,0,,1,2,0,,3,,1,0,,1,,\n";
        let states = parse_show_stat(csv).unwrap();
        assert_eq!(states.len(), 2);
        assert_eq!((states[0].status.as_str(), states[0].sessions_total, states[0].check.as_str()), ("UP", 3, "L4OK"));
        assert!(states[0].up() && !states[1].up());
        assert_eq!((states[1].check.as_str(), states[1].last_change_secs), ("L4CON", 3));
        assert!(parse_show_stat("Unknown command\n").is_err(), "an answer that is not a table is an error, not empty");
    }
}
