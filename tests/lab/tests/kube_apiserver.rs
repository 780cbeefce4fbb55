//! The apiserver stand-in against real clients: kubectl 1.32 and kube-rs, over real TLS,
//! with its objects in a real etcd. Each test brings up its own etcd and apiserver.

mod kube_support;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube_support::*;
use lab::kube::kubelet::NodeRole;
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

const MASTER: &str = "k8s-master-12345678-0";
const AGENT: &str = "k8s-agentpool1-12345678-0";

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

async fn pods_json(cluster: &Cluster, selector: &str) -> Vec<serde_json::Value> {
    let list = cluster.kubectl.json(&["get", "pods", "-n", "kube-system", "-l", selector]).await;
    list["items"].as_array().cloned().unwrap_or_default()
}

fn names(items: &[serde_json::Value]) -> Vec<String> {
    items.iter().map(|p| p["metadata"]["name"].as_str().unwrap_or("").to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_drives_the_cluster() {
    let cluster = Cluster::start().await;
    let (_master_root, master) = cluster.node(MASTER, NodeRole::Master, ip(1));
    let (_agent_root, agent) = cluster.node(AGENT, NodeRole::Agent, ip(2));
    let _kubelets = [kubelet_start(master), kubelet_start(agent)];
    let kubectl = &cluster.kubectl;

    // `kubectl get nodes` asks for a Table and prints its columns.
    let table = eventually("both nodes Ready in kubectl get nodes", Duration::from_secs(20), || async {
        let out = kubectl.ok(&["get", "nodes"]).await;
        let ready_rows = out.lines().filter(|l| l.contains(" Ready ")).count();
        (ready_rows == 2).then_some(out)
    })
    .await;
    assert!(table.starts_with("NAME"), "a table with a header: {table}");
    assert!(table.contains(MASTER) && table.contains(AGENT), "{table}");
    assert!(table.contains("master") && table.contains("v1.30"), "{table}");

    // kube-system holds the seeded workloads' pods, Ready once their nodes are.
    let pods = eventually("kube-proxy on both nodes and coredns, cluster-autoscaler Ready", Duration::from_secs(20), || async {
        let list = kubectl.json(&["get", "pods", "-n", "kube-system"]).await;
        let items = list["items"].as_array().cloned().unwrap_or_default();
        let ready = |prefix: &str| items.iter().filter(|p| p["metadata"]["name"].as_str().unwrap_or("").starts_with(prefix) && ready_status(p) == "True").count();
        (ready("kube-proxy-") == 2 && ready("coredns-") == 1 && ready("cluster-autoscaler-") == 1).then_some(items)
    })
    .await;
    let autoscaler = pods.iter().find(|p| p["metadata"]["name"].as_str().unwrap().starts_with("cluster-autoscaler-")).unwrap();
    assert_eq!(autoscaler["spec"]["nodeName"], MASTER, "cluster-autoscaler runs on a master");
    let static_pods = pods.iter().filter(|p| p["metadata"]["name"].as_str().unwrap().ends_with(MASTER)).count();
    assert_eq!(static_pods, 4, "the master reports its four static pods");
    let plain = kubectl.ok(&["get", "pods", "-n", "kube-system"]).await;
    assert!(plain.contains("READY") && plain.contains("1/1") && plain.contains("Running"), "{plain}");

    // Field selectors as certrotate uses them: the kube-proxy pod of one node.
    let on_agent = kubectl.json(&["get", "pods", "-n", "kube-system", "-l", "k8s-app=kube-proxy", "--field-selector", &format!("spec.nodeName={AGENT}")]).await;
    let on_agent = on_agent["items"].as_array().unwrap().clone();
    assert_eq!(on_agent.len(), 1, "one kube-proxy pod on the agent");
    let old_proxy = on_agent[0]["metadata"]["name"].as_str().unwrap().to_owned();

    // delete pod: gone at once, and the DaemonSet controller replaces it with a new pod.
    kubectl.ok(&["delete", "pod", "-n", "kube-system", &old_proxy]).await;
    let replaced = eventually("a new kube-proxy pod on the agent", Duration::from_secs(15), || async {
        let items = pods_json(&cluster, "k8s-app=kube-proxy").await;
        let on_node: Vec<_> = items.into_iter().filter(|p| p["spec"]["nodeName"] == AGENT).collect();
        (on_node.len() == 1 && on_node[0]["metadata"]["name"] != old_proxy.as_str() && ready_status(&on_node[0]) == "True").then(|| names(&on_node))
    })
    .await;
    assert_ne!(replaced[0], old_proxy);
    let gone = kubectl.run(&["get", "pod", "-n", "kube-system", &old_proxy]).await;
    assert!(!gone.success && gone.stderr.contains("NotFound"), "deleted pod is 404: {}", gone.stderr);

    // rollout restart: the template annotation changes and every coredns pod is replaced.
    let before = names(&pods_json(&cluster, "k8s-app=kube-dns").await);
    kubectl.ok(&["rollout", "restart", "deployment/coredns", "-n", "kube-system"]).await;
    let deployment = kubectl.json(&["get", "deployment", "coredns", "-n", "kube-system"]).await;
    assert!(deployment["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"].is_string(), "{deployment}");
    assert_eq!(deployment["metadata"]["generation"], 2, "a template change bumps generation");
    eventually("coredns pods replaced and Ready", Duration::from_secs(15), || async {
        let items = pods_json(&cluster, "k8s-app=kube-dns").await;
        let now = names(&items);
        (now.len() == 1 && !before.contains(&now[0]) && ready_status(&items[0]) == "True").then_some(())
    })
    .await;
    kubectl.ok(&["rollout", "restart", "daemonset/kube-proxy", "-n", "kube-system"]).await;

    // scale cluster-autoscaler to 0 and back through the scale subresource.
    kubectl.ok(&["scale", "deployment", "cluster-autoscaler", "-n", "kube-system", "--replicas=0"]).await;
    let scaled = kubectl.json(&["get", "deployment", "cluster-autoscaler", "-n", "kube-system"]).await;
    assert_eq!(scaled["spec"]["replicas"], 0);
    eventually("no cluster-autoscaler pods", Duration::from_secs(15), || async {
        pods_json(&cluster, "app=cluster-autoscaler").await.is_empty().then_some(())
    })
    .await;
    kubectl.ok(&["scale", "deployment", "cluster-autoscaler", "-n", "kube-system", "--replicas=1"]).await;
    eventually("cluster-autoscaler back", Duration::from_secs(15), || async {
        let items = pods_json(&cluster, "app=cluster-autoscaler").await;
        (items.len() == 1 && ready_status(&items[0]) == "True").then_some(())
    })
    .await;

    // Token secrets, selected by type.
    let secrets = kubectl.json(&["get", "secrets", "-A", "--field-selector", "type=kubernetes.io/service-account-token"]).await;
    let secrets = secrets["items"].as_array().unwrap().clone();
    assert!(secrets.len() >= 7, "one per service account: {}", secrets.len());
    assert!(secrets.iter().all(|s| s["type"] == "kubernetes.io/service-account-token"));
    let opaque = kubectl.json(&["get", "secrets", "-A", "--field-selector", "type=Opaque"]).await;
    assert_eq!(opaque["items"].as_array().unwrap().len(), 0);

    // Errors come back as Status objects kubectl understands.
    let missing = kubectl.run(&["get", "deployment", "nope", "-n", "kube-system"]).await;
    assert!(!missing.success);
    assert!(missing.stderr.contains("deployments.apps \"nope\" not found"), "{}", missing.stderr);
}

fn kubelet_start(config: lab::kube::kubelet::KubeletConfig) -> Kubelet {
    Kubelet::start(config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_lists_and_patches() {
    let cluster = Cluster::start().await;
    let (_root, master) = cluster.node(MASTER, NodeRole::Master, ip(1));
    let _kubelet = Kubelet::start(master);
    let client = cluster.kube_client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let listed = eventually("kube-rs lists the node", Duration::from_secs(20), || async {
        let list = nodes.list(&ListParams::default()).await.ok()?;
        (!list.items.is_empty()).then_some(list)
    })
    .await;
    assert_eq!(listed.items[0].metadata.name.as_deref(), Some(MASTER));
    assert!(listed.metadata.resource_version.is_some(), "lists carry a resourceVersion");
    let labelled = nodes.list(&ListParams::default().labels("kubernetes.io/role=master")).await.unwrap();
    assert_eq!(labelled.items.len(), 1);
    let none = nodes.list(&ListParams::default().labels("kubernetes.io/role=agent")).await.unwrap();
    assert!(none.items.is_empty());

    // A merge patch of node labels, and a strategic patch of a deployment, as certrotate sends.
    let patched = nodes
        .patch(MASTER, &PatchParams::default(), &Patch::Merge(json!({ "metadata": { "labels": { "certrotate/test": "yes" } } })))
        .await
        .unwrap();
    assert_eq!(patched.metadata.labels.unwrap()["certrotate/test"], "yes");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "kube-system");
    let scaled = deployments
        .patch("cluster-autoscaler", &PatchParams::default(), &Patch::Strategic(json!({ "spec": { "replicas": 0 } })))
        .await
        .unwrap();
    assert_eq!(scaled.spec.unwrap().replicas, Some(0));
    let dry = deployments
        .patch("cluster-autoscaler", &PatchParams::default().dry_run(), &Patch::Merge(json!({ "spec": { "replicas": 5 } })))
        .await
        .unwrap();
    assert_eq!(dry.spec.unwrap().replicas, Some(5), "a dry run answers with the patched object");
    let stored = deployments.get("cluster-autoscaler").await.unwrap();
    assert_eq!(stored.spec.unwrap().replicas, Some(0), "and stores nothing");

    // Optimistic concurrency: a stale resourceVersion is a 409 Conflict.
    let node = nodes.get(MASTER).await.unwrap();
    let mut stale = node.clone();
    stale.metadata.resource_version = Some("1".to_owned());
    let err = nodes.replace(MASTER, &Default::default(), &stale).await.unwrap_err();
    match err {
        kube::Error::Api(status) => assert_eq!(status.code, 409, "{status:?}"),
        other => panic!("expected a 409, got {other}"),
    }
    let missing = nodes.get("no-such-node").await.unwrap_err();
    match missing {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 404);
            assert_eq!(status.reason, "NotFound");
        }
        other => panic!("expected a 404, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_client_certificates_fail_the_handshake() {
    let cluster = Cluster::start().await;
    let foreign = TestCa::new("ca");
    let (cert, key) = foreign.issue("client", Some("system:masters"), &[], false, true);
    let dir = cluster.dir.path();
    write(&dir.join("foreign.crt"), &cert);
    write(&dir.join("foreign.key"), &key);

    // At the TLS layer: the server rejects the certificate during the handshake.
    let tls = lab::kube::credentials::client_config(&cluster.pki.path("ca.crt"), Some((&dir.join("foreign.crt"), &dir.join("foreign.key")))).unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(cluster.apiserver().address).await.unwrap();
    let server_name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let result = async {
        let mut stream = connector.connect(server_name, tcp).await?;
        // TLS 1.3 clients learn of a rejected certificate on their first read.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream.write_all(b"GET /api HTTP/1.1\r\nhost: x\r\n\r\n").await?;
        let mut buf = [0u8; 64];
        stream.read(&mut buf).await
    }
    .await;
    let err = result.expect_err("a foreign client certificate must not be accepted");
    let text = format!("{err:?}");
    // The foreign CA is also named "ca", so the server finds the cluster CA by name and the
    // signature check fails (DecryptError); an unrelated issuer would give UnknownCA.
    assert!(text.contains("AlertReceived"), "the server aborted the handshake with an alert: {text}");

    // And kubectl with that certificate gets nowhere.
    let kubeconfig_path = dir.join("foreign.kubeconfig");
    write(&kubeconfig_path, &kubeconfig(&cluster.apiserver().url(), &cluster.pki.path("ca.crt"), &dir.join("foreign.crt"), &dir.join("foreign.key")));
    let out = Kubectl::new(kubeconfig_path).run(&["get", "nodes"]).await;
    assert!(!out.success, "kubectl with a foreign cert must fail");
    assert!(out.stderr.contains("certificate") || out.stderr.contains("tls"), "{}", out.stderr);

    // Without any client credentials only the public endpoints answer.
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(lab::kube::credentials::client_config(&cluster.pki.path("ca.crt"), None).unwrap())
        .build()
        .unwrap();
    let url = cluster.apiserver().url();
    assert_eq!(http.get(format!("{url}/readyz")).send().await.unwrap().status(), 200);
    let anonymous = http.get(format!("{url}/api/v1/nodes")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_etcd_fails_readyz() {
    let mut cluster = Cluster::start().await;
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(lab::kube::credentials::client_config(&cluster.pki.path("ca.crt"), None).unwrap())
        .build()
        .unwrap();
    let readyz = format!("{}/readyz", cluster.apiserver().url());
    assert_eq!(http.get(&readyz).send().await.unwrap().status(), 200);
    cluster.etcd.stop();
    let response = http.get(&readyz).send().await.unwrap();
    assert_eq!(response.status(), 500);
    assert!(response.text().await.unwrap().contains("[-]etcd failed"));
    let out = cluster.kubectl.run(&["get", "namespaces"]).await;
    assert!(!out.success, "requests fail while etcd is down");
    cluster.etcd.resume();
    eventually("readyz passes again once etcd is back", Duration::from_secs(20), || async {
        let status = http.get(&readyz).send().await.ok()?.status();
        (status == 200).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_etcd_client_certificates_break_the_apiserver() {
    let cluster = Cluster::start().await;
    let foreign = TestCa::new("ca");
    let (cert, key) = foreign.issue("etcdclient", None, &[], true, true);
    let dir = cluster.dir.path();
    write(&dir.join("bad-etcdclient.crt"), &cert);
    write(&dir.join("bad-etcdclient.key"), &key);
    let mut config = apiserver_config(&cluster.pki, &cluster.etcd, "127.0.0.1:0".parse().unwrap());
    config.etcd_certfile = dir.join("bad-etcdclient.crt");
    config.etcd_keyfile = dir.join("bad-etcdclient.key");
    config.node_name = "k8s-master-12345678-1".to_owned();
    let broken = Apiserver::start(config).await;
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(lab::kube::credentials::client_config(&cluster.pki.path("ca.crt"), None).unwrap())
        .build()
        .unwrap();
    let response = http.get(format!("{}/readyz", broken.url())).send().await.unwrap();
    assert_eq!(response.status(), 500, "an apiserver whose etcd certs are rejected is not ready");
    let kubeconfig = dir.join("broken.kubeconfig");
    write(&kubeconfig, &kubeconfig_text(&broken, &cluster.pki));
    let out = Kubectl::new(kubeconfig).run(&["get", "pods", "-A"]).await;
    assert!(!out.success);
    assert!(out.stderr.contains("etcd") || out.stderr.contains("Service"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_watches_see_changes() {
    use futures::{StreamExt, TryStreamExt};
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{PostParams, WatchEvent, WatchParams};
    let cluster = Cluster::start().await;
    let client = cluster.kube_client().await;
    let namespaces: Api<Namespace> = Api::all(client);
    let listed = namespaces.list(&ListParams::default()).await.unwrap();
    let version = listed.metadata.resource_version.clone().unwrap();
    let mut stream = namespaces.watch(&WatchParams::default().timeout(20), &version).await.unwrap().boxed();
    let created: Namespace = serde_json::from_value(json!({ "metadata": { "name": "certrotate-watch" } })).unwrap();
    namespaces.create(&PostParams::default(), &created).await.unwrap();
    // The stand-in's watch polls and diffs the store, so an object created and deleted
    // between two polls is never seen (a known gap of the stand-in, not of real watches):
    // delete only once the creation has been observed.
    let mut seen = Vec::new();
    let mut deleted = false;
    while seen.len() < 2 {
        if !deleted && !seen.is_empty() {
            cluster.kubectl.ok(&["delete", "namespace", "certrotate-watch"]).await;
            deleted = true;
        }
        let event = tokio::time::timeout(Duration::from_secs(10), stream.try_next()).await.expect("an event in time").unwrap().expect("stream open");
        match event {
            WatchEvent::Added(ns) => seen.push(("ADDED", ns.metadata.name.unwrap())),
            WatchEvent::Deleted(ns) => seen.push(("DELETED", ns.metadata.name.unwrap())),
            WatchEvent::Modified(ns) => seen.push(("MODIFIED", ns.metadata.name.unwrap())),
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert_eq!(seen, [("ADDED", "certrotate-watch".to_owned()), ("DELETED", "certrotate-watch".to_owned())]);
}

/// An HTTP/2 connection to the apiserver as a Kubernetes client opens it (TLS, ALPN h2, the
/// admin client certificate). The second value resolves when the connection has ended.
async fn h2_connect(cluster: &Cluster) -> (h2::client::SendRequest<bytes::Bytes>, tokio::task::JoinHandle<Result<(), h2::Error>>) {
    let pki = &cluster.pki;
    let mut tls = lab::kube::credentials::client_config(&pki.path("ca.crt"), Some((&pki.path("client.crt"), &pki.path("client.key")))).unwrap();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(cluster.apiserver().address).await.expect("connect");
    let name = rustls::pki_types::ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    let stream = connector.connect(name, tcp).await.expect("TLS handshake");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "the apiserver speaks HTTP/2");
    let (client, connection) = h2::client::handshake(stream).await.expect("HTTP/2 handshake");
    (client, tokio::spawn(connection))
}

/// GET `path` on an HTTP/2 connection; the body is read to its end.
async fn h2_get(client: &h2::client::SendRequest<bytes::Bytes>, path: &str) -> Result<(u16, String), h2::Error> {
    let mut client = client.clone().ready().await?;
    let request = hyper::Request::get(format!("https://127.0.0.1{path}")).body(()).unwrap();
    let (response, _) = client.send_request(request, true)?;
    let response = response.await?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// A real kube-apiserver listens at once but answers /readyz ok only after its start-up (post-
/// start hooks, informer caches): a TCP probe sees it up before it is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_until_the_startup_delay_has_passed() {
    let started = std::time::Instant::now();
    let delay = Duration::from_secs(3);
    let cluster = Cluster::start_with(|c| c.startup_delay = delay).await;
    let (client, _) = h2_connect(&cluster).await;
    let (status, body) = h2_get(&client, "/readyz?verbose").await.unwrap();
    assert_eq!(status, 500, "not ready during start-up: {body}");
    assert!(body.contains("[-]informer-sync failed"), "{body}");
    assert_eq!(h2_get(&client, "/healthz").await.unwrap().0, 500, "/healthz includes the post-start hooks");
    assert_eq!(h2_get(&client, "/livez").await.unwrap().0, 200, "alive all the same");
    assert_eq!(h2_get(&client, "/api/v1/namespaces").await.unwrap().0, 200, "requests are served meanwhile");
    let ready_after = eventually("/readyz ok after the start-up delay", Duration::from_secs(20), || async {
        (h2_get(&client, "/readyz").await.ok()?.0 == 200).then(|| started.elapsed())
    })
    .await;
    assert!(ready_after >= delay, "ready after {ready_after:?}, before the {delay:?} start-up");
    assert!(ready_after < delay + Duration::from_secs(5), "ready only after {ready_after:?}");
}

/// kube-apiserver's graceful termination: on a stop /readyz fails at once, everything else is
/// served through --shutdown-delay-duration, then HTTP/2 clients get GOAWAY, watches end and
/// the port closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_fails_readyz_serves_through_the_delay_then_sends_goaway() {
    let delay = Duration::from_secs(2);
    let mut cluster = Cluster::start_with(|c| c.shutdown_delay_duration = delay).await;
    let address = cluster.apiserver().address;
    let (client, connection) = h2_connect(&cluster).await;
    assert_eq!(h2_get(&client, "/readyz").await.unwrap().0, 200);
    // A watch open across the stop, as every kubelet and controller keeps one.
    let watch = {
        let mut sender = client.clone().ready().await.unwrap();
        let request = hyper::Request::get("https://127.0.0.1/api/v1/namespaces?watch=true").body(()).unwrap();
        let (response, _) = sender.send_request(request, true).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        tokio::spawn(async move {
            let mut body = response.into_body();
            while let Some(chunk) = body.data().await {
                match chunk {
                    Ok(chunk) => {
                        let _ = body.flow_control().release_capacity(chunk.len());
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(std::time::Instant::now())
        })
    };

    let stopped = std::time::Instant::now();
    cluster.apiserver.as_mut().unwrap().stop();
    let (status, body) = eventually("/readyz failing right after the stop", Duration::from_secs(2), || async {
        let (status, body) = h2_get(&client, "/readyz?verbose").await.ok()?;
        (status == 500).then_some((status, body))
    })
    .await;
    assert!(stopped.elapsed() < Duration::from_millis(1500), "readyz failed only after {:?}", stopped.elapsed());
    assert!(body.contains("[-]shutdown failed"), "{status} {body}");
    // Through the delay, everything else is served, on open connections and on new ones.
    assert_eq!(h2_get(&client, "/api/v1/namespaces").await.unwrap().0, 200);
    assert_eq!(h2_get(&client, "/livez").await.unwrap().0, 200);
    let (fresh, _) = h2_connect(&cluster).await;
    assert_eq!(h2_get(&fresh, "/healthz").await.unwrap().0, 200, "a new connection is served during the delay");

    // Then GOAWAY: the client refuses new requests on this connection with the peer's GOAWAY.
    let goaway = eventually("the apiserver's GOAWAY", Duration::from_secs(10), || async {
        match h2_get(&client, "/readyz").await {
            Err(e) if e.is_go_away() && e.is_remote() => Some((stopped.elapsed(), e.reason())),
            _ => None,
        }
    })
    .await;
    assert!(goaway.0 >= delay, "GOAWAY after {:?}, before the {delay:?} shutdown delay", goaway.0);
    assert!(goaway.0 < delay + Duration::from_secs(3), "GOAWAY only after {:?}", goaway.0);
    assert_eq!(goaway.1, Some(h2::Reason::NO_ERROR), "a graceful GOAWAY");
    let ended = tokio::time::timeout(Duration::from_secs(10), watch).await.expect("the watch ends").unwrap();
    let ended = ended.expect("the watch stream ends cleanly");
    assert!(ended.duration_since(stopped) >= delay, "the watch ended before the delay was over");
    assert!(tokio::time::timeout(Duration::from_secs(10), connection).await.is_ok(), "the connection closes");
    cluster.apiserver.take().unwrap().finished().await;
    assert!(tokio::net::TcpStream::connect(address).await.is_err(), "the port is closed");
}
