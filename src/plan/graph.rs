//! The action graph: the whole rotation as a petgraph DAG of actions (backups, issuance,
//! distribution, installs, restarts and reboots, etcd puts, Kubernetes operations, the API
//! model update) and gates (etcd healthy, apiserver serves the new certificate, nodes Ready,
//! control-plane pods Ready, kube-system Ready). Built from a diff, pure data.
//!
//! The builder picks the safe strategy: with the CA kept, masters change one at a time, each
//! behind its own gates, so the API stays up; with a new CA (or a cluster whose certificates
//! have already expired) masters change together and the plan says the API is down and why.
//! Every step names the gates it relies on (`requires`), separately from the edges, so
//! `validate` can prove each gate precedes what depends on it.

use crate::model::profile::{Duration, GateKind, MasterStrategy, Profile};
use crate::model::topology::{Node, Topology};
use crate::pki::catalogue::{CERT_DIR, ETCD_PROXY_CA_KEY, ETCD_PROXY_CERT_KEY, ETCD_PROXY_KEY_KEY, KUBELET_CLIENT_CURRENT};
use crate::plan::diff::Diff;
use crate::plan::file::{self, ApiDowntime, AttrValue, DowntimeKind, Finding, GraphEdge, GraphNode, Severity, StepKind};
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::{Dfs, Reversed, Walker};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use thiserror::Error;

/// What an action does. The camelCase names are the `operation` of saved plans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
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
    Gate(GateKind),
}

impl Operation {
    const ACTIONS: [Operation; 21] = [
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
        )
    }

    /// Whether the step restarts something on its node (counted on the summary line).
    pub fn is_restart(self) -> bool {
        matches!(
            self,
            Operation::RestartEtcd
                | Operation::RestartControlPlane
                | Operation::RestartKubelet
                | Operation::RebootVm
                | Operation::RestartApiserver
        )
    }
}

/// How a gate looks at the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Probe {
    /// Through the Kubernetes API (or etcdctl with valid client certificates, over SSH).
    Api,
    /// Over SSH only, without the API: service state and TLS handshakes from the node.
    Ssh,
}

impl Probe {
    fn as_str(self) -> &'static str {
        match self {
            Probe::Api => "api",
            Probe::Ssh => "ssh",
        }
    }
}

/// A gate: what it checks, on which nodes, how long it waits, and what to tell the operator.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GateSpec {
    pub kind: GateKind,
    pub probe: Probe,
    pub nodes: Vec<String>,
    pub timeout: Duration,
    pub interval: Duration,
    /// What must hold for the gate to pass.
    pub checks: String,
    /// What the operator should do when it times out; apply adds what it observed.
    pub on_failure: String,
    /// Why the probe is SSH-level, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why_ssh: Option<String>,
}

/// One step of the graph.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    pub id: String,
    pub operation: Operation,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub description: String,
    /// Non-secret parameters: certificate ids, paths, VM names.
    pub parameters: BTreeMap<String, AttrValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateSpec>,
    /// Ids of the gates whose postcondition this step relies on.
    pub requires: Vec<String>,
}

/// How masters are changed in this plan, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum MasterPlan {
    /// No master certificate changes.
    Untouched,
    /// One master at a time, each behind gates.
    Rolling,
    /// All masters together (rebooted through the Azure Compute API).
    AllAtOnce { why: String },
}

/// The rotation as a DAG, with the strategy chosen and the API downtime it implies.
#[derive(Debug, Clone)]
pub struct ActionGraph {
    graph: DiGraph<Step, ()>,
    index: HashMap<String, NodeIndex>,
    pub masters: MasterPlan,
    pub downtime: ApiDowntime,
    /// Explanations for the reviewer (strategy, SSH-level gates), as plan findings.
    pub notes: Vec<Finding>,
}

/// Why a graph cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error, miette::Diagnostic)]
pub enum GraphError {
    #[error("the steps form a cycle through `{0}`")]
    #[diagnostic(help("the graph was edited by hand or built wrongly; make a new plan"))]
    Cycle(String),
    #[error("step id `{0}` is used twice")]
    DuplicateId(String),
    #[error("edge {from} → {to} names a step that does not exist")]
    DanglingEdge { from: String, to: String },
    #[error("step `{step}` has operation `{operation}`, which this certrotate does not know")]
    UnknownOperation { step: String, operation: String },
    #[error("gate `{0}` has no timeout or interval")]
    GateWithoutTiming(String),
    #[error("`{step}` relies on gate `{gate}`, but that gate does not run before it")]
    #[diagnostic(help("a gate must finish before the steps that rely on it; make a new plan"))]
    GateNotBefore { gate: String, step: String },
    #[error("`{step}` changes the cluster but no gate runs before it")]
    UngatedChange { step: String },
    #[error("gate `{0}` guards nothing: no step follows it")]
    DanglingGate(String),
    #[error("`{0}` names a gate that does not exist")]
    UnknownGate(String),
}

const ETCD_RELATED: [&str; 2] = ["ca", "etcdserver"];

impl ActionGraph {
    fn empty() -> Self {
        Self {
            graph: DiGraph::new(),
            index: HashMap::new(),
            masters: MasterPlan::Untouched,
            downtime: ApiDowntime::default(),
            notes: Vec::new(),
        }
    }

    fn add(&mut self, step: Step) -> NodeIndex {
        let id = step.id.clone();
        let ix = self.graph.add_node(step);
        self.index.insert(id, ix);
        ix
    }

    fn edge(&mut self, from: NodeIndex, to: NodeIndex) {
        if from != to && self.graph.find_edge(from, to).is_none() {
            self.graph.add_edge(from, to, ());
        }
    }

    fn edges_from(&mut self, froms: &[NodeIndex], to: NodeIndex) {
        for f in froms {
            self.edge(*f, to);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.graph.node_count() == 0
    }

    pub fn len(&self) -> usize {
        self.graph.node_count()
    }

    pub fn step(&self, id: &str) -> Option<&Step> {
        self.index.get(id).map(|ix| &self.graph[*ix])
    }

    pub fn steps(&self) -> impl Iterator<Item = &Step> {
        self.graph.node_weights()
    }

    /// The petgraph graph, for walkers.
    pub fn petgraph(&self) -> &DiGraph<Step, ()> {
        &self.graph
    }

    /// Ids of the steps that must finish before `id`.
    pub fn predecessors(&self, id: &str) -> Vec<&str> {
        let Some(ix) = self.index.get(id) else { return vec![] };
        let mut out: Vec<&str> =
            self.graph.neighbors_directed(*ix, petgraph::Direction::Incoming).map(|n| self.graph[n].id.as_str()).collect();
        out.sort();
        out
    }

    /// Whether `before` is an ancestor of `after`.
    pub fn precedes(&self, before: &str, after: &str) -> bool {
        match (self.index.get(before), self.index.get(after)) {
            (Some(a), Some(b)) => a != b && petgraph::algo::has_path_connecting(&self.graph, *a, *b, None),
            _ => false,
        }
    }

    /// Steps in an order apply may run them one by one: among the steps that are ready, the
    /// one added first goes first, so the order reads like the rotation and a graph rebuilt
    /// from its saved form (added in this order) yields the same order again.
    pub fn topological_order(&self) -> Result<Vec<&Step>, GraphError> {
        self.ordered_indices().map(|order| order.into_iter().map(|ix| &self.graph[ix]).collect())
    }

    fn ordered_indices(&self) -> Result<Vec<NodeIndex>, GraphError> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let mut pending: Vec<usize> =
            self.graph.node_indices().map(|ix| self.graph.neighbors_directed(ix, petgraph::Direction::Incoming).count()).collect();
        let mut ready: BinaryHeap<Reverse<NodeIndex>> =
            self.graph.node_indices().filter(|ix| pending[ix.index()] == 0).map(Reverse).collect();
        let mut order = Vec::with_capacity(self.graph.node_count());
        while let Some(Reverse(ix)) = ready.pop() {
            order.push(ix);
            for next in self.graph.neighbors_directed(ix, petgraph::Direction::Outgoing) {
                pending[next.index()] -= 1;
                if pending[next.index()] == 0 {
                    ready.push(Reverse(next));
                }
            }
        }
        if let Some(stuck) = self.graph.node_indices().find(|ix| pending[ix.index()] > 0) {
            // Steps left waiting are on a cycle or downstream of one; name one on the cycle
            // when petgraph finds it, else the first step left waiting.
            let on_cycle = petgraph::algo::toposort(&self.graph, None).err().map(|c| c.node_id()).unwrap_or(stuck);
            return Err(GraphError::Cycle(self.graph[on_cycle].id.clone()));
        }
        Ok(order)
    }

    /// Number of nodes on which something restarts (service restart or VM reboot).
    pub fn restarts(&self) -> usize {
        self.steps().filter(|s| s.operation.is_restart()).filter_map(|s| s.target.as_deref()).collect::<HashSet<_>>().len()
    }

    /// Checks the graph: acyclic; every gate a step relies on runs before it; every change to
    /// the cluster comes after some gate; every gate guards something; the API model is
    /// written only after every gate but the final kube-system one, and the run is cleaned
    /// up only after every gate passed.
    pub fn validate(&self) -> Result<(), GraphError> {
        self.topological_order()?;
        for step in self.steps() {
            for gate in &step.requires {
                let Some(g) = self.step(gate) else { return Err(GraphError::UnknownGate(gate.clone())) };
                if !g.operation.is_gate() {
                    return Err(GraphError::UnknownGate(gate.clone()));
                }
                if !self.precedes(gate, &step.id) {
                    return Err(GraphError::GateNotBefore { gate: gate.clone(), step: step.id.clone() });
                }
            }
        }
        let gates: Vec<NodeIndex> = self.graph.node_indices().filter(|ix| self.graph[*ix].operation.is_gate()).collect();
        let mut after_some_gate: HashSet<NodeIndex> = HashSet::new();
        for g in &gates {
            if self.graph.neighbors_directed(*g, petgraph::Direction::Outgoing).next().is_none() {
                return Err(GraphError::DanglingGate(self.graph[*g].id.clone()));
            }
            let mut dfs = Dfs::new(&self.graph, *g);
            while let Some(n) = dfs.next(&self.graph) {
                if n != *g {
                    after_some_gate.insert(n);
                }
            }
        }
        for ix in self.graph.node_indices() {
            let step = &self.graph[ix];
            if step.operation.is_disruptive() && !after_some_gate.contains(&ix) {
                return Err(GraphError::UngatedChange { step: step.id.clone() });
            }
            // The API model may be written before the final kube-system gate (an unrelated
            // addon must not keep it stale), but only after every gate about the nodes.
            let must_follow = |g: &NodeIndex| match step.operation {
                Operation::Cleanup => true,
                Operation::UpdateApiModel => self.graph[*g].operation != Operation::Gate(GateKind::KubeSystemReady),
                _ => false,
            };
            if matches!(step.operation, Operation::UpdateApiModel | Operation::Cleanup) {
                let ancestors: HashSet<NodeIndex> = Dfs::new(Reversed(&self.graph), ix).iter(Reversed(&self.graph)).collect();
                if let Some(g) = gates.iter().filter(|g| must_follow(g)).find(|g| !ancestors.contains(g)) {
                    return Err(GraphError::GateNotBefore { gate: self.graph[*g].id.clone(), step: step.id.clone() });
                }
            }
        }
        Ok(())
    }

    /// The graph in the saved-plan vocabulary: steps in topological order, edges sorted.
    pub fn to_saved(&self) -> file::ActionGraph {
        let order: Vec<NodeIndex> = self.ordered_indices().unwrap_or_else(|_| self.graph.node_indices().collect());
        let nodes = order
            .iter()
            .map(|ix| {
                let s = &self.graph[*ix];
                let mut parameters = s.parameters.clone();
                parameters.insert("description".into(), AttrValue::Text(s.description.clone()));
                if !s.requires.is_empty() {
                    parameters.insert("requires".into(), AttrValue::List(s.requires.clone()));
                }
                let (kind, timeout, interval) = match &s.gate {
                    Some(g) => {
                        parameters.insert("probe".into(), AttrValue::Text(g.probe.as_str().into()));
                        parameters.insert("nodes".into(), AttrValue::List(g.nodes.clone()));
                        parameters.insert("checks".into(), AttrValue::Text(g.checks.clone()));
                        parameters.insert("onFailure".into(), AttrValue::Text(g.on_failure.clone()));
                        if let Some(w) = &g.why_ssh {
                            parameters.insert("whySsh".into(), AttrValue::Text(w.clone()));
                        }
                        (StepKind::Gate, Some(g.timeout), Some(g.interval))
                    }
                    None => (StepKind::Action, None, None),
                };
                GraphNode {
                    id: s.id.clone(),
                    kind,
                    operation: s.operation.as_str().into(),
                    target: s.target.clone(),
                    parameters,
                    timeout,
                    interval,
                }
            })
            .collect();
        let position: HashMap<NodeIndex, usize> = order.iter().enumerate().map(|(i, ix)| (*ix, i)).collect();
        let mut edges: Vec<(usize, usize, GraphEdge)> = self
            .graph
            .edge_indices()
            .filter_map(|e| self.graph.edge_endpoints(e))
            .map(|(a, b)| {
                (position[&a], position[&b], GraphEdge { from: self.graph[a].id.clone(), to: self.graph[b].id.clone() })
            })
            .collect();
        edges.sort_by_key(|(a, b, _)| (*a, *b));
        file::ActionGraph { nodes, edges: edges.into_iter().map(|(_, _, e)| e).collect() }
    }

    /// Rebuilds a graph from a saved plan. The strategy and downtime live beside the graph in
    /// the plan file, so they come back as `Untouched` / the default; `validate` is not run.
    pub fn from_saved(saved: &file::ActionGraph) -> Result<ActionGraph, GraphError> {
        let mut g = ActionGraph::empty();
        for node in &saved.nodes {
            if g.index.contains_key(&node.id) {
                return Err(GraphError::DuplicateId(node.id.clone()));
            }
            let operation = Operation::parse(&node.operation)
                .ok_or_else(|| GraphError::UnknownOperation { step: node.id.clone(), operation: node.operation.clone() })?;
            let mut parameters = node.parameters.clone();
            let text = |p: &mut BTreeMap<String, AttrValue>, k: &str| match p.remove(k) {
                Some(AttrValue::Text(t)) => t,
                _ => String::new(),
            };
            let list = |p: &mut BTreeMap<String, AttrValue>, k: &str| match p.remove(k) {
                Some(AttrValue::List(l)) => l,
                _ => Vec::new(),
            };
            let description = text(&mut parameters, "description");
            let requires = list(&mut parameters, "requires");
            let gate = match (operation, node.kind) {
                (Operation::Gate(kind), StepKind::Gate) => {
                    let (Some(timeout), Some(interval)) = (node.timeout, node.interval) else {
                        return Err(GraphError::GateWithoutTiming(node.id.clone()));
                    };
                    let probe = if text(&mut parameters, "probe") == "ssh" { Probe::Ssh } else { Probe::Api };
                    let why = text(&mut parameters, "whySsh");
                    Some(GateSpec {
                        kind,
                        probe,
                        nodes: list(&mut parameters, "nodes"),
                        timeout,
                        interval,
                        checks: text(&mut parameters, "checks"),
                        on_failure: text(&mut parameters, "onFailure"),
                        why_ssh: (!why.is_empty()).then_some(why),
                    })
                }
                (Operation::Gate(_), StepKind::Action) | (_, StepKind::Gate) => {
                    return Err(GraphError::UnknownOperation {
                        step: node.id.clone(),
                        operation: format!("{} as {:?}", node.operation, node.kind),
                    })
                }
                _ => None,
            };
            g.add(Step { id: node.id.clone(), operation, target: node.target.clone(), description, parameters, gate, requires });
        }
        for e in &saved.edges {
            let (Some(a), Some(b)) = (g.index.get(&e.from).copied(), g.index.get(&e.to).copied()) else {
                return Err(GraphError::DanglingEdge { from: e.from.clone(), to: e.to.clone() });
            };
            g.edge(a, b);
        }
        Ok(g)
    }
}

fn dur_sum(a: Duration, b: Duration) -> Duration {
    Duration::from_secs(a.as_secs() + b.as_secs()).unwrap_or(a)
}

/// Builds steps with consistent ids and descriptions.
struct Builder<'a> {
    g: ActionGraph,
    profile: &'a Profile,
}

impl Builder<'_> {
    /// Installs `ids` on master `node` after `after` and its staged copy, then writes the admin
    /// kubeconfig there when it changes; returns the last step. Both master strategies start so.
    fn install_on_master(
        &mut self,
        node: &str,
        ids: &[String],
        requires: &[NodeIndex],
        after: &[NodeIndex],
        staged: NodeIndex,
        admin_kubeconfig: Option<&str>,
    ) -> NodeIndex {
        let install = self.action(
            Operation::InstallCerts,
            Some(node),
            format!("install {} on {node} (atomic renames, owners and modes from the catalogue)", ids.join(", ")),
            params(&[("certificates", AttrValue::List(ids.to_vec()))]),
            requires,
        );
        self.g.edges_from(after, install);
        self.g.edge(staged, install);
        let Some(admin) = admin_kubeconfig else { return install };
        let k = self.action(
            Operation::InstallAdminKubeconfig,
            Some(node),
            format!("write the admin kubeconfig /home/{admin}/.kube/config on {node}"),
            BTreeMap::new(),
            &[],
        );
        self.g.edge(install, k);
        k
    }

    fn action(&mut self, op: Operation, target: Option<&str>, description: String, parameters: BTreeMap<String, AttrValue>, requires: &[NodeIndex]) -> NodeIndex {
        let id = match target {
            Some(t) => format!("{}@{t}", op.as_str()),
            None => op.as_str().to_string(),
        };
        // Only gates are requirements; a caller may pass the last steps of a phase, which can
        // be an action (the autoscaler pause) when that phase changed nothing.
        let mut requires: Vec<String> =
            requires.iter().filter(|ix| self.g.graph[**ix].operation.is_gate()).map(|ix| self.g.graph[*ix].id.clone()).collect();
        requires.sort();
        requires.dedup();
        self.g.add(Step { id, operation: op, target: target.map(str::to_string), description, parameters, gate: None, requires })
    }

    #[allow(clippy::too_many_arguments)]
    fn gate(&mut self, kind: GateKind, scope: &str, probe: Probe, nodes: Vec<String>, checks: String, on_failure: String, why_ssh: Option<String>) -> NodeIndex {
        let timing = self.profile.gates.timing(kind);
        let id = format!("{}@{scope}", kind.as_str());
        let target = if nodes.len() == 1 { Some(nodes[0].clone()) } else { None };
        let description = checks.clone();
        self.g.add(Step {
            id,
            operation: Operation::Gate(kind),
            target,
            description,
            parameters: BTreeMap::new(),
            gate: Some(GateSpec { kind, probe, nodes, timeout: timing.timeout, interval: timing.interval, checks, on_failure, why_ssh }),
            requires: Vec::new(),
        })
    }
}

fn params(pairs: &[(&str, AttrValue)]) -> BTreeMap<String, AttrValue> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

fn resume_hint() -> &'static str {
    "the previous certificates are in /etc/kubernetes/certs.bak on each node; fix the cause and run `certrotate apply` with the same plan to resume here"
}

/// Builds the graph for a diff. No changes, no steps.
pub fn build(diff: &Diff, topo: &Topology, profile: &Profile) -> ActionGraph {
    let mut b = Builder { g: ActionGraph::empty(), profile };
    if !diff.has_changes() {
        return b.g;
    }
    let expired = diff.cluster_expired();
    let ca_changes = diff.cluster_ca_changes();
    let proxy_changes = diff.front_proxy_changes();
    let masters_touched: Vec<&Node> = topo.masters.iter().filter(|m| !diff.changed_on(&m.name).is_empty()).collect();
    let masters_main: Vec<&Node> = topo.masters.iter().filter(|m| diff.node_changes(&m.name)).collect();
    let agents: Vec<&Node> = topo.agents.iter().filter(|a| diff.node_changes(&a.name)).collect();
    let master_names: Vec<String> = topo.masters.iter().map(|m| m.name.clone()).collect();
    let expired_list = {
        let mut ids: Vec<String> = diff.expired.iter().map(|e| e.certificate.clone()).collect();
        ids.sort();
        ids.dedup();
        ids.join(", ")
    };

    let all_at_once_why = if ca_changes {
        Some("a new cluster CA must reach every master at once: masters trusting different CAs cannot reach each other or etcd".to_string())
    } else if expired {
        Some(format!(
            "certificates have already expired ({expired_list}): etcd members and apiservers cannot come back one at a time while their peers still hold expired certificates"
        ))
    } else if profile.masters.strategy == MasterStrategy::AllAtOnce {
        Some("the profile sets masters.strategy: all-at-once".to_string())
    } else {
        None
    };
    b.g.masters = match (&all_at_once_why, masters_main.is_empty()) {
        (_, true) => MasterPlan::Untouched,
        (Some(why), false) => MasterPlan::AllAtOnce { why: why.clone() },
        (None, false) => MasterPlan::Rolling,
    };

    let why_ssh = expired.then(|| {
        format!("the cluster's {expired_list} certificates have already expired, so the Kubernetes API cannot answer before rotation; this gate checks over SSH instead")
    });
    let pre_probe = if expired { Probe::Ssh } else { Probe::Api };

    // Local preparation.
    let changed_ids: Vec<String> =
        diff.decisions.iter().filter(|d| d.action != file::ChangeAction::Noop).map(|d| d.id.clone()).collect();
    let backup = b.action(
        Operation::BackupApiModel,
        None,
        "copy apimodel.json and its directory to _rotate_certs_backup/".into(),
        params(&[("to", AttrValue::Text("_rotate_certs_backup/".into()))]),
        &[],
    );
    let issue = b.action(
        Operation::IssuePki,
        None,
        format!("issue {} new certificates into a 0700 directory", changed_ids.len()),
        params(&[("certificates", AttrValue::List(changed_ids)), ("newClusterCa", AttrValue::Flag(ca_changes))]),
        &[],
    );
    b.g.edge(backup, issue);
    let before_changes = vec![issue];
    let mut pause = None;

    // Preflight: the cluster must be healthy before anything changes.
    let pre_etcd = b.gate(
        GateKind::EtcdHealthy,
        "preflight",
        Probe::Ssh,
        master_names.clone(),
        if expired {
            "etcd is active on every master and its client port 2379 accepts connections from the node (etcdctl cannot authenticate with expired certificates)".into()
        } else {
            "`etcdctl endpoint health` over SSH on every master reports all members healthy with the current certificates".into()
        },
        "nothing has changed yet: look at `journalctl -u etcd` on the masters and restore etcd quorum before rotating".into(),
        why_ssh.clone(),
    );
    let pre_nodes = b.gate(
        GateKind::NodesReady,
        "preflight",
        pre_probe,
        master_names.clone(),
        if expired { "kubelet is active on every master".into() } else { "every master reports Ready".into() },
        "nothing has changed yet: find out why the masters are not Ready (`kubectl describe node`, `journalctl -u kubelet`) before rotating".into(),
        why_ssh.clone(),
    );
    let pre_cp = b.gate(
        GateKind::ControlPlanePodsReady,
        "preflight",
        pre_probe,
        master_names.clone(),
        if expired {
            "the apiserver on every master accepts connections on port 443 from the node itself".into()
        } else {
            "kube-apiserver, kube-controller-manager, kube-scheduler and kube-addon-manager pods of every master are Ready".into()
        },
        "nothing has changed yet: fix the control plane first (`crictl ps -a` and kubelet logs on the master)".into(),
        why_ssh.clone(),
    );
    for gate in [pre_etcd, pre_nodes, pre_cp] {
        b.g.edges_from(&before_changes, gate);
    }
    let preflight = vec![pre_etcd, pre_nodes, pre_cp];
    // The autoscaler is paused once the preflight passed, so a failed preflight leaves the
    // cluster exactly as it was. (On an expired cluster it waits for the API, further down.)
    let mut changes_start = preflight.clone();
    if !expired {
        let p = b.action(
            Operation::PauseAutoscaler,
            None,
            "scale cluster-autoscaler to 0 replicas (if deployed) and remember its replica count".into(),
            BTreeMap::new(),
            &preflight,
        );
        b.g.edges_from(&preflight, p);
        changes_start = vec![p];
        pause = Some(p);
    }

    // Back up and copy on every node that changes; harmless, so it overlaps the preflight.
    // One step and one remote command per node: the backup and the staging were two steps
    // in a row with nothing between them, each paying its own round trip through the
    // jumpbox. The backup still comes first, and every install checks it is there.
    let mut staged: HashMap<String, NodeIndex> = HashMap::new();
    let touched: Vec<&Node> = masters_touched.iter().copied().chain(agents.iter().copied()).collect();
    for node in &touched {
        let ids = diff.changed_on(&node.name);
        let d = b.action(
            Operation::DistributeCerts,
            Some(&node.name),
            format!(
                "copy {CERT_DIR} to {CERT_DIR}.bak on {n} and verify the copy, then copy {} to a staging directory there",
                ids.join(", "),
                n = node.name
            ),
            params(&[
                ("certificates", AttrValue::List(ids)),
                ("backupFrom", AttrValue::Text(CERT_DIR.into())),
                ("backupTo", AttrValue::Text(format!("{CERT_DIR}.bak"))),
            ]),
            &[],
        );
        b.g.edge(issue, d);
        staged.insert(node.name.clone(), d);
    }

    // The front-proxy pair is installed in its own phase, after etcd holds it.
    let main_phase_ids = |node: &str| -> Vec<String> {
        diff.changed_on(node).into_iter().filter(|id| id != "proxy" && id != "proxy-ca").collect()
    };
    let kubeconfig_changes = |node: &str| diff.changed_on(node).iter().any(|id| id == "kubeconfig");
    let removal = |node: &str| diff.kubelet_client_current_removals.iter().any(|n| n == node);

    // Masters.
    let mut master_end = changes_start.clone();
    match &b.g.masters.clone() {
        MasterPlan::Untouched => {}
        MasterPlan::Rolling => {
            let apiserver_changes = diff.apiserver_cert_changes();
            for m in &masters_main {
                let ids = main_phase_ids(&m.name);
                let mut requires = master_end.clone();
                requires.extend(preflight.iter().copied());
                let admin = kubeconfig_changes(&m.name).then_some(topo.admin_username.as_str());
                let mut last = b.install_on_master(&m.name, &ids, &requires, &master_end, staged[&m.name], admin);
                if removal(&m.name) {
                    let r = b.action(
                        Operation::RemoveKubeletClientCurrent,
                        Some(&m.name),
                        format!("remove {KUBELET_CLIENT_CURRENT} on {} so kubelet uses the renewed client.crt", m.name),
                        params(&[("path", AttrValue::Text(KUBELET_CLIENT_CURRENT.into()))]),
                        &[],
                    );
                    b.g.edge(last, r);
                    last = r;
                }
                let etcd_related = ids.iter().any(|id| ETCD_RELATED.contains(&id.as_str()) || id.starts_with("etcdpeer"));
                let mut gates_of_master = Vec::new();
                if etcd_related {
                    let r = b.action(Operation::RestartEtcd, Some(&m.name), format!("restart etcd on {}", m.name), BTreeMap::new(), &[]);
                    b.g.edge(last, r);
                    let g = b.gate(
                        GateKind::EtcdHealthy,
                        &m.name,
                        Probe::Ssh,
                        master_names.clone(),
                        format!("`etcdctl endpoint health` over SSH on {} with the new etcdclient certificate reports every member healthy and a leader", m.name),
                        format!("etcd on {} did not rejoin: look at `journalctl -u etcd` there; {}", m.name, resume_hint()),
                        None,
                    );
                    b.g.edge(r, g);
                    gates_of_master.push(g);
                    last = g;
                }
                let r = b.action(
                    Operation::RestartControlPlane,
                    Some(&m.name),
                    format!("restart kubelet and the control-plane static pods on {}", m.name),
                    BTreeMap::new(),
                    &gates_of_master,
                );
                b.g.edge(last, r);
                let serves = b.gate(
                    GateKind::ApiserverServesNewCert,
                    &m.name,
                    Probe::Api,
                    vec![m.name.clone()],
                    if apiserver_changes {
                        format!("the apiserver on {} presents the newly issued certificate (fingerprint recorded at issue) and /readyz answers ok", m.name)
                    } else {
                        format!("the apiserver on {} answers /readyz ok with its certificate unchanged", m.name)
                    },
                    format!("the apiserver on {} did not come back: check `crictl logs` of kube-apiserver there; {}", m.name, resume_hint()),
                    None,
                );
                b.g.edge(r, serves);
                let cp = b.gate(
                    GateKind::ControlPlanePodsReady,
                    &m.name,
                    Probe::Api,
                    vec![m.name.clone()],
                    format!("kube-apiserver, kube-controller-manager, kube-scheduler and kube-addon-manager pods of {} are Ready", m.name),
                    format!("control-plane pods of {} are not Ready: `kubectl -n kube-system describe pod` shows why; {}", m.name, resume_hint()),
                    None,
                );
                b.g.edge(serves, cp);
                master_end = vec![cp];
            }
        }
        MasterPlan::AllAtOnce { .. } => {
            let mut reboots = Vec::new();
            for m in &masters_main {
                let ids = main_phase_ids(&m.name);
                let admin = kubeconfig_changes(&m.name).then_some(topo.admin_username.as_str());
                let mut last = b.install_on_master(&m.name, &ids, &preflight, &changes_start, staged[&m.name], admin);
                if removal(&m.name) {
                    let r = b.action(
                        Operation::RemoveKubeletClientCurrent,
                        Some(&m.name),
                        format!("remove {KUBELET_CLIENT_CURRENT} on {} (issued under the old CA)", m.name),
                        params(&[("path", AttrValue::Text(KUBELET_CLIENT_CURRENT.into()))]),
                        &[],
                    );
                    b.g.edge(last, r);
                    last = r;
                }
                reboots.push((m, last));
            }
            // Every master is installed before any reboots, so none comes up among peers of the old trust.
            let installed: Vec<NodeIndex> = reboots.iter().map(|(_, l)| *l).collect();
            let mut reboot_steps = Vec::new();
            for (m, _) in &reboots {
                let r = b.action(
                    Operation::RebootVm,
                    Some(&m.name),
                    format!("restart VM {} through the Azure Compute API and wait until it runs", m.name),
                    params(&[("vm", AttrValue::Text(m.name.clone()))]),
                    &[],
                );
                b.g.edges_from(&installed, r);
                reboot_steps.push(r);
            }
            let etcd = b.gate(
                GateKind::EtcdHealthy,
                "masters",
                Probe::Ssh,
                master_names.clone(),
                "`etcdctl endpoint health` over SSH on every master with the new etcdclient certificate reports every member healthy and a leader".into(),
                format!("etcd did not form a quorum with the new certificates: compare `journalctl -u etcd` on the masters; {}", resume_hint()),
                None,
            );
            b.g.edges_from(&reboot_steps, etcd);
            let serves = b.gate(
                GateKind::ApiserverServesNewCert,
                "masters",
                Probe::Api,
                master_names.clone(),
                "every master's apiserver presents the newly issued certificate and /readyz answers ok".into(),
                format!("an apiserver did not come back: check `crictl logs` of kube-apiserver on that master; {}", resume_hint()),
                None,
            );
            b.g.edge(etcd, serves);
            let nodes = b.gate(
                GateKind::NodesReady,
                "masters",
                Probe::Api,
                master_names.clone(),
                "every master reports Ready with its kubelet using the new client certificate".into(),
                format!("a master is not Ready: `journalctl -u kubelet` on it shows why; {}", resume_hint()),
                None,
            );
            b.g.edge(serves, nodes);
            let cp = b.gate(
                GateKind::ControlPlanePodsReady,
                "masters",
                Probe::Api,
                master_names.clone(),
                "control-plane pods of every master are Ready".into(),
                format!("control-plane pods are not Ready: `kubectl -n kube-system describe pod` shows why; {}", resume_hint()),
                None,
            );
            b.g.edge(nodes, cp);
            master_end = vec![cp];
        }
    }

    // What follows the masters waits for their last gates (`master_end`), and on an expired
    // cluster also for the autoscaler pause, which needs the API back.
    let mut after_masters = master_end.clone();
    if expired {
        let p = b.action(
            Operation::PauseAutoscaler,
            None,
            "scale cluster-autoscaler to 0 replicas (if deployed) now that the API answers again".into(),
            BTreeMap::new(),
            &master_end,
        );
        b.g.edges_from(&master_end, p);
        pause = Some(p);
        after_masters = vec![p];
    }

    // Front proxy: in etcd once, then on each master in turn.
    let mut proxy_end = after_masters.clone();
    let mut proxy_gates = Vec::new();
    if proxy_changes {
        let first = topo.masters.first().map(|m| m.name.clone()).unwrap_or_default();
        let requires: Vec<NodeIndex> = master_end.iter().chain(preflight.iter()).copied().collect();
        let put = b.action(
            Operation::PutFrontProxyInEtcd,
            Some(&first),
            "write the new front-proxy CA, client certificate and key under /proxycerts in etcd".into(),
            params(&[(
                "keys",
                AttrValue::List(vec![ETCD_PROXY_CA_KEY.into(), ETCD_PROXY_CERT_KEY.into(), ETCD_PROXY_KEY_KEY.into()]),
            )]),
            &requires,
        );
        b.g.edges_from(&after_masters, put);
        if let Some(s) = staged.get(&first) {
            b.g.edge(*s, put);
        }
        let mut prev = vec![put];
        for m in &masters_touched {
            let install = b.action(
                Operation::InstallFrontProxy,
                Some(&m.name),
                format!("write proxy-ca.crt, proxy.crt and proxy.key on {}", m.name),
                BTreeMap::new(),
                &requires,
            );
            b.g.edges_from(&prev, install);
            b.g.edge(staged[&m.name], install);
            let restart = b.action(
                Operation::RestartApiserver,
                Some(&m.name),
                format!("restart kube-apiserver on {} so it loads the new front-proxy material", m.name),
                BTreeMap::new(),
                &[],
            );
            b.g.edge(install, restart);
            let cp = b.gate(
                GateKind::ControlPlanePodsReady,
                &format!("front-proxy@{}", m.name),
                Probe::Api,
                vec![m.name.clone()],
                format!("kube-apiserver on {} is Ready again with the new front-proxy certificates", m.name),
                format!("kube-apiserver on {} did not come back: `crictl logs` of kube-apiserver there; {}", m.name, resume_hint()),
                None,
            );
            b.g.edge(restart, cp);
            prev = vec![cp];
            proxy_gates.push(cp);
        }
        proxy_end = prev;
    }

    // Agents, in `parallelism` lanes: agent k follows agent k - parallelism.
    let lanes = profile.agents.parallelism.get().max(1) as usize;
    let agent_requires: Vec<NodeIndex> = {
        let mut r: Vec<NodeIndex> = preflight.clone();
        r.extend(master_end.iter().chain(proxy_gates.iter()).copied());
        r
    };
    let mut lane_end: Vec<Option<NodeIndex>> = vec![None; lanes];
    for (k, a) in agents.iter().enumerate() {
        let ids = diff.changed_on(&a.name);
        let install = b.action(
            Operation::InstallCerts,
            Some(&a.name),
            format!("install {} on {}", ids.join(", "), a.name),
            params(&[("certificates", AttrValue::List(ids))]),
            &agent_requires,
        );
        b.g.edges_from(&proxy_end, install);
        b.g.edge(staged[&a.name], install);
        if let Some(prev) = lane_end[k % lanes] {
            b.g.edge(prev, install);
        }
        let mut last = install;
        if removal(&a.name) {
            let r = b.action(
                Operation::RemoveKubeletClientCurrent,
                Some(&a.name),
                format!("remove {KUBELET_CLIENT_CURRENT} on {} (issued under the old CA)", a.name),
                params(&[("path", AttrValue::Text(KUBELET_CLIENT_CURRENT.into()))]),
                &[],
            );
            b.g.edge(last, r);
            last = r;
        }
        let restart = b.action(Operation::RestartKubelet, Some(&a.name), format!("restart kubelet on {}", a.name), BTreeMap::new(), &[]);
        b.g.edge(last, restart);
        let proxy = b.action(
            Operation::DeleteKubeProxyPod,
            Some(&a.name),
            format!("delete the kube-proxy pod of {} so it restarts with the new trust", a.name),
            BTreeMap::new(),
            &[],
        );
        b.g.edge(restart, proxy);
        let ready = b.gate(
            GateKind::NodesReady,
            &a.name,
            Probe::Api,
            vec![a.name.clone()],
            format!("{} reports Ready with its kubelet using the new client certificate", a.name),
            format!("{} is not Ready: `journalctl -u kubelet` on it shows why; {}", a.name, resume_hint()),
            None,
        );
        b.g.edge(proxy, ready);
        lane_end[k % lanes] = Some(ready);
    }
    let mut agents_end: Vec<NodeIndex> = lane_end.into_iter().flatten().collect();
    if agents_end.is_empty() {
        agents_end = proxy_end.clone();
    }

    // Service-account tokens are signed with the apiserver key.
    let mut workloads_end = agents_end.clone();
    if diff.apiserver_key_changes() {
        let del = b.action(
            Operation::DeleteServiceAccountTokens,
            None,
            "delete every service-account token secret so the controller manager recreates them with the new apiserver key".into(),
            BTreeMap::new(),
            &master_end,
        );
        b.g.edges_from(&agents_end, del);
        let roll = b.action(
            Operation::RolloutWorkloads,
            None,
            "roll out every deployment and daemonset so pods pick up the new tokens and CA".into(),
            BTreeMap::new(),
            &[],
        );
        b.g.edge(del, roll);
        workloads_end = vec![roll];
    }
    let final_gate = b.gate(
        GateKind::KubeSystemReady,
        "final",
        Probe::Api,
        Vec::new(),
        "every pod in kube-system is Ready".into(),
        format!("some kube-system pods are not Ready: `kubectl -n kube-system get pods` shows which; {}", resume_hint()),
        None,
    );
    b.g.edges_from(&workloads_end, final_gate);
    // The final gate must come after every other gate as well.
    let all_gates: Vec<NodeIndex> = b.g.graph.node_indices().filter(|ix| b.g.graph[*ix].operation.is_gate() && *ix != final_gate).collect();
    // What proves every node works with its new certificates: the masters' last gates (etcd
    // healthy, apiserver serving the new certificate, control plane Ready), the front-proxy
    // gates and every agent Ready. Every other gate runs before these.
    let nodes_proven: Vec<NodeIndex> = master_end
        .iter()
        .chain(proxy_gates.iter())
        .copied()
        .chain(b.g.graph.node_indices().filter(|ix| *ix != pre_nodes && b.g.graph[*ix].operation == Operation::Gate(GateKind::NodesReady)))
        .collect();
    // The API model is written once the nodes hold the new certificates and the control plane
    // is proven to work with them, not after the final kube-system gate: an unrelated addon
    // that never gets Ready would otherwise leave apimodel.json describing certificates the
    // cluster no longer has.
    let mut tail = vec![final_gate];
    if diff.apimodel_changes() {
        let u = b.action(
            Operation::UpdateApiModel,
            None,
            "write the new certificateProfile into apimodel.json (atomic, key order and unknown fields kept)".into(),
            BTreeMap::new(),
            &nodes_proven,
        );
        b.g.edges_from(&agents_end, u);
        tail.push(u);
    }
    // The autoscaler comes back once every node is Ready again, for the same reason: a
    // crash-looping addon must not keep the cluster from scaling.
    let resume = b.action(
        Operation::ResumeAutoscaler,
        None,
        "scale cluster-autoscaler back to its remembered replica count".into(),
        BTreeMap::new(),
        &nodes_proven,
    );
    b.g.edges_from(&agents_end, resume);
    if let Some(p) = pause {
        b.g.edge(p, resume);
    }
    tail.push(resume);
    let cleanup = b.action(
        Operation::Cleanup,
        None,
        "remove the staging directories on the nodes; backups stay".into(),
        BTreeMap::new(),
        &[final_gate],
    );
    b.g.edges_from(&tail, cleanup);
    for g in all_gates {
        if b.g.graph.neighbors_directed(g, petgraph::Direction::Outgoing).next().is_none() {
            b.g.edge(g, final_gate);
        }
    }

    b.g.downtime = downtime(diff, topo, profile, &b.g.masters, proxy_changes, &expired_list);
    b.g.notes = notes(&b.g.masters, why_ssh.as_deref(), lanes, agents.len());
    b.g
}

fn downtime(diff: &Diff, topo: &Topology, profile: &Profile, masters: &MasterPlan, proxy_changes: bool, expired_list: &str) -> ApiDowntime {
    let estimate = dur_sum(profile.gates.timing(GateKind::EtcdHealthy).timeout, profile.gates.timing(GateKind::ControlPlanePodsReady).timeout);
    if diff.cluster_expired() {
        return ApiDowntime {
            kind: DowntimeKind::Outage,
            estimate: Some(estimate),
            explanation: format!(
                "the API is already down: {expired_list} expired; it returns once the masters serve their new certificates (apply stops if that takes longer than {estimate})"
            ),
        };
    }
    let apiserver_restarts = !matches!(masters, MasterPlan::Untouched) || proxy_changes;
    match masters {
        MasterPlan::AllAtOnce { why } => ApiDowntime {
            kind: DowntimeKind::Outage,
            estimate: Some(estimate),
            explanation: format!("all masters restart together because {why}; the API is down until they are back (apply stops if that takes longer than {estimate})"),
        },
        _ if apiserver_restarts && topo.masters.len() == 1 => ApiDowntime {
            kind: DowntimeKind::Outage,
            estimate: Some(profile.gates.timing(GateKind::ControlPlanePodsReady).timeout),
            explanation: "the cluster has a single master: the API is down while its apiserver restarts".into(),
        },
        _ if apiserver_restarts => {
            let tokens = if diff.apiserver_key_changes() {
                "; the apiserver key changes, so service-account tokens are recreated and workloads rolled out at the end, and pods may see token errors until their rollout"
            } else {
                ""
            };
            ApiDowntime {
                kind: DowntimeKind::None,
                estimate: None,
                explanation: format!(
                    "the CA is kept and masters restart one at a time behind the internal load balancer ({}), each gated on etcd and its apiserver, so the API stays reachable{tokens}",
                    topo.internal_lb_ip
                ),
            }
        }
        _ => ApiDowntime::default(),
    }
}

fn notes(masters: &MasterPlan, why_ssh: Option<&str>, lanes: usize, agents: usize) -> Vec<Finding> {
    let mut out = Vec::new();
    let note = |code: &str, message: String| Finding { severity: Severity::Info, code: code.into(), node: None, path: None, message };
    match masters {
        MasterPlan::Rolling => out.push(note("master-strategy", "masters change one at a time, each behind etcd and apiserver gates".into())),
        MasterPlan::AllAtOnce { why } => out.push(note("master-strategy", format!("masters change together: {why}"))),
        MasterPlan::Untouched => {}
    }
    if let Some(why) = why_ssh {
        out.push(note(
            "ssh-level-gates",
            format!("preflight gates (etcd healthy, masters ready, control plane ready) run over SSH: {why}"),
        ));
    }
    if agents > 0 {
        let noun = if agents == 1 { "agent changes" } else { "agents change" };
        out.push(note("agent-parallelism", format!("{agents} {noun} at most {} at a time", lanes.min(agents))));
    }
    out
}
