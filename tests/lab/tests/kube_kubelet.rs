//! The kubelet stand-in: it registers its Node Ready with the credentials on the node's disk,
//! reports a master's static pods, and the node goes NotReady once those credentials stop
//! working (here: ca.crt replaced by a foreign CA's).

mod kube_support;

use kube_support::*;
use lab::kube::kubelet::{self, NodeRole};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

const MASTER: &str = "k8s-master-12345678-0";
const AGENT: &str = "k8s-agentpool1-12345678-0";

async fn node_json(cluster: &Cluster, name: &str) -> Option<serde_json::Value> {
    let out = cluster.kubectl.run(&["get", "node", name, "-o", "json"]).await;
    out.success.then(|| serde_json::from_str(&out.stdout).ok()).flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_foreign_ca_goes_not_ready() {
    let cluster = Cluster::start().await;
    let (agent_root, agent) = cluster.node(AGENT, NodeRole::Agent, IpAddr::V4(Ipv4Addr::new(10, 240, 0, 4)));
    let _kubelet = Kubelet::start(agent.clone());

    let node = eventually("the agent registers Ready", Duration::from_secs(20), || async {
        let node = node_json(&cluster, AGENT).await?;
        (ready_status(&node) == "True").then_some(node)
    })
    .await;
    let labels = &node["metadata"]["labels"];
    assert_eq!(labels["kubernetes.io/role"], "agent");
    assert_eq!(labels["node-role.kubernetes.io/agent"], "");
    let internal = node["status"]["addresses"].as_array().unwrap().iter().find(|a| a["type"] == "InternalIP").unwrap();
    assert_eq!(internal["address"], "10.240.0.4");

    // The agent's ca.crt is replaced by a foreign CA: the kubelet no longer trusts the
    // apiserver, heartbeats stop, and the node-lifecycle controller marks it NotReady.
    let foreign = TestCa::new("ca");
    write(&agent_root.path("/etc/kubernetes/certs/ca.crt"), &foreign.cert_pem);
    let heartbeat = kubelet::heartbeat(&agent).await;
    let error = heartbeat.expect_err("a heartbeat with a foreign ca.crt must fail").to_string();
    assert!(error.contains("certificate") || error.contains("TLS") || error.contains("tls") || error.contains("ssl"), "{error}");
    let node = eventually("the agent turns NotReady", Duration::from_secs(20), || async {
        let node = node_json(&cluster, AGENT).await?;
        (ready_status(&node) == "Unknown").then_some(node)
    })
    .await;
    let ready = node["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap().clone();
    assert_eq!(ready["reason"], "NodeStatusUnknown");
    let table = cluster.kubectl.ok(&["get", "nodes"]).await;
    assert!(table.contains("NotReady"), "{table}");
    // Its pods are not Ready either.
    let proxy = eventually("the agent's kube-proxy pod is not Ready", Duration::from_secs(10), || async {
        let list = cluster.kubectl.json(&["get", "pods", "-n", "kube-system", "-l", "k8s-app=kube-proxy", "--field-selector", &format!("spec.nodeName={AGENT}")]).await;
        let pod = list["items"].as_array()?.first()?.clone();
        (ready_status(&pod) == "False").then_some(pod)
    })
    .await;
    assert!(proxy["metadata"]["name"].as_str().unwrap().starts_with("kube-proxy-"));

    // Restoring the cluster's ca.crt brings it back.
    write(&agent_root.path("/etc/kubernetes/certs/ca.crt"), &cluster.pki.ca.cert_pem);
    eventually("the agent is Ready again", Duration::from_secs(20), || async {
        let node = node_json(&cluster, AGENT).await?;
        (ready_status(&node) == "True").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubelet_prefers_kubelet_client_current_pem() {
    let cluster = Cluster::start().await;
    let (root, agent) = cluster.node(AGENT, NodeRole::Agent, IpAddr::V4(Ipv4Addr::new(10, 240, 0, 4)));
    let current = root.path("/var/lib/kubelet/pki/kubelet-client-current.pem");
    // A rotated kubelet client certificate from a foreign CA, left behind: it wins over
    // client.crt and breaks the node, which is why a CA change must remove it.
    let foreign = TestCa::new("ca");
    let (cert, key) = foreign.issue(&format!("system:node:{AGENT}"), Some("system:nodes"), &[], false, true);
    write(&current, &format!("{cert}{key}"));
    let credentials = kubelet::read_credentials(&agent).unwrap();
    assert_eq!(credentials.client_certificate, current);
    assert_eq!(credentials.client_key, current);
    assert!(kubelet::heartbeat(&agent).await.is_err(), "the foreign current pem is used and rejected");

    std::fs::remove_file(&current).unwrap();
    let credentials = kubelet::read_credentials(&agent).unwrap();
    assert_eq!(credentials.client_certificate, root.path("/etc/kubernetes/certs/client.crt"));
    kubelet::heartbeat(&agent).await.expect("client.crt from the kubeconfig works");

    // A current pem from the cluster CA works too.
    let (cert, key) = cluster.pki.ca.issue(&format!("system:node:{AGENT}"), Some("system:nodes"), &[], false, true);
    write(&current, &format!("{cert}{key}"));
    kubelet::heartbeat(&agent).await.expect("a valid kubelet-client-current.pem works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_reports_its_static_pods_by_health() {
    let cluster = Cluster::start().await;
    let (_root, master) = cluster.node(MASTER, NodeRole::Master, IpAddr::V4(Ipv4Addr::LOCALHOST));
    let _kubelet = Kubelet::start(master.clone());
    let static_pods = || async {
        let list = cluster.kubectl.json(&["get", "pods", "-n", "kube-system", "-l", "tier=control-plane"]).await;
        list["items"].as_array().cloned().unwrap_or_default()
    };
    let pods = eventually("four Ready static pods", Duration::from_secs(20), || async {
        let pods = static_pods().await;
        (pods.len() == 4 && pods.iter().all(|p| ready_status(p) == "True")).then_some(pods)
    })
    .await;
    let mut names: Vec<&str> = pods.iter().map(|p| p["metadata"]["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            format!("kube-addon-manager-{MASTER}"),
            format!("kube-apiserver-{MASTER}"),
            format!("kube-controller-manager-{MASTER}"),
            format!("kube-scheduler-{MASTER}"),
        ]
    );
    let node = node_json(&cluster, MASTER).await.unwrap();
    assert_eq!(node["metadata"]["labels"]["node-role.kubernetes.io/master"], "");
    assert_eq!(node["metadata"]["labels"]["kubernetes.io/role"], "master");

    // The kube-apiserver pod reflects the local apiserver's /readyz: point the kubelet's
    // probe at an address where nothing is ready and the pod turns not Ready.
    let mut broken_probe = master.clone();
    broken_probe.local_apiserver = Some(format!("https://127.0.0.1:{}", free_port()));
    assert!(!kubelet::local_apiserver_ready(&broken_probe).await);
    assert!(kubelet::local_apiserver_ready(&master).await);
    drop(_kubelet);
    let _probing_elsewhere = Kubelet::start(broken_probe);
    eventually("kube-apiserver static pod not Ready", Duration::from_secs(20), || async {
        let pods = static_pods().await;
        let apiserver = pods.iter().find(|p| p["metadata"]["name"] == format!("kube-apiserver-{MASTER}"))?;
        let others_ready = pods.iter().filter(|p| ready_status(p) == "True").count();
        (ready_status(apiserver) == "False" && others_ready == 3).then_some(())
    })
    .await;
}
