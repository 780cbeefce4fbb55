//! `certrotate plan` against live lab clusters (3 masters + 2 agents): healthy 30-year certs,
//! certs expiring in 20 days, and already-expired certs, with each shipped profile. Saved
//! plans carry no secret and are refused when tampered with. Needs root and the certrotate
//! binary built beside this test (`cargo build --workspace`, as tests/run.sh does).

mod support;

use lab::spec::Expiry;
use lab::Lab;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use support::{certrotate_bin, flat_stderr, ssh, ssh_flags, text, up_expiring};

fn plan(lab: &Lab, profile: &str, extra: &[&str]) -> Output {
    support::run(&[&["plan", "--profile", profile, "--detailed-exitcode"], extra].concat(), &ssh_flags(lab))
}

fn summary(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).lines().rev().find(|l| l.starts_with("Plan:") || l.starts_with("No changes")).unwrap_or("").to_string()
}

#[test]
fn healthy_cluster_needs_nothing_from_renew_expiring_and_everything_from_rotate_all() {
    let dir = tempfile::tempdir().unwrap();
    let lab = up_expiring(dir.path(), Expiry::Default);

    let out = plan(&lab, "renew-expiring", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(summary(&out).starts_with("No changes"), "{}", text(&out));

    the_product_documents_command_line_plans_unchanged(&lab);

    // Without azuredeploy.json the name suffix is AKS Engine's for the lab's dnsPrefix, and
    // the nodes' host names (the lab names its VMs as AKS Engine does) agree with it.
    let deploy = std::path::PathBuf::from(&lab.env()["LAB_API_MODEL"]).with_file_name("azuredeploy.json");
    let aside = deploy.with_extension("json.aside");
    std::fs::rename(&deploy, &aside).unwrap();
    let out = plan(&lab, "renew-expiring", &[]);
    std::fs::rename(&aside, &deploy).unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(summary(&out).starts_with("No changes"), "{}", text(&out));

    let saved = dir.path().join("rotate-all.plan.yaml");
    let out = plan(&lab, "rotate-all", &["--out", saved.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let line = summary(&out);
    assert!(line.contains("API downtime: outage"), "a new CA takes the API down and the plan says so: {line}");
    // Everything is replaced under the new CA; the kubelet serving certificates, which
    // aks-engine rotate-certs never touches, are left alone.
    let json_out = plan(&lab, "rotate-all", &["--json"]);
    let json: serde_json::Value = serde_json::from_slice(&json_out.stdout).expect("--json prints JSON");
    let mut seen = 0;
    for target in json["changes"].as_array().unwrap() {
        for change in target["certificates"].as_array().unwrap() {
            seen += 1;
            let id = change["certificate"].as_str().unwrap();
            let expected = if id.starts_with("kubeletserver") { "noop" } else { "replace" };
            assert_eq!(change["action"], expected, "{change:#}");
        }
    }
    assert!(seen >= 3 * 10 + 2 * 3, "every certificate of every node is in the plan ({seen} changes)");

    // rotate-ca: a new cluster CA and everything under it, so replacements and an outage.
    let out = plan(&lab, "rotate-ca", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let ca_line = summary(&out);
    assert!(!ca_line.contains(" 0 to replace") && ca_line.contains("API downtime: outage"), "{ca_line}");

    let plan_text = std::fs::read_to_string(&saved).unwrap();
    assert!(!plan_text.contains("PRIVATE KEY"), "a private key reached the plan file");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&saved).unwrap().permissions().mode() & 0o777, 0o600);

    let show = Command::new(certrotate_bin()).arg("show").arg(&saved).env("NO_COLOR", "1").output().unwrap();
    assert!(show.status.success(), "{}", text(&show));
    assert_eq!(summary(&show), line, "show renders the saved plan as plan did");
    let dot = Command::new(certrotate_bin()).arg("graph").arg(&saved).output().unwrap();
    assert!(String::from_utf8_lossy(&dot.stdout).starts_with("digraph"), "{}", text(&dot));

    std::fs::write(&saved, plan_text.replacen("dnsPrefix: ", "dnsPrefix: x", 1)).unwrap();
    let show = Command::new(certrotate_bin()).arg("show").arg(&saved).env("NO_COLOR", "1").output().unwrap();
    assert_eq!(show.status.code(), Some(1), "a tampered plan must be refused: {}", text(&show));
    let flat = flat_stderr(&show);
    assert!(flat.contains("modified after it was written"), "{}", text(&show));

    a_stop_signal_ends_plan_at_once_closing_its_connections(&lab, &dir.path().join("tmp"));
    lab.down().unwrap();
}

/// The example command line of "Rotate certificates on Azure Stack Hub" (the product document
/// operators start from), `aks-engine rotate-certs` replaced by `certrotate plan`: every flag
/// it shows and no other (no tenant, no known_hosts, no apiserver address, no profile).
fn the_product_documents_command_line_plans_unchanged(lab: &Lab) {
    let env = lab.env();
    let out = Command::new(certrotate_bin())
        .arg("plan")
        .args(["--location", &env["LAB_LOCATION"]])
        .args(["--api-model", &env["LAB_API_MODEL"]])
        .args(["--linux-ssh-private-key", &env["LAB_SSH_KEY"]])
        .args(["--ssh-host", &env["LAB_SSH_HOST"]])
        .args(["--resource-group", &env["LAB_RESOURCE_GROUP"]])
        .args(["--client-id", &env["LAB_CLIENT_ID"]])
        .args(["--client-secret", &env["LAB_CLIENT_SECRET"]])
        .args(["--subscription-id", &env["LAB_SUBSCRIPTION_ID"]])
        .args(["--azure-env", &env["LAB_AZURE_ENV"]])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(summary(&out).starts_with("No changes"), "the default profile (renew-expiring) finds nothing on a healthy cluster: {}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("trusted and recorded"), "first contact trusts and records the host keys: {stderr}");
    assert!(!text(&out).contains(&env["LAB_CLIENT_SECRET"]), "the secret is never printed");
}

/// Ctrl-C while plan reads the nodes: plan changes nothing, so it exits at once, but first
/// closes its ssh ControlMasters (daemons that would stay connected) and removes their directory.
fn a_stop_signal_ends_plan_at_once_closing_its_connections(lab: &Lab, tmp: &std::path::Path) {
    std::fs::create_dir(tmp).unwrap();
    // plan takes well under a second here: send the signal as soon as its first connection
    // exists, and try again should the plan have finished first.
    for attempt in 0..5 {
        let child = support::spawn_in_own_group(&["plan", "--profile", "rotate-all"], &ssh_flags(lab), tmp);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !has_socket(tmp) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        support::send_signal_to_group(child.id(), libc::SIGINT);
        let out = child.wait_with_output().unwrap();
        eprintln!("attempt {attempt}: {:?}\n{}", out.status, text(&out));
        let left = support::processes_left_mentioning(tmp);
        assert!(left.is_empty(), "ssh left running: {left:?}");
        assert!(support::ssh_dirs_left(tmp).is_empty(), "{:?}", support::ssh_dirs_left(tmp));
        if out.status.code() == Some(2) {
            eprintln!("attempt {attempt}: plan finished before the signal");
            continue;
        }
        assert_eq!(out.status.code(), Some(128 + libc::SIGINT), "{}", text(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains("SIGINT (Ctrl-C) received (a stop signal): exiting now"), "{}", text(&out));
        return;
    }
    panic!("plan always finished before the signal arrived");
}

fn has_socket(dir: &std::path::Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    support::files_under(dir).iter().any(|(_, t)| t.is_socket())
}

#[test]
fn expiring_cluster_is_renewed_without_downtime() {
    let dir = tempfile::tempdir().unwrap();
    let lab = up_expiring(dir.path(), Expiry::In(20 * 86_400));
    let out = plan(&lab, "renew-expiring", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("expires in 19 days < renew-before 90d") || stdout.contains("expires in 20 days < renew-before 90d"), "{}", text(&out));
    assert!(summary(&out).ends_with("API downtime: none"), "{}", text(&out));
    lab.down().unwrap();
}

#[test]
fn expired_cluster_is_planned_without_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let lab = up_expiring(dir.path(), Expiry::Expired);
    let out = plan(&lab, "renew-expiring", &["--json"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json prints JSON");
    let findings = json["findings"].as_array().unwrap();
    assert!(findings.iter().any(|f| f["code"] == "cluster-expired"), "{json:#}");
    lab.down().unwrap();
}

/// Runs a command as root on a lab node through the jumpbox, with the lab's ssh config.
fn on_node(lab: &Lab, node: &str, command: &str) {
    ssh(lab, node, &format!("sudo sh -c '{command}'"));
}

/// Writes `content` to `path` on a lab node as root.
fn put_file(lab: &Lab, node: &str, path: &str, content: &str) {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(content);
    ssh(lab, node, &format!("echo {encoded} | base64 -d | sudo tee {path} >/dev/null"));
}

/// Every drift case of the plan issue, made on a live cluster by hand as an operator (or a
/// half-finished earlier rotation) would leave it, each found by plan as its own finding.
#[test]
fn drift_on_live_nodes_shows_as_findings() {
    use certrotate::pki::catalogue::{catalogue, CertKind};
    use certrotate::pki::issue::{issue_ca, CertificateAuthority};
    use certrotate::pki::{KeyCertPair, KeySpec};
    let dir = tempfile::tempdir().unwrap();
    let lab = up_expiring(dir.path(), Expiry::Default);
    let suffix = lab.env()["LAB_NAME_SUFFIX"].clone();
    let agent = format!("k8s-agentpool1-{suffix}-0");
    let master0 = format!("k8s-master-{suffix}-0");
    let master1 = format!("k8s-master-{suffix}-1");
    let master2 = format!("k8s-master-{suffix}-2");
    let model_path = std::path::PathBuf::from(&lab.env()["LAB_API_MODEL"]);
    let entries = catalogue(&lab::pki::topology_of(&lab.layout, &model_path).unwrap());
    let entry = |kind: CertKind| entries.iter().find(|e| e.kind == kind).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let window = (now - time::Duration::hours(1), now + time::Duration::days(365));

    // Wrong mode and owner.
    on_node(&lab, &agent, "chmod 0644 /etc/kubernetes/certs/client.key");
    on_node(&lab, &master0, "chown azureuser /etc/kubernetes/certs/apiserver.crt");
    // A master whose apiserver key belongs to another certificate.
    on_node(&lab, &master1, "cp /etc/kubernetes/certs/client.key /etc/kubernetes/certs/apiserver.key");
    // An etcd peer certificate from another CA: that member could not join the quorum.
    let foreign_ca = issue_ca(&entry(CertKind::Ca).template(KeySpec::Rsa2048, window.0, window.1)).unwrap();
    let foreign_peer = CertificateAuthority::load(&foreign_ca).unwrap().issue(&entry(CertKind::EtcdPeer(2)).template(KeySpec::Rsa2048, window.0, window.1)).unwrap();
    put_file(&lab, &master2, "/etc/kubernetes/certs/etcdpeer2.crt", &foreign_peer.cert_pem);
    put_file(&lab, &master2, "/etc/kubernetes/certs/etcdpeer2.key", &foreign_peer.key_pem);
    // Front-proxy files on one master that are not what etcd holds.
    on_node(&lab, &master2, "cp /etc/kubernetes/certs/proxy-ca.crt /etc/kubernetes/certs/proxy.crt");
    // The API model's certificateProfile holding another etcd client certificate (signed by the
    // right CA, so the API model itself is consistent) than the nodes.
    let mut doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&model_path).unwrap()).unwrap();
    let cp = &mut doc["properties"]["certificateProfile"];
    let ca = KeyCertPair { cert_pem: cp["caCertificate"].as_str().unwrap().into(), key_pem: cp["caPrivateKey"].as_str().unwrap().into() };
    let other_client = CertificateAuthority::load(&ca).unwrap().issue(&entry(CertKind::EtcdClient).template(KeySpec::Rsa2048, window.0, window.1)).unwrap();
    cp["etcdClientCertificate"] = other_client.cert_pem.clone().into();
    cp["etcdClientPrivateKey"] = other_client.key_pem.clone().into();
    std::fs::write(&model_path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();

    // What the bad-input corpus asks of node contents: garbage PEM, an encrypted key, a
    // directory where a file belongs, a missing file.
    put_file(&lab, &master2, "/etc/kubernetes/certs/client.crt", "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n");
    on_node(&lab, &master2, "openssl pkey -in /etc/kubernetes/certs/etcdserver.key -aes-128-cbc -passout pass:x -out /tmp/enc.key && cat /tmp/enc.key > /etc/kubernetes/certs/etcdserver.key && rm /tmp/enc.key");
    on_node(&lab, &master1, "rm /etc/kubernetes/certs/etcdserver.crt && mkdir /etc/kubernetes/certs/etcdserver.crt");
    on_node(&lab, &master0, "rm /etc/kubernetes/certs/etcdpeer0.crt");
    on_node(&lab, &master0, "cp /etc/kubernetes/certs/ca.crt /etc/ssl/elsewhere-ca.crt && ln -sf /etc/ssl/elsewhere-ca.crt /etc/kubernetes/certs/ca.crt");
    let before: Vec<String> = [&master0, &master1, &master2].iter().map(|n| ssh(&lab, n, "sudo sh -c 'ls -la /etc/kubernetes/certs; sha256sum /etc/kubernetes/certs/*.key /etc/kubernetes/certs/*.crt 2>/dev/null; true'")).collect();

    let out = plan(&lab, "renew-expiring", &["--json"]);
    assert!(matches!(out.status.code(), Some(0) | Some(2)), "{}", text(&out));
    let after: Vec<String> = [&master0, &master1, &master2].iter().map(|n| ssh(&lab, n, "sudo sh -c 'ls -la /etc/kubernetes/certs; sha256sum /etc/kubernetes/certs/*.key /etc/kubernetes/certs/*.crt 2>/dev/null; true'")).collect();
    assert_eq!(before, after, "plan changes nothing on the nodes");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json prints JSON");
    let findings = json["findings"].as_array().unwrap();
    let has = |code: &str, node: Option<&str>, path_end: &str| {
        findings.iter().any(|f| {
            f["code"] == code
                && node.is_none_or(|n| f["node"] == n)
                && f["path"].as_str().is_some_and(|p| p.ends_with(path_end))
        })
    };
    assert!(has("wrong-mode", Some(&agent), "client.key"), "mode drift not found: {findings:#?}");
    assert!(has("wrong-owner", Some(&master0), "apiserver.crt"), "owner drift not found: {findings:#?}");
    assert!(has("key-mismatch", Some(&master1), "apiserver.key"), "key mismatch not found: {findings:#?}");
    assert!(has("etcd-peer-ca-mismatch", Some(&master2), "etcdpeer2.crt"), "etcd peer from another CA not found: {findings:#?}");
    assert!(has("front-proxy-etcd-differs", Some(&master2), "proxy.crt"), "front-proxy drift from etcd not found: {findings:#?}");
    assert!(has("apimodel-differs", None, "/certificateProfile/etcdClientCertificate"), "API model drift not found: {findings:#?}");
    let on = |node: &str, path_end: &str| findings.iter().filter(|f| f["node"] == node && f["path"].as_str().is_some_and(|p| p.ends_with(path_end))).collect::<Vec<_>>();
    assert!(has("unreadable-certificate", Some(&master2), "/client.crt"), "garbage PEM not found: {findings:#?}");
    assert!(has("unreadable-certificate", Some(&master1), "etcdserver.crt"), "a directory where a certificate belongs not found: {findings:#?}");
    assert_eq!(on(&master1, "etcdserver.crt").len(), 1, "one finding for the directory: {findings:#?}");
    let encrypted = on(&master2, "etcdserver.key");
    assert!(encrypted.len() == 1 && encrypted[0]["code"] == "unreadable-key" && encrypted[0]["message"].as_str().unwrap().contains("encrypted"), "{findings:#?}");
    let link = on(&master0, "/ca.crt");
    assert!(link.len() == 1 && link[0]["code"] == "symlink" && link[0]["message"].as_str().unwrap().contains("/etc/ssl/elsewhere-ca.crt"), "{findings:#?}");
    let plan_text = String::from_utf8_lossy(&out.stdout);
    assert!(plan_text.contains("/etc/kubernetes/certs/etcdpeer0.crt missing"), "the missing file is a reason to create it: {plan_text}");
    // Each drift on a node is also a reason to fix it: the plan reissues what is wrong.
    assert_eq!(out.status.code(), Some(2), "drift must plan changes: {}", text(&out));
    // Nodes without drift raise no node finding of these kinds.
    let agent1 = format!("k8s-agentpool1-{suffix}-1");
    assert!(!findings.iter().any(|f| f["node"] == agent1.as_str() && f["severity"] != "info"), "{findings:#?}");
    lab.down().unwrap();
}
