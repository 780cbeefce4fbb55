//! certrotate's Azure settings from an API model as aks-engine writes it for Azure Stack Hub,
//! and the checks on client-certificate material, through the public API only (no cloud
//! needed; the client against a live stand-in is tested in tests/lab/tests/arm_client.rs).

use certrotate::cloud::azure::{
    AuthMethod, AzureCredentials, AzureError, AzureInputs, AzureSettings, ServicePrincipalCredential, ClientSecret, TokenTarget,
    IdentitySystem,
};
use certrotate::model::apimodel::ApiModel;
use std::sync::Arc;

/// The customCloudProfile part of a real `aks-engine generate` output for an ASDK stamp.
const API_MODEL: &str = r#"{
  "apiVersion": "vlabs",
  "location": "local",
  "properties": {
    "orchestratorProfile": {"orchestratorType": "Kubernetes", "orchestratorVersion": "1.21.14"},
    "masterProfile": {"count": 3, "dnsPrefix": "lab41772389", "vmSize": "Standard_D2_v2", "firstConsecutiveStaticIP": "10.255.255.5"},
    "linuxProfile": {"adminUsername": "azureuser", "ssh": {"publicKeys": [{"keyData": "ssh-rsa AAAA lab"}]}},
    "servicePrincipalProfile": {"clientId": "6a2d4c1e-0b9f-4e8d-a7c6-5b4a3f2e1d0c", "secret": "apimodel-secret-value"},
    "customCloudProfile": {
      "portalURL": "https://portal.local.azurestack.external/",
      "identitySystem": "adfs",
      "authenticationMethod": "client_secret",
      "environment": {
        "name": "AzureStackCloud",
        "managementPortalURL": "https://portal.local.azurestack.external/",
        "serviceManagementEndpoint": "https://management.adfs.azurestack.local/4de154de-f8a8-4017-af41-df619da68155",
        "resourceManagerEndpoint": "https://management.local.azurestack.external/",
        "activeDirectoryEndpoint": "https://adfs.local.azurestack.external/adfs",
        "resourceManagerVMDNSSuffix": "cloudapp.azurestack.external"
      }
    }
  }
}"#;

fn inputs() -> AzureInputs {
    AzureInputs {
        subscription_id: Some("3c1a4b5e-8f2d-4e7a-9b6c-0d1e2f3a4b5c".into()),
        resource_group: Some("lab41772389".into()),
        ..Default::default()
    }
}

#[test]
fn an_azure_stack_adfs_api_model_resolves_to_the_hybrid_profile() {
    let model: serde_json::Value = serde_json::from_str(API_MODEL).unwrap();
    let settings = AzureSettings::resolve(&model, inputs()).unwrap();
    assert_eq!(settings.identity_system, IdentitySystem::Adfs);
    assert_eq!(settings.tenant_id.as_deref(), Some("adfs"));
    assert_eq!(settings.compute_api_version.as_deref(), Some("2020-06-01"));
    assert_eq!(settings.resource_manager_endpoint.host_str(), Some("management.local.azurestack.external"));
    assert_eq!(settings.credentials.client_id(), "6a2d4c1e-0b9f-4e8d-a7c6-5b4a3f2e1d0c");
    assert!(!format!("{settings:?}").contains("apimodel-secret-value"), "Debug must redact the secret");

    // Flags win over the API model's service principal.
    let flagged = AzureSettings::resolve(
        &model,
        AzureInputs { client_id: Some("other-app".into()), client_secret: Some(ClientSecret::new("flag-secret")), ..inputs() },
    )
    .unwrap();
    assert_eq!(
        flagged.credentials,
        AzureCredentials::ClientSecret { client_id: "other-app".into(), secret: ClientSecret::new("flag-secret") }
    );
}

#[test]
fn missing_pieces_are_named() {
    let mut model: serde_json::Value = serde_json::from_str(API_MODEL).unwrap();
    let err = AzureSettings::resolve(&model, AzureInputs { resource_group: None, ..inputs() }).unwrap_err();
    assert!(err.to_string().contains("resource group"), "{err}");

    model["properties"]["customCloudProfile"]["environment"]
        .as_object_mut()
        .unwrap()
        .remove("resourceManagerEndpoint");
    let err = AzureSettings::resolve(&model, inputs()).unwrap_err();
    assert!(err.to_string().contains("resourceManagerEndpoint"), "{err}");

    let mut model: serde_json::Value = serde_json::from_str(API_MODEL).unwrap();
    model["properties"]["customCloudProfile"]["identitySystem"] = "azure_ad".into();
    // Azure AD without --tenant-id: the tenant is learnt from ARM's challenge when connecting.
    let settings = AzureSettings::resolve(&model, inputs()).unwrap();
    assert_eq!(settings.tenant_id, None, "no tenant is made up");
}

#[test]
fn client_certificate_material_is_checked_before_use() {
    let dir = tempfile::tempdir().unwrap();
    let ec_key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["spn".to_string()]).unwrap().self_signed(&ec_key).unwrap();
    let cert_path = dir.path().join("spn.crt");
    let key_path = dir.path().join("spn.key");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, ec_key.serialize_pem()).unwrap();
    let http: Arc<dyn azure_core::HttpClient> = azure_core::new_http_client();
    let token_url = azure_core::Url::parse("https://login.example/tenant/oauth2/v2.0/token").unwrap();

    let err = ServicePrincipalCredential::load(http.clone(), token_url.clone(), "app", &cert_path, &key_path, TokenTarget::Scope).unwrap_err();
    assert!(matches!(err, AzureError::ClientCertificate { .. }), "{err:?}");
    assert!(err.to_string().contains("not an RSA key"), "{err}");

    let err = ServicePrincipalCredential::load(http.clone(), token_url.clone(), "app", &key_path, &key_path, TokenTarget::Scope).unwrap_err();
    assert!(err.to_string().contains("no PEM certificate"), "{err}");

    let rsa_key = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).unwrap();
    std::fs::write(&key_path, rsa_key.serialize_pem()).unwrap();
    let credential = ServicePrincipalCredential::load(http, token_url, "app", &cert_path, &key_path, TokenTarget::Scope).unwrap();
    let shown = format!("{credential:?}");
    assert!(shown.contains("x5t") && !shown.contains("PRIVATE"), "{shown}");
}

#[test]
fn a_loaded_api_model_and_command_line_flags_resolve_together() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("apimodel.json");
    std::fs::write(&path, API_MODEL).unwrap();
    let model = ApiModel::load(&path).unwrap();
    let settings = AzureSettings::from_api_model(&model, inputs()).unwrap();
    assert_eq!(settings.credentials.client_id(), "6a2d4c1e-0b9f-4e8d-a7c6-5b4a3f2e1d0c");

    // --identity-system and --auth-method override the model; a certificate then needs paths.
    let err = AzureSettings::from_api_model(
        &model,
        AzureInputs { auth_method: Some(AuthMethod::ClientCertificate), ..inputs() },
    )
    .unwrap_err();
    assert!(err.to_string().contains("no certificate"), "{err}");
    let settings = AzureSettings::from_api_model(
        &model,
        AzureInputs { identity_system: Some(IdentitySystem::AzureAd), tenant_id: Some("t-1".into()), ..inputs() },
    )
    .unwrap();
    assert_eq!((settings.identity_system, settings.tenant_id.as_deref()), (IdentitySystem::AzureAd, Some("t-1")));
}

#[test]
fn the_client_secret_file_is_read_by_its_first_line() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        azure: certrotate::cli::args::AzureArgs,
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, "from-file-secret\nignored\n").unwrap();
    let cli = Cli::parse_from(["x", "--client-secret-file", file.to_str().unwrap(), "--auth-method", "client_secret"]);
    let inputs = cli.azure.to_inputs().unwrap();
    assert_eq!(inputs.client_secret, Some(ClientSecret::new("from-file-secret")));
    assert_eq!(inputs.auth_method, Some(AuthMethod::ClientSecret));

    std::fs::write(&file, "\n").unwrap();
    let err = cli.azure.to_inputs().unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
}

/// On Azure (not Azure Stack Hub) aks-engine signs in without a service principal when none is
/// given (DefaultAzureCredential: the Azure CLI's login, a managed identity). certrotate does
/// not, and says what to pass instead.
#[test]
fn a_sign_in_certrotate_cannot_serve_is_refused_naming_what_to_use() {
    let model = serde_json::json!({"location": "westeurope", "properties": {"servicePrincipalProfile": {"clientId": "a"}}});
    let err = AzureSettings::resolve(&model, inputs()).unwrap_err();
    let text = format!("{err}");
    assert!(text.contains("Azure CLI") && text.contains("managed identity"), "{text}");
    let help = miette::Diagnostic::help(&err).map(|h| h.to_string()).unwrap_or_default();
    assert!(help.contains("--client-secret") && help.contains("client_certificate"), "{help}");
}

/// aks-engine's `--language` is accepted; certrotate speaks English only and refuses others.
#[test]
fn language_is_aks_engines_flag_and_english_only() {
    use clap::Parser;
    let parse = |lang: &str| {
        certrotate::cli::args::Cli::try_parse_from(["certrotate", "plan", "--api-model", "m.json", "--language", lang])
    };
    assert!(parse("en-us").is_ok());
    let err = parse("de-de").unwrap_err().to_string();
    assert!(err.contains("English only") && err.contains("en-us"), "{err}");
}

/// clap checks the whole command line's definition only in debug builds and only when a
/// subcommand is parsed; this checks every subcommand at once, so a bad definition fails
/// here rather than as a panic in an operator's hands.
#[test]
fn the_command_line_definition_is_valid() {
    use clap::CommandFactory;
    certrotate::cli::args::Cli::command().debug_assert();
}
