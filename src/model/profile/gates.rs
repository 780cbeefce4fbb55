//! The validation gates apply passes through, and how long each waits and how often it
//! looks: defaults for every gate and overrides per gate.

use super::Duration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod defaults {
    use super::Duration;

    pub fn gate_timeout() -> Duration {
        Duration::minutes(10)
    }
    pub fn gate_interval() -> Duration {
        Duration::seconds(5)
    }
}

/// The validation gates apply passes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum GateKind {
    /// Every etcd member is healthy and the cluster has quorum.
    EtcdHealthy,
    /// The apiserver presents the newly issued certificate.
    ApiserverServesNewCert,
    /// Every node reports Ready.
    NodesReady,
    /// kube-apiserver, kube-controller-manager, kube-scheduler and kube-addon-manager pods are Ready.
    ControlPlanePodsReady,
    /// Every pod in kube-system is Ready.
    KubeSystemReady,
}

impl GateKind {
    pub const ALL: [GateKind; 5] = [
        GateKind::EtcdHealthy,
        GateKind::ApiserverServesNewCert,
        GateKind::NodesReady,
        GateKind::ControlPlanePodsReady,
        GateKind::KubeSystemReady,
    ];

    /// The gate's name as written in profiles and plans.
    pub fn as_str(self) -> &'static str {
        match self {
            GateKind::EtcdHealthy => "etcdHealthy",
            GateKind::ApiserverServesNewCert => "apiserverServesNewCert",
            GateKind::NodesReady => "nodesReady",
            GateKind::ControlPlanePodsReady => "controlPlanePodsReady",
            GateKind::KubeSystemReady => "kubeSystemReady",
        }
    }
}

/// Gate timings: defaults for every gate and optional overrides per gate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Gates {
    /// How long a gate waits before it fails. Default `10m`.
    #[serde(default = "defaults::gate_timeout")]
    pub timeout: Duration,
    /// How often a gate checks. Default `5s`.
    #[serde(default = "defaults::gate_interval")]
    pub interval: Duration,
    #[serde(default, skip_serializing_if = "GateOverride::is_empty")]
    pub etcd_healthy: GateOverride,
    #[serde(default, skip_serializing_if = "GateOverride::is_empty")]
    pub apiserver_serves_new_cert: GateOverride,
    #[serde(default, skip_serializing_if = "GateOverride::is_empty")]
    pub nodes_ready: GateOverride,
    #[serde(default, skip_serializing_if = "GateOverride::is_empty")]
    pub control_plane_pods_ready: GateOverride,
    #[serde(default, skip_serializing_if = "GateOverride::is_empty")]
    pub kube_system_ready: GateOverride,
}

impl Default for Gates {
    fn default() -> Self {
        Self {
            timeout: defaults::gate_timeout(),
            interval: defaults::gate_interval(),
            etcd_healthy: GateOverride::default(),
            apiserver_serves_new_cert: GateOverride::default(),
            nodes_ready: GateOverride::default(),
            control_plane_pods_ready: GateOverride::default(),
            kube_system_ready: GateOverride::default(),
        }
    }
}

/// Timings of one gate, after overrides are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateTiming {
    pub timeout: Duration,
    pub interval: Duration,
}

impl Gates {
    pub fn override_for(&self, gate: GateKind) -> &GateOverride {
        match gate {
            GateKind::EtcdHealthy => &self.etcd_healthy,
            GateKind::ApiserverServesNewCert => &self.apiserver_serves_new_cert,
            GateKind::NodesReady => &self.nodes_ready,
            GateKind::ControlPlanePodsReady => &self.control_plane_pods_ready,
            GateKind::KubeSystemReady => &self.kube_system_ready,
        }
    }

    /// The timeout and interval a gate runs with.
    pub fn timing(&self, gate: GateKind) -> GateTiming {
        let over = self.override_for(gate);
        GateTiming {
            timeout: over.timeout.unwrap_or(self.timeout),
            interval: over.interval.unwrap_or(self.interval),
        }
    }
}

/// Per-gate timings; an absent value falls back to `gates.timeout` / `gates.interval`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GateOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
}

impl GateOverride {
    pub fn is_empty(&self) -> bool {
        self.timeout.is_none() && self.interval.is_none()
    }
}
