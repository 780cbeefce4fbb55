//! The controllers a real cluster runs in kube-controller-manager, run here inside each
//! apiserver stand-in. Exactly one apiserver leads at a time (a Lease in etcd, as
//! kube-controller-manager's leader election does), and every step is a level-triggered
//! reconcile with compare-and-swap writes, so masters coming and going never fight.
//!
//! - seeding: the objects an AKS Engine cluster starts with (namespaces, service accounts,
//!   the kube-proxy DaemonSet, the cluster-autoscaler and coredns Deployments);
//! - token secrets: one `kubernetes.io/service-account-token` secret per service account,
//!   signed with the apiserver key, recreated when deleted;
//! - workloads: one pod per matching node for each DaemonSet, `replicas` pods for each
//!   Deployment, replaced when the pod template changes (`kubectl rollout restart`);
//! - pod readiness: a pod is Ready while its node is Ready and the token it started with
//!   still verifies against the current signing key;
//! - node lifecycle: a node whose kubelet stopped heartbeating for the grace period turns
//!   Ready=Unknown (kubectl shows NotReady) and its pods not Ready.

use crate::kube::apiserver::ApiState;
use crate::kube::error::ApiError;
use crate::kube::etcd::TxnOutcome;
use crate::kube::store::{now_rfc3339, random_suffix, ResourceType, DAEMON_SETS, DEPLOYMENTS, NAMESPACES, NODES, PODS, SECRETS, SERVICE_ACCOUNTS};
use crate::kube::token::ServiceAccountClaims;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use k8s_openapi::chrono::{DateTime, Duration as ChronoDuration, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Digest;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// Token secrets carry this type.
pub const TOKEN_SECRET_TYPE: &str = "kubernetes.io/service-account-token";
/// Marks pods a workload controller made, naming the workload's uid.
pub const OWNER_UID_ANNOTATION: &str = "lab.certrotate.io/owner-uid";
const LEASE_KEY: &str = "/registry/leases/kube-system/kube-controller-manager";
/// Where the token each pod started with is kept: the stand-in for the secret volume the
/// kubelet mounted into the container, which is not part of the API.
const POD_TOKEN_PREFIX: &str = "/lab/podtokens/";

/// How the controllers behave; part of `ApiserverConfig`. Durations are text ("8s", "500ms").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControllerConfig {
    /// Run controllers in this apiserver at all.
    pub enabled: bool,
    /// Create the objects an AKS Engine cluster starts with, where absent.
    pub seed: bool,
    /// How often each controller reconciles.
    #[serde(with = "duration_text")]
    pub resync_period: Duration,
    /// How long a node may go without a heartbeat before it is marked NotReady
    /// (kube-controller-manager's --node-monitor-grace-period).
    #[serde(with = "duration_text")]
    pub node_monitor_grace_period: Duration,
    /// How long a leader's lease lasts without renewal.
    #[serde(with = "duration_text")]
    pub leader_lease_duration: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            seed: true,
            resync_period: Duration::from_secs(1),
            node_monitor_grace_period: Duration::from_secs(8),
            leader_lease_duration: Duration::from_secs(6),
        }
    }
}

/// Serde for durations written as humantime text.
pub mod duration_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(*value).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("{text:?} is not a duration like \"8s\" or \"500ms\": {e}")))
    }
}

/// Runs the controllers until the task is cancelled.
pub async fn run(state: Arc<ApiState>) {
    let config = state.config.controllers.clone();
    let mut seeded = !config.seed;
    loop {
        if !seeded {
            match seed(&state).await {
                Ok(()) => seeded = true,
                Err(e) => tracing::warn!("seeding cluster objects failed, will retry: {e}"),
            }
        }
        match acquire_leadership(&state).await {
            Ok(true) => {
                if let Err(e) = reconcile(&state).await {
                    tracing::warn!("reconcile failed, will retry: {e}");
                }
            }
            Ok(false) => {}
            Err(e) => tracing::debug!("leader election: {e}"),
        }
        tokio::time::sleep(config.resync_period).await;
    }
}

fn micro_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_time(value: &Value) -> Option<DateTime<Utc>> {
    value.as_str().and_then(|t| DateTime::parse_from_rfc3339(t).ok()).map(|t| t.with_timezone(&Utc))
}

/// Takes or renews the controller lease; true while this apiserver leads.
async fn acquire_leadership(state: &ApiState) -> Result<bool, ApiError> {
    let etcd = state.store.etcd();
    let me = &state.config.node_name;
    let now = Utc::now();
    let lease_seconds = state.config.controllers.leader_lease_duration.as_secs().max(1);
    let current = etcd.get(LEASE_KEY).await?;
    let (expected, mut lease, transitions) = match &current {
        Some(kv) => {
            let lease: Value = serde_json::from_slice(&kv.value).unwrap_or_else(|_| json!({}));
            let holder = lease["spec"]["holderIdentity"].as_str().unwrap_or("");
            let renewed = parse_time(&lease["spec"]["renewTime"]).unwrap_or(DateTime::<Utc>::MIN_UTC);
            let duration = lease["spec"]["leaseDurationSeconds"].as_i64().unwrap_or(lease_seconds as i64);
            if holder != me && renewed + ChronoDuration::seconds(duration) > now {
                return Ok(false);
            }
            let transitions = lease["spec"]["leaseTransitions"].as_i64().unwrap_or(0) + i64::from(holder != me);
            (kv.mod_revision, lease, transitions)
        }
        None => (0, json!({}), 0),
    };
    if lease["spec"]["holderIdentity"].as_str() != Some(me) {
        lease["spec"]["acquireTime"] = json!(micro_time(now));
    }
    lease["apiVersion"] = json!("coordination.k8s.io/v1");
    lease["kind"] = json!("Lease");
    lease["metadata"]["name"] = json!("kube-controller-manager");
    lease["metadata"]["namespace"] = json!("kube-system");
    lease["spec"]["holderIdentity"] = json!(me);
    lease["spec"]["leaseDurationSeconds"] = json!(lease_seconds);
    lease["spec"]["renewTime"] = json!(micro_time(now));
    lease["spec"]["leaseTransitions"] = json!(transitions);
    let bytes = serde_json::to_vec(&lease).expect("JSON value serialises");
    Ok(matches!(etcd.put_if(LEASE_KEY, &bytes, expected).await?, TxnOutcome::Written { .. }))
}

/// Gives up the controller lease if this apiserver holds it (on orderly shutdown).
pub async fn release_leadership(state: &ApiState) {
    let etcd = state.store.etcd();
    if let Ok(Some(kv)) = etcd.get(LEASE_KEY).await {
        let lease: Value = serde_json::from_slice(&kv.value).unwrap_or_else(|_| json!({}));
        if lease["spec"]["holderIdentity"] == state.config.node_name.as_str() {
            let _ = etcd.delete_if(LEASE_KEY, kv.mod_revision).await;
        }
    }
}

fn metadata(name: &str, namespace: Option<&str>, labels: Value) -> Value {
    let mut meta = json!({ "name": name, "labels": labels });
    if let Some(ns) = namespace {
        meta["namespace"] = json!(ns);
    }
    meta
}

fn container(name: &str, image: &str, command: &[&str]) -> Value {
    json!({ "name": name, "image": image, "command": command, "imagePullPolicy": "IfNotPresent", "resources": {} })
}

fn master_selector() -> Value {
    json!({ "node-role.kubernetes.io/master": "" })
}

/// The objects an AKS Engine cluster has from the start; created only where absent.
pub fn seed_objects() -> Vec<(ResourceType, Option<&'static str>, Value)> {
    let mut objects = Vec::new();
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        objects.push((NAMESPACES, None, json!({ "metadata": { "name": ns }, "spec": { "finalizers": ["kubernetes"] }, "status": { "phase": "Active" } })));
        objects.push((SERVICE_ACCOUNTS, Some(ns), json!({ "metadata": { "name": "default", "namespace": ns } })));
    }
    for sa in ["kube-proxy", "cluster-autoscaler", "coredns"] {
        objects.push((SERVICE_ACCOUNTS, Some("kube-system"), json!({ "metadata": metadata(sa, Some("kube-system"), json!({ "addonmanager.kubernetes.io/mode": "Reconcile" })) })));
    }
    let tolerate_all = json!([{ "operator": "Exists" }]);
    objects.push((
        DAEMON_SETS,
        Some("kube-system"),
        json!({
            "metadata": metadata("kube-proxy", Some("kube-system"), json!({ "component": "kube-proxy", "tier": "node", "k8s-app": "kube-proxy", "addonmanager.kubernetes.io/mode": "Reconcile" })),
            "spec": {
                "selector": { "matchLabels": { "k8s-app": "kube-proxy" } },
                "updateStrategy": { "type": "RollingUpdate", "rollingUpdate": { "maxUnavailable": 1 } },
                "template": {
                    "metadata": { "labels": { "component": "kube-proxy", "tier": "node", "k8s-app": "kube-proxy" } },
                    "spec": {
                        "serviceAccountName": "kube-proxy",
                        "hostNetwork": true,
                        "priorityClassName": "system-node-critical",
                        "nodeSelector": { "kubernetes.io/os": "linux" },
                        "tolerations": tolerate_all,
                        "containers": [container("kube-proxy", "mcr.microsoft.com/oss/kubernetes/kube-proxy:v1.30.10", &["kube-proxy", "--config=/var/lib/kube-proxy/config.yaml"])],
                    }
                }
            }
        }),
    ));
    objects.push((
        DEPLOYMENTS,
        Some("kube-system"),
        json!({
            "metadata": metadata("cluster-autoscaler", Some("kube-system"), json!({ "app": "cluster-autoscaler", "addonmanager.kubernetes.io/mode": "EnsureExists" })),
            "spec": {
                "replicas": 1,
                "selector": { "matchLabels": { "app": "cluster-autoscaler" } },
                "strategy": { "type": "RollingUpdate", "rollingUpdate": { "maxSurge": 1, "maxUnavailable": 0 } },
                "template": {
                    "metadata": { "labels": { "app": "cluster-autoscaler" } },
                    "spec": {
                        "serviceAccountName": "cluster-autoscaler",
                        "nodeSelector": master_selector(),
                        "tolerations": [{ "key": "node-role.kubernetes.io/master", "operator": "Equal", "value": "true", "effect": "NoSchedule" }],
                        "containers": [container("cluster-autoscaler", "mcr.microsoft.com/oss/kubernetes/autoscaler/cluster-autoscaler:v1.30.3", &["./cluster-autoscaler", "--cloud-provider=azure"])],
                    }
                }
            }
        }),
    ));
    objects.push((
        DEPLOYMENTS,
        Some("kube-system"),
        json!({
            "metadata": metadata("coredns", Some("kube-system"), json!({ "k8s-app": "kube-dns", "addonmanager.kubernetes.io/mode": "Reconcile" })),
            "spec": {
                "replicas": 1,
                "selector": { "matchLabels": { "k8s-app": "kube-dns" } },
                "strategy": { "type": "RollingUpdate", "rollingUpdate": { "maxSurge": "10%", "maxUnavailable": 0 } },
                "template": {
                    "metadata": { "labels": { "k8s-app": "kube-dns" } },
                    "spec": {
                        "serviceAccountName": "coredns",
                        "nodeSelector": { "kubernetes.io/os": "linux" },
                        "tolerations": tolerate_all,
                        "containers": [container("coredns", "mcr.microsoft.com/oss/kubernetes/coredns:v1.11.1", &["/coredns", "-conf", "/etc/coredns/Corefile"])],
                    }
                }
            }
        }),
    ));
    objects
}

async fn seed(state: &ApiState) -> Result<(), ApiError> {
    for (rt, ns, object) in seed_objects() {
        state.store.create_if_absent(&rt, ns, object).await?;
    }
    Ok(())
}

/// Everything one reconcile pass looks at, read once.
struct Snapshot {
    nodes: Vec<Value>,
    pods: Vec<Value>,
    service_accounts: Vec<Value>,
    secrets: Vec<Value>,
    daemon_sets: Vec<Value>,
    deployments: Vec<Value>,
}

fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

fn namespace_of(object: &Value) -> &str {
    object["metadata"]["namespace"].as_str().unwrap_or_default()
}

fn uid_of(object: &Value) -> &str {
    object["metadata"]["uid"].as_str().unwrap_or_default()
}

async fn reconcile(state: &ApiState) -> Result<(), ApiError> {
    let store = &state.store;
    let snapshot = Snapshot {
        nodes: store.list(&NODES, None).await?.0,
        pods: store.list(&PODS, None).await?.0,
        service_accounts: store.list(&SERVICE_ACCOUNTS, None).await?.0,
        secrets: store.list(&SECRETS, None).await?.0,
        daemon_sets: store.list(&DAEMON_SETS, None).await?.0,
        deployments: store.list(&DEPLOYMENTS, None).await?.0,
    };
    reconcile_token_secrets(state, &snapshot).await?;
    let node_ready = reconcile_node_lifecycle(state, &snapshot).await?;
    reconcile_workloads(state, &snapshot, &node_ready).await?;
    // Pods were created or deleted above: judge readiness on what is stored now.
    let pods = store.list(&PODS, None).await?.0;
    reconcile_pod_readiness(state, &pods, &node_ready).await?;
    reconcile_workload_status(state, &snapshot, &pods).await?;
    forget_tokens_of_deleted_pods(state, &pods).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Token secrets

fn token_secret_of<'a>(secrets: &'a [Value], namespace: &str, service_account: &str) -> Option<&'a Value> {
    secrets.iter().find(|s| {
        s["type"] == TOKEN_SECRET_TYPE
            && namespace_of(s) == namespace
            && s["metadata"]["annotations"]["kubernetes.io/service-account.name"] == service_account
    })
}

async fn reconcile_token_secrets(state: &ApiState, snapshot: &Snapshot) -> Result<(), ApiError> {
    for sa in &snapshot.service_accounts {
        let (ns, name, uid) = (namespace_of(sa), name_of(sa), uid_of(sa));
        if token_secret_of(&snapshot.secrets, ns, name).is_some() {
            continue;
        }
        let secret_name = format!("{name}-token-{}", random_suffix(5));
        let token = state
            .signer
            .sign(&ServiceAccountClaims::new(ns, name, uid, &secret_name))
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let secret = json!({
            "metadata": {
                "name": secret_name,
                "namespace": ns,
                "annotations": { "kubernetes.io/service-account.name": name, "kubernetes.io/service-account.uid": uid },
            },
            "type": TOKEN_SECRET_TYPE,
            "data": {
                "token": B64.encode(&token),
                "ca.crt": B64.encode(&state.ca_pem),
                "namespace": B64.encode(ns),
            }
        });
        state.store.create(&SECRETS, Some(ns), secret).await?;
        tracing::info!(namespace = ns, service_account = name, secret = %secret_name, "created token secret");
        let reference = json!({ "name": secret_name });
        let result = state
            .store
            .modify(&SERVICE_ACCOUNTS, Some(ns), name, |sa| {
                let live: Vec<Value> = sa["secrets"].as_array().cloned().unwrap_or_default();
                // Keep only references to secrets that still exist, then add the new one.
                let mut kept: Vec<Value> = live
                    .into_iter()
                    .filter(|r| snapshot.secrets.iter().any(|s| namespace_of(s) == ns && name_of(s) == r["name"].as_str().unwrap_or("")))
                    .collect();
                kept.push(reference.clone());
                sa["secrets"] = Value::Array(kept);
                Ok(true)
            })
            .await;
        // The service account may have been deleted meanwhile; its secret is then moot.
        result.filter_not_found()?;
    }
    Ok(())
}

trait IgnoreNotFound {
    fn filter_not_found(self) -> Result<(), ApiError>;
}

impl<T> IgnoreNotFound for Result<T, ApiError> {
    fn filter_not_found(self) -> Result<(), ApiError> {
        match self {
            Ok(_) => Ok(()),
            Err(e) if e.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Node lifecycle

fn ready_condition(node: &Value) -> Option<&Value> {
    node["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Ready")
}

/// Marks nodes with stale heartbeats Unknown; returns each node's readiness afterwards.
async fn reconcile_node_lifecycle(state: &ApiState, snapshot: &Snapshot) -> Result<HashMap<String, bool>, ApiError> {
    let grace = ChronoDuration::from_std(state.config.controllers.node_monitor_grace_period).unwrap_or(ChronoDuration::seconds(8));
    let now = Utc::now();
    let mut readiness = HashMap::new();
    for node in &snapshot.nodes {
        let name = name_of(node).to_owned();
        let condition = ready_condition(node);
        let heartbeat = condition
            .and_then(|c| parse_time(&c["lastHeartbeatTime"]))
            .or_else(|| parse_time(&node["metadata"]["creationTimestamp"]))
            .unwrap_or(now);
        let status = condition.and_then(|c| c["status"].as_str()).unwrap_or("Unknown");
        if now - heartbeat <= grace {
            readiness.insert(name, status == "True");
            continue;
        }
        readiness.insert(name.clone(), false);
        if status == "Unknown" {
            continue;
        }
        let stamp = now_rfc3339();
        tracing::info!(node = %name, "no heartbeat within the grace period: marking NotReady");
        state
            .store
            .modify(&NODES, None, &name, |node| {
                let Some(conditions) = node["status"]["conditions"].as_array_mut() else { return Ok(false) };
                let mut changed = false;
                for c in conditions.iter_mut() {
                    if c["status"] != "Unknown" {
                        c["status"] = json!("Unknown");
                        c["reason"] = json!("NodeStatusUnknown");
                        c["message"] = json!("Kubelet stopped posting node status.");
                        c["lastTransitionTime"] = json!(stamp);
                        changed = true;
                    }
                }
                Ok(changed)
            })
            .await
            .filter_not_found()?;
    }
    Ok(readiness)
}

// ---------------------------------------------------------------------------------------
// Workloads

/// A DaemonSet or Deployment as the workload controller sees it.
struct Workload<'a> {
    object: &'a Value,
    rt: ResourceType,
    template_hash: String,
}

impl<'a> Workload<'a> {
    fn new(object: &'a Value, rt: ResourceType) -> Self {
        let template = serde_json::to_vec(&object["spec"]["template"]).unwrap_or_default();
        let digest = sha2::Sha256::digest(&template);
        // Kubernetes' pod-template-hash is a short, DNS-safe string.
        let template_hash: String = hex::encode(digest).chars().take(10).collect();
        Self { object, rt, template_hash }
    }

    fn hash_label(&self) -> &'static str {
        if self.rt == DAEMON_SETS { "controller-revision-hash" } else { "pod-template-hash" }
    }

    fn pods<'p>(&self, pods: &'p [Value]) -> Vec<&'p Value> {
        let uid = uid_of(self.object);
        pods.iter().filter(|p| p["metadata"]["annotations"][OWNER_UID_ANNOTATION] == uid).collect()
    }

    fn is_current(&self, pod: &Value) -> bool {
        pod["metadata"]["labels"][self.hash_label()] == self.template_hash.as_str()
    }

    fn node_selector_matches(&self, node: &Value) -> bool {
        let selector = &self.object["spec"]["template"]["spec"]["nodeSelector"];
        let labels = &node["metadata"]["labels"];
        selector.as_object().is_none_or(|s| s.iter().all(|(k, v)| &labels[k] == v))
    }

    fn pod_for(&self, node: Option<&Value>) -> Value {
        let ns = namespace_of(self.object);
        let name = name_of(self.object);
        let template = &self.object["spec"]["template"];
        let (pod_name, owner) = if self.rt == DAEMON_SETS {
            (format!("{name}-{}", random_suffix(5)), json!({ "apiVersion": "apps/v1", "kind": "DaemonSet", "name": name, "uid": uid_of(self.object), "controller": true, "blockOwnerDeletion": true }))
        } else {
            let replica_set = format!("{name}-{}", self.template_hash);
            (format!("{replica_set}-{}", random_suffix(5)), json!({ "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": replica_set, "uid": uid_of(self.object), "controller": true, "blockOwnerDeletion": true }))
        };
        let mut labels = template["metadata"]["labels"].clone();
        if !labels.is_object() {
            labels = json!({});
        }
        labels[self.hash_label()] = json!(self.template_hash);
        let mut annotations = template["metadata"]["annotations"].clone();
        if !annotations.is_object() {
            annotations = json!({});
        }
        annotations[OWNER_UID_ANNOTATION] = json!(uid_of(self.object));
        let mut spec = template["spec"].clone();
        let service_account = spec["serviceAccountName"].as_str().unwrap_or("default").to_owned();
        spec["serviceAccountName"] = json!(service_account);
        spec["serviceAccount"] = json!(service_account);
        spec["restartPolicy"] = json!("Always");
        spec["schedulerName"] = json!("default-scheduler");
        let mut pod = json!({
            "metadata": { "name": pod_name, "namespace": ns, "labels": labels, "annotations": annotations, "ownerReferences": [owner] },
            "spec": spec,
            "status": { "phase": "Pending", "qosClass": "BestEffort" },
        });
        if let Some(node) = node {
            bind(&mut pod, node);
        }
        pod
    }
}

fn internal_ip(node: &Value) -> String {
    node["status"]["addresses"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["type"] == "InternalIP"))
        .and_then(|a| a["address"].as_str())
        .unwrap_or("")
        .to_owned()
}

/// Places a pod on a node and marks it running there (containers "start" at once).
fn bind(pod: &mut Value, node: &Value) {
    let host_ip = internal_ip(node);
    let pod_ip = if pod["spec"]["hostNetwork"] == true || host_ip.is_empty() {
        host_ip.clone()
    } else {
        let digest = sha2::Sha256::digest(name_of(pod).as_bytes());
        format!("10.244.{}.{}", digest[0], digest[1].max(2))
    };
    let now = now_rfc3339();
    pod["spec"]["nodeName"] = json!(name_of(node));
    let statuses: Vec<Value> = pod["spec"]["containers"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| json!({ "name": c["name"], "image": c["image"], "imageID": "", "ready": false, "started": true, "restartCount": 0, "state": { "running": { "startedAt": now } } }))
                .collect()
        })
        .unwrap_or_default();
    pod["status"] = json!({
        "phase": "Running",
        "hostIP": host_ip,
        "podIP": pod_ip,
        "startTime": now,
        "qosClass": "BestEffort",
        "conditions": [
            { "type": "Initialized", "status": "True", "lastTransitionTime": now },
            { "type": "Ready", "status": "False", "lastTransitionTime": now, "reason": "ContainersNotReady" },
            { "type": "ContainersReady", "status": "False", "lastTransitionTime": now, "reason": "ContainersNotReady" },
            { "type": "PodScheduled", "status": "True", "lastTransitionTime": now },
        ],
        "containerStatuses": statuses,
    });
}

/// Creates a pod and "mounts" its service-account token (what the kubelet would put in the
/// container), taken from the token secret as it is right now.
async fn start_pod(state: &ApiState, pod: Value, secrets: &[Value]) -> Result<(), ApiError> {
    let ns = namespace_of(&pod).to_owned();
    let service_account = pod["spec"]["serviceAccountName"].as_str().unwrap_or("default").to_owned();
    let created = state.store.create(&PODS, Some(&ns), pod).await?;
    mount_token(state, &created, secrets).await?;
    tracing::info!(namespace = %ns, pod = name_of(&created), node = created["spec"]["nodeName"].as_str().unwrap_or("<unscheduled>"), service_account, "started pod");
    Ok(())
}

async fn mount_token(state: &ApiState, pod: &Value, secrets: &[Value]) -> Result<bool, ApiError> {
    let ns = namespace_of(pod);
    let service_account = pod["spec"]["serviceAccountName"].as_str().unwrap_or("default");
    let token = token_secret_of(secrets, ns, service_account)
        .and_then(|s| s["data"]["token"].as_str())
        .and_then(|t| B64.decode(t).ok());
    let Some(token) = token else { return Ok(false) };
    let key = format!("{POD_TOKEN_PREFIX}{ns}/{}", name_of(pod));
    state.store.etcd().put_if(&key, &token, 0).await?;
    Ok(true)
}

fn pick_node<'n>(candidates: &[&'n Value], node_ready: &HashMap<String, bool>, load: &BTreeMap<String, usize>) -> Option<&'n Value> {
    candidates
        .iter()
        .copied()
        .min_by_key(|n| (!node_ready.get(name_of(n)).copied().unwrap_or(false), load.get(name_of(n)).copied().unwrap_or(0), name_of(n).to_owned()))
}

async fn delete_pod(state: &ApiState, pod: &Value) -> Result<(), ApiError> {
    tracing::info!(namespace = namespace_of(pod), pod = name_of(pod), "deleting pod");
    state.store.delete(&PODS, Some(namespace_of(pod)), name_of(pod), None).await.filter_not_found()
}

async fn reconcile_workloads(state: &ApiState, snapshot: &Snapshot, node_ready: &HashMap<String, bool>) -> Result<(), ApiError> {
    let node_names: Vec<&str> = snapshot.nodes.iter().map(name_of).collect();
    // Fresh secrets: the token controller may just have created some.
    let secrets = state.store.list(&SECRETS, None).await?.0;
    for ds in &snapshot.daemon_sets {
        let workload = Workload::new(ds, DAEMON_SETS);
        let pods = workload.pods(&snapshot.pods);
        for node in snapshot.nodes.iter().filter(|n| workload.node_selector_matches(n)) {
            let on_node: Vec<&&Value> = pods.iter().filter(|p| p["spec"]["nodeName"] == name_of(node)).collect();
            let mut current = on_node.iter().filter(|p| workload.is_current(p));
            let keep = current.next();
            for extra in current.chain(on_node.iter().filter(|p| !workload.is_current(p))) {
                delete_pod(state, extra).await?;
            }
            if keep.is_none() {
                start_pod(state, workload.pod_for(Some(node)), &secrets).await?;
            }
        }
        for pod in &pods {
            let node = pod["spec"]["nodeName"].as_str().unwrap_or("");
            let still_wanted = snapshot.nodes.iter().any(|n| name_of(n) == node && workload.node_selector_matches(n));
            if !still_wanted {
                delete_pod(state, pod).await?;
            }
        }
    }
    for deployment in &snapshot.deployments {
        let workload = Workload::new(deployment, DEPLOYMENTS);
        let replicas = deployment["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
        let pods = workload.pods(&snapshot.pods);
        let (current, outdated): (Vec<&Value>, Vec<&Value>) = pods.iter().partition(|p| workload.is_current(p));
        // Pods on nodes that no longer exist are gone for good, like pods of a deleted VM.
        let (alive, orphaned): (Vec<&Value>, Vec<&Value>) = current
            .into_iter()
            .partition(|p| p["spec"]["nodeName"].as_str().is_none_or(|n| node_names.contains(&n)));
        for pod in outdated.iter().chain(orphaned.iter()) {
            delete_pod(state, pod).await?;
        }
        for pod in alive.iter().skip(replicas) {
            delete_pod(state, pod).await?;
        }
        let candidates: Vec<&Value> = snapshot.nodes.iter().filter(|n| workload.node_selector_matches(n)).collect();
        let mut load: BTreeMap<String, usize> = BTreeMap::new();
        for pod in alive.iter().take(replicas) {
            if let Some(node) = pod["spec"]["nodeName"].as_str() {
                *load.entry(node.to_owned()).or_default() += 1;
            } else if let Some(node) = pick_node(&candidates, node_ready, &load) {
                // A pending pod whose node has appeared: schedule it now.
                let node = node.clone();
                *load.entry(name_of(&node).to_owned()).or_default() += 1;
                state
                    .store
                    .modify(&PODS, Some(namespace_of(pod)), name_of(pod), |p| {
                        if p["spec"]["nodeName"].is_string() {
                            return Ok(false);
                        }
                        bind(p, &node);
                        Ok(true)
                    })
                    .await
                    .filter_not_found()?;
            }
        }
        for _ in alive.len().min(replicas)..replicas {
            let node = pick_node(&candidates, node_ready, &load);
            if let Some(node) = node {
                *load.entry(name_of(node).to_owned()).or_default() += 1;
            }
            start_pod(state, workload.pod_for(node), &secrets).await?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Pod readiness

/// The tokens pods started with, by "namespace/name", read in one range.
async fn mounted_tokens(state: &ApiState) -> Result<HashMap<String, Vec<u8>>, ApiError> {
    let range = state.store.etcd().range(POD_TOKEN_PREFIX, true).await?;
    Ok(range.kvs.into_iter().map(|kv| (kv.key.trim_start_matches(POD_TOKEN_PREFIX).to_owned(), kv.value)).collect())
}

/// Whether the token a pod started with verifies against the current signing key. Pods
/// that started while their token secret was missing get it now (the kubelet retries the
/// mount). `verdicts` remembers tokens already checked: many pods share one token.
async fn pod_token_valid(
    state: &ApiState,
    pod: &Value,
    secrets: &[Value],
    mounted: &HashMap<String, Vec<u8>>,
    verdicts: &mut HashMap<Vec<u8>, bool>,
) -> Result<bool, ApiError> {
    let id = format!("{}/{}", namespace_of(pod), name_of(pod));
    let token = match mounted.get(&id) {
        Some(token) => token.clone(),
        None => {
            if !mount_token(state, pod, secrets).await? {
                return Ok(false);
            }
            match state.store.etcd().get(&format!("{POD_TOKEN_PREFIX}{id}")).await? {
                Some(kv) => kv.value,
                None => return Ok(false),
            }
        }
    };
    if let Some(verdict) = verdicts.get(&token) {
        return Ok(*verdict);
    }
    let verdict = std::str::from_utf8(&token).is_ok_and(|t| state.signer.verify(t).is_ok());
    verdicts.insert(token, verdict);
    Ok(verdict)
}

fn set_pod_ready(pod: &mut Value, ready: bool, reason: &str) -> bool {
    let status = if ready { "True" } else { "False" };
    let now = now_rfc3339();
    let mut changed = false;
    if let Some(conditions) = pod["status"]["conditions"].as_array_mut() {
        for c in conditions.iter_mut().filter(|c| c["type"] == "Ready" || c["type"] == "ContainersReady") {
            if c["status"] != status {
                c["status"] = json!(status);
                c["lastTransitionTime"] = json!(now);
                changed = true;
            }
            if ready {
                if let Some(map) = c.as_object_mut() {
                    changed |= map.remove("reason").is_some();
                }
            } else if c["reason"] != reason {
                c["reason"] = json!(reason);
                changed = true;
            }
        }
    }
    if let Some(statuses) = pod["status"]["containerStatuses"].as_array_mut() {
        for s in statuses.iter_mut() {
            if s["ready"] != ready {
                s["ready"] = json!(ready);
                changed = true;
            }
        }
    }
    changed
}

async fn reconcile_pod_readiness(state: &ApiState, pods: &[Value], node_ready: &HashMap<String, bool>) -> Result<(), ApiError> {
    let secrets = state.store.list(&SECRETS, None).await?.0;
    let mounted = mounted_tokens(state).await?;
    let mut verdicts = HashMap::new();
    for pod in pods {
        let Some(node) = pod["spec"]["nodeName"].as_str() else { continue };
        let node_is_ready = node_ready.get(node).copied().unwrap_or(false);
        let managed = pod["metadata"]["annotations"][OWNER_UID_ANNOTATION].is_string();
        let (ready, reason) = if !node_is_ready {
            (false, "NodeNotReady")
        } else if managed {
            if pod_token_valid(state, pod, &secrets, &mounted, &mut verdicts).await? { (true, "") } else { (false, "ServiceAccountTokenInvalid") }
        } else {
            // Static pods: their kubelet reports readiness itself.
            continue;
        };
        let mut probe = pod.clone();
        if !set_pod_ready(&mut probe, ready, reason) {
            continue;
        }
        state
            .store
            .modify(&PODS, Some(namespace_of(pod)), name_of(pod), |p| Ok(set_pod_ready(p, ready, reason)))
            .await
            .filter_not_found()?;
    }
    Ok(())
}

fn pod_ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

async fn reconcile_workload_status(state: &ApiState, snapshot: &Snapshot, pods: &[Value]) -> Result<(), ApiError> {
    for ds in &snapshot.daemon_sets {
        let workload = Workload::new(ds, DAEMON_SETS);
        let owned = workload.pods(pods);
        let desired = snapshot.nodes.iter().filter(|n| workload.node_selector_matches(n)).count();
        let ready = owned.iter().filter(|p| pod_ready(p)).count();
        let updated = owned.iter().filter(|p| workload.is_current(p)).count();
        let status = json!({
            "currentNumberScheduled": owned.len(),
            "desiredNumberScheduled": desired,
            "numberMisscheduled": 0,
            "numberReady": ready,
            "numberAvailable": ready,
            "numberUnavailable": desired.saturating_sub(ready),
            "updatedNumberScheduled": updated,
            "observedGeneration": ds["metadata"]["generation"].as_i64().unwrap_or(1),
        });
        write_status(state, &DAEMON_SETS, ds, status).await?;
    }
    for deployment in &snapshot.deployments {
        let workload = Workload::new(deployment, DEPLOYMENTS);
        let owned = workload.pods(pods);
        let ready = owned.iter().filter(|p| pod_ready(p)).count();
        let updated = owned.iter().filter(|p| workload.is_current(p)).count();
        let replicas = deployment["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
        let available = if ready >= replicas { "True" } else { "False" };
        let mut status = json!({
            "replicas": owned.len(),
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "observedGeneration": deployment["metadata"]["generation"].as_i64().unwrap_or(1),
            "conditions": [
                { "type": "Available", "status": available, "reason": if available == "True" { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" } },
                { "type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable" },
            ],
        });
        if ready < replicas {
            status["unavailableReplicas"] = json!(replicas - ready);
        }
        write_status(state, &DEPLOYMENTS, deployment, status).await?;
    }
    Ok(())
}

/// Writes a workload's status when it differs, keeping condition timestamps stable.
async fn write_status(state: &ApiState, rt: &ResourceType, object: &Value, status: Value) -> Result<(), ApiError> {
    let comparable = |s: &Value| {
        let mut s = s.clone();
        if let Some(conditions) = s["conditions"].as_array_mut() {
            for c in conditions {
                if let Some(map) = c.as_object_mut() {
                    map.remove("lastTransitionTime");
                    map.remove("lastUpdateTime");
                }
            }
        }
        s
    };
    if comparable(&object["status"]) == status {
        return Ok(());
    }
    let now = now_rfc3339();
    let mut stamped = status;
    if let Some(conditions) = stamped["conditions"].as_array_mut() {
        for c in conditions {
            c["lastTransitionTime"] = json!(now);
            c["lastUpdateTime"] = json!(now);
        }
    }
    state
        .store
        .modify(rt, Some(namespace_of(object)), name_of(object), |o| {
            o["status"] = stamped.clone();
            Ok(true)
        })
        .await
        .filter_not_found()
}

async fn forget_tokens_of_deleted_pods(state: &ApiState, pods: &[Value]) -> Result<(), ApiError> {
    let mounted = state.store.etcd().range(POD_TOKEN_PREFIX, true).await?;
    for kv in mounted.kvs {
        let id = kv.key.trim_start_matches(POD_TOKEN_PREFIX);
        let exists = pods.iter().any(|p| format!("{}/{}", namespace_of(p), name_of(p)) == id);
        if !exists {
            state.store.etcd().delete_if(&kv.key, kv.mod_revision).await?;
        }
    }
    Ok(())
}
