//! Taking a master out of the apiserver's load balancers and putting it back, through Azure's
//! Network API, as Azure Stack Hub and Azure both serve it.
//!
//! AKS Engine puts each master's primary network interface (`ipconfig1`) into the backend pool
//! of the public load balancer (the FQDN, 443 → 443) and of the internal one (443 → 4443;
//! aks-engine-azurestack pkg/engine/networkinterfaces.go, `CreateMasterVMNetworkInterfaces`).
//! A drain removes those pool references from the NIC (read, changed and written back whole
//! with `If-Match`, as a long-running operation), so the load balancers send the master no new
//! flow; an undrain adds back exactly the pools the drain removed. What was removed is handed
//! to the caller to keep on disk *before* the NIC changes, so a kill between the two leaves a
//! record that names what to put back.
//!
//! How long to wait after each change comes from the load balancers themselves: ARM reports a
//! pool change done once provisioned and the pool lists (or no longer lists) the NIC, but
//! neither Azure Stack Hub nor Basic-SKU Azure load balancers expose per-backend health, so
//! certrotate then waits one probe interval (the `intervalInSeconds` of the probe the pool's
//! rules use): after a drain for flows already being steered elsewhere, after an undrain for
//! the one good probe that brings the master up again.

use crate::cloud::azure::{AzureCompute, AzureError};
use azure_core::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// The network api-version AKS Engine deploys with (pkg/api/const.go `APIVersionNetwork`),
/// served by Azure Stack Hub's 2020-09-01-hybrid profile and by Azure.
pub const NETWORK_API_VERSION: &str = "2018-11-01";

/// One backend pool one IP configuration of a NIC belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolMembership {
    pub ip_configuration: String,
    pub pool: String,
}

/// What a drain took away, kept until the undrain has put it back. Resource ids only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainRecord {
    pub vm: String,
    pub network_interface: String,
    pub memberships: Vec<PoolMembership>,
}

/// How a drain or undrain went, for the journal's note.
#[derive(Debug, Clone)]
pub struct PoolChange {
    pub record: DrainRecord,
    /// Pool references the NIC changed by (0 when it already was as wanted).
    pub changed: usize,
    pub waited: Duration,
}

impl PoolChange {
    pub fn pools(&self) -> String {
        let mut names: Vec<&str> = self.record.memberships.iter().map(|m| load_balancer_name(&m.pool)).collect();
        names.dedup();
        names.join(", ")
    }
}

/// Every load-balancer backend pool the NIC's IP configurations are in.
pub fn memberships(nic: &Value) -> Vec<PoolMembership> {
    let mut out = Vec::new();
    for ipc in ip_configurations(nic) {
        let name = ipc.get("name").and_then(Value::as_str).unwrap_or_default();
        for pool in ipc.pointer("/properties/loadBalancerBackendAddressPools").and_then(Value::as_array).into_iter().flatten() {
            if let Some(id) = pool.get("id").and_then(Value::as_str) {
                out.push(PoolMembership { ip_configuration: name.to_string(), pool: id.to_string() });
            }
        }
    }
    out
}

/// The NIC without the given pool references (everything else, NAT rules included, kept).
pub fn without(nic: &Value, remove: &[PoolMembership]) -> Value {
    let mut out = nic.clone();
    for ipc in ip_configurations_mut(&mut out) {
        let name = ipc.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
        if let Some(pools) = ipc.pointer_mut("/properties/loadBalancerBackendAddressPools").and_then(Value::as_array_mut) {
            pools.retain(|p| {
                let id = p.get("id").and_then(Value::as_str).unwrap_or_default();
                !remove.iter().any(|m| m.ip_configuration == name && same_id(&m.pool, id))
            });
        }
    }
    out
}

/// The NIC with the given pool references added where missing; `None` when an IP
/// configuration named in them is gone (the NIC is not the one the drain changed).
pub fn with(nic: &Value, add: &[PoolMembership]) -> Option<Value> {
    let mut out = nic.clone();
    for m in add {
        let ipc = ip_configurations_mut(&mut out).into_iter().find(|ipc| ipc.get("name").and_then(Value::as_str) == Some(m.ip_configuration.as_str()))?;
        let props = ipc.as_object_mut()?.entry("properties").or_insert_with(|| Value::Object(Default::default()));
        let pools = props.as_object_mut()?.entry("loadBalancerBackendAddressPools").or_insert_with(|| Value::Array(Vec::new()));
        let pools = pools.as_array_mut()?;
        if !pools.iter().any(|p| p.get("id").and_then(Value::as_str).is_some_and(|id| same_id(id, &m.pool))) {
            pools.push(serde_json::json!({ "id": m.pool }));
        }
    }
    Some(out)
}

/// The memberships of `wanted` the NIC lacks.
pub fn missing(nic: &Value, wanted: &[PoolMembership]) -> Vec<PoolMembership> {
    let have = memberships(nic);
    wanted.iter().filter(|w| !have.iter().any(|h| h.ip_configuration == w.ip_configuration && same_id(&h.pool, &w.pool))).cloned().collect()
}

/// `a` and `b` together, `a`'s first, each once.
pub fn union(a: &[PoolMembership], b: &[PoolMembership]) -> Vec<PoolMembership> {
    let mut out = a.to_vec();
    for m in b {
        if !out.iter().any(|o| o.ip_configuration == m.ip_configuration && same_id(&o.pool, &m.pool)) {
            out.push(m.clone());
        }
    }
    out
}

/// The load balancer's id of a pool id (`…/loadBalancers/<lb>/backendAddressPools/<pool>`).
pub fn load_balancer_id(pool: &str) -> &str {
    let lower = pool.to_ascii_lowercase();
    match lower.find("/backendaddresspools/") {
        Some(at) => &pool[..at],
        None => pool,
    }
}

fn load_balancer_name(pool: &str) -> &str {
    load_balancer_id(pool).rsplit('/').next().unwrap_or(pool)
}

/// Whether the load balancer's pool lists the IP configuration as a backend.
pub fn pool_lists(lb: &Value, pool: &str, ip_configuration_id: &str) -> bool {
    lb.pointer("/properties/backendAddressPools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|p| p.get("id").and_then(Value::as_str).is_some_and(|id| same_id(id, pool)))
        .flat_map(|p| p.pointer("/properties/backendIPConfigurations").and_then(Value::as_array).cloned().unwrap_or_default())
        .any(|b| b.get("id").and_then(Value::as_str).is_some_and(|id| same_id(id, ip_configuration_id)))
}

/// The interval of the probe that the pool's load-balancing rules use (the longest, if
/// several), else of any probe of the load balancer.
pub fn probe_interval(lb: &Value, pool: &str) -> Option<Duration> {
    let probes: BTreeMap<String, u64> = lb
        .pointer("/properties/probes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p.get("id")?.as_str()?.to_ascii_lowercase(), p.pointer("/properties/intervalInSeconds")?.as_u64()?)))
        .collect();
    let of_rules = lb
        .pointer("/properties/loadBalancingRules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|r| r.pointer("/properties/backendAddressPool/id").and_then(Value::as_str).is_some_and(|id| same_id(id, pool)))
        .filter_map(|r| probes.get(&r.pointer("/properties/probe/id")?.as_str()?.to_ascii_lowercase()).copied())
        .max();
    of_rules.or_else(|| probes.values().copied().max()).map(Duration::from_secs)
}

/// ARM resource ids compare without regard to case.
fn same_id(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

fn ip_configurations(nic: &Value) -> Vec<&Value> {
    nic.pointer("/properties/ipConfigurations").and_then(Value::as_array).map(|a| a.iter().collect()).unwrap_or_default()
}

fn ip_configurations_mut(nic: &mut Value) -> Vec<&mut Value> {
    nic.pointer_mut("/properties/ipConfigurations").and_then(Value::as_array_mut).map(|a| a.iter_mut().collect()).unwrap_or_default()
}

/// The longest a drain or undrain waits for ARM's view of the pools to follow the NIC.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(300);
const MEMBERSHIP_POLL: Duration = Duration::from_secs(1);
/// Added to the probe interval after an undrain: the probe's own round trip.
const PROBE_SLACK: Duration = Duration::from_secs(1);

impl AzureCompute {
    /// Takes `vm` out of every backend pool its primary NIC is in. `earlier` is the record of
    /// a drain that a stopped run began; what it names stays in the record. `keep` must store
    /// the record durably; it is called before the NIC changes.
    pub async fn drain_vm(
        &self,
        vm: &str,
        earlier: Option<DrainRecord>,
        keep: impl FnOnce(&DrainRecord) -> std::io::Result<()>,
    ) -> Result<PoolChange, AzureError> {
        let nic_id = self.primary_nic(vm).await?;
        let (etag, nic) = self.get_nic(vm, &nic_id).await?;
        let now = memberships(&nic);
        let before = earlier.filter(|r| same_id(&r.network_interface, &nic_id)).map(|r| r.memberships).unwrap_or_default();
        let record = DrainRecord { vm: vm.to_string(), network_interface: nic_id.clone(), memberships: union(&before, &now) };
        keep(&record).map_err(|e| AzureError::settings(format!("cannot keep the record of {vm}'s drain: {e}"), "check the run directory beside the API model is writable"))?;
        if !now.is_empty() {
            self.put_nic(vm, &nic_id, &without(&nic, &now), etag.as_deref()).await?;
        }
        let waited = self.await_membership(vm, &record, false).await?;
        Ok(PoolChange { changed: now.len(), record, waited })
    }

    /// Puts back what `record` says a drain removed, then waits one probe interval so the
    /// load balancers' probe can bring the master up.
    pub async fn undrain_vm(&self, record: &DrainRecord) -> Result<PoolChange, AzureError> {
        let vm = record.vm.as_str();
        let (etag, nic) = self.get_nic(vm, &record.network_interface).await?;
        let lacking = missing(&nic, &record.memberships);
        if !lacking.is_empty() {
            let back = with(&nic, &lacking).ok_or_else(|| {
                AzureError::settings(
                    format!("{vm}'s network interface {} no longer has the IP configuration its drain changed", record.network_interface),
                    "add the master's IP configuration back to the load balancers' backend pools by hand (the record is in the run directory's drains/)",
                )
            })?;
            self.put_nic(vm, &record.network_interface, &back, etag.as_deref()).await?;
        }
        let waited = self.await_membership(vm, record, true).await?;
        Ok(PoolChange { changed: lacking.len(), record: record.clone(), waited })
    }

    /// Whether the VM's NIC is in every pool of the record (for status).
    pub async fn is_in_pools(&self, record: &DrainRecord) -> Result<bool, AzureError> {
        let (_, nic) = self.get_nic(&record.vm, &record.network_interface).await?;
        Ok(missing(&nic, &record.memberships).is_empty())
    }

    async fn primary_nic(&self, vm: &str) -> Result<String, AzureError> {
        self.network_interfaces_of(vm).await?.into_iter().next().ok_or_else(|| {
            AzureError::settings(format!("VM {vm} has no network interface in its network profile"), "check the VM on the stamp's portal")
        })
    }

    async fn get_nic(&self, vm: &str, nic_id: &str) -> Result<(Option<String>, Value), AzureError> {
        let (_, _, nic) = self.arm_json(vm, "read the network interface of", Method::Get, nic_id, NETWORK_API_VERSION, None, None).await?;
        let etag = nic.get("etag").and_then(Value::as_str).map(str::to_string);
        Ok((etag, nic))
    }

    async fn put_nic(&self, vm: &str, nic_id: &str, nic: &Value, etag: Option<&str>) -> Result<(), AzureError> {
        let (status, headers, _) = self.arm_json(vm, "change the backend pools of", Method::Put, nic_id, NETWORK_API_VERSION, Some(nic), etag).await?;
        // A NIC update is asynchronous: 200 or 201 with Azure-AsyncOperation to follow.
        let status = if status == StatusCode::Created { StatusCode::Accepted } else { status };
        self.wait_operation(&vm, "change the backend pools of", status, &headers).await
    }

    /// Polls the load balancers until every pool of the record lists (`present`) or no
    /// longer lists the NIC's IP configuration, then waits the longest probe interval.
    async fn await_membership(&self, vm: &str, record: &DrainRecord, present: bool) -> Result<Duration, AzureError> {
        let started = tokio::time::Instant::now();
        let mut interval = Duration::ZERO;
        let mut lbs: Vec<&str> = record.memberships.iter().map(|m| load_balancer_id(&m.pool)).collect();
        lbs.sort_unstable_by_key(|id| id.to_ascii_lowercase());
        lbs.dedup_by(|a, b| same_id(a, b));
        for lb_id in lbs {
            loop {
                let (_, _, lb) = self.arm_json(vm, "read a load balancer of", Method::Get, lb_id, NETWORK_API_VERSION, None, None).await?;
                let mine: Vec<&PoolMembership> = record.memberships.iter().filter(|m| same_id(load_balancer_id(&m.pool), lb_id)).collect();
                let settled = mine
                    .iter()
                    .all(|m| pool_lists(&lb, &m.pool, &format!("{}/ipConfigurations/{}", record.network_interface, m.ip_configuration)) == present);
                if settled {
                    for m in &mine {
                        interval = interval.max(probe_interval(&lb, &m.pool).unwrap_or_default());
                    }
                    break;
                }
                if started.elapsed() > MEMBERSHIP_TIMEOUT {
                    return Err(AzureError::Timeout {
                        vm: vm.to_string(),
                        goal: if present { "rejoin the load balancers' backend pools" } else { "leave the load balancers' backend pools" },
                        waited: started.elapsed(),
                        last_seen: format!("{} still {} it", load_balancer_name(lb_id), if present { "does not list" } else { "lists" }),
                    });
                }
                tokio::time::sleep(MEMBERSHIP_POLL).await;
            }
        }
        let settle = if present { interval + PROBE_SLACK } else { interval };
        tokio::time::sleep(settle).await;
        Ok(started.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LB: &str = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/loadBalancers/k8s-master-lb-1";
    const ILB: &str = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/loadBalancers/k8s-master-internal-lb-1";
    const NIC: &str = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/networkInterfaces/k8s-master-1-nic-0";

    fn pool(lb: &str) -> String {
        format!("{lb}/backendAddressPools/k8s-master-pool-1")
    }

    fn nic() -> Value {
        json!({
            "name": "k8s-master-1-nic-0", "id": NIC, "etag": "W/\"1\"",
            "properties": {
                "enableIPForwarding": false,
                "ipConfigurations": [{
                    "name": "ipconfig1",
                    "properties": {
                        "privateIPAddress": "10.239.255.239",
                        "loadBalancerBackendAddressPools": [{"id": pool(LB)}, {"id": pool(ILB)}],
                        "loadBalancerInboundNatRules": [{"id": format!("{LB}/inboundNatRules/SSH-k8s-master-1-0")}],
                        "somethingNew": {"kept": true}
                    }
                }]
            }
        })
    }

    #[test]
    fn a_drain_removes_the_pools_only_and_an_undrain_puts_exactly_them_back() {
        let original = nic();
        let found = memberships(&original);
        assert_eq!(found.len(), 2);
        let drained = without(&original, &found);
        assert!(memberships(&drained).is_empty());
        assert_eq!(drained.pointer("/properties/ipConfigurations/0/properties/loadBalancerInboundNatRules"), original.pointer("/properties/ipConfigurations/0/properties/loadBalancerInboundNatRules"));
        assert_eq!(drained.pointer("/properties/ipConfigurations/0/properties/somethingNew/kept"), Some(&json!(true)), "unknown fields survive");
        assert_eq!(missing(&drained, &found), found);
        let back = with(&drained, &found).unwrap();
        assert_eq!(back, original);
        assert!(missing(&back, &found).is_empty());
        assert_eq!(with(&back, &found).unwrap(), original, "adding what is there changes nothing");
    }

    #[test]
    fn ids_compare_without_case_and_a_resumed_drain_keeps_what_the_first_removed() {
        let mut upper = nic();
        upper["properties"]["ipConfigurations"][0]["properties"]["loadBalancerBackendAddressPools"] = json!([{"id": pool(LB).to_uppercase()}]);
        let first = memberships(&nic());
        assert!(missing(&upper, &first[..1]).is_empty());
        // The first run removed both; the NIC now shows none: the record still names both.
        assert_eq!(union(&first, &[]), first);
        assert_eq!(union(&first, &first[..1]).len(), 2);
    }

    #[test]
    fn an_undrain_refuses_a_nic_whose_ip_configuration_is_gone() {
        let mut other = nic();
        other["properties"]["ipConfigurations"][0]["name"] = json!("ipconfig9");
        assert!(with(&other, &memberships(&nic())).is_none());
    }

    #[test]
    fn pool_membership_and_probe_interval_are_read_from_the_load_balancer() {
        let ipc = format!("{NIC}/ipConfigurations/ipconfig1");
        let lb = json!({
            "properties": {
                "backendAddressPools": [{"id": pool(LB), "properties": {"backendIPConfigurations": [{"id": ipc.to_lowercase()}]}}],
                "probes": [{"id": format!("{LB}/probes/tcpHTTPSProbe"), "properties": {"intervalInSeconds": 5, "numberOfProbes": 2}},
                           {"id": format!("{LB}/probes/other"), "properties": {"intervalInSeconds": 30}}],
                "loadBalancingRules": [{"properties": {"backendAddressPool": {"id": pool(LB)}, "probe": {"id": format!("{LB}/probes/tcpHTTPSProbe")}}}]
            }
        });
        assert!(pool_lists(&lb, &pool(LB), &ipc));
        assert!(!pool_lists(&lb, &pool(ILB), &ipc));
        assert_eq!(probe_interval(&lb, &pool(LB)), Some(Duration::from_secs(5)), "the rule's probe, not the longest");
        assert_eq!(probe_interval(&lb, &pool(ILB)), Some(Duration::from_secs(30)), "no rule: the longest probe");
        assert_eq!(load_balancer_id(&pool(ILB)), ILB);
    }
}
