//! Azure Compute for `apply`: restart master VMs (availability set or scale set) and wait for
//! them to report `PowerState/running`, on Azure Stack Hub first.
//!
//! Endpoints and identity come from the API model's `customCloudProfile` (or a named
//! `--azure-env`): the token authority and audience are discovered from the stamp's
//! `/metadata/endpoints` document, Azure AD and AD FS alike. The stamp's private root is
//! trusted through a CA bundle: the reqwest client under azure_core is built here with that
//! root added and handed to azure_identity and azure_mgmt_compute as their transport.
//!
//! Crates and where they stop:
//! - Compute calls go through `azure_mgmt_compute` 0.21. It only knows 2024 api-versions,
//!   which a stamp refuses; a per-call pipeline policy ([`ApiVersionPolicy`]) rewrites
//!   `api-version` to the one the stamp serves (2020-06-01 on Azure Stack Hub). Its restart
//!   call returns the 202 without polling, so the long-running operation is polled here
//!   through the same azure_core pipeline (`Azure-AsyncOperation`, else `Location`).
//! - Client secrets on Azure AD go through `azure_identity::ClientSecretCredential`.
//! - Client certificates cannot: azure_identity 0.21 builds that credential on OpenSSL and
//!   PKCS#12 (its `client_certificate` feature), while certrotate is rustls-only and AKS
//!   Engine hands out a PEM certificate and a PKCS#1 key. [`ServicePrincipalCredential`] sends
//!   the same request azure_identity would (a `client_assertion` JWT, RS256, `x5t` thumbprint)
//!   and signs it with rustls' aws-lc-rs signer.
//! - AD FS cannot either: it has no v2.0 token endpoint, and azure_identity speaks only v2.0.
//!   [`ServicePrincipalCredential`] posts the v1 request AD FS serves
//!   (`<authority>/adfs/oauth2/token`, `resource=<audience>`), with a secret or an assertion.
//! - The Azure AD tenant, when not given, is learnt from ARM's 401 challenge, as aks-engine
//!   learns it.
//! - Retries: azure_core's exponential policy retries compute calls on 429 and 5xx and
//!   honours `Retry-After`; token requests bypass that pipeline, so the transport given to the
//!   credentials ([`RetryingTransport`]) retries them the same way.
//!
//! Secrets (client secret, private key, access tokens) are never in `Debug` output, logs or
//! errors: error texts are built from server answers and scrubbed of the secret besides.

use azure_core::auth::{AccessToken, Secret, TokenCredential};
use azure_core::error::ErrorKind;
use azure_core::headers::{self, Headers};
use azure_core::{Policy, PolicyResult};
use azure_core::{Context, HttpClient, Method, Request, StatusCode, Url};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use miette::Diagnostic;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use time::OffsetDateTime;

/// The compute api-version of the 2020-09-01-hybrid profile: what Azure Stack Hub serves.
pub const AZURE_STACK_COMPUTE_API_VERSION: &str = "2020-06-01";

/// How the cloud authenticates applications (the API model's `identitySystem`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentitySystem {
    AzureAd,
    Adfs,
}

/// How the service principal signs in (the API model's `authenticationMethod`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    ClientSecret,
    ClientCertificate,
}

/// A client secret. `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientSecret(String);

impl ClientSecret {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientSecret(<redacted>)")
    }
}

/// How certrotate proves itself to the cloud's identity provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AzureCredentials {
    ClientSecret { client_id: String, secret: ClientSecret },
    /// PEM certificate and private key (PKCS#1 or PKCS#8, RSA), as aks-engine's
    /// `--certificate-path` and `--private-key-path` take them.
    ClientCertificate { client_id: String, certificate_path: PathBuf, private_key_path: PathBuf },
}

impl AzureCredentials {
    pub fn client_id(&self) -> &str {
        match self {
            AzureCredentials::ClientSecret { client_id, .. } | AzureCredentials::ClientCertificate { client_id, .. } => {
                client_id
            }
        }
    }
}

/// Retry behaviour on 429 (honouring `Retry-After`), 5xx and connection errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySettings {
    pub max_retries: u32,
    pub initial_delay: Duration,
    pub max_delay: Duration,
    /// Give up retrying one call after this long.
    pub max_elapsed: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            max_retries: 6,
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_elapsed: Duration::from_secs(180),
        }
    }
}

/// Everything needed to reach one cloud's Compute API for one resource group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureSettings {
    pub resource_manager_endpoint: Url,
    pub identity_system: IdentitySystem,
    /// Azure AD tenant (`None`: learnt from ARM's challenge, as aks-engine does); with AD FS
    /// always `adfs`.
    pub tenant_id: Option<String>,
    pub subscription_id: String,
    pub resource_group: String,
    pub credentials: AzureCredentials,
    /// Extra roots to trust (PEM bundle): the stamp's private root.
    pub ca_bundle: Option<PathBuf>,
    /// api-version sent on every compute call; `None` keeps azure_mgmt_compute's own.
    pub compute_api_version: Option<String>,
    pub retry: RetrySettings,
    /// Longest wait for one HTTP exchange.
    pub request_timeout: Duration,
    /// Pause between polls of a long-running operation or of a VM's power state, unless the
    /// server asks for another with `Retry-After`.
    pub poll_interval: Duration,
    /// Longest wait for a restart operation to finish.
    pub operation_timeout: Duration,
}

/// What the command line adds to the API model.
#[derive(Debug, Clone, Default)]
pub struct AzureInputs {
    /// `--azure-env`; defaults to the API model's `customCloudProfile.environment.name`.
    pub azure_env: Option<String>,
    pub ca_bundle: Option<PathBuf>,
    pub tenant_id: Option<String>,
    pub subscription_id: Option<String>,
    pub resource_group: Option<String>,
    /// Defaults to the API model's `servicePrincipalProfile.clientId`.
    pub client_id: Option<String>,
    /// Defaults to the API model's `servicePrincipalProfile.secret`.
    pub client_secret: Option<ClientSecret>,
    pub certificate_path: Option<PathBuf>,
    pub private_key_path: Option<PathBuf>,
    /// `--identity-system`; defaults to the API model's `customCloudProfile.identitySystem`.
    pub identity_system: Option<IdentitySystem>,
    /// `--auth-method`; defaults to the API model's `customCloudProfile.authenticationMethod`.
    pub auth_method: Option<AuthMethod>,
}


/// The Azure clouds AKS Engine knows by name, with their ARM endpoints.
const NAMED_CLOUDS: &[(&str, &str)] = &[
    ("AzurePublicCloud", "https://management.azure.com/"),
    ("AzureChinaCloud", "https://management.chinacloudapi.cn/"),
    ("AzureUSGovernmentCloud", "https://management.usgovcloudapi.net/"),
    ("AzureGermanCloud", "https://management.microsoftazure.de/"),
];
const AZURE_STACK_CLOUD: &str = "AzureStackCloud";

impl AzureSettings {
    /// [`AzureSettings::resolve`] on a loaded API model (its whole document, so that
    /// `servicePrincipalProfile` is seen too).
    pub fn from_api_model(model: &crate::model::apimodel::ApiModel, inputs: AzureInputs) -> Result<Self, AzureError> {
        let document: Value = serde_json::from_str(&model.source.text).map_err(|e| {
            AzureError::settings(format!("the API model {} is not JSON: {e}", model.path().display()), "pass the apimodel.json aks-engine wrote")
        })?;
        Self::resolve(&document, inputs)
    }

    /// Reads the cloud, identity system and authentication method from the API model
    /// (`properties.customCloudProfile`, `properties.servicePrincipalProfile`) and completes
    /// them with the command line. Azure Stack Hub gets compute api-version 2020-06-01.
    pub fn resolve(api_model: &Value, inputs: AzureInputs) -> Result<Self, AzureError> {
        let properties = api_model.get("properties").unwrap_or(&Value::Null);
        let custom = properties.get("customCloudProfile");
        let model_env = custom.and_then(|c| c.pointer("/environment/name")).and_then(Value::as_str);
        let env = match (inputs.azure_env.as_deref(), model_env) {
            (Some(flag), Some(model)) if !flag.eq_ignore_ascii_case(model) => {
                return Err(AzureError::settings(
                    format!("--azure-env {flag} disagrees with the API model's customCloudProfile.environment.name {model}"),
                    "drop --azure-env or pass the cloud the cluster was deployed to",
                ))
            }
            (Some(flag), _) => flag.to_string(),
            (None, Some(model)) => model.to_string(),
            (None, None) if custom.is_some() => AZURE_STACK_CLOUD.to_string(),
            (None, None) => "AzurePublicCloud".to_string(),
        };

        let (endpoint, azure_stack) = if env.eq_ignore_ascii_case(AZURE_STACK_CLOUD) {
            let Some(endpoint) = custom
                .and_then(|c| c.pointer("/environment/resourceManagerEndpoint"))
                .and_then(Value::as_str)
            else {
                return Err(AzureError::settings(
                    "the API model has no properties.customCloudProfile.environment.resourceManagerEndpoint",
                    "an Azure Stack Hub API model names its ARM endpoint there (https://management.<region>.<fqdn>/); use the apimodel.json aks-engine wrote",
                ));
            };
            (endpoint.to_string(), true)
        } else {
            let Some((_, endpoint)) = NAMED_CLOUDS.iter().find(|(name, _)| name.eq_ignore_ascii_case(&env)) else {
                return Err(AzureError::settings(
                    format!("unknown Azure environment {env}"),
                    "use AzureStackCloud, AzurePublicCloud, AzureChinaCloud, AzureUSGovernmentCloud or AzureGermanCloud",
                ));
            };
            (endpoint.to_string(), false)
        };
        let resource_manager_endpoint = Url::parse(&endpoint).map_err(|e| {
            AzureError::settings(format!("the resourceManagerEndpoint {endpoint} is not a URL: {e}"), "fix it in apimodel.json")
        })?;

        let identity_system = match (inputs.identity_system, custom.and_then(|c| c.get("identitySystem")).and_then(Value::as_str)) {
            (Some(flag), _) => flag,
            (None, None | Some("") | Some("azure_ad")) => IdentitySystem::AzureAd,
            (None, Some("adfs")) => IdentitySystem::Adfs,
            (None, Some(other)) => {
                return Err(AzureError::settings(
                    format!("customCloudProfile.identitySystem {other} is not known"),
                    "it must be azure_ad or adfs (or pass --identity-system)",
                ))
            }
        };
        let auth_method = match (inputs.auth_method, custom.and_then(|c| c.get("authenticationMethod")).and_then(Value::as_str)) {
            (Some(AuthMethod::ClientSecret), _) => "client_secret",
            (Some(AuthMethod::ClientCertificate), _) => "client_certificate",
            (None, Some(method)) if !method.is_empty() => method,
            (None, _) => "client_secret",
        };
        let sp = properties.get("servicePrincipalProfile");
        let client_id = inputs
            .client_id
            .or_else(|| sp.and_then(|s| s.get("clientId")).and_then(Value::as_str).map(str::to_string))
            .filter(|id| !id.is_empty())
            .ok_or_else(|| {
                AzureError::settings(
                    "no client id: neither --client-id nor servicePrincipalProfile.clientId in the API model",
                    "pass --client-id with the service principal's application id",
                )
            })?;
        let credentials = match auth_method {
            "client_secret" => {
                let secret = inputs
                    .client_secret
                    .or_else(|| sp.and_then(|s| s.get("secret")).and_then(Value::as_str).filter(|s| !s.is_empty()).map(ClientSecret::new))
                    .ok_or_else(|| {
                        if azure_stack {
                            AzureError::settings(
                                "no client secret: neither --client-secret nor servicePrincipalProfile.secret in the API model",
                                "pass --client-secret (or set it in the environment variable clap reads it from)",
                            )
                        } else {
                            // aks-engine signs in here with DefaultAzureCredential (environment,
                            // managed identity, the Azure CLI's login), which certrotate does not.
                            AzureError::settings(
                                format!("no service principal credentials for {env}: aks-engine would fall back to the Azure CLI's login or a managed identity, which certrotate does not use"),
                                "pass --client-id and --client-secret, or --auth-method client_certificate with --certificate-path and --private-key-path, of a service principal with rights on the resource group",
                            )
                        }
                    })?;
                AzureCredentials::ClientSecret { client_id, secret }
            }
            "client_certificate" => match (inputs.certificate_path, inputs.private_key_path) {
                (Some(certificate_path), Some(private_key_path)) => {
                    AzureCredentials::ClientCertificate { client_id, certificate_path, private_key_path }
                }
                _ => {
                    return Err(AzureError::settings(
                        "the API model's authenticationMethod is client_certificate but no certificate and key were given",
                        "pass --certificate-path and --private-key-path (PEM) of the service principal",
                    ))
                }
            },
            other => {
                return Err(AzureError::settings(
                    format!("customCloudProfile.authenticationMethod {other} is not known"),
                    "it must be client_secret or client_certificate",
                ))
            }
        };
        let tenant_id = match identity_system {
            IdentitySystem::Adfs => Some(inputs.tenant_id.unwrap_or_else(|| "adfs".to_string())),
            IdentitySystem::AzureAd => inputs.tenant_id.filter(|t| !t.is_empty()),
        };
        let subscription_id = inputs
            .subscription_id
            .filter(|s| !s.is_empty())
            .ok_or_else(|| AzureError::settings("no subscription id", "pass --subscription-id"))?;
        let resource_group = inputs
            .resource_group
            .filter(|s| !s.is_empty())
            .ok_or_else(|| AzureError::settings("no resource group", "pass --resource-group with the cluster's resource group"))?;

        Ok(Self {
            resource_manager_endpoint,
            identity_system,
            tenant_id,
            subscription_id,
            resource_group,
            credentials,
            ca_bundle: inputs.ca_bundle,
            compute_api_version: azure_stack.then(|| AZURE_STACK_COMPUTE_API_VERSION.to_string()),
            retry: RetrySettings::default(),
            request_timeout: Duration::from_secs(60),
            poll_interval: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(20 * 60),
        })
    }
}

/// A VM of the cluster as ARM names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum VmRef {
    /// An availability-set VM, by name (`k8s-master-<suffix>-0`).
    AvailabilitySet { name: String },
    /// A scale-set instance (VMSS masters, public AKS Engine only).
    ScaleSet { scale_set: String, instance_id: String },
}

impl VmRef {
    pub fn vm(name: impl Into<String>) -> Self {
        VmRef::AvailabilitySet { name: name.into() }
    }

    pub fn scale_set_vm(scale_set: impl Into<String>, instance_id: impl Into<String>) -> Self {
        VmRef::ScaleSet { scale_set: scale_set.into(), instance_id: instance_id.into() }
    }
}

impl fmt::Display for VmRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmRef::AvailabilitySet { name } => write!(f, "VM {name}"),
            VmRef::ScaleSet { scale_set, instance_id } => write!(f, "instance {instance_id} of scale set {scale_set}"),
        }
    }
}

/// A VM's power state from its instance view (`PowerState/<state>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerState {
    Starting,
    Running,
    Stopping,
    Stopped,
    Deallocating,
    Deallocated,
    /// A code certrotate does not know, kept as sent.
    Other(String),
    /// The instance view had no `PowerState/` status (happens while a VM is being created).
    Unknown,
}

impl PowerState {
    pub fn from_code(code: &str) -> Option<Self> {
        let state = code.strip_prefix("PowerState/")?;
        Some(match state.to_ascii_lowercase().as_str() {
            "starting" => PowerState::Starting,
            "running" => PowerState::Running,
            "stopping" => PowerState::Stopping,
            "stopped" => PowerState::Stopped,
            "deallocating" => PowerState::Deallocating,
            "deallocated" => PowerState::Deallocated,
            _ => PowerState::Other(state.to_string()),
        })
    }

    fn from_statuses<'a>(codes: impl IntoIterator<Item = &'a str>) -> Self {
        codes.into_iter().find_map(PowerState::from_code).unwrap_or(PowerState::Unknown)
    }
}

impl fmt::Display for PowerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PowerState::Starting => f.write_str("starting"),
            PowerState::Running => f.write_str("running"),
            PowerState::Stopping => f.write_str("stopping"),
            PowerState::Stopped => f.write_str("stopped"),
            PowerState::Deallocating => f.write_str("deallocating"),
            PowerState::Deallocated => f.write_str("deallocated"),
            PowerState::Other(s) => write!(f, "{s}"),
            PowerState::Unknown => f.write_str("unknown (no PowerState status)"),
        }
    }
}

/// What went wrong talking to Azure, naming the VM and the reason.
#[derive(Debug, Error, Diagnostic)]
pub enum AzureError {
    #[error("{message}")]
    #[diagnostic(code(certrotate::azure::settings))]
    Settings {
        message: String,
        #[help]
        help: String,
    },

    #[error("cannot use the CA bundle {path}: {reason}")]
    #[diagnostic(
        code(certrotate::azure::ca_bundle),
        help("pass --ca-bundle with the PEM file of the stamp's root certificate (Azure Stack Hub operators export it as a .cer/.pem)")
    )]
    CaBundle { path: PathBuf, reason: String },

    #[error("cannot use the client certificate {path}: {reason}")]
    #[diagnostic(
        code(certrotate::azure::client_certificate),
        help("pass the service principal's PEM certificate and its RSA private key (PKCS#1 or PKCS#8)")
    )]
    ClientCertificate { path: PathBuf, reason: String },

    #[error("cannot read the cloud's endpoints from {url}: {reason}")]
    #[diagnostic(
        code(certrotate::azure::metadata),
        help("check resourceManagerEndpoint in the API model, that this machine reaches it, and --ca-bundle if the stamp uses a private root")
    )]
    Metadata { url: String, reason: String },

    #[error("authentication of application {client_id} at {token_endpoint} failed: {reason}")]
    #[diagnostic(
        code(certrotate::azure::authentication),
        help("check the client id, the tenant and the client secret or certificate of the service principal, and that the identity system (azure_ad or adfs) matches the stamp")
    )]
    Authentication { client_id: String, token_endpoint: String, reason: String },

    #[error("cannot {action} {vm}: {reason}")]
    #[diagnostic(code(certrotate::azure::compute))]
    Compute {
        vm: String,
        action: &'static str,
        status: Option<u16>,
        code: Option<String>,
        reason: String,
        #[help]
        help: Option<String>,
    },

    #[error("the {action} of {vm} failed: {reason}")]
    #[diagnostic(code(certrotate::azure::operation), help("look at the VM's activity log on the stamp's portal, then rerun apply"))]
    OperationFailed { vm: String, action: &'static str, reason: String },

    #[error("{vm} did not {goal} within {}; last seen: {last_seen}", humantime::format_duration(*waited))]
    #[diagnostic(
        code(certrotate::azure::timeout),
        help("the VM may still be booting; check it on the stamp's portal and rerun apply, which resumes where it stopped")
    )]
    Timeout { vm: String, goal: &'static str, waited: Duration, last_seen: String },
}

impl AzureError {
    pub fn settings(message: impl Into<String>, help: impl Into<String>) -> Self {
        AzureError::Settings { message: message.into(), help: help.into() }
    }
}

/// The token authority and audience a cloud advertises in its metadata document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudEndpoints {
    pub login_endpoint: Url,
    pub audiences: Vec<String>,
}

#[derive(Deserialize)]
struct MetadataDocument {
    authentication: MetadataAuthentication,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetadataAuthentication {
    login_endpoint: String,
    audiences: Vec<String>,
}

/// A connected Compute client for one resource group.
pub struct AzureCompute {
    settings: AzureSettings,
    endpoints: CloudEndpoints,
    token_endpoint: String,
    scope: String,
    credential: Arc<dyn TokenCredential>,
    compute: azure_mgmt_compute::Client,
    /// The same policies as the compute client's, to poll long-running operations.
    pipeline: azure_core::Pipeline,
    /// The same without the compute api-version rewrite, for Microsoft.Resources.
    resources_pipeline: azure_core::Pipeline,
}

impl fmt::Debug for AzureCompute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureCompute")
            .field("endpoint", &self.settings.resource_manager_endpoint.as_str())
            .field("client_id", &self.settings.credentials.client_id())
            .field("token_endpoint", &self.token_endpoint)
            .finish_non_exhaustive()
    }
}

impl AzureCompute {
    /// Builds the HTTP client (with the CA bundle), reads the cloud's metadata document and
    /// prepares the credential. No token is requested yet; [`AzureCompute::check_access`]
    /// does that when an early, clear authentication error is wanted.
    pub async fn connect(settings: AzureSettings) -> Result<Self, AzureError> {
        let http = build_http_client(&settings)?;
        let endpoints = discover_endpoints(&http, &settings.resource_manager_endpoint).await?;
        let audience = endpoints.audiences.first().cloned().ok_or_else(|| AzureError::Metadata {
            url: metadata_url(&settings.resource_manager_endpoint),
            reason: "the document lists no token audience".into(),
        })?;
        let scope = format!("{}/.default", audience.trim_end_matches('/'));

        let tenant = match (&settings.identity_system, &settings.tenant_id) {
            (IdentitySystem::AzureAd, None) => {
                tenant_from_challenge(&http, &settings.resource_manager_endpoint, &settings.subscription_id).await?
            }
            (_, tenant) => tenant.clone().unwrap_or_else(|| "adfs".to_string()),
        };
        let (authority, tenant) = authority_and_tenant(&settings, &endpoints.login_endpoint, tenant)?;
        let transport: Arc<dyn HttpClient> =
            Arc::new(RetryingTransport { inner: http.clone(), retry: settings.retry.clone() });
        // AD FS serves OAuth 2.0 tokens only at `/adfs/oauth2/token` with `resource=`: it has no
        // v2.0 endpoint (the Azure SDK's Azure Stack AD FS issues, Azure/azure-sdk-for-js#11219),
        // which is all azure_identity speaks, so AD FS gets the v1 request.
        let (token_url, target) = match settings.identity_system {
            IdentitySystem::AzureAd => (authority.join(&format!("{tenant}/oauth2/v2.0/token")), TokenTarget::Scope),
            IdentitySystem::Adfs => (authority.join(&format!("{tenant}/oauth2/token")), TokenTarget::Resource),
        };
        let token_url =
            token_url.map_err(|e| AzureError::Metadata { url: authority.to_string(), reason: format!("bad login endpoint: {e}") })?;
        let credential: Arc<dyn TokenCredential> = match (&settings.credentials, target) {
            (AzureCredentials::ClientSecret { client_id, secret }, TokenTarget::Scope) => Arc::new(azure_identity::ClientSecretCredential::new(
                transport.clone(),
                authority.clone(),
                tenant.clone(),
                client_id.clone(),
                secret.expose().to_string(),
            )),
            (AzureCredentials::ClientSecret { client_id, secret }, TokenTarget::Resource) => {
                Arc::new(ServicePrincipalCredential::with_secret(transport.clone(), token_url.clone(), client_id, secret.clone(), target))
            }
            (AzureCredentials::ClientCertificate { client_id, certificate_path, private_key_path }, target) => Arc::new(
                ServicePrincipalCredential::load(transport.clone(), token_url.clone(), client_id, certificate_path, private_key_path, target)?,
            ),
        };

        let mut options = azure_core::ClientOptions::new(azure_core::TransportOptions::new(Arc::new(http)))
            .retry(azure_core::RetryOptions::exponential(
                azure_core::ExponentialRetryOptions::default()
                    .max_retries(settings.retry.max_retries)
                    .initial_delay(settings.retry.initial_delay)
                    .max_delay(settings.retry.max_delay)
                    .max_total_elapsed(settings.retry.max_elapsed),
            ));
        // Microsoft.Resources calls keep their own api-version: the rewrite is for compute.
        let resources_pipeline = azure_core::Pipeline::new(
            Some(env!("CARGO_PKG_NAME")),
            Some(env!("CARGO_PKG_VERSION")),
            options.clone(),
            Vec::new(),
            Vec::new(),
        );
        if let Some(version) = &settings.compute_api_version {
            options.per_call_policies_mut().push(Arc::new(ApiVersionPolicy { api_version: version.clone() }));
        }
        let compute = azure_mgmt_compute::Client::new(
            settings.resource_manager_endpoint.clone(),
            credential.clone(),
            vec![scope.clone()],
            options.clone(),
        );
        let pipeline = azure_core::Pipeline::new(
            Some(env!("CARGO_PKG_NAME")),
            Some(env!("CARGO_PKG_VERSION")),
            options,
            Vec::new(),
            Vec::new(),
        );
        Ok(Self { settings, endpoints, token_endpoint: token_url.to_string(), scope, credential, compute, pipeline, resources_pipeline })
    }

    pub fn endpoints(&self) -> &CloudEndpoints {
        &self.endpoints
    }

    /// The token URL credentials post to (`<authority>/<tenant>/oauth2/v2.0/token`).
    pub fn token_endpoint(&self) -> &str {
        &self.token_endpoint
    }

    /// Gets a token now, so that bad credentials fail before anything else happens, and checks
    /// that the subscription is registered for Microsoft.Compute, as aks-engine does before it
    /// starts (`EnsureProvidersRegistered`; certrotate does not register it: a check changes
    /// nothing).
    pub async fn check_access(&self) -> Result<(), AzureError> {
        let token = self.token().await?;
        let url = format!(
            "{}/subscriptions/{}/providers/Microsoft.Compute?api-version={RESOURCES_API_VERSION}",
            self.settings.resource_manager_endpoint.as_str().trim_end_matches('/'),
            self.settings.subscription_id
        );
        let fail = |reason: String| {
            AzureError::settings(
                format!("cannot read the subscription's Microsoft.Compute provider: {reason}"),
                "check --subscription-id and that the service principal may read the subscription",
            )
        };
        let mut request = Request::new(Url::parse(&url).map_err(|e| fail(e.to_string()))?, Method::Get);
        request.insert_header(headers::AUTHORIZATION, format!("Bearer {}", token.secret()));
        let response = self.resources_pipeline.send(&Context::new(), &mut request).await.map_err(|e| fail(self.scrub(&e.to_string())))?;
        let (status, _, body) = response.deconstruct();
        let body = body.collect().await.map_err(|e| fail(e.to_string()))?;
        let document: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if !status.is_success() {
            let message = document.pointer("/error/message").and_then(Value::as_str).unwrap_or("");
            return Err(fail(format!("HTTP {status}: {}", self.scrub(message))));
        }
        match document.get("registrationState").and_then(Value::as_str) {
            Some("Registered") => Ok(()),
            state => Err(AzureError::settings(
                format!(
                    "subscription {} is not registered for Microsoft.Compute (registrationState {}); VMs cannot be restarted",
                    self.settings.subscription_id,
                    state.unwrap_or("missing")
                ),
                "register it (`az provider register --namespace Microsoft.Compute`, or the stamp's portal), then run again",
            )),
        }
    }

    async fn token(&self) -> Result<Secret, AzureError> {
        self.credential.get_token(&[self.scope.as_str()]).await.map(|t| t.token).map_err(|e| AzureError::Authentication {
            client_id: self.settings.credentials.client_id().to_string(),
            token_endpoint: self.token_endpoint.clone(),
            reason: self.scrub(&credential_reason(&e)),
        })
    }

    /// The VM's power state from its instance view.
    pub async fn power_state(&self, vm: &VmRef) -> Result<PowerState, AzureError> {
        let s = &self.settings;
        let codes: Vec<String> = match vm {
            VmRef::AvailabilitySet { name } => {
                let view = self
                    .compute
                    .virtual_machines_client()
                    .instance_view(&s.resource_group, name, &s.subscription_id)
                    .await
                    .map_err(|e| self.compute_error(vm, "read the instance view of", e))?;
                view.statuses.into_iter().filter_map(|st| st.code).collect()
            }
            VmRef::ScaleSet { scale_set, instance_id } => {
                let view = self
                    .compute
                    .virtual_machine_scale_set_v_ms_client()
                    .get_instance_view(&s.resource_group, scale_set, instance_id, &s.subscription_id)
                    .await
                    .map_err(|e| self.compute_error(vm, "read the instance view of", e))?;
                view.statuses.into_iter().filter_map(|st| st.code).collect()
            }
        };
        Ok(PowerState::from_statuses(codes.iter().map(String::as_str)))
    }

    /// Restarts the VM and waits for the platform to finish the operation. The guest may
    /// still be booting afterwards: follow with [`AzureCompute::wait_running`].
    pub async fn restart(&self, vm: &VmRef) -> Result<(), AzureError> {
        let s = &self.settings;
        let response = match vm {
            VmRef::AvailabilitySet { name } => self
                .compute
                .virtual_machines_client()
                .restart(&s.resource_group, name, &s.subscription_id)
                .send()
                .await
                .map(|r| r.into_raw_response()),
            VmRef::ScaleSet { scale_set, instance_id } => self
                .compute
                .virtual_machine_scale_set_v_ms_client()
                .restart(&s.resource_group, scale_set, instance_id, &s.subscription_id)
                .send()
                .await
                .map(|r| r.into_raw_response()),
        }
        .map_err(|e| self.compute_error(vm, "restart", e))?;
        self.wait_operation(vm, "restart", response.status(), response.headers()).await
    }

    /// Polls the instance view until the VM reports `PowerState/running`.
    pub async fn wait_running(&self, vm: &VmRef, timeout: Duration) -> Result<(), AzureError> {
        let started = tokio::time::Instant::now();
        loop {
            let state = self.power_state(vm).await?;
            if state == PowerState::Running {
                return Ok(());
            }
            if started.elapsed() >= timeout {
                return Err(AzureError::Timeout {
                    vm: vm.to_string(),
                    goal: "report PowerState/running",
                    waited: started.elapsed(),
                    last_seen: format!("power state {state}"),
                });
            }
            tokio::time::sleep(self.settings.poll_interval.min(timeout.saturating_sub(started.elapsed()))).await;
        }
    }

    pub async fn restart_vm(&self, name: &str) -> Result<(), AzureError> {
        self.restart(&VmRef::vm(name)).await
    }

    pub async fn power_state_vm(&self, name: &str) -> Result<PowerState, AzureError> {
        self.power_state(&VmRef::vm(name)).await
    }

    pub async fn wait_running_vm(&self, name: &str, timeout: Duration) -> Result<(), AzureError> {
        self.wait_running(&VmRef::vm(name), timeout).await
    }

    pub async fn restart_scale_set_vm(&self, scale_set: &str, instance_id: &str) -> Result<(), AzureError> {
        self.restart(&VmRef::scale_set_vm(scale_set, instance_id)).await
    }

    pub async fn power_state_scale_set_vm(&self, scale_set: &str, instance_id: &str) -> Result<PowerState, AzureError> {
        self.power_state(&VmRef::scale_set_vm(scale_set, instance_id)).await
    }

    pub async fn wait_running_scale_set_vm(&self, scale_set: &str, instance_id: &str, timeout: Duration) -> Result<(), AzureError> {
        self.wait_running(&VmRef::scale_set_vm(scale_set, instance_id), timeout).await
    }

    /// Follows a long-running operation: `Azure-AsyncOperation` (a status document) when the
    /// server gave one, else `Location` (202 until done), honouring `Retry-After`.
    async fn wait_operation(&self, vm: &VmRef, action: &'static str, status: StatusCode, headers: &Headers) -> Result<(), AzureError> {
        let async_operation = headers.get_optional_str(&headers::AZURE_ASYNCOPERATION);
        let location = headers.get_optional_str(&headers::LOCATION);
        let (url, is_status_document) = match (async_operation, location) {
            (Some(url), _) => (url.to_string(), true),
            (None, Some(url)) => (url.to_string(), false),
            (None, None) if status == StatusCode::Ok || status == StatusCode::NoContent => return Ok(()),
            (None, None) => {
                return Err(AzureError::Compute {
                    vm: vm.to_string(),
                    action,
                    status: Some(u16::from(status)),
                    code: None,
                    reason: format!("the server answered {status} without an operation to follow"),
                    help: None,
                })
            }
        };
        let url = Url::parse(&url).map_err(|e| AzureError::Compute {
            vm: vm.to_string(),
            action,
            status: None,
            code: None,
            reason: format!("the operation URL the server gave is not a URL: {e}"),
            help: None,
        })?;
        let started = tokio::time::Instant::now();
        let mut wait = retry_after(headers).unwrap_or(self.settings.poll_interval);
        let mut last_seen = "InProgress".to_string();
        loop {
            if started.elapsed() >= self.settings.operation_timeout {
                return Err(AzureError::Timeout {
                    vm: vm.to_string(),
                    goal: "finish restarting",
                    waited: started.elapsed(),
                    last_seen: format!("operation status {last_seen}"),
                });
            }
            tokio::time::sleep(wait).await;
            let token = self.token().await?;
            let mut request = Request::new(url.clone(), Method::Get);
            request.insert_header(headers::AUTHORIZATION, format!("Bearer {}", token.secret()));
            let response = self
                .pipeline
                .send(&Context::new(), &mut request)
                .await
                .map_err(|e| self.compute_error(vm, "follow the restart operation of", e))?;
            let (status, response_headers, body) = response.deconstruct();
            wait = retry_after(&response_headers).unwrap_or(self.settings.poll_interval);
            if !is_status_document {
                match status {
                    StatusCode::Accepted => continue,
                    s if s.is_success() => return Ok(()),
                    s => {
                        return Err(AzureError::OperationFailed {
                            vm: vm.to_string(),
                            action,
                            reason: format!("the operation ended with HTTP {s}"),
                        })
                    }
                }
            }
            let body = body.collect().await.map_err(|e| self.compute_error(vm, "follow the restart operation of", e))?;
            let document: Value = serde_json::from_slice(&body).map_err(|e| AzureError::Compute {
                vm: vm.to_string(),
                action,
                status: Some(u16::from(status)),
                code: None,
                reason: format!("the operation status is not JSON: {e}"),
                help: None,
            })?;
            let op_status = document.get("status").and_then(Value::as_str).unwrap_or("").to_string();
            match op_status.as_str() {
                "Succeeded" => return Ok(()),
                "Failed" | "Canceled" => {
                    let message = document.pointer("/error/message").and_then(Value::as_str).unwrap_or("no reason given");
                    let code = document.pointer("/error/code").and_then(Value::as_str).unwrap_or("");
                    return Err(AzureError::OperationFailed {
                        vm: vm.to_string(),
                        action,
                        reason: format!("{op_status} {code}: {message}"),
                    });
                }
                other => last_seen = other.to_string(),
            }
        }
    }

    fn compute_error(&self, vm: &VmRef, action: &'static str, error: azure_core::Error) -> AzureError {
        if matches!(error.kind(), ErrorKind::Credential) {
            return AzureError::Authentication {
                client_id: self.settings.credentials.client_id().to_string(),
                token_endpoint: self.token_endpoint.clone(),
                reason: self.scrub(&credential_reason(&error)),
            };
        }
        let (status, code, reason) = match error.as_http_error() {
            Some(http) => (
                Some(u16::from(http.status())),
                http.error_code().map(str::to_string),
                http.error_message().map(str::to_string).unwrap_or_else(|| format!("HTTP {}", http.status())),
            ),
            None => (None, None, error_chain(&error)),
        };
        let help = match (status, code.as_deref()) {
            (_, Some("NoRegisteredProviderFound")) | (_, Some("InvalidApiVersionParameter")) => Some(format!(
                "the cloud does not serve compute api-version {}; Azure Stack Hub serves {AZURE_STACK_COMPUTE_API_VERSION} (use --azure-env AzureStackCloud)",
                self.settings.compute_api_version.as_deref().unwrap_or("2024-07-01")
            )),
            (Some(404), _) => Some(format!(
                "check the subscription ({}), the resource group ({}) and the VM name",
                self.settings.subscription_id, self.settings.resource_group
            )),
            (Some(401), _) | (Some(403), _) => {
                Some("the service principal needs a role (Contributor) on the cluster's resource group".to_string())
            }
            (Some(429), _) | (Some(500..=599), _) => {
                Some("the cloud kept failing after retries; wait and rerun apply, which resumes where it stopped".to_string())
            }
            _ => None,
        };
        AzureError::Compute { vm: vm.to_string(), action, status, code, reason: self.scrub(&reason), help }
    }

    /// Belt and braces: no error text leaves with the client secret in it.
    fn scrub(&self, text: &str) -> String {
        match &self.settings.credentials {
            AzureCredentials::ClientSecret { secret, .. } if !secret.expose().is_empty() => {
                text.replace(secret.expose(), "<redacted>")
            }
            _ => text.to_string(),
        }
    }
}

fn metadata_url(endpoint: &Url) -> String {
    format!("{}/metadata/endpoints?api-version=2015-01-01", endpoint.as_str().trim_end_matches('/'))
}

fn build_http_client(settings: &AzureSettings) -> Result<reqwest::Client, AzureError> {
    let mut builder = reqwest::ClientBuilder::new()
        .connect_timeout(Duration::from_secs(10))
        .timeout(settings.request_timeout)
        // azure_core does the same: idle pooled connections make hyper hang on some servers.
        .pool_max_idle_per_host(0);
    if let Some(path) = &settings.ca_bundle {
        let pem = std::fs::read(path).map_err(|e| AzureError::CaBundle { path: path.clone(), reason: e.to_string() })?;
        let roots = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| AzureError::CaBundle { path: path.clone(), reason: e.to_string() })?;
        if roots.is_empty() {
            return Err(AzureError::CaBundle { path: path.clone(), reason: "it holds no PEM certificate".into() });
        }
        for root in roots {
            builder = builder.add_root_certificate(root);
        }
    }
    builder.build().map_err(|e| AzureError::settings(format!("cannot build the HTTP client: {e}"), "report this as a bug"))
}

async fn discover_endpoints(http: &reqwest::Client, endpoint: &Url) -> Result<CloudEndpoints, AzureError> {
    let url = metadata_url(endpoint);
    let fail = |reason: String| AzureError::Metadata { url: url.clone(), reason };
    let response = http.get(&url).send().await.map_err(|e| fail(reqwest_reason(&e)))?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| fail(reqwest_reason(&e)))?;
    if !status.is_success() {
        return Err(fail(format!("HTTP {status}: {}", String::from_utf8_lossy(&body).chars().take(300).collect::<String>())));
    }
    let document: MetadataDocument =
        serde_json::from_slice(&body).map_err(|e| fail(format!("not an Azure Stack metadata document: {e}")))?;
    let login_endpoint = Url::parse(&document.authentication.login_endpoint)
        .map_err(|e| fail(format!("loginEndpoint {} is not a URL: {e}", document.authentication.login_endpoint)))?;
    Ok(CloudEndpoints { login_endpoint, audiences: document.authentication.audiences })
}

/// api-version of Microsoft.Resources in the 2020-09-01 hybrid profile aks-engine uses.
const RESOURCES_API_VERSION: &str = "2019-10-01";

/// api-version of Get Subscription in the 2020-09-01 profile aks-engine uses on Azure Stack Hub.
const SUBSCRIPTIONS_API_VERSION: &str = "2016-06-01";

/// The subscription's Azure AD tenant, as aks-engine learns it (`armhelpers.GetTenantID`): an
/// unauthenticated Get Subscription, which ARM answers with 401 and a `WWW-Authenticate`
/// challenge whose `authorization_uri` ends in the tenant id.
async fn tenant_from_challenge(http: &reqwest::Client, endpoint: &Url, subscription_id: &str) -> Result<String, AzureError> {
    let url = format!(
        "{}/subscriptions/{subscription_id}?api-version={SUBSCRIPTIONS_API_VERSION}",
        endpoint.as_str().trim_end_matches('/')
    );
    let fail = |reason: String| {
        AzureError::settings(
            format!("cannot learn the Azure AD tenant from ARM's challenge at {url}: {reason}"),
            "pass --tenant-id with the Azure AD tenant of the service principal",
        )
    };
    let response = http.get(&url).send().await.map_err(|e| fail(reqwest_reason(&e)))?;
    if response.status() != reqwest::StatusCode::UNAUTHORIZED {
        return Err(fail(format!("expected HTTP 401, got {}", response.status())));
    }
    let header = response
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| fail("the 401 has no WWW-Authenticate header".into()))?;
    tenant_of_challenge(header).ok_or_else(|| fail(format!("no tenant id in WWW-Authenticate: {header}")))
}

/// The tenant at the end of a challenge's `authorization_uri`
/// (`Bearer authorization_uri="https://login.windows.net/<tenant>", error=...`).
fn tenant_of_challenge(header: &str) -> Option<String> {
    static AUTHORIZATION_URI: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r#"authorization_uri="[^"]*/([0-9A-Fa-f-]+)/?""#).expect("valid regex")
    });
    AUTHORIZATION_URI.captures(header).map(|c| c[1].to_ascii_lowercase())
}

/// reqwest's Display hides the cause (certificate errors, refused connections).
fn reqwest_reason(error: &reqwest::Error) -> String {
    error_chain(error)
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The token authority and tenant. AD FS stamps advertise `https://adfs.<fqdn>/adfs` as the
/// login endpoint; its tokens are at `https://adfs.<fqdn>/adfs/oauth2/...`, i.e. authority
/// `https://adfs.<fqdn>/` with tenant `adfs`.
fn authority_and_tenant(settings: &AzureSettings, login: &Url, tenant: String) -> Result<(Url, String), AzureError> {
    match settings.identity_system {
        IdentitySystem::AzureAd => {
            let mut authority = login.clone();
            if !authority.path().ends_with('/') {
                authority.set_path(&format!("{}/", authority.path()));
            }
            Ok((authority, tenant))
        }
        IdentitySystem::Adfs => {
            let path = login.path().trim_end_matches('/');
            let Some(base) = path.strip_suffix("/adfs") else {
                return Err(AzureError::Metadata {
                    url: metadata_url(&settings.resource_manager_endpoint),
                    reason: format!(
                        "the identity system is adfs but the login endpoint {login} does not end in /adfs (is the stamp on Azure AD? set identitySystem to azure_ad)"
                    ),
                });
            };
            let mut authority = login.clone();
            authority.set_path(&format!("{base}/"));
            Ok((authority, "adfs".to_string()))
        }
    }
}

/// What the identity provider said, out of azure_identity's error. oauth2 keeps the server's
/// `error_description` beside the error rather than as its source, so it is fetched by type.
fn credential_reason(error: &azure_core::Error) -> String {
    type TokenError = oauth2::RequestTokenError<azure_core::Error, oauth2::basic::BasicErrorResponse>;
    if let Some(token_error) = error.downcast_ref::<TokenError>() {
        return match token_error {
            oauth2::RequestTokenError::ServerResponse(response) => {
                let description = response.error_description().map(|d| first_line(d)).unwrap_or_default();
                format!("{}: {description}", response.error())
            }
            oauth2::RequestTokenError::Request(e) => format!("request failed: {}", error_chain(e)),
            oauth2::RequestTokenError::Parse(e, _) => format!("unreadable answer from the token endpoint: {e}"),
            oauth2::RequestTokenError::Other(e) => e.clone(),
        };
    }
    if let Some(http) = error.as_http_error() {
        return format!(
            "HTTP {} {}: {}",
            http.status(),
            http.error_code().unwrap_or_default(),
            http.error_message().map(first_line).unwrap_or_default()
        );
    }
    error_chain(error)
}

/// Azure AD appends trace and correlation ids on further lines; the first says what is wrong.
fn first_line(text: &str) -> &str {
    text.split(['\r', '\n']).next().unwrap_or(text)
}

fn retry_after(headers: &Headers) -> Option<Duration> {
    let value = headers.get_optional_str(&headers::RETRY_AFTER)?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Sends every compute call with the api-version the cloud serves, whatever the generated
/// client put in the URL.
#[derive(Debug)]
pub struct ApiVersionPolicy {
    pub api_version: String,
}

#[async_trait::async_trait]
impl Policy for ApiVersionPolicy {
    async fn send(&self, ctx: &Context, request: &mut Request, next: &[Arc<dyn Policy>]) -> PolicyResult {
        rewrite_api_version(request.url_mut(), &self.api_version);
        next[0].send(ctx, request, &next[1..]).await
    }
}

fn rewrite_api_version(url: &mut Url, api_version: &str) {
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != azure_core::query_param::API_VERSION)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut query = url.query_pairs_mut();
    query.clear();
    for (k, v) in &pairs {
        query.append_pair(k, v);
    }
    query.append_pair(azure_core::query_param::API_VERSION, api_version);
}

/// The transport credentials use: reqwest, retried on 429 (honouring `Retry-After`), 5xx
/// and connection errors, since token requests do not go through azure_core's retry policy.
#[derive(Debug)]
struct RetryingTransport {
    inner: reqwest::Client,
    retry: RetrySettings,
}

#[async_trait::async_trait]
impl HttpClient for RetryingTransport {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<azure_core::Response> {
        let started = tokio::time::Instant::now();
        let mut attempt = 0u32;
        loop {
            let result = self.inner.execute_request(request).await;
            let retry_in = match &result {
                Ok(response) if is_retryable(response.status()) => {
                    Some(retry_after(response.headers()).unwrap_or_else(|| backoff(&self.retry, attempt)))
                }
                Err(e) if matches!(e.kind(), ErrorKind::Io) => Some(backoff(&self.retry, attempt)),
                _ => None,
            };
            match retry_in {
                Some(delay) if attempt < self.retry.max_retries && started.elapsed() + delay <= self.retry.max_elapsed => {
                    attempt += 1;
                    tracing::debug!(attempt, delay_ms = delay.as_millis() as u64, url = %request.url().path(), "retrying token request");
                    tokio::time::sleep(delay).await;
                }
                _ => return result,
            }
        }
    }
}

fn is_retryable(status: StatusCode) -> bool {
    matches!(u16::from(status), 408 | 429 | 500 | 502 | 503 | 504)
}

fn backoff(retry: &RetrySettings, attempt: u32) -> Duration {
    retry.initial_delay.saturating_mul(2u32.saturating_pow(attempt.min(16))).min(retry.max_delay)
}

/// How a token request names what the token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenTarget {
    /// Azure AD v2.0: `scope=<audience>/.default`.
    Scope,
    /// OAuth 2.0 v1 as AD FS serves it: `resource=<audience>`.
    Resource,
}

/// How the service principal proves itself in a token request.
enum Proof {
    Secret(ClientSecret),
    /// A JWT assertion (RS256, `x5t` = SHA-1 thumbprint of the certificate, `aud` = the token
    /// URL, `iss` = `sub` = the client id), as azure_identity's `ClientCertificateCredential`
    /// and ADAL make it.
    Certificate { thumbprint_b64url: String, signing_key: Arc<dyn rustls::sign::SigningKey> },
}

/// A client-credentials grant posted by certrotate itself where azure_identity cannot: a
/// certificate (azure_identity 0.21 has no certificate credential here) on Azure AD v2.0, and
/// any credential on AD FS (`<authority>/adfs/oauth2/token`, `resource=`).
pub struct ServicePrincipalCredential {
    http: Arc<dyn HttpClient>,
    token_url: Url,
    client_id: String,
    proof: Proof,
    target: TokenTarget,
    cache: tokio::sync::Mutex<Option<AccessToken>>,
}

impl fmt::Debug for ServicePrincipalCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ServicePrincipalCredential");
        d.field("token_url", &self.token_url.as_str()).field("client_id", &self.client_id).field("target", &self.target);
        match &self.proof {
            Proof::Secret(_) => d.field("secret", &"<redacted>"),
            Proof::Certificate { thumbprint_b64url, .. } => d.field("x5t", thumbprint_b64url).field("signing_key", &"<redacted>"),
        };
        d.finish()
    }
}

impl ServicePrincipalCredential {
    pub fn with_secret(http: Arc<dyn HttpClient>, token_url: Url, client_id: &str, secret: ClientSecret, target: TokenTarget) -> Self {
        Self { http, token_url, client_id: client_id.to_string(), proof: Proof::Secret(secret), target, cache: tokio::sync::Mutex::new(None) }
    }

    pub fn load(
        http: Arc<dyn HttpClient>,
        token_url: Url,
        client_id: &str,
        certificate_path: &Path,
        private_key_path: &Path,
        target: TokenTarget,
    ) -> Result<Self, AzureError> {
        let cert_fail = |reason: String| AzureError::ClientCertificate { path: certificate_path.to_path_buf(), reason };
        let key_fail = |reason: String| AzureError::ClientCertificate { path: private_key_path.to_path_buf(), reason };
        let cert_pem = std::fs::read(certificate_path).map_err(|e| cert_fail(e.to_string()))?;
        let certificate = rustls_pemfile::certs(&mut &cert_pem[..])
            .next()
            .ok_or_else(|| cert_fail("it holds no PEM certificate".into()))?
            .map_err(|e| cert_fail(e.to_string()))?;
        let key_pem = std::fs::read(private_key_path).map_err(|e| key_fail(e.to_string()))?;
        let key = rustls_pemfile::private_key(&mut &key_pem[..])
            .map_err(|e| key_fail(e.to_string()))?
            .ok_or_else(|| key_fail("it holds no PEM private key".into()))?;
        let signing_key = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
            .map_err(|e| key_fail(format!("the key is not usable: {e}")))?;
        if signing_key.choose_scheme(&[rustls::SignatureScheme::RSA_PKCS1_SHA256]).is_none() {
            return Err(key_fail("it is not an RSA key; Azure AD and AD FS take RS256 client assertions only".into()));
        }
        use sha1::Digest;
        let thumbprint = sha1::Sha1::digest(certificate.as_ref());
        Ok(Self {
            http,
            token_url,
            client_id: client_id.to_string(),
            proof: Proof::Certificate { thumbprint_b64url: URL_SAFE_NO_PAD.encode(thumbprint), signing_key },
            target,
            cache: tokio::sync::Mutex::new(None),
        })
    }

    fn assertion(&self, thumbprint_b64url: &str, signing_key: &dyn rustls::sign::SigningKey) -> azure_core::Result<String> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "x5t": thumbprint_b64url});
        let claims = serde_json::json!({
            "aud": self.token_url.as_str(),
            "iss": self.client_id,
            "sub": self.client_id,
            "jti": uuid::Uuid::new_v4().to_string(),
            "nbf": now,
            "exp": now + 600,
        });
        let signing_input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let signer = signing_key
            .choose_scheme(&[rustls::SignatureScheme::RSA_PKCS1_SHA256])
            .ok_or_else(|| azure_core::Error::message(ErrorKind::Credential, "the client key cannot sign RS256"))?;
        let signature = signer
            .sign(signing_input.as_bytes())
            .map_err(|e| azure_core::Error::with_message(ErrorKind::Credential, || format!("signing the client assertion failed: {e}")))?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }

    async fn request_token(&self, scope: &str) -> azure_core::Result<AccessToken> {
        // The form builder is not Send; it ends before the request is awaited.
        let body = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("client_id", &self.client_id);
            match self.target {
                TokenTarget::Scope => form.append_pair("scope", scope),
                TokenTarget::Resource => form.append_pair("resource", scope.strip_suffix("/.default").unwrap_or(scope)),
            };
            match &self.proof {
                Proof::Secret(secret) => form.append_pair("client_secret", secret.expose()),
                Proof::Certificate { thumbprint_b64url, signing_key } => form
                    .append_pair("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
                    .append_pair("client_assertion", &self.assertion(thumbprint_b64url, signing_key.as_ref())?),
            };
            form.append_pair("grant_type", "client_credentials").finish()
        };
        let mut request = Request::new(self.token_url.clone(), Method::Post);
        request.insert_header(headers::CONTENT_TYPE, "application/x-www-form-urlencoded");
        request.insert_header(headers::ACCEPT, "application/json");
        request.set_body(body);
        let response = self.http.execute_request(&request).await?;
        let (status, _, body) = response.deconstruct();
        let body = body.collect().await?;
        let document: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if !status.is_success() {
            let error = document.get("error").and_then(Value::as_str).unwrap_or("error");
            let description = document.get("error_description").and_then(Value::as_str).map(first_line).unwrap_or("");
            return Err(azure_core::Error::with_message(ErrorKind::Credential, || {
                format!("HTTP {status} {error}: {description}")
            }));
        }
        let token = document
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| azure_core::Error::message(ErrorKind::Credential, "the token response has no access_token"))?;
        let expires_in = document
            .get("expires_in")
            .and_then(|v| v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())))
            .unwrap_or(300);
        Ok(AccessToken::new(
            Secret::new(token.to_string()),
            OffsetDateTime::now_utc() + Duration::from_secs(expires_in),
        ))
    }
}

#[async_trait::async_trait]
impl TokenCredential for ServicePrincipalCredential {
    async fn get_token(&self, scopes: &[&str]) -> azure_core::Result<AccessToken> {
        let [scope] = scopes else {
            return Err(azure_core::Error::message(ErrorKind::Credential, "exactly one scope is supported"));
        };
        let mut cache = self.cache.lock().await;
        if let Some(token) = cache.as_ref() {
            if token.expires_on > OffsetDateTime::now_utc() + Duration::from_secs(120) {
                return Ok(token.clone());
            }
        }
        let token = self.request_token(scope).await?;
        *cache = Some(token.clone());
        Ok(token)
    }

    async fn clear_cache(&self) -> azure_core::Result<()> {
        *self.cache.lock().await = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stack_model(identity: &str, auth: &str) -> Value {
        json!({
            "apiVersion": "vlabs",
            "properties": {
                "servicePrincipalProfile": {"clientId": "app-1", "secret": "model-secret"},
                "customCloudProfile": {
                    "environment": {"name": "AzureStackCloud", "resourceManagerEndpoint": "https://management.local.azurestack.external/"},
                    "identitySystem": identity,
                    "authenticationMethod": auth
                }
            }
        })
    }

    fn inputs() -> AzureInputs {
        AzureInputs {
            subscription_id: Some("sub".into()),
            resource_group: Some("rg".into()),
            tenant_id: Some("tenant".into()),
            ..Default::default()
        }
    }

    #[test]
    fn azure_stack_model_gives_the_hybrid_api_version_and_model_credentials() {
        let settings = AzureSettings::resolve(&stack_model("adfs", "client_secret"), inputs()).unwrap();
        assert_eq!(settings.compute_api_version.as_deref(), Some("2020-06-01"));
        assert_eq!(settings.identity_system, IdentitySystem::Adfs);
        assert_eq!(settings.resource_manager_endpoint.as_str(), "https://management.local.azurestack.external/");
        assert_eq!(
            settings.credentials,
            AzureCredentials::ClientSecret { client_id: "app-1".into(), secret: ClientSecret::new("model-secret") }
        );
        assert!(!format!("{settings:?}").contains("model-secret"));
    }

    #[test]
    fn certificate_method_needs_paths_and_env_mismatch_is_refused() {
        let err = AzureSettings::resolve(&stack_model("azure_ad", "client_certificate"), inputs()).unwrap_err();
        assert!(err.to_string().contains("client_certificate"), "{err}");
        let err = AzureSettings::resolve(
            &stack_model("azure_ad", "client_secret"),
            AzureInputs { azure_env: Some("AzurePublicCloud".into()), ..inputs() },
        )
        .unwrap_err();
        assert!(err.to_string().contains("disagrees"), "{err}");
        let err = AzureSettings::resolve(&stack_model("ldap", "client_secret"), inputs()).unwrap_err();
        assert!(err.to_string().contains("ldap"), "{err}");
    }

    #[test]
    fn public_cloud_keeps_the_client_api_version() {
        let model = json!({"properties": {"servicePrincipalProfile": {"clientId": "a", "secret": "s"}}});
        let settings = AzureSettings::resolve(&model, inputs()).unwrap();
        assert_eq!(settings.compute_api_version, None);
        assert_eq!(settings.resource_manager_endpoint.as_str(), "https://management.azure.com/");
    }

    #[test]
    fn api_version_is_rewritten_and_other_parameters_kept() {
        let mut url = Url::parse("https://arm/x?api-version=2024-07-01&$expand=instanceView").unwrap();
        rewrite_api_version(&mut url, "2020-06-01");
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert_eq!(
            pairs,
            vec![("$expand".into(), "instanceView".into()), ("api-version".into(), "2020-06-01".into())]
        );
    }

    #[test]
    fn adfs_authority_drops_the_adfs_segment() {
        let settings = AzureSettings::resolve(&stack_model("adfs", "client_secret"), inputs()).unwrap();
        let (authority, tenant) =
            authority_and_tenant(&settings, &Url::parse("https://adfs.local.azurestack.external/adfs").unwrap(), "adfs".into()).unwrap();
        assert_eq!(authority.as_str(), "https://adfs.local.azurestack.external/");
        assert_eq!(tenant, "adfs");
        assert!(authority_and_tenant(&settings, &Url::parse("https://login.microsoftonline.com/").unwrap(), "adfs".into()).is_err());
    }

    #[test]
    fn the_tenant_is_read_from_arms_challenge_as_aks_engine_reads_it() {
        // The example in aks-engine's armhelpers/tenantid.go, and ARM's reply on Azure Stack Hub.
        let azure = r#"Bearer authorization_uri="https://login.windows.net/996fe9d1-6171-40aa-945b-4c64b63bf655", error="invalid_token", error_description="The authentication failed because of missing 'Authorization' header.""#;
        assert_eq!(tenant_of_challenge(azure).as_deref(), Some("996fe9d1-6171-40aa-945b-4c64b63bf655"));
        let trailing = r#"Bearer authorization_uri="https://login.microsoftonline.com/2E0A4D8B-1C3F-4B6A-9D7E-5F8A1B2C3D4E/", error="invalid_token""#;
        assert_eq!(tenant_of_challenge(trailing).as_deref(), Some("2e0a4d8b-1c3f-4b6a-9d7e-5f8a1b2c3d4e"));
        // AD FS names no tenant: its authority ends in /adfs.
        assert_eq!(tenant_of_challenge(r#"Bearer authorization_uri="https://adfs.local.azurestack.external/adfs", error="invalid_token""#), None);
        assert_eq!(tenant_of_challenge("Basic realm=\"x\""), None);
    }

    #[test]
    fn without_a_tenant_flag_azure_ad_learns_it_later_and_adfs_is_adfs() {
        let none = || AzureInputs { tenant_id: None, ..inputs() };
        assert_eq!(AzureSettings::resolve(&stack_model("azure_ad", "client_secret"), none()).unwrap().tenant_id, None);
        assert_eq!(AzureSettings::resolve(&stack_model("adfs", "client_secret"), none()).unwrap().tenant_id.as_deref(), Some("adfs"));
    }

    #[test]
    fn power_state_codes() {
        assert_eq!(PowerState::from_statuses(["ProvisioningState/succeeded", "PowerState/running"]), PowerState::Running);
        assert_eq!(PowerState::from_code("PowerState/deallocated"), Some(PowerState::Deallocated));
        assert_eq!(PowerState::from_code("PowerState/hibernated"), Some(PowerState::Other("hibernated".into())));
        assert_eq!(PowerState::from_statuses(["ProvisioningState/creating"]), PowerState::Unknown);
    }

    #[test]
    fn backoff_grows_and_caps() {
        let retry = RetrySettings { initial_delay: Duration::from_millis(100), max_delay: Duration::from_secs(1), ..Default::default() };
        assert_eq!(backoff(&retry, 0), Duration::from_millis(100));
        assert_eq!(backoff(&retry, 2), Duration::from_millis(400));
        assert_eq!(backoff(&retry, 10), Duration::from_secs(1));
    }
}
