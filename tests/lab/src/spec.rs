//! What a lab cluster is made of: the user's request (`LabSpec`) and the derived, persisted
//! `Layout` (lab id, bridge, subnet, node names and addresses) that every other part reads.
//! Names and addresses follow AKS Engine: masters `k8s-master-<nameSuffix>-<i>` on consecutive
//! addresses from firstConsecutiveStaticIP (.5), agents `k8s-agentpool1-<nameSuffix>-<i>`.

use crate::error::LabError;
pub use crate::arm::IdentitySystem;
use serde::{Deserialize, Serialize};
use std::hash::Hasher;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The agent pool every lab agent belongs to (AKS Engine's default first pool name).
pub const AGENT_POOL: &str = "agentpool1";
/// The admin user AKS Engine templates default to.
pub const ADMIN_USER: &str = "azureuser";
/// Last octet of the first master (AKS Engine's firstConsecutiveStaticIP ends in .5).
pub const FIRST_MASTER_OCTET: u8 = 5;
/// Last octet of the public load balancer's frontend in the lab (below the first master).
pub const PUBLIC_LB_OCTET: u8 = 4;
/// Agents start above the internal load balancer address (first master + 10 = .15).
pub const FIRST_AGENT_OCTET: u8 = 20;
/// Highest number of agents one /24 can hold after the masters and the load balancer.
pub const MAX_AGENTS: u16 = 254 - FIRST_AGENT_OCTET as u16 + 1;

/// When the cluster's leaf certificates expire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "secs")]
pub enum Expiry {
    /// AKS Engine's default: 30 years.
    Default,
    /// Expire this long after `lab up`.
    In(u64),
    /// Already expired when the lab comes up.
    Expired,
}

/// What the user asked for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabSpec {
    pub masters: u8,
    pub agents: u16,
    pub expiry: Expiry,
    /// Defaults to `lab<id>` where id is derived from the lab directory.
    pub dns_prefix: Option<String>,
    pub location: String,
    /// How long a reboot keeps a node's services down.
    pub reboot_delay: Duration,
    /// How often each kubelet reports its node's status. Tests keep the short default so that
    /// nodes come back Ready quickly; benchmarks use Kubernetes' own 10 s, because 53 kubelets
    /// beating every 2 s keep a third of this machine busy and would be measured as plan time.
    /// A node goes NotReady after four missed beats, as with Kubernetes' 10 s and 40 s.
    #[serde(default = "default_heartbeat")]
    pub heartbeat: Duration,
    /// The stamp's identity provider (the API model's `customCloudProfile.identitySystem`).
    #[serde(default)]
    pub identity_system: IdentitySystem,
    /// How the service principal signs in (`customCloudProfile.authenticationMethod`).
    #[serde(default)]
    pub auth_method: AuthMethod,
    /// How long a (re)started apiserver stand-in serves before its `/readyz` turns ok, as a
    /// real kube-apiserver listens at once but fails `/readyz` until its post-start hooks and
    /// informer caches are done. Default 15 s; the fast lab tests pass 0.
    #[serde(default = "default_apiserver_startup")]
    pub apiserver_startup: Duration,
    /// kube-apiserver's `--shutdown-delay-duration`: after SIGTERM it fails `/readyz` at once
    /// and keeps serving this long before it closes. Kubernetes' default and AKS Engine's
    /// (it does not set the flag) are 0.
    #[serde(default)]
    pub apiserver_shutdown_delay: Duration,
}


/// The authentication methods aks-engine offers on Azure Stack Hub (`--auth-method`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    #[default]
    ClientSecret,
    ClientCertificate,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ClientSecret => "client_secret",
            AuthMethod::ClientCertificate => "client_certificate",
        }
    }
}

fn default_heartbeat() -> Duration {
    Duration::from_secs(2)
}

/// A real kube-apiserver answers `/readyz` ok some 15 s after it starts (issue 12's figure
/// for one warming its caches against etcd).
pub const DEFAULT_APISERVER_STARTUP: Duration = Duration::from_secs(15);

fn default_apiserver_startup() -> Duration {
    DEFAULT_APISERVER_STARTUP
}

impl Default for LabSpec {
    fn default() -> Self {
        LabSpec {
            masters: 3,
            agents: 2,
            expiry: Expiry::Default,
            dns_prefix: None,
            location: "local".into(),
            reboot_delay: Duration::from_secs(2),
            heartbeat: default_heartbeat(),
            identity_system: IdentitySystem::AzureAd,
            auth_method: AuthMethod::ClientSecret,
            apiserver_startup: DEFAULT_APISERVER_STARTUP,
            apiserver_shutdown_delay: Duration::ZERO,
        }
    }
}

impl LabSpec {
    /// The same lab with restarts as short as the lab allows: for tests that need speed, not
    /// realistic downtime (the downtime proof keeps the defaults).
    pub fn fast_restarts(mut self) -> Self {
        self.apiserver_startup = Duration::ZERO;
        self.apiserver_shutdown_delay = Duration::ZERO;
        self
    }

    pub fn validate(&self) -> Result<(), LabError> {
        if ![1, 3, 5].contains(&self.masters) {
            return Err(LabError::Spec(format!(
                "--masters {} is not a master count AKS Engine supports; use 1, 3 or 5",
                self.masters
            )));
        }
        if self.agents > MAX_AGENTS {
            return Err(LabError::Spec(format!(
                "--agents {} does not fit the lab's /24; use at most {MAX_AGENTS}",
                self.agents
            )));
        }
        if let Some(prefix) = &self.dns_prefix {
            let ok = !prefix.is_empty()
                && prefix.len() <= 45
                && prefix.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !prefix.starts_with('-');
            if !ok {
                return Err(LabError::Spec(format!(
                    "dns prefix {prefix:?} must be 1-45 lowercase letters, digits or '-'"
                )));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Master,
    Agent,
}

/// One node of the lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub role: Role,
    /// Index within its role (etcdpeer<index> on masters).
    pub index: usize,
    pub ip: Ipv4Addr,
    /// Host end of the node's veth pair (the node end is `eth0`).
    pub veth: String,
}

/// Everything derived from the spec and the directory; persisted as `DIR/lab.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Layout {
    pub dir: PathBuf,
    /// Short hex id derived from the canonical directory; part of every host-visible name.
    pub id: String,
    pub spec: LabSpec,
    pub dns_prefix: String,
    pub name_suffix: String,
    pub bridge: String,
    /// Third-level network: the lab's /24 is `subnet.0/24`, the host side is `.1`.
    pub subnet: [u8; 3],
    pub nodes: Vec<NodeInfo>,
    pub arm_port: u16,
}

pub fn fnv64a(bytes: &[u8]) -> u64 {
    let mut hasher = fnv::FnvHasher::default();
    hasher.write(bytes);
    hasher.finish()
}

/// AKS Engine's nameSuffix for a dnsPrefix (`GetClusterID`, certrotate's model::cluster_id),
/// so the lab's VMs are named as AKS Engine names them.
pub fn name_suffix_for(dns_prefix: &str) -> String {
    certrotate::model::cluster_id::cluster_id(dns_prefix)
}

impl Layout {
    /// Derive a layout. `taken` says whether a /24 is already used on this host.
    pub fn derive(
        dir: &Path,
        spec: LabSpec,
        taken: impl Fn([u8; 3]) -> bool,
    ) -> Result<Layout, LabError> {
        spec.validate()?;
        let dir = dir.to_path_buf();
        let hash = fnv64a(dir.as_os_str().as_encoded_bytes());
        let id = format!("{:06x}", hash & 0xff_ffff);
        let dns_prefix = spec.dns_prefix.clone().unwrap_or_else(|| format!("lab{id}"));
        let name_suffix = name_suffix_for(&dns_prefix);
        let mut subnet = None;
        for salt in 0u64..64 {
            let h = fnv64a(format!("{id}/{salt}").as_bytes());
            let candidate = [10, 200 + (h % 50) as u8, ((h >> 8) % 256) as u8];
            if !taken(candidate) {
                subnet = Some(candidate);
                break;
            }
        }
        let subnet = subnet.ok_or_else(|| {
            LabError::Spec("no free 10.200-249.x.0/24 on this host for the lab's network".into())
        })?;
        let mut nodes = Vec::new();
        for i in 0..spec.masters as usize {
            nodes.push(NodeInfo {
                name: format!("k8s-master-{name_suffix}-{i}"),
                role: Role::Master,
                index: i,
                ip: Ipv4Addr::new(subnet[0], subnet[1], subnet[2], FIRST_MASTER_OCTET + i as u8),
                veth: format!("lv{id}m{i}"),
            });
        }
        for i in 0..spec.agents as usize {
            nodes.push(NodeInfo {
                name: format!("k8s-{AGENT_POOL}-{name_suffix}-{i}"),
                role: Role::Agent,
                index: i,
                ip: Ipv4Addr::new(subnet[0], subnet[1], subnet[2], FIRST_AGENT_OCTET + i as u8),
                veth: format!("lv{id}a{i}"),
            });
        }
        Ok(Layout {
            dir,
            bridge: format!("labbr{id}"),
            arm_port: 20000 + (hash >> 24) as u16 % 20000,
            id,
            spec,
            dns_prefix,
            name_suffix,
            subnet,
            nodes,
        })
    }

    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.subnet[0], self.subnet[1], self.subnet[2], 1)
    }

    pub fn masters(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.iter().filter(|n| n.role == Role::Master)
    }

    pub fn first_master(&self) -> &NodeInfo {
        &self.nodes[0]
    }

    /// Whether AKS Engine deploys the internal load balancer: only for more than one master
    /// (pkg/engine/masterarmresources.go, `HasMultipleNodes`).
    pub fn has_ilb(&self) -> bool {
        self.spec.masters > 1
    }

    /// Where agents and in-cluster clients reach the API (AKS Engine's
    /// `kubernetesAPIServerIP`, pkg/engine/armvariables.go): the internal load balancer, or
    /// the only master when there is none.
    pub fn kubernetes_api_server_ip(&self) -> Ipv4Addr {
        if self.has_ilb() {
            self.ilb_ip()
        } else {
            self.first_master().ip
        }
    }

    /// The public load balancer's frontend, which the apiserver FQDN resolves to. On Azure it
    /// is a public IP outside the VNet; the lab puts it on the lab's /24 below the masters so
    /// the operator side reaches it over the bridge as it reaches the nodes.
    pub fn public_lb_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.subnet[0], self.subnet[1], self.subnet[2], PUBLIC_LB_OCTET)
    }

    /// Host end of the load balancers' veth (the namespace end is `eth0`).
    pub fn lb_veth(&self) -> String {
        format!("lv{}lb", self.id)
    }

    /// Where the load balancers' config, runtime socket and log live.
    pub fn lb_dir(&self) -> PathBuf {
        self.dir.join("lb")
    }

    /// Internal load balancer address: first master + 10 (availability sets).
    pub fn ilb_ip(&self) -> Ipv4Addr {
        let first = self.first_master().ip.octets();
        Ipv4Addr::new(first[0], first[1], first[2], first[3] + 10)
    }

    pub fn apiserver_fqdn(&self) -> String {
        format!(
            "{}.{}.{}",
            self.dns_prefix,
            self.spec.location,
            crate::outputs::VM_DNS_SUFFIX
        )
    }

    pub fn node(&self, name: &str) -> Result<&NodeInfo, LabError> {
        self.nodes.iter().find(|n| n.name == name).ok_or_else(|| {
            LabError::Spec(format!(
                "no node {name:?} in this lab; nodes are {}",
                self.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", ")
            ))
        })
    }

    pub fn node_dir(&self, node: &NodeInfo) -> PathBuf {
        self.dir.join("nodes").join(&node.name)
    }

    /// The node's own `/etc`, `/var` and `/home` as the lab writes them (overlay upper layers).
    pub fn node_fs(&self, node: &NodeInfo) -> PathBuf {
        self.node_dir(node).join("fs")
    }

    /// Path on the host of a file a node sees at `node_path` (absolute, under /etc, /var or /home).
    pub fn host_path(&self, node: &NodeInfo, node_path: &str) -> PathBuf {
        self.node_fs(node).join(node_path.trim_start_matches('/'))
    }

    pub fn state_file(dir: &Path) -> PathBuf {
        dir.join("lab.json")
    }
    /// Holds the supervisor's socket; bind-mounted into every node.
    pub fn ctl_dir(&self) -> PathBuf {
        self.dir.join("ctl")
    }
    pub fn socket(&self) -> PathBuf {
        self.ctl_dir().join("supervisor.sock")
    }
    pub fn output_dir(&self) -> PathBuf {
        self.dir.join("_output").join(&self.dns_prefix)
    }
    pub fn ssh_key(&self) -> PathBuf {
        self.dir.join("ssh").join("id_ed25519")
    }
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.join("ssh").join("known_hosts")
    }

    pub fn load(dir: &Path) -> Result<Layout, LabError> {
        let path = Self::state_file(dir);
        let text = std::fs::read_to_string(&path).map_err(|e| LabError::NotALab {
            dir: dir.to_path_buf(),
            reason: format!("cannot read {}: {e}", path.display()),
        })?;
        serde_json::from_str(&text).map_err(|e| LabError::NotALab {
            dir: dir.to_path_buf(),
            reason: format!("{} is not a lab state file: {e}", path.display()),
        })
    }
}

/// The /24s (first three octets) already routed or addressed on this host.
pub fn host_subnets_in_use() -> Vec<[u8; 3]> {
    let output = std::process::Command::new("ip").args(["-4", "-o", "route", "show", "table", "all"]).output();
    let mut used = Vec::new();
    if let Ok(output) = output {
        for word in String::from_utf8_lossy(&output.stdout).split_whitespace() {
            let addr = word.split('/').next().unwrap_or("");
            if let Ok(ip) = addr.parse::<Ipv4Addr>() {
                let o = ip.octets();
                used.push([o[0], o[1], o[2]]);
            }
        }
    }
    used
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses_follow_aks_engine() {
        let spec = LabSpec { masters: 3, agents: 2, dns_prefix: Some("mycluster".into()), ..Default::default() };
        let layout = Layout::derive(Path::new("/tmp/some-lab"), spec, |_| false).unwrap();
        // AKS Engine's GetClusterID("mycluster"), printed by Go's hash/fnv and math/rand.
        assert_eq!(layout.name_suffix, "11161905");
        assert_eq!(layout.nodes[0].name, "k8s-master-11161905-0");
        assert_eq!(layout.nodes[3].name, "k8s-agentpool1-11161905-0");
        assert_eq!(layout.nodes[0].ip.octets()[3], 5);
        assert_eq!(layout.nodes[2].ip.octets()[3], 7);
        assert_eq!(layout.ilb_ip().octets()[3], 15);
        assert_eq!(layout.nodes[4].ip.octets()[3], 21);
        assert!(layout.nodes.iter().all(|n| n.veth.len() <= 15), "veth names fit IFNAMSIZ");
        assert!(layout.bridge.len() <= 15);
    }

    #[test]
    fn taken_subnets_are_skipped_and_dirs_differ() {
        let a = Layout::derive(Path::new("/tmp/a"), LabSpec::default(), |_| false).unwrap();
        let b = Layout::derive(Path::new("/tmp/a"), LabSpec::default(), |s| s == a.subnet).unwrap();
        assert_ne!(a.subnet, b.subnet);
        let c = Layout::derive(Path::new("/tmp/c"), LabSpec::default(), |_| false).unwrap();
        assert_ne!(a.id, c.id);
    }

    #[test]
    fn bad_counts_are_refused() {
        let spec = LabSpec { masters: 2, ..Default::default() };
        assert!(matches!(Layout::derive(Path::new("/x"), spec, |_| false), Err(LabError::Spec(_))));
    }
}
