//! What the shipped rotate-all profile issues, compared with what aks-engine rotate-certs
//! issues (aks-engine-azurestack): SetDefaultCerts with DefaultPkiKeySize 4096 and
//! pkg/helpers/pki.go's ValidityDuration (30 x 365 days) for the CA and every leaf it keeps in
//! apimodel.json; generate-proxy-certs.sh's `openssl genrsa 2048` and `-days 262824` for the
//! front-proxy pair; and no kubelet serving certificate. The figures are written out here
//! from AKS Engine's source, not read from the profile.

use certrotate::apply::store::issue_pki;
use certrotate::diag::SourceFile;
use certrotate::model::apimodel::ApiModel;
use certrotate::model::cluster_id::cluster_id;
use certrotate::model::profile::Profile;
use certrotate::model::topology::Topology;
use certrotate::pki::catalogue::{catalogue, plan_id, CertKind};
use certrotate::pki::inspect::parse_cert_pem;

const API_MODEL: &str = r#"{
  "apiVersion": "vlabs",
  "location": "local",
  "properties": {
    "orchestratorProfile": {"orchestratorType": "Kubernetes", "kubernetesConfig": {"serviceCidr": "10.0.0.0/16"}},
    "masterProfile": {"count": 1, "dnsPrefix": "mycluster", "firstConsecutiveStaticIP": "10.255.255.5"},
    "agentPoolProfiles": [{"name": "linuxpool", "count": 1}],
    "linuxProfile": {"adminUsername": "azureuser"}
  }
}"#;

#[test]
fn rotate_all_issues_what_aks_engine_rotate_certs_issues() {
    let model = ApiModel::parse(SourceFile::from_text("apimodel.json", API_MODEL)).unwrap();
    let topo = Topology::derive_with_suffix(&model, &cluster_id(model.dns_prefix())).unwrap();
    let cat = catalogue(&topo);
    let profile = Profile::load("rotate-all").unwrap();
    let in_scope: Vec<String> = cat.iter().filter(|e| profile.certificates_in_scope().iter().any(|id| id.as_str() == e.kind.scope_id())).map(plan_id).collect();
    assert!(cat.iter().any(|e| e.kind == CertKind::KubeletServer), "the catalogue knows kubelet serving certificates");
    let pki = issue_pki(&in_scope, &topo, &cat, &model, &profile, None).unwrap();
    assert!(pki.items.keys().all(|id| !id.starts_with("kubeletserver")), "aks-engine rotate-certs never touches kubelet serving certificates");

    const AKS_ENGINE_DAYS: i64 = 30 * 365;
    const PROXY_SCRIPT_DAYS: i64 = 262_824;
    let mut seen = Vec::new();
    for (id, pair) in &pki.items {
        let facts = parse_cert_pem(&pair.cert_pem).unwrap();
        let days = (facts.not_after - facts.not_before).whole_days();
        let (bits, want_days) = if id == "proxy-ca" || id == "proxy" { (2048, PROXY_SCRIPT_DAYS) } else { (4096, AKS_ENGINE_DAYS) };
        assert_eq!((facts.key_algorithm.as_str(), facts.key_bits), ("RSA", bits), "{id}");
        // not_before is backdated a few minutes for clock skew; the span is whole days plus that.
        assert_eq!(days, want_days, "{id}: {} .. {}", facts.not_before, facts.not_after);
        seen.push(id.clone());
    }
    seen.sort();
    let mut expected: Vec<String> =
        ["ca", "apiserver", "client", "kubeconfig", "etcdserver", "etcdclient", "proxy-ca", "proxy"].iter().map(|s| s.to_string()).collect();
    expected.extend(seen.iter().filter(|id| id.starts_with("etcdpeer")).cloned());
    expected.sort();
    assert_eq!(seen, expected);
    assert_eq!(seen.iter().filter(|id| id.starts_with("etcdpeer")).count(), 1, "one peer certificate per master");
}
