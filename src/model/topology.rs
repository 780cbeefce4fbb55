//! The cluster's shape derived from the API model: node names, roles and addresses, the
//! apiserver FQDN, the jumpbox port, and the addresses every certificate must name.
//!
//! VM names carry an 8-digit `nameSuffix` that is not in apimodel.json. It is taken from
//! `--name-suffix` or the `nameSuffix` parameter of azuredeploy.json beside the API model;
//! with neither, it is computed from the dnsPrefix as AKS Engine computes it
//! (model/cluster_id.rs). Node host names read later cross-check it; sources that disagree
//! are an error.

use crate::diag::{InputError, SourceFile};
use crate::model::apimodel::ApiModel;
use crate::model::cluster_id::cluster_id;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Role {
    Master,
    Agent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OsType {
    Linux,
    Windows,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum Availability {
    AvailabilitySet,
    VirtualMachineScaleSets,
}

impl Availability {
    fn parse(s: Option<&str>) -> Self {
        match s {
            Some("VirtualMachineScaleSets") => Availability::VirtualMachineScaleSets,
            _ => Availability::AvailabilitySet,
        }
    }
}

/// One VM of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    pub name: String,
    pub role: Role,
    pub os: OsType,
    /// Agent pool name; `None` for masters.
    pub pool: Option<String>,
    /// Index within the masters or within the pool.
    pub index: usize,
    /// Static private address (masters); agents get theirs from DHCP and are reached by name.
    pub ip: Option<Ipv4Addr>,
    pub availability: Availability,
}

/// Everything about the cluster's shape that planning needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Topology {
    pub dns_prefix: String,
    pub location: String,
    pub name_suffix: String,
    pub fqdn: String,
    pub admin_username: String,
    pub masters: Vec<Node>,
    pub agents: Vec<Node>,
    pub master_availability: Availability,
    /// Port the jumpbox (--ssh-host) listens on: 22, or 50001 through the load balancer
    /// NAT for scale-set masters.
    pub ssh_port: u16,
    pub internal_lb_ip: Ipv4Addr,
    pub service_cluster_ip: Ipv4Addr,
    pub cluster_domain: String,
    /// masterProfile.subjectAltNames, extra DNS names for the apiserver.
    pub extra_apiserver_names: Vec<String>,
    /// The agent pools of the API model, in its order (also those with count 0), so nodes
    /// found later can be matched to their pool.
    #[serde(default)]
    pub pools: Vec<AgentPool>,
}

/// One entry of agentPoolProfiles, as far as node naming needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentPool {
    pub name: String,
    pub os: OsType,
    pub availability: Availability,
    /// `count` in the API model.
    pub count: usize,
}

/// A node as the Kubernetes API lists it: its name and the operating system it reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredNode {
    pub name: String,
    pub os: OsType,
}

/// Where the name suffix came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameSuffixSource {
    pub value: String,
    pub from: String,
}

/// DNS suffix of VM FQDNs in public Azure, used when the API model has no custom cloud.
pub const AZURE_PUBLIC_VM_DNS_SUFFIX: &str = "cloudapp.azure.com";
const DEFAULT_FIRST_MASTER_IP: &str = "10.240.255.5";
const DEFAULT_SERVICE_CIDR: &str = "10.0.0.0/16";
/// More agents than any AKS Engine cluster has: its vlabs API validates a pool's `count` to
/// at most 100 (pkg/api/vlabs/types.go) and its large-cluster guide stops at 1200 nodes
/// (docs/howto/kubernetes-large-clusters.md); this leaves room for pools scaled past that.
/// More is a damaged file, and listing its nodes would exhaust memory before any check ran.
const MAX_AGENTS: u64 = 5000;

impl Topology {
    /// Derives the topology from the API model. `name_suffix_flag` is `--name-suffix`; the
    /// `nameSuffix` default in azuredeploy.json beside the model is read when present.
    pub fn derive(model: &ApiModel, name_suffix_flag: Option<&str>) -> Result<Self, InputError> {
        let suffix = resolve_name_suffix(model, name_suffix_flag)?;
        Self::derive_with_suffix(model, &suffix.value)
    }

    pub fn derive_with_suffix(model: &ApiModel, name_suffix: &str) -> Result<Self, InputError> {
        // Counted by a lab test: one apply derives the topology once.
        tracing::debug!(suffix = name_suffix, "derived topology");
        let src = &model.source;
        let view = &model.view;
        let props = &view.properties;
        let mp = &props.master_profile;
        let master_availability = Availability::parse(mp.availability_profile.as_deref());

        let first_ip_text = mp.first_consecutive_static_ip.as_deref().unwrap_or(DEFAULT_FIRST_MASTER_IP);
        let first_ip: Ipv4Addr = first_ip_text.parse().map_err(|_| {
            src.error_at_path(
                &["properties", "masterProfile", "firstConsecutiveStaticIP"],
                format!("firstConsecutiveStaticIP {first_ip_text:?} is not an IPv4 address"),
                "set it to the first master's private address, e.g. \"10.255.255.5\"",
            )
        })?;
        let ip_count = mp.ip_address_count.unwrap_or(1).max(1);
        let master_ip = |i: usize| -> Result<Ipv4Addr, InputError> {
            let step = match master_availability {
                Availability::AvailabilitySet => 1,
                Availability::VirtualMachineScaleSets => ip_count,
            };
            // Checked throughout: ipAddressCount is the file's, and a huge one must be an
            // error, not an overflow.
            let n = (i as u32).checked_mul(step).and_then(|offset| u32::from(first_ip).checked_add(offset)).ok_or_else(|| {
                src.error_at_path(
                    &["properties", "masterProfile", "firstConsecutiveStaticIP"],
                    "master addresses run past 255.255.255.255",
                    "check firstConsecutiveStaticIP and ipAddressCount",
                )
            })?;
            Ok(Ipv4Addr::from(n))
        };
        let o = first_ip.octets();
        let internal_lb_ip = match master_availability {
            Availability::AvailabilitySet => {
                let last = o[3].checked_add(10).ok_or_else(|| {
                    src.error_at_path(
                        &["properties", "masterProfile", "firstConsecutiveStaticIP"],
                        format!("the internal load balancer takes the first master address + 10, which overflows {first_ip}"),
                        "AKS Engine places the internal load balancer 10 addresses above the first master; use the API model the cluster was built from",
                    )
                })?;
                Ipv4Addr::new(o[0], o[1], o[2], last)
            }
            Availability::VirtualMachineScaleSets => Ipv4Addr::new(o[0], o[1], 255, 10),
        };

        let mut masters = Vec::new();
        for i in 0..mp.count.0 {
            masters.push(Node {
                name: format!("k8s-master-{name_suffix}-{i}"),
                role: Role::Master,
                os: OsType::Linux,
                pool: None,
                index: i,
                ip: Some(master_ip(i)?),
                availability: master_availability,
            });
        }
        let mut agents = Vec::new();
        let mut pools = Vec::new();
        for (pool_index, pool) in props.agent_pool_profiles.iter().enumerate() {
            let os = match pool.os_type.as_deref() {
                Some(t) if t.eq_ignore_ascii_case("windows") => OsType::Windows,
                _ => OsType::Linux,
            };
            let availability = Availability::parse(pool.availability_profile.as_deref());
            if agents.len() as u64 + u64::from(pool.count) > MAX_AGENTS {
                return Err(src.error_at_path(
                    &["properties", "agentPoolProfiles"],
                    format!(
                        "the agent pools count more than {MAX_AGENTS} agents (pool {:?} has count {}); no AKS Engine cluster is that large",
                        pool.name, pool.count
                    ),
                    "restore the counts from the apimodel.json aks-engine wrote for this cluster",
                ));
            }
            pools.push(AgentPool { name: pool.name.clone(), os, availability, count: pool.count as usize });
            for i in 0..pool.count as usize {
                let name = match os {
                    OsType::Linux => format!("k8s-{}-{name_suffix}-{i}", pool.name),
                    OsType::Windows => windows_node_name(name_suffix, pool_index, i),
                };
                agents.push(Node {
                    name,
                    role: Role::Agent,
                    os,
                    pool: Some(pool.name.clone()),
                    index: i,
                    ip: None,
                    availability,
                });
            }
        }

        let env = props.custom_cloud_profile.as_ref().and_then(|c| c.environment.as_ref());
        let dns_suffix = env
            .and_then(|e| e.resource_manager_vm_dns_suffix.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| AZURE_PUBLIC_VM_DNS_SUFFIX.to_string());
        if view.location.is_empty() {
            return Err(src.error_at_path(
                &["location"],
                "the API model has no location",
                "set \"location\" to the Azure (Stack Hub) region the cluster runs in, e.g. \"local\"",
            ));
        }
        let fqdn = format!("{}.{}.{}", mp.dns_prefix, view.location, dns_suffix);

        let kc = props.orchestrator_profile.as_ref().and_then(|o| o.kubernetes_config.as_ref());
        let service_cidr = kc.and_then(|k| k.service_cidr.clone()).unwrap_or_else(|| DEFAULT_SERVICE_CIDR.into());
        let net: ipnet::Ipv4Net = service_cidr.parse().map_err(|_| {
            src.error_at_path(
                &["properties", "orchestratorProfile", "kubernetesConfig", "serviceCidr"],
                format!("serviceCidr {service_cidr:?} is not an IPv4 CIDR"),
                "use the CIDR the cluster was built with, e.g. \"10.0.0.0/16\"",
            )
        })?;
        // The kubernetes service takes the range's first address after the network's own;
        // a /32 has none (and 255.255.255.255/32 would overflow).
        let service_cluster_ip = u32::from(net.network())
            .checked_add(1)
            .map(Ipv4Addr::from)
            .filter(|ip| net.contains(ip))
            .ok_or_else(|| {
                src.error_at_path(
                    &["properties", "orchestratorProfile", "kubernetesConfig", "serviceCidr"],
                    format!("serviceCidr {service_cidr:?} has no address for the kubernetes service"),
                    "use the CIDR the cluster was built with, e.g. \"10.0.0.0/16\"",
                )
            })?;
        let cluster_domain = kc
            .and_then(|k| k.kubelet_config.as_ref())
            .and_then(|m| m.get("--cluster-domain").cloned())
            .unwrap_or_else(|| "cluster.local".into());

        Ok(Topology {
            dns_prefix: mp.dns_prefix.clone(),
            location: view.location.clone(),
            name_suffix: name_suffix.to_string(),
            fqdn,
            admin_username: props.linux_profile.admin_username.clone(),
            masters,
            agents,
            master_availability,
            ssh_port: match master_availability {
                Availability::AvailabilitySet => 22,
                Availability::VirtualMachineScaleSets => 50001,
            },
            internal_lb_ip,
            service_cluster_ip,
            cluster_domain,
            extra_apiserver_names: mp.subject_alt_names.clone(),
            pools,
        })
    }

    /// The topology plus the Linux agents the Kubernetes API lists but the API model does not
    /// (added by `aks-engine scale`, which may leave apimodel.json behind), and one note per
    /// registered node that was not added and why. Pure: the caller lists the nodes.
    ///
    /// A node is added when its name is `k8s-<pool>-<nameSuffix>-<index>` for a Linux pool of
    /// the API model and it reports Linux. Masters are never added (their count fixes the
    /// etcd membership and the apiserver certificate's addresses, which only the API model
    /// may change); Windows nodes are skipped, and so is anything named otherwise.
    pub fn with_registered_nodes(&self, registered: &[RegisteredNode]) -> (Topology, Vec<String>) {
        let mut topo = self.clone();
        let mut notes = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        let mut added = Vec::new();
        for node in registered {
            let name = node.name.as_str();
            if !seen.insert(name) || topo.node(name).is_some() {
                continue;
            }
            if node.os == OsType::Windows {
                notes.push(format!("{name} is a Windows node the API model does not list; it was skipped (Windows nodes are named after another scheme)"));
                continue;
            }
            let Some((pool, index)) = parse_linux_node_name(name, &self.name_suffix) else {
                notes.push(format!(
                    "{name} is registered but does not follow this cluster's naming (k8s-<pool>-{}-<index>); it was not added",
                    self.name_suffix
                ));
                continue;
            };
            if pool == "master" {
                notes.push(format!(
                    "{name} is registered as a master, but the API model has {} master(s); masters are taken from the API model only, so it was not added",
                    self.masters.len()
                ));
                continue;
            }
            match self.pools.iter().find(|p| p.name == pool) {
                None => notes.push(format!("{name} is registered but the API model has no agent pool {pool:?}; it was not added")),
                Some(p) if p.os == OsType::Windows => {
                    notes.push(format!("{name} is registered but pool {pool:?} is a Windows pool in the API model; it was not added"))
                }
                Some(p) => added.push(Node {
                    name: name.to_string(),
                    role: Role::Agent,
                    os: OsType::Linux,
                    pool: Some(p.name.clone()),
                    index,
                    ip: None,
                    availability: p.availability,
                }),
            }
        }
        // Keep the API model's order: pools in agentPoolProfiles order, then by index.
        topo.agents.extend(added);
        let pool_rank = |n: &Node| self.pools.iter().position(|p| Some(&p.name) == n.pool.as_ref()).unwrap_or(usize::MAX);
        topo.agents.sort_by_key(|n| (pool_rank(n), n.index));
        (topo, notes)
    }

    /// Agents that `other` has and this topology does not (those `with_registered_nodes` added).
    pub fn agents_missing_from<'a>(&self, other: &'a Topology) -> Vec<&'a Node> {
        other.agents.iter().filter(|n| self.node(&n.name).is_none()).collect()
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.masters.iter().chain(self.agents.iter())
    }

    /// etcd's client URL on every master with a known address (port 2379, as AKS Engine
    /// configures it).
    pub fn etcd_client_endpoints(&self) -> Vec<String> {
        self.masters.iter().filter_map(|m| m.ip).map(|ip| format!("https://{ip}:2379")).collect()
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes().find(|n| n.name == name)
    }

    /// IP SANs of the apiserver and etcd certificates, in AKS Engine's order: first master,
    /// loopback, internal load balancer, the other masters, the first service address.
    pub fn apiserver_ip_sans(&self) -> Vec<IpAddr> {
        let mut ips: Vec<IpAddr> = Vec::new();
        if let Some(first) = self.masters.first().and_then(|m| m.ip) {
            ips.push(first.into());
        }
        ips.push(Ipv4Addr::LOCALHOST.into());
        ips.push(self.internal_lb_ip.into());
        ips.extend(self.masters.iter().skip(1).filter_map(|m| m.ip).map(IpAddr::from));
        ips.push(self.service_cluster_ip.into());
        ips
    }

    /// DNS SANs of the apiserver certificate, in AKS Engine's order.
    pub fn apiserver_dns_sans(&self) -> Vec<String> {
        let d = &self.cluster_domain;
        let mut names = vec![self.fqdn.clone()];
        names.extend(self.extra_apiserver_names.iter().cloned());
        names.extend([
            "localhost".to_string(),
            "kubernetes".to_string(),
            "kubernetes.default".to_string(),
            "kubernetes.default.svc".to_string(),
            format!("kubernetes.default.svc.{d}"),
            "kubernetes.kube-system".to_string(),
            "kubernetes.kube-system.svc".to_string(),
            format!("kubernetes.kube-system.svc.{d}"),
        ]);
        names
    }
}

/// AKS Engine's Windows VM name, from its ARM template: the first 5 characters of the name
/// suffix, "k8s", 900 + the pool's position in agentPoolProfiles, then the VM index
/// ("12345k8s9010" for the second VM of the second pool). Windows computer names are short.
fn windows_node_name(name_suffix: &str, pool_index: usize, i: usize) -> String {
    let prefix: String = name_suffix.chars().take(5).collect();
    format!("{prefix}k8s{}{i}", 900 + pool_index)
}

/// Finds the name suffix: `--name-suffix`, and azuredeploy.json's `nameSuffix` parameter
/// default beside the API model. Both present and different is an error; with neither, the
/// suffix AKS Engine computes from the dnsPrefix.
pub fn resolve_name_suffix(model: &ApiModel, flag: Option<&str>) -> Result<NameSuffixSource, InputError> {
    let deploy_path = model.dir().join("azuredeploy.json");
    let from_deploy = read_name_suffix_from_azuredeploy(&deploy_path)?;
    let flag = flag.map(str::trim).filter(|s| !s.is_empty());
    if let Some(f) = flag {
        check_suffix_shape(f).map_err(|m| {
            InputError::plain(model.path(), format!("--name-suffix {f:?}: {m}"), "pass the 8 digits seen in node names such as k8s-master-12345678-0")
        })?;
    }
    match (flag, from_deploy) {
        (Some(f), Some((d, src))) if f != d.value => {
            let _ = src;
            Err(InputError::plain(
                &deploy_path,
                format!(
                    "--name-suffix is {f} but {} says nameSuffix is {}; the VM names would disagree",
                    deploy_path.display(),
                    d.value
                ),
                "check the node names (hostname of any node, e.g. k8s-master-<suffix>-0) and pass the matching value, or drop --name-suffix",
            ))
        }
        (Some(f), _) => Ok(NameSuffixSource { value: f.to_string(), from: "--name-suffix".into() }),
        (None, Some((d, _))) => Ok(d),
        // AKS Engine never stores the suffix in apimodel.json: its own commands recompute it
        // from the dnsPrefix, and so does certrotate; refresh checks it against host names.
        (None, None) => Ok(NameSuffixSource {
            value: cluster_id(model.dns_prefix()),
            from: format!("dnsPrefix {:?} (no azuredeploy.json beside the API model)", model.dns_prefix()),
        }),
    }
}

fn check_suffix_shape(s: &str) -> Result<(), String> {
    if s.len() == 8 && s.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err("a name suffix is 8 digits".into())
    }
}

/// Reads `parameters.nameSuffix.defaultValue` from an ARM template. `Ok(None)` if the file
/// does not exist; an error if it exists but is unreadable or malformed.
pub fn read_name_suffix_from_azuredeploy(path: &Path) -> Result<Option<(NameSuffixSource, SourceFile)>, InputError> {
    if !path.exists() {
        return Ok(None);
    }
    let src = SourceFile::read(path, "ARM template")?;
    let doc: serde_json::Value = serde_json::from_str(&src.text).map_err(|e| src.json_error(&e, "azuredeploy.json"))?;
    let value = doc.pointer("/parameters/nameSuffix/defaultValue").and_then(|v| v.as_str()).ok_or_else(|| {
        src.error_at_path(
            &["parameters"],
            "azuredeploy.json has no parameters.nameSuffix.defaultValue",
            "use the azuredeploy.json that aks-engine generated with this apimodel.json, or pass --name-suffix",
        )
    })?;
    check_suffix_shape(value).map_err(|m| {
        src.error_at_path(
            &["parameters", "nameSuffix", "defaultValue"],
            format!("nameSuffix {value:?}: {m}"),
            "use the azuredeploy.json that aks-engine generated with this apimodel.json",
        )
    })?;
    Ok(Some((NameSuffixSource { value: value.to_string(), from: path.display().to_string() }, src)))
}

/// `(pool, index)` of a name `k8s-<pool>-<suffix>-<index>` (pool `master` for masters);
/// `None` for anything else, including another suffix or an index with leading zeros.
fn parse_linux_node_name<'a>(name: &'a str, suffix: &str) -> Option<(&'a str, usize)> {
    let rest = name.strip_prefix("k8s-")?;
    let (head, index) = rest.rsplit_once('-')?;
    let pool = head.strip_suffix(suffix)?.strip_suffix('-')?;
    let canonical = !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()) && (index == "0" || !index.starts_with('0'));
    if pool.is_empty() || !canonical {
        return None;
    }
    Some((pool, index.parse().ok()?))
}

/// Cross-checks the suffix against a host name seen on a node (`k8s-master-<suffix>-<i>`).
pub fn check_hostname_suffix(expected: &str, hostname: &str) -> Result<(), String> {
    let parts: Vec<&str> = hostname.rsplitn(3, '-').collect();
    match parts.as_slice() {
        [_, suffix, _] if *suffix == expected => Ok(()),
        [_, suffix, _] if check_suffix_shape(suffix).is_ok() => Err(format!(
            "node host name {hostname} carries name suffix {suffix}, but the API model's sources say {expected}"
        )),
        _ => Err(format!("node host name {hostname} does not look like an AKS Engine VM name")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(json: &str) -> ApiModel {
        ApiModel::parse(SourceFile::from_text("/nonexistent/apimodel.json", json)).unwrap()
    }

    const THREE_MASTERS: &str = r#"{"apiVersion":"vlabs","location":"local","properties":{
        "orchestratorProfile":{"kubernetesConfig":{"serviceCidr":"10.0.0.0/16"}},
        "masterProfile":{"count":3,"dnsPrefix":"kube-lab","firstConsecutiveStaticIP":"10.255.255.5","subjectAltNames":["api.example.org"]},
        "agentPoolProfiles":[{"name":"linuxpool","count":2}],
        "linuxProfile":{"adminUsername":"azureuser"},
        "customCloudProfile":{"environment":{"name":"AzureStackCloud","resourceManagerVMDNSSuffix":"cloudapp.azurestack.external"}}}}"#;

    #[test]
    fn names_addresses_and_sans_follow_aks_engine() {
        let t = Topology::derive_with_suffix(&model(THREE_MASTERS), "12345678").unwrap();
        let names: Vec<_> = t.nodes().map(|n| n.name.as_str()).collect();
        assert_eq!(
            names,
            ["k8s-master-12345678-0", "k8s-master-12345678-1", "k8s-master-12345678-2", "k8s-linuxpool-12345678-0", "k8s-linuxpool-12345678-1"]
        );
        assert_eq!(t.fqdn, "kube-lab.local.cloudapp.azurestack.external");
        let ips: Vec<String> = t.apiserver_ip_sans().iter().map(|i| i.to_string()).collect();
        assert_eq!(ips, ["10.255.255.5", "127.0.0.1", "10.255.255.15", "10.255.255.6", "10.255.255.7", "10.0.0.1"]);
        let dns = t.apiserver_dns_sans();
        assert_eq!(dns[0], "kube-lab.local.cloudapp.azurestack.external");
        assert_eq!(dns[1], "api.example.org");
        assert_eq!(dns[2], "localhost");
        assert_eq!(dns.last().unwrap(), "kubernetes.kube-system.svc.cluster.local");
        assert_eq!(t.ssh_port, 22);
    }

    #[test]
    fn scale_set_masters_use_nat_port_and_strided_addresses() {
        let json = THREE_MASTERS.replace(
            r#""subjectAltNames""#,
            r#""availabilityProfile":"VirtualMachineScaleSets","ipAddressCount":31,"subjectAltNames""#,
        );
        let t = Topology::derive_with_suffix(&model(&json), "12345678").unwrap();
        assert_eq!(t.ssh_port, 50001);
        assert_eq!(t.masters[1].ip, Some("10.255.255.36".parse().unwrap()));
        assert_eq!(t.internal_lb_ip, "10.255.255.10".parse::<Ipv4Addr>().unwrap());
    }

    #[test]
    fn suffix_sources_must_agree() {
        let dir = tempfile::tempdir().unwrap();
        let api = dir.path().join("apimodel.json");
        std::fs::write(&api, THREE_MASTERS).unwrap();
        std::fs::write(
            dir.path().join("azuredeploy.json"),
            r#"{"parameters":{"nameSuffix":{"type":"string","defaultValue":"87654321"}}}"#,
        )
        .unwrap();
        let m = ApiModel::load(&api).unwrap();
        assert_eq!(resolve_name_suffix(&m, None).unwrap().value, "87654321");
        assert_eq!(resolve_name_suffix(&m, Some("87654321")).unwrap().value, "87654321");
        let err = resolve_name_suffix(&m, Some("12345678")).unwrap_err();
        assert!(err.message.contains("12345678") && err.message.contains("87654321"), "{}", err.message);
        std::fs::remove_file(dir.path().join("azuredeploy.json")).unwrap();
        // Without azuredeploy.json: AKS Engine's suffix for dnsPrefix "kube-lab", or the flag.
        let derived = resolve_name_suffix(&m, None).unwrap();
        assert_eq!(derived.value, "84869199");
        assert!(derived.from.contains("kube-lab"), "{}", derived.from);
        assert_eq!(resolve_name_suffix(&m, Some("12345678")).unwrap().value, "12345678");
    }

    #[test]
    fn windows_agents_follow_the_arm_template_prefix() {
        let json = THREE_MASTERS.replace(
            r#"[{"name":"linuxpool","count":2}]"#,
            r#"[{"name":"linuxpool","count":1},{"name":"winpool","count":2,"osType":"Windows"}]"#,
        );
        let t = Topology::derive_with_suffix(&model(&json), "12345678").unwrap();
        let win: Vec<_> = t.agents.iter().filter(|n| n.os == OsType::Windows).map(|n| n.name.as_str()).collect();
        assert_eq!(win, ["12345k8s9010", "12345k8s9011"]);
    }

    fn registered(names: &[&str]) -> Vec<RegisteredNode> {
        names.iter().map(|n| RegisteredNode { name: n.to_string(), os: OsType::Linux }).collect()
    }

    #[test]
    fn registered_agents_missing_from_the_model_are_added_to_their_pool() {
        let t = Topology::derive_with_suffix(&model(THREE_MASTERS), "12345678").unwrap();
        let nodes = registered(&["k8s-master-12345678-0", "k8s-linuxpool-12345678-0", "k8s-linuxpool-12345678-3", "k8s-linuxpool-12345678-1", "k8s-linuxpool-12345678-2"]);
        let (with, notes) = t.with_registered_nodes(&nodes);
        assert!(notes.is_empty(), "{notes:?}");
        let names: Vec<_> = with.agents.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["k8s-linuxpool-12345678-0", "k8s-linuxpool-12345678-1", "k8s-linuxpool-12345678-2", "k8s-linuxpool-12345678-3"]);
        let added = with.node("k8s-linuxpool-12345678-3").unwrap();
        assert_eq!((added.role, added.os, added.pool.as_deref(), added.index, added.ip), (Role::Agent, OsType::Linux, Some("linuxpool"), 3, None));
        assert_eq!(with.masters, t.masters);
        let missing: Vec<_> = t.agents_missing_from(&with).iter().map(|n| n.name.clone()).collect();
        assert_eq!(missing, ["k8s-linuxpool-12345678-2", "k8s-linuxpool-12345678-3"]);
        // Nothing registered beyond the model: the same topology, no notes.
        assert_eq!(t.with_registered_nodes(&registered(&["k8s-linuxpool-12345678-0"])), (t.clone(), vec![]));
    }

    #[test]
    fn foreign_names_are_noted_not_added() {
        let t = Topology::derive_with_suffix(&model(THREE_MASTERS), "12345678").unwrap();
        let odd = ["k8s-linuxpool-87654321-2", "k8s-otherpool-12345678-0", "k8s-linuxpool-12345678-02", "k8s-linuxpool-12345678-vmss000002", "aks-nodepool1-1234-vmss000000", "k8s--12345678-4"];
        let (with, notes) = t.with_registered_nodes(&registered(&odd));
        assert_eq!(with, t);
        assert_eq!(notes.len(), odd.len(), "{notes:?}");
        for (name, note) in odd.iter().zip(&notes) {
            assert!(note.starts_with(name) && note.contains("not added"), "{note}");
        }
        assert!(notes[1].contains("no agent pool \"otherpool\""), "{}", notes[1]);
    }

    #[test]
    fn masters_are_never_added() {
        let t = Topology::derive_with_suffix(&model(THREE_MASTERS), "12345678").unwrap();
        let (with, notes) = t.with_registered_nodes(&registered(&["k8s-master-12345678-2", "k8s-master-12345678-3"]));
        assert_eq!(with, t);
        assert_eq!(notes.len(), 1);
        assert!(notes[0].starts_with("k8s-master-12345678-3") && notes[0].contains("3 master(s)"), "{}", notes[0]);
    }

    #[test]
    fn windows_nodes_are_skipped() {
        let json = THREE_MASTERS.replace(
            r#"[{"name":"linuxpool","count":2}]"#,
            r#"[{"name":"linuxpool","count":1},{"name":"winpool","count":1,"osType":"Windows"}]"#,
        );
        let t = Topology::derive_with_suffix(&model(&json), "12345678").unwrap();
        let nodes = vec![
            RegisteredNode { name: "12345k8s9011".into(), os: OsType::Windows },
            // Linux-shaped name but the node says Windows.
            RegisteredNode { name: "k8s-linuxpool-12345678-5".into(), os: OsType::Windows },
            // Linux node claiming a Windows pool's name scheme.
            RegisteredNode { name: "k8s-winpool-12345678-1".into(), os: OsType::Linux },
            // Already in the model: silent.
            RegisteredNode { name: "12345k8s9010".into(), os: OsType::Windows },
        ];
        let (with, notes) = t.with_registered_nodes(&nodes);
        assert_eq!(with, t);
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert!(notes[0].contains("Windows node") && notes[1].contains("Windows node"), "{notes:?}");
        assert!(notes[2].contains("Windows pool"), "{}", notes[2]);
    }

    #[test]
    fn duplicates_count_once() {
        let t = Topology::derive_with_suffix(&model(THREE_MASTERS), "12345678").unwrap();
        let (with, notes) = t.with_registered_nodes(&registered(&["k8s-linuxpool-12345678-2", "k8s-linuxpool-12345678-2", "k8s-x-1", "k8s-x-1"]));
        assert_eq!(with.agents.len(), 3);
        assert_eq!(notes.len(), 1, "{notes:?}");
    }

    #[test]
    fn pools_with_count_zero_still_take_nodes() {
        let json = THREE_MASTERS.replace(r#""count":2"#, r#""count":0,"availabilityProfile":"AvailabilitySet""#);
        let t = Topology::derive_with_suffix(&model(&json), "12345678").unwrap();
        assert!(t.agents.is_empty());
        let (with, notes) = t.with_registered_nodes(&registered(&["k8s-linuxpool-12345678-0"]));
        assert!(notes.is_empty());
        assert_eq!(with.agents[0].availability, Availability::AvailabilitySet);
    }

    #[test]
    fn hostname_cross_check() {
        assert!(check_hostname_suffix("12345678", "k8s-master-12345678-0").is_ok());
        assert!(check_hostname_suffix("12345678", "k8s-agentpool1-12345678-11").is_ok());
        let e = check_hostname_suffix("12345678", "k8s-master-87654321-0").unwrap_err();
        assert!(e.contains("87654321"));
    }

    /// Inputs the fuzzer's apimodel target panicked or ran out of memory on (kept in its
    /// corpus, fuzz/corpus/apimodel/): each is now a diagnostic at the value at fault.
    #[test]
    fn hostile_counts_and_ranges_are_errors_not_panics() {
        let cases = [
            (include_str!("../../fuzz/corpus/apimodel/crash-master-ip-address-count-overflow.json"), "master addresses run past", "10.255.255.5"),
            (include_str!("../../fuzz/corpus/apimodel/crash-service-cidr-255.255.255.255-32.json"), "has no address for the kubernetes service", "255.255.255.255/32"),
            (include_str!("../../fuzz/corpus/apimodel/oom-agent-pool-count-4294967295.json"), "no AKS Engine cluster is that large", "[{"),
        ];
        for (json, message, marked) in cases {
            let e = Topology::derive_with_suffix(&model(json), "12345678").expect_err(message);
            assert!(e.message.contains(message), "{}", e.message);
            let (span, shown) = (e.span.expect("the diagnostic points into the file"), e.src.as_ref().unwrap().inner());
            assert!(shown[span.offset()..].starts_with(marked), "{message}: marks {:?}", &shown[span.offset()..span.offset() + span.len()]);
        }
        // A /31 still has its second address, and a pool at the bound still reads.
        let json = THREE_MASTERS.replace("10.0.0.0/16", "10.0.0.0/31").replace("\"count\":2", "\"count\":1000");
        let t = Topology::derive_with_suffix(&model(&json), "12345678").unwrap();
        assert_eq!((t.service_cluster_ip.to_string().as_str(), t.agents.len()), ("10.0.0.1", 1000));
    }
}
