//! `--certificate-profile` against a live lab cluster (3 masters + 2 agents, certificates
//! expiring in 20 days): the operator brings a whole new PKI (new CA and leaves, issued for
//! this cluster by the lab's issuer, as their own PKI team would). Plan shows the supplied
//! fingerprints and saves no key; apply refuses the file once it changed after the plan;
//! otherwise it installs exactly the supplied certificates on every node and in apimodel.json,
//! the real kubectl works with the new admin kubeconfig, and plan with the same file then
//! finds nothing to do. Needs root and the binaries built beside this test.

mod support;

use lab::spec::Expiry;
use lab::Lab;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;
use support::{admin_kubeconfig, certrotate_bin, cluster_flags, nodes, ssh, text, up_expiring};

fn certrotate(args: &[&str], lab: &Lab) -> Output {
    support::run(args, &cluster_flags(lab))
}

fn certificate_profile(lab: &Lab) -> serde_json::Value {
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&lab.env()["LAB_API_MODEL"]).unwrap()).unwrap();
    doc["properties"]["certificateProfile"].clone()
}

/// A complete new PKI for this lab's cluster (30-year leaves under a new CA), written as
/// aks-engine's certificate profile JSON with mode 0600.
fn new_pki_file(lab: &Lab, path: &Path) -> serde_json::Value {
    let topo = lab::pki::topology_of(&lab.layout, Path::new(&lab.env()["LAB_API_MODEL"])).expect("topology");
    let entries = certrotate::pki::catalogue::catalogue(&topo);
    let mut layout = lab.layout.clone();
    layout.spec.expiry = Expiry::Default;
    let pki = lab::pki::issue_cluster_pki(&layout, &entries).expect("issue a new PKI");
    let json = lab::outputs::certificate_profile(&pki);
    std::fs::write(path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    json
}

fn kubectl_nodes_ready(lab: &Lab) {
    let mut last = String::new();
    for _ in 0..30 {
        let out = Command::new("kubectl").arg("--kubeconfig").arg(admin_kubeconfig(lab)).args(["get", "nodes", "--no-headers"]).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() && stdout.lines().filter(|l| l.split_whitespace().nth(1) == Some("Ready")).count() == nodes(lab).len() {
            return;
        }
        last = text(&out);
        std::thread::sleep(Duration::from_secs(1));
    }
    panic!("not every node Ready in kubectl with the new admin kubeconfig: {last}");
}

#[test]
fn supplied_certificates_are_installed_exactly_and_a_changed_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let lab = up_expiring(dir.path(), Expiry::In(20 * 86_400));
    let supplied_path = dir.path().join("my-certificates.json");
    let supplied = new_pki_file(&lab, &supplied_path);
    let supplied_arg = supplied_path.to_str().unwrap();
    let saved = dir.path().join("supplied.plan.yaml");

    let planned = certrotate(
        &["plan", "--certificate-profile", supplied_arg, "--detailed-exitcode", "--out", saved.to_str().unwrap()],
        &lab,
    );
    assert_eq!(planned.status.code(), Some(2), "{}", text(&planned));
    let stdout = String::from_utf8_lossy(&planned.stdout);
    assert!(stdout.contains("the certificate profile you supplied holds another cluster CA"), "{stdout}");
    let new_apiserver = certrotate::pki::inspect::parse_cert_pem(supplied["apiServerCertificate"].as_str().unwrap()).unwrap();
    // The human rendering shortens fingerprints to 16 hex digits.
    let shown_fp = format!("-> \"sha256:{}…\"", &new_apiserver.sha256_fingerprint[..16]);
    assert!(stdout.contains(&shown_fp), "the plan names the supplied apiserver certificate ({shown_fp}):\n{stdout}");
    let plan_text = std::fs::read_to_string(&saved).unwrap();
    assert!(!plan_text.contains("PRIVATE KEY") && !plan_text.contains("BEGIN CERTIFICATE"), "the plan holds PEM material");
    assert!(plan_text.contains("suppliedCertificates"), "the plan records the file");
    let shown = Command::new(certrotate_bin()).args(["show", saved.to_str().unwrap()]).output().unwrap();
    assert!(String::from_utf8_lossy(&shown.stdout).contains("Certificates supplied by"), "{}", text(&shown));

    // The file changes after review: apply refuses it and touches nothing.
    let original = std::fs::read(&supplied_path).unwrap();
    let before = certificate_profile(&lab);
    std::fs::write(&supplied_path, [original.as_slice(), b"\n"].concat()).unwrap();
    let refused = certrotate(&["apply", saved.to_str().unwrap()], &lab);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(text(&refused).contains("changed since the plan was made"), "{}", text(&refused));
    assert_eq!(certificate_profile(&lab), before, "apimodel.json untouched");
    let master = &nodes(&lab)[0];
    assert!(ssh(&lab, master, "sudo test -e /etc/kubernetes/certrotate.lock && echo held || echo free").contains("free"), "no lock left behind");
    std::fs::write(&supplied_path, &original).unwrap();

    let applied = certrotate(&["apply", saved.to_str().unwrap()], &lab);
    assert_eq!(applied.status.code(), Some(0), "{}", text(&applied));
    for n in nodes(&lab) {
        assert_eq!(ssh(&lab, &n, "cat /etc/kubernetes/certs/ca.crt"), supplied["caCertificate"].as_str().unwrap(), "ca.crt on {n}");
        assert_eq!(ssh(&lab, &n, "cat /etc/kubernetes/certs/client.crt"), supplied["clientCertificate"].as_str().unwrap(), "client.crt on {n}");
    }
    for (i, m) in nodes(&lab).iter().take(3).enumerate() {
        assert_eq!(ssh(&lab, m, "cat /etc/kubernetes/certs/apiserver.crt"), supplied["apiServerCertificate"].as_str().unwrap(), "apiserver.crt on {m}");
        assert_eq!(
            ssh(&lab, m, &format!("cat /etc/kubernetes/certs/etcdpeer{i}.crt")),
            supplied["etcdPeerCertificates"][i].as_str().unwrap(),
            "etcdpeer{i}.crt on {m}"
        );
    }
    assert_eq!(certificate_profile(&lab), supplied, "apimodel.json holds exactly the supplied certificateProfile");
    kubectl_nodes_ready(&lab);
    for o in [&planned, &refused, &applied] {
        assert!(!text(o).contains("PRIVATE KEY"), "a key reached the terminal");
    }

    let again = certrotate(&["plan", "--certificate-profile", supplied_arg, "--detailed-exitcode"], &lab);
    assert_eq!(again.status.code(), Some(0), "with the supplied certificates in place nothing is left to do: {}", text(&again));
    assert!(String::from_utf8_lossy(&again.stdout).contains("No changes"), "{}", text(&again));
    lab.down().unwrap();
}
