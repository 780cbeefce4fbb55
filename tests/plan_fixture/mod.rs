//! Plain-data clusters for the planner tests: a topology from a small API model, and an
//! inventory of real certificates (issued with certrotate's own issuer, RSA 2048 over a
//! small pool of keys so the 5+50 cluster builds in well under a second) with chosen
//! expiries, reduced to what refresh would report: facts, PEM of certificates, and only
//! public-key fingerprints of keys.
#![allow(dead_code)]

use certrotate::diag::SourceFile;
use certrotate::model::apimodel::ApiModel;
use certrotate::model::inventory::{EtcdProxyState, Inventory, NodeInventory, ObservedContent, ObservedFile, ObservedKubeconfig};
use certrotate::model::profile::Profile;
use certrotate::model::topology::{Role, Topology};
use certrotate::pki::catalogue::{catalogue, holds_key, CertEntry, CertKind, IssuerRef, KUBELET_KUBECONFIG};
use certrotate::pki::inspect::{self, CertFacts};
use certrotate::pki::issue::{self, CertificateAuthority, GeneratedKey};
use certrotate::pki::{CertTemplate, KeyCertPair, KeySpec};
use certrotate::plan::diff::{self, Diff, DiffInput};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::OnceLock;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

/// The moment every test plans at, so expiries and renderings are reproducible.
pub const NOW: OffsetDateTime = datetime!(2026-11-27 12:00 UTC);

/// How old the cluster's leaves are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Age {
    /// Every certificate valid for decades (what a fresh AKS Engine cluster with 30-year
    /// certificates looks like).
    Healthy,
    /// Leaves (and the front-proxy pair) expire in this many days.
    ExpiringInDays(i64),
    /// Leaves (and the front-proxy pair) expired this many days ago.
    ExpiredDaysAgo(i64),
}

fn keys() -> &'static [GeneratedKey] {
    static KEYS: OnceLock<Vec<GeneratedKey>> = OnceLock::new();
    KEYS.get_or_init(|| issue::generate_keys(&[KeySpec::Rsa2048; 4]).expect("RSA keys generate"))
}

pub fn shipped(name: &str) -> Profile {
    Profile::load(name).unwrap_or_else(|e| panic!("shipped profile {name}: {e:?}"))
}

pub fn topology(masters: usize, agents: usize) -> Topology {
    let json = format!(
        r#"{{"apiVersion":"vlabs","location":"local","properties":{{
        "orchestratorProfile":{{"kubernetesConfig":{{"serviceCidr":"10.0.0.0/16"}}}},
        "masterProfile":{{"count":{masters},"dnsPrefix":"kube-lab","firstConsecutiveStaticIP":"10.255.255.5"}},
        "agentPoolProfiles":[{{"name":"agentpool1","count":{agents}}}],
        "linuxProfile":{{"adminUsername":"azureuser"}},
        "customCloudProfile":{{"environment":{{"resourceManagerVMDNSSuffix":"cloudapp.azurestack.external"}}}}}}}}"#
    );
    let model = ApiModel::parse(SourceFile::from_text("apimodel.json", json)).expect("fixture API model parses");
    Topology::derive_with_suffix(&model, "12345678").expect("fixture topology derives")
}

/// A cluster as refresh would see it, plus the material needed to forge drift.
pub struct Cluster {
    pub topo: Topology,
    pub catalogue: Vec<CertEntry>,
    pub inventory: Inventory,
    pub apimodel: Vec<(String, CertFacts)>,
    pub ca: KeyCertPair,
    pub issued: HashMap<String, KeyCertPair>,
}

fn template(entry: &CertEntry, not_before: OffsetDateTime, not_after: OffsetDateTime) -> CertTemplate {
    entry.template(KeySpec::Rsa2048, not_before, not_after)
}

fn self_signed_leaf(entry: &CertEntry, key: &GeneratedKey, not_before: OffsetDateTime, not_after: OffsetDateTime) -> KeyCertPair {
    let pkcs8 = issue::pkcs1_pem_to_pkcs8_pem(&key.to_pem().unwrap()).unwrap();
    let key_pair = rcgen::KeyPair::from_pem(&pkcs8).expect("pool key loads into rcgen");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, entry.common_name.clone());
    params.not_before = not_before;
    params.not_after = not_after;
    // As `openssl req -x509` makes it on AKS Engine nodes: CA:TRUE, no extended key usage.
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key_pair).expect("self-signed kubelet certificate");
    KeyCertPair { cert_pem: cert.pem(), key_pem: key.to_pem().unwrap() }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn cert_file(path: &str, owner: &str, mode: u32, pem: &str) -> ObservedFile {
    ObservedFile {
        path: path.into(),
        owner: owner.into(),
        group: owner.into(),
        mode,
        sha256: sha256_hex(pem.as_bytes()),
        content: ObservedContent::Certificate { facts: Box::new(inspect::parse_cert_pem(pem).unwrap()), pem: pem.into() },
    }
}

pub fn key_file(path: &str, owner: &str, key_pem: &str) -> ObservedFile {
    let facts = inspect::parse_key_pem(key_pem).unwrap();
    ObservedFile {
        path: path.into(),
        owner: owner.into(),
        group: owner.into(),
        mode: 0o600,
        sha256: sha256_hex(key_pem.as_bytes()),
        content: ObservedContent::PrivateKey { algorithm: facts.algorithm, bits: facts.bits, public_key_sha256: facts.public_key_sha256 },
    }
}

/// Builds a cluster of `masters` + `agents` whose leaves are `age` old. The CA is valid for
/// decades in every case (AKS Engine's CA lives 30 years; it is the leaves that expire).
pub fn cluster(masters: usize, agents: usize, age: Age) -> Cluster {
    let topo = topology(masters, agents);
    let cat = catalogue(&topo);
    let leaf_window = match age {
        Age::Healthy => (NOW - Duration::days(365), NOW + Duration::days(365 * 29)),
        Age::ExpiringInDays(d) => (NOW - Duration::days(700), NOW + Duration::days(d)),
        Age::ExpiredDaysAgo(d) => (NOW - Duration::days(730 + d), NOW - Duration::days(d)),
    };
    let k = keys();
    let ca_entry = cat.iter().find(|e| e.kind == CertKind::Ca).unwrap();
    let ca = issue::issue_ca_with_key(&template(ca_entry, NOW - Duration::days(800), NOW + Duration::days(365 * 28)), &k[0]).unwrap();
    let proxy_ca_entry = cat.iter().find(|e| e.kind == CertKind::ProxyCa).unwrap();
    let proxy_ca = issue::issue_ca_with_key(&template(proxy_ca_entry, leaf_window.0, leaf_window.1), &k[1]).unwrap();
    let cluster_authority = CertificateAuthority::load(&ca).unwrap();
    let proxy_authority = CertificateAuthority::load(&proxy_ca).unwrap();

    let mut issued: HashMap<String, KeyCertPair> = HashMap::new();
    for (i, entry) in cat.iter().enumerate() {
        let key = &k[2 + i % 2];
        let pair = match (entry.kind, entry.issuer) {
            (CertKind::Ca, _) => ca.clone(),
            (CertKind::ProxyCa, _) => proxy_ca.clone(),
            (CertKind::KubeletServer, _) => self_signed_leaf(entry, key, NOW - Duration::days(400), NOW + Duration::days(365 * 19)),
            (_, IssuerRef::FrontProxyCa) => proxy_authority.issue_with_key(&template(entry, leaf_window.0, leaf_window.1), key).unwrap(),
            _ => cluster_authority.issue_with_key(&template(entry, leaf_window.0, leaf_window.1), key).unwrap(),
        };
        issued.insert(entry_key(entry), pair);
    }

    let mut nodes = Vec::new();
    for node in topo.nodes() {
        let mut files = Vec::new();
        for entry in cat.iter().filter(|e| e.holders.contains(&node.name)) {
            let pair = &issued[&entry_key(entry)];
            files.push(cert_file(&entry.cert_file.path, &entry.cert_file.owner, entry.cert_file.mode, &pair.cert_pem));
            if holds_key(entry, node) {
                let spec = entry.key_file.as_ref().unwrap();
                files.push(key_file(&spec.path, &spec.owner, &pair.key_pem));
            }
        }
        let mut kubeconfigs = vec![ObservedKubeconfig {
            path: KUBELET_KUBECONFIG.into(),
            owner: "root".into(),
            mode: 0o600,
            server: Some(format!("https://{}:443", topo.internal_lb_ip)),
            certificate_authority: Some("/etc/kubernetes/certs/ca.crt".into()),
            client_certificate: Some("/etc/kubernetes/certs/client.crt".into()),
            client_key: Some("/etc/kubernetes/certs/client.key".into()),
        }];
        let mut etcd_proxy = None;
        if node.role == Role::Master {
            let kc = &issued["kubeconfig"];
            let facts = inspect::parse_cert_pem(&kc.cert_pem).unwrap();
            kubeconfigs.push(ObservedKubeconfig {
                path: "/home/azureuser/.kube/config".into(),
                owner: "azureuser".into(),
                mode: 0o600,
                server: Some(format!("https://{}", topo.fqdn)),
                certificate_authority: Some(format!("embedded:{}", inspect::parse_cert_pem(&ca.cert_pem).unwrap().sha256_fingerprint)),
                client_certificate: Some(format!("embedded:{}", facts.sha256_fingerprint)),
                client_key: Some(format!("embedded:{}", facts.public_key_sha256)),
            });
            let proxy = &issued["proxy"];
            etcd_proxy = Some(EtcdProxyState {
                ca_sha256: Some(inspect::parse_cert_pem(&proxy_ca.cert_pem).unwrap().sha256_fingerprint),
                client_cert_sha256: Some(inspect::parse_cert_pem(&proxy.cert_pem).unwrap().sha256_fingerprint),
                client_key_public_sha256: Some(inspect::parse_key_pem(&proxy.key_pem).unwrap().public_key_sha256),
                wrong_form: vec![],
            });
        }
        nodes.push(NodeInventory {
            node: node.name.clone(),
            hostname: node.name.clone(),
            files,
            kubeconfigs,
            unexpected_files: vec![],
            etcd_proxy,
            kubelet_client_current: true,
            symlinks: vec![],
        });
    }
    let apimodel = cat
        .iter()
        .filter(|e| e.apimodel_field.is_some())
        .map(|e| (e.id(), inspect::parse_cert_pem(&issued[&entry_key(e)].cert_pem).unwrap()))
        .collect();
    Cluster {
        topo,
        catalogue: cat,
        inventory: Inventory { taken_at: NOW, nodes, unreachable: vec![] },
        apimodel,
        ca,
        issued,
    }
}

/// Key of `Cluster::issued`: the catalogue id, with the node for kubelet serving certificates.
pub fn entry_key(entry: &CertEntry) -> String {
    if entry.kind == CertKind::KubeletServer {
        format!("kubeletserver:{}", entry.holders[0])
    } else {
        entry.id()
    }
}

impl Cluster {
    pub fn diff(&self, profile: &Profile) -> Diff {
        self.diff_with(profile, None)
    }

    /// The diff with certificates supplied by the operator (`--certificate-profile`).
    pub fn diff_supplied(&self, profile: &Profile, supplied: &[(String, CertFacts)]) -> Diff {
        self.diff_with(profile, Some(supplied))
    }

    fn diff_with(&self, profile: &Profile, supplied: Option<&[(String, CertFacts)]>) -> Diff {
        diff::diff_with(DiffInput {
            topology: &self.topo,
            catalogue: &self.catalogue,
            inventory: &self.inventory,
            apimodel_certificates: Some(&self.apimodel),
            profile,
            now: NOW,
            supplied,
        })
    }

    pub fn master(&self, i: usize) -> String {
        self.topo.masters[i].name.clone()
    }

    pub fn agent(&self, i: usize) -> String {
        self.topo.agents[i].name.clone()
    }

    pub fn node_mut(&mut self, name: &str) -> &mut NodeInventory {
        self.inventory.nodes.iter_mut().find(|n| n.node == name).expect("node in inventory")
    }

    pub fn file_mut(&mut self, node: &str, path: &str) -> &mut ObservedFile {
        self.node_mut(node).files.iter_mut().find(|f| f.path == path).expect("file on node")
    }

    pub fn entry(&self, id: &str) -> &CertEntry {
        self.catalogue.iter().find(|e| e.id() == id).expect("catalogue entry")
    }

    /// Issues a certificate for `id` under this cluster's CA with a different template.
    pub fn issue_variant(&self, id: &str, edit: impl FnOnce(&mut CertTemplate)) -> KeyCertPair {
        let mut t = template(self.entry(id), NOW - Duration::days(10), NOW + Duration::days(365 * 5));
        edit(&mut t);
        CertificateAuthority::load(&self.ca).unwrap().issue_with_key(&t, &keys()[2]).unwrap()
    }
}
