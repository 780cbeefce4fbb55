//! The Kubernetes side of `apply`: the API operations AKS Engine's rotate-certs performs
//! (pause cluster-autoscaler, delete an agent's kube-proxy pod, delete service-account token
//! secrets, roll out every Deployment and DaemonSet) and the API-level gate probes (nodes
//! Ready, control-plane static pods Ready, kube-system settled), plus the operator-side
//! admin kubeconfig AKS Engine writes under `_output/`.
//!
//! Every operation is idempotent so a resumed apply can simply call it again. Probes return
//! what they observed as one line per problem; an empty list means the gate passes. Nothing
//! here polls or waits for a state: the executor owns timeouts and polling. The one retry is
//! a delete answered 409 Conflict, sent again a few times (`delete_one`): the conflict says
//! only that the object changed meanwhile, not that the delete is no longer wanted.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde::de::DeserializeOwned;
use serde_json::json;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::time::Duration;

const KUBE_SYSTEM: &str = "kube-system";
const AUTOSCALER: &str = "cluster-autoscaler";
const TOKEN_SECRET_TYPE: &str = "kubernetes.io/service-account-token";
const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";
/// The static pods every AKS Engine master runs, named `<component>-<node>`.
pub const CONTROL_PLANE_COMPONENTS: [&str; 4] = ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-addon-manager"];
/// How many deletes or patches are in flight at once: enough to hide a slow link's latency,
/// few enough not to look like a flood to an apiserver that is just coming back.
const CONCURRENCY: usize = 8;

/// Why a Kubernetes operation failed. Texts name the object and the cause and never carry
/// key material (kubeconfig parse errors are scrubbed of long quoted values).
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum KubeOpsError {
    #[error("no kubeconfig to reach the API server with")]
    NoKubeconfig,
    #[error("kubeconfig {label:?} cannot be used: {reason}")]
    #[diagnostic(help("the admin kubeconfig is the JSON file under _output/<dnsPrefix>/kubeconfig/"))]
    Kubeconfig { label: String, reason: String },
    #[error("API server address {value:?} cannot replace the kubeconfig's server: {reason}")]
    #[diagnostic(help("give ADDRESS:PORT, e.g. 10.255.255.5:443"))]
    ApiserverAddress { value: String, reason: String },
    #[error("no credentials reach the API server: {attempts}")]
    #[diagnostic(help(
        "check that the address is reachable from here (--apiserver ADDRESS:PORT overrides the kubeconfig's server) and that the kubeconfig's client certificate is signed by the cluster CA"
    ))]
    Unreachable { attempts: String },
    #[error("{action} failed: {reason}")]
    Api { action: String, reason: String },
}

impl KubeOpsError {
    fn api(action: impl Into<String>, error: &kube::Error) -> Self {
        KubeOpsError::Api { action: action.into(), reason: error_chain(error) }
    }
}

/// kube's top-level errors often say only "client error (Connect)"; the cause (TLS alert,
/// refused connection) is further down the source chain.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// Parse errors may quote the value they choked on, which could be a base64 key: keep only
/// short quoted values.
fn scrub(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('"') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find('"') {
            Some(end) if end > 32 => {
                out.push_str("\"<redacted>\"");
                rest = &after[end + 1..];
            }
            Some(end) => {
                out.push_str(&rest[start..start + end + 2]);
                rest = &after[end + 1..];
            }
            None if after.len() > 32 => {
                out.push_str("\"<redacted>");
                rest = "";
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// One set of credentials: a kubeconfig and the endpoint to use it against.
#[derive(Clone)]
struct Candidate {
    label: String,
    kubeconfig: Kubeconfig,
    /// The context chosen when the candidate was built, so kube loads the same one.
    context: String,
    /// The URL to connect to (the kubeconfig's server, or its host:port replaced).
    server: String,
    /// The name the serving certificate must carry when it differs from `server`'s host.
    tls_server_name: Option<String>,
}

/// Credentials to try, in order (new admin kubeconfig first, then the old one).
#[derive(Clone)]
pub struct KubeAccess {
    candidates: Vec<Candidate>,
}

impl fmt::Debug for KubeAccess {
    // Kubeconfigs hold client keys: show only what identifies each candidate.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for c in &self.candidates {
            list.entry(&format_args!("{} -> {} (server name {:?})", c.label, c.server, c.tls_server_name));
        }
        list.finish()
    }
}

/// The context to use (current-context, or the only one) and its cluster.
fn current_cluster<'a>(kubeconfig: &'a Kubeconfig, label: &str) -> Result<(String, &'a kube::config::Cluster), KubeOpsError> {
    let fail = |reason: String| KubeOpsError::Kubeconfig { label: label.to_owned(), reason };
    let context_name = match &kubeconfig.current_context {
        Some(name) if !name.is_empty() => name.clone(),
        _ if kubeconfig.contexts.len() == 1 => kubeconfig.contexts[0].name.clone(),
        _ => return Err(fail("it has no current-context".into())),
    };
    let context = kubeconfig
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.as_ref())
        .ok_or_else(|| fail(format!("context {context_name:?} is not defined")))?;
    let cluster = kubeconfig
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.cluster.as_ref())
        .ok_or_else(|| fail(format!("cluster {:?} of context {context_name:?} is not defined", context.cluster)))?;
    Ok((context_name, cluster))
}

/// Which input an endpoint problem is the fault of.
#[derive(Debug, PartialEq, Eq)]
enum EndpointError {
    Server(String),
    Override(String),
}

/// The URL to connect to and the TLS server name, after replacing the server's host:port with
/// `apiserver`. The original host stays the name the certificate is checked against, since
/// the apiserver certificate names the FQDN and not necessarily the address used here.
fn endpoint(server: &str, tls_server_name: Option<&str>, apiserver: Option<&str>) -> Result<(String, Option<String>), EndpointError> {
    let url = url::Url::parse(server).map_err(|e| EndpointError::Server(format!("server {server:?} is not a URL: {e}")))?;
    let original_host = match url.host() {
        Some(url::Host::Domain(d)) => d.to_owned(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        None => return Err(EndpointError::Server(format!("server {server:?} has no host"))),
    };
    let Some(apiserver) = apiserver else {
        return Ok((server.to_owned(), tls_server_name.map(str::to_owned)));
    };
    let bad = || EndpointError::Override("expected ADDRESS:PORT (an IPv6 address in brackets), without scheme or path".into());
    let (host, port) = apiserver.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = !host.is_empty() && !host.contains(['/', '?', '#', '@']) && (!host.contains(':') || (host.starts_with('[') && host.ends_with(']')));
    if !host_ok || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    let path = if url.path() == "/" { "" } else { url.path() };
    let replaced = format!("{}://{apiserver}{path}", url.scheme());
    url::Url::parse(&replaced).map_err(|e| EndpointError::Override(e.to_string()))?;
    Ok((replaced, Some(tls_server_name.map(str::to_owned).unwrap_or(original_host))))
}

impl KubeAccess {
    /// `kubeconfigs`: (label, kubeconfig YAML or JSON text). `apiserver`: optional ADDRESS:PORT that
    /// replaces the host:port of each kubeconfig's server URL (the FQDN may not resolve from here);
    /// TLS must still verify against the kubeconfig's CA using the original host name as server name
    /// (or the kubeconfig's tls-server-name when set).
    pub fn from_kubeconfigs(kubeconfigs: &[(String, String)], apiserver: Option<&str>) -> Result<Self, KubeOpsError> {
        if kubeconfigs.is_empty() {
            return Err(KubeOpsError::NoKubeconfig);
        }
        let mut candidates = Vec::new();
        for (label, text) in kubeconfigs {
            let fail = |reason: String| KubeOpsError::Kubeconfig { label: label.clone(), reason };
            let kubeconfig = Kubeconfig::from_yaml(text).map_err(|e| fail(scrub(&error_chain(&e))))?;
            let (context, cluster) = current_cluster(&kubeconfig, label)?;
            let server = cluster.server.as_deref().ok_or_else(|| fail("its cluster has no server".into()))?;
            let (server, tls_server_name) = endpoint(server, cluster.tls_server_name.as_deref(), apiserver).map_err(|e| match e {
                EndpointError::Server(reason) => fail(reason),
                EndpointError::Override(reason) => KubeOpsError::ApiserverAddress { value: apiserver.unwrap_or_default().to_owned(), reason },
            })?;
            candidates.push(Candidate { label: label.clone(), kubeconfig, context, server, tls_server_name });
        }
        Ok(Self { candidates })
    }

    /// The labels, in the order they are tried.
    pub fn labels(&self) -> Vec<&str> {
        self.candidates.iter().map(|c| c.label.as_str()).collect()
    }

    /// The first credentials with which GET /version succeeds within `timeout`; returns the client and the label used.
    ///
    /// /version alone does not prove the credentials: a real apiserver answers it anonymously
    /// even when the client certificate is from another CA. So the client must also read the
    /// kube-system namespace, which needs an authenticated user.
    pub async fn client(&self, timeout: Duration) -> Result<(kube::Client, String), KubeOpsError> {
        install_crypto_provider();
        let mut attempts = Vec::new();
        for candidate in &self.candidates {
            match tokio::time::timeout(timeout, try_candidate(candidate, timeout)).await {
                Ok(Ok(client)) => return Ok((client, candidate.label.clone())),
                Ok(Err(reason)) => attempts.push(format!("{} ({}): {reason}", candidate.label, candidate.server)),
                Err(_) => attempts.push(format!("{} ({}): no answer within {}", candidate.label, candidate.server, humantime::format_duration(timeout))),
            }
        }
        Err(KubeOpsError::Unreachable { attempts: attempts.join("; ") })
    }
}

/// kube's rustls connector takes the process-wide crypto provider; certrotate builds rustls
/// with aws-lc-rs only, and whichever caller installs first wins, which is fine.
fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The client configuration of one candidate: its kubeconfig's context, at the server address
/// and TLS server name the candidate carries.
async fn candidate_config(candidate: &Candidate) -> Result<kube::Config, String> {
    let options = KubeConfigOptions { context: Some(candidate.context.clone()), ..KubeConfigOptions::default() };
    let mut config = kube::Config::from_custom_kubeconfig(candidate.kubeconfig.clone(), &options)
        .await
        .map_err(|e| scrub(&error_chain(&e)))?;
    config.cluster_url = candidate.server.parse().map_err(|e| format!("server {:?}: {e}", candidate.server))?;
    config.tls_server_name = candidate.tls_server_name.clone();
    Ok(config)
}

async fn try_candidate(candidate: &Candidate, timeout: Duration) -> Result<kube::Client, String> {
    let mut config = candidate_config(candidate).await?;
    // A dead address should fail this candidate, not eat the whole budget of the next one.
    config.connect_timeout = Some(config.connect_timeout.map_or(timeout, |t| t.min(timeout)));
    let client = kube::Client::try_from(config.clone()).map_err(|e| error_chain(&e))?;
    if let Err(error) = client.apiserver_version().await {
        let mut reason = error_chain(&error);
        if !matches!(error, kube::Error::Api(_)) && !reason.contains("received fatal alert") {
            if let Some(refusal) = handshake_refusal(&config, timeout).await {
                reason = refusal;
            }
        }
        return Err(format!("GET /version: {}", explain_handshake(reason)));
    }
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces.get(KUBE_SYSTEM).await.map_err(|e| format!("GET namespace kube-system: {}", error_chain(&e)))?;
    Ok(client)
}

/// Why the server refused a TLS session with these credentials, if it did.
///
/// Under TLS 1.3 the server checks the client certificate after the client already counts
/// the handshake as done, so the server's alert races hyper's first request: hyper may
/// report only "connection was not ready" or "connection closed". This repeats the
/// handshake on a connection of its own and reads the server's answer to one request, so
/// the alert, which always comes first on that connection, is seen for certain.
async fn handshake_refusal(config: &kube::Config, timeout: Duration) -> Option<String> {
    use kube::client::ConfigExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tls = std::sync::Arc::new(config.rustls_client_config().ok()?);
    let host = config.cluster_url.host()?;
    let port = config.cluster_url.port_u16().unwrap_or(443);
    let name = config.tls_server_name.clone().unwrap_or_else(|| host.trim_start_matches('[').trim_end_matches(']').to_owned());
    let server_name = rustls::pki_types::ServerName::try_from(name.clone()).ok()?;
    let probe = async {
        let tcp = tokio::net::TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port)).await.ok()?;
        let alert = |error: &std::io::Error| Some(error_chain(error)).filter(|text| text.contains("alert"));
        let mut session = match tokio_rustls::TlsConnector::from(tls).connect(server_name, tcp).await {
            Ok(session) => session,
            Err(error) => return alert(&error),
        };
        let request = format!("GET /version HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n");
        if let Err(error) = session.write_all(request.as_bytes()).await {
            return alert(&error);
        }
        let mut first = [0u8; 1];
        match session.read(&mut first).await {
            Err(error) => alert(&error),
            Ok(_) => None,
        }
    };
    tokio::time::timeout(timeout, probe).await.ok().flatten()
}

/// A TLS alert from the server after the client sent its certificate is, for an apiserver, a
/// refused client certificate; rustls only reports the alert's name (often "DecryptError"
/// when an old and a new CA share the subject "CN=ca", as AKS Engine's always do).
fn explain_handshake(reason: String) -> String {
    if reason.contains("received fatal alert") {
        format!("{reason} (the API server refused the TLS handshake: the client certificate is probably not signed by the CA the server trusts)")
    } else {
        reason
    }
}

fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
}

/// Runs jobs with at most CONCURRENCY in flight. The first failure stops new jobs from
/// starting; jobs already running finish (a half-sent delete is worse than a finished one).
async fn bounded<T, F>(jobs: Vec<F>) -> Result<Vec<T>, KubeOpsError>
where
    T: Send + 'static,
    F: Future<Output = Result<T, KubeOpsError>> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    let mut results = Vec::with_capacity(jobs.len());
    let mut first_error = None;
    let mut record = |joined: Result<Result<T, KubeOpsError>, tokio::task::JoinError>, first_error: &mut Option<KubeOpsError>| match joined {
        Ok(Ok(value)) => results.push(value),
        Ok(Err(e)) => {
            first_error.get_or_insert(e);
        }
        Err(e) => {
            first_error.get_or_insert(KubeOpsError::Api { action: "a Kubernetes request".into(), reason: e.to_string() });
        }
    };
    for job in jobs {
        if first_error.is_some() {
            break;
        }
        if set.len() >= CONCURRENCY {
            if let Some(joined) = set.join_next().await {
                record(joined, &mut first_error);
            }
        }
        set.spawn(job);
    }
    while let Some(joined) = set.join_next().await {
        record(joined, &mut first_error);
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(results),
    }
}

/// Jobs of different future types (one per resource kind) in one `bounded` call.
type Job<T> = std::pin::Pin<Box<dyn Future<Output = Result<T, KubeOpsError>> + Send>>;

/// Deletes one object; false when it was already gone.
async fn delete_one<K>(api: Api<K>, what: String) -> Result<bool, KubeOpsError>
where
    K: kube::Resource + Clone + DeserializeOwned + fmt::Debug,
{
    let name = what.rsplit('/').next().unwrap_or(&what).to_owned();
    // A 409 means the object changed while the delete was handled (kubelet updating a pod's
    // status): the delete is still wanted, so it is sent again, a few times.
    let mut conflicts = 0;
    loop {
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => return Ok(true),
            Err(e) if is_not_found(&e) => return Ok(false),
            Err(e) if is_conflict(&e) && conflicts < 3 => {
                conflicts += 1;
                tokio::time::sleep(std::time::Duration::from_millis(200 * conflicts)).await;
            }
            Err(e) => return Err(KubeOpsError::api(format!("deleting {what}"), &e)),
        }
    }
}

fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

/// Scales kube-system/cluster-autoscaler to `replicas`; returns the replica count before, or None when it is not deployed.
pub async fn scale_autoscaler(client: &kube::Client, replicas: i32) -> Result<Option<i32>, KubeOpsError> {
    let what = format!("{KUBE_SYSTEM}/{AUTOSCALER}");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), KUBE_SYSTEM);
    let Some(current) = deployments.get_opt(AUTOSCALER).await.map_err(|e| KubeOpsError::api(format!("reading deployment {what}"), &e))? else {
        return Ok(None);
    };
    // Kubernetes defaults an absent replicas to 1.
    let before = current.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    if before != replicas {
        let patch = json!({ "spec": { "replicas": replicas } });
        match deployments.patch_scale(AUTOSCALER, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => {}
            // Removed between the read and the write: nothing left to pause.
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(KubeOpsError::api(format!("scaling deployment {what} from {before} to {replicas} replicas"), &e)),
        }
    }
    Ok(Some(before))
}

/// Deletes the kube-proxy pod(s) (label k8s-app=kube-proxy in kube-system) running on `node`; returns how many.
pub async fn delete_kube_proxy_pods(client: &kube::Client, node: &str) -> Result<usize, KubeOpsError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), KUBE_SYSTEM);
    let params = ListParams::default().labels("k8s-app=kube-proxy").fields(&format!("spec.nodeName={node}"));
    let list = pods.list(&params).await.map_err(|e| KubeOpsError::api(format!("listing kube-proxy pods on node {node}"), &e))?;
    let jobs = list
        .items
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .map(|name| delete_one(pods.clone(), format!("pod {KUBE_SYSTEM}/{name}")))
        .collect();
    Ok(bounded(jobs).await?.into_iter().filter(|deleted| *deleted).count())
}

/// Deletes every secret of type kubernetes.io/service-account-token in every namespace; returns how many.
pub async fn delete_service_account_tokens(client: &kube::Client) -> Result<usize, KubeOpsError> {
    let all: Api<Secret> = Api::all(client.clone());
    let params = ListParams::default().fields(&format!("type={TOKEN_SECRET_TYPE}"));
    let list = all.list(&params).await.map_err(|e| KubeOpsError::api("listing service-account token secrets", &e))?;
    let jobs = list
        .items
        .iter()
        // The field selector is the server's promise; check the type anyway, since deleting
        // a secret of another type would lose data.
        .filter(|s| s.type_.as_deref() == Some(TOKEN_SECRET_TYPE))
        .filter_map(|s| Some((s.metadata.namespace.clone()?, s.metadata.name.clone()?)))
        .map(|(ns, name)| delete_one(Api::<Secret>::namespaced(client.clone(), &ns), format!("secret {ns}/{name}")))
        .collect();
    Ok(bounded(jobs).await?.into_iter().filter(|deleted| *deleted).count())
}

fn restarted_at(template_annotations: Option<&std::collections::BTreeMap<String, String>>) -> Option<&str> {
    template_annotations.and_then(|a| a.get(RESTARTED_AT)).map(String::as_str)
}

async fn restart_one<K>(api: Api<K>, what: String, name: String, stamp: String) -> Result<bool, KubeOpsError>
where
    K: kube::Resource + Clone + DeserializeOwned + fmt::Debug,
{
    // The same strategic merge patch `kubectl rollout restart` sends.
    let patch = json!({ "spec": { "template": { "metadata": { "annotations": { RESTARTED_AT: stamp } } } } });
    match api.patch(&name, &PatchParams::default(), &Patch::Strategic(&patch)).await {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(KubeOpsError::api(format!("restarting {what}"), &e)),
    }
}

/// `kubectl rollout restart` of every Deployment and DaemonSet in every namespace (pod template annotation
/// kubectl.kubernetes.io/restartedAt = `stamp`); returns how many objects were patched.
///
/// Objects already carrying `stamp` are skipped (and not counted), so calling again with the
/// same stamp after an interruption restarts nothing twice. Paused Deployments are patched
/// too (kubectl refuses them): their pods hold tokens that no longer verify, and they roll
/// out when resumed.
pub async fn rollout_restart_all(client: &kube::Client, stamp: &str) -> Result<usize, KubeOpsError> {
    let deployments: Api<Deployment> = Api::all(client.clone());
    let daemon_sets: Api<DaemonSet> = Api::all(client.clone());
    let deployment_list = deployments.list(&ListParams::default()).await.map_err(|e| KubeOpsError::api("listing deployments", &e))?;
    let daemon_set_list = daemon_sets.list(&ListParams::default()).await.map_err(|e| KubeOpsError::api("listing daemonsets", &e))?;
    let mut jobs: Vec<Job<bool>> = Vec::new();
    for d in &deployment_list.items {
        let (Some(ns), Some(name)) = (d.metadata.namespace.clone(), d.metadata.name.clone()) else { continue };
        let annotations = d.spec.as_ref().and_then(|s| s.template.metadata.as_ref()).and_then(|m| m.annotations.as_ref());
        if restarted_at(annotations) == Some(stamp) {
            continue;
        }
        let api: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        jobs.push(Box::pin(restart_one(api, format!("deployment {ns}/{name}"), name, stamp.to_owned())));
    }
    for d in &daemon_set_list.items {
        let (Some(ns), Some(name)) = (d.metadata.namespace.clone(), d.metadata.name.clone()) else { continue };
        let annotations = d.spec.as_ref().and_then(|s| s.template.metadata.as_ref()).and_then(|m| m.annotations.as_ref());
        if restarted_at(annotations) == Some(stamp) {
            continue;
        }
        let api: Api<DaemonSet> = Api::namespaced(client.clone(), &ns);
        jobs.push(Box::pin(restart_one(api, format!("daemonset {ns}/{name}"), name, stamp.to_owned())));
    }
    Ok(bounded(jobs).await?.into_iter().filter(|patched| *patched).count())
}

/// "Ready=False (Reason: message)" from a condition's status, reason and message.
fn condition_text(kind: &str, status: &str, reason: Option<&str>, message: Option<&str>) -> String {
    let detail = match (reason.filter(|r| !r.is_empty()), message.filter(|m| !m.is_empty())) {
        (Some(r), Some(m)) => format!(" ({r}: {m})"),
        (Some(r), None) => format!(" ({r})"),
        (None, Some(m)) => format!(" ({m})"),
        (None, None) => String::new(),
    };
    format!("{kind}={status}{detail}")
}

/// As [`nodes_not_ready`], and each node must also have reported since `since` (its kubelet
/// restarted then): a Ready condition from before a restart proves nothing, because the node
/// controller keeps it for its grace period (40 s by default) after a kubelet stops. The
/// kubelet's Lease in kube-node-lease is the heartbeat on current clusters; where there is
/// none, the Ready condition's lastHeartbeatTime is used.
pub async fn nodes_not_ready_since(
    client: &kube::Client,
    nodes: &[String],
    since: k8s_openapi::chrono::DateTime<k8s_openapi::chrono::Utc>,
) -> Result<Vec<String>, KubeOpsError> {
    use k8s_openapi::api::coordination::v1::Lease;
    let mut problems = nodes_not_ready(client, nodes).await?;
    if !problems.is_empty() {
        return Ok(problems);
    }
    // Kubernetes times have whole seconds; a heartbeat in the same second as `since` counts.
    let since = since - k8s_openapi::chrono::Duration::milliseconds(i64::from(since.timestamp_subsec_millis()));
    let node_api: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    for name in nodes {
        let lease = match leases.get_opt(name).await {
            Ok(l) => l.and_then(|l| l.spec).and_then(|s| s.renew_time).map(|t| t.0),
            Err(_) => None,
        };
        let heartbeat = match lease {
            Some(t) => Some(t),
            None => node_api
                .get_opt(name)
                .await
                .map_err(|e| KubeOpsError::api("reading a node", &e))?
                .and_then(|n| n.status)
                .and_then(|s| s.conditions)
                .and_then(|cs| cs.into_iter().find(|c| c.type_ == "Ready"))
                .and_then(|c| c.last_heartbeat_time)
                .map(|t| t.0),
        };
        match heartbeat {
            Some(t) if t >= since => {}
            Some(t) => problems.push(format!("{name}: Ready, but its kubelet has not reported since the restart (last heartbeat {})", t.to_rfc3339())),
            None => problems.push(format!("{name}: Ready, but no heartbeat time is recorded")),
        }
    }
    Ok(problems)
}

/// Gate probes: each returns the list of problems observed (empty = gate passes), e.g.
/// "k8s-agentpool1-12345678-0: Ready=False (KubeletNotReady: ...)", "k8s-master-...-1: not registered".
pub async fn nodes_not_ready(client: &kube::Client, nodes: &[String]) -> Result<Vec<String>, KubeOpsError> {
    let api: Api<Node> = Api::all(client.clone());
    let list = api.list(&ListParams::default()).await.map_err(|e| KubeOpsError::api("listing nodes", &e))?;
    let by_name: HashMap<&str, &Node> = list.items.iter().filter_map(|n| Some((n.metadata.name.as_deref()?, n))).collect();
    let mut problems = Vec::new();
    for name in nodes {
        let Some(node) = by_name.get(name.as_str()) else {
            problems.push(format!("{name}: not registered"));
            continue;
        };
        let ready = node.status.as_ref().and_then(|s| s.conditions.as_ref()).and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
        match ready {
            None => problems.push(format!("{name}: no Ready condition reported yet")),
            Some(c) if c.status == "True" => {}
            Some(c) => problems.push(format!("{name}: {}", condition_text("Ready", &c.status, c.reason.as_deref(), c.message.as_deref()))),
        }
    }
    Ok(problems)
}

/// Every node the API lists, with the operating system it reports (`status.nodeInfo.operatingSystem`,
/// else the `kubernetes.io/os` label; Linux when neither says).
pub async fn registered_nodes(client: &kube::Client) -> Result<Vec<crate::model::topology::RegisteredNode>, KubeOpsError> {
    use crate::model::topology::{OsType, RegisteredNode};
    let api: Api<Node> = Api::all(client.clone());
    let list = api.list(&ListParams::default()).await.map_err(|e| KubeOpsError::api("listing nodes", &e))?;
    Ok(list
        .items
        .iter()
        .filter_map(|n| {
            let name = n.metadata.name.clone()?;
            let from_status = n.status.as_ref().and_then(|s| s.node_info.as_ref()).map(|i| i.operating_system.clone());
            let from_label = n.metadata.labels.as_ref().and_then(|l| l.get("kubernetes.io/os").cloned());
            let os = match from_status.filter(|s| !s.is_empty()).or(from_label) {
                Some(s) if s.eq_ignore_ascii_case("windows") => OsType::Windows,
                _ => OsType::Linux,
            };
            Some(RegisteredNode { name, os })
        })
        .collect())
}

/// Why a pod is not Ready, or None when it is.
fn pod_problem(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Unknown");
    let ready = status.and_then(|s| s.conditions.as_ref()).and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
    match ready {
        Some(c) if c.status == "True" && phase == "Running" => None,
        Some(c) => Some(format!("{phase}, {}", condition_text("Ready", &c.status, c.reason.as_deref(), c.message.as_deref()))),
        None if pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none() => Some(format!("{phase}, not scheduled")),
        None => Some(format!("{phase}, no Ready condition")),
    }
}

/// kube-apiserver, kube-controller-manager, kube-scheduler, kube-addon-manager static pods `<component>-<node>` in kube-system, Ready.
pub async fn control_plane_not_ready(client: &kube::Client, masters: &[String]) -> Result<Vec<String>, KubeOpsError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), KUBE_SYSTEM);
    let list = api.list(&ListParams::default()).await.map_err(|e| KubeOpsError::api("listing pods in kube-system", &e))?;
    let by_name: HashMap<&str, &Pod> = list.items.iter().filter_map(|p| Some((p.metadata.name.as_deref()?, p))).collect();
    let mut problems = Vec::new();
    for master in masters {
        for component in CONTROL_PLANE_COMPONENTS {
            let name = format!("{component}-{master}");
            match by_name.get(name.as_str()) {
                // The mirror pod appears only once the kubelet reaches the API.
                None => problems.push(format!("{KUBE_SYSTEM}/{name}: not found (the kubelet on {master} has not reported it)")),
                Some(pod) => {
                    if let Some(problem) = pod_problem(pod) {
                        problems.push(format!("{KUBE_SYSTEM}/{name}: {problem}"));
                    }
                }
            }
        }
    }
    Ok(problems)
}

/// "1 desired, 0 updated, 1 available, 2 total" when a workload has not finished rolling out.
fn rollout_problem(generation: Option<i64>, observed: Option<i64>, desired: i32, updated: i32, available: i32, total: i32) -> Option<String> {
    if let (Some(generation), Some(observed)) = (generation, observed) {
        if observed < generation {
            return Some(format!("spec change not yet observed by its controller (generation {generation}, observed {observed})"));
        }
    }
    // Total above desired means old pods are still around (what `kubectl rollout status` waits for).
    (updated != desired || available != desired || total > desired)
        .then(|| format!("{desired} desired, {updated} updated, {available} available, {total} total"))
}

/// Every pod in kube-system Ready (pods of Succeeded phase ignored); also Deployments/DaemonSets rolled out (updated == desired == available).
///
/// Pods being deleted are ignored too: after a restart the old pods linger for their grace
/// period, and what matters is their replacements, which the rollout checks cover.
pub async fn kube_system_not_ready(client: &kube::Client) -> Result<Vec<String>, KubeOpsError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), KUBE_SYSTEM);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), KUBE_SYSTEM);
    let daemon_sets: Api<DaemonSet> = Api::namespaced(client.clone(), KUBE_SYSTEM);
    let pod_list = pods.list(&ListParams::default()).await.map_err(|e| KubeOpsError::api("listing pods in kube-system", &e))?;
    let deployment_list = deployments.list(&ListParams::default()).await.map_err(|e| KubeOpsError::api("listing deployments in kube-system", &e))?;
    let daemon_set_list = daemon_sets.list(&ListParams::default()).await.map_err(|e| KubeOpsError::api("listing daemonsets in kube-system", &e))?;
    let mut problems = Vec::new();
    for pod in &pod_list.items {
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if phase == Some("Succeeded") || pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if let Some(problem) = pod_problem(pod) {
            problems.push(format!("{KUBE_SYSTEM}/{}: {problem}", pod.metadata.name.as_deref().unwrap_or("?")));
        }
    }
    for d in &deployment_list.items {
        let status = d.status.clone().unwrap_or_default();
        let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let problem = rollout_problem(
            d.metadata.generation,
            status.observed_generation,
            desired,
            status.updated_replicas.unwrap_or(0),
            status.available_replicas.unwrap_or(0),
            status.replicas.unwrap_or(0),
        );
        if let Some(problem) = problem {
            problems.push(format!("deployment {KUBE_SYSTEM}/{}: {problem}", d.metadata.name.as_deref().unwrap_or("?")));
        }
    }
    for d in &daemon_set_list.items {
        let status = d.status.clone().unwrap_or_default();
        let desired = status.desired_number_scheduled;
        let problem = rollout_problem(
            d.metadata.generation,
            status.observed_generation,
            desired,
            status.updated_number_scheduled.unwrap_or(0),
            status.number_available.unwrap_or(0),
            status.current_number_scheduled,
        );
        if let Some(problem) = problem {
            problems.push(format!("daemonset {KUBE_SYSTEM}/{}: {problem}", d.metadata.name.as_deref().unwrap_or("?")));
        }
    }
    Ok(problems)
}

/// The admin kubeconfig AKS Engine writes to `_output/<dnsPrefix>/kubeconfig/kubeconfig.<location>.json`:
/// cluster, user (`<name>-admin`) and context named after the dnsPrefix, PEM material base64-encoded.
///
/// The result holds the admin client key: handing that key to the operator is this file's
/// whole purpose. Write it 0600 and never log it.
pub fn admin_kubeconfig(cluster_name: &str, server_url: &str, ca_pem: &str, client_cert_pem: &str, client_key_pem: &str) -> String {
    let user = format!("{cluster_name}-admin");
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": cluster_name,
            "cluster": {
                "certificate-authority-data": B64.encode(ca_pem),
                "server": server_url,
            }
        }],
        "users": [{
            "name": user,
            "user": {
                "client-certificate-data": B64.encode(client_cert_pem),
                "client-key-data": B64.encode(client_key_pem),
            }
        }],
        "contexts": [{
            "name": cluster_name,
            "context": { "cluster": cluster_name, "user": user }
        }],
        "current-context": cluster_name,
    });
    serde_json::to_string_pretty(&config).expect("a JSON value always serialises")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBca\n-----END CERTIFICATE-----\n";
    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIBclient\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN RSA PRIVATE KEY-----\nMIIEkey\n-----END RSA PRIVATE KEY-----\n";

    fn decode(text: &str) -> String {
        String::from_utf8(B64.decode(text).unwrap()).unwrap()
    }

    #[test]
    fn admin_kubeconfig_parses_and_round_trips_its_material() {
        let text = admin_kubeconfig("mycluster", "https://mycluster.local.cloudapp.azurestack.external", CA, CERT, KEY);
        let parsed = Kubeconfig::from_yaml(&text).unwrap();
        assert_eq!(parsed.current_context.as_deref(), Some("mycluster"));
        assert_eq!(parsed.api_version.as_deref(), Some("v1"));
        assert_eq!(parsed.kind.as_deref(), Some("Config"));
        let cluster = parsed.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(parsed.clusters[0].name, "mycluster");
        assert_eq!(cluster.server.as_deref(), Some("https://mycluster.local.cloudapp.azurestack.external"));
        assert_eq!(decode(cluster.certificate_authority_data.as_deref().unwrap()), CA);
        assert_eq!(parsed.auth_infos[0].name, "mycluster-admin");
        let user = parsed.auth_infos[0].auth_info.as_ref().unwrap();
        assert_eq!(decode(user.client_certificate_data.as_deref().unwrap()), CERT);
        assert!(user.client_key_data.is_some());
        let context = parsed.contexts[0].context.as_ref().unwrap();
        assert_eq!((parsed.contexts[0].name.as_str(), context.cluster.as_str(), context.user.as_deref()), ("mycluster", "mycluster", Some("mycluster-admin")));
        // Same top-level shape (and key order) as AKS Engine's, which the lab reproduces.
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(decode(value["users"][0]["user"]["client-key-data"].as_str().unwrap()), KEY);
        let keys: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["apiVersion", "kind", "clusters", "users", "contexts", "current-context"]);
        // And a KubeAccess accepts it.
        let access = KubeAccess::from_kubeconfigs(&[("new".into(), text)], None).unwrap();
        assert_eq!(access.labels(), ["new"]);
        assert!(!format!("{access:?}").contains("MIIEkey"));
    }

    #[test]
    fn apiserver_override_keeps_the_original_host_as_server_name() {
        let (url, name) = endpoint("https://c.local.cloudapp.azurestack.external:443", None, Some("10.255.255.5:443")).unwrap();
        assert_eq!((url.as_str(), name.as_deref()), ("https://10.255.255.5:443", Some("c.local.cloudapp.azurestack.external")));
        // The kubeconfig's tls-server-name wins over the host.
        let (url, name) = endpoint("https://10.255.255.5", Some("c.example"), Some("10.1.1.1:6443")).unwrap();
        assert_eq!((url.as_str(), name.as_deref()), ("https://10.1.1.1:6443", Some("c.example")));
        // Without an override nothing changes.
        let (url, name) = endpoint("https://c.example:443", None, None).unwrap();
        assert_eq!((url.as_str(), name), ("https://c.example:443", None));
        // IPv6 literal: the server name is the bare address.
        let (_, name) = endpoint("https://[fd00::5]:443", None, Some("127.0.0.1:8443")).unwrap();
        assert_eq!(name.as_deref(), Some("fd00::5"));
        assert!(endpoint("https://c.example", None, Some("10.0.0.1")).is_err(), "a port is required");
        assert!(endpoint("https://c.example", None, Some("10.0.0.1:443/x")).is_err());
        assert!(matches!(endpoint("not a url", None, Some("10.0.0.1:443")), Err(EndpointError::Server(_))));
        assert!(endpoint("https://c.example", None, Some("[fd00::1]:443")).is_ok());
        assert!(endpoint("https://c.example", None, Some("fd00::1:443")).is_err(), "IPv6 needs brackets");
    }

    #[test]
    fn unusable_kubeconfigs_are_named_and_their_keys_kept_out() {
        let secret = "S".repeat(64);
        let bad = format!("apiVersion: v1\nclusters: \"{secret}\"\n");
        let error = KubeAccess::from_kubeconfigs(&[("old admin".into(), bad)], None).unwrap_err().to_string();
        assert!(error.contains("old admin"), "{error}");
        assert!(!error.contains(&secret), "{error}");
        let no_context = "apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n";
        let error = KubeAccess::from_kubeconfigs(&[("x".into(), no_context.into())], None).unwrap_err().to_string();
        assert!(error.contains("no current-context"), "{error}");
        let text = admin_kubeconfig("c", "https://c.example", CA, CERT, KEY);
        let error = KubeAccess::from_kubeconfigs(&[("x".into(), text)], Some("nonsense")).unwrap_err();
        assert!(matches!(error, KubeOpsError::ApiserverAddress { .. }), "{error}");
        assert!(matches!(KubeAccess::from_kubeconfigs(&[], None), Err(KubeOpsError::NoKubeconfig)));
    }

    #[test]
    fn scrub_hides_long_quoted_values_only() {
        assert_eq!(scrub("bad \"short\" value"), "bad \"short\" value");
        let long = "A".repeat(40);
        assert_eq!(scrub(&format!("invalid type: string \"{long}\", expected x")), "invalid type: string \"<redacted>\", expected x");
        assert_eq!(scrub(&format!("tail \"{long}")), "tail \"<redacted>");
    }

    #[test]
    fn rollouts_are_done_when_updated_desired_and_available_agree() {
        assert_eq!(rollout_problem(Some(2), Some(2), 1, 1, 1, 1), None);
        assert_eq!(rollout_problem(Some(1), Some(1), 0, 0, 0, 0), None);
        assert_eq!(rollout_problem(Some(2), Some(2), 1, 0, 1, 2).unwrap(), "1 desired, 0 updated, 1 available, 2 total");
        assert!(rollout_problem(Some(3), Some(2), 1, 1, 1, 1).unwrap().contains("not yet observed"));
        assert!(rollout_problem(None, None, 2, 2, 1, 2).is_some());
    }

    #[test]
    fn conditions_read_like_kubectl_describe() {
        assert_eq!(condition_text("Ready", "False", Some("KubeletNotReady"), Some("PLEG is not healthy")), "Ready=False (KubeletNotReady: PLEG is not healthy)");
        assert_eq!(condition_text("Ready", "Unknown", None, None), "Ready=Unknown");
    }

    // delete_one against a stand-in apiserver on 127.0.0.1 that answers in kube-apiserver's
    // wire format, through the real kube client: the 409 handling depends on how kube decodes
    // a Status body into kube::Error::Api, which a unit test of is_conflict alone would not show.

    const POD: &str = "kube-proxy-x7k2p";

    /// The Status kube-apiserver sends with a failed request (key order as it writes them).
    fn failure(code: u16, reason: &str, message: &str, name: &str, plural: &str) -> String {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "details": { "name": name, "kind": plural }, "code": code,
        })
        .to_string()
    }

    fn conflict(plural: &str, name: &str) -> (u16, String) {
        let message = format!("Operation cannot be fulfilled on {plural} \"{name}\": the object has been modified; please apply your changes to the latest version and try again");
        (409, failure(409, "Conflict", &message, name, plural))
    }

    fn pod_conflict() -> (u16, String) {
        conflict("pods", POD)
    }

    fn pod_not_found() -> (u16, String) {
        (404, failure(404, "NotFound", &format!("pods \"{POD}\" not found"), POD, "pods"))
    }

    /// What a pod DELETE returns: the pod itself (pods are registered with ReturnDeletedObject),
    /// now carrying its deletion timestamp and grace period.
    fn pod_deleted() -> (u16, String) {
        let pod = json!({
            "kind": "Pod", "apiVersion": "v1",
            "metadata": {
                "name": POD, "generateName": "kube-proxy-", "namespace": KUBE_SYSTEM,
                "uid": "5f1c7a52-3f0e-4a5e-9d55-0d3e7c2b8a11", "resourceVersion": "48213",
                "creationTimestamp": "2026-11-01T10:00:00Z", "deletionTimestamp": "2026-11-28T04:00:30Z",
                "deletionGracePeriodSeconds": 30, "labels": { "k8s-app": "kube-proxy" },
            },
            "spec": {
                "nodeName": "k8s-agentpool1-12345678-0",
                "containers": [{ "name": "kube-proxy", "image": "mcr.microsoft.com/oss/kubernetes/kube-proxy:v1.30.10" }],
            },
            "status": { "phase": "Running" },
        });
        (200, pod.to_string())
    }

    /// Serves one HTTP/1.1 connection (keep-alive, Content-Length bodies: what kube's client
    /// sends to an http:// server). The n-th request of the server gets `answers[n]`, the last
    /// answer once they run out.
    async fn serve(stream: tokio::net::TcpStream, answers: Arc<Vec<(u16, String)>>, seen: Arc<Mutex<Vec<String>>>) {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::io::BufReader::new(stream);
        loop {
            let mut request_line = String::new();
            if stream.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                return;
            }
            let mut length = 0;
            loop {
                let mut header = String::new();
                if stream.read_line(&mut header).await.unwrap_or(0) == 0 {
                    return;
                }
                let header = header.trim_end();
                if header.is_empty() {
                    break;
                }
                if let Some((name, value)) = header.split_once(':') {
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
            }
            let mut body = vec![0; length];
            if stream.read_exact(&mut body).await.is_err() {
                return;
            }
            let (code, text) = {
                let mut seen = seen.lock().unwrap();
                seen.push(request_line.trim_end().to_owned());
                answers[(seen.len() - 1).min(answers.len() - 1)].clone()
            };
            let phrase = match code {
                200 => "OK",
                403 => "Forbidden",
                404 => "Not Found",
                409 => "Conflict",
                _ => "Unknown",
            };
            let response = format!("HTTP/1.1 {code} {phrase}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}", text.len());
            if stream.get_mut().write_all(response.as_bytes()).await.is_err() {
                return;
            }
        }
    }

    /// A kube client for a stand-in apiserver that gives `answers` in turn, and the request
    /// lines the server has seen.
    async fn stand_in(answers: Vec<(u16, String)>) -> (kube::Client, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (answers, seen2) = (Arc::new(answers), seen.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, answers.clone(), seen2.clone()));
            }
        });
        install_crypto_provider();
        let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
        (client, seen)
    }

    /// delete_one of the kube-proxy pod; a hang (a request the stand-in misread) fails the test.
    async fn delete_pod(client: kube::Client) -> Result<bool, KubeOpsError> {
        let pods: Api<Pod> = Api::namespaced(client, KUBE_SYSTEM);
        tokio::time::timeout(Duration::from_secs(30), delete_one(pods, format!("pod {KUBE_SYSTEM}/{POD}"))).await.expect("delete_one answered within 30 s")
    }

    fn pod_deletes(seen: &Mutex<Vec<String>>) -> usize {
        let seen = seen.lock().unwrap();
        let path = format!("DELETE /api/v1/namespaces/{KUBE_SYSTEM}/pods/{POD}");
        assert!(seen.iter().all(|line| line.starts_with(&path)), "only DELETEs of the pod: {seen:?}");
        seen.len()
    }

    #[tokio::test]
    async fn a_delete_answered_409_is_sent_again_until_it_succeeds() {
        let (client, seen) = stand_in(vec![pod_conflict(), pod_conflict(), pod_deleted()]).await;
        assert!(delete_pod(client).await.unwrap(), "deleted, not 'already gone'");
        assert_eq!(pod_deletes(&seen), 3);

        // A secret's DELETE answers with a Status of Success instead of the object: deleted too.
        let secret = "default-token-abcde";
        let success = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": { "name": secret, "kind": "secrets", "uid": "0b6a3e1c-1d4f-4c2e-8f6e-2f9a7c0d5e41" },
        });
        let (client, seen) = stand_in(vec![conflict("secrets", secret), (200, success.to_string())]).await;
        let secrets: Api<Secret> = Api::namespaced(client, "default");
        assert!(delete_one(secrets, format!("secret default/{secret}")).await.unwrap());
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_delete_that_keeps_conflicting_fails_naming_the_object_and_the_409() {
        let (client, seen) = stand_in(vec![pod_conflict()]).await;
        let error = delete_pod(client).await.unwrap_err().to_string();
        assert!(error.contains(&format!("deleting pod {KUBE_SYSTEM}/{POD}")), "{error}");
        assert!(error.contains("409") && error.contains("Conflict"), "{error}");
        assert_eq!(pod_deletes(&seen), 4, "the first DELETE and 3 more, then it gives up");

        // Other failures are not retried.
        let message = format!("pods \"{POD}\" is forbidden: User \"system:anonymous\" cannot delete resource \"pods\" in API group \"\" in the namespace \"{KUBE_SYSTEM}\"");
        let (client, seen) = stand_in(vec![(403, failure(403, "Forbidden", &message, POD, "pods"))]).await;
        let error = delete_pod(client).await.unwrap_err().to_string();
        assert!(error.contains("403") && error.contains(POD), "{error}");
        assert_eq!(pod_deletes(&seen), 1);
    }

    #[tokio::test]
    async fn an_object_already_gone_is_not_an_error() {
        let (client, seen) = stand_in(vec![pod_not_found()]).await;
        assert!(!delete_pod(client).await.unwrap(), "reported as already gone");
        assert_eq!(pod_deletes(&seen), 1);
        // Gone by the time the delete is sent again (kubelet finished with it, or someone else deleted it).
        let (client, seen) = stand_in(vec![pod_conflict(), pod_not_found()]).await;
        assert!(!delete_pod(client).await.unwrap());
        assert_eq!(pod_deletes(&seen), 2);
    }

    /// A CA and a certificate it signed for `name`, both as PEM, plus the leaf's key.
    fn ca_and_leaf(name: &str) -> (String, String, String) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "ca");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap().signed_by(&leaf_key, &issuer).unwrap();
        (ca.pem(), leaf.pem(), leaf_key.serialize_pem())
    }

    /// An apiserver stand-in that, like the real one, trusts client certificates of one CA
    /// only; whoever gets through is answered GET /version. Returns its address.
    async fn tls_apiserver(serving: &(String, String, String), client_ca: &str) -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        install_crypto_provider();
        let pem_der = |pem: &str| rustls_pemfile::certs(&mut pem.as_bytes()).next().unwrap().unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pem_der(client_ca)).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots)).build().unwrap();
        let key = rustls_pemfile::private_key(&mut serving.2.as_bytes()).unwrap().unwrap();
        let config = rustls::ServerConfig::builder().with_client_cert_verifier(verifier).with_single_cert(vec![pem_der(&serving.1)], key).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut session) = acceptor.accept(tcp).await else { return };
                    let mut request = Vec::new();
                    let mut buffer = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match session.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buffer[..n]),
                        }
                    }
                    let (status, body) = if request.starts_with(b"GET /version ") {
                        ("200 OK", r#"{"major":"1","minor":"33","gitVersion":"v1.33.0"}"#)
                    } else {
                        ("404 Not Found", r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#)
                    };
                    let answer = format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                    let _ = session.write_all(answer.as_bytes()).await;
                    let _ = session.shutdown().await;
                });
            }
        });
        address
    }

    #[tokio::test]
    async fn a_refused_client_certificate_is_named_as_such_every_time() {
        let name = "apiserver.test";
        let (cluster_ca, serving_cert, serving_key) = ca_and_leaf(name);
        let (_, foreign_cert, foreign_key) = ca_and_leaf("foreign-admin");
        let address = tls_apiserver(&(cluster_ca.clone(), serving_cert, serving_key), &cluster_ca).await;
        let kubeconfig = admin_kubeconfig("lab", &format!("https://{name}:443"), &cluster_ca, &foreign_cert, &foreign_key);
        let access = KubeAccess::from_kubeconfigs(&[("foreign".into(), kubeconfig)], Some(&address.to_string())).unwrap();
        let config = candidate_config(&access.candidates[0]).await.unwrap();

        // The probe sees the server's alert, whatever hyper happened to see first.
        let refusal = handshake_refusal(&config, Duration::from_secs(5)).await.expect("the server refused the certificate");
        assert!(refusal.contains("received fatal alert"), "{refusal}");
        // End to end. hyper rarely loses the race against this local stand-in (it did once in
        // CI against the lab's apiserver), so the probe's own assertion above is what would fail
        // first; this loop checks the message an operator gets.
        for _ in 0..20 {
            let error = access.client(Duration::from_secs(5)).await.err().expect("refused").to_string();
            assert!(error.contains("foreign") && error.contains("not signed by the CA"), "{error}");
            assert!(!error.contains("PRIVATE KEY"), "{error}");
        }
    }

    #[tokio::test]
    async fn an_accepted_client_certificate_is_not_reported_as_refused() {
        let name = "apiserver.test";
        let (cluster_ca, serving_cert, serving_key) = ca_and_leaf(name);
        let client_ca_and_cert = ca_and_leaf("admin");
        let address = tls_apiserver(&(cluster_ca.clone(), serving_cert, serving_key), &client_ca_and_cert.0).await;
        let kubeconfig = admin_kubeconfig("lab", &format!("https://{name}:443"), &cluster_ca, &client_ca_and_cert.1, &client_ca_and_cert.2);
        let access = KubeAccess::from_kubeconfigs(&[("admin".into(), kubeconfig)], Some(&address.to_string())).unwrap();
        let config = candidate_config(&access.candidates[0]).await.unwrap();
        assert_eq!(handshake_refusal(&config, Duration::from_secs(5)).await, None);
        // The stand-in answers /version only, so the namespace read is what fails, not TLS.
        let error = access.client(Duration::from_secs(5)).await.err().expect("the stand-in has no namespaces").to_string();
        assert!(error.contains("GET namespace kube-system") && !error.contains("not signed by the CA"), "{error}");
    }
}
