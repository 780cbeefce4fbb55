//! `certrotate apply` and `rollback` against live lab clusters (3 masters + 2 agents, real
//! sshd, etcd and TLS, the apiserver and ARM stand-ins): renew-expiring keeps the API up;
//! rotate-all brings a new CA everywhere and rollback takes it back; an expired cluster is
//! rotated without the API; a killed apply resumes, and a second apply meanwhile is refused
//! by the lock. Needs root and the binaries built beside this test (`cargo build --workspace`).

mod support;

use lab::spec::Expiry;
use lab::Lab;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{
    admin_kubeconfig, assert_plan_has_no_changes, assert_proxycerts_as_aks_engine_leaves_them, certrotate_bin, cluster_flags, files_under, flat_stderr, model_dir, nodes, processes_left_mentioning, renew_expiring_with_fast_gates, run,
    send_signal_to_group, spawn_in_own_group, ssh, ssh_dirs_left, text, up_expiring,
};

fn certrotate(args: &[&str], lab: &Lab) -> Output {
    run(args, &cluster_flags(lab))
}

fn plan(lab: &Lab, profile: &str, out: &Path) -> Output {
    certrotate(&["plan", "--profile", profile, "--detailed-exitcode", "--out", out.to_str().unwrap()], lab)
}

fn apimodel_ca(lab: &Lab) -> String {
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&lab.env()["LAB_API_MODEL"]).unwrap()).unwrap();
    doc["properties"]["certificateProfile"]["caCertificate"].as_str().unwrap().to_string()
}

/// Every node Ready according to the real kubectl with the admin kubeconfig beside the API model.
fn kubectl_nodes_ready(lab: &Lab) -> Vec<String> {
    let kubeconfig = admin_kubeconfig(lab);
    let mut last = String::new();
    for _ in 0..30 {
        let out = Command::new("kubectl").arg("--kubeconfig").arg(&kubeconfig).args(["get", "nodes", "-o", "json"]).output().unwrap();
        if out.status.success() {
            let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let ready: Vec<String> = doc["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| n["status"]["conditions"].as_array().unwrap().iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
                .map(|n| n["metadata"]["name"].as_str().unwrap().to_string())
                .collect();
            if ready.len() == 5 {
                return ready;
            }
            last = format!("{ready:?}");
        } else {
            last = text(&out);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    panic!("not every node Ready in kubectl: {last}");
}

/// Every kube-system pod Ready according to the real kubectl (after the token rollouts).
fn kubectl_kube_system_ready(lab: &Lab) {
    let kubeconfig = admin_kubeconfig(lab);
    let mut last = String::new();
    for _ in 0..30 {
        let out = Command::new("kubectl").arg("--kubeconfig").arg(&kubeconfig).args(["-n", "kube-system", "get", "pods", "-o", "json"]).output().unwrap();
        if out.status.success() {
            let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let pods = doc["items"].as_array().unwrap();
            let not_ready: Vec<&str> = pods
                .iter()
                .filter(|p| !p["status"]["conditions"].as_array().is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True")))
                .map(|p| p["metadata"]["name"].as_str().unwrap_or("?"))
                .collect();
            if !pods.is_empty() && not_ready.is_empty() {
                return;
            }
            last = format!("not Ready: {not_ready:?}");
        } else {
            last = text(&out);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    panic!("kube-system is not Ready in kubectl: {last}");
}

/// Probes /readyz on each master in turn, an ideal balancer that knows at once which master
/// is ready: a probe fails only when no master answers 200. (The lab's HAProxy balancers
/// notice a dead master only after two failed TCP probes, as Azure's do; proving the API
/// stays up through those is issue 12's downtime proof, not this test's.)
struct ReadyzProber {
    stop: Arc<AtomicBool>,
    probes: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl ReadyzProber {
    fn start(lab: &Lab) -> ReadyzProber {
        let model = certrotate::model::apimodel::ApiModel::load(Path::new(&lab.env()["LAB_API_MODEL"])).unwrap();
        let topo = certrotate::model::topology::Topology::derive(&model, None).unwrap();
        let masters: Vec<String> = topo.masters.iter().map(|m| format!("https://{}:443/readyz", m.ip.unwrap())).collect();
        let ca = reqwest::Certificate::from_pem(apimodel_ca(lab).as_bytes()).unwrap();
        let (stop, probes, failures) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (s, p, f) = (stop.clone(), probes.clone(), failures.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let client = reqwest::Client::builder()
                    .add_root_certificate(ca)
                    .tls_built_in_root_certs(false)
                    .timeout(Duration::from_millis(800))
                    .build()
                    .unwrap();
                while !s.load(Ordering::SeqCst) {
                    let mut ok = false;
                    for url in &masters {
                        if let Ok(r) = client.get(url).send().await {
                            if r.status().is_success() {
                                ok = true;
                                break;
                            }
                        }
                    }
                    p.fetch_add(1, Ordering::SeqCst);
                    if !ok {
                        f.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
        });
        ReadyzProber { stop, probes, failures, thread }
    }

    fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap();
        (self.probes.load(Ordering::SeqCst), self.failures.load(Ordering::SeqCst))
    }
}

/// Files apply wrote on the operator side, plus its output: none may hold key material.
fn assert_no_secret(lab: &Lab, outputs: &[&Output]) {
    let mut texts: Vec<(String, String)> = outputs.iter().map(|o| ("output".to_string(), text(o))).collect();
    let runs = model_dir(lab).join("_rotate_certs_output");
    for run in std::fs::read_dir(&runs).unwrap().flatten() {
        for name in ["journal.jsonl", "state.json", "plan.yaml"] {
            if let Ok(t) = std::fs::read_to_string(run.path().join(name)) {
                texts.push((format!("{}/{name}", run.path().display()), t));
            }
        }
        use std::os::unix::fs::PermissionsExt;
        let pki = run.path().join("pki");
        assert_eq!(std::fs::metadata(&pki).unwrap().permissions().mode() & 0o777, 0o700, "{}", pki.display());
        for f in std::fs::read_dir(&pki).unwrap().flatten() {
            assert_eq!(f.metadata().unwrap().permissions().mode() & 0o777, 0o600, "{}", f.path().display());
        }
    }
    for n in nodes(lab) {
        texts.push((format!("{n}:/var/log/azure/rotate-certs.log"), ssh(lab, &n, "sudo cat /var/log/azure/rotate-certs.log")));
    }
    for (what, t) in texts {
        assert!(!t.contains("PRIVATE KEY"), "a private key reached {what}");
        assert!(!t.contains("client-key-data\": \"LS0t"), "an embedded key reached {what}");
    }
}

/// Each node's /var/log/azure/rotate-certs.log, as aks-engine rotate-certs kept it: one line
/// per step of the run that acted on that node (its journal entries, placed by the saved
/// plan), naming the step and its outcome, and no key material.
fn assert_node_logs_have_one_line_per_step(lab: &Lab, saved: &Path) {
    use certrotate::plan::step::Operation;
    let source = certrotate::diag::SourceFile::read(saved, "plan").unwrap();
    let plan = certrotate::plan::file::PlanFile::from_source(&source).unwrap();
    let runs: Vec<_> = std::fs::read_dir(model_dir(lab).join("_rotate_certs_output")).unwrap().flatten().collect();
    assert_eq!(runs.len(), 1, "one apply ran");
    let journal = std::fs::read_to_string(runs[0].path().join("journal.jsonl")).unwrap();
    let done: Vec<(String, String)> = journal
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|e| Some((e["step"].as_str()?.to_string(), e["note"].as_str().unwrap_or("").to_string())))
        .collect();
    // The operations that run a script on the node they target (gates only probe; Kubernetes
    // API steps run on the operator's side); cleanup runs on every node that was staged.
    let on_node = [
        Operation::DistributeCerts,
        Operation::BackupNodeCerts,
        Operation::InstallCerts,
        Operation::InstallAdminKubeconfig,
        Operation::RemoveKubeletClientCurrent,
        Operation::RestartEtcd,
        Operation::RestartControlPlane,
        Operation::RestartApiserver,
        Operation::RestartKubelet,
        Operation::PutFrontProxyInEtcd,
        Operation::InstallFrontProxy,
    ];
    let staged: Vec<String> = plan.graph.steps.iter().filter(|s| s.operation == Operation::DistributeCerts).filter_map(|s| s.target.clone()).collect();
    for node in nodes(lab) {
        let mut expected = Vec::new();
        for (id, note) in &done {
            let step = plan.graph.steps.iter().find(|s| &s.id == id).unwrap_or_else(|| panic!("journal step {id} is in the plan"));
            let acted_here = (step.target.as_deref() == Some(node.as_str()) && on_node.contains(&step.operation) && note != "admin kubeconfig unchanged")
                || (step.operation == Operation::Cleanup && staged.contains(&node));
            if acted_here {
                expected.push(step.operation.as_str().to_string());
            }
        }
        let log = ssh(lab, &node, "sudo cat /var/log/azure/rotate-certs.log");
        let logged: Vec<String> = log.lines().map(|l| l.split_whitespace().nth(2).unwrap_or("").trim_end_matches(':').to_string()).collect();
        expected.sort();
        let mut sorted = logged.clone();
        sorted.sort();
        assert!(!expected.is_empty(), "apply acted on {node}");
        assert_eq!(sorted, expected, "{node}: one line per step that ran there:\n{log}");
        for line in log.lines() {
            assert!(line.contains(": ok"), "{node}: every step succeeded: {line}");
            assert!(!line.contains("PRIVATE KEY") && !line.contains("BEGIN") && !line.contains("LS0t"), "{node}: key material in the log: {line}");
        }
    }
}

#[test]
fn renew_expiring_keeps_the_api_up_and_leaves_nothing_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let lab = up_expiring(dir.path(), Expiry::In(20 * 86_400));
    let saved = dir.path().join("renew.plan.yaml");
    let out = plan(&lab, "renew-expiring", &saved);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    let prober = ReadyzProber::start(&lab);
    let applied = certrotate(&["apply", saved.to_str().unwrap()], &lab);
    let (probes, failures) = prober.stop();
    assert_eq!(applied.status.code(), Some(0), "{}", text(&applied));
    assert_node_logs_have_one_line_per_step(&lab, &saved);
    assert!(probes >= 20, "the prober ran throughout ({probes} probes)");
    assert_eq!(failures, 0, "/readyz failed {failures} of {probes} times during a rolling renewal");
    // apply's own prober asks the kubeconfig's server, the public load balancer, which keeps
    // sending a share of new flows to a restarting master until its probes notice, so a
    // probe can land in a master's restart. The ideal prober above is the downtime check;
    // here the summary must be there and show no more than those moments.
    let stderr = String::from_utf8_lossy(&applied.stderr);
    let downtime: f64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix("API downtime"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|secs| secs.trim_end_matches('s').parse().ok())
        .unwrap_or_else(|| panic!("apply reports the API downtime it measured: {stderr}"));
    assert!(downtime <= 2.0, "at most the masters' own restarts, with these tests' instant start-up: {stderr}");

    assert_plan_has_no_changes(&lab, dir.path(), "renew-expiring");
    kubectl_nodes_ready(&lab);
    assert_no_secret(&lab, &[&out, &applied]);
    lab.down().unwrap();
}

#[test]
fn rotate_all_brings_a_new_ca_everywhere_and_rollback_takes_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let lab = up_expiring(dir.path(), Expiry::Default);
    let old_ca = apimodel_ca(&lab);
    let serving = |lab: &Lab| -> Vec<String> { nodes(lab).iter().map(|n| ssh(lab, n, "sudo sha256sum /etc/kubernetes/certs/kubeletserver.crt")).collect() };
    let serving_before = serving(&lab);
    let saved = dir.path().join("all.plan.yaml");
    let out = plan(&lab, "rotate-all", &saved);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let prober = ReadyzProber::start(&lab);
    let applied = certrotate(&["apply", saved.to_str().unwrap()], &lab);
    let (probes, failures) = prober.stop();
    assert_eq!(applied.status.code(), Some(0), "{}", text(&applied));
    // The plan promised an outage (masters reboot together); the prober must see it, which
    // also shows it can fail.
    assert!(failures > 0, "no /readyz failure in {probes} probes while every master rebooted");

    // A new CA in the API model, and on every node.
    let new_ca = apimodel_ca(&lab);
    assert_ne!(new_ca, old_ca, "rotate-all replaces the cluster CA");
    // As aks-engine rotate-certs issues them: RSA 4096 for the certificateProfile, the
    // front-proxy pair RSA 2048; the kubelet serving certificates untouched.
    let bits = |path: &str| ssh(&lab, &nodes(&lab)[0], &format!("sudo openssl x509 -in {path} -noout -text | grep -o 'Public-Key: ([0-9]* bit)'"));
    assert_eq!(bits("/etc/kubernetes/certs/apiserver.crt").trim(), "Public-Key: (4096 bit)");
    assert_eq!(bits("/etc/kubernetes/certs/proxy.crt").trim(), "Public-Key: (2048 bit)");
    assert_eq!(serving(&lab), serving_before, "rotate-all leaves the kubelet serving certificates alone");
    for n in nodes(&lab) {
        assert_eq!(ssh(&lab, &n, "cat /etc/kubernetes/certs/ca.crt"), new_ca, "ca.crt on {n}");
        assert!(ssh(&lab, &n, "sudo ls /etc/kubernetes/certs.bak").contains("ca.crt"), "backup on {n}");
    }
    // The API model is still one AKS Engine reads: validate finds its certificates consistent.
    let v = Command::new(certrotate_bin()).args(["validate", "--api-model", &lab.env()["LAB_API_MODEL"]]).output().unwrap();
    assert_eq!(v.status.code(), Some(0), "{}", text(&v));
    let backups: Vec<_> = std::fs::read_dir(model_dir(&lab).join("_rotate_certs_backup")).unwrap().flatten().collect();
    assert!(backups.iter().any(|b| b.path().join("apimodel.json").is_file()), "the API model was backed up");
    // The real kubectl with the new admin kubeconfig; etcd with the new client certificate.
    kubectl_nodes_ready(&lab);
    kubectl_kube_system_ready(&lab);
    let master = &nodes(&lab)[0];
    let health = ssh(
        &lab,
        master,
        "sudo ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379 --cacert=/etc/kubernetes/certs/ca.crt --cert=/etc/kubernetes/certs/etcdclient.crt --key=/etc/kubernetes/certs/etcdclient.key endpoint health --cluster 2>&1",
    );
    assert_eq!(health.matches("is healthy").count(), 3, "{health}");
    // /proxycerts as AKS Engine's script writes and reads it, so a master it provisions later
    // can load them.
    assert_proxycerts_as_aks_engine_leaves_them(&lab, master);
    assert_no_secret(&lab, &[&out, &applied]);

    // A Ctrl-C once the agents' restore has begun: the steps in flight finish and are
    // journaled, nothing new starts, and the run says how to finish.
    let mut stopped = Command::new(certrotate_bin())
        .args(["rollback", "--auto-approve"])
        .args(cluster_flags(&lab))
        .env("NO_COLOR", "1")
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(stopped.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push(line.clone());
        if line.contains("start  restoreCerts@k8s-agentpool1-") {
            send_signal_to_group(stopped.id(), libc::SIGINT);
            break;
        }
    }
    seen.extend(lines.map(|l| l.unwrap()));
    let stopped_out = stopped.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&stopped_out.stdout).to_string();
    let all = format!("{stdout}\n{}", seen.join("\n"));
    assert_eq!(stopped_out.status.code(), Some(1), "{all}");
    // The graph is shown before it is walked.
    assert!(stdout.contains("Rollback of plan") && stdout.contains("verifyBackup@") && stdout.contains("Rollback walks"), "the preview: {all}");
    let warned = seen.iter().position(|l| l.contains("SIGINT (Ctrl-C) received: no new step starts")).unwrap_or_else(|| panic!("acknowledged at once: {all}"));
    assert!(seen[warned..].iter().all(|l| !l.contains("start  ")), "no step starts after the signal: {all}");
    let flat = seen.join("").replace(['\n', '│', ' '], "");
    assert!(flat.contains("rollbackstoppedbySIGINT(Ctrl-C):"), "{all}");
    // Mid-way: the masters and every agent restore that started are journaled, the API model is not restored.
    let runs: Vec<_> = std::fs::read_dir(model_dir(&lab).join("_rotate_certs_output")).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(runs.len(), 1, "one applied plan: {runs:?}");
    let rollback_journal = runs[0].join("rollback.jsonl");
    let journaled: Vec<String> = std::fs::read_to_string(&rollback_journal)
        .unwrap_or_else(|e| panic!("{}: {e}", rollback_journal.display()))
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_str().unwrap().to_string())
        .collect();
    let masters: Vec<String> = nodes(&lab).into_iter().filter(|n| n.starts_with("k8s-master-")).collect();
    for m in &masters {
        assert!(journaled.contains(&format!("restoreCerts@{m}")) && journaled.contains(&format!("restartControlPlane@{m}")), "{m} restored before the stop: {journaled:?}");
    }
    let agents_started: Vec<String> =
        seen.iter().filter_map(|l| l.split("start  ").nth(1)).filter(|r| r.starts_with("restoreCerts@k8s-agentpool1-")).map(|r| r.split(' ').next().unwrap().to_string()).collect();
    assert!(!agents_started.is_empty());
    for a in &agents_started {
        assert!(journaled.contains(a), "{a} was in flight at the stop: it finished and is journaled: {journaled:?}");
    }
    assert!(!journaled.iter().any(|s| s == "restoreApiModel" || s.starts_with("kubeSystemReady@")), "the stop came before the end: {journaled:?}");
    assert_eq!(apimodel_ca(&lab), new_ca, "the API model is not restored yet");

    // Run again: it skips what the first run journaled, says so, and finishes.
    let rolled = certrotate(&["rollback", "--auto-approve"], &lab);
    assert_eq!(rolled.status.code(), Some(0), "{}", text(&rolled));
    let rolled_err = String::from_utf8_lossy(&rolled.stderr);
    assert!(String::from_utf8_lossy(&rolled.stdout).contains("An earlier run did"), "the preview says what is done: {}", text(&rolled));
    let is_gate = |id: &str| ["etcdHealthy@", "nodesReady@", "kubeSystemReady@", "controlPlanePodsReady@"].iter().any(|g| id.starts_with(g));
    for id in journaled.iter().filter(|id| !is_gate(id)) {
        assert!(rolled_err.contains(&format!("skip   {id} (already done (journal))")), "{id} is skipped: {rolled_err}");
        assert!(!rolled_err.contains(&format!("start  {id} (")), "{id} does not run again: {rolled_err}");
    }
    assert!(rolled_err.contains("start  restoreApiModel ("), "{rolled_err}");
    assert!(rolled_err.contains("done   kubeSystemReady@rollback"), "{rolled_err}");
    // Both journals are archived: a re-apply of the plan runs in full, a later rollback starts afresh.
    assert!(!rollback_journal.exists() && !runs[0].join("journal.jsonl").exists(), "journals archived");
    assert_eq!(apimodel_ca(&lab), old_ca, "the API model is back");
    assert_proxycerts_as_aks_engine_leaves_them(&lab, &nodes(&lab)[0]);
    for n in nodes(&lab) {
        assert_eq!(ssh(&lab, &n, "cat /etc/kubernetes/certs/ca.crt"), old_ca, "ca.crt on {n} is back");
    }
    kubectl_nodes_ready(&lab);
    lab.down().unwrap();
}

#[test]
fn an_expired_cluster_is_rotated_without_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let lab = up_expiring(dir.path(), Expiry::Expired);
    let saved = dir.path().join("expired.plan.yaml");
    let out = plan(&lab, "renew-expiring", &saved);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let applied = certrotate(&["apply", saved.to_str().unwrap()], &lab);
    assert_eq!(applied.status.code(), Some(0), "{}", text(&applied));
    assert_plan_has_no_changes(&lab, dir.path(), "renew-expiring");
    kubectl_nodes_ready(&lab);
    lab.down().unwrap();
}

#[test]
fn a_killed_apply_resumes_and_a_second_apply_meanwhile_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let lab = up_expiring(dir.path(), Expiry::In(20 * 86_400));
    let saved = dir.path().join("renew.plan.yaml");
    let out = plan(&lab, "renew-expiring", &saved);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    // A killed process cannot remove its temporary ssh directory: keep it in the test's own.
    let (mut first, mut lines) = spawn_apply(&lab, &saved, dir.path());
    read_until(&mut lines, "start  installCerts@");

    let second = certrotate(&["apply", saved.to_str().unwrap()], &lab);
    assert_eq!(second.status.code(), Some(1), "{}", text(&second));
    let flat = flat_stderr(&second);
    assert!(flat.contains("locked by another apply"), "{}", text(&second));

    unsafe { libc::kill(first.id() as i32, libc::SIGKILL) };
    first.wait().unwrap();
    drop(lines);

    let resumed = certrotate(&["apply", saved.to_str().unwrap()], &lab);
    assert_eq!(resumed.status.code(), Some(0), "{}", text(&resumed));
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(stderr.contains("took over the cluster lock"), "{stderr}");
    assert!(stderr.contains("already done (journal)"), "the rerun skips what the killed run finished: {stderr}");
    assert_plan_has_no_changes(&lab, dir.path(), "renew-expiring");
    kubectl_nodes_ready(&lab);
    lab.down().unwrap();
}

/// Starts `apply saved` with its temporary directory in `tmp`, returning the child and its
/// progress lines (stderr).
fn spawn_apply(lab: &Lab, saved: &Path, tmp: &Path) -> (std::process::Child, std::io::Lines<BufReader<std::process::ChildStderr>>) {
    let mut child = spawn_in_own_group(&["apply", saved.to_str().unwrap()], &cluster_flags(lab), tmp);
    let lines = BufReader::new(child.stderr.take().unwrap()).lines();
    (child, lines)
}

/// Reads progress lines until one contains `marker`; returns every line read.
fn read_until(lines: &mut std::io::Lines<BufReader<std::process::ChildStderr>>, marker: &str) -> Vec<String> {
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push(line.clone());
        if line.contains(marker) {
            return seen;
        }
    }
    panic!("no line with {marker:?}:\n{}", seen.join("\n"));
}

/// rotate-all, because stopping it after the masters' installs leaves the cluster mid-rotation:
/// each etcd already serves its new certificate but trusts only the old CA until it restarts,
/// so its members no longer agree and the resume must neither call the cluster changed behind
/// its back nor wait for a preflight health that only the rest of the plan brings back.
#[test]
fn a_stop_signal_finishes_the_steps_in_flight_a_second_exits_at_once_and_the_rerun_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let lab = up_expiring(dir.path(), Expiry::Default);
    let old_ca = apimodel_ca(&lab);
    let saved = dir.path().join("all.plan.yaml");
    let out = plan(&lab, "rotate-all", &saved);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();

    // One Ctrl-C while certificates are being installed: the steps in flight finish.
    let (mut child, mut lines) = spawn_apply(&lab, &saved, &tmp);
    let mut seen = read_until(&mut lines, "start  installCerts@");
    send_signal_to_group(child.id(), libc::SIGINT);
    seen.extend(lines.by_ref().map(|l| l.unwrap()));
    let status = child.wait().unwrap();
    let all = seen.join("\n");
    eprintln!("one SIGINT:\n{all}");
    assert_eq!(status.code(), Some(1), "{all}");
    assert!(all.contains("apply stopped by SIGINT (Ctrl-C)") && all.contains("resume with `"), "{all}");
    let warned = seen.iter().position(|l| l.contains("SIGINT (Ctrl-C) received: no new step starts")).unwrap_or_else(|| panic!("{all}"));
    let step_of = |line: &str, verb: &str| line.split_once(verb).map(|(_, rest)| rest.split_whitespace().next().unwrap_or("").trim_end_matches(':').to_string());
    assert!(seen[warned..].iter().all(|l| step_of(l, "start  ").is_none()), "a step started after the signal:\n{all}");
    let started: Vec<String> = seen.iter().filter_map(|l| step_of(l, "start  ")).collect();
    let journal_path = model_dir(&lab).join("_rotate_certs_output");
    let journal: String = files_under(&journal_path).into_iter().map(|(p, _)| p).filter(|p| p.ends_with("journal.jsonl")).map(|p| std::fs::read_to_string(p).unwrap()).collect();
    for step in &started {
        let finished = seen.iter().any(|l| step_of(l, "done   ").as_deref() == Some(step.as_str()));
        let cancelled = seen.iter().any(|l| step_of(l, "skip   ").as_deref() == Some(step.as_str()) && l.contains("gate cancelled"));
        assert!(finished || cancelled, "{step} was started and neither finished nor (as a gate) cancelled:\n{all}");
        assert_eq!(finished, journal.contains(&format!("\"{step}\"")), "{step}: journaled exactly when finished\n{journal}");
    }
    assert!(started.iter().any(|s| s.starts_with("installCerts@")), "{all}");
    let left = processes_left_mentioning(&tmp);
    assert!(left.is_empty(), "ssh left running: {left:?}");
    assert!(ssh_dirs_left(&tmp).is_empty(), "{:?}", ssh_dirs_left(&tmp));

    // Two: the second exits at once, closing the SSH connections all the same.
    let (mut child, mut lines) = spawn_apply(&lab, &saved, &tmp);
    let mut seen = read_until(&mut lines, "start  ");
    send_signal_to_group(child.id(), libc::SIGINT);
    seen.extend(read_until(&mut lines, "no new step starts"));
    let second = std::time::Instant::now();
    send_signal_to_group(child.id(), libc::SIGINT);
    seen.extend(lines.by_ref().map(|l| l.unwrap()));
    let status = child.wait().unwrap();
    let all = seen.join("\n");
    eprintln!("two SIGINTs:\n{all}");
    assert_eq!(status.code(), Some(128 + libc::SIGINT), "{all}");
    assert!(second.elapsed() < Duration::from_secs(10), "the second signal exits at once, took {:?}", second.elapsed());
    assert!(all.contains("a second stop signal") && all.contains("exiting now"), "{all}");
    let left = processes_left_mentioning(&tmp);
    assert!(left.is_empty(), "ssh left running: {left:?}");
    assert!(ssh_dirs_left(&tmp).is_empty(), "{:?}", ssh_dirs_left(&tmp));

    // The rerun takes over the lock the stopped runs left and finishes the rotation.
    let resumed = certrotate(&["apply", saved.to_str().unwrap()], &lab);
    assert_eq!(resumed.status.code(), Some(0), "{}", text(&resumed));
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(stderr.contains("already done (journal)"), "{}", text(&resumed));
    assert!(stderr.contains("skip   etcdHealthy@preflight (passed before the changes began"), "{}", text(&resumed));
    let new_ca = apimodel_ca(&lab);
    assert_ne!(new_ca, old_ca, "rotate-all replaced the cluster CA");
    for n in nodes(&lab) {
        assert_eq!(ssh(&lab, &n, "cat /etc/kubernetes/certs/ca.crt"), new_ca, "ca.crt on {n}");
    }
    assert_plan_has_no_changes(&lab, dir.path(), "renew-expiring");
    kubectl_nodes_ready(&lab);
    lab.down().unwrap();
}

#[test]
fn a_stale_plan_is_refused_naming_what_changed_and_apply_without_a_file_plans_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let lab = up_expiring(dir.path(), Expiry::In(20 * 86_400));
    let saved = dir.path().join("renew.plan.yaml");
    let out = plan(&lab, "renew-expiring", &saved);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let agent = nodes(&lab)[3].clone();
    ssh(&lab, &agent, "sudo cp /etc/kubernetes/certs/kubeletserver.crt /etc/kubernetes/certs/client.crt");

    let refused = certrotate(&["apply", saved.to_str().unwrap()], &lab);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    let flat = flat_stderr(&refused);
    assert!(flat.contains("the plan is stale"), "{}", text(&refused));
    assert!(flat.contains(&format!("{agent} /etc/kubernetes/certs/client.crt: sha256:")), "names the node, the file and both fingerprints: {flat}");
    // Nothing was changed: no step ran, the lock is gone, the node still has what was there.
    let runs = model_dir(&lab).join("_rotate_certs_output");
    for run in std::fs::read_dir(&runs).unwrap().flatten() {
        let journal = std::fs::read_to_string(run.path().join("journal.jsonl")).unwrap_or_default();
        assert!(journal.trim().is_empty(), "a step ran although the plan was stale: {journal}");
    }
    assert!(!ssh(&lab, &nodes(&lab)[0], "ls /etc/kubernetes/").contains("certrotate.lock"), "the lock is released");

    // Without a file, apply plans against what is there now and, approved, applies it.
    let fresh = certrotate(&["apply", "--profile", "renew-expiring", "--auto-approve"], &lab);
    assert_eq!(fresh.status.code(), Some(0), "{}", text(&fresh));
    assert!(String::from_utf8_lossy(&fresh.stdout).contains("Plan: "), "apply shows the plan it makes: {}", text(&fresh));
    assert_plan_has_no_changes(&lab, dir.path(), "renew-expiring");
    kubectl_nodes_ready(&lab);
    lab.down().unwrap();
}

#[test]
fn a_failed_gate_stops_with_what_it_saw_and_the_rerun_resumes_after_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let lab = up_expiring(dir.path(), Expiry::In(20 * 86_400));
    // renew-expiring with short gate timeouts, so the failure comes quickly.
    let profile = renew_expiring_with_fast_gates(dir.path());
    let saved = dir.path().join("renew.plan.yaml");
    let out = plan(&lab, profile.to_str().unwrap(), &saved);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    // One etcd member down: the preflight etcd gate must stop the run before any change.
    let stopped = nodes(&lab)[2].clone();
    lab.fault(lab::control::Fault::StopEtcd { node: stopped.clone() }).unwrap();
    let failed = certrotate(&["apply", saved.to_str().unwrap()], &lab);
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
    let flat = flat_stderr(&failed);
    // etcd down on a master also takes its apiserver and node status down: whichever preflight
    // gate times out first stops the run.
    assert!(flat.contains("@preflight failed"), "{flat}");
    assert!(flat.contains("observed:"), "says what it saw: {flat}");
    assert!(flat.contains(&format!("apply {}", saved.display())), "prints the command that resumes: {flat}");
    assert!(flat.contains("rollback"), "and the one that rolls back: {flat}");
    let installed = ssh(&lab, &nodes(&lab)[0], "sudo cat /var/log/azure/rotate-certs.log 2>/dev/null || true");
    assert!(!installed.contains("installed"), "nothing was installed behind a failed preflight gate: {installed}");

    lab.fault(lab::control::Fault::StartEtcd { node: stopped }).unwrap();
    let resumed = certrotate(&["apply", saved.to_str().unwrap()], &lab);
    assert_eq!(resumed.status.code(), Some(0), "{}", text(&resumed));
    assert!(String::from_utf8_lossy(&resumed.stderr).contains("already done (journal)"), "{}", text(&resumed));
    assert_plan_has_no_changes(&lab, dir.path(), "renew-expiring");
    lab.down().unwrap();
}
