//! The action graph: the whole rotation as a petgraph DAG of steps (see `plan::step`):
//! backups, issuance, distribution, installs, restarts and reboots, etcd puts, Kubernetes
//! operations, the API model update, and gates (etcd healthy, apiserver serves the new
//! certificate, nodes Ready, control-plane pods Ready, kube-system Ready). Built from a diff,
//! pure data. A rollback is a graph too (`plan::rollback`), walked by the same walker.
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
use crate::plan::file::{self, ApiDowntime, DowntimeKind, Finding, GraphEdge, Severity};
pub use crate::plan::step::{GateSpec, Operation, Phase, Probe, Scope, Step, StepKind, StepParams};
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::{Dfs, Reversed, Walker};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use thiserror::Error;

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

/// What a graph is for: its checks differ. A rotation must gate every change behind a health
/// check; a rollback restores a cluster that may be unhealthy, so its changes come first and
/// its gates after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Rotation,
    Rollback,
}

/// The rotation as a DAG, with the strategy chosen and the API downtime it implies.
#[derive(Debug, Clone)]
pub struct ActionGraph {
    graph: DiGraph<Step, ()>,
    index: HashMap<String, NodeIndex>,
    pub purpose: Purpose,
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
    #[error("{0}")]
    InconsistentStep(String),
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
    fn empty(purpose: Purpose) -> Self {
        Self {
            graph: DiGraph::new(),
            index: HashMap::new(),
            purpose,
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

    /// The nodes whose certificates this graph changes (those that receive new material).
    pub fn touched_nodes(&self) -> Vec<String> {
        self.steps().filter(|s| s.operation == Operation::DistributeCerts).filter_map(|s| s.target.clone()).collect()
    }

    /// Ids of the steps that must finish before `id`.
    pub fn predecessors(&self, id: &str) -> Vec<&str> {
        self.neighbours(id, petgraph::Direction::Incoming)
    }

    /// Ids of the steps that wait for `id`.
    pub fn successors(&self, id: &str) -> Vec<&str> {
        self.neighbours(id, petgraph::Direction::Outgoing)
    }

    fn neighbours(&self, id: &str, direction: petgraph::Direction) -> Vec<&str> {
        let Some(ix) = self.index.get(id) else { return vec![] };
        let mut out: Vec<&str> = self.graph.neighbors_directed(*ix, direction).map(|n| self.graph[n].id.as_str()).collect();
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

    /// Checks the graph: acyclic; every step consistent in itself; every gate a step relies on
    /// runs before it. A rotation also: every change to the cluster comes after some gate;
    /// every gate guards something; the API model is written only after every gate but the
    /// final kube-system one, and the run is cleaned up only after every gate passed.
    pub fn validate(&self) -> Result<(), GraphError> {
        self.topological_order()?;
        for step in self.steps() {
            step.check().map_err(GraphError::InconsistentStep)?;
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
        if self.purpose == Purpose::Rollback {
            return Ok(());
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
        let steps = order.iter().map(|ix| self.graph[*ix].clone()).collect();
        let position: HashMap<NodeIndex, usize> = order.iter().enumerate().map(|(i, ix)| (*ix, i)).collect();
        let mut edges: Vec<(usize, usize, GraphEdge)> = self
            .graph
            .edge_indices()
            .filter_map(|e| self.graph.edge_endpoints(e))
            .map(|(a, b)| (position[&a], position[&b], GraphEdge { from: self.graph[a].id.clone(), to: self.graph[b].id.clone() }))
            .collect();
        edges.sort_by_key(|(a, b, _)| (*a, *b));
        file::ActionGraph { steps, edges: edges.into_iter().map(|(_, _, e)| e).collect() }
    }

    /// Rebuilds a rotation graph from a saved plan. The strategy and downtime live beside the
    /// graph in the plan file, so they come back as `Untouched` / the default; `validate` is
    /// not run.
    pub fn from_saved(saved: &file::ActionGraph) -> Result<ActionGraph, GraphError> {
        let mut g = ActionGraph::empty(Purpose::Rotation);
        for step in &saved.steps {
            if g.index.contains_key(&step.id) {
                return Err(GraphError::DuplicateId(step.id.clone()));
            }
            step.check().map_err(GraphError::InconsistentStep)?;
            g.add(step.clone());
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

/// What one gate checks, before the builder gives it its id, timing and place.
pub(crate) struct GateCheck {
    pub kind: GateKind,
    pub probe: Probe,
    pub nodes: Vec<String>,
    pub checks: String,
    pub on_failure: String,
    pub why_ssh: Option<String>,
}

/// Adds steps with consistent ids, scopes and requirements; shared by the rotation and the
/// rollback builders.
pub(crate) struct StepAdder<'a> {
    pub g: ActionGraph,
    pub profile: &'a Profile,
}

impl<'a> StepAdder<'a> {
    pub fn new(purpose: Purpose, profile: &'a Profile) -> Self {
        StepAdder { g: ActionGraph::empty(purpose), profile }
    }

    /// An action; its id is `operation` or `operation@target`. Only gates count as
    /// requirements: a caller may pass the last steps of a phase, which can be an action
    /// (the autoscaler pause) when that phase changed nothing.
    pub fn action(&mut self, op: Operation, phase: Phase, target: Option<&str>, description: String, params: StepParams, requires: &[NodeIndex]) -> NodeIndex {
        let id = match target {
            Some(t) => format!("{}@{t}", op.as_str()),
            None => op.as_str().to_string(),
        };
        let scope = match (target, op) {
            (Some(_), _) => Scope::Node,
            (None, Operation::BackupApiModel | Operation::IssuePki | Operation::UpdateApiModel | Operation::RestoreApiModel) => Scope::Local,
            (None, _) => Scope::Cluster,
        };
        let mut requires: Vec<String> =
            requires.iter().filter(|ix| self.g.graph[**ix].operation.is_gate()).map(|ix| self.g.graph[*ix].id.clone()).collect();
        requires.sort();
        requires.dedup();
        self.g.add(Step {
            id,
            kind: StepKind::Action,
            operation: op,
            phase,
            scope,
            target: target.map(str::to_string),
            description,
            params,
            requires,
            gate: None,
        })
    }

    /// A gate with the profile's timing; its id is `kind@scope`. It acts on its one node when
    /// it looks at one, else on `on` when given (an etcd gate probing from that master).
    pub fn gate(&mut self, check: GateCheck, phase: Phase, scope: &str, on: Option<&str>) -> NodeIndex {
        let timing = self.profile.gates.timing(check.kind);
        let target = on.map(str::to_string).or_else(|| (check.nodes.len() == 1).then(|| check.nodes[0].clone()));
        self.g.add(Step {
            id: format!("{}@{scope}", check.kind.as_str()),
            kind: StepKind::Gate,
            operation: Operation::Gate(check.kind),
            phase,
            scope: if target.is_some() { Scope::Node } else { Scope::Cluster },
            target,
            description: check.checks.clone(),
            params: StepParams::default(),
            requires: Vec::new(),
            gate: Some(GateSpec {
                probe: check.probe,
                nodes: check.nodes,
                timeout: timing.timeout,
                interval: timing.interval,
                checks: check.checks,
                on_failure: check.on_failure,
                why_ssh: check.why_ssh,
            }),
        })
    }

    /// Gates one after another behind `after`; returns the last (or `after` when empty).
    pub fn gate_chain(&mut self, after: &[NodeIndex], phase: Phase, scope: &str, on: Option<&str>, checks: Vec<GateCheck>) -> Vec<NodeIndex> {
        let mut last = after.to_vec();
        for check in checks {
            let g = self.gate(check, phase, scope, on);
            self.g.edges_from(&last, g);
            last = vec![g];
        }
        last
    }

    pub fn edge(&mut self, from: NodeIndex, to: NodeIndex) {
        self.g.edge(from, to);
    }

    pub fn edges_from(&mut self, froms: &[NodeIndex], to: NodeIndex) {
        self.g.edges_from(froms, to);
    }

    pub fn is_gate(&self, ix: NodeIndex) -> bool {
        self.g.graph[ix].operation.is_gate()
    }

    pub fn operation(&self, ix: NodeIndex) -> Operation {
        self.g.graph[ix].operation
    }

    pub fn has_successor(&self, ix: NodeIndex) -> bool {
        self.g.graph.neighbors_directed(ix, petgraph::Direction::Outgoing).next().is_some()
    }

    pub fn indices(&self) -> Vec<NodeIndex> {
        self.g.graph.node_indices().collect()
    }
}

fn resume_hint() -> &'static str {
    "the previous certificates are in /etc/kubernetes/certs.bak on each node; fix the cause and run `certrotate apply` with the same plan to resume here"
}

fn certificates(ids: Vec<String>) -> StepParams {
    StepParams { certificates: ids, ..StepParams::default() }
}

/// What the diff decided, in the terms the builder's parts need.
struct Decided<'d> {
    diff: &'d Diff,
    expired: bool,
    expired_list: String,
    ca_changes: bool,
    proxy_changes: bool,
    /// Masters whose certificates change in any phase, and those with main-phase changes.
    masters_touched: Vec<&'d Node>,
    masters_main: Vec<&'d Node>,
    agents: Vec<&'d Node>,
    master_names: Vec<String>,
    why_ssh: Option<String>,
}

impl Decided<'_> {
    /// The certificates a node changes outside the front-proxy phase.
    fn main_phase_ids(&self, node: &str) -> Vec<String> {
        self.diff.changed_on(node).into_iter().filter(|id| id != "proxy" && id != "proxy-ca").collect()
    }

    fn kubeconfig_changes(&self, node: &str) -> bool {
        self.diff.changed_on(node).iter().any(|id| id == "kubeconfig")
    }

    fn removes_kubelet_pem(&self, node: &str) -> bool {
        self.diff.kubelet_client_current_removals.iter().any(|n| n == node)
    }

    fn pre_probe(&self) -> Probe {
        if self.expired {
            Probe::Ssh
        } else {
            Probe::Api
        }
    }
}

/// Builds the rotation for a diff, part after part. Each part returns the steps the next one
/// waits for.
struct RotationBuilder<'a> {
    b: StepAdder<'a>,
    d: Decided<'a>,
    topo: &'a Topology,
    /// distributeCerts of each node that changes.
    staged: HashMap<String, NodeIndex>,
    preflight: Vec<NodeIndex>,
    pre_nodes: Option<NodeIndex>,
    pause: Option<NodeIndex>,
    proxy_gates: Vec<NodeIndex>,
}

/// Builds the graph for a diff. No changes, no steps.
pub fn build(diff: &Diff, topo: &Topology, profile: &Profile) -> ActionGraph {
    let b = StepAdder::new(Purpose::Rotation, profile);
    if !diff.has_changes() {
        return b.g;
    }
    let d = decide(diff, topo);
    let mut r = RotationBuilder { b, d, topo, staged: HashMap::new(), preflight: Vec::new(), pre_nodes: None, pause: None, proxy_gates: Vec::new() };
    r.b.g.masters = master_plan(&r.d, profile);

    let issue = r.prepare_locally();
    let changes_start = r.preflight(issue);
    r.distribute(issue);
    let master_end = match r.b.g.masters.clone() {
        MasterPlan::Untouched => changes_start,
        MasterPlan::Rolling => r.masters_one_at_a_time(changes_start),
        MasterPlan::AllAtOnce { .. } => r.masters_all_at_once(changes_start),
    };
    let after_masters = r.pause_after_expiry(&master_end);
    let proxy_end = r.front_proxy(&master_end, &after_masters);
    let agents_end = r.agent_lanes(&master_end, &proxy_end);
    let workloads_end = r.workloads(&master_end, &agents_end);
    r.finish(&master_end, &agents_end, &workloads_end);

    let lanes = profile.agents.parallelism.get().max(1) as usize;
    r.b.g.downtime = downtime(diff, topo, profile, &r.b.g.masters, r.d.proxy_changes, &r.d.expired_list);
    r.b.g.notes = notes(&r.b.g.masters, r.d.why_ssh.as_deref(), lanes, r.d.agents.len());
    r.b.g
}

fn decide<'d>(diff: &'d Diff, topo: &'d Topology) -> Decided<'d> {
    let expired = diff.cluster_expired();
    let expired_list = {
        let mut ids: Vec<String> = diff.expired.iter().map(|e| e.certificate.clone()).collect();
        ids.sort();
        ids.dedup();
        ids.join(", ")
    };
    let why_ssh = expired.then(|| {
        format!("the cluster's {expired_list} certificates have already expired, so the Kubernetes API cannot answer before rotation; this gate checks over SSH instead")
    });
    Decided {
        diff,
        expired,
        expired_list,
        ca_changes: diff.cluster_ca_changes(),
        proxy_changes: diff.front_proxy_changes(),
        masters_touched: topo.masters.iter().filter(|m| !diff.changed_on(&m.name).is_empty()).collect(),
        masters_main: topo.masters.iter().filter(|m| diff.node_changes(&m.name)).collect(),
        agents: topo.agents.iter().filter(|a| diff.node_changes(&a.name)).collect(),
        master_names: topo.masters.iter().map(|m| m.name.clone()).collect(),
        why_ssh,
    }
}

/// Rolling masters unless a new CA, an expired cluster or the profile forbids it.
fn master_plan(d: &Decided<'_>, profile: &Profile) -> MasterPlan {
    let all_at_once_why = if d.ca_changes {
        Some("a new cluster CA must reach every master at once: masters trusting different CAs cannot reach each other or etcd".to_string())
    } else if d.expired {
        Some(format!(
            "certificates have already expired ({}): etcd members and apiservers cannot come back one at a time while their peers still hold expired certificates",
            d.expired_list
        ))
    } else if profile.masters.strategy == MasterStrategy::AllAtOnce {
        Some("the profile sets masters.strategy: all-at-once".to_string())
    } else {
        None
    };
    match (all_at_once_why, d.masters_main.is_empty()) {
        (_, true) => MasterPlan::Untouched,
        (Some(why), false) => MasterPlan::AllAtOnce { why },
        (None, false) => MasterPlan::Rolling,
    }
}

impl RotationBuilder<'_> {
    /// The API model's backup and the new PKI, on the operator's machine; returns issuePki.
    fn prepare_locally(&mut self) -> NodeIndex {
        let changed_ids: Vec<String> =
            self.d.diff.decisions.iter().filter(|d| d.action != file::ChangeAction::Noop).map(|d| d.id.clone()).collect();
        let backup = self.b.action(
            Operation::BackupApiModel,
            Phase::Prepare,
            None,
            "copy apimodel.json and its directory to _rotate_certs_backup/".into(),
            StepParams { local_backup: Some("_rotate_certs_backup/".into()), ..StepParams::default() },
            &[],
        );
        let issue = self.b.action(
            Operation::IssuePki,
            Phase::Prepare,
            None,
            format!("issue {} new certificates into a 0700 directory", changed_ids.len()),
            StepParams { certificates: changed_ids, new_cluster_ca: self.d.ca_changes, ..StepParams::default() },
            &[],
        );
        self.b.edge(backup, issue);
        issue
    }

    /// The cluster must be healthy before anything changes; returns what changes wait for.
    fn preflight(&mut self, issue: NodeIndex) -> Vec<NodeIndex> {
        let d = &self.d;
        let (expired, probe, masters) = (d.expired, d.pre_probe(), d.master_names.clone());
        let checks = vec![
            GateCheck {
                kind: GateKind::EtcdHealthy,
                probe: Probe::Ssh,
                nodes: masters.clone(),
                checks: if expired {
                    "etcd is active on every master and its client port 2379 accepts connections from the node (etcdctl cannot authenticate with expired certificates)".into()
                } else {
                    "`etcdctl endpoint health` over SSH on every master reports all members healthy with the current certificates".into()
                },
                on_failure: "nothing has changed yet: look at `journalctl -u etcd` on the masters and restore etcd quorum before rotating".into(),
                why_ssh: d.why_ssh.clone(),
            },
            GateCheck {
                kind: GateKind::NodesReady,
                probe,
                nodes: masters.clone(),
                checks: if expired { "kubelet is active on every master".into() } else { "every master reports Ready".into() },
                on_failure: "nothing has changed yet: find out why the masters are not Ready (`kubectl describe node`, `journalctl -u kubelet`) before rotating".into(),
                why_ssh: d.why_ssh.clone(),
            },
            GateCheck {
                kind: GateKind::ControlPlanePodsReady,
                probe,
                nodes: masters,
                checks: if expired {
                    "the apiserver on every master accepts connections on port 443 from the node itself".into()
                } else {
                    "kube-apiserver, kube-controller-manager, kube-scheduler and kube-addon-manager pods of every master are Ready".into()
                },
                on_failure: "nothing has changed yet: fix the control plane first (`crictl ps -a` and kubelet logs on the master)".into(),
                why_ssh: d.why_ssh.clone(),
            },
        ];
        // The three look independently, each right after the PKI is issued.
        for check in checks {
            let is_nodes = check.kind == GateKind::NodesReady;
            let g = self.b.gate(check, Phase::Preflight, "preflight", None);
            self.b.edge(issue, g);
            if is_nodes {
                self.pre_nodes = Some(g);
            }
            self.preflight.push(g);
        }
        // The autoscaler is paused once the preflight passed, so a failed preflight leaves the
        // cluster exactly as it was. (On an expired cluster it waits for the API: see
        // `pause_after_expiry`.)
        if expired {
            return self.preflight.clone();
        }
        let preflight = self.preflight.clone();
        let p = self.b.action(
            Operation::PauseAutoscaler,
            Phase::Prepare,
            None,
            "scale cluster-autoscaler to 0 replicas (if deployed) and remember its replica count".into(),
            StepParams::default(),
            &preflight,
        );
        self.b.edges_from(&preflight, p);
        self.pause = Some(p);
        vec![p]
    }

    /// Back up and copy on every node that changes; harmless, so it overlaps the preflight.
    /// One step and one remote command per node: the backup and the staging were two steps
    /// in a row with nothing between them, each paying its own round trip through the
    /// jumpbox. The backup still comes first, and every install checks it is there.
    fn distribute(&mut self, issue: NodeIndex) {
        let touched: Vec<&Node> = self.d.masters_touched.iter().chain(self.d.agents.iter()).copied().collect();
        for node in touched {
            let ids = self.d.diff.changed_on(&node.name);
            let step = self.b.action(
                Operation::DistributeCerts,
                Phase::Prepare,
                Some(&node.name),
                format!(
                    "copy {CERT_DIR} to {CERT_DIR}.bak on {n} and verify the copy, then copy {} to a staging directory there",
                    ids.join(", "),
                    n = node.name
                ),
                StepParams {
                    certificates: ids,
                    backup_from: Some(CERT_DIR.into()),
                    backup_to: Some(format!("{CERT_DIR}.bak")),
                    ..StepParams::default()
                },
                &[],
            );
            self.b.edge(issue, step);
            self.staged.insert(node.name.clone(), step);
        }
    }

    /// Installs `ids` on master `node` after `after` and its staged copy, then writes the admin
    /// kubeconfig there when it changes, then removes kubelet's pem when it must go; returns
    /// the last step. Both master strategies start so.
    fn install_on_master(&mut self, node: &str, requires: &[NodeIndex], after: &[NodeIndex], pem_why: &str) -> NodeIndex {
        let ids = self.d.main_phase_ids(node);
        let install = self.b.action(
            Operation::InstallCerts,
            Phase::Masters,
            Some(node),
            format!("install {} on {node} (atomic renames, owners and modes from the catalogue)", ids.join(", ")),
            certificates(ids),
            requires,
        );
        self.b.edges_from(after, install);
        self.b.edge(self.staged[node], install);
        let mut last = install;
        if self.d.kubeconfig_changes(node) {
            let admin = format!("/home/{}/.kube/config", self.topo.admin_username);
            let k = self.b.action(
                Operation::InstallAdminKubeconfig,
                Phase::Masters,
                Some(node),
                format!("write the admin kubeconfig {admin} on {node}"),
                StepParams { admin_kubeconfig: Some(admin.clone()), ..StepParams::default() },
                &[],
            );
            self.b.edge(install, k);
            last = k;
        }
        if self.d.removes_kubelet_pem(node) {
            last = self.remove_kubelet_pem(node, Phase::Masters, last, pem_why);
        }
        last
    }

    fn remove_kubelet_pem(&mut self, node: &str, phase: Phase, after: NodeIndex, why: &str) -> NodeIndex {
        let r = self.b.action(
            Operation::RemoveKubeletClientCurrent,
            phase,
            Some(node),
            format!("remove {KUBELET_CLIENT_CURRENT} on {node} {why}"),
            StepParams { path: Some(KUBELET_CLIENT_CURRENT.into()), ..StepParams::default() },
            &[],
        );
        self.b.edge(after, r);
        r
    }

    /// One master at a time, each behind its own etcd, apiserver and control-plane gates.
    fn masters_one_at_a_time(&mut self, changes_start: Vec<NodeIndex>) -> Vec<NodeIndex> {
        let apiserver_changes = self.d.diff.apiserver_cert_changes();
        let mut master_end = changes_start;
        let masters: Vec<&Node> = self.d.masters_main.clone();
        for m in masters {
            let name = m.name.as_str();
            let mut requires = master_end.clone();
            requires.extend(self.preflight.iter().copied());
            let mut last = self.install_on_master(name, &requires, &master_end, "so kubelet uses the renewed client.crt");
            let ids = self.d.main_phase_ids(name);
            let etcd_related = ids.iter().any(|id| ETCD_RELATED.contains(&id.as_str()) || id.starts_with("etcdpeer"));
            let mut gates_of_master = Vec::new();
            if etcd_related {
                let r = self.b.action(Operation::RestartEtcd, Phase::Masters, Some(name), format!("restart etcd on {name}"), StepParams::default(), &[]);
                self.b.edge(last, r);
                let check = GateCheck {
                    kind: GateKind::EtcdHealthy,
                    probe: Probe::Ssh,
                    nodes: self.d.master_names.clone(),
                    checks: format!("`etcdctl endpoint health` over SSH on {name} with the new etcdclient certificate reports every member healthy and a leader"),
                    on_failure: format!("etcd on {name} did not rejoin: look at `journalctl -u etcd` there; {}", resume_hint()),
                    why_ssh: None,
                };
                let g = self.b.gate(check, Phase::Masters, name, Some(name));
                self.b.edge(r, g);
                gates_of_master.push(g);
                last = g;
            }
            let restart = self.b.action(
                Operation::RestartControlPlane,
                Phase::Masters,
                Some(name),
                format!("restart kubelet and the control-plane static pods on {name}"),
                StepParams::default(),
                &gates_of_master,
            );
            self.b.edge(last, restart);
            let one = vec![name.to_string()];
            master_end = self.b.gate_chain(
                &[restart],
                Phase::Masters,
                name,
                None,
                vec![
                    GateCheck {
                        kind: GateKind::ApiserverServesNewCert,
                        probe: Probe::Api,
                        nodes: one.clone(),
                        checks: if apiserver_changes {
                            format!("the apiserver on {name} presents the newly issued certificate (fingerprint recorded at issue) and /readyz answers ok")
                        } else {
                            format!("the apiserver on {name} answers /readyz ok with its certificate unchanged")
                        },
                        on_failure: format!("the apiserver on {name} did not come back: check `crictl logs` of kube-apiserver there; {}", resume_hint()),
                        why_ssh: None,
                    },
                    GateCheck {
                        kind: GateKind::ControlPlanePodsReady,
                        probe: Probe::Api,
                        nodes: one,
                        checks: format!("kube-apiserver, kube-controller-manager, kube-scheduler and kube-addon-manager pods of {name} are Ready"),
                        on_failure: format!("control-plane pods of {name} are not Ready: `kubectl -n kube-system describe pod` shows why; {}", resume_hint()),
                        why_ssh: None,
                    },
                ],
            );
        }
        master_end
    }

    /// Every master installed, then every master rebooted, then one chain of gates over all.
    fn masters_all_at_once(&mut self, changes_start: Vec<NodeIndex>) -> Vec<NodeIndex> {
        let preflight = self.preflight.clone();
        let masters: Vec<&Node> = self.d.masters_main.clone();
        let installed: Vec<(String, NodeIndex)> =
            masters.iter().map(|m| (m.name.clone(), self.install_on_master(&m.name, &preflight, &changes_start, "(issued under the old CA)"))).collect();
        // Every master is installed before any reboots, so none comes up among peers of the old trust.
        let lasts: Vec<NodeIndex> = installed.iter().map(|(_, l)| *l).collect();
        let mut reboots = Vec::new();
        for (name, _) in &installed {
            let r = self.b.action(
                Operation::RebootVm,
                Phase::Masters,
                Some(name),
                format!("restart VM {name} through the Azure Compute API and wait until it runs"),
                StepParams { vm: Some(name.clone()), ..StepParams::default() },
                &[],
            );
            self.b.edges_from(&lasts, r);
            reboots.push(r);
        }
        let all = self.d.master_names.clone();
        let check = |kind, probe, checks: &str, on_failure: String| GateCheck {
            kind,
            probe,
            nodes: all.clone(),
            checks: checks.into(),
            on_failure,
            why_ssh: None,
        };
        let hint = resume_hint();
        self.b.gate_chain(
            &reboots,
            Phase::Masters,
            "masters",
            None,
            vec![
                check(
                    GateKind::EtcdHealthy,
                    Probe::Ssh,
                    "`etcdctl endpoint health` over SSH on every master with the new etcdclient certificate reports every member healthy and a leader",
                    format!("etcd did not form a quorum with the new certificates: compare `journalctl -u etcd` on the masters; {hint}"),
                ),
                check(
                    GateKind::ApiserverServesNewCert,
                    Probe::Api,
                    "every master's apiserver presents the newly issued certificate and /readyz answers ok",
                    format!("an apiserver did not come back: check `crictl logs` of kube-apiserver on that master; {hint}"),
                ),
                check(
                    GateKind::NodesReady,
                    Probe::Api,
                    "every master reports Ready with its kubelet using the new client certificate",
                    format!("a master is not Ready: `journalctl -u kubelet` on it shows why; {hint}"),
                ),
                check(
                    GateKind::ControlPlanePodsReady,
                    Probe::Api,
                    "control-plane pods of every master are Ready",
                    format!("control-plane pods are not Ready: `kubectl -n kube-system describe pod` shows why; {hint}"),
                ),
            ],
        )
    }

    /// On an expired cluster the autoscaler pause waits for the API, back after the masters.
    fn pause_after_expiry(&mut self, master_end: &[NodeIndex]) -> Vec<NodeIndex> {
        if !self.d.expired {
            return master_end.to_vec();
        }
        let p = self.b.action(
            Operation::PauseAutoscaler,
            Phase::Prepare,
            None,
            "scale cluster-autoscaler to 0 replicas (if deployed) now that the API answers again".into(),
            StepParams::default(),
            master_end,
        );
        self.b.edges_from(master_end, p);
        self.pause = Some(p);
        vec![p]
    }

    /// Front proxy: in etcd once, then on each master in turn, each behind its own gate.
    fn front_proxy(&mut self, master_end: &[NodeIndex], after_masters: &[NodeIndex]) -> Vec<NodeIndex> {
        if !self.d.proxy_changes {
            return after_masters.to_vec();
        }
        let first = self.topo.masters.first().map(|m| m.name.clone()).unwrap_or_default();
        let requires: Vec<NodeIndex> = master_end.iter().chain(self.preflight.iter()).copied().collect();
        let put = self.b.action(
            Operation::PutFrontProxyInEtcd,
            Phase::FrontProxy,
            Some(&first),
            "write the new front-proxy CA, client certificate and key under /proxycerts in etcd".into(),
            StepParams { etcd_keys: vec![ETCD_PROXY_CA_KEY.into(), ETCD_PROXY_CERT_KEY.into(), ETCD_PROXY_KEY_KEY.into()], ..StepParams::default() },
            &requires,
        );
        self.b.edges_from(after_masters, put);
        if let Some(s) = self.staged.get(&first) {
            self.b.edge(*s, put);
        }
        let mut prev = vec![put];
        let masters: Vec<String> = self.d.masters_touched.iter().map(|m| m.name.clone()).collect();
        for name in masters {
            let install = self.b.action(
                Operation::InstallFrontProxy,
                Phase::FrontProxy,
                Some(&name),
                format!("write proxy-ca.crt, proxy.crt and proxy.key on {name}"),
                StepParams::default(),
                &requires,
            );
            self.b.edges_from(&prev, install);
            self.b.edge(self.staged[&name], install);
            let restart = self.b.action(
                Operation::RestartApiserver,
                Phase::FrontProxy,
                Some(&name),
                format!("restart kube-apiserver on {name} so it loads the new front-proxy material"),
                StepParams::default(),
                &[],
            );
            self.b.edge(install, restart);
            let check = GateCheck {
                kind: GateKind::ControlPlanePodsReady,
                probe: Probe::Api,
                nodes: vec![name.clone()],
                checks: format!("kube-apiserver on {name} is Ready again with the new front-proxy certificates"),
                on_failure: format!("kube-apiserver on {name} did not come back: `crictl logs` of kube-apiserver there; {}", resume_hint()),
                why_ssh: None,
            };
            let cp = self.b.gate(check, Phase::FrontProxy, &format!("front-proxy@{name}"), None);
            self.b.edge(restart, cp);
            prev = vec![cp];
            self.proxy_gates.push(cp);
        }
        prev
    }

    /// Agents, in `parallelism` lanes: agent k follows agent k - parallelism.
    fn agent_lanes(&mut self, master_end: &[NodeIndex], proxy_end: &[NodeIndex]) -> Vec<NodeIndex> {
        let lanes = self.b.profile.agents.parallelism.get().max(1) as usize;
        let mut requires: Vec<NodeIndex> = self.preflight.clone();
        requires.extend(master_end.iter().chain(self.proxy_gates.iter()).copied());
        let mut lane_end: Vec<Option<NodeIndex>> = vec![None; lanes];
        let agents: Vec<String> = self.d.agents.iter().map(|a| a.name.clone()).collect();
        for (k, name) in agents.iter().enumerate() {
            let ids = self.d.diff.changed_on(name);
            let install = self.b.action(
                Operation::InstallCerts,
                Phase::Agents,
                Some(name),
                format!("install {} on {name}", ids.join(", ")),
                certificates(ids),
                &requires,
            );
            self.b.edges_from(proxy_end, install);
            self.b.edge(self.staged[name], install);
            if let Some(prev) = lane_end[k % lanes] {
                self.b.edge(prev, install);
            }
            let mut last = install;
            if self.d.removes_kubelet_pem(name) {
                last = self.remove_kubelet_pem(name, Phase::Agents, last, "(issued under the old CA)");
            }
            let restart = self.b.action(Operation::RestartKubelet, Phase::Agents, Some(name), format!("restart kubelet on {name}"), StepParams::default(), &[]);
            self.b.edge(last, restart);
            let proxy = self.b.action(
                Operation::DeleteKubeProxyPod,
                Phase::Agents,
                Some(name),
                format!("delete the kube-proxy pod of {name} so it restarts with the new trust"),
                StepParams::default(),
                &[],
            );
            self.b.edge(restart, proxy);
            let check = GateCheck {
                kind: GateKind::NodesReady,
                probe: Probe::Api,
                nodes: vec![name.clone()],
                checks: format!("{name} reports Ready with its kubelet using the new client certificate"),
                on_failure: format!("{name} is not Ready: `journalctl -u kubelet` on it shows why; {}", resume_hint()),
                why_ssh: None,
            };
            let ready = self.b.gate(check, Phase::Agents, name, None);
            self.b.edge(proxy, ready);
            lane_end[k % lanes] = Some(ready);
        }
        let ends: Vec<NodeIndex> = lane_end.into_iter().flatten().collect();
        if ends.is_empty() {
            proxy_end.to_vec()
        } else {
            ends
        }
    }

    /// Service-account tokens are signed with the apiserver key: new key, new tokens.
    fn workloads(&mut self, master_end: &[NodeIndex], agents_end: &[NodeIndex]) -> Vec<NodeIndex> {
        if !self.d.diff.apiserver_key_changes() {
            return agents_end.to_vec();
        }
        let del = self.b.action(
            Operation::DeleteServiceAccountTokens,
            Phase::Workloads,
            None,
            "delete every service-account token secret so the controller manager recreates them with the new apiserver key".into(),
            StepParams::default(),
            master_end,
        );
        self.b.edges_from(agents_end, del);
        let roll = self.b.action(
            Operation::RolloutWorkloads,
            Phase::Workloads,
            None,
            "roll out every deployment and daemonset so pods pick up the new tokens and CA".into(),
            StepParams::default(),
            &[],
        );
        self.b.edge(del, roll);
        vec![roll]
    }

    /// The final kube-system gate, the API model, the autoscaler back, and the clean-up.
    fn finish(&mut self, master_end: &[NodeIndex], agents_end: &[NodeIndex], workloads_end: &[NodeIndex]) {
        let final_gate = self.b.gate(
            GateCheck {
                kind: GateKind::KubeSystemReady,
                probe: Probe::Api,
                nodes: Vec::new(),
                checks: "every pod in kube-system is Ready".into(),
                on_failure: format!("some kube-system pods are not Ready: `kubectl -n kube-system get pods` shows which; {}", resume_hint()),
                why_ssh: None,
            },
            Phase::Workloads,
            "final",
            None,
        );
        self.b.edges_from(workloads_end, final_gate);
        // The final gate must come after every other gate as well.
        let all_gates: Vec<NodeIndex> = self.b.indices().into_iter().filter(|ix| self.b.is_gate(*ix) && *ix != final_gate).collect();
        // What proves every node works with its new certificates: the masters' last gates (etcd
        // healthy, apiserver serving the new certificate, control plane Ready), the front-proxy
        // gates and every agent Ready. Every other gate runs before these.
        let pre_nodes = self.pre_nodes;
        let nodes_ready: Vec<NodeIndex> = self
            .b
            .indices()
            .into_iter()
            .filter(|ix| Some(*ix) != pre_nodes && self.b.operation(*ix) == Operation::Gate(GateKind::NodesReady))
            .collect();
        let nodes_proven: Vec<NodeIndex> = master_end.iter().chain(self.proxy_gates.iter()).copied().chain(nodes_ready).collect();
        // The API model is written once the nodes hold the new certificates and the control plane
        // is proven to work with them, not after the final kube-system gate: an unrelated addon
        // that never gets Ready would otherwise leave apimodel.json describing certificates the
        // cluster no longer has.
        let mut tail = vec![final_gate];
        if self.d.diff.apimodel_changes() {
            let u = self.b.action(
                Operation::UpdateApiModel,
                Phase::Finish,
                None,
                "write the new certificateProfile into apimodel.json (atomic, key order and unknown fields kept)".into(),
                StepParams::default(),
                &nodes_proven,
            );
            self.b.edges_from(agents_end, u);
            tail.push(u);
        }
        // The autoscaler comes back once every node is Ready again, for the same reason: a
        // crash-looping addon must not keep the cluster from scaling.
        let resume = self.b.action(
            Operation::ResumeAutoscaler,
            Phase::Finish,
            None,
            "scale cluster-autoscaler back to its remembered replica count".into(),
            StepParams::default(),
            &nodes_proven,
        );
        self.b.edges_from(agents_end, resume);
        if let Some(p) = self.pause {
            self.b.edge(p, resume);
        }
        tail.push(resume);
        let cleanup = self.b.action(
            Operation::Cleanup,
            Phase::Finish,
            None,
            "remove the staging directories on the nodes; backups stay".into(),
            StepParams::default(),
            &[final_gate],
        );
        self.b.edges_from(&tail, cleanup);
        for g in all_gates {
            if !self.b.has_successor(g) {
                self.b.edge(g, final_gate);
            }
        }
    }
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
