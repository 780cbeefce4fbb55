//! `certrotate apply --break-lock` and `--force` against live lab clusters (3 masters + 1
//! agent, certificates expiring in 20 days, renew-expiring): a lock held by an apply of
//! another machine refuses a plain apply and is broken, with a warning, by --break-lock; with
//! the API out of reach from the operator, apply stops at an API gate, --force does the node
//! work and skips the Kubernetes gates and operations, and a later run with the API back does
//! what was skipped. After the window, `evidence` gathers what the apply did into a bundle
//! that checks out and holds no key. Needs root and the binaries built beside this test (`cargo build --workspace`).

mod support;

use lab::spec::{Expiry, LabSpec};
use lab::Lab;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::{admin_kubeconfig, assert_plan_has_no_changes, cluster_flags, flat_stderr, model_dir, nodes, renew_expiring_with_fast_gates, run, ssh, text, up};

const LOCK: &str = "/etc/kubernetes/certrotate.lock";

fn up_3_1(dir: &Path) -> Lab {
    up(dir, LabSpec { masters: 3, agents: 1, expiry: Expiry::In(20 * 86_400), ..LabSpec::default() })
}

/// Plans `profile` into `dir/renew.plan.yaml` with the API reachable; the plan has changes.
fn saved_plan(lab: &Lab, dir: &Path, profile: &str) -> PathBuf {
    let saved = dir.join("renew.plan.yaml");
    let out = run(&["plan", "--profile", profile, "--detailed-exitcode", "--out", saved.to_str().unwrap()], &cluster_flags(lab));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    saved
}

/// The SHA-256 of every certificate under /etc/kubernetes/certs, per node.
fn certs(lab: &Lab) -> BTreeMap<String, String> {
    nodes(lab).into_iter().map(|n| (n.clone(), ssh(lab, &n, "sudo sh -c 'sha256sum /etc/kubernetes/certs/*.crt'"))).collect()
}

/// Every journal line of every run of this cluster, in order: (step, note).
fn journal(lab: &Lab) -> Vec<(String, String)> {
    let mut entries = Vec::new();
    let Ok(runs) = std::fs::read_dir(model_dir(lab).join("_rotate_certs_output")) else { return entries };
    for run in runs.flatten() {
        for line in std::fs::read_to_string(run.path().join("journal.jsonl")).unwrap_or_default().lines() {
            let e: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            if let Some(step) = e["step"].as_str() {
                entries.push((step.to_string(), e["note"].as_str().unwrap_or("").to_string()));
            }
        }
    }
    entries
}

/// Every approval line of every run of this cluster, in order.
fn approvals(lab: &Lab) -> Vec<serde_json::Value> {
    let mut found = Vec::new();
    let Ok(runs) = std::fs::read_dir(model_dir(lab).join("_rotate_certs_output")) else { return found };
    for run in runs.flatten() {
        for line in std::fs::read_to_string(run.path().join("journal.jsonl")).unwrap_or_default().lines() {
            let e: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            if !e["approval"].is_null() {
                found.push(e["approval"].clone());
            }
        }
    }
    found
}

/// The last journal note of each step.
fn latest(lab: &Lab) -> BTreeMap<String, String> {
    journal(lab).into_iter().collect()
}

fn is_forced(note: &str) -> bool {
    note.starts_with("skipped (--force")
}

fn lock_file(lab: &Lab) -> String {
    ssh(lab, &nodes(lab)[0], &format!("sudo sh -c 'cat {LOCK} 2>/dev/null || echo absent'")).trim().to_string()
}

fn kubectl(lab: &Lab, args: &[&str]) -> serde_json::Value {
    let out = Command::new("kubectl").arg("--kubeconfig").arg(admin_kubeconfig(lab)).args(args).args(["-o", "json"]).output().unwrap();
    assert!(out.status.success(), "kubectl {args:?}: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn autoscaler_replicas(lab: &Lab) -> u64 {
    kubectl(lab, &["-n", "kube-system", "get", "deployment", "cluster-autoscaler"])["spec"]["replicas"].as_u64().unwrap()
}

/// The uid of the kube-proxy pod on `node`, waiting for the daemonset to have one there.
fn kube_proxy_uid(lab: &Lab, node: &str) -> String {
    for _ in 0..30 {
        let pods = kubectl(lab, &["-n", "kube-system", "get", "pods"]);
        let uid = pods["items"].as_array().unwrap().iter().find_map(|p| {
            (p["spec"]["nodeName"] == node && p["metadata"]["name"].as_str().is_some_and(|n| n.starts_with("kube-proxy")))
                .then(|| p["metadata"]["uid"].as_str().unwrap().to_string())
        });
        if let Some(uid) = uid {
            return uid;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    panic!("no kube-proxy pod on {node}");
}

#[test]
fn a_lock_of_another_machine_refuses_apply_and_break_lock_takes_it_over() {
    let dir = tempfile::tempdir().unwrap();
    let lab = up_3_1(dir.path());
    let saved = saved_plan(&lab, dir.path(), "renew-expiring");
    // An apply running on another jumpbox: its pid cannot be checked from here, so it lives.
    let other = "holder=alice@jumpbox-2/0123456789ab pid=4242 since=2026-01-01T00:00:00Z plan=sha256:00ff00ff00ff00ff00ff";
    let first = nodes(&lab)[0].clone();
    ssh(&lab, &first, &format!("echo '{other}' | sudo tee {LOCK} >/dev/null"));
    let before = certs(&lab);

    let refused = run(&["apply", saved.to_str().unwrap()], &cluster_flags(&lab));
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    let flat = flat_stderr(&refused);
    assert!(flat.contains("the cluster is locked by another apply: alice@jumpbox-2/0123456789ab (pid 4242)"), "names the holder: {flat}");
    // (miette may break the lock path after a slash, so only its end is looked for.)
    assert!(flat.contains(&format!("certrotate.lock on {first}")) && flat.contains("nothing was changed"), "{flat}");
    assert!(flat.contains("--break-lock"), "says how to break it: {flat}");
    assert_eq!(lock_file(&lab), other, "the other holder keeps its lock");
    assert_eq!(journal(&lab), vec![], "no step ran behind someone else's lock");
    assert_eq!(approvals(&lab), Vec::<serde_json::Value>::new(), "a refused run records no approval");
    assert_eq!(certs(&lab), before, "no certificate changed behind someone else's lock");

    let broke = run(&["apply", saved.to_str().unwrap(), "--break-lock", "--approved-by", "Jane Doe"], &cluster_flags(&lab));
    assert_eq!(broke.status.code(), Some(0), "{}", text(&broke));
    let stderr = String::from_utf8_lossy(&broke.stderr);
    assert!(
        stderr.lines().any(|l| l.starts_with("warning: took over the cluster lock held by alice@jumpbox-2/0123456789ab (pid 4242)")),
        "warns naming the old holder: {stderr}"
    );
    let after = certs(&lab);
    for (node, was) in &before {
        assert_ne!(&after[node], was, "{node} got its renewed certificates");
    }
    let done = latest(&lab);
    for node in nodes(&lab) {
        assert!(done.contains_key(&format!("installCerts@{node}")), "installCerts@{node} in the journal: {done:#?}");
    }
    assert_eq!(lock_file(&lab), "absent", "the lock is released at the end");
    let recorded = approvals(&lab);
    assert_eq!(recorded.len(), 1, "{recorded:#?}");
    assert_eq!(recorded[0]["approvedBy"], "Jane Doe");
    assert_eq!(recorded[0]["how"], "savedPlan");
    let digest = certrotate::plan::file::PlanFile::read(&saved).unwrap().digest.unwrap().to_string();
    assert_eq!(recorded[0]["planDigest"], digest.as_str(), "the approval names the plan it approved");
    assert_plan_has_no_changes(&lab, dir.path(), "renew-expiring");
    check_evidence(&lab, dir.path(), &saved, &digest);
    lab.down().unwrap();
}

/// `evidence` after the window: as .tar.gz for the plan, and as a directory for the most
/// recent apply; each holds what the apply did, checks out with sha256sum, and holds none
/// of the cluster's private keys.
fn check_evidence(lab: &Lab, dir: &Path, saved: &Path, digest: &str) {
    let archive = dir.join("evidence.tar.gz");
    let out = run(&["evidence", saved.to_str().unwrap(), "--out", archive.to_str().unwrap()], &cluster_flags(lab));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("Evidence of plan {digest} written to")), "{}", text(&out));
    let unpacked = dir.join("unpacked");
    std::fs::create_dir(&unpacked).unwrap();
    let tar = Command::new("tar").arg("-xzf").arg(&archive).arg("-C").arg(&unpacked).output().unwrap();
    assert!(tar.status.success(), "{}", text(&tar));
    let short = &digest.trim_start_matches("sha256:")[..16];
    let top = unpacked.join(format!("certrotate-evidence-{}-{short}", lab.layout.dns_prefix));
    let check = Command::new("sha256sum").args(["--check", "--strict", "SHA256SUMS"]).current_dir(&top).output().unwrap();
    assert!(check.status.success(), "{}", text(&check));
    let read = |p: &str| std::fs::read_to_string(top.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));

    let summary: serde_json::Value = serde_json::from_str(&read("evidence.json")).unwrap();
    assert_eq!(summary["complete"], true, "{summary:#}");
    assert_eq!(summary["approvals"][0]["approvedBy"], "Jane Doe");
    assert_eq!(summary["statusBeforeKept"], true);
    assert_eq!(read("journal.jsonl"), std::fs::read_to_string(model_dir(lab).join("_rotate_certs_output").join(short).join("journal.jsonl")).unwrap());
    // Before: the certificates apply found, expiring in 20 days; after: the renewed ones.
    let before: Vec<serde_json::Value> = serde_json::from_str(&read("status/before.json")).unwrap();
    let after: Vec<serde_json::Value> = serde_json::from_str(&read("status/after.json")).unwrap();
    let residual = |rows: &[serde_json::Value], loc: &str| rows.iter().find(|r| r["location"].as_str().unwrap().ends_with(loc)).unwrap()["residual_days"].as_i64().unwrap();
    let first = nodes(lab)[0].clone();
    let apiserver = format!("{first}:apiserver.crt");
    assert!(residual(&before, &apiserver) <= 20, "{before:#?}");
    assert!(residual(&after, &apiserver) > 300, "{after:#?}");
    assert!(read("status/after.txt").starts_with("CERTIFICATE"));
    let backups: serde_json::Value = serde_json::from_str(&read("backups.json")).unwrap();
    assert!(backups["apiModelBackup"].as_str().unwrap().contains("_rotate_certs_backup"), "{backups:#}");
    for node in nodes(lab) {
        let log = read(&format!("nodes/{node}/rotate-certs.log"));
        assert!(log.contains(&format!("certrotate[{short}] installCerts: ok")), "{node}: {log}");
        let record = backups["nodes"].as_array().unwrap().iter().find(|n| n["node"] == node.as_str()).unwrap_or_else(|| panic!("{node}: {backups:#}"));
        assert_eq!(record["backupStamp"], short, "{node}'s backup is this plan's");
    }
    // No private key of the cluster, in any form, anywhere in the bundle.
    let key_lines: Vec<String> = ssh(lab, &first, "sudo sh -c 'cat /etc/kubernetes/certs/*.key'").lines().filter(|l| !l.starts_with("-----")).map(str::to_string).collect();
    assert!(key_lines.len() > 10, "the node's keys were read for the scan");
    for entry in walk(&top) {
        let content = String::from_utf8_lossy(&std::fs::read(&entry).unwrap()).to_string();
        assert!(!certrotate::plan::file::contains_secret(&content), "{} holds a secret", entry.display());
        assert!(!key_lines.iter().any(|l| content.contains(l.as_str())), "{} holds a line of a node's private key", entry.display());
    }

    // Without a plan: the most recent apply, as a directory.
    let as_dir = dir.join("evidence-dir");
    let out = run(&["evidence", "--out", as_dir.to_str().unwrap()], &cluster_flags(lab));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(std::fs::read(as_dir.join("plan/plan.yaml")).unwrap(), std::fs::read(top.join("plan/plan.yaml")).unwrap());
    let again = run(&["evidence", "--out", as_dir.to_str().unwrap()], &cluster_flags(lab));
    assert_eq!(again.status.code(), Some(1), "an earlier bundle is never overwritten: {}", text(&again));
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if entry.file_type().unwrap().is_dir() {
            out.extend(walk(&entry.path()));
        } else {
            out.push(entry.path());
        }
    }
    out
}

#[test]
fn force_goes_on_without_the_api_and_a_later_run_does_what_it_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let lab = up_3_1(dir.path());
    let profile = renew_expiring_with_fast_gates(dir.path());
    let saved = saved_plan(&lab, dir.path(), profile.to_str().unwrap());
    let agent = nodes(&lab)[3].clone();
    let (proxy_before, replicas_before, certs_before) = (kube_proxy_uid(&lab, &agent), autoscaler_replicas(&lab), certs(&lab));
    assert!(replicas_before > 0, "the lab runs cluster-autoscaler");

    // The API out of reach from the operator (as when its load balancer is down), while SSH
    // and etcd work: --apiserver names a local port nobody listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let mut no_api = cluster_flags(&lab);
    let at = no_api.iter().position(|f| f == "--apiserver").unwrap();
    no_api[at + 1] = dead.clone();

    // --debug counts what the flow loads: this run issues the PKI, the next writes the API
    // model; each loads apimodel.json and derives the topology once, whatever its steps do.
    let loads_and_derivations = |out: &std::process::Output| {
        let stderr = String::from_utf8_lossy(&out.stderr);
        (stderr.matches("loaded apimodel.json").count(), stderr.matches("derived topology").count())
    };
    let failed = run(&["apply", saved.to_str().unwrap(), "--debug"], &no_api);
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
    assert_eq!(loads_and_derivations(&failed), (1, 1), "{}", text(&failed));
    let flat = flat_stderr(&failed);
    assert!(flat.contains("@preflight failed: gate"), "an API gate of the preflight stops the run: {flat}");
    assert!(flat.contains("no credentials reach the API server"), "says what it saw: {flat}");
    assert!(flat.contains(&format!("apply {} ", saved.display())) && flat.contains(&format!("--apiserver {dead}")), "prints the command that resumes: {flat}");
    assert!(journal(&lab).iter().all(|(step, note)| !step.starts_with("installCerts@") && !is_forced(note)), "{:#?}", journal(&lab));
    assert_eq!(certs(&lab), certs_before, "nothing was installed behind a failed preflight gate");

    let forced = run(&["apply", saved.to_str().unwrap(), "--force", "--debug"], &no_api);
    assert_eq!(forced.status.code(), Some(0), "{}", text(&forced));
    assert_eq!(loads_and_derivations(&forced), (1, 1), "{}", text(&forced));
    let stderr = String::from_utf8_lossy(&forced.stderr);
    for warning in [
        "warning: --force: gate nodesReady@preflight skipped, the API does not answer",
        "warning: --force: not pausing cluster-autoscaler, the API does not answer",
        "warning: --force: skipped because the API does not answer",
        "warning: --force: gate kubeSystemReady@final skipped, the API does not answer",
    ] {
        assert!(stderr.contains(warning), "{warning}: {stderr}");
    }
    // The operator is told the run is not finished, and how to finish it (without --force).
    let stdout = String::from_utf8_lossy(&forced.stdout);
    let pending = stdout.lines().find(|l| l.starts_with("Not done yet:")).unwrap_or_else(|| panic!("no pending notice: {stdout}"));
    assert!(pending.contains("pauseAutoscaler") && pending.contains(&format!("apply {}", saved.display())), "{pending}");
    let command = pending.split('`').nth(1).unwrap_or_else(|| panic!("no command in: {pending}"));
    assert!(command.contains(" apply ") && !command.contains("--force"), "the command to finish must not force again: {command}");
    // The node work is done; what needs the API is journaled as forced, and nothing else is.
    let after_force = latest(&lab);
    let forced_steps: Vec<&str> = after_force.iter().filter(|(_, note)| is_forced(note)).map(|(s, _)| s.as_str()).collect();
    for step in ["nodesReady@preflight", "pauseAutoscaler", &format!("deleteKubeProxyPod@{agent}"), &format!("nodesReady@{agent}"), "kubeSystemReady@final"] {
        assert!(forced_steps.contains(&step), "{step} is journaled as forced: {forced_steps:?}");
    }
    for step in &forced_steps {
        let op = step.split('@').next().unwrap();
        assert!(
            ["nodesReady", "controlPlanePodsReady", "kubeSystemReady", "pauseAutoscaler", "resumeAutoscaler", "deleteKubeProxyPod", "deleteServiceAccountTokens", "rolloutWorkloads"].contains(&op),
            "only API gates and Kubernetes operations are skipped, not {step}"
        );
    }
    let certs_forced = certs(&lab);
    for (node, was) in &certs_before {
        assert_ne!(&certs_forced[node], was, "{node} got its renewed certificates under --force");
        assert!(!is_forced(&after_force[&format!("installCerts@{node}")]));
    }
    assert_eq!(kube_proxy_uid(&lab, &agent), proxy_before, "the skipped kube-proxy restart did not happen");
    assert_eq!(autoscaler_replicas(&lab), replicas_before, "the autoscaler was not touched");

    // The API is back: the run does what was skipped, not the node work again.
    let resumed = run(&["apply", saved.to_str().unwrap()], &cluster_flags(&lab));
    assert_eq!(resumed.status.code(), Some(0), "{}", text(&resumed));
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(!stderr.contains("start  installCerts@"), "the node work is not done again: {stderr}");
    assert!(stderr.contains(&format!("start  deleteKubeProxyPod@{agent}")), "{stderr}");
    assert!(!String::from_utf8_lossy(&resumed.stdout).contains("Not done yet"), "{}", text(&resumed));
    let done = latest(&lab);
    assert!(done.values().all(|note| !is_forced(note)), "nothing is left forced: {done:#?}");
    assert_eq!(done["pauseAutoscaler"], format!("scaled cluster-autoscaler from {replicas_before} to 0"));
    assert_eq!(done["resumeAutoscaler"], format!("scaled cluster-autoscaler back to {replicas_before}"), "{done:#?}");
    assert_eq!(autoscaler_replicas(&lab), replicas_before, "the autoscaler runs again after the run");
    assert_ne!(kube_proxy_uid(&lab, &agent), proxy_before, "kube-proxy on {agent} was restarted");
    assert_eq!(certs(&lab), certs_forced, "the certificates are the ones --force installed");
    let again = run(&["apply", saved.to_str().unwrap()], &cluster_flags(&lab));
    assert!(String::from_utf8_lossy(&again.stdout).contains("already been applied completely"), "{}", text(&again));
    assert_plan_has_no_changes(&lab, dir.path(), "renew-expiring");
    lab.down().unwrap();
}
