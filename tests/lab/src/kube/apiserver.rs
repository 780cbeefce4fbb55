//! The kube-apiserver stand-in one lab master runs on <master ip>:443. It terminates TLS
//! with apiserver.crt/key, authenticates callers by client certificates chaining to ca.crt
//! (user = CN, groups = O) or by service-account tokens it signed, keeps every object in the
//! cluster's real etcd through etcdclient.crt/key, and speaks the Kubernetes REST API in its
//! real JSON shapes so kubectl and kube-rs work against it. The controllers that make the
//! cluster feel alive (token secrets, workload pods, node lifecycle) run beside it.

use crate::kube::controller::{self, ControllerConfig};
use crate::kube::credentials::{self, CertIdentity, CredentialError};
use crate::kube::discovery;
use crate::kube::error::ApiError;
use crate::kube::etcd::{EtcdClient, EtcdError};
use crate::kube::patch::{self, PatchType};
use crate::kube::select::{FieldSelector, LabelSelector};
use crate::kube::store::{self, resource_type, ResourceType, Store, NAMESPACES, SECRETS};
use crate::kube::token::{TokenError, TokenSigner};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// How one apiserver is configured; lab-infra writes it as JSON for `lab apiserver --config`.
/// Field names follow kube-apiserver's flags.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiserverConfig {
    /// Where to listen (the master's IP and 443 in the lab).
    pub bind_address: SocketAddr,
    /// The master's node name (k8s-master-<suffix>-<i>); names this apiserver in leader election.
    pub node_name: String,
    /// Serving certificate and key (apiserver.crt / apiserver.key).
    pub tls_cert_file: PathBuf,
    pub tls_private_key_file: PathBuf,
    /// The CA client certificates must chain to (ca.crt).
    pub client_ca_file: PathBuf,
    /// etcd client URLs, `https://ip:2379`.
    pub etcd_servers: Vec<String>,
    pub etcd_cafile: PathBuf,
    pub etcd_certfile: PathBuf,
    pub etcd_keyfile: PathBuf,
    /// The key service-account tokens are signed and verified with; AKS Engine uses
    /// apiserver.key, which is the default.
    #[serde(default)]
    pub service_account_key_file: Option<PathBuf>,
    /// The address advertised in discovery (defaults to bind_address).
    #[serde(default)]
    pub advertise_address: Option<IpAddr>,
    #[serde(default)]
    pub controllers: ControllerConfig,
    /// How long after start `/readyz` (and `/healthz`) keep failing, as on a real
    /// kube-apiserver, which serves on its port at once but reports ready only once its
    /// post-start hooks have run and its informer caches have synced against etcd. Requests
    /// are served meanwhile (the real one serves system:masters then). Text ("15s").
    #[serde(default, with = "crate::kube::controller::duration_text")]
    pub startup_delay: Duration,
    /// kube-apiserver's `--shutdown-delay-duration` (default 0): on a stop, `/readyz` fails at
    /// once while everything else is served normally for this long; then the listener closes,
    /// HTTP/2 clients get GOAWAY, watches end, and in-flight requests get `SHUTDOWN_GRACE`.
    #[serde(default, with = "crate::kube::controller::duration_text")]
    pub shutdown_delay_duration: Duration,
}

/// How long in-flight requests may run after the listener closed before the apiserver exits.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Where an apiserver is in its life: what `/readyz` reports and what connections do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Serving; ready once the start-up delay has passed.
    Serving,
    /// Stop asked: `/readyz` fails, everything else is served (the shutdown delay).
    Stopping,
    /// Listener closed; connections are told GOAWAY and drained.
    Closing,
}

/// A config file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read the config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the config file {path} is not a valid {what} (JSON): {source}")]
    Parse { path: PathBuf, what: &'static str, source: serde_json::Error },
}

/// Reads a JSON config file (what `lab apiserver --config FILE` and `lab kubelet --config
/// FILE` are given).
pub fn read_config_file<T: serde::de::DeserializeOwned>(path: &std::path::Path, what: &'static str) -> Result<T, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read { path: path.to_owned(), source })?;
    serde_json::from_str(&text).map_err(|source| ConfigFileError::Parse { path: path.to_owned(), what, source })
}

impl ApiserverConfig {
    /// A master's apiserver as AKS Engine sets it up: listening on the master's IP at 443,
    /// certificates from /etc/kubernetes/certs (under `root`; "/" when running inside the
    /// node's mount namespace), etcd through the local member at 127.0.0.1:2379 with
    /// etcdclient.crt/key, tokens signed with apiserver.key.
    pub fn aks_engine_master(root: &std::path::Path, node_name: &str, ip: IpAddr) -> Self {
        let cert = |name: &str| crate::kube::kubelet::node_path(root, &std::path::Path::new("/etc/kubernetes/certs").join(name));
        Self {
            bind_address: SocketAddr::new(ip, 443),
            node_name: node_name.to_owned(),
            tls_cert_file: cert("apiserver.crt"),
            tls_private_key_file: cert("apiserver.key"),
            client_ca_file: cert("ca.crt"),
            etcd_servers: vec!["https://127.0.0.1:2379".to_owned()],
            etcd_cafile: cert("ca.crt"),
            etcd_certfile: cert("etcdclient.crt"),
            etcd_keyfile: cert("etcdclient.key"),
            service_account_key_file: None,
            advertise_address: None,
            controllers: ControllerConfig::default(),
            startup_delay: Duration::ZERO,
            shutdown_delay_duration: Duration::ZERO,
        }
    }

    /// Reads the config from a JSON file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigFileError> {
        read_config_file(path, "apiserver config")
    }
}

/// Why the apiserver could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ApiserverError {
    #[error("serving certificate: {0}")]
    Serving(CredentialError),
    #[error("client CA: {0}")]
    ClientCa(CredentialError),
    #[error("etcd client: {0}")]
    Etcd(#[from] EtcdError),
    #[error("service-account signing key: {0}")]
    SigningKey(#[from] TokenError),
    #[error("TLS settings rejected: {0}")]
    Tls(String),
    #[error("cannot listen on {address}: {source}")]
    Bind { address: SocketAddr, source: std::io::Error },
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

/// What every request handler shares.
pub struct ApiState {
    pub config: ApiserverConfig,
    pub store: Store,
    pub signer: TokenSigner,
    /// ca.crt as PEM, put into token secrets as Kubernetes does.
    pub ca_pem: String,
    server_address: String,
    /// When the start-up delay ends.
    ready_at: std::time::Instant,
    phase: tokio::sync::watch::Sender<Phase>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState").field("node_name", &self.config.node_name).finish_non_exhaustive()
    }
}

type Body = BoxBody<Bytes, Infallible>;

const MAX_BODY: usize = 3 * 1024 * 1024;

impl ApiState {
    /// Reads every certificate and key the config names; fails if any is unusable.
    pub fn load(config: ApiserverConfig) -> Result<Self, ApiserverError> {
        let etcd = EtcdClient::new(config.etcd_servers.clone(), &config.etcd_cafile, &config.etcd_certfile, &config.etcd_keyfile)?;
        let key_file = config.service_account_key_file.clone().unwrap_or_else(|| config.tls_private_key_file.clone());
        let signer = TokenSigner::from_key_file(&key_file)?;
        let ca_pem = std::fs::read_to_string(&config.client_ca_file)
            .map_err(|source| ApiserverError::ClientCa(CredentialError::Read { path: config.client_ca_file.clone(), source }))?;
        let address = config.advertise_address.unwrap_or(config.bind_address.ip());
        let server_address = SocketAddr::new(address, config.bind_address.port()).to_string();
        let ready_at = std::time::Instant::now() + config.startup_delay;
        let (phase, _) = tokio::sync::watch::channel(Phase::Serving);
        Ok(Self { config, store: Store::new(etcd), signer, ca_pem, server_address, ready_at, phase })
    }

    /// The apiserver's current phase.
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Resolves once the apiserver has reached `phase` (or gone past it).
    async fn reached(&self, phase: Phase) {
        let mut rx = self.phase.subscribe();
        let _ = rx.wait_for(|p| *p >= phase).await;
    }
}

fn server_tls(config: &ApiserverConfig) -> Result<Arc<rustls::ServerConfig>, ApiserverError> {
    let roots = credentials::load_roots(&config.client_ca_file).map_err(ApiserverError::ClientCa)?;
    // Client certificates are optional at the handshake, as on kube-apiserver: callers may
    // use bearer tokens instead. A certificate that is presented must chain to ca.crt, so a
    // foreign one fails the handshake itself.
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), credentials::provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| ApiserverError::Tls(e.to_string()))?;
    let certs = credentials::load_certs(&config.tls_cert_file).map_err(ApiserverError::Serving)?;
    let key = credentials::load_key(&config.tls_private_key_file).map_err(ApiserverError::Serving)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(credentials::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ApiserverError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| ApiserverError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

/// Binds `config.bind_address` and serves until `shutdown` completes.
pub async fn run(config: ApiserverConfig, shutdown: impl Future<Output = ()>) -> Result<(), ApiserverError> {
    let listener = TcpListener::bind(config.bind_address)
        .await
        .map_err(|source| ApiserverError::Bind { address: config.bind_address, source })?;
    serve(listener, config, shutdown).await
}

/// Serves on an already bound listener until `shutdown` completes. Connections and
/// controllers still running then are cancelled.
///
/// The stop follows kube-apiserver's graceful termination: once `shutdown` completes,
/// `/readyz` fails at once and everything is still served for `shutdown_delay_duration`;
/// then the listener closes, every connection is shut down gracefully (HTTP/2 GOAWAY,
/// HTTP/1.1 `Connection: close`), watches end, and requests still running after
/// `SHUTDOWN_GRACE` are cancelled.
pub async fn serve(listener: TcpListener, config: ApiserverConfig, shutdown: impl Future<Output = ()>) -> Result<(), ApiserverError> {
    let tls = server_tls(&config)?;
    let state = Arc::new(ApiState::load(config)?);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut controllers = tokio::task::JoinSet::new();
    if state.config.controllers.enabled {
        controllers.spawn(controller::run(state.clone()));
    }
    let mut connections = tokio::task::JoinSet::new();
    let accept = |connections: &mut tokio::task::JoinSet<()>, accepted: std::io::Result<(tokio::net::TcpStream, SocketAddr)>| {
        if let Ok((stream, peer)) = accepted {
            let acceptor = acceptor.clone();
            let state = state.clone();
            connections.spawn(async move { serve_connection(state, acceptor, stream, peer).await });
        }
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accept(&mut connections, accepted),
            // Reap finished connection tasks so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    state.phase.send_replace(Phase::Stopping);
    tracing::info!(delay = ?state.config.shutdown_delay_duration, "stop requested: /readyz fails; serving on for the shutdown delay");
    let delay = tokio::time::sleep(state.config.shutdown_delay_duration);
    tokio::pin!(delay);
    loop {
        tokio::select! {
            _ = &mut delay => break,
            accepted = listener.accept() => accept(&mut connections, accepted),
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    state.phase.send_replace(Phase::Closing);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::info!(left = connections.len(), "requests still running after the grace period are cancelled");
    }
    connections.shutdown().await;
    controllers.shutdown().await;
    // Hand leadership over at once rather than after the lease runs out.
    controller::release_leadership(&state).await;
    Ok(())
}

async fn serve_connection(state: Arc<ApiState>, acceptor: tokio_rustls::TlsAcceptor, stream: tokio::net::TcpStream, peer: SocketAddr) {
    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, "TLS handshake failed: {e}");
            return;
        }
        Err(_) => return,
    };
    let identity: Option<CertIdentity> = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(credentials::identity_of);
    let service_state = state.clone();
    let service = hyper::service::service_fn(move |req| {
        let state = service_state.clone();
        let identity = identity.clone();
        async move { Ok::<_, Infallible>(handle(state, identity, req).await) }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(tls), service);
    tokio::pin!(connection);
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        _ = state.reached(Phase::Closing) => {
            // HTTP/2: GOAWAY, then the open streams finish; HTTP/1.1: close after the request.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(%peer, "connection ended: {e}");
    }
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

fn json_response(code: u16, value: &impl Serialize) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(full(body))
        .expect("static response parts are valid")
}

fn text_response(code: u16, text: String) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "text/plain; charset=utf-8")
        .body(full(text))
        .expect("static response parts are valid")
}

fn error_response(error: &ApiError) -> Response<Body> {
    json_response(error.code, &error.to_status())
}

/// One parsed request, body read.
struct ApiRequest {
    method: Method,
    path: String,
    query: HashMap<String, String>,
    accept: String,
    content_type: String,
    body: Bytes,
}

impl ApiRequest {
    fn param(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }

    fn json_body(&self) -> Result<Value, ApiError> {
        serde_json::from_slice(&self.body).map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
    }
}

async fn handle(state: Arc<ApiState>, identity: Option<CertIdentity>, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return error_response(&ApiError::bad_request(format!("could not read the request body: {e}"))),
    };
    let request = ApiRequest {
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default(),
        accept: header("accept"),
        content_type: header("content-type"),
        body,
    };
    let authorization = header("authorization");
    let response = route(&state, identity, &authorization, &request).await;
    let response = response.unwrap_or_else(|e| error_response(&e));
    tracing::debug!(method = %request.method, path = %request.path, status = response.status().as_u16(), "request");
    response
}

async fn authenticate(state: &ApiState, identity: Option<CertIdentity>, authorization: &str) -> Result<User, ApiError> {
    if let Some(id) = identity {
        return Ok(User { name: id.user, groups: id.groups });
    }
    let token = authorization
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(ApiError::unauthorized)?;
    let claims = state.signer.verify(token).map_err(|_| ApiError::unauthorized())?;
    // Legacy tokens are only good while their secret still holds them, as in Kubernetes.
    let secret = state.store.get(&SECRETS, Some(&claims.namespace), &claims.secret_name).await?;
    let stored = secret
        .as_ref()
        .and_then(|s| s["data"]["token"].as_str())
        .and_then(|t| B64.decode(t).ok());
    if stored.as_deref() != Some(token.as_bytes()) {
        return Err(ApiError::unauthorized());
    }
    Ok(User {
        name: claims.sub,
        groups: vec![
            "system:serviceaccounts".to_owned(),
            format!("system:serviceaccounts:{}", claims.namespace),
            "system:authenticated".to_owned(),
        ],
    })
}

async fn route(state: &Arc<ApiState>, identity: Option<CertIdentity>, authorization: &str, req: &ApiRequest) -> Result<Response<Body>, ApiError> {
    let path = req.path.trim_end_matches('/');
    match path {
        "/healthz" | "/livez" | "/readyz" | "/healthz/etcd" | "/readyz/etcd" | "/livez/ping" | "/healthz/ping" => {
            return Ok(health(state, path, req.param("verbose").is_some()).await)
        }
        "/version" => return Ok(json_response(200, &discovery::version())),
        _ => {}
    }
    let user = authenticate(state, identity, authorization).await?;
    tracing::trace!(user = %user.name, "authenticated");
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        ["api"] => Ok(json_response(200, &discovery::core_versions(&state.server_address))),
        ["apis"] => Ok(json_response(200, &discovery::group_list())),
        ["api", version] => discovery::resource_list("", version)
            .map(|l| json_response(200, &l))
            .ok_or_else(|| ApiError::path_not_found(path)),
        ["apis", group] => discovery::group(group).map(|g| json_response(200, &g)).ok_or_else(|| ApiError::path_not_found(path)),
        ["apis", group, version] => discovery::resource_list(group, version)
            .map(|l| json_response(200, &l))
            .ok_or_else(|| ApiError::path_not_found(path)),
        ["api", version, rest @ ..] => resource_request(state, req, "", version, rest).await,
        ["apis", group, version, rest @ ..] => resource_request(state, req, group, version, rest).await,
        _ => Err(ApiError::path_not_found(path)),
    }
}

async fn health(state: &ApiState, path: &str, verbose: bool) -> Response<Body> {
    let name = path.trim_start_matches('/').split('/').next().unwrap_or("healthz");
    if !path.ends_with("/ping") {
        // The checks kube-apiserver reports failing in these phases (`?verbose` lists them).
        let failing = match state.phase() {
            Phase::Stopping | Phase::Closing if name == "readyz" => Some("[+]ping ok\n[-]shutdown failed: reason withheld\n"),
            Phase::Serving if name != "livez" && std::time::Instant::now() < state.ready_at => {
                Some("[+]ping ok\n[+]etcd ok\n[-]informer-sync failed: reason withheld\n[-]poststarthook/rbac/bootstrap-roles failed: reason withheld\n")
            }
            _ => None,
        };
        if let Some(checks) = failing {
            return text_response(500, format!("{checks}{name} check failed\n"));
        }
    }
    let check_etcd = !path.starts_with("/livez") && !path.ends_with("/ping");
    let etcd = if check_etcd {
        match tokio::time::timeout(Duration::from_secs(3), state.store.etcd().revision()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".to_owned()),
        }
    } else {
        Ok(())
    };
    match etcd {
        Ok(()) if verbose => text_response(200, format!("[+]ping ok\n[+]etcd ok\n{name} check passed\n")),
        Ok(()) => text_response(200, "ok".to_owned()),
        Err(reason) => {
            tracing::warn!("{name}: etcd check failed: {reason}");
            text_response(500, format!("[+]ping ok\n[-]etcd failed: reason withheld\n{name} check failed\n"))
        }
    }
}

/// Which object(s) a resource path names.
struct Target {
    rt: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_target(group: &str, version: &str, rest: &[&str]) -> Result<Target, ApiError> {
    let not_found = || ApiError::path_not_found(&format!("/{}", rest.join("/")));
    let owned = |s: Option<&&str>| s.map(|s| (*s).to_owned());
    let (namespace, plural, name, subresource) = match rest {
        ["namespaces", ns, plural, tail @ ..] if resource_type(group, version, plural).is_some_and(|rt| rt.namespaced) => {
            if tail.len() > 2 {
                return Err(not_found());
            }
            (Some((*ns).to_owned()), *plural, owned(tail.first()), owned(tail.get(1)))
        }
        [plural, tail @ ..] => {
            if tail.len() > 2 {
                return Err(not_found());
            }
            (None, *plural, owned(tail.first()), owned(tail.get(1)))
        }
        [] => return Err(not_found()),
    };
    let rt = resource_type(group, version, plural).ok_or_else(not_found)?;
    if !rt.namespaced && namespace.is_some() {
        return Err(not_found());
    }
    match subresource.as_deref() {
        None => {}
        Some("status") if rt.has_status => {}
        Some("scale") if rt.has_scale => {}
        Some(_) => return Err(not_found()),
    }
    Ok(Target { rt, namespace, name, subresource })
}

async fn resource_request(state: &Arc<ApiState>, req: &ApiRequest, group: &str, version: &str, rest: &[&str]) -> Result<Response<Body>, ApiError> {
    let target = parse_target(group, version, rest)?;
    let ns = target.namespace.as_deref();
    let store = &state.store;
    let rt = target.rt;
    let dry_run = req.param("dryRun").is_some();
    match (&req.method, target.name.as_deref()) {
        (&Method::GET, None) if matches!(req.param("watch"), Some("true" | "1")) => watch(state.clone(), req, rt, ns).await,
        (&Method::GET, None) => list(store, req, &rt, ns).await,
        (&Method::GET, Some(name)) => {
            let object = store.get_existing(&rt, ns, name).await?;
            if target.subresource.as_deref() == Some("scale") {
                return Ok(json_response(200, &scale_of(&object)));
            }
            Ok(render_one(req, &rt, object))
        }
        (&Method::POST, None) => {
            if rt.namespaced && ns.is_none() {
                return Err(ApiError::method_not_allowed("POST", &req.path));
            }
            if let Some(ns) = ns {
                store.get_existing(&NAMESPACES, None, ns).await?;
            }
            let mut object = req.json_body()?;
            if rt.plural == "namespaces" && object["status"]["phase"].is_null() {
                object["status"] = json!({ "phase": "Active" });
            }
            if dry_run {
                return Ok(json_response(201, &object));
            }
            let created = store.create(&rt, ns, object).await?;
            Ok(json_response(201, &created))
        }
        (&Method::PUT, Some(name)) => {
            let body = req.json_body()?;
            let current = store.get_existing(&rt, ns, name).await?;
            let expected = store::resource_version(&body)?;
            let next = match target.subresource.as_deref() {
                Some("scale") => with_replicas(&current, &body)?,
                sub => merge_subresource(&rt, &current, body, sub),
            };
            if dry_run {
                return Ok(json_response(200, &next));
            }
            let updated = store.update(&rt, ns, name, next, expected.or(store::resource_version(&current)?)).await?;
            Ok(respond_subresource(&target, updated))
        }
        (&Method::PATCH, Some(name)) => {
            let kind = PatchType::from_content_type(&req.content_type)?;
            let patch_body = req.json_body()?;
            let subresource = target.subresource.clone();
            let patched = |current: &Value| -> Result<Value, ApiError> {
                match subresource.as_deref() {
                    Some("scale") => {
                        let mut scale = scale_of(current);
                        patch::apply(&mut scale, &patch_body, kind)?;
                        with_replicas(current, &scale)
                    }
                    sub => {
                        let mut next = current.clone();
                        patch::apply(&mut next, &patch_body, kind)?;
                        Ok(merge_subresource(&rt, current, next, sub))
                    }
                }
            };
            let updated = if dry_run {
                patched(&store.get_existing(&rt, ns, name).await?)?
            } else {
                store
                    .modify(&rt, ns, name, |current| {
                        let next = patched(current)?;
                        let changed = next != *current;
                        *current = next;
                        Ok(changed)
                    })
                    .await?
            };
            Ok(respond_subresource(&target, updated))
        }
        (&Method::DELETE, Some(name)) => {
            if target.subresource.is_some() {
                return Err(ApiError::method_not_allowed("DELETE", &req.path));
            }
            let options: Value = if req.body.is_empty() { json!({}) } else { req.json_body()? };
            let expected = options["preconditions"]["resourceVersion"].as_str().and_then(|rv| rv.parse().ok());
            if dry_run {
                return Ok(json_response(200, &store.get_existing(&rt, ns, name).await?));
            }
            let deleted = store.delete(&rt, ns, name, expected).await?;
            Ok(json_response(200, &deleted))
        }
        (&Method::DELETE, None) => {
            let (items, _) = selected(store, req, &rt, ns).await?;
            let mut deleted = Vec::new();
            for item in items {
                let name = item["metadata"]["name"].as_str().unwrap_or_default().to_owned();
                let item_ns = item["metadata"]["namespace"].as_str().map(str::to_owned);
                match store.delete(&rt, item_ns.as_deref(), &name, None).await {
                    Ok(object) => deleted.push(object),
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(json_response(200, &json!({ "kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(), "metadata": {}, "items": deleted })))
        }
        (method, _) => Err(ApiError::method_not_allowed(method.as_str(), &req.path)),
    }
}

/// For writes through the main resource, the stored status stays; through /status, only
/// the status changes. That is what the status subresource means in Kubernetes.
fn merge_subresource(rt: &ResourceType, current: &Value, mut next: Value, subresource: Option<&str>) -> Value {
    match subresource {
        Some("status") => {
            let mut merged = current.clone();
            merged["status"] = next["status"].take();
            merged
        }
        _ if rt.has_status => {
            match current.get("status") {
                Some(status) => next["status"] = status.clone(),
                None => {
                    if let Some(map) = next.as_object_mut() {
                        map.remove("status");
                    }
                }
            }
            next
        }
        _ => next,
    }
}

fn respond_subresource(target: &Target, object: Value) -> Response<Body> {
    if target.subresource.as_deref() == Some("scale") {
        json_response(200, &scale_of(&object))
    } else {
        json_response(200, &object)
    }
}

fn selector_string(selector: &Value) -> String {
    selector["matchLabels"]
        .as_object()
        .map(|labels| labels.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect::<Vec<_>>().join(","))
        .unwrap_or_default()
}

/// The autoscaling/v1 Scale view of a Deployment.
fn scale_of(object: &Value) -> Value {
    let meta = &object["metadata"];
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"],
            "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": { "replicas": object["spec"]["replicas"].as_i64().unwrap_or(1) },
        "status": {
            "replicas": object["status"]["replicas"].as_i64().unwrap_or(0),
            "selector": selector_string(&object["spec"]["selector"]),
        }
    })
}

fn with_replicas(current: &Value, scale: &Value) -> Result<Value, ApiError> {
    let replicas = scale["spec"]["replicas"]
        .as_i64()
        .filter(|r| *r >= 0)
        .ok_or_else(|| ApiError::invalid("autoscaling", "scale", "", "spec.replicas: Invalid value: must be a non-negative integer"))?;
    let mut next = current.clone();
    next["spec"]["replicas"] = json!(replicas);
    Ok(next)
}

fn render_one(req: &ApiRequest, rt: &ResourceType, object: Value) -> Response<Body> {
    if discovery::wants_table(&req.accept) {
        let rv = object["metadata"]["resourceVersion"].as_str().map(str::to_owned);
        return json_response(200, &discovery::table(rt, &[object], rv.as_deref(), req.param("includeObject").unwrap_or("Metadata")));
    }
    json_response(200, &object)
}

async fn selected(store: &Store, req: &ApiRequest, rt: &ResourceType, ns: Option<&str>) -> Result<(Vec<Value>, i64), ApiError> {
    let labels = LabelSelector::parse(req.param("labelSelector").unwrap_or(""))?;
    let fields = FieldSelector::parse(req.param("fieldSelector").unwrap_or(""))?;
    let (items, revision) = store.list(rt, ns).await?;
    Ok((items.into_iter().filter(|o| labels.matches(o) && fields.matches(o)).collect(), revision))
}

async fn list(store: &Store, req: &ApiRequest, rt: &ResourceType, ns: Option<&str>) -> Result<Response<Body>, ApiError> {
    let (items, revision) = selected(store, req, rt, ns).await?;
    let rv = revision.to_string();
    if discovery::wants_table(&req.accept) {
        return Ok(json_response(200, &discovery::table(rt, &items, Some(&rv), req.param("includeObject").unwrap_or("Metadata"))));
    }
    Ok(json_response(
        200,
        &json!({
            "kind": format!("{}List", rt.kind),
            "apiVersion": rt.api_version(),
            "metadata": { "resourceVersion": rv },
            "items": items,
        }),
    ))
}

/// A watch: newline-delimited `{"type": ..., "object": ...}` events. Changes are found by
/// polling etcd and diffing; a watch from a resourceVersion starts from the store as it was
/// at that revision (etcd keeps history), so nothing between a list and its watch is lost.
async fn watch(state: Arc<ApiState>, req: &ApiRequest, rt: ResourceType, ns: Option<&str>) -> Result<Response<Body>, ApiError> {
    let labels = LabelSelector::parse(req.param("labelSelector").unwrap_or(""))?;
    let fields = FieldSelector::parse(req.param("fieldSelector").unwrap_or(""))?;
    let since: Option<i64> = match req.param("resourceVersion") {
        None | Some("0") => None,
        Some(rv) => Some(rv.parse().map_err(|_| ApiError::bad_request(format!("resourceVersion {rv:?} is not valid")))?),
    };
    let timeout = req.param("timeoutSeconds").and_then(|t| t.parse::<u64>().ok()).unwrap_or(1800).min(3600);
    let as_table = discovery::wants_table(&req.accept);
    let namespace = ns.map(str::to_owned);
    let matches = move |o: &Value| labels.matches(o) && fields.matches(o);
    let snapshot = move |items: Vec<Value>| -> BTreeMap<String, Value> {
        items
            .into_iter()
            .filter(|o| matches(o))
            .map(|o| (format!("{}/{}", o["metadata"]["namespace"].as_str().unwrap_or(""), o["metadata"]["name"].as_str().unwrap_or("")), o))
            .collect()
    };
    let mut known = match since {
        Some(rv) => snapshot(state.store.list_at(&rt, ns, Some(rv)).await.map_err(|e| {
            if e.code == 500 { ApiError { code: 410, reason: "Expired", ..e } } else { e }
        })?.0),
        None => BTreeMap::new(),
    };
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        while tokio::time::Instant::now() < deadline {
            let current = match state.store.list(&rt, namespace.as_deref()).await {
                Ok((items, _)) => snapshot(items),
                Err(_) => break,
            };
            let mut events = Vec::new();
            for (key, object) in &current {
                match known.get(key) {
                    None => events.push(("ADDED", object.clone())),
                    Some(old) if old["metadata"]["resourceVersion"] != object["metadata"]["resourceVersion"] => events.push(("MODIFIED", object.clone())),
                    Some(_) => {}
                }
            }
            for (key, object) in &known {
                if !current.contains_key(key) {
                    events.push(("DELETED", object.clone()));
                }
            }
            for (kind, object) in events {
                let object = if as_table { discovery::table(&rt, std::slice::from_ref(&object), None, "Metadata") } else { object };
                let mut line = serde_json::to_vec(&json!({ "type": kind, "object": object })).unwrap_or_default();
                line.push(b'\n');
                if sender.send(Ok(Frame::data(Bytes::from(line)))).await.is_err() {
                    return;
                }
            }
            known = current;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = sender.closed() => return,
                // A stopping apiserver ends its watches; clients re-list and watch elsewhere.
                _ = state.reached(Phase::Closing) => return,
            }
        }
    });
    let stream = futures::stream::unfold(receiver, |mut rx| async move { rx.recv().await.map(|frame| (frame, rx)) });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("static response parts are valid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_from_the_json_lab_infra_writes() {
        let text = r#"{
            "bind_address": "10.255.255.5:443",
            "node_name": "k8s-master-12345678-0",
            "tls_cert_file": "/etc/kubernetes/certs/apiserver.crt",
            "tls_private_key_file": "/etc/kubernetes/certs/apiserver.key",
            "client_ca_file": "/etc/kubernetes/certs/ca.crt",
            "etcd_servers": ["https://10.255.255.5:2379", "https://10.255.255.6:2379"],
            "etcd_cafile": "/etc/kubernetes/certs/ca.crt",
            "etcd_certfile": "/etc/kubernetes/certs/etcdclient.crt",
            "etcd_keyfile": "/etc/kubernetes/certs/etcdclient.key",
            "controllers": { "node_monitor_grace_period": "5s", "resync_period": "500ms" }
        }"#;
        let config: ApiserverConfig = serde_json::from_str(text).unwrap();
        assert_eq!(config.bind_address.port(), 443);
        assert_eq!(config.etcd_servers.len(), 2);
        assert!(config.service_account_key_file.is_none(), "defaults to the serving key");
        assert_eq!(config.controllers.node_monitor_grace_period, Duration::from_secs(5));
        assert_eq!(config.controllers.resync_period, Duration::from_millis(500));
        assert!(config.controllers.enabled && config.controllers.seed);

        let typo = text.replace("node_name", "nodename");
        assert!(serde_json::from_str::<ApiserverConfig>(&typo).is_err(), "unknown fields are refused");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("apiserver.json");
        std::fs::write(&file, text).unwrap();
        assert_eq!(ApiserverConfig::from_file(&file).unwrap().node_name, "k8s-master-12345678-0");
        let error = ApiserverConfig::from_file(&dir.path().join("missing.json")).unwrap_err().to_string();
        assert!(error.contains("missing.json"), "{error}");
        let master = ApiserverConfig::aks_engine_master(std::path::Path::new("/lab/m0"), "m0", "10.255.255.5".parse().unwrap());
        assert_eq!(master.tls_cert_file, PathBuf::from("/lab/m0/etc/kubernetes/certs/apiserver.crt"));
        assert_eq!(master.bind_address, "10.255.255.5:443".parse().unwrap());
        let bad_duration = text.replace("\"5s\"", "\"soon\"");
        let error = serde_json::from_str::<ApiserverConfig>(&bad_duration).unwrap_err().to_string();
        assert!(error.contains("soon"), "{error}");
    }

    #[test]
    fn resource_paths_name_namespaces_and_subresources() {
        let t = parse_target("", "v1", &["namespaces", "kube-system", "pods", "p", "status"]).unwrap();
        assert_eq!((t.rt.plural, t.namespace.as_deref(), t.name.as_deref(), t.subresource.as_deref()), ("pods", Some("kube-system"), Some("p"), Some("status")));
        let t = parse_target("", "v1", &["namespaces", "kube-system"]).unwrap();
        assert_eq!((t.rt.plural, t.name.as_deref()), ("namespaces", Some("kube-system")));
        let t = parse_target("apps", "v1", &["namespaces", "kube-system", "deployments", "d", "scale"]).unwrap();
        assert_eq!(t.subresource.as_deref(), Some("scale"));
        assert!(parse_target("apps", "v1", &["namespaces", "kube-system", "daemonsets", "d", "scale"]).is_err(), "no scale on daemonsets");
        assert!(parse_target("", "v1", &["namespaces", "x", "nodes"]).is_err(), "nodes are not namespaced");
        assert!(parse_target("", "v1", &["configmaps"]).is_err(), "unserved resources are 404");
    }
}
