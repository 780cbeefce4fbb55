//! Issue 3's "Done when" for the infrastructure: a 3 master + 2 agent lab comes up; every node
//! is reachable by name through the jumpbox with real `ssh -J` and strict host key checking;
//! `etcdctl endpoint health` passes on every member with the cluster's certs; systemctl and
//! reboot inside a node act on the supervisor; faults bite and heal; `lab down` leaves no
//! process, namespace, veth or bridge. Needs root (CI runs as root).
//!
//! One lab per test binary (bring-up is the slow part); the `Lab` handle tears it down on
//! drop, even on panic, and the supervisor also tears down when this process exits.

use lab::control::{Fault, Power};
use lab::spec::{LabSpec, Role};
use lab::{Lab, UpOptions};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn up(dir: &Path, spec: LabSpec) -> Lab {
    assert_eq!(unsafe { libc::geteuid() }, 0, "the lab tests need root (namespaces, bridges, sshd)");
    let options = UpOptions {
        lab_binary: Some(env!("CARGO_BIN_EXE_lab").into()),
        owner_pid: Some(std::process::id()),
        timeout: Some(Duration::from_secs(120)),
    };
    // Short restarts: these tests need speed, not an apiserver's real start-up time.
    Lab::up(dir, spec.fast_restarts(), options).expect("lab up")
}

/// Real ssh through the jumpbox to `node` by name, with the lab's config (key, known_hosts,
/// StrictHostKeyChecking=yes; -F applies to the jump hop too).
fn ssh(lab: &Lab, node: &str, command: &str) -> Output {
    let env = lab.env();
    Command::new("ssh")
        .arg("-F")
        .arg(&env["LAB_SSH_CONFIG"])
        .arg("-o")
        .arg("StrictHostKeyChecking=yes")
        .arg("-J")
        .arg(format!("azureuser@{}", env["LAB_SSH_HOST"]))
        .arg(format!("azureuser@{node}"))
        .arg(command)
        .output()
        .expect("running ssh")
}

fn ssh_with_input(lab: &Lab, node: &str, command: &str, input: &str) -> Output {
    use std::io::Write;
    let env = lab.env();
    let mut child = Command::new("ssh")
        .arg("-F")
        .arg(&env["LAB_SSH_CONFIG"])
        .args(["-J", &env["LAB_SSH_HOST"], node, command])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running ssh");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// Node names the apiserver reports Ready, asked with the real kubectl and the admin kubeconfig.
fn ready_nodes(lab: &Lab) -> Vec<String> {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&lab.env()["LAB_KUBECONFIG"])
        .args(["get", "nodes", "-o", "json", "--request-timeout=5s"])
        .output()
        .expect("running kubectl");
    if !out.status.success() {
        return Vec::new();
    }
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut ready: Vec<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["status"]["conditions"].as_array().is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True")))
        .map(|n| n["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    ready.sort_by_key(|name| lab.layout.nodes.iter().position(|n| &n.name == name));
    ready
}

fn text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

fn etcd_health(lab: &Lab, endpoint_ip: &str) -> Output {
    let first = lab.layout.first_master();
    let cert = |name: &str| lab.layout.host_path(first, &format!("/etc/kubernetes/certs/{name}"));
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints=https://{endpoint_ip}:2379"))
        .arg(format!("--cacert={}", cert("ca.crt").display()))
        .arg(format!("--cert={}", cert("etcdclient.crt").display()))
        .arg(format!("--key={}", cert("etcdclient.key").display()))
        .args(["--dial-timeout=2s", "endpoint", "health"])
        .output()
        .expect("running etcdctl")
}

fn link_exists(name: &str) -> bool {
    Command::new("ip").args(["link", "show", "dev", name]).output().map(|o| o.status.success()).unwrap_or(false)
}

fn arm_restart_takes_a_master_down_and_back(lab: &Lab, master: &str) {
    use certrotate::cloud::azure::{AzureCompute, AzureInputs, AzureSettings, PowerState};
    let env = lab.env();
    lab.fault(Fault::RebootDelay { node: Some(master.to_string()), millis: 2000 }).unwrap();
    let mut throttle = lab::arm::FaultRule::new("*/restart", 429, Some(1));
    throttle.method = Some("POST".into());
    lab.fault(Fault::ArmError { rule: throttle }).unwrap();
    let model = certrotate::model::apimodel::ApiModel::load(Path::new(&env["LAB_API_MODEL"])).expect("lab apimodel loads");
    let inputs = AzureInputs {
        ca_bundle: Some(env["LAB_ARM_CA_BUNDLE"].clone().into()),
        tenant_id: Some(env["LAB_TENANT_ID"].clone()),
        subscription_id: Some(env["LAB_SUBSCRIPTION_ID"].clone()),
        resource_group: Some(env["LAB_RESOURCE_GROUP"].clone()),
        ..Default::default()
    };
    let settings = AzureSettings::from_api_model(&model, inputs).expect("Azure settings from the lab's apimodel");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let compute = AzureCompute::connect(settings).await.expect("connect to the ARM stand-in");
        assert_eq!(compute.power_state_vm(master).await.unwrap(), PowerState::Running);
        let restart = compute.restart_vm(master);
        let watch = async {
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                let status = tokio::task::block_in_place(|| lab.status()).unwrap();
                if status.nodes.iter().any(|n| n.name == master && n.power == Power::Rebooting) {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            false
        };
        let (restarted, went_down) = tokio::join!(restart, watch);
        restarted.expect("ARM restart completes");
        assert!(went_down, "the restart took {master} down");
        assert_eq!(compute.power_state_vm(master).await.unwrap(), PowerState::Running);
    });
    lab.wait_healthy(Duration::from_secs(60)).expect("healthy after the ARM restart");
    assert!(ssh(lab, master, "true").status.success(), "{master} answers ssh after the restart");
    let calls = lab.arm_calls().unwrap();
    assert!(calls.iter().any(|c| c.injected && c.status == 429), "the injected 429 was served");
    assert!(calls.iter().any(|c| c.method == "POST" && c.path.ends_with("/restart") && !c.injected && c.status < 300));
    lab.fault(Fault::ClearArmErrors).unwrap();
}

#[test]
fn three_masters_two_agents() {
    let temp = tempfile::tempdir().expect("temp dir");
    let lab = up(&temp.path().join("lab"), LabSpec { masters: 3, agents: 2, ..Default::default() });
    let env = lab.env();
    for key in [
        "LAB_API_MODEL", "LAB_SSH_HOST", "LAB_SSH_KEY", "LAB_KNOWN_HOSTS", "LAB_LOCATION", "LAB_SUBSCRIPTION_ID",
        "LAB_RESOURCE_GROUP", "LAB_TENANT_ID", "LAB_CLIENT_ID", "LAB_CLIENT_SECRET", "LAB_AZURE_ENV",
        "LAB_ARM_ENDPOINT", "LAB_ARM_CA_BUNDLE", "LAB_KUBECONFIG", "LAB_APISERVER", "LAB_APISERVER_NAME",
    ] {
        assert!(env.get(key).is_some_and(|v| !v.is_empty()), "lab.env lacks {key}");
    }
    let apimodel: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&env["LAB_API_MODEL"]).unwrap()).unwrap();
    assert_eq!(apimodel["properties"]["masterProfile"]["count"], 3);
    assert_eq!(apimodel["properties"]["certificateProfile"]["etcdPeerCertificates"].as_array().unwrap().len(), 3);

    // SSH through the jumpbox to every node by name, sudo works, files have AKS Engine's modes.
    for node in &lab.layout.nodes {
        let out = ssh(&lab, &node.name, "hostname; sudo -n stat -c '%U:%G %a' /etc/kubernetes/certs/client.key");
        assert!(out.status.success(), "ssh to {}: {}", node.name, text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut lines = stdout.lines();
        assert_eq!(lines.next(), Some(node.name.as_str()), "{}", text(&out));
        assert_eq!(lines.next(), Some("root:root 600"), "{}", text(&out));
    }
    let master1 = &lab.layout.nodes[1];
    let out = ssh(&lab, &master1.name, &format!("sudo -n stat -c '%U:%G %a' /etc/kubernetes/certs/etcdpeer1.key"));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "etcd:etcd 600", "{}", text(&out));

    // etcd: every member healthy with the cluster's certs.
    for master in lab.layout.masters() {
        let out = etcd_health(&lab, &master.ip.to_string());
        assert!(out.status.success(), "etcd on {}: {}", master.name, text(&out));
    }

    // The real kubectl with the admin kubeconfig lists every node Ready.
    let all: Vec<String> = lab.layout.nodes.iter().map(|n| n.name.clone()).collect();
    wait_for("every node Ready in kubectl", Duration::from_secs(60), || ready_nodes(&lab) == all);

    // A foreign ca.crt on one agent makes it NotReady; the real one heals it.
    let agent0 = lab.layout.nodes.iter().find(|n| n.role == Role::Agent).unwrap().name.clone();
    let now = time::OffsetDateTime::now_utc();
    let foreign = certrotate::pki::issue::issue_ca(&certrotate::pki::CertTemplate {
        common_name: "ca".into(),
        organization: None,
        dns_sans: vec![],
        ip_sans: vec![],
        is_ca: true,
        extended_usages: vec![],
        key: certrotate::pki::KeySpec::Rsa2048,
        not_before: now - time::Duration::hours(1),
        not_after: now + time::Duration::days(1),
    })
    .unwrap();
    let out = ssh_with_input(
        &lab,
        &agent0,
        "sudo cp -p /etc/kubernetes/certs/ca.crt /var/tmp/ca.crt.orig && sudo tee /etc/kubernetes/certs/ca.crt >/dev/null && sudo systemctl restart kubelet",
        &foreign.cert_pem,
    );
    assert!(out.status.success(), "{}", text(&out));
    wait_for("the agent with a foreign CA to go NotReady", Duration::from_secs(90), || !ready_nodes(&lab).contains(&agent0));
    assert!(ready_nodes(&lab).len() == all.len() - 1, "only that agent is NotReady");
    let out = ssh(&lab, &agent0, "sudo cp -p /var/tmp/ca.crt.orig /etc/kubernetes/certs/ca.crt && sudo systemctl restart kubelet");
    assert!(out.status.success(), "{}", text(&out));
    wait_for("the agent Ready again", Duration::from_secs(60), || ready_nodes(&lab).contains(&agent0));

    // systemctl inside a node acts on the supervisor.
    let master2 = lab.layout.nodes[2].clone();
    let out = ssh(&lab, &master2.name, "sudo systemctl stop etcd; systemctl is-active etcd; echo rc=$?");
    assert!(String::from_utf8_lossy(&out.stdout).contains("inactive\nrc=3"), "{}", text(&out));
    assert!(!etcd_health(&lab, &master2.ip.to_string()).status.success(), "stopped etcd must not answer");
    let out = ssh(&lab, &master2.name, "sudo systemctl start etcd && systemctl is-active etcd");
    assert!(out.status.success(), "{}", text(&out));
    wait_for("etcd back on master 2", Duration::from_secs(20), || etcd_health(&lab, &master2.ip.to_string()).status.success());

    // A restart delay keeps the unit down that long, with systemctl waiting, as a real etcd
    // takes seconds to rejoin; etcd answers again once it returns.
    lab.fault(Fault::RestartDelay { node: Some(master2.name.clone()), millis: 3000 }).unwrap();
    let started = std::time::Instant::now();
    let out = ssh(&lab, &master2.name, "sudo systemctl restart etcd && systemctl is-active etcd");
    assert!(out.status.success(), "{}", text(&out));
    assert!(started.elapsed() >= Duration::from_secs(3), "restart took only {:?}", started.elapsed());
    lab.fault(Fault::RestartDelay { node: None, millis: 0 }).unwrap();
    wait_for("etcd back on master 2 after a slow restart", Duration::from_secs(20), || etcd_health(&lab, &master2.ip.to_string()).status.success());

    // reboot from inside: services and sshd go down, then come back reading certs from disk.
    // The node reads Rebooting from the moment shutdown begins, while its units still stop in
    // turn (kube-apiserver's graceful stop alone takes seconds), so sshd may answer for a while
    // yet: wait for ssh to fail rather than expect it at once.
    lab.fault(Fault::RebootDelay { node: Some(master2.name.clone()), millis: 5000 }).unwrap();
    let _ = ssh(&lab, &master2.name, "sudo reboot");
    wait_for("master 2 rebooting", Duration::from_secs(10), || {
        lab.status().unwrap().nodes.iter().any(|n| n.name == master2.name && n.power == Power::Rebooting)
    });
    wait_for("ssh to fail while master 2 reboots", Duration::from_secs(30), || !ssh(&lab, &master2.name, "true").status.success());
    lab.wait_healthy(Duration::from_secs(60)).expect("healthy after reboot");
    assert!(ssh(&lab, &master2.name, "true").status.success());

    // An ARM restart through certrotate's real Azure client (token, VM restart, long-running
    // operation) takes a master down and brings it back; an injected 429 is retried.
    arm_restart_takes_a_master_down_and_back(&lab, &lab.layout.nodes[1].name);

    // A cut network makes the node unreachable; restoring heals it.
    let agent = lab.layout.nodes.iter().find(|n| n.role == Role::Agent).unwrap().clone();
    lab.fault(Fault::CutNetwork { node: agent.name.clone() }).unwrap();
    let started = Instant::now();
    let mut cut = Command::new("timeout");
    cut.args(["5", "ssh", "-F"]).arg(&env["LAB_SSH_CONFIG"]).args(["-J", &env["LAB_SSH_HOST"], &agent.name, "true"]);
    assert!(!cut.status().unwrap().success(), "a cut-off node must not answer");
    assert!(started.elapsed() < Duration::from_secs(8));
    lab.fault(Fault::RestoreNetwork { node: agent.name.clone() }).unwrap();
    assert!(ssh(&lab, &agent.name, "true").status.success(), "restored node answers");

    // Read-only /etc/kubernetes.
    lab.fault(Fault::ReadOnlyKubernetes { node: agent.name.clone() }).unwrap();
    let out = ssh(&lab, &agent.name, "sudo touch /etc/kubernetes/certs/probe");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Read-only file system"), "{}", text(&out));
    lab.fault(Fault::WritableKubernetes { node: agent.name.clone() }).unwrap();
    assert!(ssh(&lab, &agent.name, "sudo touch /etc/kubernetes/certs/probe && sudo rm /etc/kubernetes/certs/probe").status.success());

    // A replaced host key trips strict host key checking.
    lab.fault(Fault::ReplaceHostKey { node: agent.name.clone() }).unwrap();
    let out = ssh(&lab, &agent.name, "true");
    assert!(String::from_utf8_lossy(&out.stderr).contains("REMOTE HOST IDENTIFICATION HAS CHANGED"), "{}", text(&out));

    // Connections are countable per node from sshd's log.
    // (the jumpbox carried every hop; an agent saw only its own logins)
    let jumpbox = lab.ssh_logins(&lab.layout.nodes[0].name).unwrap();
    assert!(jumpbox >= lab.layout.nodes.len(), "jumpbox logins: {jumpbox}");
    let other_agent = lab.layout.nodes.iter().filter(|n| n.role == Role::Agent).nth(1).unwrap();
    assert_eq!(lab.ssh_logins(&other_agent.name).unwrap(), 1, "one ssh to the second agent, one login");

    // down leaves nothing behind.
    let layout = lab.layout.clone();
    let holders: Vec<lab::supervisor::HolderRecord> =
        serde_json::from_str(&std::fs::read_to_string(lab::supervisor::holders_file(&layout.dir)).unwrap()).unwrap();
    lab.down().expect("down");
    assert!(!link_exists(&layout.bridge), "bridge {} left behind", layout.bridge);
    for node in &layout.nodes {
        assert!(!link_exists(&node.veth), "veth {} left behind", node.veth);
    }
    for holder in &holders {
        assert!(lab::nsexec::pids_in_netns(holder.net_inode).is_empty(), "processes of {} left behind", holder.node);
    }
    assert!(lab::cleanup::leftovers(&layout).is_empty());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(layout.dir.to_str().unwrap()), "a mount of the lab leaked into the host");
}
