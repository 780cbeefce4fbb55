//! Azure Resource Manager stand-in: the piece of an Azure Stack Hub stamp that certrotate (and
//! aks-engine) talk to when they reboot master VMs.
//!
//! It serves, over HTTPS with its own private root (as a stamp does):
//! - the Azure Stack metadata document (`/metadata/endpoints`), naming the login endpoint and
//!   the token audience;
//! - an OAuth2 token endpoint in Azure AD shape (`/{tenant}/oauth2/token` with `resource=`,
//!   `/{tenant}/oauth2/v2.0/token` with `scope=`) and AD FS shape (`/adfs/oauth2/token`
//!   only: AD FS has no v2.0 endpoint, so `/adfs/oauth2/v2.0/token` is a 404), for client
//!   secrets and client certificates (a signed `client_assertion` JWT);
//! - Microsoft.Compute virtual machines and scale-set VMs: get (with `$expand=instanceView`),
//!   instanceView and restart as a long-running operation polled through
//!   `Azure-AsyncOperation` or `Location`.
//!
//! What a restart does to a node is not decided here: the lab supervisor passes a
//! [`VmControl`] that takes the node's services down and brings them back. Tests can inject
//! throttling and server errors ([`Faults`]) and read back every call ([`CallLog`]); a CLI
//! in another process can do both through `/_lab/*` when `admin_token` is set.
//!
//! Running it from the lab supervisor:
//!
//! ```text
//! let tls = arm::write_arm_tls(&dir.join("arm"))?;            // once, at `lab up`
//! let mut config = arm::ArmConfig::azure_stack(&tls.dir, arm::IdentitySystem::AzureAd);
//! config.service_principals.push(ServicePrincipal { client_id, credential: ClientCredential::Secret { .. } });
//! config.virtual_machines = master and agent VM names;     // computer names = node hostnames
//! let server = arm::ArmServer::start(config, Arc::new(my_vm_control)).await?;
//! apimodel["properties"]["customCloudProfile"] =
//!     arm::custom_cloud_profile(server.config(), &server.endpoint(), "client_secret");
//! // lab.env: LAB_ARM_ENDPOINT=server.endpoint(), LAB_ARM_CA_BUNDLE=tls.ca_bundle,
//! //          LAB_AZURE_ENV=AzureStackCloud, LAB_TENANT_ID/SUBSCRIPTION_ID/RESOURCE_GROUP from config
//! ```

mod admin;
mod compute;
mod faults;
mod http;
mod jwt;
mod oauth;
mod simulated;
mod tls;

pub use simulated::{RestartTimings, SimulatedVms};
pub use faults::{CallLog, CallRecord, FaultId, FaultRule, Faults, InstalledFault};
pub use tls::{issue_client_certificate, write_arm_tls, ArmTlsFiles, ClientCertificateFiles, ARM_HOST_NAME};

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// Compute api-versions an Azure Stack Hub stamp on the 2020-09-01-hybrid profile serves;
/// anything newer is refused as a real stamp refuses it.
pub const AZURE_STACK_COMPUTE_API_VERSIONS: &[&str] = &[
    "2015-06-15",
    "2016-03-30",
    "2017-03-30",
    "2017-12-01",
    "2018-04-01",
    "2018-06-01",
    "2019-03-01",
    "2019-07-01",
    "2020-06-01",
];

/// Which identity provider the stamp is deployed with (the API model's `identitySystem`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentitySystem {
    #[default]
    AzureAd,
    Adfs,
}

/// A secret that never shows in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretString(pub String);

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How a registered application proves who it is at the token endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ClientCredential {
    Secret { secret: SecretString },
    /// The PEM of the certificate registered on the application; assertions must be signed
    /// with its key and name its SHA-1 thumbprint in `x5t`.
    Certificate { certificate_pem: String },
}

/// An application (service principal) registered in the stamp's directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServicePrincipal {
    pub client_id: String,
    pub credential: ClientCredential,
}

/// A scale set and the instances in it; `computer_name_prefix` plus the instance id in base
/// 36, six digits, is each instance's computer name (as Azure names VMSS instances).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaleSetSpec {
    pub name: String,
    pub computer_name_prefix: String,
    pub instance_ids: Vec<String>,
}

/// Everything the stand-in serves.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArmConfig {
    /// Where to listen; port 0 picks a free port (read it back with `bound_addr`).
    pub listen: SocketAddr,
    /// Directory written by [`write_arm_tls`].
    pub tls_dir: PathBuf,
    pub subscription_id: String,
    pub resource_group: String,
    /// ARM location of the stamp (`local` on an ASDK).
    pub location: String,
    pub tenant_id: String,
    pub identity_system: IdentitySystem,
    /// Refuse compute api-versions a stamp would not serve.
    pub azure_stack: bool,
    /// Token audiences ARM accepts; the first is advertised in the metadata document.
    pub audiences: Vec<String>,
    pub service_principals: Vec<ServicePrincipal>,
    /// Availability-set VMs by name (`k8s-master-<suffix>-0`...).
    pub virtual_machines: Vec<String>,
    pub scale_sets: Vec<ScaleSetSpec>,
    /// `Retry-After` (seconds) sent while a long-running operation is in progress.
    pub operation_retry_after_secs: u64,
    /// Lifetime of issued access tokens.
    pub token_lifetime_secs: u64,
    /// When set, `/_lab/faults` and `/_lab/calls` accept requests carrying this value in
    /// `x-lab-admin-token`, so a CLI in another process can inject faults and read the call
    /// log over the same HTTPS endpoint. Absent: those paths answer 404.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<SecretString>,
    /// Resource providers the subscription is not registered for (every one in
    /// [`RESOURCE_PROVIDERS`] is registered otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unregistered_providers: Vec<String>,
}

/// The resource providers an Azure Stack Hub subscription offers (the ones aks-engine needs
/// among them: `armhelpers.RequiredResourceProviders`).
pub const RESOURCE_PROVIDERS: [&str; 4] = ["Microsoft.Compute", "Microsoft.Network", "Microsoft.Storage", "Microsoft.KeyVault"];

/// Microsoft.Resources api-versions an Azure Stack Hub stamp serves (profile 2020-09-01-hybrid
/// has 2019-10-01; older profiles 2018-05-01 and 2016-06-01).
pub const AZURE_STACK_RESOURCES_API_VERSIONS: [&str; 4] = ["2016-02-01", "2016-06-01", "2018-05-01", "2019-10-01"];

impl ArmConfig {
    /// A configuration for an Azure Stack Hub stamp with AD FS or Azure AD, one client-secret
    /// principal, no VMs yet; callers fill in VMs and principals.
    pub fn azure_stack(tls_dir: impl Into<PathBuf>, identity_system: IdentitySystem) -> Self {
        let audience = match identity_system {
            IdentitySystem::Adfs => {
                "https://management.adfs.azurestack.local/8e1b6c6a-4cc2-4f66-9f47-3c3b1ff5b5f1".to_string()
            }
            IdentitySystem::AzureAd => {
                "https://management.labtenant.onmicrosoft.com/8e1b6c6a-4cc2-4f66-9f47-3c3b1ff5b5f1".to_string()
            }
        };
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls_dir: tls_dir.into(),
            subscription_id: "3c1a4b5e-8f2d-4e7a-9b6c-0d1e2f3a4b5c".into(),
            resource_group: "kubernetes-lab".into(),
            location: "local".into(),
            tenant_id: match identity_system {
                IdentitySystem::Adfs => "adfs".into(),
                IdentitySystem::AzureAd => "7d2f6c1e-3b4a-4c5d-8e9f-a0b1c2d3e4f5".into(),
            },
            identity_system,
            azure_stack: true,
            audiences: vec![audience],
            service_principals: Vec::new(),
            virtual_machines: Vec::new(),
            scale_sets: Vec::new(),
            operation_retry_after_secs: 1,
            token_lifetime_secs: 3599,
            admin_token: None,
            unregistered_providers: Vec::new(),
        }
    }
}

/// The power states Azure reports in a VM's instance view (`PowerState/<state>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerState {
    Starting,
    Running,
    Stopping,
    Stopped,
    Deallocating,
    Deallocated,
}

impl PowerState {
    /// The status code exactly as Azure writes it.
    pub fn code(self) -> &'static str {
        match self {
            PowerState::Starting => "PowerState/starting",
            PowerState::Running => "PowerState/running",
            PowerState::Stopping => "PowerState/stopping",
            PowerState::Stopped => "PowerState/stopped",
            PowerState::Deallocating => "PowerState/deallocating",
            PowerState::Deallocated => "PowerState/deallocated",
        }
    }

    pub fn display_status(self) -> &'static str {
        match self {
            PowerState::Starting => "VM starting",
            PowerState::Running => "VM running",
            PowerState::Stopping => "VM stopping",
            PowerState::Stopped => "VM stopped",
            PowerState::Deallocating => "VM deallocating",
            PowerState::Deallocated => "VM deallocated",
        }
    }
}

/// Which VM an ARM call is about: its computer name (the node's hostname) and, for scale-set
/// instances, the scale set and instance id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VmTarget {
    pub computer_name: String,
    pub scale_set: Option<ScaleSetInstance>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ScaleSetInstance {
    pub scale_set: String,
    pub instance_id: String,
}

/// What the stand-in does to real nodes. The lab supervisor implements it; tests may use a
/// simple in-memory one.
#[async_trait::async_trait]
pub trait VmControl: Send + Sync {
    /// The VM's power state now.
    fn power_state(&self, vm: &VmTarget) -> PowerState;
    /// Restarts the VM: takes it down and brings it back. Returns when the platform considers
    /// the restart done (as Azure completes the operation); an `Err` fails the operation with
    /// that message.
    async fn restart(&self, vm: &VmTarget) -> Result<(), String>;
}

/// Why the stand-in could not start.
#[derive(Debug, Error)]
pub enum ArmError {
    #[error("cannot read the ARM stand-in's TLS material in {dir}: {reason}")]
    Tls { dir: PathBuf, reason: String },
    #[error("cannot write the ARM stand-in's TLS material in {dir}: {reason}")]
    TlsWrite { dir: PathBuf, reason: String },
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("invalid ARM stand-in configuration: {0}")]
    Config(String),
    #[error("cannot create the token signing key: {0}")]
    Crypto(String),
}

/// A running stand-in. Dropping it stops the server and every operation in flight.
pub struct ArmServer {
    bound_addr: SocketAddr,
    state: Arc<http::ServerState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ArmServer {
    /// Binds, loads the TLS material from `config.tls_dir` and starts serving.
    pub async fn start(config: ArmConfig, control: Arc<dyn VmControl>) -> Result<Self, ArmError> {
        let (state, listener, acceptor) = http::prepare(config, control).await?;
        let bound_addr = listener
            .local_addr()
            .map_err(|source| ArmError::Listen { addr: state.config.listen, source })?;
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(http::accept_loop(listener, acceptor, state.clone(), async move {
            let _ = shutdown_rx.await;
        }));
        Ok(Self { bound_addr, state, shutdown: Some(shutdown_tx), task: Some(task) })
    }

    pub fn bound_addr(&self) -> SocketAddr {
        self.bound_addr
    }

    /// `https://127.0.0.1:<port>/`: the resourceManagerEndpoint clients use.
    pub fn endpoint(&self) -> String {
        format!("https://{}/", self.bound_addr)
    }

    pub fn faults(&self) -> &Faults {
        &self.state.faults
    }

    pub fn calls(&self) -> &CallLog {
        &self.state.calls
    }

    pub fn config(&self) -> &ArmConfig {
        &self.state.config
    }

    /// Stops accepting, aborts connections and operations, and waits for the server task.
    pub async fn shutdown(mut self) {
        self.stop();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.state.abort_operations();
    }
}

impl Drop for ArmServer {
    fn drop(&mut self) {
        self.stop();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Serves until `shutdown` resolves (the shape the lab supervisor runs it in). Returns the
/// bound address through `on_bound` as soon as the socket is listening.
pub async fn serve(
    config: ArmConfig,
    control: Arc<dyn VmControl>,
    on_bound: impl FnOnce(SocketAddr, Faults, CallLog),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ArmError> {
    let (state, listener, acceptor) = http::prepare(config, control).await?;
    let addr = listener
        .local_addr()
        .map_err(|source| ArmError::Listen { addr: state.config.listen, source })?;
    on_bound(addr, state.faults.clone(), state.calls.clone());
    http::accept_loop(listener, acceptor, state.clone(), shutdown).await;
    state.abort_operations();
    Ok(())
}

/// The API model's `customCloudProfile` for a cluster on this stand-in, shaped as
/// `aks-engine deploy` writes it for Azure Stack Hub, with every endpoint pointing at
/// `endpoint` (the stand-in's `https://<addr>/`, which also plays the identity provider).
/// `authentication_method` is `client_secret` or `client_certificate`.
pub fn custom_cloud_profile(config: &ArmConfig, endpoint: &str, authentication_method: &str) -> serde_json::Value {
    let base = endpoint.trim_end_matches('/');
    let (identity, login) = match config.identity_system {
        IdentitySystem::Adfs => ("adfs", format!("{base}/adfs")),
        IdentitySystem::AzureAd => ("azure_ad", format!("{base}/")),
    };
    serde_json::json!({
        "environment": {
            "name": "AzureStackCloud",
            "managementPortalURL": "https://portal.local.azurestack.external/",
            "serviceManagementEndpoint": config.audiences[0],
            "resourceManagerEndpoint": format!("{base}/"),
            "activeDirectoryEndpoint": login,
            "galleryEndpoint": "https://providers.local.azurestack.external:30016/",
            "graphEndpoint": "https://graph.local.azurestack.external/",
            "storageEndpointSuffix": "local.azurestack.external",
            "keyVaultDNSSuffix": "vault.local.azurestack.external",
            "resourceManagerVMDNSSuffix": "cloudapp.azurestack.external",
            "tokenAudience": config.audiences[0],
        },
        "identitySystem": identity,
        "authenticationMethod": authentication_method,
        "portalURL": "https://portal.local.azurestack.external/",
    })
}

/// How long an access token is valid, as `Duration`.
fn token_lifetime(config: &ArmConfig) -> Duration {
    Duration::from_secs(config.token_lifetime_secs.max(60))
}
