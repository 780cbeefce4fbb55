//! The catalogue must describe the certificates exactly as AKS Engine issues them for the
//! same API model. The expectations below are written out by hand from what a real
//! `aks-engine generate` produced (see DOMAIN.md: 3 masters from 10.255.255.5, service CIDR
//! 10.0.0.0/16), not computed by the code under test.

use certrotate::diag::SourceFile;
use certrotate::model::apimodel::ApiModel;
use certrotate::model::topology::Topology;
use certrotate::pki::catalogue::{catalogue, CertKind, IssuerRef};
use certrotate::pki::ExtendedUsage::{ClientAuth, ServerAuth};

const API_MODEL: &str = r#"{
  "apiVersion": "vlabs",
  "location": "local",
  "properties": {
    "orchestratorProfile": {"orchestratorType": "Kubernetes", "kubernetesConfig": {"serviceCidr": "10.0.0.0/16"}},
    "masterProfile": {"count": 3, "dnsPrefix": "mycluster", "firstConsecutiveStaticIP": "10.255.255.5", "subjectAltNames": ["k8s.contoso.local"]},
    "agentPoolProfiles": [{"name": "linuxpool", "count": 2}],
    "linuxProfile": {"adminUsername": "azureuser"},
    "customCloudProfile": {"environment": {"name": "AzureStackCloud", "resourceManagerVMDNSSuffix": "cloudapp.azurestack.external"}}
  }
}"#;

#[test]
fn subjects_sans_and_usages_match_aks_engine() {
    let model = ApiModel::parse(SourceFile::from_text("apimodel.json", API_MODEL)).unwrap();
    let topo = Topology::derive_with_suffix(&model, "11161905").unwrap();
    let cat = catalogue(&topo);
    let by = |k: CertKind| cat.iter().find(|e| e.kind == k).unwrap_or_else(|| panic!("{k:?} missing"));

    let real_ips = ["10.255.255.5", "127.0.0.1", "10.255.255.15", "10.255.255.6", "10.255.255.7", "10.0.0.1"];
    let ips = |k: CertKind| by(k).ip_sans.iter().map(|i| i.to_string()).collect::<Vec<_>>();

    let ca = by(CertKind::Ca);
    assert_eq!((ca.common_name.as_str(), ca.is_ca, ca.issuer), ("ca", true, IssuerRef::SelfSigned));

    let api = by(CertKind::Apiserver);
    assert_eq!(api.common_name, "apiserver");
    assert_eq!(api.extended_usages, vec![ServerAuth]);
    assert_eq!(
        api.dns_sans,
        vec![
            "mycluster.local.cloudapp.azurestack.external",
            "k8s.contoso.local",
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            "kubernetes.kube-system",
            "kubernetes.kube-system.svc",
            "kubernetes.kube-system.svc.cluster.local",
        ]
    );
    assert_eq!(ips(CertKind::Apiserver), real_ips);

    for k in [CertKind::Client, CertKind::Kubeconfig] {
        let e = by(k);
        assert_eq!((e.common_name.as_str(), e.organization.as_deref()), ("client", Some("system:masters")));
        assert_eq!(e.extended_usages, vec![ClientAuth]);
        assert!(e.dns_sans.is_empty() && e.ip_sans.is_empty());
    }

    for (k, cn) in [
        (CertKind::EtcdServer, "etcdserver"),
        (CertKind::EtcdClient, "etcdclient"),
        (CertKind::EtcdPeer(0), "etcdpeer"),
        (CertKind::EtcdPeer(1), "etcdpeer"),
        (CertKind::EtcdPeer(2), "etcdpeer"),
    ] {
        let e = by(k);
        assert_eq!(e.common_name, cn);
        assert_eq!(e.extended_usages, vec![ServerAuth, ClientAuth], "{k:?}");
        assert_eq!(ips(k), real_ips, "{k:?}");
        assert!(e.dns_sans.is_empty());
        assert_eq!(e.issuer, IssuerRef::ClusterCa);
    }

    let proxy_ca = by(CertKind::ProxyCa);
    assert_eq!((proxy_ca.common_name.as_str(), proxy_ca.is_ca), ("proxyClientCA", true));
    let proxy = by(CertKind::Proxy);
    assert_eq!((proxy.common_name.as_str(), proxy.organization.as_deref()), ("aggregator", Some("system:masters")));
    assert_eq!(proxy.issuer, IssuerRef::FrontProxyCa);
    // generateproxycerts.sh: `openssl x509 -req` without an extension file, so no EKU.
    assert!(proxy.extended_usages.is_empty() && !proxy.is_ca);
    // AKS Engine writes the kubeconfig certificate only inline in the admin kubeconfig.
    let kubeconfig = by(CertKind::Kubeconfig);
    assert!(kubeconfig.in_admin_kubeconfig() && kubeconfig.key_file.is_none());
    assert_eq!((kubeconfig.cert_file.owner.as_str(), kubeconfig.cert_file.mode), ("azureuser", 0o600));

    let paths: Vec<&str> = cat.iter().filter(|e| e.holders.contains(&"k8s-master-11161905-1".to_string())).map(|e| e.cert_file.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/etc/kubernetes/certs/ca.crt",
            "/etc/kubernetes/certs/apiserver.crt",
            "/etc/kubernetes/certs/client.crt",
            "/home/azureuser/.kube/config",
            "/etc/kubernetes/certs/etcdserver.crt",
            "/etc/kubernetes/certs/etcdclient.crt",
            "/etc/kubernetes/certs/etcdpeer1.crt",
            "/etc/kubernetes/certs/proxy-ca.crt",
            "/etc/kubernetes/certs/proxy.crt",
            "/etc/kubernetes/certs/kubeletserver.crt",
        ]
    );
}
