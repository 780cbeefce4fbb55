//! One step of an action graph, as the planner builds it, the saved plan stores it and the
//! walker and step runner read it: a typed operation, the phase of the rotation it belongs
//! to, where it acts (scope and target), typed parameters, the gates it relies on, and for a
//! gate how it looks at the cluster. Nothing here is parsed back out of a string: the phase
//! is chosen by the graph builder, which knows it, and written into the plan.

use crate::model::profile::{Duration, GateKind};
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;

/// What a step does. The camelCase names are the `operation` of saved plans; a gate's
/// operation is its gate kind's name (`etcdHealthy`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    BackupApiModel,
    IssuePki,
    PauseAutoscaler,
    DistributeCerts,
    BackupNodeCerts,
    InstallCerts,
    InstallAdminKubeconfig,
    RemoveKubeletClientCurrent,
    RestartEtcd,
    RestartControlPlane,
    RestartKubelet,
    RebootVm,
    PutFrontProxyInEtcd,
    InstallFrontProxy,
    RestartApiserver,
    DeleteKubeProxyPod,
    DeleteServiceAccountTokens,
    RolloutWorkloads,
    UpdateApiModel,
    ResumeAutoscaler,
    Cleanup,
    /// Rollback: the node holds the backup this plan's apply made (`certs.bak`, stamped).
    VerifyBackup,
    /// Rollback: `/etc/kubernetes/certs` (and the admin kubeconfig, kubelet's pem) back from
    /// the backup; the rotated directory is kept beside it.
    RestoreCerts,
    /// Rollback: etcd's `/proxycerts/*` back from the restored front-proxy files.
    RestoreFrontProxyInEtcd,
    /// Rollback: apimodel.json and the admin kubeconfig back from the local backup.
    RestoreApiModel,
    Gate(GateKind),
}

impl Operation {
    const ACTIONS: [Operation; 25] = [
        Operation::BackupApiModel,
        Operation::IssuePki,
        Operation::PauseAutoscaler,
        Operation::DistributeCerts,
        Operation::BackupNodeCerts,
        Operation::InstallCerts,
        Operation::InstallAdminKubeconfig,
        Operation::RemoveKubeletClientCurrent,
        Operation::RestartEtcd,
        Operation::RestartControlPlane,
        Operation::RestartKubelet,
        Operation::RebootVm,
        Operation::PutFrontProxyInEtcd,
        Operation::InstallFrontProxy,
        Operation::RestartApiserver,
        Operation::DeleteKubeProxyPod,
        Operation::DeleteServiceAccountTokens,
        Operation::RolloutWorkloads,
        Operation::UpdateApiModel,
        Operation::ResumeAutoscaler,
        Operation::Cleanup,
        Operation::VerifyBackup,
        Operation::RestoreCerts,
        Operation::RestoreFrontProxyInEtcd,
        Operation::RestoreApiModel,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Operation::BackupApiModel => "backupApiModel",
            Operation::IssuePki => "issuePki",
            Operation::PauseAutoscaler => "pauseAutoscaler",
            Operation::DistributeCerts => "distributeCerts",
            Operation::BackupNodeCerts => "backupNodeCerts",
            Operation::InstallCerts => "installCerts",
            Operation::InstallAdminKubeconfig => "installAdminKubeconfig",
            Operation::RemoveKubeletClientCurrent => "removeKubeletClientCurrent",
            Operation::RestartEtcd => "restartEtcd",
            Operation::RestartControlPlane => "restartControlPlane",
            Operation::RestartKubelet => "restartKubelet",
            Operation::RebootVm => "rebootVm",
            Operation::PutFrontProxyInEtcd => "putFrontProxyInEtcd",
            Operation::InstallFrontProxy => "installFrontProxy",
            Operation::RestartApiserver => "restartApiserver",
            Operation::DeleteKubeProxyPod => "deleteKubeProxyPod",
            Operation::DeleteServiceAccountTokens => "deleteServiceAccountTokens",
            Operation::RolloutWorkloads => "rolloutWorkloads",
            Operation::UpdateApiModel => "updateApiModel",
            Operation::ResumeAutoscaler => "resumeAutoscaler",
            Operation::Cleanup => "cleanup",
            Operation::VerifyBackup => "verifyBackup",
            Operation::RestoreCerts => "restoreCerts",
            Operation::RestoreFrontProxyInEtcd => "restoreFrontProxyInEtcd",
            Operation::RestoreApiModel => "restoreApiModel",
            Operation::Gate(kind) => kind.as_str(),
        }
    }

    pub fn parse(name: &str) -> Option<Operation> {
        Self::ACTIONS
            .into_iter()
            .find(|op| op.as_str() == name)
            .or_else(|| GateKind::ALL.into_iter().find(|g| g.as_str() == name).map(Operation::Gate))
    }

    pub fn is_gate(self) -> bool {
        matches!(self, Operation::Gate(_))
    }

    /// The kind of step this operation makes.
    pub fn kind(self) -> StepKind {
        if self.is_gate() {
            StepKind::Gate
        } else {
            StepKind::Action
        }
    }

    /// Whether the step changes the cluster (as opposed to copying, backing up or checking).
    pub fn is_disruptive(self) -> bool {
        matches!(
            self,
            Operation::InstallCerts
                | Operation::InstallAdminKubeconfig
                | Operation::RemoveKubeletClientCurrent
                | Operation::RestartEtcd
                | Operation::RestartControlPlane
                | Operation::RestartKubelet
                | Operation::RebootVm
                | Operation::PutFrontProxyInEtcd
                | Operation::InstallFrontProxy
                | Operation::RestartApiserver
                | Operation::DeleteKubeProxyPod
                | Operation::DeleteServiceAccountTokens
                | Operation::RolloutWorkloads
                | Operation::UpdateApiModel
                | Operation::RestoreCerts
                | Operation::RestoreFrontProxyInEtcd
                | Operation::RestoreApiModel
        )
    }

    /// Whether the step restarts something on its node (counted on the summary line).
    pub fn is_restart(self) -> bool {
        matches!(
            self,
            Operation::RestartEtcd | Operation::RestartControlPlane | Operation::RestartKubelet | Operation::RebootVm | Operation::RestartApiserver
        )
    }

    /// Whether the step only waits on the cluster (gates, and restarts and reboots, which wait
    /// on the node's services), rather than doing certrotate's own work.
    pub fn is_waiting(self) -> bool {
        self.is_gate() || self.is_restart()
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Operation {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Operation {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Operation::parse(&name).ok_or_else(|| serde::de::Error::custom(format!("unknown operation `{name}`: this certrotate does not know it")))
    }
}

impl JsonSchema for Operation {
    fn schema_name() -> Cow<'static, str> {
        "Operation".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let names: Vec<&str> = Operation::ACTIONS.iter().map(|o| o.as_str()).chain(GateKind::ALL.iter().map(|g| g.as_str())).collect();
        json_schema!({
            "description": "What a step does: an action, or for a gate the gate's kind.",
            "type": "string",
            "enum": names
        })
    }
}

/// Whether a step acts or checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum StepKind {
    Action,
    Gate,
}

/// The stages of a rotation (and of a rollback), in the order apply goes through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    Prepare,
    Preflight,
    Masters,
    FrontProxy,
    Agents,
    Workloads,
    Finish,
}

impl Phase {
    pub const ALL: [Phase; 7] =
        [Phase::Prepare, Phase::Preflight, Phase::Masters, Phase::FrontProxy, Phase::Agents, Phase::Workloads, Phase::Finish];

    pub fn title(self) -> &'static str {
        match self {
            Phase::Prepare => "prepare",
            Phase::Preflight => "preflight",
            Phase::Masters => "masters",
            Phase::FrontProxy => "front proxy",
            Phase::Agents => "agents",
            Phase::Workloads => "workloads",
            Phase::Finish => "finish",
        }
    }
}

/// Where a step acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Scope {
    /// On the operator's machine: the API model, the new PKI, the run's files.
    Local,
    /// On the cluster as a whole: the Kubernetes API, or several nodes at once.
    Cluster,
    /// On one node, named by the step's `target`.
    Node,
}

/// How a gate looks at the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Probe {
    /// Through the Kubernetes API (or etcdctl with valid client certificates, over SSH).
    Api,
    /// Over SSH only, without the API: service state and TLS handshakes from the node.
    Ssh,
}

/// The parameters of a step. Each operation uses the fields its documentation names; all are
/// non-secret (certificate ids, paths, VM names).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StepParams {
    /// issuePki: the certificates issued; distributeCerts: what the node receives;
    /// installCerts: what is installed there (catalogue ids, `kubeletserver:<node>` for a
    /// node's serving certificate).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<String>,
    /// issuePki: whether a new cluster CA is issued.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub new_cluster_ca: bool,
    /// distributeCerts and restoreCerts: the directory backed up, and where the backup goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_to: Option<String>,
    /// backupApiModel: the local directory the API model is copied to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_backup: Option<String>,
    /// removeKubeletClientCurrent: the file removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// rebootVm: the VM restarted through Azure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    /// putFrontProxyInEtcd and restoreFrontProxyInEtcd: the etcd keys written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub etcd_keys: Vec<String>,
    /// installAdminKubeconfig and restoreCerts on masters: the admin user's kubeconfig.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_kubeconfig: Option<String>,
}

impl StepParams {
    pub fn is_empty(&self) -> bool {
        *self == StepParams::default()
    }
}

/// A gate: what it checks, on which nodes, how long it waits, and what to tell the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GateSpec {
    pub probe: Probe,
    /// The nodes it looks at (none: every master, or the whole cluster for kube-system). An
    /// etcd gate looks from its target, when it has one, else from the first of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// How long to wait before failing, and how often to look.
    pub timeout: Duration,
    pub interval: Duration,
    /// What must hold for the gate to pass.
    pub checks: String,
    /// What the operator should do when it times out; apply adds what it observed.
    pub on_failure: String,
    /// Why the probe is SSH-level, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why_ssh: Option<String>,
}

/// One step of the graph, in memory and in the saved plan alike.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Step {
    /// Unique within the plan, stable across runs of the same plan (used by the journal).
    pub id: String,
    pub kind: StepKind,
    pub operation: Operation,
    pub phase: Phase,
    pub scope: Scope,
    /// The node the step acts on (scope `node`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub description: String,
    #[serde(default, skip_serializing_if = "StepParams::is_empty")]
    pub params: StepParams,
    /// Ids of the gates whose postcondition this step relies on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,
    /// Gates only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateSpec>,
}

impl Step {
    /// The gate kind, for a gate.
    pub fn gate_kind(&self) -> Option<GateKind> {
        match self.operation {
            Operation::Gate(kind) => Some(kind),
            _ => None,
        }
    }

    /// What is inconsistent in the step on its own (kind, scope and gate spec against the
    /// operation), for a plan read back from a file.
    pub fn check(&self) -> Result<(), String> {
        if self.kind != self.operation.kind() {
            return Err(format!("step `{}` has operation `{}` but kind {:?}", self.id, self.operation, self.kind));
        }
        if self.operation.is_gate() != self.gate.is_some() {
            return Err(format!("step `{}`: a gate needs its gate settings and an action has none", self.id));
        }
        if (self.scope == Scope::Node) != self.target.is_some() {
            return Err(format!("step `{}`: a step on a node names its target, and only such a step does", self.id));
        }
        Ok(())
    }
}
