//! rotate-all through the CLI on a stamp of each identity system (Azure AD, AD FS) with each
//! of aks-engine's sign-in methods (client secret, client certificate): the VM restarts go
//! through ARM with a token from the endpoint that identity system really serves. One small
//! lab per combination (1 master, no agent), two at a time. Needs root.

mod support;

use lab::spec::{AuthMethod, IdentitySystem, LabSpec};
use lab::Lab;
use std::path::Path;
use support::{cluster_flags, run, text, up};

fn rotate_all_signs_in_and_restarts_the_master(identity_system: IdentitySystem, auth_method: AuthMethod) {
    let dir = tempfile::tempdir().unwrap();
    let lab = up(dir.path(), LabSpec { masters: 1, agents: 0, identity_system, auth_method, ..LabSpec::default() });
    let env = lab.env();
    let mut flags = cluster_flags(&lab);
    if auth_method == AuthMethod::ClientCertificate {
        // The method itself comes from the API model's customCloudProfile, as aks-engine reads it.
        flags.extend(["--certificate-path".into(), env["LAB_CLIENT_CERTIFICATE"].clone()]);
        flags.extend(["--private-key-path".into(), env["LAB_CLIENT_PRIVATE_KEY"].clone()]);
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&env["LAB_CLIENT_PRIVATE_KEY"]).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600, "the service principal's key is private");
    }
    let applied = run(&["apply", "--profile", "rotate-all", "--auto-approve"], &flags);
    assert_eq!(applied.status.code(), Some(0), "{identity_system:?}/{auth_method:?}: {}", text(&applied));
    assert_signed_in_where_the_stamp_serves_tokens(&lab, identity_system);
    let all = text(&applied);
    assert!(!all.contains(&env["LAB_CLIENT_SECRET"]) && !all.contains("PRIVATE KEY"), "no secret printed: {all}");
    lab.down().unwrap();
    drop_dir(dir.path());
}

/// The token came from Azure AD's v2.0 endpoint of the tenant (learnt from ARM's challenge) or
/// from AD FS's only one, and ARM restarted the master for the lab's service principal.
fn assert_signed_in_where_the_stamp_serves_tokens(lab: &Lab, identity_system: IdentitySystem) {
    let env = lab.env();
    let calls = lab.arm_calls().unwrap();
    let token_path = match identity_system {
        IdentitySystem::AzureAd => format!("/{}/oauth2/v2.0/token", env["LAB_TENANT_ID"]),
        IdentitySystem::Adfs => "/adfs/oauth2/token".to_string(),
    };
    assert!(
        calls.iter().any(|c| c.path == token_path && c.status == 200 && c.client_id.as_deref() == Some(env["LAB_CLIENT_ID"].as_str())),
        "a token from {token_path}: {calls:#?}"
    );
    assert!(calls.iter().all(|c| !(c.path.contains("/oauth2/") && c.status >= 400)), "no refused sign-in: {calls:#?}");
    assert!(
        calls.iter().any(|c| c.path.ends_with("/restart") && c.status == 202 && c.client_id.as_deref() == Some(env["LAB_CLIENT_ID"].as_str())),
        "the master was restarted through ARM: {calls:#?}"
    );
}

fn drop_dir(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn azure_ad_with_a_client_secret() {
    rotate_all_signs_in_and_restarts_the_master(IdentitySystem::AzureAd, AuthMethod::ClientSecret);
}

#[test]
fn azure_ad_with_a_client_certificate() {
    rotate_all_signs_in_and_restarts_the_master(IdentitySystem::AzureAd, AuthMethod::ClientCertificate);
}

#[test]
fn adfs_with_a_client_secret() {
    rotate_all_signs_in_and_restarts_the_master(IdentitySystem::Adfs, AuthMethod::ClientSecret);
}

#[test]
fn adfs_with_a_client_certificate() {
    rotate_all_signs_in_and_restarts_the_master(IdentitySystem::Adfs, AuthMethod::ClientCertificate);
}
