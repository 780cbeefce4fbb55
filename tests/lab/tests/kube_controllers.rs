//! The controllers inside the apiserver stand-in: token secrets signed with the apiserver
//! key and recreated when deleted, and pods that are not Ready after the signing key changes
//! until their workload is rolled out — the service-account half of a certificate rotation.

mod kube_support;

use base64::Engine;
use kube_support::*;
use lab::kube::kubelet::NodeRole;
use lab::kube::token::TokenSigner;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

const MASTER: &str = "k8s-master-12345678-0";

async fn token_secrets(cluster: &Cluster) -> Vec<serde_json::Value> {
    let list = cluster.kubectl.json(&["get", "secrets", "-n", "kube-system", "--field-selector", "type=kubernetes.io/service-account-token"]).await;
    list["items"].as_array().cloned().unwrap_or_default()
}

fn secret_for<'a>(secrets: &'a [serde_json::Value], service_account: &str) -> Option<&'a serde_json::Value> {
    secrets.iter().find(|s| s["metadata"]["annotations"]["kubernetes.io/service-account.name"] == service_account)
}

fn token_of(secret: &serde_json::Value) -> String {
    let bytes = base64::engine::general_purpose::STANDARD.decode(secret["data"]["token"].as_str().unwrap()).unwrap();
    String::from_utf8(bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_token_secrets_are_recreated_and_tokens_authenticate() {
    let cluster = Cluster::start().await;
    let secrets = eventually("a token secret for kube-proxy", Duration::from_secs(15), || async {
        let secrets = token_secrets(&cluster).await;
        secret_for(&secrets, "kube-proxy").is_some().then_some(secrets)
    })
    .await;
    let original = secret_for(&secrets, "kube-proxy").unwrap().clone();
    let token = token_of(&original);
    let key_pem = std::fs::read_to_string(cluster.pki.path("apiserver.key")).unwrap();
    assert!(key_pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"), "AKS Engine's PKCS#1 key format is what gets loaded");
    let signer = TokenSigner::from_key_file(&cluster.pki.path("apiserver.key")).unwrap();
    let claims = signer.verify(&token).expect("signed with apiserver.key");
    assert_eq!(claims.sub, "system:serviceaccount:kube-system:kube-proxy");
    assert_eq!(claims.secret_name, original["metadata"]["name"].as_str().unwrap());

    // The token is a working bearer credential, with no client certificate.
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(lab::kube::credentials::client_config(&cluster.pki.path("ca.crt"), None).unwrap())
        .build()
        .unwrap();
    let url = format!("{}/api/v1/namespaces/kube-system/pods", cluster.apiserver().url());
    let response = http.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let forged = format!("{}x", &token[..token.len() - 1]);
    assert_eq!(http.get(&url).bearer_auth(&forged).send().await.unwrap().status(), 401);

    // Delete every token secret, as rotate-certs does: the controller makes new ones.
    cluster
        .kubectl
        .ok(&["delete", "secrets", "-n", "kube-system", "--field-selector", "type=kubernetes.io/service-account-token"])
        .await;
    let recreated = eventually("a new token secret for kube-proxy", Duration::from_secs(15), || async {
        let secrets = token_secrets(&cluster).await;
        let secret = secret_for(&secrets, "kube-proxy")?.clone();
        (secret["metadata"]["name"] != original["metadata"]["name"]).then_some(secret)
    })
    .await;
    assert_ne!(token_of(&recreated), token);
    signer.verify(&token_of(&recreated)).expect("the new token is signed with the same key");
    // The old token's secret is gone, so the old token no longer authenticates.
    assert_eq!(http.get(&url).bearer_auth(&token).send().await.unwrap().status(), 401);
    let service_account = cluster.kubectl.json(&["get", "serviceaccount", "kube-proxy", "-n", "kube-system"]).await;
    let references: Vec<&str> = service_account["secrets"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(references, [recreated["metadata"]["name"].as_str().unwrap()]);
}

async fn workload_pods(cluster: &Cluster) -> Vec<serde_json::Value> {
    let list = cluster.kubectl.json(&["get", "pods", "-n", "kube-system", "-l", "tier!=control-plane"]).await;
    list["items"].as_array().cloned().unwrap_or_default()
}

fn readiness(pods: &[serde_json::Value]) -> Vec<(String, String)> {
    pods.iter().map(|p| (p["metadata"]["name"].as_str().unwrap_or("").to_owned(), ready_status(p))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_not_ready_after_the_signing_key_changes_until_rolled_out() {
    let mut cluster = Cluster::start().await;
    let (_root, master) = cluster.node(MASTER, NodeRole::Master, IpAddr::V4(Ipv4Addr::LOCALHOST));
    let _kubelet = Kubelet::start(master);
    eventually("kube-proxy, coredns and cluster-autoscaler pods Ready", Duration::from_secs(20), || async {
        let pods = workload_pods(&cluster).await;
        (pods.len() == 3 && pods.iter().all(|p| ready_status(p) == "True")).then_some(())
    })
    .await;

    // Rotate apiserver.crt/key and restart the apiserver on the same address: the
    // service-account signing key is now a different one.
    cluster.pki.rotate_apiserver();
    let old = cluster.apiserver.take().unwrap();
    let address = old.address;
    old.shutdown().await;
    let config = apiserver_config(&cluster.pki, &cluster.etcd, address);
    cluster.apiserver = Some(Apiserver::start(config).await);

    // (While the apiserver restarts the node may briefly be NotReady too; what must settle is
    // the token verdict, with the node Ready again.)
    let ready_reason = |p: &serde_json::Value| {
        p["status"]["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == "Ready")).map(|c| c["reason"].clone())
    };
    eventually("every workload pod not Ready because of its token", Duration::from_secs(20), || async {
        let pods = workload_pods(&cluster).await;
        let stale = pods.iter().all(|p| ready_status(p) == "False" && ready_reason(p) == Some(serde_json::json!("ServiceAccountTokenInvalid")));
        (pods.len() == 3 && stale).then_some(())
    })
    .await;

    // Rolling out before the token secrets are replaced does not help: new pods start with
    // the old secret's token.
    cluster.kubectl.ok(&["rollout", "restart", "deployment/coredns", "-n", "kube-system"]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pods = workload_pods(&cluster).await;
    let coredns: Vec<_> = pods.iter().filter(|p| p["metadata"]["name"].as_str().unwrap().starts_with("coredns-")).collect();
    assert_eq!(coredns.len(), 1);
    assert_eq!(ready_status(coredns[0]), "False", "a pod started with a stale token is not Ready");

    // Delete the token secrets (recreated under the new key), then roll out: Ready again.
    cluster
        .kubectl
        .ok(&["delete", "secrets", "-n", "kube-system", "--field-selector", "type=kubernetes.io/service-account-token"])
        .await;
    let new_signer = TokenSigner::from_key_file(&cluster.pki.path("apiserver.key")).unwrap();
    eventually("token secrets re-signed with the new key", Duration::from_secs(15), || async {
        let secrets = token_secrets(&cluster).await;
        let all = ["kube-proxy", "coredns", "cluster-autoscaler"]
            .iter()
            .all(|sa| secret_for(&secrets, sa).is_some_and(|s| new_signer.verify(&token_of(s)).is_ok()));
        all.then_some(())
    })
    .await;
    // Not yet rolled out: still not Ready.
    let pods = workload_pods(&cluster).await;
    assert!(pods.iter().all(|p| ready_status(p) == "False"), "{:?}", readiness(&pods));
    for workload in ["deployment/coredns", "deployment/cluster-autoscaler", "daemonset/kube-proxy"] {
        cluster.kubectl.ok(&["rollout", "restart", workload, "-n", "kube-system"]).await;
    }
    eventually("every workload pod Ready after the rollout", Duration::from_secs(20), || async {
        let pods = workload_pods(&cluster).await;
        (pods.len() == 3 && pods.iter().all(|p| ready_status(p) == "True")).then_some(())
    })
    .await;
    let deployment = cluster.kubectl.json(&["get", "deployment", "coredns", "-n", "kube-system"]).await;
    assert_eq!(deployment["status"]["readyReplicas"], 1);
    // kubectl's own rollout check agrees (it watches the workload and reads its status).
    for workload in ["deployment/coredns", "daemonset/kube-proxy"] {
        let out = cluster.kubectl.ok(&["rollout", "status", workload, "-n", "kube-system", "--timeout=20s"]).await;
        assert!(out.contains("successfully rolled out"), "{out}");
    }
    let described = cluster.kubectl.ok(&["describe", "node", MASTER]).await;
    assert!(described.contains("Ready") && described.contains("kube-proxy-"), "{described}");
    assert_eq!(deployment["status"]["observedGeneration"], deployment["metadata"]["generation"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_master_takes_over_the_controllers() {
    let mut cluster = Cluster::start().await;
    let mut second_config = apiserver_config(&cluster.pki, &cluster.etcd, "127.0.0.1:0".parse().unwrap());
    second_config.node_name = "k8s-master-12345678-1".to_owned();
    let second = Apiserver::start(second_config).await;
    let kubeconfig = cluster.dir.path().join("second.kubeconfig");
    write(&kubeconfig, &kubeconfig_text(&second, &cluster.pki));
    let kubectl = Kubectl::new(kubeconfig);
    // Both masters serve the same objects from the shared etcd.
    let via_second = kubectl.json(&["get", "serviceaccounts", "-n", "kube-system"]).await;
    assert!(via_second["items"].as_array().unwrap().iter().any(|sa| sa["metadata"]["name"] == "kube-proxy"));

    // The first master dies without handing over its lease (aborted, as in a crash).
    drop(cluster.apiserver.take());
    let lease = |cluster: &Cluster| {
        let ca = cluster.pki.path("ca.crt");
        let etcd = lab::kube::etcd::EtcdClient::new(vec![cluster.etcd.endpoint.clone()], &ca, &cluster.pki.path("etcdclient.crt"), &cluster.pki.path("etcdclient.key")).unwrap();
        async move {
            let kv = etcd.get("/registry/leases/kube-system/kube-controller-manager").await.unwrap()?;
            let lease: serde_json::Value = serde_json::from_slice(&kv.value).unwrap();
            lease["spec"]["holderIdentity"].as_str().map(str::to_owned)
        }
    };
    assert_eq!(lease(&cluster).await.as_deref(), Some("k8s-master-12345678-0"), "the first master led");
    kubectl.ok(&["delete", "secrets", "-n", "kube-system", "--field-selector", "type=kubernetes.io/service-account-token"]).await;
    eventually("the second master's controllers recreate the token secrets", Duration::from_secs(20), || async {
        let list = kubectl.json(&["get", "secrets", "-n", "kube-system", "--field-selector", "type=kubernetes.io/service-account-token"]).await;
        let names: Vec<String> = list["items"].as_array()?.iter().filter_map(|s| s["metadata"]["annotations"]["kubernetes.io/service-account.name"].as_str().map(str::to_owned)).collect();
        ["default", "kube-proxy", "coredns", "cluster-autoscaler"].iter().all(|sa| names.iter().any(|n| n == sa)).then_some(())
    })
    .await;
    assert_eq!(lease(&cluster).await.as_deref(), Some("k8s-master-12345678-1"), "leadership moved to the survivor");
    drop(second);
}
