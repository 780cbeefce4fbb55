//! The cluster PKI the lab issues, shaped as AKS Engine issues it (DOMAIN.md "The PKI that
//! AKS Engine issues"): one CA `CN=ca`, apiserver, client, kubectlClient, etcdserver,
//! etcdclient, etcdpeer<i>, the front-proxy CA and client, and a self-signed kubeletserver
//! per node. RSA 2048 keys (for speed), PKCS#1 PEM as AKS Engine writes them.
//!
//! TODO(lab-infra): switch to `certrotate::pki::catalogue` + `certrotate::pki::issue` once they
//! land on main, so the lab and certrotate share one definition of the cluster's certificates.

use crate::error::LabError;
use crate::spec::{Expiry, Layout};
use certrotate::pki::KeyCertPair;
use pkcs1::der::{pem::LineEnding, Decode, EncodePem};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
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

struct Leaf {
    cn: String,
    org: Option<&'static str>,
    dns: Vec<String>,
    ips: Vec<IpAddr>,
    usages: Vec<ExtendedKeyUsagePurpose>,
}

fn pki_err(what: &str) -> impl Fn(rcgen::Error) -> LabError + '_ {
    move |e| LabError::Pki { what: what.to_string(), detail: e.to_string() }
}

/// RSA 2048 key pair, its PKCS#1 PEM (what AKS Engine writes), and the rcgen handle.
fn rsa_key(what: &str) -> Result<(KeyPair, String), LabError> {
    let key = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .map_err(pki_err(what))?;
    let pkcs8 = key.serialize_der();
    let info = pkcs8::PrivateKeyInfo::try_from(pkcs8.as_slice())
        .map_err(|e| LabError::Pki { what: what.into(), detail: format!("PKCS#8: {e}") })?;
    let pkcs1 = pkcs1::RsaPrivateKey::from_der(info.private_key)
        .map_err(|e| LabError::Pki { what: what.into(), detail: format!("PKCS#1: {e}") })?;
    let pem = pkcs1
        .to_pem(LineEnding::LF)
        .map_err(|e| LabError::Pki { what: what.into(), detail: format!("PEM: {e}") })?;
    Ok((key, pem))
}

fn base_params(cn: &str, org: Option<&str>, not_before: OffsetDateTime, not_after: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    if let Some(org) = org {
        dn.push(DnType::OrganizationName, org);
    }
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(SerialNumber::from_slice(&rand::random::<[u8; 16]>()[..]));
    params
}

fn ca(cn: &str, not_before: OffsetDateTime, not_after: OffsetDateTime) -> Result<(KeyCertPair, Issuer<'static, KeyPair>), LabError> {
    let (key, key_pem) = rsa_key(cn)?;
    let mut params = base_params(cn, None, not_before, not_after);
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::KeyCertSign,
    ];
    let cert = params.self_signed(&key).map_err(pki_err(cn))?;
    Ok((KeyCertPair { cert_pem: cert.pem(), key_pem }, Issuer::new(params, key)))
}

fn leaf(
    spec: &Leaf,
    issuer: Option<&Issuer<'_, KeyPair>>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<KeyCertPair, LabError> {
    let (key, key_pem) = rsa_key(&spec.cn)?;
    let mut params = base_params(&spec.cn, spec.org, not_before, not_after);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = spec.usages.clone();
    for dns in &spec.dns {
        params
            .subject_alt_names
            .push(SanType::DnsName(dns.clone().try_into().map_err(pki_err(&spec.cn))?));
    }
    params.subject_alt_names.extend(spec.ips.iter().map(|ip| SanType::IpAddress(*ip)));
    params.use_authority_key_identifier_extension = issuer.is_some();
    let cert = match issuer {
        Some(issuer) => params.signed_by(&key, issuer),
        None => params.self_signed(&key),
    }
    .map_err(pki_err(&spec.cn))?;
    Ok(KeyCertPair { cert_pem: cert.pem(), key_pem })
}

/// Run `jobs` on every core; RSA key generation dominates `lab up` for big labs.
fn parallel<T: Send>(jobs: Vec<Box<dyn FnOnce() -> Result<T, LabError> + Send + '_>>) -> Result<Vec<T>, LabError> {
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let jobs: Vec<_> = jobs.into_iter().enumerate().collect();
    let queue = std::sync::Mutex::new(jobs);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let job = queue.lock().unwrap_or_else(|p| p.into_inner()).pop();
                let Some((index, job)) = job else { break };
                let result = job();
                results.lock().unwrap_or_else(|p| p.into_inner()).push((index, result));
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    results.sort_by_key(|(index, _)| *index);
    results.into_iter().map(|(_, r)| r).collect()
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

pub fn issue_cluster_pki(layout: &Layout) -> Result<ClusterPki, LabError> {
    let now = OffsetDateTime::now_utc();
    let (nb, na) = leaf_window(layout.spec.expiry, now);
    let ca_window = (now - Duration::hours(1), now + Duration::days(365 * 30));
    let ((ca, ca_issuer), (proxy_ca, proxy_issuer)) = std::thread::scope(|s| {
        let proxy = s.spawn(|| ca("proxyClientCA", ca_window.0, ca_window.1));
        let ca = ca("ca", ca_window.0, ca_window.1);
        let proxy = proxy.join().unwrap_or_else(|_| Err(LabError::Pki { what: "proxy CA".into(), detail: "panicked".into() }));
        Ok::<_, LabError>((ca?, proxy?))
    })?;
    use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    let server_ips = apiserver_ips(layout);
    let client = |cn: &str, org| Leaf { cn: cn.into(), org, dns: vec![], ips: vec![], usages: vec![ClientAuth] };
    let etcd = |cn: &str| Leaf { cn: cn.into(), org: None, dns: vec![], ips: server_ips.clone(), usages: vec![ServerAuth, ClientAuth] };
    let mut signed: Vec<(Leaf, bool)> = vec![
        (Leaf { cn: "apiserver".into(), org: None, dns: apiserver_dns_names(layout), ips: server_ips.clone(), usages: vec![ServerAuth] }, false),
        (client("client", Some("system:masters")), false),
        (client("client", Some("system:masters")), false),
        (etcd("etcdserver"), false),
        (etcd("etcdclient"), false),
        (client("aggregator", Some("system:masters")), true),
    ];
    let masters = layout.masters().count();
    signed.extend((0..masters).map(|_| (etcd("etcdpeer"), false)));
    let (ca_issuer, proxy_issuer) = (&ca_issuer, &proxy_issuer);
    let mut jobs: Vec<Box<dyn FnOnce() -> Result<KeyCertPair, LabError> + Send + '_>> = Vec::new();
    for (spec, by_proxy) in signed {
        jobs.push(Box::new(move || leaf(&spec, Some(if by_proxy { proxy_issuer } else { ca_issuer }), nb, na)));
    }
    for node in &layout.nodes {
        let spec = Leaf { cn: node.name.clone(), org: None, dns: vec![node.name.clone()], ips: vec![], usages: vec![ServerAuth] };
        jobs.push(Box::new(move || leaf(&spec, None, now - Duration::hours(1), now + Duration::days(365 * 20))));
    }
    let mut issued = parallel(jobs)?.into_iter();
    let mut next = || issued.next().expect("one result per job");
    let apiserver = next();
    let client = next();
    let kubectl_client = next();
    let etcd_server = next();
    let etcd_client = next();
    let proxy = next();
    let etcd_peers = (0..masters).map(|_| next()).collect();
    let kubelet_servers = layout.nodes.iter().map(|_| next()).collect();
    Ok(ClusterPki { ca, apiserver, client, kubectl_client, etcd_server, etcd_client, etcd_peers, proxy_ca, proxy, kubelet_servers })
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
