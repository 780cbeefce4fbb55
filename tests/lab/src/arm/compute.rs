//! Microsoft.Compute as ARM serves it for the cluster's VMs: availability-set VMs and
//! scale-set VMs (get, `$expand=instanceView`, instanceView, restart) and the long-running
//! operations a restart creates. Every call needs a bearer token this stamp issued for one of
//! its audiences; names must match the configuration (case-insensitively, as ARM compares
//! them); in Azure Stack mode only the api-versions a stamp serves are accepted.

use super::http::{method_not_allowed, ArmRequest, Reply, ServerState};
use super::{PowerState, ScaleSetInstance, VmTarget, AZURE_STACK_COMPUTE_API_VERSIONS};
use serde_json::{json, Value};
use sha1::{Digest, Sha1};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A long-running operation's outcome so far.
#[derive(Debug, Clone)]
enum Outcome {
    InProgress,
    Succeeded,
    Failed(String),
}

#[derive(Debug, Clone)]
struct Operation {
    vm: VmTarget,
    started: OffsetDateTime,
    ended: Option<OffsetDateTime>,
    outcome: Outcome,
}

/// Operations by id (lower-case uuid).
#[derive(Debug, Default)]
pub(crate) struct Operations {
    by_id: Mutex<HashMap<String, Operation>>,
}

impl Operations {
    fn in_progress_for(&self, vm: &VmTarget) -> bool {
        self.by_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .any(|op| &op.vm == vm && matches!(op.outcome, Outcome::InProgress))
    }

    fn get(&self, id: &str) -> Option<Operation> {
        self.by_id.lock().unwrap_or_else(|e| e.into_inner()).get(&id.to_ascii_lowercase()).cloned()
    }

    fn insert(&self, id: &str, op: Operation) {
        self.by_id.lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_string(), op);
    }

    fn finish(&self, id: &str, outcome: Outcome) {
        if let Some(op) = self.by_id.lock().unwrap_or_else(|e| e.into_inner()).get_mut(id) {
            op.outcome = outcome;
            op.ended = Some(OffsetDateTime::now_utc());
        }
    }
}

/// The resource a compute path names, resolved against the configuration.
enum Resource {
    Vm { name: String },
    ScaleSetVm { scale_set: String, instance_id: String, computer_name: String },
}

impl Resource {
    fn target(&self) -> VmTarget {
        match self {
            Resource::Vm { name } => VmTarget { computer_name: name.clone(), scale_set: None },
            Resource::ScaleSetVm { scale_set, instance_id, computer_name } => VmTarget {
                computer_name: computer_name.clone(),
                scale_set: Some(ScaleSetInstance { scale_set: scale_set.clone(), instance_id: instance_id.clone() }),
            },
        }
    }

    fn resource_type(&self) -> &'static str {
        match self {
            Resource::Vm { .. } => "virtualMachines",
            Resource::ScaleSetVm { .. } => "virtualMachineScaleSets/virtualMachines",
        }
    }
}

pub(crate) async fn route(state: &Arc<ServerState>, req: &ArmRequest, lower: &[&str]) -> Reply {
    let claims = match authenticate(state, req) {
        Ok(client_id) => client_id,
        Err(reply) => return reply,
    };
    route_authenticated(state, req, lower).await.client(Some(claims))
}

async fn route_authenticated(state: &Arc<ServerState>, req: &ArmRequest, lower: &[&str]) -> Reply {
    let seg = &req.segments;
    match lower {
        ["subscriptions", _, "providers", "microsoft.compute", "locations", _, "operations", _] => {
            if let Err(reply) = check_api_version(state, req, "locations/operations") {
                return reply;
            }
            if let Err(reply) = check_subscription(state, &seg[1]) {
                return reply;
            }
            if !req.method.eq_ignore_ascii_case("GET") {
                return method_not_allowed(req);
            }
            operation_status(state, req, &seg[5], &seg[7])
        }
        ["subscriptions", _, "providers"] | ["subscriptions", _, "providers", _] => {
            if let Err(reply) = check_subscription(state, &seg[1]) {
                return reply;
            }
            if !req.method.eq_ignore_ascii_case("GET") {
                return method_not_allowed(req);
            }
            providers(state, req, seg.get(3).map(String::as_str))
        }
        ["subscriptions", _, "resourcegroups", _, "providers", "microsoft.compute", "virtualmachines", _, rest @ ..] => {
            if let Err(reply) = check_api_version(state, req, "virtualMachines") {
                return reply;
            }
            if let Err(reply) = check_scope(state, &seg[1], &seg[3]) {
                return reply;
            }
            let Some(name) = state.config.virtual_machines.iter().find(|vm| vm.eq_ignore_ascii_case(&seg[7])) else {
                return not_found(state, "Microsoft.Compute/virtualMachines", &seg[7]);
            };
            vm_action(state, req, Resource::Vm { name: name.clone() }, rest)
        }
        ["subscriptions", _, "resourcegroups", _, "providers", "microsoft.compute", "virtualmachinescalesets", _, "virtualmachines", _, rest @ ..] => {
            if let Err(reply) = check_api_version(state, req, "virtualMachineScaleSets/virtualMachines") {
                return reply;
            }
            if let Err(reply) = check_scope(state, &seg[1], &seg[3]) {
                return reply;
            }
            let Some(scale_set) = state.config.scale_sets.iter().find(|ss| ss.name.eq_ignore_ascii_case(&seg[7])) else {
                return not_found(state, "Microsoft.Compute/virtualMachineScaleSets", &seg[7]);
            };
            let Some(instance_id) = scale_set.instance_ids.iter().find(|id| **id == seg[9]) else {
                return not_found(
                    state,
                    "Microsoft.Compute/virtualMachineScaleSets/virtualMachines",
                    &format!("{}/{}", scale_set.name, seg[9]),
                );
            };
            let computer_name = format!("{}{}", scale_set.computer_name_prefix, base36_instance(instance_id));
            let resource = Resource::ScaleSetVm {
                scale_set: scale_set.name.clone(),
                instance_id: instance_id.clone(),
                computer_name,
            };
            vm_action(state, req, resource, rest)
        }
        _ => Reply::arm_error(
            400,
            "InvalidResourceType",
            format!("The resource type could not be found for the request path '{}'.", req.path),
        ),
    }
}

/// Checks the bearer token; returns the calling application's id.
fn authenticate(state: &ServerState, req: &ArmRequest) -> Result<String, Reply> {
    let challenge = |error_description: &str| {
        format!(
            "Bearer authorization_uri=\"https://{}/{}\", error=\"invalid_token\", error_description=\"{error_description}\"",
            req.host, state.config.tenant_id
        )
    };
    let unauthorized = |code: &str, message: String| {
        Reply::arm_error(401, code, message.clone()).header("www-authenticate", challenge(&message))
    };
    let Some(value) = req.header_str("authorization") else {
        return Err(unauthorized("AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing.".into()));
    };
    let Some(token) = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")) else {
        return Err(unauthorized(
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is provided in an invalid format.".into(),
        ));
    };
    let jwt = state
        .signer
        .verify(token.trim())
        .map_err(|_| unauthorized("InvalidAuthenticationToken", "The access token is invalid.".into()))?;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    if let Some(exp) = jwt.claim_i64("exp") {
        if exp < now {
            let fmt = |t: i64| {
                OffsetDateTime::from_unix_timestamp(t).ok().and_then(|t| t.format(&Rfc3339).ok()).unwrap_or_default()
            };
            return Err(unauthorized(
                "ExpiredAuthenticationToken",
                format!("The access token expiry UTC time '{}' is earlier than current UTC time '{}'.", fmt(exp), fmt(now)),
            ));
        }
    }
    let aud = jwt.claim_str("aud").unwrap_or_default();
    if !state.config.audiences.iter().any(|a| a.trim_end_matches('/') == aud.trim_end_matches('/')) {
        return Err(unauthorized(
            "InvalidAuthenticationTokenAudience",
            format!(
                "The access token has been obtained for wrong audience or resource '{aud}'. It should exactly match with one of the allowed audiences '{}'.",
                state.config.audiences.join("','")
            ),
        ));
    }
    Ok(jwt.claim_str("appid").unwrap_or_default().to_string())
}

/// Providers - List and Get of Microsoft.Resources, as aks-engine's `EnsureProvidersRegistered`
/// reads them: namespace and registration state of each provider of the subscription.
fn providers(state: &ServerState, req: &ArmRequest, one: Option<&str>) -> Reply {
    let version = req.api_version().unwrap_or_default();
    if state.config.azure_stack && !super::AZURE_STACK_RESOURCES_API_VERSIONS.contains(&version) {
        return Reply::arm_error(
            400,
            "InvalidApiVersionParameter",
            format!(
                "The api-version '{version}' is invalid. The supported versions are '{}'.",
                super::AZURE_STACK_RESOURCES_API_VERSIONS.join(",")
            ),
        );
    }
    let subscription = &state.config.subscription_id;
    let provider = |namespace: &str| {
        let registered = !state.config.unregistered_providers.iter().any(|p| p.eq_ignore_ascii_case(namespace));
        json!({
            "id": format!("/subscriptions/{subscription}/providers/{namespace}"),
            "namespace": namespace,
            "registrationState": if registered { "Registered" } else { "NotRegistered" },
            "resourceTypes": [],
        })
    };
    match one {
        None => Reply::json(200, &json!({"value": super::RESOURCE_PROVIDERS.iter().map(|p| provider(p)).collect::<Vec<_>>()})),
        Some(name) => match super::RESOURCE_PROVIDERS.iter().find(|p| p.eq_ignore_ascii_case(name)) {
            Some(namespace) => Reply::json(200, &provider(namespace)),
            None => Reply::arm_error(
                404,
                "InvalidResourceNamespace",
                format!("The resource namespace '{name}' is invalid."),
            ),
        },
    }
}

fn check_api_version(state: &ServerState, req: &ArmRequest, resource_type: &str) -> Result<(), Reply> {
    let Some(version) = req.api_version() else {
        return Err(Reply::arm_error(
            400,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        ));
    };
    let supported = if state.config.azure_stack {
        AZURE_STACK_COMPUTE_API_VERSIONS.contains(&version)
    } else {
        looks_like_api_version(version)
    };
    if supported {
        return Ok(());
    }
    if state.config.azure_stack && looks_like_api_version(version) {
        Err(Reply::arm_error(
            400,
            "NoRegisteredProviderFound",
            format!(
                "No registered resource provider found for location '{loc}' and API version '{version}' for type '{resource_type}'. The supported api-versions are '{}'. The supported locations are '{loc}'.",
                AZURE_STACK_COMPUTE_API_VERSIONS.join(", "),
                loc = state.config.location
            ),
        ))
    } else {
        Err(Reply::arm_error(
            400,
            "InvalidApiVersionParameter",
            format!("The api-version '{version}' is invalid. The supported versions are '{}'.", AZURE_STACK_COMPUTE_API_VERSIONS.join(",")),
        ))
    }
}

/// `YYYY-MM-DD` with an optional `-preview` (or other) suffix.
fn looks_like_api_version(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() >= 10
        && b[..10].iter().enumerate().all(|(i, c)| if i == 4 || i == 7 { *c == b'-' } else { c.is_ascii_digit() })
        && (b.len() == 10 || b[10] == b'-')
}

fn check_subscription(state: &ServerState, subscription: &str) -> Result<(), Reply> {
    if subscription.eq_ignore_ascii_case(&state.config.subscription_id) {
        Ok(())
    } else {
        Err(Reply::arm_error(404, "SubscriptionNotFound", format!("The subscription '{subscription}' could not be found.")))
    }
}

fn check_scope(state: &ServerState, subscription: &str, resource_group: &str) -> Result<(), Reply> {
    check_subscription(state, subscription)?;
    if resource_group.eq_ignore_ascii_case(&state.config.resource_group) {
        Ok(())
    } else {
        Err(Reply::arm_error(404, "ResourceGroupNotFound", format!("Resource group '{resource_group}' could not be found.")))
    }
}

fn not_found(state: &ServerState, resource_type: &str, name: &str) -> Reply {
    Reply::arm_error(
        404,
        "ResourceNotFound",
        format!(
            "The Resource '{resource_type}/{name}' under resource group '{}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix",
            state.config.resource_group
        ),
    )
}

fn vm_action(state: &Arc<ServerState>, req: &ArmRequest, resource: Resource, rest: &[&str]) -> Reply {
    let method = req.method.to_ascii_uppercase();
    match (rest, method.as_str()) {
        ([], "GET") => {
            let expand = match req.query_value("$expand") {
                None => false,
                Some(e) if e.eq_ignore_ascii_case("instanceView") => true,
                Some(e) if e.eq_ignore_ascii_case("userData") => false,
                Some(other) => {
                    return Reply::arm_error(
                        400,
                        "InvalidParameter",
                        format!("The value '{other}' of parameter '$expand' is invalid. Allowed values are 'instanceView, userData'."),
                    )
                }
            };
            Reply::json(200, &resource_model(state, &resource, expand))
        }
        (["instanceview"], "GET") => Reply::json(200, &instance_view(state, &resource)),
        (["restart"], "POST") => restart(state, req, &resource),
        ([] | ["instanceview"] | ["restart"], _) => method_not_allowed(req),
        _ => Reply::arm_error(
            400,
            "InvalidResourceType",
            format!("The resource type '{}/{}' could not be found in the namespace 'Microsoft.Compute'.", resource.resource_type(), rest.join("/")),
        ),
    }
}

fn restart(state: &Arc<ServerState>, req: &ArmRequest, resource: &Resource) -> Reply {
    let target = resource.target();
    if state.operations.in_progress_for(&target) {
        return Reply::arm_error(
            409,
            "OperationNotAllowed",
            format!("Operation 'restart' is not allowed on VM '{}' since another operation is in progress on it.", target.computer_name),
        );
    }
    if state.control.power_state(&target) == PowerState::Deallocated {
        return Reply::arm_error(
            409,
            "OperationNotAllowed",
            format!("Operation 'restart' is not allowed on VM '{}' since the VM is deallocated.", target.computer_name),
        );
    }
    let id = uuid::Uuid::new_v4().to_string();
    state.operations.insert(
        &id,
        Operation { vm: target.clone(), started: OffsetDateTime::now_utc(), ended: None, outcome: Outcome::InProgress },
    );
    let worker = state.clone();
    let op_id = id.clone();
    state.spawn_operation(async move {
        let outcome = match worker.control.restart(&target).await {
            Ok(()) => Outcome::Succeeded,
            Err(message) => Outcome::Failed(message),
        };
        worker.operations.finish(&op_id, outcome);
    });
    let version = req.api_version().unwrap_or_default();
    let base = operation_url(state, req, &id);
    Reply::empty(202)
        .header("azure-asyncoperation", format!("{base}?p=lab&api-version={version}"))
        .header("location", format!("{base}?p=lab&monitor=true&api-version={version}"))
        .header("retry-after", state.config.operation_retry_after_secs.to_string())
        .header("content-length", "0")
}

fn operation_url(state: &ServerState, req: &ArmRequest, id: &str) -> String {
    format!(
        "https://{}/subscriptions/{}/providers/Microsoft.Compute/locations/{}/operations/{id}",
        req.host, state.config.subscription_id, state.config.location
    )
}

fn operation_status(state: &ServerState, req: &ArmRequest, location: &str, id: &str) -> Reply {
    let found = state.operations.get(id).filter(|_| location.eq_ignore_ascii_case(&state.config.location));
    let Some(op) = found else {
        return Reply::arm_error(404, "ResourceNotFound", format!("The operation '{id}' could not be found."));
    };
    let monitor = req.query_value("monitor").is_some_and(|m| m.eq_ignore_ascii_case("true"));
    let retry_after = state.config.operation_retry_after_secs.to_string();
    if monitor {
        return match &op.outcome {
            Outcome::InProgress => Reply::empty(202)
                .header("location", format!("https://{}{}?{}", req.host, req.path, query_string(req)))
                .header("retry-after", retry_after),
            Outcome::Succeeded => Reply::empty(200),
            Outcome::Failed(message) => Reply::arm_error(500, "OperationFailed", message.clone()),
        };
    }
    let rfc = |t: OffsetDateTime| t.format(&Rfc3339).unwrap_or_default();
    let mut body = json!({"startTime": rfc(op.started), "status": "InProgress", "name": id.to_ascii_lowercase()});
    match &op.outcome {
        Outcome::InProgress => return Reply::json(200, &body).header("retry-after", retry_after),
        Outcome::Succeeded => body["status"] = json!("Succeeded"),
        Outcome::Failed(message) => {
            body["status"] = json!("Failed");
            body["error"] = json!({"code": "OperationFailed", "message": message});
        }
    }
    if let Some(ended) = op.ended {
        body["endTime"] = json!(rfc(ended));
    }
    Reply::json(200, &body)
}

fn query_string(req: &ArmRequest) -> String {
    url::form_urlencoded::Serializer::new(String::new()).extend_pairs(req.query.iter()).finish()
}

fn resource_model(state: &ServerState, resource: &Resource, expand: bool) -> Value {
    let config = &state.config;
    let scope = format!("/subscriptions/{}/resourceGroups/{}", config.subscription_id, config.resource_group);
    let target = resource.target();
    let os_profile = json!({
        "computerName": target.computer_name,
        "adminUsername": "azureuser",
        "linuxConfiguration": {"disablePasswordAuthentication": true, "provisionVMAgent": true},
        "secrets": [],
        "allowExtensionOperations": true,
    });
    let mut model = match resource {
        Resource::Vm { name } => json!({
            "name": name,
            "id": format!("{scope}/providers/Microsoft.Compute/virtualMachines/{name}"),
            "type": "Microsoft.Compute/virtualMachines",
            "location": config.location,
            "properties": {
                "vmId": stable_uuid(name),
                "hardwareProfile": {"vmSize": "Standard_D2_v2"},
                "storageProfile": {"osDisk": {"osType": "Linux", "name": format!("{name}_OsDisk_1"), "createOption": "FromImage", "caching": "ReadWrite", "diskSizeGB": 30}},
                "osProfile": os_profile,
                "networkProfile": {"networkInterfaces": [{"id": format!("{scope}/providers/Microsoft.Network/networkInterfaces/{name}-nic-0")}]},
                "provisioningState": "Succeeded",
            }
        }),
        Resource::ScaleSetVm { scale_set, instance_id, .. } => json!({
            "name": format!("{scale_set}_{instance_id}"),
            "id": format!("{scope}/providers/Microsoft.Compute/virtualMachineScaleSets/{scale_set}/virtualMachines/{instance_id}"),
            "type": "Microsoft.Compute/virtualMachineScaleSets/virtualMachines",
            "location": config.location,
            "instanceId": instance_id,
            "sku": {"name": "Standard_D2_v2", "tier": "Standard"},
            "properties": {
                "latestModelApplied": true,
                "vmId": stable_uuid(&format!("{scale_set}/{instance_id}")),
                "hardwareProfile": {},
                "osProfile": os_profile,
                "provisioningState": "Succeeded",
            }
        }),
    };
    if expand {
        model["properties"]["instanceView"] = instance_view(state, resource);
    }
    model
}

fn instance_view(state: &ServerState, resource: &Resource) -> Value {
    let target = resource.target();
    let power = state.control.power_state(&target);
    let now = OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default();
    let (provisioning_code, provisioning_display) = if state.operations.in_progress_for(&target) {
        ("ProvisioningState/updating", "Updating")
    } else {
        ("ProvisioningState/succeeded", "Provisioning succeeded")
    };
    let agent = if power == PowerState::Running {
        json!({"vmAgentVersion": "2.2.49.2", "statuses": [{"code": "ProvisioningState/succeeded", "level": "Info", "displayStatus": "Ready", "message": "Guest Agent is running", "time": now}]})
    } else {
        json!({"vmAgentVersion": "Unknown", "statuses": [{"code": "ProvisioningState/Unavailable", "level": "Warning", "displayStatus": "Not Ready", "message": "VM status blob is found but not yet populated.", "time": now}]})
    };
    let statuses = json!([
        {"code": provisioning_code, "level": "Info", "displayStatus": provisioning_display, "time": now},
        {"code": power.code(), "level": "Info", "displayStatus": power.display_status()},
    ]);
    let disks = json!([{"name": format!("{}_OsDisk_1", target.computer_name), "statuses": [{"code": "ProvisioningState/succeeded", "level": "Info", "displayStatus": "Provisioning succeeded", "time": now}]}]);
    match resource {
        Resource::Vm { .. } => json!({
            "computerName": target.computer_name,
            "osName": "ubuntu",
            "osVersion": "18.04",
            "vmAgent": agent,
            "disks": disks,
            "hyperVGeneration": "V1",
            "statuses": statuses,
        }),
        Resource::ScaleSetVm { .. } => json!({
            "platformUpdateDomain": 0,
            "platformFaultDomain": 0,
            "vmAgent": agent,
            "disks": disks,
            "statuses": statuses,
        }),
    }
}

/// A vmId that stays the same for a name across restarts of the stand-in.
fn stable_uuid(name: &str) -> String {
    let digest = Sha1::digest(name.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Uuid::from_bytes(bytes).to_string()
}

/// Azure names scale-set instances `<prefix><instance id in base 36, 6 digits>`.
pub(crate) fn base36_instance(instance_id: &str) -> String {
    let Ok(mut n) = instance_id.parse::<u64>() else { return instance_id.to_string() };
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    while n > 0 {
        out.push(digits[(n % 36) as usize]);
        n /= 36;
    }
    while out.len() < 6 {
        out.push(b'0');
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_version_shape() {
        assert!(looks_like_api_version("2020-06-01"));
        assert!(looks_like_api_version("2016-04-30-preview"));
        assert!(!looks_like_api_version("2020-6-1"));
        assert!(!looks_like_api_version("latest"));
    }

    #[test]
    fn scale_set_computer_names() {
        assert_eq!(base36_instance("0"), "000000");
        assert_eq!(base36_instance("35"), "00000z");
        assert_eq!(base36_instance("36"), "000010");
    }
}
