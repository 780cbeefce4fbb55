//! Issue 12: the load balancers in front of the masters behave as AKS Engine's Azure load
//! balancers do. Through the real HAProxy: new flows are spread over the masters (public one
//! by the FQDN, internal one by its address, both covered by the apiserver certificate);
//! agents' kubelets use the internal one; a stopped master keeps getting new flows, which
//! fail, until two probes 5 s apart have failed, and gets none after; a restarted master is
//! back after one good TCP probe, before its apiserver is ready. Also `systemctl restart
//! etcd` returns once etcd serves, as with AKS Engine's Type=notify unit. Needs root.

use lab::control::Fault;
use lab::lb::BackendState;
use lab::spec::{LabSpec, Layout, NodeInfo};
use lab::{Lab, UpOptions};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Long enough that a restarted master is surely back in the balancers (one probe, at most
/// 5 s after it listens) before it is ready.
const STARTUP: Duration = Duration::from_secs(8);

fn up(dir: &Path) -> Lab {
    assert_eq!(unsafe { libc::geteuid() }, 0, "the lab tests need root");
    let spec = LabSpec { masters: 3, agents: 1, ..LabSpec::default() }.fast_restarts();
    let spec = LabSpec { apiserver_startup: STARTUP, ..spec };
    let options = UpOptions {
        lab_binary: Some(env!("CARGO_BIN_EXE_lab").into()),
        owner_pid: Some(std::process::id()),
        timeout: Some(Duration::from_secs(120)),
    };
    Lab::up(dir, spec, options).expect("lab up")
}

async fn states(layout: &Layout) -> Vec<BackendState> {
    lab::lb::backend_states(layout).await.expect("HAProxy's runtime API answers")
}

fn find<'a>(states: &'a [BackendState], balancer: &str, master: &str) -> &'a BackendState {
    states.iter().find(|s| s.balancer == balancer && s.master == master).unwrap_or_else(|| panic!("no {balancer}/{master} in {states:#?}"))
}

/// Connections each master has been sent by `balancer`.
fn sessions(states: &[BackendState], balancer: &str, layout: &Layout) -> Vec<u64> {
    layout.masters().map(|m| find(states, balancer, &m.name).sessions_total).collect()
}

/// An HTTPS client that opens a new TCP and TLS connection per request, as every kubectl
/// run does, trusting the cluster CA and presenting a master's client certificate.
fn client(layout: &Layout) -> reqwest::Client {
    let master = layout.first_master();
    let read = |name: &str| std::fs::read(layout.host_path(master, &format!("/etc/kubernetes/certs/{name}"))).unwrap();
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&read("ca.crt")).unwrap())
        .identity(reqwest::Identity::from_pem(&[read("client.crt"), read("client.key")].concat()).unwrap())
        .resolve(&layout.apiserver_fqdn(), std::net::SocketAddr::from((layout.public_lb_ip(), 443)))
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(3))
        .no_proxy()
        .build()
        .unwrap()
}

/// `count` requests on new connections to `url`; how many failed.
async fn requests(client: &reqwest::Client, url: &str, count: usize) -> usize {
    let mut failed = 0;
    for _ in 0..count {
        match client.get(url).send().await {
            Ok(r) if r.status().is_success() => {}
            _ => failed += 1,
        }
    }
    failed
}

async fn readyz_at(client: &reqwest::Client, master: &NodeInfo) -> Option<u16> {
    client.get(format!("https://{}/readyz", master.ip)).send().await.ok().map(|r| r.status().as_u16())
}

async fn wait_for<T, F: std::future::Future<Output = Option<T>>>(what: &str, timeout: Duration, mut check: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn etcd_healthy(layout: &Layout, master: &NodeInfo) -> bool {
    let cert = |name: &str| layout.host_path(master, &format!("/etc/kubernetes/certs/{name}"));
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints=https://{}:2379", master.ip))
        .arg(format!("--cacert={}", cert("ca.crt").display()))
        .arg(format!("--cert={}", cert("etcdclient.crt").display()))
        .arg(format!("--key={}", cert("etcdclient.key").display()))
        .args(["--dial-timeout=1s", "--command-timeout=2s", "endpoint", "health"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn haproxy_running(layout: &Layout) -> bool {
    let config = lab::lb::config_path(layout);
    Command::new("pgrep").args(["-f", &format!("haproxy -db -f {}", config.display())]).status().map(|s| s.success()).unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_balancers_spread_flows_and_follow_their_probes() {
    let temp = tempfile::tempdir().expect("temp dir");
    let lab = up(&temp.path().join("lab"));
    let layout = lab.layout.clone();
    let public = format!("k8s-master-lb-{}", layout.name_suffix);
    let internal = format!("k8s-master-internal-lb-{}", layout.name_suffix);
    let masters: Vec<NodeInfo> = layout.masters().cloned().collect();

    // Both balancers, every master up in each, and `lab status` shows them.
    let status = lab.status().unwrap();
    assert_eq!(status.load_balancers.len(), 6, "{:#?}", status.load_balancers);
    assert!(status.load_balancers.iter().all(|b| b.up()), "{:#?}", status.load_balancers);
    let out = Command::new(env!("CARGO_BIN_EXE_lab")).args(["status", "--dir"]).arg(&layout.dir).output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains(&format!("load balancer {internal}")) && shown.matches(" UP ").count() >= 6, "{shown}");

    // The admin kubeconfig names the public one; the agent's kubelet the internal one, and it
    // really talks through it.
    let kubeconfig = std::fs::read_to_string(&lab.env()["LAB_KUBECONFIG"]).unwrap();
    assert!(kubeconfig.contains(&format!("https://{}:443", layout.public_lb_ip())), "{kubeconfig}");
    let agent = layout.nodes.iter().find(|n| n.role == lab::spec::Role::Agent).unwrap();
    let kubelet = std::fs::read_to_string(layout.host_path(agent, "/var/lib/kubelet/kubeconfig")).unwrap();
    assert!(kubelet.contains(&format!("server: https://{}:443", layout.ilb_ip())), "{kubelet}");
    wait_for("the agent's kubelet connected through the internal balancer", Duration::from_secs(20), || async {
        (sessions(&states(&layout).await, &internal, &layout).iter().sum::<u64>() > 0).then_some(())
    })
    .await;

    // New flows spread over the masters, through the FQDN (public) and the internal address;
    // the apiserver certificate covers both names.
    let http = client(&layout);
    let public_url = format!("https://{}/readyz", layout.apiserver_fqdn());
    let internal_url = format!("https://{}/readyz", layout.ilb_ip());
    for (balancer, url) in [(&public, &public_url), (&internal, &internal_url)] {
        let before = sessions(&states(&layout).await, balancer, &layout);
        assert_eq!(requests(&http, url, 30).await, 0, "every request through {balancer} succeeds");
        let after = sessions(&states(&layout).await, balancer, &layout);
        let got: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        assert!(got.iter().sum::<u64>() >= 30, "{balancer}: {got:?}");
        assert!(got.iter().filter(|n| **n > 0).count() >= 2, "{balancer} spreads new flows over the masters: {got:?}");
    }

    // A stopped master: new flows still land on it, and fail, until two probes have failed.
    let down = &masters[1];
    let stopped = Instant::now();
    lab.fault(Fault::StopNode { node: down.name.clone() }).unwrap();
    let mut failed_meanwhile = 0;
    let marked = loop {
        let now = states(&layout).await;
        if !find(&now, &public, &down.name).up() && !find(&now, &internal, &down.name).up() {
            break stopped.elapsed();
        }
        assert!(stopped.elapsed() < Duration::from_secs(20), "{} still up after 20 s: {now:#?}", down.name);
        failed_meanwhile += requests(&http, &public_url, 3).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(marked >= Duration::from_secs(4), "marked down after {marked:?}: sooner than two probes 5 s apart");
    assert!(marked <= Duration::from_secs(15), "marked down only after {marked:?}");
    assert!(failed_meanwhile > 0, "flows sent to the stopped master before it was marked down fail");
    let before = sessions(&states(&layout).await, &public, &layout);
    assert_eq!(requests(&http, &public_url, 30).await, 0, "once down, no flow goes to it");
    let after = sessions(&states(&layout).await, &public, &layout);
    assert_eq!(after[1], before[1], "no new flow to the master marked down");

    // Started again: back after one good TCP probe, while its apiserver is not ready yet.
    let started = Instant::now();
    lab.fault(Fault::StartNode { node: down.name.clone() }).unwrap();
    let back = wait_for("the restarted master back in both balancers", Duration::from_secs(10), || async {
        let now = states(&layout).await;
        (find(&now, &public, &down.name).up() && find(&now, &internal, &down.name).up()).then(|| started.elapsed())
    })
    .await;
    assert!(back <= Duration::from_secs(7), "back only after {back:?}; one probe every 5 s brings it back");
    let readyz = readyz_at(&http, down).await;
    assert_eq!(readyz, Some(500), "the TCP probe takes it back before its apiserver is ready (after {back:?})");
    let ready = wait_for("its /readyz ok after the start-up time", Duration::from_secs(20), || async {
        (readyz_at(&http, down).await == Some(200)).then(|| started.elapsed())
    })
    .await;
    assert!(ready >= STARTUP, "ready after {ready:?}, before the {STARTUP:?} start-up");

    // `systemctl restart etcd` returns once the member serves again (Type=notify).
    let master = &masters[0];
    let env = lab.env();
    let out = Command::new("ssh")
        .arg("-F")
        .arg(&env["LAB_SSH_CONFIG"])
        .args(["-J", &format!("azureuser@{}", env["LAB_SSH_HOST"]), &format!("azureuser@{}", master.name)])
        .arg("sudo systemctl restart etcd")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(etcd_healthy(&layout, master), "etcd serves as soon as systemctl restart returned");

    // Down: HAProxy and its namespace go with the lab.
    lab.wait_healthy(Duration::from_secs(60)).expect("healthy again");
    assert!(haproxy_running(&layout));
    lab.down().expect("lab down");
    assert!(!haproxy_running(&layout), "HAProxy is gone with the lab");
    let left = lab::cleanup::leftovers(&layout);
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(!Command::new("ip").args(["link", "show", "dev", &layout.lb_veth()]).output().unwrap().status.success());
}
