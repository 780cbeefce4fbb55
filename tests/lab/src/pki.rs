//! The cluster PKI the lab issues, shaped as AKS Engine issues it (DOMAIN.md "The PKI that
//! AKS Engine issues"): one CA `CN=ca`, apiserver, client, kubectlClient, etcdserver,
//! etcdclient, etcdpeer<i>, the front-proxy CA and client, and a self-signed kubeletserver
//! per node. RSA 2048 keys (for speed). Issuance is certrotate's own (`certrotate::pki::issue`),
//! so the lab's certificates are made exactly as certrotate makes rotated ones.
//!
//! Which certificates exist and what they say comes from `certrotate::pki::catalogue`, over
//! the topology certrotate derives from the lab's own apimodel.json: the lab and certrotate
//! share one definition of an AKS Engine cluster.

use crate::error::LabError;
use crate::spec::{Expiry, Layout};
use certrotate::pki::issue::{generate_keys, issue_all, issue_ca, issue_ca_with_key};
use certrotate::model::apimodel::ApiModel;
use certrotate::model::topology::Topology;
use certrotate::pki::catalogue::{CertEntry, CertKind};
use certrotate::pki::{KeyCertPair, KeySpec};
use time::{Duration, OffsetDateTime};

/// Every certificate and key of a lab cluster.
#[derive(Debug, Clone)]
pub struct ClusterPki {
    pub ca: KeyCertPair,
    pub apiserver: KeyCertPair,
    pub client: KeyCertPair,
    pub kubectl_client: KeyCertPair,
    pub etcd_server: KeyCertPair,
    pub etcd_client: KeyCertPair,
    pub etcd_peers: Vec<KeyCertPair>,
    pub proxy_ca: KeyCertPair,
    pub proxy: KeyCertPair,
    /// One per node, in layout order.
    pub kubelet_servers: Vec<KeyCertPair>,
}

fn pki_err(what: &str) -> impl Fn(certrotate::pki::issue::IssueError) -> LabError + '_ {
    move |e| LabError::Pki { what: what.to_string(), detail: e.to_string() }
}

/// Validity window of leaf certificates for the requested expiry. The CA keeps AKS Engine's
/// 30 years: real expired clusters have expired leaves under a valid CA.
fn leaf_window(expiry: Expiry, now: OffsetDateTime) -> (OffsetDateTime, OffsetDateTime) {
    match expiry {
        Expiry::Default => (now - Duration::hours(1), now + Duration::days(365 * 30)),
        Expiry::In(secs) => (now - Duration::hours(1), now + Duration::seconds(secs as i64)),
        Expiry::Expired => (now - Duration::days(2 * 365), now - Duration::days(1)),
    }
}

/// Issue every certificate of the catalogue (certrotate's table of what an AKS Engine cluster
/// carries, derived from the lab's own apimodel.json): the cluster CA and the front-proxy CA
/// first, then every leaf with its issuer, RSA 2048 keys generated on every core.
pub fn issue_cluster_pki(layout: &Layout, entries: &[CertEntry]) -> Result<ClusterPki, LabError> {
    let now = OffsetDateTime::now_utc();
    let (nb, na) = leaf_window(layout.spec.expiry, now);
    let ca_window = (now - Duration::hours(1), now + Duration::days(365 * 30));
    // kubeletserver is made on the node by `openssl req -x509` for 20 years and never rotated
    // by AKS Engine; openssl marks such self-signed certificates CA:TRUE, so the lab issues it
    // as a self-signed CA too.
    let kubelet_window = (now - Duration::hours(1), now + Duration::days(365 * 20));
    let find = |kind: CertKind| {
        entries.iter().find(|e| e.kind == kind).ok_or_else(|| LabError::Pki {
            what: kind.id(),
            detail: "the catalogue has no such certificate for this cluster".into(),
        })
    };
    let ca_template = find(CertKind::Ca)?.template(KeySpec::Rsa2048, ca_window.0, ca_window.1);
    let proxy_ca_template = find(CertKind::ProxyCa)?.template(KeySpec::Rsa2048, ca_window.0, ca_window.1);
    let proxy_template = find(CertKind::Proxy)?.template(KeySpec::Rsa2048, nb, na);
    // The front-proxy pair as AKS Engine's masters make it, with openssl (leaves whose expiry
    // the lab sets itself cannot be: openssl x509 -req only counts days from now).
    let front_proxy = || match layout.spec.expiry {
        Expiry::Default => front_proxy_by_openssl(),
        Expiry::In(_) | Expiry::Expired => {
            let ca = issue_ca(&proxy_ca_template).map_err(pki_err("the front-proxy CA"))?;
            let proxy = issue_all(std::slice::from_ref(&proxy_template), &ca).map_err(pki_err("the front-proxy client"))?;
            Ok((ca, proxy.into_iter().next().expect("one proxy certificate")))
        }
    };
    let (ca, (proxy_ca, proxy)) = std::thread::scope(|s| {
        let proxy = s.spawn(front_proxy);
        let ca = issue_ca(&ca_template).map_err(pki_err("the cluster CA"));
        let proxy = proxy.join().unwrap_or_else(|_| Err(LabError::Pki { what: "the front-proxy CA".into(), detail: "worker panicked".into() }));
        Ok::<_, LabError>((ca?, proxy?))
    })?;

    let masters = layout.masters().count();
    let mut kinds = vec![CertKind::Apiserver, CertKind::Client, CertKind::Kubeconfig, CertKind::EtcdServer, CertKind::EtcdClient];
    kinds.extend((0..masters).map(CertKind::EtcdPeer));
    let templates = kinds
        .iter()
        .map(|k| find(*k).map(|e| e.template(KeySpec::Rsa2048, nb, na)))
        .collect::<Result<Vec<_>, _>>()?;
    let signed = issue_all(&templates, &ca).map_err(pki_err("the cluster's leaf certificates"))?;

    let kubelet_templates = layout
        .nodes
        .iter()
        .map(|node| {
            let entry = entries
                .iter()
                .find(|e| e.kind == CertKind::KubeletServer && e.holders.first() == Some(&node.name))
                .ok_or_else(|| LabError::Pki { what: format!("kubeletserver of {}", node.name), detail: "missing from the catalogue".into() })?;
            let mut template = entry.template(KeySpec::Rsa2048, kubelet_window.0, kubelet_window.1);
            template.is_ca = true;
            Ok(template)
        })
        .collect::<Result<Vec<_>, LabError>>()?;
    // Keys first, on every core: RSA generation is what makes a 50-node lab slow to issue.
    let kubelet_keys = generate_keys(&vec![KeySpec::Rsa2048; kubelet_templates.len()]).map_err(pki_err("kubeletserver keys"))?;
    let kubelet_servers = kubelet_templates
        .iter()
        .zip(&kubelet_keys)
        .map(|(t, key)| issue_ca_with_key(t, key).map_err(pki_err("a kubeletserver certificate")))
        .collect::<Result<Vec<_>, _>>()?;

    let mut signed = signed.into_iter();
    let mut next = || signed.next().expect("one certificate per template");
    Ok(ClusterPki {
        apiserver: next(),
        client: next(),
        kubectl_client: next(),
        etcd_server: next(),
        etcd_client: next(),
        etcd_peers: (0..masters).map(|_| next()).collect(),
        proxy,
        kubelet_servers,
        ca,
        proxy_ca,
    })
}

/// The front-proxy CA and client made as AKS Engine's generateproxycerts.sh makes them on the
/// first master (parts/k8s/cloud-init/artifacts/generateproxycerts.sh): `openssl genrsa 2048`
/// keys, the CA by `openssl req -new -x509 -days 262824 -subj /CN=proxyClientCA` (openssl's
/// v3_ca extensions: CA:TRUE and key identifiers), the client by a CSR for
/// `/CN=aggregator/O=system:masters` signed with `openssl x509 -req -days 262824 -set_serial 02`,
/// which without an extension file is an X.509 v1 certificate. Keys are PKCS#1 (`-traditional`
/// on OpenSSL 3), as the node image's OpenSSL 1.1.1 writes them.
pub fn front_proxy_by_openssl() -> Result<(KeyCertPair, KeyCertPair), LabError> {
    let dir = tempfile::Builder::new().prefix("lab-front-proxy").tempdir().map_err(LabError::io("making a directory for the front-proxy PKI"))?;
    let d = dir.path();
    let traditional = std::process::Command::new("openssl")
        .args(["genrsa", "-help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).contains("-traditional"))
        .unwrap_or(false);
    let genrsa = |out: &'static str| {
        let mut args = vec!["genrsa"];
        if traditional {
            args.push("-traditional");
        }
        args.extend(["-out", out, "2048"]);
        args
    };
    let days = certrotate::model::profile::AKS_ENGINE_FRONT_PROXY_DAYS.to_string();
    let steps: Vec<Vec<&str>> = vec![
        genrsa("proxy-client-ca.key"),
        vec!["req", "-new", "-x509", "-days", &days, "-key", "proxy-client-ca.key", "-out", "proxy-client-ca.crt", "-subj", "/CN=proxyClientCA"],
        genrsa("proxy-client.key"),
        vec!["req", "-new", "-key", "proxy-client.key", "-out", "proxy-client.csr", "-subj", "/CN=aggregator/O=system:masters"],
        vec!["x509", "-req", "-days", &days, "-in", "proxy-client.csr", "-CA", "proxy-client-ca.crt", "-CAkey", "proxy-client-ca.key", "-set_serial", "02", "-out", "proxy-client.crt"],
    ];
    for args in steps {
        let out = std::process::Command::new("openssl")
            .args(&args)
            .current_dir(d)
            .env("RANDFILE", d.join(".rnd"))
            .output()
            .map_err(LabError::io("running openssl (tests/install-deps.sh installs it)"))?;
        if !out.status.success() {
            return Err(LabError::Command { command: format!("openssl {}", args.join(" ")), detail: String::from_utf8_lossy(&out.stderr).trim().to_string() });
        }
    }
    let read = |name: &str| std::fs::read_to_string(d.join(name)).map_err(LabError::io(format!("reading the front-proxy {name}")));
    Ok((
        KeyCertPair { cert_pem: read("proxy-client-ca.crt")?, key_pem: read("proxy-client-ca.key")? },
        KeyCertPair { cert_pem: read("proxy-client.crt")?, key_pem: read("proxy-client.key")? },
    ))
}

/// Derive certrotate's topology from the lab's apimodel.json (and azuredeploy.json beside it)
/// and check it names the lab's nodes as the lab does: the lab and certrotate must agree.
pub fn topology_of(layout: &Layout, apimodel_path: &std::path::Path) -> Result<Topology, LabError> {
    let model = ApiModel::load(apimodel_path).map_err(|e| LabError::Pki { what: "the lab's apimodel.json".into(), detail: format!("{e:?}") })?;
    let topology = Topology::derive(&model, None).map_err(|e| LabError::Pki { what: "the lab's topology".into(), detail: format!("{e:?}") })?;
    let theirs: Vec<(&str, Option<std::net::Ipv4Addr>)> = topology.nodes().map(|n| (n.name.as_str(), n.ip)).collect();
    for node in &layout.nodes {
        match theirs.iter().find(|(name, _)| *name == node.name) {
            None => {
                return Err(LabError::Pki {
                    what: "the lab's topology".into(),
                    detail: format!("certrotate derives no node {} from the lab's apimodel.json", node.name),
                })
            }
            Some((_, Some(ip))) if *ip != node.ip => {
                return Err(LabError::Pki {
                    what: "the lab's topology".into(),
                    detail: format!("certrotate puts {} at {ip}, the lab at {}", node.name, node.ip),
                })
            }
            _ => {}
        }
    }
    if theirs.len() != layout.nodes.len() {
        return Err(LabError::Pki { what: "the lab's topology".into(), detail: format!("{} nodes in certrotate's view, {} in the lab", theirs.len(), layout.nodes.len()) });
    }
    Ok(topology)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::LabSpec;
    use x509_parser::prelude::*;

    fn parse(pem: &str) -> (Vec<u8>,) {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        (pem.contents,)
    }

    #[test]
    fn issues_aks_engine_shaped_pki() {
        let spec = LabSpec { masters: 3, agents: 1, expiry: Expiry::Expired, ..Default::default() };
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::derive(dir.path(), spec, |_| false).unwrap();
        let identity = crate::outputs::Identity::generate(&layout);
        crate::outputs::write_model_skeleton(&layout, &identity, "ssh-ed25519 AAAA test").unwrap();
        let topology = topology_of(&layout, &crate::outputs::apimodel_path(&layout)).unwrap();
        let pki = issue_cluster_pki(&layout, &certrotate::pki::catalogue::catalogue(&topology)).unwrap();
        assert_eq!(pki.etcd_peers.len(), 3);
        assert_eq!(pki.kubelet_servers.len(), 4);
        assert!(pki.apiserver.key_pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        let (der,) = parse(&pki.apiserver.cert_pem);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(cert.subject().to_string(), "CN=apiserver");
        assert_eq!(cert.issuer().to_string(), "CN=ca");
        assert!(!cert.validity().is_valid(), "--expired leaves are expired");
        let sans = cert.subject_alternative_name().unwrap().unwrap();
        let ips: Vec<_> = sans.value.general_names.iter().filter_map(|n| match n {
            GeneralName::IPAddress(b) => Some(b.to_vec()),
            _ => None,
        }).collect();
        assert_eq!(ips[0], layout.nodes[0].ip.octets().to_vec());
        assert_eq!(ips[1], vec![127, 0, 0, 1]);
        assert_eq!(ips[2], layout.ilb_ip().octets().to_vec());
        assert_eq!(ips[3], layout.nodes[1].ip.octets().to_vec());
        assert_eq!(ips.last().unwrap(), &vec![10, 0, 0, 1]);
        let dns: Vec<_> = sans.value.general_names.iter().filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        }).collect();
        assert_eq!(dns[0], layout.apiserver_fqdn(), "the FQDN comes first");
        let (der,) = parse(&pki.ca.cert_pem);
        let (_, ca) = X509Certificate::from_der(&der).unwrap();
        assert!(ca.validity().is_valid(), "the CA stays valid");
        let (der,) = parse(&pki.proxy.cert_pem);
        let (_, proxy) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(proxy.issuer().to_string(), "CN=proxyClientCA");
        assert_eq!(proxy.subject().to_string(), "O=system:masters, CN=aggregator");
        assert!(proxy.extensions().is_empty(), "issued as AKS Engine's openssl issues it: no extensions");
    }

    /// The default lab's front-proxy pair is openssl's, shaped as generateproxycerts.sh makes it.
    #[test]
    fn front_proxy_pair_is_made_as_generateproxycerts_makes_it() {
        let (ca, proxy) = front_proxy_by_openssl().unwrap();
        let (der,) = parse(&proxy.cert_pem);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(cert.version(), X509Version::V1);
        assert!(cert.extensions().is_empty());
        assert_eq!(cert.raw_serial(), [2]);
        assert_eq!(cert.subject().to_string(), "CN=aggregator, O=system:masters");
        assert_eq!(cert.issuer().to_string(), "CN=proxyClientCA");
        let days = (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp()) / 86400;
        assert_eq!(days, 262824);
        let (der,) = parse(&ca.cert_pem);
        let (_, ca_cert) = X509Certificate::from_der(&der).unwrap();
        assert!(ca_cert.is_ca());
        assert_eq!((ca_cert.validity().not_after.timestamp() - ca_cert.validity().not_before.timestamp()) / 86400, 262824);
        assert!(proxy.key_pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"), "PKCS#1, as OpenSSL 1.1.1 writes it");
        // certrotate reads the pair and finds it as the catalogue describes it.
        let facts = certrotate::pki::inspect::parse_cert_pem(&proxy.cert_pem).unwrap();
        assert!(facts.extended_usages.is_empty() && !facts.is_ca);
    }
}
