//! Hosting the ARM stand-in (`lab::arm`) in the lab: its configuration for this lab (the
//! lab's subscription, resource group, service principal and VMs), its TLS material under
//! `DIR/arm/`, and the `VmControl` through which an ARM restart reboots a real lab node.

use crate::arm::{
    self, ArmConfig, ArmTlsFiles, ClientCredential, IdentitySystem, PowerState, SecretString, ServicePrincipal, VmControl,
    VmTarget,
};
use crate::control::Power;
use crate::error::LabError;
use crate::outputs::Identity;
use crate::spec::{AuthMethod, Layout};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Weak;

pub fn tls_dir(layout: &Layout) -> PathBuf {
    layout.dir.join("arm")
}

pub fn ca_bundle(layout: &Layout) -> PathBuf {
    ArmTlsFiles::in_dir(&tls_dir(layout)).ca_bundle
}

/// The stand-in's configuration for this lab: Azure Stack Hub with the spec's identity
/// system, the lab's service principal signing in with the spec's method (a client secret, or
/// the certificate [`write_client_certificate`] made), every node as an availability-set VM.
pub fn config(layout: &Layout, identity: &Identity) -> ArmConfig {
    let mut config = ArmConfig::azure_stack(tls_dir(layout), layout.spec.identity_system);
    config.listen = SocketAddr::from(([127, 0, 0, 1], layout.arm_port));
    config.subscription_id = identity.subscription_id.clone();
    config.resource_group = identity.resource_group.clone();
    config.location = layout.spec.location.clone();
    if layout.spec.identity_system == IdentitySystem::AzureAd {
        // AD FS has one tenant, `adfs`, which azure_stack() sets.
        config.tenant_id = identity.tenant_id.clone();
    }
    let credential = match layout.spec.auth_method {
        AuthMethod::ClientSecret => ClientCredential::Secret { secret: SecretString(identity.client_secret.clone()) },
        AuthMethod::ClientCertificate => ClientCredential::Certificate {
            certificate_pem: std::fs::read_to_string(client_certificate_paths(layout, identity).0).unwrap_or_default(),
        },
    };
    config.service_principals = vec![ServicePrincipal { client_id: identity.client_id.clone(), credential }];
    config.virtual_machines = layout.nodes.iter().map(|n| n.name.clone()).collect();
    config
}

/// The service principal's certificate and PKCS#1 key (for `--certificate-path` and
/// `--private-key-path`), in a 0700 directory.
pub fn client_certificate_paths(layout: &Layout, identity: &Identity) -> (PathBuf, PathBuf) {
    let dir = tls_dir(layout).join("spn");
    (dir.join(format!("{}.crt", identity.client_id)), dir.join(format!("{}.key", identity.client_id)))
}

/// Registers a certificate for the service principal, as an operator does for
/// `--auth-method client_certificate`; nothing for a client-secret lab.
pub fn write_client_certificate(layout: &Layout, identity: &Identity) -> Result<(), LabError> {
    if layout.spec.auth_method != AuthMethod::ClientCertificate {
        return Ok(());
    }
    arm::issue_client_certificate(&tls_dir(layout).join("spn"), &identity.client_id)
        .map(|_| ())
        .map_err(|e| LabError::Spec(format!("service principal certificate: {e}")))
}

/// Make the stand-in's CA and server certificate (once per lab directory).
pub fn write_tls(layout: &Layout) -> Result<(), LabError> {
    arm::write_arm_tls(&tls_dir(layout)).map(|_| ()).map_err(|e| LabError::Spec(format!("ARM stand-in TLS: {e}")))
}

/// The apimodel's customCloudProfile pointing at this lab's stand-in.
pub fn custom_cloud_profile(layout: &Layout, identity: &Identity) -> serde_json::Value {
    arm::custom_cloud_profile(&config(layout, identity), &crate::outputs::arm_endpoint(layout), layout.spec.auth_method.as_str())
}

/// ARM's view of the lab's nodes: power states from the supervisor, restart = reboot.
pub struct SupervisorVms(pub Weak<crate::supervisor::Supervisor>);

#[async_trait::async_trait]
impl VmControl for SupervisorVms {
    fn power_state(&self, vm: &VmTarget) -> PowerState {
        match self.0.upgrade().and_then(|s| s.power_of(&vm.computer_name)) {
            Some(Power::Running) => PowerState::Running,
            Some(Power::Rebooting) => PowerState::Starting,
            Some(Power::Stopped) | None => PowerState::Stopped,
        }
    }

    async fn restart(&self, vm: &VmTarget) -> Result<(), String> {
        let supervisor = self.0.upgrade().ok_or("the lab is shutting down")?;
        supervisor.reboot(&vm.computer_name).await.map_err(|e| e.to_string())
    }
}
