//! The HTTPS server under the stand-in: TLS accept loop on hyper, request routing, the shape
//! of ARM replies (error JSON, request ids), bearer-token checks, fault injection and the call
//! log. Handlers in `oauth` and `compute` return a [`Reply`]; only this module touches hyper.

use super::faults::{CallLog, CallRecord, FaultHit, Faults};
use super::jwt::{sha1_thumbprint, TokenSigner};
use super::{compute, oauth, ArmConfig, ArmError, ClientCredential, VmControl};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// Largest request body read; token requests and ARM actions are far smaller.
const MAX_BODY_BYTES: usize = 1 << 20;

/// An application as the token endpoint checks it.
pub(crate) struct RegisteredPrincipal {
    pub client_id: String,
    pub credential: RegisteredCredential,
}

pub(crate) enum RegisteredCredential {
    Secret(String),
    Certificate { der: Vec<u8>, thumbprint: Vec<u8> },
}

/// State shared by every connection.
pub(crate) struct ServerState {
    pub config: ArmConfig,
    pub control: Arc<dyn VmControl>,
    pub faults: Faults,
    pub calls: CallLog,
    pub signer: TokenSigner,
    /// By lower-cased client id.
    pub principals: HashMap<String, RegisteredPrincipal>,
    pub operations: compute::Operations,
    operation_tasks: Mutex<JoinSet<()>>,
}

impl ServerState {
    pub fn spawn_operation(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = self.operation_tasks.lock().unwrap_or_else(|e| e.into_inner());
        // Reap finished operations so the set does not grow with every restart.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(work);
    }

    pub fn abort_operations(&self) {
        self.operation_tasks.lock().unwrap_or_else(|e| e.into_inner()).abort_all();
    }
}

/// Loads TLS material, registers principals, makes the signing key and binds the socket.
pub(crate) async fn prepare(
    config: ArmConfig,
    control: Arc<dyn VmControl>,
) -> Result<(Arc<ServerState>, TcpListener, TlsAcceptor), ArmError> {
    if config.audiences.is_empty() {
        return Err(ArmError::Config("at least one token audience is needed".into()));
    }
    let acceptor = load_acceptor(&config)?;
    let mut principals = HashMap::new();
    for sp in &config.service_principals {
        let credential = match &sp.credential {
            ClientCredential::Secret { secret } => RegisteredCredential::Secret(secret.0.clone()),
            ClientCredential::Certificate { certificate_pem } => {
                let der = first_certificate_der(certificate_pem.as_bytes()).ok_or_else(|| {
                    ArmError::Config(format!("the certificate registered for {} is not a PEM certificate", sp.client_id))
                })?;
                RegisteredCredential::Certificate { thumbprint: sha1_thumbprint(&der), der }
            }
        };
        principals.insert(
            sp.client_id.to_ascii_lowercase(),
            RegisteredPrincipal { client_id: sp.client_id.clone(), credential },
        );
    }
    let signer = TokenSigner::generate().map_err(ArmError::Crypto)?;
    let listener =
        TcpListener::bind(config.listen).await.map_err(|source| ArmError::Listen { addr: config.listen, source })?;
    let state = Arc::new(ServerState {
        config,
        control,
        faults: Faults::default(),
        calls: CallLog::default(),
        signer,
        principals,
        operations: compute::Operations::default(),
        operation_tasks: Mutex::new(JoinSet::new()),
    });
    Ok((state, listener, acceptor))
}

fn first_certificate_der(pem: &[u8]) -> Option<Vec<u8>> {
    rustls_pemfile::certs(&mut &pem[..]).next()?.ok().map(|c| c.to_vec())
}

fn load_acceptor(config: &ArmConfig) -> Result<TlsAcceptor, ArmError> {
    let files = super::ArmTlsFiles::in_dir(&config.tls_dir);
    let fail = |reason: String| ArmError::Tls { dir: config.tls_dir.clone(), reason };
    let cert_pem = std::fs::read(&files.server_cert)
        .map_err(|e| fail(format!("{}: {e} (run write_arm_tls first)", files.server_cert.display())))?;
    let key_pem =
        std::fs::read(&files.server_key).map_err(|e| fail(format!("{}: {e}", files.server_key.display())))?;
    let certs = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("{}: {e}", files.server_cert.display())))?;
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| fail(format!("{}: {e}", files.server_key.display())))?
        .ok_or_else(|| fail(format!("{} holds no private key", files.server_key.display())))?;
    // An explicit provider: with both aws-lc-rs and ring compiled in, rustls cannot pick one.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut server_config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| fail(format!("the server certificate and key do not fit: {e}")))?;
    server_config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server_config)))
}

/// Accepts until `shutdown` resolves; dropping the connection set aborts open connections.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    state: Arc<ServerState>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let Ok((tcp, _peer)) = accepted else { continue };
                let acceptor = acceptor.clone();
                let state = state.clone();
                connections.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// What a handler answers; turned into an HTTP response and a call record.
pub(crate) struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    pub error_code: Option<String>,
    pub client_id: Option<String>,
}

impl Reply {
    pub fn json(status: u16, value: &Value) -> Self {
        Self {
            status,
            headers: vec![("content-type", "application/json; charset=utf-8".into())],
            body: value.to_string().into_bytes(),
            error_code: None,
            client_id: None,
        }
    }

    pub fn empty(status: u16) -> Self {
        Self { status, headers: Vec::new(), body: Vec::new(), error_code: None, client_id: None }
    }

    /// ARM's error shape: `{"error":{"code":..,"message":..}}`.
    pub fn arm_error(status: u16, code: &str, message: impl Into<String>) -> Self {
        let mut reply = Self::json(status, &json!({"error": {"code": code, "message": message.into()}}));
        reply.error_code = Some(code.to_string());
        reply
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn client(mut self, client_id: Option<String>) -> Self {
        if self.client_id.is_none() {
            self.client_id = client_id;
        }
        self
    }
}

/// A parsed request as handlers see it.
pub(crate) struct ArmRequest {
    pub method: String,
    pub path: String,
    /// Percent-decoded path segments, empty ones dropped.
    pub segments: Vec<String>,
    pub query: Vec<(String, String)>,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// `host[:port]` the client addressed, for URLs the server hands back.
    pub host: String,
}

impl ArmRequest {
    pub fn query_value(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn api_version(&self) -> Option<&str> {
        self.query_value("api-version")
    }

    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn handle(state: Arc<ServerState>, req: hyper::Request<Incoming>) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let path = parts.uri.path().to_string();
    let query: Vec<(String, String)> = parts
        .uri
        .query()
        .map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let segments = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let host = parts
        .headers
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_else(|| state.config.listen.to_string());
    let request = ArmRequest {
        method: parts.method.as_str().to_string(),
        path,
        segments,
        query,
        headers: parts.headers,
        body,
        host,
    };

    // The lab's own control surface is neither faulted nor logged: it is not ARM.
    if request.segments.first().is_some_and(|s| s == "_lab") {
        return into_response(super::admin::handle(&state, &request));
    }
    let (reply, injected) = match state.faults.hit(&request.method, &request.path) {
        Some(hit) => (fault_reply(&hit), true),
        None => (route(&state, &request).await, false),
    };
    state.calls.push(CallRecord {
        seq: 0,
        at: OffsetDateTime::now_utc(),
        method: request.method.clone(),
        path: request.path.clone(),
        api_version: request.api_version().map(str::to_string),
        status: reply.status,
        error_code: reply.error_code.clone(),
        injected,
        client_id: reply.client_id.clone(),
    });
    into_response(reply)
}

fn fault_reply(hit: &FaultHit) -> Reply {
    match hit.status {
        429 => Reply::arm_error(
            429,
            "TooManyRequests",
            "The request is being throttled as the limit has been reached for operation type - Write_30Min. \
             For more information, see - https://aka.ms/vmthrottling",
        )
        .header("retry-after", hit.retry_after_secs.to_string()),
        500 => Reply::arm_error(500, "InternalExecutionError", "An internal execution error occurred. Please retry later."),
        503 => Reply::arm_error(503, "ServiceUnavailable", "The service is temporarily unavailable. Please retry later.")
            .header("retry-after", hit.retry_after_secs.to_string()),
        other => Reply::arm_error(other, "InjectedFault", format!("The lab injected status {other} for this path.")),
    }
}

async fn route(state: &Arc<ServerState>, req: &ArmRequest) -> Reply {
    let lower: Vec<String> = req.segments.iter().map(|s| s.to_ascii_lowercase()).collect();
    let lower: Vec<&str> = lower.iter().map(String::as_str).collect();
    match lower.as_slice() {
        ["metadata", "endpoints"] => only(req, "GET", || metadata(state, req)),
        [_, "oauth2", "token"] => only(req, "POST", || oauth::token(state, req, &req.segments[0], oauth::Flavor::V1)),
        // AD FS has no v2.0 endpoint: its web server answers 404, as stamps do for any path
        // AD FS does not serve (Azure/azure-sdk-for-js#11219: "The v2.0 endpoint doesn't
        // support Azure Stack ADFS Identity provider").
        ["adfs", "oauth2", "v2.0", "token"] => adfs_not_found(),
        [_, "oauth2", "v2.0", "token"] => {
            only(req, "POST", || oauth::token(state, req, &req.segments[0], oauth::Flavor::V2))
        }
        [_, "v2.0", ".well-known", "openid-configuration"] => only(req, "GET", || openid_configuration(state, req)),
        ["subscriptions", ..] => compute::route(state, req, &lower).await,
        _ => Reply::arm_error(404, "NotFound", format!("The requested path '{}' was not found.", req.path)),
    }
}

/// What the web server in front of AD FS answers for a path AD FS does not serve.
fn adfs_not_found() -> Reply {
    let mut reply = Reply::empty(404).header("content-type", "text/html");
    reply.body = b"<h2>Not Found</h2><hr><p>HTTP Error 404. The requested resource is not found.</p>".to_vec();
    reply.error_code = Some("NotFound".into());
    reply
}

/// Azure AD's OpenID Connect discovery document for a tenant, which the Microsoft
/// authentication libraries read before their first token request
/// (`https://login.microsoftonline.com/{tenant}/v2.0/.well-known/openid-configuration`).
/// AD FS serves its own at `/adfs/.well-known/openid-configuration`, not this one.
fn openid_configuration(state: &ServerState, req: &ArmRequest) -> Reply {
    let tenant = &req.segments[0];
    let known = state.config.identity_system == super::IdentitySystem::AzureAd
        && (tenant.eq_ignore_ascii_case(&state.config.tenant_id) || ["common", "organizations"].contains(&tenant.to_ascii_lowercase().as_str()));
    if !known {
        return Reply::json(
            400,
            &serde_json::json!({
                "error": "invalid_tenant",
                "error_description": format!("AADSTS90002: Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."),
                "error_codes": [90002],
            }),
        );
    }
    let base = format!("https://{}/{}", req.host, state.config.tenant_id);
    Reply::json(
        200,
        &serde_json::json!({
            "token_endpoint": format!("{base}/oauth2/v2.0/token"),
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": format!("https://{}/{}/discovery/v2.0/keys", req.host, state.config.tenant_id),
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": format!("{base}/v2.0"),
            "request_uri_parameter_supported": false,
            "authorization_endpoint": format!("{base}/oauth2/v2.0/authorize"),
            "device_authorization_endpoint": format!("{base}/oauth2/v2.0/devicecode"),
            "end_session_endpoint": format!("{base}/oauth2/v2.0/logout"),
            "tenant_region_scope": null,
            "cloud_instance_name": req.host,
        }),
    )
}

fn only(req: &ArmRequest, method: &str, serve: impl FnOnce() -> Reply) -> Reply {
    if req.method.eq_ignore_ascii_case(method) {
        serve()
    } else {
        method_not_allowed(req)
    }
}

pub(crate) fn method_not_allowed(req: &ArmRequest) -> Reply {
    Reply::arm_error(
        405,
        "MethodNotAllowed",
        format!("The requested resource does not support http method '{}'.", req.method),
    )
}

/// The Azure Stack metadata document. The login endpoint is this server itself (it also
/// plays the identity provider): the root for Azure AD, `/adfs` for AD FS, as on a stamp.
fn metadata(state: &ServerState, req: &ArmRequest) -> Reply {
    match req.api_version() {
        None => {
            return Reply::arm_error(
                400,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            )
        }
        Some("2015-01-01") | Some("2019-05-01") | Some("2020-06-01") | Some("2022-09-01") => {}
        Some(other) => {
            return Reply::arm_error(
                400,
                "InvalidApiVersionParameter",
                format!(
                    "The api-version '{other}' is invalid. The supported versions are '2022-09-01,2020-06-01,2019-05-01,2015-01-01'."
                ),
            )
        }
    }
    let host = &req.host;
    let (login, graph) = match state.config.identity_system {
        super::IdentitySystem::AzureAd => (format!("https://{host}/"), "https://graph.windows.net/".to_string()),
        super::IdentitySystem::Adfs => (format!("https://{host}/adfs"), "https://graph.local.azurestack.external/".to_string()),
    };
    Reply::json(
        200,
        &json!({
            "galleryEndpoint": "https://providers.local.azurestack.external:30016/",
            "graphEndpoint": graph,
            "portalEndpoint": "https://portal.local.azurestack.external/",
            "authentication": {
                "loginEndpoint": login,
                "audiences": state.config.audiences,
            }
        }),
    )
}

fn into_response(reply: Reply) -> hyper::Response<Full<Bytes>> {
    let mut builder = hyper::Response::builder()
        .status(reply.status)
        .header("x-ms-request-id", uuid::Uuid::new_v4().to_string())
        .header("cache-control", "no-cache");
    for (name, value) in &reply.headers {
        builder = builder.header(*name, value.as_str());
    }
    builder.body(Full::new(Bytes::from(reply.body))).unwrap_or_else(|_| {
        let mut fallback = hyper::Response::new(Full::new(Bytes::from_static(b"{\"error\":{\"code\":\"InternalServerError\"}}")));
        *fallback.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
        fallback
    })
}
