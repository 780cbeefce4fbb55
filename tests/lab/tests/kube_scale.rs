//! A measurement, not a timed test (run with `--ignored --nocapture`): three apiserver
//! stand-ins on one etcd and 3 master + 50 agent kubelets in this process. Prints how long
//! until every node is Ready and every kube-proxy pod is Ready, and the process's memory.

mod kube_support;

use kube_support::*;
use lab::kube::kubelet::NodeRole;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// User + system CPU time of this process so far.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0) + fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run explicitly"]
async fn three_masters_and_fifty_agents() {
    const AGENTS: usize = 50;
    let mut cluster = Cluster::start().await;
    let mut apiservers = vec![cluster.apiserver.take().unwrap()];
    for i in 1..3 {
        let mut config = apiserver_config(&cluster.pki, &cluster.etcd, "127.0.0.1:0".parse().unwrap());
        config.node_name = format!("k8s-master-12345678-{i}");
        config.controllers.node_monitor_grace_period = Duration::from_secs(10);
        apiservers.push(Apiserver::start(config).await);
    }
    let kubeconfig = cluster.dir.path().join("admin-0.kubeconfig");
    write(&kubeconfig, &kubeconfig_text(&apiservers[0], &cluster.pki));
    let kubectl = Kubectl::new(kubeconfig);
    let rss_before = rss_kib();
    let start = Instant::now();
    let mut roots = Vec::new();
    let mut kubelets = Vec::new();
    for i in 0..3 + AGENTS {
        let apiserver = &apiservers[i % 3];
        let root = NodeRoot::new(&cluster.pki, &apiserver.url());
        let (name, role) = if i < 3 { (format!("k8s-master-12345678-{i}"), NodeRole::Master) } else { (format!("k8s-agentpool1-12345678-{}", i - 3), NodeRole::Agent) };
        let mut config = kubelet_config(&name, role, &root, IpAddr::V4(Ipv4Addr::new(10, 240, (i / 250) as u8, (i % 250) as u8 + 4)), apiserver);
        config.heartbeat_interval = Duration::from_secs(2);
        kubelets.push(Kubelet::start(config));
        roots.push(root);
    }
    eventually("all nodes Ready", Duration::from_secs(120), || async {
        let nodes = kubectl.json(&["get", "nodes"]).await;
        let ready = nodes["items"].as_array()?.iter().filter(|n| ready_status(n) == "True").count();
        (ready == 3 + AGENTS).then_some(())
    })
    .await;
    let nodes_ready = start.elapsed();
    eventually("every kube-proxy pod Ready", Duration::from_secs(120), || async {
        let pods = kubectl.json(&["get", "pods", "-n", "kube-system", "-l", "k8s-app=kube-proxy"]).await;
        let ready = pods["items"].as_array()?.iter().filter(|p| ready_status(p) == "True").count();
        (ready == 3 + AGENTS).then_some(())
    })
    .await;
    let pods_ready = start.elapsed();
    let listing = Instant::now();
    kubectl.ok(&["get", "pods", "-A"]).await;
    let list_time = listing.elapsed();
    println!(
        "3 apiservers + {} kubelets: nodes Ready after {:.1?}, kube-proxy pods Ready after {:.1?}; kubectl get pods -A {:.0?}; RSS {} MiB -> {} MiB",
        3 + AGENTS,
        nodes_ready,
        pods_ready,
        list_time,
        rss_before / 1024,
        rss_kib() / 1024
    );
    let (cpu_before, wall) = (cpu_time(), Instant::now());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let busy = (cpu_time() - cpu_before).as_secs_f64() / wall.elapsed().as_secs_f64();
    println!("steady state: {:.0}% of one core for 3 apiservers (controllers every 250ms) and {} kubelets (heartbeat 2s)", busy * 100.0, 3 + AGENTS);
    drop(kubelets);
    drop(apiservers);
}
