//! The kubelet stand-in every lab node runs. Like the real kubelet it authenticates with
//! /var/lib/kubelet/kubeconfig (preferring /var/lib/kubelet/pki/kubelet-client-current.pem
//! when that file exists), registers its Node and heartbeats the Ready condition. On masters
//! it also reports the control-plane static pods, Ready only while what they stand for is
//! healthy. Credentials are read from the node's disk on every heartbeat, so a rotated,
//! foreign or expired certificate takes effect at once: heartbeats stop reaching the API and
//! the apiserver's node-lifecycle controller marks the node NotReady after its grace period.

use crate::kube::controller::duration_text;
use crate::kube::credentials;
use crate::kube::discovery::GIT_VERSION;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::chrono::{SecondsFormat, Utc};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// Which kind of node a kubelet runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    Master,
    Agent,
}

impl NodeRole {
    fn as_str(self) -> &'static str {
        match self {
            NodeRole::Master => "master",
            NodeRole::Agent => "agent",
        }
    }
}

fn default_kubeconfig() -> PathBuf {
    PathBuf::from("/var/lib/kubelet/kubeconfig")
}

fn default_heartbeat() -> Duration {
    Duration::from_secs(2)
}

/// How one kubelet is configured; lab-infra writes it as JSON for `lab kubelet --config`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeletConfig {
    /// The node's name (k8s-master-<suffix>-0, k8s-agentpool1-<suffix>-0, ...).
    pub node_name: String,
    pub role: NodeRole,
    /// The node's filesystem root on the host; absolute paths inside the kubeconfig and
    /// below (/etc/kubernetes/certs/client.crt, ...) are resolved under it.
    pub root: PathBuf,
    /// The kubeconfig path as the node sees it.
    #[serde(default = "default_kubeconfig")]
    pub kubeconfig: PathBuf,
    /// Replaces the kubeconfig's server URL (e.g. when the cluster name does not resolve).
    #[serde(default)]
    pub server: Option<String>,
    /// The name the apiserver certificate is checked against when `server` is an address.
    #[serde(default)]
    pub tls_server_name: Option<String>,
    /// The node's InternalIP.
    pub node_ip: IpAddr,
    /// On masters: the local apiserver whose /readyz decides the kube-apiserver static pod's
    /// readiness; defaults to https://<node_ip>:443.
    #[serde(default)]
    pub local_apiserver: Option<String>,
    /// Extra node labels (agentpool=..., ...).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// How often the Node status is posted (kubelet's --node-status-update-frequency).
    #[serde(default = "default_heartbeat", with = "duration_text")]
    pub heartbeat_interval: Duration,
}

impl KubeletConfig {
    /// A node's kubelet as AKS Engine sets it up: /var/lib/kubelet/kubeconfig under `root`
    /// ("/" when running inside the node's mount namespace), AKS Engine's labels, a 2 s
    /// heartbeat. Masters probe their own apiserver at https://<ip>:443.
    pub fn aks_engine(root: &Path, node_name: &str, role: NodeRole, ip: IpAddr) -> Self {
        Self {
            node_name: node_name.to_owned(),
            role,
            root: root.to_owned(),
            kubeconfig: default_kubeconfig(),
            server: None,
            tls_server_name: None,
            node_ip: ip,
            local_apiserver: None,
            labels: BTreeMap::new(),
            heartbeat_interval: default_heartbeat(),
        }
    }

    /// Reads the config from a JSON file.
    pub fn from_file(path: &Path) -> Result<Self, crate::kube::apiserver::ConfigFileError> {
        crate::kube::apiserver::read_config_file(path, "kubelet config")
    }
}

/// Why a heartbeat could not be made. The kubelet keeps trying; these are for logs and tests.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("kubeconfig {path}: {reason}")]
    Kubeconfig { path: PathBuf, reason: String },
    #[error("client credentials: {0}")]
    Credentials(#[from] credentials::CredentialError),
    #[error("building the API client: {0}")]
    Client(String),
    /// The full cause chain is shown: kube-rs alone says only "client error (Connect)" when
    /// the real reason is an untrusted certificate.
    #[error("API request failed: {}", crate::kube::etcd::error_chain(.0))]
    Api(#[from] kube::Error),
}

/// The control-plane static pods a master's kubelet reports, by component.
pub const STATIC_POD_COMPONENTS: [&str; 4] = ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-addon-manager"];

/// `path` as seen on the node, resolved on the host under `root`.
pub fn node_path(root: &Path, path: &Path) -> PathBuf {
    let relative: PathBuf = path.components().filter(|c| !matches!(c, Component::RootDir | Component::Prefix(_))).collect();
    root.join(relative)
}

/// The client credentials and endpoint a kubelet uses right now, read from the node's disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletCredentials {
    pub server: String,
    pub tls_server_name: Option<String>,
    /// Trusted CA certificates (DER).
    pub ca: Vec<Vec<u8>>,
    /// Host paths of the client certificate and key (the same file for kubelet-client-current.pem).
    pub client_certificate: PathBuf,
    pub client_key: PathBuf,
}

fn kubeconfig_error(path: &Path, reason: impl ToString) -> KubeletError {
    KubeletError::Kubeconfig { path: path.to_owned(), reason: reason.to_string() }
}

/// Reads the kubeconfig (and the files it names) as the kubelet would.
pub fn read_credentials(config: &KubeletConfig) -> Result<KubeletCredentials, KubeletError> {
    let path = node_path(&config.root, &config.kubeconfig);
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).map_err(|e| kubeconfig_error(&path, e))?;
    let context_name = kubeconfig
        .current_context
        .clone()
        .or_else(|| kubeconfig.contexts.first().map(|c| c.name.clone()))
        .ok_or_else(|| kubeconfig_error(&path, "has no contexts"))?;
    let context = kubeconfig
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.clone())
        .ok_or_else(|| kubeconfig_error(&path, format!("current context {context_name:?} is not defined")))?;
    let cluster = kubeconfig
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| kubeconfig_error(&path, format!("cluster {:?} is not defined", context.cluster)))?;
    let user_name = context.user.clone().unwrap_or_default();
    let user = kubeconfig
        .auth_infos
        .iter()
        .find(|u| u.name == user_name)
        .and_then(|u| u.auth_info.clone())
        .ok_or_else(|| kubeconfig_error(&path, format!("user {user_name:?} is not defined")))?;

    let server = config
        .server
        .clone()
        .or(cluster.server.clone())
        .ok_or_else(|| kubeconfig_error(&path, "the cluster has no server"))?;
    let ca_pem = match (&cluster.certificate_authority_data, &cluster.certificate_authority) {
        (Some(data), _) => B64.decode(data.trim()).map_err(|e| kubeconfig_error(&path, format!("certificate-authority-data: {e}")))?,
        (None, Some(file)) => {
            let file = node_path(&config.root, Path::new(file));
            std::fs::read(&file).map_err(|e| kubeconfig_error(&path, format!("certificate-authority {}: {e}", file.display())))?
        }
        (None, None) => return Err(kubeconfig_error(&path, "no certificate-authority to trust the apiserver with")),
    };
    use rustls::pki_types::pem::PemObject;
    let ca: Vec<Vec<u8>> = rustls::pki_types::CertificateDer::pem_slice_iter(&ca_pem)
        .filter_map(Result::ok)
        .map(|c| c.as_ref().to_vec())
        .collect();
    if ca.is_empty() {
        return Err(kubeconfig_error(&path, "certificate-authority holds no certificate"));
    }
    // The kubelet prefers its rotated client certificate when present.
    let current = node_path(&config.root, Path::new("/var/lib/kubelet/pki/kubelet-client-current.pem"));
    let (client_certificate, client_key) = if current.exists() {
        (current.clone(), current)
    } else {
        let cert = user.client_certificate.clone().ok_or_else(|| kubeconfig_error(&path, format!("user {user_name:?} has no client-certificate")))?;
        let key = user.client_key.clone().ok_or_else(|| kubeconfig_error(&path, format!("user {user_name:?} has no client-key")))?;
        (node_path(&config.root, Path::new(&cert)), node_path(&config.root, Path::new(&key)))
    };
    // Fail here, naming the file, rather than deep inside the TLS stack.
    credentials::load_certs(&client_certificate)?;
    credentials::load_key(&client_key)?;
    Ok(KubeletCredentials {
        server,
        tls_server_name: config.tls_server_name.clone().or(cluster.tls_server_name.clone()),
        ca,
        client_certificate,
        client_key,
    })
}

/// A kube-rs client with the node's current credentials.
pub fn client(credentials: &KubeletCredentials) -> Result<kube::Client, KubeletError> {
    credentials::install_default_provider();
    let url = credentials.server.parse().map_err(|e| KubeletError::Client(format!("server URL {:?}: {e}", credentials.server)))?;
    let mut config = kube::Config::new(url);
    config.root_cert = Some(credentials.ca.clone());
    config.tls_server_name = credentials.tls_server_name.clone();
    config.connect_timeout = Some(Duration::from_secs(3));
    config.read_timeout = Some(Duration::from_secs(5));
    config.auth_info.client_certificate = Some(credentials.client_certificate.display().to_string());
    config.auth_info.client_key = Some(credentials.client_key.display().to_string());
    kube::Client::try_from(config).map_err(|e| KubeletError::Client(e.to_string()))
}

/// Runs the kubelet until `shutdown` completes. Failures are logged and retried; a kubelet
/// never exits because the API is unreachable.
pub async fn run(config: KubeletConfig, shutdown: impl Future<Output = ()>) -> Result<(), KubeletError> {
    tokio::pin!(shutdown);
    let mut last_error: Option<String> = None;
    loop {
        match heartbeat(&config).await {
            Ok(()) => {
                if last_error.take().is_some() {
                    tracing::info!(node = %config.node_name, "heartbeats reach the API again");
                }
            }
            Err(e) => {
                let text = e.to_string();
                if last_error.as_deref() != Some(text.as_str()) {
                    tracing::warn!(node = %config.node_name, "heartbeat failed: {text}");
                }
                last_error = Some(text);
            }
        }
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tokio::time::sleep(config.heartbeat_interval) => {}
        }
    }
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn node_labels(config: &KubeletConfig) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = [
        ("kubernetes.io/os", "linux"),
        ("beta.kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", "amd64"),
        ("beta.kubernetes.io/arch", "amd64"),
        ("kubernetes.io/role", config.role.as_str()),
        ("kubernetes.azure.com/role", config.role.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    labels.insert("kubernetes.io/hostname".to_owned(), config.node_name.clone());
    labels.insert(format!("node-role.kubernetes.io/{}", config.role.as_str()), String::new());
    labels.extend(config.labels.clone());
    labels
}

fn new_node(config: &KubeletConfig) -> Result<Node, KubeletError> {
    let mut node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": config.node_name, "labels": node_labels(config) },
        "spec": {},
    });
    if config.role == NodeRole::Master {
        node["spec"]["taints"] = json!([{ "key": "node-role.kubernetes.io/master", "value": "true", "effect": "NoSchedule" }]);
    }
    serde_json::from_value(node).map_err(|e| KubeletError::Client(format!("building the Node object: {e}")))
}

/// The status this kubelet reports; transition times are kept from `current` where the
/// status did not change.
fn node_status(config: &KubeletConfig, current: &Value) -> Value {
    let stamp = now();
    let transition = |kind: &str, status: &str| -> String {
        current["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == kind && c["status"] == status))
            .and_then(|c| c["lastTransitionTime"].as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| stamp.clone())
    };
    let condition = |kind: &str, status: &str, reason: &str, message: &str| {
        json!({
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": stamp,
            "lastTransitionTime": transition(kind, status),
        })
    };
    json!({
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            condition("Ready", "True", "KubeletReady", "kubelet is posting ready status. AppArmor enabled"),
        ],
        "addresses": [
            { "type": "Hostname", "address": config.node_name },
            { "type": "InternalIP", "address": config.node_ip.to_string() },
        ],
        "capacity": { "cpu": "2", "memory": "8148132Ki", "pods": "110", "ephemeral-storage": "30308240Ki" },
        "allocatable": { "cpu": "1900m", "memory": "6571172Ki", "pods": "110", "ephemeral-storage": "27932073938" },
        "daemonEndpoints": { "kubeletEndpoint": { "Port": 10250 } },
        "nodeInfo": {
            "machineID": format!("{:032x}", fxhash(&config.node_name)),
            "systemUUID": uuid::Uuid::from_u128(fxhash(&format!("system-uuid/{}", config.node_name))).to_string(),
            "bootID": "",
            "kernelVersion": "5.4.0-1109-azure",
            "osImage": "Ubuntu 18.04.6 LTS",
            "containerRuntimeVersion": "containerd://1.7.20",
            "kubeletVersion": GIT_VERSION,
            "kubeProxyVersion": GIT_VERSION,
            "operatingSystem": "linux",
            "architecture": "amd64",
        },
    })
}

fn fxhash(text: &str) -> u128 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(text.as_bytes());
    u128::from_be_bytes(digest[..16].try_into().expect("a SHA-256 digest has 32 bytes"))
}

/// One heartbeat: (re)read credentials, make sure the Node exists, post its status, and on
/// masters report the static pods.
pub async fn heartbeat(config: &KubeletConfig) -> Result<(), KubeletError> {
    let credentials = read_credentials(config)?;
    let client = client(&credentials)?;
    let nodes: Api<Node> = Api::all(client.clone());
    let current = match nodes.get_opt(&config.node_name).await? {
        Some(node) => serde_json::to_value(node).unwrap_or_default(),
        None => {
            let created = nodes.create(&PostParams::default(), &new_node(config)?).await?;
            tracing::info!(node = %config.node_name, "registered node");
            serde_json::to_value(created).unwrap_or_default()
        }
    };
    let status = json!({ "status": node_status(config, &current) });
    nodes.patch_status(&config.node_name, &PatchParams::default(), &Patch::Merge(&status)).await?;
    if config.role == NodeRole::Master {
        report_static_pods(config, &client).await?;
    }
    Ok(())
}

/// Whether this master's apiserver answers /readyz with 200 over TLS trusted by the node's
/// ca.crt.
pub async fn local_apiserver_ready(config: &KubeletConfig) -> bool {
    let ca = node_path(&config.root, Path::new("/etc/kubernetes/certs/ca.crt"));
    let Ok(tls) = credentials::client_config(&ca, None) else { return false };
    let Ok(http) = reqwest::Client::builder().use_preconfigured_tls(tls).timeout(Duration::from_secs(3)).build() else {
        return false;
    };
    let base = config.local_apiserver.clone().unwrap_or_else(|| match config.node_ip {
        IpAddr::V6(ip) => format!("https://[{ip}]:443"),
        IpAddr::V4(ip) => format!("https://{ip}:443"),
    });
    match http.get(format!("{}/readyz", base.trim_end_matches('/'))).send().await {
        Ok(response) => response.status().is_success(),
        Err(_) => false,
    }
}

fn static_pod(config: &KubeletConfig, component: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": format!("{component}-{}", config.node_name),
            "namespace": "kube-system",
            "labels": { "component": component, "tier": "control-plane" },
            "annotations": {
                "kubernetes.io/config.source": "file",
                "kubernetes.io/config.mirror": format!("{:x}", fxhash(component) as u64),
            },
        },
        "spec": {
            "nodeName": config.node_name,
            "hostNetwork": true,
            "priorityClassName": "system-node-critical",
            "containers": [{ "name": component, "image": format!("mcr.microsoft.com/oss/kubernetes/{component}:{GIT_VERSION}") }],
        },
    })
}

fn static_pod_status(config: &KubeletConfig, component: &str, ready: bool, current: &Value) -> Value {
    let stamp = now();
    let status = if ready { "True" } else { "False" };
    let transition = current["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready" && c["status"] == status))
        .and_then(|c| c["lastTransitionTime"].as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| stamp.clone());
    let started = current["status"]["startTime"].as_str().map(str::to_owned).unwrap_or_else(|| stamp.clone());
    let mut ready_condition = json!({ "type": "Ready", "status": status, "lastTransitionTime": transition });
    let mut containers_ready = json!({ "type": "ContainersReady", "status": status, "lastTransitionTime": transition });
    if !ready {
        ready_condition["reason"] = json!("ContainersNotReady");
        containers_ready["reason"] = json!("ContainersNotReady");
    }
    json!({
        "phase": "Running",
        "hostIP": config.node_ip.to_string(),
        "podIP": config.node_ip.to_string(),
        "startTime": started,
        "qosClass": "Burstable",
        "conditions": [
            { "type": "Initialized", "status": "True", "lastTransitionTime": started },
            ready_condition,
            containers_ready,
            { "type": "PodScheduled", "status": "True", "lastTransitionTime": started },
        ],
        "containerStatuses": [{
            "name": component,
            "image": format!("mcr.microsoft.com/oss/kubernetes/{component}:{GIT_VERSION}"),
            "imageID": "",
            "ready": ready,
            "started": true,
            "restartCount": 0,
            "state": { "running": { "startedAt": started } },
        }],
    })
}

fn ready_of(pod: &Value) -> Option<bool> {
    pod["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Ready").map(|c| c["status"] == "True")
}

async fn report_static_pods(config: &KubeletConfig, client: &kube::Client) -> Result<(), KubeletError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    let apiserver_ready = local_apiserver_ready(config).await;
    for component in STATIC_POD_COMPONENTS {
        // The other components talk to the API with this node's credentials; getting this
        // far proves those work.
        let ready = if component == "kube-apiserver" { apiserver_ready } else { true };
        let name = format!("{component}-{}", config.node_name);
        let current = match pods.get_opt(&name).await? {
            Some(pod) => serde_json::to_value(pod).unwrap_or_default(),
            None => {
                let pod: Pod = serde_json::from_value(static_pod(config, component)).map_err(|e| KubeletError::Client(e.to_string()))?;
                serde_json::to_value(pods.create(&PostParams::default(), &pod).await?).unwrap_or_default()
            }
        };
        if ready_of(&current) == Some(ready) && current["status"]["phase"] == "Running" {
            continue;
        }
        let status = json!({ "status": static_pod_status(config, component, ready, &current) });
        pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_from_json_with_defaults() {
        let config: KubeletConfig = serde_json::from_str(
            r#"{ "node_name": "k8s-agentpool1-12345678-0", "role": "agent", "root": "/lab/nodes/a0", "node_ip": "10.240.0.4" }"#,
        )
        .unwrap();
        assert_eq!(config.kubeconfig, PathBuf::from("/var/lib/kubelet/kubeconfig"));
        assert_eq!(config.heartbeat_interval, Duration::from_secs(2));
        assert_eq!(config.role, NodeRole::Agent);
        assert!(serde_json::from_str::<KubeletConfig>(r#"{ "node_name": "n", "role": "worker", "root": "/", "node_ip": "10.0.0.1" }"#).is_err());
    }

    #[test]
    fn node_paths_resolve_under_the_root() {
        let root = Path::new("/lab/nodes/m0");
        assert_eq!(node_path(root, Path::new("/etc/kubernetes/certs/ca.crt")), PathBuf::from("/lab/nodes/m0/etc/kubernetes/certs/ca.crt"));
        assert_eq!(node_path(root, Path::new("relative/file")), PathBuf::from("/lab/nodes/m0/relative/file"));
    }

    #[test]
    fn masters_are_labelled_and_tainted_like_aks_engine_masters() {
        let config: KubeletConfig = serde_json::from_str(
            r#"{ "node_name": "k8s-master-12345678-0", "role": "master", "root": "/", "node_ip": "10.255.255.5", "labels": { "agentpool": "master" } }"#,
        )
        .unwrap();
        let node = serde_json::to_value(new_node(&config).unwrap()).unwrap();
        assert_eq!(node["metadata"]["labels"]["node-role.kubernetes.io/master"], "");
        assert_eq!(node["metadata"]["labels"]["kubernetes.io/role"], "master");
        assert_eq!(node["metadata"]["labels"]["agentpool"], "master");
        assert_eq!(node["spec"]["taints"][0]["key"], "node-role.kubernetes.io/master");
    }
}
