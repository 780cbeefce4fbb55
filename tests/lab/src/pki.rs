//! The cluster PKI the lab issues, shaped as AKS Engine issues it (DOMAIN.md "The PKI that
//! AKS Engine issues"): one CA `CN=ca`, apiserver, client, kubectlClient, etcdserver,
//! etcdclient, etcdpeer<i>, the front-proxy CA and client, and a self-signed kubeletserver
//! per node. RSA 2048 keys (for speed). Issuance is certrotate's own (`certrotate::pki::issue`),
//! so the lab's certificates are made exactly as certrotate makes rotated ones.
//!
//! TODO(lab-infra): build the templates from `certrotate::pki::catalogue` once it lands, so
//! the lab and certrotate share one definition of which certificates a cluster has.

use crate::error::LabError;
use crate::spec::{Expiry, Layout};
use certrotate::pki::issue::{generate_keys, issue_all, issue_ca, issue_ca_with_key};
use certrotate::pki::{CertTemplate, ExtendedUsage, KeyCertPair, KeySpec};
use std::net::{IpAddr, Ipv4Addr};
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

/// The service CIDR's first address (10.0.0.0/16 in the lab's apimodel).
pub const SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

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

/// The apiserver's (and etcd's) IP SANs, in AKS Engine's order.
pub fn apiserver_ips(layout: &Layout) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = vec![layout.first_master().ip.into(), Ipv4Addr::LOCALHOST.into(), layout.ilb_ip().into()];
    ips.extend(layout.masters().skip(1).map(|m| IpAddr::from(m.ip)));
    ips.push(SERVICE_IP.into());
    ips
}

pub fn apiserver_dns_names(layout: &Layout) -> Vec<String> {
    let mut names = vec![layout.apiserver_fqdn()];
    names.extend(
        [
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            "kubernetes.kube-system",
            "kubernetes.kube-system.svc",
            "kubernetes.kube-system.svc.cluster.local",
        ]
        .map(String::from),
    );
    names
}

struct Window(OffsetDateTime, OffsetDateTime);

fn template(cn: &str, org: Option<&str>, dns: Vec<String>, ips: Vec<IpAddr>, usages: Vec<ExtendedUsage>, is_ca: bool, window: &Window) -> CertTemplate {
    CertTemplate {
        common_name: cn.into(),
        organization: org.map(String::from),
        dns_sans: dns,
        ip_sans: ips,
        is_ca,
        extended_usages: usages,
        key: KeySpec::Rsa2048,
        not_before: window.0,
        not_after: window.1,
    }
}

pub fn issue_cluster_pki(layout: &Layout) -> Result<ClusterPki, LabError> {
    use ExtendedUsage::{ClientAuth, ServerAuth};
    let now = OffsetDateTime::now_utc();
    let (nb, na) = leaf_window(layout.spec.expiry, now);
    let leaf = Window(nb, na);
    let thirty_years = Window(now - Duration::hours(1), now + Duration::days(365 * 30));
    // kubeletserver: made on the node by `openssl req -x509` for 20 years (AKS Engine never
    // rotates it), a self-signed CA:TRUE certificate.
    let twenty_years = Window(now - Duration::hours(1), now + Duration::days(365 * 20));

    let ca_template = template("ca", None, vec![], vec![], vec![], true, &thirty_years);
    let proxy_ca_template = template("proxyClientCA", None, vec![], vec![], vec![], true, &thirty_years);
    let (ca, proxy_ca) = std::thread::scope(|s| {
        let proxy = s.spawn(|| issue_ca(&proxy_ca_template).map_err(pki_err("the front-proxy CA")));
        let ca = issue_ca(&ca_template).map_err(pki_err("the cluster CA"));
        let proxy = proxy.join().unwrap_or_else(|_| Err(LabError::Pki { what: "the front-proxy CA".into(), detail: "worker panicked".into() }));
        Ok::<_, LabError>((ca?, proxy?))
    })?;

    let server_ips = apiserver_ips(layout);
    let masters = layout.masters().count();
    let etcd = |cn: &str| template(cn, None, vec![], server_ips.clone(), vec![ServerAuth, ClientAuth], false, &leaf);
    let mut templates = vec![
        template("apiserver", None, apiserver_dns_names(layout), server_ips.clone(), vec![ServerAuth], false, &leaf),
        template("client", Some("system:masters"), vec![], vec![], vec![ClientAuth], false, &leaf),
        template("client", Some("system:masters"), vec![], vec![], vec![ClientAuth], false, &leaf),
        etcd("etcdserver"),
        etcd("etcdclient"),
    ];
    templates.extend((0..masters).map(|_| etcd("etcdpeer")));
    let kubelet_templates: Vec<CertTemplate> = layout
        .nodes
        .iter()
        .map(|n| template(&n.name, None, vec![], vec![], vec![], true, &twenty_years))
        .collect();
    let proxy_template = template("aggregator", Some("system:masters"), vec![], vec![], vec![ClientAuth], false, &leaf);

    let signed = issue_all(&templates, &ca).map_err(pki_err("the cluster's leaf certificates"))?;
    let proxy = issue_all(std::slice::from_ref(&proxy_template), &proxy_ca).map_err(pki_err("the front-proxy client"))?;
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
        proxy: proxy.into_iter().next().expect("one proxy certificate"),
        kubelet_servers,
        ca,
        proxy_ca,
    })
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
        let layout = Layout::derive(std::path::Path::new("/tmp/pki-test"), spec, |_| false).unwrap();
        let pki = issue_cluster_pki(&layout).unwrap();
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
        assert_eq!(ips.last().unwrap(), &vec![10, 0, 0, 1]);
        let (der,) = parse(&pki.ca.cert_pem);
        let (_, ca) = X509Certificate::from_der(&der).unwrap();
        assert!(ca.validity().is_valid(), "the CA stays valid");
        let (der,) = parse(&pki.proxy.cert_pem);
        let (_, proxy) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(proxy.issuer().to_string(), "CN=proxyClientCA");
        assert_eq!(proxy.subject().to_string(), "O=system:masters, CN=aggregator");
    }
}
