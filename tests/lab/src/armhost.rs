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
use crate::spec::Layout;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Weak;

pub fn tls_dir(layout: &Layout) -> PathBuf {
    layout.dir.join("arm")
}

pub fn ca_bundle(layout: &Layout) -> PathBuf {
    ArmTlsFiles::in_dir(&tls_dir(layout)).ca_bundle
}

/// The stand-in's configuration for this lab: Azure Stack Hub with Azure AD, the lab's
/// service principal (client secret), every node as an availability-set VM.
pub fn config(layout: &Layout, identity: &Identity) -> ArmConfig {
    let mut config = ArmConfig::azure_stack(tls_dir(layout), IdentitySystem::AzureAd);
    config.listen = SocketAddr::from(([127, 0, 0, 1], layout.arm_port));
    config.subscription_id = identity.subscription_id.clone();
    config.resource_group = identity.resource_group.clone();
    config.location = layout.spec.location.clone();
    config.tenant_id = identity.tenant_id.clone();
    config.service_principals = vec![ServicePrincipal {
        client_id: identity.client_id.clone(),
        credential: ClientCredential::Secret { secret: SecretString(identity.client_secret.clone()) },
    }];
    config.virtual_machines = layout.nodes.iter().map(|n| n.name.clone()).collect();
    config
}

/// Make the stand-in's CA and server certificate (once per lab directory).
pub fn write_tls(layout: &Layout) -> Result<(), LabError> {
    arm::write_arm_tls(&tls_dir(layout)).map(|_| ()).map_err(|e| LabError::Spec(format!("ARM stand-in TLS: {e}")))
}

/// The apimodel's customCloudProfile pointing at this lab's stand-in.
pub fn custom_cloud_profile(layout: &Layout, identity: &Identity) -> serde_json::Value {
    arm::custom_cloud_profile(&config(layout, identity), &crate::outputs::arm_endpoint(layout), "client_secret")
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
