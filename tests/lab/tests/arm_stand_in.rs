//! The ARM stand-in on the wire, through a plain HTTPS client (reqwest) that trusts only the
//! stand-in's root: metadata, the three token endpoint shapes, ARM's error JSON, api-version
//! policing, the restart long-running operation, scale-set VMs, faults and the call log.

use lab::arm::{
    write_arm_tls, ArmConfig, ArmServer, ClientCredential, FaultRule, IdentitySystem, PowerState, RestartTimings,
    ScaleSetSpec, SecretString, ServicePrincipal, SimulatedVms,
};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

const CLIENT_ID: &str = "5b1e7c2a-0f3d-4e8b-9a6c-1d2e3f4a5b6c";
const SECRET: &str = "s3cr3t-Value-that-must-never-echo";
const VM: &str = "k8s-master-41772389-0";

struct Lab {
    _dir: tempfile::TempDir,
    server: ArmServer,
    vms: SimulatedVms,
    http: reqwest::Client,
}

async fn start(identity: IdentitySystem) -> Lab {
    start_with(identity, None).await
}

async fn start_with(identity: IdentitySystem, admin_token: Option<&str>) -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let tls = write_arm_tls(dir.path()).unwrap();
    let mut config = ArmConfig::azure_stack(dir.path(), identity);
    config.service_principals.push(ServicePrincipal {
        client_id: CLIENT_ID.into(),
        credential: ClientCredential::Secret { secret: SecretString(SECRET.into()) },
    });
    config.virtual_machines = vec![VM.into(), "k8s-master-41772389-1".into()];
    config.scale_sets = vec![ScaleSetSpec {
        name: "k8s-master-41772389-vmss".into(),
        computer_name_prefix: "k8s-master-41772389-vmss".into(),
        instance_ids: vec!["0".into(), "1".into()],
    }];
    config.admin_token = admin_token.map(|t| SecretString(t.into()));
    let vms = SimulatedVms::new(RestartTimings::default());
    let server = ArmServer::start(config, Arc::new(vms.clone())).await.unwrap();
    let root = reqwest::Certificate::from_pem(&std::fs::read(&tls.ca_bundle).unwrap()).unwrap();
    let http = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root)
        .build()
        .unwrap();
    Lab { _dir: dir, server, vms, http }
}

impl Lab {
    fn url(&self, path: &str) -> String {
        format!("https://{}{}", self.server.bound_addr(), path)
    }

    fn vm_path(&self, vm: &str, rest: &str) -> String {
        let c = self.server.config();
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachines/{vm}{rest}",
            c.subscription_id, c.resource_group
        )
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, Value, String) {
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        (status, headers, serde_json::from_str(&text).unwrap_or(Value::Null), text)
    }

    async fn v1_token(&self) -> String {
        let c = self.server.config();
        let (status, _, body, text) = self
            .send(self.http.post(self.url(&format!("/{}/oauth2/token", c.tenant_id))).form(&[
                ("grant_type", "client_credentials"),
                ("client_id", CLIENT_ID),
                ("client_secret", SECRET),
                ("resource", c.audiences[0].as_str()),
            ]))
            .await;
        assert_eq!(status, 200, "{text}");
        body["access_token"].as_str().unwrap().to_string()
    }
}

#[tokio::test]
async fn metadata_document_names_login_endpoint_and_audience_over_the_private_root() {
    let lab = start(IdentitySystem::Adfs).await;
    let (status, _, body, _) =
        lab.send(lab.http.get(lab.url("/metadata/endpoints?api-version=2015-01-01"))).await;
    assert_eq!(status, 200);
    let addr = lab.server.bound_addr();
    assert_eq!(body["authentication"]["loginEndpoint"], format!("https://{addr}/adfs"));
    assert_eq!(body["authentication"]["audiences"][0], lab.server.config().audiences[0]);
    for key in ["galleryEndpoint", "graphEndpoint", "portalEndpoint"] {
        assert!(body[key].as_str().unwrap().starts_with("https://"), "{key} in {body}");
    }
    let (status, _, body, _) = lab.send(lab.http.get(lab.url("/metadata/endpoints"))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("MissingApiVersionParameter")));

    // A client that does not trust the stamp's root cannot talk to it at all.
    let stranger = reqwest::Client::builder().build().unwrap();
    let err = stranger.get(lab.url("/metadata/endpoints?api-version=2015-01-01")).send().await.unwrap_err();
    assert!(format!("{err:?}").to_lowercase().contains("certificate"), "{err:?}");
}

#[tokio::test]
async fn v1_token_then_vm_with_instance_view() {
    let lab = start(IdentitySystem::AzureAd).await;
    let c = lab.server.config().clone();
    let (status, _, body, text) = lab
        .send(lab.http.post(lab.url(&format!("/{}/oauth2/token", c.tenant_id))).form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT_ID),
            ("client_secret", SECRET),
            ("resource", &format!("{}/", c.audiences[0])),
        ]))
        .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(body["token_type"], "Bearer");
    assert!(body["expires_in"].is_string(), "v1 sends numbers as strings: {body}");
    assert_eq!(body["resource"], c.audiences[0]);
    let token = body["access_token"].as_str().unwrap();

    let (status, _, vm, text) = lab
        .send(lab.http.get(lab.url(&lab.vm_path(VM, "?api-version=2020-06-01&$expand=instanceView"))).bearer_auth(token))
        .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(vm["name"], VM);
    assert_eq!(vm["type"], "Microsoft.Compute/virtualMachines");
    assert_eq!(vm["location"], "local");
    assert_eq!(vm["properties"]["provisioningState"], "Succeeded");
    let statuses = vm["properties"]["instanceView"]["statuses"].as_array().unwrap();
    assert!(statuses.iter().any(|s| s["code"] == "PowerState/running"), "{vm}");

    // Names compare case-insensitively, as in ARM.
    let upper = lab.vm_path(&VM.to_uppercase(), "/instanceView?api-version=2020-06-01").replace("resourceGroups", "RESOURCEGROUPS");
    let (status, _, view, _) = lab.send(lab.http.get(lab.url(&upper)).bearer_auth(token)).await;
    assert_eq!(status, 200);
    assert_eq!(view["computerName"], VM);
}

#[tokio::test]
async fn adfs_token_endpoint_and_wrong_secret() {
    let lab = start(IdentitySystem::Adfs).await;
    let audience = lab.server.config().audiences[0].clone();
    let (status, _, body, text) = lab
        .send(lab.http.post(lab.url("/adfs/oauth2/token")).form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT_ID),
            ("client_secret", SECRET),
            ("resource", audience.as_str()),
        ]))
        .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(body["token_type"], "bearer");
    assert!(body["expires_in"].is_number());

    // AD FS has no v2.0 endpoint: what azure_identity posts is not served at all.
    let (status, _, _, text) = lab
        .send(lab.http.post(lab.url("/adfs/oauth2/v2.0/token")).form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT_ID),
            ("client_secret", SECRET),
            ("scope", &format!("{audience}/.default")),
        ]))
        .await;
    assert_eq!(status, 404, "{text}");

    let wrong = "not-the-secret-at-all-9f8e7d";
    let (status, _, body, text) = lab
        .send(lab.http.post(lab.url("/adfs/oauth2/token")).form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT_ID),
            ("client_secret", wrong),
            ("resource", audience.as_str()),
        ]))
        .await;
    assert_eq!(status, 401, "{text}");
    assert_eq!(body["error"], "invalid_client");
    assert!(!text.contains(wrong) && !text.contains(SECRET), "{text}");

    // An Azure AD tenant path on an AD FS stamp does not exist.
    let (status, _, body, _) = lab
        .send(lab.http.post(lab.url("/some-tenant/oauth2/token")).form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT_ID),
            ("client_secret", SECRET),
            ("resource", audience.as_str()),
        ]))
        .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")));
}

#[tokio::test]
async fn arm_refuses_bad_tokens_versions_and_names_with_its_error_json() {
    let lab = start(IdentitySystem::AzureAd).await;
    let token = lab.v1_token().await;
    let vm = lab.vm_path(VM, "?api-version=2020-06-01");

    let (status, headers, body, _) = lab.send(lab.http.get(lab.url(&vm))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("AuthenticationFailed")));
    assert!(headers["www-authenticate"].to_str().unwrap().starts_with("Bearer authorization_uri="));

    let (status, _, body, _) = lab.send(lab.http.get(lab.url(&vm)).bearer_auth("eyJhbGciOi.forged.token")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("InvalidAuthenticationToken")));

    let (status, _, body, _) =
        lab.send(lab.http.get(lab.url(&lab.vm_path(VM, "?api-version=2024-07-01"))).bearer_auth(&token)).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "NoRegisteredProviderFound");
    assert!(body["error"]["message"].as_str().unwrap().contains("2020-06-01"));

    let (status, _, body, _) = lab.send(lab.http.get(lab.url(&lab.vm_path(VM, ""))).bearer_auth(&token)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("MissingApiVersionParameter")));

    let (status, _, body, _) =
        lab.send(lab.http.get(lab.url(&lab.vm_path("k8s-master-00000000-9", "?api-version=2020-06-01"))).bearer_auth(&token)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("ResourceNotFound")));

    let c = lab.server.config();
    let other_rg = format!(
        "/subscriptions/{}/resourceGroups/elsewhere/providers/Microsoft.Compute/virtualMachines/{VM}?api-version=2020-06-01",
        c.subscription_id
    );
    let (status, _, body, _) = lab.send(lab.http.get(lab.url(&other_rg)).bearer_auth(&token)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("ResourceGroupNotFound")));

    let other_sub = format!(
        "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/{}/providers/Microsoft.Compute/virtualMachines/{VM}?api-version=2020-06-01",
        c.resource_group
    );
    let (status, _, body, _) = lab.send(lab.http.get(lab.url(&other_sub)).bearer_auth(&token)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("SubscriptionNotFound")));

    // A token for another resource is not issued at all.
    let (status, _, body, _) = lab
        .send(lab.http.post(lab.url(&format!("/{}/oauth2/v2.0/token", c.tenant_id))).form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT_ID),
            ("client_secret", SECRET),
            ("scope", "https://vault.azure.net/.default"),
        ]))
        .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_resource")));
}

/// What the Microsoft authentication libraries do before and in a client-credentials grant:
/// read the tenant's OpenID configuration, then ask with the OpenID Connect scopes beside the
/// one `/.default` scope. Azure AD serves and accepts both; AD FS does not serve Azure AD's.
#[tokio::test]
async fn azure_ad_serves_openid_configuration_and_accepts_the_scopes_msal_adds() {
    let lab = start(IdentitySystem::AzureAd).await;
    let c = lab.server.config();
    let (status, _, body, text) = lab.send(lab.http.get(lab.url(&format!("/{}/v2.0/.well-known/openid-configuration", c.tenant_id)))).await;
    assert_eq!(status, 200, "{text}");
    let token_endpoint = body["token_endpoint"].as_str().unwrap().to_string();
    assert!(token_endpoint.ends_with(&format!("/{}/oauth2/v2.0/token", c.tenant_id)), "{text}");
    let (status, _, body, _) = lab.send(lab.http.get(lab.url("/00000000-0000-0000-0000-000000000000/v2.0/.well-known/openid-configuration"))).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_tenant")));

    let path = url::Url::parse(&token_endpoint).unwrap().path().to_string();
    let scope = format!("{}/.default openid offline_access profile", c.audiences[0].trim_end_matches('/'));
    let (status, _, body, text) = lab
        .send(lab.http.post(lab.url(&path)).form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT_ID),
            ("client_secret", SECRET),
            ("scope", scope.as_str()),
        ]))
        .await;
    assert_eq!(status, 200, "{text}");
    assert!(body["access_token"].as_str().is_some_and(|t| !t.is_empty()), "{text}");
    // Two resources in one client-credentials request are still refused, as by Azure AD.
    let two = format!("{}/.default https://vault.azure.net/.default", c.audiences[0].trim_end_matches('/'));
    let (status, _, body, _) = lab
        .send(lab.http.post(lab.url(&path)).form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT_ID),
            ("client_secret", SECRET),
            ("scope", two.as_str()),
        ]))
        .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_scope")));

    let adfs = start(IdentitySystem::Adfs).await;
    let (status, _, _, _) = adfs.send(adfs.http.get(adfs.url("/adfs/v2.0/.well-known/openid-configuration"))).await;
    assert_eq!(status, 400, "AD FS does not serve Azure AD's discovery document");
}

#[tokio::test]
async fn restart_is_a_long_running_operation_that_takes_the_vm_down_and_back() {
    let lab = start(IdentitySystem::AzureAd).await;
    let token = lab.v1_token().await;
    let (status, headers, _, text) = lab
        .send(lab.http.post(lab.url(&lab.vm_path(VM, "/restart?api-version=2020-06-01"))).bearer_auth(&token))
        .await;
    assert_eq!(status, 202, "{text}");
    let async_op = headers["azure-asyncoperation"].to_str().unwrap().to_string();
    let location = headers["location"].to_str().unwrap().to_string();
    assert!(async_op.contains("/providers/Microsoft.Compute/locations/local/operations/"), "{async_op}");
    assert!(location.contains("monitor=true"), "{location}");
    assert_eq!(headers["retry-after"], "1");

    // A second restart while the first runs is refused.
    let (status, _, body, _) = lab
        .send(lab.http.post(lab.url(&lab.vm_path(VM, "/restart?api-version=2020-06-01"))).bearer_auth(&token))
        .await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("OperationNotAllowed")));

    let (status, _, _, _) = lab.send(lab.http.get(&location).bearer_auth(&token)).await;
    assert_eq!(status, 202, "Location answers 202 while the operation runs");

    let mut saw_in_progress = false;
    let mut saw_down = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, op, text) = lab.send(lab.http.get(&async_op).bearer_auth(&token)).await;
        assert_eq!(status, 200, "{text}");
        let (_, _, view, _) =
            lab.send(lab.http.get(lab.url(&lab.vm_path(VM, "/instanceView?api-version=2020-06-01"))).bearer_auth(&token)).await;
        if view["statuses"][1]["code"] != "PowerState/running" {
            saw_down = true;
        }
        match op["status"].as_str().unwrap() {
            "InProgress" => saw_in_progress = true,
            "Succeeded" => {
                assert!(op["endTime"].is_string());
                break;
            }
            other => panic!("unexpected status {other}: {op}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "restart did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(saw_in_progress && saw_down);
    assert_eq!(
        lab.vms.history(VM),
        vec![PowerState::Stopping, PowerState::Stopped, PowerState::Starting, PowerState::Running]
    );
    let (status, _, _, _) = lab.send(lab.http.get(&location).bearer_auth(&token)).await;
    assert_eq!(status, 200, "Location answers 200 once done");
}

#[tokio::test]
async fn scale_set_vms_get_instance_view_and_restart() {
    let lab = start(IdentitySystem::AzureAd).await;
    let token = lab.v1_token().await;
    let c = lab.server.config().clone();
    let base = format!(
        "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachineScaleSets/k8s-master-41772389-vmss/virtualMachines",
        c.subscription_id, c.resource_group
    );
    let (status, _, vm, text) =
        lab.send(lab.http.get(lab.url(&format!("{base}/1?api-version=2020-06-01&$expand=instanceView"))).bearer_auth(&token)).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(vm["instanceId"], "1");
    assert_eq!(vm["name"], "k8s-master-41772389-vmss_1");
    assert_eq!(vm["properties"]["osProfile"]["computerName"], "k8s-master-41772389-vmss000001");
    assert_eq!(vm["properties"]["instanceView"]["statuses"][1]["code"], "PowerState/running");

    let (status, headers, _, _) =
        lab.send(lab.http.post(lab.url(&format!("{base}/1/restart?api-version=2020-06-01"))).bearer_auth(&token)).await;
    assert_eq!(status, 202);
    assert!(headers.contains_key("azure-asyncoperation"));
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (_, _, view, _) =
        lab.send(lab.http.get(lab.url(&format!("{base}/1/instanceView?api-version=2020-06-01"))).bearer_auth(&token)).await;
    assert_ne!(view["statuses"][1]["code"], "PowerState/running", "{view}");

    let (status, _, body, _) =
        lab.send(lab.http.get(lab.url(&format!("{base}/7?api-version=2020-06-01"))).bearer_auth(&token)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("ResourceNotFound")));
}

#[tokio::test]
async fn faults_answer_instead_of_the_server_and_the_call_log_records_everything() {
    let lab = start(IdentitySystem::AzureAd).await;
    let token = lab.v1_token().await;
    let id = lab.server.faults().add(FaultRule { retry_after_secs: Some(7), ..FaultRule::new("*/instanceview", 429, Some(1)) });
    let view = lab.url(&lab.vm_path(VM, "/instanceView?api-version=2020-06-01"));

    let (status, headers, body, _) = lab.send(lab.http.get(&view).bearer_auth(&token)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (429, Some("TooManyRequests")));
    assert_eq!(headers["retry-after"], "7");
    let (status, _, _, _) = lab.send(lab.http.get(&view).bearer_auth(&token)).await;
    assert_eq!(status, 200, "a fault for one request fires once");
    assert_eq!(lab.server.faults().list()[0].fired, 1);
    assert!(lab.server.faults().remove(id));

    lab.server.faults().add(FaultRule::new("*/restart", 500, None));
    for _ in 0..3 {
        let (status, _, body, _) =
            lab.send(lab.http.post(lab.url(&lab.vm_path(VM, "/restart?api-version=2020-06-01"))).bearer_auth(&token)).await;
        assert_eq!((status, body["error"]["code"].as_str()), (500, Some("InternalExecutionError")));
    }
    assert_eq!(lab.vms.history(VM), vec![], "a faulted restart never reaches the VM");

    let calls = lab.server.calls().snapshot();
    let summary: Vec<(String, u16, bool)> = calls.iter().map(|c| (c.method.clone(), c.status, c.injected)).collect();
    assert_eq!(
        summary,
        vec![
            ("POST".into(), 200, false),
            ("GET".into(), 429, true),
            ("GET".into(), 200, false),
            ("POST".into(), 500, true),
            ("POST".into(), 500, true),
            ("POST".into(), 500, true),
        ]
    );
    assert_eq!(calls[2].api_version.as_deref(), Some("2020-06-01"));
    assert_eq!(calls[2].client_id.as_deref(), Some(CLIENT_ID));
    assert_eq!(calls[0].client_id.as_deref(), Some(CLIENT_ID));
    assert!(calls.windows(2).all(|w| w[0].seq < w[1].seq && w[0].at <= w[1].at));
    let json = serde_json::to_string(&calls).unwrap();
    assert!(!json.contains(SECRET) && !json.contains(&token), "the call log carries no secrets");
}

#[tokio::test]
async fn the_admin_surface_injects_faults_and_reads_calls_from_another_process() {
    let admin = "lab-admin-token-1";
    let lab = start_with(IdentitySystem::AzureAd, Some(admin)).await;
    let token = lab.v1_token().await;

    let (status, _, _, _) = lab.send(lab.http.get(lab.url("/_lab/calls"))).await;
    assert_eq!(status, 401, "no admin token, no access");
    let (status, _, body, text) = lab
        .send(
            lab.http
                .post(lab.url("/_lab/faults"))
                .header("x-lab-admin-token", admin)
                .body(r#"{"path":"*/restart","status":503,"times":1,"retry_after_secs":2}"#),
        )
        .await;
    assert_eq!(status, 201, "{text}");
    let id = body["id"].as_u64().unwrap();

    let (status, headers, _, _) =
        lab.send(lab.http.post(lab.url(&lab.vm_path(VM, "/restart?api-version=2020-06-01"))).bearer_auth(&token)).await;
    assert_eq!((status, headers["retry-after"].to_str().unwrap()), (503, "2"));

    let (_, _, faults, _) = lab.send(lab.http.get(lab.url("/_lab/faults")).header("x-lab-admin-token", admin)).await;
    assert_eq!(faults[0]["id"].as_u64(), Some(id));
    assert_eq!(faults[0]["fired"].as_u64(), Some(1));
    let (_, _, calls, _) = lab.send(lab.http.get(lab.url("/_lab/calls")).header("x-lab-admin-token", admin)).await;
    let calls: Vec<lab::arm::CallRecord> = serde_json::from_value(calls).unwrap();
    assert_eq!(calls.iter().map(|c| c.status).collect::<Vec<_>>(), vec![200, 503], "admin calls are not logged");
    let (status, _, _, _) =
        lab.send(lab.http.delete(lab.url(&format!("/_lab/faults/{id}"))).header("x-lab-admin-token", admin)).await;
    assert_eq!(status, 204);
    assert!(lab.server.faults().list().is_empty());

    // Without a configured token the surface does not exist.
    let closed = start(IdentitySystem::AzureAd).await;
    let (status, _, _, _) = closed.send(closed.http.get(closed.url("/_lab/calls")).header("x-lab-admin-token", "")).await;
    assert_eq!(status, 404);
}
