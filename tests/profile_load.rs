//! The shipped profiles load by name and by path, say what they promise, and survive a
//! YAML round trip; defaults and digests behave as documented.

use certrotate::diag::SourceFile;
use certrotate::model::profile::*;
use certrotate::pki::KeySpec;
use std::path::Path;

const SHIPPED: [&str; 3] = ["rotate-all", "renew-expiring", "rotate-ca"];

fn shipped_path(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("plans").join(format!("{name}.yaml"))
}

#[test]
fn every_shipped_profile_loads_by_name_and_by_path_alike() {
    for name in SHIPPED {
        let by_name = Profile::load(name).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let path = shipped_path(name);
        let by_path = Profile::load(path.to_str().unwrap()).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(by_name, by_path, "{name}: the embedded copy differs from plans/{name}.yaml");
        assert_eq!(by_name.name, name);
        assert!(!by_name.description.is_empty(), "{name} has no description");
    }
    assert_eq!(Profile::shipped_names().collect::<Vec<_>>(), SHIPPED);
}

#[test]
fn shipped_profiles_round_trip_through_yaml() {
    for name in SHIPPED {
        let profile = Profile::load(name).unwrap();
        let yaml = serde_yaml::to_string(&profile).unwrap();
        let again = Profile::from_source(&SourceFile::from_text(format!("{name}-again.yaml"), yaml.clone()))
            .unwrap_or_else(|e| panic!("{name} does not read back: {e:?}\n{yaml}"));
        assert_eq!(profile, again, "{name}");
        assert_eq!(profile.digest(), again.digest());
    }
}

#[test]
fn shipped_profiles_say_what_their_names_promise() {
    let all = Profile::load("rotate-all").unwrap();
    assert_eq!(all.ca, CaPolicy::Always);
    assert_eq!(all.front_proxy.ca, CaPolicy::Always);
    assert_eq!(all.leaves, LeafPolicy::Always);
    assert_eq!(all.masters.strategy, MasterStrategy::AllAtOnce);
    // aks-engine rotate-certs' figures: SetDefaultCerts with DefaultPkiKeySize 4096 and
    // ValidityDuration 30 x 365 days for the CA and every leaf; generate-proxy-certs.sh's
    // RSA 2048 and 262824 days for the front-proxy pair; kubelet serving certificates untouched.
    let aks_engine_leaves: Vec<CertId> = CertId::ALL.into_iter().filter(|id| *id != CertId::KubeletServer).collect();
    assert_eq!(all.certificates_in_scope(), aks_engine_leaves);
    for id in [CertId::Ca, CertId::Apiserver, CertId::Client, CertId::Kubeconfig, CertId::EtcdServer, CertId::EtcdClient, CertId::EtcdPeer] {
        assert_eq!(all.key_for(id), KeySpec::Rsa4096, "{id}");
        assert_eq!(all.validity_for(id), Duration::days(30 * 365), "{id}");
    }
    for id in [CertId::ProxyCa, CertId::Proxy] {
        assert_eq!(all.key_for(id), KeySpec::Rsa2048, "{id}");
        assert_eq!(all.validity_for(id), Duration::days(262_824), "{id}");
    }

    let renew = Profile::load("renew-expiring").unwrap();
    assert_eq!(renew.ca, CaPolicy::Keep);
    assert_eq!(renew.front_proxy.ca, CaPolicy::Keep);
    assert_eq!(renew.renew_before, Duration::days(90));
    assert_eq!(renew.masters.strategy, MasterStrategy::Rolling);
    assert_eq!(renew.leaves, LeafPolicy::WhenDue);

    let ca = Profile::load("rotate-ca").unwrap();
    assert_eq!(ca.ca, CaPolicy::Always);
    assert_eq!(ca.front_proxy.ca, CaPolicy::Always);
    assert!(!ca.in_scope(CertId::KubeletServer));
    for id in CertId::ALL.into_iter().filter(|id| id.signed_by() == Some(CertId::Ca)) {
        assert!(ca.in_scope(id), "rotate-ca must cover {id}, which the CA signs");
    }
    assert!(ca.in_scope(CertId::Proxy) && ca.in_scope(CertId::ProxyCa));
    assert_eq!(ca.gates.timing(GateKind::EtcdHealthy).timeout, Duration::minutes(15));
    assert_eq!(ca.gates.timing(GateKind::NodesReady).timeout, Duration::minutes(10));
}

#[test]
fn a_minimal_profile_takes_the_documented_defaults() {
    let source = SourceFile::from_text("profiles/site-a.yaml", "description: defaults only\n");
    let profile = Profile::from_source(&source).unwrap();
    assert_eq!(profile.name, "site-a", "the name defaults to the file stem");
    assert_eq!(profile.renew_before, Duration::days(90));
    assert_eq!(profile.validity.ca, Duration::years(30));
    assert_eq!(profile.validity.leaf, Duration::years(2));
    assert_eq!(profile.key.leaf_key(), KeySpec::Rsa2048);
    assert_eq!(profile.key.ca_key(), KeySpec::Rsa4096);
    // Without frontProxy.keySize the front-proxy CA and client take key.caSize and key.size.
    assert_eq!(profile.front_proxy.key_size, None);
    assert_eq!(profile.key_for(CertId::ProxyCa), KeySpec::Rsa4096);
    assert_eq!(profile.key_for(CertId::Proxy), KeySpec::Rsa2048);
    assert_eq!(profile.ca, CaPolicy::Keep);
    assert_eq!(profile.scope, Scope::All);
    assert_eq!(profile.masters.strategy, MasterStrategy::Rolling);
    assert_eq!(profile.agents.parallelism.get(), 1);
    assert_eq!(profile.gates.timing(GateKind::KubeSystemReady).timeout, Duration::minutes(10));
    assert_eq!(profile.gates.timing(GateKind::KubeSystemReady).interval, Duration::seconds(5));
}

#[test]
fn flow_style_and_explicit_settings_are_read() {
    let text = "\
name: edge
renewBefore: 30d
ca: {policy: rotateWhenExpiring, within: 1y}
frontProxy: {ca: {policy: keep}, client: false}
key: {algorithm: rsa, size: 3072, caSize: 3072}
scope: [ca, apiserver, client, kubeconfig, etcdserver, etcdclient, etcdpeer]
extraSans: {dns: [API.Contoso.local, '*.apps.contoso.local'], ips: [10.255.255.100, 'fd00::10']}
masters: {strategy: all-at-once}
agents: {parallelism: 4}
gates: {timeout: 5m, interval: 10s, nodesReady: {timeout: 1h}}
";
    let profile = Profile::from_source(&SourceFile::from_text("edge.yaml", text)).unwrap();
    assert_eq!(profile.ca, CaPolicy::RotateWhenExpiring { within: Duration::years(1) });
    assert!(profile.ca.requires_rotation(std::time::Duration::from_secs(30 * 86_400)));
    assert!(!profile.ca.requires_rotation(Duration::years(2).as_std()));
    assert!(!profile.in_scope(CertId::Proxy));
    assert_eq!(profile.key_for(CertId::Apiserver), KeySpec::Rsa3072);
    assert_eq!(profile.extra_sans.dns[0].as_str(), "api.contoso.local");
    assert_eq!(profile.extra_sans.ips[1].0, "fd00::10".parse::<std::net::IpAddr>().unwrap());
    assert_eq!(profile.agents.parallelism.get(), 4);
    assert_eq!(profile.gates.timing(GateKind::NodesReady).timeout, Duration::minutes(60));
    assert_eq!(profile.gates.timing(GateKind::NodesReady).interval, Duration::seconds(10));
    assert_eq!(profile.gates.timing(GateKind::EtcdHealthy).timeout, Duration::minutes(5));
}

#[test]
fn ecdsa_is_accepted_for_certificates_kept_outside_the_api_model() {
    let text = "name: ec\nkey: {algorithm: ecdsa-p256}\nscope: [kubeletserver, proxy]\n";
    let profile = Profile::from_source(&SourceFile::from_text("ec.yaml", text)).unwrap();
    assert_eq!(profile.key_for(CertId::KubeletServer), KeySpec::EcdsaP256);
}

#[test]
fn the_digest_ignores_formatting_but_not_meaning() {
    let a = Profile::from_source(&SourceFile::from_text("a.yaml", "name: a\nrenewBefore: 2160h\n")).unwrap();
    let b = Profile::from_source(&SourceFile::from_text("b.yaml", "# same\nname: a\nrenewBefore: 90d\n")).unwrap();
    let c = Profile::from_source(&SourceFile::from_text("c.yaml", "name: a\nrenewBefore: 91d\n")).unwrap();
    assert_eq!(a.digest(), b.digest());
    assert_ne!(a.digest(), c.digest());
    assert!(a.digest().as_str().starts_with("sha256:"));
}
