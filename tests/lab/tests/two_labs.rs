//! Two labs run side by side in different directories (own bridge, own /24), and a lab made
//! with `--expired` comes up with its leaf certificates already expired: SSH still works (it
//! does not use the cluster PKI) while etcd, whose peers and clients check certificates,
//! refuses. Needs root.

use lab::spec::{Expiry, LabSpec};
use lab::{Lab, UpOptions};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

fn options() -> UpOptions {
    assert_eq!(unsafe { libc::geteuid() }, 0, "the lab tests need root (namespaces, bridges, sshd)");
    UpOptions {
        lab_binary: Some(env!("CARGO_BIN_EXE_lab").into()),
        owner_pid: Some(std::process::id()),
        timeout: Some(Duration::from_secs(120)),
    }
}

fn ssh_hostname(lab: &Lab, node: &str) -> Output {
    let env = lab.env();
    Command::new("ssh")
        .arg("-F")
        .arg(&env["LAB_SSH_CONFIG"])
        .args(["-J", &env["LAB_SSH_HOST"], node, "hostname"])
        .output()
        .expect("running ssh")
}

fn etcd_health(lab: &Lab) -> Output {
    let first = lab.layout.first_master();
    let cert = |name: &str| lab.layout.host_path(first, &format!("/etc/kubernetes/certs/{name}"));
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints=https://{}:2379", first.ip))
        .arg(format!("--cacert={}", cert("ca.crt").display()))
        .arg(format!("--cert={}", cert("etcdclient.crt").display()))
        .arg(format!("--key={}", cert("etcdclient.key").display()))
        .args(["--dial-timeout=2s", "--command-timeout=3s", "endpoint", "health"])
        .output()
        .expect("running etcdctl")
}

fn not_after_is_past(cert_path: &Path) -> bool {
    // openssl x509 -checkend 0 exits 1 when the certificate has expired.
    let status = Command::new("openssl").args(["x509", "-noout", "-checkend", "0", "-in"]).arg(cert_path).status().unwrap();
    !status.success()
}

#[test]
fn an_expired_lab_and_a_healthy_lab_side_by_side() {
    let temp = tempfile::tempdir().expect("temp dir");
    let (expired, fresh) = std::thread::scope(|s| {
        let a = s.spawn(|| {
            Lab::up(&temp.path().join("expired"), LabSpec { masters: 1, agents: 1, expiry: Expiry::Expired, ..Default::default() }.fast_restarts(), options())
        });
        let b = s.spawn(|| Lab::up(&temp.path().join("fresh"), LabSpec { masters: 1, agents: 0, ..Default::default() }.fast_restarts(), options()));
        (a.join().unwrap().expect("expired lab up"), b.join().unwrap().expect("fresh lab up"))
    });
    assert_ne!(expired.layout.subnet, fresh.layout.subnet, "each lab has its own network");
    assert_ne!(expired.layout.bridge, fresh.layout.bridge);

    for lab in [&expired, &fresh] {
        for node in &lab.layout.nodes {
            let out = ssh_hostname(lab, &node.name);
            assert!(out.status.success(), "ssh {}: {}", node.name, String::from_utf8_lossy(&out.stderr));
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), node.name);
        }
    }

    let master = expired.layout.first_master();
    let apiserver_crt = expired.layout.host_path(master, "/etc/kubernetes/certs/apiserver.crt");
    assert!(not_after_is_past(&apiserver_crt), "--expired makes expired leaves");
    assert!(!not_after_is_past(&expired.layout.host_path(master, "/etc/kubernetes/certs/ca.crt")), "the CA stays valid");
    let out = etcd_health(&expired);
    assert!(!out.status.success(), "etcd with expired certs must refuse");
    assert!(etcd_health(&fresh).status.success(), "the healthy lab's etcd answers");

    let status = expired.status().unwrap();
    assert!(status.healthy, "an expired lab is 'up' as far as its hosts go: {:?}", status.problems);
    assert_eq!(status.nodes[0].etcd_healthy, Some(false));

    let (a, b) = (expired.layout.clone(), fresh.layout.clone());
    expired.down().expect("down expired");
    assert!(lab::cleanup::leftovers(&a).is_empty());
    assert!(fresh.status().unwrap().healthy, "taking one lab down leaves the other alone");
    fresh.down().expect("down fresh");
    assert!(lab::cleanup::leftovers(&b).is_empty());
}
