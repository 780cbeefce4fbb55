//! The catalogue: every certificate an AKS Engine cluster carries, with where it lives on
//! which nodes, who owns it, what it must say (subject, SANs, usages) and who issues it.
//!
//! The table is computed from the topology, so SANs come out exactly as AKS Engine computes
//! them for the same API model. Everything downstream (validate, refresh, diff, issue,
//! install) reads this one table instead of knowing file names itself.

use crate::model::topology::{Node, OsType, Role, Topology};
use crate::pki::{CertTemplate, ExtendedUsage, KeySpec};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// Directory holding the certificates on Linux nodes.
pub const CERT_DIR: &str = "/etc/kubernetes/certs";
/// Kubelet's kubeconfig, pointing at ca.crt, client.crt and client.key.
pub const KUBELET_KUBECONFIG: &str = "/var/lib/kubelet/kubeconfig";
/// Kubelet's rotated client cert; must go when the CA changes.
pub const KUBELET_CLIENT_CURRENT: &str = "/var/lib/kubelet/pki/kubelet-client-current.pem";
/// Where the original tool logs, and so do we.
pub const ROTATE_LOG: &str = "/var/log/azure/rotate-certs.log";
/// Where AKS Engine keeps the front-proxy material in etcd; the three keys below live under it.
pub const ETCD_PROXY_PREFIX: &str = "/proxycerts/";
/// etcd keys holding the front-proxy material.
pub const ETCD_PROXY_CA_KEY: &str = "/proxycerts/requestheader-client-ca-file";
pub const ETCD_PROXY_CERT_KEY: &str = "/proxycerts/proxy-client-cert-file";
pub const ETCD_PROXY_KEY_KEY: &str = "/proxycerts/proxy-client-key-file";

/// Scope ids of the catalogue, as profiles name them.
pub const SCOPE_IDS: &[&str] =
    &["ca", "apiserver", "client", "kubeconfig", "etcdserver", "etcdclient", "etcdpeer", "proxy-ca", "proxy", "kubeletserver"];

/// Which certificate, by kind; `EtcdPeer` carries the master index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CertKind {
    Ca,
    Apiserver,
    Client,
    Kubeconfig,
    EtcdServer,
    EtcdClient,
    EtcdPeer(usize),
    ProxyCa,
    Proxy,
    /// Self-signed per node; carries nothing but the node name, so it is per holder.
    KubeletServer,
}

impl CertKind {
    /// The profile scope id this kind belongs to.
    pub fn scope_id(&self) -> &'static str {
        match self {
            CertKind::Ca => "ca",
            CertKind::Apiserver => "apiserver",
            CertKind::Client => "client",
            CertKind::Kubeconfig => "kubeconfig",
            CertKind::EtcdServer => "etcdserver",
            CertKind::EtcdClient => "etcdclient",
            CertKind::EtcdPeer(_) => "etcdpeer",
            CertKind::ProxyCa => "proxy-ca",
            CertKind::Proxy => "proxy",
            CertKind::KubeletServer => "kubeletserver",
        }
    }

    /// A stable, unique id for plans and messages: `etcdpeer1`, `apiserver`...
    pub fn id(&self) -> String {
        match self {
            CertKind::EtcdPeer(i) => format!("etcdpeer{i}"),
            other => other.scope_id().to_string(),
        }
    }
}

/// Who signs a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum IssuerRef {
    /// The cluster CA (`CN=ca`).
    ClusterCa,
    /// The front-proxy CA (`CN=proxyClientCA`).
    FrontProxyCa,
    SelfSigned,
}

/// File ownership on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FileSpec {
    pub path: String,
    pub owner: String,
    pub group: String,
    pub mode: u32,
}

/// Where the API model keeps a certificate, if it does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ApiModelField {
    /// A pair of string fields of certificateProfile, e.g. apiServerCertificate/apiServerPrivateKey.
    Pair { cert: String, key: String },
    /// An element of etcdPeerCertificates / etcdPeerPrivateKeys.
    PeerIndex(usize),
}

impl ApiModelField {
    /// The certificate and key PEM this field holds in a certificateProfile, where present.
    pub fn read<'a>(&self, cp: &'a crate::model::apimodel::CertificateProfile) -> (Option<&'a str>, Option<&'a str>) {
        match self {
            ApiModelField::Pair { cert, .. } => cp.pair(cert),
            ApiModelField::PeerIndex(i) => {
                (cp.etcd_peer_certificates.get(*i).map(String::as_str), cp.etcd_peer_private_keys.get(*i).map(String::as_str))
            }
        }
    }
}

/// One certificate of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertEntry {
    pub kind: CertKind,
    pub description: String,
    pub common_name: String,
    pub organization: Option<String>,
    pub dns_sans: Vec<String>,
    pub ip_sans: Vec<IpAddr>,
    pub is_ca: bool,
    pub extended_usages: Vec<ExtendedUsage>,
    pub issuer: IssuerRef,
    pub cert_file: FileSpec,
    /// `None` where the key is not kept on nodes (the front-proxy CA's key lives only in the
    /// issuer's hands; AKS Engine makes it on the first master and drops it).
    pub key_file: Option<FileSpec>,
    /// Node names that hold this certificate.
    pub holders: Vec<String>,
    pub apimodel_field: Option<ApiModelField>,
    /// etcd keys holding the PEM (front-proxy material).
    pub etcd_keys: Vec<String>,
}

impl CertEntry {
    pub fn id(&self) -> String {
        self.kind.id()
    }

    /// A template to issue this certificate with the given key and validity window.
    pub fn template(&self, key: KeySpec, not_before: time::OffsetDateTime, not_after: time::OffsetDateTime) -> CertTemplate {
        CertTemplate {
            common_name: self.common_name.clone(),
            organization: self.organization.clone(),
            dns_sans: self.dns_sans.clone(),
            ip_sans: self.ip_sans.clone(),
            is_ca: self.is_ca,
            extended_usages: self.extended_usages.clone(),
            key,
            not_before,
            not_after,
        }
    }
}

fn cert_file(name: &str) -> FileSpec {
    FileSpec { path: format!("{CERT_DIR}/{name}"), owner: "root".into(), group: "root".into(), mode: 0o644 }
}

fn key_file(name: &str, owner: &str) -> FileSpec {
    FileSpec { path: format!("{CERT_DIR}/{name}"), owner: owner.into(), group: owner.into(), mode: 0o600 }
}

fn pair(cert: &str, key: &str) -> Option<ApiModelField> {
    Some(ApiModelField::Pair { cert: cert.into(), key: key.into() })
}

/// Builds the catalogue for a cluster. Kubelet serving certs are listed per Linux node.
/// Windows nodes hold the CA and client certs under c:\k; they appear as holders here and
/// their paths are mapped by the Windows steps.
pub fn catalogue(topo: &Topology) -> Vec<CertEntry> {
    let masters: Vec<String> = topo.masters.iter().map(|n| n.name.clone()).collect();
    let everyone: Vec<String> = topo.nodes().map(|n| n.name.clone()).collect();
    let api_ips = topo.apiserver_ip_sans();
    let both = vec![ExtendedUsage::ServerAuth, ExtendedUsage::ClientAuth];
    let mut out = vec![
        CertEntry {
            kind: CertKind::Ca,
            description: "cluster CA; signs every other certificate and trusts clients".into(),
            common_name: "ca".into(),
            organization: None,
            dns_sans: vec![],
            ip_sans: vec![],
            is_ca: true,
            extended_usages: vec![],
            issuer: IssuerRef::SelfSigned,
            cert_file: cert_file("ca.crt"),
            // The CA key is only on masters; agents hold ca.crt alone.
            key_file: Some(key_file("ca.key", "root")),
            holders: everyone.clone(),
            apimodel_field: pair("caCertificate", "caPrivateKey"),
            etcd_keys: vec![],
        },
        CertEntry {
            kind: CertKind::Apiserver,
            description: "kube-apiserver serving certificate; also signs service-account tokens".into(),
            common_name: "apiserver".into(),
            organization: None,
            dns_sans: topo.apiserver_dns_sans(),
            ip_sans: api_ips.clone(),
            is_ca: false,
            extended_usages: vec![ExtendedUsage::ServerAuth],
            issuer: IssuerRef::ClusterCa,
            cert_file: cert_file("apiserver.crt"),
            key_file: Some(key_file("apiserver.key", "root")),
            holders: masters.clone(),
            apimodel_field: pair("apiServerCertificate", "apiServerPrivateKey"),
            etcd_keys: vec![],
        },
        CertEntry {
            kind: CertKind::Client,
            description: "kubelet client identity (referenced by /var/lib/kubelet/kubeconfig)".into(),
            common_name: "client".into(),
            organization: Some("system:masters".into()),
            dns_sans: vec![],
            ip_sans: vec![],
            is_ca: false,
            extended_usages: vec![ExtendedUsage::ClientAuth],
            issuer: IssuerRef::ClusterCa,
            cert_file: cert_file("client.crt"),
            key_file: Some(key_file("client.key", "root")),
            holders: everyone.clone(),
            apimodel_field: pair("clientCertificate", "clientPrivateKey"),
            etcd_keys: vec![],
        },
        // AKS Engine writes this certificate only inline, as client-certificate-data of the
        // admin kubeconfig (cse_config.sh configureAdminKubeconfig: owner the admin user, 0600)
        // and in apimodel.json; masters have no kubectlClient.crt or .key.
        CertEntry {
            kind: CertKind::Kubeconfig,
            description: "admin kubeconfig identity (inline in ~/.kube/config on masters and in apimodel.json)".into(),
            common_name: "client".into(),
            organization: Some("system:masters".into()),
            dns_sans: vec![],
            ip_sans: vec![],
            is_ca: false,
            extended_usages: vec![ExtendedUsage::ClientAuth],
            issuer: IssuerRef::ClusterCa,
            cert_file: FileSpec {
                path: admin_kubeconfig_path(&topo.admin_username),
                owner: topo.admin_username.clone(),
                group: topo.admin_username.clone(),
                mode: 0o600,
            },
            // The key is inline beside it (client-key-data); it is not a file of its own.
            key_file: None,
            holders: masters.clone(),
            apimodel_field: pair("kubeConfigCertificate", "kubeConfigPrivateKey"),
            etcd_keys: vec![],
        },
        CertEntry {
            kind: CertKind::EtcdServer,
            description: "etcd serving certificate (client port 2379)".into(),
            common_name: "etcdserver".into(),
            organization: None,
            dns_sans: vec![],
            ip_sans: api_ips.clone(),
            is_ca: false,
            extended_usages: both.clone(),
            issuer: IssuerRef::ClusterCa,
            cert_file: cert_file("etcdserver.crt"),
            key_file: Some(key_file("etcdserver.key", "etcd")),
            holders: masters.clone(),
            apimodel_field: pair("etcdServerCertificate", "etcdServerPrivateKey"),
            etcd_keys: vec![],
        },
        CertEntry {
            kind: CertKind::EtcdClient,
            description: "etcd client identity of kube-apiserver and etcdctl".into(),
            common_name: "etcdclient".into(),
            organization: None,
            dns_sans: vec![],
            ip_sans: api_ips.clone(),
            is_ca: false,
            extended_usages: both.clone(),
            issuer: IssuerRef::ClusterCa,
            cert_file: cert_file("etcdclient.crt"),
            key_file: Some(key_file("etcdclient.key", "root")),
            holders: masters.clone(),
            apimodel_field: pair("etcdClientCertificate", "etcdClientPrivateKey"),
            etcd_keys: vec![],
        },
    ];
    for m in &topo.masters {
        let i = m.index;
        out.push(CertEntry {
            kind: CertKind::EtcdPeer(i),
            description: format!("etcd peer certificate of member {i} (port 2380)"),
            common_name: "etcdpeer".into(),
            organization: None,
            dns_sans: vec![],
            ip_sans: api_ips.clone(),
            is_ca: false,
            extended_usages: both.clone(),
            issuer: IssuerRef::ClusterCa,
            cert_file: cert_file(&format!("etcdpeer{i}.crt")),
            key_file: Some(key_file(&format!("etcdpeer{i}.key"), "etcd")),
            holders: vec![m.name.clone()],
            apimodel_field: Some(ApiModelField::PeerIndex(i)),
            etcd_keys: vec![],
        });
    }
    out.push(CertEntry {
        kind: CertKind::ProxyCa,
        description: "front-proxy (aggregation layer) CA; its key is not kept on nodes".into(),
        common_name: "proxyClientCA".into(),
        organization: None,
        dns_sans: vec![],
        ip_sans: vec![],
        is_ca: true,
        extended_usages: vec![],
        issuer: IssuerRef::SelfSigned,
        cert_file: cert_file("proxy-ca.crt"),
        key_file: None,
        holders: masters.clone(),
        apimodel_field: None,
        etcd_keys: vec![ETCD_PROXY_CA_KEY.into()],
    });
    out.push(CertEntry {
        kind: CertKind::Proxy,
        description: "front-proxy client (kube-apiserver to aggregated API servers)".into(),
        common_name: "aggregator".into(),
        organization: Some("system:masters".into()),
        dns_sans: vec![],
        ip_sans: vec![],
        is_ca: false,
        // generateproxycerts.sh signs it with `openssl x509 -req` and no extension file: X.509
        // v1, no extensions, so no EKU (Go's x509 then allows any usage).
        extended_usages: vec![],
        issuer: IssuerRef::FrontProxyCa,
        cert_file: cert_file("proxy.crt"),
        key_file: Some(key_file("proxy.key", "root")),
        holders: masters.clone(),
        apimodel_field: None,
        etcd_keys: vec![ETCD_PROXY_CERT_KEY.into(), ETCD_PROXY_KEY_KEY.into()],
    });
    for n in topo.nodes().filter(|n| n.os == OsType::Linux) {
        out.push(kubelet_server_entry(n));
    }
    out
}

/// The kubelet serving certificate of one node: self-signed, `CN=<node name>`. AKS Engine's
/// provisioning script makes it with `openssl req -x509`, whose default v3_ca extensions mark
/// it a CA and give it no extended key usage; the catalogue describes it as it is.
pub fn kubelet_server_entry(node: &Node) -> CertEntry {
    CertEntry {
        kind: CertKind::KubeletServer,
        description: format!("kubelet serving certificate of {} (self-signed)", node.name),
        common_name: node.name.clone(),
        organization: None,
        dns_sans: vec![],
        ip_sans: vec![],
        is_ca: true,
        extended_usages: vec![],
        issuer: IssuerRef::SelfSigned,
        cert_file: cert_file("kubeletserver.crt"),
        key_file: Some(key_file("kubeletserver.key", "root")),
        holders: vec![node.name.clone()],
        apimodel_field: None,
        etcd_keys: vec![],
    }
}

/// The admin kubeconfig on masters, where AKS Engine puts the kubeconfig certificate inline.
pub fn admin_kubeconfig_path(admin_username: &str) -> String {
    format!("/home/{admin_username}/.kube/config")
}

impl CertEntry {
    /// Whether the certificate lives inline in the admin kubeconfig rather than in files of
    /// its own: refresh reads it from there and apply writes it there, never as files.
    pub fn in_admin_kubeconfig(&self) -> bool {
        self.kind == CertKind::Kubeconfig
    }
}

/// Whether a node holds the key of an entry (agents hold ca.crt without ca.key).
pub fn holds_key(entry: &CertEntry, node: &Node) -> bool {
    entry.key_file.is_some() && !(entry.kind == CertKind::Ca && node.role == Role::Agent)
}

/// How a plan names a node's own kubelet serving certificate.
const KUBELET_SERVER_PREFIX: &str = "kubeletserver:";

/// The id a plan gives a certificate: its catalogue id, or `kubeletserver:<node>` for a
/// node's own serving certificate (one per node, each self-signed).
pub fn plan_id(entry: &CertEntry) -> String {
    if entry.kind == CertKind::KubeletServer {
        format!("{KUBELET_SERVER_PREFIX}{}", entry.holders.first().map(String::as_str).unwrap_or(""))
    } else {
        entry.id()
    }
}

/// The catalogue entry a plan id names; `Err` says why there is none.
pub fn entry_of_plan_id(catalogue: &[CertEntry], topo: &Topology, id: &str) -> Result<CertEntry, String> {
    if let Some(name) = id.strip_prefix(KUBELET_SERVER_PREFIX) {
        let node = topo.node(name).ok_or_else(|| format!("the plan names node {name}, which the API model does not have"))?;
        return Ok(kubelet_server_entry(node));
    }
    catalogue.iter().find(|e| e.id() == id).cloned().ok_or_else(|| format!("the plan names certificate `{id}`, which this cluster's catalogue does not have"))
}

/// Where a certificate lives on one node: its certificate file, and its key file where the
/// node keeps the key.
#[derive(Debug, Clone, PartialEq)]
pub struct FilesOnNode {
    pub entry: CertEntry,
    pub cert: FileSpec,
    pub key: Option<FileSpec>,
}

/// The files plan certificate `id` puts on `node`, for apply (what to install) and for the
/// staleness check (what an earlier run of the plan installed) alike. `Ok(None)` when the
/// node does not hold the certificate, or holds it only inline in the admin kubeconfig.
pub fn files_on_node(catalogue: &[CertEntry], topo: &Topology, id: &str, node: &Node) -> Result<Option<FilesOnNode>, String> {
    let entry = entry_of_plan_id(catalogue, topo, id)?;
    if !entry.holders.contains(&node.name) || entry.in_admin_kubeconfig() {
        return Ok(None);
    }
    let key = entry.key_file.clone().filter(|_| holds_key(&entry, node));
    Ok(Some(FilesOnNode { cert: entry.cert_file.clone(), key, entry }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::SourceFile;
    use crate::model::apimodel::ApiModel;

    fn topo() -> Topology {
        let json = r#"{"apiVersion":"vlabs","location":"local","properties":{
            "masterProfile":{"count":3,"dnsPrefix":"kube-lab","firstConsecutiveStaticIP":"10.255.255.5"},
            "agentPoolProfiles":[{"name":"agentpool1","count":2}],
            "linuxProfile":{"adminUsername":"azureuser"},
            "customCloudProfile":{"environment":{"resourceManagerVMDNSSuffix":"cloudapp.azurestack.external"}}}}"#;
        let m = ApiModel::parse(SourceFile::from_text("apimodel.json", json)).unwrap();
        Topology::derive_with_suffix(&m, "12345678").unwrap()
    }

    #[test]
    fn catalogue_lists_every_aks_engine_certificate_once() {
        let t = topo();
        let c = catalogue(&t);
        let ids: Vec<String> = c.iter().filter(|e| e.kind != CertKind::KubeletServer).map(|e| e.id()).collect();
        assert_eq!(
            ids,
            ["ca", "apiserver", "client", "kubeconfig", "etcdserver", "etcdclient", "etcdpeer0", "etcdpeer1", "etcdpeer2", "proxy-ca", "proxy"]
        );
        assert_eq!(c.iter().filter(|e| e.kind == CertKind::KubeletServer).count(), 5);
        let mut paths: Vec<(&str, &str)> =
            c.iter().flat_map(|e| e.holders.iter().map(move |h| (h.as_str(), e.cert_file.path.as_str()))).collect();
        let n = paths.len();
        paths.sort();
        paths.dedup();
        assert_eq!(paths.len(), n, "two entries claim the same file on the same node");
    }

    #[test]
    fn etcd_keys_are_owned_by_etcd_and_peers_stay_on_their_master() {
        let t = topo();
        let c = catalogue(&t);
        let peer1 = c.iter().find(|e| e.kind == CertKind::EtcdPeer(1)).unwrap();
        assert_eq!(peer1.holders, vec!["k8s-master-12345678-1".to_string()]);
        assert_eq!(peer1.key_file.as_ref().unwrap().owner, "etcd");
        let server = c.iter().find(|e| e.kind == CertKind::EtcdServer).unwrap();
        assert_eq!(server.key_file.as_ref().unwrap().owner, "etcd");
        assert_eq!(server.key_file.as_ref().unwrap().mode, 0o600);
        let client = c.iter().find(|e| e.kind == CertKind::EtcdClient).unwrap();
        assert_eq!(client.key_file.as_ref().unwrap().owner, "root");
        assert_eq!(client.cert_file.mode, 0o644);
    }

    #[test]
    fn agents_hold_ca_cert_client_and_kubelet_server_only() {
        let t = topo();
        let c = catalogue(&t);
        let agent = &t.agents[0];
        let held: Vec<String> = c.iter().filter(|e| e.holders.contains(&agent.name)).map(|e| e.id()).collect();
        assert_eq!(held, ["ca", "client", "kubeletserver"]);
        let ca = &c[0];
        assert!(!holds_key(ca, agent));
        assert!(holds_key(ca, &t.masters[0]));
    }
}
