//! The diff on plain data: every shipped profile against clusters of every shape and age,
//! with expected counts written from the AKS Engine catalogue by hand (which certificate
//! sits on which node), and one test per drift finding.

mod plan_fixture;

use certrotate::model::inventory::{ObservedContent, UnreachableNode};
use certrotate::model::profile::CertId;
use certrotate::plan::diff::Diff;
use certrotate::plan::file::{ChangeAction, ChangeTarget, ReasonCode, Summary};
use certrotate::plan::graph;
use plan_fixture::{cluster, shipped, Age, Cluster};

fn counts(d: &Diff) -> Summary {
    Summary::tally(&d.changes, &Default::default(), &[])
}

fn has_finding(d: &Diff, code: &str, node: Option<&str>) -> bool {
    d.findings.iter().any(|f| f.code == code && (node.is_none() || f.node.as_deref() == node))
}

fn change<'a>(d: &'a Diff, node: &str, id: CertId, location_suffix: &str) -> &'a certrotate::plan::file::CertificateChange {
    d.changes
        .iter()
        .filter(|t| matches!(&t.target, ChangeTarget::Node { name, .. } if name == node))
        .flat_map(|t| &t.certificates)
        .find(|c| c.certificate == id && c.location.ends_with(location_suffix))
        .unwrap_or_else(|| panic!("no {id} change at *{location_suffix} on {node}"))
}

/// Copies of the certificates signed by the cluster CA, wherever they live, for `m` masters
/// and `a` agents: on nodes apiserver m, client m+a, etcdserver m, etcdclient m, one
/// etcdpeer per master m; the kubeconfig certificate inline in the admin kubeconfig on each
/// master m (AKS Engine writes no kubectlClient.crt); in the API model apiserver, client,
/// kubeconfig, etcdserver, etcdclient and m peers.
fn cluster_ca_leaf_copies(m: u32, a: u32) -> u32 {
    (m + (m + a) + m + m + m) + m + (5 + m)
}

/// The cluster CA itself: ca.crt on every node and caCertificate in the API model.
fn cluster_ca_copies(m: u32, a: u32) -> u32 {
    m + a + 1
}

/// proxy-ca.crt and proxy.crt on every master, both in etcd.
fn front_proxy_copies(m: u32) -> u32 {
    2 * m + 2
}

const SHAPES: [(u32, u32); 3] = [(1, 0), (3, 2), (5, 50)];

#[test]
fn renew_expiring_on_a_healthy_cluster_changes_nothing() {
    for (m, a) in SHAPES {
        let c = cluster(m as usize, a as usize, Age::Healthy);
        let p = shipped("renew-expiring");
        let d = c.diff(&p);
        assert!(!d.has_changes(), "{m}+{a}: {:?}", d.decisions.iter().filter(|x| x.action != ChangeAction::Noop).collect::<Vec<_>>());
        let s = counts(&d);
        assert_eq!((s.create, s.reissue, s.replace), (0, 0, 0));
        assert!(s.noop > 0);
        assert!(d.findings.iter().all(|f| f.severity != certrotate::plan::file::Severity::Error), "{:?}", d.findings);
        let g = graph::build(&d, &c.topo, &p);
        assert!(g.is_empty());
        g.validate().unwrap();
    }
}

#[test]
fn renew_expiring_reissues_leaves_due_in_20_days_under_the_kept_ca() {
    for (m, a) in SHAPES {
        let c = cluster(m as usize, a as usize, Age::ExpiringInDays(20));
        let d = c.diff(&shipped("renew-expiring"));
        let s = counts(&d);
        assert_eq!(s.reissue, cluster_ca_leaf_copies(m, a), "{m}+{a}");
        // The front-proxy client is due and its CA's key is on no node: both are replaced.
        assert_eq!(s.replace, front_proxy_copies(m), "{m}+{a}");
        assert_eq!(s.create, 0);
        assert!(!d.cluster_ca_changes());
        let api = change(&d, &c.master(0), CertId::Apiserver, "apiserver.crt");
        assert_eq!(api.action, ChangeAction::Reissue);
        assert!(api.reasons.iter().any(|r| r.code == ReasonCode::ExpiresSoon && r.message == "expires in 20 days < renew-before 90d"), "{:?}", api.reasons);
        let ca = change(&d, &c.master(0), CertId::Ca, "ca.crt");
        assert_eq!(ca.action, ChangeAction::Noop);
        let kubelet = change(&d, &c.master(0), CertId::KubeletServer, "kubeletserver.crt");
        assert_eq!(kubelet.action, ChangeAction::Noop);
        let proxy_ca = change(&d, &c.master(0), CertId::ProxyCa, "proxy-ca.crt");
        assert_eq!(proxy_ca.reasons[0].code, ReasonCode::DependsOnChange);
        // client.crt is renewed everywhere, so kubelet's rotated pem (which it prefers) must go
        // even though the CA is kept, or kubelet would stay on its expiring identity.
        assert_eq!(d.kubelet_client_current_removals.len(), (m + a) as usize, "{m}+{a}");
    }
}

#[test]
fn rotate_all_replaces_every_certificate_even_on_a_healthy_cluster() {
    for (m, a) in SHAPES {
        for age in [Age::Healthy, Age::ExpiringInDays(20), Age::ExpiredDaysAgo(3)] {
            let c = cluster(m as usize, a as usize, age);
            let d = c.diff(&shipped("rotate-all"));
            let s = counts(&d);
            // aks-engine rotate-certs replaces everything but the kubelet serving certificates,
            // which it never touches: one per node, left alone.
            assert_eq!(s.noop, m + a, "{m}+{a} {age:?}: rotate-all leaves only kubelet serving certificates alone");
            assert_eq!(
                s.replace,
                cluster_ca_leaf_copies(m, a) + cluster_ca_copies(m, a) + front_proxy_copies(m),
                "{m}+{a} {age:?}"
            );
            assert_eq!(s.reissue, 0, "{m}+{a} {age:?}: the kubelet serving certificates are out of scope");
            assert!(d.cluster_ca_changes());
            let ca = change(&d, &c.master(0), CertId::Ca, "ca.crt");
            assert_eq!(ca.action, ChangeAction::Replace);
            assert_eq!(ca.reasons[0].code, ReasonCode::CaPolicy);
            assert_eq!(ca.reasons[0].message, "cluster CA rotation requested (policy: always)");
            let client = change(&d, &c.master(0), CertId::Client, "client.crt");
            assert_eq!(client.reasons[0].code, ReasonCode::SignerReplaced);
            assert_eq!(d.kubelet_client_current_removals.len(), (m + a) as usize);
        }
    }
}

#[test]
fn rotate_ca_replaces_everything_the_cas_sign_and_leaves_kubelet_serving_certs() {
    for (m, a) in SHAPES {
        let c = cluster(m as usize, a as usize, Age::Healthy);
        let d = c.diff(&shipped("rotate-ca"));
        let s = counts(&d);
        assert_eq!(s.replace, cluster_ca_leaf_copies(m, a) + cluster_ca_copies(m, a) + front_proxy_copies(m));
        assert_eq!((s.reissue, s.create), (0, 0));
        assert_eq!(s.noop, m + a, "only the kubelet serving certificates stay");
        let kubelet = change(&d, &c.agent_or_master(), CertId::KubeletServer, "kubeletserver.crt");
        assert_eq!(kubelet.reasons[0].code, ReasonCode::OutOfScope);
        // The API model's copies are replaced too.
        let apimodel: Vec<_> = d.changes.iter().filter(|t| t.target == ChangeTarget::ApiModel {}).flat_map(|t| &t.certificates).collect();
        assert_eq!(apimodel.len() as u32, 6 + m);
        assert!(apimodel.iter().all(|c| c.action == ChangeAction::Replace));
    }
}

trait AnyNode {
    fn agent_or_master(&self) -> String;
}

impl AnyNode for Cluster {
    fn agent_or_master(&self) -> String {
        self.topo.agents.first().unwrap_or(&self.topo.masters[0]).name.clone()
    }
}

#[test]
fn an_expired_cluster_is_recognised_and_reissued() {
    let c = cluster(3, 2, Age::ExpiredDaysAgo(3));
    let d = c.diff(&shipped("renew-expiring"));
    assert!(d.cluster_expired());
    assert!(has_finding(&d, "cluster-expired", None));
    let client = change(&d, &c.agent(1), CertId::Client, "client.crt");
    assert_eq!(client.action, ChangeAction::Reissue);
    assert!(client.reasons.iter().any(|r| r.code == ReasonCode::Expired && r.message.starts_with("expired 3 days ago")), "{:?}", client.reasons);
    assert_eq!(counts(&d).reissue, cluster_ca_leaf_copies(3, 2));
}

#[test]
fn attributes_show_what_changes_and_what_is_known_only_after_apply() {
    use certrotate::plan::file::AttrValue;
    let c = cluster(3, 2, Age::ExpiringInDays(20));
    let d = c.diff(&shipped("renew-expiring"));
    let api = change(&d, &c.master(1), CertId::Apiserver, "apiserver.crt");
    assert_eq!(api.after["fingerprint"], AttrValue::Unknown);
    // Reissued under the kept CA with the API model's key, so tokens stay valid: the key is known.
    assert_eq!(api.after["publicKey"], api.before["publicKey"]);
    assert_eq!(api.after["notAfter"], AttrValue::Text("2028-11-26 (apply time + 2y)".into()));
    assert_eq!(api.before["notAfter"], AttrValue::Text("2026-12-17T12:00:00Z".into()));
    // Same CA: the issuer fingerprint is known and unchanged.
    assert_eq!(api.before["issuerFingerprint"], api.after["issuerFingerprint"]);
    assert!(matches!(&api.after["ipSans"], AttrValue::List(ips) if ips.contains(&"10.255.255.6".to_string())));

    let d = c.diff(&shipped("rotate-ca"));
    let api = change(&d, &c.master(1), CertId::Apiserver, "apiserver.crt");
    assert_eq!(api.after["issuerFingerprint"], AttrValue::Unknown, "a new CA's fingerprint is only known at apply");
}

// ---- certificates supplied with --certificate-profile ----

#[test]
fn supplied_certificates_the_nodes_already_hold_change_nothing_the_profile_would_not() {
    let c = cluster(3, 2, Age::Healthy);
    let d = c.diff_supplied(&shipped("renew-expiring"), &c.apimodel);
    assert!(!d.has_changes(), "{:?}", d.decisions.iter().filter(|x| x.action != ChangeAction::Noop).collect::<Vec<_>>());
    // rotate-all would replace the CA and every leaf; what is supplied wins, and only what the
    // API model does not keep (front-proxy, kubelet serving) follows the profile.
    let d = c.diff_supplied(&shipped("rotate-all"), &c.apimodel);
    for id in ["ca", "apiserver", "client", "kubeconfig", "etcdserver", "etcdclient", "etcdpeer0"] {
        assert_eq!(d.decision(id).unwrap().action, ChangeAction::Noop, "{id}");
    }
    assert_eq!(d.decision("proxy").unwrap().action, ChangeAction::Replace);
    assert!(!d.cluster_ca_changes());
    assert!(!d.apiserver_key_changes());
}

#[test]
fn a_supplied_ca_replaces_everything_it_signs_and_the_plan_shows_the_supplied_fingerprints() {
    use certrotate::plan::file::AttrValue;
    let c = cluster(3, 2, Age::ExpiringInDays(20));
    // Another cluster's PKI: a CA the nodes do not trust yet.
    let other = cluster(3, 2, Age::Healthy);
    let d = c.diff_supplied(&shipped("renew-expiring"), &other.apimodel);
    assert!(d.cluster_ca_changes());
    assert!(d.apiserver_key_changes(), "a new CA brings new service-account tokens");
    let ca = d.decision("ca").unwrap();
    assert_eq!(ca.action, ChangeAction::Replace);
    assert_eq!(ca.reasons[0].code, ReasonCode::Supplied, "{:?}", ca.reasons);
    let s = counts(&d);
    assert_eq!(s.replace, cluster_ca_leaf_copies(3, 2) + cluster_ca_copies(3, 2) + front_proxy_copies(3));
    let supplied_fp = |id: &str| other.apimodel.iter().find(|(i, _)| i == id).unwrap().1.sha256_fingerprint.clone();
    let api = change(&d, &c.master(2), CertId::Apiserver, "apiserver.crt");
    assert_eq!(api.action, ChangeAction::Replace);
    assert_eq!(api.after["fingerprint"], AttrValue::Text(format!("sha256:{}", supplied_fp("apiserver"))));
    assert_eq!(api.after["issuerFingerprint"], AttrValue::Text(format!("sha256:{}", supplied_fp("ca"))));
    let ca_copy = change(&d, &c.agent(1), CertId::Ca, "ca.crt");
    assert_eq!(ca_copy.after["fingerprint"], AttrValue::Text(format!("sha256:{}", supplied_fp("ca"))));
    // Kubelet serving certificates are not in the API model: the profile keeps them.
    assert_eq!(change(&d, &c.agent(1), CertId::KubeletServer, "kubeletserver.crt").action, ChangeAction::Noop);
    let g = graph::build(&d, &c.topo, &shipped("renew-expiring"));
    g.validate().unwrap();
}

#[test]
fn a_supplied_leaf_under_the_kept_ca_is_reissued_everywhere_it_lives() {
    use certrotate::plan::file::AttrValue;
    let mut c = cluster(3, 2, Age::Healthy);
    let new_client = c.issue_variant("client", |_| {});
    let new_facts = certrotate::pki::inspect::parse_cert_pem(&new_client.cert_pem).unwrap();
    let mut supplied = c.apimodel.clone();
    supplied.iter_mut().find(|(id, _)| id == "client").unwrap().1 = new_facts.clone();
    let d = c.diff_supplied(&shipped("renew-expiring"), &supplied);
    assert!(!d.cluster_ca_changes());
    let client = d.decision("client").unwrap();
    assert_eq!(client.action, ChangeAction::Reissue);
    assert_eq!(client.reasons[0].code, ReasonCode::Supplied);
    let changed: Vec<&str> = d.decisions.iter().filter(|x| x.action != ChangeAction::Noop).map(|x| x.id.as_str()).collect();
    assert_eq!(changed, ["client"]);
    // client.crt on every node and clientCertificate in the API model.
    assert_eq!(counts(&d).reissue, 5 + 1);
    let on_agent = change(&d, &c.agent(0), CertId::Client, "client.crt");
    assert_eq!(on_agent.after["fingerprint"], AttrValue::Text(format!("sha256:{}", new_facts.sha256_fingerprint)));
    assert_eq!(d.kubelet_client_current_removals.len(), 5, "kubelet must stop preferring its old pem");
    assert!(!d.apiserver_key_changes());
    // Once installed everywhere, the same file plans nothing.
    for node in c.topo.nodes().map(|n| n.name.clone()).collect::<Vec<_>>() {
        *c.file_mut(&node, "/etc/kubernetes/certs/client.crt") = plan_fixture::cert_file("/etc/kubernetes/certs/client.crt", "root", 0o644, &new_client.cert_pem);
        *c.file_mut(&node, "/etc/kubernetes/certs/client.key") = plan_fixture::key_file("/etc/kubernetes/certs/client.key", "root", &new_client.key_pem);
    }
    c.apimodel = supplied.clone();
    assert!(!c.diff_supplied(&shipped("renew-expiring"), &supplied).has_changes());
}

// ---- drift ----

#[test]
fn drift_missing_san_is_a_reason_to_reissue() {
    let mut c = cluster(3, 2, Age::Healthy);
    let without = c.issue_variant("apiserver", |t| t.ip_sans.retain(|ip| ip.to_string() != "10.255.255.6"));
    for i in 0..3 {
        let m = c.master(i);
        *c.file_mut(&m, "/etc/kubernetes/certs/apiserver.crt") =
            plan_fixture::cert_file("/etc/kubernetes/certs/apiserver.crt", "root", 0o644, &without.cert_pem);
        *c.file_mut(&m, "/etc/kubernetes/certs/apiserver.key") =
            plan_fixture::key_file("/etc/kubernetes/certs/apiserver.key", "root", &without.key_pem);
    }
    c.apimodel.iter_mut().find(|(id, _)| id == "apiserver").unwrap().1 = certrotate::pki::inspect::parse_cert_pem(&without.cert_pem).unwrap();
    let d = c.diff(&shipped("renew-expiring"));
    let api = change(&d, &c.master(0), CertId::Apiserver, "apiserver.crt");
    assert_eq!(api.action, ChangeAction::Reissue);
    assert!(api.reasons.iter().any(|r| r.code == ReasonCode::SanMismatch && r.message == "IP SAN 10.255.255.6 missing"), "{:?}", api.reasons);
    assert_eq!(counts(&d).reissue, 3 + 1, "three masters and the API model");
}

#[test]
fn drift_apimodel_differs_from_nodes() {
    let mut c = cluster(3, 2, Age::Healthy);
    let other = c.issue_variant("etcdclient", |_| {});
    c.apimodel.iter_mut().find(|(id, _)| id == "etcdclient").unwrap().1 = certrotate::pki::inspect::parse_cert_pem(&other.cert_pem).unwrap();
    let d = c.diff(&shipped("renew-expiring"));
    assert!(has_finding(&d, "apimodel-differs", None), "{:?}", d.findings);
    assert!(d.findings.iter().any(|f| f.path.as_deref() == Some("/properties/certificateProfile/etcdClientCertificate")));
}

#[test]
fn drift_etcd_peers_from_different_cas() {
    let mut c = cluster(3, 2, Age::Healthy);
    let foreign_ca = certrotate::pki::issue::issue_ca(&c.entry("ca").template(
        certrotate::pki::KeySpec::EcdsaP256,
        plan_fixture::NOW - time::Duration::days(1),
        plan_fixture::NOW + time::Duration::days(3650),
    ))
    .unwrap();
    let t = c.entry("etcdpeer1").template(
        certrotate::pki::KeySpec::EcdsaP256,
        plan_fixture::NOW - time::Duration::days(1),
        plan_fixture::NOW + time::Duration::days(3650),
    );
    let peer = certrotate::pki::issue::issue_leaf(&t, &foreign_ca).unwrap();
    let m1 = c.master(1);
    *c.file_mut(&m1, "/etc/kubernetes/certs/etcdpeer1.crt") = plan_fixture::cert_file("/etc/kubernetes/certs/etcdpeer1.crt", "root", 0o644, &peer.cert_pem);
    *c.file_mut(&m1, "/etc/kubernetes/certs/etcdpeer1.key") = plan_fixture::key_file("/etc/kubernetes/certs/etcdpeer1.key", "etcd", &peer.key_pem);
    let d = c.diff(&shipped("renew-expiring"));
    assert!(has_finding(&d, "etcd-peer-ca-mismatch", Some(&m1)), "{:?}", d.findings);
    let change = change(&d, &m1, CertId::EtcdPeer, "etcdpeer1.crt");
    assert!(change.reasons.iter().any(|r| r.code == ReasonCode::NotSignedByCa));
    assert_eq!(change.action, ChangeAction::Reissue);
}

#[test]
fn drift_key_does_not_match_certificate() {
    let mut c = cluster(3, 2, Age::Healthy);
    let a0 = c.agent(0);
    // A key of another pair, under the right name.
    let stranger = certrotate::pki::issue::generate_key(certrotate::pki::KeySpec::EcdsaP256).unwrap().to_pem().unwrap();
    *c.file_mut(&a0, "/etc/kubernetes/certs/client.key") = plan_fixture::key_file("/etc/kubernetes/certs/client.key", "root", &stranger);
    let d = c.diff(&shipped("renew-expiring"));
    assert!(has_finding(&d, "key-mismatch", Some(&a0)), "{:?}", d.findings);
    let ch = change(&d, &a0, CertId::Client, "client.crt");
    assert!(ch.reasons.iter().any(|r| r.code == ReasonCode::KeyMismatch));
    // One client certificate serves every node: all holders get the new one.
    let other_node = change(&d, &c.master(0), CertId::Client, "client.crt");
    assert_eq!(other_node.action, ChangeAction::Reissue);
    assert_eq!(other_node.reasons[0].code, ReasonCode::DependsOnChange);
}

#[test]
fn drift_wrong_owner_and_mode() {
    let mut c = cluster(3, 2, Age::Healthy);
    let m0 = c.master(0);
    c.file_mut(&m0, "/etc/kubernetes/certs/etcdserver.key").owner = "root".into();
    c.file_mut(&m0, "/etc/kubernetes/certs/apiserver.key").mode = 0o644;
    let d = c.diff(&shipped("renew-expiring"));
    assert!(d.findings.iter().any(|f| f.code == "wrong-owner" && f.path.as_deref() == Some("/etc/kubernetes/certs/etcdserver.key")
        && f.message.contains("root:etcd") && f.message.contains("expected etcd:etcd")), "{:?}", d.findings);
    assert!(d.findings.iter().any(|f| f.code == "wrong-mode" && f.message.contains("0644, expected 0600")));
    assert!(!d.has_changes(), "ownership is a finding, not a reason to reissue");
}

#[test]
fn drift_front_proxy_files_differ_from_etcd() {
    let mut c = cluster(3, 2, Age::Healthy);
    let m2 = c.master(2);
    c.node_mut(&c.master(0)).etcd_proxy.as_mut().unwrap().client_cert_sha256 = Some("00".repeat(32));
    let d = c.diff(&shipped("renew-expiring"));
    assert!(has_finding(&d, "front-proxy-etcd-differs", Some(&m2)), "{:?}", d.findings);
}

/// A /proxycerts value stored as raw PEM (no leading space) is a finding on the certificate
/// it holds, and the plan reissues the front-proxy client, whose put rewrites every value in
/// AKS Engine's form; values in AKS Engine's form raise nothing.
#[test]
fn front_proxy_value_in_the_wrong_form_is_found_and_repaired() {
    use certrotate::pki::catalogue::ETCD_PROXY_CA_KEY;
    let healthy = cluster(3, 2, Age::Healthy).diff(&shipped("renew-expiring"));
    assert!(!healthy.findings.iter().any(|f| f.code.starts_with("front-proxy")), "{:?}", healthy.findings);
    assert!(!healthy.has_changes());
    let mut c = cluster(3, 2, Age::Healthy);
    c.node_mut(&c.master(0)).etcd_proxy.as_mut().unwrap().wrong_form = vec![ETCD_PROXY_CA_KEY.into()];
    let d = c.diff(&shipped("renew-expiring"));
    let f = d.findings.iter().find(|f| f.code == "front-proxy-etcd-form").unwrap_or_else(|| panic!("{:?}", d.findings));
    assert_eq!(f.path.as_deref(), Some(ETCD_PROXY_CA_KEY));
    assert_eq!(d.decision("proxy").unwrap().action, ChangeAction::Reissue);
    assert_eq!(d.decision("proxy-ca").unwrap().action, ChangeAction::Noop, "the CA is kept; its value is rewritten in place");
    assert!(d.front_proxy_changes(), "the plan writes /proxycerts");
}

#[test]
fn drift_between_nodes_reissues_the_shared_certificate() {
    let mut c = cluster(3, 2, Age::Healthy);
    let other = c.issue_variant("client", |_| {});
    let a1 = c.agent(1);
    *c.file_mut(&a1, "/etc/kubernetes/certs/client.crt") = plan_fixture::cert_file("/etc/kubernetes/certs/client.crt", "root", 0o644, &other.cert_pem);
    *c.file_mut(&a1, "/etc/kubernetes/certs/client.key") = plan_fixture::key_file("/etc/kubernetes/certs/client.key", "root", &other.key_pem);
    let d = c.diff(&shipped("renew-expiring"));
    assert!(has_finding(&d, "drift-between-nodes", Some(&a1)), "{:?}", d.findings);
    let ch = change(&d, &a1, CertId::Client, "client.crt");
    assert!(ch.reasons.iter().any(|r| r.code == ReasonCode::DriftBetweenNodes));
    assert_eq!(d.decision("client").unwrap().action, ChangeAction::Reissue);
}

#[test]
fn drift_unexpected_files_missing_files_and_unreachable_nodes() {
    let mut c = cluster(3, 2, Age::Healthy);
    let a0 = c.agent(0);
    c.node_mut(&a0).unexpected_files.push("/etc/kubernetes/certs/old-ca.crt".into());
    let m2 = c.master(2);
    c.file_mut(&m2, "/etc/kubernetes/certs/etcdclient.crt").content = ObservedContent::Missing;
    let a1 = c.agent(1);
    c.inventory.nodes.retain(|n| n.node != a1);
    c.inventory.unreachable.push(UnreachableNode { node: a1.clone(), error: "connection timed out".into() });
    let d = c.diff(&shipped("renew-expiring"));
    assert!(has_finding(&d, "unexpected-file", Some(&a0)));
    assert!(d.findings.iter().any(|f| f.code == "unreachable-node" && f.message.contains("connection timed out")));
    let ch = change(&d, &m2, CertId::EtcdClient, "etcdclient.crt");
    assert_eq!(ch.action, ChangeAction::Create);
    assert_eq!(ch.reasons[0].code, ReasonCode::Missing);
    assert!(d.changes.iter().all(|t| !matches!(&t.target, ChangeTarget::Node { name, .. } if *name == a1)));
}

#[test]
fn kubelet_client_current_must_go_when_the_ca_changes() {
    let mut c = cluster(3, 2, Age::Healthy);
    let a0 = c.agent(0);
    c.node_mut(&a0).kubelet_client_current = false;
    let d = c.diff(&shipped("rotate-ca"));
    assert_eq!(d.kubelet_client_current_removals.len(), 4);
    assert!(!d.kubelet_client_current_removals.contains(&a0));
    assert!(has_finding(&d, "kubelet-client-current-removal", Some(&c.agent(1))));
    let renew = c.diff(&shipped("renew-expiring"));
    assert!(!has_finding(&renew, "kubelet-client-current-removal", None));
}

#[test]
fn key_policy_change_reissues_ecdsa_leaves_under_an_rsa_profile() {
    let mut c = cluster(1, 1, Age::Healthy);
    // Refresh reports an ECDSA key the way inspect describes it.
    let m0 = c.master(0);
    if let ObservedContent::Certificate { facts, .. } = &mut c.file_mut(&m0, "/etc/kubernetes/certs/etcdserver.crt").content {
        facts.key_algorithm = "ECDSA P-256".into();
        facts.key_bits = 256;
    }
    let d = c.diff(&shipped("renew-expiring"));
    let ch = change(&d, &m0, CertId::EtcdServer, "etcdserver.crt");
    assert!(ch.reasons.iter().any(|r| r.code == ReasonCode::KeySpecChanged && r.message == "key is ECDSA P-256 256, profile wants RSA 2048"), "{:?}", ch.reasons);
}

#[test]
fn a_front_proxy_client_that_is_wrong_brings_a_new_front_proxy_ca() {
    let mut c = cluster(3, 2, Age::Healthy);
    let m1 = c.master(1);
    let stranger = certrotate::pki::issue::generate_key(certrotate::pki::KeySpec::EcdsaP256).unwrap().to_pem().unwrap();
    *c.file_mut(&m1, "/etc/kubernetes/certs/proxy.key") = plan_fixture::key_file("/etc/kubernetes/certs/proxy.key", "root", &stranger);
    let d = c.diff(&shipped("renew-expiring"));
    // Its CA's key exists nowhere, so the client cannot be reissued under the old front-proxy CA.
    assert_eq!(d.decision("proxy-ca").unwrap().action, ChangeAction::Replace);
    assert_eq!(d.decision("proxy").unwrap().action, ChangeAction::Replace);
    assert!(!d.cluster_ca_changes());
    assert!(has_finding(&d, "key-mismatch", Some(&m1)));
    assert!(has_finding(&d, "front-proxy-etcd-differs", Some(&m1)), "proxy.key differs from the key in etcd: {:?}", d.findings);
}

#[test]
fn rotate_when_expiring_replaces_the_ca_inside_its_window_and_masters_go_together() {
    use certrotate::diag::SourceFile;
    use certrotate::model::profile::Profile;
    let yaml = |within: &str| {
        Profile::from_source(&SourceFile::from_text(
            "custom.yaml",
            format!("name: custom\nca:\n  policy: rotateWhenExpiring\n  within: {within}\nmasters:\n  strategy: rolling\n"),
        ))
        .unwrap()
    };
    let c = cluster(3, 2, Age::Healthy);
    // The fixture's CA has 28 years left.
    let d = c.diff(&yaml("29y"));
    let ca = change(&d, &c.master(0), CertId::Ca, "ca.crt");
    assert_eq!(ca.action, ChangeAction::Replace);
    assert!(ca.reasons[0].message.starts_with("cluster CA expires in ") && ca.reasons[0].message.ends_with("< rotateWhenExpiring within 29y"), "{:?}", ca.reasons);
    let p = yaml("29y");
    let g = graph::build(&d, &c.topo, &p);
    assert!(matches!(g.masters, graph::MasterPlan::AllAtOnce { .. }), "a new CA overrides the rolling strategy");
    g.validate().unwrap();

    let d = c.diff(&yaml("1y"));
    assert!(!d.cluster_ca_changes());
    assert!(!d.has_changes());
}

#[test]
fn garbled_refresh_data_gives_findings_not_panics() {
    use certrotate::plan::render::{self, PlanParts};
    let mut c = cluster(3, 2, Age::ExpiringInDays(20));
    let (m0, m1, a0) = (c.master(0), c.master(1), c.agent(0));
    // Fingerprints that are short, empty or not even ASCII; a file that is not PEM; a node
    // that reported no files at all; etcd state that names nothing real.
    if let ObservedContent::Certificate { facts, .. } = &mut c.file_mut(&m0, "/etc/kubernetes/certs/apiserver.crt").content {
        facts.sha256_fingerprint = "é".into();
        facts.public_key_sha256 = String::new();
    }
    c.file_mut(&m0, "/etc/kubernetes/certs/etcdserver.crt").content = ObservedContent::Unparseable { error: "no PEM block".into() };
    if let ObservedContent::PrivateKey { public_key_sha256, .. } = &mut c.file_mut(&m1, "/etc/kubernetes/certs/client.key").content {
        *public_key_sha256 = "ab".into();
    }
    c.node_mut(&a0).files.clear();
    c.node_mut(&m1).etcd_proxy = Some(certrotate::model::inventory::EtcdProxyState { ca_sha256: Some("zz".into()), client_cert_sha256: None, client_key_public_sha256: None, wrong_form: vec![] });
    c.apimodel.clear();
    for name in ["rotate-all", "renew-expiring", "rotate-ca"] {
        let p = shipped(name);
        let d = c.diff(&p);
        let g = graph::build(&d, &c.topo, &p);
        g.validate().unwrap();
        let parts = PlanParts::assemble(&d, &g);
        assert!(!render::human(&parts.view(), false).is_empty());
        assert!(has_finding(&d, "unreadable-certificate", Some(&m0)));
        assert!(has_finding(&d, "key-mismatch", Some(&m1)));
        assert_eq!(change(&d, &a0, CertId::Client, "client.crt").action, if name == "renew-expiring" { ChangeAction::Create } else { ChangeAction::Replace });
    }
    // Nothing observed at all: every node is named, nothing is planned on a node.
    c.inventory.nodes.clear();
    let d = c.diff(&shipped("renew-expiring"));
    assert_eq!(d.findings.iter().filter(|f| f.code == "node-not-observed").count(), 5);
    assert!(d.changes.iter().all(|t| !matches!(t.target, ChangeTarget::Node { .. })));
}

#[test]
fn a_kubelet_kubeconfig_pointing_elsewhere_is_a_finding() {
    let mut c = cluster(1, 1, Age::Healthy);
    let a0 = c.agent(0);
    let kc = c.node_mut(&a0).kubeconfigs.iter_mut().find(|k| k.path == "/var/lib/kubelet/kubeconfig").unwrap();
    kc.client_certificate = Some("/var/lib/kubelet/pki/kubelet-client-current.pem".into());
    let d = c.diff(&shipped("renew-expiring"));
    let f = d.findings.iter().find(|f| f.code == "kubelet-kubeconfig-reference").expect("finding");
    assert_eq!(f.node.as_deref(), Some(a0.as_str()));
    assert!(f.message.contains("kubelet-client-current.pem instead of /etc/kubernetes/certs/client.crt"), "{}", f.message);
}

#[test]
fn extra_sans_from_the_profile_are_wanted_and_unknown_extra_sans_are_only_reported() {
    use certrotate::diag::SourceFile;
    use certrotate::model::profile::Profile;
    let mut c = cluster(1, 0, Age::Healthy);
    let extra = c.issue_variant("apiserver", |t| t.dns_sans.push("old-name.contoso.local".into()));
    let m0 = c.master(0);
    *c.file_mut(&m0, "/etc/kubernetes/certs/apiserver.crt") = plan_fixture::cert_file("/etc/kubernetes/certs/apiserver.crt", "root", 0o644, &extra.cert_pem);
    *c.file_mut(&m0, "/etc/kubernetes/certs/apiserver.key") = plan_fixture::key_file("/etc/kubernetes/certs/apiserver.key", "root", &extra.key_pem);
    c.apimodel.iter_mut().find(|(id, _)| id == "apiserver").unwrap().1 = certrotate::pki::inspect::parse_cert_pem(&extra.cert_pem).unwrap();
    let d = c.diff(&shipped("renew-expiring"));
    assert!(!d.has_changes());
    assert!(d.findings.iter().any(|f| f.code == "catalogue-mismatch" && f.message.contains("old-name.contoso.local present but not derived")), "{:?}", d.findings);

    let wants_name = Profile::from_source(&SourceFile::from_text("sans.yaml", "name: sans\nextraSans:\n  dns: [api.contoso.local]\n")).unwrap();
    let d = c.diff(&wants_name);
    let api = change(&d, &m0, CertId::Apiserver, "apiserver.crt");
    assert_eq!(api.action, ChangeAction::Reissue);
    assert!(api.reasons.iter().any(|r| r.code == ReasonCode::SanMismatch && r.message == "DNS SAN api.contoso.local missing"), "{:?}", api.reasons);
}
