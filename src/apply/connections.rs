//! What apply reaches the cluster with: one multiplexed SSH connection per node (the first
//! master directly, the others through it), opened on first use and reopened once when it
//! breaks; the Azure Compute client, made on first use; and where the Kubernetes API is.

use crate::apply::walker::StepError;
use crate::cloud::azure::{AzureCompute, AzureSettings};
use crate::remote::ssh::{NodeSession, RemoteError, SshFleet};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A node's connection, behind a lock of its own so nodes connect independently.
type SessionSlot = Arc<tokio::sync::Mutex<Option<Arc<NodeSession>>>>;

/// A script or program that runs longer than this is given up on (the step fails, saying so).
const COMMAND_LIMIT: Duration = Duration::from_secs(300);

pub struct Connections {
    pub fleet: Arc<SshFleet>,
    /// The node reached directly; every other goes through it.
    first_master: Option<String>,
    /// `--apiserver ADDRESS:PORT`.
    pub apiserver: Option<String>,
    pub azure: Option<AzureSettings>,
    sessions: Mutex<HashMap<String, SessionSlot>>,
    compute: tokio::sync::OnceCell<Result<Arc<AzureCompute>, String>>,
}

impl Connections {
    pub fn new(fleet: Arc<SshFleet>, first_master: Option<String>) -> Self {
        Connections { fleet, first_master, apiserver: None, azure: None, sessions: Mutex::new(HashMap::new()), compute: tokio::sync::OnceCell::new() }
    }

    /// The node's one multiplexed connection, opened on first use and reused. Each node has
    /// its own lock, so a slow or unreachable node does not hold up the others.
    pub async fn session(&self, name: &str) -> Result<Arc<NodeSession>, StepError> {
        let slot = self.sessions.lock().expect("sessions lock").entry(name.to_string()).or_default().clone();
        let mut slot = slot.lock().await;
        if let Some(s) = slot.as_ref() {
            return Ok(s.clone());
        }
        let via_jumpbox = self.first_master.as_deref() != Some(name);
        let s = Arc::new(self.fleet.connect(name, via_jumpbox).await?);
        *slot = Some(s.clone());
        Ok(s)
    }

    /// Forgets a node's connection (after a reboot, or when it broke).
    pub async fn drop_session(&self, name: &str) {
        let slot = self.sessions.lock().expect("sessions lock").get(name).cloned();
        if let Some(slot) = slot {
            *slot.lock().await = None;
        }
    }

    /// Runs a program with a script on stdin (PowerShell on Windows nodes), with the same
    /// time limit and single reconnect as [`Connections::run_root`].
    pub async fn run_program(&self, name: &str, what: &str, program: &str, args: &[&str], stdin: &str) -> Result<String, StepError> {
        let attempt = async {
            let session = self.session(name).await?;
            match session.run_program(what, program, args, stdin).await {
                Err(RemoteError::Unreachable { .. }) => {
                    self.drop_session(name).await;
                    let session = self.session(name).await?;
                    Ok(session.run_program(what, program, args, stdin).await?)
                }
                other => Ok(other?),
            }
        };
        match tokio::time::timeout(COMMAND_LIMIT, attempt).await {
            Ok(r) => r,
            Err(_) => Err(StepError::new(format!("{name}: `{what}` did not finish within 5 minutes"))),
        }
    }

    /// Runs a root script on a node; a broken connection is reopened once.
    pub async fn run_root(&self, name: &str, what: &str, script: &str) -> Result<String, StepError> {
        let attempt = async {
            let session = self.session(name).await?;
            match session.run_script_as_root(what, script).await {
                Err(RemoteError::Unreachable { .. }) => {
                    self.drop_session(name).await;
                    let session = self.session(name).await?;
                    Ok(session.run_script_as_root(what, script).await?)
                }
                other => Ok(other?),
            }
        };
        match tokio::time::timeout(COMMAND_LIMIT, attempt).await {
            Ok(r) => r,
            Err(_) => Err(StepError::new(format!("{name}: `{what}` did not finish within 5 minutes"))),
        }
    }

    pub async fn close_sessions(&self) {
        let slots: Vec<_> = self.sessions.lock().expect("sessions lock").drain().map(|(_, s)| s).collect();
        for slot in slots {
            if let Some(s) = slot.lock().await.take() {
                if let Ok(s) = Arc::try_unwrap(s) {
                    s.close().await;
                }
            }
        }
    }

    /// The Azure Compute client, made on first use.
    pub async fn compute(&self) -> Result<Arc<AzureCompute>, StepError> {
        let settings = self.azure.clone();
        self.compute
            .get_or_init(|| async move {
                let settings = settings.ok_or_else(|| "rebooting a VM needs the Azure settings (--subscription-id, --resource-group, credentials)".to_string())?;
                AzureCompute::connect(settings).await.map(Arc::new).map_err(|e| e.to_string())
            })
            .await
            .clone()
            .map_err(StepError::new)
    }

    /// Whether Azure answers with these settings, before anything changes.
    pub async fn check_azure(&self) -> Result<(), StepError> {
        let compute = self.compute().await?;
        compute.check_access().await.map_err(|e| StepError::new(e.to_string()))
    }
}
