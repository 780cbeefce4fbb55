//! certrotate's Azure client (azure_identity + azure_mgmt_compute, with certrotate's
//! certificate credential) against the ARM stand-in over real HTTPS with a private root:
//! client secret on Azure AD and AD FS, client certificate, restart and wait for running on
//! availability-set and scale-set VMs, retries on throttling, api-version policing on an Azure
//! Stack stamp, and errors that say what went wrong without leaking the secret.

use certrotate::cloud::azure::{
    AzureCompute, AzureError, AzureInputs, AzureSettings, ClientSecret, PowerState, RetrySettings, VmRef,
};
use lab::arm::{
    issue_client_certificate, write_arm_tls, ArmConfig, ArmServer, ArmTlsFiles, ClientCertificateFiles,
    ClientCredential, FaultRule, IdentitySystem, RestartTimings, ScaleSetSpec, SecretString, ServicePrincipal,
    SimulatedVms,
};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

const SECRET_APP: &str = "0c6f9d3e-2b1a-4f5e-8d7c-6b5a4f3e2d1c";
const CERT_APP: &str = "9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d";
const SECRET: &str = "Xk9~lab.arm-secret_value-42";
const MASTER: &str = "k8s-master-41772389-0";
const SCALE_SET: &str = "k8s-master-41772389-vmss";

struct Lab {
    dir: tempfile::TempDir,
    tls: ArmTlsFiles,
    cert: ClientCertificateFiles,
    server: ArmServer,
    vms: SimulatedVms,
}

async fn start(identity: IdentitySystem) -> Lab {
    start_with(identity, &[]).await
}

async fn start_with(identity: IdentitySystem, unregistered_providers: &[&str]) -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let tls = write_arm_tls(&dir.path().join("arm")).unwrap();
    let cert = issue_client_certificate(&dir.path().join("spn"), CERT_APP).unwrap();
    let mut config = ArmConfig::azure_stack(&tls.dir, identity);
    config.service_principals = vec![
        ServicePrincipal { client_id: SECRET_APP.into(), credential: ClientCredential::Secret { secret: SecretString(SECRET.into()) } },
        ServicePrincipal {
            client_id: CERT_APP.into(),
            credential: ClientCredential::Certificate { certificate_pem: cert.certificate_pem.clone() },
        },
    ];
    config.virtual_machines = (0..3).map(|i| format!("k8s-master-41772389-{i}")).collect();
    config.scale_sets = vec![ScaleSetSpec {
        name: SCALE_SET.into(),
        computer_name_prefix: SCALE_SET.into(),
        instance_ids: vec!["0".into(), "1".into(), "2".into()],
    }];
    config.unregistered_providers = unregistered_providers.iter().map(|p| p.to_string()).collect();
    let vms = SimulatedVms::new(RestartTimings::default());
    let server = ArmServer::start(config, Arc::new(vms.clone())).await.unwrap();
    Lab { dir, tls, cert, server, vms }
}

impl Lab {
    /// The API model as aks-engine writes it for this stamp (the parts the client reads),
    /// with the customCloudProfile the lab writes into a cluster's apimodel.json.
    fn api_model(&self, auth_method: &str) -> serde_json::Value {
        json!({
            "apiVersion": "vlabs",
            "location": "local",
            "properties": {
                "servicePrincipalProfile": {"clientId": SECRET_APP},
                "customCloudProfile": lab::arm::custom_cloud_profile(self.server.config(), &self.server.endpoint(), auth_method),
            }
        })
    }

    fn inputs(&self) -> AzureInputs {
        let c = self.server.config();
        AzureInputs {
            ca_bundle: Some(self.tls.ca_bundle.clone()),
            tenant_id: Some(c.tenant_id.clone()),
            subscription_id: Some(c.subscription_id.clone()),
            resource_group: Some(c.resource_group.clone()),
            client_secret: Some(ClientSecret::new(SECRET)),
            ..Default::default()
        }
    }

    fn fast(mut settings: AzureSettings) -> AzureSettings {
        settings.poll_interval = Duration::from_millis(100);
        settings.retry = RetrySettings {
            max_retries: 4,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            max_elapsed: Duration::from_secs(20),
        };
        settings
    }

    fn secret_settings(&self) -> AzureSettings {
        Self::fast(AzureSettings::resolve(&self.api_model("client_secret"), self.inputs()).unwrap())
    }

    fn certificate_settings(&self) -> AzureSettings {
        let inputs = AzureInputs {
            client_id: Some(CERT_APP.into()),
            client_secret: None,
            certificate_path: Some(self.cert.certificate.clone()),
            private_key_path: Some(self.cert.private_key.clone()),
            ..self.inputs()
        };
        Self::fast(AzureSettings::resolve(&self.api_model("client_certificate"), inputs).unwrap())
    }

    fn compute_calls(&self) -> Vec<lab::arm::CallRecord> {
        self.server.calls().snapshot().into_iter().filter(|c| c.path.starts_with("/subscriptions/")).collect()
    }
}

/// The product document's command line has no tenant: aks-engine learns it from ARM's 401
/// challenge to an unauthenticated Get Subscription, and so does certrotate.
#[tokio::test]
async fn without_a_tenant_the_client_learns_it_from_arms_challenge() {
    let lab = start(IdentitySystem::AzureAd).await;
    let inputs = AzureInputs { tenant_id: None, ..lab.inputs() };
    let settings = Lab::fast(AzureSettings::resolve(&lab.api_model("client_secret"), inputs).unwrap());
    let azure = AzureCompute::connect(settings).await.unwrap();
    let tenant = &lab.server.config().tenant_id;
    assert_eq!(azure.token_endpoint(), format!("{}{tenant}/oauth2/v2.0/token", lab.server.endpoint()));
    azure.check_access().await.unwrap();
    let calls = lab.server.calls().snapshot();
    let asked = calls.iter().find(|c| c.path == format!("/subscriptions/{}", lab.server.config().subscription_id)).expect("Get Subscription asked");
    assert_eq!((asked.status, asked.api_version.as_deref(), asked.client_id.as_deref()), (401, Some("2016-06-01"), None), "{asked:#?}");
    assert_eq!(azure.power_state_vm(MASTER).await.unwrap(), PowerState::Running, "the token of the learnt tenant is accepted");
}

/// aks-engine checks the subscription's resource providers before it starts; certrotate checks
/// Microsoft.Compute in its Azure preflight (and registers nothing: a check changes nothing).
#[tokio::test]
async fn a_subscription_not_registered_for_compute_is_refused_before_anything_is_restarted() {
    let lab = start_with(IdentitySystem::AzureAd, &["Microsoft.Compute"]).await;
    let azure = AzureCompute::connect(lab.secret_settings()).await.unwrap();
    let err = azure.check_access().await.unwrap_err();
    assert!(err.to_string().contains("not registered for Microsoft.Compute"), "{err}");
    let calls = lab.server.calls().snapshot();
    let provider = calls.iter().find(|c| c.path.ends_with("/providers/Microsoft.Compute")).expect("the provider was read");
    assert_eq!((provider.status, provider.api_version.as_deref()), (200, Some("2019-10-01")), "{provider:#?}");
    assert!(calls.iter().all(|c| !c.path.ends_with("/restart")), "nothing restarted");

    let registered = start(IdentitySystem::AzureAd).await;
    AzureCompute::connect(registered.secret_settings()).await.unwrap().check_access().await.unwrap();
}

#[tokio::test]
async fn client_secret_on_azure_ad_restarts_a_master_and_waits_for_running() {
    let lab = start(IdentitySystem::AzureAd).await;
    let azure = AzureCompute::connect(lab.secret_settings()).await.unwrap();
    let tenant = &lab.server.config().tenant_id;
    assert_eq!(azure.token_endpoint(), format!("{}{tenant}/oauth2/v2.0/token", lab.server.endpoint()));

    assert_eq!(azure.power_state_vm(MASTER).await.unwrap(), PowerState::Running);
    azure.restart_vm(MASTER).await.unwrap();
    assert!(lab.vms.history(MASTER).contains(&lab::arm::PowerState::Stopped), "the VM really went down");
    azure.wait_running_vm(MASTER, Duration::from_secs(10)).await.unwrap();
    assert_eq!(azure.power_state_vm(MASTER).await.unwrap(), PowerState::Running);

    let calls = lab.server.calls().snapshot();
    assert_eq!(calls[0].path, "/metadata/endpoints");
    assert_eq!(calls[0].api_version.as_deref(), Some("2015-01-01"));
    let token_calls: Vec<_> = calls.iter().filter(|c| c.path.ends_with("/oauth2/v2.0/token")).collect();
    assert_eq!(token_calls.len(), 1, "the token is cached: {calls:#?}");
    assert_eq!(token_calls[0].path, format!("/{tenant}/oauth2/v2.0/token"));
    let compute = lab.compute_calls();
    assert!(compute.iter().any(|c| c.method == "POST" && c.path.ends_with("/restart") && c.status == 202));
    assert!(compute.iter().any(|c| c.path.contains("/operations/") && c.status == 200));
    assert!(compute.iter().all(|c| c.api_version.as_deref() == Some("2020-06-01")), "{compute:#?}");
    assert!(compute.iter().all(|c| c.client_id.as_deref() == Some(SECRET_APP)));
}

#[tokio::test]
async fn client_secret_on_adfs_uses_the_adfs_token_path() {
    let lab = start(IdentitySystem::Adfs).await;
    let azure = AzureCompute::connect(lab.secret_settings()).await.unwrap();
    assert!(azure.endpoints().login_endpoint.as_str().ends_with("/adfs"));
    azure.check_access().await.unwrap();
    assert_eq!(azure.power_state_vm("k8s-master-41772389-2").await.unwrap(), PowerState::Running);
    let calls = lab.server.calls().snapshot();
    assert!(calls.iter().any(|c| c.path == "/adfs/oauth2/token" && c.status == 200), "AD FS's v1 endpoint: {calls:#?}");
    assert!(calls.iter().all(|c| !c.path.contains("v2.0")), "nothing asks AD FS for its missing v2.0 endpoint: {calls:#?}");
}

#[tokio::test]
async fn client_certificate_authenticates_and_restarts_a_scale_set_master() {
    let lab = start(IdentitySystem::AzureAd).await;
    let key_mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&lab.cert.private_key).unwrap().permissions());
    assert_eq!(key_mode & 0o777, 0o600);
    assert!(std::fs::read_to_string(&lab.cert.private_key).unwrap().starts_with("-----BEGIN RSA PRIVATE KEY-----"));

    let azure = AzureCompute::connect(lab.certificate_settings()).await.unwrap();
    assert!(!format!("{azure:?}").contains("PRIVATE KEY"));
    azure.restart_scale_set_vm(SCALE_SET, "1").await.unwrap();
    azure.wait_running_scale_set_vm(SCALE_SET, "1", Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        lab.vms.history("k8s-master-41772389-vmss000001").first(),
        Some(&lab::arm::PowerState::Stopping)
    );
    let compute = lab.compute_calls();
    assert!(compute.iter().all(|c| c.client_id.as_deref() == Some(CERT_APP)));
    // The Compute spec spells this path `.../virtualmachines/{instanceId}`; ARM compares
    // paths case-insensitively.
    assert!(compute.iter().any(|c| c
        .path
        .to_ascii_lowercase()
        .ends_with("/virtualmachinescalesets/k8s-master-41772389-vmss/virtualmachines/1/restart")));
}

#[tokio::test]
async fn a_certificate_not_registered_is_refused_clearly() {
    let lab = start(IdentitySystem::AzureAd).await;
    let stranger = issue_client_certificate(&lab.dir.path().join("stranger"), CERT_APP).unwrap();
    let mut settings = lab.certificate_settings();
    settings.credentials = certrotate::cloud::azure::AzureCredentials::ClientCertificate {
        client_id: CERT_APP.into(),
        certificate_path: stranger.certificate,
        private_key_path: stranger.private_key,
    };
    let azure = AzureCompute::connect(settings).await.unwrap();
    let err = azure.check_access().await.unwrap_err();
    assert!(matches!(err, AzureError::Authentication { .. }), "{err:?}");
    assert!(err.to_string().contains("AADSTS700027"), "{err}");
}

#[tokio::test]
async fn throttling_twice_then_success_is_retried_honouring_retry_after() {
    let lab = start(IdentitySystem::AzureAd).await;
    let azure = AzureCompute::connect(lab.secret_settings()).await.unwrap();
    azure.check_access().await.unwrap();
    lab.server.faults().add(FaultRule { retry_after_secs: Some(1), ..FaultRule::new("*/virtualMachines/*/restart", 429, Some(2)) });

    let started = std::time::Instant::now();
    azure.restart_vm(MASTER).await.unwrap();
    let elapsed = started.elapsed();

    let restarts: Vec<(u16, bool)> = lab
        .compute_calls()
        .iter()
        .filter(|c| c.path.ends_with("/restart"))
        .map(|c| (c.status, c.injected))
        .collect();
    assert_eq!(restarts, vec![(429, true), (429, true), (202, false)]);
    assert!(elapsed >= Duration::from_secs(2), "Retry-After: 1 twice was not honoured ({elapsed:?})");
}

#[tokio::test]
async fn server_errors_that_never_stop_end_in_an_error_naming_the_vm() {
    let lab = start(IdentitySystem::AzureAd).await;
    let mut settings = lab.secret_settings();
    settings.retry.max_retries = 2;
    let azure = AzureCompute::connect(settings).await.unwrap();
    lab.server.faults().add(FaultRule::new("*/instanceView", 500, None));
    let err = azure.power_state_vm(MASTER).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains(MASTER) && text.contains("instance view"), "{text}");
    match &err {
        AzureError::Compute { status, code, .. } => {
            assert_eq!(*status, Some(500));
            assert_eq!(code.as_deref(), Some("InternalExecutionError"));
        }
        other => panic!("unexpected {other:?}"),
    }
    let attempts = lab.compute_calls().iter().filter(|c| c.path.ends_with("/instanceView")).count();
    assert_eq!(attempts, 3, "one call and two retries");
}

#[tokio::test]
async fn the_stamp_refuses_2024_07_01_while_2020_06_01_passes() {
    let lab = start(IdentitySystem::AzureAd).await;
    let mut newest = lab.secret_settings();
    newest.compute_api_version = None; // what azure_mgmt_compute 0.21 sends by itself
    let azure = AzureCompute::connect(newest).await.unwrap();
    let err = azure.power_state_vm(MASTER).await.unwrap_err();
    match &err {
        AzureError::Compute { status, code, help, .. } => {
            assert_eq!(*status, Some(400));
            assert_eq!(code.as_deref(), Some("NoRegisteredProviderFound"));
            assert!(help.as_deref().unwrap_or_default().contains("2020-06-01"), "{help:?}");
        }
        other => panic!("unexpected {other:?}"),
    }
    let refused = lab.compute_calls();
    assert_eq!(refused.last().unwrap().api_version.as_deref(), Some("2024-07-01"));

    let hybrid = AzureCompute::connect(lab.secret_settings()).await.unwrap();
    assert_eq!(hybrid.power_state_vm(MASTER).await.unwrap(), PowerState::Running);
    assert_eq!(lab.compute_calls().last().unwrap().api_version.as_deref(), Some("2020-06-01"));
}

#[tokio::test]
async fn a_wrong_secret_is_a_clear_error_that_never_echoes_the_secret() {
    let lab = start(IdentitySystem::AzureAd).await;
    let wrong = "wrong-secret-Value-7Q~never-printed";
    let mut settings = lab.secret_settings();
    settings.credentials =
        certrotate::cloud::azure::AzureCredentials::ClientSecret { client_id: SECRET_APP.into(), secret: ClientSecret::new(wrong) };
    assert!(!format!("{settings:?}").contains(wrong));
    let azure = AzureCompute::connect(settings).await.unwrap();
    let err = azure.restart(&VmRef::vm(MASTER)).await.unwrap_err();
    let shown = format!("{err}\n{err:?}");
    assert!(shown.contains("AADSTS7000215") && shown.contains("invalid_client"), "{shown}");
    assert!(shown.contains(SECRET_APP), "the error names the application: {shown}");
    assert!(!shown.contains(wrong) && !shown.contains(SECRET), "{shown}");
    assert!(lab.vms.history(MASTER).is_empty(), "nothing was restarted");
}

#[tokio::test]
async fn without_the_stamp_root_the_endpoint_is_not_trusted() {
    let lab = start(IdentitySystem::AzureAd).await;
    let mut settings = lab.secret_settings();
    settings.ca_bundle = None;
    let err = AzureCompute::connect(settings).await.unwrap_err();
    assert!(matches!(err, AzureError::Metadata { .. }), "{err:?}");
    assert!(err.to_string().to_lowercase().contains("certificate"), "{err}");

    let mut settings = lab.secret_settings();
    settings.ca_bundle = Some(lab.dir.path().join("missing.pem"));
    let err = AzureCompute::connect(settings).await.unwrap_err();
    assert!(matches!(err, AzureError::CaBundle { .. }), "{err:?}");
}

#[tokio::test]
async fn client_certificate_on_adfs_and_a_failed_restart_names_the_vm() {
    let lab = start(IdentitySystem::Adfs).await;
    let azure = AzureCompute::connect(lab.certificate_settings()).await.unwrap();
    assert!(azure.token_endpoint().ends_with("/adfs/oauth2/token"), "{}", azure.token_endpoint());
    lab.vms.fail_restarts(Some("the host could not start the VM".into()));
    let err = azure.restart_vm("k8s-master-41772389-1").await.unwrap_err();
    assert!(matches!(err, AzureError::OperationFailed { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("k8s-master-41772389-1") && text.contains("the host could not start the VM"), "{text}");
    let err = azure.wait_running_vm("k8s-master-41772389-1", Duration::from_millis(300)).await.unwrap_err();
    assert!(matches!(err, AzureError::Timeout { .. }), "{err:?}");
    assert!(err.to_string().contains("stopped"), "{err}");
    let calls = lab.server.calls().snapshot();
    assert!(calls.iter().any(|c| c.path == "/adfs/oauth2/token" && c.client_id.as_deref() == Some(CERT_APP) && c.status == 200), "{calls:#?}");
}
