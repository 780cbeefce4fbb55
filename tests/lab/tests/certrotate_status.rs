//! certrotate's refresh against a live lab cluster (3 masters + 2 agents): `status` reads
//! every certificate of every node over SSH through the jumpbox with one connection per
//! node; a replaced host key stops it with a man-in-the-middle warning; an unreachable node
//! fails it unless `--skip-unreachable`. Needs root, and the certrotate binary built beside
//! this test (`cargo build --workspace`, as tests/run.sh does).

mod support;

use lab::control::Fault;
use lab::spec::LabSpec;
use lab::Lab;
use std::process::Output;
use support::{nodes, ssh_flags, text, up};

/// `certrotate status` with the API model, the SSH key and the lab's known_hosts.
fn status(lab: &Lab, extra: &[&str]) -> Output {
    support::run(&[&["status"], extra].concat(), &ssh_flags(lab))
}

#[test]
fn status_reads_every_node_and_stops_on_changed_host_keys() {
    let dir = tempfile::tempdir().unwrap();
    let lab = up(dir.path(), LabSpec::default());
    let nodes = nodes(&lab);
    assert_eq!(nodes.len(), 5, "{nodes:?}");
    let logins_before: Vec<usize> = nodes.iter().map(|n| lab.ssh_logins(n).unwrap()).collect();

    let out = status(&lab, &["--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    // 3 masters × (ca, apiserver, client, kubeconfig, etcdserver, etcdclient, own etcdpeer,
    // proxy-ca, proxy, kubeletserver) + 2 agents × (ca, client, kubeletserver).
    assert_eq!(rows.len(), 3 * 10 + 2 * 3, "{rows:#?}");
    for r in &rows {
        assert_eq!(r["findings"], serde_json::json!([]), "the lab issues AKS Engine's PKI, so no finding: {r}");
    }
    for node in &nodes {
        assert!(rows.iter().any(|r| r["location"].as_str().unwrap().starts_with(node.as_str())), "{node} not read");
    }
    // One connection per node; the jumpbox's own commands share the tunnel to the others.
    for (node, before) in nodes.iter().zip(&logins_before) {
        assert_eq!(lab.ssh_logins(node).unwrap() - before, 1, "{node}: SSH logins per refresh");
    }
    assert!(!String::from_utf8_lossy(&out.stdout).contains("PRIVATE KEY"));
    // The lab's front-proxy pair is openssl's, made as AKS Engine's generateproxycerts.sh
    // makes it, and /proxycerts hold its leading-space form: a plan finds nothing to say.
    let out = support::run(&["plan", "--profile", "renew-expiring", "--detailed-exitcode"], &support::cluster_flags(&lab));
    assert_eq!(out.status.code(), Some(0), "no changes: {}", text(&out));
    assert!(!text(&out).contains("front-proxy"), "no front-proxy finding: {}", text(&out));
    support::assert_proxycerts_as_aks_engine_leaves_them(&lab, &nodes[0]);

    // An agent cut off the network: named, and fatal unless skipped.
    let agent0 = nodes[3].clone();
    lab.fault(Fault::CutNetwork { node: agent0.clone() }).unwrap();
    let out = status(&lab, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&agent0), "{}", text(&out));
    let out = status(&lab, &["--skip-unreachable"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("unreachable: {agent0}")), "{}", text(&out));
    fleet_names_every_certificate_and_every_gap(&lab, dir.path(), &nodes, &agent0);
    lab.fault(Fault::RestoreNetwork { node: agent0 }).unwrap();

    // A node whose host key changed stops everything.
    let agent1 = nodes[4].clone();
    lab.fault(Fault::ReplaceHostKey { node: agent1.clone() }).unwrap();
    let out = status(&lab, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&agent1) && err.contains("man-in-the-"), "{}", text(&out));

    lab.down().unwrap();
}

/// `status --fleet` over this lab and a cluster whose API model is gone, while `cut` is off the
/// network: one table with the cluster named, and Prometheus text in which the cut node and
/// the missing cluster are metrics too, not silent gaps.
fn fleet_names_every_certificate_and_every_gap(lab: &Lab, dir: &std::path::Path, nodes: &[String], cut: &str) {
    let env = lab.env();
    let fleet = dir.join("fleet.yaml");
    std::fs::write(
        &fleet,
        format!(
            "clusters:\n  - name: lab\n    apiModel: {}\n    sshHost: {}\n    linuxSshPrivateKey: {}\n    knownHosts: {}\n  - name: gone\n    apiModel: gone/apimodel.json\n",
            env["LAB_API_MODEL"], env["LAB_SSH_HOST"], env["LAB_SSH_KEY"], env["LAB_KNOWN_HOSTS"]
        ),
    )
    .unwrap();
    let metrics = dir.join("textfile").join("certrotate.prom");
    std::fs::create_dir_all(metrics.parent().unwrap()).unwrap();
    let out = support::run(&["status", "--fleet", fleet.to_str().unwrap(), "--prometheus", metrics.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    for node in nodes.iter().filter(|n| n.as_str() != cut) {
        assert!(table.contains(&format!("lab/{node}:")), "{node} in the fleet table: {table}");
    }
    assert!(table.contains(&format!("unreachable: lab/{cut}")), "{table}");
    assert!(table.contains("unreachable cluster: gone"), "{table}");
    let prom = std::fs::read_to_string(&metrics).unwrap();
    assert!(prom.lines().any(|l| l.starts_with("x509_cert_not_after{") && l.contains("cluster=\"lab\"") && l.contains(&format!("node=\"{}\"", nodes[0]))), "{prom}");
    assert!(prom.lines().any(|l| l.starts_with("x509_read_errors{") && l.contains(&format!("node=\"{cut}\""))), "the cut node is a metric: {prom}");
    assert!(prom.lines().any(|l| l.starts_with("x509_read_errors{") && l.contains("cluster=\"gone\"")), "the missing cluster is a metric: {prom}");
    assert!(!prom.contains("PRIVATE KEY") && !table.contains("PRIVATE KEY"));
    let check = std::process::Command::new("promtool").args(["check", "metrics"]).stdin(std::fs::File::open(&metrics).unwrap()).output().expect("promtool (tests/install-deps.sh installs it)");
    assert!(check.status.success(), "promtool: {}", text(&check));
}
