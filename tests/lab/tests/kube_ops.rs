//! certrotate's Kubernetes operations and gate probes (`certrotate::cloud::kube`) against a
//! live lab (1 master + 2 agents): credential fallback from a foreign client certificate to
//! the lab's admin kubeconfig, the apiserver address override, every operation with its
//! effect checked through the API, and the probes on a healthy cluster and on one with a
//! stopped agent. Needs root.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use certrotate::cloud::kube::{self as ops, KubeAccess, KubeOpsError};
use certrotate::pki::{issue, CertTemplate, ExtendedUsage, KeySpec};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams};
use lab::control::Fault;
use lab::{Lab, LabSpec, UpOptions};
use std::collections::BTreeSet;
use std::future::Future;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(10);

fn up(dir: &std::path::Path) -> Lab {
    assert_eq!(unsafe { libc::geteuid() }, 0, "the lab tests need root");
    Lab::up(
        dir,
        LabSpec { masters: 1, agents: 2, ..LabSpec::default() }.fast_restarts(),
        UpOptions { lab_binary: Some(env!("CARGO_BIN_EXE_lab").into()), owner_pid: Some(std::process::id()), timeout: Some(Duration::from_secs(120)) },
    )
    .expect("lab up")
}

/// Polls `check` until it yields a value, or panics naming `what` and the last observation.
async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if start.elapsed() > within => panic!("{what}: not within {within:?}; last seen: {last}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

fn empty(problems: Result<Vec<String>, KubeOpsError>) -> Result<(), String> {
    match problems {
        Ok(p) if p.is_empty() => Ok(()),
        Ok(p) => Err(p.join("; ")),
        Err(e) => Err(e.to_string()),
    }
}

/// The admin kubeconfig's CA, client certificate and key, as PEM.
fn material(kubeconfig: &str) -> (String, String, String) {
    let value: serde_json::Value = serde_json::from_str(kubeconfig).expect("the lab writes JSON");
    let field = |v: &serde_json::Value| String::from_utf8(B64.decode(v.as_str().unwrap()).unwrap()).unwrap();
    (
        field(&value["clusters"][0]["cluster"]["certificate-authority-data"]),
        field(&value["users"][0]["user"]["client-certificate-data"]),
        field(&value["users"][0]["user"]["client-key-data"]),
    )
}

/// A client certificate shaped like the admin's (CN=client, O=system:masters) from a CA the
/// cluster does not trust.
fn foreign_client() -> (String, String) {
    let now = time::OffsetDateTime::now_utc();
    let template = |cn: &str, org: Option<&str>, is_ca: bool| CertTemplate {
        common_name: cn.into(),
        organization: org.map(Into::into),
        dns_sans: Vec::new(),
        ip_sans: Vec::new(),
        is_ca,
        extended_usages: if is_ca { Vec::new() } else { vec![ExtendedUsage::ClientAuth] },
        key: KeySpec::EcdsaP256,
        not_before: now - time::Duration::hours(1),
        not_after: now + time::Duration::days(30),
    };
    let ca = issue::issue_ca(&template("ca", None, true)).unwrap();
    let leaf = issue::issue_leaf(&template("client", Some("system:masters"), false), &ca).unwrap();
    (leaf.cert_pem.clone(), leaf.key_pem.clone())
}

async fn kube_proxy_pods(client: &kube::Client) -> Vec<(String, String)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    let list = pods.list(&ListParams::default().labels("k8s-app=kube-proxy")).await.unwrap();
    list.items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| (p.spec.unwrap().node_name.unwrap_or_default(), p.metadata.name.unwrap()))
        .collect()
}

async fn token_secrets(client: &kube::Client) -> BTreeSet<String> {
    let secrets: Api<Secret> = Api::all(client.clone());
    let list = secrets.list(&ListParams::default()).await.unwrap();
    list.items
        .into_iter()
        .filter(|s| s.type_.as_deref() == Some("kubernetes.io/service-account-token"))
        .map(|s| format!("{}/{}", s.metadata.namespace.unwrap(), s.metadata.name.unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_operations_and_gates_against_a_live_lab() {
    let dir = tempfile::tempdir().unwrap();
    let lab = up(dir.path());
    let env = lab.env();
    let suffix = env["LAB_NAME_SUFFIX"].clone();
    let master = format!("k8s-master-{suffix}-0");
    let agents = [format!("k8s-agentpool1-{suffix}-0"), format!("k8s-agentpool1-{suffix}-1")];
    let all_nodes: Vec<String> = std::iter::once(master.clone()).chain(agents.iter().cloned()).collect();
    let lab_kubeconfig = std::fs::read_to_string(&env["LAB_KUBECONFIG"]).unwrap();
    let apiserver = env["LAB_APISERVER"].clone();
    let fqdn_url = format!("https://{}:443", env["LAB_APISERVER_NAME"]);
    let (ca, admin_cert, admin_key) = material(&lab_kubeconfig);

    // Credentials: a client certificate from another CA is refused, the lab's admin works.
    let (foreign_cert, foreign_key) = foreign_client();
    let foreign = ops::admin_kubeconfig(&env["LAB_DNS_PREFIX"], &fqdn_url, &ca, &foreign_cert, &foreign_key);
    let access = KubeAccess::from_kubeconfigs(&[("foreign".into(), foreign.clone()), ("lab admin".into(), lab_kubeconfig.clone())], Some(&apiserver)).unwrap();
    let (client, label) = access.client(TIMEOUT).await.expect("the second kubeconfig works");
    assert_eq!(label, "lab admin", "the foreign client certificate must not be accepted");
    let only_foreign = KubeAccess::from_kubeconfigs(&[("foreign".into(), foreign)], Some(&apiserver)).unwrap();
    let error = only_foreign.client(TIMEOUT).await.err().expect("a foreign client certificate is refused").to_string();
    assert!(error.contains("foreign") && error.contains(&apiserver) && error.contains("not signed by the CA"), "{error}");
    eprintln!("foreign client certificate: {error}");
    assert!(!error.contains(&foreign_key), "no key material in errors");

    // The kubeconfig certrotate writes, naming the FQDN (which does not resolve here), works
    // through the address override: TLS still checks the FQDN against the CA.
    let written = ops::admin_kubeconfig(&env["LAB_DNS_PREFIX"], &fqdn_url, &ca, &admin_cert, &admin_key);
    let (_, label) = KubeAccess::from_kubeconfigs(&[("written".into(), written.clone())], Some(&apiserver)).unwrap().client(TIMEOUT).await.expect("written kubeconfig works");
    assert_eq!(label, "written");
    // ... and with a name the serving certificate does not carry, it must fail.
    let wrong_name = written.replace(&env["LAB_APISERVER_NAME"], "not-the-apiserver.example");
    let error = KubeAccess::from_kubeconfigs(&[("wrong name".into(), wrong_name)], Some(&apiserver)).unwrap().client(TIMEOUT).await.err().expect("a name the certificate lacks is refused").to_string();
    assert!(error.contains("wrong name"), "{error}");
    eprintln!("wrong server name: {error}");

    // Gates on a healthy cluster.
    eventually("nodes Ready", Duration::from_secs(60), || async { empty(ops::nodes_not_ready(&client, &all_nodes).await) }).await;
    eventually("control plane Ready", Duration::from_secs(60), || async { empty(ops::control_plane_not_ready(&client, std::slice::from_ref(&master)).await) }).await;
    eventually("kube-system settled", Duration::from_secs(60), || async { empty(ops::kube_system_not_ready(&client).await) }).await;
    let ghost = format!("k8s-agentpool1-{suffix}-9");
    assert_eq!(ops::nodes_not_ready(&client, std::slice::from_ref(&ghost)).await.unwrap(), [format!("{ghost}: not registered")]);
    let missing = ops::control_plane_not_ready(&client, std::slice::from_ref(&ghost)).await.unwrap();
    assert_eq!(missing.len(), 4, "{missing:?}");
    assert!(missing[0].starts_with(&format!("kube-system/kube-apiserver-{ghost}: not found")), "{missing:?}");

    // cluster-autoscaler: 1 -> 0 -> 1, idempotent.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "kube-system");
    let replicas = |d: Deployment| d.spec.unwrap().replicas.unwrap();
    assert_eq!(ops::scale_autoscaler(&client, 0).await.unwrap(), Some(1));
    assert_eq!(replicas(deployments.get("cluster-autoscaler").await.unwrap()), 0);
    assert_eq!(ops::scale_autoscaler(&client, 0).await.unwrap(), Some(0), "already paused: reports 0, changes nothing");
    eventually("autoscaler pod gone", Duration::from_secs(20), || async {
        let pods: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
        let left = pods.list(&ListParams::default().labels("app=cluster-autoscaler")).await.map_err(|e| e.to_string())?.items.len();
        if left == 0 { Ok(()) } else { Err(format!("{left} pods")) }
    })
    .await;
    assert_eq!(ops::scale_autoscaler(&client, 1).await.unwrap(), Some(0));
    assert_eq!(replicas(deployments.get("cluster-autoscaler").await.unwrap()), 1);

    // kube-proxy on one agent is replaced; the other agent's is left alone.
    let before = eventually("a kube-proxy pod on each node", Duration::from_secs(20), || async {
        let pods = kube_proxy_pods(&client).await;
        if all_nodes.iter().all(|n| pods.iter().filter(|(node, _)| node == n).count() == 1) { Ok(pods) } else { Err(format!("{pods:?}")) }
    })
    .await;
    let on = |pods: &[(String, String)], node: &str| pods.iter().find(|(n, _)| n == node).map(|(_, name)| name.clone());
    assert_eq!(ops::delete_kube_proxy_pods(&client, &agents[0]).await.unwrap(), 1);
    let replaced = eventually("kube-proxy recreated on the agent", Duration::from_secs(20), || async {
        let pods = kube_proxy_pods(&client).await;
        match on(&pods, &agents[0]) {
            Some(name) if Some(&name) != on(&before, &agents[0]).as_ref() => Ok(pods),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(on(&replaced, &agents[1]), on(&before, &agents[1]), "the other agent's kube-proxy is untouched");
    assert_eq!(on(&replaced, &master), on(&before, &master));
    assert_eq!(ops::delete_kube_proxy_pods(&client, &ghost).await.unwrap(), 0);

    // Token secrets: all deleted, then recreated by the token controller under new names.
    let tokens_before = token_secrets(&client).await;
    assert!(!tokens_before.is_empty());
    let deleted = ops::delete_service_account_tokens(&client).await.unwrap();
    assert_eq!(deleted, tokens_before.len(), "every token secret is deleted: {tokens_before:?}");
    let tokens_after = token_secrets(&client).await;
    assert!(tokens_after.is_disjoint(&tokens_before), "{tokens_after:?}");
    eventually("token secrets recreated", Duration::from_secs(20), || async {
        let now = token_secrets(&client).await;
        if now.len() == tokens_before.len() && now.is_disjoint(&tokens_before) { Ok(()) } else { Err(format!("{now:?}")) }
    })
    .await;

    // Rollout restart: every Deployment and DaemonSet gets the stamp, once.
    let stamp = "2025-01-02T03:04:05Z";
    let all_deployments: Api<Deployment> = Api::all(client.clone());
    let all_daemon_sets: Api<DaemonSet> = Api::all(client.clone());
    let workloads = all_deployments.list(&ListParams::default()).await.unwrap().items.len() + all_daemon_sets.list(&ListParams::default()).await.unwrap().items.len();
    assert!(workloads >= 3);
    assert_eq!(ops::rollout_restart_all(&client, stamp).await.unwrap(), workloads);
    let annotation = |meta: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>| {
        meta.and_then(|m| m.annotations).and_then(|a| a.get("kubectl.kubernetes.io/restartedAt").cloned())
    };
    for d in all_deployments.list(&ListParams::default()).await.unwrap().items {
        assert_eq!(annotation(d.spec.unwrap().template.metadata).as_deref(), Some(stamp));
    }
    for d in all_daemon_sets.list(&ListParams::default()).await.unwrap().items {
        assert_eq!(annotation(d.spec.unwrap().template.metadata).as_deref(), Some(stamp));
    }
    assert_eq!(ops::rollout_restart_all(&client, stamp).await.unwrap(), 0, "same stamp again: nothing to restart");
    eventually("kube-system settled after the restart", Duration::from_secs(60), || async {
        let problems = ops::kube_system_not_ready(&client).await.map_err(|e| e.to_string())?;
        let pods = kube_proxy_pods(&client).await;
        // Settled means the restarted pods replaced every old one.
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        if pods.iter().any(|(_, name)| replaced.iter().any(|(_, old)| old == name)) {
            return Err(format!("old kube-proxy pods remain: {pods:?}"));
        }
        Ok(())
    })
    .await;

    // A stopped agent turns NotReady, and kube-system shows it too.
    let stopped = Instant::now();
    lab.fault(Fault::StopNode { node: agents[1].clone() }).unwrap();
    let problems = eventually("the stopped agent NotReady", Duration::from_secs(45), || async {
        let problems = ops::nodes_not_ready(&client, &all_nodes).await.map_err(|e| e.to_string())?;
        if problems.is_empty() { Err("all Ready".into()) } else { Ok(problems) }
    })
    .await;
    let not_ready_after = stopped.elapsed();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].starts_with(&format!("{}: Ready=Unknown", agents[1])), "{problems:?}");
    eprintln!("stopped agent reported NotReady after {not_ready_after:?}: {}", problems[0]);
    let kube_system = eventually("kube-system reports the stopped agent's pods", Duration::from_secs(20), || async {
        let problems = ops::kube_system_not_ready(&client).await.map_err(|e| e.to_string())?;
        if problems.iter().any(|p| p.contains("daemonset kube-system/kube-proxy")) { Ok(problems) } else { Err(problems.join("; ")) }
    })
    .await;
    assert!(kube_system.iter().any(|p| p.contains("NodeNotReady")), "{kube_system:?}");
    assert!(ops::control_plane_not_ready(&client, std::slice::from_ref(&master)).await.unwrap().is_empty(), "the master is unaffected");
    lab.fault(Fault::StartNode { node: agents[1].clone() }).unwrap();
    let started = Instant::now();
    eventually("the agent Ready again", Duration::from_secs(60), || async { empty(ops::nodes_not_ready(&client, &all_nodes).await) }).await;
    eprintln!("restarted agent Ready again after {:?}", started.elapsed());
    eventually("kube-system settled again", Duration::from_secs(60), || async { empty(ops::kube_system_not_ready(&client).await) }).await;

    // No cluster-autoscaler deployed: nothing to scale.
    deployments.delete("cluster-autoscaler", &DeleteParams::default()).await.unwrap();
    assert_eq!(ops::scale_autoscaler(&client, 0).await.unwrap(), None);
    assert_eq!(ops::scale_autoscaler(&client, 1).await.unwrap(), None);

    lab.down().unwrap();
}
